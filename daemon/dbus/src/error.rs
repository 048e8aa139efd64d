//! The named errors of the API.

use zbus::DBusError;

/// Errors a [`Backend`](crate::Backend) method returns; on the bus they become
/// `org.shoal.Shoal1.Error.<Variant>` with the string as the message. The message is shown to the
/// user as is: lowercase, naming the thing that failed and what to do.
#[derive(Debug, DBusError)]
#[zbus(prefix = "org.shoal.Shoal1.Error")]
pub enum ApiError {
    /// Transport errors (client side) and errors of zbus itself.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No node, service, task or stack matches the given name or id prefix.
    NotFound(String),
    /// The spec, property list, filter or stack file is invalid.
    InvalidSpec(String),
    /// A service or stack with that name exists.
    AlreadyExists(String),
    /// The call needs the raft leader and could not be forwarded to it.
    NotLeader(String),
    /// The daemon cannot serve the call now (starting up, no quorum).
    Unavailable(String),
    /// `Reload` found bad stack files; the message lists every problem, one per line, and the
    /// running state was left untouched.
    ReloadFailed(String),
    /// Anything else.
    Failed(String),
}

impl ApiError {
    /// The message without the D-Bus error name.
    pub fn message(&self) -> String {
        match self {
            ApiError::ZBus(e) => e.to_string(),
            ApiError::NotFound(m)
            | ApiError::InvalidSpec(m)
            | ApiError::AlreadyExists(m)
            | ApiError::NotLeader(m)
            | ApiError::Unavailable(m)
            | ApiError::ReloadFailed(m)
            | ApiError::Failed(m) => m.clone(),
        }
    }
}

impl From<crate::props::InvalidSpec> for ApiError {
    fn from(e: crate::props::InvalidSpec) -> Self {
        ApiError::InvalidSpec(e.to_string())
    }
}
