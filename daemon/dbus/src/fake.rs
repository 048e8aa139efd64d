//! An in-memory [`Backend`] for tests of the API and the CLI (feature `fake`).
//!
//! It keeps services, tasks and stacks in memory and, once [`FakeBackend::start`] runs its
//! simulation, moves tasks through Swarm's states every 100 ms: a new task reaches RUNNING in
//! about half a second; an image whose reference contains `fail` makes every task FAIL with
//! `task: non-zero exit (1)` and get replaced. One node, `fake-node`, is the leader; it has no
//! labels and role manager.
//!
//! Placement is honoured as the real scheduler does for that one node: a task whose service's
//! constraints the node does not satisfy, or whose service already has `max_replicas_per_node`
//! runnable tasks there, stays PENDING with Swarm's explanation in its error ("no suitable node
//! (scheduling constraints not satisfied on 1 node)"); a running task whose node no longer
//! satisfies the constraints is shut down and replaced.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use model::{
    Availability, FailureAction, Id, Node, NodeRole, NodeStatus, Service, ServiceMode, ServiceSpec,
    Task, TaskState, TaskStatus, UpdateState, UpdateStatus,
};

use crate::backend::{Backend, ServiceDetail, SpecPatch};
use crate::error::ApiError;
use crate::server::Events;
use crate::types::{
    ChangeReport, ClusterInfo, ImageRow, LogOptions, NodeRow, PruneReport, ServiceRow, StackRow,
    TaskFilter, TaskRow,
};

const NODE_ID: &str = "fakenode0000000000000001";
const NODE_NAME: &str = "fake-node";
const HISTORY: usize = 5;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct State {
    services: BTreeMap<Id, Service>,
    tasks: BTreeMap<Id, Task>,
    stacks: BTreeMap<String, Vec<String>>,
    next_id: u64,
    reload: Option<Result<ChangeReport, String>>,
}

impl State {
    fn id(&mut self, prefix: &str) -> Id {
        self.next_id += 1;
        format!("{prefix}{:0>20}", self.next_id)
    }

    fn find(&self, key: &str) -> Result<Id, ApiError> {
        if self.services.contains_key(key) {
            return Ok(key.to_string());
        }
        if let Some(s) = self.services.values().find(|s| s.spec.name == key) {
            return Ok(s.id.clone());
        }
        let hits: Vec<&Service> = self
            .services
            .values()
            .filter(|s| !key.is_empty() && s.id.starts_with(key))
            .collect();
        match hits.as_slice() {
            [one] => Ok(one.id.clone()),
            [] => Err(ApiError::NotFound(format!("service {key} not found"))),
            _ => Err(ApiError::NotFound(format!(
                "service id prefix {key} is ambiguous"
            ))),
        }
    }

    fn counts(&self, svc: &Service) -> (u64, u64) {
        let running = self
            .tasks
            .values()
            .filter(|t| {
                t.service_id == svc.id
                    && t.spec_version == svc.version
                    && t.status.state == TaskState::Running
                    && t.desired == TaskState::Running
            })
            .count() as u64;
        let desired = match svc.spec.mode.replicas() {
            Some(replicas) => replicas,
            None => u64::from(svc.spec.placement.matches(&FakeBackend::node())),
        };
        (running, desired)
    }

    fn create(&mut self, spec: ServiceSpec) -> Result<Id, ApiError> {
        if self.services.values().any(|s| s.spec.name == spec.name) {
            return Err(ApiError::AlreadyExists(format!(
                "service {} already exists",
                spec.name
            )));
        }
        let id = self.id("svc");
        let now = now_ms();
        self.services
            .insert(id.clone(), Service::new(id.clone(), spec, None, now));
        Ok(id)
    }

    fn replace_spec(&mut self, id: &str, spec: ServiceSpec) -> u64 {
        let svc = self.services.get_mut(id).expect("id was resolved");
        if svc.spec == spec {
            return svc.version;
        }
        let task_changed = svc.spec.task != spec.task || svc.spec.ports != spec.ports;
        svc.previous_spec = Some(std::mem::replace(&mut svc.spec, spec));
        svc.updated_at = now_ms();
        if task_changed {
            svc.version += 1;
            svc.update_status = Some(UpdateStatus {
                state: UpdateState::Updating,
                started_at: svc.updated_at,
                completed_at: None,
                message: "update in progress".into(),
            });
        }
        svc.version
    }

    fn remove(&mut self, id: &str) {
        self.services.remove(id);
        self.tasks.retain(|_, t| t.service_id != id);
    }

    /// One orchestrator + agent step. Returns the tasks whose state changed.
    fn step(&mut self) -> Vec<(String, String, TaskState)> {
        let now = now_ms();
        let mut changed = Vec::new();
        let node = FakeBackend::node();
        // Runnable tasks of each service on the node, for `max_replicas_per_node`.
        let mut on_node: BTreeMap<Id, u64> = BTreeMap::new();
        for t in self.tasks.values() {
            if t.node_id.is_some() && t.is_runnable() {
                *on_node.entry(t.service_id.clone()).or_default() += 1;
            }
        }
        // Agent: advance runnable tasks one state per step; the scheduler assigns pending ones.
        for t in self.tasks.values_mut() {
            if t.desired != TaskState::Running || t.status.state.is_terminal() {
                continue;
            }
            let next = match t.status.state {
                TaskState::New => TaskState::Pending,
                TaskState::Pending => {
                    let Some(svc) = self.services.get(&t.service_id) else {
                        continue;
                    };
                    let count = on_node.entry(t.service_id.clone()).or_default();
                    match unschedulable(&svc.spec, &node, *count) {
                        Some(err) => {
                            t.status.err = Some(err);
                            continue;
                        }
                        None => {
                            *count += 1;
                            t.status.err = None;
                            TaskState::Assigned
                        }
                    }
                }
                TaskState::Assigned => TaskState::Preparing,
                TaskState::Preparing => TaskState::Starting,
                TaskState::Starting if t.spec.image.contains("fail") => TaskState::Failed,
                TaskState::Starting => TaskState::Running,
                _ => continue,
            };
            t.status.state = next;
            t.status.timestamp = now;
            t.status.message = next.as_str().into();
            if t.node_id.is_none() && next >= TaskState::Assigned {
                t.node_id = Some(NODE_ID.into());
            }
            if next == TaskState::Failed {
                t.status.err = Some("task: non-zero exit (1)".into());
                t.status.exit_code = Some(1);
            }
            changed.push((t.id.clone(), t.service_name.clone(), next));
        }
        // Updater: a failed task of an update triggers the service's failure action.
        let failed: Vec<(Id, Id)> = self
            .tasks
            .values()
            .filter(|t| t.status.state == TaskState::Failed && t.status.timestamp == now)
            .map(|t| (t.id.clone(), t.service_id.clone()))
            .collect();
        for (task_id, service_id) in failed {
            let Some(svc) = self.services.get(&service_id) else {
                continue;
            };
            let updating = svc
                .update_status
                .as_ref()
                .is_some_and(|u| u.state == UpdateState::Updating);
            if !updating {
                continue;
            }
            match svc.spec.update.failure_action {
                FailureAction::Continue => {}
                FailureAction::Pause => {
                    let svc = self.services.get_mut(&service_id).expect("present");
                    svc.update_status = Some(UpdateStatus {
                        state: UpdateState::Paused,
                        started_at: now,
                        completed_at: None,
                        message: format!("update paused due to failure of task {task_id}"),
                    });
                }
                FailureAction::Rollback => {
                    if let Some(prev) = svc.previous_spec.clone() {
                        self.replace_spec(&service_id, prev);
                        let svc = self.services.get_mut(&service_id).expect("present");
                        svc.update_status = Some(UpdateStatus {
                            state: UpdateState::RollbackCompleted,
                            started_at: now,
                            completed_at: Some(now),
                            message: format!("update rolled back due to failure of task {task_id}"),
                        });
                    }
                }
            }
        }
        // Orchestrator: one runnable task of the current version per slot.
        let services: Vec<Service> = self.services.values().cloned().collect();
        for svc in services {
            let fits = svc.spec.placement.matches(&node);
            // (Jobs are run like their services: the fake's tasks never finish.)
            let slots: Vec<u64> = match svc.spec.mode.replicas() {
                Some(replicas) => (1..=replicas).collect(),
                None if fits => vec![0],
                None => vec![],
            };
            for t in self.tasks.values_mut() {
                let out_of_range = svc.spec.mode.replicas().is_some_and(|r| t.slot > r);
                let stale = t.spec_version != svc.version;
                let misplaced = t.node_id.is_some() && !fits;
                if t.service_id == svc.id
                    && t.desired == TaskState::Running
                    && (out_of_range || stale || misplaced)
                {
                    t.desired = TaskState::Shutdown;
                    if !t.status.state.is_terminal() {
                        t.status.state = TaskState::Shutdown;
                        t.status.timestamp = now;
                        changed.push((t.id.clone(), t.service_name.clone(), TaskState::Shutdown));
                    }
                }
            }
            for slot in slots {
                let live = self.tasks.values().any(|t| {
                    t.service_id == svc.id
                        && t.slot == slot
                        && t.desired == TaskState::Running
                        && !t.status.state.is_terminal()
                });
                if live {
                    continue;
                }
                // Failed tasks stay in history with desired SHUTDOWN.
                let mut attempts = 0;
                for t in self.tasks.values_mut() {
                    if t.service_id == svc.id && t.slot == slot && t.desired == TaskState::Running {
                        t.desired = TaskState::Shutdown;
                        attempts = t.restart_attempt + 1;
                    }
                }
                let id = self.id("task");
                let task = Task {
                    id: id.clone(),
                    service_id: svc.id.clone(),
                    service_name: svc.spec.name.clone(),
                    slot,
                    node_id: if slot == 0 {
                        Some(NODE_ID.into())
                    } else {
                        None
                    },
                    spec_version: svc.version,
                    spec: svc.spec.task.clone(),
                    image_digest: None,
                    ports: svc.spec.ports.clone(),
                    desired: TaskState::Running,
                    status: TaskStatus {
                        timestamp: now,
                        ..Default::default()
                    },
                    created_at: now,
                    not_before: None,
                    restart_attempt: attempts,
                    started_at: None,
                    networks: vec![],
                };
                changed.push((id.clone(), svc.spec.name.clone(), TaskState::New));
                self.tasks.insert(id, task);
                // History limit per slot.
                let mut old: Vec<(u64, Id)> = self
                    .tasks
                    .values()
                    .filter(|t| t.service_id == svc.id && t.slot == slot)
                    .map(|t| (t.created_at, t.id.clone()))
                    .collect();
                if old.len() > HISTORY {
                    old.sort();
                    let excess = old.len() - HISTORY;
                    for (_, id) in old.into_iter().take(excess) {
                        self.tasks.remove(&id);
                    }
                }
            }
        }
        // An update whose tasks all run the new version is complete.
        for svc in self.services.values_mut() {
            let updating = svc
                .update_status
                .as_ref()
                .is_some_and(|u| u.state == UpdateState::Updating);
            let done = self
                .tasks
                .values()
                .filter(|t| t.service_id == svc.id && t.is_runnable())
                .all(|t| t.spec_version == svc.version && t.status.state == TaskState::Running);
            if updating && done {
                svc.update_status = Some(UpdateStatus {
                    state: UpdateState::Completed,
                    started_at: svc.updated_at,
                    completed_at: Some(now),
                    message: "update completed".into(),
                });
            }
        }
        changed
    }
}

/// Why a task of `spec` cannot go to `node`, which already runs `on_node` runnable tasks of the
/// service, in the real scheduler's words; `None` if it can.
fn unschedulable(spec: &ServiceSpec, node: &Node, on_node: u64) -> Option<String> {
    if !spec.placement.matches(node) {
        return Some("no suitable node (scheduling constraints not satisfied on 1 node)".into());
    }
    let global = matches!(spec.mode, ServiceMode::Global);
    if let Some(max) = spec.placement.max_replicas_per_node
        && !global
        && on_node >= max
    {
        return Some("no suitable node (max replicas per node limit exceed)".into());
    }
    None
}

/// The in-memory backend. Share it as `Arc<FakeBackend>`.
#[derive(Default)]
pub struct FakeBackend {
    state: Mutex<State>,
    events: Mutex<Option<Events>>,
}

impl FakeBackend {
    pub fn new() -> Arc<FakeBackend> {
        Arc::new(FakeBackend::default())
    }

    /// Run the task simulation on the current tokio runtime until `self` is dropped elsewhere
    /// and only the simulation holds it.
    pub fn start(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(me) = me.upgrade() else { break };
                let changed = me.state.lock().expect("fake state lock").step();
                let events = me.events.lock().expect("events lock").clone();
                if let Some(ev) = events {
                    for (task, service, state) in changed {
                        let _ = ev.task_state_changed(&task, &service, state).await;
                    }
                }
            }
        });
    }

    /// Emit `TaskStateChanged` through `events` from now on.
    pub fn set_events(&self, events: Events) {
        *self.events.lock().expect("events lock") = Some(events);
    }

    /// What the next `Reload` answers: a report, or `ReloadFailed` with the given text.
    pub fn set_reload_result(&self, result: Result<ChangeReport, String>) {
        self.state.lock().expect("fake state lock").reload = Some(result);
    }

    /// A copy of a service's spec, for assertions.
    pub fn spec_of(&self, name: &str) -> Option<ServiceSpec> {
        let st = self.state.lock().expect("fake state lock");
        st.services
            .values()
            .find(|s| s.spec.name == name)
            .map(|s| s.spec.clone())
    }

    fn node() -> Node {
        Node {
            id: NODE_ID.into(),
            raft_id: 1,
            name: NODE_NAME.into(),
            role: NodeRole::Manager,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            labels: BTreeMap::new(),
            addr: "127.0.0.1:4600".into(),
            last_heartbeat: now_ms(),
            version: env!("CARGO_PKG_VERSION").into(),
            status_message: String::new(),
            resources: Default::default(),
            ingress_addr: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake state lock")
    }
}

impl Backend for FakeBackend {
    async fn info(&self) -> Result<ClusterInfo, ApiError> {
        let st = self.lock();
        Ok(ClusterInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            node_id: NODE_ID.into(),
            node_name: NODE_NAME.into(),
            cluster_id: "fakecluster".into(),
            role: "manager".into(),
            is_leader: true,
            leader_id: NODE_ID.into(),
            managers: 1,
            nodes: 1,
            services: st.services.len() as u64,
            tasks: st.tasks.len() as u64,
            running: st
                .tasks
                .values()
                .filter(|t| t.status.state == TaskState::Running)
                .count() as u64,
            stacks: st.stacks.len() as u64,
            now: now_ms(),
            status: "ready".into(),
        })
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRow>, ApiError> {
        Ok(vec![NodeRow::from_node(&Self::node(), "leader", true)])
    }

    async fn inspect_node(&self, node: &str) -> Result<NodeRow, ApiError> {
        if node == "self" || node == NODE_NAME || (!node.is_empty() && NODE_ID.starts_with(node)) {
            Ok(NodeRow::from_node(&Self::node(), "leader", true))
        } else {
            Err(ApiError::NotFound(format!("node {node} not found")))
        }
    }

    async fn list_services(&self) -> Result<Vec<ServiceRow>, ApiError> {
        let st = self.lock();
        let mut rows: Vec<ServiceRow> = st
            .services
            .values()
            .map(|s| {
                let (r, d) = st.counts(s);
                ServiceRow::from_service(s, r, d)
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }

    async fn inspect_service(&self, service: &str) -> Result<ServiceDetail, ApiError> {
        let st = self.lock();
        let id = st.find(service)?;
        let svc = st.services[&id].clone();
        let (running, desired) = st.counts(&svc);
        Ok(ServiceDetail {
            service: svc,
            running,
            desired,
            completed: 0,
        })
    }

    async fn create_service(&self, spec: ServiceSpec) -> Result<Id, ApiError> {
        let name = spec.name.clone();
        let id = self.lock().create(spec)?;
        let events = self.events.lock().expect("events lock").clone();
        if let Some(ev) = events {
            let _ = ev.service_changed(&name).await;
        }
        Ok(id)
    }

    async fn update_service(&self, service: &str, patch: SpecPatch) -> Result<u64, ApiError> {
        let mut st = self.lock();
        let id = st.find(service)?;
        let mut spec = st.services[&id].spec.clone();
        let old_mode = spec.mode;
        patch.apply(&mut spec)?;
        if std::mem::discriminant(&old_mode) != std::mem::discriminant(&spec.mode) {
            return Err(ApiError::InvalidSpec(
                "service mode change is not allowed".into(),
            ));
        }
        Ok(st.replace_spec(&id, spec))
    }

    async fn scale_service(&self, service: &str, replicas: u64) -> Result<(), ApiError> {
        spec::placement::check_replicas(replicas).map_err(ApiError::InvalidSpec)?;
        let mut st = self.lock();
        let id = st.find(service)?;
        let mut spec = st.services[&id].spec.clone();
        match spec.mode {
            ServiceMode::Replicated { .. } => spec.mode = ServiceMode::Replicated { replicas },
            _ => {
                return Err(ApiError::InvalidSpec(format!(
                    "scale can only be used with replicated services: {} is {}",
                    spec.name,
                    spec.mode.name()
                )));
            }
        }
        st.replace_spec(&id, spec);
        Ok(())
    }

    async fn rollback_service(&self, service: &str) -> Result<u64, ApiError> {
        let mut st = self.lock();
        let id = st.find(service)?;
        let Some(prev) = st.services[&id].previous_spec.clone() else {
            return Err(ApiError::Failed(format!(
                "service {service} has no previous spec to roll back to"
            )));
        };
        Ok(st.replace_spec(&id, prev))
    }

    async fn remove_service(&self, service: &str) -> Result<(), ApiError> {
        let mut st = self.lock();
        let id = st.find(service)?;
        st.remove(&id);
        Ok(())
    }

    async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<TaskRow>, ApiError> {
        let st = self.lock();
        let service_id = match &filter.service {
            Some(s) => Some(st.find(s)?),
            None => None,
        };
        let stack_services = match &filter.stack {
            Some(name) => Some(
                st.stacks
                    .get(name)
                    .cloned()
                    .ok_or_else(|| ApiError::NotFound(format!("stack {name} not found")))?,
            ),
            None => None,
        };
        if let Some(n) = &filter.node
            && n != NODE_NAME
            && !NODE_ID.starts_with(n.as_str())
        {
            return Err(ApiError::NotFound(format!("node {n} not found")));
        }
        Ok(st
            .tasks
            .values()
            .filter(|t| service_id.as_ref().is_none_or(|id| &t.service_id == id))
            .filter(|t| {
                stack_services
                    .as_ref()
                    .is_none_or(|names| names.contains(&t.service_name))
            })
            .filter(|t| filter.matches_desired(t.desired))
            .map(|t| {
                let node = if t.node_id.is_some() { NODE_NAME } else { "" };
                TaskRow::from_task(t, node)
            })
            .collect())
    }

    async fn deploy_stack(&self, name: &str, text: &str) -> Result<ChangeReport, ApiError> {
        let path = format!("{name}.toml");
        let stack = spec::parse_stack_named(Path::new(&path), name, text)
            .map_err(|e| ApiError::InvalidSpec(e.to_string()))?;
        let mut st = self.lock();
        let mut report = ChangeReport::default();
        let wanted: Vec<String> = stack.services.iter().map(|s| s.name.clone()).collect();
        let old = st.stacks.get(name).cloned().unwrap_or_default();
        for gone in old.iter().filter(|n| !wanted.contains(n)) {
            if let Ok(id) = st.find(gone) {
                st.remove(&id);
                report.removed.push(gone.clone());
            }
        }
        for spec in stack.services {
            let n = spec.name.clone();
            match st.find(&n) {
                Ok(id) => {
                    if st.services[&id].spec == spec {
                        report.unchanged.push(n);
                    } else {
                        st.replace_spec(&id, spec);
                        report.changed.push(n);
                    }
                }
                Err(_) => {
                    st.create(spec)?;
                    report.added.push(n);
                }
            }
        }
        st.stacks.insert(name.to_string(), wanted);
        Ok(report)
    }

    async fn list_stacks(&self) -> Result<Vec<StackRow>, ApiError> {
        let st = self.lock();
        Ok(st
            .stacks
            .iter()
            .map(|(name, services)| StackRow {
                name: name.clone(),
                services: services.len() as u64,
                source: "cli".into(),
                path: String::new(),
                updated_at: 0,
                status: "deployed".into(),
            })
            .collect())
    }

    async fn remove_stack(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let mut st = self.lock();
        let services = st
            .stacks
            .remove(name)
            .ok_or_else(|| ApiError::NotFound(format!("stack {name} not found")))?;
        for s in &services {
            if let Ok(id) = st.find(s) {
                st.remove(&id);
            }
        }
        Ok(services)
    }

    /// The fake node has no containerd: no images, nothing to prune.
    async fn list_images(&self) -> Result<Vec<ImageRow>, ApiError> {
        Ok(Vec::new())
    }

    async fn prune_images(&self, _all: bool) -> Result<PruneReport, ApiError> {
        Ok(PruneReport::default())
    }

    async fn reload(&self) -> Result<ChangeReport, ApiError> {
        let result = match self.lock().reload.clone() {
            None => Ok(ChangeReport::default()),
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => Err(ApiError::ReloadFailed(e)),
        };
        // As the daemon: the backend announces every reload once, whatever its outcome.
        let events = self.events.lock().expect("events lock").clone();
        if let Some(ev) = events {
            let message = result.as_ref().err().map(ApiError::message);
            let _ = ev
                .reload_finished(
                    result
                        .as_ref()
                        .map_err(|_| message.as_deref().unwrap_or("")),
                )
                .await;
        }
        result
    }

    async fn open_logs(&self, service: &str, options: LogOptions) -> Result<OwnedFd, ApiError> {
        let (lines, name) = {
            let st = self.lock();
            let id = st.find(service)?;
            let name = st.services[&id].spec.name.clone();
            let mut lines = Vec::new();
            for t in st.tasks.values().filter(|t| t.service_id == id) {
                for i in 1..=3 {
                    let prefix = if options.timestamps {
                        "2026-01-01T00:00:00.000000000Z "
                    } else {
                        ""
                    };
                    lines.push(format!(
                        "{prefix}{}.{}@{NODE_NAME}    | line {i} of {}\n",
                        t.name(),
                        model::short_id(&t.id),
                        t.name()
                    ));
                }
            }
            (lines, name)
        };
        let skip = match options.tail {
            Some(n) => lines.len().saturating_sub(n as usize),
            None => 0,
        };
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| ApiError::Failed(format!("failed to create a log socket: {e}")))?;
        let follow = options.follow;
        std::thread::spawn(move || {
            let mut ours = ours;
            for l in &lines[skip..] {
                if ours.write_all(l.as_bytes()).is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            for n in 1u64.. {
                std::thread::sleep(Duration::from_millis(200));
                if ours
                    .write_all(format!("{name}.1@{NODE_NAME}    | followed {n}\n").as_bytes())
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(OwnedFd::from(theirs))
    }
}
