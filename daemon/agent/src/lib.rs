//! shoal's worker side: runs the tasks the managers assigned to this node.
//!
//! The daemon feeds an [`Agent`] the full set of tasks assigned to its node through a
//! `tokio::sync::watch` channel (level-triggered: every value is the whole set) and receives
//! each observed status change on an `mpsc` channel, which it forwards to the managers. The
//! agent runs one task manager per task; a manager walks Swarm's task state machine and performs
//! each step through an [`Executor`]:
//!
//! ```text
//! NEW/PENDING/ASSIGNED → ACCEPTED → PREPARING ─prepare→ READY ─(not_before)→ STARTING ─start→ RUNNING
//!                                                                                   │ wait
//!            any live state ─(desired ≥ SHUTDOWN: stop)→ SHUTDOWN       COMPLETE (exit 0) / FAILED
//!            fatal error before STARTING → REJECTED, at or after STARTING → FAILED
//! ```
//!
//! - Observed states only move forward; a report never repeats or lowers a state.
//! - PREPARING runs while desired is still READY, so an image pull overlaps the restart delay;
//!   STARTING waits for desired RUNNING (or COMPLETE, for jobs) and for `task.not_before`.
//! - A process that exits with 0 is COMPLETE; otherwise FAILED with `task: non-zero exit (N)`,
//!   or `task: OOM killed`; the exit code is recorded.
//! - Desired SHUTDOWN or REMOVE stops the process with the task's stop signal and grace period
//!   and reports SHUTDOWN. A task that left the assignment is stopped and removed silently.
//! - A task with a healthcheck (its service's, else its image's) stays STARTING once its
//!   process runs, until a check passes; then it is RUNNING. The first checks run early, from
//!   the start on (`model::health::Schedule`), then Docker's. Checks run in a tokio task of
//!   their own (through [`Executor::exec`]) while the manager waits for the process; a task
//!   that becomes unhealthy is stopped and reported FAILED (`task: unhealthy container`). The
//!   health and the last check's exit code and output are reported with the status.
//! - A terminal task's container is removed at once; only its log file stays.
//! - Temporary executor errors are retried after one second; fatal ones end the task.
//! - When the agent stops, containers keep running. The next agent adopts them: a running
//!   container of an assigned, wanted task is watched again without a restart; a container of
//!   no assigned task is removed; a started task whose container is gone becomes FAILED
//!   (`task: container vanished`).
//!
//! The decisions are pure ([`lifecycle`]); the IO sits behind [`Executor`]. The production
//! executor is an adapter in the daemon; [`fake::FakeExecutor`] serves tests and simulation.
//! Time comes from a [`Clock`], so tests run on tokio's paused, virtual time.

mod agent;
pub mod clock;
pub mod executor;
pub mod fake;
pub mod images;
pub mod lifecycle;
mod manager;

pub use agent::{Agent, DEFAULT_PREPARE_CONCURRENCY};
pub use clock::{Clock, SystemClock, TokioClock};
pub use executor::{
    ContainerRef, ContainerStatus, ExecError, ExecOutput, Executor, Existing, ExitStatus, Prepared,
};
pub use manager::{DEFAULT_STOP_GRACE, DEFAULT_STOP_SIGNAL, RETRY_INTERVAL, VANISHED};
