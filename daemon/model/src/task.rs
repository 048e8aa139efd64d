//! Tasks and Swarm's task state machine.

use serde::{Deserialize, Serialize};

use crate::{Id, Millis, TaskSpec};

/// Swarm's task states, in order. The numeric values are Swarm's; a task's observed state never
/// moves backwards (see [`TaskState::can_advance_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    New = 0,
    Pending = 64,
    Assigned = 192,
    Accepted = 256,
    Preparing = 320,
    Ready = 384,
    Starting = 448,
    Running = 512,
    Complete = 576,
    Shutdown = 640,
    Failed = 704,
    Rejected = 768,
    Remove = 800,
    Orphaned = 832,
}

impl TaskState {
    pub const ALL: [TaskState; 14] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Remove,
        TaskState::Orphaned,
    ];

    /// Lowercase name as docker prints it.
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }

    /// The task has finished and will never run again.
    pub fn is_terminal(&self) -> bool {
        *self > TaskState::Running
    }

    /// Observed state may only move forward.
    pub fn can_advance_to(&self, next: TaskState) -> bool {
        next > *self
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the node running a task observed. Written only by that node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskStatus {
    pub state: TaskState,
    /// When `state` was entered.
    pub timestamp: Millis,
    /// Human text for the state ("started", "pulling image").
    pub message: String,
    /// Error text for FAILED/REJECTED, e.g. "task: non-zero exit (3)".
    pub err: Option<String>,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub container_id: Option<String>,
    pub pid: Option<u32>,
    /// The address the task has on the node network.
    pub address: Option<String>,
    /// The task's health, when it runs a healthcheck.
    pub health: Option<crate::TaskHealth>,
}

impl Default for TaskStatus {
    fn default() -> Self {
        TaskStatus {
            state: TaskState::New,
            timestamp: 0,
            message: String::new(),
            err: None,
            exit_code: None,
            oom_killed: false,
            container_id: None,
            pid: None,
            address: None,
            health: None,
        }
    }
}

/// One run of a service in a slot (replicated) or on a node (global). A task is never re-run and
/// never moved: a replacement is a new task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: Id,
    pub service_id: Id,
    /// Full service name, denormalised for display and container labels.
    pub service_name: String,
    /// 1-based slot for replicated services; 0 for global services.
    pub slot: u64,
    /// Set by the scheduler (or preset for global tasks).
    pub node_id: Option<Id>,
    /// The service's `version` this task was created from.
    pub spec_version: u64,
    pub spec: TaskSpec,
    /// The image digest resolved for the service when the task was created, when known.
    #[serde(default)]
    pub image_digest: Option<String>,
    /// Published ports of the service at creation time.
    #[serde(default)]
    pub ports: Vec<crate::PortSpec>,
    /// Written only by managers.
    pub desired: TaskState,
    /// Written only by the node that runs the task.
    pub status: TaskStatus,
    pub created_at: Millis,
    /// Earliest time the agent may start this task (restart backoff). `None`: at once.
    #[serde(default)]
    pub not_before: Option<Millis>,
    /// Consecutive failures of this slot before this task was created (drives the backoff).
    #[serde(default)]
    pub restart_attempt: u32,
    /// When the task's node first reported it RUNNING; derived by the state machine from the
    /// node's report (the node stays the only writer of observed state).
    #[serde(default)]
    pub started_at: Option<Millis>,
    /// The task's address on each overlay network it attaches to, allocated by the manager;
    /// held (in [`crate::ClusterState`]'s address index) until the task is observed terminal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<crate::network::Attachment>,
}

impl Task {
    /// `web.2` for replicated, `web.<node>` for global, as docker prints it.
    pub fn name(&self) -> String {
        if self.slot > 0 {
            format!("{}.{}", self.service_name, self.slot)
        } else {
            let node = self.node_id.as_deref().unwrap_or("");
            format!("{}.{}", self.service_name, crate::short_id(node))
        }
    }

    /// The slot key that links a task with its history: slot number or node id.
    pub fn slot_key(&self) -> SlotKey {
        if self.slot > 0 {
            SlotKey::Slot(self.slot)
        } else {
            SlotKey::Node(self.node_id.clone().unwrap_or_default())
        }
    }

    /// The task is meant to run (desired RUNNING or READY) and has not finished.
    pub fn is_runnable(&self) -> bool {
        self.desired <= TaskState::Running && !self.status.state.is_terminal()
    }

    /// Container id used for this task in containerd.
    pub fn container_id(&self) -> String {
        format!("{}.{}", self.name(), self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SlotKey {
    Slot(u64),
    Node(Id),
}
