//! A real shoal node for end-to-end tests: its own containerd, a private system-like
//! dbus-daemon loading the shipped policy, and the real `shoald` binary with a cluster file that
//! puts every path, the bridge, the subnet and the nftables table in places of its own. Tests
//! drive it through the real `shoal` CLI.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::containerd::Containerd;
use crate::dbus::DbusDaemon;
use crate::lan::Host;

/// A row of `shoal service ps --format json` (the fields the tests read).
#[derive(Debug, Clone, Deserialize)]
pub struct TaskRow {
    pub id: String,
    pub name: String,
    pub slot: u64,
    pub desired: String,
    pub state: String,
    pub state_since: u64,
    pub error: String,
    pub exit_code: i32,
    pub created_at: u64,
    pub spec_version: u64,
    /// Name of the node the task is assigned to.
    #[serde(default)]
    pub node: String,
    /// Present when the task runs a healthcheck.
    #[serde(default)]
    pub health: Option<TaskHealth>,
}

/// The `health` of a `service ps --format json` row.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskHealth {
    /// `starting`, `healthy` or `unhealthy`.
    pub status: String,
    pub failing_streak: u32,
    pub exit_code: i32,
    pub output: String,
}

impl TaskRow {
    pub fn running(&self) -> bool {
        self.state == "running" && self.desired == "running"
    }
}

/// A row of `shoal service ls --format json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceRow {
    pub id: String,
    pub name: String,
    pub mode: String,
    pub running: u64,
    pub desired: u64,
    pub image: String,
    pub version: u64,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first with `cargo build -p shoald -p shoal`",
        p.display()
    );
    p
}

pub struct Node {
    pub dir: tempfile::TempDir,
    pub containerd: Containerd,
    pub bus: DbusDaemon,
    daemon: Option<Child>,
    pub bridge: String,
    pub config: PathBuf,
    pub stacks_dir: PathBuf,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// The node port this node listens on.
    pub node_port: u16,
    /// Where other nodes reach the node port: `ADDR:PORT`.
    pub addr: String,
    /// The LAN host whose network namespace this node runs in; `None`: the test's own.
    pub host: Option<Host>,
}

#[derive(Default)]
pub struct NodeOptions {
    /// Extra TOML appended to the cluster file (e.g. `[registries."127.0.0.1:5000"]`).
    pub extra_config: String,
    /// Extra TOML in the `[node]` table (e.g. `role = "worker"`).
    pub node_config: String,
    /// Put the state directory on a tmpfs of this many KiB (to test a full disk).
    pub state_dir_kib: Option<u64>,
    /// Called with the state directory before shoald first starts (to lay down old state).
    pub before_start: Option<fn(&Path)>,
    /// Run in this LAN host's network namespace, listening on its address at the default node
    /// port 4600 (see [`crate::lan`]); `None`: in the test's namespace on 127.0.0.1.
    pub host: Option<Host>,
}

impl Node {
    pub fn start() -> Node {
        Node::start_with(NodeOptions::default())
    }

    pub fn start_with(opts: NodeOptions) -> Node {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{}", std::process::id() % 10000, n);
        let dir = tempfile::Builder::new()
            .prefix("shoal-e2e-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let containerd = Containerd::start();
        let bus = DbusDaemon::start_with_shipped_policy().expect("private dbus-daemon");
        let bridge = format!("she{tag}");
        let bridge: String = bridge.chars().take(15).collect();
        let state_dir = dir.path().join("state");
        let stacks_dir = dir.path().join("stacks");
        let run_dir = dir.path().join("run");
        std::fs::create_dir_all(&stacks_dir).unwrap();
        if let Some(kib) = opts.state_dir_kib {
            std::fs::create_dir_all(&state_dir).unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                &state_dir,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(format!("size={kib}k,mode=0700").as_str()),
            )
            .expect("mount a tmpfs for the state directory");
        }
        // A /24 per node out of 10.233.0.0/16, chosen by pid and counter.
        let subnet = format!(
            "10.233.{}.0/24",
            (std::process::id() as u32 * 7 + n * 13) % 250 + 1
        );
        let config = dir.path().join("cluster.toml");
        let (listen_ip, node_port) = match &opts.host {
            Some(h) => (h.addr.to_string(), 4600),
            None => ("127.0.0.1".to_string(), free_port()),
        };
        std::fs::write(
            &config,
            format!(
                r#"[node]
name = "e2e-{tag}"
{node_extra}

[network]
listen = "{listen_ip}:{port}"
bridge = "{bridge}"
subnet = "{subnet}"

[containerd]
address = "{ctd}"
namespace = "shoal"

[paths]
state_dir = "{state}"
stacks_dir = "{stacks}"
run_dir = "{run}"

{extra}
"#,
                ctd = containerd.socket().display(),
                port = node_port,
                node_extra = opts.node_config,
                state = state_dir.display(),
                stacks = stacks_dir.display(),
                run = run_dir.display(),
                extra = opts.extra_config,
            ),
        )
        .unwrap();
        let mut node = Node {
            dir,
            containerd,
            bus,
            daemon: None,
            bridge,
            config,
            stacks_dir,
            state_dir,
            run_dir,
            node_port,
            addr: format!("{listen_ip}:{node_port}"),
            host: opts.host,
        };
        if let Some(f) = opts.before_start {
            std::fs::create_dir_all(&node.state_dir).unwrap();
            f(&node.state_dir);
        }
        node.start_daemon();
        node
    }

    /// Start `shoald` and wait until it answers on the bus.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "shoald already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("shoald.log"))
            .unwrap();
        // On a LAN host: nsenter enters only the network namespace and execs shoald (same pid;
        // the mount namespace stays shared with containerd, which must see the task netns).
        let mut cmd = match &self.host {
            Some(host) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{}", host.ns))
                    .arg("--")
                    .arg(bin("shoald"));
                c
            }
            None => Command::new(bin("shoald")),
        };
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus.address())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn shoald");
        self.daemon = Some(child);
        self.wait_for("shoald to answer", Duration::from_secs(120), |n| {
            n.shoal(&["info"]).status.success()
        });
    }

    /// SIGTERM `shoald` and wait for it to exit (tasks keep running).
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("shoald did not stop within 60s of SIGTERM");
        }
    }

    /// SIGKILL `shoald` (a crash).
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    /// Forget a daemon that exited by itself, so that it can be started again.
    pub fn forget_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.wait();
        }
    }

    /// The daemon's exit status, once it has exited by itself.
    pub fn daemon_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.daemon
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("shoald.log")).unwrap_or_default()
    }

    /// Run the real CLI against this node.
    pub fn shoal(&self, args: &[&str]) -> Output {
        Command::new(bin("shoal"))
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus.address())
            .stdin(Stdio::null())
            .output()
            .expect("run shoal")
    }

    /// Run the CLI and insist on success; returns stdout.
    pub fn shoal_ok(&self, args: &[&str]) -> String {
        let out = self.shoal(args);
        assert!(
            out.status.success(),
            "shoal {args:?} failed ({}):\nstdout: {}\nstderr: {}\n--- shoald log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn tasks(&self, service: &str) -> Vec<TaskRow> {
        let out = self.shoal(&["service", "ps", service, "--format", "json"]);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    pub fn running(&self, service: &str) -> Vec<TaskRow> {
        self.tasks(service)
            .into_iter()
            .filter(TaskRow::running)
            .collect()
    }

    pub fn services(&self) -> Vec<ServiceRow> {
        let out = self.shoal_ok(&["service", "ls", "--format", "json"]);
        serde_json::from_str(&out).expect("service ls json")
    }

    /// Poll `cond` until it holds; panics with the daemon log after `timeout`. Deadlines are
    /// generous: a slow machine makes a test slower, never red.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut(&Node) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out waiting for {what}\n--- shoald log ---\n{}",
            tail(&self.log(), 60)
        );
    }

    /// `ctr` against this node's containerd in shoal's namespace.
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.containerd.socket())
            .args(["--namespace", "shoal"])
            .args(args)
            .output()
            .expect("run ctr");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Running containerd tasks: (container id, pid), sorted.
    pub fn container_tasks(&self) -> Vec<(String, u32)> {
        let mut tasks: Vec<(String, u32)> = self
            .ctr(&["tasks", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && f[2] == "RUNNING")
                    .then(|| (f[0].to_string(), f[1].parse().unwrap_or(0)))
            })
            .collect();
        tasks.sort();
        tasks
    }

    pub fn containers(&self) -> Vec<String> {
        self.ctr(&["containers", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn write_stack(&self, name: &str, text: &str) {
        std::fs::write(self.stacks_dir.join(format!("{name}.toml")), text).unwrap();
    }

    pub fn remove_stack_file(&self, name: &str) {
        std::fs::remove_file(self.stacks_dir.join(format!("{name}.toml"))).unwrap();
    }
}

/// An HTTP GET to 127.0.0.1:port; the body, or None when nothing answers.
pub fn http_get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let body = buf.split("\r\n\r\n").nth(1)?.to_string();
    Some(body)
}

/// A TCP port that is free now, in a range nothing else here uses.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let p = 20000 + (rand::random::<u16>() % 9000);
        if std::net::TcpListener::bind(("0.0.0.0", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port found")
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_daemon();
        // Stop every task of this node (the containerd harness stops containerd itself).
        self.containerd.clean();
        // Network namespaces, the bridge and the nftables table of this node.
        if let Ok(entries) = std::fs::read_dir(self.run_dir.join("netns")) {
            for e in entries.flatten() {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = nix::mount::umount2(
            &self.run_dir.join("netns"),
            nix::mount::MntFlags::MNT_DETACH,
        );
        // The tmpfs of the tasks' secret files.
        let _ = nix::mount::umount2(
            &self.run_dir.join("secrets"),
            nix::mount::MntFlags::MNT_DETACH,
        );
        // On a LAN host they go with the host's namespace (dropped with `self.host`).
        if self.host.is_none() {
            let _ = Command::new("ip")
                .args(["link", "delete", &self.bridge])
                .output();
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", &self.bridge])
                .output();
        }
        let _ = nix::mount::umount2(&self.state_dir, nix::mount::MntFlags::MNT_DETACH);
    }
}
