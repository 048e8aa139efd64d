//! End-to-end tests on real parts: the real `shoald` and `shoal` binaries, real containerd and
//! runc, a private dbus-daemon with the shipped policy, real network namespaces, nftables and a
//! real registry. Each test runs its own node.

use std::collections::BTreeSet;
use std::time::Duration;

use shoal_tests::images::{self, HTTPD, ImageBuilder, SLEEPER, node_image as image};
use shoal_tests::node::{Node, NodeOptions, free_port, http_get};

const LONG: Duration = Duration::from_secs(120);

#[test]
fn stack_deploy_runs_containers_publishes_port_and_keeps_logs() {
    let node = Node::start();
    let img = image(&node, "bb");
    let port = free_port();
    let stack = node.dir.path().join("shop.toml");
    std::fs::write(
        &stack,
        format!(
            r#"[services.web]
image = "{img}"
replicas = 2
command = ["sh", "-c", "echo started $(hostname); echo oops >&2; {HTTPD}"]
ports = ["{port}:80"]
"#
        ),
    )
    .unwrap();
    let out = node.shoal_ok(&["stack", "deploy", "-c", stack.to_str().unwrap(), "shop"]);
    assert!(
        out.contains("shop_web"),
        "deploy reports the service: {out}"
    );
    node.wait_for("2 running tasks", LONG, |n| {
        n.running("shop_web").len() == 2
    });

    // The containers are in containerd, labelled with their tasks.
    let tasks = node.running("shop_web");
    let containers = node.containers();
    for t in &tasks {
        assert!(
            containers.iter().any(|c| c.contains(&t.id)),
            "container of {} in {containers:?}",
            t.id
        );
    }
    assert_eq!(node.container_tasks().len(), 2);

    // The published port answers from both replicas (load-balanced).
    let mut seen = BTreeSet::new();
    node.wait_for("both replicas to answer", LONG, |_| {
        if let Some(body) = http_get(port) {
            seen.insert(body.trim().to_string());
        }
        seen.len() == 2
    });
    assert!(seen.iter().all(|b| b.starts_with("hello ")), "{seen:?}");

    // Logs of both streams, per task.
    node.wait_for("logs", LONG, |n| {
        let logs = n.shoal_ok(&["service", "logs", "shop_web"]);
        logs.matches("started ").count() == 2 && logs.matches("oops").count() == 2
    });
    let tail = node.shoal_ok(&["service", "logs", "--tail", "1", "shop_web"]);
    assert_eq!(tail.lines().count(), 1, "--tail 1 prints one line: {tail}");
    assert!(
        tail.contains("shop_web."),
        "lines carry the task name: {tail}"
    );

    // -f follows: lines written after the call arrive on the open stream.
    let mut follow = std::process::Command::new(shoal_tests::node::bin("shoal"))
        .args(["service", "logs", "-f", "--tail", "0", "shop_web"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", node.bus.address())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let (_, pid) = node.container_tasks()[0].clone();
    // Make the task log: busybox httpd logs nothing, so kill it and let the replacement log.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let line = rx.recv_timeout(LONG).expect("a followed log line");
    assert!(
        line.contains("shop_web.") && (line.contains("started") || line.contains("oops")),
        "{line}"
    );
    let _ = follow.kill();
    let _ = follow.wait();
    node.wait_for("2 running again", LONG, |n| {
        n.running("shop_web").len() == 2
    });

    // stack ls/ps/services and rm.
    assert!(node.shoal_ok(&["stack", "ls"]).contains("shop"));
    assert!(
        node.shoal_ok(&["stack", "services", "shop"])
            .contains("shop_web")
    );
    node.shoal_ok(&["stack", "rm", "shop"]);
    node.wait_for("stack removed and containers gone", LONG, |n| {
        n.services().is_empty() && n.container_tasks().is_empty()
    });
    assert!(http_get(port).is_none(), "the port is no longer served");
}

#[test]
fn killed_task_is_replaced_in_its_slot_with_growing_backoff() {
    let node = Node::start();
    let img = image(&node, "bb");
    node.shoal_ok(&[
        "service",
        "create",
        "--name",
        "crashy",
        "--restart-delay",
        "1s",
        "--restart-max-delay",
        "10s",
        &img,
        "sh",
        "-c",
        SLEEPER,
    ]);
    let mut gaps = Vec::new();
    for round in 0..2 {
        let victim = node.running("crashy").pop().expect("a running task");
        let (cid, pid) = node
            .container_tasks()
            .into_iter()
            .find(|(c, _)| c.contains(&victim.id))
            .expect("container of the running task");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the task's process");
        node.wait_for("a replacement to run", LONG, |n| {
            n.running("crashy").iter().any(|t| t.id != victim.id)
        });
        let tasks = node.tasks("crashy");
        let dead = tasks
            .iter()
            .find(|t| t.id == victim.id)
            .expect("the killed task stays in history");
        assert_eq!(dead.state, "failed", "round {round}: {dead:?}");
        assert_eq!(dead.exit_code, 137, "killed by SIGKILL");
        assert!(dead.error.contains("137"), "{dead:?}");
        let new = tasks.iter().find(|t| t.running()).unwrap();
        assert_eq!(new.slot, victim.slot, "the replacement takes the same slot");
        assert!(
            !node.container_tasks().iter().any(|(c, _)| *c == cid),
            "the dead container is removed"
        );
        gaps.push(new.state_since - dead.state_since);
    }
    // Backoff: at least the delay, and doubling for a task that failed again quickly.
    assert!(
        gaps[0] >= 1000,
        "first restart waited {}ms, expected >= 1000",
        gaps[0]
    );
    assert!(
        gaps[1] >= 2000,
        "second restart waited {}ms, expected >= 2000",
        gaps[1]
    );
}

#[test]
fn scale_up_and_down_stops_the_highest_slots() {
    let node = Node::start();
    let img = image(&node, "bb");
    node.shoal_ok(&[
        "service",
        "create",
        "--name",
        "s",
        "--replicas",
        "2",
        &img,
        "sh",
        "-c",
        SLEEPER,
    ]);
    // A network that does not exist is an error, never stored and ignored.
    let out = node.shoal(&[
        "service",
        "create",
        "--name",
        "n",
        "--network",
        "backend",
        &img,
        "sh",
        "-c",
        SLEEPER,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("network backend not found"), "{err}");
    assert_eq!(node.services().len(), 1, "nothing was created");
    node.shoal_ok(&["service", "scale", "s=5"]);
    assert_eq!(node.running("s").len(), 5);
    assert_eq!(node.container_tasks().len(), 5);
    node.shoal_ok(&["service", "scale", "s=1"]);
    node.wait_for("one container left", LONG, |n| {
        n.container_tasks().len() == 1
    });
    let left = node.running("s");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].slot, 1, "scale down keeps the lowest slot");
    let ls = node.services();
    assert_eq!((ls[0].running, ls[0].desired), (1, 1));
}

#[test]
fn image_update_rolls_tasks_one_at_a_time() {
    let node = Node::start();
    let v1 = image(&node, "v1");
    let v2_path = node.dir.path().join("v2.tar");
    ImageBuilder::busybox()
        .file("etc/version", "2\n")
        .write_oci_archive(&v2_path, true, "example.org/v2:1");
    let v2 = format!("oci-archive:{}", v2_path.display());
    node.shoal_ok(&[
        "service",
        "create",
        "--name",
        "roll",
        "--replicas",
        "3",
        "--update-parallelism",
        "1",
        "--update-order",
        "start-first",
        &v1,
        "sh",
        "-c",
        SLEEPER,
    ]);
    let before: BTreeSet<String> = node.running("roll").into_iter().map(|t| t.id).collect();
    node.shoal_ok(&["service", "update", "--detach", "--image", &v2, "roll"]);
    // start-first with parallelism 1: never fewer than 3 running while rolling.
    let mut min_running = usize::MAX;
    node.wait_for("all tasks on the new image", LONG, |n| {
        let running = n.running("roll");
        min_running = min_running.min(running.len());
        running.len() == 3
            && running
                .iter()
                .all(|t| !before.contains(&t.id) && t.spec_version == 2)
    });
    assert!(
        min_running >= 3,
        "start-first keeps capacity, saw {min_running}"
    );
    let tasks = node.tasks("roll");
    for id in &before {
        let old = tasks
            .iter()
            .find(|t| &t.id == id)
            .expect("old task in history");
        assert_eq!(old.state, "shutdown", "old task {id} shut down: {old:?}");
    }
    // The new tasks started one after another, each once the last had run for the monitor
    // period (5s). (The next batch's task is created ahead, staged, so creation times say
    // nothing about the pace.)
    let mut starts: Vec<u64> = tasks
        .iter()
        .filter(|t| t.spec_version == 2 && t.running())
        .map(|t| t.state_since)
        .collect();
    starts.sort();
    assert_eq!(starts.len(), 3, "{tasks:?}");
    assert!(
        starts.windows(2).all(|w| w[1] >= w[0] + 5_000),
        "one slot at a time, each after the last ran for monitor: {starts:?}"
    );
    // The update completes once the last new task has run for the monitor period (5s).
    node.wait_for("update status completed", LONG, |n| {
        n.shoal_ok(&["service", "inspect", "roll"])
            .contains("\"completed\"")
    });
}

#[test]
fn a_port_without_a_published_number_is_published_on_one_of_30000_to_32767() {
    let node = Node::start();
    let img = image(&node, "bb");
    node.shoal_ok(&[
        "service", "create", "--name", "auto", "-p", "80", &img, "sh", "-c", HTTPD,
    ]);
    let inspect = node.shoal_ok(&["service", "inspect", "auto"]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let text = v.to_string();
    let port = text
        .split("\"published\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no published port in {inspect}"));
    assert!((30000..=32767).contains(&port), "{port}");
    node.wait_for("the automatic port", LONG, |_| http_get(port).is_some());
}

#[test]
fn restarting_shoald_keeps_and_adopts_the_same_containers() {
    let mut node = Node::start();
    let img = image(&node, "bb");
    let port = free_port();
    node.shoal_ok(&[
        "service",
        "create",
        "--name",
        "keep",
        "--replicas",
        "2",
        "-p",
        &format!("{port}:80"),
        &img,
        "sh",
        "-c",
        HTTPD,
    ]);
    node.wait_for("port", LONG, |_| http_get(port).is_some());
    let before = node.container_tasks();
    let tasks_before: BTreeSet<String> = node.running("keep").into_iter().map(|t| t.id).collect();
    assert_eq!(before.len(), 2);

    node.stop_daemon();
    // Tasks outlive the daemon, and the published port keeps answering.
    assert_eq!(
        node.container_tasks(),
        before,
        "stopping shoald stops no task"
    );
    assert!(http_get(port).is_some(), "port served while shoald is down");

    node.start_daemon();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        node.container_tasks(),
        before,
        "same containers, same pids after restart"
    );
    let tasks_after: BTreeSet<String> = node.running("keep").into_iter().map(|t| t.id).collect();
    assert_eq!(tasks_after, tasks_before, "no task was replaced");
    assert!(http_get(port).is_some());

    // A crash (SIGKILL) is no different; and a stray container that belongs to no task is removed.
    let stray = node.dir.path().join("stray.tar");
    images::write_oci_archive(&stray, false, "example.org/stray:1");
    node.ctr(&["images", "import", stray.to_str().unwrap()]);
    node.ctr(&[
        "run",
        "-d",
        "--label",
        "org.shoal.task.id=nosuchtask",
        "example.org/stray:1",
        "stray",
        "sleep",
        "600",
    ]);
    assert!(
        node.containers().iter().any(|c| c == "stray"),
        "the stray container exists"
    );
    node.kill_daemon();
    node.start_daemon();
    node.wait_for("the stray container to be removed", LONG, |n| {
        !n.containers().iter().any(|c| c == "stray")
    });
    assert_eq!(node.container_tasks(), before);
}

#[test]
fn reload_applies_added_changed_removed_files_and_a_broken_file_changes_nothing() {
    let node = Node::start();
    let img = image(&node, "bb");
    let svc = |replicas: u32| {
        format!(
            "[services.app]\nimage = \"{img}\"\nreplicas = {replicas}\ncommand = [\"sh\", \"-c\", \"{}\"]\n",
            SLEEPER
        )
    };
    node.write_stack("a", &svc(1));
    node.write_stack("b", &svc(1));
    let out = node.shoal_ok(&["reload"]);
    assert!(out.contains('a') && out.contains('b'), "{out}");
    node.wait_for("a and b running", LONG, |n| {
        n.running("a_app").len() == 1 && n.running("b_app").len() == 1
    });

    // Unchanged files change nothing.
    let a_tasks: Vec<String> = node.running("a_app").into_iter().map(|t| t.id).collect();
    node.shoal_ok(&["reload"]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        node.running("a_app")
            .into_iter()
            .map(|t| t.id)
            .collect::<Vec<_>>(),
        a_tasks
    );

    // Changed (a: 3 replicas), removed (b), added (c).
    node.write_stack("a", &svc(3));
    node.remove_stack_file("b");
    node.write_stack("c", &svc(1));
    node.shoal_ok(&["reload"]);
    node.wait_for("a=3, b gone, c=1", LONG, |n| {
        let names: Vec<String> = n.services().into_iter().map(|s| s.name).collect();
        n.running("a_app").len() == 3
            && !names.contains(&"b_app".to_string())
            && n.running("c_app").len() == 1
    });
    node.wait_for("b's container removed", LONG, |n| {
        n.container_tasks().len() == 4
    });

    // A broken file fails the reload with every problem, and nothing changes.
    let running_before: BTreeSet<String> = ["a_app", "c_app"]
        .iter()
        .flat_map(|s| node.running(s))
        .map(|t| t.id)
        .collect();
    node.write_stack("a", &svc(1)); // a valid change that must NOT be applied
    node.write_stack("d", "[services.x]\nimage = 42\nreplica = 2\n");
    let out = node.shoal(&["reload"]);
    assert!(
        !out.status.success(),
        "a broken stack file fails the reload"
    );
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains("d.toml:2:"),
        "the error names file and line: {err}"
    );
    assert!(
        err.contains("d.toml:3:"),
        "every problem is reported: {err}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let running_after: BTreeSet<String> = ["a_app", "c_app"]
        .iter()
        .flat_map(|s| node.running(s))
        .map(|t| t.id)
        .collect();
    assert_eq!(
        running_after, running_before,
        "a failed reload leaves the running stacks as they were"
    );
    assert_eq!(node.running("a_app").len(), 3);

    // SIGHUP reloads too, once the file is fixed.
    node.remove_stack_file("d");
    let pid = node.daemon_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    node.wait_for("SIGHUP applied a=1", LONG, |n| {
        n.running("a_app").len() == 1
    });
}

#[test]
fn global_service_runs_one_task_on_the_node() {
    let node = Node::start();
    let img = image(&node, "bb");
    node.shoal_ok(&[
        "service", "create", "--name", "agent", "--mode", "global", &img, "sh", "-c", SLEEPER,
    ]);
    let running = node.running("agent");
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].slot, 0, "global tasks have no slot");
    let ls = node.services();
    assert_eq!(ls[0].mode, "global");
    let out = node.shoal(&["service", "scale", "agent=3"]);
    assert!(!out.status.success(), "a global service cannot be scaled");
}

#[test]
fn images_from_a_registry_and_from_both_archive_kinds() {
    let registry = shoal_tests::registry::Registry::start();
    let oci = tempfile::NamedTempFile::new().unwrap();
    images::write_oci_archive(oci.path(), false, "example.org/reg:1");
    registry.push_oci_archive(oci.path(), "bb:1");
    let node = Node::start_with(NodeOptions {
        extra_config: format!("[registries.\"{}\"]\ninsecure = true\n", registry.address()),
        ..Default::default()
    });
    let docker_gz = node.dir.path().join("img.docker.tar.gz");
    images::write_docker_archive(&docker_gz, true, "example.org/dock:1");
    let oci_plain = node.dir.path().join("img.oci.tar");
    images::write_oci_archive(&oci_plain, false, "example.org/plain:1");
    let refs = [
        format!("{}/bb:1", registry.address()),
        format!("docker-archive:{}", docker_gz.display()),
        format!("oci-archive:{}", oci_plain.display()),
    ];
    for (i, r) in refs.iter().enumerate() {
        node.shoal_ok(&[
            "service",
            "create",
            "--name",
            &format!("img{i}"),
            r,
            "sh",
            "-c",
            SLEEPER,
        ]);
        assert_eq!(node.running(&format!("img{i}")).len(), 1, "{r} runs");
    }
    // A missing image is a clear error and creates nothing.
    let out = node.shoal(&[
        "service",
        "create",
        "--name",
        "nope",
        &format!("{}/nope:1", registry.address()),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found"), "{err}");
    assert!(!node.services().iter().any(|s| s.name == "nope"));
}

#[test]
fn the_policy_lets_anyone_read_but_only_root_or_group_shoal_change() {
    let node = Node::start();
    let img = image(&node, "bb");
    node.shoal_ok(&[
        "service", "create", "--name", "p", &img, "sh", "-c", SLEEPER,
    ]);
    let reader = shoal_tests::dbus::reader_user().expect("reader user");
    let run_as = |args: &[&str]| {
        shoal_tests::dbus::command_as(reader, &[], shoal_tests::node::bin("shoal"))
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", node.bus.address())
            .output()
            .unwrap()
    };
    let ls = run_as(&["service", "ls"]);
    assert!(
        ls.status.success(),
        "reading is open: {}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert!(String::from_utf8_lossy(&ls.stdout).contains('p'));
    let scale = run_as(&["service", "scale", "--detach", "p=3"]);
    assert!(
        !scale.status.success(),
        "a non-root, non-group caller cannot change"
    );
    assert!(
        String::from_utf8_lossy(&scale.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&scale.stderr)
    );
    assert_eq!(node.services()[0].desired, 1, "nothing changed");
}

#[test]
fn an_oom_kill_and_an_exit_code_become_task_states() {
    let node = Node::start();
    let img = image(&node, "bb");
    node.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "hog",
        "--limit-memory",
        "16M",
        "--restart-condition",
        "none",
        &img,
        "sh",
        "-c",
        "a=xxxxxxxx; while true; do a=\"$a$a\"; done",
    ]);
    node.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "three",
        "--restart-condition",
        "none",
        &img,
        "sh",
        "-c",
        "exit 3",
    ]);
    node.wait_for("the hog to be OOM-killed", LONG, |n| {
        n.tasks("hog").iter().any(|t| t.state == "failed")
    });
    let hog = node
        .tasks("hog")
        .into_iter()
        .find(|t| t.state == "failed")
        .unwrap();
    assert!(hog.error.contains("OOM"), "{hog:?}");
    node.wait_for("exit 3", LONG, |n| {
        n.tasks("three").iter().any(|t| t.state == "failed")
    });
    let three = node
        .tasks("three")
        .into_iter()
        .find(|t| t.state == "failed")
        .unwrap();
    assert_eq!(three.exit_code, 3);
    assert!(three.error.contains("non-zero exit (3)"), "{three:?}");
    // restart condition none: no replacement.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node.tasks("three").len(), 1);
}

#[test]
fn a_failing_update_rolls_back_to_the_old_image_and_manual_rollback_works() {
    let node = Node::start();
    let v1 = image(&node, "v1");
    let bad_path = node.dir.path().join("bad.tar");
    // The bad image's entrypoint exits 1 whatever the command.
    ImageBuilder::busybox()
        .entrypoint(&["sh", "-c", "exit 1"])
        .write_oci_archive(&bad_path, true, "example.org/bad:1");
    let bad = format!("oci-archive:{}", bad_path.display());
    node.shoal_ok(&[
        "service",
        "create",
        "--name",
        "rb",
        "--replicas",
        "2",
        "--update-failure-action",
        "rollback",
        &v1,
        "sh",
        "-c",
        SLEEPER,
    ]);
    let out = node.shoal(&["service", "update", "--image", &bad, "rb"]);
    assert!(
        !out.status.success(),
        "a rolled-back update is a failure for the CLI"
    );
    node.wait_for("rollback completed", LONG, |n| {
        n.shoal_ok(&["service", "inspect", "rb"])
            .contains("rollback_completed")
    });
    let ls = node.services();
    assert_eq!(ls[0].image, v1, "the spec is back on the old image");
    node.wait_for("2 running on v1", LONG, |n| n.running("rb").len() == 2);
    // The running tasks really run the old image: their containers use its digest.
    let containers = node.ctr(&["containers", "ls"]);
    for t in node.running("rb") {
        let line = containers
            .lines()
            .find(|l| l.contains(&t.id))
            .expect("container listed");
        assert!(
            line.contains("v1.tar"),
            "task {} runs the old image: {line}",
            t.id
        );
    }

    // A manual rollback swaps in the previous spec.
    node.shoal_ok(&["service", "scale", "rb=3"]);
    node.shoal_ok(&["service", "rollback", "rb"]);
    node.wait_for("back to 2 replicas", LONG, |n| {
        n.running("rb").len() == 2 && n.services()[0].desired == 2
    });
}

#[test]
fn a_containerd_restart_leaves_tasks_running_and_exits_are_still_seen() {
    let mut node = Node::start();
    let img = image(&node, "bb");
    node.shoal_ok(&[
        "service",
        "create",
        "--name",
        "steady",
        "--replicas",
        "2",
        &img,
        "sh",
        "-c",
        SLEEPER,
    ]);
    let before = node.container_tasks();
    let tasks: BTreeSet<String> = node.running("steady").into_iter().map(|t| t.id).collect();
    node.containerd.restart();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        node.container_tasks(),
        before,
        "the same processes run after containerd restarted"
    );
    let after: BTreeSet<String> = node.running("steady").into_iter().map(|t| t.id).collect();
    assert_eq!(after, tasks, "no task was failed or replaced");
    // The daemon still follows the tasks: a killed one is noticed and replaced.
    let (_, pid) = before[0].clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    node.wait_for("the killed task to be replaced", LONG, |n| {
        let now: BTreeSet<String> = n.running("steady").into_iter().map(|t| t.id).collect();
        now.len() == 2 && now != tasks
    });
}

#[test]
fn a_full_disk_stops_shoald_with_a_message_and_a_restart_keeps_the_state() {
    let mut node = Node::start_with(NodeOptions {
        state_dir_kib: Some(3072),
        ..Default::default()
    });
    let img = image(&node, "full");
    // About 300 KB of environment per service, in values under the bound of one entry
    // (model::limits::MAX_VALUE_BYTES).
    let envs: Vec<String> = (0..10)
        .map(|i| format!("BIG{i}={}", "x".repeat(30_000)))
        .collect();
    let mut created = Vec::new();
    for i in 0..60 {
        let name = format!("fill{i}");
        let mut args: Vec<&str> = vec![
            "service",
            "create",
            "--detach",
            "--replicas",
            "0",
            "--name",
            &name,
        ];
        for e in &envs {
            args.extend(["--env", e.as_str()]);
        }
        args.push(&img);
        let out = node.shoal(&args);
        if !out.status.success() {
            break;
        }
        created.push(name);
    }
    assert!(!created.is_empty(), "no service fitted at all");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = node.daemon_exit() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shoald kept running on a full disk:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.success(), "{status:?}");
    let log = node.log();
    assert!(log.contains("the raft store stopped"), "{log}");

    // More room, a restart: everything committed before is still there.
    nix::mount::mount(
        None::<&str>,
        &node.state_dir,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT,
        Some("size=65536k"),
    )
    .unwrap();
    node.forget_daemon();
    node.start_daemon();
    let names: BTreeSet<String> = node.services().into_iter().map(|s| s.name).collect();
    for name in &created {
        assert!(names.contains(name), "{name} lost: {names:?}");
    }
}

/// The state a single-node install of the previous release left: raft with the node's address
/// as 127.0.0.1:4600 in the membership, no CA, no certificates, nodes written whole.
fn legacy_state(dir: &std::path::Path) {
    std::fs::write(
        dir.join("node.json"),
        r#"{"node_id":"legacynode0000000000000001","raft_id":4242}"#,
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = store::Store::open(dir, 4242, "127.0.0.1:4600", 10_000)
            .await
            .unwrap();
        store.bootstrap_single().await.unwrap();
        let cmds = [
            model::Command::Bootstrap {
                cluster_id: "legacycluster000000000001".into(),
                settings: model::ClusterSettings::default(),
            },
            serde_json::from_value(serde_json::json!({"upsert_node": {
                "id": "legacynode0000000000000001", "raft_id": 4242, "name": "old",
                "role": "manager", "availability": "active", "status": "ready",
                "labels": {}, "addr": "127.0.0.1:4600", "last_heartbeat": 1, "version": "0.1.0"
            }}))
            .unwrap(),
        ];
        for c in cmds {
            store.propose(c).await.unwrap().unwrap();
        }
        store.shutdown().await.unwrap();
    });
}

#[test]
fn a_single_node_install_from_before_clusters_upgrades_in_place() {
    let node = Node::start_with(NodeOptions {
        before_start: Some(legacy_state),
        ..Default::default()
    });
    // Same cluster and node, now with a CA, a certificate and its real address in raft.
    let info = node.shoal_ok(&["info"]);
    assert!(
        info.contains("Cluster ID: legacycluster000000000001"),
        "{info}"
    );
    assert!(info.contains("(legacynode0000000000000001)"), "{info}");
    assert!(info.contains("CA Certificate Expires: in "), "{info}");
    assert!(node.state_dir.join("certificates/node.crt").exists());
    let own = format!("127.0.0.1:{}", node.node_port);
    node.wait_for(
        "the raft membership to carry the node's real address",
        Duration::from_secs(30),
        |n| {
            let out = n.shoal_ok(&["info", "--format", "json"]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            v["cluster"]["leader_addr"].as_str() == Some(own.as_str())
        },
    );
    // And it runs services as before.
    let img = image(&node, "up");
    node.shoal_ok(&[
        "service", "create", "--detach", "--name", "after", &img, "sleep", "600",
    ]);
    node.wait_for("the service to run", Duration::from_secs(60), |n| {
        n.running("after").len() == 1
    });
}
