//! Healthchecks on real parts: checks run inside the task through containerd exec (early ones
//! from the start on), a task is RUNNING (and gets traffic) only once a check passed, an unhealthy task is failed and
//! replaced, and a rolling update to an image whose own HEALTHCHECK fails rolls back by itself.

use std::time::Duration;

use shoal_tests::images::{HTTPD, ImageBuilder, SLEEPER, node_image as image};
use shoal_tests::node::{Node, free_port, http_get};

const LONG: Duration = Duration::from_secs(120);

/// An image whose own HEALTHCHECK always fails ("broken", every 300 ms); its process runs fine.
fn unhealthy_image(node: &Node) -> String {
    let path = node.dir.path().join("bad.tar");
    ImageBuilder::busybox()
        .healthcheck(
            &["CMD-SHELL", "echo broken; exit 1"],
            Duration::from_millis(300),
        )
        .write_oci_archive(&path, true, "example.org/bad:1");
    format!("oci-archive:{}", path.display())
}

/// Creates the service `web` of one httpd task whose check (`test -f /tmp/ready && echo
/// ready`) passes only from `secs` seconds after its start, with the other `flags`.
fn create_web_ready_after(node: &Node, img: &str, secs: u32, flags: &[&str]) {
    let cmd = format!("(sleep {secs}; touch /tmp/ready) & {HTTPD}");
    let check = "test -f /tmp/ready && echo ready";
    let mut args = vec![
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--health-cmd",
        check,
    ];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[img, "sh", "-c", &cmd]);
    node.shoal_ok(&args);
}

#[test]
fn a_failing_healthcheck_fails_and_replaces_the_task_which_never_runs_nor_gets_traffic() {
    let node = Node::start();
    let img = image(&node, "bb");
    let port = free_port();
    let publish = format!("{port}:80");
    node.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "sick",
        "-p",
        &publish,
        "--health-cmd",
        "echo not ready; exit 1",
        "--health-interval",
        "300ms",
        "--health-retries",
        "2",
        "--restart-delay",
        "100ms",
        &img,
        "sh",
        "-c",
        HTTPD,
    ]);
    let mut saw_starting = false;
    node.wait_for("two tasks failed as unhealthy", LONG, |n| {
        let tasks = n.tasks("sick");
        for t in &tasks {
            assert_ne!(t.state, "running", "an unhealthy task ran: {t:?}");
            saw_starting |=
                t.state == "starting" && t.health.as_ref().is_some_and(|h| h.status == "starting");
        }
        // The process serves, but nothing routes to a task that is not healthy.
        assert_eq!(
            http_get(port),
            None,
            "a task that never passed a check got traffic"
        );
        tasks
            .iter()
            .filter(|t| t.state == "failed" && t.error == "task: unhealthy container")
            .count()
            >= 2
    });
    assert!(
        saw_starting,
        "the task waited in starting with health \"starting\""
    );
    let failed = node
        .tasks("sick")
        .into_iter()
        .find(|t| t.state == "failed")
        .unwrap();
    let health = failed.health.expect("a failed task keeps its health");
    assert_eq!(health.status, "unhealthy");
    assert_eq!(health.exit_code, 1);
    assert_eq!(health.output, "not ready\n");
    // The check's output is in inspect too.
    let inspect = node.shoal_ok(&["service", "inspect", "--pretty", "sick"]);
    assert!(inspect.contains("Healthcheck:"), "{inspect}");
    assert!(inspect.contains("echo not ready; exit 1"), "{inspect}");
}

#[test]
fn a_passing_healthcheck_makes_the_task_running_only_after_the_first_pass() {
    let node = Node::start();
    let img = image(&node, "bb");
    let port = free_port();
    let publish = format!("{port}:80");
    // Ready (and serving) only once /tmp/ready exists, three seconds after the start.
    create_web_ready_after(
        &node,
        &img,
        3,
        &[
            "--health-interval",
            "300ms",
            "--health-retries",
            "1000",
            "-p",
            &publish,
        ],
    );
    node.wait_for("the task starting with its process up", LONG, |n| {
        n.tasks("web").iter().any(|t| {
            t.state == "starting"
                && t.health
                    .as_ref()
                    .is_some_and(|h| h.status == "starting" && h.exit_code == 1)
        })
    });
    // httpd already listens inside the task, but the task is not healthy yet.
    assert_eq!(http_get(port), None, "a starting task got traffic");
    let ps = node.shoal_ok(&["service", "ps", "web"]);
    assert!(ps.contains("(health: starting)"), "{ps}");
    node.wait_for("the task running once a check passed", LONG, |n| {
        n.running("web").len() == 1
    });
    let t = node.running("web").remove(0);
    let health = t.health.clone().expect("health of a running task");
    assert_eq!(health.status, "healthy");
    assert_eq!(health.exit_code, 0);
    assert_eq!(health.output, "ready\n");
    assert!(
        t.state_since >= t.created_at + 3_000,
        "running only after the check passed: {t:?}"
    );
    node.wait_for("traffic reaches the healthy task", LONG, |_| {
        http_get(port).is_some_and(|b| b.contains("hello"))
    });
    let ps = node.shoal_ok(&["service", "ps", "web"]);
    assert!(ps.contains("(healthy)"), "{ps}");
    let inspect = node.shoal_ok(&["service", "inspect", "web"]);
    assert!(inspect.contains("\"output\": \"ready\\n\""), "{inspect}");
}

#[test]
fn a_starting_task_is_checked_early_so_it_runs_once_ready_not_an_interval_later() {
    let node = Node::start();
    let img = image(&node, "bb");
    // Ready two seconds after the start; the interval is a minute, and one counted failure
    // would make the task unhealthy.
    create_web_ready_after(
        &node,
        &img,
        2,
        &["--health-interval", "60s", "--health-retries", "1"],
    );
    node.wait_for("the task running once an early check passed", LONG, |n| {
        n.running("web").len() == 1
    });
    let t = node.running("web").remove(0);
    assert!(
        t.state_since >= t.created_at + 2_000,
        "running only once ready: {t:?}"
    );
    assert!(
        t.state_since < t.created_at + 30_000,
        "running long before the first regular check (60 s): {t:?}"
    );
    let health = t.health.clone().expect("health of a running task");
    assert_eq!(
        (health.status.as_str(), health.output.as_str()),
        ("healthy", "ready\n")
    );
    // The early checks that failed did not count: the first task is the only one.
    assert_eq!(node.tasks("web").len(), 1, "{:?}", node.tasks("web"));
}

#[test]
fn an_update_to_an_image_whose_healthcheck_fails_rolls_back_by_itself() {
    let node = Node::start();
    let v1 = image(&node, "v1");
    let bad = unhealthy_image(&node);
    let port = free_port();
    let publish = format!("{port}:80");
    node.shoal_ok(&[
        "service",
        "create",
        "--name",
        "rb",
        "--replicas",
        "2",
        "-p",
        &publish,
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "2s",
        &v1,
        "sh",
        "-c",
        HTTPD,
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
    let unhealthy: Vec<_> = node
        .tasks("rb")
        .into_iter()
        .filter(|t| t.error == "task: unhealthy container")
        .collect();
    assert!(
        !unhealthy.is_empty(),
        "the new task failed its image's check"
    );
    assert!(
        unhealthy
            .iter()
            .all(|t| t.health.as_ref().is_some_and(|h| h.output == "broken\n")),
        "{unhealthy:?}"
    );
    assert_eq!(
        node.services()[0].image,
        v1,
        "the spec is back on the old image"
    );
    node.wait_for("2 running on v1", LONG, |n| n.running("rb").len() == 2);
    let pretty = node.shoal_ok(&["service", "inspect", "--pretty", "rb"]);
    assert!(pretty.contains("rollback_completed"), "{pretty}");
    assert!(http_get(port).is_some_and(|b| b.contains("hello")));
}

#[test]
fn update_force_restarts_every_task_one_batch_at_a_time_each_healthy_for_monitor() {
    let node = Node::start();
    let img = image(&node, "bb");
    node.shoal_ok(&[
        "service",
        "create",
        "--name",
        "f",
        "--replicas",
        "3",
        "--health-cmd",
        "true",
        "--health-interval",
        "200ms",
        "--update-monitor",
        "1s",
        &img,
        "sh",
        "-c",
        SLEEPER,
    ]);
    let before: Vec<String> = node.running("f").into_iter().map(|t| t.id).collect();
    assert_eq!(before.len(), 3);
    // Waits until the update is over (its last task healthy for monitor).
    node.shoal_ok(&["service", "update", "--force", "f"]);
    let tasks = node.tasks("f");
    let mut new: Vec<_> = tasks.iter().filter(|t| !before.contains(&t.id)).collect();
    assert_eq!(new.len(), 3, "every task replaced once: {tasks:?}");
    assert!(new.iter().all(|t| t.running()), "{new:?}");
    assert!(
        tasks
            .iter()
            .filter(|t| before.contains(&t.id))
            .all(|t| t.state == "shutdown"),
        "{tasks:?}"
    );
    new.sort_by_key(|t| t.created_at);
    for w in new.windows(2) {
        assert!(
            w[1].created_at >= w[0].state_since + 1_000,
            "the next batch waited for the last one to be healthy for monitor: {new:?}"
        );
    }
    let inspect = node.shoal_ok(&["service", "inspect", "--pretty", "f"]);
    assert!(inspect.contains("completed"), "{inspect}");
}

/// Under constant requests through the published port, a start-first update to an image whose
/// own HEALTHCHECK fails rolls back by itself and not one request fails: the new tasks never
/// get traffic, the old ones serve until the rollback has replaced them one by one.
#[test]
fn a_start_first_update_that_rolls_back_drops_no_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let node = Node::start();
    let v1 = image(&node, "v1");
    let bad = unhealthy_image(&node);
    let port = free_port();
    let publish = format!("{port}:80");
    node.shoal_ok(&[
        "service",
        "create",
        "--name",
        "zero",
        "--replicas",
        "2",
        "-p",
        &publish,
        "--update-order",
        "start-first",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "2s",
        "--rollback-order",
        "start-first",
        "--health-interval",
        "300ms",
        &v1,
        "sh",
        "-c",
        HTTPD,
    ]);
    node.wait_for("served", LONG, |_| {
        http_get(port).is_some_and(|b| b.contains("hello"))
    });

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match http_get(port) {
                    Some(b) if b.contains("hello") => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        failures.push(format!("{:?}: {other:?}", std::time::SystemTime::now()));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                std::thread::sleep(Duration::from_millis(10));
            }
            failures
        })
    };
    let out = node.shoal(&["service", "update", "--image", &bad, "zero"]);
    assert!(!out.status.success(), "the update rolled back");
    node.wait_for("rollback completed on two healthy tasks", LONG, |n| {
        n.shoal_ok(&["service", "inspect", "zero"])
            .contains("rollback_completed")
            && n.running("zero").len() == 2
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let failures = load.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("requests during the update and rollback: {ok} answered, {failed} failed");
    assert!(ok > 100, "the load ran: {ok} requests");
    assert_eq!(failed, 0, "no request dropped: {failures:?}");
    assert!(
        node.tasks("zero")
            .iter()
            .any(|t| t.error == "task: unhealthy container"),
        "the new image's tasks failed their check"
    );
}

/// A start-first update prepares the next batch while the current one is watched: its task
/// waits READY (desired `ready`) next to the old task that still serves its slot, and its turn
/// releases that same task to RUNNING rather than making another.
#[test]
fn a_start_first_update_stages_the_next_batch_and_releases_it_in_turn() {
    let node = Node::start();
    let img = image(&node, "bb");
    node.shoal_ok(&[
        "service",
        "create",
        "--name",
        "st",
        "--replicas",
        "3",
        "--health-cmd",
        "true",
        "--health-interval",
        "300ms",
        "--update-order",
        "start-first",
        "--update-monitor",
        "1s",
        &img,
        "sh",
        "-c",
        SLEEPER,
    ]);
    let before: Vec<String> = node.running("st").into_iter().map(|t| t.id).collect();
    assert_eq!(before.len(), 3);
    node.shoal_ok(&["service", "update", "--detach", "--force", "st"]);
    let mut staged = std::collections::BTreeSet::new();
    node.wait_for("the update completed", LONG, |n| {
        let tasks = n.tasks("st");
        for t in tasks
            .iter()
            .filter(|t| t.desired == "ready" && !before.contains(&t.id))
        {
            assert!(
                ["pending", "assigned", "accepted", "preparing", "ready"]
                    .contains(&t.state.as_str()),
                "a staged task is never started: {t:?}"
            );
            assert!(
                tasks
                    .iter()
                    .any(|o| o.slot == t.slot && before.contains(&o.id) && o.running()),
                "its slot's old task serves meanwhile: {tasks:?}"
            );
            if t.state == "ready" {
                staged.insert(t.id.clone());
            }
        }
        n.shoal_ok(&["service", "inspect", "--pretty", "st"])
            .contains("completed")
            && n.running("st").iter().all(|t| !before.contains(&t.id))
    });
    let tasks = node.tasks("st");
    let new: Vec<_> = tasks.iter().filter(|t| !before.contains(&t.id)).collect();
    assert_eq!(new.len(), 3, "one new task per slot: {tasks:?}");
    assert!(new.iter().all(|t| t.running()), "{new:?}");
    assert!(
        !staged.is_empty(),
        "a task of a later batch was seen prepared and waiting: {tasks:?}"
    );
    assert!(
        staged.iter().all(|id| new.iter().any(|t| &t.id == id)),
        "the staged tasks are the ones that run now"
    );
}
