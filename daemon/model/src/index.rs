//! Task indexes of [`crate::ClusterState`]: by (service, slot), by node, unassigned, finished,
//! runnable tasks per node, and per service the counts the control plane needs to tell a service
//! at rest from one with work to do ([`ServiceTasks`]).
//!
//! Derived data: never serialized, rebuilt after deserialization, and kept consistent by
//! `ClusterState::apply` (every task change goes through `TaskIndex::update`). Every entry is a
//! function of one task's [`Keys`], so adding a task and removing it again leaves the index as
//! it was.

use std::sync::LazyLock;

use crate::{Id, Map, Set, SlotKey, Task, TaskState};

/// The index keys of one task, borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keys<'a> {
    service: &'a str,
    slot: SlotKey,
    node: Option<&'a str>,
    /// No node and not yet ASSIGNED: what the scheduler looks at.
    unassigned: bool,
    /// Terminal, or without a node although past PENDING: with the unassigned tasks, what the
    /// reaper looks at (the two sets never overlap).
    finished: bool,
    runnable: bool,
    /// The service version the task was made from.
    version: u64,
    /// Runnable and held at desired READY (a stop-first update waiting for the old task).
    held: bool,
    /// Desired RUNNING (or READY) but observed terminal: the orchestrator retires it.
    dying: bool,
}

impl<'a> Keys<'a> {
    pub(crate) fn of(t: &'a Task) -> Keys<'a> {
        Keys::new(
            &t.service_id,
            t.slot,
            t.node_id.as_deref(),
            t.status.state,
            t.desired,
            t.spec_version,
        )
    }

    /// The keys of a task with these fields (as [`Task::slot_key`] and [`Task::is_runnable`]
    /// read them).
    pub(crate) fn new(
        service: &'a str,
        slot: u64,
        node: Option<&'a str>,
        state: TaskState,
        desired: TaskState,
        version: u64,
    ) -> Keys<'a> {
        let terminal = state.is_terminal();
        let runnable = desired <= TaskState::Running && !terminal;
        let unassigned = node.is_none() && state < TaskState::Assigned;
        Keys {
            service,
            slot: if slot > 0 {
                SlotKey::Slot(slot)
            } else {
                SlotKey::Node(node.unwrap_or_default().to_string())
            },
            node,
            unassigned,
            finished: !unassigned && (terminal || node.is_none()),
            runnable,
            version,
            held: runnable && desired == TaskState::Ready,
            dying: desired <= TaskState::Running && terminal,
        }
    }

    /// The fields [`ServiceTasks`] counts.
    fn counted(&self) -> (&str, &SlotKey, Option<&str>, bool, u64, bool, bool) {
        let Keys {
            service,
            slot,
            node,
            runnable,
            version,
            held,
            dying,
            ..
        } = self;
        (service, slot, *node, *runnable, *version, *held, *dying)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TaskIndex {
    services: Map<Id, ServiceEntry>,
    by_node: Map<Id, Set<Id>>,
    unassigned: Set<Id>,
    finished: Set<Id>,
    /// Runnable tasks per node (the scheduler's load measure).
    runnable_on: Map<Id, u64>,
    len: usize,
}

/// One service's tasks: their ids by slot, and the counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ServiceEntry {
    by_slot: Map<SlotKey, Set<Id>>,
    counts: ServiceTasks,
}

impl ServiceEntry {
    fn slot_out(&mut self, id: &str, slot: &SlotKey) {
        if let Some(set) = self.by_slot.get_mut(slot) {
            set.remove(id);
            if set.is_empty() {
                self.by_slot.remove(slot);
            }
        }
    }

    fn slot_in(&mut self, id: &str, slot: &SlotKey) {
        match self.by_slot.get_mut(slot) {
            Some(set) => {
                set.insert(id.to_string());
            }
            None => {
                self.by_slot.insert(slot.clone(), Set::unit(id.to_string()));
            }
        }
    }
}

/// Counts over the tasks of one service, kept as tasks change, so the control plane can check
/// a service in time proportional to its slots and nodes rather than to its tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTasks {
    runnable_in_slot: Map<SlotKey, u64>,
    runnable_on: Map<Id, u64>,
    runnable_of_version: Map<u64, u64>,
    held: u64,
    dying: u64,
}

/// What a service without tasks has.
static NO_TASKS: LazyLock<ServiceTasks> = LazyLock::new(ServiceTasks::default);

impl ServiceTasks {
    /// Runnable tasks per slot (slots without one are absent).
    pub fn runnable_in_slot(&self) -> &Map<SlotKey, u64> {
        &self.runnable_in_slot
    }

    /// Runnable tasks with a node, per node (nodes without one are absent).
    pub fn runnable_on(&self) -> &Map<Id, u64> {
        &self.runnable_on
    }

    /// Runnable tasks per service version they were made from.
    pub fn runnable_of_version(&self) -> &Map<u64, u64> {
        &self.runnable_of_version
    }

    /// Runnable tasks held at desired READY.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Tasks desired RUNNING (or READY) that are observed terminal.
    pub fn dying(&self) -> u64 {
        self.dying
    }

    fn is_empty(&self) -> bool {
        self.runnable_in_slot.is_empty() && self.held == 0 && self.dying == 0
    }

    /// Move one task's contribution from its old keys to its new ones (`None`: not counted),
    /// touching only the counts that differ.
    fn change(&mut self, before: Option<&Keys<'_>>, after: Option<&Keys<'_>>) {
        let (b, a) = (before.filter(|k| k.runnable), after.filter(|k| k.runnable));
        let slot = |k: Option<&Keys<'_>>| k.map(|k| k.slot.clone());
        if b.map(|k| &k.slot) != a.map(|k| &k.slot) {
            if let Some(s) = slot(b) {
                bump(&mut self.runnable_in_slot, &s, false);
            }
            if let Some(s) = slot(a) {
                bump(&mut self.runnable_in_slot, &s, true);
            }
        }
        let version = |k: Option<&Keys<'_>>| k.map(|k| k.version);
        if version(b) != version(a) {
            if let Some(v) = version(b) {
                bump(&mut self.runnable_of_version, &v, false);
            }
            if let Some(v) = version(a) {
                bump(&mut self.runnable_of_version, &v, true);
            }
        }
        if node_of(b) != node_of(a) {
            if let Some(n) = node_of(b) {
                bump(&mut self.runnable_on, n, false);
            }
            if let Some(n) = node_of(a) {
                bump(&mut self.runnable_on, n, true);
            }
        }
        let held = |k: Option<&Keys<'_>>| u64::from(k.is_some_and(|k| k.held));
        self.held = (self.held + held(a)).saturating_sub(held(b));
        let dying = |k: Option<&Keys<'_>>| u64::from(k.is_some_and(|k| k.dying));
        self.dying = (self.dying + dying(after)).saturating_sub(dying(before));
    }
}

/// Add one to (or take one from) a count, dropping the entry at zero.
fn bump<K, Q>(map: &mut Map<K, u64>, key: &Q, up: bool)
where
    K: Ord + Clone + std::borrow::Borrow<Q>,
    Q: Ord + ToOwned<Owned = K> + ?Sized,
{
    if let Some(c) = map.get_mut(key) {
        *c = if up { *c + 1 } else { c.saturating_sub(1) };
        if *c == 0 {
            map.remove(key);
        }
    } else if up {
        map.insert(key.to_owned(), 1);
    }
}

impl TaskIndex {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, t: &Task) {
        self.change(&t.id, None, Some(&Keys::of(t)));
        self.len += 1;
    }

    pub(crate) fn remove(&mut self, t: &Task) {
        self.change(&t.id, Some(&Keys::of(t)), None);
        self.len = self.len.saturating_sub(1);
    }

    /// Move a task from its old keys to its new ones, touching only the entries that differ.
    pub(crate) fn update(&mut self, id: &str, before: &Keys<'_>, after: &Keys<'_>) {
        if before != after {
            self.change(id, Some(before), Some(after));
        }
    }

    fn change(&mut self, id: &str, before: Option<&Keys<'_>>, after: Option<&Keys<'_>>) {
        let differ = |f: &dyn Fn(&Keys<'_>) -> bool| match (before, after) {
            (Some(b), Some(a)) => f(b) != f(a),
            _ => true,
        };
        match (before, after) {
            (Some(b), Some(a)) if b.service == a.service => {
                if (b.slot != a.slot || b.counted() != a.counted())
                    && let Some(e) = self.services.get_mut(b.service)
                {
                    if b.slot != a.slot {
                        e.slot_out(id, &b.slot);
                        e.slot_in(id, &a.slot);
                    }
                    e.counts.change(before, after);
                }
            }
            _ => {
                if let Some(b) = before {
                    self.service_out(id, b);
                }
                if let Some(a) = after {
                    self.service_in(id, a);
                }
            }
        }
        if node_of(before) != node_of(after) {
            if let Some(n) = node_of(before)
                && let Some(set) = self.by_node.get_mut(n)
            {
                set.remove(id);
                if set.is_empty() {
                    self.by_node.remove(n);
                }
            }
            if let Some(n) = node_of(after) {
                match self.by_node.get_mut(n) {
                    Some(set) => {
                        set.insert(id.to_string());
                    }
                    None => {
                        self.by_node
                            .insert(n.to_string(), Set::unit(id.to_string()));
                    }
                }
            }
        }
        if load(before) != load(after) {
            if let Some(n) = load(before) {
                bump(&mut self.runnable_on, n, false);
            }
            if let Some(n) = load(after) {
                bump(&mut self.runnable_on, n, true);
            }
        }
        if differ(&|k| k.unassigned) {
            mark(&mut self.unassigned, id, before, after, |k| k.unassigned);
        }
        if differ(&|k| k.finished) {
            mark(&mut self.finished, id, before, after, |k| k.finished);
        }
    }

    fn service_out(&mut self, id: &str, k: &Keys<'_>) {
        let Some(e) = self.services.get_mut(k.service) else {
            return;
        };
        e.slot_out(id, &k.slot);
        e.counts.change(Some(k), None);
        if e.by_slot.is_empty() && e.counts.is_empty() {
            self.services.remove(k.service);
        }
    }

    fn service_in(&mut self, id: &str, k: &Keys<'_>) {
        if !self.services.contains_key(k.service) {
            self.services
                .insert(k.service.to_string(), ServiceEntry::default());
        }
        if let Some(e) = self.services.get_mut(k.service) {
            e.slot_in(id, &k.slot);
            e.counts.change(None, Some(k));
        }
    }

    pub(crate) fn of_service<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a Id> + 'a {
        self.services
            .get(service)
            .into_iter()
            .flat_map(|e| e.by_slot.values().flatten())
    }

    pub(crate) fn in_slot<'a>(
        &'a self,
        service: &str,
        slot: &SlotKey,
    ) -> impl Iterator<Item = &'a Id> + 'a {
        self.services
            .get(service)
            .and_then(|e| e.by_slot.get(slot))
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

    /// Unassigned tasks, then the other finished ones.
    pub(crate) fn unassigned_or_finished(&self) -> impl Iterator<Item = &Id> + '_ {
        self.unassigned.iter().chain(self.finished.iter())
    }

    pub(crate) fn service(&self, service: &str) -> &ServiceTasks {
        self.services.get(service).map_or(&NO_TASKS, |e| &e.counts)
    }
}

fn node_of<'a>(k: Option<&Keys<'a>>) -> Option<&'a str> {
    k.and_then(|k| k.node)
}

/// The node a task loads (counts towards its runnable tasks).
fn load<'a>(k: Option<&Keys<'a>>) -> Option<&'a str> {
    k.filter(|k| k.runnable).and_then(|k| k.node)
}

/// Keep `id` in `set` exactly when `has` holds for its keys.
fn mark(
    set: &mut Set<Id>,
    id: &str,
    before: Option<&Keys<'_>>,
    after: Option<&Keys<'_>>,
    has: impl Fn(&Keys<'_>) -> bool,
) {
    if before.is_some_and(&has) {
        set.remove(id);
    }
    if after.is_some_and(&has) {
        set.insert(id.to_string());
    }
}

#[cfg(test)]
mod tests {
    use crate::*;

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            raft_id: 1,
            name: id.into(),
            role: NodeRole::Worker,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            labels: Default::default(),
            addr: String::new(),
            last_heartbeat: 0,
            version: String::new(),
            status_message: String::new(),
            resources: Default::default(),
            ingress_addr: None,
        }
    }

    fn service(id: &str, replicas: u64) -> Service {
        let mut spec = ServiceSpec {
            name: id.into(),
            mode: ServiceMode::Replicated { replicas },
            ..Default::default()
        };
        spec.task.image = "busybox".into();
        Service::new(id.into(), spec, None, 0)
    }

    fn task(id: &str, service: &str, slot: u64) -> Task {
        Task {
            id: id.into(),
            service_id: service.into(),
            service_name: service.into(),
            slot,
            node_id: None,
            spec_version: 1,
            spec: TaskSpec::default(),
            image_digest: None,
            ports: vec![],
            desired: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Pending,
                ..Default::default()
            },
            created_at: 0,
            not_before: None,
            restart_attempt: 0,
            started_at: None,
            networks: vec![],
        }
    }

    fn assign(pairs: &[(&str, &str)]) -> Command {
        Command::Assign {
            assignments: pairs
                .iter()
                .map(|(t, n)| (t.to_string(), n.to_string()))
                .collect(),
            now: 1,
        }
    }

    fn report(task: &str, node: &str, state: TaskState) -> Command {
        Command::UpdateTaskStatus {
            task_id: task.into(),
            node_id: node.into(),
            status: TaskStatus {
                state,
                ..Default::default()
            },
        }
    }

    /// Nodes n1, n2; service a (3 replicas): t1 on n1 running, t2 on n2, t3 pending; service b
    /// (1 replica): t4 on n1.
    fn cluster() -> ClusterState {
        let mut st = ClusterState::default();
        for c in [
            Command::AddNode(node("n1")),
            Command::AddNode(node("n2")),
            Command::CreateService(service("a", 3)),
            Command::CreateService(service("b", 1)),
            Command::PutTasks(vec![
                task("t1", "a", 1),
                task("t2", "a", 2),
                task("t3", "a", 3),
                task("t4", "b", 1),
            ]),
            assign(&[("t1", "n1"), ("t2", "n2"), ("t4", "n1")]),
            report("t1", "n1", TaskState::Running),
        ] {
            st.apply(&c).unwrap();
        }
        st
    }

    fn rebuilt(st: &ClusterState) -> ClusterState {
        let mut r = st.clone();
        r.rebuild_index();
        r
    }

    #[test]
    fn runnable_tasks_per_node_are_counted_as_tasks_are_assigned_and_finish() {
        let mut st = cluster();
        assert_eq!([st.runnable_on("n1"), st.runnable_on("n2")], [2, 1]);
        st.apply(&report("t4", "n1", TaskState::Failed)).unwrap();
        assert_eq!([st.runnable_on("n1"), st.runnable_on("n2")], [1, 1]);
        st.apply(&assign(&[("t3", "n2")])).unwrap();
        assert_eq!([st.runnable_on("n1"), st.runnable_on("n2")], [1, 2]);
        assert_eq!(st.runnable_on("n1"), rebuilt(&st).runnable_on("n1"));
    }

    #[test]
    fn service_counts_follow_slots_nodes_versions_and_dying_tasks() {
        let mut st = cluster();
        let a = st.service_tasks("a").unwrap().clone();
        let slots: Vec<_> = a.runnable_in_slot().keys().cloned().collect();
        assert_eq!(
            slots,
            [SlotKey::Slot(1), SlotKey::Slot(2), SlotKey::Slot(3)]
        );
        let nodes: Vec<_> = a
            .runnable_on()
            .iter()
            .map(|(n, c)| (n.as_str(), *c))
            .collect();
        assert_eq!(nodes, [("n1", 1), ("n2", 1)]);
        assert_eq!(a.runnable_of_version().get(&1), Some(&3));
        assert_eq!((a.held(), a.dying()), (0, 0));

        // t1 dies on its own: no longer runnable, dying until the orchestrator retires it.
        st.apply(&report("t1", "n1", TaskState::Failed)).unwrap();
        let a = st.service_tasks("a").unwrap();
        assert!(!a.runnable_in_slot().contains_key(&SlotKey::Slot(1)));
        assert!(!a.runnable_on().contains_key("n1"));
        assert_eq!(a.dying(), 1);
        st.apply(&Command::SetDesired {
            task_ids: vec!["t1".into()],
            desired: TaskState::Shutdown,
        })
        .unwrap();
        assert_eq!(st.service_tasks("a").unwrap().dying(), 0);

        // A stop-first replacement held at READY, made from version 2.
        let mut svc = st.services["a"].clone();
        svc.spec.task.image = "busybox:2".into();
        st.apply(&Command::UpdateService {
            id: "a".into(),
            spec: svc.spec,
            image_digest: None,
            now: 2,
            if_revision: None,
        })
        .unwrap();
        let mut t5 = task("t5", "a", 1);
        t5.spec_version = 2;
        t5.desired = TaskState::Ready;
        st.apply(&Command::PutTasks(vec![t5])).unwrap();
        let a = st.service_tasks("a").unwrap();
        assert_eq!(a.held(), 1);
        assert_eq!(a.runnable_of_version().get(&2), Some(&1));
        assert_eq!(a.runnable_of_version().get(&1), Some(&2));

        // A service without tasks has empty counts; a removed service's tasks leave no trace.
        assert_eq!(st.service_tasks("nope"), Some(&ServiceTasks::default()));
        st.apply(&Command::RemoveService { id: "b".into() })
            .unwrap();
        assert_eq!(st.service_tasks("b"), Some(&ServiceTasks::default()));
        assert_eq!(st.index, rebuilt(&st).index);
    }

    #[test]
    fn the_index_kept_by_apply_and_undo_equals_one_built_from_scratch() {
        let mut st = cluster();
        let before = st.clone();
        let mut log = UndoLog::default();
        for c in [
            assign(&[("t3", "n1")]),
            report("t2", "n2", TaskState::Running),
            report("t3", "n1", TaskState::Complete),
            Command::SetDesired {
                task_ids: vec!["t2".into()],
                desired: TaskState::Remove,
            },
            Command::PutTasks(vec![task("t6", "a", 3)]),
            Command::RemoveNode { id: "n2".into() },
            Command::DeleteTasks(vec!["t3".into()]),
        ] {
            st.apply_logged(&c, &mut log).unwrap();
            assert_eq!(st.index, rebuilt(&st).index, "after {c:?}");
        }
        // Finished tasks (terminal, or past PENDING without a node) and pending ones are what
        // the reaper reads; t2 was orphaned with n2.
        let mut finished: Vec<_> = st.finished_tasks().map(|t| t.id.as_str()).collect();
        finished.sort();
        assert_eq!(finished, ["t2", "t6"]);
        st.undo(log);
        assert_eq!(st, before);
        assert_eq!(st.index, before.index);
        assert_eq!(st.index, rebuilt(&st).index);
    }
}
