//! The state machine (a [`ClusterState`] in memory) and its snapshots on disk.
//!
//! The state is not written on every apply: it is rebuilt at start from the latest snapshot
//! plus the committed log entries after it (openraft re-applies them). Snapshots are files
//! `<state_dir>/raft/snapshot-<term>-<index>.json` holding `{meta, state}`, written atomically;
//! when one is saved the older ones are deleted. The bytes of that file are also what a leader
//! sends to a follower that needs the snapshot.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use model::{Applied, ClusterState};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use tokio::sync::watch;

use crate::error::StoreError;
use crate::fsutil::{self, atomic_write, sync_dir};
use crate::types::{
    NodeId, ProposeResponse, RaftEntry, RaftLogId, RaftSnapshotMeta, SnapshotFile, SnapshotFileRef,
    TypeConfig,
};

type Membership = StoredMembership<NodeId, BasicNode>;

/// File name of the snapshot whose last entry is `id`.
fn snapshot_name(id: Option<&RaftLogId>) -> String {
    let (term, index) = id.map_or((0, 0), |id| (id.leader_id.term, id.index));
    format!("snapshot-{term}-{index}.json")
}

/// Parse `snapshot-<term>-<index>.json` into (term, index).
fn parse_snapshot_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("snapshot-")?.strip_suffix(".json")?;
    let (term, index) = rest.split_once('-')?;
    Some((term.parse().ok()?, index.parse().ok()?))
}

/// The snapshot files of one raft directory. Saving and reading are serialised by one lock, so a
/// reader never sees a file that a concurrent save is deleting.
#[derive(Debug)]
pub(crate) struct SnapshotStore {
    dir: PathBuf,
    /// Metadata of the snapshot on disk, if any.
    current: Mutex<Option<RaftSnapshotMeta>>,
    /// Makes snapshot ids unique within a process run.
    seq: AtomicU64,
}

impl SnapshotStore {
    /// Find the latest snapshot in `dir`, delete older ones and leftovers of interrupted writes.
    pub(crate) fn open(
        dir: &Path,
    ) -> Result<(Arc<SnapshotStore>, Option<SnapshotFile>), StoreError> {
        let mut found: Vec<((u64, u64), PathBuf)> = Vec::new();
        let read_dir = std::fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
        for item in read_dir {
            let item = item.map_err(|e| StoreError::io("list", dir, e))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("snapshot-") && name.ends_with(".json.tmp") {
                remove_quietly(&item.path());
            } else if let Some((term, index)) = parse_snapshot_name(name) {
                found.push(((index, term), item.path()));
            }
        }
        found.sort();
        let Some((_, latest)) = found.pop() else {
            return Ok((Arc::new(SnapshotStore::empty(dir)), None));
        };
        let bytes =
            std::fs::read(&latest).map_err(|e| StoreError::io("read raft snapshot", &latest, e))?;
        let file: SnapshotFile =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::CorruptSnapshot {
                path: latest.clone(),
                reason: e.to_string(),
            })?;
        let expected = snapshot_name(file.meta.last_log_id.as_ref());
        if latest.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
            return Err(StoreError::CorruptSnapshot {
                path: latest,
                reason: format!("its content is the snapshot {expected}"),
            });
        }
        for (_, old) in found {
            remove_quietly(&old);
        }
        tracing::info!(path = %latest.display(), meta = %file.meta, "loaded raft snapshot");
        let store = SnapshotStore {
            dir: dir.to_path_buf(),
            current: Mutex::new(Some(file.meta.clone())),
            seq: AtomicU64::new(0),
        };
        Ok((Arc::new(store), Some(file)))
    }

    fn empty(dir: &Path) -> SnapshotStore {
        SnapshotStore {
            dir: dir.to_path_buf(),
            current: Mutex::new(None),
            seq: AtomicU64::new(0),
        }
    }

    fn next_id(&self, last: Option<&RaftLogId>) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let (term, index) = last.map_or((0, 0), |id| (id.leader_id.term, id.index));
        format!("{term}-{index}-{n}")
    }

    /// Write a snapshot, make it current and delete the previous one. Blocking.
    ///
    /// Returns the file's bytes, or `None` if a newer snapshot was saved meanwhile (this one is
    /// then not written at all).
    fn save(&self, meta: &RaftSnapshotMeta, state: &ClusterState) -> io::Result<Option<Vec<u8>>> {
        let bytes =
            serde_json::to_vec(&SnapshotFileRef { meta, state }).map_err(io::Error::other)?;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cur) = current.as_ref()
            && cur.last_log_id > meta.last_log_id
        {
            return Ok(None);
        }
        let name = snapshot_name(meta.last_log_id.as_ref());
        let path = self.dir.join(&name);
        atomic_write(&path, &bytes)
            .map_err(|e| fsutil::with_path("write raft snapshot", &path, e))?;
        if let Some(old) = current.as_ref() {
            let old_name = snapshot_name(old.last_log_id.as_ref());
            if old_name != name {
                let old_path = self.dir.join(old_name);
                std::fs::remove_file(&old_path)
                    .or_else(|e| match e.kind() {
                        io::ErrorKind::NotFound => Ok(()),
                        _ => Err(e),
                    })
                    .and_then(|()| sync_dir(&self.dir))
                    .map_err(|e| fsutil::with_path("delete old raft snapshot", &old_path, e))?;
            }
        }
        tracing::info!(path = %path.display(), meta = %meta, size = bytes.len(), "saved raft snapshot");
        *current = Some(meta.clone());
        Ok(Some(bytes))
    }

    /// The current snapshot's metadata and file bytes. Blocking.
    fn read_current(&self) -> io::Result<Option<(RaftSnapshotMeta, Vec<u8>)>> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(meta) = current.as_ref() else {
            return Ok(None);
        };
        let path = self.dir.join(snapshot_name(meta.last_log_id.as_ref()));
        let bytes =
            std::fs::read(&path).map_err(|e| fsutil::with_path("read raft snapshot", &path, e))?;
        Ok(Some((meta.clone(), bytes)))
    }

    /// Metadata of the snapshot on disk.
    #[cfg(test)]
    pub(crate) fn current_meta(&self) -> Option<RaftSnapshotMeta> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn remove_quietly(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed stale raft snapshot file"),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "failed to remove stale raft snapshot file")
        }
    }
}

/// The [`RaftStateMachine`] handed to openraft.
pub(crate) struct StateMachine {
    state: Arc<ClusterState>,
    last_applied: Option<RaftLogId>,
    membership: Membership,
    snapshots: Arc<SnapshotStore>,
    tx: Arc<watch::Sender<Arc<ClusterState>>>,
}

impl StateMachine {
    /// A state machine starting from `snapshot` (or empty), publishing to `tx`.
    pub(crate) fn new(
        snapshots: Arc<SnapshotStore>,
        snapshot: Option<SnapshotFile>,
        tx: Arc<watch::Sender<Arc<ClusterState>>>,
    ) -> StateMachine {
        let (state, last_applied, membership) = match snapshot {
            Some(f) => (f.state, f.meta.last_log_id, f.meta.last_membership),
            None => (ClusterState::default(), None, Membership::default()),
        };
        let state = Arc::new(state);
        tx.send_replace(state.clone());
        StateMachine {
            state,
            last_applied,
            membership,
            snapshots,
            tx,
        }
    }

    fn publish(&self) {
        self.tx.send_replace(self.state.clone());
    }
}

/// Builds a snapshot from a frozen view of the state (an `Arc` that later applies do not touch:
/// they copy on write).
pub(crate) struct SnapshotBuilder {
    state: Arc<ClusterState>,
    last_applied: Option<RaftLogId>,
    membership: Membership,
    snapshots: Arc<SnapshotStore>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("snapshot task failed: {e}"))))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let meta = RaftSnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.snapshots.next_id(self.last_applied.as_ref()),
        };
        let state = self.state.clone();
        let snapshots = self.snapshots.clone();
        let m = meta.clone();
        let saved = blocking(move || snapshots.save(&m, &state))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let bytes = match saved {
            Some(b) => b,
            None => {
                // A newer snapshot was installed meanwhile: hand that one out instead.
                let snapshots = self.snapshots.clone();
                match blocking(move || snapshots.read_current())
                    .await
                    .map_err(|e| StorageIOError::read_snapshot(None, &e))?
                {
                    Some((newer, bytes)) => {
                        return Ok(Snapshot {
                            meta: newer,
                            snapshot: Box::new(Cursor::new(bytes)),
                        });
                    }
                    None => {
                        return Err(StorageIOError::write_snapshot(
                            Some(meta.signature()),
                            &io::Error::other("the newer snapshot disappeared"),
                        )
                        .into());
                    }
                }
            }
        };
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<RaftLogId>, Membership), StorageError<NodeId>> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ProposeResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut changed = false;
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => Ok(Applied::default()),
                EntryPayload::Normal(cmd) => {
                    // Copy-on-write while a subscriber or a snapshot builder still holds the
                    // previous state: cheap, the state's maps are persistent (O(1) to clone,
                    // a change copies only the path to what it changes).
                    let r = Arc::make_mut(&mut self.state).apply(&cmd);
                    if let Err(e) = &r {
                        tracing::debug!(log_id = %entry.log_id, error = %e, "command rejected by the state machine");
                    }
                    changed |= r.as_ref().is_ok_and(|a| a.changed > 0);
                    r
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Ok(Applied::default())
                }
            };
            responses.push(ProposeResponse { result });
        }
        if changed {
            self.publish();
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            state: self.state.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &RaftSnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let file: SnapshotFile = serde_json::from_slice(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let state = Arc::new(file.state);
        let snapshots = self.snapshots.clone();
        let (m, s) = (meta.clone(), state.clone());
        blocking(move || snapshots.save(&m, &s))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(meta = %meta, "installed raft snapshot from the leader");
        self.state = state;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let snapshots = self.snapshots.clone();
        let current = blocking(move || snapshots.read_current())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(current.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    fn meta(term: u64, index: u64) -> RaftSnapshotMeta {
        RaftSnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(term, 1), index)),
            last_membership: Membership::default(),
            snapshot_id: format!("{term}-{index}"),
        }
    }

    #[test]
    fn names_round_trip() {
        let m = meta(3, 77);
        let name = snapshot_name(m.last_log_id.as_ref());
        assert_eq!(name, "snapshot-3-77.json");
        assert_eq!(parse_snapshot_name(&name), Some((3, 77)));
        assert_eq!(parse_snapshot_name("snapshot-3-77.json.tmp"), None);
        assert_eq!(parse_snapshot_name("snapshot-x-1.json"), None);
    }

    #[test]
    fn save_keeps_only_the_latest_and_open_loads_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = SnapshotStore::open(dir.path()).unwrap();
        assert!(loaded.is_none());
        let mut state = ClusterState::default();
        state.cluster_id = "one".into();
        store.save(&meta(1, 10), &state).unwrap().unwrap();
        state.cluster_id = "two".into();
        store.save(&meta(2, 20), &state).unwrap().unwrap();
        // An older snapshot finishing late does not replace the newer one.
        assert!(store.save(&meta(1, 15), &state).unwrap().is_none());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["snapshot-2-20.json".to_string()]);
        assert_eq!(
            serde_json::from_slice::<SnapshotFile>(
                &std::fs::read(dir.path().join("snapshot-2-20.json")).unwrap()
            )
            .unwrap()
            .meta
            .last_log_id,
            meta(2, 20).last_log_id
        );

        // A leftover from an interrupted write and an old file are cleaned up at open.
        std::fs::write(dir.path().join("snapshot-3-30.json.tmp"), b"partial").unwrap();
        std::fs::write(dir.path().join("snapshot-1-5.json"), b"old").unwrap();
        let (store, loaded) = SnapshotStore::open(dir.path()).unwrap();
        let loaded = loaded.unwrap();
        assert_eq!(loaded.state.cluster_id, "two");
        assert_eq!(
            store.current_meta().unwrap().last_log_id,
            meta(2, 20).last_log_id
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["snapshot-2-20.json".to_string()]);
    }

    #[test]
    fn corrupt_snapshot_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot-1-4.json");
        std::fs::write(&path, b"{\"meta\": 12").unwrap();
        match SnapshotStore::open(dir.path()) {
            Err(StoreError::CorruptSnapshot { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected CorruptSnapshot, got {other:?}"),
        }
    }
}
