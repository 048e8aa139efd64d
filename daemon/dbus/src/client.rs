//! The client side: a typed proxy for `org.shoal.Shoal1.Manager` and [`Client`], which wraps it
//! with plain Rust types and errors that say what to do.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use futures_util::{Stream, StreamExt};
use model::{ServiceSpec, TaskState};
use serde::Serialize;
use zbus::Connection;

use crate::error::ApiError;
use crate::props::{self, Property, PropertyList};
use crate::types::{
    ChangeReport, ClusterInfo, ImageRow, LogOptions, NodeRow, PruneReport, ServiceInfo, ServiceRow,
    StackRow, TAIL_ALL, TaskFilter, TaskRow,
};
use crate::{BUS_NAME, OBJECT_PATH};

/// The raw proxy. Prefer [`Client`].
#[zbus::proxy(
    interface = "org.shoal.Shoal1.Manager",
    default_service = "org.shoal.Shoal1",
    default_path = "/org/shoal/Shoal1"
)]
pub trait Manager {
    fn get_info(&self) -> Result<ClusterInfo, ApiError>;
    fn list_nodes(&self) -> Result<Vec<NodeRow>, ApiError>;
    fn inspect_node(&self, node: &str) -> Result<NodeRow, ApiError>;
    fn list_services(&self) -> Result<Vec<ServiceRow>, ApiError>;
    fn inspect_service(&self, service: &str) -> Result<(ServiceInfo, PropertyList), ApiError>;
    fn create_service(&self, name: &str, properties: &PropertyList) -> Result<String, ApiError>;
    fn update_service(&self, service: &str, properties: &PropertyList) -> Result<u64, ApiError>;
    fn scale_service(&self, service: &str, replicas: u64) -> Result<(), ApiError>;
    fn rollback_service(&self, service: &str) -> Result<u64, ApiError>;
    fn remove_service(&self, service: &str) -> Result<(), ApiError>;
    fn update_node(
        &self,
        node: &str,
        availability: &str,
        role: &str,
        labels_add: &BTreeMap<String, String>,
        labels_rm: &[String],
    ) -> Result<(), ApiError>;
    fn remove_node(&self, node: &str, force: bool) -> Result<(), ApiError>;
    fn join_token(&self, role: &str, rotate: bool) -> Result<String, ApiError>;
    fn cluster_init(&self) -> Result<String, ApiError>;
    fn cluster_join(&self, token: &str, addrs: &[String]) -> Result<String, ApiError>;
    fn cluster_leave(&self, force: bool) -> Result<(), ApiError>;
    fn update_cluster(&self, settings: &BTreeMap<String, String>) -> Result<(), ApiError>;
    fn get_cluster_details(&self) -> Result<BTreeMap<String, String>, ApiError>;
    fn create_network(
        &self,
        name: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<String, ApiError>;
    fn list_networks(&self) -> Result<Vec<BTreeMap<String, String>>, ApiError>;
    fn remove_network(&self, network: &str) -> Result<(), ApiError>;
    fn create_secret(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        data: &[u8],
    ) -> Result<String, ApiError>;
    fn list_secrets(&self) -> Result<Vec<BTreeMap<String, String>>, ApiError>;
    fn remove_secret(&self, secret: &str) -> Result<(), ApiError>;
    fn create_config(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        data: &[u8],
    ) -> Result<String, ApiError>;
    fn list_configs(&self) -> Result<Vec<BTreeMap<String, String>>, ApiError>;
    fn remove_config(&self, config: &str) -> Result<(), ApiError>;
    fn deploy_stack_with_files(
        &self,
        name: &str,
        stack: &str,
        files: &BTreeMap<String, Vec<u8>>,
    ) -> Result<ChangeReport, ApiError>;
    fn list_images(&self) -> Result<Vec<ImageRow>, ApiError>;
    fn prune_images(&self, all: bool) -> Result<PruneReport, ApiError>;
    fn list_tasks(&self, filters: &BTreeMap<String, String>) -> Result<Vec<TaskRow>, ApiError>;
    fn deploy_stack(&self, name: &str, stack: &str) -> Result<ChangeReport, ApiError>;
    fn list_stacks(&self) -> Result<Vec<StackRow>, ApiError>;
    fn remove_stack(&self, name: &str) -> Result<Vec<String>, ApiError>;
    fn reload(&self) -> Result<ChangeReport, ApiError>;
    fn open_logs(
        &self,
        service: &str,
        tail: u64,
        follow: bool,
        timestamps: bool,
    ) -> Result<zbus::OwnedFd, ApiError>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn node_id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn node_name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn role(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn is_leader(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn services(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn running(&self) -> zbus::Result<u64>;

    #[zbus(signal)]
    fn task_state_changed(
        &self,
        task_id: String,
        service: String,
        state: String,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn service_changed(&self, name: String) -> zbus::Result<()>;
    #[zbus(signal)]
    fn reloaded(
        &self,
        added: Vec<String>,
        changed: Vec<String>,
        removed: Vec<String>,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn reload_failed(&self, error: String) -> zbus::Result<()>;
}

/// What a call through [`Client`] can fail with. Messages say what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No system bus, or nobody owns `org.shoal.Shoal1` on it.
    #[error(
        "cannot reach shoald on the system bus ({BUS_NAME}): is shoald running? try: systemctl status shoald\n  cause: {0}"
    )]
    Unreachable(String),
    /// The D-Bus policy refused the call.
    #[error(
        "permission denied: changing the cluster needs root or membership in the 'shoal' group"
    )]
    AccessDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}: no leader is reachable; check `shoal node ls` on a manager")]
    NotLeader(String),
    #[error("shoald is not ready: {0}; try again in a moment")]
    Unavailable(String),
    /// `Reload` refused bad stack files; the text lists every problem, one per line.
    #[error("reload failed, the running state is unchanged:\n{0}")]
    ReloadFailed(String),
    #[error("{0}")]
    Failed(String),
    /// Any other D-Bus failure.
    #[error("D-Bus call to shoald failed: {0}")]
    Bus(String),
}

const UNREACHABLE_NAMES: [&str; 4] = [
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoServer",
    "org.freedesktop.DBus.Error.Disconnected",
];

fn classify_zbus(e: &zbus::Error) -> ClientError {
    let (name, desc) = match e {
        zbus::Error::MethodError(name, desc, _) => {
            (name.as_str().to_string(), desc.clone().unwrap_or_default())
        }
        zbus::Error::FDO(f) => (
            zbus::DBusError::name(f.as_ref()).as_str().to_string(),
            zbus::DBusError::description(f.as_ref())
                .unwrap_or_default()
                .to_string(),
        ),
        zbus::Error::InputOutput(io) => return ClientError::Unreachable(io.to_string()),
        zbus::Error::Address(a) => return ClientError::Unreachable(a.clone()),
        other => return ClientError::Bus(other.to_string()),
    };
    if name == "org.freedesktop.DBus.Error.AccessDenied" {
        ClientError::AccessDenied(desc)
    } else if UNREACHABLE_NAMES.contains(&name.as_str()) {
        ClientError::Unreachable(desc)
    } else {
        ClientError::Bus(format!("{name}: {desc}"))
    }
}

impl From<ApiError> for ClientError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::ZBus(z) => classify_zbus(&z),
            ApiError::NotFound(m) => ClientError::NotFound(m),
            ApiError::InvalidSpec(m) => ClientError::InvalidSpec(m),
            ApiError::AlreadyExists(m) => ClientError::AlreadyExists(m),
            ApiError::NotLeader(m) => ClientError::NotLeader(m),
            ApiError::Unavailable(m) => ClientError::Unavailable(m),
            ApiError::ReloadFailed(m) => ClientError::ReloadFailed(m),
            ApiError::Failed(m) => ClientError::Failed(m),
        }
    }
}

impl From<zbus::Error> for ClientError {
    fn from(e: zbus::Error) -> Self {
        ClientError::from(ApiError::from(e))
    }
}

impl From<props::InvalidSpec> for ClientError {
    fn from(e: props::InvalidSpec) -> Self {
        ClientError::InvalidSpec(e.to_string())
    }
}

/// `InspectService`'s answer, decoded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceInspect {
    pub info: ServiceInfo,
    /// The spec rebuilt from the property list.
    pub spec: ServiceSpec,
    /// The property list as sent.
    #[serde(skip)]
    pub properties: Vec<Property>,
    /// The health of the service's tasks that run a healthcheck, by task id (filled by
    /// [`Client::service_task_health`] from the task objects).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub task_health: BTreeMap<String, TaskHealthView>,
}

/// A task's health as its `org.shoal.Shoal1.Task` object shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct TaskHealthView {
    /// The task's name (`web.2`).
    pub task: String,
    /// `starting`, `healthy` or `unhealthy`.
    pub status: String,
    pub failing_streak: u32,
    /// Exit code of the last check (-1: it timed out or could not run).
    pub exit_code: i32,
    /// The last 4 KiB of its output.
    pub output: String,
}

/// A `TaskStateChanged` signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEvent {
    pub task_id: String,
    pub service: String,
    pub state: Option<TaskState>,
}

/// A connection to shoald's API.
#[derive(Clone, Debug)]
pub struct Client {
    proxy: ManagerProxy<'static>,
}

impl Client {
    /// Connect to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` overrides the default socket).
    pub async fn connect_system() -> Result<Client, ClientError> {
        let conn = zbus::connection::Builder::system()
            .build()
            .await
            .map_err(|e| {
                ClientError::Unreachable(format!("cannot connect to the system bus: {e}"))
            })?;
        Client::on(conn).await
    }

    /// Connect to the bus at `address`, e.g. `unix:path=/tmp/bus.sock`.
    pub async fn connect_address(address: &str) -> Result<Client, ClientError> {
        let conn = zbus::connection::Builder::address(address)
            .build()
            .await
            .map_err(|e| {
                ClientError::Unreachable(format!("cannot connect to the bus at {address}: {e}"))
            })?;
        Client::on(conn).await
    }

    async fn on(conn: Connection) -> Result<Client, ClientError> {
        let proxy = ManagerProxy::builder(&conn)
            .destination(BUS_NAME)
            .path(OBJECT_PATH)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        Ok(Client { proxy })
    }

    /// The raw proxy, for signals and properties.
    pub fn proxy(&self) -> &ManagerProxy<'static> {
        &self.proxy
    }

    pub async fn info(&self) -> Result<ClusterInfo, ClientError> {
        Ok(self.proxy.get_info().await?)
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeRow>, ClientError> {
        Ok(self.proxy.list_nodes().await?)
    }

    pub async fn inspect_node(&self, node: &str) -> Result<NodeRow, ClientError> {
        Ok(self.proxy.inspect_node(node).await?)
    }

    pub async fn list_services(&self) -> Result<Vec<ServiceRow>, ClientError> {
        Ok(self.proxy.list_services().await?)
    }

    pub async fn inspect_service(&self, service: &str) -> Result<ServiceInspect, ClientError> {
        let (info, list) = self.proxy.inspect_service(service).await?;
        let properties = props::from_wire(&list)
            .map_err(|e| ClientError::Bus(format!("shoald sent an unreadable spec: {e}")))?;
        let mut spec = props::default_spec(&info.name);
        // Stop signal and grace period come from the list when present.
        props::apply_properties(&mut spec, &properties)
            .map_err(|e| ClientError::Bus(format!("shoald sent an invalid spec: {e}")))?;
        spec.stack = if info.stack.is_empty() {
            None
        } else {
            Some(info.stack.clone())
        };
        Ok(ServiceInspect {
            info,
            spec,
            properties,
            task_health: BTreeMap::new(),
        })
    }

    /// The health of every task that runs a healthcheck, by task id, read from the task
    /// objects in one `GetManagedObjects` call.
    pub async fn task_health(&self) -> Result<BTreeMap<String, TaskHealthView>, ClientError> {
        let om = zbus::fdo::ObjectManagerProxy::builder(self.proxy.inner().connection())
            .destination(BUS_NAME)
            .path(OBJECT_PATH)
            .build()
            .await?;
        let objects = om
            .get_managed_objects()
            .await
            .map_err(|e| ClientError::Bus(format!("cannot read the task objects: {e}")))?;
        let mut out = BTreeMap::new();
        for ifaces in objects.values() {
            let Some(props) = ifaces
                .iter()
                .find(|(name, _)| name.as_str() == "org.shoal.Shoal1.Task")
                .map(|(_, p)| p)
            else {
                continue;
            };
            let text = |key: &str| {
                props
                    .get(key)
                    .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
                    .unwrap_or_default()
            };
            let number = |key: &str| props.get(key).and_then(|v| i32::try_from(v).ok());
            let status = text("Health");
            if status.is_empty() {
                continue;
            }
            let view = TaskHealthView {
                task: text("Name"),
                status,
                failing_streak: props
                    .get("HealthFailingStreak")
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0),
                exit_code: number("HealthExitCode").unwrap_or(-1),
                output: text("HealthOutput"),
            };
            out.insert(text("Id"), view);
        }
        Ok(out)
    }

    /// The health of the tasks of `service` (an id) that run a healthcheck, by task id.
    pub async fn service_task_health(
        &self,
        service: &str,
    ) -> Result<BTreeMap<String, TaskHealthView>, ClientError> {
        let tasks = self
            .list_tasks(&TaskFilter {
                service: Some(service.to_string()),
                ..Default::default()
            })
            .await?;
        let mut health = self.task_health().await?;
        health.retain(|id, _| tasks.iter().any(|t| &t.id == id));
        Ok(health)
    }

    /// Create a service; returns its id once it is stored (tasks start afterwards).
    pub async fn create_service(
        &self,
        name: &str,
        properties: &[Property],
    ) -> Result<String, ClientError> {
        Ok(self
            .proxy
            .create_service(name, &props::to_wire(properties))
            .await?)
    }

    /// Apply `properties` onto the service's spec; returns the new service version.
    pub async fn update_service(
        &self,
        service: &str,
        properties: &[Property],
    ) -> Result<u64, ClientError> {
        Ok(self
            .proxy
            .update_service(service, &props::to_wire(properties))
            .await?)
    }

    pub async fn scale_service(&self, service: &str, replicas: u64) -> Result<(), ClientError> {
        Ok(self.proxy.scale_service(service, replicas).await?)
    }

    pub async fn rollback_service(&self, service: &str) -> Result<u64, ClientError> {
        Ok(self.proxy.rollback_service(service).await?)
    }

    pub async fn remove_service(&self, service: &str) -> Result<(), ClientError> {
        Ok(self.proxy.remove_service(service).await?)
    }

    pub async fn update_node(
        &self,
        node: &str,
        change: &crate::NodeChange,
    ) -> Result<(), ClientError> {
        Ok(self
            .proxy
            .update_node(
                node,
                change.availability.as_deref().unwrap_or(""),
                change.role.as_deref().unwrap_or(""),
                &change.labels_add,
                &change.labels_rm,
            )
            .await?)
    }

    pub async fn remove_node(&self, node: &str, force: bool) -> Result<(), ClientError> {
        Ok(self.proxy.remove_node(node, force).await?)
    }

    pub async fn join_token(&self, role: &str, rotate: bool) -> Result<String, ClientError> {
        Ok(self.proxy.join_token(role, rotate).await?)
    }

    pub async fn cluster_init(&self) -> Result<String, ClientError> {
        Ok(self.proxy.cluster_init().await?)
    }

    pub async fn cluster_join(&self, token: &str, addrs: &[String]) -> Result<String, ClientError> {
        Ok(self.proxy.cluster_join(token, addrs).await?)
    }

    pub async fn cluster_leave(&self, force: bool) -> Result<(), ClientError> {
        Ok(self.proxy.cluster_leave(force).await?)
    }

    pub async fn update_cluster(
        &self,
        settings: &BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        Ok(self.proxy.update_cluster(settings).await?)
    }

    pub async fn cluster_details(&self) -> Result<BTreeMap<String, String>, ClientError> {
        Ok(self.proxy.get_cluster_details().await?)
    }

    pub async fn create_network(
        &self,
        name: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<String, ClientError> {
        Ok(self.proxy.create_network(name, options).await?)
    }

    pub async fn list_networks(&self) -> Result<Vec<BTreeMap<String, String>>, ClientError> {
        Ok(self.proxy.list_networks().await?)
    }

    pub async fn remove_network(&self, network: &str) -> Result<(), ClientError> {
        Ok(self.proxy.remove_network(network).await?)
    }

    /// Store a secret or config; returns its id.
    pub async fn create_secret(
        &self,
        kind: model::SecretKind,
        name: &str,
        labels: &BTreeMap<String, String>,
        data: &[u8],
    ) -> Result<String, ClientError> {
        Ok(match kind {
            model::SecretKind::Secret => self.proxy.create_secret(name, labels, data).await?,
            model::SecretKind::Config => self.proxy.create_config(name, labels, data).await?,
        })
    }

    pub async fn list_secrets(
        &self,
        kind: model::SecretKind,
    ) -> Result<Vec<BTreeMap<String, String>>, ClientError> {
        Ok(match kind {
            model::SecretKind::Secret => self.proxy.list_secrets().await?,
            model::SecretKind::Config => self.proxy.list_configs().await?,
        })
    }

    pub async fn remove_secret(
        &self,
        kind: model::SecretKind,
        name: &str,
    ) -> Result<(), ClientError> {
        match kind {
            model::SecretKind::Secret => self.proxy.remove_secret(name).await?,
            model::SecretKind::Config => self.proxy.remove_config(name).await?,
        }
        Ok(())
    }

    /// `deploy_stack` with the contents of the stack's secret and config files.
    pub async fn deploy_stack_with_files(
        &self,
        name: &str,
        text: &str,
        files: &BTreeMap<String, Vec<u8>>,
    ) -> Result<ChangeReport, ClientError> {
        Ok(self
            .proxy
            .deploy_stack_with_files(name, text, files)
            .await?)
    }

    /// The images of the node this client talks to.
    pub async fn list_images(&self) -> Result<Vec<ImageRow>, ClientError> {
        Ok(self.proxy.list_images().await?)
    }

    /// Remove the node's images nothing needs now (`all`: that no task uses).
    pub async fn prune_images(&self, all: bool) -> Result<PruneReport, ClientError> {
        Ok(self.proxy.prune_images(all).await?)
    }

    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRow>, ClientError> {
        Ok(self.proxy.list_tasks(&filter.to_map()).await?)
    }

    pub async fn deploy_stack(&self, name: &str, text: &str) -> Result<ChangeReport, ClientError> {
        Ok(self.proxy.deploy_stack(name, text).await?)
    }

    pub async fn list_stacks(&self) -> Result<Vec<StackRow>, ClientError> {
        Ok(self.proxy.list_stacks().await?)
    }

    pub async fn remove_stack(&self, name: &str) -> Result<Vec<String>, ClientError> {
        Ok(self.proxy.remove_stack(name).await?)
    }

    pub async fn reload(&self) -> Result<ChangeReport, ClientError> {
        Ok(self.proxy.reload().await?)
    }

    /// The read end of the service's log stream.
    pub async fn open_logs(
        &self,
        service: &str,
        options: LogOptions,
    ) -> Result<OwnedFd, ClientError> {
        let fd = self
            .proxy
            .open_logs(
                service,
                options.tail.unwrap_or(TAIL_ALL),
                options.follow,
                options.timestamps,
            )
            .await?;
        Ok(OwnedFd::from(fd))
    }

    /// `TaskStateChanged` signals from now on.
    pub async fn task_events(
        &self,
    ) -> Result<impl Stream<Item = TaskEvent> + Unpin + use<>, ClientError> {
        let stream = self.proxy.receive_task_state_changed().await?;
        Ok(stream.filter_map(|sig| {
            let event = sig.args().ok().map(|args| TaskEvent {
                task_id: args.task_id().clone(),
                service: args.service().clone(),
                state: TaskState::parse(args.state()),
            });
            futures_util::future::ready(event)
        }))
    }
}
