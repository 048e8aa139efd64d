//! Name resolution settings of a task: `extra_hosts`, `dns`, `dns_search`, `dns_opt` (stack and
//! Compose files), `--host`, `--dns`, `--dns-search`, `--dns-option` (flags) and the
//! `ExtraHosts`, `DNS`, `DNSSearch`, `DNSOptions` D-Bus properties, all through these checks.

use std::net::IpAddr;

/// At most this many resolvers: the C library reads the first three `nameserver` lines only.
pub const MAX_DNS_SERVERS: usize = 3;
/// At most this many search domains (the C library's historical limit).
pub const MAX_DNS_SEARCH: usize = 6;
/// At most this many resolver options.
pub const MAX_DNS_OPTIONS: usize = 16;
/// At most this many extra `/etc/hosts` entries.
pub const MAX_EXTRA_HOSTS: usize = 1_000;

/// A DNS name: dot-separated labels of letters, digits and `-`, at most 63 characters each and
/// 253 in all.
pub fn check_hostname(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid hostname \"{h}\": use dot-separated labels of letters, digits and '-' (at most 63 characters each)"
        ))
    }
}

/// One extra host: `NAME:ADDRESS` (Docker's `--host`; the address may be IPv6, everything after
/// the first `:`) or `NAME=ADDRESS` (Compose's newer form).
pub fn parse_extra_host(s: &str) -> Result<(String, IpAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .or_else(|| s.split_once(':'))
        .ok_or_else(|| {
            format!("invalid extra host \"{s}\": expected NAME:ADDRESS, like db.local:10.0.0.5")
        })?;
    let (name, addr) = (name.trim(), addr.trim());
    check_hostname(name).map_err(|e| format!("invalid extra host \"{s}\": {e}"))?;
    // Compose writes IPv6 addresses in brackets too: `myhost:[::1]`.
    let bare = addr.trim_start_matches('[').trim_end_matches(']');
    let ip = bare
        .parse::<IpAddr>()
        .map_err(|_| format!("invalid extra host \"{s}\": \"{addr}\" is not an IP address"))?;
    Ok((name.to_string(), ip))
}

/// The text form [`parse_extra_host`] reads back: `NAME:ADDRESS`.
pub fn format_extra_host(host: &(String, IpAddr)) -> String {
    format!("{}:{}", host.0, host.1)
}

/// A resolver's address.
pub fn parse_dns_server(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse::<IpAddr>()
        .map_err(|_| format!("invalid DNS server \"{s}\": expected an IP address, like 10.0.0.2"))
}

/// A search domain: a DNS name (a trailing dot is allowed).
pub fn check_dns_search(s: &str) -> Result<(), String> {
    check_hostname(s.strip_suffix('.').unwrap_or(s))
        .map_err(|_| format!("invalid DNS search domain \"{s}\": expected a domain name"))
}

/// A resolver option as `resolv.conf` writes it: `ndots:2`, `timeout:1`, `rotate`, ...
pub fn check_dns_option(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid DNS option \"{s}\": expected a resolv.conf option, like ndots:2"
        ))
    }
}

/// The counts of a task's settings against the limits above: (the stack file's key, the
/// problem) for each count above its limit.
pub fn check_counts(
    extra_hosts: usize,
    dns: usize,
    dns_search: usize,
    dns_options: usize,
) -> Vec<(&'static str, String)> {
    let mut errs = Vec::new();
    for (key, what, n, max) in [
        ("extra_hosts", "extra hosts", extra_hosts, MAX_EXTRA_HOSTS),
        ("dns", "DNS servers", dns, MAX_DNS_SERVERS),
        (
            "dns_search",
            "DNS search domains",
            dns_search,
            MAX_DNS_SEARCH,
        ),
        ("dns_opt", "DNS options", dns_options, MAX_DNS_OPTIONS),
    ] {
        if n > max {
            errs.push((key, format!("{n} {what} is above the limit of {max}")));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_hosts_take_both_forms_and_ipv6() {
        assert_eq!(
            parse_extra_host("db.local:10.0.0.5").unwrap(),
            ("db.local".to_string(), "10.0.0.5".parse().unwrap())
        );
        assert_eq!(
            parse_extra_host("gw=192.168.1.1").unwrap().1,
            "192.168.1.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            parse_extra_host("v6:2001:db8::1").unwrap().1,
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            parse_extra_host("v6=[::1]").unwrap().1,
            "::1".parse::<IpAddr>().unwrap()
        );
        let h = parse_extra_host("a:1.2.3.4").unwrap();
        assert_eq!(parse_extra_host(&format_extra_host(&h)).unwrap(), h);
        assert!(
            parse_extra_host("nohost")
                .unwrap_err()
                .contains("NAME:ADDRESS")
        );
        assert!(
            parse_extra_host("a b:1.2.3.4")
                .unwrap_err()
                .contains("invalid hostname")
        );
        assert!(
            parse_extra_host("a:localhost")
                .unwrap_err()
                .contains("not an IP address")
        );
    }

    #[test]
    fn resolver_settings_are_checked() {
        assert!(parse_dns_server("8.8.8.8").is_ok());
        assert!(parse_dns_server("dns.google").is_err());
        assert!(check_dns_search("example.com.").is_ok());
        assert!(check_dns_search("bad domain").is_err());
        assert!(check_dns_option("ndots:2").is_ok());
        assert!(check_dns_option("ndots 2").is_err());
        assert!(check_counts(0, 3, 6, 16).is_empty());
        assert_eq!(
            check_counts(1001, 4, 0, 0),
            vec![
                (
                    "extra_hosts",
                    "1001 extra hosts is above the limit of 1000".to_string()
                ),
                ("dns", "4 DNS servers is above the limit of 3".to_string())
            ]
        );
    }
}
