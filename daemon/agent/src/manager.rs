//! The task manager: one tokio task per task assigned to this node.
//!
//! A manager follows the latest assignment of its task through a watch channel (`None` once the
//! task is no longer assigned), asks [`lifecycle::decide`](crate::lifecycle::decide) what comes
//! next, performs that step through the [`Executor`] and reports every state it enters. It ends
//! when the task is terminal and its container removed, or when the task was unassigned and its
//! container stopped and removed.
//!
//! When the agent stops (the assignment sender or the report receiver is dropped) a manager
//! returns at its next wait without touching the container: tasks outlive the daemon.

use std::sync::Arc;
use std::time::Duration;

use model::health::{self, CheckResult, HealthStatus, ResolvedHealthcheck, TaskHealth};
use model::{Millis, Task, TaskState, TaskStatus};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, error, info, warn};

use crate::clock::Clock;
use crate::executor::{
    ContainerRef, ContainerStatus, ExecError, ExecOutput, Executor, Existing, ExitStatus,
};
use crate::lifecycle::{Next, decide, exit_outcome};

/// How long the agent waits before it retries a temporary executor error (Swarm: 1s).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Stop signal for containers whose task is unknown or names none.
pub const DEFAULT_STOP_SIGNAL: &str = "SIGTERM";

/// Stop grace period for containers whose task is unknown (Swarm's default).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// The error text of a task whose container disappeared while the agent was away.
pub const VANISHED: &str = "task: container vanished";

/// What all managers of one agent share.
pub(crate) struct Shared<E> {
    pub executor: Arc<E>,
    pub clock: Arc<dyn Clock>,
    pub reports: mpsc::Sender<(String, TaskStatus)>,
    /// Bounds the number of `prepare` calls in flight.
    pub prepare_slots: Arc<Semaphore>,
}

/// The agent is going away: return without touching the container.
#[derive(Debug)]
pub(crate) struct Halt;

type Step = Result<(), Halt>;

pub(crate) struct TaskManager<E> {
    id: String,
    shared: Arc<Shared<E>>,
    rx: watch::Receiver<Option<Task>>,
    /// What the runtime held for this task when the agent started.
    existing: Option<Existing>,
    /// The last assignment seen; its spec gives the stop signal after unassignment.
    last: Option<Task>,
    /// The last status reported (or recorded, before the first report).
    status: TaskStatus,
    /// A container may exist for the task.
    container: Option<ContainerRef>,
    /// A process may run in the container.
    process_may_run: bool,
    /// `prepare` succeeded in this agent's lifetime.
    prepared: bool,
    /// The process was started, or adopted running, in this agent's lifetime.
    started: bool,
    /// The task's healthcheck, running while its process runs.
    health: Option<HealthRun>,
}

/// A task's healthcheck loop ([`probe`]) and the health it reports after each check.
struct HealthRun {
    rx: mpsc::Receiver<TaskHealth>,
    _probe: AbortOnDrop,
}

impl<E: Executor> TaskManager<E> {
    pub(crate) fn new(
        id: String,
        shared: Arc<Shared<E>>,
        rx: watch::Receiver<Option<Task>>,
        existing: Option<Existing>,
    ) -> TaskManager<E> {
        TaskManager {
            id,
            shared,
            rx,
            existing,
            last: None,
            status: TaskStatus::default(),
            container: None,
            process_may_run: false,
            prepared: false,
            started: false,
            health: None,
        }
    }

    /// Runs the manager to its end. `prior` is an earlier manager of the same task id that is
    /// still tearing the task down; it finishes first.
    pub(crate) async fn run(mut self, prior: Option<JoinHandle<()>>) {
        if let Some(prior) = prior {
            // Aborted together with this manager, so no teardown outlives the agent.
            let mut prior = AbortOnDrop(prior);
            let _ = (&mut prior.0).await;
        }
        if self.drive().await.is_err() {
            debug!(task = %self.id, "task manager stopped with the agent");
        }
    }

    async fn drive(&mut self) -> Step {
        let initial = self.rx.borrow_and_update().clone();
        if let Some(task) = &initial {
            self.status = task.status.clone();
        }
        let existing = self.existing.take();
        if let Some(existing) = &existing {
            self.container = Some(existing.container());
            self.status.container_id = Some(existing.container_id.clone());
            self.process_may_run = existing.is_running();
        }
        if let Some(task) = &initial {
            self.adopt(task, existing.map(|e| e.status)).await?;
        }
        loop {
            let current = self.rx.borrow_and_update().clone();
            let Some(task) = current else {
                self.teardown().await;
                return Ok(());
            };
            let now = self.shared.clock.now();
            let next = decide(
                self.status.state,
                task.desired,
                self.prepared,
                self.started,
                task.not_before,
                now,
            );
            self.last = Some(task.clone());
            match next {
                Next::Cleanup => {
                    self.cleanup(&task).await;
                    return Ok(());
                }
                Next::Shutdown => self.shutdown(&task).await?,
                Next::Advance(state, message) => self.advance(state, message, None).await?,
                Next::Prepare { report } => self.prepare(&task, report).await?,
                Next::WaitUntil(at) => self.wait_until(at).await?,
                Next::Start => self.start(&task).await?,
                Next::Wait => self.wait(&task).await?,
                Next::Idle => {
                    self.rx.changed().await.map_err(|_| Halt)?;
                }
            }
        }
    }

    /// Reconciles the recorded status with what the runtime held at agent start.
    async fn adopt(&mut self, task: &Task, found: Option<ContainerStatus>) -> Step {
        let recorded = self.status.state;
        if recorded.is_terminal() || task.desired >= TaskState::Shutdown {
            // The main loop removes or shuts down what is there.
            return Ok(());
        }
        match found {
            Some(ContainerStatus::Running { pid }) => {
                info!(task = %self.id, pid, "adopted running container");
                self.status.pid = Some(pid);
                self.started = true;
                let check = match self.shared.executor.healthcheck(task).await {
                    Ok(check) => check,
                    Err(err) => {
                        // The image is on the node, so this is rare; the service's own check
                        // still applies.
                        warn!(task = %self.id, %err, "cannot read the image's healthcheck");
                        health::resolve(task.spec.healthcheck.as_ref(), None)
                    }
                };
                match check {
                    None if recorded < TaskState::Running => {
                        self.advance(TaskState::Running, "adopted", None).await?;
                    }
                    None => {}
                    Some(check) => {
                        if recorded < TaskState::Starting {
                            self.advance(TaskState::Starting, "adopted", None).await?;
                        }
                        let health = task.status.health.clone().unwrap_or_default();
                        let since = task.started_at.unwrap_or(task.status.timestamp);
                        self.begin_health(check, since, health);
                    }
                }
            }
            Some(ContainerStatus::Exited(exit)) => {
                info!(task = %self.id, code = exit.code, "container exited while the agent was away");
                self.finish(exit).await?;
            }
            Some(ContainerStatus::Created) if recorded == TaskState::Running => {
                self.advance(TaskState::Failed, "failed", Some(VANISHED.to_string()))
                    .await?;
            }
            None if recorded >= TaskState::Starting => {
                warn!(task = %self.id, state = %recorded, "container of a started task is gone");
                self.advance(TaskState::Failed, "failed", Some(VANISHED.to_string()))
                    .await?;
            }
            // Not started yet: the main loop prepares again (prepare is idempotent).
            Some(ContainerStatus::Created) | None => {}
        }
        Ok(())
    }

    /// Reports `state` when it lies ahead of the last report; observed states never go back.
    async fn advance(
        &mut self,
        state: TaskState,
        message: &'static str,
        err: Option<String>,
    ) -> Step {
        if state <= self.status.state {
            // Unreachable by construction; waiting for the next assignment keeps a logic error
            // from turning into a busy loop.
            error!(task = %self.id, from = %self.status.state, to = %state, "refused to move a task backwards");
            return self.rx.changed().await.map_err(|_| Halt);
        }
        info!(task = %self.id, from = %self.status.state, to = %state, err = err.as_deref().unwrap_or(""), "task state changed");
        self.status.state = state;
        self.status.timestamp = self.shared.clock.now();
        self.status.message = message.to_string();
        self.status.err = err;
        self.shared
            .reports
            .send((self.id.clone(), self.status.clone()))
            .await
            .map_err(|_| Halt)
    }

    /// The state a fatal executor error leads to.
    fn fatal_state(&self) -> TaskState {
        if self.status.state >= TaskState::Starting {
            TaskState::Failed
        } else {
            TaskState::Rejected
        }
    }

    async fn fail(&mut self, err: &ExecError) -> Step {
        let state = self.fatal_state();
        let message = if state == TaskState::Failed {
            "failed"
        } else {
            "rejected"
        };
        self.advance(state, message, Some(err.message().to_string()))
            .await
    }

    /// Sends the current status again: same state, new details (the process, its health).
    async fn report(&mut self) -> Step {
        self.shared
            .reports
            .send((self.id.clone(), self.status.clone()))
            .await
            .map_err(|_| Halt)
    }

    /// Starts the healthcheck loop of a process that started at `since` (wall clock).
    fn begin_health(&mut self, check: ResolvedHealthcheck, since: Millis, health: TaskHealth) {
        let Some(container) = self.container.clone() else {
            return;
        };
        self.status.health = Some(health.clone());
        let (tx, rx) = mpsc::channel(4);
        let handle = tokio::spawn(probe(
            self.shared.clone(),
            container,
            check,
            since,
            health,
            tx,
        ));
        self.health = Some(HealthRun {
            rx,
            _probe: AbortOnDrop(handle),
        });
    }

    /// A check ran: record its result; a first pass makes the task RUNNING, an unhealthy task
    /// is stopped and FAILED.
    async fn on_health(&mut self, task: &Task, h: TaskHealth) -> Step {
        let prev = self.status.health.replace(h.clone());
        match h.status {
            HealthStatus::Unhealthy => {
                self.health = None;
                if self.process_may_run
                    && let Some(container) = self.container.clone()
                {
                    let (signal, grace) = stop_params(Some(task));
                    info!(task = %self.id, %signal, "task is unhealthy, stopping it");
                    let executor = self.shared.executor.clone();
                    retry(&self.id, "stop", || {
                        executor.stop(&container, &signal, grace)
                    })
                    .await;
                    self.process_may_run = false;
                }
                self.advance(
                    TaskState::Failed,
                    "failed",
                    Some(health::UNHEALTHY_ERROR.to_string()),
                )
                .await
            }
            HealthStatus::Healthy if self.status.state == TaskState::Starting => {
                info!(task = %self.id, "healthcheck passed");
                self.advance(TaskState::Running, "started", None).await
            }
            _ => {
                let changed = prev.as_ref().is_none_or(|p| {
                    p.status != h.status
                        || p.failing_streak != h.failing_streak
                        || p.last.as_ref().map(|l| l.exit_code)
                            != h.last.as_ref().map(|l| l.exit_code)
                });
                if changed { self.report().await } else { Ok(()) }
            }
        }
    }

    async fn finish(&mut self, exit: ExitStatus) -> Step {
        self.health = None;
        self.process_may_run = false;
        self.status.exit_code = Some(exit.code);
        self.status.oom_killed = exit.oom_killed;
        let (state, message, err) = exit_outcome(exit);
        self.advance(state, message, err).await
    }

    async fn prepare(&mut self, task: &Task, report: bool) -> Step {
        let slots = self.shared.prepare_slots.clone();
        let permit = tokio::select! {
            permit = slots.acquire_owned() => permit.ok(),
            r = interrupted(&mut self.rx) => return r,
        };
        if self.container.is_none() {
            self.container = Some(ContainerRef::for_task(task));
        }
        debug!(task = %self.id, image = %task.spec.image, "preparing");
        let executor = self.shared.executor.clone();
        let result = tokio::select! {
            result = executor.prepare(task) => result,
            // Shutdown or unassignment cancels a pull; teardown removes what it left.
            r = interrupted(&mut self.rx) => return r,
        };
        drop(permit);
        match result {
            Ok(prepared) => {
                self.prepared = true;
                self.container = Some(ContainerRef {
                    task_id: task.id.clone(),
                    container_id: prepared.container_id.clone(),
                });
                self.status.container_id = Some(prepared.container_id);
                self.status.address = prepared.address;
                if report {
                    self.advance(TaskState::Ready, "prepared", None).await?;
                }
                Ok(())
            }
            Err(err) if err.is_temporary() => {
                warn!(task = %self.id, %err, "prepare failed, retrying in 1s");
                self.pause(RETRY_INTERVAL).await
            }
            Err(err) => self.fail(&err).await,
        }
    }

    async fn start(&mut self, task: &Task) -> Step {
        let check = match self.shared.executor.healthcheck(task).await {
            Ok(check) => check,
            Err(err) if err.is_temporary() => {
                warn!(task = %self.id, %err, "reading the healthcheck failed, retrying in 1s");
                return self.pause(RETRY_INTERVAL).await;
            }
            Err(err) => return self.fail(&err).await,
        };
        self.process_may_run = true;
        match self.shared.executor.start(task).await {
            Ok(pid) => {
                self.status.pid = Some(pid);
                self.started = true;
                match check {
                    None => self.advance(TaskState::Running, "started", None).await,
                    Some(check) => {
                        // RUNNING once a check passes; until then the task stays STARTING.
                        let now = self.shared.clock.now();
                        self.begin_health(check, now, TaskHealth::default());
                        self.report().await
                    }
                }
            }
            Err(err) if err.is_temporary() => {
                warn!(task = %self.id, %err, "start failed, retrying in 1s");
                self.pause(RETRY_INTERVAL).await
            }
            Err(err) => self.fail(&err).await,
        }
    }

    async fn wait(&mut self, task: &Task) -> Step {
        let container = self
            .container
            .clone()
            .unwrap_or_else(|| ContainerRef::for_task(task));
        let executor = self.shared.executor.clone();
        let result = tokio::select! {
            result = executor.wait(&container) => Ok(result),
            r = interrupted(&mut self.rx) => return r,
            Some(h) = next_health(&mut self.health) => Err(Checked(h)),
        };
        let result = match result {
            Err(Checked(h)) => return self.on_health(task, h).await,
            Ok(result) => result,
        };
        match result {
            Ok(exit) => self.finish(exit).await,
            Err(err) if err.is_temporary() => {
                warn!(task = %self.id, %err, "wait failed, retrying in 1s");
                self.pause(RETRY_INTERVAL).await
            }
            Err(err) => self.fail(&err).await,
        }
    }

    async fn wait_until(&mut self, at: Millis) -> Step {
        loop {
            let now = self.shared.clock.now();
            if now >= at {
                return Ok(());
            }
            // Re-read the clock at least every second so a wall clock that jumps is followed.
            let nap = Duration::from_millis((at - now).min(1_000));
            tokio::select! {
                _ = sleep(nap) => {}
                r = self.rx.changed() => return r.map_err(|_| Halt),
            }
        }
    }

    async fn shutdown(&mut self, task: &Task) -> Step {
        self.health = None;
        if self.process_may_run
            && let Some(container) = self.container.clone()
        {
            let (signal, grace) = stop_params(Some(task));
            info!(task = %self.id, %signal, ?grace, "stopping task");
            match self.shared.executor.stop(&container, &signal, grace).await {
                Ok(()) => self.process_may_run = false,
                Err(err) if err.is_temporary() => {
                    warn!(task = %self.id, %err, "stop failed, retrying in 1s");
                    return self.pause(RETRY_INTERVAL).await;
                }
                Err(err) => return self.fail(&err).await,
            }
        }
        self.advance(TaskState::Shutdown, "shutdown", None).await
    }

    /// The task is terminal: free its resources, keeping nothing but the log.
    async fn cleanup(&mut self, task: &Task) {
        self.stop_and_remove(Some(task)).await;
    }

    /// The task is no longer assigned: stop and remove its container without reporting.
    async fn teardown(&mut self) {
        let last = self.last.take();
        if self.container.is_some() {
            info!(task = %self.id, "task no longer assigned, removing its container");
        }
        self.stop_and_remove(last.as_ref()).await;
    }

    async fn stop_and_remove(&mut self, task: Option<&Task>) {
        self.health = None;
        let Some(container) = self.container.clone() else {
            return;
        };
        let executor = self.shared.executor.clone();
        if self.process_may_run {
            let (signal, grace) = stop_params(task);
            retry(&self.id, "stop", || {
                executor.stop(&container, &signal, grace)
            })
            .await;
            self.process_may_run = false;
        }
        if retry(&self.id, "remove", || executor.remove(&container)).await {
            debug!(task = %self.id, container = %container.container_id, "container removed");
        }
        self.container = None;
    }

    /// Sleeps `duration`, waking early only when the task is unassigned or shut down meanwhile.
    async fn pause(&mut self, duration: Duration) -> Step {
        let deadline = Instant::now() + duration;
        let was_interrupting = interrupting(&self.rx.borrow());
        loop {
            tokio::select! {
                _ = sleep_until(deadline) => return Ok(()),
                r = self.rx.changed() => {
                    r.map_err(|_| Halt)?;
                    if !was_interrupting && interrupting(&self.rx.borrow()) {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// A healthcheck ran while the manager waited for the process.
struct Checked(TaskHealth);

/// The next health the task's healthcheck loop reports; never resolves without one.
async fn next_health(run: &mut Option<HealthRun>) -> Option<TaskHealth> {
    match run {
        Some(run) => run.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A task's healthcheck loop, in a tokio task of its own: waits for the next check of its
/// [`health::Schedule`] (early ones while it starts, then every interval), runs it in the
/// container, records the result and sends the health on; ends once the task is unhealthy
/// (or when the manager drops the receiver). `since` is when the process started.
async fn probe<E: Executor>(
    shared: Arc<Shared<E>>,
    container: ContainerRef,
    check: ResolvedHealthcheck,
    since: Millis,
    mut health: TaskHealth,
    tx: mpsc::Sender<TaskHealth>,
) {
    let mut schedule = health::Schedule::new(&check);
    loop {
        let elapsed = shared.clock.now().saturating_sub(since);
        let next = schedule.next(&check, &health, elapsed);
        sleep(Duration::from_millis(next.delay)).await;
        let started_at = shared.clock.now();
        let timeout = Duration::from_millis(check.timeout);
        let (exit_code, output) = match shared
            .executor
            .exec(&container, &check.command, timeout)
            .await
        {
            Ok(ExecOutput {
                exit_code: Some(code),
                output,
            }) => (code, health::tail_output(&output)),
            Ok(ExecOutput {
                exit_code: None, ..
            }) => (
                -1,
                format!("healthcheck exceeded its timeout ({} ms)", check.timeout),
            ),
            Err(err) => (-1, format!("failed to run the healthcheck: {err}")),
        };
        let result = CheckResult {
            exit_code,
            output,
            started_at,
            ended_at: shared.clock.now(),
        };
        debug!(container = %container.container_id, exit_code, "healthcheck ran");
        let since_start = started_at.saturating_sub(since);
        let status = if next.early {
            health.record_early(&check, result, since_start)
        } else {
            health.record(&check, result, since_start)
        };
        if tx.send(health.clone()).await.is_err() || status == HealthStatus::Unhealthy {
            return;
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The assignment asks the manager to stop what it is doing: the task is gone or shut down.
fn interrupting(task: &Option<Task>) -> bool {
    task.as_ref()
        .is_none_or(|t| t.desired >= TaskState::Shutdown)
}

/// Resolves `Ok` once the assignment is interrupting, `Err(Halt)` when the agent goes away.
async fn interrupted(rx: &mut watch::Receiver<Option<Task>>) -> Step {
    match rx.wait_for(interrupting).await {
        Ok(_) => Ok(()),
        Err(_) => Err(Halt),
    }
}

/// The stop signal and grace period of a task; defaults for containers of unknown tasks.
fn stop_params(task: Option<&Task>) -> (String, Duration) {
    match task {
        Some(task) => {
            let signal = if task.spec.stop_signal.is_empty() {
                DEFAULT_STOP_SIGNAL.to_string()
            } else {
                task.spec.stop_signal.clone()
            };
            (signal, Duration::from_millis(task.spec.stop_grace_period))
        }
        None => (DEFAULT_STOP_SIGNAL.to_string(), DEFAULT_STOP_GRACE),
    }
}

/// Runs `op` until it succeeds or fails fatally, retrying temporary errors every second. Returns
/// whether it succeeded.
async fn retry<F, Fut>(task_id: &str, what: &str, mut op: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), ExecError>>,
{
    loop {
        match op().await {
            Ok(()) => return true,
            Err(err) if err.is_temporary() => {
                warn!(task = %task_id, %err, "{what} failed, retrying in 1s");
                sleep(RETRY_INTERVAL).await;
            }
            Err(err) => {
                warn!(task = %task_id, %err, "{what} failed, giving up");
                return false;
            }
        }
    }
}
