//! Bounds on every count, size and duration of a service spec: one checker, [`violations`],
//! used by the stack file validator (with positions) and the D-Bus property decoder (and so the
//! CLI flags), before anything is proposed. The same input gets the same message whichever way
//! it comes; each message names the stack file key.
//!
//! `ClusterState::apply` keeps only the replica bound ([`crate::ServiceSpec::check_bounds`]):
//! a raft log written by an older version must replay to the same state, so bounds added later
//! are never applied to commands already committed.

use crate::{MAX_REPLICAS, Millis, ServiceSpec, UpdateConfig};

/// The longest duration a service may set (restart and update delays, monitor, window, stop
/// grace period): 24 hours.
pub const MAX_DURATION: Millis = 24 * 3600 * 1000;
/// The most restarts a restart policy may allow before giving up (0 means no limit).
pub const MAX_RESTART_ATTEMPTS: u64 = 1_000_000;
/// The most published ports a service may have (after ranges are expanded).
pub const MAX_PORTS: usize = 1_000;
/// The most mounts of a service.
pub const MAX_MOUNTS: usize = 256;
/// The most environment variables, labels, container labels or sysctls of a service.
pub const MAX_MAP_ENTRIES: usize = 1_000;
/// The most arguments of `command` or `entrypoint`.
pub const MAX_ARGS: usize = 1_000;
/// The most bytes of one argument, one `NAME=value` environment entry or one label value (the
/// kernel refuses a single argument of 128 KiB or more).
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
/// The most bytes of all arguments and environment entries together (the kernel's limit for
/// `execve` is typically 2 MiB, shared with the image's own environment).
pub const MAX_EXEC_BYTES: usize = 1024 * 1024;
/// The most bytes of a name-like string: a label or variable name, an image reference, a path,
/// a user, a signal.
pub const MAX_NAME_BYTES: usize = 4096;
/// The most placement constraints and spread preferences.
pub const MAX_PLACEMENT_RULES: usize = 100;
/// The most services in one stack.
pub const MAX_SERVICES_PER_STACK: usize = 1_000;
/// The largest stack file, in bytes (TOML or Compose, and `DeployStack`'s text).
pub const MAX_STACK_FILE_BYTES: usize = 1024 * 1024;

/// One bound a spec is outside of: the stack file key (`restart.delay`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A duration as users write them (`1h30m`, `250ms`).
fn show(ms: Millis) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (milli, "ms")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

struct Check {
    out: Vec<Violation>,
}

impl Check {
    fn fail(&mut self, field: &str, message: String) {
        self.out.push(Violation {
            field: field.to_string(),
            message,
        });
    }

    fn duration(&mut self, field: &str, ms: Millis) {
        if ms > MAX_DURATION {
            self.fail(
                field,
                format!("{} is above the limit of {}", show(ms), show(MAX_DURATION)),
            );
        }
    }

    fn count(&mut self, field: &str, n: usize, max: usize, what: &str) {
        if n > max {
            self.fail(field, format!("{n} {what} is above the limit of {max}"));
        }
    }

    fn name(&mut self, field: &str, s: &str) {
        if s.len() > MAX_NAME_BYTES {
            self.fail(
                field,
                format!(
                    "{} bytes is above the limit of {MAX_NAME_BYTES} bytes",
                    s.len()
                ),
            );
        }
    }

    fn map<'a>(
        &mut self,
        field: &str,
        entries: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
        what: &str,
    ) {
        self.count(field, entries.len(), MAX_MAP_ENTRIES, what);
        for (k, v) in entries {
            if k.len() > MAX_NAME_BYTES {
                self.fail(
                    field,
                    format!(
                        "a name of {} bytes is above the limit of {MAX_NAME_BYTES} bytes",
                        k.len()
                    ),
                );
            }
            if v.len() > MAX_VALUE_BYTES {
                self.fail(
                    field,
                    format!(
                        "the value of {k} ({} bytes) is above the limit of {MAX_VALUE_BYTES} bytes",
                        v.len()
                    ),
                );
            }
        }
    }

    fn args(&mut self, field: &str, args: Option<&Vec<String>>) -> usize {
        let Some(args) = args else { return 0 };
        self.count(field, args.len(), MAX_ARGS, "arguments");
        for (i, a) in args.iter().enumerate() {
            if a.len() > MAX_VALUE_BYTES {
                self.fail(
                    field,
                    format!(
                        "argument {i} ({} bytes) is above the limit of {MAX_VALUE_BYTES} bytes",
                        a.len()
                    ),
                );
            }
        }
        args.iter().map(|a| a.len() + 1).sum()
    }

    fn update(&mut self, key: &str, u: &UpdateConfig) {
        if u.parallelism > MAX_REPLICAS {
            self.fail(
                &format!("{key}.parallelism"),
                format!("{} is above the limit of {MAX_REPLICAS}", u.parallelism),
            );
        }
        self.duration(&format!("{key}.delay"), u.delay);
        self.duration(&format!("{key}.monitor"), u.monitor);
    }
}

/// Every bound `spec` is outside of (empty when it is within all of them).
pub fn violations(spec: &ServiceSpec) -> Vec<Violation> {
    let mut c = Check { out: Vec::new() };
    if let Some(replicas) = spec.mode.replicas()
        && replicas > MAX_REPLICAS
    {
        c.fail(
            "replicas",
            format!("{replicas} is above the limit of {MAX_REPLICAS}"),
        );
    }
    if let Some(n) = spec.placement.max_replicas_per_node
        && n > MAX_REPLICAS
    {
        c.fail(
            "placement.max_replicas_per_node",
            format!("{n} is above the limit of {MAX_REPLICAS}"),
        );
    }
    let t = &spec.task;
    c.name("image", &t.image);
    let mut exec = c.args("entrypoint", t.entrypoint.as_ref());
    exec += c.args("command", t.command.as_ref());
    c.map("env", t.env.iter(), "variables");
    exec += t
        .env
        .iter()
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum::<usize>();
    if exec > MAX_EXEC_BYTES {
        c.fail(
            "env",
            format!(
                "the command and environment take {exec} bytes, above the limit of {MAX_EXEC_BYTES} bytes"
            ),
        );
    }
    c.map("labels", spec.labels.iter(), "labels");
    c.map("container_labels", t.labels.iter(), "labels");
    c.map("sysctls", t.sysctls.iter(), "sysctls");
    for (field, s) in [
        ("working_dir", t.workdir.as_deref()),
        ("user", t.user.as_deref()),
        ("hostname", t.hostname.as_deref()),
        ("stop_signal", Some(t.stop_signal.as_str())),
    ] {
        if let Some(s) = s {
            c.name(field, s);
        }
    }
    c.count("ports", spec.ports.len(), MAX_PORTS, "ports");
    c.count("volumes", t.mounts.len(), MAX_MOUNTS, "mounts");
    for m in &t.mounts {
        c.name("volumes", &m.source);
        c.name("volumes", &m.target);
    }
    c.count(
        "placement.constraints",
        spec.placement.constraints.len(),
        MAX_PLACEMENT_RULES,
        "constraints",
    );
    c.count(
        "placement.preferences",
        spec.placement.preferences.len(),
        MAX_PLACEMENT_RULES,
        "preferences",
    );
    c.duration("stop_grace_period", t.stop_grace_period);
    c.duration("restart.delay", spec.restart.delay);
    c.duration("restart.max_delay", spec.restart.max_delay);
    c.duration("restart.window", spec.restart.window);
    if let Some(n) = spec.restart.max_attempts
        && n > MAX_RESTART_ATTEMPTS
    {
        c.fail(
            "restart.max_attempts",
            format!("{n} is above the limit of {MAX_RESTART_ATTEMPTS} (0 means no limit)"),
        );
    }
    c.update("update", &spec.update);
    c.update("rollback", &spec.rollback);
    if let Some(h) = &t.healthcheck {
        c.args("healthcheck.test", Some(&h.test));
        c.duration("healthcheck.interval", h.interval);
        c.duration("healthcheck.timeout", h.timeout);
        c.duration("healthcheck.start_period", h.start_period);
        c.duration("healthcheck.start_interval", h.start_interval);
        if h.retries > crate::health::MAX_RETRIES {
            c.fail(
                "healthcheck.retries",
                format!(
                    "{} is above the limit of {}",
                    h.retries,
                    crate::health::MAX_RETRIES
                ),
            );
        }
    }
    c.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_of_bound() {
        let mut s = ServiceSpec::default();
        assert!(violations(&s).is_empty());
        s.mode = crate::ServiceMode::Replicated {
            replicas: 30_000_000_000,
        };
        s.restart.delay = MAX_DURATION + 1000;
        s.restart.max_attempts = Some(MAX_RESTART_ATTEMPTS + 1);
        s.update.parallelism = MAX_REPLICAS + 1;
        s.task.command = Some(vec!["x".repeat(MAX_VALUE_BYTES + 1)]);
        s.task.env = (0..=MAX_MAP_ENTRIES)
            .map(|i| (format!("V{i}"), String::new()))
            .collect();
        s.task.image = "i".repeat(MAX_NAME_BYTES + 1);
        let v: Vec<String> = violations(&s).iter().map(ToString::to_string).collect();
        for want in [
            "replicas: 30000000000 is above the limit of 100000",
            "restart.delay: 24h1s is above the limit of 24h",
            "restart.max_attempts: 1000001 is above the limit of 1000000 (0 means no limit)",
            "update.parallelism: 100001 is above the limit of 100000",
            "command: argument 0 (32769 bytes) is above the limit of 32768 bytes",
            "env: 1001 variables is above the limit of 1000",
            "image: 4097 bytes is above the limit of 4096 bytes",
        ] {
            assert!(v.iter().any(|m| m == want), "{want:?} not in {v:#?}");
        }
    }
}
