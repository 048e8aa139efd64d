//! The object tree (one object per node, service, stack and task, an ObjectManager, coalesced
//! PropertiesChanged) on a real, private, system-like dbus-daemon with the shipped policy, over
//! the in-memory backend; and the API reference in `docs/dbus-api.md` against live
//! introspection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Output;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use shoal_dbus::fake::FakeBackend;
use shoal_dbus::objects::{self, Pacing};
use shoal_dbus::{BUS_NAME, Client, Events, Property};
use shoal_tests::dbus::{DbusDaemon, command_as, operator_user, reader_user};
use zbus::fdo::{ManagedObjects, ObjectManagerProxy};
use zbus::{Connection, MatchRule, MessageStream, OwnedVariant};

const ROOT: &str = "/org/shoal/Shoal1";
const WEB: &str = "/org/shoal/Shoal1/service/web";

struct Setup {
    bus: DbusDaemon,
    client: Client,
    conn: Connection,
    _server: Connection,
}

async fn setup(pacing: Pacing) -> Setup {
    let bus = DbusDaemon::start_with_shipped_policy().expect("start dbus-daemon");
    let backend = FakeBackend::new();
    let server = shoal_dbus::serve_at_address(bus.address(), backend.clone())
        .await
        .expect("root may own org.shoal.Shoal1 under the shipped policy");
    backend.set_events(Events::new(&server));
    backend.start();
    // The fake announces no changes: the tree polls.
    let (_tx, rx) = tokio::sync::watch::channel(());
    tokio::spawn(objects::run(server.clone(), backend, rx, pacing));
    let client = Client::connect_address(bus.address()).await.unwrap();
    let conn = zbus::connection::Builder::address(bus.address())
        .build()
        .await
        .unwrap();
    Setup {
        bus,
        client,
        conn,
        _server: server,
    }
}

async fn create_web(client: &Client, replicas: u64) {
    client
        .create_service(
            "web",
            &[
                Property::Image("busybox:1".into()),
                Property::Replicas(replicas),
            ],
        )
        .await
        .unwrap();
}

fn fast() -> Pacing {
    Pacing {
        coalesce: Duration::from_millis(100),
        poll: Duration::from_millis(200),
    }
}

async fn managed(conn: &Connection) -> ManagedObjects {
    ObjectManagerProxy::builder(conn)
        .destination(BUS_NAME)
        .path(ROOT)
        .build()
        .await
        .unwrap()
        .get_managed_objects()
        .await
        .unwrap()
}

fn prop<'a>(
    objects: &'a ManagedObjects,
    path: &str,
    iface: &str,
    name: &str,
) -> Option<&'a OwnedVariant> {
    let (_, ifaces) = objects.iter().find(|(p, _)| p.as_str() == path)?;
    let (_, props) = ifaces.iter().find(|(i, _)| i.as_str() == iface)?;
    props.get(name)
}

fn tasks_of(objects: &ManagedObjects, service: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, ifaces) in objects {
        if let Some((_, props)) = ifaces
            .iter()
            .find(|(i, _)| i.as_str() == "org.shoal.Shoal1.Task")
            && props
                .get("Service")
                .and_then(|v| v.downcast_ref::<&str>().ok())
                == Some(service)
        {
            let state = props
                .get("CurrentState")
                .and_then(|v| v.downcast_ref::<&str>().ok())
                .unwrap_or_default()
                .to_string();
            out.push((path.to_string(), state));
        }
    }
    out
}

async fn wait_objects(
    conn: &Connection,
    what: &str,
    mut cond: impl FnMut(&ManagedObjects) -> bool,
) -> ManagedObjects {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let objects = managed(conn).await;
        if cond(&objects) {
            return objects;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what}: {:?}",
            objects.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn signals(conn: &Connection, member: &str) -> MessageStream {
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(BUS_NAME)
        .member(member)
        .build()
        .unwrap();
    MessageStream::for_match_rule(rule, conn, std::num::NonZeroUsize::new(1000))
        .await
        .unwrap()
}

/// Every signal of `stream` that arrives within `window`, as (path, body signature).
async fn collect(stream: &mut MessageStream, window: Duration) -> Vec<zbus::Message> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, stream.next()).await {
        out.push(msg);
    }
    out
}

fn running(state: &str) -> bool {
    state == "running"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_follow_services_tasks_stacks_and_nodes() {
    let s = setup(fast()).await;
    // The node is there from the start, named by its id.
    let objects = wait_objects(&s.conn, "the node object", |o| {
        prop(
            o,
            "/org/shoal/Shoal1/node/fakenode0000000000000001",
            "org.shoal.Shoal1.Node",
            "Name",
        )
        .is_some()
    })
    .await;
    let node = "/org/shoal/Shoal1/node/fakenode0000000000000001";
    let name = prop(&objects, node, "org.shoal.Shoal1.Node", "Name").unwrap();
    assert_eq!(name.downcast_ref::<&str>().unwrap(), "fake-node");
    assert!(
        prop(&objects, node, "org.shoal.Shoal1.Node", "Leader")
            .unwrap()
            .downcast_ref::<bool>()
            .unwrap()
    );

    let mut added = signals(&s.conn, "InterfacesAdded").await;
    let mut removed = signals(&s.conn, "InterfacesRemoved").await;
    create_web(&s.client, 2).await;
    let objects = wait_objects(&s.conn, "2 running tasks of web", |o| {
        let t = tasks_of(o, "web");
        t.len() == 2 && t.iter().all(|(_, st)| running(st))
    })
    .await;
    let replicas = prop(&objects, WEB, "org.shoal.Shoal1.Service", "Replicas").unwrap();
    assert_eq!(replicas.downcast_ref::<u64>().unwrap(), 2);
    let spec = prop(&objects, WEB, "org.shoal.Shoal1.Service", "Spec").unwrap();
    let spec: HashMap<String, OwnedVariant> = spec.try_clone().unwrap().try_into().unwrap();
    assert_eq!(
        spec["Image"].downcast_ref::<&str>().unwrap(),
        "busybox:1",
        "Spec holds the spec by property name"
    );
    let task_path = tasks_of(&objects, "web")[0].0.clone();
    let task_service = prop(&objects, &task_path, "org.shoal.Shoal1.Task", "ServicePath")
        .unwrap()
        .downcast_ref::<zbus::ObjectPath>()
        .unwrap()
        .to_string();
    assert_eq!(task_service, WEB);

    // InterfacesAdded announced the service and its tasks.
    let got = collect(&mut added, Duration::from_millis(300)).await;
    let paths: BTreeSet<String> = got
        .iter()
        .map(|m| {
            let (p, _): (
                zbus::OwnedObjectPath,
                HashMap<String, HashMap<String, OwnedVariant>>,
            ) = m.body().deserialize().unwrap();
            p.to_string()
        })
        .collect();
    assert!(
        paths.contains(WEB),
        "InterfacesAdded for the service: {paths:?}"
    );
    for (p, _) in tasks_of(&objects, "web") {
        assert!(
            paths.contains(&p),
            "InterfacesAdded for task {p}: {paths:?}"
        );
    }

    // Scale by calling the service object.
    let svc = zbus::Proxy::new(&s.conn, BUS_NAME, WEB, "org.shoal.Shoal1.Service")
        .await
        .unwrap();
    let _: () = svc.call("Scale", &(4u64,)).await.unwrap();
    wait_objects(&s.conn, "4 running tasks and RunningReplicas 4", |o| {
        let t = tasks_of(o, "web");
        t.iter().filter(|(_, st)| running(st)).count() == 4
            && prop(o, WEB, "org.shoal.Shoal1.Service", "RunningReplicas")
                .and_then(|v| v.downcast_ref::<u64>().ok())
                == Some(4)
    })
    .await;
    let running_replicas: u64 = svc.get_property("RunningReplicas").await.unwrap();
    assert_eq!(running_replicas, 4);

    // A stack is an object that lists its services' objects.
    s.client
        .deploy_stack("shop", "[services.api]\nimage = \"busybox:1\"\n")
        .await
        .unwrap();
    let objects = wait_objects(&s.conn, "the stack object", |o| {
        prop(
            o,
            "/org/shoal/Shoal1/stack/shop",
            "org.shoal.Shoal1.Stack",
            "Services",
        )
        .is_some()
    })
    .await;
    let services: Vec<zbus::OwnedObjectPath> = prop(
        &objects,
        "/org/shoal/Shoal1/stack/shop",
        "org.shoal.Shoal1.Stack",
        "Services",
    )
    .unwrap()
    .try_clone()
    .unwrap()
    .try_into()
    .unwrap();
    assert_eq!(
        services.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        ["/org/shoal/Shoal1/service/shop_5fapi"],
        "the stack's services, with paths escaped as systemd does"
    );
    let path: zbus::OwnedObjectPath = s
        .conn
        .call_method(
            Some(BUS_NAME),
            ROOT,
            Some("org.shoal.Shoal1.Manager"),
            "GetService",
            &("shop_api",),
        )
        .await
        .unwrap()
        .body()
        .deserialize()
        .unwrap();
    assert_eq!(path.as_str(), "/org/shoal/Shoal1/service/shop_5fapi");

    // Removing the service through its object removes its object (InterfacesRemoved).
    let _: () = svc.call("Remove", &()).await.unwrap();
    let gone = collect(&mut removed, Duration::from_secs(3)).await;
    let paths: BTreeSet<String> = gone
        .iter()
        .map(|m| {
            let (p, _): (zbus::OwnedObjectPath, Vec<String>) = m.body().deserialize().unwrap();
            p.to_string()
        })
        .collect();
    assert!(
        paths.contains(WEB),
        "InterfacesRemoved for the service: {paths:?}"
    );
    let objects = managed(&s.conn).await;
    assert!(!objects.keys().any(|p| p.as_str() == WEB));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_signals_are_coalesced() {
    // One pass per second at most. The fake moves each task one state every 100 ms, so a new
    // task goes from NEW to RUNNING in about 0.6 s: it spans at most two passes, and without
    // coalescing (a pass per poll, every 100 ms) it would send a signal for most of its states.
    let pacing = Pacing {
        coalesce: Duration::from_secs(1),
        poll: Duration::from_millis(100),
    };
    let s = setup(pacing).await;
    create_web(&s.client, 1).await;
    wait_objects(&s.conn, "1 running task", |o| {
        tasks_of(o, "web").iter().any(|(_, st)| running(st))
    })
    .await;
    let mut changed = signals(&s.conn, "PropertiesChanged").await;
    let mut added = signals(&s.conn, "InterfacesAdded").await;
    s.client.scale_service("web", 20).await.unwrap();
    let window = Duration::from_secs(4);
    let (changed, added) = tokio::join!(collect(&mut changed, window), collect(&mut added, window));
    // Per new task: the states it was announced and changed in, in order.
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &added {
        let (path, ifaces): (
            zbus::OwnedObjectPath,
            HashMap<String, HashMap<String, OwnedVariant>>,
        ) = m.body().deserialize().unwrap();
        if let Some(props) = ifaces.get("org.shoal.Shoal1.Task") {
            let st = props["CurrentState"]
                .downcast_ref::<&str>()
                .unwrap()
                .to_string();
            seen.entry(path.to_string()).or_default().push(st);
        }
    }
    for m in &changed {
        let path = m.header().path().unwrap().to_string();
        let (iface, props, _): (String, HashMap<String, OwnedVariant>, Vec<String>) =
            m.body().deserialize().unwrap();
        if iface == "org.shoal.Shoal1.Task" {
            let list = seen.entry(path.clone()).or_default();
            assert!(
                !list.is_empty(),
                "PropertiesChanged for {path} before its InterfacesAdded"
            );
            if let Some(st) = props.get("CurrentState") {
                list.push(st.downcast_ref::<&str>().unwrap().to_string());
            } else {
                list.push(list.last().cloned().unwrap_or_default());
            }
        }
    }
    assert_eq!(seen.len(), 19, "every new task was announced: {seen:?}");
    for (path, states) in &seen {
        assert_eq!(
            states.last().map(String::as_str),
            Some("running"),
            "{path} was last seen {states:?}"
        );
        assert!(
            states.len() <= 2,
            "{path} sent {} signals for one short life ({states:?}): not coalesced",
            states.len()
        );
    }
}

fn busctl(address: &str, args: &[&str]) -> Output {
    std::process::Command::new("busctl")
        .arg(format!("--address={address}"))
        .args(args)
        .output()
        .expect("run busctl (package systemd)")
}

fn busctl_as(
    address: &str,
    user: shoal_tests::dbus::TestUser,
    groups: &[u32],
    args: &[&str],
) -> Output {
    command_as(user, groups, "busctl")
        .arg(format!("--address={address}"))
        .args(args)
        .output()
        .expect("run busctl through setpriv")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_holds_for_every_object() {
    let s = setup(fast()).await;
    create_web(&s.client, 1).await;
    wait_objects(&s.conn, "the service object", |o| {
        prop(o, WEB, "org.shoal.Shoal1.Service", "Name").is_some()
    })
    .await;
    let addr = s.bus.address().to_string();
    let reader = reader_user().unwrap();
    let (operator, shoal_gid) = operator_user().unwrap();
    let svc = "org.shoal.Shoal1.Service";

    // Reading is open: the tree, properties, GetManagedObjects.
    let tree = busctl_as(&addr, reader, &[], &["tree", BUS_NAME]);
    assert!(tree.status.success(), "{}", text(&tree));
    assert!(
        text(&tree).contains("/org/shoal/Shoal1/service/web"),
        "{}",
        text(&tree)
    );
    let get = busctl_as(
        &addr,
        reader,
        &[],
        &["get-property", BUS_NAME, WEB, svc, "Replicas"],
    );
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "t 1",
        "{}",
        text(&get)
    );
    let all = busctl_as(
        &addr,
        reader,
        &[],
        &[
            "call",
            BUS_NAME,
            ROOT,
            "org.freedesktop.DBus.ObjectManager",
            "GetManagedObjects",
        ],
    );
    assert!(all.status.success(), "{}", text(&all));

    // Changing is not, on any object; nor is task output.
    for args in [
        vec!["call", BUS_NAME, WEB, svc, "Scale", "t", "3"],
        vec!["call", BUS_NAME, WEB, svc, "Remove"],
        vec![
            "call", BUS_NAME, WEB, svc, "OpenLogs", "tbb", "10", "false", "false",
        ],
        vec![
            "call",
            BUS_NAME,
            "/org/shoal/Shoal1/node/fakenode0000000000000001",
            "org.shoal.Shoal1.Node",
            "SetAvailability",
            "s",
            "drain",
        ],
        vec!["set-property", BUS_NAME, WEB, svc, "Replicas", "t", "3"],
    ] {
        let out = busctl_as(&addr, reader, &[], &args);
        assert!(!out.status.success(), "{args:?} must be refused");
        assert!(
            text(&out).contains("Access denied") || text(&out).contains("AccessDenied"),
            "{args:?}: {}",
            text(&out)
        );
    }
    let replicas: u64 = zbus::Proxy::new(&s.conn, BUS_NAME, WEB, svc)
        .await
        .unwrap()
        .get_property("Replicas")
        .await
        .unwrap();
    assert_eq!(replicas, 1, "the refused Scale changed nothing");

    // Group shoal may.
    let out = busctl_as(
        &addr,
        operator,
        &[shoal_gid],
        &["call", BUS_NAME, WEB, svc, "Scale", "t", "3"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        s.client.inspect_service("web").await.unwrap().info.desired,
        3
    );
}

/// (interface, member, kind, signature, result) as `busctl introspect` prints them.
type Member = (String, String, String, String, String);

fn introspect(address: &str, path: &str) -> BTreeSet<Member> {
    let out = busctl(
        address,
        &["introspect", "--no-pager", "--no-legend", BUS_NAME, path],
    );
    assert!(out.status.success(), "{}", text(&out));
    let mut iface = String::new();
    let mut members = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 4 {
            continue;
        }
        if cols[1] == "interface" {
            iface = cols[0].to_string();
            continue;
        }
        if !iface.starts_with("org.shoal.Shoal1.") {
            continue;
        }
        let name = cols[0].trim_start_matches('.').to_string();
        let result = if cols[1] == "method" { cols[3] } else { "-" };
        members.insert((
            iface.clone(),
            name,
            cols[1].to_string(),
            cols[2].to_string(),
            result.to_string(),
        ));
    }
    members
}

/// The members `docs/dbus-api.md` documents: under a `## org.shoal.Shoal1.X` heading, table
/// rows `| Name | kind | signature | result | meaning |` (signatures in backticks, `-` for none).
fn documented(doc: &str) -> BTreeSet<Member> {
    let mut iface = String::new();
    let mut members = BTreeSet::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            iface = h.trim().trim_matches('`').to_string();
            continue;
        }
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() < 6 || !iface.starts_with("org.shoal.Shoal1.") {
            continue;
        }
        let kind = cols[2];
        if !["method", "property", "signal"].contains(&kind) {
            continue;
        }
        let strip = |s: &str| s.trim_matches('`').to_string();
        assert!(
            !cols[5].is_empty(),
            "docs/dbus-api.md: {iface}.{} has no meaning",
            strip(cols[1])
        );
        members.insert((
            iface.clone(),
            strip(cols[1]),
            kind.to_string(),
            strip(cols[3]),
            strip(cols[4]),
        ));
    }
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reference_matches_live_introspection() {
    let s = setup(fast()).await;
    s.client
        .deploy_stack("shop", "[services.web]\nimage = \"busybox:1\"\n")
        .await
        .unwrap();
    let objects = wait_objects(&s.conn, "a task of shop_web", |o| {
        !tasks_of(o, "shop_web").is_empty()
            && prop(
                o,
                "/org/shoal/Shoal1/stack/shop",
                "org.shoal.Shoal1.Stack",
                "Name",
            )
            .is_some()
    })
    .await;
    let task = tasks_of(&objects, "shop_web")[0].0.clone();
    let mut live = BTreeSet::new();
    for path in [
        ROOT,
        "/org/shoal/Shoal1/node/fakenode0000000000000001",
        "/org/shoal/Shoal1/service/shop_5fweb",
        "/org/shoal/Shoal1/stack/shop",
        task.as_str(),
    ] {
        live.extend(introspect(s.bus.address(), path));
    }
    let ifaces: BTreeSet<&str> = live.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(
        ifaces,
        BTreeSet::from([
            "org.shoal.Shoal1.Manager",
            "org.shoal.Shoal1.Node",
            "org.shoal.Shoal1.Service",
            "org.shoal.Shoal1.Stack",
            "org.shoal.Shoal1.Task",
        ])
    );
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/dbus-api.md");
    let doc = std::fs::read_to_string(doc_path).expect("docs/dbus-api.md");
    let docs = documented(&doc);
    let undocumented: Vec<_> = live.difference(&docs).collect();
    let stale: Vec<_> = docs.difference(&live).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "docs/dbus-api.md and the live API differ\nmissing from the docs: {undocumented:#?}\nin the docs but not on the bus: {stale:#?}"
    );
    // Every object interface says its version in the introspection data.
    let xml: String = zbus::fdo::IntrospectableProxy::builder(&s.conn)
        .destination(BUS_NAME)
        .path("/org/shoal/Shoal1/service/shop_5fweb")
        .build()
        .await
        .unwrap()
        .introspect()
        .await
        .unwrap();
    assert!(
        xml.contains("Version 1 of org.shoal.Shoal1.Service"),
        "the interface version is in the introspection docs: {xml}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_update_and_rollback_through_the_object() {
    let s = setup(fast()).await;
    create_web(&s.client, 1).await;
    wait_objects(&s.conn, "the service object", |o| {
        prop(o, WEB, "org.shoal.Shoal1.Service", "Name").is_some()
    })
    .await;
    let svc = zbus::Proxy::new(&s.conn, BUS_NAME, WEB, "org.shoal.Shoal1.Service")
        .await
        .unwrap();
    let changes: HashMap<&str, zbus::Variant> = HashMap::from([
        ("Image", zbus::Variant::from("busybox:2")),
        ("Env", zbus::Variant::from(HashMap::from([("A", "1")]))),
    ]);
    let version: u64 = svc.call("Update", &(changes,)).await.unwrap();
    assert_eq!(version, 2);
    let objects = wait_objects(&s.conn, "the new image and CanRollback", |o| {
        prop(o, WEB, "org.shoal.Shoal1.Service", "Image")
            .and_then(|v| v.downcast_ref::<&str>().ok())
            == Some("busybox:2")
            && prop(o, WEB, "org.shoal.Shoal1.Service", "CanRollback")
                .and_then(|v| v.downcast_ref::<bool>().ok())
                == Some(true)
    })
    .await;
    let spec: HashMap<String, OwnedVariant> =
        prop(&objects, WEB, "org.shoal.Shoal1.Service", "Spec")
            .unwrap()
            .try_clone()
            .unwrap()
            .try_into()
            .unwrap();
    let env: HashMap<String, String> = spec["Env"].try_clone().unwrap().try_into().unwrap();
    assert_eq!(env.get("A").map(String::as_str), Some("1"));

    // A property the spec does not know is refused with the API's named error.
    let bad: HashMap<&str, zbus::Variant> = HashMap::from([("Colour", zbus::Variant::from("red"))]);
    let err = svc.call::<_, _, u64>("Update", &(bad,)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("org.shoal.Shoal1.Error.InvalidSpec"),
        "{err}"
    );

    let version: u64 = svc.call("Rollback", &()).await.unwrap();
    assert_eq!(version, 3);
    wait_objects(&s.conn, "the old image back", |o| {
        prop(o, WEB, "org.shoal.Shoal1.Service", "Image")
            .and_then(|v| v.downcast_ref::<&str>().ok())
            == Some("busybox:1")
    })
    .await;
}
