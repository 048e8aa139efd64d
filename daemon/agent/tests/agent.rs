//! The agent against the fake executor, on tokio's paused (virtual) time.
//!
//! A `Node` plays the daemon: it owns the assignment channel, applies every report to its copy
//! of the tasks (as the replicated state would) and checks on every report that the task's
//! observed state moved forward.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agent::fake::{Call, FakeExecutor};
use agent::{Agent, ContainerStatus, ExecError, Existing, TokioClock, VANISHED};
use model::{Millis, Task, TaskSpec, TaskState, TaskStatus};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use TaskState::*;

const EPOCH: Millis = 1_700_000_000_000;
const NODE: &str = "node-1";
/// Longer than anything a test waits for; in virtual time it costs nothing.
const DEADLINE: Duration = Duration::from_secs(3600);

fn task(id: &str, slot: u64) -> Task {
    Task {
        id: id.to_string(),
        service_id: "svc-web".into(),
        service_name: "web".into(),
        slot,
        node_id: Some(NODE.into()),
        spec_version: 1,
        spec: TaskSpec {
            image: "registry.local/web:1".into(),
            stop_signal: "SIGTERM".into(),
            stop_grace_period: 10_000,
            ..Default::default()
        },
        image_digest: None,
        ports: vec![],
        desired: Running,
        status: TaskStatus {
            state: Assigned,
            ..Default::default()
        },
        created_at: EPOCH,
        not_before: None,
        restart_attempt: 0,
        started_at: None,
        networks: vec![],
    }
}

struct Node {
    exec: Arc<FakeExecutor>,
    tx: watch::Sender<Vec<Task>>,
    reports: mpsc::Receiver<(String, TaskStatus)>,
    agent: JoinHandle<()>,
    tasks: Vec<Task>,
    history: HashMap<String, Vec<TaskStatus>>,
}

impl Node {
    fn start(exec: Arc<FakeExecutor>, tasks: Vec<Task>) -> Node {
        Node::start_with(exec, tasks, |a| a)
    }

    fn start_with(
        exec: Arc<FakeExecutor>,
        tasks: Vec<Task>,
        configure: impl FnOnce(Agent<FakeExecutor>) -> Agent<FakeExecutor>,
    ) -> Node {
        let (tx, rx) = watch::channel(tasks.clone());
        let (report_tx, reports) = mpsc::channel(4096);
        let clock = Arc::new(TokioClock::starting_at(EPOCH));
        let agent = configure(Agent::new(NODE.into(), exec.clone(), clock));
        let agent = tokio::spawn(agent.run(rx, report_tx));
        Node {
            exec,
            tx,
            reports,
            agent,
            tasks,
            history: HashMap::new(),
        }
    }

    /// Ends the agent the way a daemon stop does; returns the executor and the recorded tasks.
    async fn stop(mut self) -> (Arc<FakeExecutor>, Vec<Task>) {
        drop(self.tx);
        timeout(DEADLINE, self.agent)
            .await
            .expect("agent did not stop after its assignment sender was dropped")
            .expect("agent panicked");
        while let Ok((id, status)) = self.reports.try_recv() {
            record(&mut self.tasks, &mut self.history, id, status);
        }
        (self.exec, self.tasks)
    }

    /// Changes the assignment (as a manager would) and publishes it.
    fn assign(&mut self, change: impl FnOnce(&mut Vec<Task>)) {
        change(&mut self.tasks);
        self.tx.send_replace(self.tasks.clone());
    }

    fn set_desired(&mut self, id: &str, desired: TaskState) {
        self.assign(|tasks| {
            tasks
                .iter_mut()
                .filter(|t| t.id == id)
                .for_each(|t| t.desired = desired)
        });
    }

    async fn next(&mut self) -> (String, TaskStatus) {
        let (id, status) = timeout(DEADLINE, self.reports.recv())
            .await
            .expect("no report within the deadline")
            .expect("agent closed its report channel");
        record(
            &mut self.tasks,
            &mut self.history,
            id.clone(),
            status.clone(),
        );
        (id, status)
    }

    /// Pumps reports until `id` reports `state`; returns that status.
    async fn until(&mut self, id: &str, state: TaskState) -> TaskStatus {
        loop {
            if let Some(status) = self.reported(id, state) {
                return status;
            }
            let (got, status) = self.next().await;
            if got == id {
                assert!(
                    status.state <= state,
                    "task {id} skipped past {state} to {}: {status:?}",
                    status.state
                );
            }
        }
    }

    fn reported(&self, id: &str, state: TaskState) -> Option<TaskStatus> {
        self.history
            .get(id)?
            .iter()
            .find(|s| s.state == state)
            .cloned()
    }

    fn states(&self, id: &str) -> Vec<TaskState> {
        self.history
            .get(id)
            .map(|h| h.iter().map(|s| s.state).collect())
            .unwrap_or_default()
    }

    /// Asserts that nothing is reported for a long (virtual) while.
    async fn quiet(&mut self) {
        if let Ok(Some((id, status))) = timeout(Duration::from_secs(600), self.reports.recv()).await
        {
            panic!("unexpected report for {id}: {status:?}");
        }
    }

    /// Waits (in virtual time) until the fake executor satisfies `cond`.
    async fn eventually(&self, what: &str, cond: impl Fn(&FakeExecutor) -> bool) {
        let waited = timeout(DEADLINE, async {
            while !cond(&self.exec) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "timed out waiting until {what}: {:?}",
            self.exec.calls()
        );
    }
}

/// Applies a report like the replicated state would, checking it moves forward.
fn record(
    tasks: &mut [Task],
    history: &mut HashMap<String, Vec<TaskStatus>>,
    id: String,
    status: TaskStatus,
) {
    let entry = history.entry(id.clone()).or_default();
    if let Some(last) = entry.last() {
        // A report in the same state carries new details (the process, its health).
        assert!(
            status.state > last.state || (status.state == last.state && status != *last),
            "task {id} went from {} back to {}",
            last.state,
            status.state
        );
        assert!(
            status.timestamp >= last.timestamp,
            "task {id}: time went back"
        );
    }
    entry.push(status.clone());
    if let Some(task) = tasks.iter_mut().find(|t| t.id == id) {
        task.status = status;
    }
}

fn removed(id: &'static str) -> impl Fn(&FakeExecutor) -> bool {
    move |exec| exec.container(id).is_none()
}

fn running(exec: &FakeExecutor, id: &str) -> Option<u32> {
    exec.container(id).and_then(|c| c.pid())
}

#[tokio::test(start_paused = true)]
async fn a_task_goes_through_every_state_in_order() {
    let mut node = Node::start(Arc::new(FakeExecutor::new()), vec![task("t1", 1)]);
    let status = node.until("t1", Running).await;
    assert_eq!(
        node.states("t1"),
        [Accepted, Preparing, Ready, Starting, Running]
    );
    let messages: Vec<String> = node.history["t1"]
        .iter()
        .map(|s| s.message.clone())
        .collect();
    assert_eq!(
        messages,
        ["accepted", "preparing", "prepared", "starting", "started"]
    );
    assert_eq!(status.timestamp, EPOCH);
    assert_eq!(status.container_id.as_deref(), Some("web.1.t1"));
    assert_eq!(status.pid, running(&node.exec, "t1"));
    assert!(status.pid.is_some());
    assert!(status.address.is_some());
    assert_eq!(status.err, None);
    assert_eq!(node.exec.starts("t1"), 1);
    node.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_fails_the_task_with_its_exit_code_and_frees_the_container() {
    let mut node = Node::start(Arc::new(FakeExecutor::new()), vec![task("t1", 1)]);
    let running = node.until("t1", Running).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(node.exec.crash("t1", 3));
    let failed = node.until("t1", Failed).await;
    assert_eq!(failed.err.as_deref(), Some("task: non-zero exit (3)"));
    assert_eq!(failed.exit_code, Some(3));
    assert!(!failed.oom_killed);
    assert_eq!(failed.timestamp, running.timestamp + 3_000);
    assert_eq!(failed.pid, running.pid);
    node.eventually("the container is removed", removed("t1"))
        .await;
    assert_eq!(node.exec.count(|c| matches!(c, Call::Remove { .. })), 1);
    node.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn exit_zero_completes() {
    let mut node = Node::start(Arc::new(FakeExecutor::new()), vec![task("t1", 1)]);
    node.until("t1", Running).await;
    node.exec.crash("t1", 0);
    let complete = node.until("t1", Complete).await;
    assert_eq!(complete.exit_code, Some(0));
    assert_eq!(complete.err, None);
    assert_eq!(complete.message, "finished");
    node.eventually("the container is removed", removed("t1"))
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_program_that_exits_on_its_own_completes() {
    let exec = Arc::new(FakeExecutor::new());
    exec.exit_after("registry.local/web:1", Duration::from_secs(30), 0);
    let mut node = Node::start(exec, vec![task("job", 1)]);
    let running = node.until("job", Running).await;
    let complete = node.until("job", Complete).await;
    assert_eq!(complete.timestamp - running.timestamp, 30_000);
}

#[tokio::test(start_paused = true)]
async fn oom_fails_the_task() {
    let mut node = Node::start(Arc::new(FakeExecutor::new()), vec![task("t1", 1)]);
    node.until("t1", Running).await;
    assert!(node.exec.oom("t1"));
    let failed = node.until("t1", Failed).await;
    assert_eq!(failed.err.as_deref(), Some("task: OOM killed"));
    assert!(failed.oom_killed);
    assert_eq!(failed.exit_code, Some(137));
}

#[tokio::test(start_paused = true)]
async fn desired_shutdown_stops_with_the_task_signal() {
    let mut t = task("t1", 1);
    t.spec.stop_signal = "SIGINT".into();
    t.spec.stop_grace_period = 4_000;
    let mut node = Node::start(Arc::new(FakeExecutor::new()), vec![t]);
    let running = node.until("t1", Running).await;
    node.set_desired("t1", Shutdown);
    let shutdown = node.until("t1", Shutdown).await;
    assert_eq!(shutdown.message, "shutdown");
    assert_eq!(shutdown.err, None);
    assert_eq!(
        shutdown.timestamp, running.timestamp,
        "a cooperative process stops at once"
    );
    assert!(node.exec.calls().contains(&Call::Stop {
        container_id: "web.1.t1".into(),
        signal: "SIGINT".into(),
        grace: Duration::from_secs(4),
    }));
    assert_eq!(node.exec.count(|c| matches!(c, Call::Kill { .. })), 0);
    node.eventually("the container is removed", removed("t1"))
        .await;
    assert_eq!(node.states("t1").last(), Some(&Shutdown));
    node.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
    let exec = Arc::new(FakeExecutor::new());
    exec.ignore_stop_signal("t1");
    let mut node = Node::start(exec, vec![task("t1", 1)]);
    let running = node.until("t1", Running).await;
    node.set_desired("t1", Shutdown);
    let shutdown = node.until("t1", Shutdown).await;
    assert_eq!(shutdown.timestamp - running.timestamp, 10_000);
    assert_eq!(node.exec.count(|c| matches!(c, Call::Kill { .. })), 1);
    node.eventually("the container is removed", removed("t1"))
        .await;
}

#[tokio::test(start_paused = true)]
async fn not_before_delays_starting_but_not_preparing() {
    let exec = Arc::new(FakeExecutor::new());
    exec.set_prepare_delay(Duration::from_secs(2));
    let mut t = task("t1", 1);
    t.not_before = Some(EPOCH + 5_000);
    let mut node = Node::start(exec, vec![t]);
    let preparing = node.until("t1", Preparing).await;
    assert_eq!(preparing.timestamp, EPOCH);
    let ready = node.until("t1", Ready).await;
    assert_eq!(ready.timestamp, EPOCH + 2_000);
    let starting = node.until("t1", Starting).await;
    assert_eq!(starting.timestamp, EPOCH + 5_000);
    node.until("t1", Running).await;
}

#[tokio::test(start_paused = true)]
async fn desired_ready_prepares_and_waits_for_running() {
    let mut t = task("t1", 1);
    t.desired = Ready;
    let mut node = Node::start(Arc::new(FakeExecutor::new()), vec![t]);
    node.until("t1", Ready).await;
    node.quiet().await;
    assert_eq!(node.exec.starts("t1"), 0);
    node.set_desired("t1", Running);
    node.until("t1", Running).await;
    assert_eq!(
        node.states("t1"),
        [Accepted, Preparing, Ready, Starting, Running]
    );
}

#[tokio::test(start_paused = true)]
async fn a_prepare_failure_rejects_the_task_with_the_error_text() {
    let exec = Arc::new(FakeExecutor::new());
    exec.reject_image(
        "registry.local/web:1",
        "failed to pull image registry.local/web:1: manifest unknown",
    );
    let mut node = Node::start(exec, vec![task("t1", 1)]);
    let rejected = node.until("t1", Rejected).await;
    assert_eq!(
        rejected.err.as_deref(),
        Some("failed to pull image registry.local/web:1: manifest unknown")
    );
    assert_eq!(node.states("t1"), [Accepted, Preparing, Rejected]);
    assert_eq!(node.exec.starts("t1"), 0);
    node.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn temporary_errors_are_retried_every_second() {
    let exec = Arc::new(FakeExecutor::new());
    exec.fail_prepare("t1", ExecError::temporary("containerd is busy"));
    exec.fail_prepare("t1", ExecError::temporary("containerd is busy"));
    exec.fail_start("t1", ExecError::temporary("containerd is busy"));
    let mut node = Node::start(exec, vec![task("t1", 1)]);
    let ready = node.until("t1", Ready).await;
    assert_eq!(ready.timestamp, EPOCH + 2_000);
    let starting = node.until("t1", Starting).await;
    let running = node.until("t1", Running).await;
    assert_eq!(running.timestamp - starting.timestamp, 1_000);
    assert_eq!(node.exec.count(|c| matches!(c, Call::Prepare { .. })), 3);
    assert_eq!(node.exec.starts("t1"), 2);
    assert_eq!(
        node.states("t1"),
        [Accepted, Preparing, Ready, Starting, Running]
    );
}

#[tokio::test(start_paused = true)]
async fn a_fatal_start_error_fails_the_task() {
    let exec = Arc::new(FakeExecutor::new());
    exec.fail_start(
        "t1",
        ExecError::fatal("failed to start container web.1.t1: exec format error"),
    );
    let mut node = Node::start(exec, vec![task("t1", 1)]);
    let failed = node.until("t1", Failed).await;
    assert_eq!(
        failed.err.as_deref(),
        Some("failed to start container web.1.t1: exec format error")
    );
    assert_eq!(
        node.states("t1"),
        [Accepted, Preparing, Ready, Starting, Failed]
    );
    node.eventually("the container is removed", removed("t1"))
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_task_removed_from_the_assignment_is_stopped_and_removed() {
    let mut node = Node::start(
        Arc::new(FakeExecutor::new()),
        vec![task("t1", 1), task("t2", 2)],
    );
    node.until("t1", Running).await;
    node.until("t2", Running).await;
    node.assign(|tasks| tasks.retain(|t| t.id != "t1"));
    node.eventually("t1's container is removed", removed("t1"))
        .await;
    assert_eq!(
        node.exec
            .count(|c| matches!(c, Call::Stop { container_id, .. } if container_id == "web.1.t1")),
        1
    );
    assert!(running(&node.exec, "t2").is_some(), "t2 is untouched");
    node.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn desired_remove_stops_then_removes() {
    let mut node = Node::start(Arc::new(FakeExecutor::new()), vec![task("t1", 1)]);
    node.until("t1", Running).await;
    node.set_desired("t1", Remove);
    node.until("t1", Shutdown).await;
    node.eventually("the container is removed", removed("t1"))
        .await;
    let calls = node.exec.calls();
    let stop = calls.iter().position(|c| matches!(c, Call::Stop { .. }));
    let remove = calls.iter().position(|c| matches!(c, Call::Remove { .. }));
    assert!(
        stop.is_some() && stop < remove,
        "stop comes before remove: {calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_slow_prepare_cancels_it() {
    let exec = Arc::new(FakeExecutor::new());
    exec.set_prepare_delay(Duration::from_secs(600));
    let mut node = Node::start(exec, vec![task("t1", 1)]);
    node.until("t1", Preparing).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    node.set_desired("t1", Shutdown);
    let shutdown = node.until("t1", Shutdown).await;
    assert_eq!(shutdown.timestamp, EPOCH + 5_000);
    assert_eq!(node.states("t1"), [Accepted, Preparing, Shutdown]);
    node.eventually("cleanup ran", |e| {
        e.count(|c| matches!(c, Call::Remove { .. })) == 1
    })
    .await;
    assert_eq!(node.exec.starts("t1"), 0);
    assert!(node.exec.container("t1").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_stale_assignment_does_not_move_a_task_back() {
    let mut node = Node::start(Arc::new(FakeExecutor::new()), vec![task("t1", 1)]);
    node.until("t1", Running).await;
    // The replicated state lags: the assignment still shows the task as ASSIGNED.
    node.assign(|tasks| {
        tasks[0].status = TaskStatus {
            state: Assigned,
            ..Default::default()
        };
        tasks[0].spec_version += 1;
    });
    node.quiet().await;
    assert_eq!(node.exec.starts("t1"), 1);
    assert_eq!(node.exec.count(|c| matches!(c, Call::Prepare { .. })), 1);
}

#[tokio::test(start_paused = true)]
async fn tasks_of_other_nodes_are_ignored() {
    let mut other = task("t9", 9);
    other.node_id = Some("node-2".into());
    let mut node = Node::start(Arc::new(FakeExecutor::new()), vec![task("t1", 1), other]);
    node.until("t1", Running).await;
    node.quiet().await;
    assert!(!node.history.contains_key("t9"));
    assert_eq!(
        node.exec
            .count(|c| matches!(c, Call::Prepare { task_id } if task_id == "t9")),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn restart_adopts_running_tasks_and_cleans_up_the_rest() {
    let exec = Arc::new(FakeExecutor::new());
    let tasks = vec![task("keep", 1), task("lost", 2), task("gone", 3)];
    let mut node = Node::start(exec.clone(), tasks);
    let before = node.until("keep", Running).await;
    node.until("lost", Running).await;
    node.until("gone", Running).await;
    let (exec, mut tasks) = node.stop().await;

    // The daemon is down: the containers keep running.
    assert!(running(&exec, "keep").is_some());
    assert_eq!(
        exec.count(|c| matches!(c, Call::Stop { .. } | Call::Remove { .. })),
        0
    );
    // Meanwhile: one container disappears, one task is deleted from the state, and a container
    // of a task this node never heard of shows up.
    assert!(exec.vanish("lost"));
    tasks.retain(|t| t.id != "gone");
    exec.insert(Existing {
        task_id: "ghost".into(),
        container_id: "web.7.ghost".into(),
        status: ContainerStatus::Running { pid: 4242 },
    });

    let mut node = Node::start(exec.clone(), tasks);
    let failed = node.until("lost", Failed).await;
    assert_eq!(failed.err.as_deref(), Some(VANISHED));
    node.eventually("the deleted task's container is removed", removed("gone"))
        .await;
    node.eventually("the unknown container is removed", removed("ghost"))
        .await;
    assert_eq!(
        exec.count(|c| matches!(c, Call::Stop { container_id, signal, grace }
            if container_id == "web.7.ghost" && signal == "SIGTERM" && *grace == Duration::from_secs(10))),
        1
    );
    // The adopted task: not restarted, nothing reported, same process.
    node.quiet().await;
    assert!(!node.history.contains_key("keep"));
    assert_eq!(exec.starts("keep"), 1);
    assert_eq!(running(&exec, "keep"), before.pid);
    // ... and still watched.
    exec.crash("keep", 9);
    let failed = node.until("keep", Failed).await;
    assert_eq!(failed.exit_code, Some(9));
    assert_eq!(failed.pid, before.pid);
    node.eventually("the container is removed", removed("keep"))
        .await;
}

#[tokio::test(start_paused = true)]
async fn adoption_catches_up_with_a_lagging_record_and_with_exits() {
    let exec = Arc::new(FakeExecutor::new());
    let mut node = Node::start(exec.clone(), vec![task("lag", 1), task("died", 2)]);
    let before = node.until("lag", Running).await;
    node.until("died", Running).await;
    let (exec, mut tasks) = node.stop().await;
    // The replicated state never saw the last reports of "lag".
    tasks[0].status = TaskStatus {
        state: Ready,
        ..Default::default()
    };
    // "died" exited while the daemon was down.
    assert!(exec.crash("died", 2));

    let mut node = Node::start(exec.clone(), tasks);
    let adopted = node.until("lag", Running).await;
    assert_eq!(node.states("lag"), [Running]);
    assert_eq!(adopted.message, "adopted");
    assert_eq!(adopted.pid, before.pid);
    let failed = node.until("died", Failed).await;
    assert_eq!(failed.exit_code, Some(2));
    assert_eq!(failed.err.as_deref(), Some("task: non-zero exit (2)"));
    assert_eq!(exec.starts("lag"), 1);
    assert_eq!(exec.starts("died"), 1);
    node.eventually("the exited container is removed", removed("died"))
        .await;
}

#[tokio::test(start_paused = true)]
async fn restart_finishes_preparing_without_repeating_reports() {
    let exec = Arc::new(FakeExecutor::new());
    let mut t = task("t1", 1);
    t.desired = Ready;
    let mut node = Node::start(exec.clone(), vec![t]);
    node.until("t1", Ready).await;
    let (exec, mut tasks) = node.stop().await;
    tasks[0].desired = Running;
    let mut node = Node::start(exec.clone(), tasks);
    node.until("t1", Running).await;
    assert_eq!(node.states("t1"), [Starting, Running]);
    assert_eq!(exec.count(|c| matches!(c, Call::Prepare { .. })), 2);
}

#[tokio::test(start_paused = true)]
async fn a_running_container_of_a_task_shut_down_meanwhile_is_stopped() {
    let exec = Arc::new(FakeExecutor::new());
    let mut node = Node::start(exec.clone(), vec![task("t1", 1)]);
    node.until("t1", Running).await;
    let (exec, mut tasks) = node.stop().await;
    tasks[0].desired = Shutdown;
    let mut node = Node::start(exec.clone(), tasks);
    node.until("t1", Shutdown).await;
    assert_eq!(exec.count(|c| matches!(c, Call::Stop { .. })), 1);
    node.eventually("the container is removed", removed("t1"))
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_leftover_container_of_a_terminal_task_is_removed_without_a_report() {
    let exec = Arc::new(FakeExecutor::new());
    let mut t = task("old", 1);
    t.status = TaskStatus {
        state: Orphaned,
        ..Default::default()
    };
    exec.insert(Existing {
        task_id: "old".into(),
        container_id: t.container_id(),
        status: ContainerStatus::Running { pid: 77 },
    });
    let mut node = Node::start(exec.clone(), vec![t]);
    node.eventually("the container is removed", removed("old"))
        .await;
    assert_eq!(exec.count(|c| matches!(c, Call::Stop { .. })), 1);
    node.quiet().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_list_is_retried_before_anything_else() {
    let exec = Arc::new(FakeExecutor::new());
    exec.fail_list(ExecError::temporary("containerd is not up yet"));
    exec.fail_list(ExecError::fatal("permission denied"));
    let mut node = Node::start(exec, vec![task("t1", 1)]);
    let accepted = node.until("t1", Accepted).await;
    assert_eq!(accepted.timestamp, EPOCH + 2_000);
    assert_eq!(node.exec.count(|c| matches!(c, Call::List)), 3);
}

#[tokio::test(start_paused = true)]
async fn prepares_run_in_parallel_up_to_the_limit() {
    let exec = Arc::new(FakeExecutor::new());
    exec.set_prepare_delay(Duration::from_secs(1));
    let tasks: Vec<Task> = (1..=50).map(|i| task(&format!("t{i:02}"), i)).collect();
    let mut node = Node::start_with(exec, tasks.clone(), |a| a.with_prepare_concurrency(32));
    let mut ready_at = Vec::new();
    for t in &tasks {
        ready_at.push(node.until(&t.id, Ready).await.timestamp);
        node.until(&t.id, Running).await;
    }
    ready_at.sort();
    assert_eq!(
        ready_at.iter().filter(|&&at| at == EPOCH + 1_000).count(),
        32
    );
    assert_eq!(
        ready_at.iter().filter(|&&at| at == EPOCH + 2_000).count(),
        18
    );
}

#[tokio::test(start_paused = true)]
async fn churn_never_moves_a_report_backwards() {
    let exec = Arc::new(FakeExecutor::new());
    exec.ignore_stop_signal("t03");
    let tasks: Vec<Task> = (1..=8).map(|i| task(&format!("t{i:02}"), i)).collect();
    let mut node = Node::start(exec, tasks);
    node.until("t01", Preparing).await;
    node.set_desired("t02", Shutdown);
    node.until("t03", Running).await;
    node.set_desired("t03", Shutdown);
    node.until("t04", Running).await;
    node.exec.crash("t04", 1);
    node.assign(|tasks| tasks.retain(|t| t.id != "t05"));
    node.until("t06", Running).await;
    node.exec.oom("t06");
    node.set_desired("t07", Remove);
    node.until("t08", Running).await;
    node.exec.crash("t08", 0);
    for (id, last) in [
        ("t01", Running),
        ("t02", Shutdown),
        ("t03", Shutdown),
        ("t04", Failed),
        ("t06", Failed),
        ("t07", Shutdown),
        ("t08", Complete),
    ] {
        node.until(id, last).await;
    }
    // `record` asserted order on every report; the terminal tasks have left no containers.
    node.eventually("all terminal containers are removed", |e| {
        e.containers().iter().all(|c| c.task_id == "t01")
    })
    .await;
}

fn with_health(mut t: Task, test: &[&str], interval: Millis, retries: u32) -> Task {
    t.spec.healthcheck = Some(model::Healthcheck {
        test: test.iter().map(|s| s.to_string()).collect(),
        interval,
        timeout: 1_000,
        retries,
        ..Default::default()
    });
    t
}

#[tokio::test(start_paused = true)]
async fn a_task_with_a_healthcheck_is_running_only_after_a_check_passes() {
    let t = with_health(task("t1", 1), &["CMD", "check"], 5_000, 3);
    let mut node = Node::start(Arc::new(FakeExecutor::new()), vec![t]);
    let running = node.until("t1", Running).await;
    // STARTING twice: before the process starts, then with its pid and health "starting".
    assert_eq!(
        node.states("t1"),
        [Accepted, Preparing, Ready, Starting, Starting, Running]
    );
    let started = &node.history["t1"][4];
    assert!(started.pid.is_some());
    assert_eq!(
        started.health.as_ref().map(|h| h.status),
        Some(model::HealthStatus::Starting)
    );
    // The first check is an early one, at the start: a task ready at once runs at once
    // (Docker would first check it one interval later).
    assert_eq!(running.timestamp, EPOCH);
    let health = running.health.clone().unwrap();
    assert_eq!(health.status, model::HealthStatus::Healthy);
    let last = health.last.unwrap();
    assert_eq!(
        (last.exit_code, last.output.as_str()),
        (0, "check exited 0\n")
    );
    assert_eq!(
        node.exec.calls().iter().find_map(|c| match c {
            Call::Exec { command, .. } => Some(command.clone()),
            _ => None,
        }),
        Some(vec!["check".to_string()])
    );
    // Passing checks go on without new reports.
    node.quiet().await;
    assert!(node.exec.execs("t1") > 10);
}

#[tokio::test(start_paused = true)]
async fn a_starting_task_is_checked_early_and_early_failures_do_not_count() {
    let exec = Arc::new(FakeExecutor::new());
    exec.set_health("t1", Some(1));
    // One counted failure would make it unhealthy.
    let t = with_health(task("t1", 1), &["CMD", "check"], 5_000, 1);
    let mut node = Node::start(exec.clone(), vec![t]);
    node.eventually("three early checks ran", |e| e.execs("t1") == 3)
        .await;
    exec.set_health("t1", Some(0));
    let running = node.until("t1", Running).await;
    // Early checks at 0, 100 and 300 ms failed, the one at 700 ms passed.
    assert_eq!(running.timestamp, EPOCH + 700);
    assert_eq!(exec.execs("t1"), 4);
    assert!(
        !node.states("t1").contains(&Failed),
        "{:?}",
        node.states("t1")
    );
    // The failed early checks were shown while starting, without a failing streak.
    assert!(node.history["t1"].iter().any(|s| s.state == Starting
        && s.health.as_ref().is_some_and(|h| {
            h.failing_streak == 0 && h.last.as_ref().is_some_and(|l| l.exit_code == 1)
        })));
}

#[tokio::test(start_paused = true)]
async fn a_task_whose_checks_fail_never_runs_and_is_stopped_and_failed() {
    let exec = Arc::new(FakeExecutor::new());
    exec.set_health("t1", Some(1));
    let t = with_health(task("t1", 1), &["CMD-SHELL", "exit 1"], 1_000, 2);
    let mut node = Node::start(exec, vec![t]);
    let failed = node.until("t1", Failed).await;
    assert!(
        !node.states("t1").contains(&Running),
        "{:?}",
        node.states("t1")
    );
    assert_eq!(failed.err.as_deref(), Some(model::health::UNHEALTHY_ERROR));
    // Early checks at 0, 100, 300 and 700 ms failed without counting; the regular ones at 1 s
    // and 2 s made the two failures in a row.
    assert_eq!(failed.timestamp, EPOCH + 2_000);
    let health = failed.health.unwrap();
    assert_eq!(health.status, model::HealthStatus::Unhealthy);
    assert_eq!(health.failing_streak, 2);
    assert_eq!(health.last.unwrap().exit_code, 1);
    assert_eq!(
        node.exec.count(
            |c| matches!(c, Call::Exec { command, .. } if command == &["/bin/sh", "-c", "exit 1"])
        ),
        6
    );
    assert_eq!(
        node.exec
            .count(|c| matches!(c, Call::Stop { signal, .. } if signal == "SIGTERM")),
        1
    );
    node.eventually("the container is removed", removed("t1"))
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_running_task_that_turns_unhealthy_fails_and_a_timeout_is_a_failure() {
    let exec = Arc::new(FakeExecutor::new());
    let t = with_health(task("t1", 1), &["CMD", "check"], 1_000, 2);
    let mut node = Node::start(exec.clone(), vec![t]);
    node.until("t1", Running).await;
    exec.set_health("t1", None);
    let failed = node.until("t1", Failed).await;
    assert_eq!(failed.err.as_deref(), Some(model::health::UNHEALTHY_ERROR));
    let last = failed.health.unwrap().last.unwrap();
    assert_eq!(last.exit_code, -1);
    assert!(last.output.contains("exceeded its timeout"), "{last:?}");
    // The first failure was reported while RUNNING, with its streak.
    assert!(node.history["t1"].iter().any(|s| s.state == Running
        && s.health.as_ref().is_some_and(|h| h.failing_streak == 1)));
}

#[tokio::test(start_paused = true)]
async fn the_images_healthcheck_applies_unless_the_service_turns_it_off() {
    let exec = Arc::new(FakeExecutor::new());
    exec.image_healthcheck(
        "registry.local/web:1",
        model::Healthcheck {
            test: vec!["CMD".into(), "image-check".into()],
            interval: 3_000,
            ..Default::default()
        },
    );
    let mut off = task("off", 2);
    off.spec.healthcheck = Some(model::Healthcheck {
        test: vec!["NONE".into()],
        ..Default::default()
    });
    let mut node = Node::start(exec.clone(), vec![task("t1", 1), off]);
    let running = node.until("t1", Running).await;
    assert_eq!(running.timestamp, EPOCH);
    assert_eq!(
        running.health.unwrap().last.unwrap().output,
        "check exited 0\n"
    );
    let off = node.until("off", Running).await;
    assert_eq!(off.timestamp, EPOCH);
    assert_eq!(off.health, None);
    assert_eq!(exec.execs("off"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_agent_keeps_checking_a_starting_task() {
    let exec = Arc::new(FakeExecutor::new());
    exec.set_health("t1", Some(1));
    let t = with_health(task("t1", 1), &["CMD", "check"], 1_000, 1_000);
    let mut node = Node::start(exec.clone(), vec![t]);
    node.until("t1", Starting).await;
    node.eventually("a check ran", |e| e.execs("t1") > 0).await;
    let (exec, tasks) = node.stop().await;
    assert_eq!(tasks[0].status.state, Starting);
    exec.set_health("t1", Some(0));
    let mut node = Node::start(exec.clone(), tasks);
    node.until("t1", Running).await;
    assert_eq!(
        exec.starts("t1"),
        1,
        "the process was adopted, not restarted"
    );
}
