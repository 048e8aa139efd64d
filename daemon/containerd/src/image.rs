//! Images: client-side pulls and archive imports into containerd 1.6, and unpacking.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, DeleteImageRequest, GetImageRequest, Image,
    ListImagesRequest, UpdateImageRequest,
};
use containerd_client::types::Descriptor;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::content::{BlobData, unique};
use crate::error::{Error, Result};
use crate::reference::{ImageSource, RegistryRef};
use crate::{Runtime, SNAPSHOTTER, error_chain};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Label on image records made from archives: identifies the archive file the image came from.
const SOURCE_STAMP_LABEL: &str = "io.shoal.source.stamp";

/// Label on every image record shoal writes (its pulls and imports): only such records are ever
/// removed by shoal ([`Runtime::remove_image`] callers check [`ImageRecord::managed`]).
pub const MANAGED_LABEL: &str = "io.shoal.managed";

/// An image record in shoal's containerd namespace, as [`Runtime::list_images`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// The record's name, e.g. `localhost:5000/bb:1` or `localhost:5000/bb@sha256:...`.
    pub name: String,
    /// The digest the record points at (the platform manifest, for records shoal wrote).
    pub digest: String,
    /// When the record was created on this node (pulled or imported).
    pub created: std::time::SystemTime,
    /// Written by shoal (it carries [`MANAGED_LABEL`]).
    pub managed: bool,
    /// The content the image consists of: manifest, config and layers, with their sizes in
    /// bytes (compressed, as stored). Empty when the content is missing.
    pub blobs: Vec<(String, u64)>,
}

impl ImageRecord {
    /// Bytes of content the image consists of.
    pub fn size(&self) -> u64 {
        self.blobs.iter().map(|(_, n)| n).sum()
    }
}

/// How to reach registries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullOptions {
    /// Registries (`host:port`) spoken to over plain HTTP instead of HTTPS.
    pub insecure_registries: Vec<String>,
}

/// The parts of an image's config that decide how its process runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// Empty means `/`.
    pub working_dir: String,
    /// Empty means root.
    pub user: String,
    /// The image's HEALTHCHECK (Docker puts it in the config's `Healthcheck`).
    #[serde(default)]
    pub healthcheck: Option<model::Healthcheck>,
}

/// An image present in containerd, ready to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The name of the image record, e.g. `localhost:5000/bb:1` or `oci-archive:/x.tar`.
    pub name: String,
    /// The manifest digest (`sha256:...`) of the platform image.
    pub digest: String,
    pub config: ImageConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Desc {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    annotations: HashMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Option<Vec<Desc>>,
    #[serde(default)]
    manifests: Option<Vec<Desc>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    #[serde(default)]
    config: Option<RawProcessConfig>,
    #[serde(default)]
    rootfs: Option<RawRootfs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawProcessConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    healthcheck: Option<RawHealthcheck>,
}

/// Docker's `config.Healthcheck`: durations in nanoseconds.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawHealthcheck {
    #[serde(default)]
    test: Option<Vec<String>>,
    #[serde(default)]
    interval: Option<i64>,
    #[serde(default)]
    timeout: Option<i64>,
    #[serde(default)]
    start_period: Option<i64>,
    #[serde(default)]
    start_interval: Option<i64>,
    #[serde(default)]
    retries: Option<i64>,
}

impl RawHealthcheck {
    /// The model's form; a test that is not one of Docker's forms is dropped (no check).
    fn to_model(&self) -> Option<model::Healthcheck> {
        let ms = |ns: Option<i64>| ns.map_or(0, |n| (n.max(0) / 1_000_000) as u64);
        let test = self.test.clone().unwrap_or_default();
        model::health::check_test(&test).ok()?;
        Some(model::Healthcheck {
            test,
            interval: ms(self.interval),
            timeout: ms(self.timeout),
            start_period: ms(self.start_period),
            start_interval: ms(self.start_interval),
            retries: self
                .retries
                .map_or(0, |r| r.clamp(0, i64::from(u32::MAX)) as u32),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// A manifest resolved down to its config and layers.
#[derive(Debug, Clone)]
pub(crate) struct LoadedImage {
    pub manifest_digest: String,
    pub layers: Vec<Desc>,
    pub diff_ids: Vec<String>,
    pub config: ImageConfig,
}

impl LoadedImage {
    /// The chain id of the top layer: the snapshot containers start from.
    pub fn top_chain(&self) -> String {
        chain_ids(&self.diff_ids).pop().unwrap_or_default()
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// chain(0) = diff(0); chain(n) = sha256(chain(n-1) + " " + diff(n)).
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn is_index(media_type: &str, raw: &RawManifest) -> bool {
    media_type == OCI_INDEX
        || media_type == DOCKER_LIST
        || (raw.manifests.is_some() && raw.layers.is_none())
}

/// The host platform in OCI terms.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Picks the manifest for this host (linux, this architecture) from an index.
fn pick_platform(reference: &str, manifests: &[Desc]) -> Result<Desc> {
    let arch = host_arch();
    manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .or_else(|| manifests.iter().find(|d| d.platform.is_none()))
        .cloned()
        .ok_or_else(|| {
            Error::invalid_image(
                reference,
                format!("the image index has no manifest for linux/{arch}"),
            )
        })
}

fn parse_manifest(reference: &str, bytes: &[u8]) -> Result<RawManifest> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid_image(reference, format!("malformed manifest: {e}")))
}

fn parse_config(reference: &str, bytes: &[u8]) -> Result<(ImageConfig, Vec<String>)> {
    let raw: RawConfig = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid_image(reference, format!("malformed image config: {e}")))?;
    let p = raw.config.unwrap_or_default();
    let config = ImageConfig {
        env: p.env.unwrap_or_default(),
        entrypoint: p.entrypoint.filter(|v| !v.is_empty()),
        cmd: p.cmd.filter(|v| !v.is_empty()),
        working_dir: p.working_dir.unwrap_or_default(),
        user: p.user.unwrap_or_default(),
        healthcheck: p.healthcheck.as_ref().and_then(RawHealthcheck::to_model),
    };
    Ok((config, raw.rootfs.unwrap_or_default().diff_ids))
}

fn manifest_parts(reference: &str, raw: &RawManifest) -> Result<(Desc, Vec<Desc>)> {
    let config = raw
        .config
        .clone()
        .ok_or_else(|| Error::invalid_image(reference, "the manifest has no config"))?;
    Ok((config, raw.layers.clone().unwrap_or_default()))
}

/// GC labels of a manifest: it keeps its config and layers alive.
fn manifest_labels(config: &Desc, layers: &[Desc]) -> HashMap<String, String> {
    let mut labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        config.digest.clone(),
    )]);
    for (i, l) in layers.iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    labels
}

fn config_labels(diff_ids: &[String]) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    if let Some(top) = chain_ids(diff_ids).pop() {
        labels.insert(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top);
    }
    labels
}

fn layer_labels(diff_id: &str) -> HashMap<String, String> {
    HashMap::from([(
        "containerd.io/uncompressed".to_string(),
        diff_id.to_string(),
    )])
}

fn descriptor(d: &Desc) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: HashMap::new(),
    }
}

/// Identifies an archive file's contents cheaply: size, modification time and inode.
fn archive_stamp(reference: &str, path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::ArchiveMissing {
                reference: reference.to_string(),
            }
        } else {
            Error::io("cannot read image archive", path, e)
        }
    })?;
    if !md.is_file() {
        return Err(Error::invalid_image(reference, "not a regular file"));
    }
    Ok(format!(
        "{}:{}.{}:{}",
        md.size(),
        md.mtime(),
        md.mtime_nsec(),
        md.ino()
    ))
}

impl Runtime {
    /// Makes sure the image named by `reference` is in containerd and unpacked, and describes it.
    ///
    /// `reference` is a registry reference (`localhost:5000/bb:1`, `busybox` meaning
    /// `docker.io/library/busybox:latest`), `docker-archive:/path` or `oci-archive:/path`.
    /// An image already present is not fetched again; an archive is imported again only when the
    /// file changed (size, modification time or inode).
    pub async fn ensure_image(&self, reference: &str, opts: &PullOptions) -> Result<ImageInfo> {
        let source = ImageSource::parse(reference)?;
        let name = source.name();
        let _guard = self.lock_image(&name).await;
        match &source {
            ImageSource::Registry(r) => {
                if let Some(info) = self.present_image(&name, None).await? {
                    return Ok(info);
                }
                self.pull(reference, r, opts, &name).await
            }
            ImageSource::DockerArchive(path) | ImageSource::OciArchive(path) => {
                let stamp = archive_stamp(reference, path)?;
                if let Some(info) = self.present_image(&name, Some(&stamp)).await? {
                    return Ok(info);
                }
                let docker = matches!(source, ImageSource::DockerArchive(_));
                self.import_archive(reference, path, docker, &name, &stamp)
                    .await
            }
        }
    }

    /// Makes sure the image `reference` at manifest `digest` is present, so that every task of a
    /// service runs the same image even after the tag moved.
    ///
    /// The image is recorded as `<name>@<digest>`. Registry images are pulled by digest when
    /// missing; an archive must still contain that digest, or [`Error::DigestMismatch`] results.
    pub async fn ensure_image_pinned(
        &self,
        reference: &str,
        digest: &str,
        opts: &PullOptions,
    ) -> Result<ImageInfo> {
        let source = ImageSource::parse(reference)?;
        let pinned_name = match &source {
            ImageSource::Registry(r) => r.with_digest(digest).name(),
            other => format!("{}@{digest}", other.name()),
        };
        let guard = self.lock_image(&pinned_name).await;
        if let Some(info) = self.present_image(&pinned_name, None).await? {
            return Ok(info);
        }
        // The content may be here under another name (pulled by tag): just record and unpack it.
        if self.blob_exists(digest).await?
            && let Ok(loaded) = self.load_image(reference, digest).await
        {
            let lease = self.create_lease("pin").await?;
            let result = async {
                self.unpack(reference, &loaded, &lease).await?;
                self.put_image(&pinned_name, digest, OCI_MANIFEST, HashMap::new())
                    .await
            }
            .await;
            self.delete_lease(&lease).await;
            result?;
            return Ok(ImageInfo {
                name: pinned_name,
                digest: digest.to_string(),
                config: loaded.config,
            });
        }
        match &source {
            ImageSource::Registry(r) => {
                self.pull(reference, &r.with_digest(digest), opts, &pinned_name)
                    .await
            }
            _ => {
                drop(guard);
                let info = self.ensure_image(reference, opts).await?;
                if info.digest != digest {
                    return Err(Error::DigestMismatch {
                        reference: reference.to_string(),
                        wanted: digest.to_string(),
                        found: info.digest,
                    });
                }
                self.put_image(&pinned_name, digest, OCI_MANIFEST, HashMap::new())
                    .await?;
                Ok(ImageInfo {
                    name: pinned_name,
                    ..info
                })
            }
        }
    }

    /// The image record `name` if it exists, is unpacked, and (for archives) has `stamp`.
    async fn present_image(&self, name: &str, stamp: Option<&str>) -> Result<Option<ImageInfo>> {
        let image = match self
            .images()
            .get(self.request(GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(resp) => resp.into_inner().image,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(Error::grpc("Images.Get", format!("image {name}"), s)),
        };
        let Some(image) = image else { return Ok(None) };
        if let Some(stamp) = stamp
            && image.labels.get(SOURCE_STAMP_LABEL).map(String::as_str) != Some(stamp)
        {
            return Ok(None);
        }
        let Some(target) = image.target else {
            return Ok(None);
        };
        let loaded = match self.load_image(name, &target.digest).await {
            Ok(l) => l,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        if !self.snapshot_exists(&loaded.top_chain()).await? {
            let all_layers = {
                let mut ok = true;
                for l in &loaded.layers {
                    ok &= self.blob_exists(&l.digest).await?;
                }
                ok
            };
            if !all_layers {
                return Ok(None);
            }
            let lease = self.create_lease("unpack").await?;
            let result = self.unpack(name, &loaded, &lease).await;
            self.delete_lease(&lease).await;
            result?;
        }
        Ok(Some(ImageInfo {
            name: name.to_string(),
            digest: loaded.manifest_digest,
            config: loaded.config,
        }))
    }

    /// Reads a manifest (resolving an index to this platform) and its config from the content
    /// store.
    pub(crate) async fn load_image(&self, reference: &str, digest: &str) -> Result<LoadedImage> {
        let mut digest = digest.to_string();
        let mut bytes = self.read_blob(&digest).await?;
        let mut raw = parse_manifest(reference, &bytes)?;
        if is_index(raw.media_type.as_deref().unwrap_or(""), &raw) {
            let chosen = pick_platform(reference, raw.manifests.as_deref().unwrap_or(&[]))?;
            digest = chosen.digest;
            bytes = self.read_blob(&digest).await?;
            raw = parse_manifest(reference, &bytes)?;
        }
        let (config_desc, layers) = manifest_parts(reference, &raw)?;
        let config_bytes = self.read_blob(&config_desc.digest).await?;
        let (config, diff_ids) = parse_config(reference, &config_bytes)?;
        if diff_ids.len() != layers.len() {
            return Err(Error::invalid_image(
                reference,
                format!(
                    "the manifest lists {} layers but the config {} diff ids",
                    layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        Ok(LoadedImage {
            manifest_digest: digest,
            layers,
            diff_ids,
            config,
        })
    }

    pub(crate) async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        match self
            .snapshots()
            .stat(self.request(StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(Error::grpc("Snapshots.Stat", format!("snapshot {key}"), s)),
        }
    }

    /// Unpacks the layers into committed overlayfs snapshots named by their chain ids.
    async fn unpack(&self, reference: &str, image: &LoadedImage, lease: &str) -> Result<()> {
        let chains = chain_ids(&image.diff_ids);
        for (i, layer) in image.layers.iter().enumerate() {
            if self.snapshot_exists(&chains[i]).await? {
                continue;
            }
            let parent = if i == 0 {
                String::new()
            } else {
                chains[i - 1].clone()
            };
            let key = unique("shoal-extract");
            let mounts = self
                .snapshots()
                .prepare(self.leased(
                    PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: key.clone(),
                        parent,
                        labels: HashMap::new(),
                    },
                    lease,
                ))
                .await
                .map_err(|s| {
                    Error::grpc("Snapshots.Prepare", format!("layer {}", layer.digest), s)
                })?
                .into_inner()
                .mounts;
            let applied = self
                .diff()
                .apply(self.leased(
                    ApplyRequest {
                        diff: Some(descriptor(layer)),
                        mounts,
                        payloads: HashMap::new(),
                        sync_fs: false,
                    },
                    lease,
                ))
                .await;
            let result = match applied {
                Err(s) => Err(Error::grpc(
                    "Diff.Apply",
                    format!("layer {}", layer.digest),
                    s,
                )),
                Ok(resp) => {
                    let got = resp
                        .into_inner()
                        .applied
                        .map(|d| d.digest)
                        .unwrap_or_default();
                    if got != image.diff_ids[i] {
                        Err(Error::invalid_image(
                            reference,
                            format!(
                                "layer {} unpacks to {got} but the config says {}",
                                layer.digest, image.diff_ids[i]
                            ),
                        ))
                    } else {
                        match self
                            .snapshots()
                            .commit(self.leased(
                                CommitSnapshotRequest {
                                    snapshotter: SNAPSHOTTER.into(),
                                    name: chains[i].clone(),
                                    key: key.clone(),
                                    labels: HashMap::new(),
                                },
                                lease,
                            ))
                            .await
                        {
                            Ok(_) => Ok(true),
                            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(false),
                            Err(s) => Err(Error::grpc(
                                "Snapshots.Commit",
                                format!("layer {}", layer.digest),
                                s,
                            )),
                        }
                    }
                }
            };
            if !matches!(result, Ok(true)) {
                let _ = self
                    .snapshots()
                    .remove(self.request(RemoveSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: key.clone(),
                    }))
                    .await;
            }
            result?;
        }
        Ok(())
    }

    /// Every image record in the namespace, sorted by name. An image whose content cannot be
    /// read is listed with no blobs.
    pub async fn list_images(&self) -> Result<Vec<ImageRecord>> {
        let images = self
            .images()
            .list(self.request(ListImagesRequest {
                filters: Vec::new(),
            }))
            .await
            .map_err(|s| Error::grpc("Images.List", format!("namespace {}", self.namespace), s))?
            .into_inner()
            .images;
        let mut out = Vec::with_capacity(images.len());
        for image in images {
            let Some(target) = image.target else { continue };
            let blobs = match self.image_blobs(&image.name, &target.digest).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => Vec::new(),
                Err(Error::InvalidImage { .. }) => Vec::new(),
                Err(e) => return Err(e),
            };
            out.push(ImageRecord {
                managed: image.labels.get(MANAGED_LABEL).map(String::as_str) == Some("true"),
                created: crate::time::from_timestamp(image.created_at.as_ref()),
                name: image.name,
                digest: target.digest,
                blobs,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The blobs an image record's target consists of (index, manifest, config, layers).
    async fn image_blobs(&self, name: &str, digest: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut digest = digest.to_string();
        let mut bytes = self.read_blob(&digest).await?;
        let mut raw = parse_manifest(name, &bytes)?;
        if is_index(raw.media_type.as_deref().unwrap_or(""), &raw) {
            out.push((digest.clone(), bytes.len() as u64));
            digest = pick_platform(name, raw.manifests.as_deref().unwrap_or(&[]))?.digest;
            bytes = self.read_blob(&digest).await?;
            raw = parse_manifest(name, &bytes)?;
        }
        out.push((digest, bytes.len() as u64));
        let (config, layers) = manifest_parts(name, &raw)?;
        for d in std::iter::once(&config).chain(&layers) {
            out.push((d.digest.clone(), d.size.max(0) as u64));
        }
        Ok(out)
    }

    /// Delete the image record `name` and wait for containerd's garbage collection, which frees
    /// its content and unpacked layers unless another image or a container still uses them.
    /// Returns false when there was no such record.
    pub async fn remove_image(&self, name: &str) -> Result<bool> {
        match self
            .images()
            .delete(self.request(DeleteImageRequest {
                name: name.to_string(),
                sync: true,
                target: None,
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(Error::grpc("Images.Delete", format!("image {name}"), s)),
        }
    }

    /// Creates or replaces the image record `name`, marked as shoal's ([`MANAGED_LABEL`]).
    async fn put_image(
        &self,
        name: &str,
        digest: &str,
        media_type: &str,
        mut labels: HashMap<String, String>,
    ) -> Result<()> {
        labels.insert(MANAGED_LABEL.to_string(), "true".to_string());
        let size = self
            .content()
            .info(self.request(containerd_client::services::v1::InfoRequest {
                digest: digest.to_string(),
            }))
            .await
            .map_err(|s| Error::grpc("Content.Info", format!("blob {digest}"), s))?
            .into_inner()
            .info
            .map(|i| i.size)
            .unwrap_or_default();
        let image = Image {
            name: name.to_string(),
            labels,
            target: Some(Descriptor {
                media_type: media_type.to_string(),
                digest: digest.to_string(),
                size,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        match self
            .images()
            .create(self.request(CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => self
                .images()
                .update(self.request(UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                }))
                .await
                .map(|_| ())
                .map_err(|s| Error::grpc("Images.Update", format!("image {name}"), s)),
            Err(s) => Err(Error::grpc("Images.Create", format!("image {name}"), s)),
        }
    }

    /// Writes config and manifest (layers must be written already), unpacks and records the image.
    #[allow(clippy::too_many_arguments)]
    async fn finish_image(
        &self,
        reference: &str,
        name: &str,
        lease: &str,
        manifest_bytes: Vec<u8>,
        manifest_media_type: &str,
        config_desc: &Desc,
        config_bytes: Vec<u8>,
        layers: &[Desc],
        labels: HashMap<String, String>,
    ) -> Result<ImageInfo> {
        let (config, diff_ids) = parse_config(reference, &config_bytes)?;
        if diff_ids.len() != layers.len() {
            return Err(Error::invalid_image(
                reference,
                format!(
                    "the manifest lists {} layers but the config {} diff ids",
                    layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        self.write_blob(
            lease,
            &config_desc.digest,
            config_bytes.len() as i64,
            config_labels(&diff_ids),
            BlobData::Bytes(config_bytes),
        )
        .await?;
        let manifest_digest = sha256_digest(&manifest_bytes);
        self.write_blob(
            lease,
            &manifest_digest,
            manifest_bytes.len() as i64,
            manifest_labels(config_desc, layers),
            BlobData::Bytes(manifest_bytes),
        )
        .await?;
        let loaded = LoadedImage {
            manifest_digest: manifest_digest.clone(),
            layers: layers.to_vec(),
            diff_ids,
            config: config.clone(),
        };
        self.unpack(reference, &loaded, lease).await?;
        self.put_image(name, &manifest_digest, manifest_media_type, labels)
            .await?;
        self.fetches.fetch_add(1, Ordering::Relaxed);
        tracing::info!(image = name, digest = %manifest_digest, "image ready");
        Ok(ImageInfo {
            name: name.to_string(),
            digest: manifest_digest,
            config,
        })
    }

    async fn pull(
        &self,
        reference: &str,
        r: &RegistryRef,
        opts: &PullOptions,
        name: &str,
    ) -> Result<ImageInfo> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(
                opts.insecure_registries.clone(),
            ),
            ..Default::default()
        });
        let oref = match (&r.tag, &r.digest) {
            (_, Some(d)) => oci_client::Reference::with_digest(
                r.registry.clone(),
                r.repository.clone(),
                d.clone(),
            ),
            (Some(t), None) => {
                oci_client::Reference::with_tag(r.registry.clone(), r.repository.clone(), t.clone())
            }
            (None, None) => oci_client::Reference::with_tag(
                r.registry.clone(),
                r.repository.clone(),
                "latest".into(),
            ),
        };
        let auth = oci_client::secrets::RegistryAuth::Anonymous;
        let accepted = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];
        let registry_err = |e: oci_client::errors::OciDistributionError| {
            let text = format!("{e:?}");
            let not_found = matches!(
                e,
                oci_client::errors::OciDistributionError::ImageManifestNotFoundError(_)
            ) || text.contains("ManifestUnknown")
                || text.contains("NameUnknown")
                || text.contains("MANIFEST_UNKNOWN")
                || text.contains("NAME_UNKNOWN")
                || text.contains("code: 404");
            if not_found {
                Error::NotInRegistry {
                    reference: reference.to_string(),
                }
            } else {
                Error::Registry {
                    reference: reference.to_string(),
                    message: error_chain(&e),
                }
            }
        };
        let (bytes, _) = client
            .pull_manifest_raw(&oref, &auth, &accepted)
            .await
            .map_err(registry_err)?;
        let mut manifest_bytes = bytes.to_vec();
        let mut digest = sha256_digest(&manifest_bytes);
        if let Some(want) = &r.digest
            && want != &digest
        {
            return Err(Error::DigestMismatch {
                reference: reference.to_string(),
                wanted: want.clone(),
                found: digest,
            });
        }
        let mut raw = parse_manifest(reference, &manifest_bytes)?;
        let mut media_type = raw
            .media_type
            .clone()
            .unwrap_or_else(|| OCI_MANIFEST.into());
        if is_index(&media_type, &raw) {
            let chosen = pick_platform(reference, raw.manifests.as_deref().unwrap_or(&[]))?;
            let child = oref.clone_with_digest(chosen.digest.clone());
            let (bytes, _) = client
                .pull_manifest_raw(&child, &auth, &accepted)
                .await
                .map_err(registry_err)?;
            manifest_bytes = bytes.to_vec();
            digest = sha256_digest(&manifest_bytes);
            if digest != chosen.digest {
                return Err(Error::invalid_image(
                    reference,
                    format!("the registry sent manifest {digest} for {}", chosen.digest),
                ));
            }
            raw = parse_manifest(reference, &manifest_bytes)?;
            media_type = raw
                .media_type
                .clone()
                .unwrap_or_else(|| chosen.media_type.clone());
        }
        let (config_desc, layers) = manifest_parts(reference, &raw)?;
        let mut config_bytes = Vec::new();
        client
            .pull_blob(&oref, config_desc.digest.as_str(), &mut config_bytes)
            .await
            .map_err(registry_err)?;
        let (_, diff_ids) = parse_config(reference, &config_bytes)?;
        if diff_ids.len() != layers.len() {
            return Err(Error::invalid_image(
                reference,
                "the manifest and the config disagree on the number of layers",
            ));
        }
        let lease = self.create_lease("pull").await?;
        let result = async {
            for (layer, diff_id) in layers.iter().zip(&diff_ids) {
                if self.blob_exists(&layer.digest).await? {
                    continue;
                }
                let stream = client
                    .pull_blob_stream(&oref, layer.digest.as_str())
                    .await
                    .map_err(registry_err)?;
                self.write_blob(
                    &lease,
                    &layer.digest,
                    layer.size,
                    layer_labels(diff_id),
                    BlobData::Stream(stream.stream),
                )
                .await?;
            }
            self.finish_image(
                reference,
                name,
                &lease,
                manifest_bytes,
                &media_type,
                &config_desc,
                config_bytes,
                &layers,
                HashMap::new(),
            )
            .await
        }
        .await;
        self.delete_lease(&lease).await;
        result
    }

    async fn import_archive(
        &self,
        reference: &str,
        path: &Path,
        docker: bool,
        name: &str,
        stamp: &str,
    ) -> Result<ImageInfo> {
        std::fs::create_dir_all(&self.dirs.tmp_dir)
            .map_err(|e| Error::io("cannot create directory", &self.dirs.tmp_dir, e))?;
        let tmp = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(&self.dirs.tmp_dir)
            .map_err(|e| Error::io("cannot create a directory in", &self.dirs.tmp_dir, e))?;
        let plan = {
            let owned = reference.to_string();
            let path = path.to_path_buf();
            let dir = tmp.path().to_path_buf();
            tokio::task::spawn_blocking(move || plan_archive(&owned, &path, &dir, docker))
                .await
                .map_err(|e| Error::invalid_image(reference, format!("import stopped: {e}")))??
        };
        let lease = self.create_lease("import").await?;
        let result = async {
            for (layer, file) in plan.layers.iter().zip(&plan.layer_files) {
                self.write_blob(
                    &lease,
                    &layer.0.digest,
                    layer.0.size,
                    layer_labels(&layer.1),
                    BlobData::File(file.clone()),
                )
                .await?;
            }
            let layers: Vec<Desc> = plan.layers.iter().map(|l| l.0.clone()).collect();
            self.finish_image(
                reference,
                name,
                &lease,
                plan.manifest_bytes.clone(),
                &plan.manifest_media_type,
                &plan.config_desc,
                plan.config_bytes.clone(),
                &layers,
                HashMap::from([(SOURCE_STAMP_LABEL.to_string(), stamp.to_string())]),
            )
            .await
        }
        .await;
        self.delete_lease(&lease).await;
        let dir = tmp.path().to_path_buf();
        let _ = tokio::task::spawn_blocking(move || drop(tmp)).await;
        tracing::debug!(dir = %dir.display(), "import scratch directory removed");
        result
    }
}

/// What an unpacked archive contributes: layers (descriptor, diff id) with their files, the
/// config and a manifest.
struct ArchivePlan {
    layers: Vec<(Desc, String)>,
    layer_files: Vec<PathBuf>,
    config_desc: Desc,
    config_bytes: Vec<u8>,
    manifest_bytes: Vec<u8>,
    manifest_media_type: String,
}

/// Opens a possibly gzip-compressed file.
fn open_maybe_gzip(path: &Path) -> std::io::Result<Box<dyn Read>> {
    let gzip = is_gzip_file(path)?;
    let file = std::fs::File::open(path)?;
    if gzip {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(
            std::io::BufReader::new(file),
        )))
    } else {
        Ok(Box::new(std::io::BufReader::new(file)))
    }
}

fn read_some(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = file.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

fn is_gzip_file(path: &Path) -> std::io::Result<bool> {
    let mut file = std::fs::File::open(path)?;
    let mut magic = [0u8; 2];
    Ok(read_some(&mut file, &mut magic)? == 2 && magic == [0x1f, 0x8b])
}

fn hash_file(path: &Path) -> std::io::Result<(String, i64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0i64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as i64;
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

/// Resolves `rel` inside `root`, refusing anything (e.g. a symlink) that leads outside it.
fn inside(reference: &str, root: &Path, rel: &str) -> Result<PathBuf> {
    let joined = root.join(rel.trim_start_matches('/'));
    let real = joined
        .canonicalize()
        .map_err(|e| Error::invalid_image(reference, format!("the archive lacks {rel}: {e}")))?;
    let root = root
        .canonicalize()
        .map_err(|e| Error::io("cannot resolve", root, e))?;
    if !real.starts_with(&root) || !real.is_file() {
        return Err(Error::invalid_image(
            reference,
            format!("{rel} is not a file inside the archive"),
        ));
    }
    Ok(real)
}

fn read_json<T: serde::de::DeserializeOwned>(reference: &str, path: &Path) -> Result<(T, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    let value = serde_json::from_slice(&bytes).map_err(|e| {
        Error::invalid_image(
            reference,
            format!(
                "malformed {}: {e}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ),
        )
    })?;
    Ok((value, bytes))
}

fn plan_archive(reference: &str, path: &Path, dir: &Path, docker: bool) -> Result<ArchivePlan> {
    let reader =
        open_maybe_gzip(path).map_err(|e| Error::io("cannot open image archive", path, e))?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(true);
    archive
        .unpack(dir)
        .map_err(|e| Error::invalid_image(reference, format!("cannot unpack the archive: {e}")))?;
    if docker {
        plan_docker(reference, dir)
    } else {
        plan_oci(reference, dir)
    }
}

fn blob_path(reference: &str, dir: &Path, digest: &str) -> Result<PathBuf> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| Error::invalid_image(reference, format!("bad digest {digest}")))?;
    if alg.contains('/') || hex.contains('/') || hex.contains("..") {
        return Err(Error::invalid_image(
            reference,
            format!("bad digest {digest}"),
        ));
    }
    inside(reference, dir, &format!("blobs/{alg}/{hex}"))
}

fn plan_oci(reference: &str, dir: &Path) -> Result<ArchivePlan> {
    let (index, _) = read_json::<RawManifest>(reference, &inside(reference, dir, "index.json")?)?;
    let manifests = index.manifests.unwrap_or_default();
    let mut chosen = match manifests.len() {
        0 => {
            return Err(Error::invalid_image(
                reference,
                "index.json lists no manifest",
            ));
        }
        1 => manifests[0].clone(),
        _ => pick_platform(reference, &manifests)?,
    };
    // Nested indexes (multi-platform images) resolve to this platform.
    for _ in 0..4 {
        let (raw, _) =
            read_json::<RawManifest>(reference, &blob_path(reference, dir, &chosen.digest)?)?;
        let media = raw
            .media_type
            .clone()
            .unwrap_or_else(|| chosen.media_type.clone());
        if is_index(&media, &raw) {
            chosen = pick_platform(reference, raw.manifests.as_deref().unwrap_or(&[]))?;
            continue;
        }
        let manifest_path = blob_path(reference, dir, &chosen.digest)?;
        let manifest_bytes = std::fs::read(&manifest_path)
            .map_err(|e| Error::io("cannot read", &manifest_path, e))?;
        if sha256_digest(&manifest_bytes) != chosen.digest {
            return Err(Error::invalid_image(
                reference,
                format!("manifest {} does not match its digest", chosen.digest),
            ));
        }
        let (config_desc, layers) = manifest_parts(reference, &raw)?;
        let config_path = blob_path(reference, dir, &config_desc.digest)?;
        let config_bytes =
            std::fs::read(&config_path).map_err(|e| Error::io("cannot read", &config_path, e))?;
        let (_, diff_ids) = parse_config(reference, &config_bytes)?;
        if diff_ids.len() != layers.len() {
            return Err(Error::invalid_image(
                reference,
                "the manifest and the config disagree on the number of layers",
            ));
        }
        let mut layer_files = Vec::new();
        for l in &layers {
            layer_files.push(blob_path(reference, dir, &l.digest)?);
        }
        return Ok(ArchivePlan {
            layers: layers.into_iter().zip(diff_ids).collect(),
            layer_files,
            config_desc,
            config_bytes,
            manifest_bytes,
            manifest_media_type: media,
        });
    }
    Err(Error::invalid_image(
        reference,
        "image indexes nest too deeply",
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    layers: Vec<String>,
}

fn plan_docker(reference: &str, dir: &Path) -> Result<ArchivePlan> {
    let (entries, _) = read_json::<Vec<DockerManifestEntry>>(
        reference,
        &inside(reference, dir, "manifest.json")?,
    )?;
    let entry = entries
        .into_iter()
        .next()
        .ok_or_else(|| Error::invalid_image(reference, "manifest.json lists no image"))?;
    let config_path = inside(reference, dir, &entry.config)?;
    let config_bytes =
        std::fs::read(&config_path).map_err(|e| Error::io("cannot read", &config_path, e))?;
    let (_, diff_ids) = parse_config(reference, &config_bytes)?;
    if diff_ids.len() != entry.layers.len() {
        return Err(Error::invalid_image(
            reference,
            format!(
                "manifest.json lists {} layers but the config {} diff ids",
                entry.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let config_desc = Desc {
        media_type: OCI_CONFIG.into(),
        digest: sha256_digest(&config_bytes),
        size: config_bytes.len() as i64,
        platform: None,
        annotations: HashMap::new(),
    };
    let mut layers = Vec::new();
    let mut layer_files = Vec::new();
    for (rel, diff_id) in entry.layers.iter().zip(diff_ids) {
        let file = inside(reference, dir, rel)?;
        let (digest, size) = hash_file(&file).map_err(|e| Error::io("cannot read", &file, e))?;
        let gzip = is_gzip_file(&file).map_err(|e| Error::io("cannot read", &file, e))?;
        if !gzip && digest != diff_id {
            return Err(Error::invalid_image(
                reference,
                format!("layer {rel} has digest {digest} but the config says {diff_id}"),
            ));
        }
        layers.push((
            Desc {
                media_type: if gzip { OCI_LAYER_GZIP } else { OCI_LAYER }.into(),
                digest,
                size,
                platform: None,
                annotations: HashMap::new(),
            },
            diff_id,
        ));
        layer_files.push(file);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc,
        "layers": layers.iter().map(|l| &l.0).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest)
        .map_err(|e| Error::invalid_image(reference, format!("cannot encode a manifest: {e}")))?;
    Ok(ArchivePlan {
        layers,
        layer_files,
        config_desc,
        config_bytes,
        manifest_bytes,
        manifest_media_type: OCI_MANIFEST.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        assert_eq!(chains[1], sha256_digest(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn parses_the_images_healthcheck() {
        let json = br#"{"config":{"Healthcheck":{"Test":["CMD-SHELL","wget -qO- localhost"],
            "Interval":5000000000,"Timeout":2000000000,"StartPeriod":1000000000,"Retries":4}}}"#;
        let (c, _) = parse_config("x", json).unwrap();
        let h = c.healthcheck.unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "wget -qO- localhost"]);
        assert_eq!(
            (h.interval, h.timeout, h.start_period, h.retries),
            (5_000, 2_000, 1_000, 4)
        );
        let (c, _) = parse_config("x", br#"{"config":{}}"#).unwrap();
        assert_eq!(c.healthcheck, None);
    }

    #[test]
    fn parses_image_config() {
        let json =
            br#"{"config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/w","User":"1:2"},
                        "rootfs":{"type":"layers","diff_ids":["sha256:00"]}}"#;
        let (c, ids) = parse_config("x", json).unwrap();
        assert_eq!(c.env, vec!["PATH=/bin"]);
        assert_eq!(c.cmd, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(c.entrypoint, None);
        assert_eq!(c.working_dir, "/w");
        assert_eq!(c.user, "1:2");
        assert_eq!(ids, vec!["sha256:00"]);
    }

    #[test]
    fn picks_this_platform_from_an_index() {
        let other = if host_arch() == "amd64" {
            "arm64"
        } else {
            "amd64"
        };
        let d = |arch: &str, digest: &str| Desc {
            media_type: OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
            annotations: HashMap::new(),
        };
        let chosen =
            pick_platform("x", &[d(other, "sha256:1"), d(host_arch(), "sha256:2")]).unwrap();
        assert_eq!(chosen.digest, "sha256:2");
        assert!(pick_platform("x", &[d(other, "sha256:1")]).is_err());
    }
}
