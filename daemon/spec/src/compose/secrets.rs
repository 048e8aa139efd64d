//! Compose's `secrets` and `configs`, mapped onto the stack file's: top level `file` (made
//! absolute from the Compose file's folder, so the converted TOML means the same file wherever
//! it is written) and `external` (with `name`, or the older `external: { name }`); per service
//! the short (`- NAME`) and long (`- { source, target, uid, gid, mode }`) syntax. A `mode`
//! written with a leading zero (`0440`) is octal, as `docker stack deploy` reads it.

use super::map::{Mapper, Out, OutEntry, OutKind};
use super::yaml::{Entry, Node};

impl Mapper<'_> {
    /// The top-level `secrets:` or `configs:` mapping.
    pub(super) fn top_secrets(&mut self, e: &Entry) -> Option<Out> {
        if e.value.is_null() {
            return None;
        }
        let top = e.key.clone();
        let items = self.expect_map(&e.value, &top)?;
        let mut out = Out::table(e.value.pos.clone());
        for item in items {
            if item.key.starts_with("x-") {
                continue;
            }
            let place = format!("{top}.{}", item.key);
            let mut table = Out::table(item.value.pos.clone());
            if let Some(keys) = self.expect_map(&item.value, &place) {
                for k in keys {
                    let kpath = format!("{place}.{}", k.key);
                    match k.key.as_str() {
                        x if x.starts_with("x-") => {}
                        "file" => {
                            let Some(v) = self.value(&k.value, &kpath) else {
                                continue;
                            };
                            let v = match &v.kind {
                                OutKind::Str(s) => match self.host_path(s) {
                                    Some(abs) => Out {
                                        kind: OutKind::Str(abs.to_string_lossy().into_owned()),
                                        pos: v.pos.clone(),
                                    },
                                    None if !s.starts_with('/') => Out {
                                        kind: OutKind::Str(
                                            self.base_dir.join(s).to_string_lossy().into_owned(),
                                        ),
                                        pos: v.pos.clone(),
                                    },
                                    None => v,
                                },
                                _ => v,
                            };
                            table.push("file", k.key_pos.clone(), v);
                        }
                        "external" => {
                            // The older form `external: { name: NAME }`.
                            if let Some(fields) = k.value.map() {
                                table.push(
                                    "external",
                                    k.key_pos.clone(),
                                    Out {
                                        kind: OutKind::Bool(true),
                                        pos: k.value.pos.clone(),
                                    },
                                );
                                for f in fields {
                                    if f.key == "name" {
                                        if let Some(v) =
                                            self.value(&f.value, &format!("{kpath}.name"))
                                        {
                                            self.rename(
                                                format!("{place}.name"),
                                                format!("{kpath}.name"),
                                            );
                                            table.push("name", f.key_pos.clone(), v);
                                        }
                                    } else {
                                        self.unknown(f, &kpath, &["name"]);
                                    }
                                }
                            } else if let Some(v) = self.value(&k.value, &kpath) {
                                table.push("external", k.key_pos.clone(), v);
                            }
                        }
                        "name" => {
                            if let Some(v) = self.value(&k.value, &kpath) {
                                table.push("name", k.key_pos.clone(), v);
                            }
                        }
                        "environment" | "content" | "driver" | "driver_opts"
                        | "template_driver" | "labels" => self.not_yet(k, &place, ""),
                        _ => self.unknown(
                            k,
                            &place,
                            &[
                                "file",
                                "external",
                                "name",
                                "environment",
                                "content",
                                "driver",
                                "driver_opts",
                                "template_driver",
                                "labels",
                            ],
                        ),
                    }
                }
            }
            out.push(&item.key, item.key_pos.clone(), table);
        }
        Some(out)
    }

    /// A service's `secrets:` or `configs:` list.
    pub(super) fn service_secrets(&mut self, e: &Entry, path: &str) -> Option<Out> {
        let Some(items) = e.value.seq() else {
            self.error(
                &e.value.pos,
                format!("{path}: expected a sequence, found {}", e.value.type_name()),
            );
            return None;
        };
        let mut list = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            let Some(fields) = item.map() else {
                if let Some(v) = self.value(item, &ipath) {
                    list.push(v);
                }
                continue;
            };
            let mut entries = Vec::new();
            for f in fields {
                let fpath = format!("{ipath}.{}", f.key);
                match f.key.as_str() {
                    x if x.starts_with("x-") => {}
                    "mode" => {
                        if let Some(v) =
                            octal_mode(&f.value).or_else(|| self.value(&f.value, &fpath))
                        {
                            entries.push(OutEntry {
                                key: "mode".into(),
                                key_pos: f.key_pos.clone(),
                                value: v,
                            });
                        }
                    }
                    "source" | "target" | "uid" | "gid" => {
                        if let Some(v) = self.value(&f.value, &fpath) {
                            entries.push(OutEntry {
                                key: f.key.clone(),
                                key_pos: f.key_pos.clone(),
                                value: v,
                            });
                        }
                    }
                    _ => self.unknown(f, &ipath, &["source", "target", "uid", "gid", "mode"]),
                }
            }
            list.push(Out {
                kind: OutKind::Table(entries),
                pos: item.pos.clone(),
            });
        }
        Some(Out {
            kind: OutKind::Array(list),
            pos: e.value.pos.clone(),
        })
    }
}

/// `0440` (YAML 1.1's octal, which Compose files use for modes) or `0o440`, kept as text for
/// the stack validator to read as octal.
fn octal_mode(n: &Node) -> Option<Out> {
    let text = n.scalar()?;
    let octal =
        (text.len() > 1 && text.starts_with('0') && text.bytes().all(|b| b.is_ascii_digit()))
            || text.starts_with("0o");
    octal.then(|| Out {
        kind: OutKind::Str(text.to_string()),
        pos: n.pos.clone(),
    })
}
