//! A task's secrets and configs on its node: files on a tmpfs of shoald's, bind-mounted
//! read-only into the container.
//!
//! The data comes with the node's assignment set, which carries only what the node's runnable
//! tasks use. Each task gets `<run_dir>/secrets/<task id>/` (mode 0700, root's), holding one
//! file per reference with the uid, gid and mode it asks for (default root, 0444); the file is
//! mounted at `/run/secrets/TARGET` (secrets) or at its target (configs). `<run_dir>/secrets` is
//! a tmpfs (mounted by shoald when it is not one already), so the data never reaches a disk. The
//! task's directory is removed with its container. Nothing here logs the data.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agent::ExecError;
use model::{SecretKind, Task};
use shoal_containerd as ctd;

use crate::daemon::Daemon;

/// Where secrets are mounted in a container.
pub const SECRETS_DIR: &str = "/run/secrets";

/// The tmpfs holding every task's secret files.
pub fn root(run_dir: &Path) -> PathBuf {
    run_dir.join("secrets")
}

/// Make `root` a tmpfs that only root can enter, unless it is one already.
fn ensure_tmpfs(root: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)?;
    let fs = nix::sys::statfs::statfs(root).map_err(std::io::Error::from)?;
    if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        nix::mount::mount(
            Some("tmpfs"),
            root,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .map_err(std::io::Error::from)?;
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
}

/// Write the files of `task`'s secrets and configs and return the mounts that put them in its
/// container. Nothing to do (and no tmpfs) for a task without any.
pub fn prepare(d: &Daemon, task: &Task) -> Result<Vec<ctd::Mount>, ExecError> {
    let refs: Vec<(SecretKind, &model::SecretRef)> = task
        .spec
        .secrets
        .iter()
        .map(|r| (SecretKind::Secret, r))
        .chain(task.spec.configs.iter().map(|r| (SecretKind::Config, r)))
        .collect();
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let root = root(&d.cfg.paths.run_dir);
    ensure_tmpfs(&root).map_err(|e| {
        ExecError::fatal(format!(
            "failed to make the tmpfs for secrets at {}: {e}",
            root.display()
        ))
    })?;
    let dir = root.join(&task.id);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            ExecError::fatal(format!(
                "failed to make the task's secrets directory {}: {e}",
                dir.display()
            ))
        })?;
    let set = d.assignments.borrow();
    let files = set.as_ref().map(|s| s.secrets.as_slice()).unwrap_or(&[]);
    let mut mounts = Vec::with_capacity(refs.len());
    for (i, (kind, r)) in refs.iter().enumerate() {
        let k = kind.as_str();
        let Some(file) = files.iter().find(|f| f.kind == *kind && f.id == r.id) else {
            // Only a set from a manager that predates secrets lacks it.
            return Err(ExecError::temporary(format!(
                "{k} {} is not in this node's assignments yet",
                r.name
            )));
        };
        let path = dir.join(format!("{k}-{i}"));
        write_file(&path, file.data.expose(), r).map_err(|e| {
            ExecError::fatal(format!("failed to write {k} {} for the task: {e}", r.name))
        })?;
        let target = match kind {
            SecretKind::Secret => format!("{SECRETS_DIR}/{}", r.target),
            SecretKind::Config => r.target.clone(),
        };
        mounts.push(ctd::Mount {
            kind: ctd::MountKind::Bind { source: path },
            target,
            read_only: true,
        });
    }
    Ok(mounts)
}

/// Write `data` to `path` with the owner and mode `r` asks for; the file is never readable by
/// anyone else while it is written.
fn write_file(path: &Path, data: &[u8], r: &model::SecretRef) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::os::unix::fs::fchown(&f, Some(r.uid), Some(r.gid))?;
    f.set_permissions(std::fs::Permissions::from_mode(r.mode))
}

/// Remove a task's secret files (its container is gone). A task without any is a no-op.
pub fn remove(run_dir: &Path, task_id: &str) -> std::io::Result<()> {
    if task_id.is_empty() || task_id.contains('/') || task_id.starts_with('.') {
        return Ok(());
    }
    match std::fs::remove_dir_all(root(run_dir).join(task_id)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// At the agent's start: remove the secret files of tasks that are no longer assigned to this
/// node or have finished (their containers went while shoald was down).
pub fn collect_stale(run_dir: &Path, assigned: &[Task]) {
    let Ok(entries) = std::fs::read_dir(root(run_dir)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let live = assigned
            .iter()
            .any(|t| t.id == name && !t.status.state.is_terminal());
        if !live && let Err(err) = remove(run_dir, &name) {
            tracing::warn!(task = %name, error = %err, "failed to remove stale secret files");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_gets_the_owner_and_mode_it_asks_for_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret-0");
        let r = model::SecretRef {
            mode: 0o440,
            uid: 1234,
            gid: 5678,
            ..model::SecretRef::new(SecretKind::Secret, "db")
        };
        write_file(&path, b"pw", &r).unwrap();
        // Writing again (a repeated prepare) replaces the content.
        write_file(&path, b"pw2", &r).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.mode() & 0o7777, 0o440);
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
        assert_eq!(std::fs::read(&path).unwrap(), b"pw2");
        let run = dir.path();
        std::fs::create_dir_all(root(run).join("t1")).unwrap();
        remove(run, "t1").unwrap();
        assert!(!root(run).join("t1").exists());
        remove(run, "t1").unwrap();
        remove(run, "../x").unwrap();
        // At start, only the files of live assigned tasks stay.
        std::fs::create_dir_all(root(run).join("gone")).unwrap();
        collect_stale(run, &[]);
        assert!(!root(run).join("gone").exists());
    }
}
