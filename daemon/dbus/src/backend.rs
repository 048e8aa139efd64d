//! What the daemon implements so that [`serve`](crate::serve) can answer D-Bus calls.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::OwnedFd;

use model::{Id, Service, ServiceSpec};

use crate::error::ApiError;
use crate::props::{InvalidSpec, Property, apply_properties};
use crate::types::{
    ChangeReport, ClusterInfo, ImageRow, LogOptions, NodeChange, NodeRow, PruneReport, ServiceRow,
    StackRow, TaskFilter, TaskRow,
};

/// A service with the task counts only the daemon knows, as `InspectService` returns it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceDetail {
    pub service: Service,
    /// Tasks of the current spec version whose observed state is RUNNING.
    pub running: u64,
    /// Replicas (replicated) or eligible nodes (global); a job's completions to make.
    pub desired: u64,
    /// A job's completions so far (0 for services).
    #[serde(default)]
    pub completed: u64,
}

/// Everything the object tree under `/org/shoal/Shoal1` shows, read at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub nodes: Vec<NodeRow>,
    pub services: Vec<ServiceDetail>,
    /// Every task, history included.
    pub tasks: Vec<TaskRow>,
    pub stacks: Vec<StackRow>,
    /// The health of the tasks that run a healthcheck, by task id (the `Task` objects'
    /// `Health*` properties).
    #[serde(default)]
    pub task_health: std::collections::BTreeMap<String, model::TaskHealth>,
}

/// The change an `UpdateService` call asks for: properties to apply onto the current spec.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpecPatch(pub Vec<Property>);

impl SpecPatch {
    /// Apply the patch onto `spec` (the service's current spec). On error `spec` is unchanged.
    pub fn apply(&self, spec: &mut ServiceSpec) -> Result<(), InvalidSpec> {
        apply_properties(spec, &self.0)
    }

    /// The patch asks for a rolling restart (`ForceUpdate = true`).
    pub fn forces_update(&self) -> bool {
        self.0
            .iter()
            .any(|p| matches!(p, Property::ForceUpdate(true)))
    }
}

/// The daemon side of the `org.shoal.Shoal1.Manager` interface: one method per D-Bus method.
///
/// Common rules:
/// - Arguments named `service`, `node` or `stack` are what the user typed: a full name
///   (`shop_web`), an id, or a unique id prefix. Resolve them like
///   [`model::ClusterState::find_service`]; a miss or an ambiguous prefix is
///   [`ApiError::NotFound`] with a message naming what was looked for.
/// - Methods that change the cluster return once the change is committed to the replicated
///   state (raft), not when tasks run: clients follow convergence with `ListTasks` and the
///   `TaskStateChanged` signal. On a follower or worker, forward the change to the leader; when
///   that is impossible return [`ApiError::NotLeader`] (no leader known) or
///   [`ApiError::Unavailable`] (no quorum, still starting).
/// - Validation problems are [`ApiError::InvalidSpec`], listing every problem at once.
/// - Authorisation is not the backend's job: the D-Bus policy lets only root and the `shoal`
///   group call the changing methods.
/// - Returned futures must be `Send`; the server runs calls concurrently.
pub trait Backend: Send + Sync + 'static {
    /// `GetInfo` and the interface's properties (`Version`, `NodeId`, ...). Called for every
    /// property read, so it should be cheap (read local state only).
    fn info(&self) -> impl Future<Output = Result<ClusterInfo, ApiError>> + Send;

    /// `ListNodes`: every node of the cluster, sorted by name. Build rows with
    /// [`NodeRow::from_node`].
    fn list_nodes(&self) -> impl Future<Output = Result<Vec<NodeRow>, ApiError>> + Send;

    /// `InspectNode`: `node` is an id, unique id prefix, host name, or `self` for the node that
    /// answers.
    fn inspect_node(&self, node: &str) -> impl Future<Output = Result<NodeRow, ApiError>> + Send;

    /// `ListServices`: every service, sorted by name. Build rows with
    /// [`ServiceRow::from_service`].
    fn list_services(&self) -> impl Future<Output = Result<Vec<ServiceRow>, ApiError>> + Send;

    /// `InspectService`.
    fn inspect_service(
        &self,
        service: &str,
    ) -> impl Future<Output = Result<ServiceDetail, ApiError>> + Send;

    /// `CreateService`: store a new service with `spec` (already validated by
    /// [`crate::props::new_spec`]; `spec.name` is the requested name and `spec.stack` is
    /// `None`) and return its new id. Returns once the service is committed, before any task
    /// runs. The server only checks that the name is not empty: validate it (e.g. with
    /// `spec::units::validate_name("service", name)`) and refuse a bad one with
    /// [`ApiError::InvalidSpec`]. A taken name is [`ApiError::AlreadyExists`]; a published port
    /// used by another service is [`ApiError::InvalidSpec`].
    fn create_service(
        &self,
        spec: ServiceSpec,
    ) -> impl Future<Output = Result<Id, ApiError>> + Send;

    /// `UpdateService`: apply `patch` onto the service's current spec
    /// ([`SpecPatch::apply`], mapping its error to [`ApiError::InvalidSpec`]), commit it and
    /// return the service's version after the change (unchanged when the new spec is equal to
    /// the old one and the patch does not force an update). Changing a stack service from
    /// outside its stack file is allowed and lasts until the next deploy of that stack. A mode
    /// change (replicated <-> global) is refused with `InvalidSpec`, as Swarm does.
    fn update_service(
        &self,
        service: &str,
        patch: SpecPatch,
    ) -> impl Future<Output = Result<u64, ApiError>> + Send;

    /// `ScaleService`: set the replicas of a replicated service. A global service is
    /// `InvalidSpec` ("scale can only be used with replicated services").
    fn scale_service(
        &self,
        service: &str,
        replicas: u64,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// `RollbackService`: swap in the previous spec (one level, as Swarm) and return the new
    /// version. No previous spec is `Failed` with a message saying so.
    fn rollback_service(&self, service: &str)
    -> impl Future<Output = Result<u64, ApiError>> + Send;

    /// `RemoveService`: remove the service; its tasks get desired state REMOVE and shut down
    /// afterwards. Returns once the removal is committed.
    fn remove_service(&self, service: &str) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// `ListTasks`: tasks matching every given filter (history included), in any order; the
    /// CLI sorts. Build rows with [`TaskRow::from_task`]. A `service`, `stack` or `node` filter
    /// that matches nothing is [`ApiError::NotFound`]. `desired_state` is matched with
    /// [`TaskFilter::matches_desired`].
    fn list_tasks(
        &self,
        filter: TaskFilter,
    ) -> impl Future<Output = Result<Vec<TaskRow>, ApiError>> + Send;

    /// `DeployStack`: parse and validate `text` as the stack file of stack `name` (with
    /// `spec::parse_stack`; problems are `InvalidSpec`, one `file:line:col: message` per line)
    /// and apply it atomically as a CLI-owned stack. Returns the full service names created,
    /// updated, removed (services no longer in the file) and left unchanged. A stack of that
    /// name owned by a file in the stacks directory is `AlreadyExists`.
    fn deploy_stack(
        &self,
        name: &str,
        text: &str,
    ) -> impl Future<Output = Result<ChangeReport, ApiError>> + Send;

    /// `ListStacks`: every stack, sorted by name.
    fn list_stacks(&self) -> impl Future<Output = Result<Vec<StackRow>, ApiError>> + Send;

    /// `RemoveStack`: remove the stack and all its services atomically; returns the removed
    /// service names. A file-owned stack is removed too, but comes back on the next reload if
    /// its file still exists.
    fn remove_stack(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<String>, ApiError>> + Send;

    /// `Reload` (also what `ExecReload=shoal reload` and SIGHUP do): re-read every stack file,
    /// validate all of them, and only if every file is valid apply the changes. Returns stack
    /// names added, changed, removed (file gone) and unchanged. Any bad file is
    /// [`ApiError::ReloadFailed`] with every problem, one per line, and nothing is changed.
    fn reload(&self) -> impl Future<Output = Result<ChangeReport, ApiError>> + Send;

    /// `OpenLogs`: return the read end of a pipe or socket the daemon writes the service's log
    /// lines into (`<task name>.<short task id>@<node>    | <line>\n`, as `docker service logs`
    /// prints them, with an RFC 3339 timestamp first when `timestamps` is set). Without
    /// `follow` the daemon writes the existing lines and closes its end; with `follow` it keeps
    /// writing until the service is removed or the reader closes its end.
    fn open_logs(
        &self,
        service: &str,
        options: LogOptions,
    ) -> impl Future<Output = Result<OwnedFd, ApiError>> + Send;

    /// `UpdateNode`: change a node's availability, role (promote/demote) or labels. Refuses to
    /// demote the last manager or a manager whose loss would break quorum, saying why.
    fn update_node(
        &self,
        node: &str,
        change: NodeChange,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        let _ = (node, change);
        async {
            Err(ApiError::Failed(
                "UpdateNode is not supported by this backend".into(),
            ))
        }
    }

    /// `RemoveNode`: forget a node. A node that is not down is refused unless `force`; a
    /// manager must be demoted first.
    fn remove_node(
        &self,
        node: &str,
        force: bool,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        let _ = (node, force);
        async {
            Err(ApiError::Failed(
                "RemoveNode is not supported by this backend".into(),
            ))
        }
    }

    /// `JoinToken`: the join token for `worker` or `manager`; `rotate` makes a new secret first
    /// (the old token stops working for new joins only).
    fn join_token(
        &self,
        role: &str,
        rotate: bool,
    ) -> impl Future<Output = Result<String, ApiError>> + Send {
        let _ = (role, rotate);
        async {
            Err(ApiError::Failed(
                "JoinToken is not supported by this backend".into(),
            ))
        }
    }

    /// `ClusterInit`: form a new cluster with this node as its first manager (a node that is
    /// not in a cluster yet).
    fn cluster_init(&self) -> impl Future<Output = Result<String, ApiError>> + Send {
        async {
            Err(ApiError::Failed(
                "ClusterInit is not supported by this backend".into(),
            ))
        }
    }

    /// `ClusterJoin`: join the cluster of the managers at `addrs` with `token`; returns the
    /// role this node got.
    fn cluster_join(
        &self,
        token: &str,
        addrs: Vec<String>,
    ) -> impl Future<Output = Result<String, ApiError>> + Send {
        let _ = (token, addrs);
        async {
            Err(ApiError::Failed(
                "ClusterJoin is not supported by this backend".into(),
            ))
        }
    }

    /// `ClusterLeave`: stop this node's tasks and leave the cluster (a manager needs `force`).
    fn cluster_leave(&self, force: bool) -> impl Future<Output = Result<(), ApiError>> + Send {
        let _ = force;
        async {
            Err(ApiError::Failed(
                "ClusterLeave is not supported by this backend".into(),
            ))
        }
    }

    /// `UpdateCluster`: change cluster-wide settings (`heartbeat_period`, `task_history_limit`,
    /// `snapshot_interval`, `cert_expiry`, `autolock`), given as in `[cluster.settings]`.
    fn update_cluster(
        &self,
        settings: BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        let _ = settings;
        async {
            Err(ApiError::Failed(
                "UpdateCluster is not supported by this backend".into(),
            ))
        }
    }

    /// The state the object tree shows (nodes, services with their counts, tasks, stacks), as
    /// the listings would show it on this node. Called for every pass of
    /// [`objects::run`](crate::objects::run), so a backend that can read it at once should;
    /// the default asks the listings one after the other.
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, ApiError>> + Send {
        async {
            let nodes = self.list_nodes().await?;
            let mut services = Vec::new();
            for row in self.list_services().await? {
                match self.inspect_service(&row.id).await {
                    Ok(d) => services.push(d),
                    // Removed in between.
                    Err(ApiError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            let tasks = self.list_tasks(TaskFilter::default()).await?;
            let stacks = self.list_stacks().await?;
            Ok(Snapshot {
                nodes,
                services,
                tasks,
                stacks,
                task_health: Default::default(),
            })
        }
    }

    /// `GetClusterDetails`: what `shoal info` shows in its cluster section, as named strings
    /// (new keys may appear; clients ignore the ones they do not know).
    fn cluster_details(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, String>, ApiError>> + Send {
        async { Ok(BTreeMap::new()) }
    }

    /// `CreateNetwork`: create an overlay network named `name`; `options` as in
    /// `spec::network::NETWORK_OPTIONS`. Returns its id. The subnet (unless given) and the
    /// VXLAN id come from the cluster's address pool.
    fn create_network(
        &self,
        name: &str,
        options: BTreeMap<String, String>,
    ) -> impl Future<Output = Result<String, ApiError>> + Send {
        let _ = (name, options);
        async {
            Err(ApiError::Failed(
                "CreateNetwork is not supported by this backend".into(),
            ))
        }
    }

    /// `ListNetworks`: every network, sorted by name, as named strings (`Id`, `Name`, `Driver`,
    /// `Scope`, `Subnet`, `Gateway`, `Vni`, `Attachable`, `Ingress`, `Stack`, `Services`,
    /// `Label.<key>`; new keys may appear).
    fn list_networks(
        &self,
    ) -> impl Future<Output = Result<Vec<BTreeMap<String, String>>, ApiError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// `ListImages`: the images in this node's containerd namespace (never another node's:
    /// images are per node, as with `docker image ls`), sorted by name.
    fn list_images(&self) -> impl Future<Output = Result<Vec<ImageRow>, ApiError>> + Send {
        async {
            Err(ApiError::Failed(
                "ListImages is not supported by this backend".into(),
            ))
        }
    }

    /// `PruneImages`: remove this node's images that shoal pulled or imported and nothing
    /// needs now (no unfinished task or container, not the current or previous image of a
    /// service with tasks here, not preloaded), without waiting for `[images] prune_after`.
    /// With `all`, keep only what a task or container uses.
    fn prune_images(
        &self,
        all: bool,
    ) -> impl Future<Output = Result<PruneReport, ApiError>> + Send {
        let _ = all;
        async {
            Err(ApiError::Failed(
                "PruneImages is not supported by this backend".into(),
            ))
        }
    }

    /// `RemoveNetwork`: remove a network; refused while a service names it or a task holds an
    /// address on it.
    fn remove_network(&self, network: &str) -> impl Future<Output = Result<(), ApiError>> + Send {
        let _ = network;
        async {
            Err(ApiError::Failed(
                "RemoveNetwork is not supported by this backend".into(),
            ))
        }
    }

    /// `CreateSecret` / `CreateConfig`: store `data` under `name` (checked by
    /// `spec::units::validate_name` and `SecretKind::check_size`). Returns its id. Refused when
    /// the name is taken: secrets never change; make a new one to rotate.
    fn create_secret(
        &self,
        kind: model::SecretKind,
        name: &str,
        labels: BTreeMap<String, String>,
        data: model::SecretData,
    ) -> impl Future<Output = Result<String, ApiError>> + Send {
        let _ = (name, labels, data);
        async move {
            Err(ApiError::Failed(format!(
                "creating a {} is not supported by this backend",
                kind.as_str()
            )))
        }
    }

    /// `ListSecrets` / `ListConfigs`: every secret or config, sorted by name, as named strings
    /// (`Id`, `Name`, `Created` (Unix ms), `Stack`, `Services` (comma-separated), `Current`
    /// (`false` for a stack's older version), `Label.<key>`; new keys may appear). Never the
    /// data.
    fn list_secrets(
        &self,
        kind: model::SecretKind,
    ) -> impl Future<Output = Result<Vec<BTreeMap<String, String>>, ApiError>> + Send {
        let _ = kind;
        async { Ok(Vec::new()) }
    }

    /// `RemoveSecret` / `RemoveConfig`: by name, id or unique id prefix; refused while a service
    /// uses it, naming the services.
    fn remove_secret(
        &self,
        kind: model::SecretKind,
        name: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        let _ = name;
        async move {
            Err(ApiError::Failed(format!(
                "removing a {} is not supported by this backend",
                kind.as_str()
            )))
        }
    }

    /// `DeployStackWithFiles`: [`Backend::deploy_stack`] for a stack whose secrets and configs
    /// come from files: `files` maps each `file` as written in the stack to its content, read by
    /// the client relative to its stack file.
    fn deploy_stack_with_files(
        &self,
        name: &str,
        text: &str,
        files: BTreeMap<String, model::SecretData>,
    ) -> impl Future<Output = Result<ChangeReport, ApiError>> + Send {
        let _ = (name, text, files);
        async {
            Err(ApiError::Failed(
                "DeployStackWithFiles is not supported by this backend".into(),
            ))
        }
    }
}
