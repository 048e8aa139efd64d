//! The node port's server: TLS, peer identity, authorisation, one request at a time per
//! connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use model::NodeRole;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::msg::{Request, Response};
use crate::pki::{CertInfo, cert_info_der};
use crate::tls::TlsState;
use crate::wire;

/// At most this many connections are served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 4096;
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The verified client certificate; `None` for a node that is joining.
    pub cert: Option<CertInfo>,
}

/// What the daemon implements to answer requests.
pub trait Handler: Send + Sync + 'static {
    /// Whether a peer with a valid certificate may talk at all (a removed node may not). Called
    /// once per connection.
    fn admits(&self, cert: &CertInfo) -> bool;

    /// Answer one request. Authorisation by certificate (present, manager role for raft) is
    /// already done.
    fn handle(&self, peer: Peer, req: Request) -> impl Future<Output = Response> + Send;
}

/// Whether a request may be served to this peer. `None`: close the connection without answer.
fn authorised(cert: Option<&CertInfo>, req: &Request) -> bool {
    match req {
        Request::CaProof { .. } | Request::Join(_) => true,
        Request::Raft { .. } => cert.is_some_and(|c| c.role == NodeRole::Manager),
        _ => cert.is_some(),
    }
}

/// Serve the node port until the listener fails.
pub async fn serve<H: Handler>(listener: TcpListener, tls: Arc<TlsState>, handler: Arc<H>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = match slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let tls = tls.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            connection(tcp, addr, &tls, &*handler).await;
            drop(permit);
        });
    }
}

async fn connection<H: Handler>(tcp: TcpStream, addr: SocketAddr, tls: &TlsState, handler: &H) {
    let _ = tcp.set_nodelay(true);
    let acceptor = TlsAcceptor::from(tls.server());
    let mut stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(peer = %addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(peer = %addr, "TLS handshake timed out");
            return;
        }
    };
    let cert = match stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        None => None,
        Some(der) => match cert_info_der(der) {
            Ok(info) if handler.admits(&info) => Some(info),
            Ok(info) => {
                debug!(peer = %addr, node = %info.node_id, "certificate of a node that is not in the cluster; closing");
                return;
            }
            Err(e) => {
                debug!(peer = %addr, error = %e, "unusable client certificate; closing");
                return;
            }
        },
    };
    let peer = Peer { addr, cert };
    loop {
        let req: Request = match wire::read(&mut stream).await {
            Ok(r) => r,
            Err(wire::FrameError::Eof) => return,
            Err(e) => {
                debug!(peer = %addr, error = %e, "bad request; closing");
                return;
            }
        };
        if !authorised(peer.cert.as_ref(), &req) {
            debug!(peer = %addr, "request without the certificate it needs; closing");
            return;
        }
        let resp = handler.handle(peer.clone(), req).await;
        if let Err(e) = wire::write(&mut stream, &resp).await {
            debug!(peer = %addr, error = %e, "failed to answer; closing");
            return;
        }
    }
}
