//! The API on a real, private, system-like dbus-daemon that loads the shipped policy file.

use std::io::Read;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use shoal_dbus::fake::FakeBackend;
use shoal_dbus::{
    ChangeReport, Client, ClientError, Events, LogOptions, PortRow, Property, TaskFilter,
};
use shoal_tests::dbus::{DbusDaemon, command_as, operator_user, reader_user};

async fn setup() -> (DbusDaemon, Arc<FakeBackend>, zbus::Connection, Client) {
    let bus = DbusDaemon::start_with_shipped_policy().expect("start dbus-daemon");
    let backend = FakeBackend::new();
    let conn = shoal_dbus::serve_at_address(bus.address(), backend.clone())
        .await
        .expect("root may own org.shoal.Shoal1 under the shipped policy");
    backend.set_events(Events::new(&conn));
    backend.start();
    let client = Client::connect_address(bus.address()).await.unwrap();
    (bus, backend, conn, client)
}

async fn wait_running(client: &Client, service: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = client.list_services().await.unwrap();
        if rows
            .iter()
            .any(|r| r.name == service && r.running == n && r.desired == n)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service} never reached {n} running: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn busctl(address: &str, args: &[&str]) -> Output {
    Command::new("busctl")
        .arg(format!("--address={address}"))
        .args(args)
        .output()
        .expect("run busctl (package systemd)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_lifecycle_through_the_proxy() {
    let (_bus, backend, _conn, client) = setup().await;

    let info = client.info().await.unwrap();
    assert_eq!(info.node_name, "fake-node");
    assert!(info.is_leader);

    let id = client
        .create_service(
            "web",
            &[
                Property::Image("busybox:1".into()),
                Property::Replicas(2),
                Property::Ports(vec![PortRow {
                    published: 8080,
                    target: 80,
                    protocol: "tcp".into(),
                    mode: "ingress".into(),
                }]),
                Property::Env([("A".to_string(), "1".to_string())].into()),
            ],
        )
        .await
        .unwrap();
    assert!(!id.is_empty());
    wait_running(&client, "web", 2).await;

    let rows = client.list_services().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, id);
    assert_eq!(rows[0].mode, "replicated");
    assert_eq!(rows[0].ports[0].display(), "*:8080->80/tcp");

    // Inspect by id prefix, and the spec survives the trip.
    let inspect = client.inspect_service(&id[..6]).await.unwrap();
    assert_eq!(inspect.info.name, "web");
    assert_eq!(inspect.spec, backend.spec_of("web").unwrap());
    assert_eq!(inspect.spec.task.env["A"], "1");

    // Update is a partial patch.
    let v = client
        .update_service("web", &[Property::Image("busybox:2".into())])
        .await
        .unwrap();
    assert_eq!(v, 2);
    let spec = backend.spec_of("web").unwrap();
    assert_eq!(spec.task.image, "busybox:2");
    assert_eq!(spec.ports.len(), 1, "untouched fields are kept");

    client.scale_service("web", 3).await.unwrap();
    wait_running(&client, "web", 3).await;

    let tasks = client
        .list_tasks(&TaskFilter {
            service: Some("web".into()),
            desired_state: Some(model::TaskState::Running),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(tasks.len(), 3);
    assert!(
        tasks
            .iter()
            .all(|t| t.state == "running" && t.node == "fake-node")
    );
    assert!(tasks.iter().all(|t| t.image == "busybox:2"));

    // Rollback undoes the last change (the scale), as Swarm's one-level rollback does.
    let v = client.rollback_service("web").await.unwrap();
    assert_eq!(v, 2, "replicas alone do not bump the version");
    let spec = backend.spec_of("web").unwrap();
    assert_eq!(spec.mode, model::ServiceMode::Replicated { replicas: 2 });
    assert_eq!(spec.task.image, "busybox:2");

    client.remove_service("web").await.unwrap();
    assert!(client.list_services().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_errors_reach_the_client() {
    let (_bus, _backend, _conn, client) = setup().await;
    let err = client.inspect_service("nope").await.unwrap_err();
    assert_eq!(err, ClientError::NotFound("service nope not found".into()));

    let err = client
        .create_service("x", &[Property::Replicas(1)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidSpec(m) if m.contains("no image")),
        "{err:?}"
    );

    client
        .create_service("x", &[Property::Image("busybox".into())])
        .await
        .unwrap();
    let err = client
        .create_service("x", &[Property::Image("busybox".into())])
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::AlreadyExists(_)), "{err:?}");

    let err = client
        .list_tasks(&TaskFilter {
            stack: Some("ghost".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotFound(_)), "{err:?}");

    // The raw error name on the bus is the documented one.
    let out = busctl(
        _bus.address(),
        &[
            "call",
            "org.shoal.Shoal1",
            "/org/shoal/Shoal1",
            "org.shoal.Shoal1.Manager",
            "RemoveService",
            "s",
            "ghost",
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("service ghost not found"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacks_reload_and_logs() {
    let (_bus, backend, _conn, client) = setup().await;
    let report = client
        .deploy_stack(
            "shop",
            "[services.web]\nimage = \"busybox:1\"\nreplicas = 2\n\n[services.api]\nimage = \"busybox:1\"\n",
        )
        .await
        .unwrap();
    let mut added = report.added.clone();
    added.sort();
    assert_eq!(added, vec!["shop_api", "shop_web"]);
    let stacks = client.list_stacks().await.unwrap();
    assert_eq!(stacks.len(), 1);
    assert_eq!(stacks[0].services, 2);
    wait_running(&client, "shop_web", 2).await;

    let err = client
        .deploy_stack("bad", "[services.web]\nimage = 3\n")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidSpec(m) if m.contains("bad.toml:2:")),
        "{err:?}"
    );

    // Every reload is announced exactly once: a failed one by ReloadFailed and an empty
    // Reloaded, a successful one by Reloaded with its stacks. Each Reloaded received below is
    // the next reload's, so a duplicate would show up as the wrong one.
    let mut reloaded = client.proxy().receive_reloaded().await.unwrap();
    let mut reload_failed = client.proxy().receive_reload_failed().await.unwrap();
    backend.set_reload_result(Err(
        "/etc/shoal/stacks/a.toml:1:1: unknown key \"x\"\n/etc/shoal/stacks/b.toml:2:3: bad".into(),
    ));
    let err = client.reload().await.unwrap_err();
    match err {
        ClientError::ReloadFailed(m) => {
            assert_eq!(m.lines().count(), 2, "{m}");
        }
        other => panic!("expected ReloadFailed, got {other:?}"),
    }
    let ok = ChangeReport {
        added: vec!["a".into()],
        ..Default::default()
    };
    let sig = tokio::time::timeout(Duration::from_secs(30), reload_failed.next())
        .await
        .expect("ReloadFailed signal")
        .unwrap();
    assert!(sig.args().unwrap().error.contains("a.toml:1:1"));
    let sig = tokio::time::timeout(Duration::from_secs(30), reloaded.next())
        .await
        .expect("Reloaded signal of the failed reload")
        .unwrap();
    let args = sig.args().unwrap();
    assert!(
        args.added.is_empty() && args.changed.is_empty() && args.removed.is_empty(),
        "a failed reload changed nothing"
    );
    backend.set_reload_result(Ok(ok.clone()));
    assert_eq!(client.reload().await.unwrap(), ok);
    let sig = tokio::time::timeout(Duration::from_secs(30), reloaded.next())
        .await
        .expect("Reloaded signal")
        .unwrap();
    assert_eq!(sig.args().unwrap().added, vec!["a".to_string()]);
    let next = ChangeReport {
        removed: vec!["b".into()],
        ..Default::default()
    };
    backend.set_reload_result(Ok(next.clone()));
    assert_eq!(client.reload().await.unwrap(), next);
    let sig = tokio::time::timeout(Duration::from_secs(30), reloaded.next())
        .await
        .expect("Reloaded signal")
        .unwrap();
    assert_eq!(
        sig.args().unwrap().removed,
        vec!["b".to_string()],
        "the second reload's Reloaded, not a repeat of the first"
    );

    // Logs arrive through the passed fd.
    let fd = client
        .open_logs(
            "shop_web",
            LogOptions {
                tail: Some(2),
                follow: false,
                timestamps: false,
            },
        )
        .await
        .unwrap();
    let text = tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    })
    .await
    .unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("@fake-node    | line"), "{text}");

    assert_eq!(
        client.remove_stack("shop").await.unwrap().len(),
        2,
        "both services removed"
    );
    assert!(client.list_services().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_state_signals_and_properties() {
    let (bus, _backend, _conn, client) = setup().await;
    let mut events = client.task_events().await.unwrap();
    client
        .create_service("sig", &[Property::Image("busybox".into())])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .expect("TaskStateChanged signal")
            .unwrap();
        assert_eq!(ev.service, "sig");
        if ev.state == Some(model::TaskState::Running) {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    assert_eq!(client.proxy().services().await.unwrap(), 1);
    let out = busctl(
        bus.address(),
        &[
            "get-property",
            "org.shoal.Shoal1",
            "/org/shoal/Shoal1",
            "org.shoal.Shoal1.Manager",
            "NodeName",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "s \"fake-node\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busctl_introspect_lists_the_interface() {
    let (bus, _backend, _conn, _client) = setup().await;
    let out = busctl(
        bus.address(),
        &["introspect", "org.shoal.Shoal1", "/org/shoal/Shoal1"],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("org.shoal.Shoal1.Manager"), "{text}");
    for member in [
        ".CreateService",
        ".ListServices",
        ".ListTasks",
        ".OpenLogs",
        ".Reload",
        ".TaskStateChanged",
        ".IsLeader",
    ] {
        assert!(text.contains(member), "{member} missing:\n{text}");
    }
    assert!(text.contains("a(sv)"), "typed property lists:\n{text}");
}

fn run_busctl_as(
    bus: &DbusDaemon,
    user: shoal_tests::dbus::TestUser,
    groups: &[u32],
    args: &[&str],
) -> Output {
    command_as(user, groups, "busctl")
        .arg(format!("--address={}", bus.address()))
        .args(args)
        .output()
        .expect("run busctl through setpriv")
}

const DEST: [&str; 3] = [
    "org.shoal.Shoal1",
    "/org/shoal/Shoal1",
    "org.shoal.Shoal1.Manager",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_lets_anyone_read_and_only_root_or_group_shoal_change() {
    let (bus, _backend, _conn, client) = setup().await;
    client
        .create_service("pol", &[Property::Image("busybox".into())])
        .await
        .unwrap();

    let reader = reader_user().unwrap();
    let list = [&["call"][..], &DEST[..], &["ListServices"]].concat();
    let out = run_busctl_as(&bus, reader, &[], &list);
    assert!(out.status.success(), "reader may list: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("pol"));

    // Every read-only entry point is open to any user.
    let reads: [Vec<&str>; 6] = [
        [&["call"][..], &DEST[..], &["GetInfo"]].concat(),
        [&["call"][..], &DEST[..], &["ListImages"]].concat(),
        [&["call"][..], &DEST[..], &["InspectService", "s", "pol"]].concat(),
        [&["call"][..], &DEST[..], &["ListTasks", "a{ss}", "0"]].concat(),
        vec!["get-property", DEST[0], DEST[1], DEST[2], "Services"],
        vec!["introspect", DEST[0], DEST[1]],
    ];
    for args in &reads {
        let out = run_busctl_as(&bus, reader, &[], args);
        assert!(out.status.success(), "reader may {args:?}: {out:?}");
    }
    // Task output often holds secrets: reading it is privileged, as `docker logs` needs the
    // docker group.
    let logs = [
        &["call"][..],
        &DEST[..],
        &["OpenLogs", "stbb", "pol", "1", "false", "false"],
    ]
    .concat();
    let out = run_busctl_as(&bus, reader, &[], &logs);
    assert!(
        !out.status.success(),
        "a reader must not read task output: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied"),
        "{out:?}"
    );

    let scale = [
        &["call"][..],
        &DEST[..],
        &["ScaleService", "st", "pol", "3"],
    ]
    .concat();
    let out = run_busctl_as(&bus, reader, &[], &scale);
    assert!(!out.status.success(), "reader must not scale");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Access denied") || stderr.contains("AccessDenied"),
        "{stderr}"
    );
    assert_eq!(
        client.inspect_service("pol").await.unwrap().spec.mode,
        model::ServiceMode::Replicated { replicas: 1 }
    );

    // Removing images is a change: root or group shoal only.
    let prune = [&["call"][..], &DEST[..], &["PruneImages", "b", "false"]].concat();
    let out = run_busctl_as(&bus, reader, &[], &prune);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Access denied")
            || String::from_utf8_lossy(&out.stderr).contains("AccessDenied"),
        "a reader must not prune images: {out:?}"
    );

    let (op, shoal_gid) = operator_user().unwrap();
    let out = run_busctl_as(&bus, op, &[shoal_gid], &prune);
    assert!(
        out.status.success(),
        "group shoal may prune images: {out:?}"
    );
    let out = run_busctl_as(&bus, op, &[shoal_gid], &scale);
    assert!(out.status.success(), "group shoal may scale: {out:?}");
    assert_eq!(
        client.inspect_service("pol").await.unwrap().spec.mode,
        model::ServiceMode::Replicated { replicas: 3 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_user_cannot_own_the_name() {
    let bus = DbusDaemon::start_with_shipped_policy().unwrap();
    let reader = reader_user().unwrap();
    // busctl has no "own a name" verb; call RequestName on the bus driver as the user.
    let out = run_busctl_as(
        &bus,
        reader,
        &[],
        &[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "RequestName",
            "su",
            "org.shoal.Shoal1",
            "4",
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Access denied"),
        "{out:?}"
    );
}

/// `PropertiesChanged` is the object tree's (`tests/objects.rs`, and on a real daemon
/// `tests/tests/images_gc.rs`); the handle emits the manager's own signals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_emit_service_changed() {
    let (bus, _backend, conn, _client) = setup().await;
    let listener = zbus::connection::Builder::address(bus.address())
        .build()
        .await
        .unwrap();
    let manager = shoal_dbus::client::ManagerProxy::new(&listener)
        .await
        .unwrap();
    let mut services = manager.receive_service_changed().await.unwrap();
    Events::new(&conn).service_changed("web").await.unwrap();
    let sig = tokio::time::timeout(Duration::from_secs(30), services.next())
        .await
        .expect("ServiceChanged")
        .unwrap();
    assert_eq!(sig.args().unwrap().name(), "web");
}

async fn wait_tasks(
    client: &Client,
    service: &str,
    what: &str,
    ok: impl Fn(&[shoal_dbus::TaskRow]) -> bool,
) -> Vec<shoal_dbus::TaskRow> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tasks = client
            .list_tasks(&TaskFilter {
                service: Some(service.into()),
                desired_state: Some(model::TaskState::Running),
                ..Default::default()
            })
            .await
            .unwrap();
        if ok(&tasks) {
            return tasks;
        }
        assert!(
            Instant::now() < deadline,
            "{service}: never {what}: {tasks:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_properties_are_validated_stored_and_honoured() {
    let (_bus, backend, _conn, client) = setup().await;

    // Every problem at once, in the shared validator's words, and nothing is created.
    let err = client
        .create_service(
            "bad",
            &[
                Property::Image("busybox".into()),
                Property::Replicas(30_000_000_000),
                Property::Constraints(vec!["node.ip == 1.2.3.4".into(), "node.role".into()]),
                Property::PlacementPreferences(vec!["spread=node.role".into()]),
            ],
        )
        .await
        .unwrap_err();
    let ClientError::InvalidSpec(msg) = &err else {
        panic!("{err:?}")
    };
    for want in [
        "more than the limit of 100000",
        "unknown key \"node.ip\"",
        "no operator",
        "spread=node.labels.zone",
    ] {
        assert!(msg.contains(want), "{want}: {msg}");
    }
    assert!(client.list_services().await.unwrap().is_empty());

    // A constraint the only node does not satisfy: the tasks stay pending, with the reason.
    client
        .create_service(
            "db",
            &[
                Property::Image("busybox".into()),
                Property::Replicas(2),
                Property::Constraints(vec!["node.labels.disk==ssd".into()]),
                Property::PlacementPreferences(vec!["spread=node.labels.zone".into()]),
                Property::MaxReplicasPerNode(1),
            ],
        )
        .await
        .unwrap();
    let tasks = wait_tasks(&client, "db", "pending with an error", |ts| {
        ts.len() == 2
            && ts
                .iter()
                .all(|t| t.state == "pending" && !t.error.is_empty())
    })
    .await;
    assert_eq!(
        tasks[0].error,
        "no suitable node (scheduling constraints not satisfied on 1 node)"
    );
    assert!(tasks.iter().all(|t| t.node.is_empty()));

    // Inspect returns placement as the validator prints it.
    let inspect = client.inspect_service("db").await.unwrap();
    assert_eq!(inspect.spec, backend.spec_of("db").unwrap());
    assert!(
        inspect.properties.contains(&Property::Constraints(vec![
            "node.labels.disk == ssd".into()
        ])),
        "{:?}",
        inspect.properties
    );
    assert!(
        inspect
            .properties
            .contains(&Property::PlacementPreferences(vec![
                "spread=node.labels.zone".into()
            ]))
    );
    assert!(
        inspect
            .properties
            .contains(&Property::MaxReplicasPerNode(1))
    );

    // A satisfiable constraint: one task runs, the other hits the per-node cap.
    client
        .update_service(
            "db",
            &[Property::Constraints(vec!["node.role == manager".into()])],
        )
        .await
        .unwrap();
    let tasks = wait_tasks(&client, "db", "one running, one capped", |ts| {
        ts.iter().filter(|t| t.state == "running").count() == 1
            && ts.iter().any(|t| {
                t.state == "pending"
                    && t.error == "no suitable node (max replicas per node limit exceed)"
            })
    })
    .await;
    assert_eq!(tasks.len(), 2);

    // Lifting the cap lets the second run; a constraint that stops holding moves them away.
    client
        .update_service("db", &[Property::MaxReplicasPerNode(0)])
        .await
        .unwrap();
    wait_running(&client, "db", 2).await;
    assert_eq!(
        backend
            .spec_of("db")
            .unwrap()
            .placement
            .max_replicas_per_node,
        None
    );
    client
        .update_service(
            "db",
            &[Property::Constraints(vec!["node.role != manager".into()])],
        )
        .await
        .unwrap();
    wait_tasks(&client, "db", "pending again", |ts| {
        ts.len() == 2 && ts.iter().all(|t| t.state == "pending")
    })
    .await;

    // Scale is checked too, and a refused update changes nothing.
    let err = client
        .scale_service("db", 30_000_000_000)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidSpec(m) if m.contains("more than the limit")),
        "{err:?}"
    );
    let err = client
        .update_service(
            "db",
            &[Property::Constraints(vec!["node.labels.zone in a".into()])],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidSpec(m) if m.contains("parentheses")),
        "{err:?}"
    );
    assert_eq!(
        backend.spec_of("db").unwrap().placement.constraints[0].to_string(),
        "node.role != manager"
    );
}
