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

use std::collections::BTreeSet;
use std::path::Path;

use super::interp::Variables;
use super::yaml::{Entry, Node, Pos};
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
    pub(super) fn table(pos: Pos) -> Out {
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
    "networks",
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
    "init",
    "cap_add",
    "cap_drop",
    "ulimits",
    "sysctls",
    "security_opt",
    "healthcheck",
    "depends_on",
    "extra_hosts",
    "dns",
    "dns_search",
    "dns_opt",
];

/// Service keys of Compose that shoal's service model has no place for yet: (key, advice).
const SERVICE_NOT_YET: &[(&str, &str)] = &[
    ("secrets", ""),
    ("configs", ""),
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

/// Reads a file named in a Compose file (`env_file`).
pub(crate) type ReadFile<'a> = &'a dyn Fn(&Path) -> std::io::Result<String>;

pub(crate) struct Mapper<'a> {
    /// Named volumes are prefixed with the stack name, as `docker stack deploy` does.
    pub stack: &'a str,
    pub vars: &'a Variables,
    /// Relative paths (`env_file`, bind sources) are taken from here: the first file's folder.
    pub base_dir: &'a Path,
    pub read: ReadFile<'a>,
    pub errors: Vec<(Pos, String)>,
    /// Keys `docker stack deploy` ignores: (place of the key, the key and where it is, e.g.
    /// `"build" in services.web`, why it is ignored).
    pub ignored: Vec<(Pos, String, &'static str)>,
    /// Other things worth a word that do not stop the conversion.
    pub warnings: Vec<(Pos, String)>,
    /// (stack document path, Compose path) prefixes, to name Compose keys in the validator's
    /// messages.
    pub renames: Vec<(String, String)>,
    pub declared_volumes: BTreeSet<String>,
}

impl<'a> Mapper<'a> {
    pub fn new(
        stack: &'a str,
        vars: &'a Variables,
        base_dir: &'a Path,
        read: ReadFile<'a>,
    ) -> Self {
        Mapper {
            stack,
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

    pub(super) fn error(&mut self, pos: &Pos, msg: impl Into<String>) {
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
                    "\"name\" in the Compose file".to_string(),
                    "the stack is named on the command line",
                )),
                "services" | "volumes" => {}
                "networks" => {
                    if let Some(nets) = self.top_networks(&e.value) {
                        out.push("networks", e.key_pos.clone(), nets);
                    }
                }
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

    /// The top-level `networks`: each becomes a `[networks.NAME]` of the stack (`driver`,
    /// `external`, `attachable`, `labels`, and `ipam.config[0].subnet` as `subnet`).
    fn top_networks(&mut self, v: &Node) -> Option<Out> {
        if v.is_null() {
            return None;
        }
        let nets = self.expect_map(v, "networks")?;
        let mut out = Out::table(v.pos.clone());
        for net in nets {
            if net.key.starts_with("x-") {
                continue;
            }
            let place = format!("networks.{}", net.key);
            let mut table = Out::table(net.value.pos.clone());
            if !net.value.is_null()
                && let Some(keys) = self.expect_map(&net.value, &place)
            {
                for k in keys {
                    let kpath = format!("{place}.{}", k.key);
                    match k.key.as_str() {
                        x if x.starts_with("x-") => {}
                        "driver" | "external" | "attachable" => {
                            if let Some(val) = self.value(&k.value, &kpath) {
                                table.push(&k.key, k.key_pos.clone(), val);
                            }
                        }
                        "labels" => {
                            if let Some(val) = self.string_map(&k.value, &kpath) {
                                table.push("labels", k.key_pos.clone(), val);
                            }
                        }
                        "ipam" => self.network_ipam(k, &kpath, &mut table),
                        "name" | "driver_opts" | "internal" | "enable_ipv6" => {
                            self.not_yet(k, &place, "")
                        }
                        _ => self.unknown(
                            k,
                            &place,
                            &[
                                "driver",
                                "driver_opts",
                                "external",
                                "attachable",
                                "labels",
                                "ipam",
                                "internal",
                                "enable_ipv6",
                                "name",
                            ],
                        ),
                    }
                }
            }
            out.push(&net.key, net.key_pos.clone(), table);
        }
        Some(out)
    }

    /// `ipam: { config: [ { subnet: CIDR } ] }`: one subnet, the rest not supported yet.
    fn network_ipam(&mut self, e: &Entry, path: &str, table: &mut Out) {
        let Some(keys) = self.expect_map(&e.value, path) else {
            return;
        };
        for k in keys {
            match k.key.as_str() {
                "config" => {
                    let Some(items) = k.value.seq() else {
                        self.error(&k.value.pos, format!("{path}.config: expected a list"));
                        continue;
                    };
                    for (i, item) in items.iter().enumerate() {
                        let ipath = format!("{path}.config[{i}]");
                        let Some(fields) = self.expect_map(item, &ipath) else {
                            continue;
                        };
                        for f in fields {
                            match (f.key.as_str(), i) {
                                ("subnet", 0) => {
                                    if let Some(v) =
                                        self.value(&f.value, &format!("{ipath}.subnet"))
                                    {
                                        self.rename(
                                            format!("{}.subnet", path.trim_end_matches(".ipam")),
                                            format!("{ipath}.subnet"),
                                        );
                                        table.push("subnet", f.key_pos.clone(), v);
                                    }
                                }
                                ("subnet", _) => self.error(
                                    &f.key_pos,
                                    format!("{ipath}: one subnet per network is supported"),
                                ),
                                _ => self.not_yet(f, &ipath, ""),
                            }
                        }
                    }
                }
                _ => self.not_yet(k, path, ""),
            }
        }
    }

    /// A service's `networks`: a list of names, or a mapping of names (whose per-network
    /// settings, such as `aliases`, are not supported yet).
    fn service_networks(&mut self, e: &Entry, path: &str) -> Option<Out> {
        if let Some(entries) = e.value.map() {
            let mut names = Vec::new();
            for n in entries {
                if let Some(settings) = n.value.map() {
                    for k in settings {
                        self.not_yet(k, &format!("{path}.{}", n.key), "");
                    }
                }
                names.push(Out {
                    kind: OutKind::Str(n.key.clone()),
                    pos: n.key_pos.clone(),
                });
            }
            return Some(Out {
                kind: OutKind::Array(names),
                pos: e.value.pos.clone(),
            });
        }
        self.value(&e.value, path)
    }

    pub(super) fn rename(&mut self, toml: String, compose: String) {
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
                    format!("\"{key}\" in {place}"),
                    "docker stack deploy ignores it",
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
                | "user" | "working_dir" | "hostname" | "read_only" | "init" | "cap_add"
                | "cap_drop" | "ulimits" | "sysctls" | "security_opt" | "healthcheck"
                | "depends_on" | "extra_hosts" | "dns" | "dns_search" | "dns_opt" => {
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
                "networks" => {
                    if let Some(v) = self.service_networks(e, &cpath) {
                        out.push("networks", e.key_pos.clone(), v);
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
        super::values::fix_numbers(&mut out);
        Some(out)
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
                "mode" | "replicas" | "placement" | "endpoint_mode" => key,
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
        // `limits` become the stack file's `resources`, `reservations` its
        // `resources.reservations`.
        let mut limits: Option<(Pos, Out)> = None;
        let mut reservations: Option<(Pos, Out)> = None;
        for r in entries {
            match r.key.as_str() {
                k if k.starts_with("x-") => {}
                "limits" => {
                    let lpath = format!("{dpath}.limits");
                    if let Some(v) = self.value(&r.value, &lpath) {
                        self.rename(format!("{path}.resources"), lpath);
                        limits = Some((r.key_pos.clone(), v));
                    }
                }
                "reservations" => {
                    let rpath = format!("{dpath}.reservations");
                    if let Some(v) = self.value(&r.value, &rpath) {
                        self.rename(format!("{path}.resources.reservations"), rpath);
                        reservations = Some((r.key_pos.clone(), v));
                    }
                }
                _ => self.unknown(r, dpath, &["limits", "reservations"]),
            }
        }
        let table = match (limits, reservations) {
            (None, None) => None,
            (Some(l), None) => Some(l),
            (limits, Some((rpos, rv))) => {
                let (pos, mut table) =
                    limits.unwrap_or_else(|| (rpos.clone(), Out::table(rpos.clone())));
                table.push("reservations", rpos, rv);
                Some((pos, table))
            }
        };
        if let Some((pos, v)) = table {
            out.push(("resources".into(), pos, v));
        }
    }
}
