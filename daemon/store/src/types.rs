//! The raft type configuration and every type the store persists.
//!
//! Persisted types change only additively (new fields with `#[serde(default)]`); the round-trip
//! tests at the bottom pin their JSON shape.

use std::io::Cursor;

use model::{Applied, ApplyError, ClusterState, Command};
use openraft::{BasicNode, Entry, LogId, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// shoal's raft types: log entries carry a [`model::Command`], applying one answers a
    /// [`ProposeResponse`]; node ids are the managers' `raft_id` and a node's address is the
    /// `host:port` of its node-to-node endpoint.
    pub TypeConfig:
        D = Command,
        R = ProposeResponse,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What applying one log entry answers: the outcome of [`ClusterState::apply`] for a command,
/// `Ok(Applied::default())` for blank and membership entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposeResponse {
    pub result: Result<Applied, ApplyError>,
}

pub(crate) type NodeId = u64;
pub(crate) type RaftLogId = LogId<NodeId>;
pub(crate) type RaftEntry = Entry<TypeConfig>;
pub(crate) type RaftVote = Vote<NodeId>;
pub(crate) type RaftSnapshotMeta = SnapshotMeta<NodeId, BasicNode>;

/// Version of the log segment format, written in its header record.
pub(crate) const LOG_FORMAT: u32 = 1;

/// One record of the log segment, as decoded. The first record of a segment is always a
/// `Header`; the rest are entries in index order, interleaved with `Committed` markers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LogRecord {
    Header {
        format: u32,
        /// Entries up to and including this id were purged (they are in a snapshot).
        purged: Option<RaftLogId>,
        /// The committed id known when the segment was rewritten.
        #[serde(default)]
        committed: Option<RaftLogId>,
    },
    Entry(Box<RaftEntry>),
    Committed(RaftLogId),
}

/// The encoding side of [`LogRecord`]: same JSON shape, borrowing instead of owning.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LogRecordRef<'a> {
    Header {
        format: u32,
        purged: Option<&'a RaftLogId>,
        committed: Option<&'a RaftLogId>,
    },
    Entry(&'a RaftEntry),
    Committed(&'a RaftLogId),
}

/// Content of `raft/vote.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VoteFile {
    pub vote: RaftVote,
}

/// Content of `raft/snapshot-<term>-<index>.json`; also the bytes sent to a follower that
/// installs the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct SnapshotFile {
    pub meta: RaftSnapshotMeta,
    pub state: ClusterState,
}

/// The encoding side of [`SnapshotFile`].
#[derive(Debug, Serialize)]
pub(crate) struct SnapshotFileRef<'a> {
    pub meta: &'a RaftSnapshotMeta,
    pub state: &'a ClusterState,
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use model::{ClusterSettings, Node, NodeRole, NodeStatus};
    use openraft::{CommittedLeaderId, EntryPayload, Membership, StoredMembership};

    use super::*;

    fn log_id(term: u64, index: u64) -> RaftLogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn membership() -> Membership<NodeId, BasicNode> {
        let mut nodes = BTreeMap::new();
        nodes.insert(1, BasicNode::new("10.0.0.1:4600"));
        Membership::new(vec![BTreeSet::from([1])], nodes)
    }

    fn sample_command() -> Command {
        Command::UpsertNode(Node {
            id: "n1".into(),
            raft_id: 1,
            name: "alpha".into(),
            role: NodeRole::Manager,
            availability: model::Availability::Active,
            status: NodeStatus::Ready,
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            addr: "10.0.0.1:4600".into(),
            last_heartbeat: 42,
            version: "0.1.0".into(),
            status_message: String::new(),
            resources: Default::default(),
            ingress_addr: None,
        })
    }

    fn round_trip_record(rec: LogRecordRef<'_>) -> LogRecord {
        let json = serde_json::to_vec(&rec).unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    #[test]
    fn log_records_round_trip() {
        let entries = [
            Entry::<TypeConfig> {
                log_id: log_id(0, 0),
                payload: EntryPayload::Membership(membership()),
            },
            Entry::<TypeConfig> {
                log_id: log_id(1, 1),
                payload: EntryPayload::Blank,
            },
            Entry::<TypeConfig> {
                log_id: log_id(1, 2),
                payload: EntryPayload::Normal(sample_command()),
            },
        ];
        for e in &entries {
            match round_trip_record(LogRecordRef::Entry(e)) {
                LogRecord::Entry(back) => {
                    assert_eq!(back.log_id, e.log_id);
                    assert_eq!(
                        serde_json::to_value(&back.payload).unwrap(),
                        serde_json::to_value(&e.payload).unwrap()
                    );
                }
                other => panic!("expected an entry, got {other:?}"),
            }
        }
        let purged = log_id(3, 9);
        let committed = log_id(3, 12);
        assert_eq!(
            round_trip_record(LogRecordRef::Header {
                format: LOG_FORMAT,
                purged: Some(&purged),
                committed: Some(&committed),
            }),
            LogRecord::Header {
                format: LOG_FORMAT,
                purged: Some(purged),
                committed: Some(committed),
            }
        );
        assert_eq!(
            round_trip_record(LogRecordRef::Committed(&committed)),
            LogRecord::Committed(committed)
        );
    }

    #[test]
    fn header_without_committed_still_decodes() {
        // Additive change: `committed` may be absent in a header written by an older version.
        let rec: LogRecord =
            serde_json::from_str(r#"{"header":{"format":1,"purged":null}}"#).unwrap();
        assert_eq!(
            rec,
            LogRecord::Header {
                format: 1,
                purged: None,
                committed: None
            }
        );
    }

    #[test]
    fn vote_and_response_round_trip() {
        let mut vote = Vote::new(7, 3);
        vote.commit();
        let file = VoteFile { vote };
        let back: VoteFile = serde_json::from_str(&serde_json::to_string(&file).unwrap()).unwrap();
        assert_eq!(back, file);

        for result in [
            Ok(Applied { changed: 3 }),
            Err(ApplyError::PortInUse {
                port: 80,
                protocol: "tcp".into(),
                service: "web".into(),
            }),
        ] {
            let resp = ProposeResponse { result };
            let back: ProposeResponse =
                serde_json::from_str(&serde_json::to_string(&resp).unwrap()).unwrap();
            assert_eq!(back, resp);
        }
    }

    #[test]
    fn snapshot_file_round_trip() {
        let mut state = ClusterState::default();
        state
            .apply(&Command::Bootstrap {
                cluster_id: "c1".into(),
                settings: ClusterSettings::default(),
            })
            .unwrap();
        state.apply(&sample_command()).unwrap();
        let meta = RaftSnapshotMeta {
            last_log_id: Some(log_id(2, 40)),
            last_membership: StoredMembership::new(Some(log_id(1, 0)), membership()),
            snapshot_id: "2-40-1".into(),
        };
        let json = serde_json::to_vec(&SnapshotFileRef {
            meta: &meta,
            state: &state,
        })
        .unwrap();
        let back: SnapshotFile = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.meta, meta);
        assert_eq!(back.state, state);
    }
}
