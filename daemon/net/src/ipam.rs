//! Address allocation for tasks: one file per allocated address.
//!
//! An address is taken by creating `<dir>/<ip>` with `O_EXCL`, which is atomic, needs no lock
//! between threads or processes, and survives crashes and daemon restarts. The file holds the
//! owning task id, a CRLF and the interface name: the layout of CNI's `host-local` plugin, which
//! shoal used before, so allocations made by it are honoured and released the same way.
//!
//! Candidates are tried round-robin from just after the last address handed out (remembered in
//! `last_reserved_ip.0`, also as `host-local` does), so a released address is not reused at once:
//! stale ARP entries and connections of the previous owner have time to go away.

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Ipv4Subnet;
use crate::error::{Error, Result};
use crate::netlink::TASK_IFNAME;

const LAST_RESERVED: &str = "last_reserved_ip.0";

pub(crate) struct Ipam {
    dir: PathBuf,
    subnet: Ipv4Subnet,
    /// First assignable address (network + 2: the gateway takes network + 1).
    first: u32,
    /// Number of assignable addresses (everything but network, gateway and broadcast).
    count: u32,
    /// Offset (from `first`) of the next candidate; `u32::MAX` until read from disk.
    cursor: AtomicU32,
}

const UNSET: u32 = u32::MAX;

impl Ipam {
    pub(crate) fn new(dir: PathBuf, subnet: Ipv4Subnet) -> Ipam {
        let network = u32::from(subnet.network());
        let size = 1u32 << (32 - u32::from(subnet.prefix_len()));
        Ipam {
            dir,
            subnet,
            first: network + 2,
            count: size - 3,
            cursor: AtomicU32::new(UNSET),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, ip: Ipv4Addr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Where round-robin starts after a (re)start: after the last address recorded on disk.
    fn initial_cursor(&self) -> u32 {
        let last = fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .filter(|ip| self.subnet.contains(*ip))
            .map(u32::from);
        match last {
            Some(ip) if ip >= self.first && ip - self.first < self.count => ip - self.first + 1,
            _ => 0,
        }
    }

    fn next_offset(&self) -> u32 {
        let mut cur = self.cursor.load(Ordering::Relaxed);
        if cur == UNSET {
            let init = self.initial_cursor();
            cur = match self.cursor.compare_exchange(
                UNSET,
                init,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => init,
                Err(other) => other,
            };
        }
        loop {
            let next = (cur + 1) % self.count;
            match self
                .cursor
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return cur % self.count,
                Err(other) => cur = other,
            }
        }
    }

    /// Takes a free address for `task_id`.
    ///
    /// Concurrent callers draw distinct candidates from the shared cursor, and `O_EXCL` settles
    /// any race with another process; an address is skipped only when its file exists.
    pub(crate) fn allocate(&self, task_id: &str) -> Result<Ipv4Addr> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io("create directory", &self.dir, e))?;
        for _ in 0..self.count {
            let ip = Ipv4Addr::from(self.first + self.next_offset());
            let path = self.path(ip);
            let created = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            let mut file = match created {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("allocate address file", path, e)),
            };
            if let Err(e) = file.write_all(format!("{task_id}\r\n{TASK_IFNAME}").as_bytes()) {
                let _ = fs::remove_file(&path);
                return Err(Error::io("write address file", path, e));
            }
            // Best effort: only steers where the next search starts.
            let _ = fs::write(self.dir.join(LAST_RESERVED), ip.to_string());
            return Ok(ip);
        }
        Err(Error::SubnetFull {
            subnet: self.subnet,
        })
    }

    /// The task owning `ip`, if it is allocated.
    fn owner(&self, ip: Ipv4Addr) -> Result<Option<String>> {
        let path = self.path(ip);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(owner_of(&text).to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read address file", path, e)),
        }
    }

    /// Releases `ip` if `task_id` holds it; an address held by another task is left alone.
    pub(crate) fn release(&self, ip: Ipv4Addr, task_id: &str) -> Result<()> {
        match self.owner(ip)? {
            Some(owner) if owner == task_id => remove(&self.path(ip)),
            Some(owner) => {
                tracing::warn!(task = task_id, %ip, owner, "address belongs to another task, keeping it");
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Releases every address held by `task_id`, by scanning all allocations. For cleaning up
    /// after a crash, when no record says which address the task had.
    pub(crate) fn release_all(&self, task_id: &str) -> Result<()> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("list", &self.dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", &self.dir, e))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            self.release(ip, task_id)?;
        }
        Ok(())
    }
}

/// The task id in an address file: its first line (CNI `host-local` appends the interface).
fn owner_of(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim()
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("release address file", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(dir: &Path, subnet: &str) -> Ipam {
        Ipam::new(dir.join("ipam"), subnet.parse().unwrap())
    }

    #[test]
    fn hands_out_every_host_address_once_then_reports_the_subnet_full() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.1.2.0/29");
        let mut got: Vec<_> = (0..5)
            .map(|i| ipam.allocate(&format!("t{i}")).unwrap())
            .collect();
        got.sort();
        let want: Vec<_> = (2..=6).map(|i| Ipv4Addr::new(10, 1, 2, i)).collect();
        assert_eq!(
            got, want,
            "network, gateway and broadcast are never handed out"
        );
        let err = ipam.allocate("t5").unwrap_err().to_string();
        assert!(
            err.starts_with("no free address in subnet 10.1.2.0/29"),
            "{err}"
        );
    }

    #[test]
    fn allocations_survive_a_restart_and_round_robin_continues() {
        let dir = tempfile::tempdir().unwrap();
        let first = ipam(dir.path(), "10.1.2.0/24");
        let a = first.allocate("a").unwrap();
        let b = first.allocate("b").unwrap();
        first.release(a, "a").unwrap();
        // A new allocator over the same directory, as after a daemon restart.
        let second = ipam(dir.path(), "10.1.2.0/24");
        let c = second.allocate("c").unwrap();
        assert_ne!(c, b, "an address in use was handed out again");
        assert_ne!(c, a, "a just released address was reused at once");
        assert_eq!(u32::from(c), u32::from(b) + 1);
    }

    #[test]
    fn release_only_frees_the_owners_address() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.1.2.0/24");
        let a = ipam.allocate("a").unwrap();
        ipam.release(a, "someone-else").unwrap();
        assert!(ipam.path(a).exists());
        ipam.release(a, "a").unwrap();
        assert!(!ipam.path(a).exists());
        ipam.release(a, "a").expect("releasing twice is fine");
    }

    #[test]
    fn reads_host_local_files_and_releases_by_scanning() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.1.2.0/24");
        fs::create_dir_all(ipam.dir()).unwrap();
        // What CNI host-local left behind: "<container id>\r\n<ifname>", plus its lock file.
        fs::write(ipam.dir().join("10.1.2.2"), "old-task\r\neth0").unwrap();
        fs::write(ipam.dir().join("10.1.2.9"), "old-task\r\neth0").unwrap();
        fs::write(ipam.dir().join("lock"), "").unwrap();
        fs::write(ipam.dir().join(LAST_RESERVED), "10.1.2.9").unwrap();
        let next = ipam.allocate("new-task").unwrap();
        assert_eq!(next, Ipv4Addr::new(10, 1, 2, 10));
        assert_eq!(
            ipam.owner(Ipv4Addr::new(10, 1, 2, 2)).unwrap().as_deref(),
            Some("old-task")
        );
        ipam.release_all("old-task").unwrap();
        assert!(!ipam.path(Ipv4Addr::new(10, 1, 2, 2)).exists());
        assert!(!ipam.path(Ipv4Addr::new(10, 1, 2, 9)).exists());
        assert!(ipam.path(next).exists());
        assert!(ipam.dir().join("lock").exists());
    }

    #[test]
    fn concurrent_allocations_are_distinct() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = std::sync::Arc::new(ipam(dir.path(), "10.1.2.0/26"));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let ipam = ipam.clone();
                std::thread::spawn(move || {
                    (0..7)
                        .map(|i| ipam.allocate(&format!("t{t}-{i}")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 56);
        // 61 assignable addresses in a /26: five are left.
        for i in 0..5 {
            ipam.allocate(&format!("rest-{i}")).unwrap();
        }
        assert!(matches!(
            ipam.allocate("one-too-many"),
            Err(Error::SubnetFull { .. })
        ));
    }
}
