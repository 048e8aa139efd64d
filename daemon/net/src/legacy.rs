//! What attachments made by earlier shoal versions (through the CNI `bridge` plugin) need on
//! detach: their node-side veth has a random name, found in the recorded CNI result, and the
//! plugin installed a per-task masquerade chain with `iptables` (nat table), which shoal removes
//! since nothing else would. Addresses were allocated by `host-local` in the layout
//! [`crate::ipam`] uses, and need nothing special.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha512};

/// The node-side veth named in a CNI ADD result: the interface that is neither in the task's
/// namespace (`sandbox`) nor the bridge.
pub(crate) fn host_veth(cni_result: &Value, bridge: &str) -> Option<String> {
    cni_result
        .get("interfaces")?
        .as_array()?
        .iter()
        .filter(|i| {
            i.get("sandbox")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        })
        .filter_map(|i| i.get("name").and_then(Value::as_str))
        .find(|name| *name != bridge)
        .map(str::to_owned)
}

/// The chain the `bridge` plugin (containernetworking-plugins 1.x) made for one container:
/// `CNI-` and the start of the hex SHA-512 of network name and container id, 28 characters.
pub(crate) fn masquerade_chain(network: &str, task_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{task_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("CNI-{}", &hex[..24])
}

/// Removes the masquerade rule and chain the `bridge` plugin installed for `task_id`, best
/// effort: a missing `iptables`, rule or chain is fine.
pub(crate) fn remove_masquerade(network: &str, task_id: &str, ip: Ipv4Addr) {
    let chain = masquerade_chain(network, task_id);
    let comment = format!("name: \"{network}\" id: \"{task_id}\"");
    let source = format!("{ip}/32");
    let steps: [&[&str]; 3] = [
        &[
            "-t",
            "nat",
            "-D",
            "POSTROUTING",
            "-s",
            &source,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            &chain,
        ],
        &["-t", "nat", "-F", &chain],
        &["-t", "nat", "-X", &chain],
    ];
    for args in steps {
        let ran = Command::new("iptables")
            .args(["-w", "5"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match ran {
            Ok(status) if status.success() => {}
            Ok(_) => {
                tracing::debug!(task = task_id, %chain, ?args, "legacy iptables rule already gone");
            }
            Err(e) => {
                tracing::debug!(task = task_id, error = %e, "iptables unavailable, legacy masquerade kept");
                return;
            }
        }
    }
    tracing::info!(task = task_id, %chain, "removed the CNI masquerade of a legacy attachment");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chain_name_matches_the_bridge_plugin() {
        // Seen on a node running the CNI-based attach: `name: "shoal0" id: "2p3lz6ipyutjkua10p6x8teg7"`.
        assert_eq!(
            masquerade_chain("shoal0", "2p3lz6ipyutjkua10p6x8teg7"),
            "CNI-3c186ff3064bf994a62cac3f"
        );
    }

    #[test]
    fn finds_the_node_side_veth() {
        let result = json!({
            "interfaces": [
                {"name": "shoal0", "mac": "aa"},
                {"name": "veth1234abcd", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/shoal/netns/t1"}
            ],
        });
        assert_eq!(
            host_veth(&result, "shoal0").as_deref(),
            Some("veth1234abcd")
        );
        assert_eq!(host_veth(&json!({}), "shoal0"), None);
    }
}
