//! The agent's executor on real parts: images and containers through containerd, the task's
//! network namespace through `net`, output through the log driver.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agent::{
    ContainerRef, ContainerStatus, ExecError, ExecOutput, Executor, Existing, ExitStatus, Prepared,
};
use model::{MountKind, Task};
use shoal_containerd as ctd;

use crate::daemon::Daemon;
use crate::logs;

type ImageCell = Arc<tokio::sync::OnceCell<ctd::ImageInfo>>;

/// Labels shoal puts on its containers; `TASK_LABEL` is how a restarted daemon finds them.
pub const TASK_LABEL: &str = "org.shoal.task.id";
pub const SERVICE_ID_LABEL: &str = "org.shoal.service.id";
pub const SERVICE_LABEL: &str = "org.shoal.service.name";
pub const NODE_LABEL: &str = "org.shoal.node.id";
pub const SLOT_LABEL: &str = "org.shoal.task.slot";

/// Log files rotate at this size; with one rotated file a task keeps at most twice this.
pub const LOG_MAX_SIZE: u64 = 10 * 1024 * 1024;

pub struct ContainerExecutor {
    d: Arc<Daemon>,
    /// Images already verified in containerd, by (reference, digest): the tasks of one service
    /// all run the same pinned image, so only the first of them asks containerd. An entry is
    /// dropped when creating a container from it fails (the image may have been removed).
    images: std::sync::Mutex<std::collections::HashMap<(String, String), ImageCell>>,
    /// The daemon's image epoch when `images` was last trusted: removals bump it, and then
    /// every image is checked in containerd again.
    images_epoch: std::sync::atomic::AtomicU64,
}

impl ContainerExecutor {
    pub fn new(d: Arc<Daemon>) -> ContainerExecutor {
        ContainerExecutor {
            d,
            images: Default::default(),
            images_epoch: Default::default(),
        }
    }

    async fn image(&self, task: &Task) -> Result<ctd::ImageInfo, ExecError> {
        let opts = self.d.pull_options();
        let Some(digest) = &task.image_digest else {
            return self
                .d
                .runtime
                .ensure_image(&task.spec.image, &opts)
                .await
                .map_err(classify);
        };
        let key = (task.spec.image.clone(), digest.clone());
        let epoch = self
            .d
            .images
            .epoch
            .load(std::sync::atomic::Ordering::SeqCst);
        // One cell per image: the first task asks containerd, the others wait for its answer.
        let cell = match self.images.lock() {
            Ok(mut m) => {
                if self
                    .images_epoch
                    .swap(epoch, std::sync::atomic::Ordering::SeqCst)
                    != epoch
                {
                    // Images were removed since: what was verified may be gone.
                    m.clear();
                }
                m.entry(key).or_default().clone()
            }
            Err(_) => ImageCell::default(),
        };
        cell.get_or_try_init(|| async {
            self.d
                .runtime
                .ensure_image_pinned(&task.spec.image, digest, &opts)
                .await
                .map_err(classify)
        })
        .await
        .cloned()
    }

    fn forget_image(&self, task: &Task) {
        if let (Some(digest), Ok(mut m)) = (&task.image_digest, self.images.lock()) {
            m.remove(&(task.spec.image.clone(), digest.clone()));
        }
    }
}

/// The program containerd's shim starts for a task's output: the small `shoal-log-driver`
/// installed next to `shoald` when there is one (about a fifth of the memory per task), else
/// `shoald` itself in its `log-driver` mode.
fn log_driver() -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let small = exe.with_file_name("shoal-log-driver");
    Ok(if small.is_file() { small } else { exe })
}

/// containerd unreachable or overloaded is worth retrying; anything else is final for the task.
fn classify(e: ctd::Error) -> ExecError {
    let msg = e.to_string();
    match &e {
        ctd::Error::Connect { .. } => ExecError::temporary(msg),
        ctd::Error::Containerd { status, .. }
            if matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ) =>
        {
            ExecError::temporary(msg)
        }
        _ => ExecError::fatal(msg),
    }
}

/// The number of a stop signal given by name (`SIGTERM`, `term`) or number; empty is SIGTERM.
fn signal_number(name: &str) -> Result<i32, ExecError> {
    if name.is_empty() {
        return Ok(nix::sys::signal::Signal::SIGTERM as i32);
    }
    if let Ok(n) = name.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|s| s as i32)
            .map_err(|_| ExecError::fatal(format!("unknown stop signal {name}")));
    }
    let canonical = spec::units::normalize_signal(name).map_err(ExecError::fatal)?;
    canonical
        .parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| ExecError::fatal(format!("unknown stop signal {name}")))
}

impl ContainerExecutor {
    /// The task's addresses on overlay networks, with what the node needs to carry them.
    fn overlay_addresses(&self, task: &Task) -> Result<Vec<net::OverlayAddress>, ExecError> {
        let local = self.d.underlay_ip().ok_or_else(|| {
            ExecError::fatal(format!(
                "this node's advertise address {} is not an IPv4 address; overlay networks need one",
                self.d.addr
            ))
        })?;
        let plan = self.d.overlay_plan();
        task.networks
            .iter()
            .map(|a| {
                let n = plan.get(&a.network).ok_or_else(|| {
                    // The plan comes with the same assignment set as the task: only a set from
                    // an older manager lacks it.
                    ExecError::temporary(format!(
                        "network {} is not in this node's plan yet",
                        a.network
                    ))
                })?;
                Ok(net::OverlayAddress {
                    vni: n.vni,
                    subnet: n.subnet,
                    local,
                    addr: a.addr,
                })
            })
            .collect()
    }
}

impl Executor for ContainerExecutor {
    async fn prepare(&self, task: &Task) -> Result<Prepared, ExecError> {
        let d = &self.d;
        let init = if task.spec.init {
            Some(ctd::find_init().ok_or_else(|| {
                ExecError::fatal(format!(
                    "init = true needs a static tini on node {}, which has none of {}; install Debian's tini package or set init = false",
                    d.node_name,
                    ctd::INIT_CANDIDATES.join(", ")
                ))
            })?)
        } else {
            None
        };
        let t0 = std::time::Instant::now();
        let image = self.image(task).await?;
        let t_image = t0.elapsed();
        let att = d.net.attach(&task.id).await.map_err(|e| {
            ExecError::fatal(format!("failed to attach task to the node network: {e}"))
        })?;
        if !task.networks.is_empty() {
            let addresses = self.overlay_addresses(task)?;
            d.net
                .attach_overlays(&task.id, addresses)
                .await
                .map_err(|e| {
                    ExecError::fatal(format!(
                        "failed to attach task to its overlay networks: {e}"
                    ))
                })?;
            // The task can ask for names and reach VIPs as soon as it starts.
            crate::dns::refresh(d);
            crate::dns::sync_task_vips(d, &task.id).await.map_err(|e| {
                ExecError::fatal(format!("failed to set up the task's VIP balancing: {e}"))
            })?;
        }
        let t_net = t0.elapsed();
        let cid = task.container_id();
        let spec = &task.spec;
        let mut c = ctd::ContainerConfig::new(&cid, image);
        c.set_process(spec.entrypoint.clone(), spec.command.clone());
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        c.set_env(&env);
        if let Some(w) = &spec.workdir {
            c.cwd = w.clone();
        }
        if let Some(u) = &spec.user {
            c.user = u.clone();
        }
        c.hostname = spec
            .hostname
            .clone()
            .unwrap_or_else(|| model::short_id(&task.id).to_string());
        c.mounts = spec
            .mounts
            .iter()
            .map(|m| ctd::Mount {
                kind: match m.kind {
                    MountKind::Bind => ctd::MountKind::Bind {
                        source: m.source.clone().into(),
                    },
                    MountKind::Volume => ctd::MountKind::Volume {
                        name: m.source.clone(),
                    },
                    MountKind::Tmpfs => ctd::MountKind::Tmpfs { size: m.size },
                },
                target: m.target.clone(),
                read_only: m.read_only,
            })
            .collect();
        // Secrets and configs last, so a tmpfs the service mounts at /run does not hide them.
        c.mounts.extend(crate::secrets::prepare(d, task)?);
        c.resources = ctd::Resources {
            nano_cpus: spec.resources.nano_cpus,
            memory_bytes: spec.resources.memory_bytes,
            pids: spec.resources.pids,
        };
        c.read_only_rootfs = spec.read_only;
        c.cap_add = spec.cap_add.clone();
        c.cap_drop = spec.cap_drop.clone();
        c.no_new_privileges = spec.no_new_privileges;
        c.seccomp_unconfined = spec.seccomp_unconfined;
        c.init = init;
        c.rlimits = spec
            .ulimits
            .iter()
            .map(|(k, u)| (k.clone(), (u.soft, u.hard)))
            .collect();
        c.sysctls = spec.sysctls.clone();
        c.network = ctd::NetworkMode::Path(att.netns_path.clone());
        c.hosts = spec
            .extra_hosts
            .iter()
            .map(|(name, ip)| ctd::HostEntry {
                ip: *ip,
                names: vec![name.clone()],
            })
            .collect();
        if !task.networks.is_empty() {
            // Service names resolve through this node's DNS server, which forwards the rest to
            // the service's `dns` servers, else the node's.
            let mut options = spec.dns_options.clone();
            if !options.iter().any(|o| o.starts_with("ndots:")) {
                options.insert(0, "ndots:0".into());
            }
            c.dns = Some(ctd::Dns {
                nameservers: vec![std::net::IpAddr::V4(crate::dns::server_addr(d))],
                search: spec.dns_search.clone(),
                options,
            });
        } else if !spec.dns.is_empty()
            || !spec.dns_search.is_empty()
            || !spec.dns_options.is_empty()
        {
            // No overlay network: the task asks its resolvers itself (none named: the node's).
            c.dns = Some(ctd::Dns {
                nameservers: spec.dns.clone(),
                search: spec.dns_search.clone(),
                options: spec.dns_options.clone(),
            });
        }
        let mut labels: BTreeMap<String, String> = spec.labels.clone();
        labels.insert(TASK_LABEL.into(), task.id.clone());
        labels.insert(SERVICE_ID_LABEL.into(), task.service_id.clone());
        labels.insert(SERVICE_LABEL.into(), task.service_name.clone());
        labels.insert(NODE_LABEL.into(), d.identity.node_id.clone());
        labels.insert(SLOT_LABEL.into(), task.slot.to_string());
        c.labels = labels;
        let driver = log_driver().map_err(|e| {
            ExecError::fatal(format!(
                "cannot find the shoald executable for the log driver: {e}"
            ))
        })?;
        c.log = Some(ctd::LogConfig {
            path: logs::log_path(&d.cfg.paths.state_dir, task),
            max_size: LOG_MAX_SIZE,
            driver,
            name: task.name(),
            service: task.service_name.clone(),
            task: task.id.clone(),
            journal_socket: None,
        });
        match d.runtime.create(&c).await {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => {
                self.forget_image(task);
                return Err(classify(e));
            }
        }
        // A task held READY (staged by a rolling update until its turn) gets its shim and
        // runc's container now, so that its start is one `Tasks.Start` call. Others start at
        // once: for them this would only move work (a deploy measured slower with it). A
        // failure here is left to `start`, which creates the task again and reports the error
        // as a start failure, as before.
        if task.desired == model::TaskState::Ready
            && let Err(e) = d.runtime.create_task(&cid).await
        {
            tracing::debug!(task = %task.id, error = %e, "task not created ahead of its start");
        }
        tracing::debug!(
            task = %task.id,
            image_ms = t_image.as_millis() as u64,
            network_ms = (t_net - t_image).as_millis() as u64,
            create_ms = (t0.elapsed() - t_net).as_millis() as u64,
            "task prepared"
        );
        Ok(Prepared {
            container_id: cid,
            address: Some(format!("{}/{}", att.ip, att.prefix_len)),
        })
    }

    async fn start(&self, task: &Task) -> Result<u32, ExecError> {
        self.d
            .runtime
            .start(&task.container_id())
            .await
            .map_err(classify)
    }

    async fn wait(&self, c: &ContainerRef) -> Result<ExitStatus, ExecError> {
        // A failed Wait call says nothing about the process (containerd may be restarting and
        // the shim keeps the task running): only "no such task" is final.
        let exit = self.d.runtime.wait(&c.container_id).await.map_err(|e| {
            if e.is_not_found() {
                ExecError::fatal(agent::VANISHED)
            } else {
                ExecError::temporary(e.to_string())
            }
        })?;
        Ok(ExitStatus {
            code: exit.code,
            oom_killed: exit.oom_killed,
        })
    }

    async fn stop(&self, c: &ContainerRef, signal: &str, grace: Duration) -> Result<(), ExecError> {
        let sig = signal_number(signal)?;
        match self.d.runtime.stop(&c.container_id, sig, grace).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            // Retried: the process must really be stopped before the task counts as shut down.
            Err(e) => Err(ExecError::temporary(e.to_string())),
        }
    }

    async fn remove(&self, c: &ContainerRef) -> Result<(), ExecError> {
        self.d
            .runtime
            .delete(&c.container_id)
            .await
            .map_err(classify)?;
        crate::secrets::remove(&self.d.cfg.paths.run_dir, &c.task_id).map_err(|e| {
            ExecError::temporary(format!("failed to remove the task's secret files: {e}"))
        })?;
        self.d.net.detach(&c.task_id).await.map_err(|e| {
            ExecError::temporary(format!("failed to detach task from the node network: {e}"))
        })
    }

    async fn healthcheck(
        &self,
        task: &Task,
    ) -> Result<Option<model::health::ResolvedHealthcheck>, ExecError> {
        let own = task.spec.healthcheck.as_ref();
        // The image's HEALTHCHECK matters only when the service leaves something to it.
        let needs_image = own.is_none_or(|h| {
            !h.is_disabled()
                && (h.test.is_empty()
                    || h.interval == 0
                    || h.timeout == 0
                    || h.start_period == 0
                    || h.start_interval == 0
                    || h.retries == 0)
        });
        let image = if needs_image {
            self.image(task).await?.config.healthcheck
        } else {
            None
        };
        Ok(model::health::resolve(own, image.as_ref()))
    }

    async fn exec(
        &self,
        c: &ContainerRef,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, ExecError> {
        let out = self
            .d
            .runtime
            .exec(
                &c.container_id,
                command,
                timeout,
                model::health::MAX_OUTPUT_BYTES,
            )
            .await
            .map_err(classify)?;
        Ok(ExecOutput {
            exit_code: out.exit_code,
            output: out.output,
        })
    }

    async fn list(&self) -> Result<Vec<Existing>, ExecError> {
        let containers = self.d.runtime.list().await.map_err(classify)?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let task_id = c.labels.get(TASK_LABEL)?.clone();
                // Another node's containers (two nodes sharing one containerd namespace) are
                // not ours to adopt or remove.
                if c.labels
                    .get(NODE_LABEL)
                    .is_some_and(|n| *n != self.d.identity.node_id)
                {
                    return None;
                }
                let status = match c.status {
                    ctd::ContainerStatus::Running => ContainerStatus::Running {
                        pid: c.pid.unwrap_or(0),
                    },
                    ctd::ContainerStatus::Stopped => ContainerStatus::Exited(c.exit.map_or(
                        ExitStatus {
                            code: -1,
                            oom_killed: false,
                        },
                        |e| ExitStatus {
                            code: e.code,
                            oom_killed: e.oom_killed,
                        },
                    )),
                    // Paused (or undeterminable) with a process: alive, not something to replace.
                    ctd::ContainerStatus::Unknown if c.pid.is_some_and(|p| p > 0) => {
                        ContainerStatus::Running {
                            pid: c.pid.unwrap_or(0),
                        }
                    }
                    ctd::ContainerStatus::Created | ctd::ContainerStatus::Unknown => {
                        ContainerStatus::Created
                    }
                };
                Some(Existing {
                    task_id,
                    container_id: c.id,
                    status,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_number("SIGTERM").unwrap(), 15);
        assert_eq!(signal_number("term").unwrap(), 15);
        assert_eq!(signal_number("").unwrap(), 15);
        assert_eq!(signal_number("SIGKILL").unwrap(), 9);
        assert_eq!(signal_number("9").unwrap(), 9);
        assert!(signal_number("SIGNOPE").is_err());
        assert!(signal_number("-3").is_err());
    }
}
