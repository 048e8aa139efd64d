//! Compose's service model mapped onto shoal's stack document.
//!
//! The result is a tree shaped like a stack file (`services.NAME.image`, `.env`, `.restart`,
//! ...), each node with the place in the Compose file it came from; the stack validator then
//! checks it like any stack file. This module only decides where each Compose key goes, and
//! refuses, warns about or reports what has no place:
//!
//! - keys the service model lacks are refused as "not supported yet", like the stack file's;
//! - keys `docker stack deploy` ignores (`build`, `restart`, ...) are collected as warnings;
//! - keys `docker stack deploy` refuses (`extends`, `mem_limit`, ...) are errors;
//! - `x-` extension keys are skipped, as Compose does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use super::interp::{Variables, parse_dotenv};
use super::yaml::{Entry, Kind, Node, Pos};
use crate::units;

/// A node of the stack document.
#[derive(Debug, Clone)]
pub(crate) struct Out {
    pub kind: OutKind,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub(crate) enum OutKind {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Out>),
    Table(Vec<OutEntry>),
}

#[derive(Debug, Clone)]
pub(crate) struct OutEntry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Out,
}

impl Out {
    fn table(pos: Pos) -> Out {
        Out {
            kind: OutKind::Table(Vec::new()),
            pos,
        }
    }

    fn push(&mut self, key: &str, key_pos: Pos, value: Out) {
        if let OutKind::Table(entries) = &mut self.kind {
            entries.push(OutEntry {
                key: key.to_string(),
                key_pos,
                value,
            });
        }
    }
}

const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "volumes",
    "tmpfs",
    "deploy",
    "labels",
    "stop_grace_period",
    "stop_signal",
    "user",
    "working_dir",
    "hostname",
    "read_only",
];

/// Service keys of Compose that shoal's service model has no place for yet: (key, advice).
const SERVICE_NOT_YET: &[(&str, &str)] = &[
    ("healthcheck", ""),
    ("secrets", ""),
    ("configs", ""),
    (
        "depends_on",
        "services of a stack start together (docker stack deploy ignores it too)",
    ),
    (
        "networks",
        "services use the node's default network for now",
    ),
    ("init", ""),
    ("cap_add", ""),
    ("cap_drop", ""),
    ("ulimits", ""),
    ("sysctls", ""),
    ("extra_hosts", ""),
    ("dns", ""),
    ("dns_search", ""),
    ("dns_opt", ""),
    (
        "logging",
        "task output goes to the journal and `shoal service logs`",
    ),
    ("tty", ""),
    ("stdin_open", ""),
    ("group_add", ""),
    ("isolation", ""),
    ("credential_spec", ""),
    ("oom_score_adj", ""),
    ("storage_opt", ""),
    ("runtime", ""),
    ("platform", ""),
    (
        "pull_policy",
        "images are resolved once when the stack is deployed",
    ),
];

/// Service keys `docker stack deploy` ignores with "Ignoring unsupported options" (or as
/// deprecated): shoal warns about each, and `--strict` refuses them.
const SERVICE_IGNORED: &[&str] = &[
    "build",
    "cgroup_parent",
    "cgroupns_mode",
    "container_name",
    "devices",
    "domainname",
    "expose",
    "external_links",
    "ipc",
    "links",
    "mac_address",
    "network_mode",
    "pid",
    "privileged",
    "restart",
    "security_opt",
    "shm_size",
    "userns_mode",
];

/// Service keys `docker stack deploy` refuses outright: (key, advice).
const SERVICE_FORBIDDEN: &[(&str, &str)] = &[
    ("extends", "merge several files with -c instead"),
    ("volume_driver", ""),
    ("volumes_from", ""),
    ("cpu_quota", "use deploy.resources.limits.cpus"),
    ("cpu_shares", "use deploy.resources.limits.cpus"),
    ("cpus", "use deploy.resources.limits.cpus"),
    ("cpuset", ""),
    ("mem_limit", "use deploy.resources.limits.memory"),
    ("memswap_limit", ""),
    ("mem_reservation", ""),
    ("pids_limit", "use deploy.resources.limits.pids"),
];

const DEPLOY_KEYS: &[&str] = &[
    "mode",
    "replicas",
    "placement",
    "resources",
    "restart_policy",
    "update_config",
    "rollback_config",
    "labels",
    "endpoint_mode",
];

const TOP_KEYS: &[&str] = &[
    "version", "name", "services", "volumes", "networks", "secrets", "configs",
];

/// Keys of the stack document whose values are numbers, so that a string of digits (what an
/// interpolation or a quoted YAML scalar gives) is read as a number, as Compose casts it.
const NUMERIC: &[&str] = &[
    "replicas",
    "max_replicas_per_node",
    "parallelism",
    "max_attempts",
    "published",
    "target",
    "max_failure_ratio",
    "pids",
    "cpus",
];

/// Reads a file named in a Compose file (`env_file`).
pub(crate) type ReadFile<'a> = &'a dyn Fn(&Path) -> std::io::Result<String>;

pub(crate) struct Mapper<'a> {
    pub vars: &'a Variables,
    /// Relative paths (`env_file`, bind sources) are taken from here: the first file's folder.
    pub base_dir: &'a Path,
    pub read: ReadFile<'a>,
    pub errors: Vec<(Pos, String)>,
    /// Keys `docker stack deploy` ignores: (place of the key, message).
    pub ignored: Vec<(Pos, String)>,
    /// Other things worth a word that do not stop the conversion.
    pub warnings: Vec<(Pos, String)>,
    /// (stack document path, Compose path) prefixes, to name Compose keys in the validator's
    /// messages.
    pub renames: Vec<(String, String)>,
    declared_volumes: BTreeSet<String>,
}

impl<'a> Mapper<'a> {
    pub fn new(vars: &'a Variables, base_dir: &'a Path, read: ReadFile<'a>) -> Self {
        Mapper {
            vars,
            base_dir,
            read,
            errors: Vec::new(),
            ignored: Vec::new(),
            warnings: Vec::new(),
            renames: Vec::new(),
            declared_volumes: BTreeSet::new(),
        }
    }

    fn error(&mut self, pos: &Pos, msg: impl Into<String>) {
        self.errors.push((pos.clone(), msg.into()));
    }

    fn not_yet(&mut self, e: &Entry, place: &str, advice: &str) {
        let mut msg = format!("\"{}\" in {place} is not supported yet", e.key);
        if !advice.is_empty() {
            msg.push_str("; ");
            msg.push_str(advice);
        }
        self.error(&e.key_pos, msg);
    }

    fn unknown(&mut self, e: &Entry, place: &str, known: &[&str]) {
        let mut msg = format!("unknown key \"{}\" in {place}", e.key);
        if let Some(s) = units::suggest(&e.key, known) {
            msg.push_str(&format!("; did you mean \"{s}\"?"));
        }
        self.error(&e.key_pos, msg);
    }

    fn expect_map<'n>(&mut self, n: &'n Node, path: &str) -> Option<&'n [Entry]> {
        match n.map() {
            Some(m) => Some(m),
            None => {
                self.error(
                    &n.pos,
                    format!("{path}: expected a mapping, found {}", n.type_name()),
                );
                None
            }
        }
    }

    /// The whole document: `services` and the top-level sections.
    pub fn document(&mut self, doc: &Node) -> Out {
        let mut out = Out::table(doc.pos.clone());
        let Some(top) = self.expect_map(doc, "the Compose file") else {
            return out;
        };
        for e in top {
            match e.key.as_str() {
                k if k.starts_with("x-") => {}
                "version" => {} // obsolete; accepted and ignored, as Compose does
                "name" => self.ignored.push((
                    e.key_pos.clone(),
                    "\"name\" is ignored: the stack is named on the command line".to_string(),
                )),
                "services" | "volumes" => {}
                "networks" => self.not_yet(
                    e,
                    "the Compose file",
                    "services use the node's default network for now",
                ),
                "secrets" | "configs" => self.not_yet(e, "the Compose file", ""),
                _ => self.unknown(e, "the Compose file", TOP_KEYS),
            }
        }
        if let Some(v) = doc.get("volumes") {
            self.top_volumes(v);
        }
        let Some(services_entry) = doc.entry("services") else {
            self.error(
                &doc.pos,
                "the Compose file has no services; add a \"services:\" mapping",
            );
            return out;
        };
        let mut services = Out::table(services_entry.value.pos.clone());
        if let Some(list) = self.expect_map(&services_entry.value, "services") {
            if list.is_empty() {
                self.error(&services_entry.key_pos, "the Compose file has no services");
            }
            self.depends_on_graph(list);
            for s in list {
                if s.key.starts_with("x-") {
                    continue;
                }
                if let Some(svc) = self.service(s) {
                    services.push(&s.key, s.key_pos.clone(), svc);
                }
            }
        }
        out.push("services", services_entry.key_pos.clone(), services);
        out
    }

    fn top_volumes(&mut self, v: &Node) {
        if v.is_null() {
            return;
        }
        let Some(vols) = self.expect_map(v, "volumes") else {
            return;
        };
        for vol in vols {
            self.declared_volumes.insert(vol.key.clone());
            if vol.value.is_null() {
                continue;
            }
            let place = format!("volumes.{}", vol.key);
            let Some(keys) = self.expect_map(&vol.value, &place) else {
                continue;
            };
            for k in keys {
                match k.key.as_str() {
                    x if x.starts_with("x-") => {}
                    "driver" if k.value.scalar() == Some("local") => {}
                    "driver" => self.error(
                        &k.value.pos,
                        format!("{place}.driver: only the \"local\" driver is supported yet"),
                    ),
                    "external" | "name" | "driver_opts" | "labels" => self.not_yet(
                        k,
                        &place,
                        "named volumes are created on each node when first used",
                    ),
                    _ => self.unknown(
                        k,
                        &place,
                        &["driver", "driver_opts", "external", "labels", "name"],
                    ),
                }
            }
        }
    }

    /// `depends_on` is refused as not supported yet, but its names and cycles are checked too,
    /// so that every problem of the key is reported at once.
    fn depends_on_graph(&mut self, services: &[Entry]) {
        let names: BTreeSet<&str> = services.iter().map(|s| s.key.as_str()).collect();
        let mut graph: BTreeMap<&str, Vec<(&str, &Pos)>> = BTreeMap::new();
        for s in services {
            let Some(deps) = s.value.get("depends_on") else {
                continue;
            };
            let mut list = Vec::new();
            match &deps.kind {
                Kind::Seq(items) => {
                    for i in items {
                        if let Some(n) = i.scalar() {
                            list.push((n, &i.pos));
                        }
                    }
                }
                Kind::Map(entries) => {
                    for e in entries {
                        list.push((e.key.as_str(), &e.key_pos));
                    }
                }
                _ => {}
            }
            for (dep, pos) in &list {
                if !names.contains(dep) {
                    let p = (*pos).clone();
                    self.error(
                        &p,
                        format!(
                            "services.{}.depends_on: service \"{dep}\" is not defined",
                            s.key
                        ),
                    );
                }
            }
            graph.insert(&s.key, list);
        }
        // Depth-first search; each cycle is reported once, at the edge that closes it.
        let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 = on the stack, 2 = done
        let mut cycles = Vec::new();
        fn visit<'g>(
            n: &'g str,
            graph: &BTreeMap<&'g str, Vec<(&'g str, &'g Pos)>>,
            state: &mut BTreeMap<&'g str, u8>,
            stack: &mut Vec<&'g str>,
            cycles: &mut Vec<(Pos, String)>,
        ) {
            state.insert(n, 1);
            stack.push(n);
            for (dep, pos) in graph.get(n).map(Vec::as_slice).unwrap_or(&[]) {
                match state.get(dep) {
                    Some(1) => {
                        let start = stack.iter().position(|s| s == dep).unwrap_or(0);
                        let mut path: Vec<&str> = stack[start..].to_vec();
                        path.push(dep);
                        cycles.push((
                            (*pos).clone(),
                            format!(
                                "services.{n}.depends_on: dependency cycle {}",
                                path.join(" -> ")
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        if graph.contains_key(dep) {
                            visit(dep, graph, state, stack, cycles);
                        }
                    }
                }
            }
            stack.pop();
            state.insert(n, 2);
        }
        let keys: Vec<&str> = graph.keys().copied().collect();
        for n in keys {
            if !state.contains_key(n) {
                visit(n, &graph, &mut state, &mut Vec::new(), &mut cycles);
            }
        }
        self.errors.extend(cycles);
    }

    fn rename(&mut self, toml: String, compose: String) {
        if toml != compose {
            self.renames.push((toml, compose));
        }
    }

    fn service(&mut self, s: &Entry) -> Option<Out> {
        let name = &s.key;
        let path = format!("services.{name}");
        let place = path.clone();
        let map = self.expect_map(&s.value, &path)?;
        let mut out = Out::table(s.key_pos.clone());
        let mut env: Vec<OutEntry> = Vec::new();
        let mut env_pos: Option<Pos> = None;
        let mut volumes: Option<(Pos, Vec<Out>)> = None;
        let mut tmpfs: Vec<Out> = Vec::new();
        let mut deploy: Vec<(String, Pos, Out)> = Vec::new();
        for e in map {
            let key = e.key.as_str();
            let cpath = format!("{path}.{key}");
            if key.starts_with("x-") {
                continue;
            }
            if let Some((_, advice)) = SERVICE_NOT_YET.iter().find(|(k, _)| *k == key) {
                self.not_yet(e, &place, advice);
                continue;
            }
            if SERVICE_IGNORED.contains(&key) {
                self.ignored.push((
                    e.key_pos.clone(),
                    format!("\"{key}\" in {place} is ignored, as docker stack deploy ignores it"),
                ));
                continue;
            }
            if let Some((_, advice)) = SERVICE_FORBIDDEN.iter().find(|(k, _)| *k == key) {
                let mut msg = format!(
                    "\"{key}\" in {place} is not supported by docker stack deploy nor by shoal"
                );
                if !advice.is_empty() {
                    msg.push_str("; ");
                    msg.push_str(advice);
                }
                self.error(&e.key_pos, msg);
                continue;
            }
            match key {
                "image" | "command" | "entrypoint" | "stop_grace_period" | "stop_signal"
                | "user" | "working_dir" | "hostname" | "read_only" => {
                    if let Some(v) = self.value(&e.value, &cpath) {
                        out.push(key, e.key_pos.clone(), v);
                    }
                }
                "environment" => {
                    env_pos.get_or_insert(e.key_pos.clone());
                    self.environment(&e.value, &cpath, &mut env);
                }
                "env_file" => {
                    env_pos.get_or_insert(e.key_pos.clone());
                    self.env_file(&e.value, &cpath, &mut env);
                }
                "labels" => {
                    if let Some(v) = self.string_map(&e.value, &cpath) {
                        self.rename(format!("{path}.container_labels"), cpath.clone());
                        out.push("container_labels", e.key_pos.clone(), v);
                    }
                }
                "ports" => {
                    if let Some(v) = self.value(&e.value, &cpath) {
                        out.push("ports", e.key_pos.clone(), v);
                    }
                }
                "volumes" => {
                    if let Some(items) = e.value.seq() {
                        let mut list = Vec::new();
                        for (i, item) in items.iter().enumerate() {
                            if let Some(v) = self.volume(item, &format!("{cpath}[{i}]")) {
                                list.push(v);
                            }
                        }
                        volumes = Some((e.key_pos.clone(), list));
                    } else if let Some(v) = self.value(&e.value, &cpath) {
                        // Not a sequence: the validator names the type.
                        out.push("volumes", e.key_pos.clone(), v);
                    }
                }
                "tmpfs" => self.tmpfs(&e.value, &cpath, &mut tmpfs),
                "deploy" => self.deploy(&e.value, &cpath, &path, &mut deploy),
                _ => self.unknown(e, &place, SERVICE_KEYS),
            }
        }
        if !env.is_empty() || env_pos.is_some() {
            let pos = env_pos.unwrap_or_else(|| s.key_pos.clone());
            // env_file values come first; `environment` overrides them.
            let mut merged: Vec<OutEntry> = Vec::new();
            for e in env {
                match merged.iter_mut().find(|m| m.key == e.key) {
                    Some(m) => *m = e,
                    None => merged.push(e),
                }
            }
            self.rename(format!("{path}.env"), format!("{path}.environment"));
            out.push(
                "env",
                pos.clone(),
                Out {
                    kind: OutKind::Table(merged),
                    pos,
                },
            );
        }
        if volumes.is_some() || !tmpfs.is_empty() {
            let (pos, mut list) = volumes.unwrap_or_else(|| (tmpfs[0].pos.clone(), Vec::new()));
            list.extend(tmpfs);
            out.push(
                "volumes",
                pos.clone(),
                Out {
                    kind: OutKind::Array(list),
                    pos,
                },
            );
        }
        for (k, pos, v) in deploy {
            out.push(&k, pos, v);
        }
        fix_numbers(&mut out);
        Some(out)
    }

    /// A YAML value as it is, scalars typed as YAML reads them.
    fn value(&mut self, n: &Node, path: &str) -> Option<Out> {
        let kind = match &n.kind {
            _ if n.is_null() => {
                self.error(&n.pos, format!("{path}: has no value"));
                return None;
            }
            Kind::Scalar { text, plain } => {
                if !plain {
                    OutKind::Str(text.clone())
                } else if let Some(b) = n.boolean() {
                    OutKind::Bool(b)
                } else if let Some(i) = n.integer() {
                    OutKind::Int(i)
                } else if let Some(x) = n.number().filter(|_| text.contains(['.', 'e', 'E'])) {
                    OutKind::Float(x)
                } else {
                    OutKind::Str(text.clone())
                }
            }
            Kind::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    if let Some(v) = self.value(item, &format!("{path}[{i}]")) {
                        out.push(v);
                    }
                }
                OutKind::Array(out)
            }
            Kind::Map(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for e in entries {
                    if e.key.starts_with("x-") {
                        continue;
                    }
                    if let Some(v) = self.value(&e.value, &format!("{path}.{}", e.key)) {
                        out.push(OutEntry {
                            key: e.key.clone(),
                            key_pos: e.key_pos.clone(),
                            value: v,
                        });
                    }
                }
                OutKind::Table(out)
            }
        };
        Some(Out {
            kind,
            pos: n.pos.clone(),
        })
    }

    /// A mapping of strings (list forms were turned into mappings by the merge step). A key
    /// without a value is taken from the environment (and left out when it is not set there),
    /// as Compose does for `environment`.
    fn string_map(&mut self, n: &Node, path: &str) -> Option<Out> {
        let mut out = Vec::new();
        self.string_entries(n, path, &mut out, false)?;
        Some(Out {
            kind: OutKind::Table(out),
            pos: n.pos.clone(),
        })
    }

    fn string_entries(
        &mut self,
        n: &Node,
        path: &str,
        out: &mut Vec<OutEntry>,
        from_env: bool,
    ) -> Option<()> {
        if n.is_null() {
            return Some(());
        }
        let Some(entries) = n.map() else {
            if let Some(items) = n.seq() {
                // Left as a list by the merge step: an item is not a string, or a key repeats.
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    match item.scalar() {
                        None => self.error(
                            &item.pos,
                            format!(
                                "{path}[{i}]: expected a \"KEY=VALUE\" string, found {}",
                                item.type_name()
                            ),
                        ),
                        Some(s) => {
                            let key = s.split_once('=').map_or(s, |(k, _)| k);
                            if !seen.insert(key.to_string()) {
                                self.error(
                                    &item.pos,
                                    format!("{path}[{i}]: \"{key}\" is set twice"),
                                );
                            }
                        }
                    }
                }
                return None;
            }
            self.error(
                &n.pos,
                format!(
                    "{path}: expected a mapping or a list of \"KEY=VALUE\" strings, found {}",
                    n.type_name()
                ),
            );
            return None;
        };
        for e in entries {
            let text = match &e.value.kind {
                _ if e.value.is_null() => {
                    if !from_env {
                        String::new()
                    } else {
                        match self.vars.get(&e.key) {
                            Some(v) => v.to_string(),
                            None => {
                                self.warnings.push((
                                    e.key_pos.clone(),
                                    format!("{path}.{}: variable {} is not set in the environment; the task does not get it", e.key, e.key),
                                ));
                                continue;
                            }
                        }
                    }
                }
                Kind::Scalar { text, .. } => text.clone(),
                _ => {
                    self.error(
                        &e.value.pos,
                        format!(
                            "{path}.{}: expected a string, found {}",
                            e.key,
                            e.value.type_name()
                        ),
                    );
                    continue;
                }
            };
            out.push(OutEntry {
                key: e.key.clone(),
                key_pos: e.key_pos.clone(),
                value: Out {
                    kind: OutKind::Str(text),
                    pos: e.value.pos.clone(),
                },
            });
        }
        Some(())
    }

    fn environment(&mut self, n: &Node, path: &str, env: &mut Vec<OutEntry>) {
        let mut out = Vec::new();
        if self.string_entries(n, path, &mut out, true).is_some() {
            env.extend(out);
        }
    }

    fn env_file(&mut self, n: &Node, path: &str, env: &mut Vec<OutEntry>) {
        let items: Vec<&Node> = match &n.kind {
            Kind::Seq(items) => items.iter().collect(),
            Kind::Scalar { .. } | Kind::Map(_) => vec![n],
        };
        for item in items {
            let (file, required) = match &item.kind {
                Kind::Scalar { text, .. } => (text.clone(), true),
                Kind::Map(_) => {
                    let Some(p) = item.get("path").and_then(Node::scalar) else {
                        self.error(&item.pos, format!("{path}: missing key \"path\""));
                        continue;
                    };
                    let required = item.get("required").and_then(Node::boolean).unwrap_or(true);
                    (p.to_string(), required)
                }
                Kind::Seq(_) => {
                    self.error(
                        &item.pos,
                        format!("{path}: expected a file name, found a sequence"),
                    );
                    continue;
                }
            };
            let full = self.base_dir.join(&file);
            let text = match (self.read)(&full) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
                Err(e) => {
                    self.error(
                        &item.pos,
                        format!("{path}: failed to read {}: {e}", full.display()),
                    );
                    continue;
                }
            };
            match parse_dotenv(&text) {
                Ok(vars) => {
                    for (k, v) in vars {
                        env.push(OutEntry {
                            key: k,
                            key_pos: item.pos.clone(),
                            value: Out {
                                kind: OutKind::Str(v),
                                pos: item.pos.clone(),
                            },
                        });
                    }
                }
                Err(errs) => {
                    for (line, msg) in errs {
                        self.error(
                            &item.pos,
                            format!("{path}: {}:{line}: {msg}", full.display()),
                        );
                    }
                }
            }
        }
    }

    /// One `volumes` item: relative bind sources are resolved against the Compose file's
    /// folder, and a named volume must be declared in the top-level `volumes`.
    fn volume(&mut self, item: &Node, path: &str) -> Option<Out> {
        let mut v = self.value(item, path)?;
        match &mut v.kind {
            OutKind::Str(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                if parts.len() >= 2 {
                    let source = parts[0];
                    if let Some(abs) = self.host_path(source) {
                        let rest = &s[source.len()..];
                        *s = format!("{}{rest}", abs.display());
                    } else if !source.starts_with('/') {
                        self.check_declared(source, &item.pos, path);
                    }
                }
            }
            OutKind::Table(entries) => {
                let kind =
                    entries
                        .iter()
                        .find(|e| e.key == "type")
                        .and_then(|e| match &e.value.kind {
                            OutKind::Str(s) => Some(s.clone()),
                            _ => None,
                        });
                if let Some(src) = entries.iter_mut().find(|e| e.key == "source")
                    && let OutKind::Str(s) = &mut src.value.kind
                {
                    match kind.as_deref() {
                        Some("bind") => {
                            if let Some(abs) = self.host_path(s) {
                                *s = abs.display().to_string();
                            }
                        }
                        Some("volume") => {
                            let s = s.clone();
                            let pos = src.value.pos.clone();
                            self.check_declared(&s, &pos, &format!("{path}.source"));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        Some(v)
    }

    /// A relative or home-relative host path made absolute; `None` for anything else.
    fn host_path(&self, source: &str) -> Option<PathBuf> {
        let rel = if source == "."
            || source == ".."
            || source.starts_with("./")
            || source.starts_with("../")
        {
            self.base_dir.join(source)
        } else if let Some(rest) = source.strip_prefix("~/") {
            PathBuf::from(self.vars.get("HOME")?).join(rest)
        } else {
            return None;
        };
        // Lexical clean-up: "a/./b/../c" -> "a/c".
        let mut out = PathBuf::new();
        for c in rel.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        Some(out)
    }

    fn check_declared(&mut self, name: &str, pos: &Pos, path: &str) {
        if !name.is_empty() && !self.declared_volumes.contains(name) {
            self.error(
                pos,
                format!(
                    "{path}: volume \"{name}\" is not declared in the top-level volumes; add \"volumes: {{ {name}: {{}} }}\""
                ),
            );
        }
    }

    fn tmpfs(&mut self, n: &Node, path: &str, out: &mut Vec<Out>) {
        let items: Vec<(String, &Node)> = match &n.kind {
            Kind::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| (format!("{path}[{i}]"), item))
                .collect(),
            _ => vec![(path.to_string(), n)],
        };
        for (ipath, item) in items {
            let Some(target) = item
                .scalar()
                .filter(|_| item.map().is_none() && item.seq().is_none())
            else {
                self.error(
                    &item.pos,
                    format!("{ipath}: expected a path, found {}", item.type_name()),
                );
                continue;
            };
            if target.contains(':') {
                self.error(
                    &item.pos,
                    format!("{ipath}: tmpfs options are not supported yet; use a volumes entry {{ type: tmpfs, target: ..., tmpfs: {{ size: ... }} }}"),
                );
                continue;
            }
            let pos = item.pos.clone();
            let s = |v: &str| Out {
                kind: OutKind::Str(v.to_string()),
                pos: pos.clone(),
            };
            out.push(Out {
                kind: OutKind::Table(vec![
                    OutEntry {
                        key: "type".into(),
                        key_pos: pos.clone(),
                        value: s("tmpfs"),
                    },
                    OutEntry {
                        key: "target".into(),
                        key_pos: pos.clone(),
                        value: s(target),
                    },
                ]),
                pos: pos.clone(),
            });
        }
    }

    /// `deploy`: its keys move to the service, under the stack file's names.
    fn deploy(&mut self, n: &Node, cpath: &str, path: &str, out: &mut Vec<(String, Pos, Out)>) {
        let Some(entries) = self.expect_map(n, cpath) else {
            return;
        };
        let place = cpath.to_string();
        for e in entries {
            let key = e.key.as_str();
            let dpath = format!("{cpath}.{key}");
            let target = match key {
                k if k.starts_with("x-") => continue,
                "mode" | "replicas" | "placement" => key,
                "restart_policy" => "restart",
                "update_config" => "update",
                "rollback_config" => "rollback",
                "labels" => {
                    if let Some(v) = self.string_map(&e.value, &dpath) {
                        self.rename(format!("{path}.labels"), dpath);
                        out.push(("labels".into(), e.key_pos.clone(), v));
                    }
                    continue;
                }
                "resources" => {
                    self.resources(e, &dpath, path, out);
                    continue;
                }
                "endpoint_mode" => {
                    self.not_yet(e, &place, "service discovery comes with cluster networking");
                    continue;
                }
                _ => {
                    self.unknown(e, &place, DEPLOY_KEYS);
                    continue;
                }
            };
            if let Some(v) = self.value(&e.value, &dpath) {
                self.rename(format!("{path}.{target}"), dpath);
                out.push((target.to_string(), e.key_pos.clone(), v));
            }
        }
    }

    fn resources(&mut self, e: &Entry, dpath: &str, path: &str, out: &mut Vec<(String, Pos, Out)>) {
        let Some(entries) = self.expect_map(&e.value, dpath) else {
            return;
        };
        for r in entries {
            match r.key.as_str() {
                k if k.starts_with("x-") => {}
                "limits" => {
                    let lpath = format!("{dpath}.limits");
                    if let Some(v) = self.value(&r.value, &lpath) {
                        self.rename(format!("{path}.resources"), lpath);
                        out.push(("resources".into(), r.key_pos.clone(), v));
                    }
                }
                "reservations" => self.not_yet(r, dpath, "shoal enforces limits only"),
                _ => self.unknown(r, dpath, &["limits", "reservations"]),
            }
        }
    }
}

/// Strings of digits where the stack document wants numbers become numbers.
fn fix_numbers(out: &mut Out) {
    match &mut out.kind {
        OutKind::Table(entries) => {
            for e in entries {
                if NUMERIC.contains(&e.key.as_str())
                    && let OutKind::Str(s) = &e.value.kind
                {
                    let t = s.trim();
                    if let Ok(i) = t.parse::<i64>() {
                        e.value.kind = OutKind::Int(i);
                    } else if let Ok(x) = t.parse::<f64>()
                        && x.is_finite()
                        && t.contains('.')
                    {
                        e.value.kind = OutKind::Float(x);
                    }
                }
                fix_numbers(&mut e.value);
            }
        }
        OutKind::Array(items) => items.iter_mut().for_each(fix_numbers),
        _ => {}
    }
}
