//! Values of a Compose service mapped one by one: plain values, key/value mappings,
//! `environment` and `env_file`, `volumes` items and `tmpfs`.

use std::collections::BTreeSet;
use std::path::{Component, PathBuf};

use super::interp::parse_dotenv;
use super::map::{Mapper, Out, OutEntry, OutKind};
use super::yaml::{Kind, Node, Pos};

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

impl Mapper<'_> {
    /// A YAML value as it is, scalars typed as YAML reads them.
    pub(super) fn value(&mut self, n: &Node, path: &str) -> Option<Out> {
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
    pub(super) fn string_map(&mut self, n: &Node, path: &str) -> Option<Out> {
        let mut out = Vec::new();
        self.string_entries(n, path, &mut out, false)?;
        Some(Out {
            kind: OutKind::Table(out),
            pos: n.pos.clone(),
        })
    }

    pub(super) fn string_entries(
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

    pub(super) fn environment(&mut self, n: &Node, path: &str, env: &mut Vec<OutEntry>) {
        let mut out = Vec::new();
        if self.string_entries(n, path, &mut out, true).is_some() {
            env.extend(out);
        }
    }

    pub(super) fn env_file(&mut self, n: &Node, path: &str, env: &mut Vec<OutEntry>) {
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
    pub(super) fn volume(&mut self, item: &Node, path: &str) -> Option<Out> {
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
                        let rest = &s[source.len()..];
                        *s = format!("{}_{source}{rest}", self.stack);
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
                            src.value.kind = OutKind::Str(format!("{}_{s}", self.stack));
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
    pub(super) fn host_path(&self, source: &str) -> Option<PathBuf> {
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

    pub(super) fn check_declared(&mut self, name: &str, pos: &Pos, path: &str) {
        if !name.is_empty() && !self.declared_volumes.contains(name) {
            self.error(
                pos,
                format!(
                    "{path}: volume \"{name}\" is not declared in the top-level volumes; add \"volumes: {{ {name}: {{}} }}\""
                ),
            );
        }
    }

    pub(super) fn tmpfs(&mut self, n: &Node, path: &str, out: &mut Vec<Out>) {
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
}

/// Strings of digits where the stack document wants numbers become numbers.
pub(super) fn fix_numbers(out: &mut Out) {
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
