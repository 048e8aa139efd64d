//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while wiring tasks to the node network.
///
/// Every message names the thing that failed and, where there is one, what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A [`crate::NetConfig`] field has a value that cannot work.
    #[error("invalid network setting {field} = {value:?}: {reason}")]
    InvalidConfig {
        field: &'static str,
        value: String,
        reason: String,
    },

    /// A task id cannot name a network namespace file.
    #[error("invalid task id {id:?} for a network attachment: {reason}")]
    InvalidTaskId { id: String, reason: &'static str },

    /// A port binding handed to [`crate::Network::sync_ports`] is not valid.
    #[error("invalid published port {published}/{protocol}: {reason}")]
    InvalidPortBinding {
        published: u16,
        protocol: &'static str,
        reason: String,
    },

    /// The kernel refused a change of links, addresses or routes (rtnetlink).
    #[error(
        "failed to {action}: {message}: check that shoald runs as root (CAP_NET_ADMIN) and \
         nothing else manages that link"
    )]
    Netlink { action: String, message: String },

    /// Every address of the tasks' subnet is taken.
    #[error(
        "no free address in subnet {subnet}: detach tasks that no longer run or configure a \
         larger subnet"
    )]
    SubnetFull { subnet: crate::Ipv4Subnet },

    /// An attachment exists but its links, address or routes are not as they were made.
    #[error("attachment of task {task} is broken: {reason}: detach and attach the task again")]
    Broken { task: String, reason: String },

    /// The task has no usable attachment.
    #[error("task {task} is not attached to the node network: {reason}: attach it first")]
    NotAttached { task: String, reason: &'static str },

    /// The `nft` command is not installed.
    #[error("nft command not found: install nftables")]
    NftMissing,

    /// `nft` rejected a ruleset or could not run.
    #[error(
        "nft failed to {action} table ip {table}: {message}: check that nf_tables is available"
    )]
    Nft {
        action: &'static str,
        table: String,
        message: String,
    },

    /// shoal's accept rules in a forward filter that drops (Docker's) could not be written.
    #[error(
        "failed to keep shoal's accept rules in iptables' filter table: {0}: check that the \
         iptables command works, or accept shoal's bridges in the FORWARD chain by hand"
    )]
    ForwardFilter(String),

    /// A network namespace could not be created, mounted or removed.
    #[error("failed to {action} network namespace {path}: {source}")]
    Netns {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },

    /// A kernel setting could not be changed.
    #[error(
        "failed to set sysctl {name} to 1: {source}: run shoald as root with a writable /proc/sys"
    )]
    Sysctl {
        name: String,
        #[source]
        source: io::Error,
    },

    /// A file or directory of the network state could not be read or written.
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An attachment record on disk is not valid JSON.
    #[error("corrupt attachment record {path}: {source}: detach the task to remove it")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A blocking worker thread died.
    #[error("network worker thread failed: {0}")]
    Worker(String),
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
