//! Job modes on real parts: a replicated job makes its completions at most `max_concurrent` at
//! a time and is never restarted once done, `service create` waits for it to complete, an update
//! runs it again, and a global job runs once on the node; from the CLI and from a stack file.

use std::time::Duration;

use shoal_tests::images::node_image as image;
use shoal_tests::node::Node;

const LONG: Duration = Duration::from_secs(120);

fn completed(node: &Node, service: &str) -> usize {
    node.tasks(service)
        .iter()
        .filter(|t| t.state == "complete")
        .count()
}

#[test]
fn jobs_run_to_completion_and_are_not_restarted() {
    let node = Node::start();
    let img = image(&node, "bb");
    node.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "batch",
        "--mode",
        "replicated-job",
        "--replicas",
        "4",
        "--max-concurrent",
        "2",
        &img,
        "sh",
        "-c",
        "sleep 1; echo done",
    ]);
    let mut most = 0;
    node.wait_for("4 completions", LONG, |n| {
        most = most.max(n.running("batch").len());
        completed(n, "batch") == 4
    });
    assert!(most <= 2, "at most 2 ran at once, saw {most}");
    let ls = node.shoal_ok(&["service", "ls"]);
    assert!(ls.contains("replicated-job"), "{ls}");
    assert!(ls.contains("0/4 (4/4 completed)"), "{ls}");
    // Done means done: nothing is restarted.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(node.tasks("batch").len(), 4, "{:?}", node.tasks("batch"));
    let logs = node.shoal_ok(&["service", "logs", "batch"]);
    assert_eq!(logs.matches("done").count(), 4, "{logs}");

    // An update runs the job again; the CLI waits for it to complete.
    let out = node.shoal_ok(&["service", "update", "--env-add", "RUN=2", "batch"]);
    assert!(out.contains("Job complete"), "{out}");
    assert_eq!(completed(&node, "batch"), 8);

    // A global job: once on the (one) node, the CLI waiting for it.
    let out = node.shoal_ok(&[
        "service",
        "create",
        "--name",
        "sweep",
        "--mode",
        "global-job",
        &img,
        "true",
    ]);
    assert!(out.contains("Job complete"), "{out}");
    assert_eq!(completed(&node, "sweep"), 1);
    let pretty = node.shoal_ok(&["service", "inspect", "--pretty", "sweep"]);
    assert!(
        pretty.contains("Global Job") && pretty.contains("Completed:\t1/1"),
        "{pretty}"
    );

    // From a stack file: `stack deploy` waits for the job too.
    let stack = node.dir.path().join("ops.toml");
    std::fs::write(
        &stack,
        format!(
            "[services.migrate]\nimage = \"{img}\"\nmode = \"replicated-job\"\nreplicas = 2\ncommand = [\"echo\", \"migrated\"]\n"
        ),
    )
    .unwrap();
    node.shoal_ok(&["stack", "deploy", "-c", stack.to_str().unwrap(), "ops"]);
    assert_eq!(completed(&node, "ops_migrate"), 2);
}
