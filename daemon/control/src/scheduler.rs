//! The scheduler: gives every pending task a node.
//!
//! Filters: the node must be ready and active. Ordering, as Swarm's: fewest tasks of the same
//! service, then fewest tasks in total, then node id (deterministic). A task that finds no node
//! stays PENDING and is retried on the next pass (a node joining or becoming active).

use std::collections::BTreeMap;

use model::{Command, Id, TaskState};

use crate::Pass;

pub(crate) fn schedule(pass: &mut Pass<'_>) {
    let pending: Vec<(Id, Id)> = pass
        .state
        .tasks
        .values()
        .filter(|t| t.node_id.is_none() && t.status.state < TaskState::Assigned && t.is_runnable())
        .map(|t| (t.id.clone(), t.service_id.clone()))
        .collect();
    if pending.is_empty() {
        return;
    }
    let eligible: Vec<Id> = pass
        .state
        .nodes
        .values()
        .filter(|n| n.is_eligible())
        .map(|n| n.id.clone())
        .collect();
    if eligible.is_empty() {
        return;
    }
    // Live task counts per node, and per (service, node).
    let mut total: BTreeMap<&str, usize> = eligible.iter().map(|n| (n.as_str(), 0)).collect();
    let mut per_service: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for t in pass.state.tasks.values().filter(|t| t.is_runnable()) {
        if let Some(node) = t.node_id.as_deref()
            && let Some(c) = total.get_mut(node)
        {
            *c += 1;
            *per_service
                .entry((t.service_id.as_str(), node))
                .or_default() += 1;
        }
    }
    let mut assignments = Vec::new();
    for (task_id, service_id) in &pending {
        let best = eligible.iter().min_by_key(|n| {
            let s = per_service
                .get(&(service_id.as_str(), n.as_str()))
                .copied()
                .unwrap_or(0);
            (s, total[n.as_str()], n.as_str())
        });
        if let Some(node) = best {
            *total.entry(node.as_str()).or_default() += 1;
            *per_service
                .entry((service_id.as_str(), node.as_str()))
                .or_default() += 1;
            assignments.push((task_id.clone(), node.clone()));
        }
    }
    if !assignments.is_empty() {
        let now = pass.now;
        pass.push(Command::Assign { assignments, now });
    }
}
