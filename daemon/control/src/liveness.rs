//! Node liveness: which nodes the leader should mark down or ready, from the heartbeats it has
//! seen. Pure; the leader calls it on a timer (every heartbeat period is plenty) and proposes the
//! commands it returns.
//!
//! Rules, with `grace = DOWN_AFTER_PERIODS * period_ms` and
//! `since = max(last_seen[node], watch_since)`:
//! - a READY or UNKNOWN node is marked DOWN ("heartbeat failure") once `now - since > grace`;
//! - a DOWN or UNKNOWN node whose last heartbeat is within `grace` of `now` is marked READY.
//!
//! `last_seen` is the leader's own memory of heartbeats (not replicated: heartbeats would flood
//! the raft log), and `watch_since` is when this leader started watching. A new leader therefore
//! never marks a node down merely because it has not heard from it yet: every node gets a full
//! grace period from the moment the leader took over. The leader records its own node's
//! heartbeats like any other.

use std::collections::BTreeMap;

use model::{ClusterState, Command, Id, Millis, NodeStatus};

/// A node is down after this many heartbeat periods without a heartbeat (Swarm's 3).
pub const DOWN_AFTER_PERIODS: u64 = 3;

/// The `UpdateNodeStatus` commands that bring node statuses in line with the heartbeats seen.
/// Returns nothing when every status is already right.
pub fn liveness(
    state: &ClusterState,
    last_seen: &BTreeMap<Id, Millis>,
    watch_since: Millis,
    period_ms: Millis,
    now: Millis,
) -> Vec<Command> {
    let grace = period_ms.saturating_mul(DOWN_AFTER_PERIODS);
    let mut out = Vec::new();
    for node in state.nodes.values() {
        let seen = last_seen.get(&node.id).copied();
        let since = seen.unwrap_or(0).max(watch_since);
        let silent = now.saturating_sub(since) > grace;
        let recent = seen.is_some_and(|s| now.saturating_sub(s) <= grace);
        let (status, message) = match node.status {
            NodeStatus::Ready | NodeStatus::Unknown if silent => {
                (NodeStatus::Down, "heartbeat failure")
            }
            NodeStatus::Down | NodeStatus::Unknown if recent => (NodeStatus::Ready, ""),
            _ => continue,
        };
        out.push(Command::UpdateNodeStatus {
            id: node.id.clone(),
            status: Some(status),
            addr: None,
            version: None,
            message: Some(message.into()),
            resources: None,
        });
    }
    out
}
