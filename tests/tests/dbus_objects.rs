//! The D-Bus object tree of a real `shoald` (real containerd, the shipped policy on a private
//! system-like bus), explored and driven with clients that are not ours: `busctl`, `gdbus`
//! (libglib2.0-bin) and a Python script on Debian's python3-dbus; the same changes as a user
//! outside group `shoal` are refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use shoal_tests::dbus::{TestUser, command_as, reader_user};
use shoal_tests::images::{self, SLEEPER};
use shoal_tests::node::{Node, NodeOptions};

const LONG: Duration = Duration::from_secs(120);
const BUS: &str = "org.shoal.Shoal1";
const SERVICE: &str = "org.shoal.Shoal1.Service";
const WEB: &str = "/org/shoal/Shoal1/service/shop_5fweb";
fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn busctl(node: &Node, args: &[&str]) -> Output {
    Command::new("busctl")
        .arg(format!("--address={}", node.bus.address()))
        .args(args)
        .output()
        .expect("run busctl (package systemd)")
}

fn busctl_ok(node: &Node, args: &[&str]) -> String {
    let out = busctl(node, args);
    assert!(out.status.success(), "busctl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn gdbus(user: Option<TestUser>, node: &Node, args: &[&str]) -> Output {
    let mut cmd = match user {
        Some(u) => command_as(u, &[], "gdbus"),
        None => Command::new("gdbus"),
    };
    // `gdbus SUBCOMMAND --address ADDRESS ...`
    cmd.arg(args[0])
        .args(["--address", node.bus.address()])
        .args(&args[1..])
        .output()
        .expect("run gdbus (package libglib2.0-bin)")
}

/// `gdbus call` of `Service.Scale` on the `shop_web` object (gdbus types the argument from the
/// introspection data).
fn gdbus_scale(user: Option<TestUser>, node: &Node, replicas: u64) -> Output {
    let n = replicas.to_string();
    gdbus(
        user,
        node,
        &[
            "call",
            "--dest",
            BUS,
            "--object-path",
            WEB,
            "--method",
            "org.shoal.Shoal1.Service.Scale",
            &n,
        ],
    )
}

/// The path of `node`'s own object, from `Manager.GetNode("self")`.
fn own_node_path(node: &Node) -> String {
    let out = busctl_ok(
        node,
        &[
            "call",
            BUS,
            "/org/shoal/Shoal1",
            "org.shoal.Shoal1.Manager",
            "GetNode",
            "s",
            "self",
        ],
    );
    let path = out
        .trim()
        .trim_start_matches("o ")
        .trim_matches('"')
        .to_string();
    assert!(path.starts_with("/org/shoal/Shoal1/node/"), "{out}");
    path
}

fn python_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/scale_and_watch.py")
}

/// Debian's interpreter: python3-dbus and python3-gi belong to it, not to a `python3` that may
/// come first on the PATH.
fn python(user: Option<TestUser>, node: &Node, service: &str, replicas: u64) -> Output {
    let mut cmd = match user {
        Some(u) => command_as(u, &[], "/usr/bin/python3"),
        None => Command::new("/usr/bin/python3"),
    };
    cmd.arg(python_script())
        .args([node.bus.address(), service, &replicas.to_string()])
        .output()
        .expect("run /usr/bin/python3 (packages python3-dbus, python3-gi)")
}

/// A monitor writing into a file until it is stopped.
struct Monitor {
    child: Child,
    out: PathBuf,
}

impl Monitor {
    fn start(mut cmd: Command, out: PathBuf) -> Monitor {
        let file = std::fs::File::create(&out).unwrap();
        let child = cmd
            .stdout(Stdio::from(file))
            .stderr(Stdio::null())
            .spawn()
            .expect("start a bus monitor");
        Monitor { child, out }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn wait_for(&self, node: &Node, what: &str, cond: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + LONG;
        while !cond(&self.text()) {
            assert!(
                Instant::now() < deadline,
                "monitor never showed {what}:\n{}\n--- shoald log ---\n{}",
                self.text(),
                node.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_property(node: &Node, path: &str, iface: &str, prop: &str, want: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        let out = busctl(node, &["get-property", BUS, path, iface, prop]);
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} {prop} stayed {got:?} ({}), want {want:?}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The states of each task object `busctl monitor --json=short` saw, from its
/// `InterfacesAdded` and then its `PropertiesChanged` signals.
fn task_journeys(json_lines: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for msg in json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let data = &msg["payload"]["data"];
        let (path, state) = match msg["member"].as_str() {
            Some("InterfacesAdded") => (
                data[0].as_str(),
                data[1]["org.shoal.Shoal1.Task"]["CurrentState"]["data"].as_str(),
            ),
            Some("PropertiesChanged") if data[0] == "org.shoal.Shoal1.Task" => (
                msg["path"].as_str(),
                data[1]["CurrentState"]["data"].as_str(),
            ),
            _ => continue,
        };
        if let (Some(path), Some(state)) = (path, state) {
            out.entry(path.to_string())
                .or_default()
                .push(state.to_string());
        }
    }
    out
}

fn deploy_web(node: &Node) {
    let path = node.dir.path().join("bb.tar");
    images::write_oci_archive(&path, true, "example.org/bb:1");
    let stack = node.dir.path().join("shop.toml");
    std::fs::write(
        &stack,
        format!(
            "[services.web]\nimage = \"oci-archive:{}\"\nreplicas = 1\ncommand = [\"sh\", \"-c\", \"{SLEEPER}\"]\n",
            path.display()
        ),
    )
    .unwrap();
    node.shoal_ok(&["stack", "deploy", "-c", stack.to_str().unwrap(), "shop"]);
    node.wait_for("1 running task", LONG, |n| n.running("shop_web").len() == 1);
}

#[test]
fn busctl_gdbus_and_python_explore_and_drive_the_object_tree() {
    let node = Node::start();
    deploy_web(&node);
    wait_property(&node, WEB, SERVICE, "RunningReplicas", "t 1");

    // busctl tree: every kind of object, paths escaped as systemd escapes them.
    let node_path = own_node_path(&node);
    let tree = busctl_ok(&node, &["tree", "--list", BUS]);
    for path in [WEB, "/org/shoal/Shoal1/stack/shop", node_path.as_str()] {
        assert!(tree.lines().any(|l| l.trim() == path), "{path} in:\n{tree}");
    }
    let task = node.running("shop_web")[0].id.clone();
    assert!(
        tree.lines()
            .any(|l| l.trim().starts_with("/org/shoal/Shoal1/task/")),
        "task {task} in:\n{tree}"
    );
    assert_eq!(
        busctl_ok(
            &node,
            &[
                "get-property",
                BUS,
                &node_path,
                "org.shoal.Shoal1.Node",
                "Status"
            ]
        )
        .trim(),
        "s \"ready\""
    );
    assert_eq!(
        busctl_ok(&node, &["get-property", BUS, WEB, SERVICE, "Mode"]).trim(),
        "s \"replicated\""
    );

    // busctl monitor and gdbus monitor, then busctl call on the service object: the monitors
    // show the new tasks moving through their states.
    let mut busctl_monitor = Command::new("busctl");
    busctl_monitor
        .arg(format!("--address={}", node.bus.address()))
        .args(["monitor", "--json=short", BUS]);
    let busctl_monitor = Monitor::start(busctl_monitor, node.dir.path().join("busctl-monitor"));
    let mut gdbus_monitor = Command::new("gdbus");
    gdbus_monitor.args(["monitor", "--address", node.bus.address(), "--dest", BUS]);
    let gdbus_monitor = Monitor::start(gdbus_monitor, node.dir.path().join("gdbus-monitor"));
    std::thread::sleep(Duration::from_millis(500));
    // Four new tasks: a slow pass may announce a task already running, so the test looks for
    // one that was seen both before and after it ran among several.
    busctl_ok(&node, &["call", BUS, WEB, SERVICE, "Scale", "t", "5"]);
    node.wait_for("5 running tasks", LONG, |n| {
        n.running("shop_web").len() == 5
    });
    busctl_monitor.wait_for(&node, "four new tasks seen running", |t| {
        task_journeys(t)
            .values()
            .filter(|s| s.last().map(String::as_str) == Some("running"))
            .count()
            >= 4
    });
    gdbus_monitor.wait_for(&node, "InterfacesAdded and PropertiesChanged of tasks", |t| {
        let added = t
            .lines()
            .filter(|l| {
                l.contains("org.freedesktop.DBus.ObjectManager.InterfacesAdded (objectpath '/org/shoal/Shoal1/task/")
            })
            .count();
        let changed = t
            .lines()
            .filter(|l| {
                l.contains(
                    "org.freedesktop.DBus.Properties.PropertiesChanged ('org.shoal.Shoal1.Task'",
                ) && l.contains("'CurrentState': <'")
            })
            .count();
        added >= 4 && changed >= 1
    });
    let monitored = busctl_monitor.text();
    assert!(
        monitored.contains("\"member\":\"InterfacesAdded\""),
        "InterfacesAdded for the new tasks:\n{monitored}"
    );
    // The tasks are seen moving through their states: announced before they ran, then
    // running (one signal per pass, so fast states may be skipped, never the latest).
    let journeys = task_journeys(&monitored);
    assert!(
        journeys.values().any(|s| s.len() >= 2
            && s[0] != "running"
            && s.last().map(String::as_str) == Some("running")),
        "a new task was seen before and after it ran: {journeys:?}"
    );
    drop(busctl_monitor);
    drop(gdbus_monitor);

    // gdbus: introspect the service object, call its Scale (gdbus types the argument from the
    // introspection data).
    let out = gdbus(
        None,
        &node,
        &["introspect", "--dest", BUS, "--object-path", WEB],
    );
    assert!(out.status.success(), "{}", text(&out));
    let xml = text(&out);
    assert!(xml.contains("interface org.shoal.Shoal1.Service"), "{xml}");
    assert!(xml.contains("Scale("), "{xml}");
    assert!(xml.contains("readonly t RunningReplicas"), "{xml}");
    let out = gdbus_scale(None, &node, 2);
    assert!(out.status.success(), "{}", text(&out));
    wait_property(&node, WEB, SERVICE, "Replicas", "t 2");

    // Python (python3-dbus): GetManagedObjects, Scale through the service object, and the
    // tasks' PropertiesChanged until 4 run.
    let out = python(None, &node, "shop_web", 4);
    assert!(out.status.success(), "python: {}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["service_path"], WEB, "{report}");
    assert_eq!(report["running"], 4, "{report}");
    assert!(report["objects"].as_u64().unwrap() >= 6, "{report}");
    // The new tasks reach python by signals only: PropertiesChanged as they move through their
    // states, or, when the coalescing pass ran only after they had started (a loaded machine),
    // InterfacesAdded announcing them already running. That every state change of a task
    // object is sent is checked deterministically in daemon/dbus/tests/objects.rs.
    assert!(
        report["properties_changed"].as_u64().unwrap() >= 1
            || report["interfaces_added"].as_u64().unwrap() >= 2,
        "{report}"
    );
    let states = report["states"].as_object().unwrap();
    let new_running = states
        .values()
        .filter(|s| s.as_array().unwrap().last() == Some(&serde_json::json!("running")))
        .count();
    assert!(new_running >= 2, "python saw the new tasks start: {report}");
    assert_eq!(node.running("shop_web").len(), 4);

    // A user outside group `shoal` may read but not change, whichever client it uses.
    let reader = reader_user().unwrap();
    let get = command_as(reader, &[], "busctl")
        .arg(format!("--address={}", node.bus.address()))
        .args(["get-property", BUS, WEB, SERVICE, "Replicas"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "t 4",
        "{}",
        text(&get)
    );
    let call = command_as(reader, &[], "busctl")
        .arg(format!("--address={}", node.bus.address()))
        .args(["call", BUS, WEB, SERVICE, "Scale", "t", "1"])
        .output()
        .unwrap();
    assert!(
        !call.status.success() && text(&call).contains("Access denied"),
        "{}",
        text(&call)
    );
    let out = gdbus_scale(Some(reader), &node, 1);
    assert!(!out.status.success(), "gdbus as a reader: {}", text(&out));
    assert!(text(&out).contains("AccessDenied"), "{}", text(&out));
    let out = python(Some(reader), &node, "shop_web", 1);
    assert_eq!(
        out.status.code(),
        Some(3),
        "python as a reader: {}",
        text(&out)
    );
    assert!(text(&out).contains("denied"), "{}", text(&out));
    wait_property(&node, WEB, SERVICE, "Replicas", "t 4");
    assert_eq!(
        node.running("shop_web").len(),
        4,
        "the refused calls changed nothing"
    );

    // Removing the stack through its object removes it, its service and their objects.
    let removed = busctl_ok(
        &node,
        &[
            "call",
            BUS,
            "/org/shoal/Shoal1/stack/shop",
            "org.shoal.Shoal1.Stack",
            "Remove",
        ],
    );
    assert_eq!(removed.trim(), "as 1 \"shop_web\"");
    node.wait_for("the stack's objects to go", LONG, |n| {
        // busctl fails when an object goes while it walks the tree: try again.
        let out = busctl(n, &["tree", "--list", BUS]);
        let tree = String::from_utf8_lossy(&out.stdout);
        out.status.success()
            && !tree.contains("/org/shoal/Shoal1/stack/shop")
            && !tree.contains(WEB)
    });
}

#[test]
fn a_worker_shows_the_clusters_objects_and_acts_through_the_leader() {
    let secrets = tempfile::tempdir().unwrap();
    let tok = secrets.path().join("join-token");
    std::fs::write(&tok, "dbus-objects-test-provisioning-secret").unwrap();
    let manager = Node::start_with(NodeOptions {
        extra_config: format!(
            "[cluster]\nbootstrap = true\ntoken_file = \"{}\"\n",
            tok.display()
        ),
        ..Default::default()
    });
    let worker = Node::start_with(NodeOptions {
        node_config: "role = \"worker\"".into(),
        extra_config: format!(
            "[cluster]\njoin = [\"127.0.0.1:{}\"]\ntoken_file = \"{}\"\n",
            manager.node_port,
            tok.display()
        ),
        ..Default::default()
    });

    // The worker holds no cluster state: its objects are the leader's, both nodes included.
    worker.wait_for("both node objects on the worker's bus", LONG, |w| {
        let tree = busctl(w, &["tree", "--list", BUS]);
        String::from_utf8_lossy(&tree.stdout)
            .lines()
            .filter(|l| l.trim().starts_with("/org/shoal/Shoal1/node/"))
            .count()
            == 2
    });
    let worker_path = own_node_path(&worker);
    wait_property(
        &worker,
        &worker_path,
        "org.shoal.Shoal1.Node",
        "Role",
        "s \"worker\"",
    );
    wait_property(
        &worker,
        &worker_path,
        "org.shoal.Shoal1.Node",
        "Status",
        "s \"ready\"",
    );

    // A service created on the manager appears on the worker's bus with its counts.
    let image = secrets.path().join("bb.tar");
    images::write_oci_archive(&image, true, "example.org/bb:1");
    manager.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "2",
        &format!("oci-archive:{}", image.display()),
        "sleep",
        "3600",
    ]);
    let web = "/org/shoal/Shoal1/service/web";
    wait_property(&worker, web, SERVICE, "RunningReplicas", "t 2");

    // Scaling through the worker's object reaches the leader.
    busctl_ok(&worker, &["call", BUS, web, SERVICE, "Scale", "t", "3"]);
    manager.wait_for("3 running tasks", LONG, |m| m.running("web").len() == 3);
    wait_property(&worker, web, SERVICE, "RunningReplicas", "t 3");
    wait_property(&manager, web, SERVICE, "RunningReplicas", "t 3");

    // Draining the worker through its object on the manager's bus: the worker's object says so
    // on the worker's own bus, and its tasks move to the manager.
    busctl_ok(
        &manager,
        &[
            "call",
            BUS,
            &worker_path,
            "org.shoal.Shoal1.Node",
            "SetAvailability",
            "s",
            "drain",
        ],
    );
    wait_property(
        &worker,
        &worker_path,
        "org.shoal.Shoal1.Node",
        "Availability",
        "s \"drain\"",
    );
    manager.wait_for(
        "3 running tasks on the manager, none on the worker",
        LONG,
        |m| {
            m.running("web").len() == 3
                && m.container_tasks().len() == 3
                && worker.container_tasks().is_empty()
        },
    );
}
