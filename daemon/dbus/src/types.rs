//! The typed rows the API returns. Each is a D-Bus struct (its signature is in the doc comment)
//! and serialises to JSON with the same field names, which is what `shoal ... --format json`
//! prints.

use std::collections::BTreeMap;

use model::{Node, PortSpec, Service, Task, TaskState};
use serde::{Deserialize, Serialize};
use zbus::Type;

/// `GetInfo`: what this node knows about itself and the cluster. Signature
/// `(sssssbsttttttts)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type, Default)]
pub struct ClusterInfo {
    /// shoald's version (`CARGO_PKG_VERSION` of the daemon).
    pub version: String,
    pub node_id: String,
    pub node_name: String,
    /// Empty until the node belongs to a cluster.
    pub cluster_id: String,
    /// `manager` or `worker`.
    pub role: String,
    /// This node is the raft leader.
    pub is_leader: bool,
    /// Node id of the current leader; empty when unknown.
    pub leader_id: String,
    pub managers: u64,
    pub nodes: u64,
    pub services: u64,
    /// Tasks in the cluster state (history included).
    pub tasks: u64,
    /// Tasks whose observed state is RUNNING.
    pub running: u64,
    pub stacks: u64,
    /// Unix milliseconds on the daemon's clock when this answer was made; clients compute
    /// "5 seconds ago" against it so that clock skew between CLI and daemon does not matter.
    pub now: u64,
    /// What the node is doing, as in the unit's `STATUS=` line.
    pub status: String,
}

/// One row of `ListNodes` / the answer of `InspectNode`. Signature `(ssssssssa{ss}b)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type, Default)]
pub struct NodeRow {
    pub id: String,
    /// Host name of the node.
    pub name: String,
    /// `manager` or `worker`.
    pub role: String,
    /// `active`, `pause` or `drain`.
    pub availability: String,
    /// `ready`, `down` or `unknown`.
    pub status: String,
    /// For managers `leader`, `reachable` or `unreachable`; empty for workers.
    pub manager_status: String,
    /// `host:port` other nodes use to reach it.
    pub addr: String,
    /// shoald version the node runs.
    pub version: String,
    pub labels: BTreeMap<String, String>,
    /// The node that answered the call.
    pub is_self: bool,
}

impl NodeRow {
    /// Build the row for `node`; `manager_status` and `is_self` are what only the daemon knows.
    pub fn from_node(node: &Node, manager_status: &str, is_self: bool) -> NodeRow {
        NodeRow {
            id: node.id.clone(),
            name: node.name.clone(),
            role: node.role.as_str().into(),
            availability: node.availability.as_str().into(),
            status: node.status.as_str().into(),
            manager_status: manager_status.into(),
            addr: node.addr.clone(),
            version: node.version.clone(),
            labels: node.labels.clone(),
            is_self,
        }
    }
}

/// A published port: `(published, target, protocol, mode)`, signature `(qqss)`; protocol is
/// `tcp`/`udp`, mode `ingress`/`host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PortRow {
    pub published: u16,
    pub target: u16,
    pub protocol: String,
    pub mode: String,
}

impl From<&PortSpec> for PortRow {
    fn from(p: &PortSpec) -> Self {
        PortRow {
            published: p.published,
            target: p.target,
            protocol: p.protocol.as_str().into(),
            mode: match p.mode {
                model::PublishMode::Ingress => "ingress".into(),
                model::PublishMode::Host => "host".into(),
            },
        }
    }
}

impl PortRow {
    /// Docker's rendering: `*:8080->80/tcp`.
    pub fn display(&self) -> String {
        format!("*:{}->{}/{}", self.published, self.target, self.protocol)
    }
}

/// One row of `ListServices`. Signature `(ssssttsa(qqss)tsttt)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type, Default)]
pub struct ServiceRow {
    pub id: String,
    pub name: String,
    /// Owning stack; empty when none.
    pub stack: String,
    /// `replicated` or `global`.
    pub mode: String,
    /// Tasks of the current spec version whose observed state is RUNNING.
    pub running: u64,
    /// Replicas for replicated services; the number of eligible nodes for global ones.
    pub desired: u64,
    pub image: String,
    pub ports: Vec<PortRow>,
    /// Bumped on every spec change that affects tasks.
    pub version: u64,
    /// `updating`, `paused`, `completed`, `rollback_started`, `rollback_paused`,
    /// `rollback_completed`, or empty when the service was never updated.
    pub update_state: String,
    /// Unix milliseconds.
    pub created_at: u64,
    /// Unix milliseconds.
    pub updated_at: u64,
    /// Jobs: the tasks of the current spec that completed (0 for services).
    pub completed: u64,
}

impl ServiceRow {
    /// Build the row for `svc`; `running` and `desired` are counted by the daemon.
    pub fn from_service(svc: &Service, running: u64, desired: u64) -> ServiceRow {
        ServiceRow {
            id: svc.id.clone(),
            name: svc.spec.name.clone(),
            stack: svc.spec.stack.clone().unwrap_or_default(),
            mode: svc.spec.mode.name().into(),
            running,
            desired,
            image: svc.spec.task.image.clone(),
            ports: svc.spec.ports.iter().map(PortRow::from).collect(),
            version: svc.version,
            update_state: svc
                .update_status
                .as_ref()
                .map(|u| u.state.as_str().to_string())
                .unwrap_or_default(),
            created_at: svc.created_at,
            updated_at: svc.updated_at,
            completed: 0,
        }
    }
}

/// The non-spec half of `InspectService` (the spec travels as an `a(sv)` property list).
/// Signature `(ssssttttsssbttt)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type, Default)]
pub struct ServiceInfo {
    pub id: String,
    pub name: String,
    /// Owning stack; empty when none.
    pub stack: String,
    pub mode: String,
    pub version: u64,
    pub created_at: u64,
    pub updated_at: u64,
    /// When the current update started (0: never updated).
    pub update_started_at: u64,
    /// See [`ServiceRow::update_state`].
    pub update_state: String,
    pub update_message: String,
    /// The digest the image resolved to; empty when not resolved.
    pub image_digest: String,
    /// A previous spec exists, so `RollbackService` can work.
    pub has_previous_spec: bool,
    pub running: u64,
    pub desired: u64,
    /// Jobs: the tasks of the current spec that completed (0 for services).
    pub completed: u64,
}

/// One row of `ListTasks`. Signature `(sssstssssstssitt)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type, Default)]
pub struct TaskRow {
    pub id: String,
    /// `web.2` (replicated) or `web.<node id>` (global), as docker prints it.
    pub name: String,
    pub service_id: String,
    /// Full service name.
    pub service: String,
    /// 1-based slot; 0 for global services.
    pub slot: u64,
    /// Empty while unassigned.
    pub node_id: String,
    /// Node host name; empty while unassigned.
    pub node: String,
    pub image: String,
    /// Desired state (lowercase docker name, e.g. `running`, `shutdown`).
    pub desired: String,
    /// Observed state (lowercase docker name).
    pub state: String,
    /// Unix milliseconds when the observed state was entered.
    pub state_since: u64,
    /// Human text for the state ("started", "pulling image").
    pub message: String,
    /// Error text for failed/rejected tasks; empty otherwise.
    pub error: String,
    /// Exit code of the container, or -1 when it has not exited.
    pub exit_code: i32,
    /// Unix milliseconds.
    pub created_at: u64,
    /// The service version the task was made from.
    pub spec_version: u64,
}

impl TaskRow {
    /// Build the row for `task`; `node_name` is the host name of `task.node_id`.
    pub fn from_task(task: &Task, node_name: &str) -> TaskRow {
        TaskRow {
            id: task.id.clone(),
            name: task.name(),
            service_id: task.service_id.clone(),
            service: task.service_name.clone(),
            slot: task.slot,
            node_id: task.node_id.clone().unwrap_or_default(),
            node: node_name.into(),
            image: task.spec.image.clone(),
            desired: task.desired.as_str().into(),
            state: task.status.state.as_str().into(),
            state_since: task.status.timestamp,
            message: task.status.message.clone(),
            error: task.status.err.clone().unwrap_or_default(),
            exit_code: task.status.exit_code.unwrap_or(-1),
            created_at: task.created_at,
            spec_version: task.spec_version,
        }
    }

    /// The observed state, parsed.
    pub fn state(&self) -> Option<TaskState> {
        TaskState::parse(&self.state)
    }

    /// The desired state, parsed.
    pub fn desired_state(&self) -> Option<TaskState> {
        TaskState::parse(&self.desired)
    }
}

/// One row of `ListStacks`. Signature `(stssts)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type, Default)]
pub struct StackRow {
    pub name: String,
    pub services: u64,
    /// `cli` (deployed with `shoal stack deploy`) or `file` (owned by a stack file).
    pub source: String,
    /// The stack file for `file` stacks; empty otherwise.
    pub path: String,
    /// Unix milliseconds.
    pub updated_at: u64,
    /// `deployed`, `updating` (an update in progress, or tasks still starting: `updating: 1 of
    /// 3 tasks running`) or `failed: REASON` (its file could not be applied at the last
    /// reload, or an update of one of its services paused or rolled back).
    pub status: String,
}

/// One row of `ListImages`: an image record in this node's containerd namespace. Signature
/// `(ssssttstb)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type, Default)]
pub struct ImageRow {
    /// The record's name: `localhost:5000/web:1`, `localhost:5000/web@sha256:...`,
    /// `oci-archive:/path/web.tar`.
    pub name: String,
    /// The name without its tag or digest.
    pub repository: String,
    /// The tag; `<none>` for a record pinned by digest or an archive.
    pub tag: String,
    /// The manifest digest (`sha256:...`), which services and tasks name.
    pub digest: String,
    /// When this node pulled or imported it, Unix milliseconds.
    pub created_at: u64,
    /// Bytes of content (manifest, config and compressed layers).
    pub size: u64,
    /// Why the node keeps it: `task` (a task on this node that has not finished, or a
    /// container, uses it), `service` (the current or rollback image of a service with tasks
    /// on this node), `preload` (`[images] preload`); empty when nothing needs it.
    pub in_use: String,
    /// Since when nothing has needed it (Unix milliseconds), as far as this daemon has seen;
    /// it is removed `[images] prune_after` later. 0 while needed and for images shoal did not
    /// pull.
    pub unused_since: u64,
    /// Pulled or imported by shoal; shoal never removes other images.
    pub managed: bool,
}

impl ImageRow {
    /// Split a record name into repository and tag (`<none>` when it has none: pinned by
    /// digest, or an archive).
    pub fn split_name(name: &str) -> (String, String) {
        if let Some((repo, _digest)) = name.split_once('@') {
            return (repo.to_string(), "<none>".into());
        }
        let last = name.rfind('/').map_or(0, |i| i + 1);
        match name[last..].rfind(':') {
            Some(i) if !name.contains(":/") => (
                name[..last + i].to_string(),
                name[last + i + 1..].to_string(),
            ),
            _ => (name.to_string(), "<none>".into()),
        }
    }
}

/// What `PruneImages` did. Signature `(ast)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type, Default)]
pub struct PruneReport {
    /// The records removed.
    pub removed: Vec<String>,
    /// Bytes of content freed: what the removed images held that no remaining image shares.
    pub reclaimed: u64,
}

/// What `Reload` (stack names) or `DeployStack` (service names) changed. Signature
/// `(asasasas)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type, Default)]
pub struct ChangeReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Filters of `ListTasks`. On the bus it is an `a{ss}` with the keys `service`, `stack`, `node`
/// and `desired-state`; unknown keys are refused with `InvalidSpec`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskFilter {
    /// Full service name, service id or unique id prefix.
    pub service: Option<String>,
    /// Stack name: tasks of every service of the stack.
    pub stack: Option<String>,
    /// Node id, unique id prefix or host name.
    pub node: Option<String>,
    /// Only tasks with this desired state. `running` matches desired RUNNING and READY (tasks
    /// meant to run), as docker's `desired-state=running` does.
    pub desired_state: Option<TaskState>,
}

impl TaskFilter {
    pub const KEYS: [&'static str; 4] = ["service", "stack", "node", "desired-state"];

    /// Parse the wire form.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<TaskFilter, String> {
        let mut f = TaskFilter::default();
        for (k, v) in map {
            match k.as_str() {
                "service" => f.service = Some(v.clone()),
                "stack" => f.stack = Some(v.clone()),
                "node" => f.node = Some(v.clone()),
                "desired-state" => {
                    f.desired_state = Some(TaskState::parse(v).ok_or_else(|| {
                        format!("invalid desired-state filter {v:?}: expected a task state such as running or shutdown")
                    })?)
                }
                other => {
                    return Err(format!(
                        "unknown task filter {other:?}: expected one of {}",
                        TaskFilter::KEYS.join(", ")
                    ));
                }
            }
        }
        Ok(f)
    }

    /// The wire form.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if let Some(s) = &self.service {
            m.insert("service".into(), s.clone());
        }
        if let Some(s) = &self.stack {
            m.insert("stack".into(), s.clone());
        }
        if let Some(s) = &self.node {
            m.insert("node".into(), s.clone());
        }
        if let Some(s) = &self.desired_state {
            m.insert("desired-state".into(), s.as_str().into());
        }
        m
    }

    /// Whether `row` passes the service-independent filters (`desired-state`). Backends that
    /// resolve `service`, `stack` and `node` themselves may use this for the rest.
    pub fn matches_desired(&self, row_desired: TaskState) -> bool {
        match self.desired_state {
            None => true,
            Some(TaskState::Running) => {
                row_desired == TaskState::Running || row_desired == TaskState::Ready
            }
            Some(d) => row_desired == d,
        }
    }
}

/// Options of `OpenLogs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Lines from the end of each task's log; `None` for all.
    pub tail: Option<u64>,
    /// Keep the fd open and write new lines as they come.
    pub follow: bool,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
}

/// `tail` on the wire when every line is wanted.
pub const TAIL_ALL: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::Type;

    #[test]
    fn signatures_match_the_docs() {
        assert_eq!(ClusterInfo::SIGNATURE.to_string(), "(sssssbsttttttts)");
        assert_eq!(NodeRow::SIGNATURE.to_string(), "(ssssssssa{ss}b)");
        assert_eq!(PortRow::SIGNATURE.to_string(), "(qqss)");
        assert_eq!(ServiceRow::SIGNATURE.to_string(), "(ssssttsa(qqss)tsttt)");
        assert_eq!(ServiceInfo::SIGNATURE.to_string(), "(ssssttttsssbttt)");
        assert_eq!(TaskRow::SIGNATURE.to_string(), "(sssstssssstssitt)");
        assert_eq!(StackRow::SIGNATURE.to_string(), "(stssts)");
        assert_eq!(ChangeReport::SIGNATURE.to_string(), "(asasasas)");
        assert_eq!(ImageRow::SIGNATURE.to_string(), "(ssssttstb)");
        assert_eq!(PruneReport::SIGNATURE.to_string(), "(ast)");
    }

    #[test]
    fn image_names_split_into_repository_and_tag() {
        let split = |n: &str| {
            let (r, t) = ImageRow::split_name(n);
            (r, t)
        };
        let pair = |r: &str, t: &str| (r.to_string(), t.to_string());
        assert_eq!(
            split("localhost:5000/web:1"),
            pair("localhost:5000/web", "1")
        );
        assert_eq!(
            split("docker.io/library/busybox:latest"),
            pair("docker.io/library/busybox", "latest")
        );
        assert_eq!(
            split("localhost:5000/web@sha256:abc"),
            pair("localhost:5000/web", "<none>")
        );
        assert_eq!(
            split("localhost:5000/web"),
            pair("localhost:5000/web", "<none>")
        );
        assert_eq!(
            split("oci-archive:/srv/img/web.tar"),
            pair("oci-archive:/srv/img/web.tar", "<none>")
        );
        assert_eq!(
            split("oci-archive:/srv/img/web.tar@sha256:abc"),
            pair("oci-archive:/srv/img/web.tar", "<none>")
        );
    }

    #[test]
    fn task_filter_round_trips_and_refuses_unknown_keys() {
        let f = TaskFilter {
            service: Some("web".into()),
            stack: None,
            node: Some("n1".into()),
            desired_state: Some(TaskState::Running),
        };
        assert_eq!(TaskFilter::from_map(&f.to_map()).unwrap(), f);
        let mut m = BTreeMap::new();
        m.insert("colour".to_string(), "red".to_string());
        let err = TaskFilter::from_map(&m).unwrap_err();
        assert!(err.contains("unknown task filter"), "{err}");
        m.clear();
        m.insert("desired-state".into(), "sleepy".into());
        assert!(TaskFilter::from_map(&m).is_err());
    }

    #[test]
    fn desired_running_matches_ready() {
        let f = TaskFilter {
            desired_state: Some(TaskState::Running),
            ..Default::default()
        };
        assert!(f.matches_desired(TaskState::Ready));
        assert!(f.matches_desired(TaskState::Running));
        assert!(!f.matches_desired(TaskState::Shutdown));
        assert!(TaskFilter::default().matches_desired(TaskState::Shutdown));
    }
}

/// What `UpdateNode` changes on a node (what the API writes: availability, role, labels). On the
/// bus: `UpdateNode(s node, s availability, s role, a{ss} labels_add, as labels_rm)`, an empty
/// string leaving the field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeChange {
    /// `active`, `pause` or `drain`.
    pub availability: Option<String>,
    /// `manager` (promote) or `worker` (demote).
    pub role: Option<String>,
    pub labels_add: BTreeMap<String, String>,
    pub labels_rm: Vec<String>,
}
