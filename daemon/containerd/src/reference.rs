//! Image references: registry references normalised the way Docker does it, and local archives.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A registry reference such as `localhost:5000/bb:1` or `docker.io/library/busybox:latest`.
    Registry(RegistryRef),
    /// `docker-archive:/path`: the output of `docker save` or Nix `dockerTools`.
    DockerArchive(PathBuf),
    /// `oci-archive:/path`: an OCI image layout in a tar file.
    OciArchive(PathBuf),
}

/// A fully qualified registry reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// `docker.io`, `localhost:5000`, `ghcr.io`, ...
    pub registry: String,
    /// `library/busybox`, `bb`, ...
    pub repository: String,
    /// The tag, if any (`latest` is filled in when neither tag nor digest is given).
    pub tag: Option<String>,
    /// The manifest digest, if the reference pins one.
    pub digest: Option<String>,
}

impl RegistryRef {
    /// The normalised name, e.g. `docker.io/library/busybox:latest` or `localhost:5000/bb@sha256:...`.
    pub fn name(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            s.push('@');
            s.push_str(digest);
        }
        s
    }

    /// The same repository pinned to `digest` (the tag is dropped).
    pub fn with_digest(&self, digest: &str) -> RegistryRef {
        RegistryRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }
}

impl ImageSource {
    /// Parses `docker-archive:PATH`, `oci-archive:PATH` or a registry reference.
    pub fn parse(reference: &str) -> Result<ImageSource> {
        if let Some(path) = reference.strip_prefix("docker-archive:") {
            return Ok(ImageSource::DockerArchive(archive_path(reference, path)?));
        }
        if let Some(path) = reference.strip_prefix("oci-archive:") {
            return Ok(ImageSource::OciArchive(archive_path(reference, path)?));
        }
        let reference = reference.strip_prefix("docker://").unwrap_or(reference);
        parse_registry(reference).map(ImageSource::Registry)
    }

    /// The name recorded in containerd's image store for this source.
    pub fn name(&self) -> String {
        match self {
            ImageSource::Registry(r) => r.name(),
            ImageSource::DockerArchive(p) => format!("docker-archive:{}", p.display()),
            ImageSource::OciArchive(p) => format!("oci-archive:{}", p.display()),
        }
    }
}

fn archive_path(reference: &str, path: &str) -> Result<PathBuf> {
    if path.is_empty() {
        return Err(Error::InvalidReference {
            reference: reference.to_string(),
            reason: "the archive path is empty".into(),
        });
    }
    let p = PathBuf::from(path);
    if p.is_absolute() {
        return Ok(p);
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io("resolve", &p, e))?;
    Ok(cwd.join(p))
}

/// Docker-style normalisation: `busybox` is `docker.io/library/busybox:latest`.
fn parse_registry(reference: &str) -> Result<RegistryRef> {
    let bad = |reason: &str| Error::InvalidReference {
        reference: reference.to_string(),
        reason: reason.to_string(),
    };
    if reference.is_empty() {
        return Err(bad("the reference is empty"));
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| bad("the digest must start with sha256:"))?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("the digest must be sha256: followed by 64 hex digits"));
            }
            (rest, Some(digest.to_ascii_lowercase()))
        }
        None => (reference, None),
    };
    let (registry, remainder) = match rest.split_once('/') {
        Some((first, remainder))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), remainder.to_string())
        }
        _ => ("docker.io".to_string(), rest.to_string()),
    };
    let (repository, tag) = {
        let last_slash = remainder.rfind('/').map(|i| i + 1).unwrap_or(0);
        match remainder[last_slash..].rfind(':') {
            Some(i) => {
                let split = last_slash + i;
                (
                    remainder[..split].to_string(),
                    Some(remainder[split + 1..].to_string()),
                )
            }
            None => (remainder.clone(), None),
        }
    };
    if repository.is_empty() {
        return Err(bad("the repository name is empty"));
    }
    if !repository
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        || repository.split('/').any(|c| c.is_empty())
    {
        return Err(bad(
            "repository names use lowercase letters, digits, '.', '_', '-' and '/' separators",
        ));
    }
    if let Some(tag) = &tag
        && (tag.is_empty()
            || tag.len() > 128
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
    {
        return Err(bad(
            "tags use letters, digits, '.', '_' and '-' (at most 128)",
        ));
    }
    let repository = if registry == "docker.io" && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    let tag = match (&tag, &digest) {
        (None, None) => Some("latest".to_string()),
        _ => tag,
    };
    Ok(RegistryRef {
        registry,
        repository,
        tag,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(r: &str) -> String {
        ImageSource::parse(r).unwrap().name()
    }

    #[test]
    fn normalises_docker_style() {
        assert_eq!(name("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(name("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(name("user/app"), "docker.io/user/app:latest");
        assert_eq!(name("docker.io/library/x:tag"), "docker.io/library/x:tag");
        assert_eq!(name("localhost:5000/bb:1"), "localhost:5000/bb:1");
        assert_eq!(name("localhost/bb"), "localhost/bb:latest");
        assert_eq!(name("127.0.0.1:5000/a/b/c:v2"), "127.0.0.1:5000/a/b/c:v2");
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            name(&format!("localhost:5000/bb@{d}")),
            format!("localhost:5000/bb@{d}")
        );
        assert_eq!(
            name(&format!("localhost:5000/bb:1@{d}")),
            format!("localhost:5000/bb:1@{d}")
        );
    }

    #[test]
    fn archives_keep_their_path() {
        assert_eq!(
            ImageSource::parse("docker-archive:/x/y.tar").unwrap(),
            ImageSource::DockerArchive("/x/y.tar".into())
        );
        assert_eq!(name("oci-archive:/a.tar.gz"), "oci-archive:/a.tar.gz");
    }

    #[test]
    fn rejects_bad_references() {
        for r in [
            "",
            "UPPER/case",
            "bb@sha256:12",
            "bb@md5:00",
            "bb:",
            "a//b",
            "docker-archive:",
        ] {
            assert!(ImageSource::parse(r).is_err(), "{r} should be rejected");
        }
    }
}
