//! `ClusterState::apply`: the raft state machine's transition.
//!
//! Every change goes through a few primitives that record the previous value of what they touch
//! in an undo log, so a command that fails half-way (a batch whose third command is stale) is
//! rolled back at a cost proportional to what it changed, never by cloning the whole state.
//! Apply never panics on any command, committed or not: bad input is an `ApplyError` and leaves
//! the state as it was.

use crate::index::Keys;
use crate::network::{
    AddressOwner, Attachment, hold_task_addresses, holds_addresses, readdress_task,
};
use crate::{
    Applied, ApplyError, ClusterSettings, ClusterState, Command, Id, Millis, Node, ServiceMode,
    Stack, StackChange, Task, TaskState, TaskStatus,
};
use crate::{Security, Service, ServiceSpec};

/// A service's VIPs (none when absent).
fn vips(svc: Option<&Service>) -> Vec<Attachment> {
    svc.map(|s| s.vips.clone()).unwrap_or_default()
}

/// One recorded change, holding the value before it.
#[derive(Debug, Clone)]
enum Undo {
    Header(Id, ClusterSettings),
    Node(Id, Option<Node>),
    Service(Id, Option<Box<Service>>),
    Task(Id, Option<Box<Task>>),
    /// The fields `update_task` changed, before the change.
    TaskFields(Id, Box<TaskFields>),
    Stack(String, Option<Stack>),
    Network(Id, Option<Box<crate::Network>>),
    Security(Option<Box<Security>>),
}

/// What `update_task` may change in a task, so that its undo record copies just these and not
/// the whole task (spec, ports, ids): most commands of a pass are such updates.
#[derive(Debug, Clone)]
struct TaskFields {
    node_id: Option<Id>,
    desired: TaskState,
    status: TaskStatus,
    started_at: Option<Millis>,
}

impl TaskFields {
    fn of(t: &Task) -> TaskFields {
        TaskFields {
            node_id: t.node_id.clone(),
            desired: t.desired,
            status: t.status.clone(),
            started_at: t.started_at,
        }
    }

    /// Put these values into `t` and keep `t`'s in their place.
    fn swap(&mut self, t: &mut Task) {
        std::mem::swap(&mut self.node_id, &mut t.node_id);
        std::mem::swap(&mut self.desired, &mut t.desired);
        std::mem::swap(&mut self.status, &mut t.status);
        std::mem::swap(&mut self.started_at, &mut t.started_at);
    }

    /// The index keys `t` has with these values.
    fn keys<'a>(&'a self, t: &'a Task) -> Keys<'a> {
        Keys::new(
            &t.service_id,
            t.slot,
            self.node_id.as_deref(),
            self.status.state,
            self.desired,
            t.spec_version,
        )
    }
}

/// The changes made by [`ClusterState::apply_logged`], to be taken back with
/// [`ClusterState::undo`]. The control plane uses it to plan against the live state without
/// cloning it.
#[derive(Debug, Default)]
pub struct UndoLog(Vec<Undo>);

impl UndoLog {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl ClusterState {
    /// Apply one command. On error the state is unchanged.
    pub fn apply(&mut self, cmd: &Command) -> Result<Applied, ApplyError> {
        let mut log = UndoLog::default();
        self.apply_logged(cmd, &mut log)
    }

    /// Apply one command and append what it changed to `log`. On error the command's own
    /// changes are already taken back (earlier entries of `log` stay).
    pub fn apply_logged(
        &mut self,
        cmd: &Command,
        log: &mut UndoLog,
    ) -> Result<Applied, ApplyError> {
        let mark = log.0.len();
        // Compound commands check published ports on the final state only: a port may move
        // between services within one batch (a reload that moves it from one stack to another).
        let compound = matches!(cmd, Command::Batch(_) | Command::ApplyStack(_));
        let result = self.apply_inner(cmd, !compound, log).and_then(|applied| {
            if compound {
                self.check_all_ports()?;
            }
            Ok(applied)
        });
        if result.is_err() {
            self.rollback(log, mark);
        }
        result
    }

    /// Take back every change recorded in `log`, newest first.
    pub fn undo(&mut self, mut log: UndoLog) {
        self.rollback(&mut log, 0);
    }

    fn rollback(&mut self, log: &mut UndoLog, mark: usize) {
        while log.0.len() > mark {
            let Some(u) = log.0.pop() else { break };
            match u {
                Undo::Header(id, settings) => {
                    self.cluster_id = id;
                    self.settings = settings;
                }
                Undo::Node(id, old) => restore(&mut self.nodes, id, old),
                Undo::Service(id, old) => {
                    let now = vips(self.services.get(&id));
                    let then = vips(old.as_deref());
                    restore(&mut self.services, id.clone(), old.map(|b| *b));
                    self.readdress_service(&id, &now, &then);
                }
                Undo::Stack(name, old) => restore(&mut self.stacks, name, old),
                Undo::Network(id, old) => restore(&mut self.networks, id, old.map(|b| *b)),
                Undo::Task(id, old) => {
                    self.put_task_raw(id, old.map(|b| *b));
                }
                Undo::TaskFields(id, mut old) => {
                    if let Some(t) = self.tasks.get_mut(&id) {
                        let held = holds_addresses(t);
                        // `t` gets its old values back; `old` then holds the ones undone.
                        old.swap(t);
                        self.index.update(&id, &old.keys(t), &Keys::of(t));
                        if held != holds_addresses(t) {
                            let (before, after) = if held {
                                (Some(&*t), None)
                            } else {
                                (None, Some(&*t))
                            };
                            readdress_task(&mut self.addresses, before, after);
                        }
                    }
                }
                Undo::Security(old) => self.security = old.map(|b| *b),
            }
        }
    }

    // The primitives: each records the previous value, then changes one object.

    fn set_node(&mut self, log: &mut UndoLog, id: &Id, node: Option<Node>) {
        let old = match node {
            Some(n) => self.nodes.insert(id.clone(), n),
            None => self.nodes.remove(id),
        };
        log.0.push(Undo::Node(id.clone(), old));
    }

    fn set_service(&mut self, log: &mut UndoLog, id: &Id, svc: Option<Service>) {
        let after = vips(svc.as_ref());
        let old = match svc {
            Some(s) => self.services.insert(id.clone(), s),
            None => self.services.remove(id),
        };
        self.readdress_service(id, &vips(old.as_ref()), &after);
        log.0.push(Undo::Service(id.clone(), old.map(Box::new)));
    }

    fn set_network(&mut self, log: &mut UndoLog, id: &Id, net: Option<crate::Network>) {
        let old = match net {
            Some(n) => self.networks.insert(id.clone(), n),
            None => self.networks.remove(id),
        };
        log.0.push(Undo::Network(id.clone(), old.map(Box::new)));
    }

    fn set_stack(&mut self, log: &mut UndoLog, name: &str, stack: Option<Stack>) {
        let old = match stack {
            Some(s) => self.stacks.insert(name.to_string(), s),
            None => self.stacks.remove(name),
        };
        log.0.push(Undo::Stack(name.to_string(), old));
    }

    fn set_task(&mut self, log: &mut UndoLog, id: &Id, task: Option<Task>) {
        let old = self.put_task_raw(id.clone(), task).map(Box::new);
        log.0.push(Undo::Task(id.clone(), old));
    }

    /// Change a task in place with `f`, which returns whether it changed anything (it must not
    /// change anything when it returns false). Keeps the index and the undo log.
    fn update_task(
        &mut self,
        log: &mut UndoLog,
        id: &str,
        f: impl FnOnce(&mut Task) -> bool,
    ) -> bool {
        let Some(t) = self.tasks.get_mut(id) else {
            return false;
        };
        let held = holds_addresses(t);
        let old = TaskFields::of(t);
        #[cfg(debug_assertions)]
        let whole = t.clone();
        if !f(t) {
            return false;
        }
        #[cfg(debug_assertions)]
        {
            let mut back = t.clone();
            old.clone().swap(&mut back);
            debug_assert_eq!(
                back, whole,
                "update_task changed a field its undo record misses"
            );
        }
        self.index.update(id, &old.keys(t), &Keys::of(t));
        if held && !holds_addresses(t) {
            // Observed terminal: its container is gone, its addresses are free again.
            hold_task_addresses(&mut self.addresses, t, false);
        }
        log.0.push(Undo::TaskFields(t.id.clone(), Box::new(old)));
        true
    }

    /// Insert, replace or remove a task, keeping the index; records nothing and returns the
    /// task it replaced. One lookup in the task map: at 100k tasks each one costs cache misses.
    fn put_task_raw(&mut self, id: Id, task: Option<Task>) -> Option<Task> {
        use imbl::ordmap::Entry;
        match (self.tasks.entry(id), task) {
            (Entry::Occupied(mut e), Some(t)) => {
                self.index
                    .update(e.key(), &Keys::of(e.get()), &Keys::of(&t));
                readdress_task(&mut self.addresses, Some(e.get()), Some(&t));
                Some(e.insert(t))
            }
            (Entry::Occupied(e), None) => {
                let old = e.remove();
                self.index.remove(&old);
                readdress_task(&mut self.addresses, Some(&old), None);
                Some(old)
            }
            (Entry::Vacant(e), Some(t)) => {
                self.index.insert(&t);
                readdress_task(&mut self.addresses, None, Some(&t));
                e.insert(t);
                None
            }
            (Entry::Vacant(_), None) => None,
        }
    }

    /// `ports`: check published ports per command (false inside a compound command, which is
    /// checked as a whole afterwards).
    fn apply_inner(
        &mut self,
        cmd: &Command,
        ports: bool,
        log: &mut UndoLog,
    ) -> Result<Applied, ApplyError> {
        let one = Applied { changed: 1 };
        let none = Applied::default();
        match cmd {
            Command::Bootstrap {
                cluster_id,
                settings,
            } => {
                if !self.cluster_id.is_empty() {
                    return Ok(none);
                }
                log.0
                    .push(Undo::Header(self.cluster_id.clone(), self.settings.clone()));
                self.cluster_id = cluster_id.clone();
                self.settings = settings.clone();
                Ok(one)
            }
            Command::UpsertNode(node) => {
                self.set_node(log, &node.id, Some(node.clone()));
                Ok(one)
            }
            Command::AddNode(node) => {
                if self.nodes.contains_key(&node.id) {
                    return Ok(none);
                }
                self.set_node(log, &node.id, Some(node.clone()));
                Ok(one)
            }
            Command::UpdateNodeSpec {
                id,
                availability,
                labels,
                role,
            } => {
                let mut node = self.node(id)?.clone();
                if let Some(a) = availability {
                    node.availability = *a;
                }
                if let Some(l) = labels {
                    node.labels = l.clone();
                }
                if let Some(r) = role {
                    node.role = *r;
                }
                self.replace_node(log, node)
            }
            Command::UpdateNodeStatus {
                id,
                status,
                addr,
                version,
                message,
                resources,
            } => {
                let mut node = self.node(id)?.clone();
                if let Some(r) = resources {
                    node.resources = *r;
                }
                if let Some(s) = status {
                    node.status = *s;
                }
                if let Some(a) = addr {
                    node.addr = a.clone();
                }
                if let Some(v) = version {
                    node.version = v.clone();
                }
                if let Some(m) = message {
                    node.status_message = m.clone();
                }
                self.replace_node(log, node)
            }
            Command::RemoveNode { id } => {
                self.node(id)?;
                self.set_node(log, id, None);
                // No node will ever report these tasks again: they are orphaned, and their
                // slots get replacements (the orchestrator sees no runnable task there).
                let on_node: Vec<Id> = self.tasks_on(id).map(|t| t.id.clone()).collect();
                for tid in on_node {
                    self.update_task(log, &tid, |t| {
                        if t.status.state.is_terminal() {
                            return false;
                        }
                        t.desired = t.desired.max(TaskState::Shutdown);
                        t.status = TaskStatus {
                            state: TaskState::Orphaned,
                            timestamp: t.status.timestamp,
                            message: "node removed".into(),
                            ..Default::default()
                        };
                        true
                    });
                }
                Ok(one)
            }
            Command::CreateService(svc) => {
                let mut svc = svc.clone();
                self.assign_published_ports(&mut svc.spec, None)?;
                let svc = &svc;
                check_bounds(&svc.spec)?;
                self.check_networks(&svc.spec, None)?;
                self.check_attachments(&AddressOwner::Vip(svc.id.clone()), &svc.vips)
                    .map_err(|why| {
                        ApplyError::Precondition(format!("service {}: {why}", svc.spec.name))
                    })?;
                if self.service_by_name(&svc.spec.name).is_some()
                    || self.services.contains_key(&svc.id)
                {
                    return Err(ApplyError::ServiceExists(svc.spec.name.clone()));
                }
                if ports {
                    self.check_ports(&svc.spec, None)?;
                }
                self.set_service(log, &svc.id, Some(svc.clone()));
                Ok(one)
            }
            Command::UpdateService {
                id,
                spec,
                image_digest,
                now,
                if_revision,
            } => {
                let Some(svc) = self.services.get(id) else {
                    return Err(ApplyError::ServiceNotFound(id.clone()));
                };
                let mut filled = spec.clone();
                self.assign_published_ports(&mut filled, Some((id, &svc.spec)))?;
                let spec = &filled;
                check_bounds(spec)?;
                check_revision(svc, *if_revision)?;
                self.check_networks(spec, Some(&svc.spec))?;
                if svc.spec == *spec
                    && (image_digest.is_none() || svc.image_digest == *image_digest)
                {
                    return Ok(none);
                }
                if ports {
                    self.check_ports(spec, Some(id))?;
                }
                let mut svc = svc.clone();
                let task_changed = svc.spec.task != spec.task
                    || svc.spec.ports != spec.ports
                    || (image_digest.is_some() && svc.image_digest != *image_digest);
                svc.previous_spec = Some(std::mem::replace(&mut svc.spec, spec.clone()));
                svc.previous_image_digest = svc.image_digest.clone();
                if image_digest.is_some() {
                    svc.image_digest = image_digest.clone();
                }
                if task_changed {
                    svc.version += 1;
                }
                svc.revision += 1;
                svc.updated_at = *now;
                self.set_service(log, id, Some(svc));
                Ok(one)
            }
            Command::SetUpdateStatus {
                service_id,
                status,
                if_revision,
            } => {
                let Some(svc) = self.services.get(service_id) else {
                    return Err(ApplyError::ServiceNotFound(service_id.clone()));
                };
                check_revision(svc, *if_revision)?;
                let mut svc = svc.clone();
                svc.update_status = status.clone();
                self.set_service(log, service_id, Some(svc));
                Ok(one)
            }
            Command::RemoveService { id } => {
                if !self.services.contains_key(id) {
                    return Err(ApplyError::ServiceNotFound(id.clone()));
                }
                self.set_service(log, id, None);
                let tasks: Vec<Id> = self.tasks_of(id).map(|t| t.id.clone()).collect();
                for tid in tasks {
                    self.update_task(log, &tid, |t| {
                        let change = t.desired < TaskState::Remove;
                        if change {
                            t.desired = TaskState::Remove;
                        }
                        change
                    });
                }
                Ok(one)
            }
            Command::PutTasks(tasks) => {
                for t in tasks {
                    self.check_attachments(&AddressOwner::Task(t.id.clone()), &t.networks)
                        .map_err(|why| ApplyError::Precondition(format!("task {}: {why}", t.id)))?;
                    match self.tasks.get(&t.id) {
                        Some(existing) => {
                            let mut next = t.clone();
                            next.status = existing.status.clone();
                            next.desired = existing.desired.max(t.desired);
                            self.set_task(log, &t.id, Some(next));
                        }
                        None => {
                            self.check_new_task(t)?;
                            self.set_task(log, &t.id, Some(t.clone()));
                        }
                    }
                }
                Ok(Applied {
                    changed: tasks.len() as u64,
                })
            }
            Command::Assign { assignments, now } => {
                for (task_id, node_id) in assignments {
                    self.check_assignment(task_id, node_id)?;
                    self.update_task(log, task_id, |t| {
                        t.node_id = Some(node_id.clone());
                        t.status = TaskStatus {
                            state: TaskState::Assigned,
                            timestamp: *now,
                            message: "scheduled".into(),
                            ..Default::default()
                        };
                        true
                    });
                }
                Ok(Applied {
                    changed: assignments.len() as u64,
                })
            }
            Command::SetDesired { task_ids, desired } => {
                let mut changed = 0;
                for id in task_ids {
                    let done = self.update_task(log, id, |t| {
                        let release =
                            t.desired == TaskState::Ready && *desired == TaskState::Running;
                        let change = *desired > t.desired || release;
                        if change {
                            t.desired = *desired;
                        }
                        change
                    });
                    changed += u64::from(done);
                }
                Ok(Applied { changed })
            }
            Command::UpdateTaskStatus {
                task_id,
                node_id,
                status,
            } => {
                // A late report for a deleted task, or one from another node, is ignored; so is
                // a report that would move the observed state backwards.
                let done = self.update_task(log, task_id, |t| {
                    if t.node_id.as_deref() != Some(node_id.as_str()) {
                        return false;
                    }
                    let forward = t.status.state.can_advance_to(status.state)
                        || t.status.state == status.state;
                    if !forward || t.status == *status {
                        return false;
                    }
                    if status.state == TaskState::Running && t.started_at.is_none() {
                        t.started_at = Some(status.timestamp);
                    }
                    t.status = status.clone();
                    true
                });
                Ok(Applied {
                    changed: u64::from(done),
                })
            }
            Command::DeleteTasks(ids) => {
                let mut changed = 0;
                for id in ids {
                    if self.tasks.contains_key(id) {
                        self.set_task(log, id, None);
                        changed += 1;
                    }
                }
                Ok(Applied { changed })
            }
            Command::SetSchedulingError { task_ids, err } => {
                let mut changed = 0;
                for id in task_ids {
                    let done = self.update_task(log, id, |t| {
                        let pending = t.node_id.is_none() && t.status.state < TaskState::Assigned;
                        if !pending || t.status.err.as_deref() == Some(err.as_str()) {
                            return false;
                        }
                        t.status.err = Some(err.clone());
                        t.status.message = "pending task scheduling failed".into();
                        true
                    });
                    changed += u64::from(done);
                }
                Ok(Applied { changed })
            }
            Command::ApplyStack(change) => self.apply_stack(change, log),
            Command::CreateNetwork(net) => {
                self.check_new_network(net)?;
                self.set_network(log, &net.id, Some(net.clone()));
                Ok(one)
            }
            Command::SetVips { service_id, vips } => {
                let Some(svc) = self.services.get(service_id) else {
                    return Err(ApplyError::ServiceNotFound(service_id.clone()));
                };
                if svc.vips == *vips {
                    return Ok(none);
                }
                self.check_attachments(&AddressOwner::Vip(service_id.clone()), vips)
                    .map_err(|why| {
                        ApplyError::Precondition(format!("service {}: {why}", svc.spec.name))
                    })?;
                let mut svc = svc.clone();
                svc.vips = vips.clone();
                self.set_service(log, service_id, Some(svc));
                Ok(one)
            }
            Command::SetIngressAddress { node, addr } => {
                let n = self.node(node)?;
                if n.ingress_addr == Some(*addr) {
                    return Ok(none);
                }
                let Some(ingress) = self.ingress_network() else {
                    return Err(ApplyError::Precondition(
                        "there is no ingress network".into(),
                    ));
                };
                let subnet = ingress.subnet;
                if !subnet.contains(*addr)
                    || *addr == subnet.network()
                    || *addr == subnet.broadcast()
                    || *addr == subnet.gateway()
                {
                    return Err(ApplyError::Precondition(format!(
                        "{addr} is not a host address of the ingress network {subnet}"
                    )));
                }
                if let Some(other) = self
                    .nodes
                    .values()
                    .find(|o| o.id != *node && o.ingress_addr == Some(*addr))
                {
                    return Err(ApplyError::Precondition(format!(
                        "ingress address {addr} is node {}'s",
                        other.name
                    )));
                }
                let mut n = n.clone();
                n.ingress_addr = Some(*addr);
                self.replace_node(log, n)
            }
            Command::RemoveNetwork { id } => {
                let Some(net) = self.networks.get(id) else {
                    return Err(ApplyError::NetworkNotFound(id.clone()));
                };
                if net.ingress && self.nodes.values().any(|n| n.ingress_addr.is_some()) {
                    return Err(ApplyError::Precondition(format!(
                        "network {} is the ingress network: it carries the routing mesh between the nodes and cannot be removed",
                        net.name
                    )));
                }
                if let Some(svc) = self.services_on_network(net).next() {
                    return Err(ApplyError::Precondition(format!(
                        "network {} is in use by service {}",
                        net.name, svc.spec.name
                    )));
                }
                let held = self.addresses.in_use(id);
                if held > 0 {
                    return Err(ApplyError::Precondition(format!(
                        "network {} still has {held} addresses in use",
                        net.name
                    )));
                }
                self.set_network(log, id, None);
                Ok(one)
            }
            Command::SetSettings(settings) => {
                if self.settings == *settings {
                    return Ok(none);
                }
                log.0
                    .push(Undo::Header(self.cluster_id.clone(), self.settings.clone()));
                self.settings = settings.clone();
                Ok(one)
            }
            Command::SetSecurity(sec) => {
                if self.security.as_ref() == Some(sec) {
                    return Ok(none);
                }
                let old = self.security.replace(sec.clone());
                log.0.push(Undo::Security(old.map(Box::new)));
                Ok(one)
            }
            Command::Batch(cmds) => {
                let mut changed = 0;
                for c in cmds {
                    changed += self.apply_inner(c, false, log)?.changed;
                }
                Ok(Applied { changed })
            }
        }
    }

    fn node(&self, id: &Id) -> Result<&Node, ApplyError> {
        self.nodes
            .get(id)
            .ok_or_else(|| ApplyError::NodeNotFound(id.clone()))
    }

    fn replace_node(&mut self, log: &mut UndoLog, node: Node) -> Result<Applied, ApplyError> {
        if self.nodes.get(&node.id) == Some(&node) {
            return Ok(Applied::default());
        }
        let id = node.id.clone();
        self.set_node(log, &id, Some(node));
        Ok(Applied { changed: 1 })
    }

    /// The precondition of a new task in `PutTasks` (see [`Command::PutTasks`]).
    fn check_new_task(&self, t: &Task) -> Result<(), ApplyError> {
        let stale = |why: String| {
            Err(ApplyError::Precondition(format!(
                "new task {}: {why}",
                t.id
            )))
        };
        let Some(svc) = self.services.get(&t.service_id) else {
            return stale(format!("service {} no longer exists", t.service_id));
        };
        if svc.version != t.spec_version {
            return stale(format!(
                "made from version {} of service {}, which is now at version {}",
                t.spec_version, svc.spec.name, svc.version
            ));
        }
        match (svc.spec.mode, t.slot) {
            (mode, slot)
                if mode
                    .replicas()
                    .is_some_and(|replicas| slot == 0 || slot > replicas) =>
            {
                return stale(format!(
                    "slot {slot} is outside 1..={} of service {}",
                    mode.replicas().unwrap_or_default(),
                    svc.spec.name
                ));
            }
            (ServiceMode::Global | ServiceMode::GlobalJob, 0)
                if !t
                    .node_id
                    .as_ref()
                    .and_then(|n| self.nodes.get(n))
                    .is_some_and(|n| n.is_eligible() && svc.spec.placement.matches(n)) =>
            {
                return stale("its node is gone, not ready and active, or does not match".into());
            }
            (ServiceMode::Global | ServiceMode::GlobalJob, slot) if slot != 0 => {
                return stale(format!("slot {slot} in global service {}", svc.spec.name));
            }
            _ => {}
        }
        let slot = t.slot_key();
        if let Some(other) = self
            .tasks_in_slot(&t.service_id, &slot)
            .find(|o| o.is_runnable() && o.spec_version == t.spec_version)
        {
            return stale(format!(
                "slot {} of service {} already has task {}",
                t.name(),
                svc.spec.name,
                other.id
            ));
        }
        Ok(())
    }

    /// The precondition of one assignment (see [`Command::Assign`]).
    fn check_assignment(&self, task_id: &Id, node_id: &Id) -> Result<(), ApplyError> {
        let stale = |why: &str| {
            Err(ApplyError::Precondition(format!(
                "assign task {task_id} to node {node_id}: {why}"
            )))
        };
        let Some(t) = self.tasks.get(task_id) else {
            return stale("the task no longer exists");
        };
        if t.node_id.is_some() || t.status.state >= TaskState::Assigned || !t.is_runnable() {
            return stale("the task is no longer pending");
        }
        let Some(node) = self.nodes.get(node_id) else {
            return stale("the node no longer exists");
        };
        if !node.is_eligible() {
            return stale("the node is not ready and active");
        }
        let Some(svc) = self.services.get(&t.service_id) else {
            return stale("the service no longer exists");
        };
        if !svc.spec.placement.matches(node) {
            return stale("the node does not satisfy the service's constraints");
        }
        Ok(())
    }

    fn apply_stack(
        &mut self,
        change: &StackChange,
        log: &mut UndoLog,
    ) -> Result<Applied, ApplyError> {
        let mut changed = 0;
        for net in &change.networks {
            changed += self
                .apply_inner(&Command::CreateNetwork(net.clone()), false, log)?
                .changed;
        }
        for id in &change.remove {
            changed += self
                .apply_inner(&Command::RemoveService { id: id.clone() }, false, log)?
                .changed;
        }
        for (id, spec, digest) in &change.update {
            changed += self
                .apply_inner(
                    &Command::UpdateService {
                        id: id.clone(),
                        spec: spec.clone(),
                        image_digest: digest.clone(),
                        now: change.now,
                        if_revision: None,
                    },
                    false,
                    log,
                )?
                .changed;
        }
        for svc in &change.create {
            changed += self
                .apply_inner(&Command::CreateService(svc.clone()), false, log)?
                .changed;
        }
        match &change.stack {
            Some(stack) => {
                if self.stacks.get(&change.name) != Some(stack) {
                    self.set_stack(log, &change.name, Some(stack.clone()));
                    changed += 1;
                }
            }
            None => {
                if !self.stacks.contains_key(&change.name) && changed == 0 {
                    return Err(ApplyError::StackNotFound(change.name.clone()));
                }
                if self.stacks.contains_key(&change.name) {
                    self.set_stack(log, &change.name, None);
                }
                changed += 1;
            }
        }
        Ok(Applied { changed })
    }

    /// No two services publish the same port (checked after a compound command).
    fn check_all_ports(&self) -> Result<(), ApplyError> {
        let mut seen: Vec<(&str, &crate::PortSpec)> = Vec::new();
        for svc in self.services.values() {
            for p in &svc.spec.ports {
                if let Some((other, _)) = seen
                    .iter()
                    .find(|(name, q)| *name != svc.spec.name && q.clashes_with(p))
                {
                    return Err(ApplyError::PortInUse {
                        port: p.published,
                        protocol: p.protocol.as_str().into(),
                        service: other.to_string(),
                    });
                }
                seen.push((&svc.spec.name, p));
            }
        }
        Ok(())
    }

    fn check_ports(&self, spec: &ServiceSpec, except: Option<&Id>) -> Result<(), ApplyError> {
        for p in &spec.ports {
            for other in self.services.values() {
                if Some(&other.id) == except || other.spec.name == spec.name {
                    continue;
                }
                if other.spec.ports.iter().any(|q| q.clashes_with(p)) {
                    return Err(ApplyError::PortInUse {
                        port: p.published,
                        protocol: p.protocol.as_str().into(),
                        service: other.spec.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl ClusterState {
    /// Gives each port of `spec` with no published port (0) one of [`crate::AUTO_PORTS`]: the one
    /// the service's current spec (`previous`) gives the same target, protocol and mode, else
    /// the lowest that no other service publishes. Deterministic, so every manager agrees.
    fn assign_published_ports(
        &self,
        spec: &mut ServiceSpec,
        previous: Option<(&Id, &ServiceSpec)>,
    ) -> Result<(), ApplyError> {
        if spec.ports.iter().all(|p| p.published != 0) {
            return Ok(());
        }
        if let Some((_, prev)) = previous {
            crate::spec::keep_published_ports(spec, prev);
        }
        let except = previous.map(|(id, _)| id);
        for i in 0..spec.ports.len() {
            if spec.ports[i].published != 0 {
                continue;
            }
            let protocol = spec.ports[i].protocol;
            let taken = |port: u16| {
                spec.ports
                    .iter()
                    .any(|q| q.published == port && q.protocol == protocol)
                    || self.services.values().any(|o| {
                        Some(&o.id) != except
                            && o.spec.name != spec.name
                            && o.spec
                                .ports
                                .iter()
                                .any(|q| q.published == port && q.protocol == protocol)
                    })
            };
            let mut range = crate::AUTO_PORTS;
            let Some(port) = range.find(|p| !taken(*p)) else {
                return Err(ApplyError::Precondition(format!(
                    "service {}: no free published port left in {}-{}",
                    spec.name,
                    crate::AUTO_PORTS.start(),
                    crate::AUTO_PORTS.end()
                )));
            };
            spec.ports[i].published = port;
        }
        Ok(())
    }

    /// Every network a spec names exists (by id or name); a name the spec had before is not
    /// checked again, so a service stored before networks existed can still be scaled.
    fn check_networks(
        &self,
        spec: &ServiceSpec,
        old: Option<&ServiceSpec>,
    ) -> Result<(), ApplyError> {
        for name in &spec.networks {
            let had = old.is_some_and(|o| o.networks.contains(name));
            match self.find_network(name) {
                None if !had => return Err(ApplyError::NetworkNotFound(name.clone())),
                Some(n) if n.ingress && !had => {
                    return Err(ApplyError::InvalidSpec {
                        service: spec.name.clone(),
                        reason: format!(
                            "network {}: the ingress network carries the routing mesh; publish a port instead of attaching to it",
                            n.name
                        ),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_new_network(&self, net: &crate::Network) -> Result<(), ApplyError> {
        if self.networks.contains_key(&net.id) || self.networks.values().any(|n| n.name == net.name)
        {
            return Err(ApplyError::NetworkExists(net.name.clone()));
        }
        if net.ingress && self.ingress_network().is_some() {
            return Err(ApplyError::Precondition(
                "the cluster has an ingress network already".into(),
            ));
        }
        if !(crate::network::VNI_FIRST..=crate::network::VNI_LAST).contains(&net.vni) {
            return Err(ApplyError::Precondition(format!(
                "network {}: VNI {} is outside {}..={}",
                net.name,
                net.vni,
                crate::network::VNI_FIRST,
                crate::network::VNI_LAST
            )));
        }
        for other in self.networks.values() {
            if other.vni == net.vni {
                return Err(ApplyError::Precondition(format!(
                    "network {}: VNI {} is taken by network {}",
                    net.name, net.vni, other.name
                )));
            }
            if other.subnet.overlaps(&net.subnet) {
                return Err(ApplyError::Precondition(format!(
                    "network {}: subnet {} overlaps {} of network {}",
                    net.name, net.subnet, other.subnet, other.name
                )));
            }
        }
        Ok(())
    }
}

/// The updater's precondition: the service is still at the revision its plan was made from.
fn check_revision(svc: &Service, expected: Option<u64>) -> Result<(), ApplyError> {
    match expected {
        Some(rev) if rev != svc.revision => Err(ApplyError::Precondition(format!(
            "service {} changed since this was planned (revision {} now, {rev} planned)",
            svc.spec.name, svc.revision
        ))),
        _ => Ok(()),
    }
}

fn check_bounds(spec: &ServiceSpec) -> Result<(), ApplyError> {
    spec.check_bounds()
        .map_err(|reason| ApplyError::InvalidSpec {
            service: spec.name.clone(),
            reason,
        })
}

fn restore<K: Ord + Clone, V: Clone>(map: &mut crate::Map<K, V>, key: K, old: Option<V>) {
    match old {
        Some(v) => {
            map.insert(key, v);
        }
        None => {
            map.remove(&key);
        }
    }
}
