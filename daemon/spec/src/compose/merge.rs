//! Several Compose files merged in order, by the Compose Specification's merge rules (what
//! `docker stack deploy -c a.yml -c b.yml` does):
//!
//! - mappings are merged key by key, a later file's scalar replaces an earlier one;
//! - sequences are appended, except `command`, `entrypoint` and `healthcheck.test`, which a later
//!   file replaces;
//! - `ports` are unique by (published, target, protocol) and `volumes` by target: a later entry
//!   with the same key replaces the earlier one;
//! - `environment`, `labels` and `deploy.labels` in list form (`- KEY=VALUE`) are first turned
//!   into mappings, so that both forms merge by key.
//!
//! Every node keeps the position of the file it came from.

use super::yaml::{Entry, Kind, Node};

/// Turns the list forms of key/value settings into mappings, in every service of `doc`.
pub(crate) fn normalize(doc: &mut Node) {
    let Kind::Map(top) = &mut doc.kind else {
        return;
    };
    let Some(services) = top.iter_mut().find(|e| e.key == "services") else {
        return;
    };
    let Kind::Map(services) = &mut services.value.kind else {
        return;
    };
    for service in services {
        let Kind::Map(keys) = &mut service.value.kind else {
            continue;
        };
        for e in keys.iter_mut() {
            match e.key.as_str() {
                "environment" | "labels" => list_to_map(&mut e.value),
                "deploy" => {
                    if let Kind::Map(deploy) = &mut e.value.kind
                        && let Some(l) = deploy.iter_mut().find(|d| d.key == "labels")
                    {
                        list_to_map(&mut l.value);
                    }
                }
                _ => {}
            }
        }
    }
}

/// `["A=1", "B"]` becomes `{A: "1", B: null}`. Items that are not strings, or a key given twice,
/// are left for the mapper to report: the sequence is then kept as it is.
fn list_to_map(node: &mut Node) {
    let Kind::Seq(items) = &node.kind else {
        return;
    };
    let mut entries: Vec<Entry> = Vec::with_capacity(items.len());
    for item in items {
        let Kind::Scalar { text, .. } = &item.kind else {
            return;
        };
        let (key, value) = match text.split_once('=') {
            Some((k, v)) => (
                k.to_string(),
                Node {
                    kind: Kind::Scalar {
                        text: v.to_string(),
                        plain: false,
                    },
                    pos: item.pos.clone(),
                },
            ),
            None => (
                text.clone(),
                Node {
                    kind: Kind::Scalar {
                        text: String::new(),
                        plain: true,
                    },
                    pos: item.pos.clone(),
                },
            ),
        };
        if entries.iter().any(|e| e.key == key) {
            return;
        }
        entries.push(Entry {
            key,
            key_pos: item.pos.clone(),
            value,
        });
    }
    node.kind = Kind::Map(entries);
}

/// Merges `over` into `base`. `path` is the dotted path of `base` (for the exceptions).
pub(crate) fn merge(base: &mut Node, over: Node, path: &str) {
    match (&mut base.kind, over.kind) {
        (Kind::Map(b), Kind::Map(o)) => {
            for e in o {
                match b.iter_mut().find(|x| x.key == e.key) {
                    Some(existing) => {
                        let child = if path.is_empty() {
                            e.key.clone()
                        } else {
                            format!("{path}.{}", e.key)
                        };
                        merge(&mut existing.value, e.value, &child);
                    }
                    None => b.push(e),
                }
            }
        }
        (Kind::Seq(b), Kind::Seq(o)) => {
            let field = field_of(path);
            match field {
                Some("command" | "entrypoint" | "test") => {
                    *b = o;
                    base.pos = over.pos;
                }
                Some(f @ ("ports" | "volumes")) => {
                    for item in o {
                        let key = unique_key(f, &item);
                        match key.as_ref().and_then(|k| {
                            b.iter().position(|x| unique_key(f, x).as_ref() == Some(k))
                        }) {
                            Some(i) => b[i] = item,
                            None => b.push(item),
                        }
                    }
                }
                _ => b.extend(o),
            }
        }
        (_, kind) => {
            base.kind = kind;
            base.pos = over.pos;
        }
    }
}

/// The service field a path ends in (`services.web.ports` → `ports`), or `test` for
/// `services.web.healthcheck.test`.
fn field_of(path: &str) -> Option<&str> {
    let mut parts = path.split('.');
    if parts.next() != Some("services") {
        return None;
    }
    let _service = parts.next()?;
    let rest: Vec<&str> = parts.collect();
    match rest.as_slice() {
        [field] => Some(field),
        ["healthcheck", "test"] => Some("test"),
        _ => None,
    }
}

/// What makes a port or a volume unique within a service.
fn unique_key(field: &str, item: &Node) -> Option<String> {
    match (&item.kind, field) {
        (Kind::Scalar { text, .. }, "ports") => Some(if text.contains('/') {
            text.clone()
        } else {
            format!("{text}/tcp")
        }),
        (Kind::Scalar { text, .. }, "volumes") => {
            let parts: Vec<&str> = text.split(':').collect();
            Some(if parts.len() >= 2 { parts[1] } else { parts[0] }.to_string())
        }
        (Kind::Map(_), "ports") => {
            let get = |k: &str| {
                item.get(k)
                    .and_then(Node::scalar)
                    .unwrap_or_default()
                    .to_string()
            };
            let proto = item.get("protocol").and_then(Node::scalar).unwrap_or("tcp");
            // The short form "published:target/proto", so the two forms meet.
            Some(format!("{}:{}/{proto}", get("published"), get("target")))
        }
        (Kind::Map(_), "volumes") => item
            .get("target")
            .and_then(Node::scalar)
            .map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::compose::yaml;

    fn doc(name: &str, text: &str) -> Node {
        let file: Arc<Path> = Arc::from(Path::new(name));
        let mut d = yaml::parse(&file, text).unwrap().unwrap();
        normalize(&mut d);
        d
    }

    fn scalars<'n>(node: &'n Node, key: &str) -> Vec<&'n str> {
        let items = node.get(key).unwrap().seq().unwrap();
        items.iter().map(|n| n.scalar().unwrap()).collect()
    }

    #[test]
    fn later_files_override_append_and_replace_by_key() {
        let mut a = doc(
            "a.yml",
            "services:\n  web:\n    image: web:1\n    command: [a, b]\n    environment: [A=1, B=2]\n    ports: ['80:80']\n    volumes: ['data:/data', '/etc:/host:ro']\n    dns: [1.1.1.1]\n",
        );
        let b = doc(
            "b.yml",
            "services:\n  web:\n    image: web:2\n    command: [c]\n    environment:\n      B: three\n    ports: ['81:81', {published: 80, target: 80}]\n    volumes: ['other:/data']\n    dns: [8.8.8.8]\n  db:\n    image: db\n",
        );
        merge(&mut a, b, "");
        let web = a.get("services").unwrap().get("web").unwrap();
        assert_eq!(web.get("image").unwrap().scalar(), Some("web:2"));
        assert_eq!(
            web.get("image").unwrap().pos.file.as_ref(),
            Path::new("b.yml")
        );
        let cmd = scalars(web, "command");
        assert_eq!(cmd, ["c"]);
        let env = web.get("environment").unwrap();
        assert_eq!(env.get("A").unwrap().scalar(), Some("1"));
        assert_eq!(env.get("B").unwrap().scalar(), Some("three"));
        let ports = web.get("ports").unwrap().seq().unwrap();
        assert_eq!(ports.len(), 2, "{ports:?}");
        assert!(ports[0].map().is_some(), "80:80 replaced by the long form");
        let vols = scalars(web, "volumes");
        assert_eq!(vols, ["other:/data", "/etc:/host:ro"]);
        assert_eq!(web.get("dns").unwrap().seq().unwrap().len(), 2);
        assert!(a.get("services").unwrap().get("db").is_some());
    }
}
