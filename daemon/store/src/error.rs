//! The one error type of the store boundary.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while opening, driving or shutting down the replicated store.
///
/// Messages name the file or directory involved and say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation on the raft state failed.
    #[error("failed to {action} {}: {source}; check that the disk is not full and the state directory is writable", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Another process (or another `Store` in this process) holds the state directory.
    #[error("raft state at {} is in use by another shoald process; stop that process or use a different state directory", path.display())]
    Locked { path: PathBuf },

    /// A record in the middle of the log segment is damaged; recovering would lose committed
    /// entries, so the store refuses to start.
    #[error("corrupt raft log {} at byte offset {offset}: {reason}; restore the state directory from a backup, or remove it and re-join the node to the cluster", path.display())]
    CorruptLog {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    /// The vote file cannot be decoded.
    #[error("corrupt raft vote file {}: {reason}; restore it from a backup, or remove the raft directory and re-join the node to the cluster", path.display())]
    CorruptVote { path: PathBuf, reason: String },

    /// A snapshot file cannot be decoded.
    #[error("corrupt raft snapshot {}: {reason}; restore it from a backup, or remove the raft directory and re-join the node to the cluster", path.display())]
    CorruptSnapshot { path: PathBuf, reason: String },

    /// The raft configuration derived from the arguments is invalid.
    #[error("invalid raft configuration: {0}")]
    Config(String),

    /// The request needs the leader and this node is not it.
    #[error("this node is not the raft leader (leader: {}); send the request to the leader", match (leader, leader_addr) {
        (Some(id), Some(addr)) => format!("node {id} at {addr}"),
        (Some(id), None) => format!("node {id}"),
        _ => "unknown".to_string(),
    })]
    NotLeader {
        leader: Option<u64>,
        leader_addr: Option<String>,
    },

    /// Raft stopped, usually after a storage error; the log says which.
    #[error(
        "raft node stopped: {0}; see the preceding log messages for the cause and restart shoald"
    )]
    Stopped(String),

    /// Any other error reported by the raft library.
    #[error("raft request failed: {0}")]
    Raft(String),

    /// A condition was not reached in time.
    #[error(
        "timed out after {after:?} waiting for {what}; check that the node is healthy and retry"
    )]
    Timeout { what: &'static str, after: Duration },

    /// A raft RPC received from the transport could not be decoded or encoded.
    #[error(
        "invalid raft rpc {kind}: {reason}; check that all managers run the same shoal version"
    )]
    Rpc { kind: &'static str, reason: String },
}

impl StoreError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
