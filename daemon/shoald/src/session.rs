//! The agent's session with the dispatcher, on every node (managers too): heartbeats, the
//! complete assignment set, and task reports.
//!
//! The agent starts only once the first assignment set has arrived (it removes containers of
//! tasks missing from its first set, so that set must be the real one). A node that loses every
//! manager keeps its tasks running and keeps trying; a worker follows the leader the dispatcher
//! names and falls back to every manager it knows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use model::{NodeRole, TaskStatus};
use rpc::{AssignmentSet, Heartbeat, Request, Response, RpcError};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::daemon::{Daemon, ReportQueue, collect_stale_networks};
use crate::dispatcher::{ASSIGNMENTS_WAIT, NodePort};
use crate::executor::ContainerExecutor;

/// Send `req` to the dispatcher: in-process on the leader, over the node port elsewhere.
pub async fn dispatch(
    d: &Arc<Daemon>,
    req: Request,
    timeout: Duration,
) -> Result<Response, RpcError> {
    if d.store.is_leader() {
        let role = Some(d.role());
        return Ok(NodePort(d.clone())
            .serve(&d.identity.node_id.clone(), role, req)
            .await);
    }
    d.leader_call(req, timeout).await
}

/// Run the session; returns the report queue at once (for shutdown) and drives the agent.
pub fn start(d: &Arc<Daemon>) -> ReportQueue {
    let (report_tx, report_rx) = mpsc::channel(4096);
    let queue = ReportQueue {
        tx: report_tx.clone(),
        busy: Arc::new(AtomicU64::new(0)),
    };
    tokio::spawn(run_heartbeats(d.clone()));
    tokio::spawn(run_reports(d.clone(), report_rx, queue.busy.clone()));
    tokio::spawn(run_assignments(d.clone(), report_tx));
    queue
}

async fn run_assignments(d: Arc<Daemon>, report_tx: mpsc::Sender<(String, TaskStatus)>) {
    let mut known = String::new();
    let mut tx: Option<watch::Sender<Vec<model::Task>>> = None;
    let mut delay = Duration::from_millis(100);
    loop {
        let req = Request::Assignments {
            known: known.clone(),
            wait_ms: ASSIGNMENTS_WAIT.as_millis() as u64,
        };
        match dispatch(&d, req, ASSIGNMENTS_WAIT + Duration::from_secs(10)).await {
            Ok(Response::Assignments(set)) => {
                delay = Duration::from_millis(100);
                if set.version == known {
                    continue;
                }
                if d.leaving.load(Ordering::SeqCst) {
                    return;
                }
                known = set.version.clone();
                let tasks = set.tasks.clone();
                d.assignments.send_replace(Some(set));
                match &tx {
                    Some(tx) => {
                        tx.send_replace(tasks);
                    }
                    None => {
                        tx = Some(start_agent(&d, tasks, report_tx.clone()).await);
                    }
                }
            }
            Ok(Response::Error(e)) => {
                tracing::debug!(error = %e, "assignments refused");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Ok(other) => {
                warn!(answer = ?other, "unexpected answer to an assignments request");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "no dispatcher reachable for assignments");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn start_agent(
    d: &Arc<Daemon>,
    tasks: Vec<model::Task>,
    report_tx: mpsc::Sender<(String, TaskStatus)>,
) -> watch::Sender<Vec<model::Task>> {
    collect_stale_networks(d, &tasks).await;
    crate::secrets::collect_stale(&d.cfg.paths.run_dir, &tasks);
    let (assign_tx, assign_rx) = watch::channel(tasks);
    if let Ok(mut slot) = d.agent_tx.lock() {
        *slot = Some(assign_tx.clone());
    }
    let executor = Arc::new(ContainerExecutor::new(d.clone()));
    let agent = agent::Agent::new(
        d.identity.node_id.clone(),
        executor,
        Arc::new(agent::SystemClock),
    );
    tokio::spawn(async move { agent.run(assign_rx, report_tx).await });
    info!("agent started with the assignments of the dispatcher");
    assign_tx
}

async fn run_reports(
    d: Arc<Daemon>,
    mut rx: mpsc::Receiver<(String, TaskStatus)>,
    busy: Arc<AtomicU64>,
) {
    while let Some(first) = rx.recv().await {
        busy.store(1, Ordering::Release);
        let mut batch = vec![first];
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let signals: Vec<(String, model::TaskState)> = batch
            .iter()
            .map(|(id, st)| (id.clone(), st.state))
            .collect();
        let mut delay = Duration::from_millis(100);
        loop {
            let req = Request::Report {
                reports: batch.clone(),
            };
            match dispatch(&d, req, Duration::from_secs(30)).await {
                Ok(Response::Ok) => break,
                Ok(other) => warn!(answer = ?other, "task status not recorded; retrying"),
                Err(e) => warn!(error = %e, "task status not recorded; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        busy.store(0, Ordering::Release);
        let events = d.events.lock().ok().and_then(|e| e.clone());
        if let Some(events) = events {
            let names: std::collections::BTreeMap<String, String> = d
                .assignments
                .borrow()
                .as_ref()
                .map(|s: &AssignmentSet| {
                    s.tasks
                        .iter()
                        .map(|t| (t.id.clone(), t.service_name.clone()))
                        .collect()
                })
                .unwrap_or_default();
            for (task_id, st) in signals {
                let service = names.get(&task_id).cloned().unwrap_or_default();
                let _ = events.task_state_changed(&task_id, &service, st).await;
            }
        }
    }
}

async fn run_heartbeats(d: Arc<Daemon>) {
    let mut period = Duration::from_millis(d.state().settings.heartbeat_period.max(100));
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        let cert = d.tls().map(|t| t.cert());
        let info = cert
            .as_ref()
            .and_then(|c| rpc::pki::cert_info(&c.cert_pem).ok());
        let hb = Heartbeat {
            addr: d.addr.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            cert_not_after: info.as_ref().map_or(0, |i| i.not_after),
            cert_not_before: info.as_ref().map_or(0, |i| i.not_before),
            resources: Some(node_resources()),
        };
        match dispatch(&d, Request::Heartbeat(hb), period * 3).await {
            Ok(Response::Heartbeat(reply)) => {
                if failing_since.take().is_some() {
                    info!(leader = ?reply.leader_addr, "dispatcher reachable again");
                }
                period = Duration::from_millis(reply.period_ms.max(100));
                d.learn_managers(reply.leader_addr.clone(), reply.managers.clone());
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let role_changed = info.as_ref().is_some_and(|i| i.role != reply.role);
                let expiring = info
                    .as_ref()
                    .is_some_and(|i| rpc::pki::needs_renewal(i.not_before, i.not_after, now));
                if role_changed || expiring {
                    renew(&d, reply.role).await;
                }
            }
            Ok(other) => {
                tracing::debug!(answer = ?other, "heartbeat not accepted");
                failing_since.get_or_insert_with(tokio::time::Instant::now);
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > period * 3 {
                    tracing::debug!(error = %e, "no manager reachable; tasks keep running");
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Get a new certificate from the leader (role change or expiry) and switch to it.
async fn renew(d: &Arc<Daemon>, role: NodeRole) {
    let Ok((key_pem, csr_pem)) = rpc::pki::new_node_key() else {
        return;
    };
    match dispatch(d, Request::Renew { csr_pem }, Duration::from_secs(30)).await {
        Ok(Response::Renewed { cert_pem }) => {
            let Some(tls) = d.tls() else { return };
            let mut cert = tls.cert();
            cert.cert_pem = cert_pem;
            cert.key_pem = key_pem;
            match d.install_cert(&cert) {
                Ok(()) => info!(role = role.as_str(), "node certificate renewed"),
                Err(e) => warn!(error = %e, "failed to install the renewed certificate"),
            }
        }
        Ok(other) => warn!(answer = ?other, "certificate renewal refused"),
        Err(e) => warn!(error = %e, "certificate renewal failed"),
    }
}

/// This node's CPUs (those this process may run on) and total memory, for the scheduler's
/// reservations. A value that cannot be read is 0, which no reservation fits.
pub(crate) fn node_resources() -> model::NodeResources {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get() as u64);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib.saturating_mul(1024));
    model::NodeResources {
        nano_cpus: cpus.saturating_mul(1_000_000_000),
        memory_bytes: memory,
    }
}
