//! The scheduler: gives every pending task a node.
//!
//! Per service, as Swarm's pipeline: filters first (the node is ready and active; it satisfies
//! the placement constraints; it runs fewer than `max_replicas_per_node` runnable tasks of the
//! service; it has room for the task's reservations), then the spread preferences (hierarchical: the label value with the fewest tasks of
//! the service first, ties by value), then fewest tasks of the service, then fewest tasks in
//! total, then node id (deterministic).
//!
//! Within a service, tasks wanted running are placed before tasks a rolling update staged at
//! desired READY, so a staged task never takes the room of the batch under way.
//!
//! A task that fits nowhere stays PENDING with `status.err` set to Swarm's explanation, e.g.
//! "no suitable node (scheduling constraints not satisfied on 3 nodes)"; it is retried on every
//! pass (a node joining, becoming active, or a label change), and the error is written only
//! when it changes, so a stuck task does not make a converged state plan anything.
//!
//! A task of a service whose `depends_on` conditions do not hold yet is not placed: it stays
//! PENDING with the reason ("waiting for dependency demo_db to be healthy (service_healthy)")
//! in its error, and is placed on the first pass after they hold (see `model::depends`).
//!
//! Reservations (`resources.reservations`) are counted against the CPUs and memory each node
//! reports: a node fits when its total minus the reservations of the runnable tasks assigned to
//! it leaves room for the task's; a node that has reported nothing has no room. A task that
//! fits nowhere gets Swarm's "insufficient resources on N nodes" with what it reserves and the
//! most any node has free.
//!
//! Cost: one pass reads the unassigned tasks (an index), every node's runnable-task count (kept
//! by the index), and, per service with pending tasks, its runnable tasks per node (also kept by
//! the index) and every node once for the filters; each placement is then `O(log nodes)` plus
//! the number of spread groups. The counts placed in this pass are carried from one placement
//! (and one service) to the next. Nothing reads the tasks already placed, so the cost of a
//! placement does not grow with them. The exception is reservations: the first service with
//! reservations in a pass reads the runnable tasks of every eligible node once, to sum theirs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use model::{
    ClusterState, Command, Id, Node, PlacementPreference, Reservations, Service, Task, TaskState,
};

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
    let mut reserved: Option<Reserved> = None;
    for (service_id, mut tasks) in pending {
        // Tasks wanted running go before those a rolling update stages at desired READY: a
        // staged task must never take the room the batch under way needs (it would wait for
        // that batch, which would wait for the room).
        tasks.sort_by_key(|t| t.desired == TaskState::Ready);
        let Some(svc) = state.services.get(service_id) else {
            continue;
        };
        // A dependant waits, PENDING with the reason, until its dependencies are ready.
        if let Some(why) = state.unmet_dependency(&svc.spec) {
            errors
                .entry(why)
                .or_default()
                .extend(tasks.iter().map(|t| t.id.clone()));
            continue;
        }
        let placed = schedule_service(state, svc, &tasks, &mut total, &mut reserved, &mut errors);
        assignments.extend(placed);
    }
    (assignments, errors)
}

/// CPUs and memory reserved on each node by its runnable tasks, kept up to date as this pass
/// places tasks.
type Reserved<'a> = HashMap<&'a str, (u64, u64)>;

fn reserved_on<'a>(state: &'a ClusterState) -> Reserved<'a> {
    let mut out = Reserved::new();
    for node in state.nodes.values().filter(|n| n.is_eligible()) {
        let mut sum = (0u64, 0u64);
        for t in state.tasks_on(&node.id).filter(|t| t.is_runnable()) {
            let r = &t.spec.reservations;
            sum.0 = sum.0.saturating_add(r.nano_cpus.unwrap_or(0));
            sum.1 = sum.1.saturating_add(r.memory_bytes.unwrap_or(0));
        }
        out.insert(node.id.as_str(), sum);
    }
    out
}

/// Whether `node`, with `used` already reserved, has room for `want`; else what it has free.
fn fits(node: &Node, used: (u64, u64), want: &Reservations) -> Result<(), (u64, u64)> {
    let free = (
        node.resources.nano_cpus.saturating_sub(used.0),
        node.resources.memory_bytes.saturating_sub(used.1),
    );
    if want.nano_cpus.unwrap_or(0) <= free.0 && want.memory_bytes.unwrap_or(0) <= free.1 {
        Ok(())
    } else {
        Err(free)
    }
}

fn show_cpus(nano: u64) -> String {
    let cpus = nano as f64 / 1e9;
    format!("{} CPU{}", cpus, if cpus == 1.0 { "" } else { "s" })
}

fn show_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if b >= size {
            let x = b as f64 / size as f64;
            return format!("{} {unit}", (x * 10.0).round() / 10.0);
        }
    }
    format!("{b} bytes")
}

/// Why nodes were filtered out, in pipeline order.
#[derive(Default)]
struct Filtered {
    not_ready: u64,
    constraints: u64,
    max_replicas: u64,
    resources: u64,
    /// What a task reserves, and the most CPU and memory any filtered node had free.
    want: Reservations,
    most_free: (u64, u64),
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
        if self.resources > 0 {
            let mut want = Vec::new();
            let mut free = Vec::new();
            if let Some(c) = self.want.nano_cpus {
                want.push(show_cpus(c));
                free.push(show_cpus(self.most_free.0));
            }
            if let Some(m) = self.want.memory_bytes {
                want.push(format!("{} of memory", show_bytes(m)));
                free.push(format!("{} of memory", show_bytes(self.most_free.1)));
            }
            parts.push(format!(
                "insufficient resources on {}: a task reserves {}, the most free on a node is {}",
                nodes(self.resources),
                want.join(" and "),
                free.join(" and ")
            ));
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
    reserved: &mut Option<Reserved<'a>>,
    errors: &mut Errors,
) -> Assignments {
    let placement = &svc.spec.placement;
    let want = &svc.spec.task.reservations;
    let mut reserved = if want.is_empty() {
        None
    } else {
        Some(reserved.get_or_insert_with(|| reserved_on(state)))
    };
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
    let mut filtered = Filtered {
        want: want.clone(),
        ..Filtered::default()
    };
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
        if let Some(reserved) = &reserved {
            let used = reserved.get(node.id.as_str()).copied().unwrap_or_default();
            if let Err(free) = fits(node, used, want) {
                filtered.resources += 1;
                filtered.most_free.0 = filtered.most_free.0.max(free.0);
                filtered.most_free.1 = filtered.most_free.1.max(free.1);
                continue;
            }
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
        let full = match reserved.as_deref_mut() {
            None => None,
            Some(reserved) => {
                let used = reserved.entry(node).or_default();
                used.0 = used.0.saturating_add(want.nano_cpus.unwrap_or(0));
                used.1 = used.1.saturating_add(want.memory_bytes.unwrap_or(0));
                let used = *used;
                state
                    .nodes
                    .get(node)
                    .map_or(Some((0, 0)), |n| fits(n, used, want).err())
            }
        };
        if max.is_some_and(|max| m + 1 >= max) {
            filtered.max_replicas += 1;
        } else if let Some(free) = full {
            filtered.resources += 1;
            filtered.most_free.0 = filtered.most_free.0.max(free.0);
            filtered.most_free.1 = filtered.most_free.1.max(free.1);
        } else {
            group.insert((m + 1, t + 1, node));
        }
        if group.is_empty() {
            cands.groups.remove(&path);
        }
    }
    out
}
