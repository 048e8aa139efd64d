//! The persistent raft log: vote, entries and the committed id, under `<state_dir>/raft/`.
//!
//! Files:
//! - `LOCK`: held (`flock`) while a store has the directory open.
//! - `vote.json`: the vote, replaced atomically (write, fsync, rename, fsync dir).
//! - `log`: one append-only segment of framed records (see [`crate::fsutil`]): a header record
//!   (`purged`, `committed`), then entries in index order interleaved with `committed` markers.
//!
//! Truncation cuts the segment at the first removed entry (`ftruncate`). Purging rewrites the
//! segment without the purged prefix into `log.tmp` and renames it over `log`; purges only happen
//! after a snapshot, so the rewrite copies at most the entries kept after it.
//!
//! All writes go through one writer thread, in submission order. The thread drains every request
//! that is waiting, writes them, and fsyncs once before it reports any of them durable: a burst
//! of proposals costs one fsync, and so does one `append` call with many entries.
//!
//! Recovery: a damaged record at the end of the segment (a write torn by a crash, which was
//! never reported durable) is dropped with a warning and the file is cut there. A damaged record
//! followed by intact ones is reported as [`StoreError::CorruptLog`] with the file and offset:
//! dropping it would lose committed entries.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageError, StorageIOError};
use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::fsutil::{self, atomic_write, frame_into, read_frame, sync_dir, with_path};
use crate::types::{
    LOG_FORMAT, LogRecord, LogRecordRef, NodeId, RaftEntry, RaftLogId, RaftVote, TypeConfig,
    VoteFile,
};

pub(crate) const LOG_FILE: &str = "log";
pub(crate) const VOTE_FILE: &str = "vote.json";
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Most requests the writer takes in one batch (one fsync).
const MAX_BATCH: usize = 4096;

/// What the rest of the process sees of the log; the writer thread makes it durable.
#[derive(Debug, Default)]
struct LogMem {
    entries: BTreeMap<u64, RaftEntry>,
    purged: Option<RaftLogId>,
    vote: Option<RaftVote>,
    committed: Option<RaftLogId>,
}

fn lock_mem(mem: &Mutex<LogMem>) -> MutexGuard<'_, LogMem> {
    // No code panics while holding this lock; if one ever did, the data is still consistent
    // because every critical section is a single map update.
    mem.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The [`RaftLogStorage`] handed to openraft.
pub(crate) struct LogStore {
    mem: Arc<Mutex<LogMem>>,
    tx: mpsc::Sender<Op>,
}

/// A read-only view of the log for openraft's replication tasks.
pub(crate) struct LogReader {
    mem: Arc<Mutex<LogMem>>,
}

/// Owned by [`crate::Store`]: closes the writer thread and waits for it.
pub(crate) struct LogWriterHandle {
    tx: mpsc::Sender<Op>,
    thread: Option<JoinHandle<()>>,
    /// Number of fsyncs of the segment so far.
    #[cfg_attr(not(test), allow(dead_code))]
    syncs: Arc<AtomicU64>,
}

impl LogWriterHandle {
    /// How many times the writer has fsynced the segment.
    #[cfg(test)]
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Ask the writer to finish what it has queued, fsync and exit; then wait for it. Requests
    /// sent after this fail. Idempotent.
    pub(crate) fn close(&mut self) {
        if let Some(thread) = self.thread.take() {
            // The writer may already have exited after an IO error; that is fine.
            let _ = self.tx.send(Op::Close);
            if thread.join().is_err() {
                tracing::error!("raft log writer thread panicked");
            }
        }
    }
}

impl Drop for LogWriterHandle {
    fn drop(&mut self) {
        self.close();
    }
}

/// Open (or create) the log under `raft_dir`: take the lock, load the vote and the segment,
/// start the writer thread.
pub(crate) fn open(raft_dir: &Path) -> Result<(LogStore, LogWriterHandle), StoreError> {
    std::fs::create_dir_all(raft_dir)
        .map_err(|e| StoreError::io("create raft directory", raft_dir, e))?;
    let lock = take_lock(raft_dir)?;

    let vote_path = raft_dir.join(VOTE_FILE);
    let vote = read_vote_file(&vote_path)?;

    let path = raft_dir.join(LOG_FILE);
    let seg = load_or_create_segment(&path)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io("open raft log", &path, e))?;

    tracing::info!(
        path = %path.display(),
        entries = seg.entries.len(),
        first = ?seg.entries.keys().next(),
        last = ?seg.entries.keys().next_back(),
        purged = ?seg.purged,
        committed = ?seg.committed,
        vote = ?vote,
        "opened raft log"
    );

    let mem = Arc::new(Mutex::new(LogMem {
        entries: seg.entries,
        purged: seg.purged,
        vote,
        committed: seg.committed,
    }));
    let writer = Writer {
        dir: raft_dir.to_path_buf(),
        path,
        vote_path,
        file,
        end: seg.end,
        offsets: seg.offsets,
        purged: seg.purged,
        committed: seg.committed,
        failed: None,
        syncs: Arc::new(AtomicU64::new(0)),
        _lock: lock,
    };
    let syncs = writer.syncs.clone();
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("raft-log-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| StoreError::io("start the log writer thread for", raft_dir, e))?;
    Ok((
        LogStore {
            mem,
            tx: tx.clone(),
        },
        LogWriterHandle {
            tx,
            thread: Some(thread),
            syncs,
        },
    ))
}

fn take_lock(raft_dir: &Path) -> Result<File, StoreError> {
    let path = raft_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::io("open lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: raft_dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(StoreError::io("lock", &path, e)),
    }
}

/// Read `vote.json`; a missing file means "never voted".
pub(crate) fn read_vote_file(path: &Path) -> Result<Option<RaftVote>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read raft vote file", path, e)),
    };
    let file: VoteFile = serde_json::from_slice(&bytes).map_err(|e| StoreError::CorruptVote {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Some(file.vote))
}

/// The decoded segment.
#[derive(Debug)]
struct Segment {
    purged: Option<RaftLogId>,
    committed: Option<RaftLogId>,
    entries: BTreeMap<u64, RaftEntry>,
    /// Byte offset of each entry's record.
    offsets: BTreeMap<u64, u64>,
    /// Length of the valid part of the file.
    end: u64,
}

fn encode_record(rec: &LogRecordRef<'_>, out: &mut Vec<u8>) -> io::Result<()> {
    let payload = serde_json::to_vec(rec).map_err(io::Error::other)?;
    frame_into(&payload, out)
}

fn load_or_create_segment(path: &Path) -> Result<Segment, StoreError> {
    // A leftover of a purge interrupted before its rename; `log` is still the valid segment.
    let tmp = fsutil::tmp_path(path);
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(|e| StoreError::io("remove stale", &tmp, e))?;
    }
    let buf = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(StoreError::io("read raft log", path, e)),
    };
    // Missing, or empty: the segment is created with its header by a rename, so an empty file
    // holds nothing of ours. Start it over.
    if buf.is_empty() {
        let mut header = Vec::new();
        encode_record(
            &LogRecordRef::Header {
                format: LOG_FORMAT,
                purged: None,
                committed: None,
            },
            &mut header,
        )
        .and_then(|()| atomic_write(path, &header))
        .map_err(|e| StoreError::io("create raft log", path, e))?;
        return Ok(Segment {
            purged: None,
            committed: None,
            entries: BTreeMap::new(),
            offsets: BTreeMap::new(),
            end: header.len() as u64,
        });
    }
    let (seg, torn) = decode_segment(path, &buf)?;
    if let Some((offset, reason)) = torn {
        tracing::warn!(
            path = %path.display(),
            offset,
            dropped_bytes = buf.len() as u64 - offset,
            %reason,
            "dropping a torn record at the end of the raft log (a write interrupted by a crash; it was never acknowledged)"
        );
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io("open raft log", path, e))?;
        f.set_len(offset)
            .and_then(|()| f.sync_all())
            .map_err(|e| StoreError::io("cut the torn tail of raft log", path, e))?;
    }
    Ok(seg)
}

/// Decode a whole segment. Returns the segment and, if the end was torn, the offset where the
/// valid part ends and why.
fn decode_segment(path: &Path, buf: &[u8]) -> Result<(Segment, Option<(u64, String)>), StoreError> {
    let corrupt = |offset: usize, reason: String| StoreError::CorruptLog {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let mut seg = Segment {
        purged: None,
        committed: None,
        entries: BTreeMap::new(),
        offsets: BTreeMap::new(),
        end: 0,
    };
    let mut offset = 0usize;
    let mut torn = None;
    while offset < buf.len() {
        let (payload, next) = match read_frame(buf, offset) {
            Ok(x) => x,
            Err(e) => {
                // The header is written atomically (create and rewrite go through a rename), so a
                // bad first record is never a torn append.
                if offset == 0 || next_valid_record(buf, offset).is_some() {
                    return Err(corrupt(offset, e.to_string()));
                }
                torn = Some((offset as u64, e.to_string()));
                break;
            }
        };
        let rec: LogRecord = serde_json::from_slice(payload)
            .map_err(|e| corrupt(offset, format!("undecodable record: {e}")))?;
        match rec {
            LogRecord::Header {
                format,
                purged,
                committed,
            } => {
                if offset != 0 {
                    return Err(corrupt(offset, "header record after the start".into()));
                }
                if format != LOG_FORMAT {
                    return Err(corrupt(
                        offset,
                        format!("unsupported log format {format} (this build reads {LOG_FORMAT})"),
                    ));
                }
                seg.purged = purged;
                seg.committed = committed;
            }
            _ if offset == 0 => {
                return Err(corrupt(
                    offset,
                    "the log does not start with a header".into(),
                ));
            }
            LogRecord::Entry(entry) => {
                let index = entry.log_id.index;
                // The entry before this one: the last entry read, or the purged id.
                let prev = seg
                    .entries
                    .values()
                    .next_back()
                    .map(|e| e.log_id)
                    .or(seg.purged);
                let expected = prev.map_or(Some(0), |p| p.index.checked_add(1));
                if Some(index) != expected {
                    let expected = expected.map_or("none".to_string(), |i| i.to_string());
                    return Err(corrupt(
                        offset,
                        format!("entry index {index} where {expected} was expected"),
                    ));
                }
                if let Some(p) = prev
                    && entry.log_id.leader_id.term < p.leader_id.term
                {
                    return Err(corrupt(
                        offset,
                        format!(
                            "entry {index} has term {} after an entry of term {}",
                            entry.log_id.leader_id.term, p.leader_id.term
                        ),
                    ));
                }
                seg.offsets.insert(index, offset as u64);
                seg.entries.insert(index, *entry);
            }
            LogRecord::Committed(id) => {
                if seg.committed < Some(id) {
                    seg.committed = Some(id);
                }
            }
        }
        offset = next;
    }
    seg.end = offset as u64;
    // The committed marker always follows the entries it covers, so it can only point past the
    // last entry if the tail holding those entries was cut: commit no further than what is left.
    let last = seg
        .entries
        .values()
        .next_back()
        .map(|e| e.log_id)
        .or(seg.purged);
    if let Some(c) = seg.committed
        && last.is_none_or(|l| l.index < c.index)
    {
        tracing::warn!(path = %path.display(), committed = %c, last = ?last, "the committed id points past the end of the raft log; lowering it");
        seg.committed = last;
    }
    Ok((seg, torn))
}

/// The offset of the first intact, decodable record after the damaged one at `offset`, if any.
fn next_valid_record(buf: &[u8], offset: usize) -> Option<usize> {
    (offset + 1..buf.len().saturating_sub(fsutil::FRAME_HEADER)).find(|&p| {
        read_frame(buf, p)
            .ok()
            .is_some_and(|(payload, _)| serde_json::from_slice::<LogRecord>(payload).is_ok())
    })
}

fn writer_gone() -> StorageError<NodeId> {
    StorageIOError::write_logs(&io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the raft log writer has stopped",
    ))
    .into()
}

async fn wait_reply(rx: oneshot::Receiver<io::Result<()>>) -> Result<(), io::Error> {
    match rx.await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the raft log writer stopped before finishing the request",
        )),
    }
}

fn read_range(mem: &Mutex<LogMem>, range: impl RangeBounds<u64>) -> Vec<RaftEntry> {
    let mem = lock_mem(mem);
    mem.entries.range(range).map(|(_, e)| e.clone()).collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>, StorageError<NodeId>> {
        Ok(read_range(&self.mem, range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>, StorageError<NodeId>> {
        Ok(read_range(&self.mem, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let mem = lock_mem(&self.mem);
        let last = mem
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(mem.purged);
        Ok(LogState {
            last_purged_log_id: mem.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            mem: self.mem.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &RaftVote) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&VoteFile { vote: *vote })
            .map_err(|e| StorageIOError::write_vote(&e))?;
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Op::Vote { bytes, done })
            .map_err(|_| writer_gone())?;
        wait_reply(rx)
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        lock_mem(&self.mem).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<RaftVote>, StorageError<NodeId>> {
        Ok(lock_mem(&self.mem).vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<RaftLogId>,
    ) -> Result<(), StorageError<NodeId>> {
        // Written with the next batch and not waited for: a committed id that is lost in a crash
        // only means that fewer entries are re-applied at start; they are committed again.
        let Some(id) = committed else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        encode_record(&LogRecordRef::Committed(&id), &mut bytes)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        lock_mem(&self.mem).committed = Some(id);
        self.tx
            .send(Op::Committed { bytes, id })
            .map_err(|_| writer_gone())?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<RaftLogId>, StorageError<NodeId>> {
        Ok(lock_mem(&self.mem).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<RaftEntry> = entries.into_iter().collect();
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len());
        for e in &entries {
            offsets.push((e.log_id.index, bytes.len() as u64));
            encode_record(&LogRecordRef::Entry(e), &mut bytes)
                .map_err(|err| StorageIOError::write_log_entry(e.log_id, &err))?;
        }
        {
            // Readable at once, durable when the callback fires.
            let mut mem = lock_mem(&self.mem);
            for e in entries {
                mem.entries.insert(e.log_id.index, e);
            }
        }
        self.tx
            .send(Op::Append {
                bytes,
                offsets,
                done: callback,
            })
            .map_err(|_| writer_gone())?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: RaftLogId) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(since = %log_id, "truncating raft log");
        lock_mem(&self.mem).entries.split_off(&log_id.index);
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Op::Truncate {
                since: log_id.index,
                done,
            })
            .map_err(|_| writer_gone())?;
        wait_reply(rx)
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: RaftLogId) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(upto = %log_id, "purging raft log");
        {
            let mut mem = lock_mem(&self.mem);
            let kept = mem.entries.split_off(&(log_id.index + 1));
            mem.entries = kept;
            if mem.purged < Some(log_id) {
                mem.purged = Some(log_id);
            }
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Op::Purge { upto: log_id, done })
            .map_err(|_| writer_gone())?;
        wait_reply(rx)
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

/// A request to the writer thread.
enum Op {
    /// Framed entry records, with (index, offset within `bytes`) of each.
    Append {
        bytes: Vec<u8>,
        offsets: Vec<(u64, u64)>,
        done: LogFlushed<TypeConfig>,
    },
    Committed {
        bytes: Vec<u8>,
        id: RaftLogId,
    },
    Truncate {
        since: u64,
        done: oneshot::Sender<io::Result<()>>,
    },
    Purge {
        upto: RaftLogId,
        done: oneshot::Sender<io::Result<()>>,
    },
    Vote {
        bytes: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
    Close,
}

/// Who waits for a request of the current batch.
enum Waiter {
    Flushed(LogFlushed<TypeConfig>),
    Reply(oneshot::Sender<io::Result<()>>),
}

impl Waiter {
    fn complete(self, result: &Result<(), (io::ErrorKind, String)>) {
        let r = result
            .as_ref()
            .map(|_| ())
            .map_err(|(kind, msg)| io::Error::new(*kind, msg.clone()));
        match self {
            Waiter::Flushed(cb) => cb.log_io_completed(r),
            Waiter::Reply(tx) => {
                // The requester may have gone away (raft shutting down); nothing to tell then.
                let _ = tx.send(r);
            }
        }
    }
}

/// The writer thread's state: the only code that writes the log and the vote.
struct Writer {
    dir: PathBuf,
    path: PathBuf,
    vote_path: PathBuf,
    file: File,
    /// End of the valid data in `file`; the next record goes here.
    end: u64,
    /// Byte offset of each entry's record in `file`.
    offsets: BTreeMap<u64, u64>,
    purged: Option<RaftLogId>,
    committed: Option<RaftLogId>,
    /// After an IO error the file state is unknown: every later request fails with this error.
    failed: Option<(io::ErrorKind, String)>,
    syncs: Arc<AtomicU64>,
    /// Held for the writer's lifetime; dropping it releases the directory.
    _lock: File,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        let mut buf = Vec::new();
        let mut waiters = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let mut close = false;
            let result = match &self.failed {
                Some(f) => {
                    for op in batch {
                        close |= Self::waiter_of(op, &mut waiters);
                    }
                    Err(f.clone())
                }
                None => self
                    .process(batch, &mut buf, &mut waiters, &mut close)
                    .map_err(|e| (e.kind(), e.to_string())),
            };
            if let Err(f) = &result
                && self.failed.is_none()
            {
                tracing::error!(path = %self.path.display(), error = %f.1, "raft log write failed; the log refuses further writes");
                self.failed = Some(f.clone());
            }
            for w in waiters.drain(..) {
                w.complete(&result);
            }
            if close {
                break;
            }
        }
        tracing::debug!(path = %self.path.display(), "raft log writer stopped");
    }

    /// Move the completion handle of `op` into `waiters`; true for `Close`.
    fn waiter_of(op: Op, waiters: &mut Vec<Waiter>) -> bool {
        match op {
            Op::Append { done, .. } => waiters.push(Waiter::Flushed(done)),
            Op::Truncate { done, .. } | Op::Purge { done, .. } | Op::Vote { done, .. } => {
                waiters.push(Waiter::Reply(done))
            }
            Op::Committed { .. } => {}
            Op::Close => return true,
        }
        false
    }

    /// Perform a batch; fsync once at the end. Stops at the first error (the remaining requests
    /// are failed by the caller with it).
    fn process(
        &mut self,
        batch: Vec<Op>,
        buf: &mut Vec<u8>,
        waiters: &mut Vec<Waiter>,
        close: &mut bool,
    ) -> io::Result<()> {
        buf.clear();
        let mut dirty = false;
        let mut result = Ok(());
        for op in batch {
            if result.is_err() {
                *close |= Self::waiter_of(op, waiters);
                continue;
            }
            result = match op {
                Op::Append {
                    bytes,
                    offsets,
                    done,
                } => {
                    let base = self.end + buf.len() as u64;
                    for (index, rel) in offsets {
                        self.offsets.insert(index, base + rel);
                    }
                    buf.extend_from_slice(&bytes);
                    dirty = true;
                    waiters.push(Waiter::Flushed(done));
                    Ok(())
                }
                Op::Committed { bytes, id } => {
                    if self.committed < Some(id) {
                        self.committed = Some(id);
                    }
                    buf.extend_from_slice(&bytes);
                    dirty = true;
                    Ok(())
                }
                Op::Truncate { since, done } => {
                    waiters.push(Waiter::Reply(done));
                    dirty = true;
                    self.flush(buf).and_then(|()| self.truncate(since, buf))
                }
                Op::Purge { upto, done } => {
                    waiters.push(Waiter::Reply(done));
                    // The rewrite fsyncs the new file; the old one's pending bytes are copied.
                    self.flush(buf).and_then(|()| self.purge(upto))
                }
                Op::Vote { bytes, done } => {
                    waiters.push(Waiter::Reply(done));
                    atomic_write(&self.vote_path, &bytes)
                        .map_err(|e| with_path("write raft vote file", &self.vote_path, e))
                }
                Op::Close => {
                    *close = true;
                    Ok(())
                }
            };
        }
        result?;
        self.flush(buf)?;
        if dirty {
            self.file
                .sync_data()
                .map_err(|e| with_path("fsync raft log", &self.path, e))?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Write the pending bytes at the end of the segment (no fsync).
    fn flush(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(buf, self.end)
            .map_err(|e| with_path("write raft log", &self.path, e))?;
        self.end += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    /// Cut the segment before the entry `since`; re-append the committed marker so that it is not
    /// lost with the cut part (committed entries are never truncated, so it stays valid).
    fn truncate(&mut self, since: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let Some((_, &cut)) = self.offsets.range(since..).next() else {
            return Ok(());
        };
        self.file
            .set_len(cut)
            .map_err(|e| with_path("truncate raft log", &self.path, e))?;
        self.end = cut;
        self.offsets.split_off(&since);
        if let Some(c) = &self.committed {
            encode_record(&LogRecordRef::Committed(c), buf)?;
        }
        Ok(())
    }

    /// Rewrite the segment without entries up to and including `upto`.
    fn purge(&mut self, upto: RaftLogId) -> io::Result<()> {
        if self.purged >= Some(upto) {
            return Ok(());
        }
        let copy_from = self
            .offsets
            .range(upto.index + 1..)
            .next()
            .map_or(self.end, |(_, &o)| o);
        let mut header = Vec::new();
        encode_record(
            &LogRecordRef::Header {
                format: LOG_FORMAT,
                purged: Some(&upto),
                committed: self.committed.as_ref(),
            },
            &mut header,
        )?;

        let tmp = fsutil::tmp_path(&self.path);
        let rewrite = || -> io::Result<File> {
            let mut out = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            out.write_all(&header)?;
            let mut src = &self.file;
            src.seek(SeekFrom::Start(copy_from))?;
            let copied = io::copy(&mut src.take(self.end - copy_from), &mut out)?;
            if copied != self.end - copy_from {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "copied {copied} of {} bytes from {}",
                        self.end - copy_from,
                        self.path.display()
                    ),
                ));
            }
            out.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            sync_dir(&self.dir)?;
            Ok(out)
        };
        let out = rewrite().map_err(|e| with_path("rewrite raft log", &self.path, e))?;

        let shift = |o: u64| o - copy_from + header.len() as u64;
        self.offsets = self
            .offsets
            .split_off(&(upto.index + 1))
            .into_iter()
            .map(|(i, o)| (i, shift(o)))
            .collect();
        self.end = shift(self.end);
        self.file = out;
        self.purged = Some(upto);
        tracing::debug!(path = %self.path.display(), upto = %upto, size = self.end, "raft log rewritten after purge");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::{BasicNode, CommittedLeaderId, EntryPayload, LogId, Membership};

    use super::*;

    fn entry(term: u64, index: u64) -> RaftEntry {
        let payload = if index == 0 {
            EntryPayload::Membership(Membership::new(
                vec![BTreeSet::from([1])],
                BTreeMap::from([(1, BasicNode::new("127.0.0.1:4600"))]),
            ))
        } else {
            EntryPayload::Normal(model::Command::RemoveNode {
                id: format!("n{index}"),
            })
        };
        RaftEntry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload,
        }
    }

    fn segment(entries: &[RaftEntry], purged: Option<RaftLogId>) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_record(
            &LogRecordRef::Header {
                format: LOG_FORMAT,
                purged: purged.as_ref(),
                committed: None,
            },
            &mut buf,
        )
        .unwrap();
        for e in entries {
            encode_record(&LogRecordRef::Entry(e), &mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn decodes_a_clean_segment() {
        let entries: Vec<_> = (0..5).map(|i| entry(1, i)).collect();
        let buf = segment(&entries, None);
        let (seg, torn) = decode_segment(Path::new("log"), &buf).unwrap();
        assert!(torn.is_none());
        assert_eq!(seg.entries.len(), 5);
        assert_eq!(seg.end, buf.len() as u64);
        assert_eq!(seg.offsets.len(), 5);
    }

    #[test]
    fn every_cut_inside_the_last_record_is_a_torn_tail() {
        let entries: Vec<_> = (0..3).map(|i| entry(1, i)).collect();
        let buf = segment(&entries, None);
        let good = segment(&entries[..2], None).len();
        for cut in good + 1..buf.len() {
            let (seg, torn) = decode_segment(Path::new("log"), &buf[..cut]).unwrap();
            assert_eq!(seg.entries.len(), 2, "cut at {cut}");
            assert_eq!(torn.map(|t| t.0), Some(good as u64), "cut at {cut}");
        }
    }

    #[test]
    fn damage_before_intact_records_is_an_error_with_offset() {
        let entries: Vec<_> = (0..4).map(|i| entry(1, i)).collect();
        let mut buf = segment(&entries, None);
        let second = segment(&entries[..1], None).len();
        buf[second + fsutil::FRAME_HEADER + 3] ^= 0xff;
        match decode_segment(Path::new("/x/log"), &buf) {
            Err(StoreError::CorruptLog { path, offset, .. }) => {
                assert_eq!(path, Path::new("/x/log"));
                assert_eq!(offset, second as u64);
            }
            other => panic!("expected CorruptLog, got {other:?}"),
        }
    }

    #[test]
    fn a_hole_in_the_indexes_is_an_error() {
        let entries = vec![entry(1, 0), entry(1, 1), entry(1, 3)];
        let buf = segment(&entries, None);
        assert!(matches!(
            decode_segment(Path::new("log"), &buf),
            Err(StoreError::CorruptLog { .. })
        ));
        // After a purge, the first entry must follow the purged id.
        let entries = vec![entry(1, 7)];
        let purged = Some(LogId::new(CommittedLeaderId::new(1, 1), 5));
        assert!(matches!(
            decode_segment(Path::new("log"), &segment(&entries, purged)),
            Err(StoreError::CorruptLog { .. })
        ));
        let purged = Some(LogId::new(CommittedLeaderId::new(1, 1), 6));
        let (seg, _) = decode_segment(Path::new("log"), &segment(&entries, purged)).unwrap();
        assert_eq!(seg.purged, purged);
        // Terms never go down along the log.
        let entries = vec![entry(2, 0), entry(1, 1)];
        assert!(matches!(
            decode_segment(Path::new("log"), &segment(&entries, None)),
            Err(StoreError::CorruptLog { .. })
        ));
        // An absurd purged id is an error, not an overflow.
        let purged = Some(LogId::new(CommittedLeaderId::new(1, 1), u64::MAX));
        assert!(matches!(
            decode_segment(Path::new("log"), &segment(&[entry(1, 0)], purged)),
            Err(StoreError::CorruptLog { .. })
        ));
    }

    #[test]
    fn random_damage_never_panics_and_never_yields_a_broken_log() {
        let entries: Vec<_> = (0..12).map(|i| entry(1 + i / 4, i)).collect();
        let clean = segment(&entries, None);
        // xorshift64: deterministic, so a failure reproduces.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..3000 {
            let mut buf = clean.clone();
            match next() % 3 {
                0 => {
                    let i = (next() as usize) % buf.len();
                    buf[i] ^= 1 << (next() % 8);
                }
                1 => buf.truncate((next() as usize) % buf.len()),
                _ => {
                    let i = (next() as usize) % buf.len();
                    let n = 1 + (next() as usize) % 16;
                    buf.splice(i..i, (0..n).map(|_| next() as u8));
                }
            }
            if let Ok((seg, _)) = decode_segment(Path::new("log"), &buf) {
                let idx: Vec<u64> = seg.entries.keys().copied().collect();
                assert!(
                    idx.iter().enumerate().all(|(k, &i)| i == k as u64),
                    "round {round}: {idx:?}"
                );
                assert!(seg.end as usize <= buf.len(), "round {round}");
            }
        }
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        for garbage in [
            &b"hello world, not a raft log"[..],
            &[0xffu8; 64][..],
            &[1, 0, 0, 0][..],
        ] {
            assert!(matches!(
                decode_segment(Path::new("log"), garbage),
                Err(StoreError::CorruptLog { offset: 0, .. })
            ));
        }
    }

    #[test]
    fn garbage_vote_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(VOTE_FILE);
        std::fs::write(&path, b"\x00\x01garbage").unwrap();
        let err = read_vote_file(&path).unwrap_err();
        assert!(matches!(err, StoreError::CorruptVote { .. }));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert_eq!(read_vote_file(&dir.path().join("absent")).unwrap(), None);
    }

    fn log_id(term: u64, index: u64) -> RaftLogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn indexes_and_terms(store: &LogStore) -> Vec<(u64, u64)> {
        lock_mem(&store.mem)
            .entries
            .values()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect()
    }

    #[tokio::test]
    async fn truncate_purge_and_append_survive_a_reopen() {
        use openraft::storage::RaftLogStorageExt;

        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut handle) = open(dir.path()).unwrap();
        store
            .blocking_append((0..20).map(|i| entry(1, i)))
            .await
            .unwrap();
        assert_eq!(
            handle.syncs(),
            1,
            "one append call of 20 entries, one fsync"
        );
        store.save_committed(Some(log_id(1, 12))).await.unwrap();
        // A new leader overwrites the uncommitted tail.
        store.truncate(log_id(1, 15)).await.unwrap();
        store
            .blocking_append((15..18).map(|i| entry(2, i)))
            .await
            .unwrap();
        store.purge(log_id(1, 7)).await.unwrap();
        store
            .blocking_append((18..20).map(|i| entry(2, i)))
            .await
            .unwrap();
        let mut vote = openraft::Vote::new(2, 1);
        vote.commit();
        store.save_vote(&vote).await.unwrap();
        let expected: Vec<(u64, u64)> = (8..20).map(|i| (i, if i < 15 { 1 } else { 2 })).collect();
        assert_eq!(indexes_and_terms(&store), expected);
        handle.close();
        drop(store);

        let (mut store, mut handle) = open(dir.path()).unwrap();
        assert_eq!(indexes_and_terms(&store), expected);
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 7)));
        assert_eq!(state.last_log_id, Some(log_id(2, 19)));
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 12)));
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));

        // Purging everything, then appending again, still reads back.
        store.purge(log_id(2, 19)).await.unwrap();
        store
            .blocking_append((20..23).map(|i| entry(2, i)))
            .await
            .unwrap();
        handle.close();
        drop(store);
        let (store, _handle) = open(dir.path()).unwrap();
        assert_eq!(indexes_and_terms(&store), vec![(20, 2), (21, 2), (22, 2)]);
    }

    #[test]
    fn an_empty_segment_file_is_started_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), b"").unwrap();
        let (store, _handle) = open(dir.path()).unwrap();
        assert!(indexes_and_terms(&store).is_empty());
        assert!(std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len() > 0);
    }

    #[test]
    fn second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, mut handle) = open(dir.path()).unwrap();
        assert!(matches!(open(dir.path()), Err(StoreError::Locked { .. })));
        handle.close();
        // The lock is released with the writer.
        let (_store2, _handle2) = open(dir.path()).unwrap();
    }
}
