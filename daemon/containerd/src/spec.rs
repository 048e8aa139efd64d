//! The OCI runtime spec of a container, and Docker's rules for the process it runs.

use std::path::Path;

use serde_json::{Value, json};

use crate::container::{ContainerConfig, MountKind, NetworkMode};
use crate::error::{Error, Result};
use crate::etc::ResolvedUser;
use crate::image::ImageConfig;

/// `PATH` for processes whose environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The capabilities a container gets (containerd's and Docker's default set).
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// CFS period used to express CPU limits.
const CPU_PERIOD: u64 = 100_000;

/// The process arguments with Docker's semantics: an `entrypoint` override replaces the image's
/// entrypoint *and* drops the image's `Cmd` (an empty override clears the entrypoint); a
/// `command` override replaces `Cmd`. The result is entrypoint followed by command.
pub fn resolve_process(
    image: &ImageConfig,
    entrypoint: Option<Vec<String>>,
    command: Option<Vec<String>>,
) -> Vec<String> {
    let (entry, default_cmd) = match entrypoint {
        Some(e) => (e, None),
        None => (
            image.entrypoint.clone().unwrap_or_default(),
            image.cmd.clone(),
        ),
    };
    let cmd = command.or(default_cmd).unwrap_or_default();
    entry.into_iter().chain(cmd).collect()
}

/// The image's environment with `overrides` applied (`KEY=value`; a later key wins).
pub fn merge_env(image_env: &[String], overrides: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for entry in image_env.iter().chain(overrides) {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        if let Some(existing) = out
            .iter_mut()
            .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            *existing = entry.clone();
        } else {
            out.push(entry.clone());
        }
    }
    out
}

fn caps() -> Value {
    json!(CAPABILITIES)
}

/// Builds the OCI runtime spec JSON for `c`. `files_dir` holds the generated `hosts`,
/// `hostname` and `resolv.conf`; `volumes_dir` the named volumes.
pub(crate) fn build_spec(
    c: &ContainerConfig,
    namespace: &str,
    user: &ResolvedUser,
    files_dir: &Path,
    volumes_dir: &Path,
) -> Result<Value> {
    let invalid = |reason: String| Error::InvalidConfig {
        id: c.id.clone(),
        reason,
    };
    if c.args.is_empty() {
        return Err(invalid(
            "no command to run: the image has no entrypoint or cmd and none was given".into(),
        ));
    }
    let mut env = c.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    if !c.hostname.is_empty() && !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", c.hostname));
    }
    let cwd = if c.cwd.is_empty() {
        "/"
    } else {
        c.cwd.as_str()
    };
    if !cwd.starts_with('/') {
        return Err(invalid(format!("working directory {cwd} must be absolute")));
    }

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ];
    if c.network != NetworkMode::Host {
        mounts.push(
            json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                           "options": ["ro", "nosuid", "noexec", "nodev"]}),
        );
    }
    for file in ["hosts", "hostname", "resolv.conf"] {
        mounts.push(json!({
            "destination": format!("/etc/{file}"),
            "type": "bind",
            "source": files_dir.join(file),
            "options": ["rbind", "rprivate", "rw"],
        }));
    }
    let mut user_mounts: Vec<&crate::container::Mount> = c.mounts.iter().collect();
    user_mounts.sort_by_key(|m| Path::new(&m.target).components().count());
    for m in user_mounts {
        if !m.target.starts_with('/') {
            return Err(invalid(format!(
                "mount target {} must be absolute",
                m.target
            )));
        }
        let access = if m.read_only { "ro" } else { "rw" };
        let mount = match &m.kind {
            MountKind::Bind { source } => {
                if !source.exists() {
                    return Err(invalid(format!(
                        "bind mount source {} does not exist (create it on this node)",
                        source.display()
                    )));
                }
                json!({"destination": m.target, "type": "bind", "source": source,
                       "options": ["rbind", "rprivate", access]})
            }
            MountKind::Volume { name } => {
                if name.is_empty()
                    || name.starts_with('.')
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return Err(invalid(format!(
                        "volume name {name:?} must use letters, digits, '.', '_' and '-'"
                    )));
                }
                let dir = volumes_dir.join(name);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Error::io("cannot create volume directory", &dir, e))?;
                json!({"destination": m.target, "type": "bind", "source": dir,
                       "options": ["rbind", "rprivate", access]})
            }
            MountKind::Tmpfs { size } => {
                let mut options = vec![
                    "nosuid".to_string(),
                    "nodev".to_string(),
                    "noexec".to_string(),
                    "mode=1777".to_string(),
                    access.to_string(),
                ];
                if let Some(size) = size {
                    options.push(format!("size={size}"));
                }
                json!({"destination": m.target, "type": "tmpfs", "source": "tmpfs",
                       "options": options})
            }
        };
        mounts.push(mount);
    }

    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(memory) = c.resources.memory_bytes {
        if memory < 6 * 1024 * 1024 {
            return Err(invalid(format!(
                "memory limit {memory} bytes is below the 6 MiB minimum"
            )));
        }
        let mut m = json!({"limit": memory});
        if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
            || Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        {
            // Swap equal to the limit: no swap on top of the memory limit.
            m["swap"] = json!(memory);
        }
        resources["memory"] = m;
    }
    if let Some(nano) = c.resources.nano_cpus {
        if nano == 0 {
            return Err(invalid("a CPU limit of 0 CPUs cannot run anything".into()));
        }
        let quota = (nano as u128 * CPU_PERIOD as u128 / 1_000_000_000u128).max(1000) as i64;
        resources["cpu"] = json!({"quota": quota, "period": CPU_PERIOD});
    }
    if let Some(pids) = c.resources.pids {
        resources["pids"] = json!({"limit": pids});
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    match &c.network {
        NetworkMode::Isolated => namespaces.push(json!({"type": "network"})),
        NetworkMode::Path(path) => {
            namespaces.push(json!({"type": "network", "path": path}));
        }
        NetworkMode::Host => {}
    }

    let mut process_user = json!({"uid": user.uid, "gid": user.gid});
    if !user.additional_gids.is_empty() {
        process_user["additionalGids"] = json!(user.additional_gids);
    }
    let mut spec = json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": process_user,
            "args": c.args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps(),
                "effective": caps(),
                "permitted": caps(),
            },
            // No rlimits: like Docker, processes inherit containerd's (raising them beyond
            // containerd's hard limit would fail).
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": c.read_only_rootfs},
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("/{namespace}/{}", c.id),
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    });
    if !c.hostname.is_empty() {
        spec["hostname"] = json!(c.hostname);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn image(entry: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        ImageConfig {
            entrypoint: entry.map(v),
            cmd: cmd.map(v),
            ..Default::default()
        }
    }

    #[test]
    fn docker_process_rules() {
        let img = image(Some(&["/entry"]), Some(&["a", "b"]));
        assert_eq!(resolve_process(&img, None, None), v(&["/entry", "a", "b"]));
        assert_eq!(
            resolve_process(&img, None, Some(v(&["c"]))),
            v(&["/entry", "c"])
        );
        assert_eq!(resolve_process(&img, Some(v(&["/x"])), None), v(&["/x"]));
        assert_eq!(
            resolve_process(&img, Some(v(&["/x"])), Some(v(&["y"]))),
            v(&["/x", "y"])
        );
        assert_eq!(
            resolve_process(&img, Some(vec![]), Some(v(&["sh"]))),
            v(&["sh"])
        );
        let only_cmd = image(None, Some(&["/bin/sh"]));
        assert_eq!(resolve_process(&only_cmd, None, None), v(&["/bin/sh"]));
        assert_eq!(
            resolve_process(&only_cmd, None, Some(v(&["echo", "hi"]))),
            v(&["echo", "hi"])
        );
        assert!(resolve_process(&image(None, None), None, None).is_empty());
    }

    #[test]
    fn env_overrides_by_key() {
        let merged = merge_env(
            &v(&["PATH=/bin", "A=1", "B=2"]),
            &v(&["A=3", "C=4", "PATH=/usr/bin"]),
        );
        assert_eq!(merged, v(&["PATH=/usr/bin", "A=3", "B=2", "C=4"]));
    }
}
