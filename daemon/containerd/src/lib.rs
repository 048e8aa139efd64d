//! shoal-containerd: the only crate that speaks containerd.
//!
//! It targets containerd 1.6 (no Transfer service), so images are pulled and imported on the
//! client side: blobs go into the content store with the same garbage-collection labels `ctr`
//! writes, layers are unpacked with `Snapshots.Prepare` + `Diff.Apply` + `Snapshots.Commit`
//! (overlayfs), and an image record points at the manifest.
//!
//! Containers get an OCI runtime spec built here ([`ContainerConfig`]); their stdout and stderr
//! go through containerd's `binary://` logging to [`run_logger`], a process the shim owns, so
//! tasks outlive the daemon that started them. A restarted daemon finds them with
//! [`Runtime::list`] and waits for them with [`Runtime::wait`].
//!
//! Entry point: [`Runtime::connect`]. A typical task:
//!
//! ```no_run
//! # async fn demo() -> shoal_containerd::Result<()> {
//! use shoal_containerd::{ContainerConfig, PullOptions, Runtime};
//! let rt = Runtime::connect("/run/containerd/containerd.sock".as_ref(), "shoal").await?;
//! let image = rt.ensure_image("localhost:5000/web:1", &PullOptions {
//!     insecure_registries: vec!["localhost:5000".into()],
//! }).await?;
//! let mut c = ContainerConfig::new("web.1.abc", image);
//! c.set_env(&["MODE=prod".to_string()]);
//! rt.create(&c).await?;
//! rt.start("web.1.abc").await?;
//! let exit = rt.wait("web.1.abc").await?;
//! rt.delete("web.1.abc").await?;
//! # let _ = exit; Ok(()) }
//! ```
//!
//! ## The log driver in `shoald`
//!
//! The shim passes the driver's arguments in arbitrary order (see [`logger`]), so `shoald`
//! must dispatch before its normal argument parsing:
//!
//! ```no_run
//! let args: Vec<String> = std::env::args().skip(1).collect();
//! if shoal_containerd::logger::is_log_driver_invocation(&args) {
//!     std::process::exit(shoal_containerd::run_logger(&args));
//! }
//! ```
//!
//! and [`LogConfig::driver`] is then the path of the `shoald` executable.

mod container;
mod content;
mod error;
mod etc;
mod events;
mod exec;
mod image;
pub mod logger;
mod reference;
mod seccomp;
mod spec;
mod time;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use tonic::transport::Channel;

pub use container::{
    ContainerConfig, ContainerState, ContainerStatus, Dns, Exit, HostEntry, LogConfig, Mount,
    MountKind, NetworkMode, Resources,
};
pub use error::{Error, Result};
pub use events::ExitEvent;
pub use exec::ExecOutput;
pub use image::{ImageConfig, ImageInfo, ImageRecord, MANAGED_LABEL, PullOptions};
pub use logger::run_logger;
pub use reference::{ImageSource, RegistryRef};
pub use spec::{
    INIT_CANDIDATES, INIT_PATH, MASKED_PATHS, READONLY_PATHS, find_init, merge_env, resolve_process,
};

/// The snapshotter every image and container uses.
pub const SNAPSHOTTER: &str = "overlayfs";

/// The runtime every task uses.
pub const RUNTIME: &str = "io.containerd.runc.v2";

/// Host directories the runtime keeps its files in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeDirs {
    /// Per-container files (`hosts`, `hostname`, `resolv.conf`) live in `run_dir/<id>/`.
    pub run_dir: PathBuf,
    /// Named volumes are the directories `volumes_dir/<name>/`.
    pub volumes_dir: PathBuf,
    /// Scratch space for unpacking image archives (removed after each import).
    pub tmp_dir: PathBuf,
}

impl Default for RuntimeDirs {
    /// `/run/shoal/containers`, `/var/lib/shoal/volumes`, `/var/lib/shoal/tmp`.
    fn default() -> Self {
        RuntimeDirs {
            run_dir: PathBuf::from("/run/shoal/containers"),
            volumes_dir: PathBuf::from("/var/lib/shoal/volumes"),
            tmp_dir: PathBuf::from("/var/lib/shoal/tmp"),
        }
    }
}

/// A connection to containerd, bound to one containerd namespace.
///
/// Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Runtime {
    channel: Channel,
    namespace: String,
    address: PathBuf,
    dirs: RuntimeDirs,
    fetches: Arc<AtomicU64>,
    /// One lock per image name, so concurrent `ensure_image` calls fetch an image once.
    image_locks: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .field("dirs", &self.dirs)
            .finish()
    }
}

impl Runtime {
    /// Connects to the containerd socket at `address` and uses `namespace` (`shoal` in
    /// production) for every call, with the default [`RuntimeDirs`].
    pub async fn connect(address: &Path, namespace: &str) -> Result<Runtime> {
        Self::connect_with_dirs(address, namespace, RuntimeDirs::default()).await
    }

    /// Like [`Runtime::connect`], with explicit host directories.
    pub async fn connect_with_dirs(
        address: &Path,
        namespace: &str,
        dirs: RuntimeDirs,
    ) -> Result<Runtime> {
        let connect_err = |message: String| Error::Connect {
            address: address.to_path_buf(),
            message,
        };
        if namespace.is_empty()
            || !namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(Error::InvalidReference {
                reference: namespace.to_string(),
                reason: "a containerd namespace uses letters, digits, '.', '_' and '-'".into(),
            });
        }
        let channel = containerd_client::connect(address)
            .await
            .map_err(|e| connect_err(error_chain(&e)))?;
        let runtime = Runtime {
            channel,
            namespace: namespace.to_string(),
            address: address.to_path_buf(),
            dirs,
            fetches: Arc::new(AtomicU64::new(0)),
            image_locks: Arc::default(),
        };
        runtime.version().await.map_err(|e| match e {
            Error::Containerd { status, .. } => connect_err(status.message().to_string()),
            other => other,
        })?;
        Ok(runtime)
    }

    /// containerd's version string, e.g. `1.6.20~ds1`.
    pub async fn version(&self) -> Result<String> {
        let resp = VersionClient::new(self.channel.clone())
            .version(())
            .await
            .map_err(|s| Error::grpc("Version", self.address.display().to_string(), s))?;
        Ok(resp.into_inner().version)
    }

    /// The containerd namespace this runtime works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The host directories this runtime uses.
    pub fn dirs(&self) -> &RuntimeDirs {
        &self.dirs
    }

    /// How many images this `Runtime` (and its clones) fetched from a registry or imported
    /// from an archive; images already present are not counted. For diagnostics and tests.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Serialises work on one image name within this runtime (and its clones).
    async fn lock_image(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.image_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            Arc::clone(locks.entry(name.to_string()).or_default())
        };
        lock.lock_owned().await
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Ok(ns) = self.namespace.parse() {
            req.metadata_mut().insert("containerd-namespace", ns);
        }
        req
    }

    fn leased<T>(&self, msg: T, lease: &str) -> tonic::Request<T> {
        let mut req = self.request(msg);
        if let Ok(l) = lease.parse() {
            req.metadata_mut().insert("containerd-lease", l);
        }
        req
    }

    fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }
    fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }
}

/// An error and its sources, joined with `: `.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let msg = src.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = src.source();
    }
    s
}
