//! The OCI runtime spec of a container, and Docker's rules for the process it runs.

use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount as OciMount, MountBuilder, PosixRlimit,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use crate::container::{ContainerConfig, MountKind, NetworkMode};
use crate::error::{Error, Result};
use crate::etc::ResolvedUser;
use crate::image::ImageConfig;

/// `PATH` for processes whose environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The paths of `/proc` and `/sys` a container cannot read (runc's defaults).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// The paths of `/proc` a container can read but not write (runc's defaults).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Where the init binary (`ContainerConfig::init`) appears in the container.
pub const INIT_PATH: &str = "/sbin/shoal-init";

/// Statically linked tini builds, looked up in this order by [`find_init`]: Debian's
/// `tini-static` (package `tini`), then Docker's `docker-init`.
pub const INIT_CANDIDATES: &[&str] = &[
    "/usr/bin/tini-static",
    "/usr/sbin/docker-init",
    "/usr/libexec/docker/docker-init",
];

/// The init binary of this node, if it has one (see [`INIT_CANDIDATES`]).
pub fn find_init() -> Option<std::path::PathBuf> {
    INIT_CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
}

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

fn oci_error(id: &str, e: oci_spec::OciSpecError) -> Error {
    Error::InvalidConfig {
        id: id.to_string(),
        reason: format!("cannot build the OCI runtime spec: {e}"),
    }
}

fn mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> Result<OciMount> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| oci_error("", e))
}

fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    use PosixRlimitType::*;
    Some(match name {
        "as" => RlimitAs,
        "core" => RlimitCore,
        "cpu" => RlimitCpu,
        "data" => RlimitData,
        "fsize" => RlimitFsize,
        "locks" => RlimitLocks,
        "memlock" => RlimitMemlock,
        "msgqueue" => RlimitMsgqueue,
        "nice" => RlimitNice,
        "nofile" => RlimitNofile,
        "nproc" => RlimitNproc,
        "rss" => RlimitRss,
        "rtprio" => RlimitRtprio,
        "rttime" => RlimitRttime,
        "sigpending" => RlimitSigpending,
        "stack" => RlimitStack,
        _ => return None,
    })
}

/// Builds the OCI runtime spec for `c` with Docker's defaults: its capability set adjusted by
/// `cap_add`/`cap_drop`, its seccomp profile (unless `seccomp_unconfined`), `oomScoreAdj` 0,
/// runc's masked and read-only paths, no rlimits beyond those asked for. `files_dir` holds the
/// generated `hosts`, `hostname` and `resolv.conf`; `volumes_dir` the named volumes.
pub(crate) fn build_spec(
    c: &ContainerConfig,
    namespace: &str,
    user: &ResolvedUser,
    files_dir: &Path,
    volumes_dir: &Path,
) -> Result<Spec> {
    let invalid = |reason: String| Error::InvalidConfig {
        id: c.id.clone(),
        reason,
    };
    let oci = |e: oci_spec::OciSpecError| oci_error(&c.id, e);
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

    let p = Path::new;
    let mut mounts = vec![
        mount("/proc", "proc", p("proc"), &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            p("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            p("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            p("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            p("mqueue"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            p("sysfs"),
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/run",
            "tmpfs",
            p("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
    ];
    if c.network != NetworkMode::Host {
        mounts.push(mount(
            "/sys/fs/cgroup",
            "cgroup",
            p("cgroup"),
            &["ro", "nosuid", "noexec", "nodev"],
        )?);
    }
    for file in ["hosts", "hostname", "resolv.conf"] {
        mounts.push(mount(
            &format!("/etc/{file}"),
            "bind",
            &files_dir.join(file),
            &["rbind", "rprivate", "rw"],
        )?);
    }
    let mut args = c.args.clone();
    if let Some(init) = &c.init {
        if !init.is_file() {
            return Err(invalid(format!(
                "init = true needs a static tini on the node, and {} is missing; install Debian's tini package (it has /usr/bin/tini-static) or set init = false",
                init.display()
            )));
        }
        mounts.push(mount(
            INIT_PATH,
            "bind",
            init,
            &["rbind", "rprivate", "ro"],
        )?);
        args = [INIT_PATH.to_string(), "--".to_string()]
            .into_iter()
            .chain(args)
            .collect();
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
        let built = match &m.kind {
            MountKind::Bind { source } => {
                if !source.exists() {
                    return Err(invalid(format!(
                        "bind mount source {} does not exist (create it on this node)",
                        source.display()
                    )));
                }
                mount(&m.target, "bind", source, &["rbind", "rprivate", access])?
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
                mount(&m.target, "bind", &dir, &["rbind", "rprivate", access])?
            }
            MountKind::Tmpfs { size } => {
                let size = size.map(|s| format!("size={s}"));
                let mut options = vec!["nosuid", "nodev", "noexec", "mode=1777", access];
                if let Some(size) = &size {
                    options.push(size);
                }
                mount(&m.target, "tmpfs", p("tmpfs"), &options)?
            }
        };
        mounts.push(built);
    }

    let mut resources = LinuxResourcesBuilder::default().devices(vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(oci)?,
    ]);
    if let Some(memory) = c.resources.memory_bytes {
        if memory < 6 * 1024 * 1024 {
            return Err(invalid(format!(
                "memory limit {memory} bytes is below the 6 MiB minimum"
            )));
        }
        let limit = i64::try_from(memory).unwrap_or(i64::MAX);
        let mut m = LinuxMemoryBuilder::default().limit(limit);
        if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
            || Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        {
            // Swap equal to the limit: no swap on top of the memory limit.
            m = m.swap(limit);
        }
        resources = resources.memory(m.build().map_err(oci)?);
    }
    if let Some(nano) = c.resources.nano_cpus {
        if nano == 0 {
            return Err(invalid("a CPU limit of 0 CPUs cannot run anything".into()));
        }
        let quota = (nano as u128 * CPU_PERIOD as u128 / 1_000_000_000u128).max(1000) as i64;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD)
                .build()
                .map_err(oci)?,
        );
    }
    if let Some(pids) = c.resources.pids {
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(pids)
                .build()
                .map_err(oci)?,
        );
    }

    let ns = |typ: LinuxNamespaceType| -> Result<LinuxNamespace> {
        LinuxNamespaceBuilder::default()
            .typ(typ)
            .build()
            .map_err(oci)
    };
    let mut namespaces = vec![
        ns(LinuxNamespaceType::Pid)?,
        ns(LinuxNamespaceType::Ipc)?,
        ns(LinuxNamespaceType::Uts)?,
        ns(LinuxNamespaceType::Mount)?,
    ];
    match &c.network {
        NetworkMode::Isolated => namespaces.push(ns(LinuxNamespaceType::Network)?),
        NetworkMode::Path(path) => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path.clone())
                .build()
                .map_err(oci)?,
        ),
        NetworkMode::Host => {}
    }

    let cap_names = model::sandbox::effective_capabilities(&c.cap_add, &c.cap_drop);
    let caps: oci_spec::runtime::Capabilities = cap_names
        .iter()
        .map(|name| {
            name.trim_start_matches("CAP_")
                .parse::<Capability>()
                .map_err(|_| invalid(format!("unknown capability {name}")))
        })
        .collect::<Result<_>>()?;
    let mut capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .map_err(oci)?;
    // The builder fills what is not set from oci-spec's defaults; a container has no
    // inheritable or ambient capabilities (as Docker's), so a non-root process gets none.
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);

    let mut rlimits: Vec<PosixRlimit> = Vec::new();
    for (name, (soft, hard)) in &c.rlimits {
        let typ = rlimit_type(name).ok_or_else(|| invalid(format!("unknown ulimit {name}")))?;
        rlimits.push(
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(*soft)
                .hard(*hard)
                .build()
                .map_err(oci)?,
        );
    }

    let mut process_user = UserBuilder::default().uid(user.uid).gid(user.gid);
    if !user.additional_gids.is_empty() {
        process_user = process_user.additional_gids(user.additional_gids.clone());
    }
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(process_user.build().map_err(oci)?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(c.no_new_privileges)
        // Never less likely than anything else to be killed under memory pressure (the shim
        // would otherwise pass on containerd's own, very low, score).
        .oom_score_adj(0)
        .build()
        .map_err(oci)?;
    // Like Docker, processes inherit containerd's limits unless the service sets some.
    process.set_rlimits((!rlimits.is_empty()).then_some(rlimits));

    let mut linux = LinuxBuilder::default()
        .resources(resources.build().map_err(oci)?)
        .cgroups_path(format!("/{namespace}/{}", c.id))
        .namespaces(namespaces)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(oci)?;
    linux.set_sysctl((!c.sysctls.is_empty()).then(|| c.sysctls.clone().into_iter().collect()));
    linux.set_seccomp(if c.seccomp_unconfined {
        None
    } else {
        Some(
            crate::seccomp::default_profile(&cap_names).map_err(|e| match e {
                Error::InvalidConfig { reason, .. } => invalid(reason),
                other => other,
            })?,
        )
    });
    linux.set_devices(None);
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);

    let mut spec = SpecBuilder::default()
        .version("1.0.2-dev")
        .process(process)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(c.read_only_rootfs)
                .build()
                .map_err(oci)?,
        )
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(oci)?;
    spec.set_hostname((!c.hostname.is_empty()).then(|| c.hostname.clone()));
    spec.set_annotations(None);
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

    fn config() -> ContainerConfig {
        let info = crate::ImageInfo {
            name: "example.org/bb:1".into(),
            digest: "sha256:00".into(),
            config: image(None, Some(&["/bin/sh"])),
        };
        ContainerConfig::new("c1", info)
    }

    /// The spec as the runtime reads it: JSON.
    fn built(c: &ContainerConfig) -> serde_json::Value {
        let dir = tempfile::tempdir().unwrap();
        let spec =
            build_spec(c, "shoal", &ResolvedUser::default(), dir.path(), dir.path()).unwrap();
        serde_json::to_value(&spec).unwrap()
    }

    fn strings(v: &serde_json::Value) -> Vec<String> {
        let mut out: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn docker_defaults_seccomp_capabilities_oom_score_and_masked_paths() {
        let spec = built(&config());
        let process = &spec["process"];
        assert_eq!(
            process["oomScoreAdj"], 0,
            "oomScoreAdj is set to 0 explicitly"
        );
        assert_eq!(
            process["noNewPrivileges"], false,
            "off by default, as Docker's"
        );
        assert!(process.get("rlimits").is_none(), "limits are inherited");
        let mut want: Vec<String> = model::sandbox::DEFAULT_CAPABILITIES
            .iter()
            .map(|s| s.to_string())
            .collect();
        want.sort();
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(strings(&process["capabilities"][set]), want, "{set}");
        }
        for set in ["inheritable", "ambient"] {
            assert!(
                process["capabilities"].get(set).is_none(),
                "no {set} capabilities: {}",
                process["capabilities"]
            );
        }
        let seccomp = &spec["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(seccomp["defaultErrnoRet"], 1);
        assert!(!seccomp["architectures"].as_array().unwrap().is_empty());
        let allowed: Vec<String> = seccomp["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["action"] == "SCMP_ACT_ALLOW" && s.get("args").is_none())
            .flat_map(|s| strings(&s["names"]))
            .collect();
        assert!(allowed.iter().any(|n| n == "read"));
        assert!(!allowed.iter().any(|n| n == "unshare" || n == "mount"));
        let masked = strings(&spec["linux"]["maskedPaths"]);
        for path in [
            "/proc/kcore",
            "/proc/keys",
            "/sys/firmware",
            "/proc/timer_list",
        ] {
            assert!(masked.iter().any(|m| m == path), "{path} masked");
        }
        assert!(strings(&spec["linux"]["readonlyPaths"]).contains(&"/proc/sys".to_string()));
        assert_eq!(spec["root"]["readonly"], false);
        assert!(spec["linux"].get("sysctl").is_none());
        assert_eq!(process["args"][0], "/bin/sh");
    }

    #[test]
    fn the_service_keys_reach_the_spec() {
        let mut c = config();
        c.cap_add = vec!["CAP_NET_ADMIN".into()];
        c.cap_drop = vec!["CAP_CHOWN".into()];
        c.no_new_privileges = true;
        c.read_only_rootfs = true;
        c.rlimits.insert("nofile".into(), (1000, 2000));
        c.sysctls.insert("net.core.somaxconn".into(), "1024".into());
        let spec = built(&c);
        let caps = strings(&spec["process"]["capabilities"]["effective"]);
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["root"]["readonly"], true);
        assert_eq!(
            spec["process"]["rlimits"],
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 1000, "hard": 2000}])
        );
        assert_eq!(spec["linux"]["sysctl"]["net.core.somaxconn"], "1024");

        c.cap_drop = vec!["ALL".into()];
        c.cap_add = Vec::new();
        c.seccomp_unconfined = true;
        let spec = built(&c);
        assert!(strings(&spec["process"]["capabilities"]["bounding"]).is_empty());
        assert!(spec["linux"].get("seccomp").is_none(), "seccomp=unconfined");
    }

    #[test]
    fn init_runs_first_from_a_read_only_mount() {
        let dir = tempfile::tempdir().unwrap();
        let tini = dir.path().join("tini-static");
        std::fs::write(&tini, b"").unwrap();
        let mut c = config();
        c.init = Some(tini.clone());
        let spec = built(&c);
        assert_eq!(
            spec["process"]["args"],
            serde_json::json!([INIT_PATH, "--", "/bin/sh"])
        );
        let mount = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == INIT_PATH)
            .expect("the init is mounted");
        assert_eq!(mount["source"], tini.to_str().unwrap());
        assert!(strings(&mount["options"]).contains(&"ro".to_string()));

        c.init = Some(dir.path().join("missing"));
        let err = build_spec(
            &c,
            "shoal",
            &ResolvedUser::default(),
            dir.path(),
            dir.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tini"), "{err}");
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
