//! Placement throughput: 100,000 tasks over 1,000 nodes through `reconcile`.
//!
//! `cargo run -p control --release --example placement_bench [TASKS] [NODES]`
//!
//! Services of 1,000 replicas are created ten at a time (one 10k-task window); each window is
//! one reconcile pass (create + schedule) and the apply of its batch, as the leader does. Prints
//! placements per second per window, to show whether the rate stays flat as tasks accumulate,
//! and overall. Half the services carry a constraint and a spread preference.

use std::collections::BTreeMap;
use std::time::Instant;

use control::{SeqIds, reconcile_in_place};
use model::*;

fn main() {
    let mut args = std::env::args().skip(1);
    let tasks: u64 = args.next().map_or(100_000, |a| a.parse().expect("TASKS"));
    let nodes: u64 = args.next().map_or(1_000, |a| a.parse().expect("NODES"));
    let per_service = 1_000u64;
    let window = 10_000u64;

    let mut state = ClusterState::default();
    for i in 0..nodes {
        let mut labels = BTreeMap::new();
        labels.insert("zone".to_string(), format!("z{}", i % 5));
        state
            .apply(&Command::AddNode(Node {
                id: format!("node{i:05}"),
                raft_id: i + 1,
                name: format!("node{i:05}"),
                role: NodeRole::Worker,
                availability: Availability::Active,
                status: NodeStatus::Ready,
                labels,
                addr: String::new(),
                last_heartbeat: 0,
                version: String::new(),
                status_message: String::new(),
            }))
            .expect("add node");
    }
    let mut ids = SeqIds::new("t");
    let mut now: Millis = 1_000_000;
    let mut placed_total = 0u64;
    let mut services = 0u64;
    let started = Instant::now();
    println!("window      tasks  placed/s   (reconcile ms, apply ms)");
    while placed_total < tasks {
        let t0 = Instant::now();
        let mut created = 0;
        while created < window && placed_total + created < tasks {
            let mut spec = ServiceSpec {
                name: format!("s{services}"),
                mode: ServiceMode::Replicated {
                    replicas: per_service.min(tasks - placed_total - created),
                },
                ..Default::default()
            };
            spec.task.image = "bench".into();
            if services % 2 == 1 {
                spec.placement.constraints.push(Constraint {
                    key: ConstraintKey::NodeLabel("zone".into()),
                    op: ConstraintOp::Ne,
                    values: vec!["z0".into()],
                });
                spec.placement
                    .preferences
                    .push(PlacementPreference::Spread {
                        label: "zone".into(),
                    });
            }
            created += per_service.min(tasks - placed_total - created);
            state
                .apply(&Command::CreateService(Service {
                    id: format!("svc{services:05}"),
                    spec,
                    version: 1,
                    previous_spec: None,
                    previous_image_digest: None,
                    revision: 0,
                    image_digest: None,
                    update_status: None,
                    created_at: now,
                    updated_at: now,
                }))
                .expect("create service");
            services += 1;
        }
        let t1 = Instant::now();
        let plan = reconcile_in_place(&mut state, now, &mut ids);
        let t2 = Instant::now();
        state
            .apply(&Command::Batch(plan.commands.clone()))
            .expect("the plan applies");
        let t3 = Instant::now();
        let assigned: u64 = plan
            .commands
            .iter()
            .map(|c| match c {
                Command::Assign { assignments, .. } => assignments.len() as u64,
                _ => 0,
            })
            .sum();
        assert_eq!(assigned, created, "every task of the window is placed");
        placed_total += assigned;
        let secs = (t3 - t0).as_secs_f64();
        println!(
            "{:>6}  {:>9}  {:>8.0}   ({:.0}, {:.0})",
            placed_total / window,
            placed_total,
            assigned as f64 / secs,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2).as_secs_f64() * 1e3,
        );
        now += 100;
    }
    let total = started.elapsed().as_secs_f64();
    // A converged state plans nothing, and costs one read of the state to find out.
    let t = Instant::now();
    let plan = reconcile_in_place(&mut state, now, &mut ids);
    assert!(plan.commands.is_empty(), "a placed state plans nothing");
    println!(
        "overall: {placed_total} tasks on {nodes} nodes in {total:.2} s = {:.0} placements/s; an idle pass over them takes {:.0} ms",
        placed_total as f64 / total,
        t.elapsed().as_secs_f64() * 1e3
    );
    let per_node: Vec<usize> = state
        .nodes
        .keys()
        .map(|n| state.tasks_on(n).count())
        .collect();
    println!(
        "tasks per node: min {} max {}",
        per_node.iter().min().unwrap_or(&0),
        per_node.iter().max().unwrap_or(&0)
    );
}
