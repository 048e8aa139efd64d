//! Calling CNI plugins directly, following the CNI 1.0 protocol: the command and its arguments in
//! `CNI_*` environment variables, the network configuration as JSON on stdin, a result or an error
//! as JSON on stdout.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::subnet::Ipv4Subnet;

/// The CNI spec version of the configurations we hand to plugins.
pub(crate) const CNI_VERSION: &str = "1.0.0";

/// The plugins shoal calls; each must be present in the CNI bin dir.
pub(crate) const REQUIRED_PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CniCommand {
    Add,
    Del,
    Check,
}

impl CniCommand {
    fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
        }
    }
}

/// One plugin invocation.
pub(crate) struct Invocation<'a> {
    pub bin_dir: &'a Path,
    pub plugin: &'static str,
    pub command: CniCommand,
    pub container_id: &'a str,
    /// The namespace path; `None` is allowed for DEL when the namespace is already gone.
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub config: &'a Value,
}

/// The settings from which the bridge network configuration is rendered.
pub(crate) struct BridgeNetwork<'a> {
    pub name: &'a str,
    pub bridge: &'a str,
    pub subnet: Ipv4Subnet,
    pub ipam_dir: &'a Path,
}

/// The `bridge` plugin configuration: a node-local bridge that is the tasks' gateway, masquerading
/// their outbound traffic, with addresses from `host-local`.
///
/// `hairpinMode` lets a task reach a port published by itself through the node's address when
/// `br_netfilter` is loaded (Docker loads it): the bridged, DNAT-ed frame must then leave through
/// the port it came in on.
pub(crate) fn bridge_config(net: &BridgeNetwork<'_>, prev_result: Option<&Value>) -> Value {
    let mut config = json!({
        "cniVersion": CNI_VERSION,
        "name": net.name,
        "type": "bridge",
        "bridge": net.bridge,
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{
                "subnet": net.subnet.to_string(),
                "gateway": net.subnet.gateway().to_string(),
            }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": net.ipam_dir,
        },
    });
    if let Some(prev) = prev_result {
        config["prevResult"] = prev.clone();
    }
    config
}

/// The `loopback` plugin configuration: brings `lo` up inside the namespace.
pub(crate) fn loopback_config(prev_result: Option<&Value>) -> Value {
    let mut config = json!({
        "cniVersion": CNI_VERSION,
        "name": "loopback",
        "type": "loopback",
    });
    if let Some(prev) = prev_result {
        config["prevResult"] = prev.clone();
    }
    config
}

/// Path of a plugin binary.
pub(crate) fn plugin_path(bin_dir: &Path, plugin: &str) -> PathBuf {
    bin_dir.join(plugin)
}

/// Runs one plugin and returns its result (`Value::Null` when it printed nothing, as DEL and
/// CHECK do).
pub(crate) fn invoke(inv: &Invocation<'_>) -> Result<Value> {
    let path = plugin_path(inv.bin_dir, inv.plugin);
    if !path.is_file() {
        return Err(Error::PluginMissing {
            plugin: inv.plugin,
            dir: inv.bin_dir.to_owned(),
        });
    }
    let command = inv.command.as_str();
    let exec_err = |source| Error::PluginExec {
        path: path.clone(),
        command,
        source,
    };
    let stdin = serde_json::to_vec(inv.config).expect("a JSON value always serializes");
    tracing::debug!(
        plugin = inv.plugin,
        command,
        container = inv.container_id,
        "calling CNI plugin"
    );
    // The environment is inherited: the bridge plugin runs iptables found through PATH.
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env(
            "CNI_NETNS",
            inv.netns.map(|p| p.as_os_str()).unwrap_or_default(),
        )
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_PATH", inv.bin_dir)
        .env_remove("CNI_ARGS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(exec_err)?;
    {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(&stdin).map_err(exec_err)?;
    }
    let output = child.wait_with_output().map_err(exec_err)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(Error::Plugin {
            plugin: inv.plugin,
            command,
            task: inv.container_id.to_owned(),
            message: failure_message(&stdout, &stderr, output.status),
        });
    }
    if stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).map_err(|e| Error::PluginResult {
        plugin: inv.plugin,
        command,
        task: inv.container_id.to_owned(),
        reason: format!("invalid JSON ({e}): {}", stdout.trim()),
    })
}

/// A CNI error result.
#[derive(Deserialize)]
struct CniError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

fn failure_message(stdout: &str, stderr: &str, status: std::process::ExitStatus) -> String {
    if let Ok(err) = serde_json::from_str::<CniError>(stdout)
        && !err.msg.is_empty()
    {
        let mut message = format!("{} (code {})", err.msg, err.code);
        if !err.details.is_empty() {
            message.push_str(&format!(": {}", err.details));
        }
        return message;
    }
    let text = [stdout.trim(), stderr.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if text.is_empty() {
        format!("exited with {status} and printed nothing")
    } else {
        format!("exited with {status}: {text}")
    }
}

#[derive(Deserialize)]
struct AddResult {
    #[serde(default)]
    ips: Vec<IpConfig>,
}

#[derive(Deserialize)]
struct IpConfig {
    address: String,
    #[serde(default)]
    gateway: Option<String>,
}

/// The task's address as reported by an ADD result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Assigned {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// Finds the IPv4 address inside `subnet` in a CNI 1.0 ADD result.
pub(crate) fn assigned_address(result: &Value, subnet: Ipv4Subnet) -> Result<Assigned, String> {
    let parsed: AddResult = serde_json::from_value(result.clone())
        .map_err(|e| format!("unexpected result shape: {e}"))?;
    for ip in &parsed.ips {
        let Some((addr, len)) = ip.address.split_once('/') else {
            continue;
        };
        let (Ok(addr), Ok(prefix_len)) = (addr.parse::<Ipv4Addr>(), len.parse::<u8>()) else {
            continue;
        };
        if subnet.contains(addr) {
            let gateway = ip.gateway.as_deref().and_then(|g| g.parse().ok());
            return Ok(Assigned {
                ip: addr,
                prefix_len,
                gateway,
            });
        }
    }
    Err(format!("no IPv4 address in {subnet} among {:?}", {
        parsed
            .ips
            .iter()
            .map(|i| i.address.as_str())
            .collect::<Vec<_>>()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet() -> Ipv4Subnet {
        "10.231.0.0/16".parse().unwrap()
    }

    #[test]
    fn bridge_config_has_gateway_masquerade_and_ipam_dir() {
        let net = BridgeNetwork {
            name: "shoal0",
            bridge: "shoal0",
            subnet: subnet(),
            ipam_dir: Path::new("/var/lib/shoal/net/ipam"),
        };
        let c = bridge_config(&net, None);
        assert_eq!(c["type"], "bridge");
        assert_eq!(c["bridge"], "shoal0");
        assert_eq!(c["isGateway"], true);
        assert_eq!(c["ipMasq"], true);
        assert_eq!(c["ipam"]["type"], "host-local");
        assert_eq!(c["ipam"]["ranges"][0][0]["subnet"], "10.231.0.0/16");
        assert_eq!(c["ipam"]["ranges"][0][0]["gateway"], "10.231.0.1");
        assert_eq!(c["ipam"]["dataDir"], "/var/lib/shoal/net/ipam");
        assert!(c.get("prevResult").is_none());
        let with_prev = bridge_config(&net, Some(&json!({"ips": []})));
        assert_eq!(with_prev["prevResult"], json!({"ips": []}));
    }

    #[test]
    fn finds_the_address_in_the_subnet() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "shoal0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [
                {"interface": 2, "address": "fd00::5/64"},
                {"interface": 2, "address": "10.231.0.7/16", "gateway": "10.231.0.1"}
            ],
        });
        let got = assigned_address(&result, subnet()).unwrap();
        assert_eq!(got.ip, Ipv4Addr::new(10, 231, 0, 7));
        assert_eq!(got.prefix_len, 16);
        assert_eq!(got.gateway, Some(Ipv4Addr::new(10, 231, 0, 1)));
    }

    #[test]
    fn refuses_results_without_an_address_in_the_subnet() {
        let result = json!({"ips": [{"address": "192.168.0.2/24"}]});
        let err = assigned_address(&result, subnet()).unwrap_err();
        assert!(err.contains("192.168.0.2/24"), "{err}");
        assert!(assigned_address(&json!({"ips": 3}), subnet()).is_err());
    }

    #[test]
    fn failure_message_prefers_the_cni_error() {
        let status = std::process::Command::new("false").status().unwrap();
        let msg = failure_message(
            r#"{"code": 7, "msg": "failed to allocate", "details": "range full"}"#,
            "",
            status,
        );
        assert_eq!(msg, "failed to allocate (code 7): range full");
        let msg = failure_message("", "panic: boom", status);
        assert!(msg.contains("panic: boom"), "{msg}");
        let msg = failure_message("", "", status);
        assert!(msg.contains("printed nothing"), "{msg}");
    }
}
