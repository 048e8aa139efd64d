//! Stack files: `/etc/shoal/stacks/NAME.toml`, Compose's service model written in TOML.
//!
//! One stack per file; the stack name is the file stem and its services are named
//! `STACK_SERVICE`. The only top-level table is `[services.NAME]`, with these keys (Compose's
//! `deploy` keys sit directly in the service):
//!
//! | key | value | default |
//! |---|---|---|
//! | `image` | registry reference, `oci-archive:/abs/path` or `docker-archive:/abs/path` | required |
//! | `mode` | `"replicated"`, `"global"`, `"replicated-job"` (tasks run to completion) or `"global-job"` (once on every node) | replicated |
//! | `replicas` | integer from 0 to `model::MAX_REPLICAS` (not with the global modes); for a replicated job, the completions to make | 1 |
//! | `max_concurrent` | replicated jobs only: tasks running at once, at least 1 | `replicas` |
//! | `command`, `entrypoint` | array of strings, or a string split like a shell | the image's |
//! | `env` | table of strings (numbers and booleans become text) or `["K=V", ...]` | |
//! | `working_dir`, `user`, `hostname` | absolute path; `NAME`/`UID[:GID]`; DNS name | the image's |
//! | `labels` | service labels (table or `["K=V"]`) | |
//! | `container_labels` | labels on the task containers | |
//! | `ports` | `"8080:80"`, `"8080:80/udp"`, `"8000-8001:80-81"`, or `{ published, target, protocol = "tcp"/"udp", mode = "ingress"/"host" }` | |
//! | `volumes` (or `mounts`) | `"/host:/ctr[:ro]"` (bind), `"name:/ctr[:ro]"` (volume), or `{ type = "bind"/"volume"/"tmpfs", source, target, read_only, tmpfs = { size } }` | |
//! | `stop_signal` | signal name, `SIG` optional | `SIGTERM` |
//! | `stop_grace_period` | duration (`"10s"`, `"1m30s"`, `"100ms"`) | 10s |
//! | `read_only` | bool | false |
//! | `resources` | `{ cpus = 0.5, memory = "256M" or bytes (≥ 4M), pids = n (≥ 1), reservations = { cpus, memory } }` (reservations are counted by the scheduler) | no limits, no reservations |
//! | `cap_add`, `cap_drop` | capability names, `NET_ADMIN` or `CAP_NET_ADMIN`, or `ALL` | Docker's default set |
//! | `security_opt` | `"no-new-privileges[:true\|false]"`, `"seccomp=unconfined"` | Docker's seccomp profile, privileges can be gained |
//! | `init` | bool: tini as PID 1 (the node needs `/usr/bin/tini-static`) | false |
//! | `ulimits` | `{ nofile = { soft = 1024, hard = 2048 }, nproc = 512 }` (`-1`: unlimited) | containerd's |
//! | `sysctls` | table or `["K=V"]`; only `net.*`, `fs.mqueue.*`, IPC `kernel.*` | |
//! | `tmpfs` | `["/run", "/tmp:size=64m,ro"]` (tmpfs mounts, like `volumes` entries of type tmpfs) | |
//! | `restart` | `{ condition = any/on-failure/none, delay, max_delay, max_attempts, window }` | any, 100ms doubling to 30s, unlimited, 10s |
//! | `update`, `rollback` | `{ parallelism, delay, order = stop-first/start-first, failure_action = pause/continue/rollback, monitor, max_failure_ratio }` | 1, 0s, stop-first, pause, 5s, 0 |
//! | `healthcheck` | `{ test = ["CMD", "wget", "-qO-", "http://127.0.0.1/"] (or ["CMD-SHELL", "..."], a string run by the shell, ["NONE"]), interval, timeout, retries, start_period, start_interval, disable = true }` | the image's HEALTHCHECK; else interval 30s, timeout 30s, retries 3, start_period 0s, start_interval 5s |
//! | `depends_on` | `["db"]` (each `service_started`) or `{ db = { condition = "service_healthy" } }` (`service_started`, `service_healthy`, `service_completed_successfully`): services of this stack; no cycles | none |
//! | `extra_hosts` | `["db.local:10.0.0.5"]` (or `NAME=ADDRESS`, IPv6 too) or `{ "db.local" = "10.0.0.5" }`: lines of the task's `/etc/hosts` (at most 1000) | |
//! | `dns`, `dns_search`, `dns_opt` | a string or a list: resolvers for names outside the cluster (at most 3), search domains (at most 6), resolver options like `ndots:2` (at most 16) | the node's resolvers, no search domain, `ndots:0` on overlay networks |
//! | `networks` | `["front", "back"]`: networks declared in `[networks]` | `["default"]` |
//! | `endpoint_mode` | `"vip"` (one virtual IP) or `"dnsrr"` (the name resolves to the tasks) | `"vip"` |
//! | `placement` | `{ constraints = ["node.labels.zone in (a, b)", "node.role != manager"], preferences = [{ spread = "node.labels.zone" }], max_replicas_per_node = N }` (see [`crate::placement`]) | anywhere, no spread, no limit |
//!
//! Choices made where Compose and Swarm differ or are silent: `max_attempts = 0` means no limit
//! (as in Swarm); a `restart.delay` above the default `max_delay` raises `max_delay` to match;
//! `rollback.failure_action = "rollback"` is refused; a published port may appear only once per
//! protocol in a file; a port without a published number is published on a free port of
//! 30000-32767 the cluster picks; anonymous volumes and host-address bindings are refused; a `healthcheck` field left out comes
//! from the image's HEALTHCHECK, else Swarm's default. `secrets`, `configs`, `depends_on`'s `restart` and
//! `required`, and the top-level `secrets`, `configs` and `volumes` tables are refused as not
//! supported yet, never ignored.
//!
//! Networks: `[networks.NAME]` declares an overlay network of the stack, `STACK_NAME` in the
//! cluster (`driver = "overlay"`, `subnet`, `attachable`, `labels`, checked by the same
//! validator as `shoal network create`), or with `external = true` one made with `shoal network
//! create`, used under its own name. A service's `networks = ["NAME", ...]` must name declared
//! networks; a service that names none is on `STACK_default`, declared implicitly (as Swarm does).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use model::{
    FailureAction, Millis, Mount, MountKind, Placement, PortSpec, Protocol, PublishMode,
    RestartCondition, RestartPolicy, ServiceMode, ServiceSpec, StackSpec, TaskSpec, Ulimit,
    UpdateConfig, UpdateOrder,
};
use sha2::{Digest, Sha256};
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, Errors, Sink};
use crate::walk::{self, Keys, Value};
use crate::{placement, sandbox, units};

/// The signal sent to stop a task when `stop_signal` is not set.
pub const DEFAULT_STOP_SIGNAL: &str = "SIGTERM";
/// How long a task may take to stop before it is killed, when `stop_grace_period` is not set.
pub const DEFAULT_STOP_GRACE_PERIOD: Millis = 10_000;

/// A stack file read from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedStack {
    /// The stack name: the file stem.
    pub name: String,
    pub path: PathBuf,
    /// Lowercase hex sha256 of the file's bytes (`model::StackSource::File::hash`).
    pub hash: String,
    pub spec: StackSpec,
}

const STACK_KEYS: Keys<'static> = Keys {
    known: &["services", "networks"],
    unsupported: &[
        ("secrets", ""),
        ("configs", ""),
        (
            "volumes",
            "named volumes are created when first used; remove the top-level [volumes] table",
        ),
    ],
    hints: &[("version", "stack files have no version; remove it")],
};

const SERVICE_KEYS: Keys<'static> = Keys {
    known: &[
        "image",
        "mode",
        "replicas",
        "command",
        "entrypoint",
        "env",
        "working_dir",
        "user",
        "hostname",
        "labels",
        "container_labels",
        "ports",
        "volumes",
        "mounts",
        "stop_signal",
        "stop_grace_period",
        "read_only",
        "resources",
        "restart",
        "update",
        "rollback",
        "placement",
        "networks",
        "endpoint_mode",
        "cap_add",
        "cap_drop",
        "security_opt",
        "init",
        "ulimits",
        "sysctls",
        "tmpfs",
        "healthcheck",
        "depends_on",
        "max_concurrent",
        "extra_hosts",
        "dns",
        "dns_search",
        "dns_opt",
    ],
    unsupported: &[("secrets", ""), ("configs", "")],
    hints: &[
        ("environment", "did you mean \"env\"?"),
        ("environments", "did you mean \"env\"?"),
        ("workdir", "did you mean \"working_dir\"?"),
        ("restart_policy", "did you mean \"restart\"?"),
        ("update_config", "did you mean \"update\"?"),
        ("rollback_config", "did you mean \"rollback\"?"),
        (
            "deploy",
            "stack files have no deploy section: write mode, replicas, labels, resources, restart, update and rollback directly in the service",
        ),
        (
            "build",
            "shoal does not build images; build the image elsewhere and set \"image\"",
        ),
        (
            "container_name",
            "task containers are named by shoal; remove it",
        ),
        ("capabilities", "did you mean \"cap_add\" or \"cap_drop\"?"),
        ("ulimit", "did you mean \"ulimits\"?"),
        ("sysctl", "did you mean \"sysctls\"?"),
        ("security_opts", "did you mean \"security_opt\"?"),
    ],
};

const DEPENDS_ON_KEYS: Keys<'static> = Keys {
    known: &["condition"],
    unsupported: &[("restart", ""), ("required", "")],
    hints: &[],
};

const PORT_KEYS: Keys<'static> = Keys {
    known: &["published", "target", "protocol", "mode", "host_ip"],
    unsupported: &[("name", ""), ("app_protocol", "")],
    hints: &[],
};

const MOUNT_KEYS: Keys<'static> = Keys {
    known: &["type", "source", "target", "read_only", "tmpfs"],
    unsupported: &[("bind", ""), ("volume", ""), ("consistency", "")],
    hints: &[
        ("readonly", "did you mean \"read_only\"?"),
        ("destination", "did you mean \"target\"?"),
        ("dst", "did you mean \"target\"?"),
        ("src", "did you mean \"source\"?"),
    ],
};

const TMPFS_KEYS: Keys<'static> = Keys {
    known: &["size"],
    unsupported: &[("mode", "")],
    hints: &[],
};

const RESOURCES_KEYS: Keys<'static> = Keys {
    known: &["cpus", "memory", "pids", "reservations"],
    unsupported: &[],
    hints: &[(
        "limits",
        "write cpus, memory and pids directly in resources, e.g. resources = { cpus = 0.5, memory = \"256M\" }",
    )],
};

const RESERVATIONS_KEYS: Keys<'static> = Keys {
    known: &["cpus", "memory"],
    unsupported: &[("generic_resources", ""), ("devices", "")],
    hints: &[],
};

const ULIMIT_KEYS: Keys<'static> = Keys {
    known: &["soft", "hard"],
    unsupported: &[],
    hints: &[],
};

const PLACEMENT_KEYS: Keys<'static> = Keys {
    known: &["constraints", "preferences", "max_replicas_per_node"],
    unsupported: &[],
    hints: &[("max_replicas", "did you mean \"max_replicas_per_node\"?")],
};

const PREFERENCE_KEYS: Keys<'static> = Keys {
    known: &["spread"],
    unsupported: &[],
    hints: &[],
};

const NETWORK_KEYS: Keys<'static> = Keys {
    known: &["driver", "subnet", "attachable", "labels", "external"],
    unsupported: &[("driver_opts", ""), ("internal", ""), ("enable_ipv6", "")],
    hints: &[(
        "ipam",
        "write the subnet directly: subnet = \"10.10.0.0/16\"",
    )],
};

const RESTART_KEYS: Keys<'static> = Keys {
    known: &["condition", "delay", "max_delay", "max_attempts", "window"],
    unsupported: &[],
    hints: &[],
};

const HEALTHCHECK_KEYS: Keys<'static> = Keys {
    known: &[
        "test",
        "interval",
        "timeout",
        "retries",
        "start_period",
        "start_interval",
        "disable",
    ],
    unsupported: &[],
    hints: &[("start-period", "did you mean \"start_period\"?")],
};

const UPDATE_KEYS: Keys<'static> = Keys {
    known: &[
        "parallelism",
        "delay",
        "order",
        "failure_action",
        "monitor",
        "max_failure_ratio",
    ],
    unsupported: &[],
    hints: &[],
};

/// Derives the stack name from a file name: the stem of `NAME.toml`.
pub fn stack_name_from_path(path: &Path) -> Result<String, String> {
    let stem = path.file_stem().and_then(|s| s.to_str()).ok_or_else(|| {
        format!(
            "cannot take a stack name from the file name of {}",
            path.display()
        )
    })?;
    units::validate_name("stack", stem)
        .map_err(|e| format!("{e} (the stack name is the file name without .toml)"))?;
    Ok(stem.to_string())
}

/// Parses and validates a stack file; the stack is named after the file stem.
pub fn parse_stack(path: &Path, text: &str) -> Result<StackSpec, Errors> {
    match stack_name_from_path(path) {
        Ok(name) => parse(path, &name, text, None),
        Err(e) => {
            // Check the contents anyway, so that every problem is reported at once.
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            parse(path, &stem, text, Some(e))
        }
    }
}

/// Parses and validates stack file text under an explicit stack name (`shoal stack deploy -c
/// FILE NAME`). `path` is only used in diagnostics.
pub fn parse_stack_named(path: &Path, name: &str, text: &str) -> Result<StackSpec, Errors> {
    let name_error = units::validate_name("stack", name).err();
    parse(path, name, text, name_error)
}

fn parse(
    path: &Path,
    name: &str,
    text: &str,
    name_error: Option<String>,
) -> Result<StackSpec, Errors> {
    let mut sink = Sink::new(path, text);
    if let Some(e) = name_error {
        sink.whole_file(e);
    }
    if text.len() > model::limits::MAX_STACK_FILE_BYTES {
        sink.whole_file(format!(
            "stack file of {} bytes is above the limit of {} bytes",
            text.len(),
            model::limits::MAX_STACK_FILE_BYTES
        ));
        return Err(Errors(sink.finish()));
    }
    let spec =
        walk::parse_document(&mut sink, text).map(|doc| stack_from_doc(&mut sink, name, &doc));
    match spec {
        Some(spec) if !sink.has_errors() => Ok(spec),
        _ => Err(Errors(sink.finish())),
    }
}

/// Reads, hashes and validates one stack file.
pub fn load_stack_file(path: &Path) -> Result<LoadedStack, Errors> {
    let bytes = std::fs::read(path).map_err(|e| {
        Errors(vec![Diagnostic::whole_file(
            path,
            format!("failed to read stack file: {e}"),
        )])
    })?;
    let hash = hex::encode(Sha256::digest(&bytes));
    let text = String::from_utf8(bytes).map_err(|e| {
        Errors(vec![Diagnostic::whole_file(
            path,
            format!(
                "stack file is not valid UTF-8 (byte {})",
                e.utf8_error().valid_up_to()
            ),
        )])
    })?;
    let spec = parse_stack(path, &text)?;
    Ok(LoadedStack {
        name: spec.name.clone(),
        path: path.to_path_buf(),
        hash,
        spec,
    })
}

/// Loads every `*.toml` file of `dir`, sorted by file name, and reports the problems of all
/// files at once. Hidden files (names starting with `.`, such as editor lock files) are skipped;
/// a Compose file (`*.yml`, `*.yaml`) is an error that says how to convert it.
/// A missing directory is an error, never "no stacks" (which would remove every stack deployed
/// from files): the caller decides whether it may count as empty.
pub fn load_stacks_dir(dir: &Path) -> Result<Vec<LoadedStack>, Errors> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Errors(vec![Diagnostic::whole_file(
                dir,
                "the stacks directory does not exist; create it (an empty directory removes every stack deployed from files) or fix paths.stacks_dir in the cluster file",
            )]));
        }
        Err(e) => {
            return Err(Errors(vec![Diagnostic::whole_file(
                dir,
                format!("failed to read stacks directory: {e}"),
            )]));
        }
    };
    let mut errors = Vec::new();
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let path = entry.path();
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                let ext = path.extension().and_then(|e| e.to_str());
                if !hidden && ext == Some("toml") && !path.is_dir() {
                    paths.push(path);
                } else if !hidden && matches!(ext, Some("yml" | "yaml")) && !path.is_dir() {
                    // A Compose file here would otherwise be skipped without a word.
                    errors.push(Diagnostic::whole_file(
                        &path,
                        "Compose files are not read from the stacks directory; convert it with `shoal stack convert FILE --name NAME -o NAME.toml`, or deploy it with `shoal stack deploy -c FILE NAME`",
                    ));
                }
            }
            Err(e) => errors.push(Diagnostic::whole_file(
                dir,
                format!("failed to read stacks directory: {e}"),
            )),
        }
    }
    paths.sort();
    let mut stacks = Vec::new();
    for path in paths {
        match load_stack_file(&path) {
            Ok(stack) => stacks.push(stack),
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(stacks)
    } else {
        Err(Errors(errors))
    }
}

/// Where a published port was first declared, to report duplicates.
struct PortUse {
    path: String,
    line: usize,
}

fn stack_from_doc(sink: &mut Sink<'_>, name: &str, doc: &DeTable<'_>) -> StackSpec {
    walk::check_keys(sink, doc, "the stack file", &STACK_KEYS);
    let mut spec = StackSpec {
        name: name.to_string(),
        ..StackSpec::default()
    };
    let Some(services_value) = doc.get("services") else {
        sink.error(
            0..0,
            "stack has no services; add a [services.NAME] table with at least an image",
        );
        return spec;
    };
    let Some(services) = walk::table(sink, services_value, "services") else {
        return spec;
    };
    if services.is_empty() {
        sink.error(
            services_value.span(),
            "stack has no services; add a [services.NAME] table with at least an image",
        );
    }
    if services.len() > model::limits::MAX_SERVICES_PER_STACK {
        sink.error(
            services_value.span(),
            format!(
                "{} services is above the limit of {} per stack; split the stack",
                services.len(),
                model::limits::MAX_SERVICES_PER_STACK
            ),
        );
        return spec;
    }
    if let Some(v) = doc.get("networks")
        && let Some(t) = walk::table(sink, v, "networks")
    {
        for (key, value) in walk::entries(t) {
            let short: &str = key.get_ref();
            if let Some(net) = network_from_value(sink, name, short, key.span(), value) {
                spec.networks.insert(short.to_string(), net);
            }
        }
    }
    let mut ports: BTreeMap<(u16, &'static str), PortUse> = BTreeMap::new();
    let mut graph: Dependencies = BTreeMap::new();
    for (key, value) in walk::entries(services) {
        let short: &str = key.get_ref();
        let path = format!("services.{short}");
        let full = format!("{name}_{short}");
        if let Err(e) = units::validate_name("service", short) {
            sink.error(key.span(), e);
        } else if full.len() > units::MAX_SERVICE_NAME_LEN {
            sink.error(
                key.span(),
                format!(
                    "full service name \"{full}\" is longer than {} characters; shorten the stack or service name",
                    units::MAX_SERVICE_NAME_LEN
                ),
            );
        }
        let Some(table) = walk::table(sink, value, &path) else {
            continue;
        };
        let mut service = service_from_table(sink, &path, value.span(), table, &mut ports);
        service.networks = service_networks(sink, name, &path, table, &mut spec.networks);
        if let Some(v) = table.get("depends_on") {
            let deps = depends_on(sink, &format!("{path}.depends_on"), v);
            service.depends_on = deps
                .iter()
                .map(|(dep, condition, _)| (format!("{name}_{dep}"), *condition))
                .collect();
            graph.insert(short.to_string(), deps);
        }
        spec.services.push(ServiceSpec {
            name: full,
            stack: Some(name.to_string()),
            ..service
        });
    }
    let names: std::collections::BTreeSet<&str> =
        services.iter().map(|(k, _)| k.get_ref().as_ref()).collect();
    check_dependencies(sink, &graph, &names);
    spec
}

/// Each service's dependencies: (service, condition, where it is named), by short name.
type Dependencies = BTreeMap<String, Vec<(String, model::DependCondition, Range<usize>)>>;

/// `depends_on = ["db"]` (each `service_started`) or `depends_on = { db = { condition =
/// "service_healthy" } }`, as Compose writes them.
fn depends_on(
    sink: &mut Sink<'_>,
    path: &str,
    v: &Value<'_>,
) -> Vec<(String, model::DependCondition, Range<usize>)> {
    let mut out: Vec<(String, model::DependCondition, Range<usize>)> = Vec::new();
    match v.get_ref() {
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(dep) = walk::string(sink, item, &format!("{path}[{i}]")) {
                    out.push((
                        dep.to_string(),
                        model::DependCondition::ServiceStarted,
                        item.span(),
                    ));
                }
            }
        }
        DeValue::Table(t) => {
            for (key, value) in walk::entries(t) {
                let dep: &str = key.get_ref();
                let dpath = format!("{path}.{dep}");
                let Some(c) = walk::table(sink, value, &dpath) else {
                    continue;
                };
                walk::check_keys(sink, c, &format!("[{dpath}]"), &DEPENDS_ON_KEYS);
                let mut condition = model::DependCondition::ServiceStarted;
                if let Some(cv) = c.get("condition") {
                    let names = model::DependCondition::ALL.map(|c| c.as_str());
                    if let Some(name) = walk::choice(sink, cv, &format!("{dpath}.condition"), &names)
                    {
                        condition = model::DependCondition::parse(name).unwrap_or(condition);
                    }
                }
                out.push((dep.to_string(), condition, key.span()));
            }
        }
        _ => sink.error(
            v.span(),
            format!(
                "{path}: expected a list of service names or a table of {{ condition = ... }}, e.g. depends_on = [\"db\"]"
            ),
        ),
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|(dep, _, span)| {
        let first = seen.insert(dep.clone());
        if !first {
            sink.error(span.clone(), format!("{path}: \"{dep}\" is named twice"));
        }
        first
    });
    out
}

/// Every dependency names a service of the stack, and none is part of a cycle (each cycle is
/// reported once, at the entry that closes it).
fn check_dependencies(
    sink: &mut Sink<'_>,
    graph: &Dependencies,
    names: &std::collections::BTreeSet<&str>,
) {
    for (svc, deps) in graph {
        for (dep, _, span) in deps {
            if dep == svc {
                sink.error(
                    span.clone(),
                    format!("services.{svc}.depends_on: a service cannot depend on itself"),
                );
            } else if !names.contains(dep.as_str()) {
                sink.error(
                    span.clone(),
                    format!(
                        "services.{svc}.depends_on: service \"{dep}\" is not defined in this stack"
                    ),
                );
            }
        }
    }
    // Depth-first search over the edges; 1 = on the path, 2 = done.
    fn visit<'g>(
        n: &'g str,
        graph: &'g Dependencies,
        state: &mut BTreeMap<&'g str, u8>,
        path: &mut Vec<&'g str>,
        cycles: &mut Vec<(Range<usize>, String)>,
    ) {
        state.insert(n, 1);
        path.push(n);
        for (dep, _, span) in graph.get(n).map(Vec::as_slice).unwrap_or(&[]) {
            match state.get(dep.as_str()) {
                Some(1) if dep != n => {
                    let start = path.iter().position(|s| s == dep).unwrap_or(0);
                    let mut cycle: Vec<&str> = path[start..].to_vec();
                    cycle.push(dep);
                    cycles.push((
                        span.clone(),
                        format!(
                            "services.{n}.depends_on: dependency cycle {}",
                            cycle.join(" -> ")
                        ),
                    ));
                }
                Some(_) => {}
                None => visit(dep, graph, state, path, cycles),
            }
        }
        path.pop();
        state.insert(n, 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for n in graph.keys() {
        if !state.contains_key(n.as_str()) {
            visit(n, graph, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    for (span, msg) in cycles {
        sink.error(span, msg);
    }
}

/// The network every service of a stack is on when it names none (`STACK_default`).
pub const DEFAULT_NETWORK: &str = "default";

/// One `[networks.NAME]` table, checked by the same validator as `shoal network create`.
fn network_from_value(
    sink: &mut Sink<'_>,
    stack: &str,
    short: &str,
    key_span: Range<usize>,
    value: &Value<'_>,
) -> Option<model::NetworkSpec> {
    let path = format!("networks.{short}");
    let t = walk::table(sink, value, &path)?;
    walk::check_keys(sink, t, &format!("[{path}]"), &NETWORK_KEYS);
    let p = |k: &str| format!("{path}.{k}");
    let mut net = model::NetworkSpec::default();
    let mut options = BTreeMap::new();
    if let Some(v) = t.get("external") {
        net.external = walk::boolean(sink, v, &p("external")).unwrap_or(false);
    }
    if let Some(v) = t.get("driver")
        && let Some(d) = walk::string(sink, v, &p("driver"))
    {
        net.driver = d.to_string();
        options.insert("Driver".to_string(), d.to_string());
    }
    if let Some(v) = t.get("subnet")
        && let Some(sub) = walk::string(sink, v, &p("subnet"))
    {
        net.subnet = Some(sub.to_string());
        options.insert("Subnet".to_string(), sub.to_string());
    }
    if let Some(v) = t.get("attachable")
        && let Some(b) = walk::boolean(sink, v, &p("attachable"))
    {
        net.attachable = b;
        options.insert("Attachable".to_string(), b.to_string());
    }
    if let Some(v) = t.get("labels")
        && let Some(labels) = walk::string_map(sink, v, &p("labels"), "label")
    {
        for (k, v) in &labels {
            options.insert(format!("Label.{k}"), v.clone());
        }
        net.labels = labels;
    }
    if net.external {
        // The network exists already, under its own name; nothing else may be set.
        for k in ["driver", "subnet", "attachable", "labels"] {
            if let Some(span) = walk::key_span(t, k) {
                sink.error(
                    span,
                    format!(
                        "{}: not allowed with external = true (the network exists already)",
                        p(k)
                    ),
                );
            }
        }
        if let Err(e) = units::validate_name("network", short) {
            sink.error(key_span, e);
        }
    } else if let Err(e) = crate::network::network_request(&format!("{stack}_{short}"), &options) {
        for line in e.lines() {
            sink.error(key_span.clone(), format!("[{path}]: {line}"));
        }
    }
    Some(net)
}

/// The cluster names of the networks a service is on: its `networks` (declared in the stack's
/// `[networks]`, or `default`), each `STACK_NAME` unless external; `STACK_default` when it names
/// none (declared implicitly, as Swarm does).
fn service_networks(
    sink: &mut Sink<'_>,
    stack: &str,
    path: &str,
    t: &DeTable<'_>,
    declared: &mut BTreeMap<String, model::NetworkSpec>,
) -> Vec<String> {
    let names = match t.get("networks") {
        None => vec![DEFAULT_NETWORK.to_string()],
        Some(v) => walk::string_list(sink, v, &format!("{path}.networks")).unwrap_or_default(),
    };
    let mut out = Vec::new();
    for n in names {
        if n == DEFAULT_NETWORK && !declared.contains_key(DEFAULT_NETWORK) {
            declared.insert(DEFAULT_NETWORK.to_string(), model::NetworkSpec::default());
        }
        let Some(net) = declared.get(&n) else {
            let span = walk::key_span(t, "networks").unwrap_or(0..0);
            sink.error(
                span,
                format!(
                    "{path}.networks: network \"{n}\" is not declared; add a [networks.{n}] table (or external = true for a network made with `shoal network create`)"
                ),
            );
            continue;
        };
        let full = if net.external {
            n.clone()
        } else {
            format!("{stack}_{n}")
        };
        if !out.contains(&full) {
            out.push(full);
        }
    }
    out
}

fn service_from_table(
    sink: &mut Sink<'_>,
    path: &str,
    span: Range<usize>,
    t: &DeTable<'_>,
    ports: &mut BTreeMap<(u16, &'static str), PortUse>,
) -> ServiceSpec {
    let place = format!("[{path}]");
    walk::check_keys(sink, t, &place, &SERVICE_KEYS);
    let p = |key: &str| format!("{path}.{key}");
    let mut svc = ServiceSpec {
        task: TaskSpec {
            stop_signal: DEFAULT_STOP_SIGNAL.to_string(),
            stop_grace_period: DEFAULT_STOP_GRACE_PERIOD,
            ..TaskSpec::default()
        },
        ..ServiceSpec::default()
    };

    match t.get("image") {
        None => sink.error(
            span.clone(),
            format!("missing key \"image\" in {place}; every service needs an image"),
        ),
        Some(v) => {
            if let Some(image) = walk::string(sink, v, &p("image")) {
                match units::validate_image(image) {
                    Ok(()) => svc.task.image = image.to_string(),
                    Err(e) => sink.error(v.span(), format!("{}: {e}", p("image"))),
                }
            }
        }
    }

    let mode = match t.get("mode") {
        None => "replicated",
        Some(v) => walk::choice(
            sink,
            v,
            &p("mode"),
            &["replicated", "global", "replicated-job", "global-job"],
        )
        .unwrap_or("replicated"),
    };
    let global = mode == "global" || mode == "global-job";
    if global {
        svc.mode = if mode == "global" {
            ServiceMode::Global
        } else {
            ServiceMode::GlobalJob
        };
        if let Some(span) = walk::key_span(t, "replicas") {
            sink.error(
                span,
                format!(
                    "{}: not allowed with mode = \"{mode}\" ({})",
                    p("replicas"),
                    if mode == "global" {
                        "a global service runs one task on every eligible node"
                    } else {
                        "a global job runs once on every eligible node"
                    }
                ),
            );
        }
    } else {
        let mut replicas = 1;
        if let Some(v) = t.get("replicas")
            && let Some(n) = walk::uint(sink, v, &p("replicas"))
        {
            match placement::check_replicas(n) {
                Ok(n) => replicas = n,
                Err(e) => sink.error(v.span(), format!("{}: {e}", p("replicas"))),
            }
        }
        svc.mode = if mode == "replicated" {
            ServiceMode::Replicated { replicas }
        } else {
            // Swarm's default: as many at once as there are completions to make.
            let mut max_concurrent = replicas;
            if let Some(v) = t.get("max_concurrent")
                && let Some(n) = walk::uint(sink, v, &p("max_concurrent"))
            {
                match placement::check_replicas(n) {
                    Ok(0) => sink.error(
                        v.span(),
                        format!("{}: must be at least 1", p("max_concurrent")),
                    ),
                    Ok(n) => max_concurrent = n,
                    Err(e) => sink.error(v.span(), format!("{}: {e}", p("max_concurrent"))),
                }
            }
            ServiceMode::ReplicatedJob {
                replicas,
                max_concurrent,
            }
        };
    }
    if mode != "replicated-job"
        && let Some(span) = walk::key_span(t, "max_concurrent")
    {
        sink.error(
            span,
            format!(
                "{}: only for mode = \"replicated-job\"",
                p("max_concurrent")
            ),
        );
    }

    if let Some(v) = t.get("command") {
        svc.task.command = walk::command(sink, v, &p("command"));
    }
    if let Some(v) = t.get("entrypoint") {
        svc.task.entrypoint = walk::command(sink, v, &p("entrypoint"));
    }
    if let Some(v) = t.get("env")
        && let Some(env) = walk::string_map(sink, v, &p("env"), "variable")
    {
        svc.task.env = env;
    }
    if let Some(v) = t.get("working_dir")
        && let Some(dir) = walk::string(sink, v, &p("working_dir"))
    {
        if dir.starts_with('/') {
            svc.task.workdir = Some(dir.to_string());
        } else {
            sink.error(
                v.span(),
                format!("{}: \"{dir}\" must be an absolute path", p("working_dir")),
            );
        }
    }
    if let Some(v) = t.get("user") {
        svc.task.user = user(sink, v, &p("user"));
    }
    if let Some(v) = t.get("hostname")
        && let Some(h) = walk::string(sink, v, &p("hostname"))
    {
        match crate::resolver::check_hostname(h) {
            Ok(()) => svc.task.hostname = Some(h.to_string()),
            Err(e) => sink.error(v.span(), format!("{}: {e}", p("hostname"))),
        }
    }
    resolver_settings(sink, path, t, &mut svc.task);
    if let Some(v) = t.get("labels")
        && let Some(labels) = walk::string_map(sink, v, &p("labels"), "label")
    {
        svc.labels = labels;
    }
    if let Some(v) = t.get("container_labels")
        && let Some(labels) = walk::string_map(sink, v, &p("container_labels"), "label")
    {
        svc.task.labels = labels;
    }
    if let Some(v) = t.get("ports") {
        svc.ports = port_list(sink, v, &p("ports"), ports);
    }
    match (t.get("volumes"), t.get("mounts")) {
        (Some(_), Some(_)) => {
            let (first, second) = order_keys(t, "volumes", "mounts");
            sink.error(
                walk::key_span(t, second).unwrap_or(span.clone()),
                format!(
                    "{}: use either \"volumes\" or \"mounts\", not both (they mean the same); move these into \"{first}\"",
                    p(second)
                ),
            );
        }
        (Some(v), None) => svc.task.mounts = mount_list(sink, v, &p("volumes")),
        (None, Some(v)) => svc.task.mounts = mount_list(sink, v, &p("mounts")),
        (None, None) => {}
    }
    if let Some(v) = t.get("stop_signal")
        && let Some(s) = walk::string(sink, v, &p("stop_signal"))
    {
        match units::normalize_signal(s) {
            Ok(sig) => svc.task.stop_signal = sig,
            Err(e) => sink.error(v.span(), format!("{}: {e}", p("stop_signal"))),
        }
    }
    if let Some(v) = t.get("stop_grace_period")
        && let Some(ms) = walk::duration(sink, v, &p("stop_grace_period"))
    {
        svc.task.stop_grace_period = ms;
    }
    if let Some(v) = t.get("read_only")
        && let Some(b) = walk::boolean(sink, v, &p("read_only"))
    {
        svc.task.read_only = b;
    }
    if let Some(v) = t.get("endpoint_mode")
        && let Some(s) = walk::string(sink, v, &p("endpoint_mode"))
    {
        match model::EndpointMode::parse(s) {
            Ok(m) => svc.endpoint_mode = m,
            Err(e) => sink.error(v.span(), format!("{}: {e}", p("endpoint_mode"))),
        }
    }
    if let Some(v) = t.get("resources")
        && let Some(rt) = walk::table(sink, v, &p("resources"))
    {
        resources(sink, &p("resources"), rt, &mut svc.task.resources);
        if let Some(rv) = rt.get("reservations")
            && let Some(rr) = walk::table(sink, rv, &p("resources.reservations"))
        {
            svc.task.reservations = reservations(sink, &p("resources.reservations"), rr);
            if let Err(e) = sandbox::check_reservations(&svc.task) {
                sink.error(rv.span(), format!("{}: {e}", p("resources.reservations")));
            }
        }
    }
    sandbox_keys(sink, path, t, &mut svc.task);
    if let Some(v) = t.get("restart")
        && let Some(rt) = walk::table(sink, v, &p("restart"))
    {
        svc.restart = restart_policy(sink, &p("restart"), rt);
    }
    if let Some(v) = t.get("update")
        && let Some(ut) = walk::table(sink, v, &p("update"))
    {
        svc.update = update_config(sink, &p("update"), ut, false);
    }
    if let Some(v) = t.get("rollback")
        && let Some(ut) = walk::table(sink, v, &p("rollback"))
    {
        svc.rollback = update_config(sink, &p("rollback"), ut, true);
    }
    if let Some(v) = t.get("placement")
        && let Some(pt) = walk::table(sink, v, &p("placement"))
    {
        svc.placement = placement_table(sink, &p("placement"), pt);
    }
    if let Some(v) = t.get("healthcheck")
        && let Some(ht) = walk::table(sink, v, &p("healthcheck"))
    {
        svc.task.healthcheck = healthcheck(sink, &p("healthcheck"), ht);
    }
    // Every count, size and duration within its bound (one checker, shared with D-Bus).
    for v in model::limits::violations(&svc) {
        let at = field_span(t, &v.field).unwrap_or(span.clone());
        sink.error(at, format!("{path}.{v}"));
    }
    svc
}

/// Where the key `field` (`restart.delay`) of a service table is, or its nearest parent.
fn field_span(t: &DeTable<'_>, field: &str) -> Option<Range<usize>> {
    let (head, rest) = match field.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (field, None),
    };
    let head = if head == "volumes" && !t.contains_key("volumes") {
        ["mounts", "tmpfs"]
            .into_iter()
            .find(|k| t.contains_key(*k))
            .unwrap_or(head)
    } else {
        head
    };
    let here = walk::key_span(t, head);
    match (rest, t.get(head).map(|v| v.get_ref())) {
        (Some(rest), Some(DeValue::Table(inner))) => field_span(inner, rest).or(here),
        _ => here,
    }
}

/// `[services.X.placement]`: `constraints = [...]`, `preferences = [{ spread = "..." }]`,
/// `max_replicas_per_node = N`, each checked by the shared validator in [`placement`].
fn placement_table(sink: &mut Sink<'_>, path: &str, t: &DeTable<'_>) -> Placement {
    walk::check_keys(sink, t, &format!("[{path}]"), &PLACEMENT_KEYS);
    let mut out = Placement::default();
    if let Some(v) = t.get("constraints")
        && let Some(items) = walk::array(sink, v, &format!("{path}.constraints"))
    {
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}.constraints[{i}]");
            if let Some(s) = walk::string(sink, item, &ipath) {
                match placement::parse_constraint(s) {
                    Ok(c) => out.constraints.push(c),
                    Err(e) => sink.error(item.span(), format!("{ipath}: {e}")),
                }
            }
        }
    }
    if let Some(v) = t.get("preferences")
        && let Some(items) = walk::array(sink, v, &format!("{path}.preferences"))
    {
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}.preferences[{i}]");
            let Some(pt) = walk::table(sink, item, &ipath) else {
                continue;
            };
            walk::check_keys(sink, pt, &format!("[{ipath}]"), &PREFERENCE_KEYS);
            match pt.get("spread") {
                None => sink.error(
                    item.span(),
                    format!(
                        "{ipath}: missing key \"spread\", e.g. {{ spread = \"node.labels.zone\" }}"
                    ),
                ),
                Some(sv) => {
                    if let Some(s) = walk::string(sink, sv, &format!("{ipath}.spread")) {
                        match placement::parse_preference(s) {
                            Ok(pref) => out.preferences.push(pref),
                            Err(e) => sink.error(sv.span(), format!("{ipath}.spread: {e}")),
                        }
                    }
                }
            }
        }
    }
    if let Some(v) = t.get("max_replicas_per_node") {
        let key = format!("{path}.max_replicas_per_node");
        if let Some(n) = walk::uint(sink, v, &key) {
            match placement::parse_max_replicas_per_node(n) {
                Ok(m) => out.max_replicas_per_node = m,
                Err(e) => sink.error(v.span(), format!("{key}: {e}")),
            }
        }
    }
    out
}

/// The two keys in source order.
fn order_keys<'k>(t: &DeTable<'_>, a: &'k str, b: &'k str) -> (&'k str, &'k str) {
    let sa = walk::key_span(t, a).map(|s| s.start).unwrap_or(0);
    let sb = walk::key_span(t, b).map(|s| s.start).unwrap_or(0);
    if sa <= sb { (a, b) } else { (b, a) }
}

fn user(sink: &mut Sink<'_>, v: &Value<'_>, path: &str) -> Option<String> {
    match v.get_ref() {
        DeValue::Integer(_) => walk::uint(sink, v, path).map(|n| n.to_string()),
        _ => {
            let s = walk::string(sink, v, path)?;
            if s.is_empty() || s.chars().any(char::is_whitespace) || s.matches(':').count() > 1 {
                sink.error(
                    v.span(),
                    format!("{path}: invalid user \"{s}\"; use NAME, UID, NAME:GROUP or UID:GID"),
                );
                return None;
            }
            Some(s.to_string())
        }
    }
}

/// A string, or a list of strings (Compose's `dns: 8.8.8.8` or `dns: [8.8.8.8, 1.1.1.1]`).
fn one_or_list(sink: &mut Sink<'_>, v: &Value<'_>, path: &str) -> Vec<(String, Range<usize>)> {
    match v.get_ref() {
        DeValue::String(s) => vec![(s.to_string(), v.span())],
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                walk::string(sink, item, &format!("{path}[{i}]"))
                    .map(|s| (s.to_string(), item.span()))
            })
            .collect(),
        _ => {
            sink.error(
                v.span(),
                format!("{path}: expected a string or a list of strings"),
            );
            Vec::new()
        }
    }
}

/// `extra_hosts` (`["db.local:10.0.0.5"]` or `{ "db.local" = "10.0.0.5" }`), `dns`,
/// `dns_search` and `dns_opt` (each a string or a list), through [`crate::resolver`].
fn resolver_settings(sink: &mut Sink<'_>, path: &str, t: &DeTable<'_>, task: &mut TaskSpec) {
    use crate::resolver;
    let p = |key: &str| format!("{path}.{key}");
    if let Some(v) = t.get("extra_hosts") {
        let entries: Vec<(String, Range<usize>)> = match v.get_ref() {
            DeValue::Table(table) => walk::entries(table)
                .into_iter()
                .filter_map(|(k, item)| {
                    let addr =
                        walk::string(sink, item, &format!("{}.{}", p("extra_hosts"), k.get_ref()))?;
                    Some((format!("{}={addr}", k.get_ref()), item.span()))
                })
                .collect(),
            _ => one_or_list(sink, v, &p("extra_hosts")),
        };
        for (s, span) in entries {
            match resolver::parse_extra_host(&s) {
                Ok(h) => task.extra_hosts.push(h),
                Err(e) => sink.error(span, format!("{}: {e}", p("extra_hosts"))),
            }
        }
    }
    if let Some(v) = t.get("dns") {
        for (s, span) in one_or_list(sink, v, &p("dns")) {
            match resolver::parse_dns_server(&s) {
                Ok(ip) => task.dns.push(ip),
                Err(e) => sink.error(span, format!("{}: {e}", p("dns"))),
            }
        }
    }
    if let Some(v) = t.get("dns_search") {
        for (s, span) in one_or_list(sink, v, &p("dns_search")) {
            match resolver::check_dns_search(&s) {
                Ok(()) => task.dns_search.push(s),
                Err(e) => sink.error(span, format!("{}: {e}", p("dns_search"))),
            }
        }
    }
    if let Some(v) = t.get("dns_opt") {
        for (s, span) in one_or_list(sink, v, &p("dns_opt")) {
            match resolver::check_dns_option(&s) {
                Ok(()) => task.dns_options.push(s),
                Err(e) => sink.error(span, format!("{}: {e}", p("dns_opt"))),
            }
        }
    }
    for e in resolver::check_counts(
        task.extra_hosts.len(),
        task.dns.len(),
        task.dns_search.len(),
        task.dns_options.len(),
    ) {
        let span = walk::key_span(t, e.0).unwrap_or(0..0);
        sink.error(span, format!("{}: {}", p(e.0), e.1));
    }
}

fn port_list(
    sink: &mut Sink<'_>,
    v: &Value<'_>,
    path: &str,
    seen: &mut BTreeMap<(u16, &'static str), PortUse>,
) -> Vec<PortSpec> {
    let Some(items) = walk::array(sink, v, path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let parsed = match item.get_ref() {
            DeValue::String(s) => match units::parse_port_short(s) {
                Ok(ports) => ports,
                Err(e) => {
                    sink.error(item.span(), format!("{ipath}: {e}"));
                    continue;
                }
            },
            DeValue::Integer(_) => match walk::integer(sink, item, &ipath).map(units::check_port) {
                // A target alone: published on a port the cluster picks.
                Some(Ok(target)) => vec![PortSpec {
                    published: 0,
                    target,
                    protocol: Protocol::Tcp,
                    mode: PublishMode::Ingress,
                    host_ip: None,
                }],
                Some(Err(e)) => {
                    sink.error(item.span(), format!("{ipath}: {e}"));
                    continue;
                }
                None => continue,
            },
            DeValue::Table(pt) => match port_long(sink, &ipath, item.span(), pt) {
                Some(port) => vec![port],
                None => continue,
            },
            _ => {
                sink.error(
                    item.span(),
                    format!(
                        "{ipath}: expected a string like \"8080:80\" or a table like {{ published = 8080, target = 80 }}, found {}",
                        item.get_ref().type_str()
                    ),
                );
                continue;
            }
        };
        for port in parsed {
            let key = (port.published, port.protocol.as_str());
            // Ports the cluster numbers never clash here.
            if port.published == 0 {
                out.push(port);
                continue;
            }
            if let Some(first) = seen.get(&key) {
                sink.error(
                    item.span(),
                    format!(
                        "{ipath}: published port {}/{} is already used by {} (line {})",
                        port.published,
                        port.protocol.as_str(),
                        first.path,
                        first.line
                    ),
                );
            } else {
                let (line, _) = sink.position(item.span().start);
                seen.insert(
                    key,
                    PortUse {
                        path: ipath.clone(),
                        line,
                    },
                );
            }
            out.push(port);
        }
    }
    out
}

fn port_long(
    sink: &mut Sink<'_>,
    path: &str,
    span: Range<usize>,
    t: &DeTable<'_>,
) -> Option<PortSpec> {
    walk::check_keys(sink, t, path, &PORT_KEYS);
    let mut ok = true;
    let port_number = |key: &str, sink: &mut Sink<'_>| -> Option<u16> {
        match t.get(key) {
            // No published port: the cluster picks one (published 0 here).
            None if key == "published" => Some(0),
            None => {
                sink.error(span.clone(), format!("{path}: missing key \"{key}\""));
                None
            }
            Some(v) => {
                let n = walk::integer(sink, v, &format!("{path}.{key}"))?;
                match units::check_port(n) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        sink.error(v.span(), format!("{path}.{key}: {e}"));
                        None
                    }
                }
            }
        }
    };
    let published = port_number("published", sink);
    let target = port_number("target", sink);
    let mut protocol = Protocol::Tcp;
    if let Some(v) = t.get("protocol")
        && let Some(s) = walk::string(sink, v, &format!("{path}.protocol"))
    {
        match units::parse_protocol(s) {
            Ok(p) => protocol = p,
            Err(e) => {
                sink.error(v.span(), format!("{path}.protocol: {e}"));
                ok = false;
            }
        }
    }
    let mut mode = PublishMode::Ingress;
    if let Some(v) = t.get("mode") {
        match walk::choice(sink, v, &format!("{path}.mode"), &["ingress", "host"]) {
            Some("host") => mode = PublishMode::Host,
            Some(_) => {}
            None => ok = false,
        }
    }
    let mut host_ip = None;
    if let Some(v) = t.get("host_ip")
        && let Some(s) = walk::string(sink, v, &format!("{path}.host_ip"))
    {
        match units::parse_host_ip(s) {
            Ok(ip) => host_ip = Some(ip),
            Err(e) => {
                sink.error(v.span(), format!("{path}.host_ip: {e}"));
                ok = false;
            }
        }
    }
    match (published, target, ok) {
        (Some(published), Some(target), true) => Some(PortSpec {
            published,
            target,
            protocol,
            mode,
            host_ip,
        }),
        _ => None,
    }
}

fn mount_list(sink: &mut Sink<'_>, v: &Value<'_>, path: &str) -> Vec<Mount> {
    let Some(items) = walk::array(sink, v, path) else {
        return Vec::new();
    };
    let mut out: Vec<Mount> = Vec::new();
    let mut targets: BTreeMap<String, String> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let mount = match item.get_ref() {
            DeValue::String(s) => match units::parse_mount_short(s) {
                Ok(m) => m,
                Err(e) => {
                    sink.error(item.span(), format!("{ipath}: {e}"));
                    continue;
                }
            },
            DeValue::Table(mt) => match mount_long(sink, &ipath, item.span(), mt) {
                Some(m) => m,
                None => continue,
            },
            _ => {
                sink.error(
                    item.span(),
                    format!(
                        "{ipath}: expected a string like \"/host:/container:ro\" or a table like {{ type = \"bind\", source = \"/host\", target = \"/container\" }}, found {}",
                        item.get_ref().type_str()
                    ),
                );
                continue;
            }
        };
        if let Some(first) = targets.get(&mount.target) {
            sink.error(
                item.span(),
                format!(
                    "{ipath}: target \"{}\" is already mounted by {first}",
                    mount.target
                ),
            );
            continue;
        }
        targets.insert(mount.target.clone(), ipath);
        out.push(mount);
    }
    out
}

fn mount_long(
    sink: &mut Sink<'_>,
    path: &str,
    span: Range<usize>,
    t: &DeTable<'_>,
) -> Option<Mount> {
    walk::check_keys(sink, t, path, &MOUNT_KEYS);
    let errors_before = sink_len(sink);
    let kind = match t.get("type") {
        None => {
            sink.error(
                span.clone(),
                format!("{path}: missing key \"type\" (bind, volume or tmpfs)"),
            );
            None
        }
        Some(v) => match walk::choice(
            sink,
            v,
            &format!("{path}.type"),
            &["bind", "volume", "tmpfs"],
        ) {
            Some("bind") => Some(MountKind::Bind),
            Some("volume") => Some(MountKind::Volume),
            Some("tmpfs") => Some(MountKind::Tmpfs),
            _ => None,
        },
    };
    let source = match t.get("source") {
        Some(v) => walk::string(sink, v, &format!("{path}.source")).map(str::to_string),
        None => Some(String::new()),
    };
    let target = match t.get("target") {
        Some(v) => walk::string(sink, v, &format!("{path}.target")).map(str::to_string),
        None => {
            sink.error(span.clone(), format!("{path}: missing key \"target\""));
            None
        }
    };
    let read_only = match t.get("read_only") {
        Some(v) => walk::boolean(sink, v, &format!("{path}.read_only")),
        None => Some(false),
    };
    let mut size = None;
    if let Some(v) = t.get("tmpfs")
        && let Some(tt) = walk::table(sink, v, &format!("{path}.tmpfs"))
    {
        walk::check_keys(sink, tt, &format!("{path}.tmpfs"), &TMPFS_KEYS);
        if let Some(sv) = tt.get("size") {
            size = memory(sink, sv, &format!("{path}.tmpfs.size"), false);
        }
    }
    let (kind, source, target, read_only) = (kind?, source?, target?, read_only?);
    if sink_len(sink) != errors_before {
        return None;
    }
    if kind != MountKind::Tmpfs && source.is_empty() {
        sink.error(span, format!("{path}: missing key \"source\""));
        return None;
    }
    if kind != MountKind::Tmpfs && t.contains_key("tmpfs") {
        sink.error(
            walk::key_span(t, "tmpfs").unwrap_or(span),
            format!("{path}.tmpfs: only valid with type = \"tmpfs\""),
        );
        return None;
    }
    let mount = Mount {
        kind,
        source,
        target,
        read_only,
        size,
    };
    if let Err(e) = units::validate_mount(&mount) {
        sink.error(span, format!("{path}: {e}"));
        return None;
    }
    Some(mount)
}

fn sink_len(sink: &Sink<'_>) -> usize {
    sink.count()
}

/// A memory size: a string like "256M" or an integer number of bytes.
fn memory(sink: &mut Sink<'_>, v: &Value<'_>, path: &str, enforce_min: bool) -> Option<u64> {
    let bytes = match v.get_ref() {
        DeValue::Integer(_) => walk::uint(sink, v, path)?,
        DeValue::String(s) => match units::parse_memory(s) {
            Ok(b) => b,
            Err(e) => {
                sink.error(v.span(), format!("{path}: {e}"));
                return None;
            }
        },
        other => {
            sink.error(
                v.span(),
                format!(
                    "{path}: expected a size like \"256M\" or a number of bytes, found {}",
                    other.type_str()
                ),
            );
            return None;
        }
    };
    if enforce_min && bytes < units::MIN_MEMORY_BYTES {
        sink.error(
            v.span(),
            format!("{path}: {bytes} bytes is below the minimum of 4M"),
        );
        return None;
    }
    if bytes == 0 {
        sink.error(v.span(), format!("{path}: must be greater than 0"));
        return None;
    }
    Some(bytes)
}

fn resources(sink: &mut Sink<'_>, path: &str, t: &DeTable<'_>, out: &mut model::Resources) {
    walk::check_keys(sink, t, &format!("[{path}]"), &RESOURCES_KEYS);
    if let Some(v) = t.get("cpus")
        && let Some(cpus) = cpus_value(sink, v, &format!("{path}.cpus"))
    {
        match units::cpus_to_nano(cpus) {
            Ok(n) => out.nano_cpus = Some(n),
            Err(e) => sink.error(v.span(), format!("{path}.cpus: {e}")),
        }
    }
    if let Some(v) = t.get("memory") {
        out.memory_bytes = memory(sink, v, &format!("{path}.memory"), true);
    }
    if let Some(v) = t.get("pids")
        && let Some(n) = walk::integer(sink, v, &format!("{path}.pids"))
    {
        if n >= 1 {
            out.pids = Some(n);
        } else {
            sink.error(
                v.span(),
                format!("{path}.pids: must be at least 1 (leave it out for no limit)"),
            );
        }
    }
}

/// `cap_add`, `cap_drop`, `security_opt`, `init`, `ulimits`, `sysctls` and `tmpfs`, each
/// checked by the shared validator in [`sandbox`].
fn sandbox_keys(sink: &mut Sink<'_>, path: &str, t: &DeTable<'_>, task: &mut TaskSpec) {
    let p = |key: &str| format!("{path}.{key}");
    for (key, out) in [
        ("cap_add", &mut task.cap_add),
        ("cap_drop", &mut task.cap_drop),
    ] {
        let Some(v) = t.get(key) else { continue };
        let Some(items) = walk::array(sink, v, &p(key)) else {
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{}[{i}]", p(key));
            if let Some(s) = walk::string(sink, item, &ipath) {
                match sandbox::parse_capability(s) {
                    Ok(c) if !out.contains(&c) => out.push(c),
                    Ok(_) => {}
                    Err(e) => sink.error(item.span(), format!("{ipath}: {e}")),
                }
            }
        }
    }
    if let Some(v) = t.get("security_opt")
        && let Some(items) = walk::array(sink, v, &p("security_opt"))
    {
        let mut list = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{}[{i}]", p("security_opt"));
            if let Some(s) = walk::string(sink, item, &ipath) {
                match sandbox::parse_security_opt(s) {
                    Ok(_) => list.push(s.to_string()),
                    Err(e) => sink.error(item.span(), format!("{ipath}: {e}")),
                }
            }
        }
        // Every entry parsed above, so this cannot fail.
        let _ = sandbox::apply_security_opts(&list, task);
    }
    if let Some(v) = t.get("init")
        && let Some(b) = walk::boolean(sink, v, &p("init"))
    {
        task.init = b;
    }
    if let Some(v) = t.get("ulimits")
        && let Some(ut) = walk::table(sink, v, &p("ulimits"))
    {
        for (k, item) in walk::entries(ut) {
            let name: &str = k.get_ref();
            let ipath = format!("{}.{name}", p("ulimits"));
            let limit = match item.get_ref() {
                DeValue::Integer(_) => walk::integer(sink, item, &ipath).and_then(|n| {
                    sandbox::limit_value(n)
                        .map_err(|e| sink.error(item.span(), format!("{ipath}: {e}")))
                        .ok()
                        .map(|n| Ulimit { soft: n, hard: n })
                }),
                DeValue::Table(lt) => {
                    walk::check_keys(sink, lt, &format!("[{ipath}]"), &ULIMIT_KEYS);
                    let one = |key: &str, sink: &mut Sink<'_>| -> Option<u64> {
                        let Some(lv) = lt.get(key) else {
                            sink.error(
                                item.span(),
                                format!("{ipath}: missing key \"{key}\", e.g. {{ soft = 1024, hard = 2048 }}"),
                            );
                            return None;
                        };
                        let n = walk::integer(sink, lv, &format!("{ipath}.{key}"))?;
                        sandbox::limit_value(n)
                            .map_err(|e| sink.error(lv.span(), format!("{ipath}.{key}: {e}")))
                            .ok()
                    };
                    let soft = one("soft", sink);
                    let hard = one("hard", sink);
                    soft.zip(hard).map(|(soft, hard)| Ulimit { soft, hard })
                }
                other => {
                    sink.error(
                        item.span(),
                        format!(
                            "{ipath}: expected a number or a table like {{ soft = 1024, hard = 2048 }}, found {}",
                            other.type_str()
                        ),
                    );
                    None
                }
            };
            if let Some(u) = limit {
                match sandbox::check_ulimit(name, u) {
                    Ok(()) => {
                        task.ulimits.insert(name.to_string(), u);
                    }
                    Err(e) => sink.error(item.span(), format!("{ipath}: {e}")),
                }
            }
        }
    }
    if let Some(v) = t.get("sysctls")
        && let Some(map) = walk::string_map(sink, v, &p("sysctls"), "sysctl")
    {
        for (key, value) in &map {
            if let Err(e) = sandbox::check_sysctl(key, value) {
                sink.error(v.span(), format!("{}: {e}", p("sysctls")));
            }
        }
        task.sysctls = map;
    }
    if let Some(v) = t.get("tmpfs")
        && let Some(items) = walk::array(sink, v, &p("tmpfs"))
    {
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{}[{i}]", p("tmpfs"));
            let Some(s) = walk::string(sink, item, &ipath) else {
                continue;
            };
            match units::parse_tmpfs_short(s) {
                Ok(m) if task.mounts.iter().any(|o| o.target == m.target) => sink.error(
                    item.span(),
                    format!("{ipath}: target \"{}\" is already mounted", m.target),
                ),
                Ok(m) => task.mounts.push(m),
                Err(e) => sink.error(item.span(), format!("{ipath}: {e}")),
            }
        }
    }
}

/// `resources.reservations = { cpus, memory }`.
fn reservations(sink: &mut Sink<'_>, path: &str, t: &DeTable<'_>) -> model::Reservations {
    walk::check_keys(sink, t, &format!("[{path}]"), &RESERVATIONS_KEYS);
    let mut out = model::Reservations::default();
    if let Some(v) = t.get("cpus")
        && let Some(cpus) = cpus_value(sink, v, &format!("{path}.cpus"))
    {
        match units::cpus_to_nano(cpus) {
            Ok(n) => out.nano_cpus = Some(n),
            Err(e) => sink.error(v.span(), format!("{path}.cpus: {e}")),
        }
    }
    if let Some(v) = t.get("memory") {
        out.memory_bytes = memory(sink, v, &format!("{path}.memory"), true);
    }
    out
}

fn cpus_value(sink: &mut Sink<'_>, v: &Value<'_>, path: &str) -> Option<f64> {
    match v.get_ref() {
        DeValue::String(s) => match s.trim().parse::<f64>() {
            Ok(x) => Some(x),
            Err(_) => {
                sink.error(
                    v.span(),
                    format!("{path}: \"{s}\" is not a number; write e.g. cpus = 0.5"),
                );
                None
            }
        },
        _ => walk::number(sink, v, path),
    }
}

fn restart_policy(sink: &mut Sink<'_>, path: &str, t: &DeTable<'_>) -> RestartPolicy {
    walk::check_keys(sink, t, &format!("[{path}]"), &RESTART_KEYS);
    let mut r = RestartPolicy::default();
    if let Some(v) = t.get("condition") {
        match walk::choice(
            sink,
            v,
            &format!("{path}.condition"),
            &["any", "on-failure", "none"],
        ) {
            Some("any") => r.condition = RestartCondition::Any,
            Some("on-failure") => r.condition = RestartCondition::OnFailure,
            Some("none") => r.condition = RestartCondition::None,
            _ => {}
        }
    }
    if let Some(v) = t.get("delay")
        && let Some(ms) = walk::duration(sink, v, &format!("{path}.delay"))
    {
        r.delay = ms;
    }
    if let Some(v) = t.get("max_delay")
        && let Some(ms) = walk::duration(sink, v, &format!("{path}.max_delay"))
    {
        if ms < r.delay {
            sink.error(
                v.span(),
                format!(
                    "{path}.max_delay: {} is shorter than delay {}",
                    units::format_duration(ms),
                    units::format_duration(r.delay)
                ),
            );
        } else {
            r.max_delay = ms;
        }
    } else if r.delay > r.max_delay && !t.contains_key("max_delay") {
        // A long first delay raises the cap rather than being cut by the default.
        r.max_delay = r.delay;
    }
    if let Some(v) = t.get("max_attempts")
        && let Some(n) = walk::uint(sink, v, &format!("{path}.max_attempts"))
    {
        // As in Swarm, 0 means no limit.
        r.max_attempts = (n > 0).then_some(n);
    }
    if let Some(v) = t.get("window")
        && let Some(ms) = walk::duration(sink, v, &format!("{path}.window"))
    {
        r.window = ms;
    }
    r
}

/// `[services.X.healthcheck]`: Compose's keys. `test` is an array (`["CMD", ...]`,
/// `["CMD-SHELL", "..."]`, `["NONE"]`) or a string run by the shell; `disable = true` is
/// `["NONE"]`. The form is checked by `model::health::check_test`, shared with flags and D-Bus.
fn healthcheck(sink: &mut Sink<'_>, path: &str, t: &DeTable<'_>) -> Option<model::Healthcheck> {
    walk::check_keys(sink, t, &format!("[{path}]"), &HEALTHCHECK_KEYS);
    let mut h = model::Healthcheck::default();
    if let Some(v) = t.get("test") {
        let tpath = format!("{path}.test");
        let test = match v.get_ref() {
            DeValue::String(s) => Some(vec!["CMD-SHELL".to_string(), s.to_string()]),
            _ => walk::string_list(sink, v, &tpath),
        };
        if let Some(test) = test {
            match model::health::check_test(&test) {
                Ok(()) => h.test = test,
                Err(e) => sink.error(v.span(), format!("{tpath}: {e}")),
            }
        }
    }
    for (key, field) in [
        ("interval", &mut h.interval),
        ("timeout", &mut h.timeout),
        ("start_period", &mut h.start_period),
        ("start_interval", &mut h.start_interval),
    ] {
        if let Some(v) = t.get(key)
            && let Some(ms) = walk::duration(sink, v, &format!("{path}.{key}"))
        {
            *field = ms;
        }
    }
    if let Some(v) = t.get("retries")
        && let Some(n) = walk::uint(sink, v, &format!("{path}.retries"))
    {
        h.retries = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(v) = t.get("disable")
        && walk::boolean(sink, v, &format!("{path}.disable")) == Some(true)
    {
        if !h.test.is_empty() && !h.is_disabled() {
            sink.error(
                v.span(),
                format!("{path}.disable: a healthcheck with a test cannot be disabled; remove one of them"),
            );
        }
        h.test = vec!["NONE".to_string()];
    }
    // Nothing set is the image's healthcheck: the same as leaving the table out.
    (h != model::Healthcheck::default()).then_some(h)
}

fn update_config(sink: &mut Sink<'_>, path: &str, t: &DeTable<'_>, rollback: bool) -> UpdateConfig {
    walk::check_keys(sink, t, &format!("[{path}]"), &UPDATE_KEYS);
    let mut u = UpdateConfig::default();
    if let Some(v) = t.get("parallelism")
        && let Some(n) = walk::uint(sink, v, &format!("{path}.parallelism"))
    {
        u.parallelism = n;
    }
    if let Some(v) = t.get("delay")
        && let Some(ms) = walk::duration(sink, v, &format!("{path}.delay"))
    {
        u.delay = ms;
    }
    if let Some(v) = t.get("order") {
        match walk::choice(
            sink,
            v,
            &format!("{path}.order"),
            &["stop-first", "start-first"],
        ) {
            Some("stop-first") => u.order = UpdateOrder::StopFirst,
            Some("start-first") => u.order = UpdateOrder::StartFirst,
            _ => {}
        }
    }
    if let Some(v) = t.get("failure_action") {
        let fpath = format!("{path}.failure_action");
        match walk::choice(sink, v, &fpath, &["pause", "continue", "rollback"]) {
            Some("pause") => u.failure_action = FailureAction::Pause,
            Some("continue") => u.failure_action = FailureAction::Continue,
            Some("rollback") if rollback => sink.error(
                v.span(),
                format!("{fpath}: a rollback cannot be rolled back; use \"pause\" or \"continue\""),
            ),
            Some("rollback") => u.failure_action = FailureAction::Rollback,
            _ => {}
        }
    }
    if let Some(v) = t.get("monitor")
        && let Some(ms) = walk::duration(sink, v, &format!("{path}.monitor"))
    {
        u.monitor = ms;
    }
    if let Some(v) = t.get("max_failure_ratio")
        && let Some(x) = walk::number(sink, v, &format!("{path}.max_failure_ratio"))
    {
        if (0.0..=1.0).contains(&x) {
            u.max_failure_ratio_permille = (x * 1000.0).round() as u32;
        } else {
            sink.error(
                v.span(),
                format!("{path}.max_failure_ratio: {x} is not between 0 and 1"),
            );
        }
    }
    u
}
