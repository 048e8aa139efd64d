//! openraft's storage conformance suite run against the real log store and state machine, on a
//! fresh temporary directory for each case.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tokio::sync::watch;

use crate::log::{self, LogStore, LogWriterHandle};
use crate::sm::{SnapshotStore, StateMachine};
use crate::types::{NodeId, TypeConfig};

struct Builder;

/// Keeps the directory and the writer alive for the duration of one case.
type Guard = (tempfile::TempDir, LogWriterHandle);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Guard> for Builder {
    async fn build(&self) -> Result<(Guard, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let (log_store, writer) = log::open(dir.path()).expect("open the log store");
        let (snapshots, snapshot) = SnapshotStore::open(dir.path()).expect("open snapshots");
        let (tx, _) = watch::channel(Arc::default());
        let sm = StateMachine::new(snapshots, snapshot, Arc::new(tx));
        Ok(((dir, writer), log_store, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}
