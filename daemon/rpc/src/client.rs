//! The node port's client: TLS to a peer, a small pool of open connections per peer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::RpcError;
use crate::msg::{JoinReply, JoinRequest, Request, Response};
use crate::pki::{MANAGER_NAME, NODE_NAME};
use crate::tls::{TlsState, client_config, probe_config};
use crate::wire::{self, FrameError};

/// Idle connections kept per peer.
const POOL_PER_PEER: usize = 8;

/// What the server must prove to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// A manager (its certificate names `manager.shoal`).
    Manager,
    /// Any node of the cluster.
    Node,
}

impl Target {
    fn server_name(self) -> ServerName<'static> {
        let name = match self {
            Target::Manager => MANAGER_NAME,
            Target::Node => NODE_NAME,
        };
        ServerName::try_from(name).expect("a valid DNS name")
    }
}

type Conn = TlsStream<TcpStream>;

/// A client with this node's certificate.
pub struct Client {
    tls: Arc<TlsState>,
    pool: Mutex<HashMap<(String, Target), Vec<Conn>>>,
    /// Bumped by [`Client::clear`]: a connection opened before (with the old certificate) is
    /// not put back into the pool when its call ends.
    generation: std::sync::atomic::AtomicU64,
}

impl Client {
    pub fn new(tls: Arc<TlsState>) -> Client {
        Client {
            tls,
            pool: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The TLS state this client uses.
    pub fn tls(&self) -> &Arc<TlsState> {
        &self.tls
    }

    /// Forget open connections (after this node's certificate changed).
    pub fn clear(&self) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        pool.clear();
    }

    /// Send `req` to `addr` and wait for the answer, at most `timeout` in all.
    pub async fn call(
        &self,
        addr: &str,
        target: Target,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, RpcError> {
        match tokio::time::timeout(timeout, self.call_inner(addr, target, req)).await {
            Ok(r) => r,
            Err(_) => Err(RpcError::Timeout {
                addr: addr.to_string(),
                after_ms: timeout.as_millis() as u64,
            }),
        }
    }

    async fn call_inner(
        &self,
        addr: &str,
        target: Target,
        req: &Request,
    ) -> Result<Response, RpcError> {
        let key = (addr.to_string(), target);
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        // A pooled connection may have been closed by the peer meanwhile: one retry on a new one.
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&key)
            .and_then(Vec::pop);
        if let Some(mut conn) = pooled {
            match exchange(&mut conn, addr, req).await {
                Ok(resp) => {
                    self.put_back(key, conn, generation);
                    return Ok(resp);
                }
                Err(RpcError::Closed { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut conn = connect(addr, self.tls.client(), target).await?;
        let resp = exchange(&mut conn, addr, req).await?;
        self.put_back(key, conn, generation);
        Ok(resp)
    }

    fn put_back(&self, key: (String, Target), conn: Conn, generation: u64) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
            return;
        }
        let idle = pool.entry(key).or_default();
        if idle.len() < POOL_PER_PEER {
            idle.push(conn);
        }
    }
}

async fn connect(addr: &str, cfg: Arc<ClientConfig>, target: Target) -> Result<Conn, RpcError> {
    let unreachable = |reason: String| RpcError::Unreachable {
        addr: addr.to_string(),
        reason,
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    TlsConnector::from(cfg)
        .connect(target.server_name(), tcp)
        .await
        .map_err(|e| unreachable(format!("TLS handshake failed: {e}")))
}

async fn exchange(conn: &mut Conn, addr: &str, req: &Request) -> Result<Response, RpcError> {
    let closed = |reason: String| RpcError::Closed {
        addr: addr.to_string(),
        reason,
    };
    wire::write(conn, req).await.map_err(|e| match e {
        FrameError::Encode(e) => RpcError::Protocol {
            addr: addr.to_string(),
            reason: e.to_string(),
        },
        e => closed(e.to_string()),
    })?;
    wire::read(conn).await.map_err(|e| match e {
        FrameError::Decode(e) => RpcError::Protocol {
            addr: addr.to_string(),
            reason: e.to_string(),
        },
        FrameError::TooLarge(n) => RpcError::Protocol {
            addr: addr.to_string(),
            reason: format!("answer of {n} bytes is too large"),
        },
        e => closed(e.to_string()),
    })
}

/// One request on a fresh connection with `cfg`, for the join steps.
async fn once(
    addr: &str,
    cfg: Arc<ClientConfig>,
    req: &Request,
    timeout: Duration,
) -> Result<Response, RpcError> {
    let work = async {
        let mut conn = connect(addr, cfg, Target::Manager).await?;
        exchange(&mut conn, addr, req).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(RpcError::Timeout {
                addr: addr.to_string(),
                after_ms: timeout.as_millis() as u64,
            })
        })
}

/// First join step: ask the manager at `addr` for its CA certificate and its proof for `nonce`.
/// Nothing secret is sent, and nothing received is trusted until checked against the token.
pub async fn ca_proof(
    addr: &str,
    nonce: &str,
    timeout: Duration,
) -> Result<(String, Option<String>), RpcError> {
    let req = Request::CaProof {
        nonce: nonce.to_string(),
    };
    match once(addr, probe_config(), &req, timeout).await? {
        Response::CaProof { ca_pem, proof } => Ok((ca_pem, proof)),
        Response::Error(e) => Err(RpcError::Pki(format!("{addr}: {}", e.message))),
        other => Err(unexpected(addr, &other)),
    }
}

/// Second join step: send the join request to a manager verified against `ca_pem`.
pub async fn join(
    addr: &str,
    ca_pem: &str,
    req: JoinRequest,
    timeout: Duration,
) -> Result<Result<JoinReply, crate::RemoteError>, RpcError> {
    let cfg = client_config(ca_pem, None)?;
    match once(addr, cfg, &Request::Join(req), timeout).await? {
        Response::Joined(reply) => Ok(Ok(reply)),
        Response::Error(e) => Ok(Err(e)),
        other => Err(unexpected(addr, &other)),
    }
}

/// An answer of the wrong kind.
pub fn unexpected(addr: &str, resp: &Response) -> RpcError {
    let kind = serde_json::to_value(resp)
        .ok()
        .and_then(|v| match v {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Object(m) => m.keys().next().cloned(),
            _ => None,
        })
        .unwrap_or_default();
    RpcError::Protocol {
        addr: addr.to_string(),
        reason: format!("unexpected answer {kind:?}"),
    }
}
