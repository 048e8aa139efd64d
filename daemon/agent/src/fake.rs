//! An in-memory [`Executor`] with controllable behaviour, for the agent's tests and the daemon's
//! simulation tier.
//!
//! "Containers" live in a map inside the executor, so they survive an [`Agent`](crate::Agent):
//! two agents run one after the other on the same `Arc<FakeExecutor>` are a daemon restart.
//! Processes run until told otherwise: [`FakeExecutor::crash`], [`FakeExecutor::oom`], a program
//! set with [`FakeExecutor::exit_after`], or `stop`. A stopped process exits with `128 + signal`
//! unless it ignores its stop signal ([`FakeExecutor::ignore_stop_signal`]); then it is killed
//! with SIGKILL (137) once the grace period has passed, in tokio time.
//!
//! Every call is recorded ([`FakeExecutor::calls`]) so tests can assert what the agent asked for.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use model::Task;
use tokio::sync::watch;

use crate::executor::{
    ContainerRef, ContainerStatus, ExecError, ExecOutput, Executor, Existing, ExitStatus, Prepared,
};

/// One call the agent made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    List,
    Prepare {
        task_id: String,
    },
    Start {
        task_id: String,
    },
    Wait {
        container_id: String,
    },
    Stop {
        container_id: String,
        signal: String,
        grace: Duration,
    },
    /// The SIGKILL that follows an ignored stop signal after the grace period.
    Kill {
        container_id: String,
    },
    Remove {
        container_id: String,
    },
    /// A healthcheck command run in the container.
    Exec {
        container_id: String,
        command: Vec<String>,
    },
}

/// See the module documentation.
#[derive(Clone, Default)]
pub struct FakeExecutor {
    inner: Arc<Mutex<Inner>>,
}

struct Container {
    task_id: String,
    address: String,
    state: watch::Sender<ContainerStatus>,
}

impl Container {
    fn status(&self) -> ContainerStatus {
        *self.state.borrow()
    }

    fn existing(&self, container_id: &str) -> Existing {
        Existing {
            task_id: self.task_id.clone(),
            container_id: container_id.to_string(),
            status: self.status(),
        }
    }
}

#[derive(Default)]
struct Inner {
    containers: BTreeMap<String, Container>,
    next_pid: u32,
    next_address: u32,
    prepare_delay: Duration,
    prepare_failures: HashMap<String, VecDeque<ExecError>>,
    start_failures: HashMap<String, VecDeque<ExecError>>,
    list_failures: VecDeque<ExecError>,
    rejected_images: HashMap<String, String>,
    ignores_stop: HashSet<String>,
    programs: HashMap<String, (Duration, i32)>,
    /// Exit code of every healthcheck run in a task's container (0 when unset).
    health_codes: HashMap<String, i32>,
    /// Healthchecks of images, by image reference.
    image_healthchecks: HashMap<String, model::Healthcheck>,
    calls: Vec<Call>,
}

impl Inner {
    fn by_task(&self, task_id: &str) -> Option<(&String, &Container)> {
        self.containers.iter().find(|(_, c)| c.task_id == task_id)
    }

    /// Ends the running process of a container (any pid when `pid` is `None`).
    fn exit(&self, container_id: &str, pid: Option<u32>, exit: ExitStatus) -> bool {
        let Some(container) = self.containers.get(container_id) else {
            return false;
        };
        container.state.send_if_modified(|state| match *state {
            ContainerStatus::Running { pid: running } if pid.is_none_or(|p| p == running) => {
                *state = ContainerStatus::Exited(exit);
                true
            }
            _ => false,
        })
    }
}

impl FakeExecutor {
    pub fn new() -> FakeExecutor {
        FakeExecutor::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// How many calls match `pred`.
    pub fn count(&self, pred: impl Fn(&Call) -> bool) -> usize {
        self.lock().calls.iter().filter(|c| pred(c)).count()
    }

    /// How many times `start` was called for a task.
    pub fn starts(&self, task_id: &str) -> usize {
        self.count(|c| matches!(c, Call::Start { task_id: t } if t == task_id))
    }

    /// The container of a task, if one exists.
    pub fn container(&self, task_id: &str) -> Option<Existing> {
        let inner = self.lock();
        inner.by_task(task_id).map(|(id, c)| c.existing(id))
    }

    /// Every container.
    pub fn containers(&self) -> Vec<Existing> {
        let inner = self.lock();
        inner
            .containers
            .iter()
            .map(|(id, c)| c.existing(id))
            .collect()
    }

    /// Puts a container into the runtime as if an earlier daemon had made it.
    pub fn insert(&self, found: Existing) {
        let mut inner = self.lock();
        inner.next_address += 1;
        let address = format!("10.0.0.{}", inner.next_address);
        let (state, _) = watch::channel(found.status);
        inner.containers.insert(
            found.container_id,
            Container {
                task_id: found.task_id,
                address,
                state,
            },
        );
    }

    /// The task's process exits with `code`. Returns whether a process was running.
    pub fn crash(&self, task_id: &str, code: i32) -> bool {
        let inner = self.lock();
        let Some((id, _)) = inner.by_task(task_id) else {
            return false;
        };
        inner.exit(
            id,
            None,
            ExitStatus {
                code,
                oom_killed: false,
            },
        )
    }

    /// The OOM killer ends the task's process (exit code 137). Returns whether it was running.
    pub fn oom(&self, task_id: &str) -> bool {
        let inner = self.lock();
        let Some((id, _)) = inner.by_task(task_id) else {
            return false;
        };
        inner.exit(
            id,
            None,
            ExitStatus {
                code: 137,
                oom_killed: true,
            },
        )
    }

    /// The task's container disappears behind the agent's back (not recorded as a call).
    pub fn vanish(&self, task_id: &str) -> bool {
        let mut inner = self.lock();
        let Some(id) = inner.by_task(task_id).map(|(id, _)| id.clone()) else {
            return false;
        };
        inner.containers.remove(&id).is_some()
    }

    /// The next `prepare` of the task fails with `err` (queue one per call).
    pub fn fail_prepare(&self, task_id: &str, err: ExecError) {
        let mut inner = self.lock();
        inner
            .prepare_failures
            .entry(task_id.to_string())
            .or_default()
            .push_back(err);
    }

    /// The next `start` of the task fails with `err` (queue one per call).
    pub fn fail_start(&self, task_id: &str, err: ExecError) {
        let mut inner = self.lock();
        inner
            .start_failures
            .entry(task_id.to_string())
            .or_default()
            .push_back(err);
    }

    /// The next `list` fails with `err` (queue one per call).
    pub fn fail_list(&self, err: ExecError) {
        self.lock().list_failures.push_back(err);
    }

    /// Every `prepare` of a task with this image fails fatally with `message`.
    pub fn reject_image(&self, image: &str, message: &str) {
        let mut inner = self.lock();
        inner
            .rejected_images
            .insert(image.to_string(), message.to_string());
    }

    /// `prepare` takes this long (an image pull), in tokio time.
    pub fn set_prepare_delay(&self, delay: Duration) {
        self.lock().prepare_delay = delay;
    }

    /// The task's process ignores every signal but SIGKILL.
    pub fn ignore_stop_signal(&self, task_id: &str) {
        self.lock().ignores_stop.insert(task_id.to_string());
    }

    /// Every later healthcheck of the task exits with `code` (0 until set); `None`: it runs
    /// past its timeout.
    pub fn set_health(&self, task_id: &str, code: Option<i32>) {
        self.lock()
            .health_codes
            .insert(task_id.to_string(), code.unwrap_or(i32::MIN));
    }

    /// Images with this reference carry `check` as their HEALTHCHECK.
    pub fn image_healthcheck(&self, image: &str, check: model::Healthcheck) {
        self.lock()
            .image_healthchecks
            .insert(image.to_string(), check);
    }

    /// How many healthchecks ran in the task's container.
    pub fn execs(&self, task_id: &str) -> usize {
        self.count(
            |c| matches!(c, Call::Exec { container_id, .. } if container_id.ends_with(task_id)),
        )
    }

    /// Processes of tasks with this image exit with `code` after running for `after`.
    pub fn exit_after(&self, image: &str, after: Duration, code: i32) {
        self.lock()
            .programs
            .insert(image.to_string(), (after, code));
    }
}

/// The number of a signal given by name (`SIGTERM`, `TERM`) or number.
fn signal_number(signal: &str) -> Option<i32> {
    if let Ok(n) = signal.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = signal.trim_start_matches("SIG");
    let n = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        "WINCH" => 28,
        _ => return None,
    };
    Some(n)
}

const KILLED: ExitStatus = ExitStatus {
    code: 137,
    oom_killed: false,
};

impl Executor for FakeExecutor {
    async fn prepare(&self, task: &Task) -> Result<Prepared, ExecError> {
        let delay = {
            let mut inner = self.lock();
            inner.calls.push(Call::Prepare {
                task_id: task.id.clone(),
            });
            inner.prepare_delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut inner = self.lock();
        if let Some(err) = inner
            .prepare_failures
            .get_mut(&task.id)
            .and_then(VecDeque::pop_front)
        {
            return Err(err);
        }
        if let Some(message) = inner.rejected_images.get(&task.spec.image) {
            return Err(ExecError::fatal(message.clone()));
        }
        let container_id = task.container_id();
        if let Some(existing) = inner.containers.get(&container_id) {
            return Ok(Prepared {
                container_id,
                address: Some(existing.address.clone()),
            });
        }
        inner.next_address += 1;
        let address = format!("10.0.0.{}", inner.next_address);
        let (state, _) = watch::channel(ContainerStatus::Created);
        inner.containers.insert(
            container_id.clone(),
            Container {
                task_id: task.id.clone(),
                address: address.clone(),
                state,
            },
        );
        Ok(Prepared {
            container_id,
            address: Some(address),
        })
    }

    async fn start(&self, task: &Task) -> Result<u32, ExecError> {
        let mut inner = self.lock();
        inner.calls.push(Call::Start {
            task_id: task.id.clone(),
        });
        if let Some(err) = inner
            .start_failures
            .get_mut(&task.id)
            .and_then(VecDeque::pop_front)
        {
            return Err(err);
        }
        let container_id = task.container_id();
        let status = match inner.containers.get(&container_id) {
            Some(container) => container.status(),
            None => {
                return Err(ExecError::fatal(format!(
                    "failed to start container {container_id}: it does not exist; prepare it first"
                )));
            }
        };
        match status {
            ContainerStatus::Running { pid } => Ok(pid),
            ContainerStatus::Exited(_) => Err(ExecError::fatal(format!(
                "failed to start container {container_id}: its process already ran; create a new task"
            ))),
            ContainerStatus::Created => {
                inner.next_pid += 1;
                let pid = 1000 + inner.next_pid;
                if let Some(container) = inner.containers.get(&container_id) {
                    container
                        .state
                        .send_replace(ContainerStatus::Running { pid });
                }
                if let Some(&(after, code)) = inner.programs.get(&task.spec.image) {
                    let shared = self.inner.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let inner = shared.lock().unwrap_or_else(|p| p.into_inner());
                        inner.exit(
                            &container_id,
                            Some(pid),
                            ExitStatus {
                                code,
                                oom_killed: false,
                            },
                        );
                    });
                }
                Ok(pid)
            }
        }
    }

    async fn wait(&self, container: &ContainerRef) -> Result<ExitStatus, ExecError> {
        let mut state = {
            let mut inner = self.lock();
            inner.calls.push(Call::Wait {
                container_id: container.container_id.clone(),
            });
            match inner.containers.get(&container.container_id) {
                Some(c) if c.status() == ContainerStatus::Created => {
                    return Err(ExecError::fatal(format!(
                        "failed to wait for container {}: its process was never started",
                        container.container_id
                    )));
                }
                Some(c) => c.state.subscribe(),
                None => {
                    return Err(ExecError::fatal(format!(
                        "failed to wait for container {}: it does not exist",
                        container.container_id
                    )));
                }
            }
        };
        let exited = state
            .wait_for(|s| matches!(s, ContainerStatus::Exited(_)))
            .await
            .map(|s| *s);
        match exited {
            Ok(ContainerStatus::Exited(exit)) => Ok(exit),
            _ => Err(ExecError::fatal(format!(
                "failed to wait for container {}: it was removed",
                container.container_id
            ))),
        }
    }

    async fn stop(
        &self,
        container: &ContainerRef,
        signal: &str,
        grace: Duration,
    ) -> Result<(), ExecError> {
        let id = &container.container_id;
        let (mut state, pid) = {
            let mut inner = self.lock();
            inner.calls.push(Call::Stop {
                container_id: id.clone(),
                signal: signal.to_string(),
                grace,
            });
            let Some(signo) = signal_number(signal) else {
                return Err(ExecError::fatal(format!(
                    "failed to stop container {id}: unknown signal {signal}"
                )));
            };
            let Some(c) = inner.containers.get(id) else {
                return Ok(());
            };
            let ContainerStatus::Running { pid } = c.status() else {
                return Ok(());
            };
            let ignores = inner.ignores_stop.contains(&c.task_id);
            if signo == 9 || !ignores {
                inner.exit(
                    id,
                    Some(pid),
                    ExitStatus {
                        code: 128 + signo,
                        oom_killed: false,
                    },
                );
                return Ok(());
            }
            (c.state.subscribe(), pid)
        };
        let gone = tokio::time::timeout(
            grace,
            state.wait_for(|s| *s != ContainerStatus::Running { pid }),
        )
        .await;
        if gone.is_err() {
            let mut inner = self.lock();
            inner.calls.push(Call::Kill {
                container_id: id.clone(),
            });
            inner.exit(id, Some(pid), KILLED);
        }
        Ok(())
    }

    async fn remove(&self, container: &ContainerRef) -> Result<(), ExecError> {
        let mut inner = self.lock();
        inner.calls.push(Call::Remove {
            container_id: container.container_id.clone(),
        });
        inner.exit(&container.container_id, None, KILLED);
        inner.containers.remove(&container.container_id);
        Ok(())
    }

    async fn healthcheck(
        &self,
        task: &Task,
    ) -> Result<Option<model::health::ResolvedHealthcheck>, ExecError> {
        let inner = self.lock();
        Ok(model::health::resolve(
            task.spec.healthcheck.as_ref(),
            inner.image_healthchecks.get(&task.spec.image),
        ))
    }

    async fn exec(
        &self,
        container: &ContainerRef,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, ExecError> {
        let code = {
            let mut inner = self.lock();
            inner.calls.push(Call::Exec {
                container_id: container.container_id.clone(),
                command: command.to_vec(),
            });
            match inner.containers.get(&container.container_id) {
                Some(c) if matches!(c.status(), ContainerStatus::Running { .. }) => {}
                _ => {
                    return Err(ExecError::fatal(format!(
                        "container {} is not running",
                        container.container_id
                    )));
                }
            }
            inner
                .health_codes
                .get(&container.task_id)
                .copied()
                .unwrap_or(0)
        };
        if code == i32::MIN {
            tokio::time::sleep(timeout).await;
            return Ok(ExecOutput {
                exit_code: None,
                output: Vec::new(),
            });
        }
        Ok(ExecOutput {
            exit_code: Some(code),
            output: format!("check exited {code}\n").into_bytes(),
        })
    }

    async fn list(&self) -> Result<Vec<Existing>, ExecError> {
        let mut inner = self.lock();
        inner.calls.push(Call::List);
        if let Some(err) = inner.list_failures.pop_front() {
            return Err(err);
        }
        Ok(inner
            .containers
            .iter()
            .map(|(id, c)| c.existing(id))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> Task {
        Task {
            id: id.to_string(),
            service_id: "svc".into(),
            service_name: "web".into(),
            slot: 1,
            node_id: Some("n1".into()),
            spec_version: 1,
            spec: model::TaskSpec {
                image: "busybox".into(),
                ..Default::default()
            },
            image_digest: None,
            ports: vec![],
            desired: model::TaskState::Running,
            status: Default::default(),
            created_at: 0,
            not_before: None,
            restart_attempt: 0,
            started_at: None,
            networks: vec![],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn prepare_start_crash_wait() {
        let fake = FakeExecutor::new();
        let t = task("t1");
        let p = fake.prepare(&t).await.unwrap();
        assert_eq!(fake.prepare(&t).await.unwrap(), p, "prepare is idempotent");
        let pid = fake.start(&t).await.unwrap();
        assert_eq!(fake.start(&t).await.unwrap(), pid, "start is idempotent");
        let c = ContainerRef::for_task(&t);
        let waiter = {
            let fake = fake.clone();
            let c = c.clone();
            tokio::spawn(async move { fake.wait(&c).await })
        };
        tokio::task::yield_now().await;
        assert!(fake.crash("t1", 3));
        let exit = waiter.await.unwrap().unwrap();
        assert_eq!(
            exit,
            ExitStatus {
                code: 3,
                oom_killed: false
            }
        );
        // Waiting again on an exited process returns at once; starting it again is refused.
        assert_eq!(fake.wait(&c).await.unwrap().code, 3);
        assert!(!fake.start(&t).await.unwrap_err().is_temporary());
    }

    #[tokio::test(start_paused = true)]
    async fn stop_honours_signals_and_grace() {
        let fake = FakeExecutor::new();
        let (a, b) = (task("a"), task("b"));
        for t in [&a, &b] {
            fake.prepare(t).await.unwrap();
            fake.start(t).await.unwrap();
        }
        fake.ignore_stop_signal("b");
        let grace = Duration::from_secs(7);
        let t0 = tokio::time::Instant::now();
        fake.stop(&ContainerRef::for_task(&a), "SIGINT", grace)
            .await
            .unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(
            fake.container("a").unwrap().status,
            ContainerStatus::Exited(ExitStatus {
                code: 130,
                oom_killed: false
            })
        );
        fake.stop(&ContainerRef::for_task(&b), "SIGTERM", grace)
            .await
            .unwrap();
        assert_eq!(t0.elapsed(), grace);
        assert_eq!(
            fake.container("b").unwrap().status,
            ContainerStatus::Exited(KILLED)
        );
        assert_eq!(fake.count(|c| matches!(c, Call::Kill { .. })), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn programs_exit_on_their_own() {
        let fake = FakeExecutor::new();
        fake.exit_after("busybox", Duration::from_secs(2), 4);
        let t = task("t");
        fake.prepare(&t).await.unwrap();
        fake.start(&t).await.unwrap();
        let exit = fake.wait(&ContainerRef::for_task(&t)).await.unwrap();
        assert_eq!(exit.code, 4);
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_number("SIGTERM"), Some(15));
        assert_eq!(signal_number("KILL"), Some(9));
        assert_eq!(signal_number("2"), Some(2));
        assert_eq!(signal_number("SIGNOPE"), None);
        assert_eq!(signal_number("0"), None);
    }
}
