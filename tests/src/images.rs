//! Test images built from the host's `/bin/busybox` (busybox-static) in pure Rust: one layer
//! with `bin/busybox`, a symlink per applet, `etc/passwd` and `etc/group`; config
//! `Env PATH=/bin`, `Cmd ["/bin/sh"]`. Written as OCI archives or `docker save` archives.
//!
//! Everything is deterministic (fixed mtimes, sorted entries), so the same builder always
//! produces the same digests; add a file with [`ImageBuilder::file`] to get a different image.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};

/// A long-running command that exits 0 promptly on SIGTERM.
pub const LONG_RUNNING: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done",
];

/// A long-running command that ignores SIGTERM (only SIGKILL stops it).
pub const IGNORES_SIGTERM: &[&str] = &[
    "sh",
    "-c",
    "trap '' TERM; while true; do sleep 1 & wait $!; done",
];

/// Applets every test image has (more are added from `busybox --list`).
pub const REQUIRED_APPLETS: &[&str] = &[
    "sh", "sleep", "echo", "cat", "httpd", "wget", "ls", "mkdir", "hostname", "id", "env", "true",
    "false", "kill", "head", "tail", "pwd", "touch", "rm", "nc", "ps", "grep", "printf", "test",
];

const MTIME: u64 = 1_700_000_000;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
www-data:x:33:33:www-data:/var/www:/bin/false\n\
app:x:1000:1000:app:/home/app:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";

const GROUP: &str = "root:x:0:\n\
daemon:x:1:\n\
www-data:x:33:\n\
wheel:x:10:app\n\
app:x:1000:\n\
nogroup:x:65534:\n";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).expect("gzip in memory");
    enc.finish().expect("gzip in memory")
}

/// The applets of the host's busybox.
fn applets() -> Vec<String> {
    let out = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("run /bin/busybox --list (is busybox-static installed?)");
    let mut list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.contains('/') && l != "busybox")
        .collect();
    for a in REQUIRED_APPLETS {
        assert!(
            list.iter().any(|l| l == a),
            "/bin/busybox lacks the {a} applet"
        );
    }
    list.sort();
    list.dedup();
    list
}

/// Builds a busybox image; see the module docs.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    files: Vec<(String, Vec<u8>, u32)>,
    env: Vec<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: String,
    user: String,
    /// Docker's `config.Healthcheck` (durations in nanoseconds).
    healthcheck: Option<serde_json::Value>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::busybox()
    }
}

impl ImageBuilder {
    /// The plain busybox image.
    pub fn busybox() -> ImageBuilder {
        ImageBuilder {
            files: Vec::new(),
            env: vec!["PATH=/bin".into()],
            entrypoint: None,
            cmd: Some(vec!["/bin/sh".into()]),
            working_dir: String::new(),
            user: String::new(),
            healthcheck: None,
        }
    }

    /// A HEALTHCHECK as Docker writes it: `test` (`["CMD-SHELL", "..."]`), the interval.
    pub fn healthcheck(mut self, test: &[&str], interval: Duration) -> Self {
        self.healthcheck = Some(json!({
            "Test": test,
            "Interval": interval.as_nanos() as u64,
        }));
        self
    }

    /// Adds a regular file (mode 0644) at `path` (relative to `/`).
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((
            path.trim_start_matches('/').to_string(),
            contents.into(),
            0o644,
        ));
        self
    }

    /// Adds an executable file (mode 0755).
    pub fn executable(mut self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((
            path.trim_start_matches('/').to_string(),
            contents.into(),
            0o755,
        ));
        self
    }

    pub fn env(mut self, env: &[&str]) -> Self {
        self.env = env.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn entrypoint(mut self, e: &[&str]) -> Self {
        self.entrypoint = Some(e.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn cmd(mut self, c: &[&str]) -> Self {
        self.cmd = Some(c.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn working_dir(mut self, d: &str) -> Self {
        self.working_dir = d.to_string();
        self
    }

    pub fn user(mut self, u: &str) -> Self {
        self.user = u.to_string();
        self
    }

    /// The uncompressed layer tar.
    pub fn layer_tar(&self) -> Vec<u8> {
        let busybox =
            std::fs::read("/bin/busybox").expect("read /bin/busybox (install busybox-static)");
        let mut b = tar::Builder::new(Vec::new());
        let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(mode);
            h.set_mtime(MTIME);
            h.set_size(0);
            b.append_data(&mut h, path, std::io::empty())
                .expect("tar dir");
        };
        let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(mode);
            h.set_mtime(MTIME);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data).expect("tar file");
        };
        for (d, mode) in [
            ("bin/", 0o755),
            ("dev/", 0o755),
            ("etc/", 0o755),
            ("home/", 0o755),
            ("home/app/", 0o755),
            ("proc/", 0o555),
            ("root/", 0o700),
            ("run/", 0o755),
            ("sys/", 0o555),
            ("tmp/", 0o1777),
            ("usr/", 0o755),
            ("var/", 0o755),
            ("var/www/", 0o755),
        ] {
            dir(&mut b, d, mode);
        }
        file(&mut b, "bin/busybox", &busybox, 0o755);
        for applet in applets() {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_mtime(MTIME);
            h.set_size(0);
            b.append_link(&mut h, format!("bin/{applet}"), "busybox")
                .expect("tar symlink");
        }
        file(&mut b, "etc/passwd", PASSWD.as_bytes(), 0o644);
        file(&mut b, "etc/group", GROUP.as_bytes(), 0o644);
        let mut extra = self.files.clone();
        extra.sort_by(|a, b| a.0.cmp(&b.0));
        let mut made: Vec<String> = Vec::new();
        for (path, data, mode) in &extra {
            // Parent directories the base layer lacks.
            let parts: Vec<&str> = path.split('/').collect();
            for i in 1..parts.len() {
                let parent = format!("{}/", parts[..i].join("/"));
                let base = [
                    "bin/", "etc/", "home/", "usr/", "var/", "tmp/", "root/", "run/",
                ];
                if !base.contains(&parent.as_str()) && !made.contains(&parent) {
                    dir(&mut b, &parent, 0o755);
                    made.push(parent);
                }
            }
            file(&mut b, path, data, *mode);
        }
        b.into_inner().expect("finish tar")
    }

    /// The image config JSON for a layer with `diff_id`.
    pub fn config_json(&self, diff_id: &str) -> Vec<u8> {
        let mut config = json!({"Env": self.env});
        if let Some(c) = &self.cmd {
            config["Cmd"] = json!(c);
        }
        if let Some(e) = &self.entrypoint {
            config["Entrypoint"] = json!(e);
        }
        if !self.working_dir.is_empty() {
            config["WorkingDir"] = json!(self.working_dir);
        }
        if !self.user.is_empty() {
            config["User"] = json!(self.user);
        }
        if let Some(h) = &self.healthcheck {
            config["Healthcheck"] = h.clone();
        }
        serde_json::to_vec(&json!({
            "architecture": host_arch(),
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }))
        .expect("encode config")
    }

    /// Writes an OCI image layout tar to `path`: gzip-compressed as a whole when `gzip`;
    /// the layer is gzip-compressed when `gzip_layer`. `name` goes into the
    /// `io.containerd.image.name` annotation. Returns the manifest digest.
    pub fn write_oci_archive_with(
        &self,
        path: &Path,
        gzip_archive: bool,
        gzip_layer: bool,
        name: &str,
    ) -> String {
        let layer = self.layer_tar();
        let diff_id = sha256(&layer);
        let (layer_blob, layer_type) = if gzip_layer {
            (gzip(&layer), "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (layer, "application/vnd.oci.image.layer.v1.tar")
        };
        let config = self.config_json(&diff_id);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": layer_type, "digest": sha256(&layer_blob), "size": layer_blob.len()}],
        }))
        .expect("encode manifest");
        let manifest_digest = sha256(&manifest);
        let tag = name
            .rsplit_once(':')
            .map(|(_, t)| t)
            .filter(|t| !t.contains('/'))
            .unwrap_or("latest");
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest.len(),
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
            }],
        }))
        .expect("encode index");
        let mut entries: Vec<(String, Vec<u8>)> = vec![
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".into(), index),
        ];
        for blob in [&layer_blob, &config, &manifest] {
            entries.push((format!("blobs/sha256/{}", &sha256(blob)[7..]), blob.clone()));
        }
        write_tar(path, &["blobs/", "blobs/sha256/"], &entries, gzip_archive);
        manifest_digest
    }

    /// [`ImageBuilder::write_oci_archive_with`] with a gzip layer.
    pub fn write_oci_archive(&self, path: &Path, gzip: bool, name: &str) -> String {
        self.write_oci_archive_with(path, gzip, true, name)
    }

    /// Writes a `docker save` archive (uncompressed layer, like Docker and Nix's
    /// `dockerTools.buildImage`), gzip-compressed as a whole when `gzip`. Returns the config
    /// digest (the Docker image id).
    pub fn write_docker_archive(&self, path: &Path, gzip: bool, repo_tag: &str) -> String {
        let layer = self.layer_tar();
        let diff_id = sha256(&layer);
        let config = self.config_json(&diff_id);
        let config_digest = sha256(&config);
        let layer_dir = &diff_id[7..];
        let manifest = serde_json::to_vec(&json!([{
            "Config": format!("{}.json", &config_digest[7..]),
            "RepoTags": [repo_tag],
            "Layers": [format!("{layer_dir}/layer.tar")],
        }]))
        .expect("encode manifest.json");
        let entries: Vec<(String, Vec<u8>)> = vec![
            (format!("{}.json", &config_digest[7..]), config),
            (format!("{layer_dir}/VERSION"), b"1.0".to_vec()),
            (format!("{layer_dir}/layer.tar"), layer),
            ("manifest.json".into(), manifest),
        ];
        write_tar(path, &[&format!("{layer_dir}/")], &entries, gzip);
        config_digest
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn write_tar(path: &Path, dirs: &[&str], entries: &[(String, Vec<u8>)], gzip_archive: bool) {
    let mut b = tar::Builder::new(Vec::new());
    for d in dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(MTIME);
        h.set_size(0);
        b.append_data(&mut h, d, std::io::empty()).expect("tar dir");
    }
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data.as_slice())
            .expect("tar entry");
    }
    let bytes = b.into_inner().expect("finish tar");
    let bytes = if gzip_archive { gzip(&bytes) } else { bytes };
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Writes the busybox image as an OCI archive (gzip layer; the whole archive gzip-compressed
/// when `gzip`). Returns the manifest digest.
pub fn write_oci_archive(path: &Path, gzip: bool, name: &str) -> String {
    ImageBuilder::busybox().write_oci_archive(path, gzip, name)
}

/// Writes the busybox image as a `docker save` archive. Returns the config digest.
pub fn write_docker_archive(path: &Path, gzip: bool, repo_tag: &str) -> String {
    ImageBuilder::busybox().write_docker_archive(path, gzip, repo_tag)
}

/// Unpacks the busybox image into `dir` (a rootfs directory, e.g. for `runc` directly).
pub fn build_busybox_rootfs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let layer = ImageBuilder::busybox().layer_tar();
    let mut archive = tar::Archive::new(layer.as_slice());
    archive.set_preserve_permissions(true);
    archive
        .unpack(dir)
        .unwrap_or_else(|e| panic!("unpack busybox rootfs into {}: {e}", dir.display()));
}

/// A busybox command that serves `hello <hostname>` on port 80 (busybox httpd).
pub const HTTPD: &str =
    "mkdir -p /www && echo hello $(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";

/// A busybox command that runs until SIGTERM, then exits 0 promptly.
pub const SLEEPER: &str = "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done";

/// The busybox image as a gzipped OCI archive in `node`'s directory, named
/// `example.org/NAME:1`; the reference to give `shoal service create`.
pub fn node_image(node: &crate::node::Node, name: &str) -> String {
    let path = node.dir.path().join(format!("{name}.tar"));
    write_oci_archive(&path, true, &format!("example.org/{name}:1"));
    format!("oci-archive:{}", path.display())
}
