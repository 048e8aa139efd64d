//! How a node gets into a cluster: bootstrap (the first manager), the join loop (every other
//! node, from `[cluster] join` and `token_file`, retried with backoff and never giving up), and
//! the records the leader keeps current (cluster id, CA and join secrets, its own node).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use model::{Command, Node, NodeRole, NodeStatus};
use rpc::{JoinRequest, JoinToken};
use tracing::{info, warn};

use crate::certs;
use crate::daemon::{Daemon, now_ms};

/// Written by `cluster leave`: a node that left does not bootstrap a cluster of its own at its
/// next start (the embedded default bootstraps); `cluster init` or a join removes it.
const LEFT_MARKER: &str = "left-cluster";

/// `shoal cluster init`: form a new cluster with this node as its first manager.
pub async fn init(d: &Arc<Daemon>) -> Result<String> {
    if d.in_cluster() {
        return Err(anyhow!(
            "this node is already part of cluster {}; leave it first (`shoal cluster leave`)",
            d.cluster_id()
        ));
    }
    if d.store.is_initialized().await.map_err(|e| anyhow!("{e}"))? {
        return Err(anyhow!(
            "this node has raft state already; it is a manager of a cluster"
        ));
    }
    info!("forming a new cluster (shoal cluster init)");
    d.store
        .bootstrap_single()
        .await
        .map_err(|e| anyhow!("failed to bootstrap raft: {e}"))?;
    ensure_records(d).await?;
    issue_own(d)?;
    let _ = std::fs::remove_file(d.state_dir().join(LEFT_MARKER));
    d.start_node_port().await?;
    d.set_status(d.summary());
    Ok(d.cluster_id())
}

/// `shoal cluster join --token T ADDR...`: join once (no retries: the user sees the error).
pub async fn join_with(d: &Arc<Daemon>, token: &str, addrs: &[String]) -> Result<NodeRole> {
    if d.in_cluster() {
        return Err(anyhow!(
            "this node is already part of cluster {}; leave it first (`shoal cluster leave`)",
            d.cluster_id()
        ));
    }
    let token = JoinToken::parse(token).map_err(|e| anyhow!("{e}"))?;
    let mut last = anyhow!("no manager address given");
    for addr in addrs {
        let addr = if addr.contains(':') {
            addr.clone()
        } else {
            format!("{addr}:4600")
        };
        match join_through(d, &addr, &token).await {
            Ok(()) => return Ok(d.role()),
            Err(e) => last = anyhow!("{addr}: {e:#}"),
        }
    }
    Err(last)
}

/// `shoal cluster leave`: stop this node's tasks, forget the cluster and start again as a node
/// that is in no cluster (the process replaces itself; systemd sees the same main PID).
pub async fn leave(d: &Arc<Daemon>, force: bool) -> Result<()> {
    if !d.in_cluster() {
        return Err(anyhow!("this node is not part of a cluster"));
    }
    if d.role() == NodeRole::Manager && !force {
        let managers = d
            .state()
            .nodes
            .values()
            .filter(|n| n.role == NodeRole::Manager)
            .count();
        return Err(anyhow!(
            "this node is a manager (one of {managers}); leaving takes it out of the raft group and can break quorum: demote it first (`shoal node demote` on another manager), or use --force"
        ));
    }
    info!("leaving the cluster: stopping this node's tasks");
    d.leaving.store(true, std::sync::atomic::Ordering::SeqCst);
    let tx = d.agent_tx.lock().ok().and_then(|t| t.clone());
    if let Some(tx) = tx {
        tx.send_replace(Vec::new());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < deadline {
        match d.runtime.list().await {
            Ok(c) if c.is_empty() => break,
            Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let dir = d.state_dir();
    for path in [dir.join("certificates"), dir.join(store::RAFT_DIR)] {
        if let Err(e) = std::fs::remove_dir_all(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %path.display(), error = %e, "failed to remove cluster state");
        }
    }
    for file in ["cluster.json", "node.json"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    if let Err(e) = std::fs::write(
        dir.join(LEFT_MARKER),
        b"left the cluster; shoal cluster init or join\n",
    ) {
        warn!(error = %e, "failed to record that this node left its cluster");
    }
    info!("left the cluster; starting again as a node in no cluster");
    tokio::spawn(async {
        // Let the D-Bus answer go out first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        reexec();
    });
    Ok(())
}

fn reexec() {
    use std::ffi::CString;
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| CString::new(p.into_os_string().into_encoded_bytes()).ok());
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.into_encoded_bytes()).ok())
        .collect();
    if let Some(exe) = exe {
        let err = nix::unistd::execv(&exe, &args);
        tracing::error!(?err, "failed to restart shoald after leaving; exiting");
    }
    std::process::exit(1);
}

/// Bring this node into its cluster as far as can be done before READY; what has to wait for
/// other nodes (a join) goes on in the background.
pub async fn establish(d: &Arc<Daemon>) -> Result<()> {
    let initialized = d.store.is_initialized().await.map_err(|e| anyhow!("{e}"))?;
    if initialized && d.tls().is_none() {
        // A manager from before clusters had certificates: it is the only voter, so it leads by
        // itself; give the cluster its CA and this node its certificate.
        info!(
            "upgrading a single-manager cluster: making the cluster CA and this node's certificate"
        );
        d.store
            .wait_for_leader(Duration::from_secs(60))
            .await
            .map_err(|e| anyhow!("raft did not elect a leader: {e}"))?;
        ensure_records(d).await?;
        issue_own(d)?;
    } else if !initialized
        && d.tls().is_none()
        && d.cfg.cluster.bootstrap
        && !d.state_dir().join(LEFT_MARKER).exists()
    {
        info!("bootstrapping a new cluster");
        d.store
            .bootstrap_single()
            .await
            .map_err(|e| anyhow!("failed to bootstrap raft: {e}"))?;
        ensure_records(d).await?;
        issue_own(d)?;
    }
    if d.tls().is_some() {
        d.start_node_port().await?;
    } else if !d.cfg.cluster.join.is_empty() {
        tokio::spawn(join_loop(d.clone()));
    } else {
        d.set_status(
            "not in a cluster: set [cluster] bootstrap = true, or [cluster] join and token_file",
        );
    }
    tokio::spawn(run_records(d.clone()));
    Ok(())
}

fn issue_own(d: &Arc<Daemon>) -> Result<()> {
    let st = d.state();
    let sec = st
        .security
        .as_ref()
        .ok_or_else(|| anyhow!("the cluster has no CA"))?;
    let cert = certs::issue_own(
        sec,
        &d.identity.node_id,
        NodeRole::Manager,
        &st.cluster_id,
        Duration::from_millis(st.settings.cert_expiry),
    )?;
    d.install_cert(&cert)
}

/// The provisioning secret in this node's token file, if it has one that is not a Swarm-form
/// token (only a bootstrap manager's file sets it).
fn shared_secret(d: &Daemon) -> Option<String> {
    let path = d.cfg.cluster.token_file.as_ref()?;
    match certs::read_token(path) {
        Ok(JoinToken::Shared(s)) => Some(s),
        Ok(JoinToken::Swarm { .. }) => None,
        Err(e) => {
            warn!(error = %e, "the token file is not usable");
            None
        }
    }
}

/// On the leader: the cluster id and settings, the CA and join secrets, and this node.
async fn ensure_records(d: &Arc<Daemon>) -> Result<()> {
    let propose = |cmd: Command| async move {
        d.store
            .propose(cmd)
            .await
            .map_err(|e| anyhow!("{e}"))?
            .map_err(|e| anyhow!("{e}"))
    };
    let st = d.state();
    if st.cluster_id.is_empty() {
        propose(Command::Bootstrap {
            cluster_id: crate::identity::new_id(),
            settings: d.cfg.cluster.settings.clone(),
        })
        .await?;
    } else if st.settings != d.cfg.cluster.settings && d.cfg.cluster.bootstrap {
        tracing::debug!(
            "[cluster.settings] differ from the cluster's; they are taken at bootstrap only"
        );
    }
    let st = d.state();
    let shared = if d.cfg.cluster.bootstrap {
        shared_secret(d)
    } else {
        None
    };
    match &st.security {
        None => propose(Command::SetSecurity(certs::new_security(
            &st.cluster_id,
            shared,
        )?))
        .await
        .map(|_| ())?,
        Some(sec) if shared.is_some() && sec.shared_secret != shared => {
            let mut sec = sec.clone();
            sec.shared_secret = shared;
            propose(Command::SetSecurity(sec)).await.map(|_| ())?;
            info!("provisioning secret updated from the token file");
        }
        Some(_) => {}
    }
    if !d.state().nodes.contains_key(&d.identity.node_id) && d.role() == NodeRole::Manager {
        propose(Command::AddNode(Node {
            id: d.identity.node_id.clone(),
            raft_id: d.identity.raft_id,
            name: d.node_name.clone(),
            role: NodeRole::Manager,
            availability: d.cfg.node.availability,
            status: NodeStatus::Ready,
            labels: d.cfg.node.labels.clone(),
            addr: d.addr.clone(),
            last_heartbeat: now_ms(),
            version: env!("CARGO_PKG_VERSION").into(),
            status_message: String::new(),
            resources: Default::default(),
            ingress_addr: None,
        }))
        .await?;
    }
    Ok(())
}

/// Keep [`ensure_records`] true whenever this node leads.
async fn run_records(d: Arc<Daemon>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if d.store.is_leader()
            && let Err(e) = ensure_records(&d).await
        {
            warn!(error = %e, "failed to record the cluster's identity");
        }
    }
}

/// Join through the managers of `[cluster] join`, retrying with backoff until it works.
async fn join_loop(d: Arc<Daemon>) {
    let mut delay = Duration::from_secs(1);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match try_join(&d).await {
            Ok(()) => {
                d.set_status(d.summary());
                return;
            }
            Err(e) => {
                let msg = format!(
                    "joining the cluster through {}: {e:#}; attempt {attempt}, retrying in {}s",
                    d.cfg.cluster.join.join(", "),
                    delay.as_secs()
                );
                warn!("{msg}");
                d.set_joining(msg);
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn try_join(d: &Arc<Daemon>) -> Result<()> {
    let path = d
        .cfg
        .cluster
        .token_file
        .as_ref()
        .ok_or_else(|| anyhow!("no token_file is set"))?;
    let token = certs::read_token(path)?;
    let mut last = anyhow!("no manager address in [cluster] join");
    for addr in &d.cfg.cluster.join {
        match join_through(d, addr, &token).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn join_through(d: &Arc<Daemon>, addr: &str, token: &JoinToken) -> Result<()> {
    let timeout = Duration::from_secs(10);
    let nonce = rpc::token::new_secret();
    let (ca_pem, proof) = rpc::client::ca_proof(addr, &nonce, timeout)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let digest = rpc::pki::ca_digest(&ca_pem).map_err(|e| anyhow!("{e}"))?;
    match token {
        JoinToken::Swarm { ca_digest, .. } if *ca_digest != digest => {
            return Err(anyhow!(
                "the manager at {addr} has a different CA than the token names: wrong token or wrong address"
            ));
        }
        JoinToken::Shared(secret)
            if !proof
                .as_deref()
                .is_some_and(|p| rpc::token::verify_proof(secret, &nonce, &digest, p)) =>
        {
            return Err(anyhow!(
                "the manager at {addr} could not prove it knows the token: wrong token or wrong address"
            ));
        }
        _ => {}
    }
    let (key_pem, csr_pem) = rpc::pki::new_node_key().map_err(|e| anyhow!("{e}"))?;
    let req = JoinRequest {
        secret: token.secret().to_string(),
        role: d.cfg.node.role,
        node_id: d.identity.node_id.clone(),
        raft_id: d.identity.raft_id,
        name: d.node_name.clone(),
        addr: d.addr.clone(),
        labels: d.cfg.node.labels.clone(),
        availability: d.cfg.node.availability,
        version: env!("CARGO_PKG_VERSION").into(),
        csr_pem,
    };
    let reply = rpc::client::join(addr, &ca_pem, req, Duration::from_secs(60))
        .await
        .map_err(|e| anyhow!("{e}"))?
        .map_err(|e| anyhow!("{}", e.message))?;
    let cert = rpc::NodeCert {
        ca_pem: reply.ca_pem,
        cert_pem: reply.cert_pem,
        key_pem,
    };
    d.install_cert(&cert)?;
    d.learn_managers(None, reply.managers.clone());
    certs::save_joined(
        &d.state_dir(),
        &certs::Joined {
            cluster_id: reply.cluster_id.clone(),
            managers: reply.managers,
        },
    )?;
    let _ = std::fs::remove_file(d.state_dir().join(LEFT_MARKER));
    info!(cluster = %reply.cluster_id, role = reply.role.as_str(), through = addr, "joined the cluster");
    d.start_node_port().await
}
