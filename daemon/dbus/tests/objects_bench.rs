//! A benchmark that runs as a test: it asserts only correctness and prints its numbers (see
//! them with `cargo test -p shoal-dbus --release --test objects_bench -- --nocapture`).
//!
//! - `GetManagedObjects` with 1,000 services and 10,000 tasks in the state;
//! - the bus traffic of a 100-task deploy: every signal the daemon sends, by member, while 100
//!   new tasks go through seven states each, one state every 50 ms as agents report them;
//! - the resident memory of the serving process before, with the objects, and after the deploy.
//!
//! The state is served by a backend that holds a [`Snapshot`] the test changes as the store
//! would (no containers, no raft), so what is measured is the object tree and the bus itself,
//! on a real private dbus-daemon with the shipped policy and the daemon's default pacing.
//! `SHOAL_BENCH_SERVICES` scales it (10 tasks per service).

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use model::{Service, ServiceSpec};
use shoal_dbus::objects::{self, Pacing};
use shoal_dbus::{
    ApiError, BUS_NAME, Backend, ChangeReport, ClusterInfo, LogOptions, NodeRow, Property,
    ServiceDetail, ServiceRow, Snapshot, SpecPatch, StackRow, TaskFilter, TaskRow,
};
use shoal_tests::dbus::DbusDaemon;
use zbus::fdo::ObjectManagerProxy;
use zbus::{MatchRule, MessageStream};

const REPLICAS: u64 = 10;
const DEPLOY: u64 = 100;
const STATES: [&str; 7] = [
    "new",
    "pending",
    "assigned",
    "accepted",
    "preparing",
    "starting",
    "running",
];

/// A backend whose state is whatever the test puts in it.
struct Served {
    state: Mutex<Snapshot>,
    changed: tokio::sync::watch::Sender<()>,
}

impl Served {
    fn change(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.state.lock().unwrap());
        self.changed.send_replace(());
    }
}

fn unsupported<T>() -> Result<T, ApiError> {
    Err(ApiError::Failed("not in the benchmark".into()))
}

impl Backend for Served {
    async fn info(&self) -> Result<ClusterInfo, ApiError> {
        let s = self.state.lock().unwrap();
        Ok(ClusterInfo {
            nodes: s.nodes.len() as u64,
            services: s.services.len() as u64,
            tasks: s.tasks.len() as u64,
            ..Default::default()
        })
    }
    async fn snapshot(&self) -> Result<Snapshot, ApiError> {
        Ok(self.state.lock().unwrap().clone())
    }
    async fn list_nodes(&self) -> Result<Vec<NodeRow>, ApiError> {
        Ok(self.state.lock().unwrap().nodes.clone())
    }
    async fn inspect_node(&self, _: &str) -> Result<NodeRow, ApiError> {
        unsupported()
    }
    async fn list_services(&self) -> Result<Vec<ServiceRow>, ApiError> {
        unsupported()
    }
    async fn inspect_service(&self, _: &str) -> Result<ServiceDetail, ApiError> {
        unsupported()
    }
    async fn create_service(&self, _: ServiceSpec) -> Result<String, ApiError> {
        unsupported()
    }
    async fn update_service(&self, _: &str, _: SpecPatch) -> Result<u64, ApiError> {
        unsupported()
    }
    async fn scale_service(&self, _: &str, _: u64) -> Result<(), ApiError> {
        unsupported()
    }
    async fn rollback_service(&self, _: &str) -> Result<u64, ApiError> {
        unsupported()
    }
    async fn remove_service(&self, _: &str) -> Result<(), ApiError> {
        unsupported()
    }
    async fn list_tasks(&self, _: TaskFilter) -> Result<Vec<TaskRow>, ApiError> {
        Ok(self.state.lock().unwrap().tasks.clone())
    }
    async fn deploy_stack(&self, _: &str, _: &str) -> Result<ChangeReport, ApiError> {
        unsupported()
    }
    async fn list_stacks(&self) -> Result<Vec<StackRow>, ApiError> {
        Ok(Vec::new())
    }
    async fn remove_stack(&self, _: &str) -> Result<Vec<String>, ApiError> {
        unsupported()
    }
    async fn reload(&self) -> Result<ChangeReport, ApiError> {
        unsupported()
    }
    async fn open_logs(&self, _: &str, _: LogOptions) -> Result<OwnedFd, ApiError> {
        unsupported()
    }
}

fn service(i: u64, name: &str, replicas: u64) -> ServiceDetail {
    let spec = shoal_dbus::props::new_spec(
        name,
        &[
            Property::Image("registry.example/app:1".into()),
            Property::Replicas(replicas),
        ],
    )
    .unwrap();
    ServiceDetail {
        service: Service::new(
            format!("s{i:024}"),
            spec,
            Some(format!("sha256:{i:064}")),
            1_700_000_000_000,
        ),
        running: replicas,
        desired: replicas,
        completed: 0,
    }
}

fn task(service: &ServiceDetail, slot: u64, state: &str) -> TaskRow {
    TaskRow {
        // Service ids are `s` and 24 digits: the task's is `t`, the same digits and the slot.
        id: format!("t{}{slot:04}", &service.service.id[1..]),
        name: format!("{}.{slot}", service.service.spec.name),
        service_id: service.service.id.clone(),
        service: service.service.spec.name.clone(),
        slot,
        node_id: "node0000000000000000000001".into(),
        node: "bench-node".into(),
        image: service.service.spec.task.image.clone(),
        desired: "running".into(),
        state: state.into(),
        state_since: 1_700_000_000_000,
        message: state.into(),
        error: String::new(),
        exit_code: -1,
        created_at: 1_700_000_000_000,
        spec_version: 1,
    }
}

/// The objects that carry one of our interfaces (`GetManagedObjects` also lists the path
/// nodes `/org/shoal/Shoal1/task` and the like, with no interfaces).
fn ours(objects: &zbus::fdo::ManagedObjects) -> u64 {
    objects
        .values()
        .filter(|i| i.keys().any(|k| k.starts_with("org.shoal.Shoal1.")))
        .count() as u64
}

/// Resident memory of this process (which serves the API), in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_managed_objects_at_scale_and_the_traffic_of_a_deploy() {
    let services: u64 = std::env::var("SHOAL_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let bus = DbusDaemon::start_with_shipped_policy().unwrap();
    let (changed, rx) = tokio::sync::watch::channel(());
    let backend = Arc::new(Served {
        state: Mutex::new(Snapshot::default()),
        changed,
    });
    let server = shoal_dbus::serve_at_address(bus.address(), backend.clone())
        .await
        .unwrap();
    tokio::spawn(objects::run(
        server.clone(),
        backend.clone(),
        rx,
        Pacing::default(),
    ));
    let conn = zbus::connection::Builder::address(bus.address())
        .max_queued(std::num::NonZeroUsize::new(1_000_000).unwrap())
        .build()
        .await
        .unwrap();
    let manager = ObjectManagerProxy::builder(&conn)
        .destination(BUS_NAME)
        .path("/org/shoal/Shoal1")
        .build()
        .await
        .unwrap();
    let rss_empty = rss_mib();

    // The state: one node, `services` services of 10 running tasks each.
    let t = Instant::now();
    backend.change(|s| {
        s.nodes.push(NodeRow {
            id: "node0000000000000000000001".into(),
            name: "bench-node".into(),
            role: "manager".into(),
            availability: "active".into(),
            status: "ready".into(),
            manager_status: "leader".into(),
            ..Default::default()
        });
        for i in 0..services {
            let svc = service(i, &format!("svc{i:04}"), REPLICAS);
            for slot in 1..=REPLICAS {
                s.tasks.push(task(&svc, slot, "running"));
            }
            s.services.push(svc);
        }
    });
    let want = 1 + services + services * REPLICAS;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let n = ours(&manager.get_managed_objects().await.unwrap());
        if n == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} objects published, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let published = t.elapsed();
    let rss_full = rss_mib();
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let reply = conn
            .call_method(
                Some(BUS_NAME),
                "/org/shoal/Shoal1",
                Some("org.freedesktop.DBus.ObjectManager"),
                "GetManagedObjects",
                &(),
            )
            .await
            .unwrap();
        times.push(t.elapsed());
        size = reply.data().len();
        let objects: zbus::fdo::ManagedObjects = reply.body().deserialize().unwrap();
        assert_eq!(ours(&objects), want);
        let tasks = objects
            .values()
            .filter(|i| i.keys().any(|k| k.as_str() == "org.shoal.Shoal1.Task"))
            .count() as u64;
        assert_eq!(tasks, services * REPLICAS);
    }
    times.sort();

    // A 100-task deploy: the service appears, then its tasks, each moving one state per 50 ms.
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(BUS_NAME)
        .build()
        .unwrap();
    let mut stream =
        MessageStream::for_match_rule(rule, &conn, std::num::NonZeroUsize::new(1_000_000))
            .await
            .unwrap();
    let deployed = service(services, "deploy", DEPLOY);
    let t = Instant::now();
    backend.change(|s| s.services.push(deployed.clone()));
    for state in STATES {
        tokio::time::sleep(Duration::from_millis(50)).await;
        backend.change(|s| {
            s.tasks.retain(|t| t.service != "deploy");
            for slot in 1..=DEPLOY {
                s.tasks.push(task(&deployed, slot, state));
            }
        });
    }
    let reported = t.elapsed();
    let mut signals: BTreeMap<String, u64> = BTreeMap::new();
    let mut bytes = 0usize;
    let mut running = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // Until every task was seen running, then one more pass period of silence.
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(
        if running == DEPLOY {
            tokio::time::Instant::now() + Duration::from_secs(2)
        } else {
            deadline
        },
        stream.next(),
    )
    .await
    {
        let h = msg.header();
        let name = format!(
            "{}.{}",
            h.interface().map(|i| i.to_string()).unwrap_or_default(),
            h.member().map(|m| m.to_string()).unwrap_or_default()
        );
        if name == "org.freedesktop.DBus.Properties.PropertiesChanged" {
            let (_, props, _): (String, BTreeMap<String, zbus::OwnedVariant>, Vec<String>) =
                msg.body().deserialize().unwrap();
            if props
                .get("CurrentState")
                .and_then(|v| v.downcast_ref::<&str>().ok())
                == Some("running")
            {
                running += 1;
            }
        }
        *signals.entry(name).or_default() += 1;
        bytes += msg.data().len();
    }
    let converged = t.elapsed();
    let rss_after = rss_mib();
    let total: u64 = signals.values().sum();
    let added = signals
        .get("org.freedesktop.DBus.ObjectManager.InterfacesAdded")
        .copied()
        .unwrap_or(0);
    let changes = signals
        .get("org.freedesktop.DBus.Properties.PropertiesChanged")
        .copied()
        .unwrap_or(0);
    assert_eq!(
        added,
        DEPLOY + 1,
        "the service and each task announced once: {signals:?}"
    );
    assert_eq!(running, DEPLOY, "every task was seen running: {signals:?}");
    // Coalesced: 100 tasks made 600 state changes; each pass sends one signal per task.
    assert!(
        changes < DEPLOY * (STATES.len() as u64 - 1),
        "{changes} PropertiesChanged for {} state changes: not coalesced",
        DEPLOY * (STATES.len() as u64 - 1)
    );

    println!(
        "objects_bench: {services} services, {} tasks",
        services * REPLICAS
    );
    println!("  all {want} objects published {published:.2?} after the state was set");
    println!(
        "  GetManagedObjects: {} KiB; min {:.2?}, median {:.2?}, max {:.2?} (5 calls)",
        size / 1024,
        times[0],
        times[2],
        times[4]
    );
    println!(
        "  {DEPLOY}-task deploy, {} state reports over {reported:.2?}: all seen running after {converged:.2?}; {total} signals, {} KiB:",
        DEPLOY * STATES.len() as u64,
        bytes / 1024
    );
    for (name, n) in &signals {
        println!("    {n:6}  {name}");
    }
    println!(
        "  resident memory of the serving process: {rss_empty:.1} MiB empty, {rss_full:.1} MiB with {want} objects, {rss_after:.1} MiB after the deploy"
    );
}
