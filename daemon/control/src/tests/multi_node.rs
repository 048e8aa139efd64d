//! Multi-node behaviour: liveness, node failure, drain, pause, removal, placement, stale plans.

use std::collections::BTreeMap;

use model::*;

use super::Sim;
use crate::{SeqIds, liveness, reconcile, reconcile_in_place};

fn status(sim: &mut Sim, node: &str, s: NodeStatus) {
    sim.state
        .apply(&Command::UpdateNodeStatus {
            id: node.into(),
            status: Some(s),
            addr: None,
            version: None,
            message: None,
            resources: None,
        })
        .unwrap();
}

fn availability(sim: &mut Sim, node: &str, a: Availability) {
    sim.state
        .apply(&Command::UpdateNodeSpec {
            id: node.into(),
            availability: Some(a),
            labels: None,
            role: None,
        })
        .unwrap();
}

fn labels(sim: &mut Sim, node: &str, kv: &[(&str, &str)]) {
    sim.state
        .apply(&Command::UpdateNodeSpec {
            id: node.into(),
            availability: None,
            labels: Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            role: None,
        })
        .unwrap();
}

fn on_node<'a>(sim: &'a Sim, svc: &'a str, node: &str) -> Vec<&'a Task> {
    sim.running(svc)
        .into_iter()
        .filter(|t| t.node_id.as_deref() == Some(node))
        .collect()
}

fn constraint(label: &str, op: ConstraintOp, values: &[&str]) -> Constraint {
    Constraint {
        key: ConstraintKey::NodeLabel(label.into()),
        op,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

fn pending_errors(sim: &Sim, svc: &str) -> Vec<String> {
    sim.state
        .tasks_of(svc)
        .filter(|t| t.is_runnable() && t.node_id.is_none())
        .map(|t| t.status.err.clone().unwrap_or_default())
        .collect()
}

#[test]
fn liveness_marks_silent_nodes_down_and_heard_nodes_ready() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    let period = 1_000;
    let watch_since = 10_000;
    let mut seen = BTreeMap::new();
    seen.insert("n1".to_string(), 12_000);
    // Within the grace after the leader started watching: nothing, even for unheard nodes.
    assert!(liveness(&sim.state, &seen, watch_since, period, 13_000).is_empty());
    let cmds = liveness(&sim.state, &seen, watch_since, period, 13_001);
    let down: Vec<_> = cmds
        .iter()
        .map(|c| match c {
            Command::UpdateNodeStatus {
                id,
                status: Some(NodeStatus::Down),
                message: Some(m),
                ..
            } => {
                assert_eq!(m, "heartbeat failure");
                id.as_str()
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(down, vec!["n2", "n3"]);
    for c in &cmds {
        sim.state.apply(c).unwrap();
    }
    assert!(liveness(&sim.state, &seen, watch_since, period, 13_001).is_empty());
    // n1 goes silent too; n2 comes back.
    seen.insert("n2".to_string(), 15_500);
    let cmds = liveness(&sim.state, &seen, watch_since, period, 16_000);
    assert_eq!(cmds.len(), 2);
    for c in &cmds {
        sim.state.apply(c).unwrap();
    }
    assert_eq!(sim.state.nodes["n1"].status, NodeStatus::Down);
    assert_eq!(sim.state.nodes["n2"].status, NodeStatus::Ready);
    assert_eq!(sim.state.nodes["n2"].status_message, "");
    // A new leader that starts watching now gives every ready node a full grace period.
    let fresh = BTreeMap::new();
    assert!(liveness(&sim.state, &fresh, 16_000, period, 19_000).is_empty());
}

#[test]
fn a_down_nodes_tasks_are_replaced_and_stopped_when_it_returns() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 6 }, "bb");
    sim.run_until("6", |s| s.converged(&svc, 6));
    let lost: Vec<Id> = on_node(&sim, &svc, "n1")
        .iter()
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(lost.len(), 2);
    // n1 is cut off: its tasks keep running there, but the leader marks it down.
    sim.silent.insert("n1".into());
    status(&mut sim, "n1", NodeStatus::Down);
    sim.step();
    for id in &lost {
        let t = &sim.state.tasks[id];
        assert_eq!(t.desired, TaskState::Shutdown);
        assert_eq!(t.status.state, TaskState::Running, "nobody heard otherwise");
        let slot = t.slot_key();
        let replacement = sim
            .state
            .tasks_in_slot(&svc, &slot)
            .find(|r| r.is_runnable())
            .expect("replaced at once");
        assert_eq!(replacement.not_before, None, "no backoff for a lost node");
    }
    sim.run_until("replaced", |s| s.converged(&svc, 6));
    assert!(on_node(&sim, &svc, "n1").is_empty());
    // n1 rejoins: its old tasks are stopped, nothing moves back.
    sim.silent.remove("n1");
    status(&mut sim, "n1", NodeStatus::Ready);
    sim.step();
    for id in &lost {
        assert_eq!(sim.state.tasks[id].status.state, TaskState::Shutdown);
    }
    assert!(sim.converged(&svc, 6));
    assert!(on_node(&sim, &svc, "n1").is_empty(), "no rebalancing");
}

#[test]
fn global_tasks_on_a_down_node_are_not_moved() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    let svc = sim.create("agent", ServiceMode::Global, "bb");
    sim.run_until("3", |s| s.running(&svc).len() == 3);
    sim.silent.insert("n2".into());
    status(&mut sim, "n2", NodeStatus::Down);
    for _ in 0..10 {
        sim.step();
    }
    assert_eq!(sim.running(&svc).len(), 2);
    assert_eq!(
        sim.state.tasks_of(&svc).filter(|t| t.is_runnable()).count(),
        2
    );
    sim.silent.remove("n2");
    status(&mut sim, "n2", NodeStatus::Ready);
    sim.run_until("back", |s| s.running(&svc).len() == 3);
}

#[test]
fn drain_replaces_at_once_and_stops_global_tasks_pause_keeps_them() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    let web = sim.create("web", ServiceMode::Replicated { replicas: 3 }, "bb");
    let agent = sim.create("agent", ServiceMode::Global, "bb");
    sim.update(&web, |s| s.restart.delay = 60_000);
    sim.run_until("up", |s| {
        s.converged(&web, 3) && s.running(&agent).len() == 3
    });
    availability(&mut sim, "n1", Availability::Drain);
    sim.step();
    let runnable: Vec<&Task> = sim
        .state
        .tasks_of(&web)
        .filter(|t| t.is_runnable())
        .collect();
    assert_eq!(runnable.len(), 3);
    assert!(runnable.iter().all(|t| t.node_id.as_deref() != Some("n1")));
    assert!(runnable.iter().all(|t| t.not_before.is_none()));
    sim.run_until("drained", |s| {
        s.converged(&web, 3) && s.running(&agent).len() == 2
    });
    assert!(on_node(&sim, &agent, "n1").is_empty());

    // Pause: everything keeps running, nothing new lands there.
    availability(&mut sim, "n1", Availability::Active);
    sim.run_until("agent back", |s| s.running(&agent).len() == 3);
    availability(&mut sim, "n2", Availability::Pause);
    let before = on_node(&sim, &web, "n2").len() + on_node(&sim, &agent, "n2").len();
    sim.update(&web, |s| s.mode = ServiceMode::Replicated { replicas: 8 });
    sim.run_until("scaled", |s| s.converged(&web, 8));
    assert_eq!(
        on_node(&sim, &web, "n2").len() + on_node(&sim, &agent, "n2").len(),
        before
    );
}

#[test]
fn a_removed_nodes_tasks_are_replaced() {
    let mut sim = Sim::new(&["n1", "n2"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 2 }, "bb");
    sim.run_until("2", |s| s.converged(&svc, 2));
    sim.state
        .apply(&Command::RemoveNode { id: "n1".into() })
        .unwrap();
    sim.run_until("replaced", |s| s.converged(&svc, 2));
    assert_eq!(on_node(&sim, &svc, "n2").len(), 2);
}

#[test]
fn constraints_spread_and_max_per_node() {
    let mut sim = Sim::new(&["a1", "b1", "b2", "c1"]);
    labels(&mut sim, "a1", &[("zone", "a")]);
    labels(&mut sim, "b1", &[("zone", "b")]);
    labels(&mut sim, "b2", &[("zone", "b")]);
    labels(&mut sim, "c1", &[("zone", "c")]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 6 }, "bb");
    sim.update(&svc, |s| {
        s.placement.constraints = vec![constraint("zone", ConstraintOp::In, &["a", "b"])];
        s.placement.preferences = vec![PlacementPreference::Spread {
            label: "zone".into(),
        }];
    });
    sim.run_until("6", |s| s.converged(&svc, 6));
    let count = |n: &str| on_node(&sim, &svc, n).len();
    // Spread over zones first (3 in a, 3 in b), then over nodes within b; c fails the constraint.
    assert_eq!(
        [count("a1"), count("b1"), count("b2"), count("c1")],
        [3, 2, 1, 0]
    );

    // At most one per node: three nodes are allowed (a1, b1, b2), so three tasks run and three
    // stay pending with Swarm's explanation.
    let svc = sim.create("capped", ServiceMode::Replicated { replicas: 6 }, "bb");
    sim.update(&svc, |s| {
        s.placement.constraints = vec![constraint("zone", ConstraintOp::Ne, &["c"])];
        s.placement.max_replicas_per_node = Some(1);
    });
    sim.run_until("capped", |s| {
        s.running(&svc).len() == 3 && pending_errors(s, &svc).len() == 3
    });
    for t in sim.running(&svc) {
        assert_ne!(t.node_id.as_deref(), Some("c1"));
    }
    assert!(
        pending_errors(&sim, &svc)
            .iter()
            .all(|e| e == "no suitable node (scheduling constraints not satisfied on 1 node; max replicas per node limit exceed)"),
        "{:?}",
        pending_errors(&sim, &svc)
    );
    // A state with tasks that fit nowhere still plans nothing once the reason is recorded.
    let plan = reconcile(&sim.state, sim.now, &mut SeqIds::new("x"));
    assert!(plan.commands.is_empty(), "{:?}", plan.commands);
}

#[test]
fn unplaceable_tasks_say_why() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 1 }, "bb");
    sim.update(&svc, |s| {
        s.placement.constraints = vec![constraint("gpu", ConstraintOp::Eq, &["yes"])];
    });
    sim.step();
    assert_eq!(
        pending_errors(&sim, &svc),
        vec!["no suitable node (scheduling constraints not satisfied on 3 nodes)"]
    );
    for n in ["n1", "n2", "n3"] {
        availability(&mut sim, n, Availability::Pause);
    }
    sim.step();
    assert_eq!(
        pending_errors(&sim, &svc),
        vec!["no suitable node (3 nodes not available for new tasks)"]
    );
    // A label change makes a node fit: the task is placed and the error goes.
    availability(&mut sim, "n2", Availability::Active);
    labels(&mut sim, "n2", &[("gpu", "yes")]);
    sim.run_until("placed", |s| s.converged(&svc, 1));
    let t = sim.running(&svc)[0];
    assert_eq!(t.node_id.as_deref(), Some("n2"));
    assert_eq!(t.status.err, None);
    // The label goes away: the task no longer fits its node; it is stopped and its
    // replacement waits for a node that fits.
    let placed = t.id.clone();
    labels(&mut sim, "n2", &[]);
    sim.step();
    assert_eq!(sim.state.tasks[&placed].desired, TaskState::Shutdown);
    assert_eq!(
        pending_errors(&sim, &svc),
        vec![
            "no suitable node (2 nodes not available for new tasks; scheduling constraints not satisfied on 1 node)"
        ]
    );
}

#[test]
fn a_plan_made_before_a_service_change_is_refused_whole() {
    let mut sim = Sim::new(&["n1", "n2"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 2 }, "bb");
    let stale = reconcile(&sim.state, sim.now, &mut SeqIds::new("old"));
    assert!(!stale.commands.is_empty());
    // The service is removed before the plan is proposed (the orphan task race).
    sim.state
        .apply(&Command::RemoveService { id: svc.clone() })
        .unwrap();
    let before = sim.state.clone();
    let err = sim
        .state
        .apply(&Command::Batch(stale.commands.clone()))
        .unwrap_err();
    assert!(matches!(err, ApplyError::Precondition(_)), "{err}");
    assert_eq!(sim.state, before);

    // Same with an update in between: the plan's tasks are of the old version.
    let svc = sim.create("api", ServiceMode::Replicated { replicas: 2 }, "bb");
    let stale = reconcile(&sim.state, sim.now, &mut SeqIds::new("old2"));
    sim.update(&svc, |s| s.task.image = "bb:2".into());
    assert!(sim.state.apply(&Command::Batch(stale.commands)).is_err());
    // And when another leader already filled the slots.
    let a = reconcile(&sim.state, sim.now, &mut SeqIds::new("a"));
    let b = reconcile(&sim.state, sim.now, &mut SeqIds::new("b"));
    sim.state.apply(&Command::Batch(a.commands)).unwrap();
    assert!(sim.state.apply(&Command::Batch(b.commands)).is_err());
    sim.run_until("api", |s| s.converged(&svc, 2));
}

#[test]
fn planning_is_bounded_even_for_a_spec_committed_before_the_bound() {
    let mut sim = Sim::new(&[]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 1 }, "bb");
    // Written directly, as an old snapshot would hold it (apply refuses it today).
    sim.state.services.get_mut(&svc).unwrap().spec.mode = ServiceMode::Replicated {
        replicas: 30_000_000_000,
    };
    let plan = reconcile(&sim.state, sim.now, &mut SeqIds::new("t"));
    let created: usize = plan
        .commands
        .iter()
        .map(|c| match c {
            Command::PutTasks(t) => t.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(created as u64, MAX_REPLICAS);
}

#[test]
fn reconcile_in_place_plans_the_same_and_leaves_the_state_alone() {
    let mut sim = Sim::new(&["n1", "n2"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 3 }, "bb");
    sim.run_until("3", |s| s.converged(&svc, 3));
    sim.update(&svc, |s| s.task.image = "bb:2".into());
    sim.crash(&sim.running(&svc)[0].id.clone());
    let copy = reconcile(&sim.state, sim.now, &mut SeqIds::new("p"));
    let before = sim.state.clone();
    let mut state = sim.state.clone();
    let in_place = reconcile_in_place(&mut state, sim.now, &mut SeqIds::new("p"));
    assert_eq!(copy, in_place);
    assert!(!copy.commands.is_empty());
    assert_eq!(state, before);
    let mut rebuilt = state.clone();
    rebuilt.rebuild_index();
    assert_eq!(
        state.tasks_of(&svc).map(|t| &t.id).collect::<Vec<_>>(),
        rebuilt.tasks_of(&svc).map(|t| &t.id).collect::<Vec<_>>()
    );
    assert_eq!(
        state.unassigned_tasks().count(),
        rebuilt.unassigned_tasks().count()
    );
}

#[test]
fn fewest_tasks_overall_counts_earlier_passes_and_earlier_placements_of_the_same_pass() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    let a = sim.create("a", ServiceMode::Replicated { replicas: 2 }, "bb");
    sim.run_until("a", |s| s.converged(&a, 2));
    let a_nodes: Vec<_> = sim
        .running(&a)
        .iter()
        .filter_map(|t| t.node_id.clone())
        .collect();
    assert_eq!(a_nodes.len(), 2);
    assert!(!a_nodes.contains(&"n3".to_string()), "{a_nodes:?}");

    // Three services of one task each, planned in one pass (in service order b, c, d). Every
    // node has none of their tasks, so the load decides: n3 (empty) for b; then all three nodes
    // run one task and c goes to n1 by node id; then n1 runs two and d goes to n2.
    for name in ["b", "c", "d"] {
        sim.create(name, ServiceMode::Replicated { replicas: 1 }, "bb");
    }
    let plan = reconcile(&sim.state, sim.now, &mut SeqIds::new("p"));
    let mut service_of = BTreeMap::new();
    let mut placed = BTreeMap::new();
    for c in &plan.commands {
        match c {
            Command::PutTasks(tasks) => {
                for t in tasks {
                    service_of.insert(t.id.clone(), t.service_name.clone());
                }
            }
            Command::Assign { assignments, .. } => {
                for (t, n) in assignments {
                    placed.insert(service_of[t].clone(), n.clone());
                }
            }
            _ => {}
        }
    }
    let expect: BTreeMap<String, String> = [("b", "n3"), ("c", "n1"), ("d", "n2")]
        .iter()
        .map(|(s, n)| (s.to_string(), n.to_string()))
        .collect();
    assert_eq!(placed, expect);
}

fn resources(sim: &mut Sim, node: &str, cpus: u64, memory: u64) {
    sim.state
        .apply(&Command::UpdateNodeStatus {
            id: node.into(),
            status: None,
            addr: None,
            version: None,
            message: None,
            resources: Some(NodeResources {
                nano_cpus: cpus * 1_000_000_000,
                memory_bytes: memory,
            }),
        })
        .unwrap();
}

#[test]
fn reservations_fill_nodes_and_the_rest_wait_saying_why() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    resources(&mut sim, "n1", 2, 1 << 30);
    resources(&mut sim, "n2", 2, 1 << 30);
    // n3 has reported nothing: no room for anything that reserves.
    let svc = sim.create("db", ServiceMode::Replicated { replicas: 5 }, "bb");
    sim.update(&svc, |s| {
        s.task.reservations = Reservations {
            nano_cpus: Some(1_000_000_000),
            memory_bytes: Some(512 << 20),
        };
    });
    sim.run_until("four placed, one waiting", |s| {
        s.running(&svc).len() == 4 && pending_errors(s, &svc).len() == 1
    });
    assert_eq!(on_node(&sim, &svc, "n1").len(), 2);
    assert_eq!(on_node(&sim, &svc, "n2").len(), 2);
    assert_eq!(
        pending_errors(&sim, &svc),
        vec![
            "no suitable node (insufficient resources on 3 nodes: a task reserves 1 CPU and 512 MiB of memory, the most free on a node is 0 CPUs and 0 bytes of memory)"
        ]
    );
    // Converged apart from the waiting task: nothing more is planned.
    let plan = reconcile(&sim.state, sim.now, &mut SeqIds::new("x"));
    assert!(plan.commands.is_empty(), "{:?}", plan.commands);
    // A node with room appears: the last task goes there.
    resources(&mut sim, "n3", 4, 4 << 30);
    sim.run_until("all placed", |s| s.converged(&svc, 5));
    assert_eq!(on_node(&sim, &svc, "n3").len(), 1);

    // A reservation larger than any node waits with the reason, whatever else runs.
    let big = sim.create("big", ServiceMode::Replicated { replicas: 1 }, "bb");
    sim.update(&big, |s| {
        s.task.reservations.memory_bytes = Some(64 << 30);
    });
    sim.step();
    assert_eq!(
        pending_errors(&sim, &big),
        vec![
            "no suitable node (insufficient resources on 3 nodes: a task reserves 64 GiB of memory, the most free on a node is 3.5 GiB of memory)"
        ]
    );
    // Tasks without reservations are not affected.
    let free = sim.create("free", ServiceMode::Replicated { replicas: 3 }, "bb");
    sim.run_until("unreserved placed", |s| s.converged(&free, 3));
}

#[test]
fn the_ingress_network_gives_every_node_an_address_and_carries_the_mesh() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
        sim.state
            .apply(&Command::UpdateNodeStatus {
                id: n.to_string(),
                status: None,
                addr: Some(format!("192.168.5.{}:4600", i + 1)),
                version: None,
                message: None,
                resources: None,
            })
            .unwrap();
    }
    sim.step();
    let ingress = sim
        .state
        .ingress_network()
        .expect("an ingress network")
        .clone();
    assert_eq!(ingress.name, "ingress");
    let addr = |sim: &Sim, n: &str| sim.state.nodes[n].ingress_addr.expect("an ingress address");
    let all: std::collections::BTreeSet<_> =
        ["n1", "n2", "n3"].iter().map(|n| addr(&sim, n)).collect();
    assert_eq!(all.len(), 3, "distinct addresses: {all:?}");
    assert!(
        all.iter()
            .all(|a| ingress.subnet.contains(*a) && *a != ingress.gateway()),
        "{all:?} in {}",
        ingress.subnet
    );
    // Planning again changes nothing.
    assert!(
        reconcile(&sim.state, sim.now, &mut SeqIds::new("x"))
            .commands
            .is_empty()
    );

    // Each node carries the ingress network with its own address, reaching the others over VXLAN.
    let plan = sim.state.node_networks("n1");
    let ing = plan.networks.iter().find(|n| n.id == ingress.id).unwrap();
    assert_eq!(ing.host, Some(addr(&sim, "n1")));
    let peers: Vec<_> = ing
        .peers
        .iter()
        .map(|p| (p.addr, p.node_ip.to_string()))
        .collect();
    assert_eq!(
        peers,
        vec![
            (addr(&sim, "n2"), "192.168.5.2".to_string()),
            (addr(&sim, "n3"), "192.168.5.3".to_string())
        ]
    );

    // A port published by a service running on n2 only: n1 forwards it to n2's ingress address.
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 1 }, "img");
    sim.update(&svc, |s| {
        s.ports.push(PortSpec {
            published: 8080,
            target: 80,
            protocol: Protocol::Tcp,
            mode: PublishMode::Ingress,
            host_ip: None,
        });
        s.placement.constraints = vec![Constraint {
            key: ConstraintKey::NodeHostname,
            op: ConstraintOp::Eq,
            values: vec!["n2".into()],
        }];
    });
    sim.run_until("web runs", |s| s.converged("svc-web", 1));
    let ports = sim.state.node_ports("n1");
    assert_eq!(ports[0].remote, vec![addr(&sim, "n2")]);

    // A node that is down is no longer a peer; the network cannot be removed or attached to.
    status(&mut sim, "n3", NodeStatus::Down);
    let plan = sim.state.node_networks("n1");
    let ing = plan.networks.iter().find(|n| n.id == ingress.id).unwrap();
    assert_eq!(ing.peers.len(), 1);
    let err = sim
        .state
        .apply(&Command::RemoveNetwork {
            id: ingress.id.clone(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("ingress network"), "{err}");
    let mut spec = sim.state.services[&svc].spec.clone();
    spec.networks = vec!["ingress".into()];
    let err = sim
        .state
        .apply(&Command::UpdateService {
            id: svc.clone(),
            spec,
            image_digest: None,
            now: sim.now,
            if_revision: None,
        })
        .unwrap_err();
    assert!(err.to_string().contains("publish a port instead"), "{err}");
    // Another node's address is refused.
    let err = sim
        .state
        .apply(&Command::SetIngressAddress {
            node: "n1".into(),
            addr: addr(&sim, "n2"),
        })
        .unwrap_err();
    assert!(err.to_string().contains("node n2's"), "{err}");
}

#[test]
fn a_staged_task_never_takes_the_room_its_batch_needs() {
    let mut sim = Sim::new(&["n1"]);
    resources(&mut sim, "n1", 4, 4 << 30);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 3 }, "v1");
    sim.update(&svc, |s| {
        s.task.reservations.nano_cpus = Some(1_000_000_000);
    });
    sim.run_until("3", |s| s.converged(&svc, 3));
    // Room for one more task. The update's first pass makes the first batch's task (u9) and
    // stages the next (u10), which sorts first: the scheduler must still give the room to u9.
    sim.ids = SeqIds {
        prefix: "u".into(),
        next: 8,
    };
    sim.update(&svc, |s| {
        s.task.image = "v2".into();
        s.update.order = UpdateOrder::StartFirst;
        s.update.parallelism = 1;
    });
    sim.step();
    let batch = &sim.state.tasks["u9"];
    let staged = &sim.state.tasks["u10"];
    assert_eq!(batch.desired, TaskState::Running, "{batch:?}");
    assert_eq!(staged.desired, TaskState::Ready, "{staged:?}");
    assert!(staged.id < batch.id);
    assert!(batch.node_id.is_some(), "the batch's task got the room");
    sim.run_until("updated", |s| {
        s.converged(&svc, 3) && s.running(&svc).iter().all(|t| t.spec.image == "v2")
    });
}
