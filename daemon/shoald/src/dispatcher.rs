//! The leader's side of the node port: joins, heartbeats, assignments, task reports, certificate
//! renewal, raft, and CLI calls forwarded by other nodes.
//!
//! Heartbeats are kept in memory on the leader (never written to raft per beat): a node's status
//! changes in the replicated state only when it goes Ready or Down. A new leader starts watching
//! from the moment it leads, so nothing is marked Down merely because it has not heard from a
//! node yet (`control::liveness`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model::{Command, Id, Node, NodeRole, NodeStatus, Task, TaskStatus};
use rpc::server::Peer;
use rpc::{
    AssignmentSet, CertInfo, ErrorKind, Handler, Heartbeat, HeartbeatReply, JoinReply, JoinRequest,
    Request, Response,
};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::daemon::{Daemon, now_ms};
use crate::{certs, forward};

/// How long an assignments request waits for a change before answering with the same set.
pub const ASSIGNMENTS_WAIT: Duration = Duration::from_secs(15);

#[derive(Default)]
struct Seen {
    /// node id -> last heartbeat (ms), on this leader.
    last: BTreeMap<Id, u64>,
    /// node id -> role in the certificate it last heartbeated with.
    cert_role: BTreeMap<Id, NodeRole>,
    /// When this node started leading (None: not leading).
    since: Option<u64>,
    /// Node status updates proposed and not yet seen applied.
    pending: BTreeMap<Id, u64>,
}

/// The dispatcher's in-memory view.
#[derive(Default)]
pub struct Dispatcher {
    seen: Mutex<Seen>,
}

impl Dispatcher {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The role a node's certificate had at its last heartbeat.
    pub fn cert_role(&self, node: &str) -> Option<NodeRole> {
        self.seen().cert_role.get(node).copied()
    }

    /// Whether `node` heartbeated within three periods.
    pub fn alive(&self, node: &str, period: u64, now: u64) -> bool {
        self.seen()
            .last
            .get(node)
            .is_some_and(|t| now.saturating_sub(*t) <= 3 * period)
    }
}

/// The node port handler of this daemon.
pub struct NodePort(pub Arc<Daemon>);

fn set_of(
    tasks: Vec<Task>,
    networks: model::network::NodeNetworks,
    secrets: Vec<model::SecretFile>,
) -> AssignmentSet {
    // Secrets never change under an id, and the tasks name the ids they use: the version
    // needs no hash of their data.
    let bytes = serde_json::to_vec(&(&tasks, &networks)).unwrap_or_default();
    let version = hex::encode(&Sha256::digest(&bytes)[..12]);
    AssignmentSet {
        version,
        tasks,
        networks,
        secrets,
    }
}

/// Every task assigned to `node` (history included: the agent stops what it must stop).
pub fn assigned_to(state: &model::ClusterState, node: &str) -> Vec<Task> {
    state.tasks_on(node).cloned().collect()
}

/// The assignment set of `node`: its tasks and its overlay plan.
pub fn assignment_set(state: &model::ClusterState, node: &str) -> AssignmentSet {
    set_of(
        assigned_to(state, node),
        state.node_networks(node),
        state.node_secret_files(node),
    )
}

impl NodePort {
    fn d(&self) -> &Daemon {
        &self.0
    }

    fn not_leader(&self) -> Response {
        Response::not_leader(self.d().store.leader_addr())
    }

    /// Serve `req` from `node` (the caller's certificate id; this node itself for in-process
    /// calls).
    pub async fn serve(&self, node: &str, cert_role: Option<NodeRole>, req: Request) -> Response {
        let d = self.d();
        match req {
            Request::CaProof { nonce } => self.ca_proof(&nonce),
            Request::Join(j) => self.join(j).await,
            Request::Raft { kind, body } => {
                let Some(kind) = store::RpcKind::parse(&kind) else {
                    return Response::error(ErrorKind::Invalid, format!("unknown raft rpc {kind}"));
                };
                match d.store.handle_rpc(kind, body.as_bytes()).await {
                    Ok(b) => Response::Raft {
                        body: String::from_utf8(b).unwrap_or_default(),
                    },
                    Err(e) => Response::error(ErrorKind::Failed, e.to_string()),
                }
            }
            Request::Heartbeat(h) if d.store.is_leader() => self.heartbeat(node, cert_role, h),
            Request::Assignments { known, wait_ms } if d.store.is_leader() => {
                self.assignments(node, &known, Duration::from_millis(wait_ms.min(60_000)))
                    .await
            }
            Request::Report { reports } if d.store.is_leader() => self.report(node, reports).await,
            Request::Renew { csr_pem } if d.store.is_leader() => self.renew(node, &csr_pem),
            Request::Api { call } if d.store.is_leader() => forward::execute(&self.0, call).await,
            Request::Logs { query } => {
                let q: crate::logs::Query = match serde_json::from_value(query) {
                    Ok(q) => q,
                    Err(e) => {
                        return Response::error(
                            ErrorKind::Invalid,
                            format!("invalid logs query: {e}"),
                        );
                    }
                };
                let dir = d.state_dir();
                match tokio::task::spawn_blocking(move || crate::logs::read_local(&dir, &q)).await {
                    Ok(reply) => Response::Logs {
                        reply: serde_json::to_value(reply).unwrap_or_default(),
                    },
                    Err(e) => Response::error(ErrorKind::Failed, e.to_string()),
                }
            }
            _ => self.not_leader(),
        }
    }

    fn ca_proof(&self, nonce: &str) -> Response {
        let st = self.d().state();
        let Some(sec) = st.security.as_ref() else {
            return Response::error(ErrorKind::Unavailable, "this manager has no cluster CA yet");
        };
        let digest = match rpc::pki::ca_digest(&sec.ca_cert_pem) {
            Ok(d) => d,
            Err(e) => return Response::error(ErrorKind::Failed, e.to_string()),
        };
        Response::CaProof {
            ca_pem: sec.ca_cert_pem.clone(),
            proof: sec
                .shared_secret
                .as_deref()
                .map(|s| rpc::token::proof(s, nonce, &digest)),
        }
    }

    async fn join(&self, j: JoinRequest) -> Response {
        let d = self.d();
        if !d.store.is_leader() {
            // A follower passes the join on to the leader over its own certificate.
            return match d
                .leader_call(Request::Join(j), Duration::from_secs(30))
                .await
            {
                Ok(r) => r,
                Err(e) => Response::error(ErrorKind::Unavailable, e.to_string()),
            };
        }
        let st = d.state();
        let Some(sec) = st.security.clone() else {
            return Response::error(ErrorKind::Unavailable, "this cluster has no CA yet");
        };
        use rpc::token::secrets_equal;
        let role = if secrets_equal(&j.secret, &sec.worker_secret) {
            NodeRole::Worker
        } else if secrets_equal(&j.secret, &sec.manager_secret) {
            NodeRole::Manager
        } else if sec
            .shared_secret
            .as_deref()
            .is_some_and(|s| secrets_equal(&j.secret, s))
        {
            j.role
        } else {
            info!(node = %j.name, addr = %j.addr, "join refused: wrong or rotated token");
            return Response::error(
                ErrorKind::Refused,
                "join token refused: it is wrong or was rotated (print the current one with `shoal cluster join-token worker` on a manager)",
            );
        };
        if let Some(existing) = st.nodes.get(&j.node_id)
            && existing.raft_id != j.raft_id
        {
            return Response::error(
                ErrorKind::Invalid,
                format!("node id {} is taken", j.node_id),
            );
        }
        let validity = Duration::from_millis(st.settings.cert_expiry);
        let cert_pem =
            match certs::issue(&sec, &j.csr_pem, &j.node_id, role, &st.cluster_id, validity) {
                Ok(c) => c,
                Err(e) => return Response::error(ErrorKind::Invalid, format!("{e:#}")),
            };
        let node = Node {
            id: j.node_id.clone(),
            raft_id: j.raft_id,
            name: j.name.clone(),
            role,
            availability: j.availability,
            status: NodeStatus::Unknown,
            labels: j.labels.clone(),
            addr: j.addr.clone(),
            last_heartbeat: now_ms(),
            version: j.version.clone(),
            status_message: "joined; waiting for its first heartbeat".into(),
            resources: Default::default(),
            ingress_addr: None,
        };
        let mut cmds = vec![Command::AddNode(node)];
        if st.nodes.contains_key(&j.node_id) {
            cmds.push(Command::UpdateNodeSpec {
                id: j.node_id.clone(),
                availability: None,
                labels: None,
                role: Some(role),
            });
        }
        match d.store.propose(Command::Batch(cmds)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Response::error(ErrorKind::Failed, e.to_string()),
            Err(e) => return Response::error(ErrorKind::Unavailable, e.to_string()),
        }
        info!(node = %j.name, id = %j.node_id, role = role.as_str(), addr = %j.addr, "node joined");
        Response::Joined(JoinReply {
            cert_pem,
            ca_pem: sec.ca_cert_pem.clone(),
            cluster_id: st.cluster_id.clone(),
            role,
            managers: manager_addrs(&d.state()),
        })
    }

    fn heartbeat(&self, node: &str, cert_role: Option<NodeRole>, h: Heartbeat) -> Response {
        let d = self.d();
        let st = d.state();
        let Some(n) = st.nodes.get(node) else {
            return Response::error(
                ErrorKind::NotFound,
                "this node is not part of the cluster (it was removed): leave and join again",
            );
        };
        let now = now_ms();
        let propose = {
            let mut seen = d.dispatcher.seen();
            seen.last.insert(node.to_string(), now);
            if let Some(r) = cert_role {
                seen.cert_role.insert(node.to_string(), r);
            }
            let stale = n.status != NodeStatus::Ready
                || n.addr != h.addr
                || n.version != h.version
                || h.resources.is_some_and(|r| r != n.resources);
            let recently = seen
                .pending
                .get(node)
                .is_some_and(|t| now.saturating_sub(*t) < 2_000);
            if stale && !recently {
                seen.pending.insert(node.to_string(), now);
                true
            } else {
                if !stale {
                    seen.pending.remove(node);
                }
                false
            }
        };
        if propose {
            let cmd = Command::UpdateNodeStatus {
                id: node.to_string(),
                status: Some(NodeStatus::Ready),
                addr: Some(h.addr.clone()),
                version: Some(h.version.clone()),
                message: Some(String::new()),
                resources: h.resources,
            };
            let d = self.0.clone();
            tokio::spawn(async move {
                if let Err(e) = d.store.propose(cmd).await {
                    debug!(error = %e, "failed to record a node as ready");
                }
            });
        }
        Response::Heartbeat(HeartbeatReply {
            period_ms: st.settings.heartbeat_period,
            leader_id: Some(d.identity.node_id.clone()),
            leader_addr: Some(d.addr.clone()),
            managers: manager_addrs(&st),
            role: n.role,
        })
    }

    async fn assignments(&self, node: &str, known: &str, wait: Duration) -> Response {
        let d = self.d();
        let mut rx = d.store.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Clone the Arc first: holding the watch borrow while serializing would block the
            // state machine from publishing the next state.
            let state = rx.borrow_and_update().clone();
            let set = assignment_set(&state, node);
            if set.version != known || !d.store.is_leader() {
                return Response::Assignments(set);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Response::Assignments(set) },
                _ = tokio::time::sleep_until(deadline) => return Response::Assignments(set),
            }
        }
    }

    async fn report(&self, node: &str, reports: Vec<(Id, TaskStatus)>) -> Response {
        let cmds = reports
            .into_iter()
            .map(|(task_id, status)| Command::UpdateTaskStatus {
                task_id,
                node_id: node.to_string(),
                status,
            })
            .collect();
        match self.d().store.propose(Command::Batch(cmds)).await {
            Ok(_) => Response::Ok,
            Err(e) => Response::error(ErrorKind::Unavailable, e.to_string()),
        }
    }

    fn renew(&self, node: &str, csr: &str) -> Response {
        let st = self.d().state();
        let (Some(sec), Some(n)) = (st.security.as_ref(), st.nodes.get(node)) else {
            return Response::error(ErrorKind::NotFound, "node not in the cluster");
        };
        let validity = Duration::from_millis(st.settings.cert_expiry);
        match certs::issue(sec, csr, node, n.role, &st.cluster_id, validity) {
            Ok(cert_pem) => Response::Renewed { cert_pem },
            Err(e) => Response::error(ErrorKind::Invalid, format!("{e:#}")),
        }
    }
}

impl Handler for NodePort {
    fn admits(&self, cert: &CertInfo) -> bool {
        let d = self.d();
        if cert.cluster_id != d.cluster_id() {
            return false;
        }
        // Managers know every node: a removed node's certificate is refused. Workers have no
        // state; the TLS layer already checked the certificate against the cluster CA.
        let st = d.state();
        st.nodes.is_empty() || st.nodes.contains_key(&cert.node_id)
    }

    async fn handle(&self, peer: Peer, req: Request) -> Response {
        let (node, role) = match &peer.cert {
            Some(c) => (c.node_id.clone(), Some(c.role)),
            None => (String::new(), None),
        };
        self.serve(&node, role, req).await
    }
}

/// Addresses of the managers in the state.
pub fn manager_addrs(st: &model::ClusterState) -> Vec<String> {
    let mut v: Vec<String> = st
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager && !n.addr.is_empty())
        .map(|n| n.addr.clone())
        .collect();
    v.sort();
    v
}

/// On the leader: mark nodes Down after three missed heartbeats, and Ready again.
pub async fn run_liveness(d: Arc<Daemon>) {
    loop {
        let period = d.state().settings.heartbeat_period.max(100);
        tokio::time::sleep(Duration::from_millis(period / 2)).await;
        if !d.store.is_leader() {
            let mut seen = d.dispatcher.seen();
            seen.since = None;
            seen.last.clear();
            continue;
        }
        let now = now_ms();
        let (since, last) = {
            let mut seen = d.dispatcher.seen();
            let since = *seen.since.get_or_insert(now);
            // This node heartbeats to itself in-process; count it as seen.
            seen.last.insert(d.identity.node_id.clone(), now);
            (since, seen.last.clone())
        };
        let st = d.state();
        let cmds = control::liveness(&st, &last, since, period, now);
        if !cmds.is_empty() {
            for c in &cmds {
                if let Command::UpdateNodeStatus {
                    id,
                    status: Some(s),
                    ..
                } = c
                {
                    let name = st.nodes.get(id).map(|n| n.name.clone()).unwrap_or_default();
                    info!(node = %name, id = %id, status = s.as_str(), "node status changed");
                }
            }
            if let Err(e) = d.store.propose(Command::Batch(cmds)).await {
                warn!(error = %e, "failed to record node status changes");
            }
        }
    }
}

/// On the leader: keep the raft voters in line with the managers of the cluster state (add a
/// promoted or joined manager once it heartbeats with a manager certificate, remove a demoted
/// or removed one, fix a member's address).
pub async fn run_membership(d: Arc<Daemon>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !d.store.is_leader() {
            continue;
        }
        let st = d.state();
        let m = d.store.membership();
        let now = now_ms();
        let period = st.settings.heartbeat_period.max(100);
        for n in st.nodes.values() {
            if n.role != NodeRole::Manager || m.voters.contains_key(&n.raft_id) {
                continue;
            }
            let ready = n.id == d.identity.node_id
                || (d.dispatcher.cert_role(&n.id) == Some(NodeRole::Manager)
                    && d.dispatcher.alive(&n.id, period, now));
            if !ready {
                debug!(node = %n.name, cert_role = ?d.dispatcher.cert_role(&n.id), alive = d.dispatcher.alive(&n.id, period, now), "manager not in the raft group yet");
                continue;
            }
            info!(node = %n.name, raft_id = n.raft_id, addr = %n.addr, "adding a manager to the raft group");
            match tokio::time::timeout(
                Duration::from_secs(60),
                d.store.add_voter(n.raft_id, &n.addr),
            )
            .await
            {
                Ok(Ok(())) => info!(node = %n.name, "manager joined the raft group"),
                Ok(Err(e)) => {
                    warn!(node = %n.name, error = %e, "failed to add a manager to the raft group")
                }
                Err(_) => warn!(node = %n.name, "adding a manager to the raft group timed out"),
            }
        }
        for (rid, addr) in &m.voters {
            let node = st.nodes.values().find(|n| n.raft_id == *rid);
            match node {
                Some(n) if n.role == NodeRole::Manager => {
                    if !n.addr.is_empty()
                        && n.addr != *addr
                        && let Err(e) = d.store.set_member_addr(*rid, &n.addr).await
                    {
                        warn!(node = %n.name, error = %e, "failed to update a manager's raft address");
                    }
                }
                // Demoted or removed: no longer a voter (never the last one).
                _ if m.voters.len() > 1 && !st.nodes.is_empty() => {
                    info!(
                        raft_id = rid,
                        "removing a former manager from the raft group"
                    );
                    if let Err(e) = d.store.remove_member(*rid).await {
                        warn!(raft_id = rid, error = %e, "failed to remove a former manager from the raft group");
                    }
                }
                _ => {}
            }
        }
        for rid in m.learners.keys() {
            let is_manager = st
                .nodes
                .values()
                .any(|n| n.raft_id == *rid && n.role == NodeRole::Manager);
            if !is_manager {
                let _ = d.store.remove_member(*rid).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{Command, Secret, SecretData, SecretKind, SecretRef, TaskState, TaskStatus};

    fn task(id: &str, node: &str, secret: Option<&str>) -> Task {
        let mut spec = model::TaskSpec::default();
        if let Some(s) = secret {
            spec.secrets.push(SecretRef {
                id: s.into(),
                ..SecretRef::new(SecretKind::Secret, s)
            });
        }
        Task {
            id: id.into(),
            service_id: "svc".into(),
            service_name: "svc".into(),
            slot: 1,
            node_id: Some(node.into()),
            spec_version: 1,
            spec,
            image_digest: None,
            ports: vec![],
            desired: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Assigned,
                ..Default::default()
            },
            created_at: 0,
            not_before: None,
            restart_attempt: 0,
            started_at: None,
            networks: vec![],
        }
    }

    #[test]
    fn a_node_gets_only_the_secrets_of_its_tasks_and_debug_never_shows_them() {
        let mut st = model::ClusterState::default();
        st.apply(&Command::CreateSecret {
            kind: SecretKind::Secret,
            secret: Secret {
                id: "pw".into(),
                name: "pw".into(),
                labels: Default::default(),
                data: SecretData::new(b"hunter2".to_vec()),
                digest: String::new(),
                created_at: 1,
                stack: None,
            },
        })
        .unwrap();
        st.tasks.insert("t1".into(), task("t1", "n1", Some("pw")));
        st.tasks.insert("t2".into(), task("t2", "n2", None));
        st.rebuild_index();
        let n1 = assignment_set(&st, "n1");
        assert_eq!(n1.secrets.len(), 1);
        assert_eq!(n1.secrets[0].data.expose(), b"hunter2");
        let shown = format!("{n1:?} {:?}", rpc::Response::Assignments(n1.clone()));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(assignment_set(&st, "n2").secrets.is_empty());
        // A task that is no longer meant to run does not bring the secret along.
        let mut done = task("t1", "n1", Some("pw"));
        done.desired = TaskState::Shutdown;
        st.tasks.insert("t1".into(), done);
        st.rebuild_index();
        assert!(assignment_set(&st, "n1").secrets.is_empty());
    }
}
