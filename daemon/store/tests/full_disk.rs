//! A full disk stops raft for good, and the store says so (the daemon then exits so that systemd
//! restarts it). Needs root (it mounts a small tmpfs).

use std::collections::BTreeMap;
use std::time::Duration;

use model::{Availability, Command, Node, NodeRole, NodeStatus};
use store::Store;

fn big_node(i: u64) -> Command {
    Command::AddNode(Node {
        id: format!("node-{i}"),
        raft_id: i,
        name: format!("n{i}"),
        role: NodeRole::Worker,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        labels: BTreeMap::from([("filler".to_string(), "x".repeat(100_000))]),
        addr: "10.0.0.1:4600".into(),
        last_heartbeat: i,
        version: String::new(),
        status_message: String::new(),
        resources: Default::default(),
        ingress_addr: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_raft_and_the_store_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("state");
    std::fs::create_dir_all(&mnt).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1024k", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success(), "mounting a tmpfs needs root");
    let store = Store::open(&mnt, 1, "127.0.0.1:4600", 10_000)
        .await
        .unwrap();
    store.bootstrap_single().await.unwrap();
    assert!(store.stop_reason().is_none());
    let mut failed = false;
    for i in 0..40 {
        match tokio::time::timeout(Duration::from_secs(10), store.propose(big_node(i))).await {
            Ok(Ok(Ok(_))) => {}
            _ => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "1 MiB took 4 MB of entries");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.stop_reason().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "raft failed to write but the store says it is healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&mnt)
        .status();
}
