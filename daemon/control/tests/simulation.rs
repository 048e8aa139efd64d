//! Deterministic simulation of the control plane: fake nodes and agents, virtual time, a seeded
//! RNG choosing operations and faults (task crashes, node drain, node death and return), with
//! invariants checked after every step. A failure prints the seed; rerun one seed with
//! `SIM_SEED=<seed> cargo test -p control --test simulation`.

use std::collections::{BTreeMap, BTreeSet};

use control::{SeqIds, reconcile};
use model::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct World {
    state: ClusterState,
    now: Millis,
    ids: SeqIds,
    rng: StdRng,
    /// Nodes whose agent is dead (crashed host): they report nothing.
    dead: BTreeSet<Id>,
    /// Highest observed state seen per task, to check monotonicity.
    seen: BTreeMap<Id, TaskState>,
    services: u32,
    log: Vec<String>,
}

const STEP: Millis = 100;

impl World {
    fn new(seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = rng.random_range(1..=5);
        let mut state = ClusterState::default();
        state.settings.task_history_limit = 2;
        for i in 0..nodes {
            state
                .apply(&Command::UpsertNode(Node {
                    id: format!("n{i}"),
                    raft_id: i + 1,
                    name: format!("n{i}"),
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
        World {
            state,
            now: 1_000_000,
            ids: SeqIds::new("t"),
            rng,
            dead: BTreeSet::new(),
            seen: BTreeMap::new(),
            services: 0,
            log: Vec::new(),
        }
    }

    fn random_op(&mut self) {
        let svc_ids: Vec<Id> = self.state.services.keys().cloned().collect();
        let node_ids: Vec<Id> = self.state.nodes.keys().cloned().collect();
        match self.rng.random_range(0..100) {
            0..=4 if self.services < 6 => {
                self.services += 1;
                let name = format!("s{}", self.services);
                let mode = if self.rng.random_bool(0.2) {
                    ServiceMode::Global
                } else {
                    ServiceMode::Replicated {
                        replicas: self.rng.random_range(0..8),
                    }
                };
                let mut spec = ServiceSpec {
                    name: name.clone(),
                    mode,
                    ..Default::default()
                };
                spec.task.image = "good".into();
                spec.restart.delay = 200;
                spec.restart.max_delay = 2_000;
                spec.update.order = if self.rng.random_bool(0.5) {
                    UpdateOrder::StartFirst
                } else {
                    UpdateOrder::StopFirst
                };
                spec.update.parallelism = self.rng.random_range(0..3);
                spec.update.failure_action = match self.rng.random_range(0..3) {
                    0 => FailureAction::Pause,
                    1 => FailureAction::Continue,
                    _ => FailureAction::Rollback,
                };
                self.log.push(format!("create {name} {mode:?}"));
                let _ = self.state.apply(&Command::CreateService(Service::new(
                    format!("id-{name}"),
                    spec,
                    None,
                    self.now,
                )));
            }
            5..=9 if !svc_ids.is_empty() => {
                let id = &svc_ids[self.rng.random_range(0..svc_ids.len())];
                let mut spec = self.state.services[id].spec.clone();
                if let ServiceMode::Replicated { .. } = spec.mode {
                    spec.mode = ServiceMode::Replicated {
                        replicas: self.rng.random_range(0..8),
                    };
                }
                self.log.push(format!("scale {id} {:?}", spec.mode));
                self.update(id, spec);
            }
            10..=13 if !svc_ids.is_empty() => {
                let id = &svc_ids[self.rng.random_range(0..svc_ids.len())];
                let mut spec = self.state.services[id].spec.clone();
                spec.task.image = if self.rng.random_bool(0.3) {
                    "bad".into()
                } else {
                    format!("v{}", self.now)
                };
                self.log.push(format!("update {id} {}", spec.task.image));
                self.update(id, spec);
            }
            14 if !svc_ids.is_empty() => {
                let id = svc_ids[self.rng.random_range(0..svc_ids.len())].clone();
                self.log.push(format!("remove {id}"));
                self.state.apply(&Command::RemoveService { id }).unwrap();
            }
            15..=24 => {
                let running: Vec<Id> = self
                    .state
                    .tasks
                    .values()
                    .filter(|t| t.status.state == TaskState::Running)
                    .filter(|t| t.node_id.as_ref().is_some_and(|n| !self.dead.contains(n)))
                    .map(|t| t.id.clone())
                    .collect();
                if !running.is_empty() {
                    let id = running[self.rng.random_range(0..running.len())].clone();
                    self.log.push(format!("crash {id}"));
                    self.report(&id, TaskState::Failed);
                }
            }
            25..=26 => {
                let n = &node_ids[self.rng.random_range(0..node_ids.len())];
                let mut node = self.state.nodes[n].clone();
                node.availability = if node.availability == Availability::Active {
                    Availability::Drain
                } else {
                    Availability::Active
                };
                self.log
                    .push(format!("availability {n} {:?}", node.availability));
                self.state.apply(&Command::UpsertNode(node)).unwrap();
            }
            27 => {
                let n = node_ids[self.rng.random_range(0..node_ids.len())].clone();
                let mut node = self.state.nodes[&n].clone();
                if self.dead.remove(&n) {
                    node.status = NodeStatus::Ready;
                    self.log.push(format!("node {n} back"));
                } else {
                    self.dead.insert(n.clone());
                    node.status = NodeStatus::Down;
                    self.log.push(format!("node {n} dies"));
                }
                self.state.apply(&Command::UpsertNode(node)).unwrap();
            }
            _ => {}
        }
    }

    fn update(&mut self, id: &str, spec: ServiceSpec) {
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

    fn report(&mut self, id: &str, state: TaskState) {
        let node = self.state.tasks[id].node_id.clone().unwrap();
        let status = TaskStatus {
            state,
            timestamp: self.now,
            ..Default::default()
        };
        self.state
            .apply(&Command::UpdateTaskStatus {
                task_id: id.into(),
                node_id: node,
                status,
            })
            .unwrap();
    }

    fn agents(&mut self) {
        let tasks: Vec<Task> = self.state.tasks.values().cloned().collect();
        for t in tasks {
            let Some(node) = &t.node_id else { continue };
            if self.dead.contains(node) || t.status.state.is_terminal() {
                continue;
            }
            let next = if t.desired >= TaskState::Shutdown {
                Some(TaskState::Shutdown)
            } else if t.status.state == TaskState::Running {
                (t.spec.image == "bad").then_some(TaskState::Failed)
            } else if t.desired == TaskState::Running
                && t.not_before.is_none_or(|nb| self.now >= nb)
            {
                Some(TaskState::Running)
            } else if t.status.state < TaskState::Ready {
                Some(TaskState::Ready)
            } else {
                None
            };
            if let Some(s) = next {
                self.report(&t.id, s);
            }
        }
    }

    fn step(&mut self) {
        let plan = reconcile(&self.state, self.now, &mut self.ids);
        if let Some(w) = plan.wake_at {
            assert!(w > self.now, "wake_at must be in the future");
        }
        let before = self.state.clone();
        let batch = Command::Batch(plan.commands.clone());
        self.state
            .apply(&batch)
            .expect("a planned batch always applies");
        // Managers never write observed state past ASSIGNED.
        for (id, t) in &self.state.tasks {
            if let Some(old) = before.tasks.get(id)
                && old.status != t.status
            {
                assert!(
                    t.status.state <= TaskState::Assigned,
                    "manager wrote observed state of {id}"
                );
            }
        }
        self.agents();
        self.check();
        self.now += STEP;
    }

    fn check(&mut self) {
        for (id, t) in &self.state.tasks {
            let prev = self.seen.insert(id.clone(), t.status.state);
            if let Some(p) = prev {
                assert!(
                    t.status.state >= p,
                    "task {id} went back from {p} to {}",
                    t.status.state
                );
            }
            if t.status.state >= TaskState::Accepted {
                assert!(t.node_id.is_some());
            }
            assert!(
                self.state.services.contains_key(&t.service_id) || t.desired == TaskState::Remove
            );
        }
        // A replicated slot has at most two runnable tasks (old and new during a start-first update).
        let mut per_slot: BTreeMap<(Id, u64), u32> = BTreeMap::new();
        for t in self
            .state
            .tasks
            .values()
            .filter(|t| t.is_runnable() && t.slot > 0)
        {
            *per_slot.entry((t.service_id.clone(), t.slot)).or_default() += 1;
        }
        for ((svc, slot), n) in per_slot {
            assert!(n <= 2, "{svc} slot {slot} has {n} runnable tasks");
        }
    }

    /// After the faults stop: heal every node, give every service a good image, then every
    /// service must converge.
    fn heal_and_converge(&mut self) {
        for n in std::mem::take(&mut self.dead) {
            let mut node = self.state.nodes[&n].clone();
            node.status = NodeStatus::Ready;
            self.state.apply(&Command::UpsertNode(node)).unwrap();
        }
        let ids: Vec<Id> = self.state.services.keys().cloned().collect();
        for id in &ids {
            let mut spec = self.state.services[id].spec.clone();
            spec.task.image = "final".into();
            self.update(id, spec);
        }
        for _ in 0..3000 {
            self.step();
            if self.converged() {
                return;
            }
        }
        panic!(
            "did not converge; services: {:#?}",
            self.state
                .services
                .values()
                .map(|s| (&s.spec.name, &s.update_status))
                .collect::<Vec<_>>()
        );
    }

    fn converged(&self) -> bool {
        let eligible = self
            .state
            .nodes
            .values()
            .filter(|n| n.is_eligible())
            .count() as u64;
        self.state.services.values().all(|s| {
            let want = match s.spec.mode {
                ServiceMode::Replicated { replicas } => {
                    if eligible == 0 {
                        0
                    } else {
                        replicas
                    }
                }
                ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob => {
                    unreachable!("the simulation makes no jobs")
                }
                ServiceMode::Global => eligible,
            };
            let running: Vec<&Task> = self
                .state
                .tasks_of(&s.id)
                .filter(|t| t.status.state == TaskState::Running && t.desired == TaskState::Running)
                .collect();
            let runnable = self
                .state
                .tasks_of(&s.id)
                .filter(|t| t.is_runnable())
                .count() as u64;
            running.len() as u64 == want
                && runnable == want
                && running.iter().all(|t| t.spec.image == "final")
                && running
                    .iter()
                    .all(|t| self.state.nodes[t.node_id.as_ref().unwrap()].is_eligible())
        }) && self
            .state
            .tasks
            .values()
            .all(|t| t.desired != TaskState::Remove)
    }
}

fn run_seed(seed: u64) {
    let mut w = World::new(seed);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in 0..1500 {
            w.random_op();
            w.step();
        }
        w.heal_and_converge();
    }));
    if let Err(e) = result {
        eprintln!("simulation failed with seed {seed} (rerun: SIM_SEED={seed}); last operations:");
        for line in w.log.iter().rev().take(15).rev() {
            eprintln!("  {line}");
        }
        std::panic::resume_unwind(e);
    }
}

#[test]
fn random_operations_and_faults_keep_invariants_and_converge() {
    if let Ok(seed) = std::env::var("SIM_SEED").or_else(|_| std::env::var("SHOAL_SIM_SEED")) {
        run_seed(seed.parse().expect("SIM_SEED is a number"));
        return;
    }
    for seed in 0..40 {
        run_seed(seed);
    }
}
