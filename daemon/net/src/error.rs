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

    /// A task id cannot name a network namespace file or a CNI container id.
    #[error("invalid task id {id:?} for a network attachment: {reason}")]
    InvalidTaskId { id: String, reason: &'static str },

    /// A port binding handed to [`crate::Network::sync_ports`] is not valid.
    #[error("invalid published port {published}/{protocol}: {reason}")]
    InvalidPortBinding {
        published: u16,
        protocol: &'static str,
        reason: String,
    },

    /// A CNI plugin binary is not where the configuration says.
    #[error("CNI plugin {plugin} not found in {dir}: install containernetworking-plugins")]
    PluginMissing { plugin: &'static str, dir: PathBuf },

    /// A CNI plugin could not be started or talked to.
    #[error("failed to run CNI plugin {path} ({command}): {source}")]
    PluginExec {
        path: PathBuf,
        command: &'static str,
        #[source]
        source: io::Error,
    },

    /// A CNI plugin ran and reported a failure.
    #[error(
        "CNI plugin {plugin} {command} for task {task} failed: {message}: \
         fix what the plugin reports and retry"
    )]
    Plugin {
        plugin: &'static str,
        command: &'static str,
        task: String,
        message: String,
    },

    /// A CNI plugin succeeded but its result is unusable.
    #[error("CNI plugin {plugin} {command} for task {task} returned an unusable result: {reason}")]
    PluginResult {
        plugin: &'static str,
        command: &'static str,
        task: String,
        reason: String,
    },

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

    /// The `ip` command (iproute2) failed.
    #[error("ip {args} failed: {message}: install iproute2 and check the link")]
    Ip { args: String, message: String },

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
        name: &'static str,
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
