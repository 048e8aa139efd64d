//! Secrets and configs on real parts (shoald, containerd, runc), through the real CLI: a secret
//! is readable inside the task at `/run/secrets/NAME`, with the owner and mode asked for, from a
//! tmpfs, and nowhere else: not in `secret inspect`, `secret ls`, `service inspect`, `service
//! ps`, their `--format json`, the task's logs or shoald's log. A secret in use cannot be
//! removed. A stack's file secret whose content changes rolls the service to the new content at
//! the next reload; a Compose file's secret is read by the CLI at `stack deploy`. In a cluster,
//! a worker that runs a task using a secret gets it over the node port; another gets nothing.

use std::time::Duration;

use sha2::{Digest, Sha256};
use shoal_tests::images::{self, SLEEPER, node_image as image};
use shoal_tests::lan::Lan;
use shoal_tests::node::{Node, NodeOptions};

const LONG: Duration = Duration::from_secs(120);

/// A value no output of shoal has any reason to contain.
fn secret_value(tag: &str) -> String {
    format!(
        "pw-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Prints what the task sees of the file at `path` without printing its content: its sha256,
/// `mode:uid:gid`, and the file system it comes from.
fn probe(key: &str, path: &str) -> String {
    format!(
        "echo {key}_sum=$(sha256sum < {path} | cut -d' ' -f1); \
         echo {key}_stat=$(stat -c %a:%u:%g {path}); \
         echo {key}_fs=$(awk '$2==\"{path}\" {{print $3}}' /proc/mounts)"
    )
}

/// The value of the line `key=value` in `service logs` output (after its `TASK | ` prefix).
fn value(out: &str, key: &str) -> Option<String> {
    out.lines().rev().find_map(|l| {
        let message = l.split_once("| ").map_or(l, |(_, m)| m);
        message
            .strip_prefix(&format!("{key}="))
            .map(|v| v.trim().to_string())
    })
}

fn assert_nowhere(what: &str, text: &str, secret: &str) {
    assert!(
        !text.contains(secret),
        "the secret's value appears in {what}:\n{text}"
    );
}

#[test]
fn a_secret_is_readable_inside_the_task_and_nowhere_else() {
    let mut node = Node::start();
    let img = image(&node, "bb");
    let secret = secret_value("db");
    let config = format!("listen = 8080 # {}", secret_value("conf"));
    let secret_file = node.dir.path().join("db_pw.txt");
    std::fs::write(&secret_file, &secret).unwrap();
    let config_file = node.dir.path().join("app.conf");
    std::fs::write(&config_file, &config).unwrap();

    let id = node.shoal_ok(&["secret", "create", "db_pw", secret_file.to_str().unwrap()]);
    assert_eq!(id.trim().len(), 25, "an id: {id}");
    node.shoal_ok(&[
        "config",
        "create",
        "app_conf",
        config_file.to_str().unwrap(),
    ]);
    // Secrets never change: the same name again is refused.
    let again = node.shoal(&["secret", "create", "db_pw", secret_file.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    // Above 500 KiB is refused with the limit.
    let big = node.dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 500 * 1024 + 1]).unwrap();
    let too_big = node.shoal(&["secret", "create", "big", big.to_str().unwrap()]);
    assert!(!too_big.status.success());
    let err = String::from_utf8_lossy(&too_big.stderr);
    assert!(
        err.contains("above the limit of 512000 bytes (500 KiB)"),
        "{err}"
    );

    // A service may only name a secret that exists.
    let unknown = node.shoal(&[
        "service", "create", "--detach", "--name", "nope", "--secret", "nope", &img,
    ]);
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("secret nope not found"), "{err}");

    let cmd = format!(
        "{}; {}; {}; echo done=1; {SLEEPER}",
        probe("plain", "/run/secrets/db_pw"),
        probe("owned", "/run/secrets/other"),
        probe("conf", "/etc/app.conf"),
    );
    node.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "app",
        "--secret",
        "db_pw",
        "--secret",
        "source=db_pw,target=other,uid=1000,gid=1000,mode=0400",
        "--config",
        "source=app_conf,target=/etc/app.conf",
        &img,
        "sh",
        "-c",
        &cmd,
    ]);
    let mut logs = String::new();
    node.wait_for("the task's probe", LONG, |n| {
        logs = n.shoal_ok(&["service", "logs", "app"]);
        logs.contains("done=1")
    });
    let v = |k: &str| value(&logs, k).unwrap_or_else(|| panic!("no {k} in:\n{logs}"));
    assert_eq!(v("plain_sum"), sha256(&secret), "the task reads the secret");
    assert_eq!(v("plain_stat"), "444:0:0", "Swarm's default owner and mode");
    assert_eq!(v("plain_fs"), "tmpfs", "the secret comes from a tmpfs");
    assert_eq!(v("owned_sum"), sha256(&secret));
    assert_eq!(
        v("owned_stat"),
        "400:1000:1000",
        "the owner and mode asked for"
    );
    assert_eq!(v("conf_sum"), sha256(&config), "the task reads the config");
    assert_eq!(v("conf_stat"), "444:0:0");

    // A restarted shoald adopts the task and keeps its files (and a stale directory goes).
    let task = node.running("app").remove(0);
    std::fs::create_dir_all(node.run_dir.join("secrets").join("stale-task")).unwrap();
    node.stop_daemon();
    node.start_daemon();
    node.wait_for("the task adopted", LONG, |n| {
        n.running("app").first().map(|t| t.id.clone()) == Some(task.id.clone())
    });
    node.wait_for("the stale secret files removed", LONG, |n| {
        !n.run_dir.join("secrets").join("stale-task").exists()
    });
    assert!(node.run_dir.join("secrets").join(&task.id).exists());

    // Nowhere else.
    let outputs = [
        (
            "secret inspect",
            node.shoal_ok(&["secret", "inspect", "db_pw"]),
        ),
        (
            "secret inspect --format json",
            node.shoal_ok(&["secret", "inspect", "--format", "json", "db_pw"]),
        ),
        ("secret ls", node.shoal_ok(&["secret", "ls"])),
        (
            "secret ls --format json",
            node.shoal_ok(&["secret", "ls", "--format", "json"]),
        ),
        (
            "service inspect",
            node.shoal_ok(&["service", "inspect", "app"]),
        ),
        (
            "service inspect --pretty",
            node.shoal_ok(&["service", "inspect", "--pretty", "app"]),
        ),
        (
            "service ps --format json",
            node.shoal_ok(&["service", "ps", "--format", "json", "app"]),
        ),
        (
            "service ls --format json",
            node.shoal_ok(&["service", "ls", "--format", "json"]),
        ),
        ("service logs", logs.clone()),
        (
            "containerd's container record",
            node.ctr(&["containers", "ls"]),
        ),
    ];
    for (what, text) in &outputs {
        assert_nowhere(what, text, &secret);
    }
    let inspect = node.shoal_ok(&["secret", "inspect", "db_pw"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&inspect).unwrap();
    assert_eq!(rows[0]["Name"], "db_pw");
    assert_eq!(rows[0]["Services"], "app");
    let service = node.shoal_ok(&["service", "inspect", "app"]);
    assert!(
        service.contains("db_pw"),
        "the service names its secret: {service}"
    );

    // The shipped policy: anyone may list (names, never data), only root or group shoal create.
    let reader = shoal_tests::dbus::reader_user().expect("reader user");
    let run_as = |args: &[&str], stdin: &[u8]| {
        use std::io::Write;
        let mut child = shoal_tests::dbus::command_as(reader, &[], shoal_tests::node::bin("shoal"))
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", node.bus.address())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let ls = run_as(&["secret", "ls", "--format", "json"], b"");
    assert!(ls.status.success(), "{ls:?}");
    let listed = String::from_utf8_lossy(&ls.stdout);
    assert!(listed.contains("db_pw"), "{listed}");
    assert_nowhere("secret ls as another user", &listed, &secret);
    let create = run_as(&["secret", "create", "mine", "-"], b"not-allowed");
    assert!(!create.status.success(), "a reader created a secret");
    assert!(
        String::from_utf8_lossy(&create.stderr).contains("permission denied"),
        "{create:?}"
    );

    // In use: refused, naming the service.
    let rm = node.shoal(&["secret", "rm", "db_pw"]);
    assert!(!rm.status.success(), "a secret in use was removed");
    let err = String::from_utf8_lossy(&rm.stderr);
    assert!(
        err.contains("in use by the following services: app"),
        "{err}"
    );
    assert!(node.shoal_ok(&["secret", "ls", "-q"]).contains(id.trim()));

    // `--secret-rm` and `--secret-add` roll the service; the spec `service rollback` would go
    // back to still holds the secret, and the refusal says so.
    node.shoal_ok(&[
        "service",
        "update",
        "--secret-rm",
        "db_pw",
        "--config-rm",
        "app_conf",
        "app",
    ]);
    let rm = node.shoal(&["secret", "rm", "db_pw"]);
    assert!(
        !rm.status.success(),
        "a secret the rollback spec names was removed"
    );
    let err = String::from_utf8_lossy(&rm.stderr);
    assert!(
        err.contains("`service rollback` would go back to it"),
        "{err}"
    );
    node.shoal_ok(&[
        "service",
        "update",
        "--secret-add",
        "source=db_pw,target=again,mode=0440",
        "app",
    ]);
    node.wait_for("the task with the added secret only", LONG, |n| {
        let logs = n.shoal_ok(&["service", "logs", "app"]);
        n.running("app").len() == 1
            && logs.contains("plain_sum=\n")
            && logs.contains("owned_sum=\n")
    });
    let pretty = node.shoal_ok(&["service", "inspect", "--pretty", "app"]);
    assert!(
        pretty.contains("db_pw:\t/run/secrets/again (uid 0, gid 0, mode 0440)"),
        "{pretty}"
    );
    assert_nowhere("service inspect --pretty", &pretty, &secret);

    // Once the service is gone, the task's files go with its container and the secret may go.
    node.shoal_ok(&["service", "rm", "app"]);
    node.wait_for("the task's secret files removed", LONG, |n| {
        std::fs::read_dir(n.run_dir.join("secrets"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    });
    node.wait_for("the secret removable", LONG, |n| {
        n.shoal(&["secret", "rm", "db_pw"]).status.success()
    });
    node.shoal_ok(&["config", "rm", "app_conf"]);
    assert_eq!(node.shoal_ok(&["secret", "ls", "-q"]).trim(), "");

    // Last: shoald's own log never held it.
    let log = node.log();
    assert!(log.contains("created"), "the log says what happened: {log}");
    assert_nowhere("shoald's log", &log, &secret);
    assert_nowhere("shoald's log", &log, &config);
}

#[test]
fn a_stack_file_secret_change_at_reload_rolls_the_service_to_the_new_content() {
    let node = Node::start();
    let img = image(&node, "bb");
    let first = secret_value("v1");
    let second = secret_value("v2");
    let dir = node.stacks_dir.join("secrets");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pw.txt"), &first).unwrap();
    let cmd =
        format!("echo sum=$(sha256sum < /run/secrets/db_password | cut -d' ' -f1); {SLEEPER}");
    node.write_stack(
        "shop",
        &format!(
            r#"[secrets.db_password]
file = "secrets/pw.txt"

[services.app]
image = "{img}"
command = ["sh", "-c", '''{cmd}''']
secrets = ["db_password"]
"#
        ),
    );
    node.shoal_ok(&["reload"]);
    let sum_of_running = |n: &Node| -> Option<String> {
        let running = n.running("shop_app");
        if running.len() != 1 {
            return None;
        }
        let logs = n.shoal_ok(&["service", "logs", "shop_app"]);
        logs.lines()
            .filter(|l| l.contains(&running[0].id[..12]))
            .find_map(|l| value(l, "sum"))
    };
    node.wait_for("the task with the first secret", LONG, |n| {
        sum_of_running(n) == Some(sha256(&first))
    });
    let versions = |n: &Node| -> Vec<serde_json::Value> {
        serde_json::from_str(&n.shoal_ok(&["secret", "ls", "--format", "json"])).unwrap()
    };
    let v1 = versions(&node);
    assert_eq!(v1.len(), 1, "{v1:?}");
    assert_eq!(v1[0]["Name"], "shop_db_password", "Swarm's STACK_NAME");
    assert_eq!(v1[0]["Stack"], "shop");

    // A reload with the same content changes nothing.
    let out = node.shoal_ok(&["reload"]);
    assert_eq!(versions(&node).len(), 1, "{out}");

    // New content: a new version, and the service rolls to it.
    std::fs::write(dir.join("pw.txt"), &second).unwrap();
    node.shoal_ok(&["reload"]);
    node.wait_for("the task with the second secret", LONG, |n| {
        sum_of_running(n) == Some(sha256(&second))
    });
    let v2 = versions(&node);
    let current: Vec<_> = v2.iter().filter(|r| r["Current"] == "true").collect();
    assert_eq!(current.len(), 1, "{v2:?}");
    assert_ne!(current[0]["Id"], v1[0]["Id"], "a new version");

    // The old version is kept while `service rollback` could go back to it, and removed once
    // nothing can: after another change of the service.
    node.write_stack(
        "shop",
        &format!(
            r#"[secrets.db_password]
file = "secrets/pw.txt"

[services.app]
image = "{img}"
command = ["sh", "-c", '''{cmd}''']
secrets = ["db_password"]
env = {{ A = "1" }}
"#
        ),
    );
    node.shoal_ok(&["reload"]);
    node.wait_for("the old version collected", LONG, |n| {
        versions(n).len() == 1
    });

    // A Compose file's secret is read by the CLI, relative to the Compose file.
    let compose_dir = node.dir.path().join("compose");
    std::fs::create_dir_all(&compose_dir).unwrap();
    let third = secret_value("compose");
    std::fs::write(compose_dir.join("token.txt"), &third).unwrap();
    // `$$` is a literal `$` in a Compose file.
    let sleeper = SLEEPER.replace('$', "$$");
    std::fs::write(
        compose_dir.join("docker-stack.yml"),
        format!(
            "services:\n  worker:\n    image: \"{img}\"\n    command: [\"sh\", \"-c\", \"echo sum=$$(sha256sum < /run/secrets/api | cut -d' ' -f1); {sleeper}\"]\n    secrets:\n      - source: token\n        target: api\n        mode: 0400\nsecrets:\n  token:\n    file: ./token.txt\n"
        ),
    )
    .unwrap();
    node.shoal_ok(&[
        "stack",
        "deploy",
        "--detach",
        "-c",
        compose_dir.join("docker-stack.yml").to_str().unwrap(),
        "ops",
    ]);
    node.wait_for("the Compose stack's task with its secret", LONG, |n| {
        n.running("ops_worker").len() == 1
            && value(&n.shoal_ok(&["service", "logs", "ops_worker"]), "sum") == Some(sha256(&third))
    });

    let log = node.log();
    for s in [&first, &second, &third] {
        assert_nowhere("shoald's log", &log, s);
        for svc in ["shop_app", "ops_worker"] {
            assert_nowhere("service logs", &node.shoal_ok(&["service", "logs", svc]), s);
            assert_nowhere(
                "service inspect",
                &node.shoal_ok(&["service", "inspect", svc]),
                s,
            );
        }
    }
}

/// A node of a cluster on `lan`: the bootstrapping manager (`through` is `None`), or a node of
/// `role` joining through `through`.
fn cluster_node(lan: &Lan, tok: &str, through: Option<&Node>, role: &str) -> Node {
    let extra_config = match through {
        None => format!("[cluster]\nbootstrap = true\ntoken_file = \"{tok}\"\n"),
        Some(m) => format!(
            "[cluster]\njoin = [\"{}\"]\ntoken_file = \"{tok}\"\n",
            m.addr
        ),
    };
    Node::start_with(NodeOptions {
        node_config: format!("role = \"{role}\""),
        extra_config,
        host: Some(lan.host()),
        ..Default::default()
    })
}

#[test]
fn a_secret_reaches_the_worker_that_runs_its_task_and_no_other_node() {
    let lan = Lan::new();
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("join-token");
    std::fs::write(&tok, "secrets-test-provisioning-secret-42").unwrap();
    let tok = tok.display().to_string();
    let manager = cluster_node(&lan, &tok, None, "manager");
    let w1 = cluster_node(&lan, &tok, Some(&manager), "worker");
    let w2 = cluster_node(&lan, &tok, Some(&manager), "worker");
    manager.wait_for("three ready nodes", LONG, |m| {
        let out = m.shoal_ok(&["node", "ls", "--format", "json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
        rows.len() == 3 && rows.iter().all(|r| r["status"] == "ready")
    });
    let info: serde_json::Value =
        serde_json::from_str(&w1.shoal_ok(&["info", "--format", "json"])).unwrap();
    let w1_id = info["node_id"].as_str().unwrap().to_string();
    let w1_name = info["node_name"].as_str().unwrap().to_string();

    // Every node reads the image at the same path, as NixOS hosts share a store path.
    let archive = dir.path().join("bb.tar");
    images::write_oci_archive(&archive, false, "example.org/bb:1");
    let img = format!("oci-archive:{}", archive.display());
    let secret = secret_value("cluster");
    let file = dir.path().join("pw.txt");
    std::fs::write(&file, &secret).unwrap();
    // Created from the other worker's CLI: forwarded to the leader.
    w2.shoal_ok(&["secret", "create", "pw", file.to_str().unwrap()]);
    let constraint = format!("node.id=={w1_id}");
    let cmd = format!("echo sum=$(sha256sum < /run/secrets/pw | cut -d' ' -f1); {SLEEPER}");
    manager.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "app",
        "--secret",
        "pw",
        "--constraint",
        &constraint,
        &img,
        "sh",
        "-c",
        &cmd,
    ]);
    manager.wait_for("the task on w1 reading the secret", LONG, |m| {
        m.running("app").len() == 1
            && value(&m.shoal_ok(&["service", "logs", "app"]), "sum") == Some(sha256(&secret))
    });
    assert_eq!(manager.running("app")[0].node, w1_name);
    let files = |n: &Node| -> usize {
        std::fs::read_dir(n.run_dir.join("secrets"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(files(&w1), 1, "w1 holds the task's secret files");
    assert_eq!(files(&w2), 0, "w2 runs no task using it");
    assert_eq!(files(&manager), 0, "the manager runs no task using it");
    for n in [&manager, &w1, &w2] {
        assert_nowhere("shoald's log", &n.log(), &secret);
    }
}

#[test]
fn a_follower_managers_reload_sends_its_secret_files_to_the_leader() {
    let lan = Lan::new();
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("join-token");
    std::fs::write(&tok, "secrets-test-provisioning-secret-42").unwrap();
    let tok = tok.display().to_string();
    let m1 = cluster_node(&lan, &tok, None, "manager");
    let m2 = cluster_node(&lan, &tok, Some(&m1), "manager");
    m1.wait_for("two raft voters", LONG, |m| {
        let out = m.shoal_ok(&["info", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["cluster"]["raft_voters"].as_str() == Some("2")
    });
    let archive = dir.path().join("bb.tar");
    images::write_oci_archive(&archive, false, "example.org/bb:1");
    let img = format!("oci-archive:{}", archive.display());
    // The secret file is on the follower; the leader applies the stack from what the follower
    // sends (it never reads the follower's files).
    let secret = secret_value("follower");
    std::fs::create_dir_all(m2.stacks_dir.join("secrets")).unwrap();
    std::fs::write(m2.stacks_dir.join("secrets/pw.txt"), &secret).unwrap();
    let cmd = format!("echo sum=$(sha256sum < /run/secrets/pw | cut -d' ' -f1); {SLEEPER}");
    std::fs::write(
        m2.stacks_dir.join("demo.toml"),
        format!(
            r#"[secrets.pw]
file = "secrets/pw.txt"

[services.app]
image = "{img}"
command = ["sh", "-c", '''{cmd}''']
secrets = ["pw"]
"#
        ),
    )
    .unwrap();
    let info: serde_json::Value =
        serde_json::from_str(&m2.shoal_ok(&["info", "--format", "json"])).unwrap();
    assert_eq!(info["is_leader"], false, "m2 is a follower: {info}");
    let out = m2.shoal_ok(&["reload"]);
    assert!(out.contains("added: demo"), "{out}");
    m1.wait_for("the stack's task reading the secret", LONG, |m| {
        m.running("demo_app").len() == 1
            && value(&m.shoal_ok(&["service", "logs", "demo_app"]), "sum") == Some(sha256(&secret))
    });
    for n in [&m1, &m2] {
        assert_nowhere("shoald's log", &n.log(), &secret);
    }
}
