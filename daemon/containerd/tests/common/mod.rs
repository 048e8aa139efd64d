//! Shared setup: a private containerd, a runtime connected to it, and log helpers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_containerd::logger::{Stream, parse_log_line};
use shoal_containerd::{LogConfig, Runtime, RuntimeDirs};
use shoal_tests::containerd::Containerd;

pub struct Env {
    pub rt: Runtime,
    pub tmp: tempfile::TempDir,
    // Dropped last: containers must be gone before containerd stops.
    pub ctd: Containerd,
}

pub async fn setup() -> Env {
    let ctd = Containerd::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = connect(&ctd, tmp.path()).await;
    Env { rt, tmp, ctd }
}

pub fn dirs(base: &Path) -> RuntimeDirs {
    RuntimeDirs {
        run_dir: base.join("run"),
        volumes_dir: base.join("volumes"),
        tmp_dir: base.join("tmp"),
    }
}

/// A new connection, as a restarted daemon would make.
pub async fn connect(ctd: &Containerd, base: &Path) -> Runtime {
    Runtime::connect_with_dirs(ctd.socket(), "shoal", dirs(base))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.log()))
}

pub fn log_config(path: PathBuf) -> LogConfig {
    LogConfig {
        path,
        max_size: 1 << 20,
        driver: PathBuf::from(env!("CARGO_BIN_EXE_shoal-log-driver")),
        name: "test".into(),
        service: "svc".into(),
        task: "task-1".into(),
        journal_socket: None,
    }
}

/// Waits (up to a minute) until the log file holds `n` lines; returns (stream, text) pairs.
pub fn wait_log_lines(path: &Path, n: usize) -> Vec<(Stream, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<(Stream, String)> = text
            .lines()
            .map(|l| {
                let p = parse_log_line(l).unwrap_or_else(|| panic!("malformed log line {l:?}"));
                (p.stream, p.text.to_string())
            })
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}
