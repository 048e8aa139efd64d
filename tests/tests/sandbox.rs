//! The container sandbox on real parts (shoald, containerd, runc): Docker's default seccomp
//! profile, capabilities, `oomScoreAdj`, and the service keys that tighten or loosen them, as a
//! process inside the container sees them; and reservations that no node can meet.

use std::time::Duration;

use shoal_tests::images::{self, SLEEPER};
use shoal_tests::node::Node;

const LONG: Duration = Duration::from_secs(120);

fn image(node: &Node) -> String {
    let path = node.dir.path().join("bb.tar");
    images::write_oci_archive(&path, true, "example.org/bb:1");
    format!("oci-archive:{}", path.display())
}

/// A service that runs `probe` (a shell script printing `key=value` lines) and then sleeps.
fn service(name: &str, img: &str, probe: &str, extra: &str) -> String {
    format!(
        r#"[services.{name}]
image = "{img}"
command = ["sh", "-c", '''{probe}; echo done=1; {SLEEPER}''']
{extra}
"#
    )
}

/// The `key=value` lines the task of `service` printed, once it printed `done=1`.
fn probe_output(node: &Node, service: &str) -> String {
    let mut out = String::new();
    node.wait_for(&format!("the probe of {service}"), LONG, |n| {
        out = n.shoal_ok(&["service", "logs", service]);
        out.contains("done=1")
    });
    out
}

/// The value of the line `key=value` (after the `TASK | ` prefix `service logs` adds).
fn value<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| {
            let message = l.split_once("| ").map_or(l, |(_, m)| m);
            message.strip_prefix(&format!("{key}=")).map(str::trim)
        })
        .unwrap_or_else(|| panic!("no line {key}=... in the output:\n{out}"))
}

#[test]
fn the_default_sandbox_and_the_service_keys_are_what_the_container_gets() {
    let node = Node::start();
    let img = image(&node);
    // Each probe prints the exit status of what it tries, and the error busybox prints.
    let unshare = "unshare -U true 2>/tmp/err; echo unshare=$? $(cat /tmp/err)";
    let chown = "touch /tmp/f && chown 1:1 /tmp/f 2>/tmp/err; echo chown=$? $(cat /tmp/err)";
    let write_root = "touch /probe 2>/tmp/err; echo write_root=$? $(cat /tmp/err)";
    let common = format!(
        "{unshare}; {chown}; {write_root}; echo oom=$(cat /proc/self/oom_score_adj); \
         echo nofile=$(ulimit -n); echo pid1=$(xargs -0 </proc/1/cmdline); \
         echo timer_list=$(wc -c </proc/timer_list); \
         echo somaxconn=$(cat /proc/sys/net/core/somaxconn)"
    );
    let stack = [
        service("plain", &img, &common, ""),
        service(
            "tight",
            &img,
            &common,
            r#"cap_drop = ["ALL"]
read_only = true
tmpfs = ["/tmp"]
init = true
ulimits = { nofile = { soft = 1234, hard = 2345 } }
sysctls = { "net.core.somaxconn" = "777" }"#,
        ),
        service(
            "loose",
            &img,
            &common,
            r#"security_opt = ["seccomp=unconfined"]"#,
        ),
    ]
    .join("\n");
    let file = node.dir.path().join("box.toml");
    std::fs::write(&file, stack).unwrap();
    node.shoal_ok(&["stack", "deploy", "-c", file.to_str().unwrap(), "box"]);

    // Docker's defaults.
    let plain = probe_output(&node, "box_plain");
    assert!(
        value(&plain, "unshare").starts_with("1 ")
            && value(&plain, "unshare").contains("Operation not permitted"),
        "the seccomp profile blocks unshare with EPERM:\n{plain}"
    );
    assert_eq!(
        value(&plain, "chown"),
        "0",
        "the default capabilities allow chown:\n{plain}"
    );
    assert_eq!(value(&plain, "write_root"), "0", "the root is writable");
    assert_eq!(
        value(&plain, "oom"),
        "0",
        "a container is as likely as anything to be killed under memory pressure"
    );
    // Readable on the host, empty in the container: masked as runc masks it.
    assert!(!std::fs::read("/proc/timer_list").unwrap().is_empty());
    assert_eq!(
        value(&plain, "timer_list"),
        "0",
        "/proc/timer_list is masked:\n{plain}"
    );
    assert!(
        !value(&plain, "pid1").contains("shoal-init"),
        "no init unless asked"
    );

    // Tightened: no capabilities, a read-only root, an init, ulimits and a sysctl.
    let tight = probe_output(&node, "box_tight");
    assert!(
        value(&tight, "chown").starts_with("1 ")
            && value(&tight, "chown").contains("Operation not permitted"),
        "cap_drop = [\"ALL\"] makes chown fail:\n{tight}"
    );
    assert!(
        value(&tight, "write_root").starts_with("1 ")
            && value(&tight, "write_root").contains("Read-only file system"),
        "read_only makes / read-only:\n{tight}"
    );
    assert_eq!(value(&tight, "nofile"), "1234", "ulimits reach the process");
    assert!(
        value(&tight, "pid1").starts_with("/sbin/shoal-init -- sh -c"),
        "init = true runs tini as PID 1:\n{tight}"
    );
    assert_eq!(value(&tight, "somaxconn"), "777", "the sysctl is set");
    assert_eq!(value(&tight, "oom"), "0");

    // Loosened: without the seccomp filter, unshare is no longer refused by it.
    let loose = probe_output(&node, "box_loose");
    assert_eq!(
        value(&loose, "unshare"),
        "0",
        "seccomp=unconfined lets unshare through:\n{loose}"
    );
}

#[test]
fn a_reservation_larger_than_any_node_leaves_the_task_pending_with_the_reason() {
    let node = Node::start();
    let img = image(&node);
    node.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "small",
        "--reserve-memory",
        "16M",
        "--reserve-cpu",
        "0.1",
        &img,
        "sh",
        "-c",
        SLEEPER,
    ]);
    node.wait_for("the small reservation to run", LONG, |n| {
        n.running("small").len() == 1
    });
    node.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "huge",
        "--reserve-memory",
        "64P",
        &img,
        "sh",
        "-c",
        SLEEPER,
    ]);
    let mut error = String::new();
    node.wait_for("the huge task to say why it waits", LONG, |n| {
        let tasks = n.tasks("huge");
        error = tasks.first().map(|t| t.error.clone()).unwrap_or_default();
        !error.is_empty()
    });
    assert!(
        error.starts_with("no suitable node (insufficient resources on 1 node: a task reserves "),
        "{error}"
    );
    assert!(
        error.contains("of memory, the most free on a node is"),
        "{error}"
    );
    let tasks = node.tasks("huge");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].state, "pending", "{tasks:?}");
    assert!(node.running("small").len() == 1, "the small one still runs");
}
