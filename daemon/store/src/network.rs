//! Raft messages between managers, behind a transport that knows nothing about openraft.
//!
//! The store encodes each raft RPC (append entries, vote, install snapshot) as JSON bytes and
//! hands them to a [`RaftTransport`] together with the target's node id and address. The
//! transport delivers the bytes to the target's [`crate::Store::handle_rpc`] and returns that
//! call's answer bytes. A gRPC transport (the node-to-node port, mutual TLS) implements the trait
//! in its own crate; this crate stays the only one that knows openraft.
//!
//! [`NoTransport`] is the transport of a single-manager cluster: it answers every call with
//! [`TransportError::Unreachable`]. In a one-voter group raft never sends a message, so nothing
//! is lost; adding a second manager requires a real transport.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{NodeId, TypeConfig};

/// The kind of a raft RPC carried by a [`RaftTransport`]; the receiver passes it back to
/// [`crate::Store::handle_rpc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcKind {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RpcKind {
    /// Stable lowercase name, suitable for a wire field or a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            RpcKind::AppendEntries => "append_entries",
            RpcKind::Vote => "vote",
            RpcKind::InstallSnapshot => "install_snapshot",
        }
    }

    /// Inverse of [`RpcKind::as_str`].
    pub fn parse(s: &str) -> Option<RpcKind> {
        match s {
            "append_entries" => Some(RpcKind::AppendEntries),
            "vote" => Some(RpcKind::Vote),
            "install_snapshot" => Some(RpcKind::InstallSnapshot),
            _ => None,
        }
    }

    fn rpc_type(self) -> RPCTypes {
        match self {
            RpcKind::AppendEntries => RPCTypes::AppendEntries,
            RpcKind::Vote => RPCTypes::Vote,
            RpcKind::InstallSnapshot => RPCTypes::InstallSnapshot,
        }
    }
}

/// Why a transport call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The target cannot be reached now (connection refused, no route, no transport). Raft backs
    /// off before retrying.
    #[error("raft node {target} at {addr} is unreachable: {reason}")]
    Unreachable {
        target: u64,
        addr: String,
        reason: String,
    },
    /// No answer within the deadline passed to [`RaftTransport::call`].
    #[error("raft rpc to node {target} timed out after {after:?}")]
    Timeout { target: u64, after: Duration },
    /// Any other failure (the connection broke mid-call, the peer answered with an error status).
    /// Raft retries at once.
    #[error("raft rpc to node {target} failed: {reason}")]
    Failed { target: u64, reason: String },
}

/// The future a transport returns.
pub type TransportFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send>>;

/// Delivers raft RPC bytes to another manager.
pub trait RaftTransport: Send + Sync + 'static {
    /// Send `request` (opaque bytes) of `kind` to node `target`, reachable at `addr`, and return
    /// the bytes that the target's [`crate::Store::handle_rpc`] answered. Give up after
    /// `timeout`.
    fn call(
        &self,
        target: u64,
        addr: &str,
        kind: RpcKind,
        request: Vec<u8>,
        timeout: Duration,
    ) -> TransportFuture;
}

/// The transport of a single-manager cluster: every target is unreachable.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTransport;

impl RaftTransport for NoTransport {
    fn call(
        &self,
        target: u64,
        addr: &str,
        _kind: RpcKind,
        _request: Vec<u8>,
        _timeout: Duration,
    ) -> TransportFuture {
        let err = TransportError::Unreachable {
            target,
            addr: addr.to_string(),
            reason: "this manager has no raft transport (single-manager cluster)".into(),
        };
        Box::pin(async move { Err(err) })
    }
}

/// The [`RaftNetworkFactory`] handed to openraft.
pub(crate) struct Network {
    pub(crate) id: NodeId,
    pub(crate) transport: Arc<dyn RaftTransport>,
}

/// A connection to one target.
pub(crate) struct Peer {
    id: NodeId,
    target: NodeId,
    addr: String,
    transport: Arc<dyn RaftTransport>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            id: self.id,
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

impl Peer {
    /// Encode, send, decode. The answer is `Result<Resp, RaftError<_, E>>` as produced by
    /// [`crate::Store::handle_rpc`].
    async fn call<Req, Resp, E>(
        &self,
        kind: RpcKind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let bytes =
            serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let timeout = option.hard_ttl();
        let answer = self
            .transport
            .call(self.target, &self.addr, kind, bytes, timeout)
            .await
            .map_err(|e| match e {
                TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                TransportError::Timeout { after, .. } => RPCError::Timeout(Timeout {
                    action: kind.rpc_type(),
                    id: self.id,
                    target: self.target,
                    timeout: after,
                }),
                TransportError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
            })?;
        let res: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&answer)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                BasicNode::new(&self.addr),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RpcKind::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RpcKind::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RpcKind::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name() {
        for k in [
            RpcKind::AppendEntries,
            RpcKind::Vote,
            RpcKind::InstallSnapshot,
        ] {
            assert_eq!(RpcKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(RpcKind::parse("nope"), None);
    }

    #[tokio::test]
    async fn no_transport_reports_unreachable() {
        let mut peer = Peer {
            id: 1,
            target: 2,
            addr: "10.0.0.2:4600".into(),
            transport: Arc::new(NoTransport),
        };
        let req = VoteRequest::new(openraft::Vote::new(1, 1), None);
        let err = peer
            .vote(req, RPCOption::new(Duration::from_millis(100)))
            .await
            .unwrap_err();
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
        assert!(err.to_string().contains("10.0.0.2:4600"), "{err}");
    }
}
