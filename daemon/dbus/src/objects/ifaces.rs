//! The interfaces of the objects under `/org/shoal/Shoal1`: one object per node, service, stack
//! and task. Each holds the row the tree last published for it (properties answer from it, so
//! `GetManagedObjects` costs no call into the daemon) and the backend its methods act through.
//!
//! Every interface is at version 1 (its `InterfaceVersion` property). New information arrives as
//! new properties or new keys of a dictionary property, never as a new field of a struct; a
//! change that would break a client gets a new interface name (`...Service2`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use zbus::OwnedObjectPath;
use zbus::interface;
use zbus::zvariant::OwnedVariant;

use super::path::{Kind, object_path};
use crate::backend::{Backend, ServiceDetail, SpecPatch};
use crate::error::ApiError;
use crate::props;
use crate::types::{LogOptions, NodeChange, NodeRow, PortRow, StackRow, TAIL_ALL, TaskRow};

/// The version every object interface is at, as its `InterfaceVersion` property says.
pub const INTERFACE_VERSION: u32 = 1;

fn usec(ms: u64) -> u64 {
    ms.saturating_mul(1000)
}

/// A node of the cluster: `org.shoal.Shoal1.Node` at `/org/shoal/Shoal1/node/<id>`.
pub struct NodeObject<B: Backend> {
    pub(super) backend: Arc<B>,
    pub(super) row: NodeRow,
}

impl<B: Backend> NodeObject<B> {
    async fn change(&self, change: NodeChange) -> Result<(), ApiError> {
        self.backend.update_node(&self.row.id, change).await
    }
}

#[interface(name = "org.shoal.Shoal1.Node")]
impl<B: Backend> NodeObject<B> {
    /// Set the availability: `active`, `pause` (no new tasks) or `drain` (tasks move away).
    async fn set_availability(&self, availability: &str) -> Result<(), ApiError> {
        self.change(NodeChange {
            availability: Some(availability.into()),
            ..Default::default()
        })
        .await
    }

    /// Make the node a manager.
    async fn promote(&self) -> Result<(), ApiError> {
        self.change(NodeChange {
            role: Some("manager".into()),
            ..Default::default()
        })
        .await
    }

    /// Make the node a worker; refused for the last manager or when quorum would be lost.
    async fn demote(&self) -> Result<(), ApiError> {
        self.change(NodeChange {
            role: Some("worker".into()),
            ..Default::default()
        })
        .await
    }

    /// Add (or replace) the labels in `add`, then remove the keys in `remove`.
    async fn update_labels(
        &self,
        add: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<(), ApiError> {
        self.change(NodeChange {
            labels_add: add,
            labels_rm: remove,
            ..Default::default()
        })
        .await
    }

    /// Remove the node from the cluster; `force` for a node that is not down.
    async fn remove(&self, force: bool) -> Result<(), ApiError> {
        self.backend.remove_node(&self.row.id, force).await
    }

    /// Version 1 of org.shoal.Shoal1.Node. New properties may appear in later versions of
    /// this interface; existing ones keep their name, type and meaning.
    #[zbus(property(emits_changed_signal = "const"))]
    fn interface_version(&self) -> u32 {
        INTERFACE_VERSION
    }

    /// The node id.
    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> String {
        self.row.id.clone()
    }

    /// Host name of the node.
    #[zbus(property)]
    fn name(&self) -> String {
        self.row.name.clone()
    }

    /// `manager` or `worker`.
    #[zbus(property)]
    fn role(&self) -> String {
        self.row.role.clone()
    }

    /// `active`, `pause` or `drain`.
    #[zbus(property)]
    fn availability(&self) -> String {
        self.row.availability.clone()
    }

    /// `ready`, `down` or `unknown`.
    #[zbus(property)]
    fn status(&self) -> String {
        self.row.status.clone()
    }

    /// For managers `leader`, `reachable` or `unreachable`; empty for workers.
    #[zbus(property)]
    fn manager_status(&self) -> String {
        self.row.manager_status.clone()
    }

    /// The node is the raft leader.
    #[zbus(property)]
    fn leader(&self) -> bool {
        self.row.manager_status == "leader"
    }

    /// `host:port` other nodes reach it at.
    #[zbus(property)]
    fn address(&self) -> String {
        self.row.addr.clone()
    }

    /// The shoald version the node runs.
    #[zbus(property)]
    fn shoal_version(&self) -> String {
        self.row.version.clone()
    }

    /// The node's labels.
    #[zbus(property)]
    fn labels(&self) -> BTreeMap<String, String> {
        self.row.labels.clone()
    }
}

/// A service: `org.shoal.Shoal1.Service` at `/org/shoal/Shoal1/service/<name>`.
pub struct ServiceObject<B: Backend> {
    pub(super) backend: Arc<B>,
    pub(super) detail: ServiceDetail,
}

impl<B: Backend> ServiceObject<B> {
    fn update_status(&self) -> Option<&model::UpdateStatus> {
        self.detail.service.update_status.as_ref()
    }
}

#[interface(name = "org.shoal.Shoal1.Service")]
impl<B: Backend> ServiceObject<B> {
    /// Set the replica count of a replicated service.
    async fn scale(&self, replicas: u64) -> Result<(), ApiError> {
        self.backend
            .scale_service(&self.detail.service.id, replicas)
            .await
    }

    /// Apply properties (the names and types of `Spec`) onto the spec; returns the new version.
    async fn update(&self, properties: BTreeMap<String, OwnedVariant>) -> Result<u64, ApiError> {
        let list: Vec<(String, OwnedVariant)> = properties.into_iter().collect();
        let props = props::from_wire(&list)?;
        self.backend
            .update_service(&self.detail.service.id, SpecPatch(props))
            .await
    }

    /// Go back to the previous spec; returns the new version.
    async fn rollback(&self) -> Result<u64, ApiError> {
        self.backend.rollback_service(&self.detail.service.id).await
    }

    /// Remove the service; its tasks shut down afterwards.
    async fn remove(&self) -> Result<(), ApiError> {
        self.backend.remove_service(&self.detail.service.id).await
    }

    /// A file descriptor the daemon writes the service's log lines into, as `Manager.OpenLogs`.
    async fn open_logs(
        &self,
        tail: u64,
        follow: bool,
        timestamps: bool,
    ) -> Result<zbus::OwnedFd, ApiError> {
        let options = LogOptions {
            tail: (tail != TAIL_ALL).then_some(tail),
            follow,
            timestamps,
        };
        let fd = self
            .backend
            .open_logs(&self.detail.service.id, options)
            .await?;
        Ok(zbus::OwnedFd::from(fd))
    }

    /// Version 1 of org.shoal.Shoal1.Service. New properties and new keys of `Spec` may appear
    /// in later versions of this interface; existing ones keep their name, type and meaning.
    #[zbus(property(emits_changed_signal = "const"))]
    fn interface_version(&self) -> u32 {
        INTERFACE_VERSION
    }

    /// The service id.
    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> String {
        self.detail.service.id.clone()
    }

    /// The full service name (`STACK_SERVICE` for stack services).
    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        self.detail.service.spec.name.clone()
    }

    /// The owning stack; empty when none.
    #[zbus(property)]
    fn stack(&self) -> String {
        self.detail.service.spec.stack.clone().unwrap_or_default()
    }

    /// `replicated` or `global`.
    #[zbus(property)]
    fn mode(&self) -> String {
        self.detail.service.spec.mode.name().into()
    }

    /// The image reference.
    #[zbus(property)]
    fn image(&self) -> String {
        self.detail.service.spec.task.image.clone()
    }

    /// The digest the image resolved to; every task runs it. Empty when not resolved.
    #[zbus(property)]
    fn image_digest(&self) -> String {
        self.detail.service.image_digest.clone().unwrap_or_default()
    }

    /// Tasks wanted: the replicas of a replicated service, eligible nodes for a global one.
    #[zbus(property)]
    fn replicas(&self) -> u64 {
        self.detail.desired
    }

    /// Tasks of the current version that run.
    #[zbus(property)]
    fn running_replicas(&self) -> u64 {
        self.detail.running
    }

    /// The spec version, bumped by every change that affects tasks.
    #[zbus(property)]
    fn version(&self) -> u64 {
        self.detail.service.version
    }

    /// `updating`, `paused`, `completed`, `rollback_started`, `rollback_paused`,
    /// `rollback_completed`, or empty when the service was never updated.
    #[zbus(property)]
    fn update_state(&self) -> String {
        self.update_status()
            .map(|u| u.state.as_str().to_string())
            .unwrap_or_default()
    }

    /// Why the update is where it is; empty when there is nothing to say.
    #[zbus(property)]
    fn update_message(&self) -> String {
        self.update_status()
            .map(|u| u.message.clone())
            .unwrap_or_default()
    }

    /// When the current update started, in microseconds since the epoch; 0 when never.
    #[zbus(property)]
    fn update_started_timestamp(&self) -> u64 {
        self.update_status().map_or(0, |u| usec(u.started_at))
    }

    /// A previous spec exists, so `Rollback` can work.
    #[zbus(property)]
    fn can_rollback(&self) -> bool {
        self.detail.service.previous_spec.is_some()
    }

    /// Published ports: (published, target, `tcp`/`udp`, `ingress`/`host`).
    #[zbus(property)]
    fn ports(&self) -> Vec<PortRow> {
        self.detail
            .service
            .spec
            .ports
            .iter()
            .map(PortRow::from)
            .collect()
    }

    /// The whole spec, keyed by the property names `Update` and `Manager.CreateService` take.
    #[zbus(property)]
    fn spec(&self) -> HashMap<String, OwnedVariant> {
        props::spec_to_properties(&self.detail.service.spec)
            .iter()
            .map(props::Property::to_wire)
            .collect()
    }

    /// Microseconds since the epoch.
    #[zbus(property(emits_changed_signal = "const"))]
    fn created_timestamp(&self) -> u64 {
        usec(self.detail.service.created_at)
    }

    /// Microseconds since the epoch.
    #[zbus(property)]
    fn updated_timestamp(&self) -> u64 {
        usec(self.detail.service.updated_at)
    }
}

/// A stack: `org.shoal.Shoal1.Stack` at `/org/shoal/Shoal1/stack/<name>`.
pub struct StackObject<B: Backend> {
    pub(super) backend: Arc<B>,
    pub(super) row: StackEntry,
}

/// What a stack object shows: its row and the names of its services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackEntry {
    pub row: StackRow,
    pub services: Vec<String>,
}

#[interface(name = "org.shoal.Shoal1.Stack")]
impl<B: Backend> StackObject<B> {
    /// Remove the stack and its services; returns the removed service names.
    async fn remove(&self) -> Result<Vec<String>, ApiError> {
        self.backend.remove_stack(&self.row.row.name).await
    }

    /// Version 1 of org.shoal.Shoal1.Stack. New properties may appear in later versions of
    /// this interface; existing ones keep their name, type and meaning.
    #[zbus(property(emits_changed_signal = "const"))]
    fn interface_version(&self) -> u32 {
        INTERFACE_VERSION
    }

    /// The stack name.
    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        self.row.row.name.clone()
    }

    /// `cli` (deployed with `shoal stack deploy`) or `file` (owned by a stack file).
    #[zbus(property)]
    fn source(&self) -> String {
        self.row.row.source.clone()
    }

    /// The stack file of a `file` stack; empty otherwise.
    #[zbus(property)]
    fn path(&self) -> String {
        self.row.row.path.clone()
    }

    /// The objects of the stack's services.
    #[zbus(property)]
    fn services(&self) -> Vec<OwnedObjectPath> {
        self.row
            .services
            .iter()
            .map(|s| object_path(Kind::Service, s))
            .collect()
    }

    /// Microseconds since the epoch.
    #[zbus(property)]
    fn updated_timestamp(&self) -> u64 {
        usec(self.row.row.updated_at)
    }
}

/// A task: `org.shoal.Shoal1.Task` at `/org/shoal/Shoal1/task/<id>`.
pub struct TaskObject {
    pub(super) entry: TaskEntry,
}

/// What a task object shows: its row and, when it runs a healthcheck, its health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEntry {
    pub row: TaskRow,
    pub health: Option<model::TaskHealth>,
}

impl TaskObject {
    fn last_check(&self) -> Option<&model::health::CheckResult> {
        self.entry.health.as_ref()?.last.as_ref()
    }
}

#[interface(name = "org.shoal.Shoal1.Task")]
impl TaskObject {
    /// Version 1 of org.shoal.Shoal1.Task. New properties may appear in later versions of
    /// this interface; existing ones keep their name, type and meaning.
    #[zbus(property(emits_changed_signal = "const"))]
    fn interface_version(&self) -> u32 {
        INTERFACE_VERSION
    }

    /// The task id.
    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> String {
        self.entry.row.id.clone()
    }

    /// `web.2` (replicated) or `web.<node id>` (global), as docker prints it.
    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        self.entry.row.name.clone()
    }

    /// The id of the task's service.
    #[zbus(property(emits_changed_signal = "const"))]
    fn service_id(&self) -> String {
        self.entry.row.service_id.clone()
    }

    /// The full name of the task's service.
    #[zbus(property(emits_changed_signal = "const"))]
    fn service(&self) -> String {
        self.entry.row.service.clone()
    }

    /// The object of the task's service.
    #[zbus(property(emits_changed_signal = "const"))]
    fn service_path(&self) -> OwnedObjectPath {
        object_path(Kind::Service, &self.entry.row.service)
    }

    /// 1-based slot; 0 for global services.
    #[zbus(property(emits_changed_signal = "const"))]
    fn slot(&self) -> u64 {
        self.entry.row.slot
    }

    /// The node the task is assigned to; empty while unassigned.
    #[zbus(property)]
    fn node_id(&self) -> String {
        self.entry.row.node_id.clone()
    }

    /// Host name of that node; empty while unassigned.
    #[zbus(property)]
    fn node(&self) -> String {
        self.entry.row.node.clone()
    }

    /// The image reference.
    #[zbus(property(emits_changed_signal = "const"))]
    fn image(&self) -> String {
        self.entry.row.image.clone()
    }

    /// What the managers want (lowercase docker name: `running`, `shutdown`, ...).
    #[zbus(property)]
    fn desired_state(&self) -> String {
        self.entry.row.desired.clone()
    }

    /// What the node saw (lowercase docker name: `pending`, `running`, `failed`, ...).
    #[zbus(property)]
    fn current_state(&self) -> String {
        self.entry.row.state.clone()
    }

    /// When the current state was entered, in microseconds since the epoch.
    #[zbus(property)]
    fn state_timestamp(&self) -> u64 {
        usec(self.entry.row.state_since)
    }

    /// Human text for the state ("started", "pulling image").
    #[zbus(property)]
    fn message(&self) -> String {
        self.entry.row.message.clone()
    }

    /// Error text of a failed or rejected task; empty otherwise.
    #[zbus(property)]
    fn error(&self) -> String {
        self.entry.row.error.clone()
    }

    /// Exit code of the container, or -1 while it has not exited.
    #[zbus(property)]
    fn exit_code(&self) -> i32 {
        self.entry.row.exit_code
    }

    /// The service version the task was made from.
    #[zbus(property(emits_changed_signal = "const"))]
    fn service_version(&self) -> u64 {
        self.entry.row.spec_version
    }

    /// Microseconds since the epoch.
    #[zbus(property(emits_changed_signal = "const"))]
    fn created_timestamp(&self) -> u64 {
        usec(self.entry.row.created_at)
    }

    /// `starting`, `healthy` or `unhealthy` for a task that runs a healthcheck (its service's
    /// or its image's); empty otherwise.
    #[zbus(property)]
    fn health(&self) -> String {
        self.entry
            .health
            .as_ref()
            .map(|h| h.status.as_str().to_string())
            .unwrap_or_default()
    }

    /// Failed checks in a row that counted towards `retries`.
    #[zbus(property)]
    fn health_failing_streak(&self) -> u32 {
        self.entry.health.as_ref().map_or(0, |h| h.failing_streak)
    }

    /// Exit code of the last check reported (-1: it timed out or could not run, or none ran).
    #[zbus(property)]
    fn health_exit_code(&self) -> i32 {
        self.last_check().map_or(-1, |c| c.exit_code)
    }

    /// The last 4 KiB of the last check's output.
    #[zbus(property)]
    fn health_output(&self) -> String {
        self.last_check()
            .map(|c| c.output.clone())
            .unwrap_or_default()
    }

    /// When the last check reported started, in microseconds since the epoch; 0 when none.
    #[zbus(property)]
    fn health_timestamp(&self) -> u64 {
        self.last_check().map_or(0, |c| usec(c.started_at))
    }
}
