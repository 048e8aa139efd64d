//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while talking to containerd, a registry or an image archive.
///
/// Messages name the thing that failed and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The containerd socket could not be reached.
    #[error("cannot connect to containerd at {address}: {message} (is containerd running?)")]
    Connect { address: PathBuf, message: String },

    /// A containerd call failed.
    #[error("containerd {call} for {subject} failed: {status}")]
    Containerd {
        call: &'static str,
        subject: String,
        status: Box<tonic::Status>,
    },

    /// Something the caller named does not exist in containerd.
    #[error("{what} not found")]
    NotFound { what: String },

    /// Something the caller wanted to create exists already.
    #[error("{what} already exists (delete it first)")]
    AlreadyExists { what: String },

    /// An image reference could not be understood.
    #[error("invalid image reference {reference}: {reason}")]
    InvalidReference { reference: String, reason: String },

    /// An image archive file is missing.
    #[error("image {reference}: no such file")]
    ArchiveMissing { reference: String },

    /// An image archive (or image content) is malformed.
    #[error("image {reference}: {reason}")]
    InvalidImage { reference: String, reason: String },

    /// The registry does not have the image.
    #[error("image {reference} not found in registry")]
    NotInRegistry { reference: String },

    /// Talking to a registry failed.
    #[error(
        "cannot pull image {reference}: {message} (is the registry reachable; is it listed as insecure if it speaks plain HTTP?)"
    )]
    Registry { reference: String, message: String },

    /// The image present under a name has another digest than the one the caller pinned.
    #[error("image {reference}: wanted digest {wanted} but the source provides {found}")]
    DigestMismatch {
        reference: String,
        wanted: String,
        found: String,
    },

    /// The container configuration cannot be turned into an OCI spec.
    #[error("container {id}: {reason}")]
    InvalidConfig { id: String, reason: String },

    /// A local file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The task did not stop within the time it was given, even after SIGKILL.
    #[error("task {id} did not exit after SIGKILL within {seconds}s")]
    StopTimeout { id: String, seconds: u64 },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid_image(reference: &str, reason: impl Into<String>) -> Self {
        Error::InvalidImage {
            reference: reference.to_string(),
            reason: reason.into(),
        }
    }

    /// Turns a gRPC status into an error; `NotFound` and `AlreadyExists` become their own variants.
    pub(crate) fn grpc(
        call: &'static str,
        subject: impl Into<String>,
        status: tonic::Status,
    ) -> Self {
        let subject = subject.into();
        match status.code() {
            tonic::Code::NotFound => Error::NotFound { what: subject },
            tonic::Code::AlreadyExists => Error::AlreadyExists { what: subject },
            _ => Error::Containerd {
                call,
                subject,
                status: Box::new(status),
            },
        }
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// True for [`Error::AlreadyExists`].
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists { .. })
    }
}
