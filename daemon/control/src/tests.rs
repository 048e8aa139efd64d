//! Scenario tests of the control plane against a small simulated agent with virtual time.

use std::collections::BTreeMap;

use model::*;

use crate::{SeqIds, reconcile};

/// A simulated single- or multi-node cluster: the control plane plus an agent per node that moves
/// tasks forward instantly. Images named `bad` fail right after starting, `oneshot` exit with
/// status 0 right after starting; images named `unhealthy` start but never pass a healthcheck:
/// STARTING, then FAILED as unhealthy, never RUNNING.
struct Sim {
    state: ClusterState,
    now: Millis,
    ids: SeqIds,
    /// Nodes whose agent reports nothing (dead or cut off).
    silent: std::collections::BTreeSet<Id>,
}

const STEP: Millis = 100;

impl Sim {
    fn new(nodes: &[&str]) -> Sim {
        let mut state = ClusterState::default();
        state.settings.task_history_limit = 3;
        for (i, n) in nodes.iter().enumerate() {
            state
                .apply(&Command::UpsertNode(Node {
                    id: n.to_string(),
                    raft_id: i as u64 + 1,
                    name: n.to_string(),
                    role: NodeRole::Manager,
                    availability: Availability::Active,
                    status: NodeStatus::Ready,
                    labels: BTreeMap::new(),
                    addr: String::new(),
                    last_heartbeat: 0,
                    version: String::new(),
                    status_message: String::new(),
                    resources: Default::default(),
                    ingress_addr: None,
                }))
                .unwrap();
        }
        Sim {
            state,
            now: 1_000_000,
            ids: SeqIds::new("t"),
            silent: Default::default(),
        }
    }

    fn create(&mut self, name: &str, mode: ServiceMode, image: &str) -> Id {
        let mut spec = ServiceSpec {
            name: name.into(),
            mode,
            ..Default::default()
        };
        spec.task.image = image.into();
        spec.task.stop_signal = "SIGTERM".into();
        let id = format!("svc-{name}");
        self.state
            .apply(&Command::CreateService(Service::new(
                id.clone(),
                spec,
                None,
                self.now,
            )))
            .unwrap();
        id
    }

    fn update(&mut self, id: &str, f: impl FnOnce(&mut ServiceSpec)) {
        let mut spec = self.state.services[id].spec.clone();
        f(&mut spec);
        self.state
            .apply(&Command::UpdateService {
                id: id.into(),
                spec,
                image_digest: None,
                now: self.now,
                if_revision: None,
            })
            .unwrap();
    }

    /// One control-plane pass, then one agent pass, then time moves on.
    fn step(&mut self) {
        let plan = reconcile(&self.state, self.now, &mut self.ids);
        for c in &plan.commands {
            self.state.apply(c).expect("planned commands apply");
        }
        self.agent();
        self.check_invariants();
        self.now += STEP;
    }

    fn agent(&mut self) {
        let tasks: Vec<Task> = self.state.tasks.values().cloned().collect();
        for t in tasks {
            let Some(node) = t.node_id.clone() else {
                continue;
            };
            if self.silent.contains(&node) {
                continue;
            }
            let cur = t.status.state;
            if cur.is_terminal() {
                continue;
            }
            let next = if t.desired >= TaskState::Shutdown {
                Some(TaskState::Shutdown)
            } else if t.spec.image == "unhealthy" && cur == TaskState::Starting {
                let status = TaskStatus {
                    state: TaskState::Failed,
                    timestamp: self.now,
                    err: Some(model::health::UNHEALTHY_ERROR.into()),
                    ..Default::default()
                };
                self.state
                    .apply(&Command::UpdateTaskStatus {
                        task_id: t.id.clone(),
                        node_id: node.clone(),
                        status,
                    })
                    .unwrap();
                continue;
            } else if t.spec.image == "unhealthy"
                && t.desired == TaskState::Running
                && cur < TaskState::Starting
            {
                Some(TaskState::Starting)
            } else if cur == TaskState::Running {
                match t.spec.image.as_str() {
                    "bad" => Some(TaskState::Failed),
                    "oneshot" => Some(TaskState::Complete),
                    _ => None,
                }
            } else if t.desired == TaskState::Running
                && t.not_before.is_none_or(|nb| self.now >= nb)
            {
                Some(TaskState::Running)
            } else if cur < TaskState::Ready {
                Some(TaskState::Ready)
            } else {
                None
            };
            if let Some(state) = next {
                self.report(&t.id, &node, state);
            }
        }
    }

    fn report(&mut self, task: &str, node: &str, state: TaskState) {
        let status = TaskStatus {
            state,
            timestamp: self.now,
            ..Default::default()
        };
        self.state
            .apply(&Command::UpdateTaskStatus {
                task_id: task.into(),
                node_id: node.into(),
                status,
            })
            .unwrap();
    }

    fn crash(&mut self, task: &str) {
        let node = self.state.tasks[task].node_id.clone().unwrap();
        self.report(task, &node, TaskState::Failed);
    }

    fn run_until(&mut self, what: &str, mut done: impl FnMut(&Sim) -> bool) {
        for _ in 0..2000 {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!(
            "not converged after 2000 steps: {what}\n{:#?}",
            self.state.tasks
        );
    }

    fn running<'a>(&'a self, svc: &'a str) -> Vec<&'a Task> {
        self.state
            .tasks_of(svc)
            .filter(|t| t.status.state == TaskState::Running && t.desired == TaskState::Running)
            .collect()
    }

    fn converged(&self, svc: &str, n: usize) -> bool {
        let s = &self.state.services[svc];
        let running = self.running(svc);
        running.len() == n
            && running.iter().all(|t| t.spec_version == s.version)
            && self.state.tasks_of(svc).filter(|t| t.is_runnable()).count() == n
    }

    fn check_invariants(&self) {
        for t in self.state.tasks.values() {
            // Tasks never run without a node.
            if t.status.state >= TaskState::Accepted {
                assert!(t.node_id.is_some(), "task {} runs without node", t.id);
            }
        }
        // An address is never held twice: tasks not yet terminal, and VIPs.
        let mut held = std::collections::BTreeSet::new();
        let holders = self
            .state
            .tasks
            .values()
            .filter(|t| !t.status.state.is_terminal())
            .flat_map(|t| t.networks.iter())
            .chain(self.state.services.values().flat_map(|s| s.vips.iter()));
        for a in holders {
            assert!(
                held.insert(a.clone()),
                "{} on {} is held twice",
                a.addr,
                a.network
            );
        }
        // A replicated slot never has two runnable tasks of the same version.
        let mut seen = BTreeMap::new();
        for t in self
            .state
            .tasks
            .values()
            .filter(|t| t.is_runnable() && t.slot > 0)
        {
            let prev = seen.insert((t.service_id.clone(), t.slot, t.spec_version), t.id.clone());
            assert!(
                prev.is_none(),
                "slot {} of {} has two tasks of one version",
                t.slot,
                t.service_id
            );
        }
    }
}

#[test]
fn replicated_service_converges_and_is_stable() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 3 }, "bb");
    sim.run_until("3 running", |s| s.converged(&svc, 3));
    let slots: Vec<u64> = sim.running(&svc).iter().map(|t| t.slot).collect();
    assert_eq!(slots.len(), 3);
    for s in 1..=3 {
        assert!(slots.contains(&s), "slot {s} missing: {slots:?}");
    }
    // Level-triggered and idempotent: a converged state plans nothing.
    let plan = reconcile(&sim.state, sim.now, &mut SeqIds::new("x"));
    assert!(
        plan.commands.is_empty(),
        "converged state planned {:?}",
        plan.commands
    );
}

#[test]
fn scale_up_and_down_removes_highest_slots() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 2 }, "bb");
    sim.run_until("2", |s| s.converged(&svc, 2));
    sim.update(&svc, |s| s.mode = ServiceMode::Replicated { replicas: 5 });
    sim.run_until("5", |s| s.converged(&svc, 5));
    sim.update(&svc, |s| s.mode = ServiceMode::Replicated { replicas: 2 });
    sim.run_until("2 again", |s| s.converged(&svc, 2));
    let mut slots: Vec<u64> = sim.running(&svc).iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2]);
    // Removed slots' tasks are deleted once stopped.
    sim.run_until("reaped", |s| s.state.tasks_of(&svc).all(|t| t.slot <= 2));
}

#[test]
fn crash_is_replaced_with_exponential_backoff_that_resets() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 1 }, "bb");
    sim.update(&svc, |s| {
        s.restart.delay = 1_000;
        s.restart.max_delay = 3_000;
        s.restart.window = 60_000;
    });
    sim.run_until("1", |s| s.converged(&svc, 1));
    let mut delays = Vec::new();
    for _ in 0..4 {
        let victim = sim.running(&svc)[0].id.clone();
        sim.crash(&victim);
        let crashed_at = sim.now;
        sim.step();
        let replacement = sim
            .state
            .tasks_of(&svc)
            .find(|t| t.is_runnable())
            .expect("replacement created")
            .clone();
        assert_eq!(replacement.slot, 1, "replacement stays in the slot");
        assert_ne!(replacement.id, victim);
        delays.push(replacement.not_before.unwrap() - crashed_at);
        sim.run_until("running again", |s| s.converged(&svc, 1));
        assert!(
            sim.now >= replacement.not_before.unwrap(),
            "started before its backoff"
        );
    }
    assert_eq!(delays, vec![1_000, 2_000, 3_000, 3_000]);
    // A healthy run (longer than the window) resets the backoff.
    for _ in 0..700 {
        sim.step();
    }
    let victim = sim.running(&svc)[0].id.clone();
    sim.crash(&victim);
    let crashed_at = sim.now;
    sim.step();
    let replacement = sim
        .state
        .tasks_of(&svc)
        .find(|t| t.is_runnable())
        .unwrap()
        .clone();
    assert_eq!(replacement.not_before.unwrap() - crashed_at, 1_000);
    // History is bounded.
    assert!(sim.state.tasks_of(&svc).count() <= 1 + 3);
}

#[test]
fn restart_conditions() {
    let mut sim = Sim::new(&["n1"]);
    let none = sim.create("none", ServiceMode::Replicated { replicas: 1 }, "bb");
    sim.update(&none, |s| s.restart.condition = RestartCondition::None);
    let onf = sim.create("onf", ServiceMode::Replicated { replicas: 1 }, "bb");
    sim.update(&onf, |s| s.restart.condition = RestartCondition::OnFailure);
    sim.run_until("both", |s| s.converged(&none, 1) && s.converged(&onf, 1));
    let t = sim.running(&none)[0].id.clone();
    sim.crash(&t);
    let t2 = sim.running(&onf)[0].clone();
    sim.report(&t2.id, "n1", TaskState::Complete);
    for _ in 0..50 {
        sim.step();
    }
    assert_eq!(
        sim.state
            .tasks_of(&none)
            .filter(|t| t.is_runnable())
            .count(),
        0
    );
    assert_eq!(
        sim.state.tasks_of(&onf).filter(|t| t.is_runnable()).count(),
        0,
        "exit 0 is not a failure"
    );
    // on-failure does restart a failure (slot 1 finished for good; slot 2 is new).
    sim.update(&onf, |s| s.mode = ServiceMode::Replicated { replicas: 2 });
    sim.run_until("onf slot 2", |s| {
        s.running(&onf).iter().any(|t| t.slot == 2)
    });
    let t3 = sim.running(&onf)[0].id.clone();
    sim.crash(&t3);
    sim.run_until("onf restarted", |s| {
        s.running(&onf).iter().any(|t| t.slot == 2 && t.id != t3)
    });
}

#[test]
fn rolling_update_stop_first_one_at_a_time() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 4 }, "v1");
    sim.run_until("4", |s| s.converged(&svc, 4));
    sim.update(&svc, |s| {
        s.task.image = "v2".into();
        s.update.parallelism = 1;
        s.update.delay = 500;
    });
    let mut min_running = usize::MAX;
    let mut batches_started = Vec::new();
    sim.run_until("updated", |s| {
        s.converged(&svc, 4) && s.running(&svc).iter().all(|t| t.spec.image == "v2")
    });
    // Re-run the scenario while observing to check the invariants during the update.
    let mut sim2 = Sim::new(&["n1"]);
    let svc2 = sim2.create("web", ServiceMode::Replicated { replicas: 4 }, "v1");
    sim2.run_until("4", |s| s.converged(&svc2, 4));
    sim2.update(&svc2, |s| {
        s.task.image = "v2".into();
        s.update.delay = 500;
    });
    for _ in 0..400 {
        sim2.step();
        let running = sim2.running(&svc2).len();
        min_running = min_running.min(running);
        for t in sim2.state.tasks_of(&svc2).filter(|t| t.spec.image == "v2") {
            if !batches_started.contains(&t.created_at) {
                batches_started.push(t.created_at);
            }
        }
        // stop-first never runs old and new in one slot.
        for slot in 1..=4 {
            let live = sim2
                .state
                .tasks_of(&svc2)
                .filter(|t| t.slot == slot && t.status.state == TaskState::Running)
                .count();
            assert!(
                live <= 1,
                "slot {slot} has {live} running tasks during stop-first"
            );
        }
    }
    assert!(
        min_running >= 3,
        "parallelism 1 keeps 3 of 4 running, saw {min_running}"
    );
    batches_started.sort();
    assert_eq!(batches_started.len(), 4, "one batch per slot");
    for w in batches_started.windows(2) {
        assert!(
            w[1] - w[0] >= 500,
            "update delay respected between batches: {batches_started:?}"
        );
    }
    let st = sim2.state.services[&svc2].update_status.clone().unwrap();
    assert_eq!(st.state, UpdateState::Completed);
}

#[test]
fn rolling_update_start_first_keeps_capacity() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 3 }, "v1");
    sim.run_until("3", |s| s.converged(&svc, 3));
    sim.update(&svc, |s| {
        s.task.image = "v2".into();
        s.update.order = UpdateOrder::StartFirst;
        s.update.parallelism = 2;
    });
    for _ in 0..200 {
        sim.step();
        let running = sim
            .state
            .tasks_of(&svc)
            .filter(|t| t.status.state == TaskState::Running)
            .count();
        assert!(
            running >= 3,
            "start-first never drops below the replica count: {running}"
        );
    }
    assert!(sim.converged(&svc, 3));
    assert!(sim.running(&svc).iter().all(|t| t.spec.image == "v2"));
}

#[test]
fn start_first_stages_the_next_batch_and_releases_it_in_turn() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 4 }, "v1");
    sim.run_until("4", |s| s.converged(&svc, 4));
    sim.update(&svc, |s| {
        s.task.image = "v2".into();
        s.update.order = UpdateOrder::StartFirst;
        s.update.parallelism = 1;
        s.update.monitor = 1_000;
    });
    let mut saw_staged_while_in_flight = false;
    for _ in 0..400 {
        sim.step();
        let new: Vec<_> = sim
            .state
            .tasks_of(&svc)
            .filter(|t| t.spec.image == "v2" && t.is_runnable())
            .collect();
        let staged: Vec<_> = new
            .iter()
            .filter(|t| t.desired == TaskState::Ready)
            .collect();
        let released_not_running = new
            .iter()
            .filter(|t| t.desired == TaskState::Running && t.status.state < TaskState::Running)
            .count();
        assert!(staged.len() <= 1, "at most a batch is staged: {staged:?}");
        assert!(released_not_running <= 1, "one batch at a time");
        for t in &staged {
            // A staged task is prepared but never started while its slot's old task serves.
            assert!(t.status.state <= TaskState::Ready, "{t:?}");
            assert!(
                sim.running(&svc)
                    .iter()
                    .any(|o| o.slot == t.slot && o.spec.image == "v1"),
                "slot {} keeps serving while its new task is staged",
                t.slot
            );
        }
        if !staged.is_empty() && new.iter().any(|t| t.desired == TaskState::Running) {
            saw_staged_while_in_flight = true;
        }
    }
    assert!(
        saw_staged_while_in_flight,
        "the next batch is staged while the current one is watched"
    );
    assert!(sim.converged(&svc, 4));
    assert!(sim.running(&svc).iter().all(|t| t.spec.image == "v2"));
    // Each slot got exactly one new task: the staged ones were released, not replaced.
    let made = sim
        .state
        .tasks_of(&svc)
        .filter(|t| t.spec.image == "v2")
        .count();
    assert_eq!(made, 4, "one new task per slot");
    let st = sim.state.services[&svc].update_status.clone().unwrap();
    assert_eq!(st.state, UpdateState::Completed, "{st:?}");

    // A paused update shuts its staged tasks down; a newer spec retires them.
    for (action, image) in [
        (FailureAction::Pause, "bad"),
        (FailureAction::Rollback, "bad"),
    ] {
        let mut sim = Sim::new(&["n1"]);
        let svc = sim.create("web", ServiceMode::Replicated { replicas: 4 }, "v1");
        sim.run_until("4", |s| s.converged(&svc, 4));
        sim.update(&svc, |s| {
            s.task.image = image.into();
            s.update.order = UpdateOrder::StartFirst;
            s.update.parallelism = 1;
            s.update.failure_action = action;
        });
        for _ in 0..300 {
            sim.step();
        }
        let held: Vec<_> = sim
            .state
            .tasks_of(&svc)
            .filter(|t| t.is_runnable() && t.desired == TaskState::Ready)
            .collect();
        assert!(
            held.is_empty(),
            "{action:?} leaves nothing staged: {held:?}"
        );
        let old = sim
            .running(&svc)
            .iter()
            .filter(|t| t.spec.image == "v1")
            .count();
        // Paused after the first slot failed: the three others still serve the old spec.
        let want = if action == FailureAction::Pause { 3 } else { 4 };
        assert_eq!(old, want, "{action:?}: the old tasks keep serving");
    }
}

#[test]
fn failing_update_pauses_or_rolls_back() {
    for action in [
        FailureAction::Pause,
        FailureAction::Rollback,
        FailureAction::Continue,
    ] {
        let mut sim = Sim::new(&["n1"]);
        let svc = sim.create("web", ServiceMode::Replicated { replicas: 3 }, "v1");
        sim.run_until("3", |s| s.converged(&svc, 3));
        sim.update(&svc, |s| {
            s.task.image = "bad".into();
            s.update.failure_action = action;
        });
        for _ in 0..300 {
            sim.step();
        }
        let st = sim.state.services[&svc].update_status.clone().unwrap();
        match action {
            FailureAction::Pause => {
                assert_eq!(st.state, UpdateState::Paused);
                // The rollout halts with old tasks still serving, and stays halted.
                let old = sim
                    .running(&svc)
                    .iter()
                    .filter(|t| t.spec.image == "v1")
                    .count();
                assert!(
                    old >= 1,
                    "pause stops the rollout before it reaches every slot"
                );
                for _ in 0..300 {
                    sim.step();
                }
                let still = sim
                    .running(&svc)
                    .iter()
                    .filter(|t| t.spec.image == "v1")
                    .count();
                assert_eq!(still, old, "a paused update does not go on");
            }
            FailureAction::Rollback => {
                assert_eq!(st.state, UpdateState::RollbackCompleted, "{st:?}");
                assert_eq!(sim.state.services[&svc].spec.task.image, "v1");
                assert!(sim.converged(&svc, 3));
                assert!(sim.running(&svc).iter().all(|t| t.spec.image == "v1"));
            }
            FailureAction::Continue => {
                let bad = sim
                    .state
                    .tasks_of(&svc)
                    .filter(|t| t.spec.image == "bad")
                    .count();
                assert!(bad >= 3, "continue reaches every slot");
                assert_eq!(
                    sim.running(&svc)
                        .iter()
                        .filter(|t| t.spec.image == "v1")
                        .count(),
                    0
                );
            }
        }
    }
}

#[test]
fn global_service_follows_eligible_nodes() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    let svc = sim.create("agent", ServiceMode::Global, "bb");
    sim.run_until("3", |s| s.running(&svc).len() == 3);
    let nodes: Vec<_> = sim
        .running(&svc)
        .iter()
        .map(|t| t.node_id.clone().unwrap())
        .collect();
    assert_eq!(nodes, vec!["n1", "n2", "n3"]);
    let mut n2 = sim.state.nodes["n2"].clone();
    n2.availability = Availability::Drain;
    sim.state.apply(&Command::UpsertNode(n2)).unwrap();
    sim.run_until("drained", |s| s.running(&svc).len() == 2);
    for _ in 0..20 {
        sim.step();
    }
    assert!(
        sim.running(&svc)
            .iter()
            .all(|t| t.node_id.as_deref() != Some("n2"))
    );
    assert_eq!(
        sim.running(&svc).len(),
        2,
        "global tasks are not moved elsewhere"
    );
}

#[test]
fn replicated_tasks_spread_and_leave_drained_nodes() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 6 }, "bb");
    sim.run_until("6", |s| s.converged(&svc, 6));
    let mut per_node = BTreeMap::new();
    for t in sim.running(&svc) {
        *per_node.entry(t.node_id.clone().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    let mut n1 = sim.state.nodes["n1"].clone();
    n1.availability = Availability::Drain;
    sim.state.apply(&Command::UpsertNode(n1)).unwrap();
    sim.run_until("moved", |s| {
        s.converged(&svc, 6)
            && s.running(&svc)
                .iter()
                .all(|t| t.node_id.as_deref() != Some("n1"))
    });
}

#[test]
fn removing_a_service_stops_and_reaps_its_tasks() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 3 }, "bb");
    sim.run_until("3", |s| s.converged(&svc, 3));
    sim.state
        .apply(&Command::RemoveService { id: svc.clone() })
        .unwrap();
    sim.run_until("gone", |s| s.state.tasks.is_empty());
}

mod depends;
mod health;
mod jobs;
mod multi_node;
mod secrets;

mod stacks {
    use super::*;
    use crate::stacks::*;

    fn stack(name: &str, services: &[(&str, &str)]) -> StackSpec {
        StackSpec {
            name: name.into(),
            services: services
                .iter()
                .map(|(svc, image)| {
                    let mut s = ServiceSpec {
                        name: format!("{name}_{svc}"),
                        stack: Some(name.into()),
                        ..Default::default()
                    };
                    s.task.image = image.to_string();
                    s
                })
                .collect(),
            networks: Default::default(),
            ..Default::default()
        }
    }

    fn file(name: &str, hash: &str, spec: StackSpec) -> FileStack {
        FileStack {
            name: name.into(),
            path: format!("/etc/shoal/stacks/{name}.toml"),
            hash: hash.into(),
            spec,
        }
    }

    fn apply(state: &mut ClusterState, plan: &ReloadPlan) {
        if let Some(c) = &plan.command {
            state.apply(c).unwrap();
        }
    }

    #[test]
    fn reload_adds_changes_removes_and_leaves_unchanged_alone() {
        let mut st = ClusterState::default();
        let mut ids = SeqIds::new("s");
        let d = BTreeMap::new();
        let a = file("a", "h1", stack("a", &[("web", "bb:1"), ("db", "bb:1")]));
        let b = file("b", "h1", stack("b", &[("x", "bb:1")]));
        let p = plan_reload(&st, &[a.clone(), b.clone()], &d, 1, &mut ids).unwrap();
        assert_eq!(
            (p.added.clone(), p.changed.clone(), p.removed.clone()),
            (vec!["a".into(), "b".into()], vec![], vec![])
        );
        apply(&mut st, &p);
        assert_eq!(st.services.len(), 3);

        // Same files again: nothing to do.
        let p = plan_reload(&st, &[a.clone(), b.clone()], &d, 2, &mut ids).unwrap();
        assert_eq!(p.unchanged, vec!["a".to_string(), "b".to_string()]);
        assert!(p.command.is_none());

        // a changes (web image, db dropped, cache added); b's file disappears.
        let a2 = file("a", "h2", stack("a", &[("web", "bb:2"), ("cache", "bb:1")]));
        let web_id = st.service_by_name("a_web").unwrap().id.clone();
        let p = plan_reload(&st, &[a2], &d, 3, &mut ids).unwrap();
        assert_eq!(p.changed, vec!["a".to_string()]);
        assert_eq!(p.removed, vec!["b".to_string()]);
        apply(&mut st, &p);
        let names: Vec<_> = st.services.values().map(|s| s.spec.name.clone()).collect();
        assert!(names.contains(&"a_web".to_string()) && names.contains(&"a_cache".to_string()));
        assert!(!names.contains(&"a_db".to_string()) && !names.contains(&"b_x".to_string()));
        assert_eq!(
            st.services[&web_id].spec.task.image, "bb:2",
            "updated in place, same id"
        );
        assert!(!st.stacks.contains_key("b"));
    }

    #[test]
    fn reload_puts_back_what_drifted_from_an_unchanged_file_but_keeps_a_forced_restart() {
        let mut st = ClusterState::default();
        let mut ids = SeqIds::new("s");
        let d = BTreeMap::new();
        let a = file("a", "h1", stack("a", &[("web", "bb:1"), ("db", "bb:1")]));
        let p = plan_reload(&st, std::slice::from_ref(&a), &d, 1, &mut ids).unwrap();
        apply(&mut st, &p);
        let web = st.service_by_name("a_web").unwrap().clone();
        let db = st.service_by_name("a_db").unwrap().clone();

        // Drift, as an older shoal allowed from the CLI: web scaled and re-imaged, db removed.
        let mut drifted = web.spec.clone();
        drifted.mode = ServiceMode::Replicated { replicas: 5 };
        drifted.task.image = "bb:9".into();
        st.apply(&Command::UpdateService {
            id: web.id.clone(),
            spec: drifted,
            image_digest: None,
            now: 2,
            if_revision: None,
        })
        .unwrap();
        st.apply(&Command::RemoveService { id: db.id.clone() })
            .unwrap();

        // The same file again: both are back as the file says.
        let p = plan_reload(&st, std::slice::from_ref(&a), &d, 3, &mut ids).unwrap();
        assert_eq!(p.changed, vec!["a".to_string()]);
        apply(&mut st, &p);
        let web_now = &st.services[&web.id];
        assert_eq!(web_now.spec.mode, ServiceMode::Replicated { replicas: 1 });
        assert_eq!(web_now.spec.task.image, "bb:1");
        assert!(st.service_by_name("a_db").is_some());

        // A `service update --force` (the one change allowed on a file's service) stays.
        let mut forced = st.services[&web.id].spec.clone();
        forced.task.force_update += 1;
        st.apply(&Command::UpdateService {
            id: web.id.clone(),
            spec: forced,
            image_digest: None,
            now: 4,
            if_revision: None,
        })
        .unwrap();
        let p = plan_reload(&st, std::slice::from_ref(&a), &d, 5, &mut ids).unwrap();
        assert_eq!(p.unchanged, vec!["a".to_string()]);
        assert!(p.command.is_none());
    }

    #[test]
    fn reload_never_touches_cli_stacks_and_refuses_to_take_them_over() {
        let mut st = ClusterState::default();
        let mut ids = SeqIds::new("s");
        let d = BTreeMap::new();
        let change = plan_stack(
            &st,
            &stack("cli", &[("web", "bb")]),
            StackSource::Cli,
            &d,
            1,
            &mut ids,
        )
        .unwrap()
        .unwrap();
        st.apply(&Command::ApplyStack(change)).unwrap();
        // An empty stacks dir removes no CLI stack.
        let p = plan_reload(&st, &[], &d, 2, &mut ids).unwrap();
        assert!(p.command.is_none() && p.removed.is_empty());
        // A file with the same name is an error, and nothing is planned.
        let err = plan_reload(
            &st,
            &[file("cli", "h", stack("cli", &[("web", "bb")]))],
            &d,
            3,
            &mut ids,
        )
        .unwrap_err();
        assert_eq!(err, vec![PlanError::OwnedByCli("cli".into())]);
    }

    #[test]
    fn stack_service_name_taken_by_plain_service_is_an_error() {
        let mut sim = Sim::new(&["n1"]);
        sim.create("a_web", ServiceMode::Replicated { replicas: 1 }, "bb");
        let mut ids = SeqIds::new("s");
        let err = plan_reload(
            &sim.state,
            &[file("a", "h", stack("a", &[("web", "bb")]))],
            &BTreeMap::new(),
            1,
            &mut ids,
        )
        .unwrap_err();
        assert!(
            matches!(&err[0], PlanError::ServiceOwnedElsewhere { service, .. } if service == "a_web")
        );
    }

    /// `stack(...)` with every service on the stack's default network, as the parser makes it.
    fn networked(name: &str, services: &[(&str, &str)]) -> StackSpec {
        let mut s = stack(name, services);
        for svc in &mut s.services {
            svc.networks = vec![format!("{name}_default")];
        }
        s.networks
            .insert("default".into(), model::NetworkSpec::default());
        s
    }

    #[test]
    fn stack_networks_come_with_the_stack_and_go_once_nothing_uses_them() {
        let mut sim = Sim::new(&["n1"]);
        let mut ids = SeqIds::new("s");
        let d = BTreeMap::new();
        // Two stacks in one reload: each gets its own network, with distinct subnets and VNIs.
        let p = plan_reload(
            &sim.state,
            &[
                file("a", "h1", networked("a", &[("web", "bb")])),
                file("b", "h1", networked("b", &[("web", "bb")])),
            ],
            &d,
            1,
            &mut ids,
        )
        .unwrap();
        apply(&mut sim.state, &p);
        let nets: Vec<&Network> = sim.state.networks.values().collect();
        assert_eq!(nets.len(), 2);
        assert_ne!(nets[0].subnet, nets[1].subnet);
        assert_ne!(nets[0].vni, nets[1].vni);
        let a_net = sim.state.find_network("a_default").unwrap().clone();
        assert_eq!(a_net.stack.as_deref(), Some("a"));
        let web = sim.state.service_by_name("a_web").unwrap().id.clone();
        sim.run_until("a_web runs on its network", |s| {
            s.converged(&web, 1) && task_addrs(s, &web, &a_net.id).len() == 1
        });
        // Deploying the same again plans nothing (the network exists).
        assert!(
            plan_stack(
                &sim.state,
                &networked("a", &[("web", "bb")]),
                StackSource::File {
                    path: "/etc/shoal/stacks/a.toml".into(),
                    hash: "h1".into()
                },
                &d,
                2,
                &mut ids
            )
            .unwrap()
            .is_none()
        );
        // The stack's file goes: its service goes at once, its network once the task is gone.
        let p = plan_reload(
            &sim.state,
            &[file("b", "h1", networked("b", &[("web", "bb")]))],
            &d,
            3,
            &mut ids,
        )
        .unwrap();
        apply(&mut sim.state, &p);
        assert!(
            sim.state.networks.contains_key(&a_net.id),
            "addresses still held"
        );
        sim.run_until("a's network removed", |s| {
            !s.state.networks.contains_key(&a_net.id)
        });
        assert!(
            sim.state.find_network("b_default").is_some(),
            "b keeps its own"
        );
    }

    #[test]
    fn digest_change_alone_updates_the_service() {
        let mut st = ClusterState::default();
        let mut ids = SeqIds::new("s");
        let spec = stack("a", &[("web", "reg/bb:1")]);
        let mut d = BTreeMap::from([("reg/bb:1".to_string(), "sha256:aaa".to_string())]);
        let c = plan_stack(&st, &spec, StackSource::Cli, &d, 1, &mut ids)
            .unwrap()
            .unwrap();
        st.apply(&Command::ApplyStack(c)).unwrap();
        assert!(
            plan_stack(&st, &spec, StackSource::Cli, &d, 2, &mut ids)
                .unwrap()
                .is_none()
        );
        d.insert("reg/bb:1".into(), "sha256:bbb".into());
        let c = plan_stack(&st, &spec, StackSource::Cli, &d, 3, &mut ids)
            .unwrap()
            .unwrap();
        st.apply(&Command::ApplyStack(c)).unwrap();
        let svc = st.service_by_name("a_web").unwrap();
        assert_eq!(svc.image_digest.as_deref(), Some("sha256:bbb"));
        assert_eq!(svc.version, 2, "a new digest rolls the tasks");
    }
}

#[test]
fn a_new_or_restarting_service_is_not_an_update() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 2 }, "bb");
    sim.run_until("2", |s| s.converged(&svc, 2));
    let t = sim.running(&svc)[0].id.clone();
    sim.crash(&t);
    sim.run_until("restarted", |s| s.converged(&svc, 2));
    assert_eq!(
        sim.state.services[&svc].update_status, None,
        "no update status without a spec change"
    );
}

#[test]
fn window_zero_counts_every_restart_and_max_attempts_stops() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 1 }, "bb");
    sim.update(&svc, |s| {
        s.restart.window = 0;
        s.restart.max_attempts = Some(2);
        s.restart.delay = 100;
    });
    sim.run_until("1", |s| s.converged(&svc, 1));
    for _ in 0..2 {
        for _ in 0..200 {
            sim.step(); // long healthy runs do not reset the count with window 0
        }
        let t = sim.running(&svc)[0].id.clone();
        sim.crash(&t);
        sim.run_until("restarted", |s| s.converged(&svc, 1));
    }
    let t = sim.running(&svc)[0].id.clone();
    sim.crash(&t);
    for _ in 0..100 {
        sim.step();
    }
    assert!(
        sim.running(&svc).is_empty(),
        "max_attempts 2 reached: no third restart"
    );
}

#[test]
fn a_paused_node_keeps_its_global_task_but_gets_no_new_one() {
    let mut sim = Sim::new(&["n1", "n2"]);
    let agent = sim.create("agent", ServiceMode::Global, "bb");
    sim.run_until("2", |s| s.running(&agent).len() == 2);
    let mut n2 = sim.state.nodes["n2"].clone();
    n2.availability = Availability::Pause;
    sim.state.apply(&Command::UpsertNode(n2)).unwrap();
    for _ in 0..20 {
        sim.step();
    }
    assert_eq!(
        sim.running(&agent).len(),
        2,
        "pause keeps existing global tasks"
    );
    let late = sim.create("late", ServiceMode::Global, "bb");
    for _ in 0..20 {
        sim.step();
    }
    let nodes: Vec<_> = sim
        .running(&late)
        .iter()
        .map(|t| t.node_id.clone().unwrap())
        .collect();
    assert_eq!(nodes, vec!["n1"], "no new task on a paused node");
}

#[test]
fn history_limit_zero_still_remembers_a_finished_job() {
    let mut sim = Sim::new(&["n1"]);
    sim.state.settings.task_history_limit = 0;
    let job = sim.create("job", ServiceMode::Replicated { replicas: 1 }, "bb");
    sim.update(&job, |s| s.restart.condition = RestartCondition::None);
    sim.run_until("1", |s| s.converged(&job, 1));
    let t = sim.running(&job)[0].id.clone();
    sim.report(&t, "n1", TaskState::Complete);
    for _ in 0..50 {
        sim.step();
    }
    assert_eq!(
        sim.state.tasks_of(&job).count(),
        1,
        "the finished task is kept"
    );
    assert!(
        sim.running(&job).is_empty(),
        "a finished job with restart none never runs again"
    );
}

#[test]
fn failure_within_monitor_after_the_last_slot_rolls_back_with_the_old_digest() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 1 }, "v1");
    sim.state
        .apply(&Command::UpdateService {
            id: svc.clone(),
            spec: sim.state.services[&svc].spec.clone(),
            image_digest: Some("sha256:one".into()),
            now: sim.now,
            if_revision: None,
        })
        .unwrap();
    sim.run_until("1", |s| s.converged(&svc, 1));
    let mut spec = sim.state.services[&svc].spec.clone();
    spec.task.image = "v2".into();
    spec.update.failure_action = FailureAction::Rollback;
    spec.update.monitor = 5_000;
    sim.state
        .apply(&Command::UpdateService {
            id: svc.clone(),
            spec,
            image_digest: Some("sha256:two".into()),
            now: sim.now,
            if_revision: None,
        })
        .unwrap();
    sim.run_until("v2 running", |s| {
        s.running(&svc).iter().any(|t| t.spec.image == "v2")
    });
    // The update is not complete while the new task is under watch.
    for _ in 0..10 {
        sim.step();
    }
    assert_eq!(
        sim.state.services[&svc]
            .update_status
            .as_ref()
            .unwrap()
            .state,
        UpdateState::Updating
    );
    // It crashes 1s after starting: within monitor, after the last slot.
    let t = sim.running(&svc)[0].id.clone();
    sim.crash(&t);
    sim.run_until("rolled back", |s| {
        s.state.services[&svc]
            .update_status
            .as_ref()
            .is_some_and(|u| u.state == UpdateState::RollbackCompleted)
    });
    let s = &sim.state.services[&svc];
    assert_eq!(s.spec.task.image, "v1");
    assert_eq!(
        s.image_digest.as_deref(),
        Some("sha256:one"),
        "rollback restores the old image digest"
    );
    assert!(sim.converged(&svc, 1));
    assert_eq!(
        sim.running(&svc)[0].image_digest.as_deref(),
        Some("sha256:one")
    );
}

/// A rollback planned from a state older than a user's update must not undo that update: the
/// updater's commands carry the revision they were planned from.
#[test]
fn a_rollback_planned_before_a_user_update_is_refused() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 1 }, "v1");
    sim.run_until("1", |s| s.converged(&svc, 1));
    sim.update(&svc, |s| {
        s.task.image = "bad".into();
        s.update.failure_action = FailureAction::Rollback;
    });
    // Step until the next pass would start the rollback, without applying it.
    let stale = loop {
        let plan = reconcile(&sim.state, sim.now, &mut sim.ids);
        let rolls_back = plan
            .commands
            .iter()
            .any(|c| matches!(c, Command::UpdateService { spec, .. } if spec.task.image == "v1"));
        if rolls_back {
            break plan;
        }
        for c in &plan.commands {
            sim.state.apply(c).expect("planned commands apply");
        }
        sim.agent();
        sim.now += STEP;
        assert!(sim.now < 1_000_000 + 300 * STEP, "no rollback was planned");
    };
    // Meanwhile the user fixes the image.
    sim.update(&svc, |s| s.task.image = "v3".into());
    // Only the rollback's own commands: other commands of that pass (new tasks of the old
    // version) are refused by their own preconditions.
    let rollback: Vec<Command> = stale
        .commands
        .into_iter()
        .filter(|c| {
            matches!(
                c,
                Command::UpdateService { .. } | Command::SetUpdateStatus { .. }
            )
        })
        .collect();
    assert_eq!(rollback.len(), 2, "{rollback:?}");
    for c in rollback {
        let refused = sim.state.apply(&c);
        assert!(
            matches!(refused, Err(ApplyError::Precondition(_))),
            "{c:?}: {refused:?}"
        );
    }
    assert_eq!(sim.state.services[&svc].spec.task.image, "v3");
    sim.run_until("v3 converges", |s| {
        s.converged(&svc, 1) && s.running(&svc)[0].spec.image == "v3"
    });
    let st = sim.state.services[&svc].update_status.clone().unwrap();
    assert_eq!(st.state, UpdateState::Completed, "{st:?}");
}

fn overlay(sim: &mut Sim, id: &str, subnet: &str) {
    sim.state
        .apply(&Command::CreateNetwork(Network {
            id: id.into(),
            name: id.into(),
            driver: NetworkDriver::Overlay,
            subnet: subnet.parse().unwrap(),
            vni: 4096 + sim.state.networks.len() as u32,
            attachable: false,
            ingress: false,
            stack: None,
            labels: BTreeMap::new(),
            created_at: sim.now,
        }))
        .unwrap();
}

/// Addresses of a service's runnable tasks on `net`.
fn task_addrs(sim: &Sim, svc: &str, net: &str) -> Vec<std::net::Ipv4Addr> {
    sim.state
        .tasks_of(svc)
        .filter(|t| t.is_runnable())
        .flat_map(|t| {
            t.networks
                .iter()
                .filter(|a| a.network == net)
                .map(|a| a.addr)
        })
        .collect()
}

#[test]
fn a_service_on_a_network_gets_a_vip_and_every_task_its_own_address() {
    let mut sim = Sim::new(&["n1", "n2"]);
    overlay(&mut sim, "backend", "10.0.5.0/24");
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 3 }, "v1");
    sim.update(&svc, |s| s.networks = vec!["backend".into()]);
    sim.run_until("3 on the network", |s| {
        s.converged(&svc, 3) && task_addrs(s, &svc, "backend").len() == 3
    });
    let vips = sim.state.services[&svc].vips.clone();
    assert_eq!(vips.len(), 1);
    // A DNS round-robin service holds no VIP (and gives back the one it had).
    let rr = sim.create("rr", ServiceMode::Replicated { replicas: 1 }, "v1");
    sim.update(&rr, |s| {
        s.networks = vec!["backend".into()];
        s.endpoint_mode = model::EndpointMode::Dnsrr;
    });
    sim.run_until("rr on the network", |s| {
        task_addrs(s, &rr, "backend").len() == 1
    });
    assert!(sim.state.services[&rr].vips.is_empty());
    let vip = vips[0].addr;
    let mut addrs = task_addrs(&sim, &svc, "backend");
    addrs.push(vip);
    let distinct: std::collections::BTreeSet<_> = addrs.iter().collect();
    assert_eq!(distinct.len(), 4, "{addrs:?}");
    let subnet: Ipv4Subnet = "10.0.5.0/24".parse().unwrap();
    assert!(
        addrs
            .iter()
            .all(|a| subnet.contains(*a) && *a != subnet.gateway())
    );

    // A crashed task's address is free again once it is terminal; the replacement gets one.
    let t = sim.running(&svc)[0].id.clone();
    sim.crash(&t);
    sim.run_until("replaced", |s| s.converged(&svc, 3));
    let after = task_addrs(&sim, &svc, "backend");
    assert_eq!(after.len(), 3);
    assert!(!after.contains(&vip));

    // Leaving the network releases the VIP, and the tasks made after carry no address.
    sim.update(&svc, |s| {
        s.networks.clear();
        s.task.image = "v2".into();
    });
    sim.run_until("off the network", |s| {
        s.converged(&svc, 3)
            && s.state.services[&svc].vips.is_empty()
            && task_addrs(s, &svc, "backend").is_empty()
    });
    assert_eq!(sim.state.address_owner("backend", vip), None);
}

#[test]
fn a_full_network_holds_back_new_tasks_and_never_shares_an_address() {
    let mut sim = Sim::new(&["n1"]);
    // A /29: .2 to .6 for the VIP and tasks, so 4 tasks at most.
    overlay(&mut sim, "tiny", "10.0.9.0/29");
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 1 }, "v1");
    sim.update(&svc, |s| {
        s.networks = vec!["tiny".into()];
        s.mode = ServiceMode::Replicated { replicas: 6 };
    });
    for _ in 0..100 {
        sim.step();
    }
    let addrs = task_addrs(&sim, &svc, "tiny");
    let distinct: std::collections::BTreeSet<_> = addrs.iter().collect();
    assert_eq!(addrs.len(), 4, "{addrs:?}");
    assert_eq!(distinct.len(), 4);
    assert_eq!(sim.running(&svc).len(), 4, "two slots wait for addresses");
    // Scaling down frees addresses; the service settles at what fits.
    sim.update(&svc, |s| s.mode = ServiceMode::Replicated { replicas: 2 });
    sim.run_until("2", |s| s.converged(&svc, 2));
    assert_eq!(task_addrs(&sim, &svc, "tiny").len(), 2);
}
