//! Several real nodes (each its own containerd, D-Bus bus and `shoald`) forming one cluster over
//! the node port with mutual TLS, driven through the `shoal` CLI.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_tests::images;
use shoal_tests::node::{Node, NodeOptions};

const SECRET: &str = "cluster-test-provisioning-secret-42";

fn token_file(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("join-token");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn node_names(node: &Node) -> BTreeMap<String, (String, String)> {
    let out = node.shoal(&["node", "ls", "--format", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    rows.iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                (
                    r["status"].as_str().unwrap_or_default().to_string(),
                    r["manager_status"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

#[test]
fn a_worker_joins_runs_tasks_and_its_death_moves_them() {
    let secrets = tempfile::tempdir().unwrap();
    let tok = token_file(secrets.path(), SECRET);
    let manager = Node::start_with(NodeOptions {
        extra_config: format!("[cluster]\nbootstrap = true\ntoken_file = \"{tok}\"\n"),
        ..Default::default()
    });
    let mut worker = Node::start_with(NodeOptions {
        node_config: "role = \"worker\"".into(),
        extra_config: format!(
            "[cluster]\njoin = [\"127.0.0.1:{}\"]\ntoken_file = \"{tok}\"\n",
            manager.node_port
        ),
    });

    // Both nodes are Ready, the manager leads; the worker's CLI sees the same (forwarded).
    manager.wait_for("two ready nodes", Duration::from_secs(60), |m| {
        let n = node_names(m);
        n.len() == 2 && n.values().all(|(s, _)| s == "ready")
    });
    let seen_by_worker = node_names(&worker);
    assert_eq!(seen_by_worker.len(), 2, "{seen_by_worker:?}");
    assert_eq!(
        seen_by_worker
            .values()
            .filter(|(_, ms)| ms == "leader")
            .count(),
        1,
        "{seen_by_worker:?}"
    );

    // A service of two replicas spreads over both nodes; created from the worker's CLI.
    // Both nodes read the archive at the same path, as NixOS hosts share a store path.
    let shared = secrets.path().join("bb.tar");
    images::write_oci_archive(&shared, false, "example.org/bb:1");
    let image = format!("oci-archive:{}", shared.display());
    worker.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "2",
        &image,
        "sleep",
        "3600",
    ]);
    manager.wait_for(
        "two running tasks on two nodes",
        Duration::from_secs(90),
        |m| {
            let running = m.running("web");
            let nodes: std::collections::BTreeSet<String> =
                running.iter().map(|t| t.node.clone()).collect();
            running.len() == 2 && nodes.len() == 2
        },
    );
    assert_eq!(
        worker.container_tasks().len(),
        1,
        "the worker runs one container"
    );
    assert_eq!(
        manager.container_tasks().len(),
        1,
        "the manager runs one container"
    );

    // Scale from the worker: what it shows right after is never older than its change.
    worker.shoal_ok(&["service", "scale", "--detach", "web=4"]);
    let ls = worker.services();
    assert_eq!(
        ls.iter().find(|s| s.name == "web").map(|s| s.desired),
        Some(4),
        "{ls:?}"
    );
    manager.wait_for("four running tasks", Duration::from_secs(90), |m| {
        m.running("web").len() == 4
    });

    // The worker's shoald dies: it goes Down (three missed heartbeats) and its tasks come back
    // on the manager.
    worker.kill_daemon();
    manager.wait_for("the worker to be down", Duration::from_secs(30), |m| {
        node_names(m).values().any(|(s, _)| s == "down")
    });
    manager.wait_for(
        "four running tasks on the manager",
        Duration::from_secs(90),
        |m| {
            let running = m.running("web");
            running.len() == 4 && manager.container_tasks().len() == 4
        },
    );

    // Drain the manager's own tasks? Not with one node left; check drain through the CLI.
    let manager_name = node_names(&manager)
        .into_iter()
        .find(|(_, (s, _))| s == "ready")
        .map(|(n, _)| n)
        .unwrap();
    manager.shoal_ok(&["node", "update", "--availability", "pause", &manager_name]);
    let out = manager.shoal_ok(&["node", "inspect", "--pretty", &manager_name]);
    assert!(out.contains("pause"), "{out}");
}

#[test]
fn a_wrong_token_is_refused_and_the_node_keeps_trying() {
    let secrets = tempfile::tempdir().unwrap();
    let tok = token_file(secrets.path(), SECRET);
    let bad = secrets.path().join("bad-token");
    std::fs::write(&bad, "not-the-secret-of-this-cluster").unwrap();
    let manager = Node::start_with(NodeOptions {
        extra_config: format!("[cluster]\nbootstrap = true\ntoken_file = \"{tok}\"\n"),
        ..Default::default()
    });
    let worker = Node::start_with(NodeOptions {
        node_config: "role = \"worker\"".into(),
        extra_config: format!(
            "[cluster]\njoin = [\"127.0.0.1:{}\"]\ntoken_file = \"{}\"\n",
            manager.node_port,
            bad.display()
        ),
    });
    worker.wait_for("the join to be refused", Duration::from_secs(30), |w| {
        w.log().contains("could not prove it knows the token")
    });
    // The worker stays up and says what it waits for; the manager has one node.
    let info = worker.shoal_ok(&["info"]);
    assert!(info.contains("joining the cluster"), "{info}");
    assert_eq!(node_names(&manager).len(), 1);
    assert!(!worker.log().contains(SECRET) && !manager.log().contains(SECRET));
}
