//! The nftables table behind published ports (the single-node routing mesh).
//!
//! shoal owns one table, `table ip <name>`, and never touches any other, so it coexists with the
//! tables of iptables-nft, Docker and firewalld. Every base chain has policy `accept`: the table
//! only rewrites addresses and never filters traffic that is not shoal's. Layout:
//!
//! - `published`: one DNAT rule per published port, spreading new connections over the backends
//!   round-robin (`numgen inc`).
//! - `prerouting` (traffic arriving from outside or from tasks) and `output` (traffic from host
//!   processes, `localhost` included) jump to `published` for packets addressed to the node itself.
//! - `postrouting` masquerades DNAT-ed traffic into the bridge when its source cannot receive the
//!   reply directly: loopback sources (the task cannot route to 127.0.0.1) and tasks reaching a
//!   published port (hairpin). Remote clients keep their source address. It also masquerades the
//!   tasks' own traffic leaving the subnet (multicast excepted) behind the node's address, as the
//!   CNI `bridge` plugin's `ipMasq` did.
//! - `input` drops packets addressed to 127.0.0.0/8 that arrive from a non-loopback interface,
//!   unless they belong to a DNAT-ed connection: `route_localnet=1` (needed for `localhost`)
//!   would otherwise let the network reach loopback-only services.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::process::{Command, Stdio};

use crate::Ipv4Subnet;
use crate::PortBinding;
use crate::error::{Error, Result};

/// What the table is rendered from.
pub(crate) struct Table<'a> {
    pub name: &'a str,
    pub bridge: &'a str,
    pub subnet: Ipv4Subnet,
}

/// Checks the bindings and orders them by protocol and port, so the rendering is deterministic.
pub(crate) fn validate(bindings: &[PortBinding]) -> Result<Vec<&PortBinding>> {
    let mut seen: BTreeMap<(&str, u16, Option<std::net::Ipv4Addr>), &PortBinding> = BTreeMap::new();
    for b in bindings {
        let protocol = b.protocol.as_str();
        let invalid = |reason: String| Error::InvalidPortBinding {
            published: b.published,
            protocol,
            reason,
        };
        if b.published == 0 {
            return Err(invalid("port 0 cannot be published".into()));
        }
        if let Some((ip, _)) = b.backends.iter().find(|(_, port)| *port == 0) {
            return Err(invalid(format!("backend {ip} has target port 0")));
        }
        let clash = seen.keys().any(|&(p, n, ip)| {
            p == protocol && n == b.published && (ip.is_none() || b.host_ip.is_none())
        });
        if seen.insert((protocol, b.published, b.host_ip), b).is_some() || clash {
            return Err(invalid(
                "it appears twice: give each published port to one service".into(),
            ));
        }
    }
    Ok(seen.into_values().collect())
}

/// The script that atomically replaces the whole table with one serving `bindings`.
pub(crate) fn replace_script(table: &Table<'_>, bindings: &[&PortBinding]) -> String {
    let mut s = String::new();
    // Declaring the table first makes the delete succeed when it does not exist yet; the three
    // commands form one transaction, so there is no moment without rules.
    let _ = writeln!(s, "table ip {}", table.name);
    let _ = writeln!(s, "delete table ip {}", table.name);
    let _ = writeln!(s, "table ip {} {{", table.name);
    s.push_str("\tchain published {\n");
    for b in bindings {
        if let Some(rule) = dnat_rule(b) {
            let _ = writeln!(s, "\t\t{rule}");
        }
        if let Some(rule) = peers_rule(b) {
            let _ = writeln!(s, "\t\t{rule}");
        }
    }
    s.push_str("\t}\n");
    // Connections forwarded to another node leave with this node's address, so that the reply
    // comes back through it (the client's own address is lost on that path).
    s.push_str("\tchain mesh {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n");
    for b in bindings.iter().filter(|b| b.backends.is_empty()) {
        if !b.remote.is_empty() {
            let nodes: Vec<String> = b.remote.iter().map(|n| n.to_string()).collect();
            let _ = writeln!(
                s,
                "\t\tct status dnat ip daddr {{ {} }} {} dport {} masquerade",
                nodes.join(", "),
                b.protocol.as_str(),
                b.published
            );
        }
    }
    s.push_str("\t}\n");
    for (chain, rules) in base_chains(table) {
        let _ = writeln!(s, "\tchain {chain} {{");
        for line in rules {
            let _ = writeln!(s, "\t\t{line}");
        }
        s.push_str("\t}\n");
    }
    s.push_str("}\n");
    s
}

/// The script that creates the table when it is missing and refreshes its base chains, leaving the
/// `published` chain (the ports being served) untouched.
pub(crate) fn ensure_script(table: &Table<'_>) -> String {
    let name = table.name;
    let chains = base_chains(table);
    let mut s = String::new();
    let _ = writeln!(s, "table ip {name} {{");
    s.push_str("\tchain published {\n\t}\n");
    for (chain, rules) in &chains {
        let _ = writeln!(s, "\tchain {chain} {{\n\t\t{}\n\t}}", rules[0]);
    }
    s.push_str("}\n");
    for (chain, rules) in &chains {
        let _ = writeln!(s, "flush chain ip {name} {chain}");
        for rule in &rules[1..] {
            let _ = writeln!(s, "add rule ip {name} {chain} {rule}");
        }
    }
    s
}

/// The script that removes the table; it succeeds when the table does not exist.
pub(crate) fn delete_script(table: &Table<'_>) -> String {
    format!("table ip {0}\ndelete table ip {0}\n", table.name)
}

/// Base chains: the hook declaration first, then the rules.
fn base_chains(table: &Table<'_>) -> [(&'static str, Vec<String>); 5] {
    [
        (
            "prerouting",
            vec![
                "type nat hook prerouting priority dstnat; policy accept;".into(),
                "fib daddr type local jump published".into(),
            ],
        ),
        (
            "output",
            vec![
                // `dstnat` is not accepted as a name at the output hook by nft 1.0; it is -100.
                "type nat hook output priority -100; policy accept;".into(),
                "fib daddr type local jump published".into(),
            ],
        ),
        (
            "postrouting",
            vec![
                "type nat hook postrouting priority srcnat; policy accept;".into(),
                format!(
                    "oifname \"{}\" ct status dnat ip saddr {{ 127.0.0.0/8, {} }} masquerade",
                    table.bridge, table.subnet
                ),
                format!(
                    "ip saddr {0} ip daddr != {{ {0}, 224.0.0.0/4 }} masquerade",
                    table.subnet
                ),
            ],
        ),
        (
            "forward",
            vec![
                "type filter hook forward priority mangle; policy accept;".into(),
                // Connections routed onto an overlay (the routing mesh's path to another node
                // over the ingress network) fit its smaller MTU from their first segment on.
                format!(
                    "oifname \"{}*\" tcp flags syn tcp option maxseg size set rt mtu",
                    crate::overlay::BRIDGE_PREFIX
                ),
            ],
        ),
        (
            "input",
            vec![
                "type filter hook input priority filter; policy accept;".into(),
                "iifname != \"lo\" ip daddr 127.0.0.0/8 ct state != { established, related } \
                 ct status & dnat == 0 drop"
                    .into(),
            ],
        ),
    ]
}

/// The DNAT rule of one binding; `None` when it has no backend (the port is then not served).
fn dnat_rule(b: &PortBinding) -> Option<String> {
    let on = match b.host_ip {
        Some(ip) => format!("ip daddr {ip} "),
        None => String::new(),
    };
    let rule = dnat_to(b)?;
    Some(format!("{on}{rule}"))
}

/// For a bound port served here: the rule that serves connections the routing mesh's other
/// nodes forward to this node's own address.
fn peers_rule(b: &PortBinding) -> Option<String> {
    if b.host_ip.is_none() || b.peers.is_empty() || b.backends.is_empty() {
        return None;
    }
    let peers: Vec<String> = b.peers.iter().map(|p| p.to_string()).collect();
    Some(format!(
        "ip saddr {{ {} }} {}",
        peers.join(", "),
        dnat_to(b)?
    ))
}

/// `PROTO dport PORT dnat to ...`: the local backends, else the remote nodes.
fn dnat_to(b: &PortBinding) -> Option<String> {
    let proto = b.protocol.as_str();
    let port = b.published;
    match b.backends.as_slice() {
        [] if b.remote.is_empty() => None,
        [] => {
            let elements = b
                .remote
                .iter()
                .enumerate()
                .map(|(i, ip)| format!("{i} : {ip} . {port}"))
                .collect::<Vec<_>>()
                .join(", ");
            // The mark lets a forward filter that drops by default accept the forwarded leg.
            Some(format!(
                "{proto} dport {port} ct mark set ct mark or {:#x} dnat to numgen inc mod {} map {{ {elements} }}",
                crate::filter::MESH_MARK,
                b.remote.len()
            ))
        }
        [(ip, target)] => Some(format!("{proto} dport {port} dnat to {ip}:{target}")),
        backends => {
            let elements = backends
                .iter()
                .enumerate()
                .map(|(i, (ip, target))| format!("{i} : {ip} . {target}"))
                .collect::<Vec<_>>()
                .join(", ");
            Some(format!(
                "{proto} dport {port} dnat to numgen inc mod {} map {{ {elements} }}",
                backends.len()
            ))
        }
    }
}

/// Runs `nft -f -` with `script` as one atomic transaction.
pub(crate) fn apply(action: &'static str, table: &str, script: &str) -> Result<()> {
    tracing::debug!(table, action, "applying nftables script");
    let nft_err = |message: String| Error::Nft {
        action,
        table: table.to_owned(),
        message,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NftMissing,
            _ => nft_err(format!("cannot run nft: {e}")),
        })?;
    {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(script.as_bytes())
            .map_err(|e| nft_err(format!("cannot write the ruleset to nft: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| nft_err(format!("cannot wait for nft: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(nft_err(format!(
            "{} (exit {})",
            stderr.trim(),
            output.status.code().unwrap_or(-1)
        )))
    }
}

/// Whether `table ip <name>` exists with every chain shoal writes into it (the chain names
/// are enough: the table is only ever replaced whole, so a present chain is shoal's).
pub(crate) fn table_intact(name: &str) -> bool {
    let Ok(out) = Command::new("nft")
        .args(["list", "table", "ip", name])
        .stdin(Stdio::null())
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success()
        && [
            "published",
            "prerouting",
            "output",
            "postrouting",
            "forward",
            "input",
        ]
        .iter()
        .all(|c| text.contains(&format!("chain {c} {{")))
}

/// The table in each task's own namespace that spreads connections to a service's VIP over the
/// service's running tasks.
pub(crate) const VIP_TABLE: &str = "shoal_vip";

/// The script that atomically replaces the VIP table of a task's namespace: in `output` (the
/// task's own connections), each VIP is DNAT-ed to its backends round-robin (`numgen inc`); a VIP
/// without backends is refused at once (ICMP unreachable) rather than left to time out.
pub(crate) fn vip_script(vips: &[crate::Vip]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table ip {VIP_TABLE}");
    let _ = writeln!(s, "delete table ip {VIP_TABLE}");
    let _ = writeln!(s, "table ip {VIP_TABLE} {{");
    s.push_str("\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n");
    for v in vips.iter().filter(|v| !v.backends.is_empty()) {
        let map: Vec<String> = v
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{i} : {b}"))
            .collect();
        let _ = writeln!(
            s,
            "\t\tip daddr {} dnat to numgen inc mod {} map {{ {} }}",
            v.vip,
            v.backends.len(),
            map.join(", ")
        );
    }
    s.push_str("\t}\n");
    s.push_str("\tchain refuse {\n\t\ttype filter hook output priority 0; policy accept;\n");
    for v in vips.iter().filter(|v| v.backends.is_empty()) {
        let _ = writeln!(
            s,
            "\t\tip daddr {} reject with icmp type host-unreachable",
            v.vip
        );
    }
    s.push_str("\t}\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::Protocol;
    use std::net::Ipv4Addr;

    #[test]
    fn vips_are_balanced_round_robin_and_a_vip_without_tasks_is_refused() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let script = vip_script(&[
            crate::Vip {
                vip: ip("10.0.0.2"),
                backends: vec![ip("10.0.0.3"), ip("10.0.0.4")],
            },
            crate::Vip {
                vip: ip("10.0.0.9"),
                backends: vec![],
            },
        ]);
        assert!(
            script.contains(
                "ip daddr 10.0.0.2 dnat to numgen inc mod 2 map { 0 : 10.0.0.3, 1 : 10.0.0.4 }"
            ),
            "{script}"
        );
        assert!(
            script.contains("ip daddr 10.0.0.9 reject with icmp type host-unreachable"),
            "{script}"
        );
        assert!(!script.contains("10.0.0.9 dnat"), "{script}");
        // Replaced whole in one transaction.
        assert!(script.starts_with("table ip shoal_vip\ndelete table ip shoal_vip\n"));
    }

    fn table() -> Table<'static> {
        Table {
            name: "shoal",
            bridge: "shoal0",
            subnet: "10.231.0.0/16".parse().unwrap(),
        }
    }

    fn binding(published: u16, protocol: Protocol, backends: &[(u8, u16)]) -> PortBinding {
        PortBinding {
            remote: Vec::new(),
            host_ip: None,
            peers: Vec::new(),
            published,
            protocol,
            backends: backends
                .iter()
                .map(|(last, port)| (Ipv4Addr::new(10, 231, 0, *last), *port))
                .collect(),
        }
    }

    #[test]
    fn renders_round_robin_over_all_backends() {
        let bindings = [
            binding(8080, Protocol::Tcp, &[(2, 80), (3, 80)]),
            binding(53, Protocol::Udp, &[(4, 5353)]),
            binding(9000, Protocol::Tcp, &[]),
        ];
        let ordered = validate(&bindings).unwrap();
        let s = replace_script(&table(), &ordered);
        assert!(s.starts_with("table ip shoal\ndelete table ip shoal\ntable ip shoal {\n"));
        assert!(s.contains(
            "tcp dport 8080 dnat to numgen inc mod 2 map { 0 : 10.231.0.2 . 80, 1 : 10.231.0.3 . 80 }"
        ));
        assert!(s.contains("udp dport 53 dnat to 10.231.0.4:5353"));
        assert!(!s.contains("9000"), "a port without backends is not served");
        assert!(s.contains(
            "oifname \"shoal0\" ct status dnat ip saddr { 127.0.0.0/8, 10.231.0.0/16 } masquerade"
        ));
        assert!(s.contains(
            "ip saddr 10.231.0.0/16 ip daddr != { 10.231.0.0/16, 224.0.0.0/4 } masquerade"
        ));
        assert_eq!(s.matches("policy accept").count(), 6);
        assert!(s.contains("oifname \"shbr-*\" tcp flags syn tcp option maxseg size set rt mtu"));
    }

    #[test]
    fn a_bound_port_answers_on_its_address_and_to_forwarding_peers_only() {
        let mut b = binding(8080, Protocol::Tcp, &[(2, 80)]);
        b.host_ip = Some("127.0.0.1".parse().unwrap());
        b.peers = vec!["192.168.1.3".parse().unwrap()];
        let s = replace_script(&table(), &validate(std::slice::from_ref(&b)).unwrap());
        assert!(
            s.contains("\t\tip daddr 127.0.0.1 tcp dport 8080 dnat to 10.231.0.2:80\n"),
            "{s}"
        );
        assert!(
            s.contains("\t\tip saddr { 192.168.1.3 } tcp dport 8080 dnat to 10.231.0.2:80\n"),
            "{s}"
        );
        // No rule serves the port on every address.
        assert!(!s.contains("\t\ttcp dport 8080"), "{s}");
        // Forwarded from a node without a task: to the remote node's own address.
        let mut f = binding(8080, Protocol::Tcp, &[]);
        f.host_ip = b.host_ip;
        f.remote = vec!["192.168.1.2".parse().unwrap()];
        let s = replace_script(&table(), &validate(&[f]).unwrap());
        assert!(
            s.contains("ip daddr 127.0.0.1 tcp dport 8080 ct mark set ct mark or 0x100000 dnat to numgen inc mod 1 map { 0 : 192.168.1.2 . 8080 }"),
            "{s}"
        );
        // Two addresses may share a number; a bound and an unbound port may not.
        let mut other = binding(8080, Protocol::Tcp, &[(3, 80)]);
        other.host_ip = Some("10.0.0.1".parse().unwrap());
        assert!(validate(&[b.clone(), other.clone()]).is_ok());
        other.host_ip = None;
        assert!(validate(&[b, other]).is_err());
    }

    #[test]
    fn a_port_with_no_local_task_is_forwarded_to_the_nodes_that_have_one() {
        let mut b = binding(8080, Protocol::Tcp, &[]);
        b.remote = vec![
            "192.168.1.2".parse().unwrap(),
            "192.168.1.3".parse().unwrap(),
        ];
        let local = binding(9090, Protocol::Tcp, &[(2, 80)]);
        let ordered = validate(std::slice::from_ref(&b)).unwrap();
        let s = replace_script(&table(), &ordered);
        assert!(
            s.contains(
                "tcp dport 8080 ct mark set ct mark or 0x100000 dnat to numgen inc mod 2 map { 0 : 192.168.1.2 . 8080, 1 : 192.168.1.3 . 8080 }"
            ),
            "{s}"
        );
        assert!(
            s.contains(
                "ct status dnat ip daddr { 192.168.1.2, 192.168.1.3 } tcp dport 8080 masquerade"
            ),
            "{s}"
        );
        // Local tasks win: a port served here is never forwarded (the client keeps its address).
        let mut both = local.clone();
        both.remote = vec!["192.168.1.2".parse().unwrap()];
        let s = replace_script(&table(), &validate(&[both]).unwrap());
        assert!(s.contains("tcp dport 9090 dnat to 10.231.0.2:80"), "{s}");
        assert!(!s.contains("192.168.1.2"), "{s}");
    }

    #[test]
    fn ensure_keeps_published_rules() {
        let s = ensure_script(&table());
        assert!(!s.contains("delete"));
        assert!(!s.contains("flush chain ip shoal published"));
        for chain in ["prerouting", "output", "postrouting", "input"] {
            assert!(
                s.contains(&format!("flush chain ip shoal {chain}\n")),
                "{chain}"
            );
        }
        assert!(s.contains("add rule ip shoal output fib daddr type local jump published"));
        assert!(s.contains("add rule ip shoal postrouting ip saddr 10.231.0.0/16 ip daddr != {"));
    }

    #[test]
    fn refuses_duplicate_and_zero_ports() {
        let dup = [
            binding(8080, Protocol::Tcp, &[(2, 80)]),
            binding(8080, Protocol::Tcp, &[(3, 80)]),
        ];
        let err = validate(&dup).unwrap_err().to_string();
        assert!(err.contains("8080/tcp"), "{err}");
        let same_port_other_protocol = [
            binding(8080, Protocol::Tcp, &[(2, 80)]),
            binding(8080, Protocol::Udp, &[(3, 80)]),
        ];
        assert_eq!(validate(&same_port_other_protocol).unwrap().len(), 2);
        assert!(validate(&[binding(0, Protocol::Tcp, &[(2, 80)])]).is_err());
        assert!(validate(&[binding(80, Protocol::Tcp, &[(2, 0)])]).is_err());
    }

    #[test]
    fn delete_script_tolerates_a_missing_table() {
        assert_eq!(
            delete_script(&table()),
            "table ip shoal\ndelete table ip shoal\n"
        );
    }
}
