//! `shoal service logs`: the lines the log driver wrote for each task of a service, merged in
//! time order and written into a pipe whose read end goes to the client over D-Bus.
//!
//! Log files are `<state_dir>/logs/<container id>.log` (and `.log.1` after a rotation); each
//! line is `<RFC 3339 timestamp> <stdout|stderr> <text>`.

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
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

fn read_lines(path: &Path) -> Vec<Line> {
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| parse_line(&l))
        .collect()
}

/// The tasks whose logs belong to `service_id`, with the display prefix of each.
fn sources(state: &ClusterState, service_id: &str, state_dir: &Path) -> Vec<(String, PathBuf)> {
    state
        .tasks_of(service_id)
        .map(|t| {
            let node = t
                .node_id
                .as_ref()
                .and_then(|n| state.nodes.get(n))
                .map(|n| n.name.clone())
                .unwrap_or_default();
            (prefix(t, &node), log_path(state_dir, t))
        })
        .collect()
}

/// Everything logged so far, merged by time: the last `tail` lines, or all of them (`None`).
pub fn existing(
    state: &ClusterState,
    service_id: &str,
    state_dir: &Path,
    tail: Option<u64>,
    timestamps: bool,
) -> Vec<String> {
    let mut all: Vec<(String, String)> = Vec::new();
    for (prefix, path) in sources(state, service_id, state_dir) {
        let mut rotated = path.clone().into_os_string();
        rotated.push(".1");
        for p in [PathBuf::from(rotated), path] {
            for line in read_lines(&p) {
                all.push((
                    line.timestamp.clone(),
                    format_line(&prefix, &line, timestamps),
                ));
            }
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let skip = match tail {
        None => 0,
        Some(n) => all
            .len()
            .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    all.into_iter().skip(skip).map(|(_, l)| l).collect()
}

/// Write the logs into `out` (the write end of a pipe) on a thread of its own. With `follow`,
/// keep polling the files of the service's tasks (including tasks that start later) until the
/// reader goes away or `state()` no longer knows the service.
pub fn spawn_writer(
    out: OwnedFd,
    service_id: String,
    state_dir: PathBuf,
    tail: Option<u64>,
    follow: bool,
    timestamps: bool,
    state: Arc<dyn Fn() -> Arc<ClusterState> + Send + Sync>,
) {
    std::thread::Builder::new()
        .name("shoal-logs".into())
        .spawn(move || {
            let mut out = std::fs::File::from(out);
            let snapshot = state();
            for line in existing(&snapshot, &service_id, &state_dir, tail, timestamps) {
                if out.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            // Follow: remember how far each file was read, then poll for growth.
            let mut offsets: std::collections::HashMap<PathBuf, u64> =
                sources(&snapshot, &service_id, &state_dir)
                    .into_iter()
                    .map(|(_, p)| {
                        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                        (p, len)
                    })
                    .collect();
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let st = state();
                if !st.services.contains_key(&service_id) {
                    return;
                }
                for (prefix, path) in sources(&st, &service_id, &state_dir) {
                    let offset = offsets.entry(path.clone()).or_insert(0);
                    let Ok(mut f) = std::fs::File::open(&path) else {
                        continue;
                    };
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    if len < *offset {
                        *offset = 0; // rotated
                    }
                    if len == *offset || f.seek(SeekFrom::Start(*offset)).is_err() {
                        continue;
                    }
                    let mut reader = BufReader::new(f);
                    let mut buf = String::new();
                    while let Ok(n) = reader.read_line(&mut buf) {
                        if n == 0 || !buf.ends_with('\n') {
                            break;
                        }
                        *offset += n as u64;
                        if let Some(line) = parse_line(buf.trim_end_matches('\n'))
                            && out
                                .write_all(format_line(&prefix, &line, timestamps).as_bytes())
                                .is_err()
                        {
                            return;
                        }
                        buf.clear();
                    }
                }
                // Stop when the reader went away, even when nothing new was logged.
                if reader_gone(&out) {
                    return;
                }
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

/// Delete the log files of tasks that are no longer in the cluster state (the reaper dropped
/// them from the history), so the log directory stays bounded. Returns how many were removed.
pub fn collect_garbage(state: &ClusterState, state_dir: &Path) -> usize {
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
        if !state.tasks.contains_key(task_id) && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut state = ClusterState::default();
        let task: model::Task = serde_json::from_value(serde_json::json!({
            "id": "keep1", "service_id": "s", "service_name": "web", "slot": 1, "node_id": "n",
            "spec_version": 1, "spec": {}, "desired": "running", "status": {}, "created_at": 0
        }))
        .unwrap();
        state.tasks.insert("keep1".into(), task);
        assert_eq!(collect_garbage(&state, dir.path()), 2);
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
    fn parses_driver_lines() {
        let l = parse_line("2026-11-28T10:00:00.000000001Z stderr oh no: it broke").unwrap();
        assert_eq!(l.stream, "stderr");
        assert_eq!(l.text, "oh no: it broke");
        assert_eq!(l.timestamp, "2026-11-28T10:00:00.000000001Z");
        let empty = parse_line("2026-11-28T10:00:00Z stdout").unwrap();
        assert_eq!(empty.text, "");
    }
}
