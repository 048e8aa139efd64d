//! This node's certificate and cluster membership on disk, under `<state_dir>`:
//! `certificates/{ca.crt,node.crt,node.key}` (the key 0600) and `cluster.json` (cluster id and
//! the managers to reach).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use model::{NodeRole, Security};
use rpc::NodeCert;
use serde::{Deserialize, Serialize};

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("certificates")
}

/// Write `bytes` to `path` atomically with `mode`, fsynced.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("failed to write {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("failed to write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}

/// The node certificate, if this node has one.
pub fn load(state_dir: &Path) -> Result<Option<NodeCert>> {
    let d = dir(state_dir);
    let read = |name: &str| std::fs::read_to_string(d.join(name));
    match (read("ca.crt"), read("node.crt"), read("node.key")) {
        (Ok(ca_pem), Ok(cert_pem), Ok(key_pem)) => Ok(Some(NodeCert {
            ca_pem,
            cert_pem,
            key_pem,
        })),
        (Err(e), _, _) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(anyhow!(
            "failed to read this node's certificates in {}: {e} (a node whose certificates are lost must leave and join again)",
            d.display()
        )),
    }
}

/// Store the node certificate.
pub fn save(state_dir: &Path, cert: &NodeCert) -> Result<()> {
    let d = dir(state_dir);
    std::fs::create_dir_all(&d).with_context(|| format!("failed to create {}", d.display()))?;
    write_atomic(&d.join("node.key"), cert.key_pem.as_bytes(), 0o600)?;
    write_atomic(&d.join("node.crt"), cert.cert_pem.as_bytes(), 0o644)?;
    write_atomic(&d.join("ca.crt"), cert.ca_pem.as_bytes(), 0o644)?;
    Ok(())
}

/// What a node remembers of its cluster besides raft (workers have no raft state).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Joined {
    pub cluster_id: String,
    /// Manager addresses, refreshed from heartbeats.
    pub managers: Vec<String>,
}

pub fn load_joined(state_dir: &Path) -> Result<Option<Joined>> {
    let path = state_dir.join("cluster.json");
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("{} is corrupt", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
}

pub fn save_joined(state_dir: &Path, j: &Joined) -> Result<()> {
    write_atomic(
        &state_dir.join("cluster.json"),
        &serde_json::to_vec_pretty(j)?,
        0o644,
    )
}

/// New CA and join secrets for a new cluster (or a cluster made before it had them).
pub fn new_security(cluster_id: &str, shared: Option<String>) -> Result<Security> {
    let ca = rpc::pki::new_ca(cluster_id, SystemTime::now()).map_err(|e| anyhow!("{e}"))?;
    Ok(Security {
        ca_cert_pem: ca.cert_pem,
        ca_key_pem: ca.key_pem,
        worker_secret: rpc::token::new_secret(),
        manager_secret: rpc::token::new_secret(),
        shared_secret: shared,
    })
}

/// Issue a certificate for a key this node made itself (the bootstrap manager's own).
pub fn issue_own(
    sec: &Security,
    node_id: &str,
    role: NodeRole,
    cluster_id: &str,
    validity: Duration,
) -> Result<NodeCert> {
    let (key_pem, csr) = rpc::pki::new_node_key().map_err(|e| anyhow!("{e}"))?;
    let cert_pem = issue(sec, &csr, node_id, role, cluster_id, validity)?;
    Ok(NodeCert {
        ca_pem: sec.ca_cert_pem.clone(),
        cert_pem,
        key_pem,
    })
}

pub fn issue(
    sec: &Security,
    csr: &str,
    node_id: &str,
    role: NodeRole,
    cluster_id: &str,
    validity: Duration,
) -> Result<String> {
    let ca = rpc::CaKeys {
        cert_pem: sec.ca_cert_pem.clone(),
        key_pem: sec.ca_key_pem.clone(),
    };
    rpc::pki::issue(
        &ca,
        csr,
        node_id,
        role,
        cluster_id,
        SystemTime::now(),
        validity,
    )
    .map_err(|e| anyhow!("{e}"))
}

/// Read a token file: the token, trimmed. Never logs the content.
pub fn read_token(path: &Path) -> Result<rpc::JoinToken> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read the join token file {}", path.display()))?;
    rpc::JoinToken::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The address other nodes reach this one at: `advertise` when set, else the first non-loopback
/// IPv4 address of an interface that is up (not a shoal bridge or veth), else loopback.
pub fn advertise_addr(
    advertise: Option<SocketAddr>,
    listen: SocketAddr,
    own_bridge: &str,
) -> String {
    if let Some(a) = advertise {
        return a.to_string();
    }
    if !listen.ip().is_unspecified() {
        // Listening on one address: that is the one others can reach.
        return listen.to_string();
    }
    let port = listen.port();
    first_address(own_bridge)
        .map(|ip| SocketAddr::new(ip, port).to_string())
        .unwrap_or_else(|| format!("127.0.0.1:{port}"))
}

fn first_address(own_bridge: &str) -> Option<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    let mut found: Vec<(String, IpAddr)> = addrs
        .filter(|a| a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
        .filter(|a| {
            !a.flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        })
        .filter(|a| a.interface_name != own_bridge && !a.interface_name.starts_with("veth"))
        .filter_map(|a| {
            let sin = a.address?.as_sockaddr_in().map(|s| IpAddr::V4(s.ip()))?;
            Some((a.interface_name.clone(), sin))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, ip)| ip).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_round_trip_with_a_private_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let sec = new_security("c1", None).unwrap();
        let cert = issue_own(
            &sec,
            "n1",
            NodeRole::Manager,
            "c1",
            Duration::from_secs(3600),
        )
        .unwrap();
        save(dir.path(), &cert).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap(), cert);
        let mode = std::fs::metadata(dir.path().join("certificates/node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn advertise_never_defaults_to_loopback_when_another_address_exists() {
        let explicit: SocketAddr = "10.1.2.3:4600".parse().unwrap();
        assert_eq!(
            advertise_addr(Some(explicit), "0.0.0.0:4600".parse().unwrap(), "shoal0"),
            "10.1.2.3:4600"
        );
        assert_eq!(
            advertise_addr(None, "10.9.9.9:4700".parse().unwrap(), "shoal0"),
            "10.9.9.9:4700"
        );
        let auto = advertise_addr(None, "0.0.0.0:4600".parse().unwrap(), "shoal0");
        assert!(auto.ends_with(":4600"), "{auto}");
        if first_address("shoal0").is_some() {
            assert!(!auto.starts_with("127."), "{auto}");
        }
    }
}
