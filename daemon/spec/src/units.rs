//! Parsers for the small value languages used in cluster and stack files: durations, memory
//! sizes, port and mount short forms, command lines, names, image references and signals.
//!
//! They return plain messages (lowercase, no final period) so that the CLI can reuse them for
//! flags such as `--stop-grace-period 10s` or `-p 8080:80`.

use model::{Millis, Mount, MountKind, PortSpec, Protocol, PublishMode};

/// The smallest memory limit accepted (the kernel and runc need some room): 4 MiB.
pub const MIN_MEMORY_BYTES: u64 = 4 * 1024 * 1024;
/// The smallest CPU limit accepted: 0.001 CPU, in billionths of a CPU.
pub const MIN_NANO_CPUS: u64 = 1_000_000;
/// The longest full service name (`STACK_SERVICE`); it must fit a DNS label.
pub const MAX_SERVICE_NAME_LEN: usize = 63;

/// Parses a Go/docker duration: a sequence of decimal numbers with a unit each, such as
/// `"100ms"`, `"5s"`, `"1m30s"`, `"1.5h"`, or `"0"`. Units: `ns`, `us` (`µs`), `ms`, `s`, `m`, `h`.
/// The result is in milliseconds; a non-zero duration shorter than 1ms is refused.
pub fn parse_duration(s: &str) -> Result<Millis, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration; write it like \"10s\", \"1m30s\" or \"100ms\"".into());
    }
    if text.starts_with('-') {
        return Err(format!("invalid duration \"{s}\": must not be negative"));
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    if text == "0" {
        return Ok(0);
    }
    let mut nanos: f64 = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(format!(
                "invalid duration \"{s}\": expected a number before each unit, like \"10s\" or \"1m30s\""
            ));
        }
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid duration \"{s}\": bad number \"{number}\""))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "invalid duration \"{s}\": missing unit after {number} (use ns, us, ms, s, m or h)"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration \"{s}\": unknown unit \"{other}\" (use ns, us, ms, s, m or h)"
                ));
            }
        };
        nanos += value * scale;
    }
    let millis = nanos / 1e6;
    if !millis.is_finite() || millis > u64::MAX as f64 / 2.0 {
        return Err(format!("invalid duration \"{s}\": too large"));
    }
    if nanos > 0.0 && millis < 1.0 {
        return Err(format!(
            "invalid duration \"{s}\": shorter than the 1ms resolution shoal uses"
        ));
    }
    Ok(millis.round() as u64)
}

/// Renders milliseconds the way docker prints durations: `"1m30s"`, `"100ms"`, `"0s"`.
pub fn format_duration(ms: Millis) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rem) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rem) = (rem / 60_000, rem % 60_000);
    let (sec, milli) = (rem / 1000, rem % 1000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 || (h > 0 && (sec > 0 || milli > 0)) {
        out.push_str(&format!("{m}m"));
    }
    if milli > 0 {
        let frac = format!("{milli:03}");
        out.push_str(&format!("{sec}.{}s", frac.trim_end_matches('0')));
    } else if sec > 0 || out.is_empty() {
        out.push_str(&format!("{sec}s"));
    }
    out
}

/// Parses a memory size the way docker does: a number with an optional binary unit
/// `b`, `k`, `m`, `g`, `t`, `p` (case-insensitive, optionally followed by `b` or `ib`):
/// `"256M"`, `"1G"`, `"1.5g"`, `"512mib"`, `"1048576"`.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let num_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(num_len);
    if number.is_empty() {
        return Err(format!(
            "invalid memory size \"{s}\": expected a number with an optional unit, like \"256M\" or \"1G\""
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid memory size \"{s}\": bad number \"{number}\""))?;
    let unit = unit.trim().to_ascii_lowercase();
    let shift = match unit.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        other => {
            return Err(format!(
                "invalid memory size \"{s}\": unknown unit \"{other}\" (use b, k, m, g, t or p)"
            ));
        }
    };
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("invalid memory size \"{s}\": too large"));
    }
    Ok(bytes as u64)
}

/// Parses CPUs given as a decimal number (`0.5`) into billionths of a CPU.
pub fn cpus_to_nano(cpus: f64) -> Result<u64, String> {
    if !cpus.is_finite() || cpus < 0.0 {
        return Err(format!("invalid cpus {cpus}: must be a positive number"));
    }
    let nano = (cpus * 1e9).round();
    if nano < MIN_NANO_CPUS as f64 {
        return Err(format!("invalid cpus {cpus}: must be at least 0.001"));
    }
    if nano >= u64::MAX as f64 {
        return Err(format!("invalid cpus {cpus}: too large"));
    }
    Ok(nano as u64)
}

/// Splits a command line on whitespace the way a POSIX shell splits words, honouring single
/// quotes, double quotes and backslash escapes (no variable expansion, no globbing).
pub fn split_command(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated single quote in \"{s}\"")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unterminated double quote in \"{s}\"")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated double quote in \"{s}\"")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => return Err(format!("trailing backslash in \"{s}\"")),
            },
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Whether `name` is a valid stack, service or volume name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Checks a stack or service name; the error says what is allowed.
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name must not be empty"));
    }
    if !is_valid_name(name) {
        return Err(format!(
            "invalid {kind} name \"{name}\": use letters, digits, '_', '.' and '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Parses a short port: `"8080:80"`, `"8080:80/udp"`, a range `"8000-8002:9000-9002/tcp"`, a
/// target alone (`"80"`, `"80/udp"`), which is published on a free port of
/// [`model::AUTO_PORTS`] chosen by the cluster (published 0 here), or any of these after a host
/// address (`"127.0.0.1:8080:80"`, `"127.0.0.1::80"`) the port is served on. Every port is
/// published in `ingress` mode.
pub fn parse_port_short(s: &str) -> Result<Vec<PortSpec>, String> {
    let (ports, protocol) = match s.rsplit_once('/') {
        Some((p, proto)) => (p, parse_protocol(proto)?),
        None => (s, Protocol::Tcp),
    };
    let mut parts: Vec<&str> = ports.split(':').collect();
    let mut host_ip = None;
    if parts.len() == 3 {
        host_ip = Some(parse_host_ip(parts[0]).map_err(|e| format!("invalid port \"{s}\": {e}"))?);
        parts.remove(0);
        if parts[0].is_empty() {
            parts.remove(0);
        }
    }
    let (published, target) = match parts.as_slice() {
        [published, target] => (*published, *target),
        [target] => {
            return Ok(parse_port_range(s, target)?
                .into_iter()
                .map(|target| PortSpec {
                    published: 0,
                    target,
                    protocol,
                    mode: PublishMode::Ingress,
                    host_ip,
                })
                .collect());
        }
        _ if ports.contains('[') || parts.len() > 3 => {
            return Err(format!(
                "invalid port \"{s}\": IPv6 host addresses are not supported yet; bind to an IPv4 address"
            ));
        }
        _ => {
            return Err(format!(
                "invalid port \"{s}\": expected \"PUBLISHED:TARGET[/PROTOCOL]\", like \"8080:80\""
            ));
        }
    };
    let published = parse_port_range(s, published)?;
    let target = parse_port_range(s, target)?;
    if published.len() != target.len() {
        return Err(format!(
            "invalid port \"{s}\": the published and target ranges have different lengths"
        ));
    }
    Ok(published
        .into_iter()
        .zip(target)
        .map(|(published, target)| PortSpec {
            published,
            target,
            protocol,
            mode: PublishMode::Ingress,
            host_ip,
        })
        .collect())
}

/// The host address a published port is bound to: an IPv4 address other than `0.0.0.0` (which
/// means every address: leave the address out instead) and not multicast or broadcast.
pub fn parse_host_ip(s: &str) -> Result<std::net::Ipv4Addr, String> {
    let ip: std::net::Ipv4Addr = s.trim().parse().map_err(|_| {
        if s.contains(':') || s.contains('[') {
            format!("host address {s:?}: IPv6 host addresses are not supported yet; bind to an IPv4 address")
        } else {
            format!("host address {s:?} is not an IPv4 address like 127.0.0.1")
        }
    })?;
    if ip.is_unspecified() {
        return Err(format!(
            "host address {ip} means every address: leave the address out to publish on all of them"
        ));
    }
    if ip.is_multicast() || ip.is_broadcast() {
        return Err(format!(
            "host address {ip} is not a unicast address a node can have"
        ));
    }
    Ok(ip)
}

fn parse_port_range(whole: &str, s: &str) -> Result<Vec<u16>, String> {
    match s.split_once('-') {
        Some((a, b)) => {
            let a = parse_port_number(whole, a)?;
            let b = parse_port_number(whole, b)?;
            if b < a {
                return Err(format!(
                    "invalid port \"{whole}\": range {s} ends before it starts"
                ));
            }
            Ok((a..=b).collect())
        }
        None => Ok(vec![parse_port_number(whole, s)?]),
    }
}

fn parse_port_number(whole: &str, s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(n) => check_port(n as i64).map_err(|e| format!("invalid port \"{whole}\": {e}")),
        Err(_) => Err(format!(
            "invalid port \"{whole}\": \"{s}\" is not a port number"
        )),
    }
}

/// A port number must be in 1..=65535.
pub fn check_port(n: i64) -> Result<u16, String> {
    if (1..=65535).contains(&n) {
        Ok(n as u16)
    } else {
        Err(format!("port {n} is out of range 1-65535"))
    }
}

/// `tcp` or `udp`.
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Err("protocol \"sctp\" is not supported yet (use tcp or udp)".into()),
        _ => Err(format!("invalid protocol \"{s}\" (use tcp or udp)")),
    }
}

/// Parses a short mount: `"/host:/ctr"`, `"/host:/ctr:ro"` (bind) or `"name:/ctr[:rw]"` (volume).
pub fn parse_mount_short(s: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [target] => {
            return Err(format!(
                "invalid volume \"{s}\": anonymous volumes are not supported yet; name the volume, like \"data:{target}\""
            ));
        }
        [source, target] => (*source, *target, None),
        [source, target, options] => (*source, *target, Some(*options)),
        _ => {
            return Err(format!(
                "invalid volume \"{s}\": expected \"SOURCE:TARGET[:ro]\""
            ));
        }
    };
    let mut read_only = false;
    if let Some(options) = options {
        for option in options.split(',') {
            match option {
                "ro" => read_only = true,
                "rw" => read_only = false,
                other => {
                    return Err(format!(
                        "invalid volume \"{s}\": unknown option \"{other}\" (use ro or rw)"
                    ));
                }
            }
        }
    }
    let kind = if source.starts_with('/') {
        MountKind::Bind
    } else if source.starts_with('.') || source.starts_with('~') {
        return Err(format!(
            "invalid volume \"{s}\": the host path \"{source}\" must be absolute"
        ));
    } else {
        MountKind::Volume
    };
    let mount = Mount {
        kind,
        source: source.to_string(),
        target: target.to_string(),
        read_only,
        size: None,
    };
    validate_mount(&mount).map_err(|e| format!("invalid volume \"{s}\": {e}"))?;
    Ok(mount)
}

/// Parses Docker's `--tmpfs` form: `"/run"` or `"/run:size=64m,ro"`. Options: `size`, `ro`,
/// `rw`, and `noexec`, `nosuid`, `nodev` (always set).
pub fn parse_tmpfs_short(s: &str) -> Result<Mount, String> {
    let (target, options) = match s.split_once(':') {
        Some((t, o)) => (t, o),
        None => (s, ""),
    };
    let mut mount = Mount {
        kind: MountKind::Tmpfs,
        source: String::new(),
        target: target.to_string(),
        read_only: false,
        size: None,
    };
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            Some(("size", v)) => {
                mount.size =
                    Some(parse_memory(v).map_err(|e| format!("invalid tmpfs \"{s}\": {e}"))?)
            }
            None if option == "ro" => mount.read_only = true,
            None if option == "rw" => mount.read_only = false,
            None if matches!(option, "noexec" | "nosuid" | "nodev") => {}
            _ => {
                return Err(format!(
                    "invalid tmpfs \"{s}\": option \"{option}\" is not supported (use size=, ro or rw; tmpfs mounts are always noexec, nosuid, nodev)"
                ));
            }
        }
    }
    validate_mount(&mount).map_err(|e| format!("invalid tmpfs \"{s}\": {e}"))?;
    Ok(mount)
}

/// Checks a mount's source and target for its kind.
pub fn validate_mount(m: &Mount) -> Result<(), String> {
    if !m.target.starts_with('/') {
        return Err(format!("target \"{}\" must be an absolute path", m.target));
    }
    if m.target == "/" {
        return Err("target must not be \"/\"".into());
    }
    match m.kind {
        MountKind::Bind => {
            if !m.source.starts_with('/') {
                return Err(format!(
                    "bind source \"{}\" must be an absolute host path",
                    m.source
                ));
            }
            if m.size.is_some() {
                return Err("size is only valid for tmpfs mounts".into());
            }
        }
        MountKind::Volume => {
            if m.source.is_empty() {
                return Err(
                    "anonymous volumes are not supported yet; give the volume a source name".into(),
                );
            }
            if !is_valid_name(&m.source) {
                return Err(format!(
                    "invalid volume name \"{}\": use letters, digits, '_', '.' and '-', starting with a letter or digit",
                    m.source
                ));
            }
            if m.size.is_some() {
                return Err("size is only valid for tmpfs mounts".into());
            }
        }
        MountKind::Tmpfs => {
            if !m.source.is_empty() {
                return Err("a tmpfs mount takes no source".into());
            }
        }
    }
    Ok(())
}

/// Checks an image reference: `registry/name:tag`, `name@sha256:...`, `oci-archive:/abs/path`
/// or `docker-archive:/abs/path`.
pub fn validate_image(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("image must not be empty".into());
    }
    for transport in ["oci-archive:", "docker-archive:"] {
        if let Some(path) = image.strip_prefix(transport) {
            if !path.starts_with('/') {
                return Err(format!(
                    "invalid image \"{image}\": the archive path after \"{transport}\" must be absolute"
                ));
            }
            return Ok(());
        }
    }
    if let Some((transport, _)) = image.split_once(':')
        && matches!(
            transport,
            "docker" | "oci" | "dir" | "containers-storage" | "docker-daemon"
        )
    {
        return Err(format!(
            "invalid image \"{image}\": transport \"{transport}:\" is not supported (use a registry reference, oci-archive:/path or docker-archive:/path)"
        ));
    }
    validate_reference(image).map_err(|e| format!("invalid image reference \"{image}\": {e}"))
}

fn validate_reference(r: &str) -> Result<(), String> {
    let (name_tag, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    if let Some(d) = digest {
        let (algo, hex) = d
            .split_once(':')
            .ok_or_else(|| format!("digest \"{d}\" must look like sha256:<64 hex digits>"))?;
        if algo != "sha256"
            || hex.len() != 64
            || !hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        {
            return Err(format!(
                "digest \"{d}\" must look like sha256:<64 lowercase hex digits>"
            ));
        }
    }
    let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(format!(
                "invalid tag \"{tag}\" (letters, digits, '_', '.', '-', at most 128)"
            ));
        }
    }
    if name.is_empty() {
        return Err("missing repository name".into());
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            let (host, port) = match first.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (first, None),
            };
            let host_ok = !host.is_empty()
                && host.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !host_ok {
                return Err(format!("invalid registry host \"{first}\""));
            }
            if let Some(port) = port
                && port.parse::<u16>().is_err()
            {
                return Err(format!("invalid registry port in \"{first}\""));
            }
            components.remove(0);
        }
    }
    for c in components {
        let ok = !c.is_empty()
            && c.chars()
                .next()
                .is_some_and(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.chars()
                .last()
                .is_some_and(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.chars().all(|ch| {
                ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
            });
        if !ok {
            return Err(format!(
                "invalid path component \"{c}\" (lowercase letters, digits and separators '.', '_', '-')"
            ));
        }
    }
    Ok(())
}

const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// Normalises a signal name to `SIGXXX`: `"term"`, `"SIGTERM"` and `"sigterm"` all give
/// `"SIGTERM"`.
pub fn normalize_signal(s: &str) -> Result<String, String> {
    let upper = s.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.contains(&bare) {
        Ok(format!("SIG{bare}"))
    } else {
        Err(format!(
            "unknown signal \"{s}\" (use a name such as SIGTERM, SIGINT, SIGQUIT or SIGKILL)"
        ))
    }
}

/// The candidate closest to `word` when it is close enough to be a plausible typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and transpositions
/// of neighbours each cost 1, so `imgae` is one edit away from `image`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}
