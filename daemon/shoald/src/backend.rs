//! The daemon's side of the D-Bus API: reads come from the local copy of the replicated state,
//! changes go through raft.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use model::{
    ApplyError, Availability, ClusterState, Command, NodeRole, NodeStatus, Service, ServiceMode,
    ServiceSpec, StackSource, TaskState, UpdateState, UpdateStatus,
};
use shoal_dbus::{
    ApiError, Backend, ChangeReport, ClusterInfo, ImageRow, LogOptions, NodeChange, NodeRow,
    PruneReport, ServiceDetail, ServiceRow, Snapshot, SpecPatch, StackRow, TaskFilter, TaskRow,
};
use tracing::{error, info};

use crate::daemon::{Daemon, RandomIds, now_ms};
use crate::{identity, logs, notify};

/// Why `DependsOn` cannot be set over D-Bus: dependencies are declared where the validator sees
/// the whole stack and refuses cycles.
const DEPENDS_ON_IN_STACKS: &str =
    "DependsOn cannot be set or changed here: declare depends_on in the service's stack file";

/// How long a change may wait for a majority of the managers to commit it.
const PROPOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The D-Bus backend: a handle on the daemon.
#[derive(Clone)]
pub struct DaemonBackend(pub Arc<Daemon>);

/// A stack file read by a follower, for the leader: its path, its text, and the contents of the
/// secret and config files it names (the leader cannot read this node's files).
pub type StackFileWire = (
    String,
    String,
    std::collections::BTreeMap<String, model::SecretData>,
);

/// What a reload did under the locks: applied the files here, or left them to forward to the
/// leader once the locks are released.
enum ReloadStep {
    Applied(ChangeReport),
    Forward(Vec<StackFileWire>),
}

fn failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::Failed(e.to_string())
}

fn apply_error(e: ApplyError) -> ApiError {
    match e {
        ApplyError::ServiceExists(n) => {
            ApiError::AlreadyExists(format!("service {n} already exists"))
        }
        ApplyError::ServiceNotFound(n) => ApiError::NotFound(format!("service {n} not found")),
        ApplyError::StackNotFound(n) => ApiError::NotFound(format!("stack {n} not found")),
        e @ ApplyError::PortInUse { .. } => ApiError::InvalidSpec(e.to_string()),
        ApplyError::NetworkNotFound(n) => ApiError::InvalidSpec(format!(
            "network {n} not found: create it with `shoal network create {n}` (see `shoal network ls`)"
        )),
        ApplyError::NetworkExists(n) => {
            ApiError::AlreadyExists(format!("network {n} already exists"))
        }
        ApplyError::SecretExists(n) => ApiError::AlreadyExists(format!(
            "{n} already exists: secrets and configs never change; create one under a new name to rotate"
        )),
        ApplyError::SecretNotFound(n) => ApiError::NotFound(format!("{n} not found")),
        e => ApiError::Failed(e.to_string()),
    }
}

/// Desired task count: replicas, or eligible nodes for global services.
fn desired_count(state: &ClusterState, svc: &Service) -> u64 {
    match svc.spec.mode.replicas() {
        Some(replicas) => replicas,
        None => state.nodes.values().filter(|n| n.is_eligible()).count() as u64,
    }
}

fn running_count(state: &ClusterState, svc: &Service) -> u64 {
    state
        .tasks_of(&svc.id)
        .filter(|t| {
            t.status.state == TaskState::Running
                && t.desired == TaskState::Running
                && t.spec_version == svc.version
        })
        .count() as u64
}

fn find_service<'a>(state: &'a ClusterState, key: &str) -> Result<&'a Service, ApiError> {
    state.find_service(key).ok_or_else(|| {
        ApiError::NotFound(format!("service {key} not found (see `shoal service ls`)"))
    })
}

/// Which stack each line of a failed reload's message is about, for `stack ls`: a line that
/// names a stack's file (`.../NAME.toml:3:1: ...`), the stack (`stack NAME`) or one of its
/// networks (`network NAME_...`) is that stack's; any other line (the stacks directory is
/// missing, say) is every stack's. Each stack keeps its first line.
fn reload_failures_by_stack(message: &str, stacks: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in message.lines().filter(|l| !l.trim().is_empty()) {
        let named = stacks.iter().filter(|name| {
            let file = format!("{name}.toml:");
            let path_hit = line.split_once(".toml:").is_some_and(|(p, _)| {
                format!("{p}.toml:").ends_with(&format!("/{file}")) || format!("{p}.toml:") == file
            });
            let stack_hit = line.match_indices(&format!("stack {name}")).any(|(i, m)| {
                !line[i + m.len()..]
                    .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
            path_hit || stack_hit || line.contains(&format!("network {name}_"))
        });
        let named: Vec<&String> = named.collect();
        let targets: Vec<&String> = if named.is_empty() {
            stacks.iter().collect()
        } else {
            named
        };
        for name in targets {
            out.entry(name.clone())
                .or_insert_with(|| line.trim().to_string());
        }
    }
    out
}

/// A stack's status for `stack ls`: `failed: REASON` when the last reload on this node could not
/// apply its file or an update of one of its services paused or rolled back, `updating` while an
/// update runs or tasks are missing, else `deployed`.
fn stack_status(state: &ClusterState, stack: &model::Stack, failure: Option<&String>) -> String {
    if let Some(why) = failure {
        return format!("failed: {why}");
    }
    let mut missing = (0u64, 0u64);
    for svc in state
        .services
        .values()
        .filter(|s| s.spec.stack.as_deref() == Some(stack.name.as_str()))
    {
        if let Some(u) = &svc.update_status {
            match u.state {
                UpdateState::Updating | UpdateState::RollbackStarted => {
                    return "updating".into();
                }
                UpdateState::Paused | UpdateState::RollbackPaused => {
                    return format!("failed: service {}: {}", svc.spec.name, u.message);
                }
                UpdateState::RollbackCompleted => {
                    let declared = stack.spec.services.iter().find(|s| s.name == svc.spec.name);
                    let runs_declared = declared.is_some_and(|d| {
                        let mut d = d.clone();
                        model::keep_published_ports(&mut d, &svc.spec);
                        d.task.force_update = svc.spec.task.force_update;
                        d == svc.spec
                    });
                    if !runs_declared {
                        return format!(
                            "failed: service {} was rolled back and does not run what the stack declares",
                            svc.spec.name
                        );
                    }
                }
                _ => {}
            }
        }
        missing.0 += running_count(state, svc);
        missing.1 += desired_count(state, svc);
    }
    if missing.0 < missing.1 {
        format!("updating: {} of {} tasks running", missing.0, missing.1)
    } else {
        "deployed".into()
    }
}

/// The stacks deployed from files.
fn file_stack_names(state: &ClusterState) -> Vec<String> {
    state
        .stacks
        .values()
        .filter(|s| matches!(s.source, StackSource::File { .. }))
        .map(|s| s.name.clone())
        .collect()
}

/// Whether `new` differs from `old` in more than the force-update counter (`--force`, a
/// restart, changes nothing a stack file declares).
fn changes_declared(new: &ServiceSpec, old: &ServiceSpec) -> bool {
    let mut new = new.clone();
    new.task.force_update = old.task.force_update;
    new != *old
}

/// A service of a stack declared by a file stays what the file says: changing it here is
/// refused with the file's name (`what` says what was asked: "scale", "update", ...).
fn refuse_if_file_owned(state: &ClusterState, svc: &Service, what: &str) -> Result<(), ApiError> {
    let Some(stack) = svc.spec.stack.as_deref() else {
        return Ok(());
    };
    match state.stacks.get(stack).map(|s| &s.source) {
        Some(StackSource::File { path, .. }) => Err(ApiError::Failed(format!(
            "cannot {what} service {}: it belongs to stack {stack}, declared in {path}; change the file and run `systemctl reload shoald` (or `shoal reload`)",
            svc.spec.name
        ))),
        _ => Ok(()),
    }
}

impl DaemonBackend {
    pub(crate) fn d(&self) -> &Daemon {
        &self.0
    }

    /// Subnets a new network must not overlap: this node's bridge, and every node's underlay
    /// address (a task could not reach a node whose address is inside one of its networks).
    fn avoided_subnets(&self, st: &model::ClusterState) -> Vec<model::Ipv4Subnet> {
        let mut avoid = st.node_subnets();
        avoid.push(self.d().net.subnet());
        avoid.extend(
            self.d()
                .underlay_ip()
                .and_then(|ip| model::Ipv4Subnet::new(ip, 32)),
        );
        avoid
    }

    async fn propose(&self, cmd: Command) -> Result<model::Applied, ApiError> {
        // A leader that lost its majority cannot commit and would wait forever: give up after
        // a while and say how many managers this node reaches.
        match tokio::time::timeout(PROPOSE_TIMEOUT, self.d().propose(cmd)).await {
            Ok(Ok(Ok(a))) => Ok(a),
            Ok(Ok(Err(e))) => Err(apply_error(e)),
            Ok(Err(e)) => Err(ApiError::Unavailable(format!(
                "cannot commit the change: {e}"
            ))),
            Err(_) => Err(ApiError::Unavailable(
                self.d()
                    .no_leader_reason(&format!(
                        "the change was not committed within {}s",
                        PROPOSE_TIMEOUT.as_secs()
                    ))
                    .await,
            )),
        }
    }

    /// Resolve an image for the API: a containerd that cannot be reached is `Unavailable`,
    /// anything else (missing image, bad archive) is `InvalidSpec`.
    async fn resolve(&self, image: &str) -> Result<String, ApiError> {
        self.d().resolve_image(image).await.map_err(|e| {
            if e.contains("cannot connect to containerd") {
                ApiError::Unavailable(e)
            } else {
                ApiError::InvalidSpec(e)
            }
        })
    }

    async fn signal_service(&self, name: &str) {
        let events = self.d().events.lock().ok().and_then(|e| e.clone());
        if let Some(events) = events {
            let _ = events.service_changed(name).await;
        }
    }

    /// `ServiceChanged` for every service `cmd` (a stack deploy, removal or reload, committed
    /// on top of `before`) creates, updates or removes.
    async fn signal_services_of(&self, before: &ClusterState, cmd: &Command) {
        for name in affected_services(before, cmd) {
            self.signal_service(&name).await;
        }
    }

    fn node_name(state: &ClusterState, id: Option<&String>) -> String {
        id.and_then(|n| state.nodes.get(n))
            .map(|n| n.name.clone())
            .unwrap_or_default()
    }

    /// The tasks of a service whose logs `service logs` reads, with the node each ran on.
    pub async fn log_sources(&self, service: &str) -> Result<Vec<logs::Source>, ApiError> {
        let st = self.d().state();
        let svc = find_service(&st, service)?;
        Ok(logs::sources(&st, &svc.id))
    }

    /// The actual reload, shared by D-Bus `Reload`, SIGHUP and start-up.
    pub async fn do_reload(&self) -> Result<ChangeReport, ApiError> {
        let d = self.d();
        notify::reloading();
        let step = {
            // Images a change resolves stay until it is committed. Always taken before
            // `change_lock`, never the other way round.
            let _images = d.images.in_use.read().await;
            let _guard = d.change_lock.lock().await;
            self.reload_locked().await
        };
        // A follower forwards without holding the locks: should it become the leader meanwhile,
        // the forward applies the files here and takes them itself (and so does the leader's
        // handler, should the forward reach this very node).
        let result = match step {
            Ok(ReloadStep::Applied(report)) => Ok(report),
            Ok(ReloadStep::Forward(files)) => {
                crate::forward::ClusterBackend(self.clone())
                    .apply_stack_files(files)
                    .await
            }
            Err(e) => Err(e),
        };
        let failures = match &result {
            Ok(_) => Default::default(),
            Err(e) => {
                let mut names = file_stack_names(&d.state());
                if let Ok(entries) = std::fs::read_dir(&d.cfg.paths.stacks_dir) {
                    names.extend(entries.flatten().filter_map(|e| {
                        let p = e.path();
                        (p.extension().is_some_and(|x| x == "toml"))
                            .then(|| p.file_stem()?.to_str().map(str::to_string))
                            .flatten()
                    }));
                }
                reload_failures_by_stack(&e.message(), &names)
            }
        };
        if let Ok(mut f) = d.reload_failures.lock() {
            *f = failures;
        }
        let message = result.as_ref().err().map(ApiError::message);
        match &result {
            Ok(r) => {
                info!(added = ?r.added, changed = ?r.changed, removed = ?r.removed, unchanged = r.unchanged.len(), "stacks reloaded");
                notify::reloaded(&d.summary());
                d.set_status(d.summary());
            }
            Err(_) => {
                error!(error = %message.as_deref().unwrap_or_default(), "reload failed; running stacks left as they were");
                notify::reloaded(&format!("{}; last reload failed", d.summary()));
            }
        }
        // The one place every reload (D-Bus, SIGHUP, start-up) is announced, once.
        let events = d.events.lock().ok().and_then(|e| e.clone());
        if let Some(events) = events {
            let outcome = result
                .as_ref()
                .map_err(|_| message.as_deref().unwrap_or_default());
            if let Err(e) = events.reload_finished(outcome).await {
                tracing::warn!(error = %e, "failed to announce the reload on D-Bus");
            }
        }
        result
    }

    /// Reads and checks the stack files; applies them on the leader, or says what to forward
    /// on a follower. The caller holds `images.in_use` and `change_lock`.
    async fn reload_locked(&self) -> Result<ReloadStep, ApiError> {
        let d = self.d();
        if d.role() == NodeRole::Worker && d.in_cluster() {
            // Workers hold no cluster state: stack files are applied by the managers.
            info!("stack files are applied by managers; nothing to reload on a worker");
            return Ok(ReloadStep::Applied(ChangeReport::default()));
        }
        let dir = &d.cfg.paths.stacks_dir;
        let file_stacks = file_stack_names(&d.state());
        let loaded = if !dir.exists() && file_stacks.is_empty() {
            // No directory and nothing deployed from files: nothing to do. With file stacks, a
            // missing directory is an error (a typo in paths.stacks_dir must not remove them).
            Vec::new()
        } else {
            spec::load_stacks_dir(dir).map_err(|e| {
                let mut msg = e.to_string();
                if !dir.exists() {
                    msg.push_str(&format!(
                        "\nthe stacks deployed from files ({}) were left running",
                        file_stacks.join(", ")
                    ));
                }
                ApiError::ReloadFailed(msg)
            })?
        };
        if !d.store.is_leader() && d.in_cluster() {
            // A follower validated its files; the leader applies them (the managers of a NixOS
            // cluster all carry the same stack files).
            let mut files = Vec::with_capacity(loaded.len());
            for f in &loaded {
                let text = std::fs::read_to_string(&f.path)
                    .map_err(|e| ApiError::ReloadFailed(format!("{}: {e}", f.path.display())))?;
                // The leader cannot read this node's secret files: their contents go along.
                let secrets = spec::secrets::stack_file_contents(&f.spec);
                files.push((f.path.display().to_string(), text, secrets));
            }
            return Ok(ReloadStep::Forward(files));
        }
        self.apply_loaded(loaded).await.map(ReloadStep::Applied)
    }

    /// On the leader: apply stack files a follower read (path, text and the contents of the
    /// secret and config files of each).
    pub async fn apply_stack_files(
        &self,
        files: Vec<StackFileWire>,
    ) -> Result<ChangeReport, ApiError> {
        let _images = self.d().images.in_use.read().await;
        let _guard = self.d().change_lock.lock().await;
        let mut loaded = Vec::with_capacity(files.len());
        let mut problems = Vec::new();
        for (path, text, secrets) in files {
            let path = std::path::PathBuf::from(path);
            match spec::load_stack_text(&path, &text, &mut spec::secrets::read_from_map(&secrets)) {
                Ok(l) => loaded.push(l),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if !problems.is_empty() {
            return Err(ApiError::ReloadFailed(problems.join("\n")));
        }
        self.apply_loaded(loaded).await
    }

    async fn apply_loaded(&self, loaded: Vec<spec::LoadedStack>) -> Result<ChangeReport, ApiError> {
        let d = self.d();
        let state = d.state();
        // Resolve the images of stacks whose file changed; an unchanged file costs nothing.
        let changed_images: Vec<String> = loaded
            .iter()
            .filter(|f| {
                !state.stacks.get(&f.name).is_some_and(|s| {
                    s.source
                        == StackSource::File {
                            path: f.path.display().to_string(),
                            hash: f.hash.clone(),
                        }
                })
            })
            .flat_map(|f| f.spec.services.iter().map(|s| s.task.image.clone()))
            .collect();
        let digests = d
            .resolve_images(changed_images.iter().map(String::as_str))
            .await
            .map_err(|errs| ApiError::ReloadFailed(errs.join("\n")))?;
        let files: Vec<control::stacks::FileStack> = loaded
            .into_iter()
            .map(|f| control::stacks::FileStack {
                name: f.name,
                path: f.path.display().to_string(),
                hash: f.hash,
                spec: f.spec,
            })
            .collect();
        let state = d.state();
        let plan = control::stacks::plan_reload(&state, &files, &digests, now_ms(), &mut RandomIds)
            .map_err(|errs| {
                ApiError::ReloadFailed(
                    errs.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            })?;
        if let Some(cmd) = plan.command {
            match d.propose(cmd.clone()).await {
                Ok(Ok(_)) => self.signal_services_of(&state, &cmd).await,
                Ok(Err(e)) => return Err(ApiError::ReloadFailed(e.to_string())),
                Err(e) => {
                    return Err(ApiError::Unavailable(format!(
                        "cannot commit the reload: {e}"
                    )));
                }
            }
        }
        Ok(ChangeReport {
            added: plan.added,
            changed: plan.changed,
            removed: plan.removed,
            unchanged: plan.unchanged,
        })
    }
}

impl Backend for DaemonBackend {
    async fn info(&self) -> Result<ClusterInfo, ApiError> {
        let d = self.d();
        let st = d.state();
        let leader = d.shown_leader();
        let leader_id = st
            .nodes
            .values()
            .find(|n| Some(n.raft_id) == leader)
            .map(|n| n.id.clone())
            .unwrap_or_default();
        Ok(ClusterInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            node_id: d.identity.node_id.clone(),
            node_name: d.node_name.clone(),
            cluster_id: d.cluster_id(),
            role: d.role().as_str().into(),
            is_leader: d.store.is_leader(),
            leader_id,
            managers: st
                .nodes
                .values()
                .filter(|n| n.role == NodeRole::Manager)
                .count() as u64,
            nodes: st.nodes.len() as u64,
            services: st.services.len() as u64,
            tasks: st.tasks.len() as u64,
            running: st
                .tasks
                .values()
                .filter(|t| t.status.state == TaskState::Running)
                .count() as u64,
            stacks: st.stacks.len() as u64,
            now: now_ms(),
            status: d.status(),
        })
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRow>, ApiError> {
        let d = self.d();
        let st = d.state();
        let leader = d.shown_leader();
        let mut rows: Vec<NodeRow> = st
            .nodes
            .values()
            .map(|n| {
                let ms = match n.role {
                    NodeRole::Manager if Some(n.raft_id) == leader => "leader",
                    NodeRole::Manager if n.status == NodeStatus::Ready => "reachable",
                    NodeRole::Manager => "unreachable",
                    NodeRole::Worker => "",
                };
                NodeRow::from_node(n, ms, n.id == d.identity.node_id)
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }

    async fn inspect_node(&self, node: &str) -> Result<NodeRow, ApiError> {
        let rows = self.list_nodes().await?;
        let found = rows
            .iter()
            .find(|r| (node == "self" && r.is_self) || r.id == node || r.name == node)
            .or_else(|| {
                let mut it = rows
                    .iter()
                    .filter(|r| !node.is_empty() && r.id.starts_with(node));
                match (it.next(), it.next()) {
                    (Some(r), None) => Some(r),
                    _ => None,
                }
            });
        found.cloned().ok_or_else(|| {
            ApiError::NotFound(format!("node {node} not found (see `shoal node ls`)"))
        })
    }

    async fn list_services(&self) -> Result<Vec<ServiceRow>, ApiError> {
        let st = self.d().state();
        let mut rows: Vec<ServiceRow> = st
            .services
            .values()
            .map(|s| ServiceRow {
                completed: st.completed_count(s),
                ..ServiceRow::from_service(s, running_count(&st, s), desired_count(&st, s))
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }

    async fn inspect_service(&self, service: &str) -> Result<ServiceDetail, ApiError> {
        let st = self.d().state();
        let svc = find_service(&st, service)?;
        Ok(ServiceDetail {
            service: svc.clone(),
            running: running_count(&st, svc),
            desired: desired_count(&st, svc),
            completed: st.completed_count(svc),
        })
    }

    async fn create_service(&self, mut spec: ServiceSpec) -> Result<String, ApiError> {
        let d = self.d();
        spec::units::validate_name("service", &spec.name).map_err(ApiError::InvalidSpec)?;
        spec::units::validate_image(&spec.task.image).map_err(ApiError::InvalidSpec)?;
        if !spec.depends_on.is_empty() {
            return Err(ApiError::InvalidSpec(DEPENDS_ON_IN_STACKS.into()));
        }
        if d.state().service_by_name(&spec.name).is_some() {
            return Err(ApiError::AlreadyExists(format!(
                "service {} already exists",
                spec.name
            )));
        }
        let _images = d.images.in_use.read().await;
        let digest = self.resolve(&spec.task.image).await?;
        let _guard = d.change_lock.lock().await;
        d.state()
            .resolve_secret_refs(&mut spec.task)
            .map_err(ApiError::NotFound)?;
        let now = now_ms();
        let svc = Service::new(identity::new_id(), spec, Some(digest), now);
        let id = svc.id.clone();
        let name = svc.spec.name.clone();
        self.propose(Command::CreateService(svc)).await?;
        info!(service = %name, %id, "service created");
        self.signal_service(&name).await;
        Ok(id)
    }

    async fn update_service(&self, service: &str, patch: SpecPatch) -> Result<u64, ApiError> {
        let d = self.d();
        // Resolve a new image (maybe a slow pull) before taking the change lock; the patch is
        // then applied to the spec as it is under the lock, so a change that committed while
        // the image was pulled is kept, not overwritten.
        let (image, needs_digest) = {
            let st = d.state();
            let svc = find_service(&st, service)?;
            let mut spec = svc.spec.clone();
            patch.apply(&mut spec)?;
            if changes_declared(&spec, &svc.spec) {
                refuse_if_file_owned(&st, svc, "update")?;
            }
            let changed = spec.task.image != svc.spec.task.image || patch.forces_update();
            (spec.task.image, changed)
        };
        spec::units::validate_image(&image).map_err(ApiError::InvalidSpec)?;
        let _images = d.images.in_use.read().await;
        let mut digest = if needs_digest {
            Some(self.resolve(&image).await?)
        } else {
            None
        };
        let _guard = d.change_lock.lock().await;
        let st = d.state();
        let svc = find_service(&st, service)?.clone();
        let mut spec = svc.spec.clone();
        patch.apply(&mut spec)?;
        if spec.depends_on != svc.spec.depends_on {
            return Err(ApiError::InvalidSpec(DEPENDS_ON_IN_STACKS.into()));
        }
        if std::mem::discriminant(&spec.mode) != std::mem::discriminant(&svc.spec.mode) {
            return Err(ApiError::InvalidSpec(
                "a service's mode (replicated or global) cannot change; remove and create it again"
                    .into(),
            ));
        }
        if changes_declared(&spec, &svc.spec) {
            // `--force` alone restarts the tasks of any service; anything else is the file's.
            refuse_if_file_owned(&st, &svc, "update")?;
        }
        if patch.forces_update() {
            spec.task.force_update += 1;
        }
        st.resolve_secret_refs(&mut spec.task)
            .map_err(ApiError::NotFound)?;
        if spec == svc.spec {
            return Ok(svc.version);
        }
        if spec.task.image != image {
            // The image changed again meanwhile: resolve what will actually run.
            digest = Some(self.resolve(&spec.task.image).await?);
        }
        self.propose(Command::UpdateService {
            id: svc.id.clone(),
            spec,
            image_digest: digest,
            now: now_ms(),
            if_revision: None,
        })
        .await?;
        self.signal_service(&svc.spec.name).await;
        Ok(d.state()
            .services
            .get(&svc.id)
            .map_or(svc.version, |s| s.version))
    }

    async fn scale_service(&self, service: &str, replicas: u64) -> Result<(), ApiError> {
        let _guard = self.d().change_lock.lock().await;
        let st = self.d().state();
        let svc = find_service(&st, service)?.clone();
        refuse_if_file_owned(&st, &svc, "scale")?;
        if svc.spec.mode.is_global() {
            return Err(ApiError::InvalidSpec(format!(
                "scale can only be used with replicated services and jobs; {} is {}",
                svc.spec.name,
                svc.spec.mode.name()
            )));
        }
        let replicas = spec::placement::check_replicas(replicas)
            .map_err(|e| ApiError::InvalidSpec(format!("replicas: {e}")))?;
        let mut spec = svc.spec.clone();
        spec.mode = match svc.spec.mode {
            ServiceMode::ReplicatedJob { max_concurrent, .. } => ServiceMode::ReplicatedJob {
                replicas,
                max_concurrent,
            },
            _ => ServiceMode::Replicated { replicas },
        };
        self.propose(Command::UpdateService {
            id: svc.id.clone(),
            spec,
            image_digest: None,
            now: now_ms(),
            if_revision: None,
        })
        .await?;
        self.signal_service(&svc.spec.name).await;
        Ok(())
    }

    async fn rollback_service(&self, service: &str) -> Result<u64, ApiError> {
        let _guard = self.d().change_lock.lock().await;
        let st = self.d().state();
        let svc = find_service(&st, service)?.clone();
        refuse_if_file_owned(&st, &svc, "roll back")?;
        let Some(prev) = svc.previous_spec.clone() else {
            return Err(ApiError::Failed(format!(
                "service {} has no previous spec to roll back to",
                svc.spec.name
            )));
        };
        let now = now_ms();
        self.propose(Command::Batch(vec![
            // Both name the revision read above: a rollback that raced with another change (the
            // updater's own rollback, say) is refused rather than undoing that change. Status
            // first: the rollback moves the revision on.
            Command::SetUpdateStatus {
                service_id: svc.id.clone(),
                status: Some(UpdateStatus {
                    state: UpdateState::RollbackStarted,
                    started_at: now,
                    completed_at: None,
                    message: "manually requested rollback".into(),
                }),
                if_revision: Some(svc.revision),
            },
            Command::UpdateService {
                id: svc.id.clone(),
                spec: prev,
                image_digest: svc.previous_image_digest.clone(),
                now,
                if_revision: Some(svc.revision),
            },
        ]))
        .await?;
        self.signal_service(&svc.spec.name).await;
        Ok(self
            .d()
            .state()
            .services
            .get(&svc.id)
            .map_or(svc.version, |s| s.version))
    }

    async fn remove_service(&self, service: &str) -> Result<(), ApiError> {
        let _guard = self.d().change_lock.lock().await;
        let st = self.d().state();
        let svc = find_service(&st, service)?.clone();
        refuse_if_file_owned(&st, &svc, "remove")?;
        self.propose(Command::RemoveService { id: svc.id.clone() })
            .await?;
        info!(service = %svc.spec.name, "service removed");
        self.signal_service(&svc.spec.name).await;
        Ok(())
    }

    async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<TaskRow>, ApiError> {
        let st = self.d().state();
        let service_id = match &filter.service {
            Some(s) => Some(find_service(&st, s)?.id.clone()),
            None => None,
        };
        if let Some(stack) = &filter.stack
            && !st.stacks.contains_key(stack)
            && !st
                .services
                .values()
                .any(|s| s.spec.stack.as_deref() == Some(stack))
        {
            return Err(ApiError::NotFound(format!(
                "stack {stack} not found (see `shoal stack ls`)"
            )));
        }
        let node_id = match &filter.node {
            Some(n) => Some(self.inspect_node(n).await?.id),
            None => None,
        };
        let rows = st
            .tasks
            .values()
            .filter(|t| service_id.as_ref().is_none_or(|s| &t.service_id == s))
            .filter(|t| {
                filter.stack.as_ref().is_none_or(|stack| {
                    st.services
                        .get(&t.service_id)
                        .and_then(|s| s.spec.stack.as_ref())
                        == Some(stack)
                        || t.service_name.starts_with(&format!("{stack}_"))
                })
            })
            .filter(|t| {
                node_id
                    .as_ref()
                    .is_none_or(|n| t.node_id.as_ref() == Some(n))
            })
            .filter(|t| filter.matches_desired(t.desired))
            .map(|t| TaskRow::from_task(t, &Self::node_name(&st, t.node_id.as_ref())))
            .collect();
        Ok(rows)
    }

    async fn deploy_stack(&self, name: &str, text: &str) -> Result<ChangeReport, ApiError> {
        self.deploy_stack_with_files(name, text, Default::default())
            .await
    }

    async fn deploy_stack_with_files(
        &self,
        name: &str,
        text: &str,
        files: std::collections::BTreeMap<String, model::SecretData>,
    ) -> Result<ChangeReport, ApiError> {
        let d = self.d();
        let path = format!("{name}.toml");
        let mut stack = spec::parse_stack_named(Path::new(&path), name, text)
            .map_err(|e| ApiError::InvalidSpec(e.to_string()))?;
        spec::secrets::read_stack_files(
            Path::new(&path),
            &mut stack,
            &mut spec::secrets::read_from_map(&files),
        )
        .map_err(|e| ApiError::InvalidSpec(e.to_string()))?;
        let _images = d.images.in_use.read().await;
        let _guard = d.change_lock.lock().await;
        if let Some(existing) = d.state().stacks.get(name)
            && let StackSource::File { path, .. } = &existing.source
        {
            return Err(ApiError::AlreadyExists(format!(
                "stack {name} is managed by the file {path}; edit the file and run `shoal reload`"
            )));
        }
        let images: Vec<String> = stack
            .services
            .iter()
            .map(|s| s.task.image.clone())
            .collect();
        let digests = d
            .resolve_images(images.iter().map(String::as_str))
            .await
            .map_err(|errs| ApiError::InvalidSpec(errs.join("\n")))?;
        let state = d.state();
        let change = control::stacks::plan_stack(
            &state,
            &stack,
            StackSource::Cli,
            &digests,
            now_ms(),
            &mut RandomIds,
        )
        .map_err(|e| ApiError::InvalidSpec(e.to_string()))?;
        let mut report = ChangeReport::default();
        let Some(change) = change else {
            report.unchanged = stack.services.iter().map(|s| s.name.clone()).collect();
            return Ok(report);
        };
        report.added = change.create.iter().map(|s| s.spec.name.clone()).collect();
        report.changed = change
            .update
            .iter()
            .map(|(_, s, _)| s.name.clone())
            .collect();
        report.removed = change
            .remove
            .iter()
            .filter_map(|id| state.services.get(id).map(|s| s.spec.name.clone()))
            .collect();
        report.unchanged = stack
            .services
            .iter()
            .map(|s| s.name.clone())
            .filter(|n| !report.added.contains(n) && !report.changed.contains(n))
            .collect();
        let cmd = Command::ApplyStack(change);
        self.propose(cmd.clone()).await?;
        info!(stack = %name, "stack deployed");
        self.signal_services_of(&state, &cmd).await;
        Ok(report)
    }

    async fn snapshot(&self) -> Result<Snapshot, ApiError> {
        // The listings read the state on their own; the services are read here from the same
        // state as their counts.
        let st = self.d().state();
        let services = st
            .services
            .values()
            .map(|s| ServiceDetail {
                service: s.clone(),
                running: running_count(&st, s),
                desired: desired_count(&st, s),
                completed: st.completed_count(s),
            })
            .collect();
        let task_health = st
            .tasks
            .values()
            .filter_map(|t| Some((t.id.clone(), t.status.health.clone()?)))
            .collect();
        Ok(Snapshot {
            nodes: self.list_nodes().await?,
            services,
            tasks: self.list_tasks(TaskFilter::default()).await?,
            stacks: self.list_stacks().await?,
            task_health,
        })
    }

    async fn list_stacks(&self) -> Result<Vec<StackRow>, ApiError> {
        let st = self.d().state();
        let failures = self.d().reload_failures();
        Ok(st
            .stacks
            .values()
            .map(|s| {
                let (source, path) = match &s.source {
                    StackSource::Cli => ("cli".to_string(), String::new()),
                    StackSource::File { path, .. } => ("file".to_string(), path.clone()),
                };
                StackRow {
                    status: stack_status(&st, s, failures.get(&s.name)),
                    name: s.name.clone(),
                    services: st
                        .services
                        .values()
                        .filter(|v| v.spec.stack.as_deref() == Some(s.name.as_str()))
                        .count() as u64,
                    source,
                    path,
                    updated_at: s.updated_at,
                }
            })
            .collect())
    }

    async fn remove_stack(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let d = self.d();
        let _guard = d.change_lock.lock().await;
        let st = d.state();
        if let Some(model::Stack {
            source: StackSource::File { path, .. },
            ..
        }) = st.stacks.get(name)
        {
            return Err(ApiError::Failed(format!(
                "stack {name} is managed by the file {path}; remove the file and run `shoal reload`"
            )));
        }
        let Some(change) = control::stacks::plan_stack_removal(&st, name, now_ms()) else {
            return Err(ApiError::NotFound(format!(
                "stack {name} not found (see `shoal stack ls`)"
            )));
        };
        let removed = change
            .remove
            .iter()
            .filter_map(|id| st.services.get(id).map(|s| s.spec.name.clone()))
            .collect();
        let cmd = Command::ApplyStack(change);
        self.propose(cmd.clone()).await?;
        info!(stack = %name, "stack removed");
        self.signal_services_of(&st, &cmd).await;
        Ok(removed)
    }

    async fn reload(&self) -> Result<ChangeReport, ApiError> {
        self.do_reload().await
    }

    async fn list_images(&self) -> Result<Vec<ImageRow>, ApiError> {
        crate::images::list(self.d()).await
    }

    async fn prune_images(&self, all: bool) -> Result<PruneReport, ApiError> {
        crate::images::prune(self.d(), all).await
    }

    async fn open_logs(
        &self,
        service: &str,
        options: LogOptions,
    ) -> Result<std::os::fd::OwnedFd, ApiError> {
        crate::forward::ClusterBackend(self.clone())
            .open_logs(service, options)
            .await
    }

    async fn update_node(&self, node: &str, change: NodeChange) -> Result<(), ApiError> {
        let st = self.d().state();
        let n = find_node(&st, node, &self.d().identity.node_id)?;
        let availability = match change.availability.as_deref() {
            None => None,
            Some("active") => Some(Availability::Active),
            Some("pause") => Some(Availability::Pause),
            Some("drain") => Some(Availability::Drain),
            Some(other) => {
                return Err(ApiError::InvalidSpec(format!(
                    "availability {other:?}: expected active, pause or drain"
                )));
            }
        };
        let role = match change.role.as_deref() {
            None => None,
            Some("manager") => Some(NodeRole::Manager),
            Some("worker") => Some(NodeRole::Worker),
            Some(other) => {
                return Err(ApiError::InvalidSpec(format!(
                    "role {other:?}: expected manager or worker"
                )));
            }
        };
        if role == Some(NodeRole::Worker) && n.role == NodeRole::Manager {
            let managers: Vec<&model::Node> = st
                .nodes
                .values()
                .filter(|m| m.role == NodeRole::Manager)
                .collect();
            if managers.len() <= 1 {
                return Err(ApiError::InvalidSpec(format!(
                    "cannot demote {}: it is the last manager of the cluster; promote another node first",
                    n.name
                )));
            }
            // Quorum after the change: the managers left must still have a majority reachable.
            let reachable = managers
                .iter()
                .filter(|m| m.id != n.id && m.status == NodeStatus::Ready)
                .count();
            let left = managers.len() - 1;
            if reachable < left / 2 + 1 {
                return Err(ApiError::InvalidSpec(format!(
                    "cannot demote {}: the {left} managers left would have only {reachable} reachable, less than the {} a quorum needs",
                    n.name,
                    left / 2 + 1
                )));
            }
        }
        let labels = if change.labels_add.is_empty() && change.labels_rm.is_empty() {
            None
        } else {
            let mut l = n.labels.clone();
            for k in &change.labels_rm {
                if l.remove(k).is_none() {
                    return Err(ApiError::NotFound(format!(
                        "node {} has no label {k}",
                        n.name
                    )));
                }
            }
            l.extend(change.labels_add.clone());
            Some(l)
        };
        self.propose(Command::UpdateNodeSpec {
            id: n.id.clone(),
            availability,
            labels,
            role,
        })
        .await?;
        info!(node = %n.name, ?availability, ?role, "node updated");
        Ok(())
    }

    async fn remove_node(&self, node: &str, force: bool) -> Result<(), ApiError> {
        let st = self.d().state();
        let n = find_node(&st, node, &self.d().identity.node_id)?;
        if n.role == NodeRole::Manager {
            return Err(ApiError::InvalidSpec(format!(
                "node {} is a manager: demote it first (`shoal node demote {}`)",
                n.name, n.name
            )));
        }
        if n.status != NodeStatus::Down && !force {
            return Err(ApiError::InvalidSpec(format!(
                "node {} is not down and can't be removed; stop its shoald (or use --force)",
                n.name
            )));
        }
        self.propose(Command::RemoveNode { id: n.id.clone() })
            .await?;
        info!(node = %n.name, "node removed");
        Ok(())
    }

    async fn join_token(&self, role: &str, rotate: bool) -> Result<String, ApiError> {
        let st = self.d().state();
        let Some(mut sec) = st.security.clone() else {
            return Err(ApiError::Unavailable("this cluster has no CA yet".into()));
        };
        let secret = match role {
            "worker" => &mut sec.worker_secret,
            "manager" => &mut sec.manager_secret,
            other => {
                return Err(ApiError::InvalidSpec(format!(
                    "role {other:?}: expected worker or manager"
                )));
            }
        };
        if rotate {
            *secret = rpc::token::new_secret();
        }
        let secret = secret.clone();
        if rotate {
            self.propose(Command::SetSecurity(sec.clone())).await?;
            info!(role, "join token rotated");
        }
        let digest = rpc::pki::ca_digest(&sec.ca_cert_pem).map_err(failed)?;
        Ok(rpc::token::format(&digest, &secret))
    }

    async fn cluster_init(&self) -> Result<String, ApiError> {
        crate::join::init(&self.0)
            .await
            .map_err(|e| ApiError::Failed(format!("{e:#}")))
    }

    async fn cluster_join(&self, token: &str, addrs: Vec<String>) -> Result<String, ApiError> {
        if addrs.is_empty() {
            return Err(ApiError::InvalidSpec(
                "give the address of a manager (host:port, port 4600 by default)".into(),
            ));
        }
        crate::join::join_with(&self.0, token, &addrs)
            .await
            .map(|r| r.as_str().to_string())
            .map_err(|e| ApiError::Failed(format!("{e:#}")))
    }

    async fn cluster_leave(&self, force: bool) -> Result<(), ApiError> {
        crate::join::leave(&self.0, force)
            .await
            .map_err(|e| ApiError::Failed(format!("{e:#}")))
    }

    async fn update_cluster(
        &self,
        settings: std::collections::BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        let st = self.d().state();
        if st.cluster_id.is_empty() {
            return Err(ApiError::Unavailable(
                "this node is not part of a cluster".into(),
            ));
        }
        // One validator: the values are checked as the cluster file's [cluster.settings].
        let cur = &st.settings;
        let mut values: std::collections::BTreeMap<&str, String> = [
            (
                "heartbeat_period",
                format!("\"{}ms\"", cur.heartbeat_period),
            ),
            ("task_history_limit", cur.task_history_limit.to_string()),
            ("snapshot_interval", cur.snapshot_interval.to_string()),
            ("cert_expiry", format!("\"{}ms\"", cur.cert_expiry)),
            ("autolock", cur.autolock.to_string()),
        ]
        .into_iter()
        .collect();
        for (k, v) in &settings {
            let Some(slot) = values.get_mut(k.as_str()) else {
                return Err(ApiError::InvalidSpec(format!(
                    "unknown cluster setting {k:?}: expected heartbeat_period, task_history_limit, snapshot_interval, cert_expiry or autolock"
                )));
            };
            *slot = match k.as_str() {
                "heartbeat_period" | "cert_expiry" => format!("{:?}", v),
                _ => v.clone(),
            };
        }
        let text = std::iter::once("[cluster.settings]".to_string())
            .chain(values.iter().map(|(k, v)| format!("{k} = {v}")))
            .collect::<Vec<_>>()
            .join("\n");
        let parsed = spec::parse_cluster(Path::new("cluster update"), &text)
            .map_err(|e| ApiError::InvalidSpec(e.to_string()))?;
        self.propose(Command::SetSettings(parsed.cluster.settings))
            .await?;
        info!(?settings, "cluster settings updated");
        Ok(())
    }

    async fn create_network(
        &self,
        name: &str,
        options: std::collections::BTreeMap<String, String>,
    ) -> Result<String, ApiError> {
        let req = spec::network::network_request(name, &options).map_err(ApiError::InvalidSpec)?;
        let d = self.d();
        let _guard = d.change_lock.lock().await;
        let st = d.state();
        if st.find_network(name).is_some_and(|n| n.name == name) {
            return Err(ApiError::InvalidSpec(format!(
                "network {name} already exists (see `shoal network ls`)"
            )));
        }
        let network = model::network::new_network(
            &st,
            identity::new_id(),
            &req.name,
            req.subnet,
            &self.avoided_subnets(&st),
            now_ms(),
        )
        .map_err(ApiError::InvalidSpec)?;
        let network = model::Network {
            attachable: req.attachable,
            labels: req.labels,
            driver: req.driver,
            ..network
        };
        let id = network.id.clone();
        let subnet = network.subnet;
        self.propose(Command::CreateNetwork(network)).await?;
        info!(network = %name, %subnet, "network created");
        Ok(id)
    }

    async fn list_networks(
        &self,
    ) -> Result<Vec<std::collections::BTreeMap<String, String>>, ApiError> {
        let st = self.d().state();
        let mut rows: Vec<_> = st
            .networks
            .values()
            .map(|n| model::network::network_row(&st, n))
            .collect();
        rows.sort_by(|a, b| a.get("Name").cmp(&b.get("Name")));
        Ok(rows)
    }

    async fn remove_network(&self, network: &str) -> Result<(), ApiError> {
        let d = self.d();
        let _guard = d.change_lock.lock().await;
        let st = d.state();
        let Some(net) = st.find_network(network) else {
            return Err(ApiError::NotFound(format!(
                "network {network} not found (see `shoal network ls`)"
            )));
        };
        let users: Vec<&str> = st
            .services_on_network(net)
            .map(|s| s.spec.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::Failed(format!(
                "network {} is in use by service {}: remove the service or its --network first",
                net.name,
                users.join(", ")
            )));
        }
        let (id, name) = (net.id.clone(), net.name.clone());
        self.propose(Command::RemoveNetwork { id }).await?;
        info!(network = %name, "network removed");
        Ok(())
    }

    async fn create_secret(
        &self,
        kind: model::SecretKind,
        name: &str,
        labels: std::collections::BTreeMap<String, String>,
        data: model::SecretData,
    ) -> Result<String, ApiError> {
        let k = kind.as_str();
        spec::units::validate_name(k, name).map_err(ApiError::InvalidSpec)?;
        kind.check_size(data.len()).map_err(ApiError::InvalidSpec)?;
        if labels.len() > model::limits::MAX_MAP_ENTRIES {
            return Err(ApiError::InvalidSpec(format!(
                "{} labels is above the limit of {}",
                labels.len(),
                model::limits::MAX_MAP_ENTRIES
            )));
        }
        let d = self.d();
        let _guard = d.change_lock.lock().await;
        if d.state().current_secret(kind, name).is_some() {
            return Err(ApiError::AlreadyExists(format!(
                "{k} {name} already exists: {k}s never change; create one under a new name to rotate (see `shoal {k} ls`)"
            )));
        }
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data.expose()));
        let secret = model::Secret {
            id: identity::new_id(),
            name: name.to_string(),
            labels,
            data,
            digest,
            created_at: now_ms(),
            stack: None,
        };
        let id = secret.id.clone();
        self.propose(Command::CreateSecret { kind, secret }).await?;
        info!(kind = k, name = %name, %id, "created");
        Ok(id)
    }

    async fn list_secrets(
        &self,
        kind: model::SecretKind,
    ) -> Result<Vec<std::collections::BTreeMap<String, String>>, ApiError> {
        let st = self.d().state();
        let mut rows: Vec<_> = st
            .secrets_of(kind)
            .values()
            .map(|s| model::secret::secret_row(&st, kind, s))
            .collect();
        rows.sort_by(|a, b| {
            (a.get("Name"), a.get("Created")).cmp(&(b.get("Name"), b.get("Created")))
        });
        Ok(rows)
    }

    async fn remove_secret(&self, kind: model::SecretKind, name: &str) -> Result<(), ApiError> {
        let k = kind.as_str();
        let d = self.d();
        let _guard = d.change_lock.lock().await;
        let st = d.state();
        let Some(secret) = st.find_secret(kind, name) else {
            return Err(ApiError::NotFound(format!(
                "{k} {name} not found (see `shoal {k} ls`)"
            )));
        };
        let users = st.secret_users(kind, &secret.id);
        if !users.is_empty() {
            let uses = |t: &model::TaskSpec| {
                model::secret::refs_of(t, kind)
                    .iter()
                    .any(|r| r.id == secret.id)
            };
            // A service that dropped it still needs it for `service rollback`.
            let rollback_only: Vec<&str> = st
                .services
                .values()
                .filter(|s| {
                    !uses(&s.spec.task) && s.previous_spec.as_ref().is_some_and(|p| uses(&p.task))
                })
                .map(|s| s.spec.name.as_str())
                .collect();
            let mut msg = format!(
                "{k} {} is in use by the following services: {}; remove it from them first (`shoal service update --{k}-rm {}`)",
                secret.name,
                users.join(", "),
                secret.name
            );
            if !rollback_only.is_empty() {
                msg.push_str(&format!(
                    "; {} no longer use it but `service rollback` would go back to it: update them once more to release it",
                    rollback_only.join(", ")
                ));
            }
            return Err(ApiError::Failed(msg));
        }
        let (id, name) = (secret.id.clone(), secret.name.clone());
        self.propose(Command::RemoveSecret { kind, id }).await?;
        info!(kind = k, name = %name, "removed");
        Ok(())
    }

    async fn cluster_details(
        &self,
    ) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
        let d = self.d();
        let st = d.state();
        let mut m = std::collections::BTreeMap::new();
        m.insert("node_id".to_string(), d.identity.node_id.clone());
        m.insert("node_addr".into(), d.addr.clone());
        m.insert("node_role".into(), d.role().as_str().into());
        m.insert("node_in_cluster".into(), d.in_cluster().to_string());
        if let Some(tls) = d.tls() {
            let cert = tls.cert();
            if let Ok(info) = rpc::pki::cert_info(&cert.cert_pem) {
                m.insert("node_cert_expiry".into(), info.not_after.to_string());
            }
            if let Ok(ca) = rpc::pki::ca_not_after(&cert.ca_pem) {
                m.insert("ca_expiry".into(), ca.to_string());
            }
            if let Ok(digest) = rpc::pki::ca_digest(&cert.ca_pem) {
                m.insert("ca_digest".into(), digest);
            }
        }
        m.insert("cluster_id".into(), d.cluster_id());
        if !st.cluster_id.is_empty() {
            let managers: Vec<&model::Node> = st
                .nodes
                .values()
                .filter(|n| n.role == NodeRole::Manager)
                .collect();
            m.insert("managers".into(), managers.len().to_string());
            m.insert("nodes".into(), st.nodes.len().to_string());
            let mut addrs: Vec<String> = managers.iter().map(|n| n.addr.clone()).collect();
            addrs.sort();
            m.insert("manager_addresses".into(), addrs.join(","));
            m.insert(
                "heartbeat_period_ms".into(),
                st.settings.heartbeat_period.to_string(),
            );
            m.insert(
                "task_history_limit".into(),
                st.settings.task_history_limit.to_string(),
            );
            m.insert(
                "snapshot_interval".into(),
                st.settings.snapshot_interval.to_string(),
            );
            m.insert("cert_expiry_ms".into(), st.settings.cert_expiry.to_string());
            m.insert("autolock".into(), st.settings.autolock.to_string());
            let raft = d.store.info();
            m.insert("raft_term".into(), raft.term.to_string());
            m.insert("raft_role".into(), raft.role);
            m.insert(
                "raft_last_index".into(),
                raft.last_log_index.unwrap_or(0).to_string(),
            );
            m.insert("raft_voters".into(), raft.voters.len().to_string());
            if let Some(l) = d.store.leader_addr() {
                m.insert("leader_addr".into(), l);
            }
        }
        Ok(m)
    }
}

/// The names of the services `cmd` creates, updates or removes when applied to `before`, each
/// once, in the order the command names them.
fn affected_services(before: &ClusterState, cmd: &Command) -> Vec<String> {
    fn walk(before: &ClusterState, cmd: &Command, out: &mut Vec<String>) {
        match cmd {
            Command::Batch(cmds) => cmds.iter().for_each(|c| walk(before, c, out)),
            Command::ApplyStack(change) => {
                out.extend(change.create.iter().map(|s| s.spec.name.clone()));
                out.extend(change.update.iter().map(|(_, spec, _)| spec.name.clone()));
                out.extend(
                    change
                        .remove
                        .iter()
                        .filter_map(|id| before.services.get(id))
                        .map(|s| s.spec.name.clone()),
                );
                if change.stack.is_none() {
                    // Removing a stack removes every service of it.
                    out.extend(
                        before
                            .services
                            .values()
                            .filter(|s| s.spec.stack.as_deref() == Some(change.name.as_str()))
                            .map(|s| s.spec.name.clone()),
                    );
                }
            }
            Command::CreateService(s) => out.push(s.spec.name.clone()),
            Command::UpdateService { spec, .. } => out.push(spec.name.clone()),
            Command::RemoveService { id } => {
                out.extend(before.services.get(id).map(|s| s.spec.name.clone()))
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(before, cmd, &mut out);
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|n| seen.insert(n.clone()));
    out
}

/// A node by id, unique id prefix, host name, or `self`.
fn find_node<'a>(st: &'a ClusterState, key: &str, me: &str) -> Result<&'a model::Node, ApiError> {
    let key = if key == "self" { me } else { key };
    if let Some(n) = st.nodes.get(key) {
        return Ok(n);
    }
    let mut by_name = st.nodes.values().filter(|n| n.name == key);
    if let (Some(n), None) = (by_name.next(), by_name.next()) {
        return Ok(n);
    }
    let mut it = st
        .nodes
        .values()
        .filter(|n| !key.is_empty() && n.id.starts_with(key));
    match (it.next(), it.next()) {
        (Some(n), None) => Ok(n),
        _ => Err(ApiError::NotFound(format!(
            "node {key} not found (see `shoal node ls`)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_reload_is_told_to_the_stacks_it_is_about() {
        let stacks = ["shop".to_string(), "shop2".to_string(), "web".to_string()];
        let msg = "/etc/shoal/stacks/shop.toml:3:1: unknown key \"imgae\" in [services.db]\n\
                   /etc/shoal/stacks/shop.toml:9:1: second problem\n\
                   stack web was deployed with `shoal stack deploy`; remove it first\n";
        let f = reload_failures_by_stack(msg, &stacks);
        assert_eq!(
            f.get("shop").map(String::as_str),
            Some("/etc/shoal/stacks/shop.toml:3:1: unknown key \"imgae\" in [services.db]")
        );
        assert!(f["web"].starts_with("stack web was deployed"), "{f:?}");
        assert!(
            !f.contains_key("shop2"),
            "a longer name is another stack: {f:?}"
        );

        let f = reload_failures_by_stack(
            "network shop2_front exists with subnet 10.0.9.0/24; ...",
            &stacks,
        );
        assert_eq!(f.keys().collect::<Vec<_>>(), vec!["shop2"]);

        // A line about no stack in particular is every stack's.
        let f = reload_failures_by_stack(
            "/etc/shoal/stacks: the stacks directory does not exist; create it",
            &stacks,
        );
        assert_eq!(f.len(), 3);
    }

    fn service(id: &str, name: &str, stack: Option<&str>) -> Service {
        let spec = ServiceSpec {
            name: name.into(),
            stack: stack.map(String::from),
            ..Default::default()
        };
        Service::new(id.into(), spec, None, 0)
    }

    #[test]
    fn a_stack_change_names_every_service_it_touches_once() {
        let mut st = ClusterState::default();
        for s in [
            service("a", "shop_web", Some("shop")),
            service("b", "shop_db", Some("shop")),
            service("c", "other", None),
        ] {
            st.apply(&Command::CreateService(s)).unwrap();
        }
        let web = st.services["a"].spec.clone();
        let deploy = Command::ApplyStack(model::StackChange {
            name: "shop".into(),
            stack: None,
            create: vec![service("d", "shop_cache", Some("shop"))],
            update: vec![("a".into(), web, None)],
            remove: vec!["b".into()],
            networks: Vec::new(),
            secrets: Vec::new(),
            now: 1,
        });
        assert_eq!(
            affected_services(&st, &deploy),
            ["shop_cache", "shop_web", "shop_db"]
        );
        let reload = Command::Batch(vec![Command::ApplyStack(model::StackChange {
            name: "shop".into(),
            stack: None,
            create: Vec::new(),
            update: Vec::new(),
            remove: Vec::new(),
            networks: Vec::new(),
            secrets: Vec::new(),
            now: 1,
        })]);
        // Removing a stack names its services even when the change lists none of them.
        assert_eq!(affected_services(&st, &reload), ["shop_web", "shop_db"]);
    }
}
