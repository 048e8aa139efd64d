//! Persistent network namespaces: a namespace is kept alive by a bind mount of its nsfs file onto a
//! regular file, the same scheme `ip netns` uses, so it outlives the thread (and the daemon) that
//! made it and any runtime can join it by path.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::statfs::{NSFS_MAGIC, statfs};

use crate::error::{Error, Result};

/// Whether `path` is a mounted network namespace (an nsfs bind mount).
pub(crate) fn is_mounted(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Makes `dir` a mount point with shared propagation, as `ip netns` does for `/run/netns`.
///
/// Mount namespaces copied from the host (systemd services with `PrivateTmp=`, for example) then
/// receive the later unmounts of namespace files, so a deleted namespace does not linger there.
pub(crate) fn ensure_shared_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let make_shared = || {
        nix::mount::mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => return Ok(()),
        // Not a mount point yet: bind it onto itself first.
        Err(Errno::EINVAL) => {}
        Err(source) => return Err(netns_err("share the mount of", dir, source)),
    }
    nix::mount::mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|source| netns_err("bind-mount the directory of", dir, source))?;
    make_shared().map_err(|source| netns_err("share the mount of", dir, source))
}

/// Unmounts the directory mount made by [`ensure_shared_dir`] and removes the directory if it is
/// empty. Missing or unmounted directories are fine.
pub(crate) fn release_dir(dir: &Path) -> Result<()> {
    match nix::mount::umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(source) => return Err(netns_err("unmount the directory of", dir, source)),
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(Errno::ENOTEMPTY as i32) =>
        {
            Ok(())
        }
        Err(e) => Err(Error::io("remove directory", dir, e)),
    }
}

/// Creates a new network namespace and bind-mounts it onto `path`.
///
/// The namespace is made by a dedicated OS thread that calls `unshare(CLONE_NEWNET)`, so no other
/// thread of the process (tokio workers included) ever changes namespace. The thread ends right
/// after the bind mount; the mount keeps the namespace alive.
pub(crate) fn create(path: &Path) -> Result<()> {
    // An empty file to mount onto; an unmounted leftover from a crash is reused.
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io("create network namespace file", path, e))?;
    let target: PathBuf = path.to_owned();
    let made = std::thread::Builder::new()
        .name("shoal-netns".into())
        .spawn(move || -> Result<(), (&'static str, Errno)> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| ("create", e))?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| ("bind-mount", e))
        })
        .map_err(|e| Error::io("spawn a thread for network namespace", path, e))?
        .join()
        .map_err(|_| Error::Worker("network namespace thread panicked".into()))?;
    if let Err((action, source)) = made {
        let _ = fs::remove_file(path);
        return Err(netns_err(action, path, source));
    }
    Ok(())
}

/// Unmounts and removes the namespace file at `path`. A missing or unmounted file is fine.
pub(crate) fn remove(path: &Path) -> Result<()> {
    // Several stacked mounts can exist after a crash between mount and record; unmount them all.
    while is_mounted(path) {
        nix::mount::umount2(path, MntFlags::MNT_DETACH)
            .map_err(|source| netns_err("unmount", path, source))?;
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove network namespace file", path, e)),
    }
}

fn netns_err(action: &'static str, path: &Path, source: Errno) -> Error {
    Error::Netns {
        action,
        path: path.to_owned(),
        source,
    }
}
