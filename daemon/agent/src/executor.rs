//! The boundary between the agent and the container runtime.
//!
//! The agent decides *when* to prepare, start, stop and remove; an [`Executor`] knows *how*. The
//! production executor (an adapter over the containerd and net crates) lives in the daemon; the
//! [`FakeExecutor`](crate::fake::FakeExecutor) in this crate serves the tests and the simulation.
//!
//! Rules every implementation follows:
//!
//! - Every method is idempotent: calling it again after it succeeded, or after its future was
//!   dropped half-way, finishes the job or does nothing. The agent drops futures when a task is
//!   shut down during `prepare`, and drops everything when the daemon stops.
//! - Errors say whether a retry can help ([`ExecError::Temporary`], retried after a second) or not
//!   ([`ExecError::Fatal`], which ends the task). The message becomes the task's `status.err`.
//! - Containers outlive the agent: nothing is stopped when an executor value is dropped.

use std::future::Future;
use std::time::Duration;

use model::Task;
use model::health::ResolvedHealthcheck;

/// What `prepare` made: the container exists and is ready to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The container's id in the runtime, normally [`Task::container_id`].
    pub container_id: String,
    /// The task's address on the node network, when it has one.
    pub address: Option<String>,
}

/// How a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: i32,
    /// The kernel's OOM killer ended the process.
    pub oom_killed: bool,
}

/// How a command run inside a container ([`Executor::exec`]) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit code; `None` when it ran past its timeout and was killed.
    pub exit_code: Option<i32>,
    /// The last bytes of its stdout and stderr (at most `model::health::MAX_OUTPUT_BYTES`).
    pub output: Vec<u8>,
}

/// The state of a container found in the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Created by `prepare`; its process was never started.
    Created,
    /// Its process is running.
    Running { pid: u32 },
    /// Its process ran and exited; the runtime still holds the exit status.
    Exited(ExitStatus),
}

/// Names a container for the calls that need nothing but its identity. Containers found by
/// [`Executor::list`] may belong to tasks the agent no longer knows, so these calls cannot rely
/// on a [`Task`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    pub task_id: String,
    pub container_id: String,
}

impl ContainerRef {
    /// The container a task gets by default: [`Task::container_id`].
    pub fn for_task(task: &Task) -> ContainerRef {
        ContainerRef {
            task_id: task.id.clone(),
            container_id: task.container_id(),
        }
    }
}

/// A container that exists in the runtime, as reported by [`Executor::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub task_id: String,
    pub container_id: String,
    pub status: ContainerStatus,
}

impl Existing {
    pub fn container(&self) -> ContainerRef {
        ContainerRef {
            task_id: self.task_id.clone(),
            container_id: self.container_id.clone(),
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.status, ContainerStatus::Running { .. })
    }

    pub fn pid(&self) -> Option<u32> {
        match self.status {
            ContainerStatus::Running { pid } => Some(pid),
            _ => None,
        }
    }
}

/// Why an executor call failed. The text becomes the task's `status.err`, so it names what failed
/// ("failed to pull image registry/app:1: manifest unknown").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// A retry may succeed (runtime busy, connection reset); the agent retries after a second.
    #[error("{0}")]
    Temporary(String),
    /// A retry cannot help (image not found, invalid spec). Before STARTING the task becomes
    /// REJECTED, at or after STARTING it becomes FAILED.
    #[error("{0}")]
    Fatal(String),
}

impl ExecError {
    pub fn temporary(message: impl Into<String>) -> ExecError {
        ExecError::Temporary(message.into())
    }

    pub fn fatal(message: impl Into<String>) -> ExecError {
        ExecError::Fatal(message.into())
    }

    pub fn is_temporary(&self) -> bool {
        matches!(self, ExecError::Temporary(_))
    }

    pub fn message(&self) -> &str {
        match self {
            ExecError::Temporary(m) | ExecError::Fatal(m) => m,
        }
    }
}

/// Runs containers for the agent. See the module documentation for the rules.
pub trait Executor: Send + Sync + 'static {
    /// Makes the task ready to start: imports or pulls `task.spec.image` (pinned to
    /// `task.image_digest` when set), attaches the network, creates the container. The container
    /// may already exist from an earlier call; then this only returns its details.
    fn prepare(&self, task: &Task) -> impl Future<Output = Result<Prepared, ExecError>> + Send;

    /// Starts the process of the prepared container and returns its pid. Starting a process that
    /// already runs returns its pid. A process that ran and exited is never run again: that is a
    /// fatal error.
    fn start(&self, task: &Task) -> impl Future<Output = Result<u32, ExecError>> + Send;

    /// Resolves when the container's process exits, also for containers started by an earlier
    /// agent. A process that already exited resolves at once with its status. A container with no
    /// process (never started, or gone) is a fatal error.
    fn wait(
        &self,
        container: &ContainerRef,
    ) -> impl Future<Output = Result<ExitStatus, ExecError>> + Send;

    /// Sends `signal` (a name such as `SIGTERM`) to the process, then SIGKILL once `grace` has
    /// passed, and returns when the process has exited. A container without a running process is
    /// a success.
    fn stop(
        &self,
        container: &ContainerRef,
        signal: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), ExecError>> + Send;

    /// Removes the container, its network attachment and its per-task files, killing the process
    /// if it still runs. The task's log file is kept. A missing container is a success.
    fn remove(
        &self,
        container: &ContainerRef,
    ) -> impl Future<Output = Result<(), ExecError>> + Send;

    /// Every container of this node's tasks that exists in the runtime.
    fn list(&self) -> impl Future<Output = Result<Vec<Existing>, ExecError>> + Send;

    /// The healthcheck the task runs: its service's merged over its image's HEALTHCHECK
    /// ([`model::health::resolve`]); `None` when it runs none. Called once the task is
    /// prepared, and for containers adopted after a restart (the image is on the node then).
    fn healthcheck(
        &self,
        task: &Task,
    ) -> impl Future<Output = Result<Option<ResolvedHealthcheck>, ExecError>> + Send;

    /// Runs `command` inside the running container (with the environment, user and working
    /// directory of its process), killing it after `timeout`. Must not block other calls: the
    /// agent runs one check per task concurrently with everything else.
    fn exec(
        &self,
        container: &ContainerRef,
        command: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput, ExecError>> + Send;
}
