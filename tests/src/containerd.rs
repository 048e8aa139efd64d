//! A private containerd for a test: its own root, state, socket and config, killed on drop.
//!
//! Tasks are started by shims that outlive containerd, so dropping a [`Containerd`] first
//! kills and deletes every task and container it knows about (through `ctr`), then stops
//! containerd, unmounts what is left under its root and removes the directory.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .expect("open containerd log");
    Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawn containerd (is the containerd package installed?)")
}

/// A running containerd owned by the test.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    /// Starts `containerd` with a generated config and waits (up to a minute) for its socket.
    ///
    /// Panics with containerd's own log when it does not come up.
    pub fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("shoal-ctd-")
            .tempdir_in("/tmp")
            .expect("create a temporary directory for containerd");
        let d = dir.path();
        let socket = d.join("c.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            socket = socket.display(),
            opt = d.join("opt").display(),
        );
        let config_path = d.join("config.toml");
        std::fs::write(&config_path, config).expect("write containerd config");
        let child = spawn(d);
        let mut ctd = Containerd { dir, child, socket };
        ctd.wait_ready();
        ctd
    }

    /// Stops containerd (SIGTERM, as a package upgrade would) and starts it again on the same
    /// root and state. Running tasks live on in their shims.
    pub fn restart(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn(self.dir.path());
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let ctd = self;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if UnixStream::connect(&ctd.socket).is_ok() {
                break;
            }
            if let Ok(Some(status)) = ctd.child.try_wait() {
                panic!("containerd exited with {status}:\n{}", ctd.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "containerd did not open {} within 60s:\n{}",
                    ctd.socket.display(),
                    ctd.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The containerd gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's temporary directory (root, state, config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What containerd wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("containerd.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn ctr(&self, args: &[&str]) -> String {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    }

    /// Kills and deletes every task and container, in every namespace.
    pub fn clean(&self) {
        for ns in self.ctr(&["namespaces", "list", "-q"]).lines() {
            let ns = ns.trim();
            if ns.is_empty() {
                continue;
            }
            for task in self.ctr(&["-n", ns, "tasks", "list", "-q"]).lines() {
                let task = task.trim();
                if task.is_empty() {
                    continue;
                }
                self.ctr(&["-n", ns, "tasks", "kill", "-a", "-s", "SIGKILL", task]);
                self.ctr(&["-n", ns, "tasks", "delete", "-f", task]);
            }
            for c in self.ctr(&["-n", ns, "containers", "list", "-q"]).lines() {
                let c = c.trim();
                if !c.is_empty() {
                    self.ctr(&["-n", ns, "containers", "delete", c]);
                }
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.clean();
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        // Unmount anything left below our directory, deepest first.
        let root = self.dir.path().to_string_lossy().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
