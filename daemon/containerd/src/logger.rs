//! The log driver the containerd shim starts for each task (`binary://` logging).
//!
//! Protocol (containerd 1.6 `runtime/v2/logging`): the shim starts the executable with the
//! container's stdout on fd 3, its stderr on fd 4 and a pipe on fd 5 that the driver closes
//! once it is ready; the environment holds only `CONTAINER_ID` and `CONTAINER_NAMESPACE`. The
//! arguments are the URI's query parameters as `KEY VALUE` pairs **in arbitrary order** (Go map
//! order), so [`LoggerArgs::parse`] accepts them in any order and ignores the `log-driver`
//! marker and empty values. A binary that also has other subcommands (`shoald`) should check
//! [`is_log_driver_invocation`] before its normal argument parsing.
//!
//! Each line becomes `<RFC 3339 UTC timestamp with nanoseconds> <stdout|stderr> <text>` in the
//! log file, which rotates to `<file>.1` (one old file kept) when it would exceed `--max-size`.
//! When journald is there (`JOURNAL_STREAM` set, or its socket exists) each line is also sent
//! to it with the native protocol.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The journald socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Longest line written as one record; longer lines are split.
const MAX_LINE: usize = 16 * 1024;

/// The marker word in a log driver's arguments.
pub const LOG_DRIVER_ARG: &str = "log-driver";

/// Options of the log driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggerArgs {
    pub file: PathBuf,
    /// 0: never rotate.
    pub max_size: u64,
    pub name: String,
    pub service: String,
    pub task: String,
    pub journal_socket: Option<PathBuf>,
}

/// True when `args` (without the program name) are a log driver invocation.
pub fn is_log_driver_invocation<S: AsRef<str>>(args: &[S]) -> bool {
    args.iter().any(|a| a.as_ref() == LOG_DRIVER_ARG)
}

impl LoggerArgs {
    /// Parses `--file PATH --max-size BYTES [--name N] [--service S] [--task T]
    /// [--journal-socket PATH]` in any order; `--key=value` works too; `log-driver` and empty
    /// arguments are skipped.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<LoggerArgs, String> {
        let mut file = None;
        let mut max_size = None;
        let mut name = String::new();
        let mut service = String::new();
        let mut task = String::new();
        let mut journal_socket = None;
        let mut it = args
            .iter()
            .map(|a| a.as_ref())
            .filter(|a| !a.is_empty() && *a != LOG_DRIVER_ARG);
        while let Some(arg) = it.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
                _ => (arg, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next().map(str::to_string))
                    .ok_or_else(|| format!("{key} needs a value"))
            };
            match key {
                "--file" => file = Some(PathBuf::from(value()?)),
                "--max-size" => {
                    let v = value()?;
                    max_size = Some(
                        v.parse::<u64>()
                            .map_err(|_| format!("--max-size {v}: expected a number of bytes"))?,
                    );
                }
                "--name" => name = value()?,
                "--service" => service = value()?,
                "--task" => task = value()?,
                "--journal-socket" => journal_socket = Some(PathBuf::from(value()?)),
                other => return Err(format!("unknown log driver argument {other}")),
            }
        }
        Ok(LoggerArgs {
            file: file.ok_or("--file is required")?,
            max_size: max_size.unwrap_or(0),
            name,
            service,
            task,
            journal_socket,
        })
    }
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`, as written in log files.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One parsed line of a log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// RFC 3339 timestamp as written.
    pub timestamp: &'a str,
    pub stream: Stream,
    pub text: &'a str,
}

/// Parses one line (without its newline) of a log file written by [`run_logger`].
pub fn parse_log_line(line: &str) -> Option<LogLine<'_>> {
    let (timestamp, rest) = line.split_once(' ')?;
    let (stream, text) = match rest.split_once(' ') {
        Some((s, t)) => (s, t),
        None => (rest, ""),
    };
    let stream = match stream {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    Some(LogLine {
        timestamp,
        stream,
        text,
    })
}

/// Encodes journald's native protocol: `KEY=value\n`, or for values with a newline
/// `KEY\n<u64 little-endian length><value>\n`.
pub fn journal_datagram(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in fields {
        out.extend_from_slice(key.as_bytes());
        if value.contains(&b'\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

/// The log file with rotation, and the optional journal.
struct Sink {
    path: PathBuf,
    file: File,
    written: u64,
    max_size: u64,
    journal: Option<(UnixDatagram, PathBuf)>,
    container_id: String,
    args: LoggerArgs,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl Sink {
    fn new(args: LoggerArgs, container_id: String) -> std::io::Result<Sink> {
        if let Some(parent) = args.file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = open_append(&args.file)?;
        let written = file.metadata()?.len();
        let journal_path = match &args.journal_socket {
            Some(p) => Some(p.clone()),
            None if std::env::var_os("JOURNAL_STREAM").is_some()
                || Path::new(JOURNAL_SOCKET).exists() =>
            {
                Some(PathBuf::from(JOURNAL_SOCKET))
            }
            None => None,
        };
        let journal = journal_path.and_then(|p| UnixDatagram::unbound().ok().map(|s| (s, p)));
        Ok(Sink {
            path: args.file.clone(),
            file,
            written,
            max_size: args.max_size,
            journal,
            container_id,
            args,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = open_append(&self.path)?;
        self.written = 0;
        Ok(())
    }

    fn line(&mut self, stream: Stream, text: &[u8]) {
        let ts = crate::time::rfc3339_nanos(SystemTime::now());
        let mut record = Vec::with_capacity(ts.len() + text.len() + 10);
        record.extend_from_slice(ts.as_bytes());
        record.push(b' ');
        record.extend_from_slice(stream.as_str().as_bytes());
        record.push(b' ');
        record.extend_from_slice(text);
        record.push(b'\n');
        if self.max_size > 0
            && self.written > 0
            && self.written + record.len() as u64 > self.max_size
            && let Err(e) = self.rotate()
        {
            eprintln!("log driver: cannot rotate {}: {e}", self.path.display());
        }
        match self.file.write_all(&record) {
            Ok(()) => self.written += record.len() as u64,
            Err(e) => eprintln!("log driver: cannot write {}: {e}", self.path.display()),
        }
        if let Some((socket, path)) = &self.journal {
            let priority: &[u8] = if stream == Stream::Stdout { b"6" } else { b"3" };
            let mut fields: Vec<(&str, &[u8])> = vec![
                ("MESSAGE", text),
                ("PRIORITY", priority),
                ("CONTAINER_ID", self.container_id.as_bytes()),
                ("SYSLOG_IDENTIFIER", b"shoal"),
            ];
            if !self.args.name.is_empty() {
                fields.push(("CONTAINER_NAME", self.args.name.as_bytes()));
            }
            if !self.args.service.is_empty() {
                fields.push(("SHOAL_SERVICE", self.args.service.as_bytes()));
            }
            if !self.args.task.is_empty() {
                fields.push(("SHOAL_TASK_ID", self.args.task.as_bytes()));
            }
            let _ = socket.send_to(&journal_datagram(&fields), path);
        }
    }
}

/// Splits `reader` into lines (at most [`MAX_LINE`] bytes each) and hands them to `sink`.
fn pump(mut reader: impl Read, stream: Stream, sink: &Mutex<Sink>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let emit = |line: &[u8]| {
        if let Ok(mut s) = sink.lock() {
            s.line(stream, line);
        }
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|b| *b == b'\n') {
            emit(&pending[start..start + pos]);
            start += pos + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE {
            emit(&pending[..MAX_LINE]);
            pending.drain(..MAX_LINE);
        }
    }
    if !pending.is_empty() {
        emit(&pending);
    }
}

/// Runs the log driver; `args` are the process arguments without the program name. Returns
/// the process exit code.
pub fn run_logger<S: AsRef<str>>(args: &[S]) -> i32 {
    let parsed = match LoggerArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("log driver: {e}");
            return 2;
        }
    };
    // The shim sends SIGTERM when the task is deleted, after closing its ends of the pipes:
    // keep reading until end of file instead of dying with lines still in the pipes.
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGTERM);
    mask.add(nix::sys::signal::Signal::SIGPIPE);
    let _ = mask.thread_block();

    let open = |fd: i32| File::open(format!("/proc/self/fd/{fd}"));
    let (stdout, stderr) = match (open(3), open(4)) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("log driver: fds 3 and 4 must be the container's stdout and stderr: {e}");
            return 2;
        }
    };
    let _ = nix::unistd::close(3);
    let _ = nix::unistd::close(4);
    let container_id = std::env::var("CONTAINER_ID").unwrap_or_default();
    let sink = match Sink::new(parsed.clone(), container_id) {
        Ok(s) => Arc::new(Mutex::new(s)),
        Err(e) => {
            eprintln!("log driver: cannot open {}: {e}", parsed.file.display());
            return 1;
        }
    };
    // Ready: closing fd 5 lets the shim go on creating the task.
    let _ = nix::unistd::close(5);
    let err_sink = Arc::clone(&sink);
    let err_thread = std::thread::spawn(move || pump(stderr, Stream::Stderr, &err_sink));
    pump(stdout, Stream::Stdout, &sink);
    let _ = err_thread.join();
    if let Ok(mut s) = sink.lock() {
        let _ = s.file.flush();
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arguments_in_any_order() {
        let a = LoggerArgs::parse(&[
            "--max-size",
            "100",
            "log-driver",
            "",
            "--name",
            "web.1",
            "--file",
            "/x/log",
        ])
        .unwrap();
        assert_eq!(a.file, PathBuf::from("/x/log"));
        assert_eq!(a.max_size, 100);
        assert_eq!(a.name, "web.1");
        let b = LoggerArgs::parse(&["log-driver", "--file=/y", "--task=t1"]).unwrap();
        assert_eq!(b.file, PathBuf::from("/y"));
        assert_eq!(b.task, "t1");
        assert_eq!(b.max_size, 0);
        assert!(LoggerArgs::parse(&["--max-size", "1"]).is_err());
        assert!(LoggerArgs::parse(&["--file", "/x", "--max-size", "lots"]).is_err());
        assert!(LoggerArgs::parse(&["--file", "/x", "--bogus", "1"]).is_err());
        assert!(is_log_driver_invocation(&[
            "--file",
            "/x",
            "log-driver",
            ""
        ]));
        assert!(!is_log_driver_invocation(&["run"]));
    }

    #[test]
    fn journal_fields_use_the_binary_form_for_newlines() {
        let d = journal_datagram(&[("MESSAGE", b"hi"), ("X", b"a\nb")]);
        let mut want = b"MESSAGE=hi\nX\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\n");
        assert_eq!(d, want);
    }

    #[test]
    fn lines_are_tagged_split_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/c.log");
        let journal_path = dir.path().join("journal.sock");
        let journal = UnixDatagram::bind(&journal_path).unwrap();
        let args = LoggerArgs {
            file: file.clone(),
            max_size: 200,
            name: "web.1".into(),
            service: "web".into(),
            task: "t1".into(),
            journal_socket: Some(journal_path),
        };
        let sink = Mutex::new(Sink::new(args, "cid".into()).unwrap());
        pump(&b"one\ntwo\npartial"[..], Stream::Stdout, &sink);
        pump(&b"oops\n"[..], Stream::Stderr, &sink);
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<LogLine> = text.lines().map(|l| parse_log_line(l).unwrap()).collect();
        let got: Vec<(Stream, &str)> = lines.iter().map(|l| (l.stream, l.text)).collect();
        assert_eq!(
            got,
            vec![
                (Stream::Stdout, "one"),
                (Stream::Stdout, "two"),
                (Stream::Stdout, "partial"),
                (Stream::Stderr, "oops"),
            ]
        );
        assert!(lines[0].timestamp.ends_with('Z') && lines[0].timestamp.len() == 30);
        let mut buf = vec![0u8; 4096];
        let n = journal.recv(&mut buf).unwrap();
        let dgram = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(dgram.contains("MESSAGE=one\n"), "{dgram}");
        assert!(dgram.contains("PRIORITY=6\n"));
        assert!(dgram.contains("CONTAINER_ID=cid\n"));
        assert!(dgram.contains("CONTAINER_NAME=web.1\n"));
        assert!(dgram.contains("SHOAL_SERVICE=web\n"));
        assert!(dgram.contains("SHOAL_TASK_ID=t1\n"));

        // Rotation: 200 bytes hold about 4 lines; the old file is kept as .1.
        let long = vec![b'x'; 100];
        for _ in 0..3 {
            sink.lock().unwrap().line(Stream::Stdout, &long);
        }
        let current = std::fs::metadata(&file).unwrap().len();
        let old = std::fs::metadata(dir.path().join("sub/c.log.1"))
            .unwrap()
            .len();
        assert!(current <= 200, "{current}");
        assert!(old <= 200 && old > 0, "{old}");

        // Very long lines are split.
        let huge = vec![b'y'; MAX_LINE * 2 + 5];
        let big = dir.path().join("big.log");
        let sink = Mutex::new(
            Sink::new(
                LoggerArgs {
                    file: big.clone(),
                    max_size: 0,
                    name: String::new(),
                    service: String::new(),
                    task: String::new(),
                    journal_socket: None,
                },
                "cid".into(),
            )
            .unwrap(),
        );
        pump(&huge[..], Stream::Stdout, &sink);
        let text = std::fs::read_to_string(&big).unwrap();
        let sizes: Vec<usize> = text
            .lines()
            .map(|l| parse_log_line(l).unwrap().text.len())
            .collect();
        assert_eq!(sizes, vec![MAX_LINE, MAX_LINE, 5]);
    }
}
