//! The container sandbox a task asks for, beyond Docker's defaults: capabilities added and
//! dropped, resource limits of the process (`ulimits`), namespaced sysctls, and the reservations
//! the scheduler counts. The values are validated by `spec::sandbox` (one validator for stack
//! files, CLI flags and D-Bus); the runtime spec is built from them by `shoal-containerd`.

use serde::{Deserialize, Serialize};

/// Every capability Linux knows (as of 6.x), with its `CAP_` prefix.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities a container gets when the service changes nothing: Docker's default set.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The capability set of a process, with Docker's rules for `cap_add` and `cap_drop` (names
/// normalized to `CAP_X`, or `ALL`): `cap_add = ["ALL"]` starts from every capability,
/// `cap_drop = ["ALL"]` from none, otherwise from the default set; then the other list applies.
/// The result is in [`ALL_CAPABILITIES`] order.
pub fn effective_capabilities(cap_add: &[String], cap_drop: &[String]) -> Vec<&'static str> {
    let has = |list: &[String], cap: &str| list.iter().any(|c| c == cap);
    let add_all = has(cap_add, "ALL");
    let drop_all = has(cap_drop, "ALL");
    ALL_CAPABILITIES
        .iter()
        .copied()
        .filter(|cap| {
            let default = DEFAULT_CAPABILITIES.contains(cap);
            let added = add_all || has(cap_add, cap);
            let dropped = has(cap_drop, cap);
            if add_all {
                // `cap_add = ["ALL"]`: everything but what is dropped by name.
                !dropped
            } else if drop_all {
                // `cap_drop = ["ALL"]`: only what is added by name.
                added
            } else {
                (default || added) && !dropped
            }
        })
        .collect()
}

/// One resource limit of the task's processes (`setrlimit`), as Docker's `--ulimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub soft: u64,
    pub hard: u64,
}

/// What a task reserves on its node. The scheduler places a task only where the node's reported
/// resources minus the reservations of the runnable tasks already there leave room for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Reservations {
    /// Billionths of a CPU.
    pub nano_cpus: Option<u64>,
    pub memory_bytes: Option<u64>,
}

impl Reservations {
    pub fn is_empty(&self) -> bool {
        self.nano_cpus.is_none() && self.memory_bytes.is_none()
    }
}

/// What a node has for tasks, as its agent reports it (0: not reported yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NodeResources {
    /// Billionths of a CPU (online CPUs × 10⁹).
    pub nano_cpus: u64,
    pub memory_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    /// A single-node install upgraded from the version before these keys keeps its state: its
    /// stored specs, nodes and node reports load with the defaults.
    #[test]
    fn state_stored_before_the_sandbox_keys_still_loads() {
        let task: crate::TaskSpec = serde_json::from_str(
            r#"{"image":"bb","entrypoint":null,"command":["sh"],"env":{},"workdir":null,
                "user":null,"hostname":null,"mounts":[],"resources":{"nano_cpus":null,
                "memory_bytes":null,"pids":null},"stop_signal":"SIGTERM",
                "stop_grace_period":10000,"labels":{},"read_only":false,"force_update":0}"#,
        )
        .unwrap();
        assert!(task.cap_add.is_empty() && task.ulimits.is_empty() && task.sysctls.is_empty());
        assert!(!task.init && !task.no_new_privileges && !task.seccomp_unconfined);
        assert!(task.reservations.is_empty());
        let node: crate::Node = serde_json::from_str(
            r#"{"id":"n1","raft_id":1,"name":"a","role":"manager","availability":"active",
                "status":"ready","labels":{},"addr":"127.0.0.1:4600","last_heartbeat":0}"#,
        )
        .unwrap();
        assert_eq!(node.resources, NodeResources::default());
        let cmd: crate::Command = serde_json::from_str(
            r#"{"update_node_status":{"id":"n1","status":"ready","addr":null,"version":null,
                "message":null}}"#,
        )
        .unwrap();
        assert!(matches!(
            cmd,
            crate::Command::UpdateNodeStatus {
                resources: None,
                ..
            }
        ));
    }

    #[test]
    fn docker_capability_rules() {
        assert_eq!(effective_capabilities(&[], &[]).len(), 14);
        let caps = effective_capabilities(&v(&["CAP_NET_ADMIN"]), &v(&["CAP_CHOWN"]));
        assert!(caps.contains(&"CAP_NET_ADMIN"));
        assert!(!caps.contains(&"CAP_CHOWN"));
        assert_eq!(caps.len(), 14);
        assert!(effective_capabilities(&[], &v(&["ALL"])).is_empty());
        assert_eq!(
            effective_capabilities(&v(&["CAP_KILL"]), &v(&["ALL"])),
            vec!["CAP_KILL"]
        );
        let all = effective_capabilities(&v(&["ALL"]), &v(&["CAP_SYS_ADMIN"]));
        assert_eq!(all.len(), ALL_CAPABILITIES.len() - 1);
        assert!(!all.contains(&"CAP_SYS_ADMIN"));
    }
}
