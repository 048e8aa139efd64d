//! Single-node container networking for shoal: the only crate that touches network namespaces,
//! the node bridge and nftables.
//!
//! # What it builds
//!
//! - Every task gets its own network namespace, bind-mounted at `<run_dir>/netns/<task_id>` so it
//!   survives daemon restarts and containerd can join it by path.
//! - The namespace is wired to the node bridge (default `shoal0`, subnet `10.231.0.0/16`, gateway
//!   `.1`) in-process over rtnetlink, without running any program: a veth pair whose node end
//!   (`shv<12 hex digits>`, derived from bridge and task id) is a port of the bridge with hairpin
//!   mode on, and whose other end is created directly inside the namespace as `eth0`, with the
//!   task's address and a default route via the gateway; `lo` is brought up too. The bridge is
//!   created (with the gateway address, up) on first use. Netlink sockets are bound to the
//!   namespace of the thread that opens them, so every operation runs on a short-lived dedicated
//!   thread that opens a socket in the node's namespace, then joins (`setns`) the task's namespace
//!   and opens another there; tokio's threads never change namespace. An attach takes a handful of
//!   netlink requests and a few milliseconds of (mostly kernel) CPU, and attaches of different
//!   tasks run in parallel: 50 concurrent attaches take about 0.1 to 0.3 s on two cores, where
//!   running the CNI plugins took about 3 s.
//! - Addresses come from shoal's own allocator: one file per address taken with `O_EXCL`
//!   (atomic, lock-free, crash-safe), handed out round-robin, released on detach.
//! - Outbound task traffic (to anything outside the subnet) is masqueraded, and published ports
//!   are served on every address of the node, `localhost` included, spread over all local tasks of
//!   a service, by one nftables table (`table ip shoal` by default; see [`Network::sync_ports`]).
//!
//! # Files
//!
//! | path | what |
//! |---|---|
//! | `<run_dir>/netns/` | a shared mount point (as `ip netns` makes `/run/netns`) |
//! | `<run_dir>/netns/<task_id>` | the task's namespace (an nsfs bind mount) |
//! | `<state_dir>/net/attachments/<task_id>.json` | the attachment record: address, node-side veth |
//! | `<state_dir>/net/ipam/<bridge>/<ip>` | an allocated address; holds the owning task id |
//! | `<state_dir>/net/ipam/<bridge>/last_reserved_ip.0` | where the round-robin search resumes |
//!
//! # Upgrading from the CNI implementation
//!
//! Earlier versions ran the CNI plugins `loopback`, `bridge` and `host-local`. Their state keeps
//! working: `host-local` used the same address-file layout, so its allocations are honoured and
//! released; their records (which carry the CNI result) are read, checked and detached, and
//! detaching them also removes the per-task masquerade chain the `bridge` plugin had installed
//! with `iptables`. [`NetConfig::cni_bin_dir`] is no longer used.
//!
//! # Requirements and coexistence
//!
//! Root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and the `nft` command (nftables); `iptables` to remove
//! the masquerade chains of attachments made by the CNI implementation, and where a forward
//! filter drops by default. shoal's table is separate from all others, and all its chains have
//! policy `accept`, so Docker's and iptables' tables keep working. A `drop` in another table's
//! `forward` chain (Docker sets the iptables `FORWARD` policy to `DROP`) would also drop
//! forwarded task traffic, so where one is found shoal keeps accept rules for its own traffic at
//! the top of Docker's `DOCKER-USER` chain (or of `FORWARD`), written with `iptables` and marked
//! with the comment `shoal` ([`Network::sync_forward_filter`]).
//!
//! # Async
//!
//! Every call that changes the kernel is `async` and runs on tokio's blocking pool (which hands
//! namespace work to dedicated threads); the cheap lookups of files on disk are plain functions.

pub mod dns;
mod error;
mod filter;
mod ipam;
mod legacy;
mod netlink;
mod netns;
mod nft;
mod overlay;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use error::{Error, Result};
pub use model::Ipv4Subnet;
pub use model::Protocol;
pub use overlay::{OVERLAY_MTU, Repairs, VXLAN_PORT, mac_of};

use ipam::Ipam;
use netlink::Wiring;

/// Settings of the node network. [`NetConfig::default`] gives shoal's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Runtime directory (tmpfs), e.g. `/run/shoal`. Namespaces live in `<run_dir>/netns/`.
    pub run_dir: PathBuf,
    /// Persistent state directory, e.g. `/var/lib/shoal`. Records and IPAM data live in
    /// `<state_dir>/net/`.
    pub state_dir: PathBuf,
    /// Name of the node bridge (at most 15 characters), `shoal0` by default.
    pub bridge: String,
    /// The tasks' IPv4 subnet in CIDR notation, `10.231.0.0/16` by default; the bridge takes the
    /// first address as gateway.
    pub subnet: String,
    /// Deprecated and ignored: tasks are no longer wired by CNI plugins. Kept so existing
    /// configurations and callers still compile; `/usr/lib/cni` by default.
    pub cni_bin_dir: PathBuf,
    /// Name of shoal's nftables table (family `ip`), `shoal` by default.
    pub nft_table: String,
}

impl NetConfig {
    /// shoal's defaults with the given runtime and state directories.
    pub fn new(run_dir: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        NetConfig {
            run_dir: run_dir.into(),
            state_dir: state_dir.into(),
            ..NetConfig::default()
        }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            run_dir: PathBuf::from("/run/shoal"),
            state_dir: PathBuf::from("/var/lib/shoal"),
            bridge: "shoal0".into(),
            subnet: "10.231.0.0/16".into(),
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            nft_table: "shoal".into(),
        }
    }
}

/// A task's place on the node network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The task this attachment belongs to.
    pub task_id: String,
    /// The network namespace to run the task's container in (containerd joins it by path).
    pub netns_path: PathBuf,
    /// The task's address on the bridge.
    pub ip: Ipv4Addr,
    /// Prefix length of the task's address (that of the subnet).
    pub prefix_len: u8,
    /// The task's default gateway (the bridge's address).
    pub gateway: Ipv4Addr,
}

/// One published port and the tasks that serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortBinding {
    /// Port on the node's addresses (`localhost` included).
    pub published: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Task address and target port of every task serving the port. New connections are spread
    /// over them round-robin.
    pub backends: Vec<(Ipv4Addr, u16)>,
    /// Other nodes to forward to (same port) when no local task serves it: the routing mesh.
    /// Forwarded connections are masqueraded behind this node's address, so the reply comes
    /// back through it. Without backends and remote nodes the port is not served.
    pub remote: Vec<Ipv4Addr>,
    /// Serve the port only on this address of the node (`None`: on every address).
    pub host_ip: Option<Ipv4Addr>,
    /// For a bound port with backends: the other nodes of the routing mesh, whose forwarded
    /// connections arrive at the node's own address and are served too.
    pub peers: Vec<Ipv4Addr>,
}

/// The attachment record kept on disk.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    attachment: Attachment,
    /// The node-side veth. Absent in records written by the CNI implementation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_ifname: Option<String>,
    /// The `bridge` plugin's ADD result, in records written by the CNI implementation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cni_result: Option<Value>,
    /// The task's interfaces on overlay networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    overlays: Vec<OverlayLink>,
}

/// A task's interface on an overlay network, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OverlayLink {
    host_ifname: String,
    ifname: String,
    vni: u32,
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl OverlayLink {
    fn kernel(&self) -> overlay::Link {
        overlay::Link {
            host_ifname: self.host_ifname.clone(),
            ifname: self.ifname.clone(),
            vni: self.vni,
            addr: self.addr,
            prefix_len: self.prefix_len,
        }
    }
}

/// An overlay network as this node carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayNetwork {
    /// The VXLAN network identifier.
    pub vni: u32,
    /// The node's underlay address: the VXLAN device's `local` address.
    pub local: Ipv4Addr,
    /// Overlay address → underlay address of its node, for every task of the network on
    /// another node.
    pub peers: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// The node's own address on the network, set on the bridge as a /32 (with the MAC
    /// [`mac_of`] gives it, so that the other nodes' entries reach it), with a /32 route to the
    /// bridge for each peer: the ingress network.
    pub host: Option<Ipv4Addr>,
}

/// A service's virtual IP as one task sees it: the running tasks behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub vip: Ipv4Addr,
    pub backends: Vec<Ipv4Addr>,
}

/// A task's address on an overlay network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayAddress {
    pub vni: u32,
    pub subnet: Ipv4Subnet,
    /// The node's underlay address (the network's devices are made if missing).
    pub local: Ipv4Addr,
    pub addr: Ipv4Addr,
}

impl Record {
    /// The node-side veth of the attachment, when the record names it.
    fn host_ifname(&self, bridge: &str) -> Option<String> {
        self.host_ifname.clone().or_else(|| {
            self.cni_result
                .as_ref()
                .and_then(|r| legacy::host_veth(r, bridge))
        })
    }
}

/// The node-side veth name of a task: `shv` and 12 hex digits of a hash of bridge and task id,
/// stable across restarts (so a crashed attach can be cleaned up without its record) and within
/// the kernel's 15-character limit.
fn veth_name(bridge: &str, task_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{bridge}/{task_id}").as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("shv{hex}")
}

/// The node end of a task's interface on overlay network `vni`: `shw` and 12 hex digits.
fn overlay_veth_name(vni: u32, task_id: &str) -> String {
    let mut name = veth_name(&format!("overlay-{vni}"), task_id);
    name.replace_range(..3, "shw");
    name
}

const TASK_LOCKS: usize = 64;

struct Inner {
    cfg: NetConfig,
    subnet: Ipv4Subnet,
    ipam: Ipam,
    /// Striped locks: attach, detach and check of one task never run concurrently.
    task_locks: [Mutex<()>; TASK_LOCKS],
    /// Serializes changes to the nftables table.
    nft_lock: Mutex<()>,
    /// Serializes changes to overlay devices (a sync never removes what an attach just made).
    overlay_lock: Mutex<()>,
    /// The VIP table last written into each task's namespace.
    vips_applied: Mutex<std::collections::HashMap<String, String>>,
    /// Set once the bridge, its address and the nftables table are known to exist; until then
    /// attaches make them, one at a time.
    bridge_ready: AtomicBool,
    bridge_lock: Mutex<()>,
    /// Set once the state directories and the shared namespace mount point exist.
    dirs_ready: AtomicBool,
}

/// The node network: attaches tasks to the bridge and publishes their ports.
///
/// Cheap to clone; clones share locks. Every operation is idempotent, and everything it needs to
/// continue after a daemon restart is on disk, so a new `Network` over the same directories picks
/// up where the previous one stopped.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

impl Network {
    /// Checks `cfg` and returns the network. Touches nothing: call [`Network::setup`] before use.
    pub fn new(cfg: NetConfig) -> Result<Network> {
        let subnet = cfg
            .subnet
            .parse::<Ipv4Subnet>()
            .map_err(|reason| Error::InvalidConfig {
                field: "subnet",
                value: cfg.subnet.clone(),
                reason,
            })?;
        check_name("bridge", &cfg.bridge, 15, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
        })?;
        check_name("nft_table", &cfg.nft_table, 64, |c| {
            c.is_ascii_alphanumeric() || c == '_'
        })?;
        for (field, path) in [("run_dir", &cfg.run_dir), ("state_dir", &cfg.state_dir)] {
            if !path.is_absolute() {
                return Err(Error::InvalidConfig {
                    field,
                    value: path.display().to_string(),
                    reason: "must be an absolute path".into(),
                });
            }
        }
        let ipam = Ipam::new(
            cfg.state_dir.join("net").join("ipam").join(&cfg.bridge),
            subnet,
        );
        Ok(Network {
            inner: Arc::new(Inner {
                cfg,
                subnet,
                ipam,
                task_locks: std::array::from_fn(|_| Mutex::new(())),
                nft_lock: Mutex::new(()),
                overlay_lock: Mutex::new(()),
                vips_applied: Mutex::new(Default::default()),
                bridge_ready: AtomicBool::new(false),
                bridge_lock: Mutex::new(()),
                dirs_ready: AtomicBool::new(false),
            }),
        })
    }

    /// The configuration this network was made with.
    pub fn config(&self) -> &NetConfig {
        &self.inner.cfg
    }

    /// The tasks' subnet.
    pub fn subnet(&self) -> Ipv4Subnet {
        self.inner.subnet
    }

    /// The bridge's address, the tasks' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.inner.subnet.gateway()
    }

    /// Where the namespace of `task_id` is (or would be) mounted.
    pub fn netns_path(&self, task_id: &str) -> PathBuf {
        self.inner.netns_dir().join(task_id)
    }

    /// Prepares the node, idempotently: enables `net.ipv4.ip_forward` and `route_localnet` on
    /// the bridge only (so `localhost` can reach published ports), creates the
    /// directories and the bridge (with the gateway address, up), and creates the nftables table
    /// or refreshes its fixed chains. Ports already published stay served and attached tasks stay
    /// connected, so calling it after a daemon restart interrupts nothing.
    pub async fn setup(&self) -> Result<()> {
        self.blocking(|inner| inner.setup()).await
    }

    /// Attaches `task_id` to the bridge: creates its namespace, allocates an address, wires the
    /// namespace to the bridge (see the crate documentation) and records the result. Attaching an
    /// attached task returns its existing attachment, also after a daemon restart; leftovers of an
    /// attach interrupted by a crash are removed first. A failed attach leaves nothing behind.
    /// Fails with [`Error::SubnetFull`] when no address is free.
    pub async fn attach(&self, task_id: &str) -> Result<Attachment> {
        let id = task_id.to_owned();
        self.blocking(move |inner| inner.attach(&id)).await
    }

    /// Verifies that the attachment of `task_id` is still as created: the node-side veth is an up
    /// port of the bridge, and inside the namespace `eth0` is up with the task's address and the
    /// default route via the gateway. Fails with [`Error::Broken`] naming what differs.
    pub async fn check(&self, task_id: &str) -> Result<()> {
        let id = task_id.to_owned();
        self.blocking(move |inner| inner.check(&id)).await
    }

    /// Detaches `task_id`: deletes its veth pair, releases its address, then unmounts and removes
    /// its namespace and record. Detaching a task that is not attached succeeds.
    pub async fn detach(&self, task_id: &str) -> Result<()> {
        let id = task_id.to_owned();
        self.blocking(move |inner| inner.detach(&id)).await
    }

    /// The tasks that have a namespace or a record on disk, sorted. After a restart, detach those
    /// that no longer run; after a reboot, every record without a namespace is such a leftover.
    pub fn attachments(&self) -> Result<Vec<String>> {
        self.inner.attachments()
    }

    /// The attachment of `task_id`, if it has a record and its namespace is mounted. Works after a
    /// daemon restart. A corrupt record reads as `None` (and is logged); [`Network::attach`]
    /// repairs it.
    pub fn attachment(&self, task_id: &str) -> Option<Attachment> {
        validate_task_id(task_id).ok()?;
        match self.inner.read_record(task_id) {
            Ok(Some(rec)) if netns::is_mounted(&rec.attachment.netns_path) => Some(rec.attachment),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(task = task_id, error = %e, "ignoring attachment record");
                None
            }
        }
    }

    /// Gives the attached task `task_id` an interface on each overlay network of `addresses`,
    /// named `eth1`, `eth2`, ... in that order, with the address and the MAC derived from it;
    /// each network's bridge and VXLAN device are made when missing. The forwarding entries of
    /// the network's other tasks come from [`Network::sync_overlays`]. Idempotent: interfaces
    /// of an earlier try are replaced. A task with interfaces keeps its networks' devices alive
    /// until it is detached.
    pub async fn attach_overlays(
        &self,
        task_id: &str,
        addresses: Vec<OverlayAddress>,
    ) -> Result<()> {
        let id = task_id.to_owned();
        self.blocking(move |inner| inner.attach_overlays(&id, &addresses))
            .await
    }

    /// Brings this node's overlay networks to exactly `networks` (level-triggered: pass them all
    /// every time): makes missing devices, recreates ones that differ (another VNI, `local`
    /// address or port), writes the forwarding and neighbour entries of each network's peers and
    /// removes every other entry; puts back task interfaces that were taken off their bridge or
    /// deleted; and removes the devices of networks neither listed nor used by an attached task.
    /// Returns what it had to change, empty when everything was as it should be.
    pub async fn sync_overlays(&self, networks: Vec<OverlayNetwork>) -> Result<Repairs> {
        self.blocking(move |inner| inner.sync_overlays(&networks))
            .await
    }

    /// Makes connections from task `task_id` to each VIP of `vips` go to its backends, spread
    /// round-robin, and refuses those to a VIP without backends at once: an nftables table in the
    /// task's own namespace, replaced atomically, and only when it changes. Idempotent.
    pub async fn sync_task_vips(&self, task_id: &str, vips: Vec<Vip>) -> Result<()> {
        let id = task_id.to_owned();
        self.blocking(move |inner| inner.sync_task_vips(&id, &vips))
            .await
    }

    /// Publishes exactly `bindings`, replacing whatever was published before in one atomic
    /// nftables transaction (level-triggered: pass the full list every time).
    ///
    /// A connection to a published port on any address of the node (`127.0.0.1`, the node's
    /// other addresses, the bridge gateway) is DNAT-ed to one of its backends, chosen round-robin.
    /// Connections from `localhost` and from tasks are masqueraded behind the gateway so replies
    /// return; remote clients keep their source address. A binding without backends, or a port
    /// missing from the list, is not served. Refuses a `(published, protocol)` pair that appears
    /// twice, and port 0.
    pub async fn sync_ports(&self, bindings: &[PortBinding]) -> Result<()> {
        let bindings = bindings.to_vec();
        self.blocking(move |inner| inner.sync_ports(&bindings))
            .await
    }

    /// Whether shoal's nftables table is there with all its chains (something may have flushed
    /// the ruleset, as the NixOS nftables service does on reload). Cheap: one `nft list`.
    pub async fn ports_table_intact(&self) -> bool {
        self.blocking(|inner| Ok(nft::table_intact(&inner.cfg.nft_table)))
            .await
            .unwrap_or(false)
    }

    /// Keeps shoal's accept rules in a forward filter that drops by default (Docker's
    /// `DOCKER-USER`, or `FORWARD` with policy `DROP`; see the crate documentation). Returns
    /// whether something had to be written: the first time, or after something removed them.
    pub async fn sync_forward_filter(&self) -> Result<bool> {
        self.blocking(|inner| {
            let _nft = inner.lock_nft();
            filter::sync(&inner.cfg.bridge).map_err(Error::ForwardFilter)
        })
        .await
    }

    /// Stops publishing every port: rewrites shoal's nftables table without any published port.
    /// The table itself stays, since it also masquerades the tasks' outbound traffic;
    /// [`Network::destroy`] removes it. Idempotent.
    pub async fn teardown_ports(&self) -> Result<()> {
        self.blocking(|inner| inner.teardown_ports()).await
    }

    /// Removes everything this network made: detaches every task, removes the nftables table,
    /// deletes the bridge, unmounts `<run_dir>/netns` and removes the address allocations. For
    /// leaving a cluster and for tests; idempotent.
    pub async fn destroy(&self) -> Result<()> {
        self.blocking(|inner| inner.destroy()).await
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::Worker(e.to_string()))?
    }
}

impl Inner {
    fn netns_dir(&self) -> PathBuf {
        self.cfg.run_dir.join("netns")
    }

    fn net_state_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("net")
    }

    fn records_dir(&self) -> PathBuf {
        self.net_state_dir().join("attachments")
    }

    fn record_path(&self, task_id: &str) -> PathBuf {
        self.records_dir().join(format!("{task_id}.json"))
    }

    fn table(&self) -> nft::Table<'_> {
        nft::Table {
            name: &self.cfg.nft_table,
            bridge: &self.cfg.bridge,
            subnet: self.subnet,
        }
    }

    fn lock_task(&self, task_id: &str) -> MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        task_id.hash(&mut h);
        let lock = &self.task_locks[(h.finish() % TASK_LOCKS as u64) as usize];
        // A panic while holding the lock leaves no state in it worth protecting.
        lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_nft(&self) -> MutexGuard<'_, ()> {
        self.nft_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn setup(&self) -> Result<()> {
        enable_sysctl("net.ipv4.ip_forward")?;
        self.create_dirs()?;
        self.ensure_bridge(true)?;
        tracing::info!(
            bridge = %self.cfg.bridge,
            subnet = %self.subnet,
            table = %self.cfg.nft_table,
            "node network ready"
        );
        Ok(())
    }

    fn create_dirs(&self) -> Result<()> {
        // The stat notices a `destroy` by another `Network` over the same directories.
        if self.dirs_ready.load(Ordering::Acquire) && self.netns_dir().is_dir() {
            return Ok(());
        }
        for dir in [self.records_dir(), self.ipam.dir().to_owned()] {
            fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        }
        netns::ensure_shared_dir(&self.netns_dir())?;
        self.dirs_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Makes the bridge (with the gateway address, up) and the nftables table (masquerade of
    /// outbound task traffic, published ports kept) exist, and enables forwarding. Once done, it
    /// is skipped unless `force`d (when the bridge vanished, or by [`Inner::setup`]).
    fn ensure_bridge(&self, force: bool) -> Result<()> {
        if !force && self.bridge_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let _first = self.bridge_lock.lock().unwrap_or_else(|p| p.into_inner());
        if !force && self.bridge_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        enable_sysctl("net.ipv4.ip_forward")?;
        let bridge = self.cfg.bridge.clone();
        let (gateway, prefix_len) = (self.subnet.gateway(), self.subnet.prefix_len());
        netlink::run(None, move |h| async move {
            netlink::ensure_bridge(&h.host, &bridge, gateway, prefix_len)
                .await
                .map(drop)
        })?;
        // `localhost` reaches published ports: packets from 127.0.0.1, DNAT-ed to a task, leave
        // through the bridge. Allowed on the bridge only, never for every interface, so a packet
        // for 127.0.0.0/8 arriving from the network stays a martian even while shoal's rules
        // are missing.
        enable_sysctl(&format!("net.ipv4.conf.{}.route_localnet", self.cfg.bridge))?;
        {
            let _nft = self.lock_nft();
            nft::apply(
                "set up",
                &self.cfg.nft_table,
                &nft::ensure_script(&self.table()),
            )?;
        }
        self.bridge_ready.store(true, Ordering::Release);
        Ok(())
    }

    fn attach(&self, task_id: &str) -> Result<Attachment> {
        validate_task_id(task_id)?;
        let _task = self.lock_task(task_id);
        let path = self.netns_dir().join(task_id);
        let record = self.read_record(task_id);
        match &record {
            Ok(Some(rec)) if netns::is_mounted(&path) => return Ok(rec.attachment.clone()),
            Ok(None) if !path.exists() => {}
            // A record without namespace (after a reboot), a namespace without record (a crashed
            // attach) or a corrupt record: remove what is left, then start clean.
            _ => {
                if let Err(e) = &record {
                    tracing::warn!(task = task_id, error = %e, "replacing attachment record");
                }
                self.release(task_id, &path)?;
            }
        }
        self.create_dirs()?;
        self.ensure_bridge(false)?;
        netns::create(&path)?;
        match self.wire(task_id, &path) {
            Ok(attachment) => {
                tracing::info!(task = task_id, ip = %attachment.ip, "task attached");
                Ok(attachment)
            }
            Err(e) => {
                if let Err(undo) = self.release(task_id, &path) {
                    tracing::warn!(task = task_id, error = %undo, "undoing a failed attach");
                }
                Err(e)
            }
        }
    }

    /// Allocates the task's address, wires its namespace to the bridge and writes the record.
    fn wire(&self, task_id: &str, path: &Path) -> Result<Attachment> {
        let ip = self.ipam.allocate(task_id)?;
        let host_ifname = veth_name(&self.cfg.bridge, task_id);
        let wiring = || Wiring {
            bridge: self.cfg.bridge.clone(),
            host_ifname: host_ifname.clone(),
            ip,
            prefix_len: self.subnet.prefix_len(),
            gateway: self.subnet.gateway(),
        };
        let run = |w: Wiring| {
            netlink::run(
                Some(path),
                move |h| async move { netlink::wire(&h, &w).await },
            )
        };
        if run(wiring())?.is_err() {
            // The bridge was deleted behind our back: make it again, once.
            tracing::warn!(bridge = %self.cfg.bridge, "bridge missing, recreating it");
            self.ensure_bridge(true)?;
            if run(wiring())?.is_err() {
                return Err(Error::Netlink {
                    action: format!("attach task {task_id} to bridge {}", self.cfg.bridge),
                    message: "the bridge disappears as soon as it is created".into(),
                });
            }
        }
        let attachment = Attachment {
            task_id: task_id.to_owned(),
            netns_path: path.to_owned(),
            ip,
            prefix_len: self.subnet.prefix_len(),
            gateway: self.subnet.gateway(),
        };
        self.write_record(&Record {
            attachment: attachment.clone(),
            host_ifname: Some(host_ifname),
            cni_result: None,
            overlays: Vec::new(),
        })?;
        Ok(attachment)
    }

    fn check(&self, task_id: &str) -> Result<()> {
        validate_task_id(task_id)?;
        let _task = self.lock_task(task_id);
        let path = self.netns_dir().join(task_id);
        let not_attached = |reason| Error::NotAttached {
            task: task_id.to_owned(),
            reason,
        };
        let rec = self
            .read_record(task_id)?
            .ok_or_else(|| not_attached("it has no attachment record"))?;
        if !netns::is_mounted(&path) {
            return Err(not_attached("its network namespace is not mounted"));
        }
        let broken = |reason: String| Error::Broken {
            task: task_id.to_owned(),
            reason,
        };
        let host_ifname = rec
            .host_ifname(&self.cfg.bridge)
            .ok_or_else(|| broken("its record does not name the node-side veth".into()))?;
        let w = Wiring {
            bridge: self.cfg.bridge.clone(),
            host_ifname,
            ip: rec.attachment.ip,
            prefix_len: rec.attachment.prefix_len,
            gateway: rec.attachment.gateway,
        };
        netlink::run(Some(&path), move |h| async move {
            netlink::inspect(&h, &w).await
        })?
        .map_err(broken)
    }

    fn detach(&self, task_id: &str) -> Result<()> {
        validate_task_id(task_id)?;
        let _task = self.lock_task(task_id);
        self.vips_applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task_id);
        let path = self.netns_dir().join(task_id);
        self.release(task_id, &path)?;
        tracing::info!(task = task_id, "task detached");
        Ok(())
    }

    /// Deletes the veth pair, releases the address, then removes the namespace and the record.
    /// Each step tolerates what is already gone, and works without a (readable) record too.
    fn release(&self, task_id: &str, path: &Path) -> Result<()> {
        let bridge = &self.cfg.bridge;
        let rec = self.read_record(task_id).unwrap_or_else(|e| {
            tracing::warn!(task = task_id, error = %e, "ignoring attachment record");
            None
        });
        let known = rec.as_ref().and_then(|r| r.host_ifname(bridge));
        let mounted = netns::is_mounted(path);
        // Deleting either end of a veth pair deletes both. When the record does not name the node
        // end (a legacy record without it), delete eth0 inside the namespace instead.
        let enter = (known.is_none() && rec.is_some() && mounted).then_some(path);
        let host_ifname = known.unwrap_or_else(|| veth_name(bridge, task_id));
        let overlays: Vec<String> = rec
            .as_ref()
            .map(|r| r.overlays.iter().map(|l| l.host_ifname.clone()).collect())
            .unwrap_or_default();
        netlink::run(enter, move |h| async move {
            netlink::delete_link(&h.host, &host_ifname).await?;
            for name in &overlays {
                netlink::delete_link(&h.host, name).await?;
            }
            if let Some(task) = &h.task {
                netlink::delete_link(&task.handle, netlink::TASK_IFNAME).await?;
            }
            Ok(())
        })?;
        match &rec {
            Some(rec) => {
                let ip = rec.attachment.ip;
                self.ipam.release(ip, task_id)?;
                if rec.cni_result.is_some() {
                    legacy::remove_masquerade(bridge, task_id, ip);
                }
            }
            None => self.ipam.release_all(task_id)?,
        }
        netns::remove(path)?;
        remove_file_if_exists("remove attachment record", &self.record_path(task_id))
    }

    fn attachments(&self) -> Result<Vec<String>> {
        let mut ids = BTreeSet::new();
        for (dir, suffix) in [(self.netns_dir(), ""), (self.records_dir(), ".json")] {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("list", &dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
                let name = entry.file_name();
                let Some(id) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
                    continue;
                };
                if validate_task_id(id).is_ok() {
                    ids.insert(id.to_owned());
                }
            }
        }
        Ok(ids.into_iter().collect())
    }

    fn read_record(&self, task_id: &str) -> Result<Option<Record>> {
        let path = self.record_path(task_id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read attachment record", path, e)),
        };
        let rec: Record =
            serde_json::from_slice(&bytes).map_err(|source| Error::Record { path, source })?;
        Ok(Some(rec))
    }

    /// Writes the record atomically (temporary file, fsync, rename).
    fn write_record(&self, rec: &Record) -> Result<()> {
        let path = self.record_path(&rec.attachment.task_id);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(rec).expect("a record always serializes");
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("write attachment record", &path, e)
        })
    }

    fn attach_overlays(&self, task_id: &str, addresses: &[OverlayAddress]) -> Result<()> {
        validate_task_id(task_id)?;
        let _task = self.lock_task(task_id);
        let path = self.netns_dir().join(task_id);
        let mut rec = self
            .read_record(task_id)?
            .filter(|_| netns::is_mounted(&path))
            .ok_or_else(|| Error::NotAttached {
                task: task_id.to_owned(),
                reason: "attach it to the node network first",
            })?;
        let links: Vec<OverlayLink> = addresses
            .iter()
            .enumerate()
            .map(|(i, a)| OverlayLink {
                host_ifname: overlay_veth_name(a.vni, task_id),
                ifname: format!("eth{}", i + 1),
                vni: a.vni,
                addr: a.addr,
                prefix_len: a.subnet.prefix_len(),
            })
            .collect();
        // Recorded first, so a crash in between leaves nothing the record does not name.
        rec.overlays = links.clone();
        self.write_record(&rec)?;
        let devices: Vec<(u32, Ipv4Addr)> = addresses.iter().map(|a| (a.vni, a.local)).collect();
        let owner = self.overlay_owner();
        let kernel: Vec<overlay::Link> = links.iter().map(OverlayLink::kernel).collect();
        let _overlays = self.lock_overlays();
        netlink::run(Some(&path), move |h| async move {
            let mut rep = Repairs::default();
            for (vni, local) in devices {
                overlay::ensure(&h.host, vni, local, None, &owner, &mut rep).await?;
            }
            for link in &kernel {
                overlay::wire(&h, link).await?;
            }
            Ok(())
        })?;
        tracing::info!(
            task = task_id,
            networks = links.len(),
            "task attached to its overlay networks"
        );
        Ok(())
    }

    /// The overlay interfaces of every attached task, by task.
    fn overlay_links(&self) -> Vec<(String, Vec<OverlayLink>)> {
        let ids = self.attachments().unwrap_or_default();
        ids.into_iter()
            .filter_map(|id| {
                let rec = self.read_record(&id).ok().flatten()?;
                (!rec.overlays.is_empty()).then_some((id, rec.overlays))
            })
            .collect()
    }

    fn sync_overlays(&self, networks: &[OverlayNetwork]) -> Result<Repairs> {
        let _overlays = self.lock_overlays();
        let links = self.overlay_links();
        let mut keep: BTreeSet<u32> = networks.iter().map(|n| n.vni).collect();
        keep.extend(links.iter().flat_map(|(_, l)| l.iter().map(|l| l.vni)));
        let nets = networks.to_vec();
        let owner = self.overlay_owner();
        let (mut rep, broken) = netlink::run(None, move |h| async move {
            let mut rep = Repairs::default();
            for n in &nets {
                let index =
                    overlay::ensure(&h.host, n.vni, n.local, n.host, &owner, &mut rep).await?;
                overlay::sync_peers(&h.host, index, &n.peers, &mut rep).await?;
                if n.host.is_some() {
                    let peers = n.peers.keys().copied().collect();
                    overlay::sync_host_routes(&h.host, n.vni, &peers, &mut rep).await?;
                }
            }
            for vni in overlay::present(&h.host, &owner).await? {
                if !keep.contains(&vni) {
                    rep.devices += overlay::remove(&h.host, vni).await?;
                }
            }
            // Task interfaces off their bridge are put back; missing ones are wired again below.
            let mut broken = Vec::new();
            for (task, list) in &links {
                for l in list {
                    match overlay::port_of(&h.host, &l.kernel()).await? {
                        overlay::Port::Ok => {}
                        overlay::Port::Fixed => rep.devices += 1,
                        overlay::Port::Missing => broken.push((task.clone(), l.clone())),
                    }
                }
            }
            Ok((rep, broken))
        })?;
        for (task, link) in broken {
            let path = self.netns_dir().join(&task);
            if !netns::is_mounted(&path) {
                continue;
            }
            let Some(local) = networks.iter().find(|n| n.vni == link.vni).map(|n| n.local) else {
                continue;
            };
            let kernel = link.kernel();
            let owner = self.overlay_owner();
            netlink::run(Some(&path), move |h| async move {
                let mut r = Repairs::default();
                overlay::ensure(&h.host, kernel.vni, local, None, &owner, &mut r).await?;
                overlay::wire(&h, &kernel).await
            })?;
            tracing::warn!(task = %task, interface = %link.ifname, "overlay interface was missing; wired again");
            rep.devices += 1;
        }
        Ok(rep)
    }

    fn sync_task_vips(&self, task_id: &str, vips: &[Vip]) -> Result<()> {
        validate_task_id(task_id)?;
        let script = nft::vip_script(vips);
        let mut applied = self.vips_applied.lock().unwrap_or_else(|p| p.into_inner());
        if applied.get(task_id) == Some(&script) {
            return Ok(());
        }
        let path = self.netns_dir().join(task_id);
        if !netns::is_mounted(&path) {
            return Err(Error::NotAttached {
                task: task_id.to_owned(),
                reason: "its network namespace is not mounted",
            });
        }
        let file =
            fs::File::open(&path).map_err(|e| Error::io("open network namespace", &path, e))?;
        let text = script.clone();
        // `nft` runs as a child of a thread inside the task's namespace, so it inherits it.
        std::thread::Builder::new()
            .name("shoal-vip".into())
            .spawn(move || -> Result<()> {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                    |source| Error::Netns {
                        action: "join",
                        path: path.clone(),
                        source,
                    },
                )?;
                nft::apply("balance VIPs in", nft::VIP_TABLE, &text)
            })
            .map_err(|e| Error::Worker(format!("cannot spawn a thread: {e}")))?
            .join()
            .map_err(|_| Error::Worker("VIP thread panicked".into()))??;
        applied.insert(task_id.to_owned(), script);
        Ok(())
    }

    /// The alias of this network's overlay devices (see `overlay::ensure`).
    fn overlay_owner(&self) -> String {
        format!("shoal:{}", self.cfg.bridge)
    }

    fn lock_overlays(&self) -> MutexGuard<'_, ()> {
        self.overlay_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sync_ports(&self, bindings: &[PortBinding]) -> Result<()> {
        let ordered = nft::validate(bindings)?;
        let _nft = self.lock_nft();
        nft::apply(
            "publish ports in",
            &self.cfg.nft_table,
            &nft::replace_script(&self.table(), &ordered),
        )?;
        tracing::debug!(table = %self.cfg.nft_table, ports = ordered.len(), "published ports synced");
        Ok(())
    }

    fn teardown_ports(&self) -> Result<()> {
        let _nft = self.lock_nft();
        nft::apply(
            "stop publishing ports in",
            &self.cfg.nft_table,
            &nft::replace_script(&self.table(), &[]),
        )
    }

    fn destroy(&self) -> Result<()> {
        for task_id in self.attachments()? {
            self.detach(&task_id)?;
        }
        {
            let _nft = self.lock_nft();
            nft::apply(
                "delete",
                &self.cfg.nft_table,
                &nft::delete_script(&self.table()),
            )?;
            filter::remove().map_err(Error::ForwardFilter)?;
        }
        let bridge = self.cfg.bridge.clone();
        {
            let _first = self.bridge_lock.lock().unwrap_or_else(|p| p.into_inner());
            let name = bridge.clone();
            netlink::run(None, move |h| async move {
                netlink::delete_link(&h.host, &name).await
            })?;
            self.bridge_ready.store(false, Ordering::Release);
        }
        self.dirs_ready.store(false, Ordering::Release);
        netns::release_dir(&self.netns_dir())?;
        let ipam = self.ipam.dir();
        match fs::remove_dir_all(ipam) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove address allocations", ipam, e)),
        }
        tracing::info!(bridge = %bridge, "node network removed");
        Ok(())
    }
}

/// Checks that a task id can name a file (`[A-Za-z0-9][A-Za-z0-9_.-]*`).
fn validate_task_id(id: &str) -> Result<()> {
    let invalid = |reason| Error::InvalidTaskId {
        id: id.to_owned(),
        reason,
    };
    let mut chars = id.chars();
    match chars.next() {
        None => return Err(invalid("it is empty")),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(invalid("it must start with a letter or digit"));
        }
        Some(_) => {}
    }
    if id.len() > 200 {
        return Err(invalid("it is longer than 200 characters"));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(invalid(
            "only letters, digits, '_', '.' and '-' are allowed",
        ));
    }
    Ok(())
}

fn check_name(
    field: &'static str,
    value: &str,
    max_len: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<()> {
    let reason = if value.is_empty() {
        "it is empty".to_string()
    } else if value.len() > max_len {
        format!("it is longer than {max_len} characters")
    } else if !value.starts_with(|c: char| c.is_ascii_alphabetic()) {
        "it must start with a letter".to_string()
    } else if !value.chars().all(allowed) {
        "it contains a character that is not allowed".to_string()
    } else {
        return Ok(());
    };
    Err(Error::InvalidConfig {
        field,
        value: value.to_owned(),
        reason,
    })
}

/// Sets a boolean sysctl to 1, writing only when it is not already set.
pub(crate) fn enable_sysctl(name: &str) -> Result<()> {
    // `conf.<interface>.` keeps its dots: interface names may contain them.
    let path = match name.strip_prefix("net.ipv4.conf.") {
        Some(rest) => {
            let (dev, key) = rest.rsplit_once('.').unwrap_or((rest, ""));
            Path::new("/proc/sys/net/ipv4/conf").join(dev).join(key)
        }
        None => Path::new("/proc/sys").join(name.replace('.', "/")),
    };
    if fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    fs::write(&path, "1").map_err(|source| Error::Sysctl {
        name: name.to_owned(),
        source,
    })?;
    tracing::info!(sysctl = name, "enabled");
    Ok(())
}

fn remove_file_if_exists(action: &'static str, path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(action, path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_must_be_safe_file_and_container_names() {
        for ok in ["t1", "abc-DEF_1.2", "0"] {
            assert!(validate_task_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "-x", "a/b", "a b", &"x".repeat(201)] {
            assert!(validate_task_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_is_validated() {
        assert!(Network::new(NetConfig::default()).is_ok());
        let bad = [
            NetConfig {
                subnet: "10.231.0.1/16".into(),
                ..NetConfig::default()
            },
            NetConfig {
                bridge: "a-bridge-name-too-long".into(),
                ..NetConfig::default()
            },
            NetConfig {
                nft_table: "bad table".into(),
                ..NetConfig::default()
            },
            NetConfig {
                run_dir: "relative".into(),
                ..NetConfig::default()
            },
        ];
        for cfg in bad {
            let err = Network::new(cfg.clone()).unwrap_err().to_string();
            assert!(err.starts_with("invalid network setting"), "{cfg:?}: {err}");
        }
    }

    #[test]
    fn defaults_match_the_product_contract() {
        let net = Network::new(NetConfig::new("/run/shoal", "/var/lib/shoal")).unwrap();
        assert_eq!(net.config().bridge, "shoal0");
        assert_eq!(net.gateway(), Ipv4Addr::new(10, 231, 0, 1));
        assert_eq!(net.netns_path("t1"), PathBuf::from("/run/shoal/netns/t1"));
    }

    #[test]
    fn record_round_trips() {
        let rec = Record {
            attachment: Attachment {
                task_id: "t1".into(),
                netns_path: "/run/shoal/netns/t1".into(),
                ip: Ipv4Addr::new(10, 231, 0, 2),
                prefix_len: 16,
                gateway: Ipv4Addr::new(10, 231, 0, 1),
            },
            host_ifname: Some(veth_name("shoal0", "t1")),
            cni_result: None,
            overlays: Vec::new(),
        };
        let text = serde_json::to_string(&rec).unwrap();
        assert!(!text.contains("cni_result"), "{text}");
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back.attachment, rec.attachment);
        assert_eq!(back.host_ifname("shoal0"), rec.host_ifname);
    }

    #[test]
    fn reads_records_of_the_cni_implementation() {
        let text = r#"{
            "task_id": "t1",
            "netns_path": "/run/shoal/netns/t1",
            "ip": "10.231.0.7",
            "prefix_len": 16,
            "gateway": "10.231.0.1",
            "cni_result": {
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "shoal0", "mac": "b6:9e:aa:0b:30:25"},
                    {"name": "vethb440e6ad", "mac": "d6:25:f1:b8:ac:c0"},
                    {"name": "eth0", "mac": "aa:aa:aa:aa:aa:aa", "sandbox": "/run/shoal/netns/t1"}
                ],
                "ips": [{"interface": 2, "address": "10.231.0.7/16", "gateway": "10.231.0.1"}]
            }
        }"#;
        let rec: Record = serde_json::from_str(text).unwrap();
        assert_eq!(rec.attachment.ip, Ipv4Addr::new(10, 231, 0, 7));
        assert_eq!(rec.host_ifname("shoal0").as_deref(), Some("vethb440e6ad"));
        assert!(rec.cni_result.is_some());
    }

    #[test]
    fn veth_names_are_stable_distinct_and_short() {
        let a = veth_name("shoal0", "task-a");
        assert_eq!(a, veth_name("shoal0", "task-a"));
        assert_ne!(a, veth_name("shoal0", "task-b"));
        assert_ne!(a, veth_name("shoal1", "task-a"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("shv"));
    }
}
