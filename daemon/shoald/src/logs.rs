//! `shoal service logs`: the lines the log driver wrote for each task of a service, merged in
//! time order and written into a pipe whose read end goes to the client over D-Bus.
//!
//! Log files are `<state_dir>/logs/<container id>.log` (and `.log.1` after a rotation); each
//! line is `<RFC 3339 timestamp> <stdout|stderr> <text>`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use model::{ClusterState, Task};

/// Where the log driver writes a task's output.
pub fn log_path(state_dir: &Path, task: &Task) -> PathBuf {
    state_dir
        .join("logs")
        .join(format!("{}.log", task.container_id()))
}

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub timestamp: String,
    pub stream: String,
    pub text: String,
}

pub fn parse_line(line: &str) -> Option<Line> {
    let (timestamp, rest) = line.split_once(' ')?;
    let (stream, text) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(Line {
        timestamp: timestamp.into(),
        stream: stream.into(),
        text: text.into(),
    })
}

/// The prefix docker prints: `web.1.abcdef123456@node1`.
fn prefix(task: &Task, node_name: &str) -> String {
    format!(
        "{}.{}@{}",
        task.name(),
        model::short_id(&task.id),
        node_name
    )
}

fn format_line(prefix: &str, line: &Line, timestamps: bool) -> String {
    if timestamps {
        format!("{prefix}    | {} {}\n", line.timestamp, line.text)
    } else {
        format!("{prefix}    | {}\n", line.text)
    }
}

/// One task whose output a logs call reads: where it ran and how its lines are prefixed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Source {
    pub node_id: String,
    pub node_name: String,
    /// The node port of the node that ran it.
    pub node_addr: String,
    pub prefix: String,
    pub container_id: String,
}

/// Every task of a service, from the cluster state (managers).
pub fn sources(state: &ClusterState, service_id: &str) -> Vec<Source> {
    state
        .tasks_of(service_id)
        .filter_map(|t| {
            let node = state.nodes.get(t.node_id.as_ref()?)?;
            Some(Source {
                node_id: node.id.clone(),
                node_name: node.name.clone(),
                node_addr: node.addr.clone(),
                prefix: prefix(t, &node.name),
                container_id: t.container_id(),
            })
        })
        .collect()
}

/// What one node is asked for: the lines of some of its tasks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Query {
    /// (prefix, container id) of each task.
    pub tasks: Vec<(String, String)>,
    /// Only the last lines of each task (the caller applies it again after merging).
    pub tail: Option<u64>,
    pub timestamps: bool,
    /// Read after these offsets (follow); `None`: the existing lines.
    pub offsets: Option<BTreeMap<String, u64>>,
}

/// What a node answers: (timestamp, formatted line) and where each file ends now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    pub lines: Vec<(String, String)>,
    pub offsets: BTreeMap<String, u64>,
}

fn file_of(state_dir: &Path, container_id: &str) -> PathBuf {
    state_dir.join("logs").join(format!("{container_id}.log"))
}

/// The last `n` lines of a file, read backwards in blocks: never the whole file for `--tail`.
fn last_lines(path: &Path, n: usize) -> Vec<String> {
    const BLOCK: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let Ok(len) = f.metadata().map(|m| m.len()) else {
        return Vec::new();
    };
    let mut pos = len;
    let mut buf: Vec<u8> = Vec::new();
    while pos > 0 && buf.iter().filter(|b| **b == b'\n').count() <= n {
        let start = pos.saturating_sub(BLOCK);
        let mut chunk = vec![0u8; (pos - start) as usize];
        if f.seek(SeekFrom::Start(start)).is_err() || f.read_exact(&mut chunk).is_err() {
            break;
        }
        chunk.extend_from_slice(&buf);
        buf = chunk;
        pos = start;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // The first line may be cut when reading stopped mid-file.
    if pos > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

/// Lines of a file from `offset` on (whole lines only); returns them and the new offset.
fn lines_from(path: &Path, offset: u64) -> (Vec<String>, u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (Vec::new(), offset);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut offset = if len < offset { 0 } else { offset }; // rotated
    if len == offset || f.seek(SeekFrom::Start(offset)).is_err() {
        return (Vec::new(), offset);
    }
    let mut out = Vec::new();
    let mut reader = BufReader::new(f);
    let mut buf = String::new();
    while let Ok(n) = reader.read_line(&mut buf) {
        if n == 0 || !buf.ends_with('\n') {
            break;
        }
        offset += n as u64;
        out.push(buf.trim_end_matches('\n').to_string());
        buf.clear();
    }
    (out, offset)
}

/// Answer a [`Query`] from this node's log files.
pub fn read_local(state_dir: &Path, q: &Query) -> Reply {
    let mut reply = Reply::default();
    for (prefix, cid) in &q.tasks {
        let path = file_of(state_dir, cid);
        let mut raw = Vec::new();
        match &q.offsets {
            None => {
                let mut rotated = path.clone().into_os_string();
                rotated.push(".1");
                let rotated = PathBuf::from(rotated);
                match q.tail {
                    Some(n) => {
                        let n = usize::try_from(n).unwrap_or(usize::MAX);
                        let mut current = last_lines(&path, n);
                        if current.len() < n {
                            let mut older = last_lines(&rotated, n - current.len());
                            older.append(&mut current);
                            current = older;
                        }
                        raw = current;
                    }
                    None => {
                        raw.extend(lines_from(&rotated, 0).0);
                        raw.extend(lines_from(&path, 0).0);
                    }
                }
                let end = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                reply.offsets.insert(cid.clone(), end);
            }
            Some(offsets) => {
                let (lines, end) = lines_from(&path, offsets.get(cid).copied().unwrap_or(0));
                raw = lines;
                reply.offsets.insert(cid.clone(), end);
            }
        }
        for l in raw {
            if let Some(line) = parse_line(&l) {
                reply.lines.push((
                    line.timestamp.clone(),
                    format_line(prefix, &line, q.timestamps),
                ));
            }
        }
    }
    reply
}

/// Where a logs call finds the tasks and the other nodes' lines.
pub trait Fetch: Send + Sync + 'static {
    /// The tasks of the service now; `None` once the service is gone.
    fn sources(&self) -> Result<Option<Vec<Source>>, String>;
    /// Ask another node.
    fn remote(&self, addr: &str, q: &Query) -> Result<Reply, String>;
    /// This node's id.
    fn me(&self) -> String;
}

/// What a logs call remembers between rounds: how far each node's files were read, and the
/// nodes that could not be read (each reported once).
#[derive(Default)]
struct Progress {
    offsets: BTreeMap<String, BTreeMap<String, u64>>,
    errors: Vec<String>,
}

fn gather(
    fetch: &dyn Fetch,
    state_dir: &Path,
    sources: &[Source],
    (tail, timestamps): (Option<u64>, bool),
    follow_round: bool,
    progress: &mut Progress,
) -> Vec<(String, String)> {
    let Progress { offsets, errors } = progress;
    let mut by_node: BTreeMap<(String, String, String), Vec<(String, String)>> = BTreeMap::new();
    for s in sources {
        by_node
            .entry((s.node_id.clone(), s.node_name.clone(), s.node_addr.clone()))
            .or_default()
            .push((s.prefix.clone(), s.container_id.clone()));
    }
    let mut all = Vec::new();
    for ((node_id, node_name, addr), tasks) in by_node {
        let q = Query {
            tasks,
            tail,
            timestamps,
            offsets: follow_round.then(|| offsets.get(&node_id).cloned().unwrap_or_default()),
        };
        let reply = if node_id == fetch.me() {
            Ok(read_local(state_dir, &q))
        } else {
            fetch.remote(&addr, &q)
        };
        match reply {
            Ok(r) => {
                offsets.entry(node_id).or_default().extend(r.offsets);
                all.extend(r.lines);
            }
            Err(e) => {
                let msg = format!(
                    "error: the logs of node {node_name} ({addr}) could not be read: {e}\n"
                );
                if !errors.contains(&msg) {
                    errors.push(msg);
                }
            }
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Write the logs into `out` (the write end of a pipe) on a thread of its own: every node's
/// lines merged by time (the last `tail` of them), then with `follow` new lines as they come,
/// until the reader goes away or the service is removed. A node that cannot be read is named in
/// an `error:` line instead of silently giving fewer lines.
pub fn spawn_writer(
    out: OwnedFd,
    state_dir: PathBuf,
    tail: Option<u64>,
    follow: bool,
    timestamps: bool,
    fetch: Arc<dyn Fetch>,
) {
    std::thread::Builder::new()
        .name("shoal-logs".into())
        .spawn(move || {
            let mut out = std::fs::File::from(out);
            let mut progress = Progress::default();
            let mut reported = 0;
            let sources = match fetch.sources() {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => {
                    let _ = out.write_all(format!("error: {e}\n").as_bytes());
                    return;
                }
            };
            let lines = gather(
                &*fetch,
                &state_dir,
                &sources,
                (tail, timestamps),
                false,
                &mut progress,
            );
            let skip = match tail {
                None => 0,
                Some(n) => lines
                    .len()
                    .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX)),
            };
            for (_, line) in lines.into_iter().skip(skip) {
                if out.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
            for e in &progress.errors[reported..] {
                let _ = out.write_all(e.as_bytes());
            }
            reported = progress.errors.len();
            if !follow {
                return;
            }
            let mut known: std::collections::BTreeSet<String> =
                sources.iter().map(|s| s.container_id.clone()).collect();
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if reader_gone(&out) {
                    return;
                }
                let sources = match fetch.sources() {
                    Ok(Some(s)) => s,
                    Ok(None) => return,
                    Err(_) => continue,
                };
                // Tasks that started since: from their first line.
                for s in &sources {
                    if known.insert(s.container_id.clone()) {
                        progress
                            .offsets
                            .entry(s.node_id.clone())
                            .or_default()
                            .insert(s.container_id.clone(), 0);
                    }
                }
                let lines = gather(
                    &*fetch,
                    &state_dir,
                    &sources,
                    (None, timestamps),
                    true,
                    &mut progress,
                );
                for (_, line) in lines {
                    if out.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                }
                for e in &progress.errors[reported..] {
                    let _ = out.write_all(e.as_bytes());
                }
                reported = progress.errors.len();
            }
        })
        .ok();
}

/// The read end of the pipe was closed (the client exited).
fn reader_gone(f: &std::fs::File) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)),
        Err(_) => true,
    }
}

/// The tasks whose log files a node keeps: every task of the cluster on a manager, the node's
/// assignments (history included) on a worker, which holds no cluster state. `None`: not known
/// yet (a worker before its first assignment set, a node in no cluster), so nothing is removed.
pub fn known_tasks(
    role: model::NodeRole,
    state: &ClusterState,
    assigned: Option<&[Task]>,
) -> Option<std::collections::BTreeSet<String>> {
    match role {
        model::NodeRole::Manager if !state.cluster_id.is_empty() => {
            Some(state.tasks.keys().cloned().collect())
        }
        model::NodeRole::Manager => None,
        model::NodeRole::Worker => {
            assigned.map(|tasks| tasks.iter().map(|t| t.id.clone()).collect())
        }
    }
}

/// Delete the log files of tasks that are no longer in the cluster state (the reaper dropped
/// them from the history), so the log directory stays bounded. Returns how many were removed.
pub fn collect_garbage(known: &std::collections::BTreeSet<String>, state_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(state_dir.join("logs")) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `<task name>.<task id>.log` or `.log.1`.
        let stem = name
            .strip_suffix(".log.1")
            .or_else(|| name.strip_suffix(".log"));
        let Some(task_id) = stem.and_then(|s| s.rsplit('.').next()) else {
            continue;
        };
        if !known.contains(task_id) && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_keeps_the_logs_of_its_assigned_tasks() {
        let task: model::Task = serde_json::from_value(serde_json::json!({
            "id": "mine", "service_id": "s", "service_name": "web", "slot": 1, "node_id": "w",
            "spec_version": 1, "spec": {}, "desired": "running", "status": {}, "created_at": 0
        }))
        .unwrap();
        let empty = ClusterState::default();
        // A worker's cluster state is empty: its assignments say what it keeps.
        let known = known_tasks(model::NodeRole::Worker, &empty, Some(&[task])).unwrap();
        assert!(known.contains("mine"));
        assert!(known_tasks(model::NodeRole::Worker, &empty, None).is_none());
        assert!(known_tasks(model::NodeRole::Manager, &empty, None).is_none());
        let mut st = ClusterState::default();
        st.cluster_id = "c".into();
        assert_eq!(
            known_tasks(model::NodeRole::Manager, &st, None),
            Some(Default::default())
        );
    }

    #[test]
    fn garbage_collection_keeps_logs_of_known_tasks_only() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        for f in [
            "web.1.keep1.log",
            "web.1.keep1.log.1",
            "web.2.gone1.log",
            "web.2.gone1.log.1",
            "notes.txt",
        ] {
            std::fs::write(logs.join(f), "x").unwrap();
        }
        let known = std::collections::BTreeSet::from(["keep1".to_string()]);
        assert_eq!(collect_garbage(&known, dir.path()), 2);
        let mut left: Vec<String> = std::fs::read_dir(&logs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec!["notes.txt", "web.1.keep1.log", "web.1.keep1.log.1"]
        );
    }

    #[test]
    fn tail_reads_only_the_end_and_merges_the_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let line = |i: usize| format!("2026-11-28T10:00:{:02}.{i:09}Z stdout line {i}\n", i / 1000);
        let old: String = (0..5).map(line).collect();
        let new: String = (5..200_000).map(line).collect();
        std::fs::write(logs.join("c1.log.1"), old).unwrap();
        std::fs::write(logs.join("c1.log"), &new).unwrap();
        let q = |tail| Query {
            tasks: vec![("web.1.x@n".into(), "c1".into())],
            tail,
            timestamps: false,
            offsets: None,
        };
        let r = read_local(dir.path(), &q(Some(3)));
        let texts: Vec<&str> = r.lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            texts,
            [
                "web.1.x@n    | line 199997\n",
                "web.1.x@n    | line 199998\n",
                "web.1.x@n    | line 199999\n"
            ]
        );
        assert_eq!(r.offsets["c1"], new.len() as u64);
        // All lines: the rotated file first.
        let all = read_local(dir.path(), &q(None));
        assert_eq!(all.lines.len(), 200_000);
        assert!(all.lines[0].1.ends_with("line 0\n"));
        // A tail longer than the current file reaches into the rotated one.
        let long = read_local(dir.path(), &q(Some(199_997)));
        assert_eq!(long.lines.len(), 199_997);
        assert!(long.lines[0].1.ends_with("line 3\n"));
        // Follow: only what came after the offset.
        std::fs::OpenOptions::new()
            .append(true)
            .open(logs.join("c1.log"))
            .unwrap()
            .write_all(line(200_000).as_bytes())
            .unwrap();
        let next = read_local(
            dir.path(),
            &Query {
                offsets: Some(r.offsets.clone()),
                ..q(None)
            },
        );
        assert_eq!(next.lines.len(), 1);
        assert!(next.lines[0].1.ends_with("line 200000\n"));
    }

    #[test]
    fn parses_driver_lines() {
        let l = parse_line("2026-11-28T10:00:00.000000001Z stderr oh no: it broke").unwrap();
        assert_eq!(l.stream, "stderr");
        assert_eq!(l.text, "oh no: it broke");
        assert_eq!(l.timestamp, "2026-11-28T10:00:00.000000001Z");
        let empty = parse_line("2026-11-28T10:00:00Z stdout").unwrap();
        assert_eq!(empty.text, "");
    }
}
