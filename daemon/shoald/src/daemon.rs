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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use model::{ClusterState, Command, Id, Millis, NodeRole, TaskStatus};
use spec::ClusterConfig;
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::dispatcher::{Dispatcher, NodePort};
use crate::identity::{self, Identity};
use crate::notify;
use crate::transport::RpcTransport;

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
    /// Reloads and stack deploys run one at a time. A call that also needs
    /// `images.in_use` takes that first.
    pub change_lock: Mutex<()>,
    status: std::sync::Mutex<String>,
    /// Milliseconds timestamp of the control loop's last turn; the watchdog pings only while
    /// this moves.
    pub heartbeat: AtomicU64,
    pub events: std::sync::Mutex<Option<shoal_dbus::Events>>,
    /// host:port other nodes reach this one at.
    pub addr: String,
    /// Raft messages over the node port.
    pub transport: Arc<RpcTransport>,
    tls: OnceLock<Arc<rpc::TlsState>>,
    /// The leader's in-memory view of heartbeats.
    pub dispatcher: Dispatcher,
    /// The last assignment set the dispatcher sent this node.
    pub assignments: watch::Sender<Option<rpc::AssignmentSet>>,
    /// What the DNS server for tasks answers (see `dns`).
    pub dns_names: watch::Sender<Arc<net::dns::Names>>,
    view: std::sync::Mutex<View>,
    node_port_started: std::sync::atomic::AtomicBool,
    /// Set by `cluster leave`: the session stops handing assignments to the agent.
    pub leaving: std::sync::atomic::AtomicBool,
    /// The agent's assignments, once it runs.
    pub agent_tx: std::sync::Mutex<Option<watch::Sender<Vec<model::Task>>>>,
    /// On a node that asks the leader for the D-Bus object tree's state: the last answer and
    /// its fingerprint, so that an unchanged state is not sent again.
    pub objects_seen: std::sync::Mutex<Option<(u64, shoal_dbus::Snapshot)>>,
    /// Why the last reload on this node could not apply each stack file, by stack name (empty
    /// after a reload that succeeded); `stack ls` shows it as the stack's status.
    pub reload_failures: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// Images and their removal (see `images`).
    pub images: crate::images::NodeImages,
}

/// What this node knows of the cluster besides the replicated state (all a worker knows).
#[derive(Debug, Default, Clone)]
struct View {
    /// What the join loop last said, shown in STATUS while the node is not in a cluster.
    joining: Option<String>,
    cluster_id: String,
    leader_addr: Option<String>,
    managers: Vec<String>,
}

impl Daemon {
    /// What [`Daemon::reload_failures`] holds now.
    pub fn reload_failures(&self) -> std::collections::BTreeMap<String, String> {
        self.reload_failures
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default()
    }

    pub fn state(&self) -> Arc<ClusterState> {
        self.store.state()
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This node's TLS state, once it has a certificate.
    pub fn tls(&self) -> Option<Arc<rpc::TlsState>> {
        self.tls.get().cloned()
    }

    /// The raft id of the leader to show users: a manager that just restarted may still name
    /// itself from its stored vote until it hears from the current leader, so it counts only
    /// while it really leads.
    pub fn shown_leader(&self) -> Option<u64> {
        shown_leader(
            self.store.leader(),
            self.identity.raft_id,
            self.store.is_leader(),
        )
    }

    /// This node's role: what its certificate says, or the cluster file before it has one.
    /// This node's address on the underlay (the IP of its advertise address): the `local`
    /// address of its VXLAN devices, and where other nodes send this node's overlay traffic.
    pub fn underlay_ip(&self) -> Option<std::net::Ipv4Addr> {
        model::network::node_ip(&self.addr)
    }

    /// This node's overlay plan, from its latest assignment set.
    pub fn overlay_plan(&self) -> model::network::NodeNetworks {
        self.assignments
            .borrow()
            .as_ref()
            .map(|s| s.networks.clone())
            .unwrap_or_default()
    }

    pub fn role(&self) -> NodeRole {
        self.tls()
            .and_then(|t| rpc::pki::cert_info(&t.cert().cert_pem).ok())
            .map_or(self.cfg.node.role, |i| i.role)
    }

    /// The cluster this node belongs to; empty before it joined or bootstrapped.
    pub fn cluster_id(&self) -> String {
        let st = self.state();
        if !st.cluster_id.is_empty() {
            return st.cluster_id.clone();
        }
        self.view().cluster_id.clone()
    }

    /// Whether this node belongs to a cluster.
    pub fn in_cluster(&self) -> bool {
        self.tls().is_some()
    }

    /// Store and start using a (new) certificate.
    pub fn install_cert(&self, cert: &rpc::NodeCert) -> Result<()> {
        crate::certs::save(&self.state_dir(), cert)?;
        let info = rpc::pki::cert_info(&cert.cert_pem).map_err(|e| anyhow!("{e}"))?;
        self.view().cluster_id = info.cluster_id;
        match self.tls.get() {
            Some(tls) => {
                tls.update(cert).map_err(|e| anyhow!("{e}"))?;
                if let Some(c) = self.transport.client() {
                    c.clear();
                }
            }
            None => {
                let tls = Arc::new(rpc::TlsState::new(cert).map_err(|e| anyhow!("{e}"))?);
                self.transport
                    .set_client(Arc::new(rpc::Client::new(tls.clone())));
                let _ = self.tls.set(tls);
            }
        }
        Ok(())
    }

    /// Remember where the leader and the managers are (from a heartbeat answer or a join).
    pub fn learn_managers(&self, leader: Option<String>, managers: Vec<String>) {
        let changed = {
            let mut v = self.view();
            v.leader_addr = leader.or(v.leader_addr.take());
            let changed = !managers.is_empty() && v.managers != managers;
            if changed {
                v.managers = managers.clone();
            }
            changed
        };
        if changed {
            let joined = crate::certs::Joined {
                cluster_id: self.cluster_id(),
                managers,
            };
            if let Err(e) = crate::certs::save_joined(&self.state_dir(), &joined) {
                warn!(error = %e, "failed to remember the managers' addresses");
            }
        }
    }

    /// Addresses to try for the leader, best first.
    fn leader_candidates(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(a) = self.store.leader_addr() {
            out.push(a);
        }
        let v = self.view();
        if let Some(a) = &v.leader_addr {
            out.push(a.clone());
        }
        out.extend(v.managers.iter().cloned());
        out.extend(self.cfg.cluster.join.iter().cloned());
        let mut seen = std::collections::BTreeSet::new();
        out.retain(|a| a != &self.addr && seen.insert(a.clone()));
        out
    }

    /// Send `req` to the leader: follows "not the leader" answers and tries every manager this
    /// node knows of.
    pub async fn leader_call(
        &self,
        req: rpc::Request,
        timeout: Duration,
    ) -> Result<rpc::Response, rpc::RpcError> {
        let Some(client) = self.transport.client() else {
            return Err(rpc::RpcError::Unreachable {
                addr: "the cluster".into(),
                reason: "this node has not joined a cluster".into(),
            });
        };
        let mut candidates = self.leader_candidates();
        let mut last = rpc::RpcError::Unreachable {
            addr: "the leader".into(),
            reason: "no manager address known".into(),
        };
        let mut i = 0;
        while i < candidates.len() && i < 8 {
            let addr = candidates[i].clone();
            i += 1;
            match client
                .call(&addr, rpc::client::Target::Manager, &req, timeout)
                .await
            {
                Ok(rpc::Response::Error(e)) if e.kind == rpc::ErrorKind::NotLeader => {
                    if let Some(l) = e.leader_addr.clone()
                        && !candidates[i..].contains(&l)
                    {
                        candidates.insert(i, l);
                    }
                    last = rpc::RpcError::Unreachable {
                        addr,
                        reason: e.message,
                    };
                }
                Ok(resp) => {
                    if self.store.leader_addr().is_none() {
                        self.view().leader_addr = Some(addr);
                    }
                    return Ok(resp);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Why a change cannot be made now, for the user: how many managers this node reaches.
    pub async fn no_leader_reason(&self, err: &str) -> String {
        let st = self.state();
        let managers: Vec<(String, String)> = st
            .nodes
            .values()
            .filter(|n| n.role == NodeRole::Manager)
            .map(|n| (n.id.clone(), n.addr.clone()))
            .collect();
        if managers.is_empty() {
            return format!("no manager of the cluster answers ({err}); the change was not made");
        }
        // Which managers answer on the node port now (this node counts when it is one).
        let probes = managers.iter().map(|(id, addr)| {
            let me = *id == self.identity.node_id;
            let addr = addr.clone();
            async move {
                me || matches!(
                    tokio::time::timeout(
                        Duration::from_millis(500),
                        tokio::net::TcpStream::connect(addr)
                    )
                    .await,
                    Ok(Ok(_))
                )
            }
        });
        let reach = futures_util::future::join_all(probes)
            .await
            .into_iter()
            .filter(|up| *up)
            .count();
        format!(
            "the cluster has no leader this node can reach: it reaches {reach} of {} managers and a majority ({}) is needed to make changes ({err}); reads still answer what this node knows",
            managers.len(),
            managers.len() / 2 + 1
        )
    }

    /// Serve the node port (once; needs the certificate).
    pub async fn start_node_port(self: &Arc<Self>) -> Result<()> {
        if self.node_port_started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let Some(tls) = self.tls() else {
            self.node_port_started.store(false, Ordering::SeqCst);
            return Err(anyhow!("no certificate to serve the node port with"));
        };
        let listen = self.cfg.network.listen;
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
            format!("failed to listen on {listen} (the node port, [network] listen): is another shoald running?")
        })?;
        info!(%listen, addr = %self.addr, "serving the node port");
        tokio::spawn(rpc::serve(listener, tls, Arc::new(NodePort(self.clone()))));
        Ok(())
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

    /// Record what the join loop is doing (shown in STATUS until the node is in a cluster).
    pub fn set_joining(&self, msg: String) {
        self.view().joining = Some(msg.clone());
        self.set_status(msg);
    }

    pub fn summary(&self) -> String {
        if !self.in_cluster()
            && let Some(j) = self.view().joining.clone()
        {
            return j;
        }
        let here = self.assignments.borrow().as_ref().map_or(0, |set| {
            set.tasks
                .iter()
                .filter(|t| {
                    t.status.state == model::TaskState::Running
                        && t.desired <= model::TaskState::Running
                })
                .count()
        });
        let what = if self.store.is_leader() {
            "leading"
        } else if !self.in_cluster() {
            "not in a cluster"
        } else if self.role() == NodeRole::Manager {
            "following"
        } else {
            "working"
        };
        let role = self.role();
        let head = format!(
            "{what} on {} ({}); {here} task{} running here",
            self.node_name,
            role.as_str(),
            if here == 1 { "" } else { "s" }
        );
        let st = self.state();
        if role == NodeRole::Manager && !st.cluster_id.is_empty() {
            let running = st
                .tasks
                .values()
                .filter(|t| t.status.state == model::TaskState::Running)
                .count();
            format!(
                "{head}; cluster: {} nodes, {} services, {running} tasks running, {} stacks",
                st.nodes.len(),
                st.services.len(),
                st.stacks.len()
            )
        } else {
            match self.view().leader_addr.clone() {
                Some(l) => format!("{head}; leader at {l}"),
                None => head,
            }
        }
    }
}

/// See [`Daemon::shown_leader`].
fn shown_leader(leader: Option<u64>, me: u64, leading: bool) -> Option<u64> {
    leader.filter(|l| *l != me || leading)
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
    let addr = crate::certs::advertise_addr(
        cfg.network.advertise,
        cfg.network.listen,
        &cfg.network.bridge,
    );
    info!(node_id = %identity.node_id, node = %node_name, %addr, "starting shoald {}", env!("CARGO_PKG_VERSION"));
    notify::status("opening raft store");
    let transport = Arc::new(RpcTransport::default());
    let options = store::StoreOptions {
        snapshot_interval: cfg.cluster.settings.snapshot_interval,
        // A dead leader is replaced within about a second on a LAN.
        // openraft 0.9 lets a follower call an election only after the leader lease (the
        // maximum election timeout) and then its own election timeout: about 0.6-1.2 s.
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(300),
        election_timeout_max: Duration::from_millis(600),
        ..store::StoreOptions::default()
    };
    let store = store::Store::open_with(
        &state_dir,
        identity.raft_id,
        &addr,
        options,
        transport.clone(),
    )
    .await
    .with_context(|| format!("failed to open raft store in {}", state_dir.display()))?;
    let joined = crate::certs::load_joined(&state_dir)?;
    let cert = crate::certs::load(&state_dir)?;

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
        addr,
        transport,
        tls: OnceLock::new(),
        dispatcher: Dispatcher::default(),
        assignments: watch::channel(None).0,
        dns_names: watch::channel(Arc::new(net::dns::Names::default())).0,
        view: std::sync::Mutex::new(View {
            cluster_id: joined
                .as_ref()
                .map(|j| j.cluster_id.clone())
                .unwrap_or_default(),
            joining: None,
            leader_addr: None,
            managers: joined.map(|j| j.managers).unwrap_or_default(),
        }),
        node_port_started: std::sync::atomic::AtomicBool::new(false),
        leaving: std::sync::atomic::AtomicBool::new(false),
        agent_tx: std::sync::Mutex::new(None),
        objects_seen: std::sync::Mutex::new(None),
        reload_failures: Default::default(),
        images: crate::images::NodeImages::default(),
    });
    if let Some(cert) = cert {
        daemon.install_cert(&cert)?;
    }

    for image in daemon.cfg.images.preload.clone() {
        daemon.set_status(format!("importing {image}"));
        match daemon.resolve_image(&image).await {
            Ok(digest) => {
                info!(%image, %digest, "image preloaded");
                daemon.images.preloaded(digest);
            }
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
        // The watchdog is fed only while the store is healthy and this loop turns.
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
                    Ok(Err(e)) => {
                        // The state moved since the plan was made (a precondition failed): plan
                        // again from the current state, soon.
                        debug!(error = %e, "reconcile batch no longer applies; replanning");
                        wake = Duration::from_millis(50);
                    }
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

/// Keep the published ports in line with the running tasks of this node.
pub async fn run_ports(d: Arc<Daemon>) {
    let mut rx = d.assignments.subscribe();
    let mut last: Option<Vec<model::network::PortPlan>> = None;
    // An interval, not a sleep inside the select: assignment sets may come more often than
    // the recheck period, and must not postpone the recheck for ever.
    let mut recheck = tokio::time::interval(OVERLAY_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The node bridge exists from setup on: its traffic is accepted before the first set.
    sync_forward_filter(&d, false).await;
    loop {
        // Nothing is published before the first assignment set: what to serve is not known.
        let want = rx
            .borrow_and_update()
            .as_ref()
            .map(|s| s.networks.ports.clone());
        if let Some(want) = want
            && last.as_ref() != Some(&want)
        {
            let bindings: Vec<net::PortBinding> = want
                .iter()
                .map(|b| net::PortBinding {
                    published: b.published,
                    protocol: b.protocol,
                    backends: b.local.clone(),
                    remote: b.remote.clone(),
                    host_ip: b.host_ip,
                    peers: b.peers.clone(),
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
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            // Level-triggered: the table is written again when something removed it or its
            // chains (a `flush ruleset`), not only when the bindings change; the same for the
            // accept rules in a forward filter that drops.
            _ = recheck.tick() => {
                sync_forward_filter(&d, true).await;
                if !d.net.ports_table_intact().await {
                    warn!(
                        table = %d.net.config().nft_table,
                        "shoal's nftables table was removed or changed by something else (a flush of the ruleset?); writing it again"
                    );
                    if let Err(e) = d.net.setup().await {
                        error!(error = %e, "failed to restore the node network");
                    }
                    last = None;
                }
            }
        }
    }
}

/// Keeps shoal's accept rules in a forward filter that drops by default (Docker's), saying so
/// when it had to write them again (`repair`) rather than for the first time.
async fn sync_forward_filter(d: &Daemon, repair: bool) {
    match d.net.sync_forward_filter().await {
        Ok(true) if repair => warn!(
            "shoal's accept rules in iptables' filter table (Docker's DOCKER-USER or FORWARD) were missing or out of place; writing them again"
        ),
        Ok(true) => info!(
            "a forward filter drops by default here (Docker?); shoal's bridges are accepted in it"
        ),
        Ok(false) => {}
        Err(e) => error!(error = %e, "forwarded task traffic may be dropped"),
    }
}

/// Keep this node's overlay networks as its assignment set plans them: devices, forwarding and
/// neighbour entries, task interfaces on their bridges. Level-triggered: on every new set and
/// every few seconds, so what something else deletes or flushes comes back (with a warning).
/// Nothing happens before the first set: what this node carries is not known until then.
pub async fn run_overlays(d: Arc<Daemon>) {
    let mut rx = d.assignments.subscribe();
    let mut applied: Option<model::network::NodeNetworks> = None;
    loop {
        let plan = rx.borrow_and_update().as_ref().map(|s| s.networks.clone());
        crate::dns::refresh(&d);
        crate::dns::sync_vips(&d).await;
        if let (Some(plan), Some(local)) = (plan, d.underlay_ip()) {
            let networks = plan
                .networks
                .iter()
                .map(|n| net::OverlayNetwork {
                    vni: n.vni,
                    local,
                    peers: n.peers.iter().map(|p| (p.addr, p.node_ip)).collect(),
                    host: n.host,
                })
                .collect();
            match d.net.sync_overlays(networks).await {
                Ok(rep) if rep.is_empty() => {}
                Ok(rep) if applied.as_ref() == Some(&plan) => warn!(
                    devices = rep.devices,
                    added = rep.added,
                    removed = rep.removed,
                    "overlay networks had drifted from the cluster state (devices or entries deleted or changed by something else); repaired"
                ),
                Ok(rep) => info!(
                    networks = plan.networks.len(),
                    devices = rep.devices,
                    added = rep.added,
                    removed = rep.removed,
                    "overlay networks updated"
                ),
                Err(e) => {
                    error!(error = %e, "failed to update the overlay networks");
                    applied = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            applied = Some(plan);
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(OVERLAY_RECHECK) => {}
        }
    }
}

/// How often the overlay networks are checked against their plan when nothing changes.
const OVERLAY_RECHECK: Duration = Duration::from_secs(3);

/// The agent's report queue, as seen by shutdown.
pub struct ReportQueue {
    pub tx: mpsc::Sender<(String, TaskStatus)>,
    /// Reports taken off the queue and not yet committed.
    pub busy: Arc<AtomicU64>,
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
pub async fn collect_stale_networks(d: &Daemon, assigned: &[model::Task]) {
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
        // The tasks this node still knows: the cluster's on a manager, its assignments (history
        // included) on a worker; nothing is removed before the first assignment set.
        let known = {
            let assigned = d.assignments.borrow();
            crate::logs::known_tasks(
                d.role(),
                &d.state(),
                assigned.as_ref().map(|set| set.tasks.as_slice()),
            )
        };
        let Some(known) = known else {
            continue;
        };
        let dir = d.state_dir();
        let removed =
            tokio::task::spawn_blocking(move || crate::logs::collect_garbage(&known, &dir))
                .await
                .unwrap_or(0);
        if removed > 0 {
            debug!(removed, "removed log files of forgotten tasks");
        }
    }
}

/// Exit non-zero once raft has stopped for good (a disk error, a full disk): this node can no
/// longer record anything, and systemd restarts it. Tasks keep running. Checked on a thread of its
/// own: calls into a stopped raft may never return, and may hold the async runtime's threads.
pub fn run_store_health(d: Arc<Daemon>) {
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if let Some(reason) = d.store.stop_reason() {
            let msg = format!(
                "the raft store stopped: {reason}; exiting so that systemd restarts shoald (check the disk under {})",
                d.state_dir().display()
            );
            error!("{msg}");
            notify::status(&msg);
            eprintln!("shoald: {msg}");
            std::process::exit(3);
        }
    }
}

/// Ping the systemd watchdog while the control loop keeps turning.
pub async fn run_watchdog(d: Arc<Daemon>, period: Duration) {
    let every = period / 2;
    loop {
        tokio::time::sleep(every).await;
        let age = now_ms().saturating_sub(d.heartbeat.load(Ordering::Relaxed));
        if age < period.as_millis() as u64 && d.store.stop_reason().is_none() {
            notify::watchdog();
        } else {
            warn!(
                age_ms = age,
                "control loop is stuck; not pinging the watchdog"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shown_leader;

    #[test]
    fn a_manager_names_itself_leader_only_while_it_leads() {
        assert_eq!(shown_leader(Some(7), 7, true), Some(7));
        // Restarted with its old vote, not leading (yet or any more).
        assert_eq!(shown_leader(Some(7), 7, false), None);
        assert_eq!(shown_leader(Some(3), 7, false), Some(3));
        assert_eq!(shown_leader(None, 7, false), None);
    }
}
