//! A LAN of hosts for multi-node tests: one Linux bridge in a network namespace of its own, and
//! one network namespace per host wired to it by a veth pair, each host with its own address on
//! the LAN's /24 (as the real-systemd cluster test and the NixOS VM tests have). A [`Node`]
//! started on a host runs its `shoald` inside that namespace, so its node port, bridge,
//! nftables table and routes are its own.
//!
//! [`Node`]: crate::node::Node

use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NEXT_LAN: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Lan {
    /// The namespace holding the bridge `br0`.
    ns: String,
    /// The first three octets of the LAN's /24.
    prefix: [u8; 3],
    hosts: AtomicU32,
}

impl Lan {
    pub fn new() -> Lan {
        let k = NEXT_LAN.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let ns = format!("shl-{pid}-{k}");
        // 10.234.0.0/16, a /24 per LAN by pid and counter (parallel test binaries differ in pid).
        let prefix = [10, 234, ((pid * 5 + k * 17) % 250 + 1) as u8];
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &ns, "link", "set", "br0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        Lan {
            ns,
            prefix,
            hosts: AtomicU32::new(0),
        }
    }

    /// A new host: its namespace, its `eth0` on the bridge and its address.
    pub fn host(&self) -> Host {
        let i = self.hosts.fetch_add(1, Ordering::SeqCst) + 2;
        assert!(i < 250, "too many hosts on one LAN");
        let ns = format!("{}-{i}", self.ns);
        let [a, b, c] = self.prefix;
        let addr = Ipv4Addr::new(a, b, c, i as u8);
        ip(&["netns", "add", &ns]);
        let veth = format!("h{i}");
        ip(&[
            "-n", &self.ns, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        ip(&["-n", &self.ns, "link", "set", &veth, "master", "br0", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        Host { ns, addr }
    }
}

impl Default for Lan {
    fn default() -> Self {
        Lan::new()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Deleting the bridge's namespace removes the bridge and the host ends of the veths.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .output();
    }
}

/// One host of a [`Lan`]. Dropping it deletes its namespace (after its node has stopped).
#[derive(Debug)]
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
}

impl Host {
    /// The namespace's file, to enter it with `setns`.
    pub fn netns_file(&self) -> std::fs::File {
        std::fs::File::open(format!("/run/netns/{}", self.ns)).expect("open the host's netns")
    }

    /// Run `f` on a thread that has entered this host's network namespace (sockets it opens
    /// live there: "localhost" is this host's).
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = self.netns_file();
        std::thread::spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("enter the host's network namespace");
            f()
        })
        .join()
        .expect("thread in the host's namespace")
    }

    /// Whether a TCP connection from this host to `addr:port` is accepted.
    pub fn connects(&self, addr: Ipv4Addr, port: u16) -> bool {
        self.run_in(move || {
            TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(2)).is_ok()
        })
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .output();
    }
}
