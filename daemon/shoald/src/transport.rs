//! Raft messages over the node port: the store's byte-level transport on top of `rpc::Client`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rpc::client::Target;
use rpc::{Request, Response, RpcError};
use store::{RaftTransport, RpcKind, TransportError, TransportFuture};

/// Carries raft RPCs to other managers once this node has a certificate; before that every peer
/// is unreachable (a node that has not joined has no peers).
#[derive(Default)]
pub struct RpcTransport {
    client: OnceLock<Arc<rpc::Client>>,
}

impl RpcTransport {
    /// Start using `client` (once this node has its certificate).
    pub fn set_client(&self, client: Arc<rpc::Client>) {
        let _ = self.client.set(client);
    }

    pub fn client(&self) -> Option<Arc<rpc::Client>> {
        self.client.get().cloned()
    }
}

impl RaftTransport for RpcTransport {
    fn call(
        &self,
        target: u64,
        addr: &str,
        kind: RpcKind,
        request: Vec<u8>,
        timeout: Duration,
    ) -> TransportFuture {
        let client = self.client.get().cloned();
        let addr = addr.to_string();
        Box::pin(async move {
            let Some(client) = client else {
                return Err(TransportError::Unreachable {
                    target,
                    addr,
                    reason: "this node has no certificate yet".into(),
                });
            };
            let body = String::from_utf8(request).map_err(|e| TransportError::Failed {
                target,
                reason: format!("raft request is not UTF-8: {e}"),
            })?;
            let req = Request::Raft {
                kind: kind.as_str().to_string(),
                body,
            };
            match client.call(&addr, Target::Manager, &req, timeout).await {
                Ok(Response::Raft { body }) => Ok(body.into_bytes()),
                Ok(Response::Error(e)) => Err(TransportError::Failed {
                    target,
                    reason: e.message,
                }),
                Ok(other) => Err(TransportError::Failed {
                    target,
                    reason: rpc::client::unexpected(&addr, &other).to_string(),
                }),
                Err(RpcError::Timeout { .. }) => Err(TransportError::Timeout {
                    target,
                    after: timeout,
                }),
                Err(RpcError::Unreachable { reason, .. }) => Err(TransportError::Unreachable {
                    target,
                    addr,
                    reason,
                }),
                Err(e) => Err(TransportError::Failed {
                    target,
                    reason: e.to_string(),
                }),
            }
        })
    }
}
