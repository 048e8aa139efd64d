//! The scheduler: gives every pending task a node.
//!
//! Per service, as Swarm's pipeline: filters first (the node is ready and active; it satisfies
//! the placement constraints; it runs fewer than `max_replicas_per_node` runnable tasks of the
//! service), then the spread preferences (hierarchical: the label value with the fewest tasks of
//! the service first, ties by value), then fewest tasks of the service, then fewest tasks in
//! total, then node id (deterministic).
//!
//! A task that fits nowhere stays PENDING with `status.err` set to Swarm's explanation, e.g.
//! "no suitable node (scheduling constraints not satisfied on 3 nodes)"; it is retried on every
//! pass (a node joining, becoming active, or a label change), and the error is written only
//! when it changes, so a stuck task does not make a converged state plan anything.
//!
//! Cost: one pass reads the unassigned tasks (an index), every node's runnable-task count (kept
//! by the index), and, per service with pending tasks, its runnable tasks per node (also kept by
//! the index) and every node once for the filters; each placement is then `O(log nodes)` plus
//! the number of spread groups. The counts placed in this pass are carried from one placement
//! (and one service) to the next. Nothing reads the tasks already placed, so the cost of a
//! placement does not grow with them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use model::{ClusterState, Command, Id, Node, PlacementPreference, Service, Task};

use crate::Pass;

pub(crate) fn schedule(pass: &mut Pass<'_>) {
    let (assignments, errors) = plan(pass.state);
    if !assignments.is_empty() {
        let now = pass.now;
        pass.push(Command::Assign { assignments, now });
    }
    for (err, task_ids) in errors {
        pass.push(Command::SetSchedulingError { task_ids, err });
    }
}

type Assignments = Vec<(Id, Id)>;
/// Tasks that found no node, by explanation.
type Errors = BTreeMap<String, Vec<Id>>;

fn plan(state: &ClusterState) -> (Assignments, Errors) {
    let mut pending: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in state.unassigned_tasks().filter(|t| t.is_runnable()) {
        pending.entry(t.service_id.as_str()).or_default().push(t);
    }
    let mut assignments = Vec::new();
    let mut errors = Errors::new();
    if pending.is_empty() {
        return (assignments, errors);
    }
    // Runnable tasks per node, kept up to date as this pass places tasks.
    let mut total: HashMap<&str, u64> = state
        .nodes
        .keys()
        .map(|n| (n.as_str(), state.runnable_on(n)))
        .collect();
    for (service_id, tasks) in pending {
        let Some(svc) = state.services.get(service_id) else {
            continue;
        };
        let placed = schedule_service(state, svc, &tasks, &mut total, &mut errors);
        assignments.extend(placed);
    }
    (assignments, errors)
}

/// Why nodes were filtered out, in pipeline order.
#[derive(Default)]
struct Filtered {
    not_ready: u64,
    constraints: u64,
    max_replicas: u64,
}

impl Filtered {
    /// Swarm's wording: "no suitable node (1 node not available for new tasks; scheduling
    /// constraints not satisfied on 2 nodes)".
    fn explain(&self) -> String {
        let nodes = |n: u64| {
            if n == 1 {
                "1 node".to_string()
            } else {
                format!("{n} nodes")
            }
        };
        let mut parts = Vec::new();
        if self.not_ready > 0 {
            parts.push(format!(
                "{} not available for new tasks",
                nodes(self.not_ready)
            ));
        }
        if self.constraints > 0 {
            parts.push(format!(
                "scheduling constraints not satisfied on {}",
                nodes(self.constraints)
            ));
        }
        if self.max_replicas > 0 {
            parts.push("max replicas per node limit exceed".to_string());
        }
        if parts.is_empty() {
            "no suitable node".to_string()
        } else {
            format!("no suitable node ({})", parts.join("; "))
        }
    }
}

/// The nodes that passed the filters, grouped by their spread path (the node's value of each
/// preference label, in order), each group ordered by (tasks of the service, tasks in total,
/// node id).
struct Candidates<'a> {
    groups: BTreeMap<Vec<&'a str>, BTreeSet<(u64, u64, &'a str)>>,
    /// Tasks of the service under each path prefix (all lengths), for the spread.
    spread: HashMap<Vec<&'a str>, u64>,
    levels: usize,
}

impl<'a> Candidates<'a> {
    /// The group to place the next task in: at each level, the value with the fewest tasks of
    /// the service, ties broken by value.
    fn best_group(&self) -> Option<Vec<&'a str>> {
        if self.levels == 0 {
            return self.groups.keys().next().cloned();
        }
        self.groups
            .keys()
            .min_by(|a, b| {
                for l in 1..=self.levels {
                    let ca = self.spread.get(&a[..l]).copied().unwrap_or(0);
                    let cb = self.spread.get(&b[..l]).copied().unwrap_or(0);
                    let o = ca.cmp(&cb).then_with(|| a[l - 1].cmp(b[l - 1]));
                    if o.is_ne() {
                        return o;
                    }
                }
                std::cmp::Ordering::Equal
            })
            .cloned()
    }
}

fn spread_path<'a>(node: &'a Node, preferences: &[PlacementPreference]) -> Vec<&'a str> {
    preferences
        .iter()
        .map(|p| match p {
            PlacementPreference::Spread { label } => {
                node.labels.get(label).map_or("", String::as_str)
            }
        })
        .collect()
}

fn schedule_service<'a>(
    state: &'a ClusterState,
    svc: &'a Service,
    tasks: &[&'a Task],
    total: &mut HashMap<&'a str, u64>,
    errors: &mut Errors,
) -> Assignments {
    let placement = &svc.spec.placement;
    // Runnable tasks of the service per node: from the index (one entry per node), or by
    // reading the service's tasks when the index is stale.
    let mut mine: HashMap<&str, u64> = HashMap::new();
    match state.service_tasks(&svc.id) {
        Some(counts) => {
            mine.extend(counts.runnable_on().iter().map(|(n, c)| (n.as_str(), *c)));
        }
        None => {
            for t in state.tasks_of(&svc.id).filter(|t| t.is_runnable()) {
                if let Some(n) = t.node_id.as_deref() {
                    *mine.entry(n).or_default() += 1;
                }
            }
        }
    }
    let max = placement.max_replicas_per_node;
    let mut filtered = Filtered::default();
    let mut cands = Candidates {
        groups: BTreeMap::new(),
        spread: HashMap::new(),
        levels: placement.preferences.len(),
    };
    for node in state.nodes.values() {
        if !node.is_eligible() {
            filtered.not_ready += 1;
            continue;
        }
        if !placement.matches(node) {
            filtered.constraints += 1;
            continue;
        }
        let m = mine.get(node.id.as_str()).copied().unwrap_or(0);
        if max.is_some_and(|max| m >= max) {
            filtered.max_replicas += 1;
            continue;
        }
        let path = spread_path(node, &placement.preferences);
        for l in 1..=path.len() {
            *cands.spread.entry(path[..l].to_vec()).or_default() += m;
        }
        let t = total.get(node.id.as_str()).copied().unwrap_or(0);
        cands
            .groups
            .entry(path)
            .or_default()
            .insert((m, t, node.id.as_str()));
    }

    let mut out = Vec::new();
    for task in tasks {
        let Some(path) = cands.best_group() else {
            let err = filtered.explain();
            if task.status.err.as_deref() != Some(err.as_str()) {
                errors.entry(err).or_default().push(task.id.clone());
            }
            continue;
        };
        let Some(group) = cands.groups.get_mut(&path) else {
            break;
        };
        let Some((m, t, node)) = group.pop_first() else {
            break;
        };
        out.push((task.id.clone(), node.to_string()));
        *total.entry(node).or_default() += 1;
        for l in 1..=path.len() {
            *cands.spread.entry(path[..l].to_vec()).or_default() += 1;
        }
        if max.is_some_and(|max| m + 1 >= max) {
            filtered.max_replicas += 1;
        } else {
            group.insert((m + 1, t + 1, node));
        }
        if group.is_empty() {
            cands.groups.remove(&path);
        }
    }
    out
}
