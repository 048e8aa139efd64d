//! Proposal throughput on a real disk (every commit is fsync'd). Prints numbers; asserts only
//! that every proposal was applied. Run with `cargo test -p store --test throughput -- --nocapture`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::{Availability, Command, Node, NodeRole, NodeStatus};
use store::Store;

fn node(i: u64) -> Command {
    Command::UpsertNode(Node {
        id: format!("node-{i}"),
        raft_id: i,
        name: format!("n{i}"),
        role: NodeRole::Worker,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        labels: BTreeMap::new(),
        addr: "10.0.0.1:4600".into(),
        last_heartbeat: i,
        version: String::new(),
        status_message: String::new(),
        resources: Default::default(),
        ingress_addr: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_per_second() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::open(dir.path(), 1, "127.0.0.1:4600", 10_000)
            .await
            .unwrap(),
    );
    store.bootstrap_single().await.unwrap();

    const SEQUENTIAL: u64 = 300;
    let started = Instant::now();
    for i in 0..SEQUENTIAL {
        store.propose(node(i)).await.unwrap().unwrap();
    }
    let seq = started.elapsed();
    println!(
        "sequential: {SEQUENTIAL} proposals in {seq:?} = {:.0}/s ({:?} each)",
        SEQUENTIAL as f64 / seq.as_secs_f64(),
        seq / SEQUENTIAL as u32
    );

    // 100 concurrent proposers, 10 rounds.
    const CONCURRENT: u64 = 100;
    const ROUNDS: u64 = 10;
    let started = Instant::now();
    for round in 0..ROUNDS {
        let mut tasks = Vec::new();
        for j in 0..CONCURRENT {
            let store = store.clone();
            let i = 10_000 + round * CONCURRENT + j;
            tasks.push(tokio::spawn(async move {
                store.propose(node(i)).await.unwrap().unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let conc = started.elapsed();
    let total = CONCURRENT * ROUNDS;
    println!(
        "concurrent: {total} proposals, {CONCURRENT} at a time, in {conc:?} = {:.0}/s",
        total as f64 / conc.as_secs_f64()
    );

    let state = store.state();
    assert_eq!(state.nodes.len() as u64, SEQUENTIAL + total);

    // Restart time of a store holding these entries.
    let store = Arc::try_unwrap(store).expect("no other handle");
    store.shutdown().await.unwrap();
    let started = Instant::now();
    let store = Store::open(dir.path(), 1, "127.0.0.1:4600", 10_000)
        .await
        .unwrap();
    store
        .wait_for_leader(Duration::from_secs(60))
        .await
        .unwrap();
    println!(
        "reopen with {} log entries: leader after {:?}",
        store.info().last_log_index.unwrap_or_default() + 1,
        started.elapsed()
    );
    assert_eq!(store.state().nodes.len() as u64, SEQUENTIAL + total);
    store.shutdown().await.unwrap();
}
