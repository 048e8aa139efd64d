//! The one validator of the sandbox keys of a service: `cap_add`, `cap_drop`, `security_opt`,
//! `ulimits`, `sysctls` and `resources.reservations`, for stack files, Compose files, CLI
//! flags and D-Bus properties alike. Each function returns a plain message (lowercase, no final
//! period) that the caller prefixes with the place: the key path in a file, the property name
//! on the bus, the flag on the command line.

use model::sandbox::ALL_CAPABILITIES;
use model::{TaskSpec, Ulimit};

/// A capability name as Docker takes it: `NET_ADMIN`, `CAP_NET_ADMIN`, any case, or `ALL`.
/// Returns `CAP_NET_ADMIN` or `ALL`.
pub fn parse_capability(s: &str) -> Result<String, String> {
    let upper = s.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(upper);
    }
    let name = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if ALL_CAPABILITIES.contains(&name.as_str()) {
        Ok(name)
    } else {
        let short: Vec<String> = ALL_CAPABILITIES
            .iter()
            .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
            .collect();
        let short: Vec<&str> = short.iter().map(String::as_str).collect();
        let hint = crate::units::suggest(name.trim_start_matches("CAP_"), &short)
            .map(|c| format!(" (did you mean {}?)", c.to_ascii_uppercase()))
            .unwrap_or_default();
        Err(format!(
            "unknown capability \"{s}\"{hint}: use a Linux capability name such as NET_ADMIN or CAP_NET_ADMIN, or ALL"
        ))
    }
}

/// A list of capabilities, normalized, without duplicates, in the order given.
pub fn parse_capabilities(list: &[String]) -> Result<Vec<String>, Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    for s in list {
        match parse_capability(s) {
            Ok(c) if !out.contains(&c) => out.push(c),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// One `security_opt` entry shoal implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityOpt {
    /// `no-new-privileges`, `no-new-privileges:true`, `no-new-privileges=false`.
    NoNewPrivileges(bool),
    /// `seccomp=unconfined` (or `seccomp:unconfined`).
    SeccompUnconfined,
}

/// Parses one `security_opt` entry with Docker's syntax (`KEY=VALUE` or `KEY:VALUE`).
pub fn parse_security_opt(s: &str) -> Result<SecurityOpt, String> {
    let text = s.trim();
    let (key, value) = match text.find(['=', ':']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    match (key, value) {
        ("no-new-privileges", None | Some("true")) => Ok(SecurityOpt::NoNewPrivileges(true)),
        ("no-new-privileges", Some("false")) => Ok(SecurityOpt::NoNewPrivileges(false)),
        ("no-new-privileges", Some(v)) => Err(format!(
            "invalid security option \"{s}\": no-new-privileges takes true or false, not \"{v}\""
        )),
        ("seccomp", Some("unconfined")) => Ok(SecurityOpt::SeccompUnconfined),
        ("seccomp", _) => Err(format!(
            "security option \"{s}\" is not supported: custom seccomp profiles are not supported yet; use \"seccomp=unconfined\", or cap_add for what needs a capability"
        )),
        ("apparmor", _) => Err(format!(
            "security option \"{s}\" is not supported: shoal does not load AppArmor profiles"
        )),
        ("label", _) => Err(format!(
            "security option \"{s}\" is not supported: shoal does not set SELinux labels"
        )),
        _ => Err(format!(
            "unknown security option \"{s}\": use \"no-new-privileges\", \"no-new-privileges=false\" or \"seccomp=unconfined\""
        )),
    }
}

/// Sets `no_new_privileges` and `seccomp_unconfined` of `t` from a whole `security_opt` list
/// (the list replaces what was there). On error `t` is unchanged.
pub fn apply_security_opts(list: &[String], t: &mut TaskSpec) -> Result<(), Vec<String>> {
    let mut nnp = false;
    let mut unconfined = false;
    let mut errors = Vec::new();
    for s in list {
        match parse_security_opt(s) {
            Ok(SecurityOpt::NoNewPrivileges(b)) => nnp = b,
            Ok(SecurityOpt::SeccompUnconfined) => unconfined = true,
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    t.no_new_privileges = nnp;
    t.seccomp_unconfined = unconfined;
    Ok(())
}

/// The `security_opt` list that [`apply_security_opts`] reads back into the same fields.
pub fn security_opts(t: &TaskSpec) -> Vec<String> {
    let mut out = Vec::new();
    if t.no_new_privileges {
        out.push("no-new-privileges".to_string());
    }
    if t.seccomp_unconfined {
        out.push("seccomp=unconfined".to_string());
    }
    out
}

/// The resource limits Docker's `--ulimit` knows, by their name without `RLIMIT_`.
pub const ULIMIT_NAMES: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// The kernel's default ceiling on open files per process (`fs.nr_open`): a `nofile` limit
/// above it cannot be set.
pub const MAX_NOFILE: u64 = 1 << 20;

/// `RLIM_INFINITY`, written `-1` in files and flags.
pub const UNLIMITED: u64 = u64::MAX;

/// Checks one ulimit: a known name, soft not above hard, `nofile` within [`MAX_NOFILE`].
pub fn check_ulimit(name: &str, u: Ulimit) -> Result<(), String> {
    if !ULIMIT_NAMES.contains(&name) {
        let hint = crate::units::suggest(name, ULIMIT_NAMES)
            .map(|c| format!(" (did you mean {c}?)"))
            .unwrap_or_default();
        return Err(format!(
            "unknown ulimit \"{name}\"{hint}: use one of {}",
            ULIMIT_NAMES.join(", ")
        ));
    }
    if u.soft > u.hard {
        return Err(format!(
            "ulimit {name}: the soft limit {} is above the hard limit {}",
            show_limit(u.soft),
            show_limit(u.hard)
        ));
    }
    if name == "nofile" && u.hard > MAX_NOFILE {
        return Err(format!(
            "ulimit nofile: {} is above the kernel's limit of {MAX_NOFILE} open files",
            show_limit(u.hard)
        ));
    }
    Ok(())
}

fn show_limit(n: u64) -> String {
    if n == UNLIMITED {
        "unlimited (-1)".into()
    } else {
        n.to_string()
    }
}

/// A limit value as written in files and flags: a number, or `-1` for unlimited.
pub fn limit_value(n: i64) -> Result<u64, String> {
    match n {
        -1 => Ok(UNLIMITED),
        n if n >= 0 => Ok(n as u64),
        n => Err(format!(
            "invalid limit {n}: use a number of 0 or more, or -1 for unlimited"
        )),
    }
}

/// Docker's `--ulimit` syntax: `nofile=1024` (soft = hard) or `nofile=1024:2048`.
pub fn parse_ulimit(s: &str) -> Result<(String, Ulimit), String> {
    let Some((name, values)) = s.split_once('=') else {
        return Err(format!(
            "invalid ulimit \"{s}\": write NAME=SOFT[:HARD], e.g. nofile=1024:2048"
        ));
    };
    let number = |v: &str| -> Result<u64, String> {
        let n: i64 = v
            .trim()
            .parse()
            .map_err(|_| format!("invalid ulimit \"{s}\": \"{v}\" is not a number"))?;
        limit_value(n).map_err(|e| format!("invalid ulimit \"{s}\": {e}"))
    };
    let (soft, hard) = match values.split_once(':') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            let n = number(values)?;
            (n, n)
        }
    };
    let name = name.trim().to_string();
    let u = Ulimit { soft, hard };
    check_ulimit(&name, u)?;
    Ok((name, u))
}

/// The IPC sysctls a container may set (its own IPC namespace holds them), as Docker allows.
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Checks one sysctl: only those the container's own namespaces hold (`net.*`,
/// `fs.mqueue.*`, the IPC `kernel.*` ones), as Docker allows; anything else would change the
/// whole node.
pub fn check_sysctl(key: &str, value: &str) -> Result<(), String> {
    let well_formed = !key.is_empty()
        && key.len() <= 256
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !well_formed {
        return Err(format!(
            "invalid sysctl name \"{key}\": use dot-separated names such as net.core.somaxconn"
        ));
    }
    let namespaced =
        key.starts_with("net.") || key.starts_with("fs.mqueue.") || IPC_SYSCTLS.contains(&key);
    if !namespaced {
        return Err(format!(
            "sysctl \"{key}\" is not allowed: it is not isolated in the container and would change the whole node; allowed are net.*, fs.mqueue.* and {}",
            IPC_SYSCTLS.join(", ")
        ));
    }
    if value.trim().is_empty() || value.contains('\n') || value.len() > 1024 {
        return Err(format!(
            "sysctl {key}: the value must be one non-empty line of at most 1024 bytes"
        ));
    }
    Ok(())
}

/// Checks the reservations against the limits of the same task: a reservation above its
/// limit could never be used.
pub fn check_reservations(t: &TaskSpec) -> Result<(), String> {
    let r = &t.reservations;
    if let Some(m) = r.memory_bytes
        && m < crate::units::MIN_MEMORY_BYTES
    {
        return Err(format!(
            "memory reservation of {m} bytes is below the minimum of 4M"
        ));
    }
    if let Some(c) = r.nano_cpus
        && c < crate::units::MIN_NANO_CPUS
    {
        return Err("CPU reservation is below the minimum of 0.001".into());
    }
    if let (Some(res), Some(lim)) = (r.memory_bytes, t.resources.memory_bytes)
        && res > lim
    {
        return Err(format!(
            "memory reservation ({res} bytes) is above the memory limit ({lim} bytes)"
        ));
    }
    if let (Some(res), Some(lim)) = (r.nano_cpus, t.resources.nano_cpus)
        && res > lim
    {
        return Err(format!(
            "CPU reservation ({}) is above the CPU limit ({})",
            res as f64 / 1e9,
            lim as f64 / 1e9
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_with_or_without_prefix_and_all() {
        assert_eq!(parse_capability("net_admin").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(parse_capability("CAP_SYS_TIME").unwrap(), "CAP_SYS_TIME");
        assert_eq!(parse_capability("all").unwrap(), "ALL");
        let e = parse_capability("NET_ADMN").unwrap_err();
        assert!(e.contains("unknown capability \"NET_ADMN\""), "{e}");
        assert!(e.contains("did you mean NET_ADMIN?"), "{e}");
        assert_eq!(
            parse_capabilities(&["chown".into(), "CAP_CHOWN".into()]).unwrap(),
            vec!["CAP_CHOWN"]
        );
    }

    #[test]
    fn security_options_docker_syntax() {
        use SecurityOpt::*;
        assert_eq!(
            parse_security_opt("no-new-privileges").unwrap(),
            NoNewPrivileges(true)
        );
        assert_eq!(
            parse_security_opt("no-new-privileges:true").unwrap(),
            NoNewPrivileges(true)
        );
        assert_eq!(
            parse_security_opt("no-new-privileges=false").unwrap(),
            NoNewPrivileges(false)
        );
        assert_eq!(
            parse_security_opt("seccomp=unconfined").unwrap(),
            SeccompUnconfined
        );
        assert_eq!(
            parse_security_opt("seccomp:unconfined").unwrap(),
            SeccompUnconfined
        );
        for (bad, says) in [
            ("seccomp=/etc/profile.json", "custom seccomp profiles"),
            ("apparmor=unconfined", "AppArmor"),
            ("label=disable", "SELinux"),
            ("privileged", "unknown security option"),
            ("no-new-privileges=maybe", "true or false"),
        ] {
            let e = parse_security_opt(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let mut t = TaskSpec::default();
        apply_security_opts(
            &["no-new-privileges".into(), "seccomp=unconfined".into()],
            &mut t,
        )
        .unwrap();
        assert!(t.no_new_privileges && t.seccomp_unconfined);
        assert_eq!(
            security_opts(&t),
            vec!["no-new-privileges", "seccomp=unconfined"]
        );
        assert!(apply_security_opts(&["nope".into()], &mut t).is_err());
        assert!(t.no_new_privileges, "unchanged on error");
    }

    #[test]
    fn ulimits_names_order_and_bounds() {
        assert_eq!(
            parse_ulimit("nofile=1024:2048").unwrap(),
            (
                "nofile".to_string(),
                Ulimit {
                    soft: 1024,
                    hard: 2048
                }
            )
        );
        assert_eq!(parse_ulimit("core=-1").unwrap().1.hard, UNLIMITED);
        for (bad, says) in [
            (
                "nofile=2048:1024",
                "soft limit 2048 is above the hard limit 1024",
            ),
            ("nofiles=10", "did you mean nofile?"),
            ("nofile=99999999", "above the kernel's limit"),
            ("nofile", "NAME=SOFT[:HARD]"),
            ("nproc=-5", "-1 for unlimited"),
            ("nproc=x", "not a number"),
        ] {
            let e = parse_ulimit(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn only_namespaced_sysctls() {
        for ok in [
            "net.core.somaxconn",
            "net.ipv4.ip_unprivileged_port_start",
            "fs.mqueue.msg_max",
            "kernel.shmmax",
        ] {
            check_sysctl(ok, "1").unwrap();
        }
        let e = check_sysctl("kernel.panic", "1").unwrap_err();
        assert!(e.contains("would change the whole node"), "{e}");
        assert!(check_sysctl("vm.swappiness", "1").is_err());
        assert!(check_sysctl("net..x", "1").is_err());
        assert!(check_sysctl("net.core.somaxconn", "").is_err());
    }

    #[test]
    fn reservations_within_limits() {
        let mut t = TaskSpec::default();
        t.reservations.memory_bytes = Some(512 << 20);
        check_reservations(&t).unwrap();
        t.resources.memory_bytes = Some(256 << 20);
        let e = check_reservations(&t).unwrap_err();
        assert!(e.contains("above the memory limit"), "{e}");
        t.resources.memory_bytes = None;
        t.reservations.memory_bytes = Some(1024);
        assert!(check_reservations(&t).unwrap_err().contains("minimum"));
    }
}
