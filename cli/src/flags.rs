//! `service create` / `service update` flags and their translation into the API's property list.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use model::{PortSpec, Protocol, PublishMode};
use shoal_dbus::props::{MountRow, mount_to_row};
use shoal_dbus::{Property, ServiceInspect, port_properties};
use spec::placement;

/// Flags shared by `service create` and `service update`.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonFlags {
    /// Number of tasks (a replicated job: the completions to make)
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Replicated jobs: the number of tasks run at once (default: --replicas)
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Container hostname
    #[arg(long)]
    pub hostname: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Restart when condition is met ("none", "on-failure", "any")
    #[arg(long)]
    pub restart_condition: Option<String>,
    /// Delay between restart attempts (ns|us|ms|s|m|h)
    #[arg(long)]
    pub restart_delay: Option<String>,
    /// Longest delay between restart attempts; the delay doubles up to it
    #[arg(long)]
    pub restart_max_delay: Option<String>,
    /// Maximum number of restarts before giving up (0: unlimited)
    #[arg(long)]
    pub restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy (ns|us|ms|s|m|h)
    #[arg(long)]
    pub restart_window: Option<String>,
    /// Maximum number of tasks updated simultaneously (0 to update all at once)
    #[arg(long)]
    pub update_parallelism: Option<u64>,
    /// Delay between updates (ns|us|ms|s|m|h)
    #[arg(long)]
    pub update_delay: Option<String>,
    /// Update order ("start-first", "stop-first")
    #[arg(long)]
    pub update_order: Option<String>,
    /// Action on update failure ("pause", "continue", "rollback")
    #[arg(long)]
    pub update_failure_action: Option<String>,
    /// Duration after each task update to monitor for failure (ns|us|ms|s|m|h)
    #[arg(long)]
    pub update_monitor: Option<String>,
    /// Failure rate to tolerate during an update (0 to 1)
    #[arg(long)]
    pub update_max_failure_ratio: Option<f64>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once)
    #[arg(long)]
    pub rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks (ns|us|ms|s|m|h)
    #[arg(long)]
    pub rollback_delay: Option<String>,
    /// Rollback order ("start-first", "stop-first")
    #[arg(long)]
    pub rollback_order: Option<String>,
    /// Action on rollback failure ("pause", "continue")
    #[arg(long)]
    pub rollback_failure_action: Option<String>,
    /// Duration after each task rollback to monitor for failure (ns|us|ms|s|m|h)
    #[arg(long)]
    pub rollback_monitor: Option<String>,
    /// Failure rate to tolerate during a rollback (0 to 1)
    #[arg(long)]
    pub rollback_max_failure_ratio: Option<f64>,
    /// Signal to stop the container
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Time to wait before force killing a container (ns|us|ms|s|m|h)
    #[arg(long)]
    pub stop_grace_period: Option<String>,
    /// Memory limit (e.g. 256M, 1G; 0 for none)
    #[arg(long)]
    pub limit_memory: Option<String>,
    /// CPU limit (e.g. 0.5; 0 for none)
    #[arg(long)]
    pub limit_cpu: Option<f64>,
    /// Maximum number of processes (0 for none)
    #[arg(long)]
    pub limit_pids: Option<u64>,
    /// Mount the container's root filesystem as read only
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub read_only: Option<bool>,
    /// Maximum number of tasks per node (default 0 = unlimited)
    #[arg(long)]
    pub replicas_max_per_node: Option<u64>,
    /// Add Linux capabilities (NET_ADMIN, CAP_SYS_TIME or ALL); on update, replaces the list
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities (CHOWN, ALL); on update, replaces the list
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// Security options: no-new-privileges[=true|false], seccomp=unconfined; on update,
    /// replaces the list
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    /// Run an init (tini) inside the container that forwards signals and reaps processes
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub init: Option<bool>,
    /// Ulimit options (e.g. nofile=1024:2048, nproc=512, core=-1); on update, replaces the list
    #[arg(long = "ulimit")]
    pub ulimit: Vec<String>,
    /// Namespaced kernel parameters (e.g. net.core.somaxconn=1024); on update, replaces the list
    #[arg(long = "sysctl")]
    pub sysctl: Vec<String>,
    /// Add a custom host-to-IP mapping to /etc/hosts (host:ip); on update, replaces the list
    #[arg(long = "host")]
    pub host: Vec<String>,
    /// Set custom DNS servers (for names outside the cluster); on update, replaces the list
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// Set custom DNS search domains; on update, replaces the list
    #[arg(long = "dns-search")]
    pub dns_search: Vec<String>,
    /// Set DNS options (e.g. ndots:2); on update, replaces the list
    #[arg(long = "dns-option")]
    pub dns_option: Vec<String>,
    /// Reserve CPUs on the node (e.g. 0.5; 0 for none)
    #[arg(long)]
    pub reserve_cpu: Option<f64>,
    /// Reserve memory on the node (e.g. 256M; 0 for none)
    #[arg(long)]
    pub reserve_memory: Option<String>,
    /// Command to run to check health, run by the task's shell (/bin/sh -c)
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h) (default 30s); a starting task is also
    /// checked early, from its start on, until it passes or the first interval is over
    #[arg(long)]
    pub health_interval: Option<String>,
    /// Maximum time to allow one check to run (ms|s|m|h) (default 30s)
    #[arg(long)]
    pub health_timeout: Option<String>,
    /// Consecutive failures needed to report unhealthy (default 3)
    #[arg(long)]
    pub health_retries: Option<u64>,
    /// Start period for the container to initialize before failed checks count (ms|s|m|h)
    #[arg(long)]
    pub health_start_period: Option<String>,
    /// Time between running the check during the start period (ms|s|m|h) (default 5s)
    #[arg(long)]
    pub health_start_interval: Option<String>,
    /// Disable any container-specified HEALTHCHECK
    #[arg(long)]
    pub no_healthcheck: bool,
}

/// `service create` only.
#[derive(Debug, Clone, Default, Args)]
pub struct CreateFlags {
    /// Service name
    #[arg(long)]
    pub name: Option<String>,
    /// Service mode ("replicated", "global", "replicated-job", "global-job")
    #[arg(long)]
    pub mode: Option<String>,
    /// Publish a port as a node port (e.g. 8080:80, 8080:80/udp, or
    /// published=8080,target=80,protocol=tcp,mode=host)
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Set environment variables (KEY=VALUE, or KEY to copy it from this shell)
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Attach a filesystem mount (type=bind,source=/a,target=/b[,readonly] or /a:/b[:ro])
    #[arg(long = "mount")]
    pub mount: Vec<String>,
    /// Service labels (KEY=VALUE)
    #[arg(short = 'l', long = "label")]
    pub label: Vec<String>,
    /// Container labels (KEY=VALUE)
    #[arg(long = "container-label")]
    pub container_label: Vec<String>,
    /// Network attachments
    #[arg(long = "network")]
    pub network: Vec<String>,
    /// How the service is reached on its networks: "vip" (one virtual IP, the default) or
    /// "dnsrr" (its name resolves to its tasks' addresses)
    #[arg(long = "endpoint-mode")]
    pub endpoint_mode: Option<String>,
    /// Placement constraints (e.g. node.labels.zone==a, node.role!=manager,
    /// "node.labels.zone in (a, b)")
    #[arg(long = "constraint")]
    pub constraint: Vec<String>,
    /// Add a placement preference (spread=node.labels.KEY)
    #[arg(long = "placement-pref")]
    pub placement_pref: Vec<String>,
    /// Give the tasks a secret at /run/secrets/NAME (NAME, or
    /// source=NAME,target=FILE,uid=0,gid=0,mode=0444)
    #[arg(long = "secret")]
    pub secret: Vec<String>,
    /// Give the tasks a config at /NAME (NAME, or source=NAME,target=/PATH,uid=,gid=,mode=)
    #[arg(long = "config")]
    pub config: Vec<String>,
}

/// `service update` only.
#[derive(Debug, Clone, Default, Args)]
pub struct UpdateFlags {
    /// Service image tag
    #[arg(long)]
    pub image: Option<String>,
    /// Service command and arguments, as one shell-quoted string
    #[arg(long)]
    pub args: Option<String>,
    /// Force update even if no changes require it
    #[arg(long)]
    pub force: bool,
    /// Add or update environment variables
    #[arg(long = "env-add")]
    pub env_add: Vec<String>,
    /// Remove environment variables
    #[arg(long = "env-rm")]
    pub env_rm: Vec<String>,
    /// Add or update service labels
    #[arg(long = "label-add")]
    pub label_add: Vec<String>,
    /// Remove service labels
    #[arg(long = "label-rm")]
    pub label_rm: Vec<String>,
    /// Add or update a published port
    #[arg(long = "publish-add")]
    pub publish_add: Vec<String>,
    /// Remove a published port by its published port number (e.g. 8080 or 8080/udp)
    #[arg(long = "publish-rm")]
    pub publish_rm: Vec<String>,
    /// Add or update a mount
    #[arg(long = "mount-add")]
    pub mount_add: Vec<String>,
    /// Remove a mount by its target path
    #[arg(long = "mount-rm")]
    pub mount_rm: Vec<String>,
    /// Add or update a placement constraint
    #[arg(long = "constraint-add")]
    pub constraint_add: Vec<String>,
    /// Remove a constraint
    #[arg(long = "constraint-rm")]
    pub constraint_rm: Vec<String>,
    /// Add a placement preference (spread=node.labels.KEY)
    #[arg(long = "placement-pref-add")]
    pub placement_pref_add: Vec<String>,
    /// Remove a placement preference
    #[arg(long = "placement-pref-rm")]
    pub placement_pref_rm: Vec<String>,
    /// Add or update a secret (NAME, or source=NAME,target=FILE,uid=,gid=,mode=)
    #[arg(long = "secret-add")]
    pub secret_add: Vec<String>,
    /// Remove a secret by name
    #[arg(long = "secret-rm")]
    pub secret_rm: Vec<String>,
    /// Add or update a config (NAME, or source=NAME,target=/PATH,uid=,gid=,mode=)
    #[arg(long = "config-add")]
    pub config_add: Vec<String>,
    /// Remove a config by name
    #[arg(long = "config-rm")]
    pub config_rm: Vec<String>,
}

/// Parse a docker duration into microseconds for the API.
pub fn duration_usec(flag: &str, s: &str) -> Result<u64, String> {
    spec::units::parse_duration(s)
        .map(|ms| ms.saturating_mul(1000))
        .map_err(|e| format!("--{flag}: {e}"))
}

/// Parse a `--timeout` value.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    spec::units::parse_duration(s).map(Duration::from_millis)
}

/// `0` means no limit; otherwise a docker memory size.
pub fn memory_bytes(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    spec::units::parse_memory(s).map_err(|e| format!("--limit-memory: {e}"))
}

fn key_value(flag: &str, s: &str, from_env: bool) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err(format!("--{flag} {s:?}: the name before '=' is empty")),
        None if from_env => match std::env::var(s) {
            Ok(v) => Ok((s.to_string(), v)),
            Err(_) => Err(format!(
                "--{flag} {s}: no value given and {s} is not set in this shell; write {s}=VALUE"
            )),
        },
        None => Ok((s.to_string(), String::new())),
    }
}

fn key_values(
    flag: &str,
    items: &[String],
    from_env: bool,
) -> Result<BTreeMap<String, String>, String> {
    items.iter().map(|s| key_value(flag, s, from_env)).collect()
}

/// `8080:80[/udp]`, a range, `127.0.0.1:8080:80` (served on that address only), or docker's
/// long form `published=8080,target=80,protocol=udp,mode=host[,host_ip=127.0.0.1]`.
pub fn parse_publish(s: &str) -> Result<Vec<PortSpec>, String> {
    if !s.contains('=') {
        return spec::units::parse_port_short(s).map_err(|e| format!("--publish {s}: {e}"));
    }
    let mut host_ip = None;
    let mut published = None;
    let mut target = None;
    let mut protocol = Protocol::Tcp;
    let mut mode = PublishMode::Ingress;
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("--publish {s}: expected key=value in {part:?}"))?;
        let num = |v: &str| {
            v.parse::<u16>()
                .map_err(|_| format!("--publish {s}: invalid port {v:?}"))
        };
        match k {
            "published" => published = Some(num(v)?),
            "target" => target = Some(num(v)?),
            "protocol" => {
                protocol =
                    spec::units::parse_protocol(v).map_err(|e| format!("--publish {s}: {e}"))?
            }
            "mode" => {
                mode = match v {
                    "ingress" => PublishMode::Ingress,
                    "host" => PublishMode::Host,
                    _ => return Err(format!("--publish {s}: mode must be ingress or host")),
                }
            }
            "host_ip" => {
                host_ip =
                    Some(spec::units::parse_host_ip(v).map_err(|e| format!("--publish {s}: {e}"))?)
            }
            other => {
                return Err(format!(
                    "--publish {s}: unknown key {other:?} (use published, target, protocol, mode, host_ip)"
                ));
            }
        }
    }
    let target = target.ok_or_else(|| format!("--publish {s}: target is required"))?;
    // No published port: the cluster picks one of 30000-32767.
    let published = published.unwrap_or(0);
    Ok(vec![PortSpec {
        published,
        target,
        protocol,
        mode,
        host_ip,
    }])
}

/// Docker's `--mount type=bind,source=/a,target=/b,readonly` or the short `/a:/b:ro`.
pub fn parse_mount(s: &str) -> Result<MountRow, String> {
    if !s.contains('=') {
        return spec::units::parse_mount_short(s)
            .map(|m| mount_to_row(&m))
            .map_err(|e| format!("--mount {s}: {e}"));
    }
    let mut row = MountRow {
        kind: "volume".into(),
        source: String::new(),
        target: String::new(),
        read_only: false,
        size: 0,
    };
    for part in s.split(',') {
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k, v),
            None => (part, "true"),
        };
        match k {
            "type" => row.kind = v.to_string(),
            "source" | "src" => row.source = v.to_string(),
            "target" | "destination" | "dst" => row.target = v.to_string(),
            "readonly" | "ro" => {
                row.read_only = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("--mount {s}: readonly must be true or false")),
                }
            }
            "tmpfs-size" => {
                row.size = spec::units::parse_memory(v).map_err(|e| format!("--mount {s}: {e}"))?
            }
            other => {
                return Err(format!(
                    "--mount {s}: unknown option {other:?} (use type, source, target, readonly, tmpfs-size)"
                ));
            }
        }
    }
    if row.target.is_empty() {
        return Err(format!("--mount {s}: target is required"));
    }
    Ok(row)
}

/// Parse each value with the shared validator, collecting errors as `--FLAG: message`.
fn parse_each<T>(
    flag: &str,
    items: &[String],
    parse: fn(&str) -> Result<T, String>,
    errs: &mut Vec<String>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    for s in items {
        match parse(s) {
            Ok(v) => out.push(v),
            Err(e) => errs.push(format!("--{flag}: {e}")),
        }
    }
    out
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// Docker's `--X-rm` then `--X-add` on a list: removals by value, additions appended unless
/// already present. Every value goes through `parse`; problems are collected in `errs`.
fn add_rm<T: PartialEq + Clone>(
    flag: &str,
    current: &[T],
    add: &[String],
    rm: &[String],
    parse: fn(&str) -> Result<T, String>,
    errs: &mut Vec<String>,
) -> Vec<T> {
    let rm = parse_each(&format!("{flag}-rm"), rm, parse, errs);
    let add = parse_each(&format!("{flag}-add"), add, parse, errs);
    let mut out: Vec<T> = current
        .iter()
        .filter(|c| !rm.contains(c))
        .cloned()
        .collect();
    for a in add {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

fn split_words(flag: &str, s: &str) -> Result<Vec<String>, String> {
    spec::units::split_command(s).map_err(|e| format!("--{flag}: {e}"))
}

/// Properties for the flags both commands share.
fn common_properties(f: &CommonFlags, out: &mut Vec<Property>) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    let mut push = |r: Result<Property, String>| match r {
        Ok(p) => out.push(p),
        Err(e) => errs.push(e),
    };
    if let Some(n) = f.replicas {
        push(
            placement::check_replicas(n)
                .map(Property::Replicas)
                .map_err(|e| format!("--replicas: {e}")),
        );
    }
    if let Some(n) = f.max_concurrent {
        push(Ok(Property::MaxConcurrent(n)));
    }
    if let Some(n) = f.replicas_max_per_node {
        push(
            placement::parse_max_replicas_per_node(n)
                .map(|_| Property::MaxReplicasPerNode(n))
                .map_err(|e| format!("--replicas-max-per-node: {e}")),
        );
    }
    if let Some(s) = &f.workdir {
        push(Ok(Property::Workdir(s.clone())));
    }
    if let Some(s) = &f.user {
        push(Ok(Property::User(s.clone())));
    }
    if let Some(s) = &f.hostname {
        push(Ok(Property::Hostname(s.clone())));
    }
    if let Some(s) = &f.entrypoint {
        push(split_words("entrypoint", s).map(Property::Entrypoint));
    }
    if let Some(s) = &f.restart_condition {
        push(Ok(Property::RestartCondition(s.clone())));
    }
    if let Some(s) = &f.restart_delay {
        push(duration_usec("restart-delay", s).map(Property::RestartDelayUSec));
    }
    if let Some(s) = &f.restart_max_delay {
        push(duration_usec("restart-max-delay", s).map(Property::RestartMaxDelayUSec));
    }
    if let Some(n) = f.restart_max_attempts {
        push(Ok(Property::RestartMaxAttempts(n)));
    }
    if let Some(s) = &f.restart_window {
        push(duration_usec("restart-window", s).map(Property::RestartWindowUSec));
    }
    if let Some(n) = f.update_parallelism {
        push(Ok(Property::UpdateParallelism(n)));
    }
    if let Some(s) = &f.update_delay {
        push(duration_usec("update-delay", s).map(Property::UpdateDelayUSec));
    }
    if let Some(s) = &f.update_order {
        push(Ok(Property::UpdateOrder(s.clone())));
    }
    if let Some(s) = &f.update_failure_action {
        push(Ok(Property::UpdateFailureAction(s.clone())));
    }
    if let Some(s) = &f.update_monitor {
        push(duration_usec("update-monitor", s).map(Property::UpdateMonitorUSec));
    }
    if let Some(r) = f.update_max_failure_ratio {
        push(Ok(Property::UpdateMaxFailureRatio(r)));
    }
    if let Some(n) = f.rollback_parallelism {
        push(Ok(Property::RollbackParallelism(n)));
    }
    if let Some(s) = &f.rollback_delay {
        push(duration_usec("rollback-delay", s).map(Property::RollbackDelayUSec));
    }
    if let Some(s) = &f.rollback_order {
        push(Ok(Property::RollbackOrder(s.clone())));
    }
    if let Some(s) = &f.rollback_failure_action {
        push(Ok(Property::RollbackFailureAction(s.clone())));
    }
    if let Some(s) = &f.rollback_monitor {
        push(duration_usec("rollback-monitor", s).map(Property::RollbackMonitorUSec));
    }
    if let Some(r) = f.rollback_max_failure_ratio {
        push(Ok(Property::RollbackMaxFailureRatio(r)));
    }
    if let Some(s) = &f.stop_signal {
        push(
            spec::units::normalize_signal(s)
                .map(Property::StopSignal)
                .map_err(|e| format!("--stop-signal: {e}")),
        );
    }
    if let Some(s) = &f.stop_grace_period {
        push(duration_usec("stop-grace-period", s).map(Property::StopGracePeriodUSec));
    }
    if let Some(s) = &f.limit_memory {
        push(memory_bytes(s).map(Property::MemoryMax));
    }
    if let Some(c) = f.limit_cpu {
        push(Ok(Property::CPUs(c)));
    }
    if let Some(n) = f.limit_pids {
        push(Ok(Property::PidsMax(n)));
    }
    if let Some(b) = f.read_only {
        push(Ok(Property::ReadOnly(b)));
    }
    // The daemon checks every value with the validator the stack files use.
    if !f.cap_add.is_empty() {
        push(Ok(Property::CapAdd(f.cap_add.clone())));
    }
    if !f.cap_drop.is_empty() {
        push(Ok(Property::CapDrop(f.cap_drop.clone())));
    }
    if !f.security_opt.is_empty() {
        push(Ok(Property::SecurityOpt(f.security_opt.clone())));
    }
    if let Some(b) = f.init {
        push(Ok(Property::Init(b)));
    }
    if !f.ulimit.is_empty() {
        let mut limits = BTreeMap::new();
        let mut bad = Vec::new();
        for u in &f.ulimit {
            match spec::sandbox::parse_ulimit(u) {
                Ok((name, l)) => {
                    limits.insert(name, (l.soft, l.hard));
                }
                Err(e) => bad.push(format!("--ulimit: {e}")),
            }
        }
        if bad.is_empty() {
            push(Ok(Property::Ulimits(limits)));
        } else {
            push(Err(bad.join("; ")));
        }
    }
    if !f.sysctl.is_empty() {
        push(key_values("sysctl", &f.sysctl, false).map(Property::Sysctls));
    }
    // Checked by the daemon's (and the files') validator in `spec::resolver`.
    if !f.host.is_empty() {
        push(Ok(Property::ExtraHosts(f.host.clone())));
    }
    if !f.dns.is_empty() {
        push(Ok(Property::DNS(f.dns.clone())));
    }
    if !f.dns_search.is_empty() {
        push(Ok(Property::DNSSearch(f.dns_search.clone())));
    }
    if !f.dns_option.is_empty() {
        push(Ok(Property::DNSOptions(f.dns_option.clone())));
    }
    if let Some(c) = f.reserve_cpu {
        push(Ok(Property::CPUsReservation(c)));
    }
    if let Some(s) = &f.reserve_memory {
        push(
            memory_bytes(s)
                .map(Property::MemoryReservation)
                .map_err(|e| e.replace("--limit-memory", "--reserve-memory")),
        );
    }
    health_properties(f, &mut push);
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// `--health-*` and `--no-healthcheck`; the daemon checks the values with the validator the
/// stack files use.
fn health_properties(f: &CommonFlags, push: &mut impl FnMut(Result<Property, String>)) {
    let timing = f.health_interval.is_some()
        || f.health_timeout.is_some()
        || f.health_retries.is_some()
        || f.health_start_period.is_some()
        || f.health_start_interval.is_some();
    if f.no_healthcheck {
        if timing || f.health_cmd.is_some() {
            push(Err(
                "--no-healthcheck conflicts with --health-* options: use one or the other".into(),
            ));
        } else {
            push(Ok(Property::HealthTest(vec!["NONE".into()])));
        }
        return;
    }
    if let Some(cmd) = &f.health_cmd {
        push(Ok(Property::HealthTest(vec![
            "CMD-SHELL".into(),
            cmd.clone(),
        ])));
    }
    for (flag, value, make) in [
        (
            "health-interval",
            &f.health_interval,
            Property::HealthIntervalUSec as fn(u64) -> Property,
        ),
        (
            "health-timeout",
            &f.health_timeout,
            Property::HealthTimeoutUSec,
        ),
        (
            "health-start-period",
            &f.health_start_period,
            Property::HealthStartPeriodUSec,
        ),
        (
            "health-start-interval",
            &f.health_start_interval,
            Property::HealthStartIntervalUSec,
        ),
    ] {
        if let Some(s) = value {
            push(duration_usec(flag, s).map(make));
        }
    }
    if let Some(n) = f.health_retries {
        push(Ok(Property::HealthRetries(n)));
    }
}

/// The property list of `service create`.
pub fn create_properties(
    image: &str,
    command: &[String],
    common: &CommonFlags,
    create: &CreateFlags,
) -> Result<Vec<Property>, Vec<String>> {
    let mut out = vec![Property::Image(image.to_string())];
    let mut errs = Vec::new();
    if let Some(m) = &create.mode {
        out.push(Property::Mode(m.clone()));
    }
    if !command.is_empty() {
        out.push(Property::Command(command.to_vec()));
    }
    if let Err(e) = common_properties(common, &mut out) {
        errs.extend(e);
    }
    if !create.publish.is_empty() {
        let mut ports = Vec::new();
        for p in &create.publish {
            match parse_publish(p) {
                Ok(v) => ports.extend(v),
                Err(e) => errs.push(e),
            }
        }
        out.extend(port_properties(&ports));
    }
    if !create.env.is_empty() {
        match key_values("env", &create.env, true) {
            Ok(m) => out.push(Property::Env(m)),
            Err(e) => errs.push(e),
        }
    }
    if !create.mount.is_empty() {
        let mut mounts = Vec::new();
        for m in &create.mount {
            match parse_mount(m) {
                Ok(r) => mounts.push(r),
                Err(e) => errs.push(e),
            }
        }
        out.push(Property::Mounts(mounts));
    }
    if !create.label.is_empty() {
        match key_values("label", &create.label, false) {
            Ok(m) => out.push(Property::Labels(m)),
            Err(e) => errs.push(e),
        }
    }
    if !create.container_label.is_empty() {
        match key_values("container-label", &create.container_label, false) {
            Ok(m) => out.push(Property::ContainerLabels(m)),
            Err(e) => errs.push(e),
        }
    }
    if !create.network.is_empty() {
        out.push(Property::Networks(create.network.clone()));
    }
    if let Some(m) = &create.endpoint_mode {
        match model::EndpointMode::parse(m) {
            Ok(mode) => out.push(Property::EndpointMode(mode.as_str().into())),
            Err(e) => errs.push(format!("--endpoint-mode: {e}")),
        }
    }
    if !create.constraint.is_empty() {
        let c = parse_each(
            "constraint",
            &create.constraint,
            placement::parse_constraint,
            &mut errs,
        );
        out.push(Property::Constraints(strings(&c)));
    }
    for (kind, items) in [
        (model::SecretKind::Secret, &create.secret),
        (model::SecretKind::Config, &create.config),
    ] {
        if items.is_empty() {
            continue;
        }
        let mut refs = Vec::with_capacity(items.len());
        for s in items {
            match spec::secrets::parse_ref_flag(kind, s) {
                Ok(r) => refs.push(r),
                Err(e) => errs.push(format!("--{}: {e}", kind.as_str())),
            }
        }
        out.push(secret_property(kind, &refs));
    }
    if !create.placement_pref.is_empty() {
        let p = parse_each(
            "placement-pref",
            &create.placement_pref,
            placement::parse_preference,
            &mut errs,
        );
        out.push(Property::PlacementPreferences(strings(&p)));
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

/// Whether `update` needs the current spec (for the `--*-add` / `--*-rm` flags).
pub fn update_needs_current(u: &UpdateFlags) -> bool {
    !(u.env_add.is_empty()
        && u.env_rm.is_empty()
        && u.label_add.is_empty()
        && u.label_rm.is_empty()
        && u.publish_add.is_empty()
        && u.publish_rm.is_empty()
        && u.mount_add.is_empty()
        && u.mount_rm.is_empty()
        && u.constraint_add.is_empty()
        && u.constraint_rm.is_empty()
        && u.placement_pref_add.is_empty()
        && u.placement_pref_rm.is_empty()
        && u.secret_add.is_empty()
        && u.secret_rm.is_empty()
        && u.config_add.is_empty()
        && u.config_rm.is_empty())
}

/// The `Secrets` or `Configs` property of a list of references.
fn secret_property(kind: model::SecretKind, refs: &[model::SecretRef]) -> Property {
    let flags = refs
        .iter()
        .map(|r| spec::secrets::format_ref_flag(kind, r))
        .collect();
    match kind {
        model::SecretKind::Secret => Property::Secrets(flags),
        model::SecretKind::Config => Property::Configs(flags),
    }
}

/// The property list of `service update`: only what the flags change. `current` is needed when
/// [`update_needs_current`] says so.
pub fn update_properties(
    common: &CommonFlags,
    u: &UpdateFlags,
    current: Option<&ServiceInspect>,
) -> Result<Vec<Property>, Vec<String>> {
    let mut out = Vec::new();
    let mut errs = Vec::new();
    if let Some(i) = &u.image {
        out.push(Property::Image(i.clone()));
    }
    if let Some(a) = &u.args {
        match split_words("args", a) {
            Ok(v) => out.push(Property::Command(v)),
            Err(e) => errs.push(e),
        }
    }
    if let Err(e) = common_properties(common, &mut out) {
        errs.extend(e);
    }
    if update_needs_current(u) {
        let Some(cur) = current else {
            return Err(vec!["the current spec is needed for --*-add/--*-rm".into()]);
        };
        let spec = &cur.spec;
        if !u.env_add.is_empty() || !u.env_rm.is_empty() {
            let mut env = spec.task.env.clone();
            for k in &u.env_rm {
                env.remove(k.split_once('=').map(|(k, _)| k).unwrap_or(k));
            }
            match key_values("env-add", &u.env_add, true) {
                Ok(m) => env.extend(m),
                Err(e) => errs.push(e),
            }
            out.push(Property::Env(env));
        }
        if !u.label_add.is_empty() || !u.label_rm.is_empty() {
            let mut labels = spec.labels.clone();
            for k in &u.label_rm {
                labels.remove(k);
            }
            match key_values("label-add", &u.label_add, false) {
                Ok(m) => labels.extend(m),
                Err(e) => errs.push(e),
            }
            out.push(Property::Labels(labels));
        }
        if !u.publish_add.is_empty() || !u.publish_rm.is_empty() {
            let mut ports: Vec<PortSpec> = spec.ports.clone();
            for r in &u.publish_rm {
                let (num, proto) = match r.split_once('/') {
                    Some((n, p)) => (n, Some(p)),
                    None => (r.as_str(), None),
                };
                match num.parse::<u16>() {
                    Ok(n) => ports.retain(|p| {
                        !(p.published == n && proto.is_none_or(|x| x == p.protocol.as_str()))
                    }),
                    Err(_) => errs.push(format!("--publish-rm {r}: expected a port number")),
                }
            }
            for a in &u.publish_add {
                match parse_publish(a) {
                    Ok(v) => {
                        for p in v {
                            ports.retain(|q| {
                                !(q.published == p.published && q.protocol == p.protocol)
                            });
                            ports.push(p);
                        }
                    }
                    Err(e) => errs.push(e),
                }
            }
            out.extend(port_properties(&ports));
        }
        if !u.mount_add.is_empty() || !u.mount_rm.is_empty() {
            let mut mounts: Vec<MountRow> = spec.task.mounts.iter().map(mount_to_row).collect();
            mounts.retain(|m| !u.mount_rm.contains(&m.target));
            for a in &u.mount_add {
                match parse_mount(a) {
                    Ok(m) => {
                        mounts.retain(|o| o.target != m.target);
                        mounts.push(m);
                    }
                    Err(e) => errs.push(e),
                }
            }
            out.push(Property::Mounts(mounts));
        }
        if !u.constraint_add.is_empty() || !u.constraint_rm.is_empty() {
            let c = add_rm(
                "constraint",
                &spec.placement.constraints,
                &u.constraint_add,
                &u.constraint_rm,
                placement::parse_constraint,
                &mut errs,
            );
            out.push(Property::Constraints(strings(&c)));
        }
        for (kind, add, rm, have) in [
            (
                model::SecretKind::Secret,
                &u.secret_add,
                &u.secret_rm,
                &spec.task.secrets,
            ),
            (
                model::SecretKind::Config,
                &u.config_add,
                &u.config_rm,
                &spec.task.configs,
            ),
        ] {
            if add.is_empty() && rm.is_empty() {
                continue;
            }
            let mut refs: Vec<model::SecretRef> = have.clone();
            refs.retain(|r| !rm.contains(&r.name));
            for a in add {
                match spec::secrets::parse_ref_flag(kind, a) {
                    Ok(r) => {
                        // One file per target: a new reference replaces the one there.
                        refs.retain(|o| o.target != r.target);
                        refs.push(r);
                    }
                    Err(e) => errs.push(format!("--{}-add: {e}", kind.as_str())),
                }
            }
            out.push(secret_property(kind, &refs));
        }
        if !u.placement_pref_add.is_empty() || !u.placement_pref_rm.is_empty() {
            let p = add_rm(
                "placement-pref",
                &spec.placement.preferences,
                &u.placement_pref_add,
                &u.placement_pref_rm,
                placement::parse_preference,
                &mut errs,
            );
            out.push(Property::PlacementPreferences(strings(&p)));
        }
    }
    if u.force {
        out.push(Property::ForceUpdate(true));
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_flags_become_properties() {
        let common = CommonFlags {
            health_cmd: Some("wget -qO- http://127.0.0.1/".into()),
            health_interval: Some("5s".into()),
            health_timeout: Some("2s".into()),
            health_retries: Some(4),
            health_start_period: Some("1m".into()),
            health_start_interval: Some("500ms".into()),
            ..Default::default()
        };
        let props = create_properties("nginx:1.27", &[], &common, &CreateFlags::default()).unwrap();
        for want in [
            Property::HealthTest(vec![
                "CMD-SHELL".into(),
                "wget -qO- http://127.0.0.1/".into(),
            ]),
            Property::HealthIntervalUSec(5_000_000),
            Property::HealthTimeoutUSec(2_000_000),
            Property::HealthRetries(4),
            Property::HealthStartPeriodUSec(60_000_000),
            Property::HealthStartIntervalUSec(500_000),
        ] {
            assert!(props.contains(&want), "{want:?} in {props:?}");
        }
        let rollback = CommonFlags {
            rollback_parallelism: Some(0),
            rollback_monitor: Some("3s".into()),
            rollback_failure_action: Some("continue".into()),
            ..Default::default()
        };
        let props =
            create_properties("nginx:1.27", &[], &rollback, &CreateFlags::default()).unwrap();
        for want in [
            Property::RollbackParallelism(0),
            Property::RollbackMonitorUSec(3_000_000),
            Property::RollbackFailureAction("continue".into()),
        ] {
            assert!(props.contains(&want), "{want:?} in {props:?}");
        }
        let off = CommonFlags {
            no_healthcheck: true,
            ..Default::default()
        };
        let props = create_properties("nginx:1.27", &[], &off, &CreateFlags::default()).unwrap();
        assert!(props.contains(&Property::HealthTest(vec!["NONE".into()])));
        let both = CommonFlags {
            no_healthcheck: true,
            health_interval: Some("1s".into()),
            ..Default::default()
        };
        let err = create_properties("nginx:1.27", &[], &both, &CreateFlags::default()).unwrap_err();
        assert!(err[0].contains("--no-healthcheck conflicts"), "{err:?}");
    }

    #[test]
    fn create_flags_become_properties() {
        let common = CommonFlags {
            replicas: Some(3),
            restart_delay: Some("250ms".into()),
            stop_grace_period: Some("1m30s".into()),
            limit_memory: Some("256M".into()),
            limit_cpu: Some(0.5),
            stop_signal: Some("quit".into()),
            update_order: Some("start-first".into()),
            entrypoint: Some("/bin/sh -c".into()),
            ..Default::default()
        };
        let create = CreateFlags {
            publish: vec![
                "8080:80".into(),
                "published=53,target=53,protocol=udp,mode=host".into(),
            ],
            env: vec!["A=1".into(), "B=x=y".into()],
            mount: vec!["type=bind,source=/etc,target=/host-etc,readonly".into()],
            label: vec!["tier=front".into()],
            ..Default::default()
        };
        let props = create_properties(
            "nginx:1.27",
            &["nginx".into(), "-g".into()],
            &common,
            &create,
        )
        .unwrap();
        let find = |name: &str| props.iter().find(|p| p.name() == name).cloned();
        assert_eq!(find("Image"), Some(Property::Image("nginx:1.27".into())));
        assert_eq!(find("Replicas"), Some(Property::Replicas(3)));
        assert_eq!(
            find("Command"),
            Some(Property::Command(vec!["nginx".into(), "-g".into()]))
        );
        assert_eq!(
            find("Entrypoint"),
            Some(Property::Entrypoint(vec!["/bin/sh".into(), "-c".into()]))
        );
        assert_eq!(
            find("RestartDelayUSec"),
            Some(Property::RestartDelayUSec(250_000))
        );
        assert_eq!(
            find("StopGracePeriodUSec"),
            Some(Property::StopGracePeriodUSec(90_000_000))
        );
        assert_eq!(find("MemoryMax"), Some(Property::MemoryMax(256 << 20)));
        assert_eq!(
            find("StopSignal"),
            Some(Property::StopSignal("SIGQUIT".into()))
        );
        let Some(Property::Ports(ports)) = find("Ports") else {
            panic!("no ports")
        };
        assert_eq!(ports[0].display(), "*:8080->80/tcp");
        assert_eq!(ports[1].mode, "host");
        assert_eq!(ports[1].protocol, "udp");
        let Some(Property::Env(env)) = find("Env") else {
            panic!("no env")
        };
        assert_eq!(env["B"], "x=y");
        let Some(Property::Mounts(m)) = find("Mounts") else {
            panic!("no mounts")
        };
        assert_eq!(m[0].kind, "bind");
        assert!(m[0].read_only);
        // And the daemon side accepts the list.
        let spec = shoal_dbus::props::new_spec("web", &props).unwrap();
        assert_eq!(spec.task.resources.nano_cpus, Some(500_000_000));
    }

    #[test]
    fn sandbox_flags_become_properties_the_daemon_accepts() {
        let common = CommonFlags {
            cap_add: vec!["NET_ADMIN".into()],
            cap_drop: vec!["ALL".into()],
            security_opt: vec!["no-new-privileges".into()],
            init: Some(true),
            ulimit: vec!["nofile=1024:2048".into(), "core=-1".into()],
            sysctl: vec!["net.core.somaxconn=1024".into()],
            reserve_cpu: Some(0.5),
            reserve_memory: Some("128M".into()),
            ..Default::default()
        };
        let props = create_properties("busybox", &[], &common, &CreateFlags::default()).unwrap();
        let spec = shoal_dbus::props::new_spec("web", &props).unwrap();
        let t = &spec.task;
        assert_eq!(t.cap_add, vec!["CAP_NET_ADMIN"]);
        assert_eq!(t.cap_drop, vec!["ALL"]);
        assert!(t.no_new_privileges && t.init);
        assert_eq!(t.ulimits["nofile"].soft, 1024);
        assert_eq!(t.ulimits["core"].hard, u64::MAX);
        assert_eq!(t.sysctls["net.core.somaxconn"], "1024");
        assert_eq!(t.reservations.nano_cpus, Some(500_000_000));
        assert_eq!(t.reservations.memory_bytes, Some(128 << 20));

        let bad = CommonFlags {
            ulimit: vec!["nofile=9:1".into()],
            reserve_memory: Some("lots".into()),
            ..Default::default()
        };
        let errs = create_properties("busybox", &[], &bad, &CreateFlags::default()).unwrap_err();
        assert!(
            errs[0].starts_with("--ulimit: ulimit nofile: the soft limit 9"),
            "{errs:?}"
        );
        assert!(errs[1].starts_with("--reserve-memory"), "{errs:?}");
    }

    #[test]
    fn bad_flags_are_all_reported() {
        let common = CommonFlags {
            restart_delay: Some("soon".into()),
            limit_memory: Some("lots".into()),
            ..Default::default()
        };
        let create = CreateFlags {
            publish: vec!["eighty".into()],
            ..Default::default()
        };
        let errs = create_properties("busybox", &[], &common, &create).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("--restart-delay"), "{errs:?}");
    }

    #[test]
    fn placement_flags_become_properties() {
        let common = CommonFlags {
            replicas: Some(4),
            replicas_max_per_node: Some(2),
            ..Default::default()
        };
        let create = CreateFlags {
            constraint: vec![
                "node.labels.zone==a".into(),
                "node.role != manager".into(),
                "node.labels.disk in (ssd,nvme)".into(),
            ],
            placement_pref: vec!["spread=node.labels.zone".into()],
            ..Default::default()
        };
        let props = create_properties("busybox", &[], &common, &create).unwrap();
        assert!(props.contains(&Property::Constraints(vec![
            "node.labels.zone == a".into(),
            "node.role != manager".into(),
            "node.labels.disk in (ssd, nvme)".into(),
        ])));
        assert!(props.contains(&Property::PlacementPreferences(vec![
            "spread=node.labels.zone".into()
        ])));
        assert!(props.contains(&Property::MaxReplicasPerNode(2)));
        // The daemon side reads the same placement back.
        let spec = shoal_dbus::props::new_spec("web", &props).unwrap();
        assert_eq!(spec.placement.constraints.len(), 3);
        assert_eq!(spec.placement.max_replicas_per_node, Some(2));
        // 0 is no limit, as docker's.
        let common = CommonFlags {
            replicas_max_per_node: Some(0),
            ..Default::default()
        };
        let props = create_properties("busybox", &[], &common, &CreateFlags::default()).unwrap();
        assert!(props.contains(&Property::MaxReplicasPerNode(0)));
    }

    #[test]
    fn bad_placement_and_replicas_are_all_reported_before_sending() {
        let common = CommonFlags {
            replicas: Some(30_000_000_000),
            replicas_max_per_node: Some(200_000),
            ..Default::default()
        };
        let create = CreateFlags {
            constraint: vec![
                "node.labels.zone".into(),
                "node.ip == 10.0.0.1".into(),
                "node.role == boss".into(),
                "node.labels.zone == a".into(),
            ],
            placement_pref: vec!["binpack=node.labels.zone".into()],
            ..Default::default()
        };
        let errs = create_properties("busybox", &[], &common, &create).unwrap_err();
        assert_eq!(errs.len(), 6, "{errs:#?}");
        assert_eq!(
            errs[0],
            "--replicas: 30000000000 replicas is more than the limit of 100000"
        );
        assert!(
            errs[1].starts_with("--replicas-max-per-node: "),
            "{errs:#?}"
        );
        assert!(
            errs[2].starts_with("--constraint: ") && errs[2].contains("no operator"),
            "{errs:#?}"
        );
        assert!(errs[3].contains("unknown key \"node.ip\""), "{errs:#?}");
        assert!(errs[4].contains("manager or worker"), "{errs:#?}");
        assert!(
            errs[5].starts_with("--placement-pref: ") && errs[5].contains("only spread"),
            "{errs:#?}"
        );
        // The same checks on update.
        let errs = update_properties(&common, &UpdateFlags::default(), None).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:#?}");
    }

    #[test]
    fn update_constraint_and_preference_add_and_rm() {
        let mut spec = shoal_dbus::props::default_spec("web");
        spec.task.image = "busybox".into();
        spec.placement = spec::placement::parse_placement(
            &["node.labels.zone == a".into(), "node.role==worker".into()],
            &["spread=node.labels.zone".into()],
            0,
        )
        .unwrap();
        let cur = ServiceInspect {
            info: Default::default(),
            spec,
            properties: vec![],
            task_health: Default::default(),
        };
        let u = UpdateFlags {
            // Removal matches the parsed constraint, whatever the spacing.
            constraint_rm: vec!["node.role == worker".into()],
            constraint_add: vec!["node.labels.disk==ssd".into(), "node.labels.zone==a".into()],
            placement_pref_add: vec!["spread=node.labels.rack".into()],
            ..Default::default()
        };
        assert!(update_needs_current(&u));
        let props = update_properties(&CommonFlags::default(), &u, Some(&cur)).unwrap();
        assert_eq!(
            props,
            vec![
                Property::Constraints(vec![
                    "node.labels.zone == a".into(),
                    "node.labels.disk == ssd".into(),
                ]),
                Property::PlacementPreferences(vec![
                    "spread=node.labels.zone".into(),
                    "spread=node.labels.rack".into(),
                ]),
            ]
        );
        let u = UpdateFlags {
            placement_pref_rm: vec!["spread=node.labels.zone".into()],
            constraint_add: vec!["node.labels.zone in a".into()],
            constraint_rm: vec!["zone".into()],
            ..Default::default()
        };
        let errs = update_properties(&CommonFlags::default(), &u, Some(&cur)).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].starts_with("--constraint-rm: "), "{errs:#?}");
        assert!(
            errs[1].starts_with("--constraint-add: ") && errs[1].contains("parentheses"),
            "{errs:#?}"
        );
        let u = UpdateFlags {
            placement_pref_rm: vec!["spread=node.labels.zone".into()],
            ..Default::default()
        };
        let props = update_properties(&CommonFlags::default(), &u, Some(&cur)).unwrap();
        assert_eq!(props, vec![Property::PlacementPreferences(vec![])]);
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(duration_usec("x", "1.5s").unwrap(), 1_500_000);
        assert_eq!(parse_timeout("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_timeout("forever").is_err());
        assert_eq!(memory_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(memory_bytes("0").unwrap(), 0);
    }

    #[test]
    fn secret_and_config_flags_become_properties_and_merge_on_update() {
        let create = CreateFlags {
            secret: vec![
                "db".into(),
                "source=db,target=pw,uid=70,gid=70,mode=0400".into(),
            ],
            config: vec!["source=app,target=/etc/app.conf".into()],
            ..Default::default()
        };
        let props = create_properties("busybox", &[], &CommonFlags::default(), &create).unwrap();
        assert!(props.contains(&Property::Secrets(vec![
            "db".into(),
            "source=db,target=pw,uid=70,gid=70,mode=0400".into()
        ])));
        assert!(props.contains(&Property::Configs(vec![
            "source=app,target=/etc/app.conf,uid=0,gid=0,mode=0444".into()
        ])));
        let bad = CreateFlags {
            secret: vec!["source=db,target=../x".into()],
            config: vec!["source=app,target=relative".into()],
            ..Default::default()
        };
        let errs = create_properties("busybox", &[], &CommonFlags::default(), &bad).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].starts_with("--secret: "), "{errs:#?}");
        assert!(errs[1].starts_with("--config: "), "{errs:#?}");

        let spec = shoal_dbus::props::new_spec("web", &props).unwrap();
        let cur = ServiceInspect {
            info: Default::default(),
            spec,
            properties: vec![],
            task_health: Default::default(),
        };
        let u = UpdateFlags {
            secret_rm: vec!["db".into()],
            secret_add: vec!["api".into(), "source=token,target=pw".into()],
            config_rm: vec!["app".into()],
            ..Default::default()
        };
        assert!(update_needs_current(&u));
        let props = update_properties(&CommonFlags::default(), &u, Some(&cur)).unwrap();
        assert_eq!(
            props,
            vec![
                Property::Secrets(vec![
                    "api".into(),
                    "source=token,target=pw,uid=0,gid=0,mode=0444".into()
                ]),
                Property::Configs(vec![]),
            ]
        );
    }

    #[test]
    fn update_env_add_and_rm_merge_with_current() {
        let mut spec = shoal_dbus::props::default_spec("web");
        spec.task.image = "busybox".into();
        spec.task.env.insert("KEEP".into(), "1".into());
        spec.task.env.insert("DROP".into(), "1".into());
        let cur = ServiceInspect {
            info: Default::default(),
            spec,
            properties: vec![],
            task_health: Default::default(),
        };
        let u = UpdateFlags {
            env_add: vec!["NEW=2".into()],
            env_rm: vec!["DROP".into()],
            force: true,
            image: Some("busybox:2".into()),
            ..Default::default()
        };
        let props = update_properties(&CommonFlags::default(), &u, Some(&cur)).unwrap();
        assert_eq!(props[0], Property::Image("busybox:2".into()));
        let env = props
            .iter()
            .find_map(|p| match p {
                Property::Env(e) => Some(e.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(env.keys().collect::<Vec<_>>(), vec!["KEEP", "NEW"]);
        assert!(props.contains(&Property::ForceUpdate(true)));
    }
}
