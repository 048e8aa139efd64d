//! Service discovery for the tasks of this node: the names `net::dns` answers, built from the
//! node's assignment set (its tasks and the services on their networks) and its attachments
//! (which task asks from which address), and the server on the node bridge's gateway.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use net::dns::{Asker, Names};
use tracing::{info, warn};

use crate::daemon::Daemon;

/// Rebuilds the names from the latest assignment set and the attachments on disk, and
/// publishes them when they changed. Cheap: one small file read per local task on a network.
pub fn refresh(d: &Daemon) {
    let names = {
        let set = d.assignments.borrow();
        let Some(set) = set.as_ref() else {
            return;
        };
        let mut names = Names::default();
        for plan in &set.networks.networks {
            names
                .networks
                .insert(plan.id.clone(), plan.services.clone());
        }
        for t in set
            .tasks
            .iter()
            .filter(|t| !t.networks.is_empty() && !t.status.state.is_terminal())
        {
            let Some(att) = d.net.attachment(&t.id) else {
                continue;
            };
            let stack = set
                .networks
                .networks
                .iter()
                .flat_map(|p| &p.services)
                .find(|s| s.name == t.service_name)
                .and_then(|s| s.stack.clone());
            names.askers.insert(
                att.ip,
                Asker {
                    networks: t.networks.iter().map(|a| a.network.clone()).collect(),
                    stack,
                    upstreams: t
                        .spec
                        .dns
                        .iter()
                        .map(|ip| std::net::SocketAddr::new(*ip, 53))
                        .collect(),
                },
            );
        }
        names
    };
    d.dns_names.send_if_modified(|cur| {
        if **cur == names {
            false
        } else {
            *cur = Arc::new(names);
            true
        }
    });
}

/// The VIPs each local task on a network sees: for every service on its networks, the
/// service's VIP there and its running tasks' addresses.
fn vips_by_task(d: &Daemon) -> Vec<(String, Vec<net::Vip>)> {
    let set = d.assignments.borrow();
    let Some(set) = set.as_ref() else {
        return Vec::new();
    };
    set.tasks
        .iter()
        .filter(|t| !t.networks.is_empty() && !t.status.state.is_terminal())
        .map(|t| {
            let vips = t
                .networks
                .iter()
                .filter_map(|a| set.networks.get(&a.network))
                .flat_map(|plan| &plan.services)
                .filter_map(|s| {
                    Some(net::Vip {
                        vip: s.vip?,
                        backends: s.tasks.clone(),
                    })
                })
                .collect();
            (t.id.clone(), vips)
        })
        .collect()
}

/// Brings every local task's VIP table to what the plan says (only the changed ones are
/// written). A task whose namespace is not there yet (still being prepared) is skipped; its
/// executor writes it once attached.
pub async fn sync_vips(d: &Daemon) {
    for (task, vips) in vips_by_task(d) {
        if d.net.attachment(&task).is_none() {
            continue;
        }
        if let Err(e) = d.net.sync_task_vips(&task, vips).await {
            warn!(task = %task, error = %e, "failed to update the task's VIP balancing");
        }
    }
}

/// Writes the VIP table of one task (right after it is attached).
pub async fn sync_task_vips(d: &Daemon, task_id: &str) -> Result<(), net::Error> {
    let vips = vips_by_task(d)
        .into_iter()
        .find(|(t, _)| t == task_id)
        .map(|(_, v)| v)
        .unwrap_or_default();
    d.net.sync_task_vips(task_id, vips).await
}

/// The address tasks send their DNS queries to: the node bridge's gateway.
pub fn server_addr(d: &Daemon) -> Ipv4Addr {
    d.net.gateway()
}

/// Serves DNS on the gateway, port 53, for as long as the daemon runs; a failure to bind (another
/// server holds the port on every address) is retried every few seconds with a warning.
pub async fn run(d: Arc<Daemon>) {
    let addr = SocketAddr::from((server_addr(&d), 53));
    loop {
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let upstreams = net::dns::upstreams(&resolv);
        match tokio::net::UdpSocket::bind(addr).await {
            Ok(socket) => {
                info!(%addr, upstreams = upstreams.len(), "DNS for tasks on overlay networks");
                if let Err(e) = net::dns::serve(socket, d.dns_names.subscribe(), upstreams).await {
                    warn!(%addr, error = %e, "the DNS server stopped; starting it again");
                }
            }
            Err(e) => warn!(
                %addr,
                error = %e,
                "cannot serve DNS to tasks (is another DNS server bound to port 53 on every address?); service names will not resolve until it can"
            ),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
