//! Validated specifications: what the user asked for. Produced by the `spec` crate from TOML and
//! by the D-Bus API from typed arguments; stored in the cluster state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Millis;

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
    pub restart: RestartPolicy,
    pub update: UpdateConfig,
    pub rollback: UpdateConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceMode {
    Replicated { replicas: u64 },
    Global,
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
        }
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
}

impl PortSpec {
    /// Docker's rendering: `*:8080->80/tcp`.
    pub fn display(&self) -> String {
        format!(
            "*:{}->{}/{}",
            self.published,
            self.target,
            self.protocol.as_str()
        )
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
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            heartbeat_period: 1_000,
            task_history_limit: 5,
            snapshot_interval: 10_000,
            cert_expiry: 2160 * 3600 * 1000,
            autolock: false,
        }
    }
}
