//! The real `shoal` binary against the in-memory backend served on a private, system-like
//! dbus-daemon that loads the shipped policy.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;

use shoal_dbus::ChangeReport;
use shoal_dbus::fake::FakeBackend;
use shoal_tests::dbus::{DbusDaemon, command_as, operator_user, reader_user};

struct Env {
    bus: DbusDaemon,
    backend: Arc<FakeBackend>,
    _conn: shoal_dbus::Connection,
}

async fn env() -> Env {
    let bus = DbusDaemon::start_with_shipped_policy().expect("start dbus-daemon");
    let backend = FakeBackend::new();
    let conn = shoal_dbus::serve_at_address(bus.address(), backend.clone())
        .await
        .expect("serve the fake backend");
    backend.start();
    Env {
        bus,
        backend,
        _conn: conn,
    }
}

async fn shoal_at(address: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", address)
        .output()
        .await
        .expect("run shoal")
}

impl Env {
    async fn shoal(&self, args: &[&str]) -> Output {
        shoal_at(self.bus.address(), args).await
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.shoal(args).await;
        assert!(
            out.status.success(),
            "shoal {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_waits_for_convergence_and_lists() {
    let e = env().await;
    let out = e
        .ok(&[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "-p",
            "8080:80",
            "-e",
            "A=1",
            "--timeout",
            "2m",
            "busybox:1",
            "sleep",
            "1000",
        ])
        .await;
    assert!(out.contains("overall progress: 2 out of 2 tasks"), "{out}");
    assert!(
        out.trim_end().ends_with("verify: Service converged"),
        "{out}"
    );
    // Not a terminal: plain lines, no escape sequences.
    assert!(!out.contains('\x1b'), "{out:?}");
    let spec = e.backend.spec_of("web").unwrap();
    assert_eq!(spec.task.command.unwrap(), vec!["sleep", "1000"]);

    let ls = e.ok(&["service", "ls"]).await;
    let mut lines = ls.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("ID ") && header.contains("   NAME   MODE         REPLICAS   IMAGE"),
        "{ls}"
    );
    assert!(header.ends_with("PORTS"), "{ls}");
    let row = lines.next().unwrap();
    assert_eq!(
        row.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec!["web", "replicated", "2/2", "busybox:1", "*:8080->80/tcp"],
        "{ls}"
    );
    assert!(row.ends_with("*:8080->80/tcp"), "{ls}");

    let json: serde_json::Value =
        serde_json::from_str(&e.ok(&["service", "ls", "--format", "json"]).await).unwrap();
    assert_eq!(json[0]["name"], "web");
    assert_eq!(json[0]["running"], 2);
    let q = e.ok(&["service", "ls", "-q"]).await;
    assert_eq!(q.trim(), json[0]["id"].as_str().unwrap());

    let ps = e
        .ok(&["service", "ps", "web", "--filter", "desired-state=running"])
        .await;
    let header = ps.lines().next().unwrap();
    for col in [
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
    ] {
        assert!(header.contains(col), "{ps}");
    }
    assert_eq!(ps.lines().count(), 3, "{ps}");
    assert!(ps.contains("web.1"), "{ps}");
    assert!(ps.contains("Running "), "{ps}");
    assert!(ps.contains(" ago"), "{ps}");

    let nodes = e.ok(&["node", "ls"]).await;
    let header = nodes.lines().next().unwrap();
    assert!(header.contains("MANAGER STATUS"), "{nodes}");
    assert!(header.ends_with("ENGINE VERSION"), "{nodes}");
    assert!(nodes.contains(" *   fake-node"), "{nodes}");
    assert!(nodes.contains("Leader"), "{nodes}");

    let info = e.ok(&["info"]).await;
    assert!(info.contains("Role: manager (leader)"), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_scale_rollback_inspect_logs_and_rm() {
    let e = env().await;
    e.ok(&[
        "service",
        "create",
        "--name",
        "api",
        "-d",
        "-e",
        "KEEP=1",
        "busybox:1",
    ])
    .await;
    let out = e.ok(&["service", "scale", "api=3"]).await;
    assert!(out.contains("api scaled to 3"), "{out}");
    assert!(out.contains("overall progress: 3 out of 3 tasks"), "{out}");

    let out = e
        .ok(&[
            "service",
            "update",
            "--image",
            "busybox:2",
            "--env-add",
            "NEW=2",
            "--update-parallelism",
            "2",
            "api",
        ])
        .await;
    assert!(out.contains("verify: Service converged"), "{out}");
    let spec = e.backend.spec_of("api").unwrap();
    assert_eq!(spec.task.image, "busybox:2");
    assert_eq!(spec.task.env.len(), 2);
    assert_eq!(spec.update.parallelism, 2);

    let inspect: serde_json::Value =
        serde_json::from_str(&e.ok(&["service", "inspect", "api"]).await).unwrap();
    assert_eq!(inspect[0]["spec"]["task"]["image"], "busybox:2");
    assert_eq!(inspect[0]["info"]["version"], 2);
    let pretty = e.ok(&["service", "inspect", "--pretty", "api"]).await;
    assert!(pretty.contains("Replicas:\t3"), "{pretty}");

    // The old tasks stay in history under the new ones.
    let ps = e.ok(&["service", "ps", "api"]).await;
    assert!(ps.contains("\\_ api.1"), "{ps}");

    e.ok(&["service", "rollback", "api"]).await;
    assert_eq!(e.backend.spec_of("api").unwrap().task.image, "busybox:1");

    let logs = e.ok(&["service", "logs", "--tail", "2", "api"]).await;
    assert_eq!(logs.lines().count(), 2, "{logs}");
    assert!(logs.contains("@fake-node    | line"), "{logs}");

    e.ok(&["service", "rm", "api"]).await;
    assert!(e.backend.spec_of("api").is_none());
    let out = e.shoal(&["service", "rm", "api"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("service api not found"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_tasks_make_the_command_fail_with_the_task_error() {
    let e = env().await;
    let out = e
        .shoal(&[
            "service",
            "create",
            "--name",
            "bad",
            "--timeout",
            "2m",
            "fail:latest",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("service bad is not converging"), "{err}");
    assert!(err.contains("task: non-zero exit (1)"), "{err}");
    assert!(err.contains("shoal service ps bad"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_reported() {
    let e = env().await;
    let out = e
        .shoal(&[
            "service",
            "create",
            "--name",
            "slow",
            "--timeout",
            "1ms",
            "busybox",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("timed out after"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacks_deploy_list_and_remove() {
    let e = env().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop.toml");
    std::fs::write(
        &file,
        "[services.web]\nimage = \"busybox:1\"\nreplicas = 2\n\n[services.api]\nimage = \"busybox:1\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = e.ok(&["stack", "deploy", "-c", f, "shop"]).await;
    assert!(out.contains("Creating service shop_api"), "{out}");
    assert!(out.contains("Creating service shop_web"), "{out}");
    assert_eq!(out.matches("verify: Service converged").count(), 2, "{out}");

    let ls = e.ok(&["stack", "ls"]).await;
    assert_eq!(ls, "NAME   SERVICES   STATUS\nshop   2          deployed\n");
    let services = e.ok(&["stack", "services", "shop"]).await;
    assert_eq!(services.lines().count(), 3, "{services}");
    let ps = e.ok(&["stack", "ps", "shop", "-q"]).await;
    assert_eq!(ps.lines().count(), 3, "{ps}");

    let out = e.ok(&["stack", "rm", "shop"]).await;
    assert!(out.contains("Removing service shop_web"), "{out}");
    assert_eq!(e.ok(&["stack", "ls", "-q"]).await, "");

    std::fs::write(&file, "[services.web]\nimage = 3\n").unwrap();
    let out = e.shoal(&["stack", "deploy", "-c", f, "shop"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("shop.toml:2:"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_works_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[services.web]\nimage = \"busybox:1\"\n").unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[services.web]\nimage = \"busybox\"\nreplicaz = 2\n").unwrap();
    let nowhere = "unix:path=/nonexistent/bus.sock";
    let out = shoal_at(nowhere, &["stack", "validate", good.to_str().unwrap()]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("good.toml: ok"));
    let out = shoal_at(
        nowhere,
        &[
            "stack",
            "validate",
            good.to_str().unwrap(),
            bad.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("bad.toml:3:1:"), "{err}");
    assert!(err.contains("1 of 2 stack files are invalid"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_prints_the_report_or_every_error() {
    let e = env().await;
    e.backend.set_reload_result(Ok(ChangeReport {
        added: vec!["shop".into()],
        unchanged: vec!["base".into()],
        ..Default::default()
    }));
    let out = e.ok(&["reload"]).await;
    assert_eq!(out, "added: shop\nunchanged: base\n");
    e.backend.set_reload_result(Err(
        "/etc/shoal/stacks/a.toml:1:1: unknown key \"x\"\n/etc/shoal/stacks/b.toml:4:2: invalid port".into(),
    ));
    let out = e.shoal(&["reload"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("reload failed"), "{err}");
    assert!(err.contains("a.toml:1:1: unknown key"), "{err}");
    assert!(err.contains("b.toml:4:2: invalid port"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_to_do() {
    // A bus without shoald.
    let bus = DbusDaemon::start_with_shipped_policy().unwrap();
    let out = shoal_at(bus.address(), &["service", "ls"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach shoald on the system bus (org.shoal.Shoal1): is shoald running? try: systemctl status shoald"),
        "{err}"
    );
    // No bus at all.
    let out = shoal_at("unix:path=/nonexistent/bus.sock", &["info"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach shoald"),
        "{}",
        stderr(&out)
    );
    // Usage errors exit 2.
    let out = shoal_at(bus.address(), &["service", "scale", "web"]).await;
    assert_eq!(out.status.code(), Some(2));
}

/// The binary where an unprivileged user can execute it.
fn shoal_copy(dir: &tempfile::TempDir) -> PathBuf {
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dest = dir.path().join("shoal");
    std::fs::copy(env!("CARGO_BIN_EXE_shoal"), &dest).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
    dest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_read_and_only_root_or_group_shoal_change() {
    let e = env().await;
    e.ok(&["service", "create", "--name", "pol", "-d", "busybox"])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let bin = shoal_copy(&dir);
    let reader = reader_user().unwrap();
    let (op, shoal_gid) = operator_user().unwrap();
    let addr = e.bus.address().to_string();
    let run = move |user, groups: Vec<u32>, args: Vec<&'static str>| {
        let bin = bin.clone();
        let addr = addr.clone();
        async move {
            let mut cmd = command_as(user, &groups, &bin);
            cmd.args(&args).env("DBUS_SYSTEM_BUS_ADDRESS", &addr);
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap()
        }
    };
    let out = run(reader, vec![], vec!["service", "ls"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("pol"));

    let out = run(reader, vec![], vec!["service", "scale", "-d", "pol=2"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "permission denied: changing the cluster needs root or membership in the 'shoal' group"
        ),
        "{}",
        stderr(&out)
    );

    let out = run(op, vec![shoal_gid], vec!["service", "scale", "-d", "pol=2"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        e.backend.spec_of("pol").unwrap().mode,
        model::ServiceMode::Replicated { replicas: 2 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_redraws_in_place_on_a_terminal() {
    let e = env().await;
    // `script` gives the command a pseudo-terminal.
    let cmd = format!(
        "{} service create --name tty --replicas 2 busybox",
        env!("CARGO_BIN_EXE_shoal")
    );
    let out = tokio::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", e.bus.address())
        .output()
        .await
        .expect("run script (package bsdutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\x1b[2K1/2: running"), "{text:?}");
    assert!(text.contains(&format!("[{}>]", "=".repeat(49))), "{text:?}");
    assert!(
        text.contains("\x1b[3A"),
        "cursor moves up over the 3 lines: {text:?}"
    );
    assert!(text.contains("verify: Service converged"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_updates_report_rollback_and_pause() {
    let e = env().await;
    e.ok(&["service", "create", "--name", "up", "busybox:1"])
        .await;

    let out = e
        .shoal(&[
            "service",
            "update",
            "--image",
            "fail:2",
            "--update-failure-action",
            "rollback",
            "up",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("service up was rolled back after a failed update: update rolled back due to failure of task"),
        "{err}"
    );
    assert_eq!(e.backend.spec_of("up").unwrap().task.image, "busybox:1");

    let out = e
        .shoal(&[
            "service",
            "update",
            "--image",
            "fail:3",
            "--update-failure-action",
            "pause",
            "up",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("the update of service up is paused"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_flags_reach_the_spec_and_ps_says_why_tasks_wait() {
    let e = env().await;

    // Every bad value is reported at once, by the shared validator, before anything is sent.
    let out = e
        .shoal(&[
            "service",
            "create",
            "--name",
            "bad",
            "--replicas",
            "30000000000",
            "--constraint",
            "node.ip==10.0.0.1",
            "--constraint",
            "node.labels.zone in a",
            "--placement-pref",
            "binpack=node.labels.zone",
            "busybox",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for want in [
        "--replicas: 30000000000 replicas is more than the limit of 100000",
        "--constraint: constraint \"node.ip==10.0.0.1\": unknown key \"node.ip\"",
        "--constraint: constraint \"node.labels.zone in a\": the values of `in` go in parentheses",
        "--placement-pref: placement preference \"binpack=node.labels.zone\": unknown strategy",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
    assert!(e.backend.spec_of("bad").is_none());

    // A constraint no node satisfies: the task waits, and `service ps` says why.
    e.ok(&[
        "service",
        "create",
        "--name",
        "db",
        "-d",
        "--constraint",
        "node.labels.zone==a",
        "--placement-pref",
        "spread=node.labels.zone",
        "--replicas-max-per-node",
        "2",
        "busybox",
    ])
    .await;
    let spec = e.backend.spec_of("db").unwrap();
    assert_eq!(
        spec.placement.constraints[0].to_string(),
        "node.labels.zone == a"
    );
    assert_eq!(spec.placement.preferences.len(), 1);
    assert_eq!(spec.placement.max_replicas_per_node, Some(2));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let ps = loop {
        let ps = e.ok(&["service", "ps", "--no-trunc", "db"]).await;
        if ps.contains("no suitable node") || std::time::Instant::now() > deadline {
            break ps;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let row = ps.lines().nth(1).unwrap_or_default();
    assert!(row.contains("Pending"), "{ps}");
    assert!(
        row.ends_with("\"no suitable node (scheduling constraints not satisfied on 1 node)\""),
        "{ps}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&e.ok(&["service", "inspect", "db"]).await).unwrap();
    assert_eq!(json[0]["spec"]["placement"]["max_replicas_per_node"], 2);
    assert_eq!(
        json[0]["spec"]["placement"]["constraints"][0]["values"][0],
        "a"
    );

    // Docker's add/rm flags on update; the task then runs.
    let out = e
        .ok(&[
            "service",
            "update",
            "--constraint-rm",
            "node.labels.zone == a",
            "--constraint-add",
            "node.role==manager",
            "--placement-pref-rm",
            "spread=node.labels.zone",
            "--replicas-max-per-node",
            "0",
            "db",
        ])
        .await;
    assert!(out.contains("verify: Service converged"), "{out}");
    let spec = e.backend.spec_of("db").unwrap();
    assert_eq!(spec.placement.constraints.len(), 1);
    assert_eq!(
        spec.placement.constraints[0].to_string(),
        "node.role == manager"
    );
    assert!(spec.placement.preferences.is_empty());
    assert_eq!(spec.placement.max_replicas_per_node, None);

    // Bad values on update are refused whole.
    let out = e
        .shoal(&[
            "service",
            "update",
            "--constraint-add",
            "node.role==boss",
            "--replicas",
            "30000000000",
            "db",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("manager or worker"), "{err}");
    assert!(err.contains("more than the limit"), "{err}");
    assert_eq!(e.backend.spec_of("db").unwrap(), spec);
}
