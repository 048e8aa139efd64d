//! Two stores joined by an in-process [`RaftTransport`] that carries the RPC bytes straight to
//! the other store's `handle_rpc`: the path a real node-to-node transport takes, minus the wire.
//! Checks that the RPC encoding round-trips, that a new member receives the snapshot when the
//! log was purged, and that a follower refuses proposals with the leader's address.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use model::{Availability, Command, Node, NodeRole, NodeStatus};
use store::{
    RaftTransport, RpcKind, Store, StoreError, StoreOptions, TransportError, TransportFuture,
};

const WAIT: Duration = Duration::from_secs(60);

/// Routes calls to registered stores by raft id.
#[derive(Default)]
struct MemNet {
    stores: Mutex<HashMap<u64, Weak<Store>>>,
}

impl MemNet {
    fn register(&self, store: &Arc<Store>) {
        self.stores
            .lock()
            .unwrap()
            .insert(store.id(), Arc::downgrade(store));
    }

    /// Take `store` off the network and wait until no call holds it, then shut it down.
    async fn shutdown(&self, mut store: Arc<Store>) {
        self.stores.lock().unwrap().remove(&store.id());
        let deadline = Instant::now() + WAIT;
        let store = loop {
            match Arc::try_unwrap(store) {
                Ok(s) => break s,
                Err(back) => {
                    assert!(Instant::now() < deadline, "a transport call never finished");
                    store = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        store.shutdown().await.unwrap();
    }
}

impl RaftTransport for MemNet {
    fn call(
        &self,
        target: u64,
        addr: &str,
        kind: RpcKind,
        request: Vec<u8>,
        _timeout: Duration,
    ) -> TransportFuture {
        let store = self
            .stores
            .lock()
            .unwrap()
            .get(&target)
            .and_then(Weak::upgrade);
        let addr = addr.to_string();
        Box::pin(async move {
            let Some(store) = store else {
                return Err(TransportError::Unreachable {
                    target,
                    addr,
                    reason: "not registered".into(),
                });
            };
            store
                .handle_rpc(kind, &request)
                .await
                .map_err(|e| TransportError::Failed {
                    target,
                    reason: e.to_string(),
                })
        })
    }
}

fn node(i: u64) -> Command {
    Command::UpsertNode(Node {
        id: format!("node-{i}"),
        raft_id: i,
        name: format!("n{i}"),
        role: NodeRole::Worker,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        labels: BTreeMap::new(),
        addr: "10.0.0.1:4600".into(),
        last_heartbeat: i,
        version: String::new(),
        status_message: String::new(),
        resources: Default::default(),
        ingress_addr: None,
    })
}

async fn open(dir: &Path, id: u64, net: &Arc<MemNet>) -> Arc<Store> {
    let options = StoreOptions {
        snapshot_interval: 1_000,
        logs_to_keep: 2,
        ..StoreOptions::default()
    };
    let store = Store::open_with(dir, id, &format!("mem-{id}"), options, net.clone())
        .await
        .unwrap();
    let store = Arc::new(store);
    net.register(&store);
    store
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_manager_joins_through_the_transport() {
    let dir1 = tempfile::tempdir().unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let net = Arc::new(MemNet::default());

    let s1 = open(dir1.path(), 1, &net).await;
    s1.bootstrap_single().await.unwrap();
    for i in 0..30 {
        s1.propose(node(i)).await.unwrap().unwrap();
    }
    // Snapshot and purge, so that the new member must receive the snapshot.
    s1.snapshot_now().await.unwrap();
    wait_until("the log purge", || s1.info().purged_index.is_some()).await;

    let s2 = open(dir2.path(), 2, &net).await;
    s1.add_learner(2, "mem-2").await.unwrap();
    wait_until("the learner to catch up", || *s2.state() == *s1.state()).await;
    assert!(s2.info().snapshot_index.is_some(), "{:?}", s2.info());

    s1.change_voters(BTreeSet::from([1, 2])).await.unwrap();
    let voters: Vec<u64> = s1.info().voters.iter().map(|(id, _)| *id).collect();
    assert_eq!(voters, vec![1, 2]);

    // Replication goes on with both voters; the follower sees every change.
    s1.propose(node(100)).await.unwrap().unwrap();
    wait_until("replication of node-100", || {
        s2.state().nodes.contains_key("node-100")
    })
    .await;
    assert_eq!(s2.leader(), Some(1));
    assert!(!s2.is_leader());

    // A follower refuses proposals and names the leader.
    match s2.propose(node(101)).await {
        Err(StoreError::NotLeader {
            leader: Some(1),
            leader_addr: Some(addr),
        }) => assert_eq!(addr, "mem-1"),
        other => panic!("expected NotLeader(1), got {other:?}"),
    }

    net.shutdown(s2).await;
    net.shutdown(s1).await;
}
