//! Published ports on this node: which local task addresses serve which published port.
//! Pure: derived from the cluster state; the daemon hands the result to `net::sync_ports`.

use std::net::Ipv4Addr;

use model::{ClusterState, Protocol, TaskState};

/// One published port and the local tasks behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub published: u16,
    pub protocol: Protocol,
    pub backends: Vec<(Ipv4Addr, u16)>,
}

/// Every published port of every service, with the running tasks of this node that serve it.
/// A port whose service has no local running task is still listed, with no backends.
pub fn bindings(state: &ClusterState, node_id: &str) -> Vec<Binding> {
    let mut out = Vec::new();
    for svc in state.services.values() {
        for p in &svc.spec.ports {
            let mut backends: Vec<(Ipv4Addr, u16)> = state
                .tasks_of(&svc.id)
                .filter(|t| t.node_id.as_deref() == Some(node_id))
                .filter(|t| t.status.state == TaskState::Running && t.desired <= TaskState::Running)
                .filter_map(|t| {
                    let ip: Ipv4Addr = t
                        .status
                        .address
                        .as_deref()?
                        .split('/')
                        .next()?
                        .parse()
                        .ok()?;
                    // The task's own copy of the ports says which target it listens on.
                    let target = t
                        .ports
                        .iter()
                        .find(|q| q.published == p.published && q.protocol == p.protocol)
                        .map_or(p.target, |q| q.target);
                    Some((ip, target))
                })
                .collect();
            backends.sort();
            out.push(Binding {
                published: p.published,
                protocol: p.protocol,
                backends,
            });
        }
    }
    out.sort_by_key(|b| (b.published, b.protocol.as_str()));
    out
}
