//! The server side: the `org.shoal.Shoal1.Manager` interface at `/org/shoal/Shoal1`, answered by
//! a [`Backend`], and [`Events`] to emit its signals.

use std::collections::BTreeMap;
use std::sync::Arc;

use model::{SecretData, SecretKind, TaskState};
use zbus::OwnedObjectPath;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, interface};

use crate::backend::{Backend, SpecPatch};
use crate::error::ApiError;
use crate::objects::path::{Kind, object_path};
use crate::props::{self, PropertyList};
use crate::types::{
    ChangeReport, ClusterInfo, ImageRow, LogOptions, NodeRow, PruneReport, ServiceInfo, ServiceRow,
    StackRow, TAIL_ALL, TaskFilter, TaskRow,
};
use crate::{BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH};

/// Failures to put the API on the bus or to emit a signal.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "failed to connect to the system bus and own {BUS_NAME}: {0} (is the D-Bus policy file org.shoal.Shoal1.conf installed and is shoald running as root?)"
    )]
    Serve(#[source] zbus::Error),
    #[error("failed to emit D-Bus signal {signal}: {source}")]
    Emit {
        signal: &'static str,
        #[source]
        source: zbus::Error,
    },
}

/// The interface object. Generic over the backend so that no boxing of futures is needed.
pub struct Manager<B: Backend> {
    backend: Arc<B>,
}

impl<B: Backend> Manager<B> {
    pub fn new(backend: Arc<B>) -> Self {
        Manager { backend }
    }

    async fn info(&self) -> zbus::fdo::Result<ClusterInfo> {
        self.backend
            .info()
            .await
            .map_err(|e| zbus::fdo::Error::Failed(e.message()))
    }
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidSpec(msg.into())
}

#[interface(name = "org.shoal.Shoal1.Manager")]
impl<B: Backend> Manager<B> {
    /// Everything the properties hold, in one call.
    async fn get_info(&self) -> Result<(ClusterInfo,), ApiError> {
        Ok((self.backend.info().await?,))
    }

    /// The object of a node (by id, id prefix, host name, or "self").
    async fn get_node(&self, node: &str) -> Result<OwnedObjectPath, ApiError> {
        let row = self.backend.inspect_node(node).await?;
        Ok(object_path(Kind::Node, &row.id))
    }

    /// The object of a service (by name, id or unique id prefix).
    async fn get_service(&self, service: &str) -> Result<OwnedObjectPath, ApiError> {
        let d = self.backend.inspect_service(service).await?;
        Ok(object_path(Kind::Service, &d.service.spec.name))
    }

    /// The object of a stack (by name).
    async fn get_stack(&self, stack: &str) -> Result<OwnedObjectPath, ApiError> {
        let stacks = self.backend.list_stacks().await?;
        if !stacks.iter().any(|s| s.name == stack) {
            return Err(ApiError::NotFound(format!(
                "stack {stack} not found (see `shoal stack ls`)"
            )));
        }
        Ok(object_path(Kind::Stack, stack))
    }

    /// Every node of the cluster.
    async fn list_nodes(&self) -> Result<Vec<NodeRow>, ApiError> {
        self.backend.list_nodes().await
    }

    /// One node by id, id prefix, host name, or "self".
    async fn inspect_node(&self, node: &str) -> Result<(NodeRow,), ApiError> {
        Ok((self.backend.inspect_node(node).await?,))
    }

    /// Every service with its running and desired task counts.
    async fn list_services(&self) -> Result<Vec<ServiceRow>, ApiError> {
        self.backend.list_services().await
    }

    /// One service by name or id prefix: its status and its spec as a property list.
    #[zbus(out_args("info", "properties"))]
    async fn inspect_service(
        &self,
        service: &str,
    ) -> Result<(ServiceInfo, PropertyList), ApiError> {
        let d = self.backend.inspect_service(service).await?;
        let s = &d.service;
        let info = ServiceInfo {
            id: s.id.clone(),
            name: s.spec.name.clone(),
            stack: s.spec.stack.clone().unwrap_or_default(),
            mode: s.spec.mode.name().into(),
            version: s.version,
            created_at: s.created_at,
            updated_at: s.updated_at,
            update_started_at: s.update_status.as_ref().map(|u| u.started_at).unwrap_or(0),
            update_state: s
                .update_status
                .as_ref()
                .map(|u| u.state.as_str().to_string())
                .unwrap_or_default(),
            update_message: s
                .update_status
                .as_ref()
                .map(|u| u.message.clone())
                .unwrap_or_default(),
            image_digest: s.image_digest.clone().unwrap_or_default(),
            has_previous_spec: s.previous_spec.is_some(),
            running: d.running,
            desired: d.desired,
            completed: d.completed,
        };
        Ok((info, props::to_wire(&props::spec_to_properties(&s.spec))))
    }

    /// Create a service from a property list; returns its id once it is stored.
    async fn create_service(
        &self,
        name: &str,
        properties: PropertyList,
    ) -> Result<String, ApiError> {
        if name.is_empty() {
            return Err(invalid("service name must not be empty"));
        }
        let props = props::from_wire(&properties)?;
        let spec = props::new_spec(name, &props)?;
        self.backend.create_service(spec).await
    }

    /// Apply a property list onto a service's spec; returns the new service version.
    async fn update_service(
        &self,
        service: &str,
        properties: PropertyList,
    ) -> Result<u64, ApiError> {
        let props = props::from_wire(&properties)?;
        self.backend.update_service(service, SpecPatch(props)).await
    }

    /// Change a node: availability (`active`, `pause`, `drain`), role (`manager` promotes,
    /// `worker` demotes), labels to add and to remove. Empty strings leave a field as it is.
    async fn update_node(
        &self,
        node: &str,
        availability: &str,
        role: &str,
        labels_add: BTreeMap<String, String>,
        labels_rm: Vec<String>,
    ) -> Result<(), ApiError> {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let change = crate::NodeChange {
            availability: opt(availability),
            role: opt(role),
            labels_add,
            labels_rm,
        };
        self.backend.update_node(node, change).await
    }

    /// Remove a node from the cluster (`force` for a node that is not down).
    async fn remove_node(&self, node: &str, force: bool) -> Result<(), ApiError> {
        self.backend.remove_node(node, force).await
    }

    /// The join token for `worker` or `manager`; `rotate` replaces its secret first.
    async fn join_token(&self, role: &str, rotate: bool) -> Result<String, ApiError> {
        self.backend.join_token(role, rotate).await
    }

    /// Form a new cluster with this node as its first manager.
    async fn cluster_init(&self) -> Result<String, ApiError> {
        self.backend.cluster_init().await
    }

    /// Join a cluster through the managers at `addrs` with `token`; returns the role.
    async fn cluster_join(&self, token: &str, addrs: Vec<String>) -> Result<String, ApiError> {
        self.backend.cluster_join(token, addrs).await
    }

    /// Leave the cluster (`force` for a manager).
    async fn cluster_leave(&self, force: bool) -> Result<(), ApiError> {
        self.backend.cluster_leave(force).await
    }

    /// Change cluster-wide settings, named as in `[cluster.settings]`.
    async fn update_cluster(&self, settings: BTreeMap<String, String>) -> Result<(), ApiError> {
        self.backend.update_cluster(settings).await
    }

    /// The cluster section of `shoal info`, as named strings.
    async fn get_cluster_details(&self) -> Result<BTreeMap<String, String>, ApiError> {
        self.backend.cluster_details().await
    }

    /// Create an overlay network; `options`: `Driver`, `Subnet`, `Attachable`, `Label.<key>`.
    /// Returns its id.
    async fn create_network(
        &self,
        name: &str,
        options: BTreeMap<String, String>,
    ) -> Result<String, ApiError> {
        self.backend.create_network(name, options).await
    }

    /// Every network, as named strings (`Id`, `Name`, `Driver`, `Scope`, `Subnet`, `Gateway`,
    /// `Vni`, `Attachable`, `Ingress`, `Stack`, `Services`, `Label.<key>`; new keys may appear).
    async fn list_networks(&self) -> Result<Vec<BTreeMap<String, String>>, ApiError> {
        self.backend.list_networks().await
    }

    /// Remove a network that no service uses.
    async fn remove_network(&self, network: &str) -> Result<(), ApiError> {
        self.backend.remove_network(network).await
    }

    /// Store a secret (at most 500 KiB); returns its id. Secrets never change: to rotate, create
    /// one under a new name and move the services to it.
    async fn create_secret(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        data: Vec<u8>,
    ) -> Result<String, ApiError> {
        self.backend
            .create_secret(SecretKind::Secret, name, labels, SecretData::new(data))
            .await
    }

    /// Every secret as named strings (`Id`, `Name`, `Created`, `Stack`, `Services`, `Current`,
    /// `Label.<key>`; new keys may appear); never the data.
    async fn list_secrets(&self) -> Result<Vec<BTreeMap<String, String>>, ApiError> {
        self.backend.list_secrets(SecretKind::Secret).await
    }

    /// Remove a secret that no service uses.
    async fn remove_secret(&self, secret: &str) -> Result<(), ApiError> {
        self.backend.remove_secret(SecretKind::Secret, secret).await
    }

    /// Store a config (at most 1000 KiB); returns its id.
    async fn create_config(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        data: Vec<u8>,
    ) -> Result<String, ApiError> {
        self.backend
            .create_secret(SecretKind::Config, name, labels, SecretData::new(data))
            .await
    }

    /// Every config, with the keys of `ListSecrets`; never the data.
    async fn list_configs(&self) -> Result<Vec<BTreeMap<String, String>>, ApiError> {
        self.backend.list_secrets(SecretKind::Config).await
    }

    /// Remove a config that no service uses.
    async fn remove_config(&self, config: &str) -> Result<(), ApiError> {
        self.backend.remove_secret(SecretKind::Config, config).await
    }

    /// `DeployStack` for a stack with `file` secrets or configs: `files` maps each file as
    /// written in the stack to its content.
    async fn deploy_stack_with_files(
        &self,
        name: &str,
        stack: &str,
        files: BTreeMap<String, Vec<u8>>,
    ) -> Result<(ChangeReport,), ApiError> {
        if name.is_empty() {
            return Err(invalid("stack name must not be empty"));
        }
        let files = files
            .into_iter()
            .map(|(k, v)| (k, SecretData::new(v)))
            .collect();
        Ok((self
            .backend
            .deploy_stack_with_files(name, stack, files)
            .await?,))
    }

    /// The images of this node, and why each is kept.
    async fn list_images(&self) -> Result<Vec<ImageRow>, ApiError> {
        self.backend.list_images().await
    }

    /// Remove this node's images that nothing needs now (`all`: that no task uses).
    async fn prune_images(&self, all: bool) -> Result<(PruneReport,), ApiError> {
        Ok((self.backend.prune_images(all).await?,))
    }

    /// Set the replica count of a replicated service.
    async fn scale_service(&self, service: &str, replicas: u64) -> Result<(), ApiError> {
        self.backend.scale_service(service, replicas).await
    }

    /// Go back to the previous spec; returns the new service version.
    async fn rollback_service(&self, service: &str) -> Result<u64, ApiError> {
        self.backend.rollback_service(service).await
    }

    /// Remove a service; its tasks shut down afterwards.
    async fn remove_service(&self, service: &str) -> Result<(), ApiError> {
        self.backend.remove_service(service).await
    }

    /// Tasks matching the filters: service, stack, node, desired-state.
    async fn list_tasks(
        &self,
        filters: BTreeMap<String, String>,
    ) -> Result<Vec<TaskRow>, ApiError> {
        let filter = TaskFilter::from_map(&filters).map_err(invalid)?;
        self.backend.list_tasks(filter).await
    }

    /// Deploy (create or update) a stack from the text of a TOML stack file.
    async fn deploy_stack(&self, name: &str, stack: &str) -> Result<(ChangeReport,), ApiError> {
        if name.is_empty() {
            return Err(invalid("stack name must not be empty"));
        }
        Ok((self.backend.deploy_stack(name, stack).await?,))
    }

    /// Every stack with its service count.
    async fn list_stacks(&self) -> Result<Vec<StackRow>, ApiError> {
        self.backend.list_stacks().await
    }

    /// Remove a stack and its services; returns the removed service names.
    async fn remove_stack(&self, name: &str) -> Result<Vec<String>, ApiError> {
        self.backend.remove_stack(name).await
    }

    /// Re-read the stack files and apply them, or change nothing if any is bad. The backend
    /// emits `Reloaded` (and `ReloadFailed`), as it does for reloads that do not come through
    /// this method (SIGHUP, start-up), so that every reload is announced exactly once.
    async fn reload(&self) -> Result<(ChangeReport,), ApiError> {
        Ok((self.backend.reload().await?,))
    }

    /// A file descriptor the daemon writes the service's log lines into. `tail` is the number
    /// of lines per task from the end (2^64-1 for all).
    async fn open_logs(
        &self,
        service: &str,
        tail: u64,
        follow: bool,
        timestamps: bool,
    ) -> Result<zbus::OwnedFd, ApiError> {
        let options = LogOptions {
            tail: if tail == TAIL_ALL { None } else { Some(tail) },
            follow,
            timestamps,
        };
        let fd = self.backend.open_logs(service, options).await?;
        Ok(zbus::OwnedFd::from(fd))
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn version(&self) -> zbus::fdo::Result<String> {
        Ok(self.info().await?.version)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn node_id(&self) -> zbus::fdo::Result<String> {
        Ok(self.info().await?.node_id)
    }

    #[zbus(property)]
    async fn node_name(&self) -> zbus::fdo::Result<String> {
        Ok(self.info().await?.node_name)
    }

    #[zbus(property)]
    async fn cluster_id(&self) -> zbus::fdo::Result<String> {
        Ok(self.info().await?.cluster_id)
    }

    #[zbus(property)]
    async fn role(&self) -> zbus::fdo::Result<String> {
        Ok(self.info().await?.role)
    }

    #[zbus(property)]
    async fn is_leader(&self) -> zbus::fdo::Result<bool> {
        Ok(self.info().await?.is_leader)
    }

    #[zbus(property)]
    async fn leader_id(&self) -> zbus::fdo::Result<String> {
        Ok(self.info().await?.leader_id)
    }

    #[zbus(property)]
    async fn nodes(&self) -> zbus::fdo::Result<u64> {
        Ok(self.info().await?.nodes)
    }

    #[zbus(property)]
    async fn services(&self) -> zbus::fdo::Result<u64> {
        Ok(self.info().await?.services)
    }

    #[zbus(property)]
    async fn tasks(&self) -> zbus::fdo::Result<u64> {
        Ok(self.info().await?.tasks)
    }

    #[zbus(property)]
    async fn running(&self) -> zbus::fdo::Result<u64> {
        Ok(self.info().await?.running)
    }

    #[zbus(property)]
    async fn stacks(&self) -> zbus::fdo::Result<u64> {
        Ok(self.info().await?.stacks)
    }

    #[zbus(property)]
    async fn status(&self) -> zbus::fdo::Result<String> {
        Ok(self.info().await?.status)
    }

    /// A task's observed or desired state changed.
    #[zbus(signal)]
    async fn task_state_changed(
        emitter: &SignalEmitter<'_>,
        task_id: &str,
        service: &str,
        state: &str,
    ) -> zbus::Result<()>;

    /// A service was created, updated or removed.
    #[zbus(signal)]
    async fn service_changed(emitter: &SignalEmitter<'_>, name: &str) -> zbus::Result<()>;

    /// A reload finished (sent once per reload): stacks added, changed, removed. A reload that
    /// failed changed nothing: its lists are empty and `ReloadFailed` came just before.
    #[zbus(signal)]
    async fn reloaded(
        emitter: &SignalEmitter<'_>,
        added: &[String],
        changed: &[String],
        removed: &[String],
    ) -> zbus::Result<()>;

    /// A reload failed and changed nothing: every problem, one per line. `Reloaded` follows.
    #[zbus(signal)]
    async fn reload_failed(emitter: &SignalEmitter<'_>, error: &str) -> zbus::Result<()>;
}

/// Connect to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` overrides the default socket), serve
/// the API at [`OBJECT_PATH`] (the manager interface and an `org.freedesktop.DBus.ObjectManager`
/// for the objects [`objects::run`](crate::objects::run) puts below it) and own [`BUS_NAME`]. The connection serves calls until it is
/// dropped. Owning the name needs the D-Bus policy file (root only).
pub async fn serve<B: Backend>(backend: Arc<B>) -> Result<Connection, ServerError> {
    serve_with(zbus::connection::Builder::system(), backend).await
}

/// [`serve`] on the bus at `address` (`unix:path=/run/...`), for tests with a private bus.
pub async fn serve_at_address<B: Backend>(
    address: &str,
    backend: Arc<B>,
) -> Result<Connection, ServerError> {
    serve_with(zbus::connection::Builder::address(address), backend).await
}

async fn serve_with<B: Backend>(
    builder: zbus::connection::Builder<'_>,
    backend: Arc<B>,
) -> Result<Connection, ServerError> {
    builder
        .serve_at(OBJECT_PATH, Manager::new(backend))
        .serve_at(OBJECT_PATH, zbus::fdo::ObjectManager)
        .name(BUS_NAME)
        .build()
        .await
        .map_err(ServerError::Serve)
}

/// A handle to emit the interface's signals from anywhere in the daemon. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Events {
    conn: Connection,
}

impl Events {
    /// Signals go out on `conn`, the connection [`serve`] returned.
    pub fn new(conn: &Connection) -> Events {
        Events { conn: conn.clone() }
    }

    async fn emit<T>(&self, signal: &'static str, body: &T) -> Result<(), ServerError>
    where
        T: serde::Serialize + zbus::wire::DynamicType,
    {
        self.conn
            .emit_signal(None::<&str>, OBJECT_PATH, MANAGER_INTERFACE, signal, body)
            .await
            .map_err(|source| ServerError::Emit { signal, source })
    }

    /// `TaskStateChanged(task_id, service, state)`: the task's observed state changed (or its
    /// desired state, when that is what moved: then `state` is the observed one).
    pub async fn task_state_changed(
        &self,
        task_id: &str,
        service: &str,
        state: TaskState,
    ) -> Result<(), ServerError> {
        self.emit("TaskStateChanged", &(task_id, service, state.as_str()))
            .await
    }

    /// `ServiceChanged(name)`: a service was created, updated, scaled, rolled back or removed.
    pub async fn service_changed(&self, name: &str) -> Result<(), ServerError> {
        self.emit("ServiceChanged", &(name,)).await
    }

    /// Announce the end of a reload, whichever way it came (the `Reload` method, SIGHUP,
    /// start-up): once per reload. Success: `Reloaded(added, changed, removed)`. Failure:
    /// `ReloadFailed(error)`, then `Reloaded` with empty lists (nothing was changed).
    pub async fn reload_finished(
        &self,
        outcome: Result<&ChangeReport, &str>,
    ) -> Result<(), ServerError> {
        let empty = ChangeReport::default();
        let report = match outcome {
            Ok(r) => r,
            Err(error) => {
                self.emit("ReloadFailed", &(error,)).await?;
                &empty
            }
        };
        self.emit(
            "Reloaded",
            &(&report.added, &report.changed, &report.removed),
        )
        .await
    }
}
