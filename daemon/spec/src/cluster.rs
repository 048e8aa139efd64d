//! The cluster file: `/etc/shoal/cluster.toml`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use model::{Availability, ClusterSettings, NodeRole};
use toml::de::DeTable;

use crate::diag::{Diagnostic, Errors, Sink};
use crate::units;
use crate::walk::{self, Keys, Value};

/// Where `shoald` looks for the cluster file unless `--config` says otherwise.
pub const DEFAULT_CLUSTER_FILE: &str = "/etc/shoal/cluster.toml";
/// The node-to-node port (raft, dispatcher, log streaming, forwarding).
pub const DEFAULT_PORT: u16 = 4600;
pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";
pub const DEFAULT_CONTAINERD_NAMESPACE: &str = "shoal";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/shoal";
pub const DEFAULT_STACKS_DIR: &str = "/etc/shoal/stacks";
pub const DEFAULT_RUN_DIR: &str = "/run/shoal";
pub const DEFAULT_BRIDGE: &str = "shoal0";
pub const DEFAULT_SUBNET: &str = "10.231.0.0/16";
/// The shortest node certificate lifetime accepted (as in Swarm).
pub const MIN_CERT_EXPIRY: u64 = 3600 * 1000;

/// Everything the cluster file says: node-local settings plus the cluster-wide
/// [`ClusterSettings`] used when this node bootstraps a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node: NodeConfig,
    pub network: NetworkConfig,
    pub cluster: ClusterSection,
    pub containerd: ContainerdConfig,
    /// Per-registry settings keyed by `host[:port]`, e.g. `localhost:5000`.
    pub registries: BTreeMap<String, RegistryConfig>,
    pub paths: PathsConfig,
    pub images: ImagesConfig,
}

/// `[images]` (shoal's addition): images imported into containerd when the daemon starts, so
/// that air-gapped nodes and NixOS `dockerTools` images need no registry; and how long an image
/// nothing needs stays on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagesConfig {
    /// `oci-archive:/path`, `docker-archive:/path` or registry references.
    pub preload: Vec<String>,
    /// Milliseconds an image shoal pulled or imported stays once no task, service (current or
    /// rollback image) or preload of this node needs it; then it is removed.
    pub prune_after: u64,
}

/// The default of `[images] prune_after`: one hour.
pub const DEFAULT_PRUNE_AFTER: u64 = 3600 * 1000;
/// `[images] prune_after` is at least this (a second)...
pub const MIN_PRUNE_AFTER: u64 = 1000;

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            preload: Vec::new(),
            prune_after: DEFAULT_PRUNE_AFTER,
        }
    }
}

/// `[node]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node name; `None` means the caller uses the hostname.
    pub name: Option<String>,
    /// Managers also run tasks unless drained.
    pub role: NodeRole,
    pub labels: BTreeMap<String, String>,
    /// Initial availability only; later changed with `shoal node update`.
    pub availability: Availability,
}

/// `[network]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Where the node-to-node server listens; default `0.0.0.0:4600`.
    pub listen: SocketAddr,
    /// The address other nodes use to reach this one; `None`: the first non-loopback address,
    /// found by the caller. A bare IP gets the listen port.
    pub advertise: Option<SocketAddr>,
    /// The node bridge tasks attach to (shoal's addition; default `shoal0`).
    pub bridge: String,
    /// The subnet of the node bridge, CIDR (default `10.231.0.0/16`).
    pub subnet: String,
}

/// `[cluster]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSection {
    /// Form a new cluster when this node has no state. Defaults to true for a manager that has
    /// no `join` addresses, false otherwise.
    pub bootstrap: bool,
    /// Managers to join through when this node has no state, as `host:port` (port 4600 added
    /// when missing).
    pub join: Vec<String>,
    /// File holding the join token; required with `join`.
    pub token_file: Option<PathBuf>,
    /// `[cluster.settings]`: cluster-wide, taken at bootstrap.
    pub settings: ClusterSettings,
}

/// `[containerd]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdConfig {
    pub address: PathBuf,
    pub namespace: String,
}

/// `[registries."host:port"]`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistryConfig {
    /// Plain HTTP (no TLS).
    pub insecure: bool,
}

/// `[paths]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathsConfig {
    pub state_dir: PathBuf,
    pub stacks_dir: PathBuf,
    /// Runtime files: network namespaces, per-task /etc files (default `/run/shoal`).
    pub run_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: None,
            role: NodeRole::Manager,
            labels: BTreeMap::new(),
            availability: Availability::Active,
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            advertise: None,
            bridge: DEFAULT_BRIDGE.to_string(),
            subnet: DEFAULT_SUBNET.to_string(),
        }
    }
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            bootstrap: true,
            join: Vec::new(),
            token_file: None,
            settings: ClusterSettings::default(),
        }
    }
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            address: PathBuf::from(DEFAULT_CONTAINERD_ADDRESS),
            namespace: DEFAULT_CONTAINERD_NAMESPACE.to_string(),
        }
    }
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            stacks_dir: PathBuf::from(DEFAULT_STACKS_DIR),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self::default_single_node()
    }
}

impl ClusterConfig {
    /// The embedded default used when there is no cluster file: this node bootstraps a
    /// single-node cluster as a manager (that also runs tasks), every setting at its default.
    pub fn default_single_node() -> Self {
        ClusterConfig {
            node: NodeConfig::default(),
            network: NetworkConfig::default(),
            cluster: ClusterSection::default(),
            containerd: ContainerdConfig::default(),
            registries: BTreeMap::new(),
            paths: PathsConfig::default(),
            images: ImagesConfig::default(),
        }
    }

    /// Whether `host[:port]` (as written in an image reference) is a plain-HTTP registry.
    pub fn registry_is_insecure(&self, host: &str) -> bool {
        self.registries.get(host).is_some_and(|r| r.insecure)
    }
}

const TOP_KEYS: Keys<'static> = Keys {
    known: &[
        "node",
        "network",
        "cluster",
        "containerd",
        "registries",
        "paths",
        "images",
    ],
    unsupported: &[],
    hints: &[
        ("settings", "cluster-wide settings go in [cluster.settings]"),
        (
            "stacks",
            "stacks go in files of the stacks directory, one per stack",
        ),
        (
            "services",
            "services go in stack files in the stacks directory",
        ),
    ],
};
const NODE_KEYS: Keys<'static> = Keys {
    known: &["name", "role", "labels", "availability"],
    unsupported: &[],
    hints: &[("hostname", "did you mean \"name\"?")],
};
const NETWORK_KEYS: Keys<'static> = Keys {
    known: &["listen", "advertise", "bridge", "subnet"],
    unsupported: &[
        ("data_path_port", "the overlay data port is 4789/udp"),
        ("default_addr_pool", ""),
    ],
    hints: &[
        ("listen_addr", "did you mean \"listen\"?"),
        ("advertise_addr", "did you mean \"advertise\"?"),
    ],
};
const CLUSTER_KEYS: Keys<'static> = Keys {
    known: &["bootstrap", "join", "token_file", "settings"],
    unsupported: &[],
    hints: &[(
        "token",
        "never put the join token in the file; write it to a file and set token_file",
    )],
};
const SETTINGS_KEYS: Keys<'static> = Keys {
    known: &[
        "heartbeat_period",
        "task_history_limit",
        "snapshot_interval",
        "cert_expiry",
        "autolock",
        "default_addr_pool",
        "default_subnet_size",
    ],
    unsupported: &[],
    hints: &[],
};
const CONTAINERD_KEYS: Keys<'static> = Keys {
    known: &["address", "namespace"],
    unsupported: &[],
    hints: &[("socket", "did you mean \"address\"?")],
};
const REGISTRY_KEYS: Keys<'static> = Keys {
    known: &["insecure"],
    unsupported: &[
        ("mirrors", ""),
        ("ca_file", ""),
        ("auth", ""),
        ("username", ""),
        ("password", ""),
    ],
    hints: &[],
};
const PATHS_KEYS: Keys<'static> = Keys {
    known: &["state_dir", "stacks_dir", "run_dir"],
    unsupported: &[],
    hints: &[],
};
const IMAGES_KEYS: Keys<'static> = Keys {
    known: &["preload", "prune_after"],
    unsupported: &[],
    hints: &[("import", "did you mean \"preload\"?")],
};

/// Reads and validates a cluster file.
pub fn load_cluster_file(path: &Path) -> Result<ClusterConfig, Errors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Errors(vec![Diagnostic::whole_file(
            path,
            format!("failed to read cluster file: {e}"),
        )])
    })?;
    parse_cluster(path, &text)
}

/// Parses and validates cluster file text; `path` is only used in diagnostics.
pub fn parse_cluster(path: &Path, text: &str) -> Result<ClusterConfig, Errors> {
    let mut sink = Sink::new(path, text);
    let config = walk::parse_document(&mut sink, text).map(|doc| cluster_from_doc(&mut sink, &doc));
    match config {
        Some(config) if !sink.has_errors() => Ok(config),
        _ => Err(Errors(sink.finish())),
    }
}

fn section<'v, 'i>(
    sink: &mut Sink<'_>,
    doc: &'v DeTable<'i>,
    key: &str,
    keys: &Keys<'_>,
) -> Option<&'v DeTable<'i>> {
    let t = walk::table(sink, doc.get(key)?, key)?;
    walk::check_keys(sink, t, &format!("[{key}]"), keys);
    Some(t)
}

/// The prefix length of an IPv4 CIDR, when `s` is one.
fn abs_path(sink: &mut Sink<'_>, v: &Value<'_>, path: &str) -> Option<PathBuf> {
    let s = walk::string(sink, v, path)?;
    if s.starts_with('/') {
        Some(PathBuf::from(s))
    } else {
        sink.error(
            v.span(),
            format!("{path}: \"{s}\" must be an absolute path"),
        );
        None
    }
}

fn socket_addr(
    sink: &mut Sink<'_>,
    v: &Value<'_>,
    path: &str,
    default_port: u16,
) -> Option<SocketAddr> {
    let s = walk::string(sink, v, path)?;
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Some(SocketAddr::new(ip, default_port));
    }
    sink.error(
        v.span(),
        format!("{path}: invalid address \"{s}\"; write IP:PORT like \"192.168.1.10:4600\""),
    );
    None
}

/// `host[:port]`, returned with the port made explicit.
fn host_port(s: &str, default_port: u16) -> Result<String, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr.to_string());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port).to_string());
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("invalid port in \"{s}\""))?,
        ),
        None => (s, default_port),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !host_ok {
        return Err(format!("invalid host \"{host}\" in \"{s}\""));
    }
    Ok(format!("{host}:{port}"))
}

fn cluster_from_doc(sink: &mut Sink<'_>, doc: &DeTable<'_>) -> ClusterConfig {
    walk::check_keys(sink, doc, "the cluster file", &TOP_KEYS);
    let mut c = ClusterConfig::default_single_node();

    if let Some(t) = section(sink, doc, "node", &NODE_KEYS) {
        if let Some(v) = t.get("name")
            && let Some(name) = walk::string(sink, v, "node.name")
        {
            match units::validate_name("node", name) {
                Ok(()) => c.node.name = Some(name.to_string()),
                Err(e) => sink.error(v.span(), format!("node.name: {e}")),
            }
        }
        if let Some(v) = t.get("role") {
            match walk::choice(sink, v, "node.role", &["manager", "worker"]) {
                Some("manager") => c.node.role = NodeRole::Manager,
                Some("worker") => c.node.role = NodeRole::Worker,
                _ => {}
            }
        }
        if let Some(v) = t.get("labels")
            && let Some(labels) = walk::string_map(sink, v, "node.labels", "label")
        {
            c.node.labels = labels;
        }
        if let Some(v) = t.get("availability") {
            match walk::choice(sink, v, "node.availability", &["active", "pause", "drain"]) {
                Some("active") => c.node.availability = Availability::Active,
                Some("pause") => c.node.availability = Availability::Pause,
                Some("drain") => c.node.availability = Availability::Drain,
                _ => {}
            }
        }
    }

    if let Some(t) = section(sink, doc, "network", &NETWORK_KEYS) {
        if let Some(v) = t.get("listen")
            && let Some(addr) = socket_addr(sink, v, "network.listen", DEFAULT_PORT)
        {
            c.network.listen = addr;
        }
        if let Some(v) = t.get("advertise")
            && let Some(addr) = socket_addr(sink, v, "network.advertise", c.network.listen.port())
        {
            if addr.ip().is_unspecified() {
                sink.error(
                    v.span(),
                    format!("network.advertise: {addr} is not an address other nodes can reach"),
                );
            } else {
                c.network.advertise = Some(addr);
            }
        }
        if let Some(v) = t.get("bridge")
            && let Some(b) = walk::string(sink, v, "network.bridge")
        {
            let ok = !b.is_empty()
                && b.len() <= 15
                && b.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
            if ok {
                c.network.bridge = b.to_string();
            } else {
                sink.error(v.span(), format!("network.bridge: \"{b}\" is not a valid interface name (1-15 letters, digits, - or _)"));
            }
        }
        if let Some(v) = t.get("subnet")
            && let Some(sn) = walk::string(sink, v, "network.subnet")
        {
            // The same parser the node bridge uses (`net`), so what validates also starts.
            match sn.parse::<model::Ipv4Subnet>() {
                Ok(subnet) if subnet.prefix_len() <= 28 => c.network.subnet = sn.to_string(),
                Ok(_) => sink.error(v.span(), format!("network.subnet: \"{sn}\" leaves too few addresses for tasks: use a prefix of 8 to 28")),
                Err(e) => sink.error(v.span(), format!("network.subnet: \"{sn}\": {e}")),
            }
        }
    }

    let mut bootstrap_span = None;
    let mut bootstrap_set = false;
    if let Some(t) = section(sink, doc, "cluster", &CLUSTER_KEYS) {
        if let Some(v) = t.get("bootstrap")
            && let Some(b) = walk::boolean(sink, v, "cluster.bootstrap")
        {
            c.cluster.bootstrap = b;
            bootstrap_set = true;
            bootstrap_span = Some(v.span());
        }
        if let Some(v) = t.get("join")
            && let Some(items) = walk::array(sink, v, "cluster.join")
        {
            for (i, item) in items.iter().enumerate() {
                let path = format!("cluster.join[{i}]");
                if let Some(s) = walk::string(sink, item, &path) {
                    match host_port(s, DEFAULT_PORT) {
                        Ok(addr) => c.cluster.join.push(addr),
                        Err(e) => sink.error(item.span(), format!("{path}: {e}")),
                    }
                }
            }
        }
        if let Some(v) = t.get("token_file") {
            c.cluster.token_file = abs_path(sink, v, "cluster.token_file");
        }
        if let Some(v) = t.get("settings")
            && let Some(st) = walk::table(sink, v, "cluster.settings")
        {
            settings(sink, st, &mut c.cluster.settings);
        }
        if !c.cluster.join.is_empty()
            && c.cluster.token_file.is_none()
            && !t.contains_key("token_file")
        {
            sink.error(
                walk::key_span(t, "join").unwrap_or(0..0),
                "cluster.join: joining needs the join token; set cluster.token_file to a file that holds it",
            );
        }
        if c.cluster.bootstrap && bootstrap_set && !c.cluster.join.is_empty() {
            sink.error(
                bootstrap_span.clone().unwrap_or(0..0),
                "cluster.bootstrap: a node either bootstraps a new cluster or joins one; remove bootstrap or join",
            );
        }
    }
    if !bootstrap_set {
        c.cluster.bootstrap = c.node.role == NodeRole::Manager && c.cluster.join.is_empty();
    }
    if c.node.role == NodeRole::Worker {
        if c.cluster.bootstrap && bootstrap_set {
            sink.error(
                bootstrap_span.unwrap_or(0..0),
                "cluster.bootstrap: a worker cannot bootstrap a cluster; set node.role = \"manager\" or join an existing cluster",
            );
        } else if c.cluster.join.is_empty() {
            let span = doc
                .get("node")
                .and_then(|n| n.get_ref().as_table())
                .and_then(|t| t.get("role"))
                .map(|v| v.span())
                .unwrap_or(0..0);
            sink.error(
                span,
                "node.role: a worker needs managers to join; set cluster.join and cluster.token_file",
            );
        }
    }

    if let Some(t) = section(sink, doc, "containerd", &CONTAINERD_KEYS) {
        if let Some(v) = t.get("address")
            && let Some(p) = abs_path(sink, v, "containerd.address")
        {
            c.containerd.address = p;
        }
        if let Some(v) = t.get("namespace")
            && let Some(ns) = walk::string(sink, v, "containerd.namespace")
        {
            match units::validate_name("containerd namespace", ns) {
                Ok(()) => c.containerd.namespace = ns.to_string(),
                Err(e) => sink.error(v.span(), format!("containerd.namespace: {e}")),
            }
        }
    }

    if let Some(v) = doc.get("registries")
        && let Some(t) = walk::table(sink, v, "registries")
    {
        for (key, rv) in walk::entries(t) {
            let host: &str = key.get_ref();
            let path = format!("registries.\"{host}\"");
            if let Err(e) = host_port(host, 443) {
                sink.error(
                    key.span(),
                    format!("{path}: {e}; the key is the registry's host[:port]"),
                );
            }
            let Some(rt) = walk::table(sink, rv, &path) else {
                continue;
            };
            walk::check_keys(sink, rt, &format!("[{path}]"), &REGISTRY_KEYS);
            let mut reg = RegistryConfig::default();
            if let Some(iv) = rt.get("insecure")
                && let Some(b) = walk::boolean(sink, iv, &format!("{path}.insecure"))
            {
                reg.insecure = b;
            }
            c.registries.insert(host.to_string(), reg);
        }
    }

    if let Some(t) = section(sink, doc, "paths", &PATHS_KEYS) {
        if let Some(v) = t.get("state_dir")
            && let Some(p) = abs_path(sink, v, "paths.state_dir")
        {
            c.paths.state_dir = p;
        }
        if let Some(v) = t.get("stacks_dir")
            && let Some(p) = abs_path(sink, v, "paths.stacks_dir")
        {
            c.paths.stacks_dir = p;
        }
        if let Some(v) = t.get("run_dir")
            && let Some(p) = abs_path(sink, v, "paths.run_dir")
        {
            c.paths.run_dir = p;
        }
    }

    if let Some(t) = section(sink, doc, "images", &IMAGES_KEYS) {
        if let Some(v) = t.get("preload")
            && let Some(list) = walk::string_list(sink, v, "images.preload")
        {
            for image in &list {
                if let Err(e) = crate::units::validate_image(image) {
                    sink.error(v.span(), format!("images.preload: {e}"));
                }
            }
            c.images.preload = list;
        }
        if let Some(v) = t.get("prune_after")
            && let Some(ms) = walk::duration(sink, v, "images.prune_after")
        {
            // ...and at most the limit of every duration (24h).
            if !(MIN_PRUNE_AFTER..=model::limits::MAX_DURATION).contains(&ms) {
                sink.error(
                    v.span(),
                    "images.prune_after: must be between 1s and 24h (how long an unused image stays on the node)",
                );
            } else {
                c.images.prune_after = ms;
            }
        }
    }
    c
}

fn settings(sink: &mut Sink<'_>, t: &DeTable<'_>, s: &mut ClusterSettings) {
    walk::check_keys(sink, t, "[cluster.settings]", &SETTINGS_KEYS);
    if let Some(v) = t.get("heartbeat_period")
        && let Some(ms) = walk::duration(sink, v, "cluster.settings.heartbeat_period")
    {
        if ms == 0 {
            sink.error(
                v.span(),
                "cluster.settings.heartbeat_period: must be longer than 0s",
            );
        } else {
            s.heartbeat_period = ms;
        }
    }
    if let Some(v) = t.get("task_history_limit")
        && let Some(n) = walk::uint(sink, v, "cluster.settings.task_history_limit")
    {
        s.task_history_limit = n;
    }
    if let Some(v) = t.get("snapshot_interval")
        && let Some(n) = walk::uint(sink, v, "cluster.settings.snapshot_interval")
    {
        if n == 0 {
            sink.error(
                v.span(),
                "cluster.settings.snapshot_interval: must be at least 1",
            );
        } else {
            s.snapshot_interval = n;
        }
    }
    if let Some(v) = t.get("cert_expiry")
        && let Some(ms) = walk::duration(sink, v, "cluster.settings.cert_expiry")
    {
        if ms < MIN_CERT_EXPIRY {
            sink.error(
                v.span(),
                "cluster.settings.cert_expiry: must be at least 1h",
            );
        } else {
            s.cert_expiry = ms;
        }
    }
    if let Some(v) = t.get("autolock")
        && let Some(b) = walk::boolean(sink, v, "cluster.settings.autolock")
    {
        s.autolock = b;
    }
    if let Some(v) = t.get("default_addr_pool")
        && let Some(items) = walk::array(sink, v, "cluster.settings.default_addr_pool")
    {
        let mut pool = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("cluster.settings.default_addr_pool[{i}]");
            if let Some(text) = walk::string(sink, item, &path) {
                match text.parse::<model::Ipv4Subnet>() {
                    Ok(sn) => pool.push(sn),
                    Err(e) => sink.error(item.span(), format!("{path}: \"{text}\": {e}")),
                }
            }
        }
        if items.is_empty() {
            sink.error(
                v.span(),
                "cluster.settings.default_addr_pool: name at least one subnet, e.g. [\"10.0.0.0/8\"]",
            );
        } else if pool.len() == items.len() {
            s.default_addr_pool = pool;
        }
    }
    if let Some(v) = t.get("default_subnet_size")
        && let Some(n) = walk::uint(sink, v, "cluster.settings.default_subnet_size")
    {
        if (16..=28).contains(&n) {
            s.default_subnet_size = n as u8;
        } else {
            sink.error(
                v.span(),
                "cluster.settings.default_subnet_size: must be a prefix length from 16 to 28",
            );
        }
    }
    if let Some(v) = t.get("default_subnet_size").or(t.get("default_addr_pool"))
        && let Some(small) = s
            .default_addr_pool
            .iter()
            .find(|p| p.prefix_len() > s.default_subnet_size)
    {
        sink.error(
            v.span(),
            format!(
                "cluster.settings: the pool subnet {small} is smaller than default_subnet_size /{}",
                s.default_subnet_size
            ),
        );
    }
}
