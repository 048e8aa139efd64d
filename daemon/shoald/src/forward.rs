//! CLI calls on any node: a follower or a worker forwards them to the leader over the node port,
//! so what a user sees after a change is never older than the change (reads go to the leader
//! too). A manager that cannot reach the leader answers reads from what it knows, and refuses
//! changes with an error that says how many managers it reaches.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use model::{NodeRole, ServiceSpec};
use rpc::{ErrorKind, Request, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shoal_dbus::{
    ApiError, Backend, ChangeReport, ClusterInfo, ImageRow, LogOptions, NodeChange, NodeRow,
    PruneReport, ServiceDetail, ServiceRow, Snapshot, SpecPatch, StackRow, TaskFilter, TaskRow,
};

use crate::backend::DaemonBackend;
use crate::daemon::Daemon;

/// How long a forwarded call may take (a deploy may pull images on the leader).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(300);

/// A CLI call as it travels to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiCall {
    Info,
    ListNodes,
    InspectNode(String),
    ListServices,
    InspectService(String),
    CreateService(Box<ServiceSpec>),
    UpdateService(String, SpecPatch),
    ScaleService(String, u64),
    RollbackService(String),
    RemoveService(String),
    ListTasks(TaskFilter),
    DeployStack(String, String),
    ListStacks,
    RemoveStack(String),
    UpdateNode(String, NodeChange),
    RemoveNode(String, bool),
    JoinToken(String, bool),
    UpdateCluster(BTreeMap<String, String>),
    ClusterDetails,
    CreateNetwork(String, BTreeMap<String, String>),
    ListNetworks,
    RemoveNetwork(String),
    LogSources(String),
    ApplyStackFiles(Vec<(String, String)>),
    CreateSecret(
        model::SecretKind,
        String,
        BTreeMap<String, String>,
        model::SecretData,
    ),
    ListSecrets(model::SecretKind),
    RemoveSecret(model::SecretKind, String),
    DeployStackWithFiles(String, String, BTreeMap<String, model::SecretData>),
    /// A follower's reload with the contents of its stacks' secret files.
    ApplyStackFilesWithSecrets(Vec<crate::backend::StackFileWire>),
    /// The state of the D-Bus object tree; the fingerprint of the state the caller has (0 for
    /// none) spares sending it again unchanged.
    Snapshot(u64),
}

impl ApiCall {
    fn changes(&self) -> bool {
        !matches!(
            self,
            ApiCall::Info
                | ApiCall::ListNodes
                | ApiCall::InspectNode(_)
                | ApiCall::ListServices
                | ApiCall::InspectService(_)
                | ApiCall::ListTasks(_)
                | ApiCall::ListStacks
                | ApiCall::ClusterDetails
                | ApiCall::ListNetworks
                | ApiCall::ListSecrets(_)
                | ApiCall::LogSources(_)
                | ApiCall::Snapshot(_)
        )
    }
}

/// An [`ApiError`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireError {
    kind: String,
    message: String,
}

fn to_wire(e: &ApiError) -> WireError {
    let kind = match e {
        ApiError::NotFound(_) => "not_found",
        ApiError::InvalidSpec(_) => "invalid_spec",
        ApiError::AlreadyExists(_) => "already_exists",
        ApiError::NotLeader(_) => "not_leader",
        ApiError::Unavailable(_) => "unavailable",
        ApiError::ReloadFailed(_) => "reload_failed",
        _ => "failed",
    };
    WireError {
        kind: kind.into(),
        message: e.message(),
    }
}

fn from_wire(w: WireError) -> ApiError {
    match w.kind.as_str() {
        "not_found" => ApiError::NotFound(w.message),
        "invalid_spec" => ApiError::InvalidSpec(w.message),
        "already_exists" => ApiError::AlreadyExists(w.message),
        "not_leader" => ApiError::NotLeader(w.message),
        "unavailable" => ApiError::Unavailable(w.message),
        "reload_failed" => ApiError::ReloadFailed(w.message),
        _ => ApiError::Failed(w.message),
    }
}

fn reply<T: Serialize>(r: Result<T, ApiError>) -> serde_json::Value {
    match r {
        Ok(v) => serde_json::json!({ "ok": v }),
        Err(e) => serde_json::json!({ "err": to_wire(&e) }),
    }
}

/// On the leader: run a forwarded call locally.
pub async fn execute(d: &Arc<Daemon>, call: serde_json::Value) -> Response {
    let call: ApiCall = match serde_json::from_value(call) {
        Ok(c) => c,
        Err(e) => {
            return Response::error(ErrorKind::Invalid, format!("invalid forwarded call: {e}"));
        }
    };
    let b = DaemonBackend(d.clone());
    let reply = match call {
        ApiCall::Info => reply(b.info().await),
        ApiCall::ListNodes => reply(b.list_nodes().await),
        ApiCall::InspectNode(n) => reply(b.inspect_node(&n).await),
        ApiCall::ListServices => reply(b.list_services().await),
        ApiCall::InspectService(s) => reply(b.inspect_service(&s).await),
        ApiCall::CreateService(spec) => reply(b.create_service(*spec).await),
        ApiCall::UpdateService(s, p) => reply(b.update_service(&s, p).await),
        ApiCall::ScaleService(s, n) => reply(b.scale_service(&s, n).await),
        ApiCall::RollbackService(s) => reply(b.rollback_service(&s).await),
        ApiCall::RemoveService(s) => reply(b.remove_service(&s).await),
        ApiCall::ListTasks(f) => reply(b.list_tasks(f).await),
        ApiCall::DeployStack(n, t) => reply(b.deploy_stack(&n, &t).await),
        ApiCall::ListStacks => reply(b.list_stacks().await),
        ApiCall::RemoveStack(n) => reply(b.remove_stack(&n).await),
        ApiCall::UpdateNode(n, c) => reply(b.update_node(&n, c).await),
        ApiCall::RemoveNode(n, f) => reply(b.remove_node(&n, f).await),
        ApiCall::JoinToken(r, rotate) => reply(b.join_token(&r, rotate).await),
        ApiCall::UpdateCluster(m) => reply(b.update_cluster(m).await),
        ApiCall::ClusterDetails => reply(b.cluster_details().await),
        ApiCall::CreateNetwork(n, o) => reply(b.create_network(&n, o).await),
        ApiCall::ListNetworks => reply(b.list_networks().await),
        ApiCall::RemoveNetwork(n) => reply(b.remove_network(&n).await),
        ApiCall::LogSources(s) => reply(b.log_sources(&s).await),
        ApiCall::ApplyStackFiles(f) => reply(
            b.apply_stack_files(
                f.into_iter()
                    .map(|(p, t)| (p, t, Default::default()))
                    .collect(),
            )
            .await,
        ),
        ApiCall::ApplyStackFilesWithSecrets(f) => reply(b.apply_stack_files(f).await),
        ApiCall::CreateSecret(k, n, l, data) => reply(b.create_secret(k, &n, l, data).await),
        ApiCall::ListSecrets(k) => reply(b.list_secrets(k).await),
        ApiCall::RemoveSecret(k, n) => reply(b.remove_secret(k, &n).await),
        ApiCall::DeployStackWithFiles(n, t, f) => reply(b.deploy_stack_with_files(&n, &t, f).await),
        ApiCall::Snapshot(known) => reply(b.snapshot().await.map(|s| SnapshotReply::new(s, known))),
    };
    Response::Api { reply }
}

/// The leader's answer to [`ApiCall::Snapshot`]: the state, left out when its fingerprint is the
/// one the caller already has.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotReply {
    fingerprint: u64,
    snapshot: Option<Snapshot>,
}

impl SnapshotReply {
    fn new(snapshot: Snapshot, known: u64) -> SnapshotReply {
        let fingerprint = fingerprint(&snapshot);
        SnapshotReply {
            fingerprint,
            snapshot: (fingerprint != known).then_some(snapshot),
        }
    }
}

/// A hash of the snapshot's wire form; never 0, which stands for "nothing known".
fn fingerprint(s: &Snapshot) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(s).unwrap_or_default().hash(&mut h);
    h.finish().max(1)
}

/// The D-Bus backend of every node: local on the leader, forwarded elsewhere.
#[derive(Clone)]
pub struct ClusterBackend(pub DaemonBackend);

impl ClusterBackend {
    fn d(&self) -> &Arc<Daemon> {
        &self.0.0
    }

    /// A follower's reload: the leader applies the files it read (and the contents of their
    /// secret files).
    pub async fn apply_stack_files(
        &self,
        files: Vec<crate::backend::StackFileWire>,
    ) -> Result<ChangeReport, ApiError> {
        if self.local() {
            return self.0.apply_stack_files(files).await;
        }
        if files.iter().all(|(_, _, m)| m.is_empty()) {
            // Understood by leaders that predate secrets.
            let plain = files.into_iter().map(|(p, t, _)| (p, t)).collect();
            return self.call(ApiCall::ApplyStackFiles(plain)).await;
        }
        self.call(ApiCall::ApplyStackFilesWithSecrets(files)).await
    }

    async fn log_sources(&self, service: &str) -> Result<Vec<crate::logs::Source>, ApiError> {
        self.read(
            ApiCall::LogSources(service.into()),
            self.0.log_sources(service),
        )
        .await
    }

    /// Whether this call runs here: on the leader always; reads on a manager that cannot
    /// reach the leader.
    fn local(&self) -> bool {
        self.d().store.is_leader()
    }

    async fn call<T: DeserializeOwned>(&self, call: ApiCall) -> Result<T, ApiError> {
        let d = self.d();
        let changes = call.changes();
        let value = serde_json::to_value(&call).map_err(|e| ApiError::Failed(e.to_string()))?;
        match d
            .leader_call(Request::Api { call: value }, FORWARD_TIMEOUT)
            .await
        {
            Ok(Response::Api { reply }) => {
                #[derive(Deserialize)]
                #[serde(rename_all = "snake_case")]
                enum Reply<T> {
                    Ok(T),
                    Err(WireError),
                }
                match serde_json::from_value::<Reply<T>>(reply) {
                    Ok(Reply::Ok(v)) => Ok(v),
                    Ok(Reply::Err(w)) => Err(from_wire(w)),
                    Err(e) => Err(ApiError::Failed(format!(
                        "invalid answer from the leader: {e}"
                    ))),
                }
            }
            Ok(Response::Error(e)) => Err(ApiError::Unavailable(e.message)),
            Ok(other) => Err(ApiError::Failed(format!(
                "unexpected answer from the leader: {other:?}"
            ))),
            Err(e) => {
                let why = d.no_leader_reason(&e.to_string()).await;
                if changes {
                    Err(ApiError::Unavailable(why))
                } else {
                    Err(ApiError::NotLeader(why))
                }
            }
        }
    }

    /// Forward a read; a manager that cannot reach the leader answers from its own state.
    async fn read<T: DeserializeOwned, F: Future<Output = Result<T, ApiError>>>(
        &self,
        call: ApiCall,
        local: F,
    ) -> Result<T, ApiError> {
        if self.local() {
            return local.await;
        }
        match self.call(call).await {
            Err(ApiError::NotLeader(_)) if self.d().role() == NodeRole::Manager => local.await,
            r => r,
        }
    }
}

macro_rules! write_call {
    ($self:ident, $call:expr, $local:expr) => {
        if $self.local() {
            $local.await
        } else {
            $self.call($call).await
        }
    };
}

impl Backend for ClusterBackend {
    async fn info(&self) -> Result<ClusterInfo, ApiError> {
        // Cheap and local: called for every property read.
        self.0.info().await
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRow>, ApiError> {
        let mut rows: Vec<NodeRow> = self.read(ApiCall::ListNodes, self.0.list_nodes()).await?;
        let me = &self.d().identity.node_id;
        for r in &mut rows {
            r.is_self = &r.id == me;
        }
        Ok(rows)
    }

    async fn inspect_node(&self, node: &str) -> Result<NodeRow, ApiError> {
        let node = if node == "self" {
            self.d().identity.node_id.clone()
        } else {
            node.to_string()
        };
        let mut row: NodeRow = self
            .read(
                ApiCall::InspectNode(node.clone()),
                self.0.inspect_node(&node),
            )
            .await?;
        row.is_self = row.id == self.d().identity.node_id;
        Ok(row)
    }

    async fn snapshot(&self) -> Result<Snapshot, ApiError> {
        let d = self.d();
        let mut s = if self.local() {
            self.0.snapshot().await?
        } else {
            let known = d
                .objects_seen
                .lock()
                .ok()
                .and_then(|c| c.as_ref().map(|(f, _)| *f))
                .unwrap_or(0);
            match self.call::<SnapshotReply>(ApiCall::Snapshot(known)).await {
                Ok(SnapshotReply {
                    fingerprint,
                    snapshot: Some(s),
                }) => {
                    if let Ok(mut c) = d.objects_seen.lock() {
                        *c = Some((fingerprint, s.clone()));
                    }
                    s
                }
                Ok(SnapshotReply {
                    fingerprint,
                    snapshot: None,
                }) => d
                    .objects_seen
                    .lock()
                    .ok()
                    .and_then(|c| c.clone())
                    .filter(|(f, _)| *f == fingerprint)
                    .map(|(_, s)| s)
                    .ok_or_else(|| {
                        ApiError::Failed("the leader's state changed meanwhile".into())
                    })?,
                Err(ApiError::NotLeader(_)) if d.role() == NodeRole::Manager => {
                    self.0.snapshot().await?
                }
                Err(e) => return Err(e),
            }
        };
        let me = &d.identity.node_id;
        for r in &mut s.nodes {
            r.is_self = &r.id == me;
        }
        Ok(s)
    }

    async fn list_services(&self) -> Result<Vec<ServiceRow>, ApiError> {
        self.read(ApiCall::ListServices, self.0.list_services())
            .await
    }

    async fn inspect_service(&self, service: &str) -> Result<ServiceDetail, ApiError> {
        self.read(
            ApiCall::InspectService(service.into()),
            self.0.inspect_service(service),
        )
        .await
    }

    async fn create_service(&self, spec: ServiceSpec) -> Result<String, ApiError> {
        write_call!(
            self,
            ApiCall::CreateService(Box::new(spec.clone())),
            self.0.create_service(spec)
        )
    }

    async fn update_service(&self, service: &str, patch: SpecPatch) -> Result<u64, ApiError> {
        write_call!(
            self,
            ApiCall::UpdateService(service.into(), patch.clone()),
            self.0.update_service(service, patch)
        )
    }

    async fn scale_service(&self, service: &str, replicas: u64) -> Result<(), ApiError> {
        write_call!(
            self,
            ApiCall::ScaleService(service.into(), replicas),
            self.0.scale_service(service, replicas)
        )
    }

    async fn rollback_service(&self, service: &str) -> Result<u64, ApiError> {
        write_call!(
            self,
            ApiCall::RollbackService(service.into()),
            self.0.rollback_service(service)
        )
    }

    async fn remove_service(&self, service: &str) -> Result<(), ApiError> {
        write_call!(
            self,
            ApiCall::RemoveService(service.into()),
            self.0.remove_service(service)
        )
    }

    async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<TaskRow>, ApiError> {
        self.read(
            ApiCall::ListTasks(filter.clone()),
            self.0.list_tasks(filter),
        )
        .await
    }

    async fn deploy_stack(&self, name: &str, text: &str) -> Result<ChangeReport, ApiError> {
        write_call!(
            self,
            ApiCall::DeployStack(name.into(), text.into()),
            self.0.deploy_stack(name, text)
        )
    }

    async fn list_stacks(&self) -> Result<Vec<StackRow>, ApiError> {
        let mut rows = self.read(ApiCall::ListStacks, self.0.list_stacks()).await?;
        // A reload that failed here (this node's stack files) is this node's to show.
        let failures = self.0.d().reload_failures();
        for row in &mut rows {
            if let Some(why) = failures.get(&row.name)
                && !row.status.starts_with("failed")
            {
                row.status = format!("failed: {why}");
            }
        }
        Ok(rows)
    }

    async fn create_network(
        &self,
        name: &str,
        options: BTreeMap<String, String>,
    ) -> Result<String, ApiError> {
        write_call!(
            self,
            ApiCall::CreateNetwork(name.into(), options.clone()),
            self.0.create_network(name, options)
        )
    }

    async fn list_networks(&self) -> Result<Vec<BTreeMap<String, String>>, ApiError> {
        self.read(ApiCall::ListNetworks, self.0.list_networks())
            .await
    }

    async fn create_secret(
        &self,
        kind: model::SecretKind,
        name: &str,
        labels: BTreeMap<String, String>,
        data: model::SecretData,
    ) -> Result<String, ApiError> {
        write_call!(
            self,
            ApiCall::CreateSecret(kind, name.into(), labels.clone(), data.clone()),
            self.0.create_secret(kind, name, labels, data)
        )
    }

    async fn list_secrets(
        &self,
        kind: model::SecretKind,
    ) -> Result<Vec<BTreeMap<String, String>>, ApiError> {
        self.read(ApiCall::ListSecrets(kind), self.0.list_secrets(kind))
            .await
    }

    async fn remove_secret(&self, kind: model::SecretKind, name: &str) -> Result<(), ApiError> {
        write_call!(
            self,
            ApiCall::RemoveSecret(kind, name.into()),
            self.0.remove_secret(kind, name)
        )
    }

    async fn deploy_stack_with_files(
        &self,
        name: &str,
        text: &str,
        files: BTreeMap<String, model::SecretData>,
    ) -> Result<ChangeReport, ApiError> {
        write_call!(
            self,
            ApiCall::DeployStackWithFiles(name.into(), text.into(), files.clone()),
            self.0.deploy_stack_with_files(name, text, files)
        )
    }

    async fn remove_network(&self, network: &str) -> Result<(), ApiError> {
        write_call!(
            self,
            ApiCall::RemoveNetwork(network.into()),
            self.0.remove_network(network)
        )
    }

    async fn remove_stack(&self, name: &str) -> Result<Vec<String>, ApiError> {
        write_call!(
            self,
            ApiCall::RemoveStack(name.into()),
            self.0.remove_stack(name)
        )
    }

    async fn reload(&self) -> Result<ChangeReport, ApiError> {
        self.0.reload().await
    }

    /// Images are per node: always this one's, never forwarded.
    async fn list_images(&self) -> Result<Vec<ImageRow>, ApiError> {
        self.0.list_images().await
    }

    async fn prune_images(&self, all: bool) -> Result<PruneReport, ApiError> {
        self.0.prune_images(all).await
    }

    async fn open_logs(&self, service: &str, options: LogOptions) -> Result<OwnedFd, ApiError> {
        // Fails here, before any pipe, when the service does not exist.
        self.log_sources(service).await?;
        let (read, write) = nix::unistd::pipe().map_err(|e| ApiError::Failed(e.to_string()))?;
        let tail = match options.tail {
            None | Some(shoal_dbus::TAIL_ALL) => None,
            Some(n) => Some(n),
        };
        let fetch = LogFetch {
            backend: self.clone(),
            service: service.to_string(),
            handle: tokio::runtime::Handle::current(),
        };
        crate::logs::spawn_writer(
            write,
            self.d().state_dir(),
            tail,
            options.follow,
            options.timestamps,
            Arc::new(fetch),
        );
        Ok(read)
    }

    async fn update_node(&self, node: &str, change: NodeChange) -> Result<(), ApiError> {
        write_call!(
            self,
            ApiCall::UpdateNode(node.into(), change.clone()),
            self.0.update_node(node, change)
        )
    }

    async fn remove_node(&self, node: &str, force: bool) -> Result<(), ApiError> {
        write_call!(
            self,
            ApiCall::RemoveNode(node.into(), force),
            self.0.remove_node(node, force)
        )
    }

    async fn join_token(&self, role: &str, rotate: bool) -> Result<String, ApiError> {
        write_call!(
            self,
            ApiCall::JoinToken(role.into(), rotate),
            self.0.join_token(role, rotate)
        )
    }

    async fn cluster_init(&self) -> Result<String, ApiError> {
        self.0.cluster_init().await
    }

    async fn cluster_join(&self, token: &str, addrs: Vec<String>) -> Result<String, ApiError> {
        self.0.cluster_join(token, addrs).await
    }

    async fn cluster_leave(&self, force: bool) -> Result<(), ApiError> {
        self.0.cluster_leave(force).await
    }

    async fn update_cluster(&self, settings: BTreeMap<String, String>) -> Result<(), ApiError> {
        write_call!(
            self,
            ApiCall::UpdateCluster(settings.clone()),
            self.0.update_cluster(settings)
        )
    }

    async fn cluster_details(&self) -> Result<BTreeMap<String, String>, ApiError> {
        // This node's own view, completed with the leader's for what only managers know.
        let mut local = self.0.cluster_details().await?;
        if !self.local()
            && self.d().in_cluster()
            && let Ok(remote) = self
                .call::<BTreeMap<String, String>>(ApiCall::ClusterDetails)
                .await
        {
            for (k, v) in remote {
                if !k.starts_with("node_") {
                    local.insert(k, v);
                }
            }
        }
        Ok(local)
    }
}

/// How a `service logs` writer thread finds the tasks and reads other nodes.
struct LogFetch {
    backend: ClusterBackend,
    service: String,
    handle: tokio::runtime::Handle,
}

impl crate::logs::Fetch for LogFetch {
    fn sources(&self) -> Result<Option<Vec<crate::logs::Source>>, String> {
        match self
            .handle
            .block_on(self.backend.log_sources(&self.service))
        {
            Ok(s) => Ok(Some(s)),
            Err(ApiError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.message()),
        }
    }

    fn remote(&self, addr: &str, q: &crate::logs::Query) -> Result<crate::logs::Reply, String> {
        let d = self.backend.d();
        let client = d
            .transport
            .client()
            .ok_or_else(|| "this node has no certificate".to_string())?;
        let query = serde_json::to_value(q).map_err(|e| e.to_string())?;
        let req = Request::Logs { query };
        let resp = self
            .handle
            .block_on(client.call(
                addr,
                rpc::client::Target::Node,
                &req,
                Duration::from_secs(30),
            ))
            .map_err(|e| e.to_string())?;
        match resp {
            Response::Logs { reply } => serde_json::from_value(reply).map_err(|e| e.to_string()),
            Response::Error(e) => Err(e.message),
            other => Err(rpc::client::unexpected(addr, &other).to_string()),
        }
    }

    fn me(&self) -> String {
        self.backend.d().identity.node_id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_snapshot_is_not_sent_again() {
        let mut s = Snapshot::default();
        s.stacks.push(shoal_dbus::StackRow {
            name: "shop".into(),
            ..Default::default()
        });
        let first = SnapshotReply::new(s.clone(), 0);
        assert!(first.snapshot.is_some(), "nothing known: the state is sent");
        let again = SnapshotReply::new(s.clone(), first.fingerprint);
        assert_eq!(again.fingerprint, first.fingerprint);
        assert!(again.snapshot.is_none(), "known and unchanged: left out");
        s.stacks[0].services = 1;
        let changed = SnapshotReply::new(s, first.fingerprint);
        assert_ne!(changed.fingerprint, first.fingerprint);
        assert!(changed.snapshot.is_some(), "changed: sent");
    }
}
