//! shoal's control plane: the orchestrator (replicated and global services, restarts with
//! exponential backoff, scale up and down), the rolling updater, the scheduler and the task reaper.
//!
//! Everything here is pure: [`reconcile`] takes the full cluster state, the current time and a
//! source of fresh ids, and returns the commands that move the cluster towards its specs. It does
//! no IO, reads no clock and draws no randomness, so the leader loop, the deterministic
//! simulation and the unit tests all drive the same code.
//!
//! Reconciliation is level-triggered: the plan depends only on the state and `now`, never on
//! which event woke the caller. Running `reconcile` on a converged state returns no commands.

mod liveness;
mod networks;
mod orchestrator;
mod reaper;
mod scheduler;
mod secrets;
pub mod stacks;
mod updater;

pub use liveness::{DOWN_AFTER_PERIODS, liveness};
use model::{ClusterState, Command, Id, Millis, UndoLog};

/// Where new task ids come from. The daemon draws random ids; the simulation uses a seeded RNG.
pub trait IdSource {
    fn next_id(&mut self) -> Id;
}

/// Sequential ids, handy for tests: `t1`, `t2`, ...
#[derive(Debug, Default)]
pub struct SeqIds {
    prefix: String,
    next: u64,
}

impl SeqIds {
    pub fn new(prefix: &str) -> SeqIds {
        SeqIds {
            prefix: prefix.into(),
            next: 0,
        }
    }
}

impl IdSource for SeqIds {
    fn next_id(&mut self) -> Id {
        self.next += 1;
        format!("{}{}", self.prefix, self.next)
    }
}

/// The outcome of one reconciliation pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Commands to propose, in order. The leader proposes them as one atomic batch.
    pub commands: Vec<Command>,
    /// The earliest time at which reconciling again may produce new commands even if the state
    /// does not change (an update delay expiring). `None`: only a state change can.
    pub wake_at: Option<Millis>,
}

impl Plan {
    fn wake(&mut self, at: Millis) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// Working state for one pass: the state as the commands planned so far leave it. Commands are
/// applied to the caller's state through an undo log and taken back when the pass ends, so a
/// pass costs what it reads and plans, not a copy of the whole state.
pub(crate) struct Pass<'a> {
    pub state: &'a mut ClusterState,
    pub undo: UndoLog,
    pub now: Millis,
    pub ids: &'a mut dyn IdSource,
    pub plan: Plan,
    /// Addresses picked for tasks built in this pass (see `networks::task_addresses`).
    pub picked: networks::Picked,
}

impl Pass<'_> {
    /// Record a command and apply it to the working state so later phases see its effect.
    pub fn push(&mut self, cmd: Command) {
        // Commands built here are valid by construction; a rejected one is dropped from the plan
        // so that the batch as a whole still applies.
        if self.state.apply_logged(&cmd, &mut self.undo).is_ok() {
            self.plan.commands.push(cmd);
        }
    }
}

/// Compute the commands that move `state` towards its specs at time `now`.
///
/// Works on a copy of `state`; a caller that owns a mutable state can use
/// [`reconcile_in_place`] and skip the copy.
pub fn reconcile(state: &ClusterState, now: Millis, ids: &mut dyn IdSource) -> Plan {
    let mut copy = state.clone();
    reconcile_in_place(&mut copy, now, ids)
}

/// [`reconcile`] without the copy: plans against `state` itself and leaves it exactly as it
/// was (the plan's commands are applied while planning, then undone).
pub fn reconcile_in_place(state: &mut ClusterState, now: Millis, ids: &mut dyn IdSource) -> Plan {
    let mut pass = Pass {
        state,
        undo: UndoLog::default(),
        now,
        ids,
        plan: Plan::default(),
        picked: Default::default(),
    };
    networks::ensure_ingress(&mut pass);
    let service_ids: Vec<Id> = pass.state.services.keys().cloned().collect();
    for id in &service_ids {
        networks::ensure_vips(&mut pass, id);
        updater::update_service(&mut pass, id);
        orchestrator::reconcile_service(&mut pass, id);
    }
    scheduler::schedule(&mut pass);
    reaper::reap(&mut pass);
    networks::collect_stack_networks(&mut pass);
    secrets::collect_stack_secrets(&mut pass);
    let Pass {
        state, undo, plan, ..
    } = pass;
    state.undo(undo);
    plan
}

#[cfg(test)]
mod tests;
