//! Several real nodes forming one cluster over the node port with mutual TLS, driven through the
//! `shoal` CLI. Each node is a host of its own: its own network namespace on a shared bridge
//! (listening on its LAN address at port 4600), containerd, D-Bus bus and `shoald`.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_tests::images;
use shoal_tests::lan::Lan;
use shoal_tests::node::{Node, NodeOptions};

const SECRET: &str = "cluster-test-provisioning-secret-42";

fn token_file(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("join-token");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A manager that bootstraps a cluster whose provisioning secret is in `tok`.
fn bootstrap(lan: &Lan, tok: &str) -> Node {
    Node::start_with(NodeOptions {
        extra_config: format!("[cluster]\nbootstrap = true\ntoken_file = \"{tok}\"\n"),
        host: Some(lan.host()),
        ..Default::default()
    })
}

/// A node of `role` that joins `through`'s cluster with the token in the file `tok`.
fn join(lan: &Lan, through: &Node, role: &str, tok: &str) -> Node {
    Node::start_with(NodeOptions {
        node_config: format!("role = \"{role}\""),
        extra_config: format!(
            "[cluster]\njoin = [\"{}\"]\ntoken_file = \"{tok}\"\n",
            through.addr
        ),
        host: Some(lan.host()),
        ..Default::default()
    })
}

/// A busybox image every node of the test reads at the same path (as NixOS hosts share a store
/// path), as an `oci-archive:` reference.
fn shared_image(dir: &std::path::Path) -> String {
    let path = dir.join("bb.tar");
    images::write_oci_archive(&path, false, "example.org/bb:1");
    format!("oci-archive:{}", path.display())
}

/// Wait until `node` counts `n` raft voters (what `info` shows).
fn wait_for_voters(node: &Node, n: usize) {
    node.wait_for(&format!("{n} raft voters"), Duration::from_secs(60), |m| {
        let out = m.shoal_ok(&["info", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["cluster"]["raft_voters"].as_str() == Some(n.to_string().as_str())
    });
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
    let lan = Lan::new();
    let secrets = tempfile::tempdir().unwrap();
    let tok = token_file(secrets.path(), SECRET);
    let manager = bootstrap(&lan, &tok);
    let mut worker = join(&lan, &manager, "worker", &tok);

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
    let image = shared_image(secrets.path());
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
    // Logs of a service on two nodes, merged, read from either node's CLI.
    worker.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "talk",
        "--replicas",
        "2",
        &image,
        "sh",
        "-c",
        "echo hello from a task; sleep 3600",
    ]);
    manager.wait_for("talk to run on both nodes", Duration::from_secs(90), |m| {
        let running = m.running("talk");
        let nodes: std::collections::BTreeSet<String> =
            running.iter().map(|t| t.node.clone()).collect();
        running.len() == 2 && nodes.len() == 2
    });
    for reader in [&manager, &worker] {
        reader.wait_for(
            "both tasks' lines in service logs",
            Duration::from_secs(30),
            |n| {
                let out = n.shoal_ok(&["service", "logs", "talk"]);
                let lines: Vec<&str> = out
                    .lines()
                    .filter(|l| l.contains("hello from a task"))
                    .collect();
                let nodes: std::collections::BTreeSet<&str> = lines
                    .iter()
                    .filter_map(|l| l.split('@').nth(1)?.split_whitespace().next())
                    .collect();
                lines.len() == 2 && nodes.len() == 2
            },
        );
    }
    let tail = manager.shoal_ok(&["service", "logs", "--tail", "1", "talk"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");

    // A start-first update across both nodes, from the worker's CLI: the next slot's task is
    // staged (prepared on its node, desired ready) while the current one is watched, then
    // released: one new task a slot, none thrown away.
    let before: std::collections::BTreeSet<String> =
        manager.running("web").into_iter().map(|t| t.id).collect();
    worker.shoal_ok(&[
        "service",
        "update",
        "--detach",
        "--force",
        "--update-order",
        "start-first",
        "--update-monitor",
        "1s",
        "web",
    ]);
    let mut staged = std::collections::BTreeSet::new();
    manager.wait_for("web updated on both nodes", Duration::from_secs(90), |m| {
        for t in m.tasks("web") {
            if t.desired == "ready" && t.state == "ready" && !before.contains(&t.id) {
                staged.insert(t.id.clone());
            }
        }
        let running = m.running("web");
        running.len() == 2
            && running.iter().all(|t| !before.contains(&t.id))
            && m.shoal_ok(&["service", "inspect", "web"])
                .contains("\"update_state\": \"completed\"")
    });
    let new: Vec<_> = manager
        .tasks("web")
        .into_iter()
        .filter(|t| !before.contains(&t.id))
        .collect();
    assert_eq!(new.len(), 2, "one new task a slot: {new:?}");
    assert!(
        !staged.is_empty() && staged.iter().all(|id| new.iter().any(|t| &t.id == id)),
        "a staged task was seen and is one of those that run: {staged:?} {new:?}"
    );

    // Placement across nodes: a constraint pins tasks, one that no node meets leaves the task
    // PENDING with the reason in service ps.
    manager.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "pinned",
        "--replicas",
        "2",
        "--constraint",
        "node.role==worker",
        &image,
        "sleep",
        "3600",
    ]);
    manager.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "nowhere",
        "--constraint",
        "node.labels.zone==mars",
        &image,
        "sleep",
        "3600",
    ]);
    manager.wait_for(
        "both pinned tasks on the worker",
        Duration::from_secs(90),
        |m| {
            let running = m.running("pinned");
            running.len() == 2
                && running.iter().all(|t| t.node == running[0].node)
                // ... on the worker: a node without a manager status.
                && node_names(m)
                    .get(&running[0].node)
                    .is_some_and(|(_, ms)| ms.is_empty())
        },
    );
    manager.wait_for(
        "the unplaceable task to say why",
        Duration::from_secs(30),
        |m| {
            m.tasks("nowhere")
                .iter()
                .any(|t| t.state == "pending" && t.error.contains("no suitable node"))
        },
    );
    manager.shoal_ok(&["service", "rm", "pinned", "nowhere"]);

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
    // Its logs cannot be read now: the reader says so instead of silently showing less.
    let out = manager.shoal_ok(&["service", "logs", "talk"]);
    assert!(out.contains("could not be read"), "{out}");
    manager.wait_for(
        "four running tasks on the manager",
        Duration::from_secs(90),
        |m| {
            let running = m.running("web");
            let nodes: std::collections::BTreeSet<String> =
                running.iter().map(|t| t.node.clone()).collect();
            running.len() == 4 && nodes.len() == 1
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
    let lan = Lan::new();
    let secrets = tempfile::tempdir().unwrap();
    let tok = token_file(secrets.path(), SECRET);
    let bad = secrets.path().join("bad-token");
    std::fs::write(&bad, "not-the-secret-of-this-cluster").unwrap();
    let manager = bootstrap(&lan, &tok);
    let worker = join(&lan, &manager, "worker", &bad.display().to_string());
    worker.wait_for("the join to be refused", Duration::from_secs(30), |w| {
        w.log().contains("could not prove it knows the token")
    });
    // The worker stays up and says what it waits for; the manager has one node.
    let info = worker.shoal_ok(&["info"]);
    assert!(info.contains("joining the cluster"), "{info}");
    assert_eq!(node_names(&manager).len(), 1);
    assert!(!worker.log().contains(SECRET) && !manager.log().contains(SECRET));

    // A host of the LAN with no certificate of the cluster gets no answer on 4600: not to a TLS
    // request for the state (even trusting the cluster's CA), nor to plain bytes.
    let outsider = lan.host();
    let ca = std::fs::read_to_string(manager.state_dir.join("certificates/ca.crt")).unwrap();
    let cluster_id = manager.shoal_ok(&["info", "--format", "json"]);
    let cluster_id: serde_json::Value = serde_json::from_str(&cluster_id).unwrap();
    let cluster_id = cluster_id["cluster"]["cluster_id"]
        .as_str()
        .expect("info shows the cluster id")
        .to_string();
    let to = manager.addr.clone();
    let (over_tls, plain) = outsider.run_in(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(answers_without_certificate(&to, &ca))
    });
    assert!(over_tls.is_empty(), "answered over TLS: {over_tls:?}");
    let plain = String::from_utf8_lossy(&plain);
    assert!(
        !plain.contains("HTTP") && !plain.contains(&cluster_id),
        "answered plain bytes: {plain:?}"
    );
}

/// What `addr` answers a peer without a certificate: to a state request over TLS, and to plain
/// bytes.
async fn answers_without_certificate(addr: &str, ca_pem: &str) -> (Vec<u8>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read_all = async |s: &mut (dyn tokio::io::AsyncRead + Unpin + Send)| {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        buf
    };
    let cfg = rpc::tls::client_config(ca_pem, None).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("manager.shoal").unwrap(),
            tcp,
        )
        .await
        .expect("the TLS handshake itself needs no client certificate (joins use it)");
    let ask = rpc::Request::Api {
        call: serde_json::json!({"list_services": {}}),
    };
    rpc::wire::write(&mut tls, &ask).await.unwrap();
    let over_tls = read_all(&mut tls).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let plain = read_all(&mut tcp).await;
    (over_tls, plain)
}

/// Run the CLI against `node`, giving up after `secs` seconds (the CLI itself waits as long as
/// the daemon takes).
fn shoal_within(node: &Node, secs: u32, args: &[&str]) -> std::process::Output {
    std::process::Command::new("timeout")
        .arg(secs.to_string())
        .arg(shoal_tests::node::bin("shoal"))
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", node.bus.address())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run timeout shoal")
}

/// Wait until `node` sees `n` nodes, all ready, with exactly one leader and `managers` managers.
fn wait_for_cluster(node: &Node, n: usize, managers: usize) {
    node.wait_for(
        &format!("{n} ready nodes, {managers} managers, one leader"),
        Duration::from_secs(90),
        |m| {
            let rows = node_names(m);
            rows.len() == n
                && rows.values().all(|(s, _)| s == "ready")
                && rows.values().filter(|(_, ms)| ms == "leader").count() == 1
                && rows.values().filter(|(_, ms)| !ms.is_empty()).count() == managers
        },
    );
}

#[test]
fn three_managers_survive_the_loss_of_the_leader() {
    let lan = Lan::new();
    let secrets = tempfile::tempdir().unwrap();
    let tok = token_file(secrets.path(), SECRET);
    let mut m1 = bootstrap(&lan, &tok);
    let n2 = join(&lan, &m1, "worker", &tok);
    let n3 = join(&lan, &m1, "worker", &tok);
    wait_for_cluster(&m1, 3, 1);

    // Promote both workers; they renew their certificates and join the raft group.
    let names: Vec<String> = node_names(&m1).into_keys().collect();
    let m1_name = node_names(&m1)
        .into_iter()
        .find(|(_, (_, ms))| ms == "leader")
        .map(|(n, _)| n)
        .unwrap();
    for name in names.iter().filter(|n| **n != m1_name) {
        n2.shoal_ok(&["node", "promote", name]);
    }
    wait_for_cluster(&m1, 3, 3);
    wait_for_voters(&m1, 3);

    let image = shared_image(secrets.path());
    n3.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "one",
        "--replicas",
        "3",
        &image,
        "sleep",
        "3600",
    ]);
    m1.wait_for("three running tasks", Duration::from_secs(90), |m| {
        m.running("one").len() == 3
    });

    // Both followers carry the same stack file (as the managers of a NixOS cluster do) and
    // reload it over and over while the leader dies, so that one of them may become the leader
    // in the middle of its own reload.
    let stack = format!("[services.app]\nimage = \"{image}\"\ncommand = [\"sleep\", \"3600\"]\n");
    for n in [&n2, &n3] {
        std::fs::write(n.stacks_dir.join("demo.toml"), &stack).unwrap();
    }
    let stop_reloading = std::sync::atomic::AtomicBool::new(false);

    // The leader dies: a new leader takes over and changes keep working from any node.
    if std::env::var_os("SHOAL_TEST_DEBUG").is_some() {
        eprintln!("M1LOG {}", m1.log());
    }
    let started = std::time::Instant::now();
    let failover = std::thread::scope(|scope| {
        for n in [&n2, &n3] {
            let stop = &stop_reloading;
            scope.spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Errors are expected while there is no leader; a reload that never
                    // answers shows below.
                    let _ = shoal_within(n, 60, &["reload"]);
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        m1.kill_daemon();
        n2.wait_for("a new leader", Duration::from_secs(60), |n| {
            node_names(n)
                .iter()
                .any(|(name, (_, ms))| ms == "leader" && *name != m1_name)
        });
        let failover = started.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        stop_reloading.store(true, std::sync::atomic::Ordering::Relaxed);
        failover
    });
    eprintln!("new leader known {failover:?} after the old one was killed");
    // Reloads on both survivors answer again (a reload that hung would keep its locks and every
    // later one would hang too), and the stack runs.
    for n in [&n2, &n3] {
        n.wait_for(
            "a reload to succeed after the failover",
            Duration::from_secs(60),
            |n| shoal_within(n, 30, &["reload"]).status.success(),
        );
    }
    n2.wait_for("the reloaded stack to run", Duration::from_secs(90), |n| {
        n.running("demo_app").len() == 1
    });
    n3.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "two",
        "--replicas",
        "2",
        &image,
        "sleep",
        "3600",
    ]);
    n2.shoal_ok(&["service", "scale", "--detach", "one=2"]);
    n2.wait_for("the old leader down", Duration::from_secs(60), |n| {
        node_names(n)
            .get(&m1_name)
            .is_some_and(|(s, _)| s == "down")
    });
    n2.wait_for(
        "both services converged on the survivors",
        Duration::from_secs(90),
        |n| {
            let one = n.running("one");
            let two = n.running("two");
            one.len() == 2 && two.len() == 2 && one.iter().chain(&two).all(|t| t.node != m1_name)
        },
    );

    // Demoting one of the two managers left would break quorum (the dead one still counts).
    let n3_name = node_names(&n3)
        .into_iter()
        .find(|(n, (_, ms))| *n != m1_name && ms != "leader")
        .map(|(n, _)| n)
        .unwrap();
    let out = n2.shoal(&["node", "demote", &n3_name]);
    assert!(
        !out.status.success(),
        "demote that breaks quorum must fail: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("quorum"),
        "{out:?}"
    );

    // Lose a second manager: the one left is a minority. It refuses changes, saying how many
    // managers it reaches, and keeps answering reads of what it knows.
    let (mut n2, mut n3) = (n2, n3);
    let n2_leads = node_names(&n2)
        .iter()
        .any(|(name, (_, ms))| ms == "leader" && *name != n3_name);
    let survivor = if n2_leads {
        n2.kill_daemon();
        &n3
    } else {
        n3.kill_daemon();
        &n2
    };
    survivor.wait_for(
        "the minority to refuse changes",
        Duration::from_secs(60),
        |n| {
            let out = n.shoal(&["service", "scale", "--detach", "one=1"]);
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("majority")
        },
    );
    let out = survivor.shoal(&["service", "scale", "--detach", "one=1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reaches 1 of 3 managers"), "{err}");
    let services = survivor.services();
    assert!(services.iter().any(|s| s.name == "two"), "{services:?}");
    // Without a majority nothing is rescheduled, and the survivor's tasks keep running.
    assert!(!survivor.container_tasks().is_empty());
}

#[test]
fn a_worker_token_never_yields_a_manager() {
    let lan = Lan::new();
    let secrets = tempfile::tempdir().unwrap();
    let tok = token_file(secrets.path(), SECRET);
    let m1 = bootstrap(&lan, &tok);
    let worker_token = m1.shoal_ok(&["cluster", "join-token", "-q", "worker"]);
    assert!(
        worker_token.trim().starts_with("SWMTKN-1-"),
        "{worker_token}"
    );
    let wtok = secrets.path().join("worker-token");
    std::fs::write(&wtok, worker_token.trim()).unwrap();
    // Configured as a manager, joining with a worker token: it becomes a worker.
    let n2 = join(&lan, &m1, "manager", &wtok.display().to_string());
    wait_for_cluster(&m1, 2, 1);
    let info = n2.shoal_ok(&["info"]);
    assert!(info.contains("Role: worker"), "{info}");
    // Rotating the worker token refuses new joins with the old one.
    let rotated = m1.shoal_ok(&["cluster", "join-token", "-q", "--rotate", "worker"]);
    assert_ne!(rotated.trim(), worker_token.trim());
    let n3 = join(&lan, &m1, "worker", &wtok.display().to_string());
    n3.wait_for(
        "the old token to be refused",
        Duration::from_secs(30),
        |n| n.log().contains("join token refused"),
    );
    assert_eq!(node_names(&m1).len(), 2);
    // The tokens never reach the logs.
    for log in [m1.log(), n2.log(), n3.log()] {
        assert!(!log.contains(worker_token.trim()) && !log.contains(rotated.trim()));
    }
}

#[test]
fn the_tutorial_flow_through_the_cli_init_join_update_leave() {
    let lan = Lan::new();
    let idle = || NodeOptions {
        extra_config: "[cluster]\nbootstrap = false\n".into(),
        host: Some(lan.host()),
        ..Default::default()
    };
    let m1 = Node::start_with(idle());
    let w1 = Node::start_with(idle());
    let mut w2 = Node::start_with(idle());
    assert!(w1.shoal_ok(&["info"]).contains("Cluster: inactive"));

    // init prints the worker join command.
    let out = m1.shoal_ok(&["cluster", "init"]);
    assert!(
        out.contains("shoal cluster join --token SWMTKN-1-"),
        "{out}"
    );
    let again = m1.shoal(&["cluster", "init"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already part of cluster"));
    let token = m1.shoal_ok(&["cluster", "join-token", "-q", "worker"]);
    let addr = m1.addr.clone();
    // A wrong token is refused with a clear error and changes nothing.
    let bad = w1.shoal(&["cluster", "join", "--token", "SWMTKN-1-0000000000000000000000000000000000000000000000000000000000000000-0123456789abcdefghijklm", &addr]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("different CA"),
        "{bad:?}"
    );
    for w in [&w1, &w2] {
        let out = w.shoal_ok(&["cluster", "join", "--token", token.trim(), &addr]);
        assert!(out.contains("joined the cluster as a worker"), "{out}");
    }
    wait_for_cluster(&m1, 3, 1);
    let info = w1.shoal_ok(&["info"]);
    assert!(
        info.contains("Cluster: active") && info.contains("Is Manager: false"),
        "{info}"
    );
    assert!(
        info.contains(" Nodes: 3") && info.contains(" Managers: 1"),
        "{info}"
    );

    // cluster update goes through the one validator and shows in info.
    m1.shoal_ok(&["cluster", "update", "--heartbeat-period", "2s"]);
    assert!(w2.shoal_ok(&["info"]).contains("Heartbeat Period: 2s"));
    let bad = m1.shoal(&["cluster", "update", "--snapshot-interval", "0"]);
    assert!(!bad.status.success(), "{bad:?}");

    let secrets = tempfile::tempdir().unwrap();
    let image = shared_image(secrets.path());
    m1.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "3",
        &image,
        "sleep",
        "3600",
    ]);
    m1.wait_for("one task on each node", Duration::from_secs(90), |m| {
        let running = m.running("web");
        let nodes: std::collections::BTreeSet<String> =
            running.iter().map(|t| t.node.clone()).collect();
        running.len() == 3 && nodes.len() == 3
    });

    // A worker leaves: its containers stop, it is in no cluster, the manager replaces its task.
    let w2_name = node_names(&w2)
        .into_iter()
        .find(|(n, _)| {
            w2.shoal_ok(&["node", "inspect", "--pretty", "self"])
                .contains(n.as_str())
        })
        .map(|(n, _)| n)
        .unwrap();
    w2.shoal_ok(&["cluster", "leave"]);
    w2.wait_for(
        "the worker to stop its containers and start again outside the cluster",
        Duration::from_secs(90),
        |w| {
            // One call: the daemon restarts itself, so two calls could straddle the restart.
            let out = w.shoal(&["info"]);
            w.container_tasks().is_empty()
                && out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("Cluster: inactive")
        },
    );
    assert!(
        w2.daemon_exit().is_none(),
        "shoald must keep running after leave"
    );
    m1.wait_for(
        "the left node down and its task replaced",
        Duration::from_secs(90),
        |m| {
            node_names(m)
                .get(&w2_name)
                .is_some_and(|(s, _)| s == "down")
                && m.running("web")
                    .iter()
                    .filter(|t| t.node != w2_name)
                    .count()
                    == 3
        },
    );
    m1.shoal_ok(&["node", "rm", &w2_name]);
    assert_eq!(node_names(&m1).len(), 2);
    // A manager does not leave without --force.
    let out = m1.shoal(&["cluster", "leave"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("demote it first"),
        "{out:?}"
    );
}

#[test]
fn a_follower_manager_applies_its_stack_files_through_the_leader() {
    let lan = Lan::new();
    let secrets = tempfile::tempdir().unwrap();
    let tok = token_file(secrets.path(), SECRET);
    let m1 = bootstrap(&lan, &tok);
    let m2 = join(&lan, &m1, "manager", &tok);
    wait_for_voters(&m1, 2);
    let stack = format!(
        "[services.app]\nimage = \"{}\"\ncommand = [\"sleep\", \"3600\"]\nreplicas = 2\n",
        shared_image(secrets.path())
    );
    // The follower's reload validates its files and has the leader apply them.
    std::fs::write(m2.stacks_dir.join("demo.toml"), &stack).unwrap();
    let out = m2.shoal_ok(&["reload"]);
    assert!(out.contains("added: demo"), "{out}");
    m1.wait_for("the stack's tasks to run", Duration::from_secs(90), |m| {
        m.running("demo_app").len() == 2
    });
    // A broken file on the follower fails the reload and changes nothing.
    std::fs::write(m2.stacks_dir.join("demo.toml"), "[services.app\n").unwrap();
    let out = m2.shoal(&["reload"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("demo.toml:1:"),
        "{out:?}"
    );
    assert_eq!(m1.running("demo_app").len(), 2);
    // Removing the file on the follower removes the stack.
    std::fs::remove_file(m2.stacks_dir.join("demo.toml")).unwrap();
    let out = m2.shoal_ok(&["reload"]);
    assert!(out.contains("removed: demo"), "{out}");
}

#[test]
fn a_default_single_node_can_leave_its_own_cluster_and_join_another() {
    let lan = Lan::new();
    let on_lan = || NodeOptions {
        host: Some(lan.host()),
        ..Default::default()
    };
    let a = Node::start_with(on_lan());
    let mut b = Node::start_with(on_lan());
    assert!(b.shoal_ok(&["info"]).contains("Cluster: active"));
    // b leads a one-node cluster of its own: leaving needs --force, then it stays out of any
    // cluster, across restarts too.
    b.shoal_ok(&["cluster", "leave", "--force"]);
    b.wait_for(
        "b to start again outside any cluster",
        Duration::from_secs(60),
        |n| {
            // One call: the daemon restarts itself, so two calls could straddle the restart.
            let out = n.shoal(&["info"]);
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("Cluster: inactive")
        },
    );
    b.stop_daemon();
    b.start_daemon();
    assert!(b.shoal_ok(&["info"]).contains("Cluster: inactive"));
    let token = a.shoal_ok(&["cluster", "join-token", "-q", "worker"]);
    let addr = a.addr.clone();
    b.shoal_ok(&["cluster", "join", "--token", token.trim(), &addr]);
    wait_for_cluster(&a, 2, 1);
}

/// The CA key, read from a manager's raft files (the state holds it; workers never get it).
fn ca_key_from_raft_files(state_dir: &std::path::Path) -> String {
    let needle = b"\"ca_key_pem\":";
    let mut dirs = vec![state_dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            let bytes = std::fs::read(&p).unwrap_or_default();
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                let rest = &bytes[at + needle.len()..];
                let mut de = serde_json::Deserializer::from_slice(rest).into_iter::<String>();
                if let Some(Ok(pem)) = de.next()
                    && pem.contains("PRIVATE KEY")
                {
                    return pem;
                }
            }
        }
    }
    panic!("no CA key in {}", state_dir.display())
}

#[test]
fn a_certificate_near_its_expiry_is_renewed_by_the_node_itself() {
    let lan = Lan::new();
    let secrets = tempfile::tempdir().unwrap();
    let tok = token_file(secrets.path(), SECRET);
    let manager = bootstrap(&lan, &tok);
    let mut worker = join(&lan, &manager, "worker", &tok);
    wait_for_cluster(&manager, 2, 1);

    // Give the worker a certificate of the cluster's CA that is in the last third of its life
    // (valid for 5 more minutes), as if it had been running for weeks.
    let certs = worker.state_dir.join("certificates");
    let current = std::fs::read_to_string(certs.join("node.crt")).unwrap();
    let info = rpc::pki::cert_info(&current).unwrap();
    let ca = rpc::pki::CaKeys {
        cert_pem: std::fs::read_to_string(certs.join("ca.crt")).unwrap(),
        key_pem: ca_key_from_raft_files(&manager.state_dir),
    };
    let (key_pem, csr) = rpc::pki::new_node_key().unwrap();
    let short = rpc::pki::issue(
        &ca,
        &csr,
        &info.node_id,
        info.role,
        &info.cluster_id,
        std::time::SystemTime::now(),
        Duration::from_secs(300),
    )
    .unwrap();
    worker.stop_daemon();
    std::fs::write(certs.join("node.key"), key_pem).unwrap();
    std::fs::write(certs.join("node.crt"), &short).unwrap();
    let short_until = rpc::pki::cert_info(&short).unwrap().not_after;
    worker.start_daemon();

    // It renews by itself: a new certificate with the cluster's validity (90 days by default),
    // same identity, and it keeps working with it.
    worker.wait_for(
        "the worker to renew its certificate",
        Duration::from_secs(60),
        |w| {
            std::fs::read_to_string(w.state_dir.join("certificates/node.crt"))
                .ok()
                .and_then(|pem| rpc::pki::cert_info(&pem).ok())
                .is_some_and(|i| i.not_after > short_until + 30 * 24 * 3600)
        },
    );
    let renewed =
        rpc::pki::cert_info(&std::fs::read_to_string(certs.join("node.crt")).unwrap()).unwrap();
    assert_eq!(
        (&renewed.node_id, renewed.role, &renewed.cluster_id),
        (&info.node_id, info.role, &info.cluster_id)
    );
    assert!(worker.log().contains("node certificate renewed"));
    wait_for_cluster(&manager, 2, 1);
    // Calls from the worker's CLI travel over the node port with the new certificate.
    assert_eq!(node_names(&worker).len(), 2);
}
