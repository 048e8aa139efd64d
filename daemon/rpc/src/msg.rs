//! The messages of the node port.

use std::collections::BTreeMap;

use model::{Availability, Id, NodeRole, Task, TaskStatus};
use serde::{Deserialize, Serialize};

/// What a peer asks. Everything but [`Request::CaProof`] and [`Request::Join`] needs a client
/// certificate; [`Request::Raft`] needs a manager's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// First step of a join: the CA certificate, and a proof that the manager knows the
    /// provisioning secret (an HMAC over `nonce` and the CA digest) when it has one.
    CaProof { nonce: String },
    /// Second step of a join, over a connection that verified the server against the CA.
    Join(JoinRequest),
    /// A raft message between managers: `kind` and the store's encoded request.
    Raft { kind: String, body: String },
    /// An agent's heartbeat to the dispatcher (the leader).
    Heartbeat(Heartbeat),
    /// The complete set of tasks assigned to the calling node. Answers at once when the set's
    /// version differs from `known`, otherwise when it changes or after `wait_ms`.
    Assignments { known: String, wait_ms: u64 },
    /// Observed task states from the node that runs them, in order.
    Report { reports: Vec<(Id, TaskStatus)> },
    /// A CLI call forwarded by a follower or a worker to the leader (the daemon defines the
    /// payload).
    Api { call: serde_json::Value },
    /// A new certificate for the calling node's key (renewal, or a role change).
    Renew { csr_pem: String },
    /// Log lines of tasks that ran on the answering node (the daemon defines the payload).
    Logs { query: serde_json::Value },
}

/// A node asking to join.
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The token's secret.
    pub secret: String,
    /// The role the node's configuration asks for; a worker token always yields a worker.
    pub role: NodeRole,
    pub node_id: Id,
    pub raft_id: u64,
    pub name: String,
    /// host:port other nodes reach this one at.
    pub addr: String,
    pub labels: BTreeMap<String, String>,
    pub availability: Availability,
    pub version: String,
    pub csr_pem: String,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("secret", &"<redacted>")
            .field("role", &self.role)
            .field("node_id", &self.node_id)
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// What a joined node gets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinReply {
    pub cert_pem: String,
    pub ca_pem: String,
    pub cluster_id: Id,
    pub role: NodeRole,
    /// Addresses of the managers, for the node's dispatcher sessions.
    pub managers: Vec<String>,
}

/// An agent's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub addr: String,
    pub version: String,
    /// Unix seconds at which the node's certificate expires.
    pub cert_not_after: i64,
    pub cert_not_before: i64,
    /// The node's CPUs and memory (absent from nodes of an older version).
    #[serde(default)]
    pub resources: Option<model::NodeResources>,
}

/// The dispatcher's answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Send the next heartbeat within this period.
    pub period_ms: u64,
    pub leader_id: Option<Id>,
    pub leader_addr: Option<String>,
    pub managers: Vec<String>,
    /// The node's role in the cluster state; when it differs from the certificate's, the node
    /// renews its certificate.
    pub role: NodeRole,
}

/// The complete set of tasks assigned to a node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AssignmentSet {
    /// Changes whenever the set does.
    pub version: String,
    pub tasks: Vec<Task>,
    /// What the node needs to carry its tasks' overlay traffic (absent from older managers).
    #[serde(default)]
    pub networks: model::network::NodeNetworks,
    /// The secrets and configs the node's runnable tasks use, and only those (absent from older
    /// managers). Their data is redacted from `Debug`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<model::SecretFile>,
}

/// An answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok,
    Error(RemoteError),
    CaProof {
        ca_pem: String,
        proof: Option<String>,
    },
    Joined(JoinReply),
    Raft {
        body: String,
    },
    Heartbeat(HeartbeatReply),
    Assignments(AssignmentSet),
    Api {
        reply: serde_json::Value,
    },
    Renewed {
        cert_pem: String,
    },
    Logs {
        reply: serde_json::Value,
    },
}

/// Why a request failed on the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    pub kind: ErrorKind,
    pub message: String,
    /// For [`ErrorKind::NotLeader`]: where the leader is, when known.
    #[serde(default)]
    pub leader_addr: Option<String>,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// This manager is not the leader; ask `leader_addr`.
    NotLeader,
    /// No quorum, or still starting.
    Unavailable,
    /// The token or certificate was refused.
    Refused,
    /// The request is invalid.
    Invalid,
    NotFound,
    Failed,
}

impl Response {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response::Error(RemoteError {
            kind,
            message: message.into(),
            leader_addr: None,
        })
    }

    pub fn not_leader(leader_addr: Option<String>) -> Response {
        Response::Error(RemoteError {
            kind: ErrorKind::NotLeader,
            message: match &leader_addr {
                Some(a) => format!("this manager is not the leader; the leader is at {a}"),
                None => "this manager is not the leader and knows of none".into(),
            },
            leader_addr,
        })
    }
}
