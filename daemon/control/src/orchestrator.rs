//! The orchestrator: keeps the right number of runnable tasks in every slot of every service.
//!
//! A slot is `1..=replicas` for replicated services and one per eligible node for global
//! services. Per slot:
//! - a task that died on its own (desired RUNNING, observed terminal) is retired (desired
//!   SHUTDOWN) and, when the restart policy allows, replaced by a new task in the same slot whose
//!   start waits `delay * 2^(attempt-1)` (capped at `max_delay`); a task that ran at least the
//!   policy's `window` resets the backoff;
//! - a slot that no longer exists (scale down, node drained or gone) has its tasks stopped:
//!   desired REMOVE for replicated slots, SHUTDOWN for global ones.

use std::collections::{BTreeMap, BTreeSet};

use model::{
    Availability, Command, Id, NodeStatus, RestartCondition, Service, ServiceMode, SlotKey, Task,
    TaskState, TaskStatus,
};

use crate::Pass;

/// The slots a service should have right now.
pub(crate) fn wanted_slots(pass: &Pass<'_>, svc: &Service) -> BTreeSet<SlotKey> {
    match svc.spec.mode {
        ServiceMode::Replicated { replicas } => (1..=replicas).map(SlotKey::Slot).collect(),
        // A paused node keeps its global tasks (no new ones start there: see
        // `reconcile_service`); a drained or down node loses them.
        ServiceMode::Global => pass
            .state
            .nodes
            .values()
            .filter(|n| n.status == NodeStatus::Ready && n.availability != Availability::Drain)
            .map(|n| SlotKey::Node(n.id.clone()))
            .collect(),
    }
}

/// How long a finished task ran: from its first RUNNING report to its last report (0 when it
/// never ran).
pub(crate) fn ran_for(t: &Task) -> u64 {
    t.started_at
        .map_or(0, |s| t.status.timestamp.saturating_sub(s))
}

/// Tasks of a service grouped by slot, oldest first.
pub(crate) fn tasks_by_slot(pass: &Pass<'_>, service_id: &str) -> BTreeMap<SlotKey, Vec<Task>> {
    let mut slots: BTreeMap<SlotKey, Vec<Task>> = BTreeMap::new();
    for t in pass.state.tasks_of(service_id) {
        slots.entry(t.slot_key()).or_default().push(t.clone());
    }
    for tasks in slots.values_mut() {
        tasks.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    }
    slots
}

/// Build a new task of `svc` for `slot`, pending (replicated) or preassigned (global).
pub(crate) fn new_task(pass: &mut Pass<'_>, svc: &Service, slot: &SlotKey) -> Task {
    let (slot_no, node_id, state) = match slot {
        SlotKey::Slot(n) => (*n, None, TaskState::Pending),
        SlotKey::Node(node) => (0, Some(node.clone()), TaskState::Assigned),
    };
    Task {
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
    }
}

pub(crate) fn reconcile_service(pass: &mut Pass<'_>, service_id: &Id) {
    let Some(svc) = pass.state.services.get(service_id).cloned() else {
        return;
    };
    let wanted = wanted_slots(pass, &svc);
    let slots = tasks_by_slot(pass, service_id);
    let global = matches!(svc.spec.mode, ServiceMode::Global);

    let mut retire = Vec::new();
    let mut remove = Vec::new();
    let mut shutdown = Vec::new();
    let mut create = Vec::new();

    for (slot, tasks) in &slots {
        // Tasks that died on their own are retired from the slot.
        for t in tasks
            .iter()
            .filter(|t| t.desired <= TaskState::Running && t.status.state.is_terminal())
        {
            retire.push(t.id.clone());
        }
        // Replicated tasks on a drained, down or vanished node are stopped; their slot is then
        // empty and gets a new task on an eligible node.
        if !global && wanted.contains(slot) {
            for t in tasks.iter().filter(|t| t.is_runnable()) {
                let lost = t
                    .node_id
                    .as_ref()
                    .is_some_and(|n| match pass.state.nodes.get(n) {
                        Some(node) => {
                            node.availability == Availability::Drain
                                || node.status == NodeStatus::Down
                        }
                        None => true,
                    });
                if lost {
                    shutdown.push(t.id.clone());
                }
            }
        }
        if !wanted.contains(slot) {
            for t in tasks.iter().filter(|t| t.is_runnable()) {
                if global {
                    shutdown.push(t.id.clone())
                } else {
                    remove.push(t.id.clone())
                }
            }
        }
    }

    for slot in &wanted {
        let tasks = slots.get(slot).map(Vec::as_slice).unwrap_or(&[]);
        if tasks
            .iter()
            .any(|t| t.is_runnable() && !shutdown.contains(&t.id))
        {
            continue;
        }
        // No new task on a paused node.
        if let SlotKey::Node(n) = slot
            && !pass.state.nodes.get(n).is_some_and(|n| n.is_eligible())
        {
            continue;
        }
        match replacement_for(&svc, tasks, pass.now) {
            Replacement::None => {}
            Replacement::Now => create.push((slot.clone(), None, 0)),
            Replacement::After { at, attempt } => create.push((slot.clone(), Some(at), attempt)),
        }
    }

    if !retire.is_empty() {
        pass.push(Command::SetDesired {
            task_ids: retire,
            desired: TaskState::Shutdown,
        });
    }
    if !shutdown.is_empty() {
        pass.push(Command::SetDesired {
            task_ids: shutdown,
            desired: TaskState::Shutdown,
        });
    }
    if !remove.is_empty() {
        pass.push(Command::SetDesired {
            task_ids: remove,
            desired: TaskState::Remove,
        });
    }
    if !create.is_empty() {
        let tasks = create
            .into_iter()
            .map(|(slot, not_before, attempt)| {
                let mut t = new_task(pass, &svc, &slot);
                t.not_before = not_before;
                t.restart_attempt = attempt;
                t
            })
            .collect();
        pass.push(Command::PutTasks(tasks));
    }
}

enum Replacement {
    None,
    Now,
    After { at: u64, attempt: u32 },
}

/// Decide whether an empty slot gets a new task, from its latest task (if any).
fn replacement_for(svc: &Service, history: &[Task], now: u64) -> Replacement {
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
        RestartCondition::OnFailure if last.status.state == TaskState::Complete => {
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
