//! The replicated cluster state and the commands that change it.
//!
//! `ClusterState::apply` is the raft state machine's transition function: deterministic, no IO.
//! A command either applies whole or not at all (a stack deploy is one command).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::index::{ServiceTasks, TaskIndex};
use crate::{
    ClusterSettings, Id, Map, Millis, Security, ServiceSpec, SlotKey, StackSpec, Task, TaskState,
    TaskStatus,
};

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
    /// Why the node has its status ("heartbeat failure"), written with the status.
    #[serde(default)]
    pub status_message: String,
    /// CPUs and memory the node has for tasks, as its agent reports them in heartbeats.
    #[serde(default)]
    pub resources: crate::NodeResources,
    /// The node's own address on the ingress network (the routing mesh's path between nodes),
    /// given by the leader once the node is known (`SetIngressAddress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_addr: Option<std::net::Ipv4Addr>,
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
    /// Bumped by every applied change of the spec (unlike `version`, which only moves when the
    /// tasks must change). The updater's commands name the revision they were planned from, so
    /// a rollback planned before a user's update cannot undo that update.
    #[serde(default)]
    pub revision: u64,
    /// The service's virtual IP on each overlay network it attaches to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<crate::network::Attachment>,
}

impl Service {
    /// A new service at version 1, created (and last updated) at `now`, with the image digest
    /// it resolved to, if known.
    pub fn new(id: Id, spec: ServiceSpec, image_digest: Option<String>, now: Millis) -> Service {
        Service {
            id,
            spec,
            version: 1,
            previous_spec: None,
            previous_image_digest: None,
            image_digest,
            update_status: None,
            created_at: now,
            updated_at: now,
            revision: 0,
            vips: vec![],
        }
    }
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
///
/// Its maps are persistent ([`Map`]): cloning the state is O(1) and a change copies only the
/// path to what it changes, so the store publishes a new version per applied entry without
/// copying the rest, and readers keep the version they hold.
///
/// Change it through [`ClusterState::apply`]: it keeps the task indexes (by service and slot, by
/// node, unassigned) consistent. The indexes are derived data: not serialized, rebuilt on
/// deserialization, and ignored by equality. Code that edits `tasks` directly (tests) must call
/// [`ClusterState::rebuild_index`]; queries fall back to a full scan when they see the index is
/// stale (its size differs from the task map's).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, from = "StateData")]
pub struct ClusterState {
    pub cluster_id: Id,
    pub settings: ClusterSettings,
    pub nodes: Map<Id, Node>,
    pub services: Map<Id, Service>,
    pub tasks: Map<Id, Task>,
    pub stacks: Map<String, Stack>,
    /// Overlay networks by id.
    pub networks: Map<Id, crate::Network>,
    /// Secrets by id (see [`crate::secret`]).
    pub secrets: Map<Id, crate::Secret>,
    /// Configs by id.
    pub configs: Map<Id, crate::Secret>,
    /// Addresses in use per network (derived; see [`crate::network`]).
    #[serde(skip)]
    pub(crate) addresses: crate::network::AddressIndex,
    #[serde(skip)]
    pub(crate) index: TaskIndex,
    /// The CA and the join secrets; `None` in a cluster made before clusters had them (the
    /// leader adds them at start).
    pub security: Option<Security>,
}

/// The persisted fields of [`ClusterState`], for deserialization (which then builds the index).
#[derive(Deserialize, Default)]
#[serde(default)]
struct StateData {
    cluster_id: Id,
    settings: ClusterSettings,
    nodes: Map<Id, Node>,
    services: Map<Id, Service>,
    tasks: Map<Id, Task>,
    stacks: Map<String, Stack>,
    networks: Map<Id, crate::Network>,
    secrets: Map<Id, crate::Secret>,
    configs: Map<Id, crate::Secret>,
    security: Option<Security>,
}

impl From<StateData> for ClusterState {
    fn from(d: StateData) -> ClusterState {
        let mut st = ClusterState {
            cluster_id: d.cluster_id,
            settings: d.settings,
            nodes: d.nodes,
            services: d.services,
            tasks: d.tasks,
            stacks: d.stacks,
            networks: d.networks,
            secrets: d.secrets,
            configs: d.configs,
            security: d.security,
            index: TaskIndex::default(),
            addresses: Default::default(),
        };
        st.rebuild_index();
        st
    }
}

impl PartialEq for ClusterState {
    fn eq(&self, other: &ClusterState) -> bool {
        self.cluster_id == other.cluster_id
            && self.settings == other.settings
            && self.nodes == other.nodes
            && self.services == other.services
            && self.tasks == other.tasks
            && self.stacks == other.stacks
            && self.networks == other.networks
            && self.secrets == other.secrets
            && self.configs == other.configs
    }
}

impl Eq for ClusterState {}

/// A change to the cluster state: one raft log entry.
#[allow(clippy::large_enum_variant)] // boxing would change every constructor in other crates
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Set cluster id and settings when the cluster is formed.
    Bootstrap {
        cluster_id: Id,
        settings: ClusterSettings,
    },
    /// Replace a whole node. Kept so that old raft logs still apply; new code uses `AddNode`,
    /// `UpdateNodeSpec` and `UpdateNodeStatus` (one writer per field).
    UpsertNode(Node),
    /// Remove a node. Its unfinished tasks get desired SHUTDOWN and observed ORPHANED (no node
    /// will ever report them again), so their slots get replacements.
    RemoveNode { id: Id },
    /// Register a node (join). A no-op when the id is already known.
    AddNode(Node),
    /// What the API sets on a node: availability, labels (replaced whole), role. `None` keeps
    /// the field. Fails when the node is unknown.
    UpdateNodeSpec {
        id: Id,
        availability: Option<Availability>,
        labels: Option<BTreeMap<String, String>>,
        role: Option<NodeRole>,
    },
    /// What the dispatcher (and the leader's liveness check) sets: status, address, engine
    /// version, status message. `None` keeps the field. Fails when the node is unknown.
    UpdateNodeStatus {
        id: Id,
        status: Option<NodeStatus>,
        addr: Option<String>,
        version: Option<String>,
        message: Option<String>,
        /// The node's CPUs and memory, from its heartbeats.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resources: Option<crate::NodeResources>,
    },
    /// Create a service; fails if the name is taken.
    CreateService(Service),
    /// Replace a service's spec; `version`, `revision` and `previous_spec` are set by apply.
    /// With `if_revision`, refused (precondition) unless the service is still at that revision:
    /// the updater's rollback sets it; a user's change does not.
    UpdateService {
        id: Id,
        spec: ServiceSpec,
        image_digest: Option<String>,
        now: Millis,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_revision: Option<u64>,
    },
    /// The updater's record of an update's progress. With `if_revision`, refused (precondition)
    /// unless the service is still at that revision, so a status planned for an older spec
    /// never lands on a newer one.
    SetUpdateStatus {
        service_id: Id,
        status: Option<UpdateStatus>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_revision: Option<u64>,
    },
    /// Remove a service; its tasks get desired REMOVE and are deleted by the reaper.
    RemoveService { id: Id },
    /// Create or replace tasks (orchestrator, restart, updater). Keeps the observed status of an
    /// existing task: managers never write it. Precondition for a new task (else the whole
    /// command, and the batch around it, is refused): its service exists at the task's
    /// `spec_version`; a replicated slot is within `replicas`; a global task's node exists; and
    /// its slot has no other runnable task of that version. A plan made from an older state
    /// therefore cannot create tasks for a removed or changed service, nor fill a slot twice.
    PutTasks(Vec<Task>),
    /// The scheduler's decision: set the node of pending tasks and mark them ASSIGNED. Managers
    /// write observed states up to ASSIGNED; from ACCEPTED on only the node writes them.
    /// Precondition (else refused whole): every task exists, is runnable, unassigned and not yet
    /// ASSIGNED; its service exists; every node exists, is ready and active, and satisfies the
    /// service's placement constraints.
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
    /// The scheduler found no node for these pending tasks: record why in `status.err` (shown
    /// in the ERROR column of `service ps`), as Swarm's "no suitable node (...)". Applies to
    /// tasks still unassigned and not yet ASSIGNED; others are skipped.
    SetSchedulingError { task_ids: Vec<Id>, err: String },
    /// Create, update or remove a stack together with its services, atomically.
    ApplyStack(StackChange),
    /// Create a network. Refused (precondition) when its name, id or VNI is taken, its VNI is
    /// out of range, or its subnet overlaps another network's.
    CreateNetwork(crate::Network),
    /// Remove a network. Refused (precondition) while a service names it.
    RemoveNetwork { id: Id },
    /// The orchestrator's choice of a service's virtual IPs (one per network it attaches to).
    /// Refused (precondition) when an address is outside its network, reserved or held by
    /// another.
    SetVips {
        service_id: Id,
        vips: Vec<crate::network::Attachment>,
    },
    /// The leader's choice of a node's address on the ingress network. Refused (precondition)
    /// when there is no ingress network, or the address is outside it, its network, broadcast
    /// or gateway address, or another node's.
    SetIngressAddress { node: Id, addr: std::net::Ipv4Addr },
    /// Create a secret or config. Refused (precondition) when its id is taken, its name is
    /// taken (only versions of one stack's secret share a name), or its data is empty or above
    /// the kind's limit.
    CreateSecret {
        kind: crate::SecretKind,
        secret: crate::Secret,
    },
    /// Remove a secret or config. Refused (precondition) while a service or a runnable task
    /// uses it.
    RemoveSecret { kind: crate::SecretKind, id: Id },
    /// Several commands applied atomically.
    Batch(Vec<Command>),
    /// Set the CA and join secrets (bootstrap, token rotation, a new provisioning secret).
    SetSecurity(Security),
    /// Change the cluster-wide settings (`shoal cluster update`).
    SetSettings(ClusterSettings),
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
    /// The stack's networks to create (before its services). Networks it no longer declares
    /// are removed by the reconciler once nothing uses them.
    #[serde(default)]
    pub networks: Vec<crate::Network>,
    /// New versions of the stack's secrets and configs (before its services, which name them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<(crate::SecretKind, crate::Secret)>,
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
    #[error("network {0} already exists")]
    NetworkExists(String),
    #[error("{0} already exists")]
    SecretExists(String),
    #[error("{0} not found")]
    SecretNotFound(String),
    #[error("network {0} not found")]
    NetworkNotFound(String),
    #[error("service {0} not found")]
    ServiceNotFound(String),
    #[error("stack {0} not found")]
    StackNotFound(String),
    #[error("task {0} not found")]
    TaskNotFound(String),
    #[error("node {0} not found")]
    NodeNotFound(String),
    #[error("invalid spec for service {service}: {reason}")]
    InvalidSpec { service: String, reason: String },
    /// A precondition of the command no longer holds: it was planned from an older state. The
    /// leader replans from the current state.
    #[error("stale command: {0}")]
    Precondition(String),
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

    fn index_fresh(&self) -> bool {
        self.index.len() == self.tasks.len()
    }

    /// The tasks of a service, by slot then id. Uses the index: cost proportional to the
    /// service's tasks.
    pub fn tasks_of<'a>(&'a self, service_id: &'a str) -> Box<dyn Iterator<Item = &'a Task> + 'a> {
        if !self.index_fresh() {
            return Box::new(
                self.tasks
                    .values()
                    .filter(move |t| t.service_id == service_id),
            );
        }
        Box::new(
            self.index
                .of_service(service_id)
                .filter_map(|id| self.tasks.get(id))
                .filter(move |t| t.service_id == service_id),
        )
    }

    /// The tasks of one slot of a service.
    pub fn tasks_in_slot<'a>(
        &'a self,
        service_id: &'a str,
        slot: &'a SlotKey,
    ) -> Box<dyn Iterator<Item = &'a Task> + 'a> {
        if !self.index_fresh() {
            return Box::new(
                self.tasks
                    .values()
                    .filter(move |t| t.service_id == service_id && t.slot_key() == *slot),
            );
        }
        Box::new(
            self.index
                .in_slot(service_id, slot)
                .filter_map(|id| self.tasks.get(id)),
        )
    }

    /// The tasks assigned to a node (whatever their state).
    pub fn tasks_on<'a>(&'a self, node_id: &'a str) -> Box<dyn Iterator<Item = &'a Task> + 'a> {
        if !self.index_fresh() {
            return Box::new(
                self.tasks
                    .values()
                    .filter(move |t| t.node_id.as_deref() == Some(node_id)),
            );
        }
        Box::new(
            self.index
                .on_node(node_id)
                .filter_map(|id| self.tasks.get(id)),
        )
    }

    /// Tasks without a node that have not reached ASSIGNED: what the scheduler looks at.
    pub fn unassigned_tasks(&self) -> Box<dyn Iterator<Item = &Task> + '_> {
        let unassigned = |t: &&Task| t.node_id.is_none() && t.status.state < TaskState::Assigned;
        if !self.index_fresh() {
            return Box::new(self.tasks.values().filter(unassigned));
        }
        Box::new(
            self.index
                .unassigned()
                .filter_map(|id| self.tasks.get(id))
                .filter(unassigned),
        )
    }

    /// How many runnable tasks a node has (the scheduler's load measure), from the index.
    pub fn runnable_on(&self, node_id: &str) -> u64 {
        if !self.index_fresh() {
            return self.tasks_on(node_id).filter(|t| t.is_runnable()).count() as u64;
        }
        self.index.runnable_on(node_id)
    }

    /// Tasks that are terminal or have no node (pending ones included): what the reaper looks
    /// at. Uses the index: cost proportional to those tasks, not to all tasks.
    pub fn finished_tasks(&self) -> Box<dyn Iterator<Item = &Task> + '_> {
        let finished = |t: &&Task| t.status.state.is_terminal() || t.node_id.is_none();
        if !self.index_fresh() {
            return Box::new(self.tasks.values().filter(finished));
        }
        Box::new(
            self.index
                .unassigned_or_finished()
                .filter_map(|id| self.tasks.get(id))
                .filter(finished),
        )
    }

    /// Counts over the runnable (and dying) tasks of a service, from the index; `None` when the
    /// index is stale (a test edited `tasks` directly), in which case callers read the tasks.
    pub fn service_tasks(&self, service_id: &str) -> Option<&ServiceTasks> {
        self.index_fresh().then(|| self.index.service(service_id))
    }

    /// Rebuild the task indexes and the address index from `tasks` and `services` (after
    /// deserialization or a direct edit).
    pub fn rebuild_index(&mut self) {
        let mut index = TaskIndex::default();
        for t in self.tasks.values() {
            index.insert(t);
        }
        self.index = index;
        self.rebuild_addresses();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::*;

    pub(crate) fn svc(id: &str, name: &str, port: Option<u16>) -> Service {
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
                host_ip: None,
            });
        }
        Service::new(id.into(), spec, None, 0)
    }

    #[test]
    fn a_port_without_a_published_number_gets_a_free_one_of_the_range_and_keeps_it() {
        let mut st = ClusterState::default();
        st.apply(&Command::CreateService(svc("taken", "taken", Some(30000))))
            .unwrap();
        st.apply(&Command::CreateService(svc("a", "a", Some(0))))
            .unwrap();
        st.apply(&Command::CreateService(svc("b", "b", Some(0))))
            .unwrap();
        let published = |st: &ClusterState, id: &str| st.services[id].spec.ports[0].published;
        assert_eq!((published(&st, "a"), published(&st, "b")), (30001, 30002));
        // An update that still asks for "any port" keeps the one given, and is no change at all.
        let mut spec = st.services["a"].spec.clone();
        spec.ports[0].published = 0;
        let update = Command::UpdateService {
            id: "a".into(),
            spec: spec.clone(),
            image_digest: None,
            now: 1,
            if_revision: None,
        };
        assert_eq!(st.apply(&update).unwrap().changed, 0);
        assert_eq!(published(&st, "a"), 30001);
        // A second automatic port of the same service gets another one; an explicit port
        // already taken by another service is still refused.
        spec.ports.push(PortSpec {
            published: 0,
            target: 81,
            protocol: Protocol::Tcp,
            mode: PublishMode::Ingress,
            host_ip: None,
        });
        st.apply(&Command::UpdateService {
            id: "a".into(),
            spec,
            image_digest: None,
            now: 2,
            if_revision: None,
        })
        .unwrap();
        let ports: Vec<u16> = st.services["a"]
            .spec
            .ports
            .iter()
            .map(|p| p.published)
            .collect();
        assert_eq!(ports, vec![30001, 30003]);
        let r = st.apply(&Command::CreateService(svc("c", "c", Some(30002))));
        assert!(matches!(r, Err(ApplyError::PortInUse { .. })), "{r:?}");
    }

    #[test]
    fn ports_bound_to_different_addresses_share_a_number_only_in_host_mode() {
        let bound = |id: &str, name: &str, ip: &str, mode: PublishMode| {
            let mut s = svc(id, name, Some(8080));
            s.spec.ports[0].host_ip = Some(ip.parse().unwrap());
            s.spec.ports[0].mode = mode;
            Command::CreateService(s)
        };
        let mut st = ClusterState::default();
        st.apply(&bound("a", "a", "10.0.0.1", PublishMode::Host))
            .unwrap();
        st.apply(&bound("b", "b", "10.0.0.2", PublishMode::Host))
            .unwrap();
        for clash in [
            bound("c", "c", "10.0.0.1", PublishMode::Host),
            bound("c", "c", "10.0.0.3", PublishMode::Ingress),
            Command::CreateService(svc("c", "c", Some(8080))),
        ] {
            let err = st.apply(&clash).unwrap_err();
            assert!(
                matches!(err, ApplyError::PortInUse { port: 8080, .. }),
                "{err:?}"
            );
            // Checked the same way inside a batch.
            let err = st.apply(&Command::Batch(vec![clash])).unwrap_err();
            assert!(
                matches!(err, ApplyError::PortInUse { port: 8080, .. }),
                "{err:?}"
            );
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
        st.apply(&Command::CreateService(svc("a", "web", None)))
            .unwrap();
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
            networks: vec![],
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
            if_revision: None,
        })
        .unwrap();
        assert_eq!(st.services["a"].version, 1);
        spec.task.image = "busybox:2".into();
        st.apply(&Command::UpdateService {
            id: "a".into(),
            spec,
            image_digest: None,
            now: 2,
            if_revision: None,
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
    fn every_spec_change_moves_the_revision_and_guards_check_it() {
        let mut st = ClusterState::default();
        st.apply(&Command::CreateService(svc("a", "web", None)))
            .unwrap();
        let mut spec = st.services["a"].spec.clone();
        spec.mode = ServiceMode::Replicated { replicas: 5 };
        let update = |spec: &ServiceSpec, if_revision| Command::UpdateService {
            id: "a".into(),
            spec: spec.clone(),
            image_digest: None,
            now: 1,
            if_revision,
        };
        // A replicas-only change leaves `version` but moves `revision`.
        st.apply(&update(&spec, Some(0))).unwrap();
        assert_eq!(
            (st.services["a"].version, st.services["a"].revision),
            (1, 1)
        );
        spec.mode = ServiceMode::Replicated { replicas: 6 };
        assert!(matches!(
            st.apply(&update(&spec, Some(0))),
            Err(ApplyError::Precondition(_))
        ));
        let status = |if_revision| Command::SetUpdateStatus {
            service_id: "a".into(),
            status: None,
            if_revision,
        };
        assert!(matches!(
            st.apply(&status(Some(0))),
            Err(ApplyError::Precondition(_))
        ));
        st.apply(&status(Some(1))).unwrap();
        // Commands without a guard (the user's) always apply.
        st.apply(&update(&spec, None)).unwrap();
        assert_eq!(st.services["a"].revision, 2);
    }

    #[test]
    fn entries_and_snapshots_written_before_revisions_still_read() {
        let cmd: Command =
            serde_json::from_str(r#"{"set_update_status":{"service_id":"a","status":null}}"#)
                .unwrap();
        assert_eq!(
            cmd,
            Command::SetUpdateStatus {
                service_id: "a".into(),
                status: None,
                if_revision: None
            }
        );
        let mut old = serde_json::to_value(svc("a", "web", None)).unwrap();
        old.as_object_mut().unwrap().remove("revision");
        let back: Service = serde_json::from_value(old).unwrap();
        assert_eq!(back.revision, 0);
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
pub(crate) mod multi_node {
    use super::tests::svc;
    use super::*;
    use crate::*;

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            raft_id: 1,
            name: id.into(),
            role: NodeRole::Worker,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            labels: BTreeMap::new(),
            addr: String::new(),
            last_heartbeat: 0,
            version: String::new(),
            status_message: String::new(),
            resources: Default::default(),
            ingress_addr: None,
        }
    }

    pub(crate) fn task(id: &str, service: &str, slot: u64) -> Task {
        Task {
            id: id.into(),
            service_id: service.into(),
            service_name: service.into(),
            slot,
            node_id: None,
            spec_version: 1,
            spec: TaskSpec::default(),
            image_digest: None,
            ports: vec![],
            desired: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Pending,
                ..Default::default()
            },
            created_at: 0,
            not_before: None,
            restart_attempt: 0,
            started_at: None,
            networks: vec![],
        }
    }

    /// The store publishes a new state per applied batch while readers hold older ones: a clone
    /// must share everything a change does not touch, never copy the whole state.
    #[test]
    fn a_clone_shares_what_a_change_does_not_touch() {
        let mut st = ClusterState::default();
        let mut web = super::tests::svc("a", "web", None);
        web.spec.mode = ServiceMode::Replicated { replicas: 2000 };
        st.apply(&Command::CreateService(web)).unwrap();
        let tasks: Vec<Task> = (1..=2000).map(|i| task(&format!("t{i}"), "a", i)).collect();
        st.apply(&Command::PutTasks(tasks)).unwrap();
        let before = st.clone();
        assert!(before.tasks.ptr_eq(&st.tasks) && before.services.ptr_eq(&st.services));
        st.apply(&Command::SetDesired {
            task_ids: vec!["t7".into()],
            desired: TaskState::Shutdown,
        })
        .unwrap();
        // The reader's version is untouched; the maps the change did not touch are shared.
        assert_eq!(before.tasks["t7"].desired, TaskState::Running);
        assert_eq!(st.tasks["t7"].desired, TaskState::Shutdown);
        assert!(!before.tasks.ptr_eq(&st.tasks));
        assert!(before.services.ptr_eq(&st.services) && before.nodes.ptr_eq(&st.nodes));
    }

    /// Two nodes, service `a` (3 replicas) with task t1 in slot 1 assigned to n1.
    fn cluster() -> ClusterState {
        let mut st = ClusterState::default();
        st.apply(&Command::AddNode(node("n1"))).unwrap();
        st.apply(&Command::AddNode(node("n2"))).unwrap();
        let mut s = svc("a", "web", None);
        s.spec.mode = ServiceMode::Replicated { replicas: 3 };
        st.apply(&Command::CreateService(s)).unwrap();
        st.apply(&Command::PutTasks(vec![task("t1", "a", 1)]))
            .unwrap();
        st.apply(&Command::Assign {
            assignments: vec![("t1".into(), "n1".into())],
            now: 1,
        })
        .unwrap();
        st
    }

    #[test]
    fn add_node_is_a_no_op_when_present() {
        let mut st = cluster();
        let mut again = node("n1");
        again.name = "renamed".into();
        assert_eq!(st.apply(&Command::AddNode(again)).unwrap().changed, 0);
        assert_eq!(st.nodes["n1"].name, "n1");
    }

    #[test]
    fn node_spec_and_status_have_separate_writers() {
        let mut st = cluster();
        let labels: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
        st.apply(&Command::UpdateNodeSpec {
            id: "n1".into(),
            availability: Some(Availability::Drain),
            labels: Some(labels.clone()),
            role: None,
        })
        .unwrap();
        st.apply(&Command::UpdateNodeStatus {
            id: "n1".into(),
            status: Some(NodeStatus::Down),
            addr: Some("10.0.0.1:4600".into()),
            version: None,
            message: Some("heartbeat failure".into()),
            resources: None,
        })
        .unwrap();
        let n = &st.nodes["n1"];
        // The status writer did not undo the spec writer's change, nor the other way round.
        assert_eq!(n.availability, Availability::Drain);
        assert_eq!(n.labels, labels);
        assert_eq!(n.role, NodeRole::Worker);
        assert_eq!(n.status, NodeStatus::Down);
        assert_eq!(n.addr, "10.0.0.1:4600");
        assert_eq!(n.status_message, "heartbeat failure");
        // Setting the same values again changes nothing.
        let same = Command::UpdateNodeSpec {
            id: "n1".into(),
            availability: Some(Availability::Drain),
            labels: None,
            role: None,
        };
        assert_eq!(st.apply(&same).unwrap().changed, 0);
        let missing = Command::UpdateNodeStatus {
            id: "nx".into(),
            status: Some(NodeStatus::Ready),
            addr: None,
            version: None,
            message: None,
            resources: None,
        };
        assert_eq!(
            st.apply(&missing).unwrap_err(),
            ApplyError::NodeNotFound("nx".into())
        );
    }

    #[test]
    fn removing_a_node_orphans_its_unfinished_tasks() {
        let mut st = cluster();
        st.apply(&Command::RemoveNode { id: "n1".into() }).unwrap();
        let t = &st.tasks["t1"];
        assert!(!t.is_runnable(), "the slot must be free for a replacement");
        assert_eq!(t.desired, TaskState::Shutdown);
        assert_eq!(t.status.state, TaskState::Orphaned);
        assert_eq!(st.tasks_on("n1").count(), 1, "history stays until reaped");
    }

    #[test]
    fn out_of_bounds_replicas_are_refused_at_apply() {
        let mut st = cluster();
        let mut bad = svc("b", "bad", None);
        bad.spec.mode = ServiceMode::Replicated {
            replicas: 30_000_000_000,
        };
        assert!(matches!(
            st.apply(&Command::CreateService(bad.clone())),
            Err(ApplyError::InvalidSpec { .. })
        ));
        let update = Command::UpdateService {
            id: "a".into(),
            spec: bad.spec.clone(),
            image_digest: None,
            now: 5,
            if_revision: None,
        };
        assert!(matches!(
            st.apply(&update),
            Err(ApplyError::InvalidSpec { .. })
        ));
        bad.spec.mode = ServiceMode::Replicated {
            replicas: MAX_REPLICAS,
        };
        st.apply(&Command::CreateService(bad)).unwrap();
    }

    #[test]
    fn a_stale_new_task_rejects_its_whole_batch() {
        // The orphan task race: a plan made before the service was removed.
        let mut st = cluster();
        let plan = Command::Batch(vec![
            Command::SetDesired {
                task_ids: vec!["t1".into()],
                desired: TaskState::Shutdown,
            },
            Command::PutTasks(vec![task("t2", "a", 2)]),
        ]);
        st.apply(&Command::RemoveService { id: "a".into() })
            .unwrap();
        let before = st.clone();
        assert!(matches!(st.apply(&plan), Err(ApplyError::Precondition(_))));
        assert_eq!(st, before);
        assert_eq!(
            st.tasks["t1"].desired,
            TaskState::Remove,
            "not rolled back past"
        );
    }

    #[test]
    fn new_tasks_need_the_current_version_a_valid_slot_and_a_free_slot() {
        let mut st = cluster();
        let mut old = task("t2", "a", 2);
        old.spec_version = 0;
        assert!(matches!(
            st.apply(&Command::PutTasks(vec![old])),
            Err(ApplyError::Precondition(_))
        ));
        assert!(matches!(
            st.apply(&Command::PutTasks(vec![task("t3", "a", 4)])),
            Err(ApplyError::Precondition(_))
        ));
        // Slot 1 already has a runnable task of this version (another leader filled it).
        assert!(matches!(
            st.apply(&Command::PutTasks(vec![task("t4", "a", 1)])),
            Err(ApplyError::Precondition(_))
        ));
        st.apply(&Command::PutTasks(vec![task("t5", "a", 2)]))
            .unwrap();
        assert_eq!(st.tasks.len(), 2);
    }

    #[test]
    fn assignments_need_a_pending_task_and_an_eligible_node() {
        let mut st = cluster();
        st.apply(&Command::PutTasks(vec![task("t2", "a", 2)]))
            .unwrap();
        let assign = |t: &str, n: &str| Command::Assign {
            assignments: vec![(t.into(), n.into())],
            now: 2,
        };
        // t1 is already assigned: a second leader's plan for it is stale.
        assert!(matches!(
            st.apply(&assign("t1", "n2")),
            Err(ApplyError::Precondition(_))
        ));
        assert!(matches!(
            st.apply(&assign("t2", "nx")),
            Err(ApplyError::Precondition(_))
        ));
        st.apply(&Command::UpdateNodeSpec {
            id: "n2".into(),
            availability: Some(Availability::Pause),
            labels: None,
            role: None,
        })
        .unwrap();
        assert!(matches!(
            st.apply(&assign("t2", "n2")),
            Err(ApplyError::Precondition(_))
        ));
        st.apply(&assign("t2", "n1")).unwrap();
        assert_eq!(st.tasks["t2"].node_id.as_deref(), Some("n1"));
        assert_eq!(st.tasks_on("n1").count(), 2);
        assert_eq!(st.unassigned_tasks().count(), 0);
    }

    #[test]
    fn a_failed_batch_leaves_state_and_indexes_as_they_were() {
        let mut st = cluster();
        let before = st.clone();
        let batch = Command::Batch(vec![
            Command::PutTasks(vec![task("t2", "a", 2)]),
            Command::Assign {
                assignments: vec![("t2".into(), "n2".into())],
                now: 3,
            },
            Command::DeleteTasks(vec!["t1".into()]),
            Command::RemoveNode { id: "nx".into() },
        ]);
        assert!(st.apply(&batch).is_err());
        assert_eq!(st, before);
        let mut rebuilt = st.clone();
        rebuilt.rebuild_index();
        let x: Vec<_> = st.tasks_of("a").map(|t| &t.id).collect();
        let y: Vec<_> = rebuilt.tasks_of("a").map(|t| &t.id).collect();
        assert_eq!(x, y);
        assert_eq!(st.tasks_on("n1").count(), 1);
        assert_eq!(st.tasks_on("n2").count(), 0);
        assert_eq!(st.unassigned_tasks().count(), 0);
    }

    #[test]
    fn undo_log_takes_back_a_sequence_of_commands() {
        let mut st = cluster();
        let before = st.clone();
        let mut log = UndoLog::default();
        st.apply_logged(&Command::PutTasks(vec![task("t2", "a", 2)]), &mut log)
            .unwrap();
        st.apply_logged(&Command::RemoveNode { id: "n1".into() }, &mut log)
            .unwrap();
        st.undo(log);
        assert_eq!(st, before);
        assert_eq!(st.tasks_on("n1").count(), 1);
        assert_eq!(st.tasks_of("a").count(), 1);
    }

    #[test]
    fn snapshots_rebuild_the_index_and_old_shapes_still_load() {
        let st = cluster();
        let json = serde_json::to_string(&st).unwrap();
        assert!(!json.contains("index"), "the index is not persisted");
        let back: ClusterState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, st);
        assert_eq!(back.tasks_on("n1").count(), 1);
        assert_eq!(back.tasks_of("a").count(), 1);
        // A node and a service spec written before status_message and placement existed.
        let mut v = serde_json::to_value(&st).unwrap();
        v["nodes"]["n1"]
            .as_object_mut()
            .unwrap()
            .remove("status_message");
        v["services"]["a"]["spec"]
            .as_object_mut()
            .unwrap()
            .remove("placement");
        let old: ClusterState = serde_json::from_value(v).unwrap();
        assert_eq!(old, st);
    }

    #[test]
    fn new_commands_round_trip() {
        let mut p = Placement::default();
        p.constraints.push(Constraint {
            key: ConstraintKey::NodeLabel("zone".into()),
            op: ConstraintOp::In,
            values: vec!["a".into(), "b".into()],
        });
        p.preferences.push(PlacementPreference::Spread {
            label: "zone".into(),
        });
        p.max_replicas_per_node = Some(2);
        let mut s = svc("x", "x", None);
        s.spec.placement = p;
        let cmds = vec![
            Command::AddNode(node("n9")),
            Command::UpdateNodeSpec {
                id: "n9".into(),
                availability: Some(Availability::Pause),
                labels: Some(BTreeMap::new()),
                role: Some(NodeRole::Manager),
            },
            Command::UpdateNodeStatus {
                id: "n9".into(),
                status: Some(NodeStatus::Down),
                addr: None,
                version: Some("1".into()),
                message: Some("heartbeat failure".into()),
                resources: None,
            },
            Command::SetSchedulingError {
                task_ids: vec!["t".into()],
                err: "no suitable node".into(),
            },
            Command::CreateService(s),
        ];
        for c in cmds {
            let json = serde_json::to_string(&c).unwrap();
            let back: Command = serde_json::from_str(&json).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn constraints_match_as_swarm() {
        let mut n = node("n1");
        n.labels.insert("zone".into(), "A".into());
        let c = |key, op, values: &[&str]| Constraint {
            key,
            op,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let zone = || ConstraintKey::NodeLabel("zone".into());
        assert!(c(zone(), ConstraintOp::Eq, &["a"]).matches(&n));
        assert!(!c(zone(), ConstraintOp::Ne, &["a"]).matches(&n));
        assert!(c(zone(), ConstraintOp::In, &["b", "a"]).matches(&n));
        let rack = ConstraintKey::NodeLabel("rack".into());
        assert!(!c(rack.clone(), ConstraintOp::Eq, &["1"]).matches(&n));
        assert!(c(rack, ConstraintOp::Ne, &["1"]).matches(&n));
        assert!(c(ConstraintKey::NodeRole, ConstraintOp::Eq, &["worker"]).matches(&n));
        assert!(!c(ConstraintKey::NodeHostname, ConstraintOp::Ne, &["n1"]).matches(&n));
        assert_eq!(
            c(zone(), ConstraintOp::In, &["a", "b"]).to_string(),
            "node.labels.zone in (a, b)"
        );
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
