//! shoal's replicated cluster state: the only crate that knows openraft.
//!
//! A [`Store`] runs one raft node whose state machine is a [`model::ClusterState`], changed only
//! by [`model::Command`]s through [`ClusterState::apply`]. Callers [`Store::propose`] commands
//! and read the applied state with [`Store::state`] or follow it with [`Store::subscribe`].
//!
//! On disk, under `<state_dir>/raft/` (the `log` and `sm` modules describe the formats):
//! - `LOCK`: taken while the store is open; a second open fails with [`StoreError::Locked`].
//! - `vote.json`: the raft vote (atomic replace).
//! - `log`: the log segment: checksummed records, one fsync per batch of writes.
//! - `snapshot-<term>-<index>.json`: the latest snapshot of the state (atomic replace).
//!
//! The state machine itself is kept in memory and rebuilt at start from the latest snapshot and
//! the committed entries after it.
//!
//! Messages to other managers go through a [`RaftTransport`]; [`Store::open`] uses
//! [`NoTransport`], which is enough for a single-manager cluster. For several managers, open
//! with [`Store::open_with`] and a transport that carries the bytes to the peer's
//! [`Store::handle_rpc`]; grow the group with [`Store::add_learner`] and
//! [`Store::change_voters`]. `tests/two_nodes.rs` does this with an in-process transport.
//!
//! Throughput: openraft 0.9 waits for each leader append to be durable before it takes the next
//! client write, so every proposal costs one fsync on the leader however many arrive at once.
//! Entries that arrive together in one append (replication to a follower, re-application at
//! start) are written with a single fsync.

#[cfg(test)]
mod conformance;
mod error;
mod fsutil;
mod log;
mod network;
mod sm;
mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use model::{Applied, ApplyError, ClusterState, Command};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::metrics::WaitError;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{BasicNode, ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use crate::error::StoreError;
pub use crate::network::{NoTransport, RaftTransport, RpcKind, TransportError, TransportFuture};
pub use crate::types::{ProposeResponse, TypeConfig};

use crate::log::LogWriterHandle;
use crate::network::Network;
use crate::sm::{SnapshotStore, StateMachine};

/// Name of the raft directory inside the node's state directory.
pub const RAFT_DIR: &str = "raft";

/// Default for [`StoreOptions::snapshot_interval`] (the `snapshot_interval` cluster setting).
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = 10_000;

/// Default for [`StoreOptions::logs_to_keep`].
pub const DEFAULT_LOGS_TO_KEEP: u64 = 1_000;

/// How long [`Store::snapshot_now`] waits for the snapshot to be written.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long [`Store::bootstrap_single`] waits for this node to become leader.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(60);

/// Tuning of a [`Store`]. `Default` gives the production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Take a snapshot after this many applied entries (`ClusterSettings::snapshot_interval`).
    pub snapshot_interval: u64,
    /// Entries kept in the log after a snapshot, for followers that lag a little; capped at
    /// `snapshot_interval`.
    pub logs_to_keep: u64,
    /// Leader heartbeat period.
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time in `[min, max)` starts an election.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
            logs_to_keep: DEFAULT_LOGS_TO_KEEP,
            heartbeat_interval: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
        }
    }
}

impl StoreOptions {
    fn raft_config(&self) -> Result<Config, StoreError> {
        if self.snapshot_interval == 0 {
            return Err(StoreError::Config(
                "snapshot_interval must be at least 1".into(),
            ));
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: ms(self.heartbeat_interval),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            // Snapshots are whole-state JSON: give a transfer chunk time to cross a slow link.
            install_snapshot_timeout: 5_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_interval),
            max_in_snapshot_log_to_keep: self.logs_to_keep.min(self.snapshot_interval),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Config(e.to_string()))
    }
}

/// A summary of the raft node for `shoal info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftInfo {
    /// This node's raft id.
    pub id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    /// Index of the last entry in the log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to the state.
    pub last_applied: Option<u64>,
    /// Index of the last entry included in the latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Entries up to this index were removed from the log (they are in the snapshot).
    pub purged_index: Option<u64>,
    /// Voting members: raft id and address.
    pub voters: Vec<(u64, String)>,
}

/// The members of the raft group: raft id -> address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeMap<u64, String>,
    pub learners: BTreeMap<u64, String>,
}

/// The replicated store of one manager node.
pub struct Store {
    raft: Raft<TypeConfig>,
    id: u64,
    addr: String,
    raft_dir: PathBuf,
    state: Arc<watch::Sender<Arc<ClusterState>>>,
    // Declared last: dropped after `raft`, so the log is closed once raft has been told to stop.
    writer: LogWriterHandle,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("raft_dir", &self.raft_dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the raft state under `dir` (the node's state directory; the files go
    /// in `dir/raft/`) for node `raft_id`, reachable by other managers at `addr`.
    ///
    /// A node that was initialised before becomes leader again by itself if it is the only
    /// voter; no new bootstrap is needed. Uses [`NoTransport`]: a single-manager cluster.
    pub async fn open(
        dir: &Path,
        raft_id: u64,
        addr: &str,
        snapshot_interval: u64,
    ) -> Result<Store, StoreError> {
        let options = StoreOptions {
            snapshot_interval,
            ..StoreOptions::default()
        };
        Store::open_with(dir, raft_id, addr, options, Arc::new(NoTransport)).await
    }

    /// [`Store::open`] with explicit tuning and the transport used to reach other managers.
    pub async fn open_with(
        dir: &Path,
        raft_id: u64,
        addr: &str,
        options: StoreOptions,
        transport: Arc<dyn RaftTransport>,
    ) -> Result<Store, StoreError> {
        let config = Arc::new(options.raft_config()?);
        let raft_dir = dir.join(RAFT_DIR);

        // Taking the lock first keeps a second process away from the snapshots too.
        let (log_store, writer) = log::open(&raft_dir)?;
        let (snapshots, snapshot) = SnapshotStore::open(&raft_dir)?;
        let (tx, _) = watch::channel(Arc::new(ClusterState::default()));
        let state = Arc::new(tx);
        let sm = StateMachine::new(snapshots, snapshot, state.clone());
        let network = Network {
            id: raft_id,
            transport,
        };
        let raft = Raft::new(raft_id, config, network, log_store, sm)
            .await
            .map_err(|e| StoreError::Stopped(e.to_string()))?;
        let store = Store {
            raft,
            id: raft_id,
            addr: addr.to_string(),
            raft_dir,
            state,
            writer,
        };
        tracing::info!(dir = %store.raft_dir.display(), id = raft_id, addr, "raft store opened");
        Ok(store)
    }

    /// This node's raft id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The raft directory (`<state_dir>/raft`).
    pub fn dir(&self) -> &Path {
        &self.raft_dir
    }

    /// Initialise a new one-voter cluster (this node) if this node has never been initialised,
    /// and wait until it leads. Does nothing to an initialised node (idempotent).
    pub async fn bootstrap_single(&self) -> Result<(), StoreError> {
        if !self.is_initialized().await? {
            let members = BTreeMap::from([(self.id, BasicNode::new(&self.addr))]);
            match self.raft.initialize(members).await {
                Ok(()) => {
                    tracing::info!(id = self.id, addr = %self.addr, "initialised a single-manager raft cluster");
                }
                // Initialised meanwhile by a concurrent call: same outcome.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(RaftError::APIError(e)) => return Err(StoreError::Raft(e.to_string())),
                Err(RaftError::Fatal(e)) => return Err(StoreError::Stopped(e.to_string())),
            }
        }
        self.wait_for_leader(BOOTSTRAP_TIMEOUT).await.map(|_| ())
    }

    /// Whether this node has raft state (a log, a vote or a snapshot): it was bootstrapped or
    /// joined a cluster.
    pub async fn is_initialized(&self) -> Result<bool, StoreError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Stopped(e.to_string()))
    }

    /// Wait until the cluster has a leader (possibly this node) and return its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, StoreError> {
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a raft leader is known")
            .await
            .map_err(|e| wait_error(e, "a raft leader", timeout))?;
        m.current_leader.ok_or(StoreError::Timeout {
            what: "a raft leader",
            after: timeout,
        })
    }

    /// Propose a command; resolves once it is committed and applied: `Ok(Applied)` or the
    /// [`ApplyError`] that the state machine answered (the state is then unchanged).
    ///
    /// Fails with [`StoreError::NotLeader`] on a node that is not the leader.
    pub async fn propose(&self, cmd: Command) -> Result<Result<Applied, ApplyError>, StoreError> {
        self.raft
            .client_write(cmd)
            .await
            .map(|resp| resp.data.result)
            .map_err(client_write_error)
    }

    /// Add node `id`, reachable at `addr`, as a non-voting member and wait until it has caught
    /// up with the log (it may receive the snapshot first). Leader only.
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<(), StoreError> {
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(client_write_error)?;
        tracing::info!(id, addr, "raft learner added");
        Ok(())
    }

    /// Make exactly `voters` the voting members; each must already be a member (a learner that
    /// has caught up, see [`Store::add_learner`]). Voters that are left out stay as learners.
    /// Leader only.
    pub async fn change_voters(&self, voters: BTreeSet<u64>) -> Result<(), StoreError> {
        self.raft
            .change_membership(voters.clone(), true)
            .await
            .map_err(client_write_error)?;
        tracing::info!(?voters, "raft voters changed");
        Ok(())
    }

    /// Add node `id` at `addr` as a voter: first as a learner that catches up (possibly from a
    /// snapshot), then as a voter. Leader only. Does nothing to a node that already votes.
    pub async fn add_voter(&self, id: u64, addr: &str) -> Result<(), StoreError> {
        if self.membership().voters.contains_key(&id) {
            return Ok(());
        }
        self.add_learner(id, addr).await?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            .await
            .map_err(client_write_error)?;
        tracing::info!(id, addr, "raft voter added");
        Ok(())
    }

    /// Remove node `id` from the raft group entirely (voter or learner). Leader only.
    pub async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        let m = self.membership();
        if m.voters.contains_key(&id) {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(client_write_error)?;
        } else if m.learners.contains_key(&id) {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(client_write_error)?;
        } else {
            return Ok(());
        }
        tracing::info!(id, "raft member removed");
        Ok(())
    }

    /// Change the address of member `id` (a node whose advertised address changed). Leader
    /// only.
    pub async fn set_member_addr(&self, id: u64, addr: &str) -> Result<(), StoreError> {
        self.raft
            .change_membership(
                ChangeMembers::SetNodes(BTreeMap::from([(id, BasicNode::new(addr))])),
                true,
            )
            .await
            .map_err(client_write_error)?;
        tracing::info!(id, addr, "raft member address changed");
        Ok(())
    }

    /// The raft group as this node knows it.
    pub fn membership(&self) -> Membership {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let mut out = Membership::default();
        for (id, node) in membership.nodes() {
            if membership.voter_ids().any(|v| v == *id) {
                out.voters.insert(*id, node.addr.clone());
            } else {
                out.learners.insert(*id, node.addr.clone());
            }
        }
        out
    }

    /// Why raft has stopped for good (a storage error), if it has: the node must restart.
    pub fn stop_reason(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        if let Err(e) = &metrics.borrow().running_state {
            return Some(e.to_string());
        }
        // The raft task is gone (it quit on a storage error) when its metrics channel closed.
        if metrics.has_changed().is_err() {
            return Some(
                "raft quit after a storage error (logged just before: a full disk or a disk error)"
                    .into(),
            );
        }
        None
    }

    /// The address of the leader this node knows of.
    pub fn leader_addr(&self) -> Option<String> {
        let leader = self.leader()?;
        self.membership().voters.get(&leader).cloned()
    }

    /// Wait until this node has applied at least log index `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), StoreError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "the change is applied")
            .await
            .map(|_| ())
            .map_err(|e| wait_error(e, "applying a change", timeout))
    }

    /// The state after the last applied entry.
    pub fn state(&self) -> Arc<ClusterState> {
        self.state.borrow().clone()
    }

    /// Follow the state: the receiver sees every applied change (coalesced when it lags; it
    /// always has the latest).
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.subscribe()
    }

    /// Whether this node is the raft leader now.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Raft numbers for `shoal info`.
    pub fn info(&self) -> RaftInfo {
        let m = self.raft.metrics();
        let m = m.borrow();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let membership = m.membership_config.membership();
        let voters = membership
            .voter_ids()
            .map(|id| {
                let addr = membership
                    .get_node(&id)
                    .map(|n| n.addr.clone())
                    .unwrap_or_default();
                (id, addr)
            })
            .collect();
        RaftInfo {
            id: m.id,
            role: role.to_string(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters,
        }
    }

    /// Take a snapshot of everything applied so far and wait until it is on disk (the log is
    /// then purged up to `logs_to_keep` entries before it).
    pub async fn snapshot_now(&self) -> Result<(), StoreError> {
        let applied = self.raft.metrics().borrow().last_applied;
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| StoreError::Stopped(e.to_string()))?;
        self.raft
            .wait(Some(SNAPSHOT_TIMEOUT))
            .metrics(|m| m.snapshot >= applied, "the snapshot is written")
            .await
            .map_err(|e| wait_error(e, "the raft snapshot", SNAPSHOT_TIMEOUT))?;
        Ok(())
    }

    /// Serve a raft RPC received from another manager through the transport: `request` is the
    /// bytes a peer's [`RaftTransport::call`] sent with `kind`; the answer goes back as its
    /// result.
    pub async fn handle_rpc(&self, kind: RpcKind, request: &[u8]) -> Result<Vec<u8>, StoreError> {
        match kind {
            RpcKind::AppendEntries => {
                let req: AppendEntriesRequest<TypeConfig> = decode_rpc(kind, request)?;
                encode_rpc(kind, &self.raft.append_entries(req).await)
            }
            RpcKind::Vote => {
                let req: VoteRequest<u64> = decode_rpc(kind, request)?;
                encode_rpc(kind, &self.raft.vote(req).await)
            }
            RpcKind::InstallSnapshot => {
                let req: InstallSnapshotRequest<TypeConfig> = decode_rpc(kind, request)?;
                encode_rpc(kind, &self.raft.install_snapshot(req).await)
            }
        }
    }

    /// Stop raft, flush the log and release the directory.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        let Store {
            raft,
            raft_dir,
            mut writer,
            ..
        } = self;
        let stopped = raft
            .shutdown()
            .await
            .map_err(|e| StoreError::Stopped(format!("raft task failed while stopping: {e}")));
        drop(raft);
        tokio::task::spawn_blocking(move || writer.close())
            .await
            .map_err(|e| {
                StoreError::Stopped(format!("raft log writer failed while closing: {e}"))
            })?;
        tracing::info!(dir = %raft_dir.display(), "raft store closed");
        stopped
    }
}

fn client_write_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => StoreError::NotLeader {
            leader: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(e) => StoreError::Raft(e.to_string()),
        RaftError::Fatal(e) => StoreError::Stopped(e.to_string()),
    }
}

fn wait_error(e: WaitError, what: &'static str, after: Duration) -> StoreError {
    match e {
        WaitError::Timeout(..) => StoreError::Timeout { what, after },
        WaitError::ShuttingDown => StoreError::Stopped("raft is shutting down".into()),
    }
}

fn decode_rpc<T: DeserializeOwned>(kind: RpcKind, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Rpc {
        kind: kind.as_str(),
        reason: e.to_string(),
    })
}

fn encode_rpc<T: Serialize>(kind: RpcKind, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Rpc {
        kind: kind.as_str(),
        reason: e.to_string(),
    })
}
