//! Single-node container networking for shoal: the only crate that touches network namespaces,
//! CNI plugins and nftables.
//!
//! # What it builds
//!
//! - Every task gets its own network namespace, bind-mounted at `<run_dir>/netns/<task_id>` so it
//!   survives daemon restarts and containerd can join it by path.
//! - The namespace is wired to the node bridge (default `shoal0`, subnet `10.231.0.0/16`, gateway
//!   `.1`) by Debian's CNI plugins, called directly: `loopback` for `lo`, then `bridge`
//!   (`isGateway`, `ipMasq`, `hairpinMode`) with `host-local` addresses for `eth0`.
//! - Published ports are served on every address of the node, `localhost` included, and spread
//!   over all local tasks of a service, by one nftables table (`table ip shoal` by default; see
//!   [`Network::sync_ports`]).
//!
//! # Files
//!
//! | path | what |
//! |---|---|
//! | `<run_dir>/netns/` | a shared mount point (as `ip netns` makes `/run/netns`) |
//! | `<run_dir>/netns/<task_id>` | the task's namespace (an nsfs bind mount) |
//! | `<state_dir>/net/attachments/<task_id>.json` | the attachment record: address and the CNI result |
//! | `<state_dir>/net/ipam/<bridge>/` | `host-local`'s address allocations |
//!
//! # Requirements and coexistence
//!
//! Root (CAP_NET_ADMIN and CAP_SYS_ADMIN), the `nft` command (nftables), the `ip` command
//! (iproute2, used only by [`Network::destroy`]), and the plugins `bridge`, `host-local` and
//! `loopback` (containernetworking-plugins) in [`NetConfig::cni_bin_dir`]. The `bridge` plugin
//! installs its outbound masquerade through `iptables` (iptables-nft on Debian), in the `ip nat`
//! table; shoal's own table is separate, and all its chains have policy `accept`, so Docker's and
//! iptables' tables keep working. One limit is the kernel's, not shoal's: a `drop` in another
//! table's `forward` chain (Docker sets the iptables `FORWARD` policy to `DROP`) also drops
//! forwarded task traffic; allow it there (e.g. in Docker's `DOCKER-USER` chain) if Docker runs
//! on the node. Traffic from the node itself (`localhost`, the node's own addresses) does not pass
//! `forward` and is not affected.
//!
//! # Async
//!
//! Every call that runs a command or changes the kernel is `async` and runs on tokio's blocking
//! pool; the cheap lookups of files on disk are plain functions.

mod cni;
mod error;
mod netns;
mod nft;
mod subnet;

use std::collections::BTreeSet;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use error::{Error, Result};
pub use model::Protocol;
pub use subnet::Ipv4Subnet;

use cni::{CniCommand, Invocation};

/// The interface name of the task's bridge link inside its namespace.
const TASK_IFNAME: &str = "eth0";

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
    /// Directory of the CNI plugin binaries, `/usr/lib/cni` by default (Debian).
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
    /// over them round-robin; an empty list means the port is not served.
    pub backends: Vec<(Ipv4Addr, u16)>,
}

/// The attachment record kept on disk.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    attachment: Attachment,
    /// The bridge plugin's ADD result, handed back to it as `prevResult` on CHECK.
    cni_result: Value,
}

const TASK_LOCKS: usize = 64;

struct Inner {
    cfg: NetConfig,
    subnet: Ipv4Subnet,
    /// Striped locks: attach, detach and check of one task never run concurrently.
    task_locks: [Mutex<()>; TASK_LOCKS],
    /// Serializes changes to the nftables table.
    nft_lock: Mutex<()>,
    /// Set once an ADD has created the bridge and its gateway address. Until then ADDs run one at
    /// a time: concurrent first ADDs would race to create them.
    bridge_ready: AtomicBool,
    bridge_lock: Mutex<()>,
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
        for (field, path) in [
            ("run_dir", &cfg.run_dir),
            ("state_dir", &cfg.state_dir),
            ("cni_bin_dir", &cfg.cni_bin_dir),
        ] {
            if !path.is_absolute() {
                return Err(Error::InvalidConfig {
                    field,
                    value: path.display().to_string(),
                    reason: "must be an absolute path".into(),
                });
            }
        }
        Ok(Network {
            inner: Arc::new(Inner {
                cfg,
                subnet,
                task_locks: std::array::from_fn(|_| Mutex::new(())),
                nft_lock: Mutex::new(()),
                bridge_ready: AtomicBool::new(false),
                bridge_lock: Mutex::new(()),
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

    /// Prepares the node, idempotently: checks the CNI plugins, enables `net.ipv4.ip_forward` and
    /// `net.ipv4.conf.all.route_localnet` (so `localhost` can reach published ports), creates the
    /// directories, and creates the nftables table or refreshes its fixed chains. Ports already
    /// published stay served, so calling it after a daemon restart interrupts nothing.
    pub async fn setup(&self) -> Result<()> {
        self.blocking(|inner| inner.setup()).await
    }

    /// Attaches `task_id` to the bridge: creates its namespace, runs the CNI plugins, records the
    /// result. Attaching an attached task returns its existing attachment, also after a daemon
    /// restart. A failed attach leaves nothing behind.
    pub async fn attach(&self, task_id: &str) -> Result<Attachment> {
        let id = task_id.to_owned();
        self.blocking(move |inner| inner.attach(&id)).await
    }

    /// Asks the CNI plugins to verify that the attachment of `task_id` is still as created
    /// (CNI CHECK): the interface, its address and routes.
    pub async fn check(&self, task_id: &str) -> Result<()> {
        let id = task_id.to_owned();
        self.blocking(move |inner| inner.check(&id)).await
    }

    /// Detaches `task_id`: CNI DEL (releasing its address), then unmounts and removes its
    /// namespace and record. Detaching a task that is not attached succeeds.
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

    /// Stops publishing every port by removing shoal's nftables table. Succeeds when it is
    /// already gone. [`Network::setup`] or [`Network::sync_ports`] bring it back.
    pub async fn teardown_ports(&self) -> Result<()> {
        self.blocking(|inner| inner.teardown_ports()).await
    }

    /// Removes everything this network made: detaches every task, removes the nftables table,
    /// deletes the bridge, unmounts `<run_dir>/netns` and removes the IPAM data. For leaving a
    /// cluster and for tests; idempotent.
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

    fn ipam_dir(&self) -> PathBuf {
        self.net_state_dir().join("ipam")
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

    fn check_plugins(&self) -> Result<()> {
        for plugin in cni::REQUIRED_PLUGINS {
            if !cni::plugin_path(&self.cfg.cni_bin_dir, plugin).is_file() {
                return Err(Error::PluginMissing {
                    plugin,
                    dir: self.cfg.cni_bin_dir.clone(),
                });
            }
        }
        Ok(())
    }

    fn setup(&self) -> Result<()> {
        self.check_plugins()?;
        enable_sysctl("net.ipv4.ip_forward")?;
        enable_sysctl("net.ipv4.conf.all.route_localnet")?;
        self.create_dirs()?;
        let _nft = self.lock_nft();
        nft::apply(
            "set up",
            &self.cfg.nft_table,
            &nft::ensure_script(&self.table()),
        )?;
        tracing::info!(
            bridge = %self.cfg.bridge,
            subnet = %self.subnet,
            table = %self.cfg.nft_table,
            "node network ready"
        );
        Ok(())
    }

    fn create_dirs(&self) -> Result<()> {
        for dir in [self.records_dir(), self.ipam_dir()] {
            fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        }
        netns::ensure_shared_dir(&self.netns_dir())
    }

    fn bridge_config(&self, prev_result: Option<&Value>) -> Value {
        let ipam_dir = self.ipam_dir();
        cni::bridge_config(
            &cni::BridgeNetwork {
                name: &self.cfg.bridge,
                bridge: &self.cfg.bridge,
                subnet: self.subnet,
                ipam_dir: &ipam_dir,
            },
            prev_result,
        )
    }

    fn invoke(
        &self,
        plugin: &'static str,
        command: CniCommand,
        task_id: &str,
        netns: Option<&Path>,
        config: &Value,
    ) -> Result<Value> {
        cni::invoke(&Invocation {
            bin_dir: &self.cfg.cni_bin_dir,
            plugin,
            command,
            container_id: task_id,
            netns,
            ifname: if plugin == "loopback" {
                "lo"
            } else {
                TASK_IFNAME
            },
            config,
        })
    }

    fn attach(&self, task_id: &str) -> Result<Attachment> {
        validate_task_id(task_id)?;
        let _task = self.lock_task(task_id);
        let path = self.netns_dir().join(task_id);
        match self.read_record(task_id) {
            Ok(Some(rec)) if netns::is_mounted(&path) => return Ok(rec.attachment),
            Ok(_) => {}
            Err(e) => tracing::warn!(task = task_id, error = %e, "replacing attachment record"),
        }
        self.check_plugins()?;
        self.create_dirs()?;
        if !netns::is_mounted(&path) {
            netns::create(&path)?;
        }
        // An attach interrupted by a crash may have left an address allocated or a veth behind;
        // DEL releases them (and is a no-op otherwise), so ADD starts clean.
        if let Err(e) = self.invoke(
            "bridge",
            CniCommand::Del,
            task_id,
            Some(&path),
            &self.bridge_config(None),
        ) {
            tracing::warn!(task = task_id, error = %e, "cleaning up before attach failed");
        }
        match self.add(task_id, &path) {
            Ok(attachment) => {
                tracing::info!(task = task_id, ip = %attachment.ip, "task attached");
                Ok(attachment)
            }
            Err(e) => {
                self.undo_attach(task_id, &path);
                Err(e)
            }
        }
    }

    /// Removes what a failed attach made. Unlike [`Inner::release`] it goes on when DEL fails:
    /// the namespace holds nothing worth a retry.
    fn undo_attach(&self, task_id: &str, path: &Path) {
        let steps = [
            self.invoke(
                "bridge",
                CniCommand::Del,
                task_id,
                Some(path),
                &self.bridge_config(None),
            )
            .map(drop),
            netns::remove(path),
            remove_file_if_exists("remove attachment record", &self.record_path(task_id)),
        ];
        for e in steps.into_iter().filter_map(Result::err) {
            tracing::warn!(task = task_id, error = %e, "undoing a failed attach");
        }
    }

    fn add(&self, task_id: &str, path: &Path) -> Result<Attachment> {
        self.invoke(
            "loopback",
            CniCommand::Add,
            task_id,
            Some(path),
            &cni::loopback_config(None),
        )?;
        let _first = (!self.bridge_ready.load(Ordering::Acquire))
            .then(|| self.bridge_lock.lock().unwrap_or_else(|p| p.into_inner()));
        let result = self.invoke(
            "bridge",
            CniCommand::Add,
            task_id,
            Some(path),
            &self.bridge_config(None),
        )?;
        self.bridge_ready.store(true, Ordering::Release);
        let assigned =
            cni::assigned_address(&result, self.subnet).map_err(|reason| Error::PluginResult {
                plugin: "bridge",
                command: "ADD",
                task: task_id.to_owned(),
                reason,
            })?;
        let attachment = Attachment {
            task_id: task_id.to_owned(),
            netns_path: path.to_owned(),
            ip: assigned.ip,
            prefix_len: assigned.prefix_len,
            gateway: assigned.gateway.unwrap_or_else(|| self.subnet.gateway()),
        };
        self.write_record(&Record {
            attachment: attachment.clone(),
            cni_result: result,
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
        self.invoke(
            "bridge",
            CniCommand::Check,
            task_id,
            Some(&path),
            &self.bridge_config(Some(&rec.cni_result)),
        )?;
        Ok(())
    }

    fn detach(&self, task_id: &str) -> Result<()> {
        validate_task_id(task_id)?;
        let _task = self.lock_task(task_id);
        let path = self.netns_dir().join(task_id);
        self.release(task_id, &path)?;
        tracing::info!(task = task_id, "task detached");
        Ok(())
    }

    /// CNI DEL, then the namespace and the record. Each step tolerates what is already gone.
    fn release(&self, task_id: &str, path: &Path) -> Result<()> {
        let mounted = netns::is_mounted(path);
        // Without its namespace, DEL still releases the address (CNI allows an empty CNI_NETNS).
        let netns = mounted.then_some(path);
        self.invoke(
            "bridge",
            CniCommand::Del,
            task_id,
            netns,
            &self.bridge_config(None),
        )?;
        if mounted {
            self.invoke(
                "loopback",
                CniCommand::Del,
                task_id,
                netns,
                &cni::loopback_config(None),
            )?;
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
            "delete",
            &self.cfg.nft_table,
            &nft::delete_script(&self.table()),
        )
    }

    fn destroy(&self) -> Result<()> {
        for task_id in self.attachments()? {
            self.detach(&task_id)?;
        }
        self.teardown_ports()?;
        let bridge = &self.cfg.bridge;
        if Path::new("/sys/class/net").join(bridge).exists() {
            run_ip(&["link", "delete", "dev", bridge])?;
        }
        self.bridge_ready.store(false, Ordering::Release);
        netns::release_dir(&self.netns_dir())?;
        let ipam = self.ipam_dir().join(bridge);
        match fs::remove_dir_all(&ipam) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove IPAM data", ipam, e)),
        }
        tracing::info!(bridge = %bridge, "node network removed");
        Ok(())
    }
}

/// Checks that a task id can name a file and a CNI container (`[A-Za-z0-9][A-Za-z0-9_.-]*`).
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
fn enable_sysctl(name: &'static str) -> Result<()> {
    let path = Path::new("/proc/sys").join(name.replace('.', "/"));
    if fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    fs::write(&path, "1").map_err(|source| Error::Sysctl { name, source })?;
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

fn run_ip(args: &[&str]) -> Result<()> {
    let ip_err = |message: String| Error::Ip {
        args: args.join(" "),
        message,
    };
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| ip_err(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ip_err(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ))
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
            cni_result: serde_json::json!({"ips": [{"address": "10.231.0.2/16"}]}),
        };
        let text = serde_json::to_string(&rec).unwrap();
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back.attachment, rec.attachment);
        assert_eq!(back.cni_result, rec.cni_result);
    }
}
