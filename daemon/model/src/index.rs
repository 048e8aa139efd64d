//! Task indexes of [`crate::ClusterState`]: by (service, slot), by node, and unassigned.
//!
//! Derived data: never serialized, rebuilt after deserialization, and kept consistent by
//! `ClusterState::apply` (every task change goes through `TaskIndex::update`).

use crate::{Id, Map, Set, SlotKey, Task, TaskState};

/// The index keys of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keys {
    service: Id,
    slot: SlotKey,
    node: Option<Id>,
    unassigned: bool,
    runnable: bool,
}

impl Keys {
    pub(crate) fn of(t: &Task) -> Keys {
        Keys {
            service: t.service_id.clone(),
            slot: t.slot_key(),
            node: t.node_id.clone(),
            unassigned: t.node_id.is_none() && t.status.state < TaskState::Assigned,
            runnable: t.is_runnable(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct TaskIndex {
    by_slot: Map<(Id, SlotKey), Set<Id>>,
    by_node: Map<Id, Set<Id>>,
    unassigned: Set<Id>,
    /// Runnable tasks per node (the scheduler's load measure).
    runnable_on: Map<Id, u64>,
    len: usize,
}

impl TaskIndex {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, t: &Task) {
        self.add(&t.id, &Keys::of(t));
        self.len += 1;
    }

    pub(crate) fn remove(&mut self, t: &Task) {
        self.del(&t.id, &Keys::of(t));
        self.len = self.len.saturating_sub(1);
    }

    /// Move a task from its old keys to its new ones.
    pub(crate) fn update(&mut self, id: &Id, before: &Keys, after: &Keys) {
        if before != after {
            self.del(id, before);
            self.add(id, after);
        }
    }

    fn add(&mut self, id: &Id, k: &Keys) {
        self.by_slot
            .entry((k.service.clone(), k.slot.clone()))
            .or_default()
            .insert(id.clone());
        if let Some(n) = &k.node {
            self.by_node
                .entry(n.clone())
                .or_default()
                .insert(id.clone());
        }
        if k.unassigned {
            self.unassigned.insert(id.clone());
        }
    }

    fn del(&mut self, id: &Id, k: &Keys) {
        let slot = (k.service.clone(), k.slot.clone());
        if let Some(set) = self.by_slot.get_mut(&slot) {
            set.remove(id);
            if set.is_empty() {
                self.by_slot.remove(&slot);
            }
        }
        if let Some(n) = &k.node
            && let Some(set) = self.by_node.get_mut(n)
        {
            set.remove(id);
            if set.is_empty() {
                self.by_node.remove(n);
            }
        }
        if let Some(n) = &k.node
            && k.runnable
            && let Some(c) = self.runnable_on.get_mut(n)
        {
            *c -= 1;
            if *c == 0 {
                self.runnable_on.remove(n);
            }
        }
        if k.unassigned {
            self.unassigned.remove(id);
        }
    }

    pub(crate) fn of_service<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Id> + 'a {
        self.by_slot
            .range((service.to_string(), SlotKey::Slot(0))..)
            .take_while(move |((s, _), _)| s == service)
            .flat_map(|(_, ids)| ids.iter())
    }

    pub(crate) fn in_slot<'a>(
        &'a self,
        service: &str,
        slot: &SlotKey,
    ) -> impl Iterator<Item = &'a Id> + 'a {
        self.by_slot
            .get(&(service.to_string(), slot.clone()))
            .into_iter()
            .flatten()
    }

    pub(crate) fn on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Id> + 'a {
        self.by_node.get(node).into_iter().flatten()
    }

    pub(crate) fn runnable_on(&self, node: &str) -> u64 {
        self.runnable_on.get(node).copied().unwrap_or(0)
    }

    pub(crate) fn unassigned(&self) -> impl Iterator<Item = &Id> + '_ {
        self.unassigned.iter()
    }
}
