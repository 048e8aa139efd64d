//! Files a container gets from the host side: `/etc/hosts`, `/etc/hostname`,
//! `/etc/resolv.conf`, and user lookup in the image's `/etc/passwd` and `/etc/group`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use crate::container::{ContainerConfig, Dns};
use crate::error::{Error, Result};

/// The uid, gid and supplementary groups a process runs with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// The `user[:group]` parts of a user spec.
pub(crate) fn split_user(user: &str) -> (&str, Option<&str>) {
    match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    }
}

/// True when resolving `user` needs the image's `/etc/passwd` or `/etc/group`.
pub(crate) fn needs_lookup(user: &str) -> bool {
    let (u, g) = split_user(user);
    if user.is_empty() || user == "root" || user == "0" || user == "0:0" || user == "root:root" {
        return false;
    }
    u.parse::<u32>().is_err() || g.is_none_or(|g| g.parse::<u32>().is_err())
}

/// Resolves `user` (`uid`, `uid:gid`, `name`, `name:group`) against the image's passwd and
/// group files (`None` when the image has none).
pub(crate) fn resolve_user(
    id: &str,
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser> {
    if user.is_empty() || user == "root" || user == "0" || user == "0:0" || user == "root:root" {
        return Ok(ResolvedUser::default());
    }
    let invalid = |reason: String| Error::InvalidConfig {
        id: id.to_string(),
        reason,
    };
    let (u, g) = split_user(user);
    let passwd_entries: Vec<Vec<&str>> = passwd
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let group_entries: Vec<Vec<&str>> = group
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    let entry = passwd_entries
        .iter()
        .find(|f| f[0] == u || (u.parse::<u32>().is_ok() && f[2] == u));
    let uid = match u.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| invalid(format!("user {u} not found in the image's /etc/passwd")))?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| invalid(format!("group {g} not found in the image's /etc/group")))?,
        },
        None => entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    let name = entry.map(|f| f[0]);
    let mut additional_gids = Vec::new();
    if g.is_none()
        && let Some(name) = name
    {
        for f in &group_entries {
            if f.get(3)
                .is_some_and(|members| members.split(',').any(|m| m == name))
                && let Ok(gid2) = f[2].parse::<u32>()
                && gid2 != gid
                && !additional_gids.contains(&gid2)
            {
                additional_gids.push(gid2);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// Contents of `/etc/hosts`.
pub(crate) fn hosts_file(c: &ContainerConfig) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for h in &c.hosts {
        if h.names.is_empty() {
            continue;
        }
        let _ = writeln!(s, "{}\t{}", h.ip, h.names.join(" "));
    }
    s
}

/// Contents of `/etc/resolv.conf`: from `dns` (with the host's nameservers when it names none),
/// or the host's file; either way without loopback nameservers in a network namespace of its
/// own (they are unreachable from there).
pub(crate) fn resolv_conf(dns: Option<&Dns>, host_resolv: &str, own_netns: bool) -> String {
    let reachable = |line: &str| {
        let mut words = line.split_whitespace();
        !(own_netns
            && words.next() == Some("nameserver")
            && words
                .next()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .is_some_and(|ip| ip.is_loopback()))
    };
    match dns {
        Some(d) => {
            let mut s = String::new();
            if d.nameservers.is_empty() {
                for line in host_resolv
                    .lines()
                    .filter(|l| l.split_whitespace().next() == Some("nameserver"))
                    .filter(|l| reachable(l))
                {
                    s.push_str(line.trim());
                    s.push('\n');
                }
            }
            for ns in &d.nameservers {
                let _ = writeln!(s, "nameserver {ns}");
            }
            if !d.search.is_empty() {
                let _ = writeln!(s, "search {}", d.search.join(" "));
            }
            if !d.options.is_empty() {
                let _ = writeln!(s, "options {}", d.options.join(" "));
            }
            s
        }
        None => {
            let mut s = String::new();
            for line in host_resolv.lines().filter(|l| reachable(l)) {
                s.push_str(line);
                s.push('\n');
            }
            s
        }
    }
}

/// Writes `hosts`, `hostname` and `resolv.conf` into `dir`.
pub(crate) fn write_files(dir: &Path, c: &ContainerConfig) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create directory", dir, e))?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let own_netns = c.network != crate::container::NetworkMode::Host;
    let files = [
        ("hosts", hosts_file(c)),
        ("hostname", format!("{}\n", c.hostname)),
        (
            "resolv.conf",
            resolv_conf(c.dns.as_ref(), &host_resolv, own_netns),
        ),
    ];
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(|e| Error::io("cannot write", &path, e))?;
    }
    Ok(())
}

/// Mounts the container's rootfs read-only at `dir`, reads `/etc/passwd` and `/etc/group`,
/// and unmounts it again.
pub(crate) fn read_user_files(
    mounts: &[containerd_client::types::Mount],
    dir: &Path,
) -> std::io::Result<(Option<String>, Option<String>)> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let [m] = mounts else {
        return Err(std::io::Error::other(format!(
            "expected one rootfs mount, got {}",
            mounts.len()
        )));
    };
    std::fs::create_dir_all(dir)?;
    let result = (|| {
        match m.r#type.as_str() {
            "bind" => {
                mount(
                    Some(m.source.as_str()),
                    dir,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )?;
            }
            fstype => {
                let data: Vec<&str> = m
                    .options
                    .iter()
                    .map(String::as_str)
                    .filter(|o| *o != "rw" && *o != "ro")
                    .collect();
                mount(
                    Some(m.source.as_str()),
                    dir,
                    Some(fstype),
                    MsFlags::MS_RDONLY,
                    Some(data.join(",").as_str()),
                )?;
            }
        }
        let read = |rel: &str| -> Option<String> {
            let p = dir.join(rel);
            // Refuse symlinks: they would resolve against the host's root.
            let md = std::fs::symlink_metadata(&p).ok()?;
            if !md.is_file() || md.len() > (4 << 20) {
                return None;
            }
            std::fs::read_to_string(p).ok()
        };
        let out = (read("etc/passwd"), read("etc/group"));
        if umount2(dir, MntFlags::empty()).is_err() {
            umount2(dir, MntFlags::MNT_DETACH)?;
        }
        Ok::<_, std::io::Error>(out)
    })();
    let _ = std::fs::remove_dir(dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:www:/var/www:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwww:x:34:\nbob:x:1000:\nwheel:x:10:bob,alice\naudio:x:29:bob\n";

    #[test]
    fn numeric_users_need_no_lookup() {
        assert!(!needs_lookup(""));
        assert!(!needs_lookup("0"));
        assert!(!needs_lookup("1000:1000"));
        assert!(needs_lookup("1000"));
        assert!(needs_lookup("bob"));
        assert!(needs_lookup("1000:wheel"));
    }

    #[test]
    fn resolves_users_like_docker() {
        let r = |u: &str| resolve_user("c", u, Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(r("root"), ResolvedUser::default());
        assert_eq!(
            r("www"),
            ResolvedUser {
                uid: 33,
                gid: 34,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            r("bob"),
            ResolvedUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10, 29]
            }
        );
        assert_eq!(r("1000").gid, 1000);
        assert_eq!(r("4242").gid, 0);
        assert_eq!(r("4242:7").gid, 7);
        assert_eq!(r("www:wheel").gid, 10);
        assert!(resolve_user("c", "nobody", Some(PASSWD), Some(GROUP)).is_err());
        assert!(resolve_user("c", "1:nogroup", Some(PASSWD), Some(GROUP)).is_err());
        assert!(resolve_user("c", "bob", None, None).is_err());
    }

    #[test]
    fn resolv_conf_drops_loopback_servers_in_own_netns() {
        let host = "nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch lan\n";
        assert_eq!(
            resolv_conf(None, host, true),
            "nameserver 10.0.0.2\nsearch lan\n"
        );
        assert_eq!(resolv_conf(None, host, false), host);
        let dns = Dns {
            nameservers: vec!["10.1.1.1".parse().unwrap()],
            search: vec!["svc".into()],
            options: vec!["ndots:0".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns), host, true),
            "nameserver 10.1.1.1\nsearch svc\noptions ndots:0\n"
        );
        // Search domains or options alone keep the host's (reachable) nameservers.
        let only_search = Dns {
            nameservers: vec![],
            search: vec!["corp".into()],
            options: vec![],
        };
        assert_eq!(
            resolv_conf(Some(&only_search), host, true),
            "nameserver 10.0.0.2\nsearch corp\n"
        );
    }
}
