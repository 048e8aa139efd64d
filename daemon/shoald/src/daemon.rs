//! The running daemon: the store, the control loop, the agent, published ports, reloads.
//!
//! Start-up order (each step logs and updates the unit's STATUS= line):
//! 1. read the cluster file (or the embedded default) and this node's identity;
//! 2. open the raft store; bootstrap a one-voter cluster when this node is meant to and has no
//!    state; wait to lead; record the cluster and this node in the state;
//! 3. connect to containerd (waiting for it), prepare the node network, preload images;
//! 4. start the agent (it adopts the containers it finds), the control loop, the port sync;
//! 5. own `org.shoal.Shoal1` on the system bus, send READY=1, then apply the stacks directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use model::{ClusterState, Command, Id, Millis, Node, NodeRole, NodeStatus, TaskStatus};
use spec::ClusterConfig;
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::executor::ContainerExecutor;
use crate::identity::{self, Identity};
use crate::{notify, ports};

pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Random task and service ids for the control plane.
pub struct RandomIds;

impl control::IdSource for RandomIds {
    fn next_id(&mut self) -> Id {
        identity::new_id()
    }
}

/// Everything the D-Bus backend and the loops share.
pub struct Daemon {
    pub cfg: ClusterConfig,
    pub identity: Identity,
    pub node_name: String,
    pub store: store::Store,
    pub runtime: shoal_containerd::Runtime,
    pub net: net::Network,
    /// Reloads and stack deploys run one at a time.
    pub change_lock: Mutex<()>,
    status: std::sync::Mutex<String>,
    /// Milliseconds timestamp of the control loop's last turn; the watchdog pings only while
    /// this moves.
    pub heartbeat: AtomicU64,
    pub events: std::sync::Mutex<Option<shoal_dbus::Events>>,
}

impl Daemon {
    pub fn state(&self) -> Arc<ClusterState> {
        self.store.state()
    }

    pub fn set_status(&self, status: impl Into<String>) {
        let status = status.into();
        notify::status(&status);
        if let Ok(mut s) = self.status.lock() {
            *s = status;
        }
    }

    pub fn status(&self) -> String {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.cfg.paths.state_dir.clone()
    }

    /// Propose a command; an `ApplyError` comes back as the inner error.
    pub async fn propose(&self, cmd: Command) -> Result<Result<model::Applied, model::ApplyError>> {
        self.store.propose(cmd).await.map_err(|e| anyhow!("{e}"))
    }

    /// Pull or import `reference` (once) and return the digest every task will run.
    pub async fn resolve_image(&self, reference: &str) -> Result<String, String> {
        let opts = self.pull_options();
        self.runtime
            .ensure_image(reference, &opts)
            .await
            .map(|info| info.digest)
            .map_err(|e| format!("image {reference}: {e}"))
    }

    pub fn pull_options(&self) -> shoal_containerd::PullOptions {
        shoal_containerd::PullOptions {
            insecure_registries: self
                .cfg
                .registries
                .iter()
                .filter(|(_, r)| r.insecure)
                .map(|(h, _)| h.clone())
                .collect(),
        }
    }

    /// Resolve every image of `specs`, collecting all failures.
    pub async fn resolve_images<'a>(
        &self,
        images: impl IntoIterator<Item = &'a str>,
    ) -> Result<BTreeMap<String, String>, Vec<String>> {
        let mut digests = BTreeMap::new();
        let mut errors = Vec::new();
        for image in images {
            if digests.contains_key(image) {
                continue;
            }
            match self.resolve_image(image).await {
                Ok(d) => {
                    digests.insert(image.to_string(), d);
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(digests)
        } else {
            Err(errors)
        }
    }

    pub fn summary(&self) -> String {
        let st = self.state();
        let running = st
            .tasks
            .values()
            .filter(|t| t.status.state == model::TaskState::Running)
            .count();
        format!(
            "{} on {} ({}); {} services, {} tasks running, {} stacks",
            if self.store.is_leader() {
                "leading"
            } else {
                "following"
            },
            self.node_name,
            self.cfg.node.role.as_str(),
            st.services.len(),
            running,
            st.stacks.len()
        )
    }
}

/// The host name, for the default node name.
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Open everything and return the shared daemon plus the receivers its loops need.
pub async fn start(cfg: ClusterConfig) -> Result<Arc<Daemon>> {
    let state_dir = cfg.paths.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("failed to create state directory {}", state_dir.display()))?;
    let identity = identity::load_or_create(&state_dir)?;
    let node_name = cfg.node.name.clone().unwrap_or_else(hostname);
    let addr = cfg
        .network
        .advertise
        .map(|a| a.to_string())
        .unwrap_or_else(|| format!("127.0.0.1:{}", cfg.network.listen.port()));
    info!(node_id = %identity.node_id, node = %node_name, "starting shoald {}", env!("CARGO_PKG_VERSION"));
    notify::status("opening raft store");

    if cfg.node.role == NodeRole::Worker || !cfg.cluster.join.is_empty() {
        return Err(anyhow!(
            "joining an existing cluster (role = worker or [cluster] join) is not supported yet: \
             this version runs single-node clusters; remove join/role from {} or run a manager with bootstrap",
            crate::config_path_hint()
        ));
    }

    let store = store::Store::open(
        &state_dir,
        identity.raft_id,
        &addr,
        cfg.cluster.settings.snapshot_interval,
    )
    .await
    .with_context(|| format!("failed to open raft store in {}", state_dir.display()))?;
    if !store.is_initialized().await.map_err(|e| anyhow!("{e}"))? {
        if !cfg.cluster.bootstrap {
            return Err(anyhow!(
                "this node has no cluster state and bootstrap = false; set [cluster] bootstrap = true on one manager"
            ));
        }
        info!("bootstrapping a new single-manager cluster");
    }
    store
        .bootstrap_single()
        .await
        .map_err(|e| anyhow!("failed to bootstrap raft: {e}"))?;
    store
        .wait_for_leader(Duration::from_secs(30))
        .await
        .map_err(|e| anyhow!("raft did not elect a leader: {e}"))?;

    if !store.state().cluster_id.is_empty() && store.state().settings != cfg.cluster.settings {
        warn!(
            "[cluster.settings] in the cluster file differ from the cluster's; they are taken at \
             bootstrap only, so the file's values are ignored"
        );
    }
    if store.state().cluster_id.is_empty() {
        let cmd = Command::Bootstrap {
            cluster_id: identity::new_id(),
            settings: cfg.cluster.settings.clone(),
        };
        store
            .propose(cmd)
            .await
            .map_err(|e| anyhow!("{e}"))?
            .map_err(|e| anyhow!("{e}"))?;
    }
    // Record (or refresh) this node.
    let existing = store.state().nodes.get(&identity.node_id).cloned();
    let node = Node {
        id: identity.node_id.clone(),
        raft_id: identity.raft_id,
        name: node_name.clone(),
        role: cfg.node.role,
        // The file's availability is the initial value only; later changes stay.
        availability: existing
            .as_ref()
            .map_or(cfg.node.availability, |n| n.availability),
        status: NodeStatus::Ready,
        labels: cfg.node.labels.clone(),
        addr: addr.clone(),
        last_heartbeat: now_ms(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    store
        .propose(Command::UpsertNode(node))
        .await
        .map_err(|e| anyhow!("{e}"))?
        .map_err(|e| anyhow!("{e}"))?;

    notify::status("connecting to containerd");
    let dirs = shoal_containerd::RuntimeDirs {
        run_dir: cfg.paths.run_dir.join("containers"),
        volumes_dir: state_dir.join("volumes"),
        tmp_dir: state_dir.join("tmp"),
    };
    let runtime = connect_containerd(&cfg, dirs).await?;

    let mut net_cfg = net::NetConfig::new(cfg.paths.run_dir.clone(), state_dir.join("net"));
    net_cfg.bridge = cfg.network.bridge.clone();
    net_cfg.subnet = cfg.network.subnet.clone();
    // The nftables table is named after the bridge, so that two nodes on one host (tests) or a
    // renamed bridge never share rules.
    net_cfg.nft_table = cfg.network.bridge.clone();
    let net = net::Network::new(net_cfg).map_err(|e| anyhow!("{e}"))?;
    net.setup()
        .await
        .map_err(|e| anyhow!("failed to set up the node network: {e}"))?;

    let daemon = Arc::new(Daemon {
        cfg,
        identity,
        node_name,
        store,
        runtime,
        net,
        change_lock: Mutex::new(()),
        status: std::sync::Mutex::new("starting".into()),
        heartbeat: AtomicU64::new(now_ms()),
        events: std::sync::Mutex::new(None),
    });

    for image in daemon.cfg.images.preload.clone() {
        daemon.set_status(format!("importing {image}"));
        match daemon.resolve_image(&image).await {
            Ok(digest) => info!(%image, %digest, "image preloaded"),
            Err(e) => error!(%image, error = %e, "failed to preload image"),
        }
    }
    Ok(daemon)
}

async fn connect_containerd(
    cfg: &ClusterConfig,
    dirs: shoal_containerd::RuntimeDirs,
) -> Result<shoal_containerd::Runtime> {
    let address = &cfg.containerd.address;
    let mut warned = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match shoal_containerd::Runtime::connect_with_dirs(
            address,
            &cfg.containerd.namespace,
            dirs.clone(),
        )
        .await
        {
            Ok(rt) => return Ok(rt),
            Err(e) if tokio::time::Instant::now() < deadline => {
                if !warned {
                    warn!(address = %address.display(), error = %e, "waiting for containerd");
                    notify::status(&format!("waiting for containerd at {}", address.display()));
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(anyhow!(
                    "cannot connect to containerd at {}: {e} (is containerd running? try: systemctl start containerd)",
                    address.display()
                ));
            }
        }
    }
}

/// The control loop: on the leader, reconcile whenever the state changes or a timer is due.
pub async fn run_control_loop(d: Arc<Daemon>) {
    let mut rx = d.store.subscribe();
    let mut ids = RandomIds;
    let mut last_summary = String::new();
    loop {
        d.heartbeat.store(now_ms(), Ordering::Relaxed);
        // Keep the unit's STATUS= line current.
        let summary = d.summary();
        if summary != last_summary {
            d.set_status(summary.clone());
            last_summary = summary;
        }
        let mut wake = Duration::from_secs(1);
        if d.store.is_leader() {
            let state = rx.borrow_and_update().clone();
            let now = now_ms();
            let plan = control::reconcile(&state, now, &mut ids);
            if let Some(at) = plan.wake_at {
                wake = wake.min(Duration::from_millis(at.saturating_sub(now).max(1)));
            }
            if !plan.commands.is_empty() {
                debug!(commands = plan.commands.len(), "reconcile");
                match d.store.propose(Command::Batch(plan.commands)).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => debug!(error = %e, "reconcile batch no longer applies; retrying"),
                    Err(e) => warn!(error = %e, "failed to propose reconcile batch"),
                }
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// Feed the agent the tasks assigned to this node, level-triggered.
pub async fn run_assignments(d: Arc<Daemon>, tx: watch::Sender<Vec<model::Task>>) {
    let mut rx = d.store.subscribe();
    loop {
        let state = rx.borrow_and_update().clone();
        let mine = assigned_to(&state, &d.identity.node_id);
        tx.send_if_modified(|cur| {
            if *cur == mine {
                false
            } else {
                *cur = mine;
                true
            }
        });
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn assigned_to(state: &ClusterState, node_id: &str) -> Vec<model::Task> {
    state
        .tasks
        .values()
        .filter(|t| t.node_id.as_deref() == Some(node_id))
        .cloned()
        .collect()
}

/// Forward the agent's status reports to the store, batching whatever is queued.
pub async fn run_reports(
    d: Arc<Daemon>,
    mut rx: mpsc::Receiver<(String, TaskStatus)>,
    busy: Arc<AtomicU64>,
) {
    while let Some(first) = rx.recv().await {
        busy.store(1, Ordering::Release);
        let mut batch = vec![first];
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let signals: Vec<(String, model::TaskState)> = batch
            .iter()
            .map(|(id, st)| (id.clone(), st.state))
            .collect();
        let cmds = batch
            .into_iter()
            .map(|(task_id, status)| Command::UpdateTaskStatus {
                task_id,
                node_id: d.identity.node_id.clone(),
                status,
            })
            .collect();
        let mut delay = Duration::from_millis(100);
        let cmd = Command::Batch(cmds);
        loop {
            match d.store.propose(cmd.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    warn!(error = %e, "failed to record task status; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        busy.store(0, Ordering::Release);
        let events = d.events.lock().ok().and_then(|e| e.clone());
        if let Some(events) = events {
            let state = d.state();
            for (task_id, st) in signals {
                let service = state
                    .tasks
                    .get(&task_id)
                    .map(|t| t.service_name.clone())
                    .unwrap_or_default();
                let _ = events.task_state_changed(&task_id, &service, st).await;
            }
        }
    }
}

/// Keep the published ports in line with the running tasks of this node.
pub async fn run_ports(d: Arc<Daemon>) {
    let mut rx = d.store.subscribe();
    let mut last: Option<Vec<ports::Binding>> = None;
    loop {
        let state = rx.borrow_and_update().clone();
        let want = ports::bindings(&state, &d.identity.node_id);
        if last.as_ref() != Some(&want) {
            let bindings: Vec<net::PortBinding> = want
                .iter()
                .map(|b| net::PortBinding {
                    published: b.published,
                    protocol: match b.protocol {
                        model::Protocol::Tcp => net::Protocol::Tcp,
                        model::Protocol::Udp => net::Protocol::Udp,
                    },
                    backends: b.backends.clone(),
                })
                .collect();
            match d.net.sync_ports(&bindings).await {
                Ok(()) => last = Some(want),
                Err(e) => {
                    error!(error = %e, "failed to update published ports");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Start the agent with the containerd executor.
///
/// Returns a handle on the report queue, so that a stopping daemon can let queued reports
/// reach the store first (see [`drain_reports`]).
pub async fn spawn_agent(d: &Arc<Daemon>) -> ReportQueue {
    // The agent removes containers of tasks missing from its first assignment, so it must start
    // from the real one, never from an empty placeholder.
    let assigned = assigned_to(&d.state(), &d.identity.node_id);
    collect_stale_networks(d, &assigned).await;
    let (assign_tx, assign_rx) = watch::channel(assigned);
    let (report_tx, report_rx) = mpsc::channel(4096);
    let queue = ReportQueue {
        tx: report_tx.clone(),
        busy: Arc::new(AtomicU64::new(0)),
    };
    let busy = queue.busy.clone();
    let executor = Arc::new(ContainerExecutor::new(d.clone()));
    let agent = agent::Agent::new(
        d.identity.node_id.clone(),
        executor,
        Arc::new(agent::SystemClock),
    );
    tokio::spawn(run_assignments(d.clone(), assign_tx));
    tokio::spawn(run_reports(d.clone(), report_rx, busy));
    tokio::spawn(async move { agent.run(assign_rx, report_tx).await });
    queue
}

/// The agent's report queue, as seen by shutdown.
pub struct ReportQueue {
    tx: mpsc::Sender<(String, TaskStatus)>,
    /// Reports taken off the queue and not yet committed.
    busy: Arc<AtomicU64>,
}

/// Wait (at most `limit`) until every queued task report is committed, so that a final state
/// (a task that completed just before SIGTERM) is not lost with the process.
pub async fn drain_reports(q: &ReportQueue, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if q.tx.capacity() == q.tx.max_capacity() && q.busy.load(Ordering::Acquire) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    warn!("stopping with task reports not yet recorded; the next start reconciles them");
}

/// Before the agent starts: remove network namespaces left by tasks this node no longer has (a
/// task prepared but never started, then removed while the daemon was down).
async fn collect_stale_networks(d: &Daemon, assigned: &[model::Task]) {
    let Ok(attached) = d.net.attachments() else {
        return;
    };
    for task_id in attached {
        let live = assigned
            .iter()
            .any(|t| t.id == task_id && !t.status.state.is_terminal());
        if !live && let Err(e) = d.net.detach(&task_id).await {
            warn!(task = %task_id, error = %e, "failed to remove a stale network attachment");
        }
    }
}

/// Every minute, delete the log files of tasks the cluster no longer remembers.
pub async fn run_log_gc(d: Arc<Daemon>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let state = d.state();
        let dir = d.state_dir();
        let removed =
            tokio::task::spawn_blocking(move || crate::logs::collect_garbage(&state, &dir))
                .await
                .unwrap_or(0);
        if removed > 0 {
            debug!(removed, "removed log files of forgotten tasks");
        }
    }
}

/// Ping the systemd watchdog while the control loop keeps turning.
pub async fn run_watchdog(d: Arc<Daemon>, period: Duration) {
    let every = period / 2;
    loop {
        tokio::time::sleep(every).await;
        let age = now_ms().saturating_sub(d.heartbeat.load(Ordering::Relaxed));
        if age < period.as_millis() as u64 {
            notify::watchdog();
        } else {
            warn!(
                age_ms = age,
                "control loop is stuck; not pinging the watchdog"
            );
        }
    }
}
