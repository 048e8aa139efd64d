//! Addresses on overlay networks: a service's virtual IP on each network its spec names, and an
//! address for each new task on each of them. The state decides (`ClusterState::free_address`
//! over the address index); apply refuses any address already held, so a stale plan can waste a
//! pass but never hand one address out twice.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use model::network::Attachment;
use model::{Command, Id, Service};

use crate::Pass;

/// The ids of the networks `svc` names, in its order (names and ids both resolve; a name that
/// resolves to nothing is skipped: apply refuses such specs, older ones may still hold one).
fn networks_of(pass: &Pass<'_>, svc: &Service) -> Vec<Id> {
    let mut out: Vec<Id> = Vec::new();
    for name in &svc.spec.networks {
        if let Some(n) = pass.state.find_network(name)
            && !out.contains(&n.id)
        {
            out.push(n.id.clone());
        }
    }
    out
}

/// Give `service_id` a VIP on each network it names and drop those it no longer names.
pub(crate) fn ensure_vips(pass: &mut Pass<'_>, service_id: &Id) {
    let Some(svc) = pass.state.services.get(service_id) else {
        return;
    };
    if svc.spec.networks.is_empty() && svc.vips.is_empty() {
        return;
    }
    let svc = svc.clone();
    // A DNS round-robin service is reached by its tasks' addresses: it holds no VIP.
    let wanted = match svc.spec.endpoint_mode {
        model::EndpointMode::Vip => networks_of(pass, &svc),
        model::EndpointMode::Dnsrr => Vec::new(),
    };
    let mut vips: Vec<Attachment> = svc
        .vips
        .iter()
        .filter(|v| wanted.contains(&v.network))
        .cloned()
        .collect();
    let mut picked = BTreeSet::new();
    for net in &wanted {
        if vips.iter().any(|v| &v.network == net) {
            continue;
        }
        // A full network leaves the service without a VIP there for now; the next pass after
        // an address frees up gives it one.
        if let Some(addr) = pass.state.free_address(net, &picked) {
            picked.insert(addr);
            vips.push(Attachment {
                network: net.clone(),
                addr,
            });
        }
    }
    if vips != svc.vips {
        pass.push(Command::SetVips {
            service_id: service_id.clone(),
            vips,
        });
    }
}

/// Addresses for a new task of `svc`, one per network it names, avoiding those picked earlier
/// in this pass for tasks not yet pushed. `None` when a network has no free address (the task
/// is not created this pass: a task never runs without a network its service names).
pub(crate) fn task_addresses(pass: &mut Pass<'_>, svc: &Service) -> Option<Vec<Attachment>> {
    if svc.spec.networks.is_empty() {
        return Some(Vec::new());
    }
    let mut out = Vec::new();
    for net in networks_of(pass, svc) {
        let picked = pass.picked.entry(net.clone()).or_default();
        let addr = pass.state.free_address(&net, picked)?;
        picked.insert(addr);
        out.push(Attachment { network: net, addr });
    }
    Some(out)
}

/// Addresses picked during a pass, per network, for tasks built but maybe not yet pushed.
pub(crate) type Picked = BTreeMap<Id, BTreeSet<Ipv4Addr>>;

/// Remove the networks of stacks that no longer declare them (or are gone), once no service
/// names them and no task holds an address on them: a removed stack leaves no network behind,
/// and its tasks keep their addresses until their containers are gone.
pub(crate) fn collect_stack_networks(pass: &mut Pass<'_>) {
    let orphans: Vec<Id> = pass
        .state
        .networks
        .values()
        .filter(|n| {
            let Some(stack) = n.stack.as_deref() else {
                return false;
            };
            let declared = pass.state.stacks.get(stack).is_some_and(|s| {
                s.spec
                    .networks
                    .iter()
                    .any(|(short, spec)| !spec.external && format!("{stack}_{short}") == n.name)
            });
            !declared
                && pass.state.services_on_network(n).next().is_none()
                && pass.state.addresses_in_use(&n.id) == 0
        })
        .map(|n| n.id.clone())
        .collect();
    for id in orphans {
        pass.push(Command::RemoveNetwork { id });
    }
}

/// The routing mesh's network: created once the cluster exists (Swarm's `ingress`, from the
/// cluster's address pool), and an address on it for every node that has none. A user network
/// already named `ingress` is left alone: the mesh then goes over the underlay, as before.
pub(crate) fn ensure_ingress(pass: &mut Pass<'_>) {
    use model::network::INGRESS_NETWORK;
    if pass.state.nodes.is_empty() {
        return;
    }
    if pass.state.ingress_network().is_none() {
        if pass.state.find_network(INGRESS_NETWORK).is_some() {
            return;
        }
        let avoid = pass.state.node_subnets();
        let id = pass.ids.next_id();
        match model::network::new_network(pass.state, id, INGRESS_NETWORK, None, &avoid, pass.now) {
            Ok(mut net) => {
                net.ingress = true;
                pass.push(Command::CreateNetwork(net));
            }
            // No free subnet in the pool: the mesh keeps going over the nodes' own addresses.
            Err(_) => return,
        }
    }
    let missing: Vec<Id> = pass
        .state
        .nodes
        .values()
        .filter(|n| n.ingress_addr.is_none())
        .map(|n| n.id.clone())
        .collect();
    for node in missing {
        // A full ingress network: the nodes without an address are reached over the underlay.
        let Some(addr) = pass.state.free_ingress_address() else {
            return;
        };
        pass.push(Command::SetIngressAddress { node, addr });
    }
}
