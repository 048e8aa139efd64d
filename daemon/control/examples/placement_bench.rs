//! Placement throughput: 100,000 tasks over 1,000 nodes through `reconcile`.
//!
//! `cargo run -p control --release --example placement_bench [TASKS] [NODES]`
//!
//! Services of 1,000 replicas are created ten at a time (one 10k-task window); each window is
//! one reconcile pass (create + schedule, planned in place through the undo log) and the apply
//! of its batch, as the leader does. Half the services carry a constraint and a spread
//! preference. Prints, per window, the placements per second (wall clock), the CPU time the
//! window took (so a busy machine shows as wall time well above CPU time), and how long a clone
//! of the state takes at that size (after the first and the last window): `shoald` clones the whole state twice per pass, once in
//! [`control::reconcile`] (it plans on a copy) and once when the store applies the batch (its
//! copy-on-write `Arc` is always shared with the watch channel). The last column counts those two
//! clones. Then the overall rate and a verdict on flatness, with and without the clones: "flat"
//! when the last window's rate is at least 0.8 times the first's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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
                resources: Default::default(),
                ingress_addr: None,
            }))
            .expect("add node");
    }
    let mut ids = SeqIds::new("t");
    let mut now: Millis = 1_000_000;
    let mut placed_total = 0u64;
    let mut services = 0u64;
    let mut windows: Vec<Window> = Vec::new();
    println!("load average at start: {}", load_average());
    println!(
        "window      tasks  placed/s   cpu ms  (reconcile ms, apply ms)   clone ms  placed/s with 2 clones"
    );
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
                .apply(&Command::CreateService(Service::new(
                    format!("svc{services:05}"),
                    spec,
                    None,
                    now,
                )))
                .expect("create service");
            services += 1;
        }
        let cpu0 = cpu_time();
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
        let cpu = cpu_time().saturating_sub(cpu0);
        let secs = (t3 - t0).as_secs_f64();
        // The daemon's path also clones the state, in `reconcile(&state)` and in the store's
        // apply. Timed apart, outside the window, and only after the first and the last window
        // (a clone and its drop disturb the heap the next window allocates from).
        let clone = (windows.is_empty() || placed_total >= tasks).then(|| {
            let c0 = Instant::now();
            let copy = state.clone();
            drop(copy);
            c0.elapsed().as_secs_f64()
        });
        let w = Window {
            placed: assigned as f64,
            secs,
            clone,
        };
        let (clone_ms, with_clones) = match (w.clone, w.rate_with_clones()) {
            (Some(c), Some(r)) => (format!("{:.0}", c * 1e3), format!("{r:.0}")),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "{:>6}  {:>9}  {:>8.0}  {:>7.0}  ({:.0}, {:.0})  {clone_ms:>9}  {with_clones:>8}",
            placed_total / window,
            placed_total,
            w.rate(),
            cpu.as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2).as_secs_f64() * 1e3,
        );
        windows.push(w);
        now += 100;
    }
    // Wall time of the windows (the clone measurements left out).
    let total: f64 = windows.iter().map(|w| w.secs).sum();
    // A converged state plans nothing, and costs one read of the state to find out.
    let t = Instant::now();
    let plan = reconcile_in_place(&mut state, now, &mut ids);
    assert!(plan.commands.is_empty(), "a placed state plans nothing");
    println!(
        "overall: {placed_total} tasks on {nodes} nodes in {total:.2} s = {:.0} placements/s; an idle pass over them takes {:.0} ms",
        placed_total as f64 / total,
        t.elapsed().as_secs_f64() * 1e3
    );
    if let (Some(first), Some(last)) = (windows.first(), windows.last()) {
        let verdict = |a: f64, b: f64| {
            let r = b / a;
            format!(
                "{a:.0} -> {b:.0} ({r:.2}x): {}",
                if r >= 0.8 { "flat" } else { "not flat" }
            )
        };
        println!(
            "first -> last window: {}",
            verdict(first.rate(), last.rate())
        );
        if let (Some(a), Some(b)) = (first.rate_with_clones(), last.rate_with_clones()) {
            println!(
                "with the daemon's two clones of the state per pass: {}",
                verdict(a, b)
            );
        }
    }
    println!("load average at end: {}", load_average());
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

struct Window {
    placed: f64,
    /// Wall time of the pass and the apply of its batch.
    secs: f64,
    /// Wall time of a clone of the state after the window (and its drop), where measured.
    clone: Option<f64>,
}

impl Window {
    fn rate(&self) -> f64 {
        self.placed / self.secs
    }

    /// Counting the two clones of the state the daemon makes per pass.
    fn rate_with_clones(&self) -> Option<f64> {
        Some(self.placed / (self.secs + 2.0 * self.clone?))
    }
}

/// CPU time this thread has used, from `/proc/thread-self/schedstat` (zero where unreadable).
fn cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
