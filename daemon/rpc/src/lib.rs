//! shoal's node-to-node protocol: the only crate that knows it.
//!
//! Every node listens on the node port (`[network] listen`, 4600/tcp) with TLS. Requests and
//! answers are JSON messages ([`Request`], [`Response`]) in length-prefixed frames ([`wire`]),
//! one request at a time per connection; [`Client`] keeps a small pool of connections per peer.
//!
//! Identity ([`pki`]): a cluster CA made at bootstrap signs one certificate per node, carrying the
//! node id (CN), its role (OU) and the cluster id (O). Every connection is mutual TLS against
//! that CA, except the two requests a node makes before it has a certificate ([`Request::CaProof`]
//! and [`Request::Join`]); a peer without a valid certificate that asks for anything else gets no
//! answer at all: the connection is closed. Manager-only requests (raft) need a manager
//! certificate; clients that talk to managers verify that the server holds one.
//!
//! Join tokens ([`token`]): `SWMTKN-1-<ca digest>-<secret>` as Swarm's, so a joining node pins
//! the CA; or a provisioning secret shared by configuration, which the manager proves it knows
//! (an HMAC over a nonce and the CA digest) before the joiner sends it.

pub mod client;
pub mod msg;
pub mod pki;
pub mod server;
pub mod tls;
pub mod token;
pub mod wire;

pub use client::Client;
pub use msg::*;
pub use pki::{CaKeys, CertInfo, NodeCert};
pub use server::{Handler, serve};
pub use tls::TlsState;
pub use token::JoinToken;

/// The errors of this crate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// The peer could not be reached (refused, no route, TLS handshake failed).
    #[error("{addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    /// No answer in time.
    #[error("{addr} did not answer within {after_ms} ms")]
    Timeout { addr: String, after_ms: u64 },
    /// The connection broke or the peer closed it without an answer (which is also what a peer
    /// does when it refuses our certificate).
    #[error("{addr} closed the connection without an answer: {reason}")]
    Closed { addr: String, reason: String },
    /// The peer answered with something we cannot read.
    #[error("{addr} sent an invalid message: {reason}")]
    Protocol { addr: String, reason: String },
    /// Certificates, keys and tokens.
    #[error("{0}")]
    Pki(String),
}
