//! Validated specifications: what the user asked for. Produced by the `spec` crate from TOML and
//! by the D-Bus API from typed arguments; stored in the cluster state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Millis, Node};

/// The most replicas a service may ask for. Checked by the spec validators before anything is
/// proposed, and again by `ClusterState::apply`, so an out-of-bounds spec is never committed and
/// planning never allocates in proportion to an unchecked number.
pub const MAX_REPLICAS: u64 = 100_000;

/// Where a port published without a number gets one (Swarm's range).
pub const AUTO_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Gives each port of `spec` with no published port the one `previous` gives the same target,
/// protocol and mode, if any: a redeploy of a spec with automatic ports keeps them (and so
/// compares equal to what is stored).
pub fn keep_published_ports(spec: &mut ServiceSpec, previous: &ServiceSpec) {
    let mut used: Vec<u16> = Vec::new();
    for p in spec.ports.iter_mut().filter(|p| p.published == 0) {
        if let Some(q) = previous.ports.iter().find(|q| {
            q.target == p.target
                && q.protocol == p.protocol
                && q.mode == p.mode
                && AUTO_PORTS.contains(&q.published)
                && !used.contains(&q.published)
        }) {
            p.published = q.published;
            used.push(q.published);
        }
    }
}

/// How other tasks reach a service on its networks (Swarm's `endpoint_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// Its name resolves to one virtual IP, balanced over its running tasks in the kernel.
    #[default]
    Vip,
    /// Its name resolves to its running tasks' addresses; it gets no VIP.
    Dnsrr,
}

impl EndpointMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        }
    }

    /// The one parser of the names, for files, flags and D-Bus.
    pub fn parse(s: &str) -> Result<EndpointMode, String> {
        match s {
            "vip" | "" => Ok(EndpointMode::Vip),
            "dnsrr" => Ok(EndpointMode::Dnsrr),
            other => Err(format!(
                "endpoint mode {other:?} is not one of \"vip\", \"dnsrr\""
            )),
        }
    }
}

/// A service as the user declared it. `name` is the full name (`STACK_SERVICE` for stack services).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ServiceSpec {
    pub name: String,
    /// The stack that owns this service, if any.
    pub stack: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub mode: ServiceMode,
    pub task: TaskSpec,
    pub ports: Vec<PortSpec>,
    pub networks: Vec<String>,
    /// How the service is reached on its networks: a virtual IP (default) or DNS round-robin.
    pub endpoint_mode: EndpointMode,
    pub restart: RestartPolicy,
    pub update: UpdateConfig,
    pub rollback: UpdateConfig,
    /// Where tasks may run and how they spread.
    pub placement: Placement,
    /// Services (full names, of the same stack) whose condition must hold before a task of
    /// this one is placed (Compose's `depends_on`; see [`crate::depends`]). Left out of the
    /// stored form when empty, so specs written before it existed read and compare the same.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, DependCondition>,
}

/// What a dependency must have done before a dependant's tasks start (Compose's `depends_on`
/// conditions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DependCondition {
    /// One of its tasks is running (or ran and completed).
    #[default]
    ServiceStarted,
    /// One of its tasks is running, which a task with a healthcheck only is once healthy.
    ServiceHealthy,
    /// One of its tasks exited with status 0 (COMPLETE).
    ServiceCompletedSuccessfully,
}

impl DependCondition {
    pub const ALL: [DependCondition; 3] = [
        DependCondition::ServiceStarted,
        DependCondition::ServiceHealthy,
        DependCondition::ServiceCompletedSuccessfully,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            DependCondition::ServiceStarted => "service_started",
            DependCondition::ServiceHealthy => "service_healthy",
            DependCondition::ServiceCompletedSuccessfully => "service_completed_successfully",
        }
    }

    /// The one parser of the names, for stack files, Compose files and D-Bus.
    pub fn parse(s: &str) -> Result<DependCondition, String> {
        DependCondition::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "condition {s:?} is not one of \"service_started\", \"service_healthy\", \"service_completed_successfully\""
                )
            })
    }
}

impl ServiceSpec {
    /// The bounds every committed spec keeps (see [`MAX_REPLICAS`]). The `spec` crate reports
    /// them with positions before proposing; `ClusterState::apply` refuses a spec outside them.
    pub fn check_bounds(&self) -> Result<(), String> {
        if let Some(replicas) = self.mode.replicas()
            && replicas > MAX_REPLICAS
        {
            return Err(format!(
                "replicas = {replicas} is above the limit of {MAX_REPLICAS}"
            ));
        }
        if let ServiceMode::ReplicatedJob { max_concurrent, .. } = self.mode
            && max_concurrent > MAX_REPLICAS
        {
            return Err(format!(
                "max_concurrent = {max_concurrent} is above the limit of {MAX_REPLICAS}"
            ));
        }
        if self.depends_on.len() > crate::limits::MAX_SERVICES_PER_STACK {
            return Err(format!(
                "{} dependencies is above the limit of {}",
                self.depends_on.len(),
                crate::limits::MAX_SERVICES_PER_STACK
            ));
        }
        if self.depends_on.contains_key(&self.name) {
            return Err(format!("service {} depends on itself", self.name));
        }
        if let Some(n) = self.placement.max_replicas_per_node
            && n > MAX_REPLICAS
        {
            return Err(format!(
                "max_replicas_per_node = {n} is above the limit of {MAX_REPLICAS}"
            ));
        }
        Ok(())
    }
}

/// Placement of a service's tasks, as Swarm's: hard constraints, spread preferences, and a cap
/// per node. Constraints are parsed and validated by `spec::placement` (one validator for
/// files, flags and D-Bus); this crate only stores and evaluates them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Placement {
    /// All must hold on a node for a task to go there.
    pub constraints: Vec<Constraint>,
    /// Spread tasks evenly over the values of each label in turn (hierarchical, as Swarm's).
    pub preferences: Vec<PlacementPreference>,
    /// At most this many runnable tasks of the service per node (global services ignore it).
    pub max_replicas_per_node: Option<u64>,
}

impl Placement {
    /// Every constraint holds on `node`.
    pub fn matches(&self, node: &Node) -> bool {
        self.constraints.iter().all(|c| c.matches(node))
    }
}

/// One placement constraint: `node.labels.zone == a`, `node.role != manager`,
/// `node.labels.zone in (a, b)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub key: ConstraintKey,
    pub op: ConstraintOp,
    /// One value for `==` and `!=`; one or more for `in`.
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintKey {
    NodeId,
    NodeHostname,
    NodeRole,
    /// `node.labels.KEY`.
    NodeLabel(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintOp {
    Eq,
    Ne,
    In,
}

impl Constraint {
    /// Whether `node` satisfies the constraint. Values compare case-insensitively, as Swarm's;
    /// a node without the label fails `==` and `in` and satisfies `!=`.
    pub fn matches(&self, node: &Node) -> bool {
        let actual: Option<&str> = match &self.key {
            ConstraintKey::NodeId => Some(&node.id),
            ConstraintKey::NodeHostname => Some(&node.name),
            ConstraintKey::NodeRole => Some(node.role.as_str()),
            ConstraintKey::NodeLabel(k) => node.labels.get(k).map(String::as_str),
        };
        let hit = actual.is_some_and(|a| self.values.iter().any(|v| v.eq_ignore_ascii_case(a)));
        match self.op {
            ConstraintOp::Eq | ConstraintOp::In => hit,
            ConstraintOp::Ne => !hit,
        }
    }
}

impl std::fmt::Display for ConstraintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConstraintKey::NodeId => f.write_str("node.id"),
            ConstraintKey::NodeHostname => f.write_str("node.hostname"),
            ConstraintKey::NodeRole => f.write_str("node.role"),
            ConstraintKey::NodeLabel(k) => write!(f, "node.labels.{k}"),
        }
    }
}

/// The text form the parser in `spec::placement` reads back: `node.labels.zone in (a, b)`.
impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.op {
            ConstraintOp::Eq => write!(f, "{} == {}", self.key, self.values.join("")),
            ConstraintOp::Ne => write!(f, "{} != {}", self.key, self.values.join("")),
            ConstraintOp::In => write!(f, "{} in ({})", self.key, self.values.join(", ")),
        }
    }
}

/// A placement preference. Only Swarm's `spread` exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementPreference {
    /// Spread over the values of `node.labels.<label>`; nodes without the label form one group.
    Spread { label: String },
}

impl std::fmt::Display for PlacementPreference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlacementPreference::Spread { label } => write!(f, "spread=node.labels.{label}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceMode {
    Replicated {
        replicas: u64,
    },
    Global,
    /// A job: `replicas` tasks must each exit with status 0, at most `max_concurrent` running at
    /// once; a completed task is not restarted. Changing the spec runs the job again.
    ReplicatedJob {
        replicas: u64,
        max_concurrent: u64,
    },
    /// A job that runs to completion once on every eligible node.
    GlobalJob,
}

impl Default for ServiceMode {
    fn default() -> Self {
        ServiceMode::Replicated { replicas: 1 }
    }
}

impl ServiceMode {
    pub fn name(&self) -> &'static str {
        match self {
            ServiceMode::Replicated { .. } => "replicated",
            ServiceMode::Global => "global",
            ServiceMode::ReplicatedJob { .. } => "replicated-job",
            ServiceMode::GlobalJob => "global-job",
        }
    }

    /// A job mode: tasks run to completion.
    pub fn is_job(&self) -> bool {
        matches!(
            self,
            ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob
        )
    }

    /// One task per eligible node (a global service or a global job).
    pub fn is_global(&self) -> bool {
        matches!(self, ServiceMode::Global | ServiceMode::GlobalJob)
    }

    /// The slots `1..=n` of a replicated service or job.
    pub fn replicas(&self) -> Option<u64> {
        match self {
            ServiceMode::Replicated { replicas } | ServiceMode::ReplicatedJob { replicas, .. } => {
                Some(*replicas)
            }
            _ => None,
        }
    }

    /// Whether `other` is the same kind of mode (a service's mode cannot change kind).
    pub fn same_kind(&self, other: &ServiceMode) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// What every task of a service runs. A task carries a copy of the `TaskSpec` it was created
/// from; a rolling update replaces tasks whose copy differs from the service's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct TaskSpec {
    /// The image reference as written: `registry/name:tag`, `oci-archive:/path`,
    /// `docker-archive:/path`.
    pub image: String,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's cmd when set.
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    /// Signal name, e.g. `SIGTERM`.
    pub stop_signal: String,
    pub stop_grace_period: Millis,
    pub labels: BTreeMap<String, String>,
    pub read_only: bool,
    /// Bumped by `service update --force` so that identical specs still roll.
    pub force_update: u64,
    /// Capabilities added to Docker's default set: `CAP_X` names, or `ALL`.
    pub cap_add: Vec<String>,
    /// Capabilities removed from it: `CAP_X` names, or `ALL`.
    pub cap_drop: Vec<String>,
    /// `security_opt = ["no-new-privileges"]`: the process cannot gain privileges (setuid
    /// binaries, file capabilities). Off by default, as Docker's.
    pub no_new_privileges: bool,
    /// `security_opt = ["seccomp=unconfined"]`: no seccomp filter at all.
    pub seccomp_unconfined: bool,
    /// Run a tiny init (the node's `tini-static`) as PID 1, which reaps zombies and forwards
    /// signals to the command.
    pub init: bool,
    /// Resource limits of the processes by name without `RLIMIT_` (`nofile`, `nproc`, ...).
    pub ulimits: BTreeMap<String, crate::Ulimit>,
    /// Namespaced kernel parameters (`net.*`, `fs.mqueue.*`, the IPC `kernel.*` ones).
    pub sysctls: BTreeMap<String, String>,
    /// What the task reserves on its node (the scheduler counts it).
    pub reservations: crate::Reservations,
    /// The service's healthcheck; `None`: the image's own HEALTHCHECK, if any.
    pub healthcheck: Option<crate::Healthcheck>,
    /// Extra `/etc/hosts` entries (`extra_hosts`, `--host`): host name and address, in order.
    /// The stored form leaves out these four when empty, so older specs keep comparing equal.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<(String, std::net::IpAddr)>,
    /// Resolvers for names outside the cluster (`dns`, `--dns`); empty: the node's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<std::net::IpAddr>,
    /// `search` domains of the task's `/etc/resolv.conf` (`dns_search`, `--dns-search`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// `options` of the task's `/etc/resolv.conf` (`dns_opt`, `--dns-option`), e.g. `ndots:2`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    Bind,
    Volume,
    Tmpfs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: MountKind,
    /// Host path (bind), volume name (volume), empty (tmpfs).
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    /// tmpfs size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Resources {
    /// CPU limit in billionths of a CPU (`cpus = 0.5` is 500_000_000).
    pub nano_cpus: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishMode {
    /// Reachable on every node (routing mesh). On a single node it behaves like `host`.
    Ingress,
    /// Reachable only on the node that runs the task.
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub published: u16,
    pub target: u16,
    pub protocol: Protocol,
    pub mode: PublishMode,
    /// Serve the port only on this address of each node (`127.0.0.1`, an internal interface's
    /// address, a floating address); `None`: on every address. Left out of the stored form when
    /// `None`, so specs written before it existed keep their version hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<std::net::Ipv4Addr>,
}

impl PortSpec {
    /// Docker's rendering: `*:8080->80/tcp`, or `127.0.0.1:8080->80/tcp` for a bound port.
    pub fn display(&self) -> String {
        format!(
            "{}:{}->{}/{}",
            self.host_ip.map_or("*".to_string(), |ip| ip.to_string()),
            self.published,
            self.target,
            self.protocol.as_str()
        )
    }

    /// Whether `self` and `other` claim the same port: the same number and protocol. Only two
    /// ports in `host` mode bound to different addresses share a number: in `ingress` mode the
    /// routing mesh forwards a connection to another node's own address, where the address the
    /// client asked for is no longer known.
    pub fn clashes_with(&self, other: &PortSpec) -> bool {
        self.published == other.published
            && self.protocol == other.protocol
            && !(self.mode == PublishMode::Host
                && other.mode == PublishMode::Host
                && matches!((self.host_ip, other.host_ip), (Some(a), Some(b)) if a != b))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    Any,
    OnFailure,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// First delay before a replacement starts; doubles per consecutive failure.
    pub delay: Millis,
    /// Upper bound of the doubling.
    pub max_delay: Millis,
    /// Give up after this many restarts of a slot (None: unlimited).
    pub max_attempts: Option<u64>,
    /// A task that ran this long without failing resets the backoff.
    pub window: Millis,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay: 100,
            max_delay: 30_000,
            max_attempts: None,
            window: 10_000,
        }
    }
}

impl RestartPolicy {
    /// The delay before restart number `failures` (1-based) of a slot: `delay * 2^(failures-1)`,
    /// capped at `max_delay`.
    pub fn backoff(&self, failures: u32) -> Millis {
        if failures == 0 {
            return 0;
        }
        let shift = (failures - 1).min(40);
        self.delay
            .saturating_mul(1u64 << shift)
            .min(self.max_delay.max(self.delay))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    StopFirst,
    StartFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureAction {
    Pause,
    Continue,
    Rollback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateConfig {
    /// Slots replaced at once; 0 means all at once.
    pub parallelism: u64,
    /// Pause after each batch.
    pub delay: Millis,
    pub order: UpdateOrder,
    pub failure_action: FailureAction,
    /// A new task that fails within this time after RUNNING counts as a failed update.
    pub monitor: Millis,
    /// Failed / updated tasks above this ratio triggers `failure_action`.
    pub max_failure_ratio_permille: u32,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay: 0,
            order: UpdateOrder::StopFirst,
            failure_action: FailureAction::Pause,
            monitor: 5_000,
            max_failure_ratio_permille: 0,
        }
    }
}

/// A stack: a named group of services applied atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StackSpec {
    pub name: String,
    /// Services with full names (`STACK_SERVICE`) and `stack` set.
    pub services: Vec<ServiceSpec>,
    pub networks: BTreeMap<String, NetworkSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NetworkSpec {
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    /// `None`: the next free subnet of the cluster's pool.
    pub subnet: Option<String>,
    pub attachable: bool,
    /// Made outside the stack (`shoal network create`); used under its own name.
    pub external: bool,
}

/// Cluster-wide settings, taken at bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterSettings {
    pub heartbeat_period: Millis,
    pub task_history_limit: u64,
    pub snapshot_interval: u64,
    pub cert_expiry: Millis,
    pub autolock: bool,
    /// Where overlay networks without `--subnet` get their subnets (Swarm's
    /// `--default-addr-pool`).
    pub default_addr_pool: Vec<crate::Ipv4Subnet>,
    /// The prefix length of those subnets (Swarm's `--default-addr-pool-mask-length`).
    pub default_subnet_size: u8,
}

/// Swarm's default address pool.
pub const DEFAULT_ADDR_POOL: &str = "10.0.0.0/8";

/// Swarm's default subnet size in that pool.
pub const DEFAULT_SUBNET_SIZE: u8 = 24;

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            heartbeat_period: 1_000,
            task_history_limit: 5,
            snapshot_interval: 10_000,
            cert_expiry: 2160 * 3600 * 1000,
            autolock: false,
            default_addr_pool: vec![DEFAULT_ADDR_POOL.parse().expect("a valid subnet")],
            default_subnet_size: DEFAULT_SUBNET_SIZE,
        }
    }
}
