//! Images and D-Bus signals on a real `shoald` (real containerd, the shipped policy on a private
//! bus): `shoal image ls` says what keeps each image, `shoal image prune` removes what nothing
//! needs (never the running image, the rollback image, or an image shoal did not pull), unused
//! images go by themselves after `[images] prune_after`, and the bus carries one `Reloaded` per
//! reload, `ServiceChanged` for stack deploys, removals and reloads, and `PropertiesChanged`
//! when the node's properties change.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::images::{ImageBuilder, SLEEPER};
use shoal_tests::node::{Node, NodeOptions};

const LONG: Duration = Duration::from_secs(120);

/// A distinct busybox image as an OCI archive in the node's directory: (reference, digest).
fn image(node: &Node, name: &str) -> (String, String) {
    let path = node.dir.path().join(format!("{name}.tar"));
    let digest = ImageBuilder::busybox()
        .file("etc/version", name)
        .write_oci_archive(&path, true, &format!("example.org/{name}:1"));
    (format!("oci-archive:{}", path.display()), digest)
}

fn images(node: &Node) -> Vec<Value> {
    let out = node.shoal_ok(&["image", "ls", "--format", "json"]);
    serde_json::from_str(&out).expect("image ls json")
}

/// Why the node keeps the image with `digest` (`""`: nothing needs it); `None`: not present.
fn kept_for(node: &Node, digest: &str) -> Option<String> {
    images(node)
        .iter()
        .filter(|i| i["digest"] == digest)
        .map(|i| i["in_use"].as_str().unwrap_or_default().to_string())
        .next()
}

fn present(node: &Node, digest: &str) -> bool {
    kept_for(node, digest).is_some()
}

fn create(node: &Node, name: &str, image: &str) {
    node.shoal_ok(&[
        "service", "create", "--name", name, image, "sh", "-c", SLEEPER,
    ]);
    node.wait_for("the service running", LONG, |n| n.running(name).len() == 1);
}

fn update_image(node: &Node, name: &str, image: &str) {
    // `service update` waits for the update to converge.
    node.shoal_ok(&["service", "update", "--image", image, name]);
    node.wait_for("the update done", LONG, |n| n.running(name).len() == 1);
}

#[test]
fn ls_says_what_keeps_each_image_and_prune_removes_only_what_nothing_needs() {
    let node = Node::start_with(NodeOptions {
        // Long enough that only prune removes anything here.
        extra_config: "[images]\nprune_after = \"24h\"\n".into(),
        ..Default::default()
    });
    let (a, a_digest) = image(&node, "a");
    let (b, b_digest) = image(&node, "b");
    let (c, c_digest) = image(&node, "c");
    let (d, d_digest) = image(&node, "d");

    create(&node, "web", &a);
    update_image(&node, "web", &b);
    update_image(&node, "web", &c);
    // An image someone else put in shoal's namespace (a record without shoal's mark, here for
    // A's content): never shoal's to remove.
    let foreign = "example.org/someone-else:1";
    let a_record = images(&node)
        .iter()
        .find(|i| i["digest"] == a_digest.as_str())
        .map(|i| i["name"].as_str().unwrap().to_string())
        .expect("A is listed");
    node.ctr(&["images", "tag", &a_record, foreign]);
    node.ctr(&["images", "label", foreign, "io.shoal.managed="]);

    // C runs, B is the rollback image, A is needed by nothing.
    node.wait_for("ls to show what keeps each image", LONG, |n| {
        kept_for(n, &c_digest).as_deref() == Some("task")
            && kept_for(n, &b_digest).as_deref() == Some("service")
    });
    let rows = images(&node);
    let a_rows: Vec<&Value> = rows
        .iter()
        .filter(|i| i["digest"] == a_digest.as_str())
        .collect();
    assert!(
        a_rows
            .iter()
            .all(|i| i["in_use"] == "" && i["size"].as_u64().unwrap() > 100_000),
        "{a_rows:?}"
    );
    assert!(
        a_rows
            .iter()
            .any(|i| i["name"] == foreign && i["managed"] == false),
        "{a_rows:?}"
    );
    let table = node.shoal_ok(&["image", "ls"]);
    let header = table.lines().next().unwrap_or_default();
    for col in [
        "REPOSITORY",
        "TAG",
        "IMAGE ID",
        "CREATED",
        "SIZE",
        "IN USE BY",
    ] {
        assert!(header.contains(col), "{table}");
    }
    let quiet = node.shoal_ok(&["image", "ls", "-q"]);
    let short = |d: &str| d.trim_start_matches("sha256:")[..12].to_string();
    for d in [&a_digest, &b_digest, &c_digest] {
        assert!(quiet.lines().any(|l| l == short(d)), "{quiet}");
    }

    // prune: A goes (all of shoal's records of it), B and C stay, and so does the foreign one.
    let out = node.shoal_ok(&["image", "prune", "-f"]);
    assert!(out.contains(&format!("deleted: {a_record}")), "{out}");
    // The foreign record still holds A's content: nothing of it is freed.
    assert!(out.contains("Total reclaimed space: 0B"), "{out}");
    let rows = images(&node);
    let names_of = |digest: &str| -> Vec<String> {
        rows.iter()
            .filter(|i| i["digest"] == digest)
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names_of(&a_digest),
        [foreign],
        "only the foreign record is left"
    );
    assert!(!names_of(&b_digest).is_empty() && !names_of(&c_digest).is_empty());
    assert!(
        node.log().contains("image removed") && node.log().contains(&a_record),
        "a log line names the removed image"
    );
    // The task kept running on C.
    assert_eq!(node.running("web").len(), 1);

    // A removed service's images go too.
    create(&node, "other", &d);
    assert_eq!(kept_for(&node, &d_digest).as_deref(), Some("task"));
    node.shoal_ok(&["service", "rm", "other"]);
    node.wait_for("other's image needed by nothing", LONG, |n| {
        kept_for(n, &d_digest).as_deref() == Some("")
    });
    let out = node.shoal_ok(&["image", "prune", "-f"]);
    assert!(!present(&node, &d_digest), "{:?}", images(&node));
    // D's own layer (its /etc/version) is freed at least.
    assert!(
        out.contains("Total reclaimed space: ") && !out.contains("Total reclaimed space: 0B"),
        "{out}"
    );

    // -a: the rollback image goes as well, never the running one...
    let out = node.shoal_ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("deleted: "), "{out}");
    assert!(!present(&node, &b_digest));
    assert_eq!(kept_for(&node, &c_digest).as_deref(), Some("task"));
    assert_eq!(node.running("web").len(), 1);
    // ...and a rollback then imports it again.
    node.shoal_ok(&["service", "rollback", "web"]);
    node.wait_for("the rollback onto B running", LONG, |n| {
        kept_for(n, &b_digest).as_deref() == Some("task") && n.running("web").len() == 1
    });

    // Prune is a change: a user outside group shoal is refused by the bus.
    let reader = shoal_tests::dbus::reader_user().unwrap();
    let out = shoal_tests::dbus::command_as(reader, &[], shoal_tests::node::bin("shoal"))
        .args(["image", "prune", "-f"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", node.bus.address())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let out = shoal_tests::dbus::command_as(reader, &[], shoal_tests::node::bin("shoal"))
        .args(["image", "ls"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", node.bus.address())
        .output()
        .unwrap();
    assert!(out.status.success(), "anyone may list images: {out:?}");
}

#[test]
fn unused_images_are_removed_after_the_grace_period_and_needed_ones_never() {
    let node = Node::start_with(NodeOptions {
        extra_config: "[images]\nprune_after = \"3s\"\n".into(),
        ..Default::default()
    });
    let (a, a_digest) = image(&node, "a");
    let (b, b_digest) = image(&node, "b");
    let (c, c_digest) = image(&node, "c");
    create(&node, "web", &a);
    update_image(&node, "web", &b);
    update_image(&node, "web", &c);
    node.wait_for("A removed by the collection", LONG, |n| {
        !present(n, &a_digest)
    });
    assert!(
        node.log().contains("image removed") && node.log().contains("unused for 3s"),
        "a log line names each removed image and why"
    );
    // Removed service: its image goes by itself once its task is gone.
    let (d, d_digest) = image(&node, "d");
    create(&node, "other", &d);
    node.shoal_ok(&["service", "rm", "other"]);
    node.wait_for("D removed by the collection", LONG, |n| {
        !present(n, &d_digest)
    });
    // Several grace periods later the running and the rollback image are still there.
    let later = Instant::now() + Duration::from_secs(8);
    while Instant::now() < later {
        assert_eq!(kept_for(&node, &c_digest).as_deref(), Some("task"));
        assert_eq!(kept_for(&node, &b_digest).as_deref(), Some("service"));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(node.running("web").len(), 1);
}

/// `busctl monitor` on the node's bus, writing JSON lines to a file.
struct Monitor {
    child: Child,
    out: PathBuf,
}

impl Monitor {
    fn start(node: &Node) -> Monitor {
        let out = node.dir.path().join("monitor.json");
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new("busctl")
            .arg(format!("--address={}", node.bus.address()))
            .args(["monitor", "--json=short", "org.shoal.Shoal1"])
            .stdout(Stdio::from(file))
            .stderr(Stdio::null())
            .spawn()
            .expect("run busctl monitor (package systemd)");
        Monitor { child, out }
    }

    /// The signals seen so far: (path, member, payload data).
    fn signals(&self) -> Vec<(String, String, Value)> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| m["type"] == "signal")
            .map(|m| {
                (
                    m["path"].as_str().unwrap_or_default().to_string(),
                    m["member"].as_str().unwrap_or_default().to_string(),
                    m["payload"]["data"].clone(),
                )
            })
            .collect()
    }

    fn count(&self, member: &str) -> usize {
        self.signals().iter().filter(|s| s.1 == member).count()
    }

    fn service_changed(&self) -> Vec<String> {
        self.signals()
            .iter()
            .filter(|s| s.1 == "ServiceChanged")
            .filter_map(|s| s.2[0].as_str().map(String::from))
            .collect()
    }

    fn wait_for(&self, node: &Node, what: &str, cond: impl Fn(&Monitor) -> bool) {
        let deadline = Instant::now() + LONG;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "the bus never showed {what}:\n{:#?}\n--- shoald log ---\n{}",
                self.signals(),
                node.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Everything emitted before now has arrived: a `ServiceChanged` for a service (with no
    /// replicas) made just for that, emitted after everything before it (one sender's signals
    /// stay in order).
    fn sync(&self, node: &Node, marker: &str, image: &str) {
        node.shoal_ok(&[
            "service",
            "create",
            "--detach",
            "--replicas",
            "0",
            "--name",
            marker,
            image,
        ]);
        self.wait_for(node, marker, |m| {
            m.service_changed().iter().any(|s| s == marker)
        });
    }

    /// Wait until the monitor receives signals: markers until one arrives.
    fn attach(&self, node: &Node, image: &str) {
        let deadline = Instant::now() + LONG;
        for i in 0.. {
            let marker = format!("attach{i}");
            node.shoal_ok(&[
                "service",
                "create",
                "--detach",
                "--replicas",
                "0",
                "--name",
                &marker,
                image,
            ]);
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                if self.service_changed().contains(&marker) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(Instant::now() < deadline, "busctl monitor never attached");
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stack_file(node: &Node, name: &str, image: &str, services: &[&str]) -> PathBuf {
    let mut text = String::new();
    for s in services {
        text.push_str(&format!(
            "[services.{s}]\nimage = \"{image}\"\ncommand = [\"sh\", \"-c\", \"{SLEEPER}\"]\n\n"
        ));
    }
    let path = node.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_bus_announces_each_reload_once_and_every_service_a_stack_change_touches() {
    let node = Node::start();
    let (img, _) = image(&node, "bb");
    // The start-up reload is announced before the monitor starts: wait for it to be done.
    node.wait_for("the start-up reload", LONG, |n| {
        n.log().contains("stacks reloaded")
    });
    let monitor = Monitor::start(&node);
    monitor.attach(&node, &img);
    let base_reloaded = monitor.count("Reloaded");

    // A stack deploy: one ServiceChanged per service.
    let file = stack_file(&node, "shop", &img, &["web", "db"]);
    node.shoal_ok(&["stack", "deploy", "-c", file.to_str().unwrap(), "shop"]);
    monitor.wait_for(&node, "ServiceChanged for shop_web and shop_db", |m| {
        let s = m.service_changed();
        s.contains(&"shop_web".to_string()) && s.contains(&"shop_db".to_string())
    });

    // Reloads: a good one that adds a file stack, a failing one, and one through SIGHUP.
    node.write_stack(
        "files",
        &std::fs::read_to_string(stack_file(&node, "files", &img, &["api"])).unwrap(),
    );
    node.shoal_ok(&["reload"]);
    monitor.wait_for(&node, "ServiceChanged for files_api", |m| {
        m.service_changed().contains(&"files_api".to_string())
    });
    // Anything a reload emitted is on the bus once a later signal is: count after each.
    monitor.sync(&node, "marker1", &img);
    let one_each = |m: &Monitor| format!("one Reloaded per reload: {:#?}", m.signals());
    assert_eq!(
        monitor.count("Reloaded"),
        base_reloaded + 1,
        "{}",
        one_each(&monitor)
    );
    node.write_stack("broken", "[services.x]\nimage = 3\n");
    let out = node.shoal(&["reload"]);
    assert!(!out.status.success());
    node.remove_stack_file("broken");
    monitor.sync(&node, "marker2", &img);
    assert_eq!(
        monitor.count("Reloaded"),
        base_reloaded + 2,
        "{}",
        one_each(&monitor)
    );
    assert_eq!(monitor.count("ReloadFailed"), 1);
    let pid = node.daemon_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    monitor.wait_for(&node, "the SIGHUP reload's Reloaded", |m| {
        m.count("Reloaded") >= base_reloaded + 3
    });
    monitor.sync(&node, "marker3", &img);
    assert_eq!(
        monitor.count("Reloaded"),
        base_reloaded + 3,
        "{}",
        one_each(&monitor)
    );
    assert_eq!(monitor.count("ReloadFailed"), 1);
    let reloaded: Vec<Value> = monitor
        .signals()
        .into_iter()
        .filter(|s| s.1 == "Reloaded")
        .map(|s| s.2)
        .skip(base_reloaded)
        .collect();
    assert_eq!(reloaded[0][0], serde_json::json!(["files"]), "{reloaded:?}");
    assert_eq!(
        reloaded[1],
        serde_json::json!([[], [], []]),
        "a failed reload changed nothing"
    );

    // A stack removal: ServiceChanged for each of its services again.
    let before = monitor.service_changed().len();
    node.shoal_ok(&["stack", "rm", "shop"]);
    monitor.wait_for(&node, "ServiceChanged for the removed services", |m| {
        let s = m.service_changed();
        let after = &s[before.min(s.len())..];
        after.contains(&"shop_web".to_string()) && after.contains(&"shop_db".to_string())
    });
    // A reload that removes a file stack names its services too.
    node.remove_stack_file("files");
    let before = monitor.service_changed().len();
    node.shoal_ok(&["reload"]);
    monitor.wait_for(&node, "ServiceChanged for the reload's removal", |m| {
        m.service_changed()[before..].contains(&"files_api".to_string())
    });

    // The node's properties: its availability on its object, the counts on the manager.
    let node_path = node
        .shoal_ok(&["node", "inspect", "self"])
        .parse::<Value>()
        .ok()
        .and_then(|v| {
            let v = if v.is_array() { v[0].clone() } else { v };
            v["id"].as_str().map(|id| id.to_string())
        })
        .map(|id| format!("/org/shoal/Shoal1/node/{}", escape(&id)))
        .expect("node inspect self");
    node.shoal_ok(&["node", "update", "--availability", "pause", "self"]);
    monitor.wait_for(&node, "PropertiesChanged of the node's Availability", |m| {
        m.signals().iter().any(|(path, member, data)| {
            path == &node_path
                && member == "PropertiesChanged"
                && data[0] == "org.shoal.Shoal1.Node"
                && data[1]["Availability"]["data"] == "pause"
        })
    });
    monitor.wait_for(&node, "PropertiesChanged of the manager's counts", |m| {
        m.signals().iter().any(|(path, member, data)| {
            path == "/org/shoal/Shoal1"
                && member == "PropertiesChanged"
                && data[0] == "org.shoal.Shoal1.Manager"
                && data[1].get("Services").is_some()
        })
    });
}

/// `sd_bus_path_encode` of one path element.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for (i, b) in s.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}
