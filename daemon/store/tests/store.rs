//! End-to-end tests of the store on real files: open, bootstrap, propose, restart, snapshots,
//! recovery from damaged files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::{
    Applied, ApplyError, Availability, ClusterSettings, Command, Node, NodeRole, NodeStatus,
    PortSpec, Protocol, PublishMode, Service, ServiceSpec,
};
use store::{NoTransport, Store, StoreError, StoreOptions};

const ADDR: &str = "127.0.0.1:4600";
/// Generous: tests wait for conditions, they never fail just because the machine is slow.
const WAIT: Duration = Duration::from_secs(60);

fn node(i: u64) -> Command {
    Command::UpsertNode(Node {
        id: format!("node-{i}"),
        raft_id: i,
        name: format!("n{i}"),
        role: NodeRole::Worker,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        labels: BTreeMap::new(),
        addr: format!("10.0.0.{}:4600", i % 250),
        last_heartbeat: i,
        version: String::new(),
        status_message: String::new(),
        resources: Default::default(),
        ingress_addr: None,
    })
}

fn service(id: &str, name: &str, port: u16) -> Command {
    let mut spec = ServiceSpec {
        name: name.into(),
        ..Default::default()
    };
    spec.task.image = "busybox".into();
    spec.ports.push(PortSpec {
        published: port,
        target: 80,
        protocol: Protocol::Tcp,
        mode: PublishMode::Ingress,
        host_ip: None,
    });
    Command::CreateService(Service::new(id.into(), spec, None, 0))
}

/// Log to the test's captured output (shown when a test fails); `RUST_LOG` filters.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "store=debug,openraft=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn open(dir: &Path, snapshot_interval: u64, logs_to_keep: u64) -> Store {
    init_tracing();
    let options = StoreOptions {
        snapshot_interval,
        logs_to_keep,
        ..StoreOptions::default()
    };
    Store::open_with(dir, 1, ADDR, options, Arc::new(NoTransport))
        .await
        .expect("open store")
}

async fn propose_ok(store: &Store, cmd: Command) -> Applied {
    store
        .propose(cmd)
        .await
        .expect("proposal committed")
        .expect("command applied")
}

/// Offsets and JSON payloads of the records in a log segment, read with the documented framing
/// (u32 LE length, u32 LE crc32, payload).
fn records(bytes: &[u8]) -> Vec<(usize, serde_json::Value)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        let payload = &bytes[off + 8..off + 8 + len];
        out.push((off, serde_json::from_slice(payload).unwrap()));
        off += 8 + len;
    }
    assert_eq!(off, bytes.len(), "segment ends on a record boundary");
    out
}

#[tokio::test]
async fn open_bootstrap_propose_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 10_000, 1_000).await;
    assert!(!store.is_initialized().await.unwrap());
    assert!(store.state().nodes.is_empty());

    // Not initialised: nobody can take a proposal.
    match store.propose(node(1)).await {
        Err(StoreError::NotLeader { leader: None, .. }) => {}
        other => panic!("expected NotLeader before bootstrap, got {other:?}"),
    }

    store.bootstrap_single().await.unwrap();
    assert!(store.is_initialized().await.unwrap());
    assert!(store.is_leader());
    assert_eq!(store.leader(), Some(1));
    // Idempotent.
    store.bootstrap_single().await.unwrap();

    let mut rx = store.subscribe();
    rx.borrow_and_update();
    let applied = propose_ok(
        &store,
        Command::Bootstrap {
            cluster_id: "c-1".into(),
            settings: ClusterSettings::default(),
        },
    )
    .await;
    assert_eq!(applied.changed, 1);
    assert_eq!(store.state().cluster_id, "c-1");
    // The subscriber saw the change.
    tokio::time::timeout(WAIT, rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rx.borrow().cluster_id, "c-1");

    propose_ok(&store, node(7)).await;
    assert_eq!(store.state().nodes["node-7"].raft_id, 7);

    let info = store.info();
    assert_eq!(info.role, "leader");
    assert_eq!(info.leader, Some(1));
    assert_eq!(info.voters, vec![(1, ADDR.to_string())]);
    assert!(info.term >= 1);
    assert_eq!(info.last_applied, info.last_log_index);

    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn apply_error_reaches_the_proposer_and_leaves_the_state_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 10_000, 1_000).await;
    store.bootstrap_single().await.unwrap();
    propose_ok(&store, service("s1", "web", 8080)).await;
    let before = store.state();

    let res = store.propose(service("s2", "api", 8080)).await.unwrap();
    match res {
        Err(ApplyError::PortInUse {
            port: 8080,
            service,
            ..
        }) => assert_eq!(service, "web"),
        other => panic!("expected PortInUse, got {other:?}"),
    }
    let res = store.propose(service("s3", "web", 9090)).await.unwrap();
    assert_eq!(res, Err(ApplyError::ServiceExists("web".into())));
    assert_eq!(*store.state(), *before);

    // The rejected commands are in the log; after a restart they are rejected again the same way.
    store.shutdown().await.unwrap();
    let store = open(dir.path(), 10_000, 1_000).await;
    store.wait_for_leader(WAIT).await.unwrap();
    assert_eq!(*store.state(), *before);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn restart_keeps_state_and_leads_again_without_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 10_000, 1_000).await;
    store.bootstrap_single().await.unwrap();
    for i in 0..20 {
        propose_ok(&store, node(i)).await;
    }
    let before = store.state();
    let term = store.info().term;
    store.shutdown().await.unwrap();

    let started = Instant::now();
    let store = open(dir.path(), 10_000, 1_000).await;
    let opened = started.elapsed();
    assert_eq!(store.wait_for_leader(WAIT).await.unwrap(), 1);
    let leading = started.elapsed();
    println!("restart after shutdown: open {opened:?}, leader after {leading:?}");
    assert!(store.is_leader());
    assert!(store.is_initialized().await.unwrap());
    assert_eq!(*store.state(), *before);
    assert_eq!(store.info().term, term, "no new election was needed");
    propose_ok(&store, node(100)).await;
    let after = store.state();

    // Dropped without shutdown: the next open still finds everything.
    drop(store);
    let started = Instant::now();
    let store = open(dir.path(), 10_000, 1_000).await;
    store.wait_for_leader(WAIT).await.unwrap();
    println!("restart after drop: leader after {:?}", started.elapsed());
    assert_eq!(*store.state(), *after);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 10_000, 1_000).await;
    let err = Store::open(dir.path(), 1, ADDR, 10_000).await.unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    store.shutdown().await.unwrap();
    let store = Store::open(dir.path(), 1, ADDR, 10_000).await.unwrap();
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn snapshots_purge_the_log_and_restore_with_the_remaining_entries() {
    let dir = tempfile::tempdir().unwrap();
    let raft_dir = dir.path().join("raft");
    let store = open(dir.path(), 20, 5).await;
    store.bootstrap_single().await.unwrap();
    for i in 0..50 {
        propose_ok(&store, node(i)).await;
    }
    // The policy snapshots every 20 entries (indexes 19 and 39 of the 52 entries).
    let deadline = Instant::now() + WAIT;
    while store.info().snapshot_index < Some(39) {
        assert!(Instant::now() < deadline, "no snapshot: {:?}", store.info());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info = store.info();
    let snap = info.snapshot_index.unwrap();
    assert!(info.purged_index.is_some(), "{info:?}");
    assert!(info.purged_index.unwrap() + 5 <= snap, "{info:?}");

    // Exactly one snapshot file, named after the snapshot's term and index.
    let wait_files = Instant::now() + WAIT;
    let snapshots = loop {
        let names: Vec<String> = std::fs::read_dir(&raft_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("snapshot-"))
            .collect();
        if names.len() == 1 || Instant::now() > wait_files {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert!(
        snapshots[0].ends_with(&format!("-{snap}.json")),
        "{snapshots:?} vs {snap}"
    );

    // The log segment no longer holds the purged entries.
    let seg = std::fs::read(raft_dir.join("log")).unwrap();
    let recs = records(&seg);
    let first_entry = recs
        .iter()
        .find_map(|(_, r)| {
            r.get("entry")
                .map(|e| e["log_id"]["index"].as_u64().unwrap())
        })
        .unwrap();
    assert_eq!(first_entry, info.purged_index.unwrap() + 1);

    let before = store.state();
    store.shutdown().await.unwrap();

    let store = open(dir.path(), 20, 5).await;
    store.wait_for_leader(WAIT).await.unwrap();
    assert_eq!(*store.state(), *before);
    let reopened = store.info();
    assert!(reopened.snapshot_index >= Some(snap), "{reopened:?}");
    assert_eq!(reopened.last_applied, info.last_applied);

    // snapshot_now covers everything applied.
    propose_ok(&store, node(1000)).await;
    store.snapshot_now().await.unwrap();
    let info = store.info();
    assert_eq!(info.snapshot_index, info.last_applied);
    let expected = store.state();
    store.shutdown().await.unwrap();

    let store = open(dir.path(), 20, 5).await;
    store.wait_for_leader(WAIT).await.unwrap();
    assert_eq!(*store.state(), *expected);
    assert!(store.state().nodes.contains_key("node-1000"));
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_torn_last_record_is_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("raft").join("log");
    let store = open(dir.path(), 10_000, 1_000).await;
    store.bootstrap_single().await.unwrap();
    for i in 0..10 {
        propose_ok(&store, node(i)).await;
    }
    store.shutdown().await.unwrap();

    // Cut the file in the middle of the last entry record, as a crash during its write would.
    let seg = std::fs::read(&log_path).unwrap();
    let recs = records(&seg);
    let (last_off, last) = recs
        .iter()
        .rev()
        .find(|(_, r)| r.get("entry").is_some())
        .unwrap();
    let last_index = last["entry"]["log_id"]["index"].as_u64().unwrap();
    let cut = last_off + 8 + 5;
    std::fs::write(&log_path, &seg[..cut]).unwrap();

    let store = open(dir.path(), 10_000, 1_000).await;
    store.wait_for_leader(WAIT).await.unwrap();
    let state = store.state();
    // The last proposal (node-9) was in the cut record; everything before it is intact.
    assert!(!state.nodes.contains_key("node-9"));
    for i in 0..9 {
        assert!(state.nodes.contains_key(&format!("node-{i}")), "node-{i}");
    }
    let info = store.info();
    assert!(info.last_log_index >= Some(last_index - 1), "{info:?}");
    // The store works on: a new proposal is durable across another restart.
    propose_ok(&store, node(9)).await;
    store.shutdown().await.unwrap();
    // The segment is whole again: every record is intact and the entries are consecutive.
    let seg = std::fs::read(&log_path).unwrap();
    let indexes: Vec<u64> = records(&seg)
        .iter()
        .filter_map(|(_, r)| {
            r.get("entry")
                .map(|e| e["log_id"]["index"].as_u64().unwrap())
        })
        .collect();
    assert!(indexes.windows(2).all(|w| w[1] == w[0] + 1), "{indexes:?}");
    let store = open(dir.path(), 10_000, 1_000).await;
    store.wait_for_leader(WAIT).await.unwrap();
    assert!(store.state().nodes.contains_key("node-9"));
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn damage_in_the_middle_of_the_log_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("raft").join("log");
    let store = open(dir.path(), 10_000, 1_000).await;
    store.bootstrap_single().await.unwrap();
    for i in 0..5 {
        propose_ok(&store, node(i)).await;
    }
    store.shutdown().await.unwrap();

    let mut seg = std::fs::read(&log_path).unwrap();
    let recs = records(&seg);
    let (off, _) = recs[2];
    seg[off + 8 + 3] ^= 0x20;
    std::fs::write(&log_path, &seg).unwrap();

    let err = Store::open(dir.path(), 1, ADDR, 10_000).await.unwrap_err();
    match &err {
        StoreError::CorruptLog { path, offset, .. } => {
            assert_eq!(path, &log_path);
            assert_eq!(*offset, off as u64);
        }
        other => panic!("expected CorruptLog, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&log_path.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("offset {off}")), "{msg}");
}

#[tokio::test]
async fn garbage_in_the_vote_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 10_000, 1_000).await;
    store.bootstrap_single().await.unwrap();
    store.shutdown().await.unwrap();

    let vote = dir.path().join("raft").join("vote.json");
    assert!(vote.exists());
    std::fs::write(&vote, b"\xde\xad\xbe\xef not json").unwrap();
    let err = Store::open(dir.path(), 1, ADDR, 10_000).await.unwrap_err();
    assert!(matches!(err, StoreError::CorruptVote { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&vote.display().to_string()), "{msg}");

    // The failed open released the directory: after repairing the file the store opens.
    std::fs::write(
        &vote,
        br#"{"vote":{"leader_id":{"term":1,"node_id":1},"committed":true}}"#,
    )
    .unwrap();
    let store = Store::open(dir.path(), 1, ADDR, 10_000).await.unwrap();
    store.wait_for_leader(WAIT).await.unwrap();
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_zero_snapshot_interval_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(dir.path(), 1, ADDR, 0).await.unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err:?}");
}
