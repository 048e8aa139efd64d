//! The agent: turns the set of tasks assigned to this node into one task manager per task.
//!
//! [`Agent::run`] first lists the containers the runtime holds (retrying until the runtime
//! answers), hands each to the manager of its task for adoption and removes the containers of
//! tasks that are not assigned. It then follows the assignment channel: a new task gets a manager,
//! a changed task is forwarded to its manager, a task that left the set is torn down (stopped and
//! removed, without a report). It returns when the assignment sender or the report receiver is
//! dropped, leaving every container as it is.

use std::collections::HashMap;
use std::sync::Arc;

use model::{Task, TaskStatus};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::executor::{Executor, Existing};
use crate::manager::{RETRY_INTERVAL, Shared, TaskManager};

/// How many `prepare` calls may run at once by default.
pub const DEFAULT_PREPARE_CONCURRENCY: usize = 32;

/// Drives the tasks assigned to one node through an [`Executor`].
pub struct Agent<E> {
    node_id: String,
    executor: Arc<E>,
    clock: Arc<dyn Clock>,
    prepare_concurrency: usize,
}

/// The manager of one task and the channel that feeds it.
struct Entry {
    tx: watch::Sender<Option<Task>>,
    handle: JoinHandle<()>,
}

impl<E: Executor> Agent<E> {
    pub fn new(node_id: String, executor: Arc<E>, clock: Arc<dyn Clock>) -> Agent<E> {
        Agent {
            node_id,
            executor,
            clock,
            prepare_concurrency: DEFAULT_PREPARE_CONCURRENCY,
        }
    }

    /// Bounds the number of `prepare` calls in flight (image pulls, container creation).
    pub fn with_prepare_concurrency(mut self, limit: usize) -> Agent<E> {
        self.prepare_concurrency = limit.max(1);
        self
    }

    /// Runs until the assignment sender or the report receiver is dropped.
    ///
    /// `assignments` holds the full set of tasks assigned to this node; the value present when
    /// `run` is called must already be authoritative, because the containers of tasks missing
    /// from it are removed. Tasks whose `node_id` names another node are ignored. Every status
    /// change is sent on `reports` as `(task id, status)`, in order per task.
    pub async fn run(
        self,
        mut assignments: watch::Receiver<Vec<Task>>,
        reports: mpsc::Sender<(String, TaskStatus)>,
    ) {
        let Some(existing) = self.list_containers(&assignments, &reports).await else {
            return;
        };
        info!(node = %self.node_id, containers = existing.len(), "agent started");
        let shared = Arc::new(Shared {
            executor: self.executor.clone(),
            clock: self.clock.clone(),
            reports: reports.clone(),
            prepare_slots: Arc::new(Semaphore::new(self.prepare_concurrency)),
        });
        let mut state = Managers {
            shared,
            assigned: HashMap::new(),
            draining: HashMap::new(),
        };

        let mut existing: HashMap<String, Existing> = {
            let mut by_task: HashMap<String, Existing> = HashMap::new();
            for found in existing {
                // Two containers for one task: the running one is the task's, the other an
                // orphan.
                match by_task.remove(&found.task_id) {
                    Some(other) if other.is_running() && !found.is_running() => {
                        state.drain_orphan(found);
                        by_task.insert(other.task_id.clone(), other);
                    }
                    Some(other) => {
                        state.drain_orphan(other);
                        by_task.insert(found.task_id.clone(), found);
                    }
                    None => {
                        by_task.insert(found.task_id.clone(), found);
                    }
                }
            }
            by_task
        };

        let mut first = true;
        loop {
            {
                let tasks = assignments.borrow_and_update();
                let ours: Vec<&Task> = tasks
                    .iter()
                    .filter(|t| t.node_id.as_deref().is_none_or(|n| n == self.node_id))
                    .collect();
                state.reconcile(&ours, &mut existing);
            }
            if first {
                for (_, orphan) in existing.drain() {
                    state.drain_orphan(orphan);
                }
                first = false;
            }
            tokio::select! {
                changed = assignments.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = reports.closed() => break,
            }
        }
        info!(node = %self.node_id, "agent stopping; containers keep running");
        state.abort_all().await;
    }

    /// Lists the runtime's containers, retrying every second; `None` when the agent was stopped
    /// meanwhile.
    async fn list_containers(
        &self,
        assignments: &watch::Receiver<Vec<Task>>,
        reports: &mpsc::Sender<(String, TaskStatus)>,
    ) -> Option<Vec<Existing>> {
        loop {
            if assignments.has_changed().is_err() || reports.is_closed() {
                return None;
            }
            match self.executor.list().await {
                Ok(found) => return Some(found),
                Err(err) => {
                    warn!(%err, "failed to list containers for adoption, retrying in 1s");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_INTERVAL) => {}
                        _ = reports.closed() => return None,
                    }
                }
            }
        }
    }
}

/// The task managers of a running agent.
struct Managers<E> {
    shared: Arc<Shared<E>>,
    /// Managers of the tasks in the current assignment.
    assigned: HashMap<String, Entry>,
    /// Managers tearing down tasks that left the assignment, or containers of unknown tasks.
    draining: HashMap<String, Entry>,
}

impl<E: Executor> Managers<E> {
    fn reconcile(&mut self, tasks: &[&Task], existing: &mut HashMap<String, Existing>) {
        let mut seen = std::collections::HashSet::with_capacity(tasks.len());
        for task in tasks {
            if !seen.insert(task.id.as_str()) {
                warn!(task = %task.id, "task assigned twice; using its first copy");
                continue;
            }
            if let Some(entry) = self.assigned.get(&task.id) {
                entry.tx.send_if_modified(|current| {
                    if current.as_ref() == Some(*task) {
                        false
                    } else {
                        *current = Some((*task).clone());
                        true
                    }
                });
                continue;
            }
            let prior = self.draining.remove(&task.id).map(|entry| entry.handle);
            let found = existing.remove(&task.id);
            debug!(task = %task.id, adopting = found.is_some(), "new task manager");
            let entry = self.spawn(task.id.clone(), Some((*task).clone()), found, prior);
            self.assigned.insert(task.id.clone(), entry);
        }
        let gone: Vec<String> = self
            .assigned
            .keys()
            .filter(|id| !seen.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            if let Some(entry) = self.assigned.remove(&id) {
                entry.tx.send_replace(None);
                self.draining.insert(id, entry);
            }
        }
        self.draining.retain(|_, entry| !entry.handle.is_finished());
    }

    /// Stops and removes a container that belongs to no assigned task.
    fn drain_orphan(&mut self, found: Existing) {
        info!(task = %found.task_id, container = %found.container_id, "removing container of a task not assigned here");
        let id = found.task_id.clone();
        let prior = self.draining.remove(&id).map(|entry| entry.handle);
        let entry = self.spawn(id.clone(), None, Some(found), prior);
        self.draining.insert(id, entry);
    }

    fn spawn(
        &self,
        id: String,
        task: Option<Task>,
        found: Option<Existing>,
        prior: Option<JoinHandle<()>>,
    ) -> Entry {
        let (tx, rx) = watch::channel(task);
        let manager = TaskManager::new(id, self.shared.clone(), rx, found);
        let handle = tokio::spawn(manager.run(prior));
        Entry { tx, handle }
    }

    /// Stops every manager where it stands and waits until they are gone.
    async fn abort_all(self) {
        let entries: Vec<Entry> = self
            .assigned
            .into_values()
            .chain(self.draining.into_values())
            .collect();
        for entry in &entries {
            entry.handle.abort();
        }
        for entry in entries {
            let _ = entry.handle.await;
        }
    }
}
