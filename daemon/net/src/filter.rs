//! Coexistence with a forward filter that drops by default.
//!
//! Docker sets the `FORWARD` policy of iptables' `filter` table to `DROP` and turns on bridge
//! netfilter, and a firewall may do the same. A `drop` in any table at the `forward` hook drops
//! the packet whatever shoal's own table says, so the tasks' traffic (bridged between tasks, to
//! and from the outside, over VXLAN, and the routing mesh's forwarded leg) would be lost.
//!
//! When such a filter is there, shoal keeps a few `ACCEPT` rules at the top of the chain that is
//! meant for it: Docker's `DOCKER-USER` when it exists, else `FORWARD` itself. They are written
//! with the `iptables` command (the same front end, iptables-nft or legacy, that wrote the
//! table), so Docker and iptables still read the table, and each carries the comment `shoal`.
//! They accept traffic in or out of the node bridge and the overlay bridges (`shbr-*`), and
//! connections whose mark says the routing mesh forwarded them ([`MESH_MARK`]). Like the rest of
//! shoal's rules they are a reconciled state: checked every few seconds and written again when
//! something removed them. Without such a filter nothing is written and `iptables` is not needed.

use std::process::{Command, Stdio};

/// The connection mark bit the routing mesh sets on connections it forwards to another node.
pub const MESH_MARK: u32 = 0x0010_0000;

/// The comment on every rule of shoal's in another table.
const COMMENT: &str = "shoal";

/// The accept rules for `bridge` (the node bridge), in `iptables` argument form.
pub(crate) fn wanted(bridge: &str) -> Vec<Vec<String>> {
    let tagged = |mut m: Vec<String>| {
        m.extend(
            ["-m", "comment", "--comment", COMMENT, "-j", "ACCEPT"]
                .iter()
                .map(|s| s.to_string()),
        );
        m
    };
    let mark = format!("{MESH_MARK:#x}/{MESH_MARK:#x}");
    vec![
        tagged(vec!["-i".into(), bridge.into()]),
        tagged(vec!["-o".into(), bridge.into()]),
        tagged(vec!["-i".into(), "shbr-+".into()]),
        tagged(vec!["-o".into(), "shbr-+".into()]),
        tagged(vec!["-m".into(), "connmark".into(), "--mark".into(), mark]),
    ]
}

/// Which chain needs shoal's rules, from `iptables -S` of the filter table: `DOCKER-USER` if it
/// exists, else `FORWARD` when its policy drops; `None` when forwarded traffic is not dropped.
pub(crate) fn chain_of(listing: &str) -> Option<&'static str> {
    let lines: Vec<&str> = listing.lines().map(str::trim).collect();
    if lines.contains(&"-N DOCKER-USER") {
        Some("DOCKER-USER")
    } else if lines.contains(&"-P FORWARD DROP") {
        Some("FORWARD")
    } else {
        None
    }
}

/// The rules of shoal's in `chain` as `iptables -S` prints them (without `-A CHAIN`).
pub(crate) fn present(listing: &str, chain: &str) -> Vec<String> {
    let prefix = format!("-A {chain} ");
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .filter(|r| r.contains(&format!("--comment {COMMENT} ")))
        .map(str::to_owned)
        .collect()
}

fn iptables(args: &[&str]) -> Option<std::process::Output> {
    Command::new("iptables")
        .arg("-w")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
}

/// Brings shoal's accept rules to what the filter needs. Returns `Ok(true)` when it wrote or
/// removed something, `Ok(false)` when everything was in place (or nothing is needed: no filter
/// table that drops, or no `iptables` command, in which case no such filter can exist either).
pub(crate) fn sync(bridge: &str) -> Result<bool, String> {
    let Some(out) = iptables(&["-t", "filter", "-S"]) else {
        return Ok(false);
    };
    if !out.status.success() {
        return Ok(false);
    }
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some(chain) = chain_of(&listing) else {
        return Ok(false);
    };
    let want = wanted(bridge);
    let have = present(&listing, chain);
    let want_text: Vec<String> = want.iter().map(|r| r.join(" ")).collect();
    // In place when shoal's rules are exactly the wanted ones and they come first in the chain.
    let first: Vec<String> = listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("-A {chain} ")))
        .take(want.len())
        .map(str::to_owned)
        .collect();
    if have == want_text && first == want_text {
        return Ok(false);
    }
    for rule in &have {
        let args: Vec<&str> = rule.split(' ').collect();
        let mut cmd = vec!["-t", "filter", "-D", chain];
        cmd.extend(args);
        run(&cmd)?;
    }
    for rule in want.iter().rev() {
        let mut cmd = vec!["-t", "filter", "-I", chain, "1"];
        cmd.extend(rule.iter().map(String::as_str));
        run(&cmd)?;
    }
    Ok(true)
}

/// Removes shoal's rules from whichever chain holds them (for [`crate::Network::destroy`]).
pub(crate) fn remove() -> Result<(), String> {
    let Some(out) = iptables(&["-t", "filter", "-S"]) else {
        return Ok(());
    };
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    for chain in ["DOCKER-USER", "FORWARD"] {
        for rule in present(&listing, chain) {
            let mut cmd = vec!["-t", "filter", "-D", chain];
            cmd.extend(rule.split(' '));
            run(&cmd)?;
        }
    }
    Ok(())
}

fn run(args: &[&str]) -> Result<(), String> {
    match iptables(args) {
        Some(o) if o.status.success() => Ok(()),
        Some(o) => Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        None => Err("cannot run iptables".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = "-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n-N DOCKER\n\
        -N DOCKER-USER\n-A FORWARD -j DOCKER-USER\n\
        -A DOCKER-USER -i shoal0 -m comment --comment shoal -j ACCEPT\n\
        -A DOCKER-USER -i eth9 -m comment --comment shoalish -j ACCEPT\n\
        -A DOCKER-USER -j RETURN\n";

    #[test]
    fn docker_user_is_preferred_and_an_accepting_forward_needs_nothing() {
        assert_eq!(chain_of(DOCKER), Some("DOCKER-USER"));
        assert_eq!(chain_of("-P FORWARD DROP\n"), Some("FORWARD"));
        assert_eq!(chain_of("-P FORWARD ACCEPT\n-N OTHER\n"), None);
    }

    #[test]
    fn only_rules_commented_shoal_are_ours() {
        assert_eq!(
            present(DOCKER, "DOCKER-USER"),
            vec!["-i shoal0 -m comment --comment shoal -j ACCEPT".to_string()]
        );
        assert!(present(DOCKER, "FORWARD").is_empty());
    }

    #[test]
    fn wanted_rules_print_as_iptables_lists_them() {
        let want: Vec<String> = wanted("shoal0").iter().map(|r| r.join(" ")).collect();
        assert_eq!(want[0], "-i shoal0 -m comment --comment shoal -j ACCEPT");
        assert_eq!(
            want[4],
            "-m connmark --mark 0x100000/0x100000 -m comment --comment shoal -j ACCEPT"
        );
    }
}
