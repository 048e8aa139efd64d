//! Containers and their tasks: create, start, wait, kill, stop, delete, list.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::snapshots::{
    MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetContainerRequest, GetRequest, KillRequest, ListContainersRequest,
    ListTasksRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::ImageInfo;
use crate::{RUNTIME, Runtime, SNAPSHOTTER, etc, spec};

/// Label holding the stdio URI a container's task is created with.
const STDIO_LABEL: &str = "io.shoal.stdio";

/// How a container's network is set up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// A new network namespace with only loopback.
    #[default]
    Isolated,
    /// Join the network namespace at this path (e.g. `/run/netns/NAME`).
    Path(PathBuf),
    /// The host's network namespace.
    Host,
}

/// What a [`Mount`] mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A host path (must exist).
    Bind { source: PathBuf },
    /// A named volume: the directory `volumes_dir/<name>`, created when missing.
    Volume { name: String },
    /// A fresh tmpfs, optionally limited to `size` bytes.
    Tmpfs { size: Option<u64> },
}

/// A mount into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: MountKind,
    /// Absolute path in the container.
    pub target: String,
    pub read_only: bool,
}

/// Resource limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU limit in billionths of a CPU (becomes a CFS quota over a 100 ms period).
    pub nano_cpus: Option<u64>,
    /// Memory limit in bytes (swap is not allowed on top of it).
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes.
    pub pids: Option<i64>,
}

/// One extra `/etc/hosts` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub ip: IpAddr,
    pub names: Vec<String>,
}

/// The container's `/etc/resolv.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// Where a container's stdout and stderr go.
///
/// The shim starts `driver` through containerd's `binary://` logging; `driver` must call
/// [`crate::run_logger`] (the `shoald log-driver` hidden subcommand, or the
/// `shoal-log-driver` binary of this crate). It receives its arguments as `KEY VALUE` pairs in
/// arbitrary order (see [`crate::logger`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    /// The log file; it rotates to `<path>.1` when it would exceed `max_size`.
    pub path: PathBuf,
    /// Bytes; 0 means no rotation.
    pub max_size: u64,
    /// Absolute path of the logger executable.
    pub driver: PathBuf,
    /// `CONTAINER_NAME` in the journal.
    pub name: String,
    /// `SHOAL_SERVICE` in the journal.
    pub service: String,
    /// `SHOAL_TASK_ID` in the journal.
    pub task: String,
    /// The journald socket; `None` means `/run/systemd/journal/socket` when it exists.
    pub journal_socket: Option<PathBuf>,
}

impl LogConfig {
    /// The `binary://` URI the shim is given.
    pub fn uri(&self) -> String {
        let mut uri = format!(
            "binary://{}?log-driver=",
            encode(&self.driver.to_string_lossy(), true)
        );
        let mut arg = |k: &str, v: &str| {
            if !v.is_empty() {
                uri.push_str(&format!("&--{k}={}", encode(v, false)));
            }
        };
        arg("file", &self.path.to_string_lossy());
        arg("max-size", &self.max_size.to_string());
        arg("name", &self.name);
        arg("service", &self.service);
        arg("task", &self.task);
        if let Some(s) = &self.journal_socket {
            arg("journal-socket", &s.to_string_lossy());
        }
        uri
    }
}

/// Percent-encodes everything but unreserved characters (and `/` in paths).
fn encode(s: &str, path: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (path && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Everything needed to create a container. Build it with [`ContainerConfig::new`], which
/// takes process, environment, working directory and user from the image, then adjust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// containerd container id: letters, digits, `_`, `-`, `.`; at most 76 characters.
    pub id: String,
    pub image: ImageInfo,
    pub labels: BTreeMap<String, String>,
    /// The full argv (see [`crate::resolve_process`]).
    pub args: Vec<String>,
    /// `KEY=value` (see [`ContainerConfig::set_env`]); `PATH` is added when missing.
    pub env: Vec<String>,
    /// Absolute; empty means `/`.
    pub cwd: String,
    /// `uid`, `uid:gid`, `name` or `name:group` (names from the image's `/etc/passwd`).
    pub user: String,
    pub hostname: String,
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    pub read_only_rootfs: bool,
    pub network: NetworkMode,
    /// Extra `/etc/hosts` lines after the localhost ones.
    pub hosts: Vec<HostEntry>,
    /// `None` copies the host's resolv.conf (minus loopback nameservers).
    pub dns: Option<Dns>,
    /// `None` discards stdout and stderr.
    pub log: Option<LogConfig>,
    /// Capabilities added to / dropped from Docker's default set (`CAP_X` or `ALL`).
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// The process cannot gain privileges through setuid binaries or file capabilities.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// No seccomp filter (otherwise Docker's default profile).
    #[serde(default)]
    pub seccomp_unconfined: bool,
    /// A static init (tini) on the host, mounted read-only and run as PID 1 before `args`.
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Resource limits by name without `RLIMIT_` (`nofile`): (soft, hard).
    #[serde(default)]
    pub rlimits: BTreeMap<String, (u64, u64)>,
    /// Namespaced sysctls.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
}

impl ContainerConfig {
    /// A container running `image` as its config says, with hostname = `id`.
    pub fn new(id: &str, image: ImageInfo) -> ContainerConfig {
        ContainerConfig {
            id: id.to_string(),
            args: spec::resolve_process(&image.config, None, None),
            env: image.config.env.clone(),
            cwd: image.config.working_dir.clone(),
            user: image.config.user.clone(),
            hostname: id.chars().take(63).collect(),
            image,
            labels: BTreeMap::new(),
            mounts: Vec::new(),
            resources: Resources::default(),
            read_only_rootfs: false,
            network: NetworkMode::Isolated,
            hosts: Vec::new(),
            dns: None,
            log: None,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            no_new_privileges: false,
            seccomp_unconfined: false,
            init: None,
            rlimits: BTreeMap::new(),
            sysctls: BTreeMap::new(),
        }
    }

    /// Overrides entrypoint and/or command with Docker's rules.
    pub fn set_process(&mut self, entrypoint: Option<Vec<String>>, command: Option<Vec<String>>) {
        self.args = spec::resolve_process(&self.image.config, entrypoint, command);
    }

    /// Sets the environment to the image's with `overrides` (`KEY=value`) applied.
    pub fn set_env(&mut self, overrides: &[String]) {
        self.env = spec::merge_env(&self.image.config.env, overrides);
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The exit status; 128 + signal number when a signal killed it.
    pub code: i32,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
    pub exited_at: SystemTime,
}

/// The state of a container's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerStatus {
    /// The container exists but has no task, or the task is created and not started.
    Created,
    Running,
    Stopped,
    /// Paused, pausing, or a state containerd could not determine.
    Unknown,
}

/// A container found in containerd (see [`Runtime::list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// The image record name.
    pub image: String,
    pub status: ContainerStatus,
    pub pid: Option<u32>,
    /// For stopped tasks.
    pub exit: Option<Exit>,
}

fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 76
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            id: id.to_string(),
            reason: "container ids start with a letter or digit and use letters, digits, '.', '_' and '-' (at most 76)".into(),
        })
    }
}

/// Reads the OOM-kill counter of the container's memory cgroup (v1 or v2).
pub(crate) fn oom_kills(namespace: &str, id: &str) -> u64 {
    let rel = format!("{namespace}/{id}");
    let candidates = [
        (
            Path::new("/sys/fs/cgroup/memory")
                .join(&rel)
                .join("memory.oom_control"),
            "oom_kill ",
        ),
        (
            Path::new("/sys/fs/cgroup").join(&rel).join("memory.events"),
            "oom_kill ",
        ),
        (
            Path::new("/sys/fs/cgroup/unified")
                .join(&rel)
                .join("memory.events"),
            "oom_kill ",
        ),
    ];
    for (path, key) in candidates {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Some(n) = text
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        {
            return n;
        }
    }
    0
}

fn ignore_not_found(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

impl Runtime {
    fn container_dir(&self, id: &str) -> PathBuf {
        self.dirs.run_dir.join(id)
    }

    /// Creates the container (snapshot, generated files, OCI spec, container record) without
    /// starting it. Fails with [`Error::AlreadyExists`] when the id is taken.
    pub async fn create(&self, c: &ContainerConfig) -> Result<()> {
        validate_id(&c.id)?;
        match self
            .containers()
            .get(self.request(GetContainerRequest { id: c.id.clone() }))
            .await
        {
            Ok(_) => {
                return Err(Error::AlreadyExists {
                    what: format!("container {}", c.id),
                });
            }
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => {
                return Err(Error::grpc(
                    "Containers.Get",
                    format!("container {}", c.id),
                    s,
                ));
            }
        }
        let image = self
            .load_image(&c.image.name, &c.image.digest)
            .await
            .map_err(|e| match e {
                Error::NotFound { .. } => Error::NotFound {
                    what: format!(
                        "image {}@{} (ensure the image before creating containers)",
                        c.image.name, c.image.digest
                    ),
                },
                other => other,
            })?;
        let parent = image.top_chain();
        if !self.snapshot_exists(&parent).await? {
            return Err(Error::NotFound {
                what: format!(
                    "unpacked image {} (ensure the image before creating containers)",
                    c.image.name
                ),
            });
        }
        let dir = self.container_dir(&c.id);
        etc::write_files(&dir, c)?;
        if let Some(log) = &c.log
            && let Some(parent) = log.path.parent()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("cannot create log directory", parent, e))?;
        }
        let result = if etc::needs_lookup(&c.user) {
            // The user is looked up in the image's /etc/passwd, so the snapshot must exist before
            // the container record: a lease keeps it from the garbage collector meanwhile.
            let lease = self.create_lease("create").await?;
            let result = self.create_leased(c, &parent, &dir, &lease).await;
            self.delete_lease(&lease).await;
            result
        } else {
            self.create_record_first(c, &parent, &dir).await
        };
        if result.is_err() {
            let _ = self.remove_snapshot(&c.id).await;
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    /// Without a user lookup the container record can come first: it references its snapshot
    /// key, which protects the snapshot from garbage collection as soon as it exists, so no lease
    /// (two more metadata writes) is needed.
    async fn create_record_first(
        &self,
        c: &ContainerConfig,
        parent: &str,
        dir: &Path,
    ) -> Result<()> {
        let user = etc::resolve_user(&c.id, &c.user, None, None)?;
        let container = self.container_record(c, &user, dir)?;
        self.containers()
            .create(self.request(CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .map_err(|s| Error::grpc("Containers.Create", format!("container {}", c.id), s))?;
        let prepare = || async {
            self.snapshots()
                .prepare(self.request(PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: c.id.clone(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                }))
                .await
        };
        let prepared = match prepare().await {
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                // Left over from a create that did not finish: start over.
                match self.remove_snapshot(&c.id).await {
                    Ok(()) => prepare().await,
                    Err(e) => {
                        self.delete_record(&c.id).await;
                        return Err(e);
                    }
                }
            }
            other => other,
        };
        if let Err(s) = prepared {
            self.delete_record(&c.id).await;
            return Err(Error::grpc(
                "Snapshots.Prepare",
                format!("container {}", c.id),
                s,
            ));
        }
        tracing::debug!(container = %c.id, "container created");
        Ok(())
    }

    async fn delete_record(&self, id: &str) {
        let _ = self
            .containers()
            .delete(self.request(DeleteContainerRequest { id: id.to_string() }))
            .await;
    }

    /// The container record: OCI spec, labels (with the stdio URI), runtime, snapshot key.
    fn container_record(
        &self,
        c: &ContainerConfig,
        user: &etc::ResolvedUser,
        dir: &Path,
    ) -> Result<Container> {
        let spec = spec::build_spec(c, &self.namespace, user, dir, &self.dirs.volumes_dir)?;
        let spec_bytes = serde_json::to_vec(&spec).map_err(|e| Error::InvalidConfig {
            id: c.id.clone(),
            reason: format!("cannot encode the OCI spec: {e}"),
        })?;
        let mut labels: HashMap<String, String> = c
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(log) = &c.log {
            labels.insert(STDIO_LABEL.into(), log.uri());
        }
        Ok(Container {
            id: c.id.clone(),
            labels,
            image: c.image.name.clone(),
            runtime: Some(ContainerRuntime {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: spec_bytes,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: c.id.clone(),
            created_at: None,
            updated_at: None,
            extensions: HashMap::new(),
            sandbox: String::new(),
        })
    }

    async fn create_leased(
        &self,
        c: &ContainerConfig,
        parent: &str,
        dir: &Path,
        lease: &str,
    ) -> Result<()> {
        let prepare = || async {
            self.snapshots()
                .prepare(self.leased(
                    PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: c.id.clone(),
                        parent: parent.to_string(),
                        labels: HashMap::new(),
                    },
                    lease,
                ))
                .await
        };
        let mounts = match prepare().await {
            Ok(r) => r.into_inner().mounts,
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                // Left over from a create that did not finish: start over.
                self.remove_snapshot(&c.id).await?;
                prepare()
                    .await
                    .map_err(|s| {
                        Error::grpc("Snapshots.Prepare", format!("container {}", c.id), s)
                    })?
                    .into_inner()
                    .mounts
            }
            Err(s) => {
                return Err(Error::grpc(
                    "Snapshots.Prepare",
                    format!("container {}", c.id),
                    s,
                ));
            }
        };
        let user = if etc::needs_lookup(&c.user) {
            let mnt = dir.join("rootfs-lookup");
            let (passwd, group) =
                tokio::task::spawn_blocking(move || etc::read_user_files(&mounts, &mnt))
                    .await
                    .map_err(|e| Error::InvalidConfig {
                        id: c.id.clone(),
                        reason: format!("user lookup stopped: {e}"),
                    })?
                    .map_err(|e| Error::io("cannot read the image's /etc/passwd for", dir, e))?;
            etc::resolve_user(&c.id, &c.user, passwd.as_deref(), group.as_deref())?
        } else {
            etc::resolve_user(&c.id, &c.user, None, None)?
        };
        let container = self.container_record(c, &user, dir)?;
        self.containers()
            .create(self.leased(
                CreateContainerRequest {
                    container: Some(container),
                },
                lease,
            ))
            .await
            .map_err(|s| Error::grpc("Containers.Create", format!("container {}", c.id), s))?;
        tracing::debug!(container = %c.id, "container created");
        Ok(())
    }

    async fn remove_snapshot(&self, key: &str) -> Result<()> {
        match self
            .snapshots()
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(Error::grpc(
                "Snapshots.Remove",
                format!("snapshot {key}"),
                s,
            )),
        }
    }

    /// Creates the container's task unless it has one: its shim runs and runc has set the
    /// container up, but the process waits to be started. Doing this while a task is prepared
    /// leaves `start` only the `Tasks.Start` call. A task that ran already is left alone (it is
    /// never run a second time); one whose state is unknown is replaced.
    pub async fn create_task(&self, id: &str) -> Result<()> {
        if let Some(process) = self.task_process(id).await? {
            if Status::try_from(process.status).unwrap_or(Status::Unknown) != Status::Unknown {
                return Ok(());
            }
            ignore_not_found(self.delete_task(id).await.map(|_| ()))?;
        }
        self.new_task(id).await
    }

    /// Starts the container's task (creating it first when `create_task` did not); returns the
    /// pid of its init process.
    ///
    /// A task that exists already is reused when it was never started, or replaced when its
    /// state is unknown.
    pub async fn start(&self, id: &str) -> Result<u32> {
        if let Some(process) = self.task_process(id).await? {
            match Status::try_from(process.status).unwrap_or(Status::Unknown) {
                Status::Running | Status::Paused | Status::Pausing => return Ok(process.pid),
                Status::Created => return self.start_task(id).await,
                // It already ran (a retried start whose first attempt did get through): never
                // run the process a second time; `wait` reports how it ended.
                Status::Stopped => return Ok(process.pid),
                Status::Unknown => {
                    ignore_not_found(self.delete_task(id).await.map(|_| ()))?;
                }
            }
        }
        self.new_task(id).await?;
        self.start_task(id).await
    }

    /// The container record `id` (`Containers.Get`).
    pub(crate) async fn container(&self, id: &str) -> Result<Container> {
        self.containers()
            .get(self.request(GetContainerRequest { id: id.to_string() }))
            .await
            .map_err(|s| Error::grpc("Containers.Get", format!("container {id}"), s))?
            .into_inner()
            .container
            .ok_or_else(|| Error::NotFound {
                what: format!("container {id}"),
            })
    }

    /// `Tasks.Create` for a container that has no task.
    async fn new_task(&self, id: &str) -> Result<()> {
        let container = self.container(id).await?;
        let mounts = self
            .snapshots()
            .mounts(self.request(MountsRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.to_string(),
            }))
            .await
            .map_err(|s| Error::grpc("Snapshots.Mounts", format!("container {id}"), s))?
            .into_inner()
            .mounts;
        let stdio = container
            .labels
            .get(STDIO_LABEL)
            .cloned()
            .unwrap_or_default();
        self.tasks()
            .create(self.request(CreateTaskRequest {
                container_id: id.to_string(),
                rootfs: mounts,
                stdin: String::new(),
                stdout: stdio.clone(),
                stderr: stdio,
                terminal: false,
                checkpoint: None,
                options: None,
                runtime_path: String::new(),
            }))
            .await
            .map_err(|s| Error::grpc("Tasks.Create", format!("task {id}"), s))?;
        Ok(())
    }

    async fn start_task(&self, id: &str) -> Result<u32> {
        let pid = self
            .tasks()
            .start(self.request(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| Error::grpc("Tasks.Start", format!("task {id}"), s))?
            .into_inner()
            .pid;
        tracing::info!(container = id, pid, "task started");
        Ok(pid)
    }

    async fn task_process(
        &self,
        id: &str,
    ) -> Result<Option<containerd_client::types::v1::Process>> {
        match self
            .tasks()
            .get(self.request(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().process),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(Error::grpc("Tasks.Get", format!("task {id}"), s)),
        }
    }

    async fn delete_task(&self, id: &str) -> Result<u32> {
        self.tasks()
            .delete(self.request(DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await
            .map(|r| r.into_inner().exit_status)
            .map_err(|s| Error::grpc("Tasks.Delete", format!("task {id}"), s))
    }

    /// Waits until the container's task exits (works for tasks started by an earlier daemon
    /// process) and reports how it ended.
    pub async fn wait(&self, id: &str) -> Result<Exit> {
        let resp = self
            .tasks()
            .wait(self.request(WaitRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| Error::grpc("Tasks.Wait", format!("task {id}"), s))?
            .into_inner();
        Ok(Exit {
            code: resp.exit_status as i32,
            oom_killed: oom_kills(&self.namespace, id) > 0,
            exited_at: crate::time::from_timestamp(resp.exited_at.as_ref()),
        })
    }

    /// Sends `signal` to the task's init process, or to all its processes when `all`.
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        if signal <= 0 {
            return Err(Error::InvalidConfig {
                id: id.to_string(),
                reason: format!("signal {signal} is not a valid signal number"),
            });
        }
        self.tasks()
            .kill(self.request(KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal: signal as u32,
                all,
            }))
            .await
            .map(|_| ())
            .map_err(|s| Error::grpc("Tasks.Kill", format!("task {id}"), s))
    }

    /// Sends `signal`, waits up to `grace` for the task to exit, then SIGKILLs all its
    /// processes and waits again. Returns how it ended.
    pub async fn stop(&self, id: &str, signal: i32, grace: Duration) -> Result<Exit> {
        let waiter = {
            let rt = self.clone();
            let id = id.to_string();
            tokio::spawn(async move { rt.wait(&id).await })
        };
        let mut waiter = std::pin::pin!(waiter);
        match self.kill(id, signal, false).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                // A task that already stopped cannot be signalled; the wait tells.
                tracing::debug!(container = id, error = %e, "stop signal not delivered");
            }
        }
        let joined = |r: std::result::Result<Result<Exit>, tokio::task::JoinError>| {
            r.map_err(|e| Error::InvalidConfig {
                id: id.to_string(),
                reason: format!("waiting for the task stopped: {e}"),
            })?
        };
        if let Ok(r) = tokio::time::timeout(grace, &mut waiter).await {
            return joined(r);
        }
        tracing::info!(container = id, grace = ?grace, "task ignored its stop signal; killing it");
        match self.kill(id, libc::SIGKILL, true).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::debug!(container = id, error = %e, "SIGKILL not delivered"),
        }
        const KILL_DEADLINE: Duration = Duration::from_secs(120);
        match tokio::time::timeout(KILL_DEADLINE, &mut waiter).await {
            Ok(r) => joined(r),
            Err(_) => Err(Error::StopTimeout {
                id: id.to_string(),
                seconds: KILL_DEADLINE.as_secs(),
            }),
        }
    }

    /// Deletes the task (killing it first if it still runs), the container, its snapshot and
    /// its generated files. Anything already gone is fine. The log file is left to the caller.
    pub async fn delete(&self, id: &str) -> Result<()> {
        if let Some(process) = self.task_process(id).await? {
            let status = Status::try_from(process.status).unwrap_or(Status::Unknown);
            if status != Status::Stopped {
                let _ = self.stop(id, libc::SIGKILL, Duration::from_secs(30)).await;
            }
            ignore_not_found(self.delete_task(id).await.map(|_| ()))?;
        }
        match self
            .containers()
            .delete(self.request(DeleteContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => {
                return Err(Error::grpc(
                    "Containers.Delete",
                    format!("container {id}"),
                    s,
                ));
            }
        }
        self.remove_snapshot(id).await?;
        let dir = self.container_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot remove", dir, e)),
        }
        tracing::debug!(container = id, "container deleted");
        Ok(())
    }

    /// Every container in the namespace with its task state: what a restarted daemon adopts.
    pub async fn list(&self) -> Result<Vec<ContainerState>> {
        let containers = self
            .containers()
            .list(self.request(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(|s| {
                Error::grpc(
                    "Containers.List",
                    format!("namespace {}", self.namespace),
                    s,
                )
            })?
            .into_inner()
            .containers;
        let tasks = self
            .tasks()
            .list(self.request(ListTasksRequest {
                filter: String::new(),
            }))
            .await
            .map_err(|s| Error::grpc("Tasks.List", format!("namespace {}", self.namespace), s))?
            .into_inner()
            .tasks;
        let by_id: HashMap<&str, &containerd_client::types::v1::Process> =
            // containerd 1.6 fills `id` (the container id) and leaves `container_id` empty.
            tasks
                .iter()
                .map(|t| {
                    let id = if t.container_id.is_empty() { &t.id } else { &t.container_id };
                    (id.as_str(), t)
                })
                .collect();
        let mut out = Vec::with_capacity(containers.len());
        for c in &containers {
            let task = by_id.get(c.id.as_str());
            let (status, pid, exit) = match task {
                None => (ContainerStatus::Created, None, None),
                Some(t) => match Status::try_from(t.status).unwrap_or(Status::Unknown) {
                    Status::Created => (ContainerStatus::Created, Some(t.pid), None),
                    Status::Running => (ContainerStatus::Running, Some(t.pid), None),
                    Status::Stopped => (
                        ContainerStatus::Stopped,
                        None,
                        Some(Exit {
                            code: t.exit_status as i32,
                            oom_killed: oom_kills(&self.namespace, &c.id) > 0,
                            exited_at: crate::time::from_timestamp(t.exited_at.as_ref()),
                        }),
                    ),
                    _ => (
                        ContainerStatus::Unknown,
                        Some(t.pid).filter(|p| *p > 0),
                        None,
                    ),
                },
            };
            out.push(ContainerState {
                id: c.id.clone(),
                labels: c
                    .labels
                    .iter()
                    .filter(|(k, _)| k.as_str() != STDIO_LABEL)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                image: c.image.clone(),
                status,
                pid,
                exit,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_uri_encodes_arguments() {
        let log = LogConfig {
            path: "/var/log/a b/x.log".into(),
            max_size: 1000,
            driver: "/usr/bin/shoald".into(),
            name: "web.1".into(),
            service: "web".into(),
            task: String::new(),
            journal_socket: None,
        };
        assert_eq!(
            log.uri(),
            "binary:///usr/bin/shoald?log-driver=&--file=%2Fvar%2Flog%2Fa%20b%2Fx.log&--max-size=1000&--name=web.1&--service=web"
        );
    }

    #[test]
    fn container_ids_are_checked() {
        assert!(validate_id("web.1.abc_def-0").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("-x").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id(&"a".repeat(77)).is_err());
    }
}
