//! `depends_on` on real parts: a dependant of a stack waits, PENDING with the reason, until its
//! dependency's healthcheck passes inside the real container, then starts; its dependencies
//! show in `service inspect` and survive a `service update`, which cannot change them.

use std::time::Duration;

use shoal_tests::images::{SLEEPER, node_image as image};
use shoal_tests::node::Node;

const LONG: Duration = Duration::from_secs(120);

#[test]
fn a_dependant_waits_for_its_dependency_to_be_healthy() {
    let node = Node::start();
    let img = image(&node, "bb");
    // The database is healthy once the test creates a file in a directory it mounts.
    let ready = node.dir.path().join("ready");
    std::fs::create_dir_all(&ready).unwrap();
    let stack = node.dir.path().join("app.toml");
    std::fs::write(
        &stack,
        format!(
            r#"[services.db]
image = "{img}"
command = ["sh", "-c", "{SLEEPER}"]
volumes = ["{ready}:/ready:ro"]
healthcheck = {{ test = ["CMD-SHELL", "test -f /ready/ok"], interval = "300ms", retries = 10000 }}

[services.web]
image = "{img}"
replicas = 2
command = ["sh", "-c", "{SLEEPER}"]
depends_on = {{ db = {{ condition = "service_healthy" }} }}

[services.cron]
image = "{img}"
command = ["sh", "-c", "{SLEEPER}"]
depends_on = ["web"]
"#,
            ready = ready.display()
        ),
    )
    .unwrap();
    node.shoal_ok(&[
        "stack",
        "deploy",
        "--detach",
        "-c",
        stack.to_str().unwrap(),
        "app",
    ]);
    node.wait_for("the database's process up but not healthy", LONG, |n| {
        n.tasks("app_db")
            .iter()
            .any(|t| t.state == "starting" && t.health.as_ref().is_some_and(|h| h.exit_code == 1))
    });
    // Its dependants are held back for as long as it is not healthy, and say why.
    let why_web = "waiting for dependency app_db to be healthy (service_healthy)";
    let why_cron = "waiting for dependency app_web to start (service_started)";
    for _ in 0..10 {
        let web = node.tasks("app_web");
        assert_eq!(web.len(), 2, "{web:?}");
        assert!(
            web.iter()
                .all(|t| t.state == "pending" && t.error == why_web),
            "{web:?}"
        );
        let cron = node.tasks("app_cron");
        assert!(
            cron.iter()
                .all(|t| t.state == "pending" && t.error == why_cron),
            "{cron:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let ps = node.shoal_ok(&["service", "ps", "--no-trunc", "app_web"]);
    assert!(ps.contains(why_web), "{ps}");
    assert!(
        node.containers().iter().all(|c| !c.contains("app_web")),
        "no container of a held-back task exists"
    );

    std::fs::write(ready.join("ok"), "").unwrap();
    node.wait_for("everything running", LONG, |n| {
        n.running("app_db").len() == 1
            && n.running("app_web").len() == 2
            && n.running("app_cron").len() == 1
    });
    let db_up = node.running("app_db")[0].state_since;
    for t in node.running("app_web") {
        assert!(
            t.state_since >= db_up,
            "web ran before db was healthy: {t:?}"
        );
        assert!(t.error.is_empty(), "{t:?}");
    }

    // inspect shows the dependencies; an update of something else keeps them.
    let pretty = node.shoal_ok(&["service", "inspect", "--pretty", "app_web"]);
    assert!(pretty.contains("Depends on:"), "{pretty}");
    assert!(pretty.contains("app_db:\tservice_healthy"), "{pretty}");
    node.shoal_ok(&[
        "service",
        "update",
        "--detach",
        "--label-add",
        "tier=front",
        "app_web",
    ]);
    let json = node.shoal_ok(&["service", "inspect", "app_web"]);
    assert!(
        json.contains("\"depends_on\"") && json.contains("\"service_healthy\""),
        "{json}"
    );

    // Over D-Bus, DependsOn cannot be set on a new service nor changed on one: a cycle could
    // only be refused where the whole stack is seen.
    let busctl = |args: &[&str]| {
        std::process::Command::new("busctl")
            .arg(format!("--address={}", node.bus.address()))
            .args([
                "call",
                "org.shoal.Shoal1",
                "/org/shoal/Shoal1",
                "org.shoal.Shoal1.Manager",
            ])
            .args(args)
            .output()
            .expect("run busctl")
    };
    let out = busctl(&[
        "UpdateService",
        "sa(sv)",
        "app_web",
        "1",
        "DependsOn",
        "a{ss}",
        "0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && err.contains("declare depends_on in the service's stack file"),
        "{err}"
    );
    let out = busctl(&[
        "CreateService",
        "sa(sv)",
        "loner",
        "2",
        "Image",
        "s",
        &img,
        "DependsOn",
        "a{ss}",
        "1",
        "app_db",
        "service_started",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && err.contains("depends_on"), "{err}");
    assert!(!node.services().iter().any(|s| s.name == "loner"));
}
