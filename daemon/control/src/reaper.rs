//! The task reaper: deletes finished tasks beyond each slot's history limit, and finished tasks
//! whose service or slot is gone (desired REMOVE).

use std::collections::BTreeMap;

use model::{Command, SlotKey, TaskState};

use crate::Pass;

pub(crate) fn reap(pass: &mut Pass<'_>) {
    // At least the newest finished task of a slot stays: it tells the orchestrator how the slot
    // ended (a completed job with restart `none` must not run again).
    let limit = (pass.state.settings.task_history_limit as usize).max(1);
    let mut delete = Vec::new();
    let mut history: BTreeMap<(&str, SlotKey), Vec<(u64, &str)>> = BTreeMap::new();
    // Every branch below needs a finished task (terminal, or never given a node): the index
    // hands out just those, so a pass does not read every running task.
    for t in pass.state.finished_tasks() {
        let finished = t.status.state.is_terminal() || t.node_id.is_none();
        if t.desired == TaskState::Remove && finished {
            delete.push(t.id.clone());
        } else if t.desired >= TaskState::Shutdown && finished {
            history
                .entry((t.service_id.as_str(), t.slot_key()))
                .or_default()
                .push((t.created_at, t.id.as_str()));
        } else if !pass.state.services.contains_key(&t.service_id) && finished {
            delete.push(t.id.clone());
        }
    }
    for (_, mut old) in history {
        if old.len() > limit {
            old.sort();
            let excess = old.len() - limit;
            delete.extend(old[..excess].iter().map(|(_, id)| id.to_string()));
        }
    }
    if !delete.is_empty() {
        delete.sort();
        pass.push(Command::DeleteTasks(delete));
    }
}
