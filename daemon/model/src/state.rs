//! The replicated cluster state and the commands that change it.
//!
//! `ClusterState::apply` is the raft state machine's transition function: deterministic, no IO.
//! A command either applies whole or not at all (a stack deploy is one command).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ClusterSettings, Id, Millis, ServiceSpec, StackSpec, Task, TaskState, TaskStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    Manager,
    Worker,
}

impl NodeRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeRole::Manager => "manager",
            NodeRole::Worker => "worker",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

impl Availability {
    pub fn as_str(&self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Unknown,
    Ready,
    Down,
}

impl NodeStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeStatus::Unknown => "unknown",
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: Id,
    /// Raft node id (managers) or a number unique in the cluster.
    pub raft_id: u64,
    pub name: String,
    pub role: NodeRole,
    pub availability: Availability,
    pub status: NodeStatus,
    pub labels: BTreeMap<String, String>,
    /// host:port other nodes use to reach this one.
    pub addr: String,
    pub last_heartbeat: Millis,
    #[serde(default)]
    pub version: String,
}

impl Node {
    /// The node can receive new tasks.
    pub fn is_eligible(&self) -> bool {
        self.availability == Availability::Active && self.status == NodeStatus::Ready
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    pub fn as_str(&self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_at: Millis,
    #[serde(default)]
    pub completed_at: Option<Millis>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: Id,
    pub spec: ServiceSpec,
    /// Bumped on every spec change; tasks record the version they were made from.
    pub version: u64,
    /// The spec before the last update, for `service rollback`.
    #[serde(default)]
    pub previous_spec: Option<ServiceSpec>,
    /// The image digest that went with `previous_spec`, so a rollback runs the old image.
    #[serde(default)]
    pub previous_image_digest: Option<String>,
    /// The digest the image resolved to, so that every task runs the same image.
    #[serde(default)]
    pub image_digest: Option<String>,
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackSource {
    /// Deployed with `shoal stack deploy`; a reload never touches it.
    Cli,
    /// Owned by a file in the stacks directory; `hash` is the sha256 of the file's bytes.
    File { path: String, hash: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stack {
    pub name: String,
    pub source: StackSource,
    pub spec: StackSpec,
    pub updated_at: Millis,
}

/// The whole replicated state. Keys are ids (services and tasks) or names (stacks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[derive(Default)]
pub struct ClusterState {
    pub cluster_id: Id,
    pub settings: ClusterSettings,
    pub nodes: BTreeMap<Id, Node>,
    pub services: BTreeMap<Id, Service>,
    pub tasks: BTreeMap<Id, Task>,
    pub stacks: BTreeMap<String, Stack>,
}

/// A change to the cluster state: one raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Set cluster id and settings when the cluster is formed.
    Bootstrap {
        cluster_id: Id,
        settings: ClusterSettings,
    },
    UpsertNode(Node),
    RemoveNode {
        id: Id,
    },
    /// Create a service; fails if the name is taken.
    CreateService(Service),
    /// Replace a service's spec; `version` and `previous_spec` are set by apply.
    UpdateService {
        id: Id,
        spec: ServiceSpec,
        image_digest: Option<String>,
        now: Millis,
    },
    SetUpdateStatus {
        service_id: Id,
        status: Option<UpdateStatus>,
    },
    /// Remove a service; its tasks get desired REMOVE and are deleted by the reaper.
    RemoveService {
        id: Id,
    },
    /// Create or replace tasks (orchestrator, scheduler, restart, updater). Keeps the observed
    /// status of an existing task: managers never write it.
    PutTasks(Vec<Task>),
    /// The scheduler's decision: set the node of pending tasks and mark them ASSIGNED. Managers
    /// write observed states up to ASSIGNED; from ACCEPTED on only the node writes them.
    Assign {
        assignments: Vec<(Id, Id)>,
        now: Millis,
    },
    /// Set the desired state of tasks (only forward, except READY -> RUNNING release).
    SetDesired {
        task_ids: Vec<Id>,
        desired: TaskState,
    },
    /// Observed state reported by the node running the task. Backward transitions are ignored.
    UpdateTaskStatus {
        task_id: Id,
        node_id: Id,
        status: TaskStatus,
    },
    /// Delete finished tasks beyond the history limit, or of removed services.
    DeleteTasks(Vec<Id>),
    /// Create, update or remove a stack together with its services, atomically.
    ApplyStack(StackChange),
    /// Several commands applied atomically.
    Batch(Vec<Command>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackChange {
    pub name: String,
    /// `None` removes the stack and all its services.
    pub stack: Option<Stack>,
    /// Services to create (ids assigned by the caller).
    pub create: Vec<Service>,
    /// Services to update: (id, new spec, resolved image digest).
    pub update: Vec<(Id, ServiceSpec, Option<String>)>,
    /// Services to remove.
    pub remove: Vec<Id>,
    pub now: Millis,
}

/// What applying a command answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Applied {
    /// Number of objects changed; 0 for a no-op.
    pub changed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("service {0} already exists")]
    ServiceExists(String),
    #[error("service {0} not found")]
    ServiceNotFound(String),
    #[error("stack {0} not found")]
    StackNotFound(String),
    #[error("task {0} not found")]
    TaskNotFound(String),
    #[error("node {0} not found")]
    NodeNotFound(String),
    #[error("port {port}/{protocol} is already published by service {service}")]
    PortInUse {
        port: u16,
        protocol: String,
        service: String,
    },
}

impl ClusterState {
    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        self.services.values().find(|s| s.spec.name == name)
    }

    /// Find a service by full name, id, or unique id prefix.
    pub fn find_service(&self, key: &str) -> Option<&Service> {
        if let Some(s) = self.services.get(key) {
            return Some(s);
        }
        if let Some(s) = self.service_by_name(key) {
            return Some(s);
        }
        let mut it = self.services.values().filter(|s| s.id.starts_with(key));
        match (it.next(), it.next()) {
            (Some(s), None) if !key.is_empty() => Some(s),
            _ => None,
        }
    }

    pub fn tasks_of<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.service_id == service_id)
    }

    /// Apply one command. On error the state is unchanged.
    pub fn apply(&mut self, cmd: &Command) -> Result<Applied, ApplyError> {
        // Compound commands apply to a scratch copy and are checked as a whole: a published port
        // may move between services within one batch (a reload that moves it from one stack to
        // another), so ports are checked against the final state only.
        match cmd {
            Command::Batch(_) | Command::ApplyStack(_) => {
                let mut next = self.clone();
                let applied = next.apply_inner(cmd, false)?;
                next.check_all_ports()?;
                *self = next;
                Ok(applied)
            }
            _ => self.apply_inner(cmd, true),
        }
    }

    /// `ports`: check published ports per command (false inside a compound command, which is
    /// checked as a whole afterwards).
    fn apply_inner(&mut self, cmd: &Command, ports: bool) -> Result<Applied, ApplyError> {
        let one = Applied { changed: 1 };
        match cmd {
            Command::Bootstrap {
                cluster_id,
                settings,
            } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = cluster_id.clone();
                    self.settings = settings.clone();
                    Ok(one)
                } else {
                    Ok(Applied::default())
                }
            }
            Command::UpsertNode(node) => {
                self.nodes.insert(node.id.clone(), node.clone());
                Ok(one)
            }
            Command::RemoveNode { id } => {
                self.nodes
                    .remove(id)
                    .ok_or_else(|| ApplyError::NodeNotFound(id.clone()))?;
                Ok(one)
            }
            Command::CreateService(svc) => {
                if self.service_by_name(&svc.spec.name).is_some() {
                    return Err(ApplyError::ServiceExists(svc.spec.name.clone()));
                }
                if ports {
                    self.check_ports(&svc.spec, None)?;
                }
                self.services.insert(svc.id.clone(), svc.clone());
                Ok(one)
            }
            Command::UpdateService {
                id,
                spec,
                image_digest,
                now,
            } => {
                if ports {
                    self.check_ports(spec, Some(id))?;
                }
                let svc = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::ServiceNotFound(id.clone()))?;
                if svc.spec == *spec
                    && (image_digest.is_none() || svc.image_digest == *image_digest)
                {
                    return Ok(Applied::default());
                }
                let task_changed = svc.spec.task != spec.task
                    || svc.spec.ports != spec.ports
                    || (image_digest.is_some() && svc.image_digest != *image_digest);
                svc.previous_spec = Some(std::mem::replace(&mut svc.spec, spec.clone()));
                svc.previous_image_digest = svc.image_digest.clone();
                if image_digest.is_some() {
                    svc.image_digest = image_digest.clone();
                }
                if task_changed {
                    svc.version += 1;
                }
                svc.updated_at = *now;
                Ok(one)
            }
            Command::SetUpdateStatus { service_id, status } => {
                let svc = self
                    .services
                    .get_mut(service_id)
                    .ok_or_else(|| ApplyError::ServiceNotFound(service_id.clone()))?;
                svc.update_status = status.clone();
                Ok(one)
            }
            Command::RemoveService { id } => {
                self.services
                    .remove(id)
                    .ok_or_else(|| ApplyError::ServiceNotFound(id.clone()))?;
                for t in self.tasks.values_mut().filter(|t| t.service_id == *id) {
                    if t.desired < TaskState::Remove {
                        t.desired = TaskState::Remove;
                    }
                }
                Ok(one)
            }
            Command::PutTasks(tasks) => {
                for t in tasks {
                    match self.tasks.get_mut(&t.id) {
                        Some(existing) => {
                            let status = existing.status.clone();
                            let desired = existing.desired.max(t.desired);
                            *existing = t.clone();
                            existing.status = status;
                            existing.desired = desired;
                        }
                        None => {
                            self.tasks.insert(t.id.clone(), t.clone());
                        }
                    }
                }
                Ok(Applied {
                    changed: tasks.len() as u64,
                })
            }
            Command::Assign { assignments, now } => {
                let mut changed = 0;
                for (task_id, node_id) in assignments {
                    if let Some(t) = self.tasks.get_mut(task_id)
                        && t.node_id.is_none()
                        && t.status.state < TaskState::Assigned
                    {
                        t.node_id = Some(node_id.clone());
                        t.status = TaskStatus {
                            state: TaskState::Assigned,
                            timestamp: *now,
                            message: "scheduled".into(),
                            ..Default::default()
                        };
                        changed += 1;
                    }
                }
                Ok(Applied { changed })
            }
            Command::SetDesired { task_ids, desired } => {
                let mut changed = 0;
                for id in task_ids {
                    if let Some(t) = self.tasks.get_mut(id) {
                        let release =
                            t.desired == TaskState::Ready && *desired == TaskState::Running;
                        if *desired > t.desired || release {
                            t.desired = *desired;
                            changed += 1;
                        }
                    }
                }
                Ok(Applied { changed })
            }
            Command::UpdateTaskStatus {
                task_id,
                node_id,
                status,
            } => {
                let Some(t) = self.tasks.get_mut(task_id) else {
                    // The task was deleted meanwhile: a late report is harmless.
                    return Ok(Applied::default());
                };
                if t.node_id.as_deref() != Some(node_id.as_str()) {
                    return Ok(Applied::default());
                }
                if t.status.state.can_advance_to(status.state) || t.status.state == status.state {
                    if t.status == *status {
                        return Ok(Applied::default());
                    }
                    if status.state == TaskState::Running && t.started_at.is_none() {
                        t.started_at = Some(status.timestamp);
                    }
                    t.status = status.clone();
                    Ok(one)
                } else {
                    Ok(Applied::default())
                }
            }
            Command::DeleteTasks(ids) => {
                let mut changed = 0;
                for id in ids {
                    if self.tasks.remove(id).is_some() {
                        changed += 1;
                    }
                }
                Ok(Applied { changed })
            }
            Command::ApplyStack(change) => self.apply_stack(change),
            Command::Batch(cmds) => {
                let mut changed = 0;
                for c in cmds {
                    changed += self.apply_inner(c, false)?.changed;
                }
                Ok(Applied { changed })
            }
        }
    }

    fn apply_stack(&mut self, change: &StackChange) -> Result<Applied, ApplyError> {
        let mut changed = 0;
        for id in &change.remove {
            changed += self
                .apply_inner(&Command::RemoveService { id: id.clone() }, false)?
                .changed;
        }
        for (id, spec, digest) in &change.update {
            changed += self
                .apply_inner(
                    &Command::UpdateService {
                        id: id.clone(),
                        spec: spec.clone(),
                        image_digest: digest.clone(),
                        now: change.now,
                    },
                    false,
                )?
                .changed;
        }
        for svc in &change.create {
            changed += self
                .apply_inner(&Command::CreateService(svc.clone()), false)?
                .changed;
        }
        match &change.stack {
            Some(stack) => {
                if self.stacks.get(&change.name) != Some(stack) {
                    self.stacks.insert(change.name.clone(), stack.clone());
                    changed += 1;
                }
            }
            None => {
                if self.stacks.remove(&change.name).is_none() && changed == 0 {
                    return Err(ApplyError::StackNotFound(change.name.clone()));
                }
                changed += 1;
            }
        }
        Ok(Applied { changed })
    }

    /// A published port may be used by one service only.
    /// No two services publish the same port (checked after a compound command).
    fn check_all_ports(&self) -> Result<(), ApplyError> {
        let mut seen: BTreeMap<(u16, &str), &str> = BTreeMap::new();
        for svc in self.services.values() {
            for p in &svc.spec.ports {
                if let Some(other) = seen.insert((p.published, p.protocol.as_str()), &svc.spec.name)
                    && other != svc.spec.name
                {
                    return Err(ApplyError::PortInUse {
                        port: p.published,
                        protocol: p.protocol.as_str().into(),
                        service: other.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    fn check_ports(&self, spec: &ServiceSpec, except: Option<&Id>) -> Result<(), ApplyError> {
        for p in &spec.ports {
            for other in self.services.values() {
                if Some(&other.id) == except || other.spec.name == spec.name {
                    continue;
                }
                if other
                    .spec
                    .ports
                    .iter()
                    .any(|q| q.published == p.published && q.protocol == p.protocol)
                {
                    return Err(ApplyError::PortInUse {
                        port: p.published,
                        protocol: p.protocol.as_str().into(),
                        service: other.spec.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    pub(super) fn svc(id: &str, name: &str, port: Option<u16>) -> Service {
        let mut spec = ServiceSpec {
            name: name.into(),
            ..Default::default()
        };
        spec.task.image = "busybox".into();
        if let Some(p) = port {
            spec.ports.push(PortSpec {
                published: p,
                target: 80,
                protocol: Protocol::Tcp,
                mode: PublishMode::Ingress,
            });
        }
        Service {
            id: id.into(),
            spec,
            version: 1,
            previous_spec: None,
            previous_image_digest: None,
            image_digest: None,
            update_status: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn batch_is_atomic() {
        let mut st = ClusterState::default();
        st.apply(&Command::CreateService(svc("a", "web", Some(8080))))
            .unwrap();
        let before = st.clone();
        let err = st
            .apply(&Command::Batch(vec![
                Command::CreateService(svc("b", "api", None)),
                Command::CreateService(svc("c", "other", Some(8080))),
            ]))
            .unwrap_err();
        assert!(matches!(err, ApplyError::PortInUse { port: 8080, .. }));
        assert_eq!(st, before, "a failed batch must leave the state untouched");
    }

    #[test]
    fn status_never_moves_backwards() {
        let mut st = ClusterState::default();
        let task = Task {
            id: "t1".into(),
            service_id: "a".into(),
            service_name: "web".into(),
            slot: 1,
            node_id: Some("n1".into()),
            spec_version: 1,
            spec: TaskSpec::default(),
            image_digest: None,
            ports: vec![],
            desired: TaskState::Running,
            status: TaskStatus::default(),
            created_at: 0,
            not_before: None,
            restart_attempt: 0,
            started_at: None,
        };
        st.apply(&Command::PutTasks(vec![task])).unwrap();
        let report = |state| Command::UpdateTaskStatus {
            task_id: "t1".into(),
            node_id: "n1".into(),
            status: TaskStatus {
                state,
                ..Default::default()
            },
        };
        st.apply(&report(TaskState::Running)).unwrap();
        assert_eq!(st.apply(&report(TaskState::Starting)).unwrap().changed, 0);
        assert_eq!(st.tasks["t1"].status.state, TaskState::Running);
        // A report from another node is ignored: one writer per field.
        let other = Command::UpdateTaskStatus {
            task_id: "t1".into(),
            node_id: "n2".into(),
            status: TaskStatus {
                state: TaskState::Failed,
                ..Default::default()
            },
        };
        assert_eq!(st.apply(&other).unwrap().changed, 0);
    }

    #[test]
    fn update_bumps_version_only_for_task_changes() {
        let mut st = ClusterState::default();
        st.apply(&Command::CreateService(svc("a", "web", None)))
            .unwrap();
        let mut spec = st.services["a"].spec.clone();
        spec.mode = ServiceMode::Replicated { replicas: 5 };
        st.apply(&Command::UpdateService {
            id: "a".into(),
            spec: spec.clone(),
            image_digest: None,
            now: 1,
        })
        .unwrap();
        assert_eq!(st.services["a"].version, 1);
        spec.task.image = "busybox:2".into();
        st.apply(&Command::UpdateService {
            id: "a".into(),
            spec,
            image_digest: None,
            now: 2,
        })
        .unwrap();
        assert_eq!(st.services["a"].version, 2);
        assert_eq!(
            st.services["a"].previous_spec.as_ref().unwrap().task.image,
            "busybox",
            "previous spec kept for rollback"
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RestartPolicy {
            delay: 100,
            max_delay: 1000,
            ..Default::default()
        };
        assert_eq!(p.backoff(0), 0);
        assert_eq!(p.backoff(1), 100);
        assert_eq!(p.backoff(2), 200);
        assert_eq!(p.backoff(4), 800);
        assert_eq!(p.backoff(5), 1000);
        assert_eq!(p.backoff(60), 1000);
    }

    #[test]
    fn persisted_types_round_trip() {
        let mut st = ClusterState::default();
        st.apply(&Command::CreateService(svc("a", "web", Some(80))))
            .unwrap();
        let json = serde_json::to_string(&st).unwrap();
        let back: ClusterState = serde_json::from_str(&json).unwrap();
        assert_eq!(st, back);
        // Additive change: an old snapshot without newer fields still loads.
        let old: ClusterState = serde_json::from_str(r#"{"cluster_id":"x"}"#).unwrap();
        assert_eq!(old.cluster_id, "x");
    }
}

#[cfg(test)]
mod port_moves {
    use super::*;

    fn svc(id: &str, port: u16) -> Service {
        super::tests::svc(id, id, Some(port))
    }

    #[test]
    fn a_port_may_move_between_services_within_one_batch() {
        let mut st = ClusterState::default();
        st.apply(&Command::CreateService(svc("a", 80))).unwrap();
        // Create b with port 80 first, then remove a: only the final state matters.
        st.apply(&Command::Batch(vec![
            Command::CreateService(svc("b", 80)),
            Command::RemoveService { id: "a".into() },
        ]))
        .unwrap();
        assert!(st.services.contains_key("b") && !st.services.contains_key("a"));
        // But a batch that ends with two owners fails whole.
        let before = st.clone();
        let err = st
            .apply(&Command::Batch(vec![Command::CreateService(svc("c", 80))]))
            .unwrap_err();
        assert!(matches!(err, ApplyError::PortInUse { port: 80, .. }));
        assert_eq!(st, before);
    }
}
