//! The orchestrator: keeps the right number of runnable tasks in every slot of every service.
//!
//! A slot is `1..=replicas` for replicated services and one per eligible node for global
//! services. Per slot:
//! - a task that died on its own (desired RUNNING, observed terminal) is retired (desired
//!   SHUTDOWN) and, when the restart policy allows, replaced by a new task in the same slot whose
//!   start waits `delay * 2^(attempt-1)` (capped at `max_delay`); a task that ran at least the
//!   policy's `window` resets the backoff;
//! - a slot that no longer exists (scale down, node drained or gone) has its tasks stopped:
//!   desired REMOVE for replicated slots, SHUTDOWN for global ones;
//! - a replicated task on a node that is down, drained, removed or no longer satisfies the
//!   placement constraints gets desired SHUTDOWN and its slot a new task at once (no backoff:
//!   it was stopped on purpose). When a down node returns, its agent sees desired SHUTDOWN and
//!   stops the replaced tasks; only one runnable task per slot and version is ever counted.
//!   Global tasks are not moved: a down, drained or non-matching node's global tasks are shut
//!   down, and a paused node keeps them but gets no new ones.
//!
//! A replicated service at rest is recognised from the task index's counts (`at_rest`), without
//! reading its tasks, so a pass costs what changed, not every task of every service.

use std::collections::{BTreeMap, BTreeSet};

use model::{
    Availability, ClusterState, Command, Id, MAX_REPLICAS, NodeStatus, RestartCondition, Service,
    ServiceMode, SlotKey, Task, TaskState, TaskStatus,
};

use crate::Pass;

/// The slots a service should have right now.
pub(crate) enum Wanted {
    /// Slots `1..=n`, with `n` capped at [`MAX_REPLICAS`] so that a spec committed before the
    /// bound existed cannot make planning allocate without limit.
    Replicas(u64),
    /// One slot per node.
    Nodes(BTreeSet<Id>),
}

impl Wanted {
    pub(crate) fn contains(&self, slot: &SlotKey) -> bool {
        match (self, slot) {
            (Wanted::Replicas(n), SlotKey::Slot(s)) => *s >= 1 && s <= n,
            (Wanted::Nodes(nodes), SlotKey::Node(id)) => nodes.contains(id),
            _ => false,
        }
    }

    pub(crate) fn iter(&self) -> Box<dyn Iterator<Item = SlotKey> + '_> {
        match self {
            Wanted::Replicas(n) => Box::new((1..=*n).map(SlotKey::Slot)),
            Wanted::Nodes(nodes) => Box::new(nodes.iter().cloned().map(SlotKey::Node)),
        }
    }
}

pub(crate) fn wanted_slots(state: &ClusterState, svc: &Service) -> Wanted {
    match svc.spec.mode {
        ServiceMode::Replicated { replicas } | ServiceMode::ReplicatedJob { replicas, .. } => {
            Wanted::Replicas(replicas.min(MAX_REPLICAS))
        }
        // A paused node keeps its global tasks (no new ones start there: see
        // `reconcile_service`); a drained or down node, or one that no longer satisfies the
        // constraints, loses them. They are not moved anywhere else.
        ServiceMode::Global | ServiceMode::GlobalJob => Wanted::Nodes(
            state
                .nodes
                .values()
                .filter(|n| n.status == NodeStatus::Ready && n.availability != Availability::Drain)
                .filter(|n| svc.spec.placement.matches(n))
                .map(|n| n.id.clone())
                .collect(),
        ),
    }
}

/// How long a finished task ran: from its first RUNNING report to its last report (0 when it
/// never ran).
pub(crate) fn ran_for(t: &Task) -> u64 {
    t.started_at
        .map_or(0, |s| t.status.timestamp.saturating_sub(s))
}

/// Tasks of a service grouped by slot, oldest first.
pub(crate) fn tasks_by_slot<'a>(
    state: &'a ClusterState,
    service_id: &'a str,
) -> BTreeMap<SlotKey, Vec<&'a Task>> {
    let mut slots: BTreeMap<SlotKey, Vec<&Task>> = BTreeMap::new();
    for t in state.tasks_of(service_id) {
        slots.entry(t.slot_key()).or_default().push(t);
    }
    for tasks in slots.values_mut() {
        tasks.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    }
    slots
}

/// Build a new task of `svc` for `slot`, pending (replicated) or preassigned (global), with an
/// address on each network of the service; `None` when a network has no free address.
pub(crate) fn new_task(pass: &mut Pass<'_>, svc: &Service, slot: &SlotKey) -> Option<Task> {
    let networks = crate::networks::task_addresses(pass, svc)?;
    let (slot_no, node_id, state) = match slot {
        SlotKey::Slot(n) => (*n, None, TaskState::Pending),
        SlotKey::Node(node) => (0, Some(node.clone()), TaskState::Assigned),
    };
    Some(Task {
        id: pass.ids.next_id(),
        service_id: svc.id.clone(),
        service_name: svc.spec.name.clone(),
        slot: slot_no,
        node_id,
        spec_version: svc.version,
        spec: svc.spec.task.clone(),
        image_digest: svc.image_digest.clone(),
        ports: svc.spec.ports.clone(),
        desired: TaskState::Running,
        status: TaskStatus {
            state,
            timestamp: pass.now,
            message: if state == TaskState::Assigned {
                "scheduled"
            } else {
                "created"
            }
            .into(),
            ..Default::default()
        },
        created_at: pass.now,
        not_before: None,
        restart_attempt: 0,
        started_at: None,
        networks,
    })
}

/// A runnable replicated task whose node is gone, down, drained, or no longer satisfies the
/// service's constraints: it is stopped and its slot gets a new task elsewhere. (When a down
/// node comes back, the agent finds these tasks with desired SHUTDOWN and stops them.)
fn lost(state: &ClusterState, svc: &Service, t: &Task) -> bool {
    t.node_id
        .as_ref()
        .is_some_and(|n| match state.nodes.get(n) {
            Some(node) => {
                node.availability == Availability::Drain
                    || node.status == NodeStatus::Down
                    || !svc.spec.placement.matches(node)
            }
            None => true,
        })
}

/// What one pass does to one service's slots.
#[derive(Default)]
struct Decision {
    retire: Vec<Id>,
    remove: Vec<Id>,
    shutdown: Vec<Id>,
    create: Vec<(SlotKey, Option<u64>, u32)>,
}

fn decide(state: &ClusterState, svc: &Service, now: u64) -> Decision {
    let wanted = wanted_slots(state, svc);
    let slots = tasks_by_slot(state, &svc.id);
    let global = svc.spec.mode.is_global();
    let job = svc.spec.mode.is_job();
    let mut d = Decision::default();
    let mut stopping: BTreeSet<&str> = BTreeSet::new();

    for (slot, tasks) in &slots {
        // Tasks that died on their own are retired from the slot.
        for t in tasks
            .iter()
            .filter(|t| t.desired <= TaskState::Running && t.status.state.is_terminal())
        {
            d.retire.push(t.id.clone());
        }
        if !wanted.contains(slot) {
            for t in tasks.iter().filter(|t| t.is_runnable()) {
                if global {
                    d.shutdown.push(t.id.clone())
                } else {
                    d.remove.push(t.id.clone())
                }
            }
        } else if !global {
            for t in tasks
                .iter()
                .filter(|t| t.is_runnable() && lost(state, svc, t))
            {
                d.shutdown.push(t.id.clone());
                stopping.insert(&t.id);
            }
        }
        if job {
            // A changed job runs again: tasks of the previous run stop, whatever they did.
            for t in tasks
                .iter()
                .filter(|t| t.is_runnable() && t.spec_version != svc.version)
            {
                if !stopping.contains(t.id.as_str()) {
                    d.shutdown.push(t.id.clone());
                    stopping.insert(&t.id);
                }
            }
        }
    }
    // A job runs at most `max_concurrent` tasks at once.
    let mut job_room = match svc.spec.mode {
        ServiceMode::ReplicatedJob { max_concurrent, .. } => {
            let active = slots
                .values()
                .filter(|ts| {
                    ts.iter()
                        .any(|t| t.is_runnable() && !stopping.contains(t.id.as_str()))
                })
                .count() as u64;
            max_concurrent.max(1).saturating_sub(active)
        }
        _ => u64::MAX,
    };

    // Global tasks are placed as they are created: a global dependant gets none until its
    // dependencies are ready (replicated ones wait in the scheduler, PENDING with the reason).
    let held_back = global && state.unmet_dependency(&svc.spec).is_some();
    for slot in wanted.iter() {
        let tasks = slots.get(&slot).map(Vec::as_slice).unwrap_or(&[]);
        if tasks
            .iter()
            .any(|t| t.is_runnable() && !stopping.contains(t.id.as_str()))
        {
            continue;
        }
        // No new task on a paused node.
        if let SlotKey::Node(n) = &slot
            && !state.nodes.get(n).is_some_and(|n| n.is_eligible())
        {
            continue;
        }
        if held_back {
            continue;
        }
        let replacement = if job {
            // Only this run's tasks count: a slot is done once one of them completed.
            let this_run: Vec<&Task> = tasks
                .iter()
                .copied()
                .filter(|t| t.spec_version == svc.version)
                .collect();
            if this_run
                .iter()
                .any(|t| t.status.state == TaskState::Complete)
            {
                continue;
            }
            if job_room == 0 {
                continue;
            }
            replacement_for(svc, &this_run, now)
        } else {
            replacement_for(svc, tasks, now)
        };
        match replacement {
            Replacement::None => {}
            Replacement::Now => d.create.push((slot, None, 0)),
            Replacement::After { at, attempt } => d.create.push((slot, Some(at), attempt)),
        }
        if job && !matches!(replacement, Replacement::None) {
            job_room -= 1;
        }
    }
    d
}

/// Whether `decide` would find nothing to do for a replicated service, from the index's counts
/// (cost proportional to the service's nodes, not its tasks): no task to retire, exactly one
/// runnable slot per wanted slot and none outside them, and no runnable task on a node it must
/// leave. `false` means "read the tasks", never "there is work" for sure; global services and a
/// stale index always read them.
fn at_rest(state: &ClusterState, svc: &Service) -> bool {
    let ServiceMode::Replicated { replicas } = svc.spec.mode else {
        return false;
    };
    let Some(counts) = state.service_tasks(&svc.id) else {
        return false;
    };
    let wanted = replicas.min(MAX_REPLICAS);
    let slots = counts.runnable_in_slot();
    // Distinct slots, so `wanted` of them within 1..=wanted are all of them.
    let exact = slots.len() as u64 == wanted
        && (wanted == 0
            || (slots.get_min().map(|(k, _)| k) == Some(&SlotKey::Slot(1))
                && slots.get_max().map(|(k, _)| k) == Some(&SlotKey::Slot(wanted))));
    if counts.dying() > 0 || !exact {
        return false;
    }
    // Both maps are ordered by node id: walk them together.
    let mut nodes = state.nodes.iter().peekable();
    counts.runnable_on().keys().all(|id| {
        while nodes.next_if(|(n, _)| n.as_str() < id.as_str()).is_some() {}
        match nodes.peek() {
            Some((n, node)) if *n == id => {
                node.availability != Availability::Drain
                    && node.status != NodeStatus::Down
                    && svc.spec.placement.matches(node)
            }
            _ => false,
        }
    })
}

pub(crate) fn reconcile_service(pass: &mut Pass<'_>, service_id: &Id) {
    let Some(svc) = pass.state.services.get(service_id) else {
        return;
    };
    if at_rest(pass.state, svc) {
        return;
    }
    let svc = svc.clone();
    let d = decide(pass.state, &svc, pass.now);
    if !d.retire.is_empty() {
        pass.push(Command::SetDesired {
            task_ids: d.retire,
            desired: TaskState::Shutdown,
        });
    }
    if !d.shutdown.is_empty() {
        pass.push(Command::SetDesired {
            task_ids: d.shutdown,
            desired: TaskState::Shutdown,
        });
    }
    if !d.remove.is_empty() {
        pass.push(Command::SetDesired {
            task_ids: d.remove,
            desired: TaskState::Remove,
        });
    }
    if !d.create.is_empty() {
        let tasks = d
            .create
            .into_iter()
            .filter_map(|(slot, not_before, attempt)| {
                let mut t = new_task(pass, &svc, &slot)?;
                t.not_before = not_before;
                t.restart_attempt = attempt;
                Some(t)
            })
            .collect::<Vec<_>>();
        if !tasks.is_empty() {
            pass.push(Command::PutTasks(tasks));
        }
    }
}

enum Replacement {
    None,
    Now,
    After { at: u64, attempt: u32 },
}

/// Decide whether an empty slot gets a new task, from its latest task (if any).
fn replacement_for(svc: &Service, history: &[&Task], now: u64) -> Replacement {
    let Some(last) = history.iter().max_by_key(|t| (t.created_at, t.id.clone())) else {
        return Replacement::Now;
    };
    // The last task was stopped on purpose (update, drain, scale): no backoff.
    if stopped_on_purpose(last) {
        return Replacement::Now;
    }
    let policy = &svc.spec.restart;
    match policy.condition {
        RestartCondition::None => return Replacement::None,
        // A job's completed task is done, whatever the condition says.
        RestartCondition::OnFailure | RestartCondition::Any
            if last.status.state == TaskState::Complete
                && (policy.condition == RestartCondition::OnFailure || svc.spec.mode.is_job()) =>
        {
            return Replacement::None;
        }
        _ => {}
    }
    // A task that ran at least `window` counts as a healthy run and resets the backoff; a
    // window of 0 counts every restart (as Swarm's).
    let healthy = policy.window > 0 && ran_for(last) >= policy.window;
    let attempt = if healthy { 1 } else { last.restart_attempt + 1 };
    if let Some(max) = policy.max_attempts
        && u64::from(attempt) > max
        && !healthy
    {
        return Replacement::None;
    }
    Replacement::After {
        at: now + policy.backoff(attempt),
        attempt,
    }
}

/// Whether a task ended because a manager asked it to stop. The orchestrator retires tasks that
/// died on their own with desired SHUTDOWN *after* they died, so the distinction is made on the
/// observed state: a task stopped on purpose reports SHUTDOWN (or never got as far as a terminal
/// state), not COMPLETE, FAILED or REJECTED.
fn stopped_on_purpose(t: &Task) -> bool {
    !matches!(
        t.status.state,
        TaskState::Complete | TaskState::Failed | TaskState::Rejected
    )
}
