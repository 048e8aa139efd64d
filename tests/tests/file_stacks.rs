//! Stacks owned by files stay what their files say, on real parts: the CLI cannot scale, update,
//! roll back or remove their services (a forced restart is allowed), a missing stacks directory
//! fails the reload instead of removing every stack, and `stack ls` shows each stack's status.

use std::time::Duration;

use shoal_tests::images::{SLEEPER, node_image as image};
use shoal_tests::node::Node;

const LONG: Duration = Duration::from_secs(120);

fn stack_status(node: &Node, name: &str) -> String {
    let out = node.shoal_ok(&["stack", "ls", "--format", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    rows.iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["status"].as_str())
        .unwrap_or_else(|| panic!("no stack {name} in {out}"))
        .to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_file_stack_stays_what_its_file_says() {
    let mut node = Node::start();
    let img = image(&node, "bb");
    let text = format!(
        "[services.app]\nimage = \"{img}\"\nreplicas = 2\ncommand = [\"sh\", \"-c\", \"{SLEEPER}\"]\n"
    );
    node.write_stack("shop", &text);
    node.shoal_ok(&["reload"]);
    node.wait_for("shop deployed", LONG, |n| {
        n.running("shop_app").len() == 2 && stack_status(n, "shop") == "deployed"
    });
    let file = node.stacks_dir.join("shop.toml").display().to_string();

    // Every change from the CLI is refused with the file's name, and nothing changes.
    for args in [
        vec!["service", "scale", "shop_app=5"],
        vec![
            "service",
            "update",
            "--detach",
            "--env-add",
            "A=1",
            "shop_app",
        ],
        vec!["service", "rollback", "--detach", "shop_app"],
        vec!["service", "rm", "shop_app"],
        vec!["stack", "rm", "shop"],
    ] {
        let out = node.shoal(&args);
        assert!(!out.status.success(), "{args:?} was allowed");
        let err = stderr(&out);
        assert!(
            err.contains(&file),
            "{args:?}: the error names the file: {err}"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(node.running("shop_app").len(), 2);
    let svc = node
        .services()
        .into_iter()
        .find(|s| s.name == "shop_app")
        .unwrap();
    assert_eq!(svc.version, 1, "the spec never changed: {svc:?}");

    // A forced restart is not a change of what the file declares: allowed, and a reload
    // afterwards neither undoes nor repeats it.
    let before: Vec<String> = node.running("shop_app").into_iter().map(|t| t.id).collect();
    node.shoal_ok(&["service", "update", "--force", "shop_app"]);
    node.wait_for("restarted", LONG, |n| {
        let now: Vec<String> = n.running("shop_app").into_iter().map(|t| t.id).collect();
        now.len() == 2 && now.iter().all(|id| !before.contains(id))
    });
    let restarted: Vec<String> = node.running("shop_app").into_iter().map(|t| t.id).collect();
    let out = node.shoal_ok(&["reload"]);
    assert!(!out.contains("shop_app"), "{out}");
    std::thread::sleep(Duration::from_secs(2));
    let mut now: Vec<String> = node.running("shop_app").into_iter().map(|t| t.id).collect();
    let mut expected = restarted.clone();
    now.sort();
    expected.sort();
    assert_eq!(now, expected, "the reload left the restarted tasks alone");

    // A broken file: the reload fails, the stack keeps running and says why.
    node.write_stack("shop", "[services.app]\nimage = 42\n");
    let out = node.shoal(&["reload"]);
    assert!(!out.status.success());
    let status = stack_status(&node, "shop");
    assert!(
        status.starts_with("failed: ") && status.contains("shop.toml:2:"),
        "{status}"
    );
    let table = node.shoal_ok(&["stack", "ls"]);
    assert!(
        table.contains("STATUS") && table.contains("failed: "),
        "{table}"
    );
    assert_eq!(node.running("shop_app").len(), 2);

    // The stacks directory gone (a typo in paths.stacks_dir, an unmounted disk): the reload
    // fails and every stack keeps running.
    node.write_stack("shop", &text);
    node.shoal_ok(&["reload"]);
    assert_eq!(stack_status(&node, "shop"), "deployed");
    let moved = node.dir.path().join("stacks.moved");
    std::fs::rename(&node.stacks_dir, &moved).unwrap();
    let out = node.shoal(&["reload"]);
    assert!(!out.status.success(), "a missing stacks directory fails");
    let err = stderr(&out);
    assert!(
        err.contains("does not exist") && err.contains("shop"),
        "{err}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node.running("shop_app").len(), 2);
    assert!(stack_status(&node, "shop").contains("does not exist"));

    // The same at start-up: a restarted daemon keeps the stack.
    node.stop_daemon();
    node.start_daemon();
    node.wait_for("the stack still runs after a restart", LONG, |n| {
        n.running("shop_app").len() == 2
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        node.services().iter().any(|s| s.name == "shop_app"),
        "the start-up reload kept the stack"
    );
    std::fs::rename(&moved, &node.stacks_dir).unwrap();
    node.shoal_ok(&["reload"]);
    assert_eq!(stack_status(&node, "shop"), "deployed");
}
