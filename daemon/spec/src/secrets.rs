//! Secrets and configs: the stack keys (`[secrets.NAME]`, `[configs.NAME]`, a service's
//! `secrets` and `configs`), the `--secret`/`--config` flag syntax shared by the CLI and D-Bus,
//! and the reading of a stack's secret files.
//!
//! Parsing does no IO: a `file` source is kept as written. [`read_stack_files`] fills in the
//! content (and its sha256) when a stack is deployed or reloaded, from disk relative to the stack
//! file (reload, `shoal stack deploy`) or from the files the CLI sent along (D-Bus).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use model::{SecretData, SecretKind, SecretRef, StackSecret, StackSpec};
use sha2::{Digest, Sha256};
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, Errors, Sink};
use crate::units;
use crate::walk::{self, Keys, Value};

const SECRET_KEYS: Keys<'static> = Keys {
    known: &["file", "external", "name"],
    unsupported: &[
        ("environment", ""),
        ("content", ""),
        ("driver", ""),
        ("driver_opts", ""),
        ("template_driver", ""),
        ("labels", ""),
    ],
    hints: &[],
};

const REF_KEYS: Keys<'static> = Keys {
    known: &["source", "target", "uid", "gid", "mode"],
    unsupported: &[],
    hints: &[],
};

/// The top-level `[secrets]` or `[configs]` table of a stack file.
pub(crate) fn stack_table(
    sink: &mut Sink<'_>,
    kind: SecretKind,
    v: &Value<'_>,
) -> BTreeMap<String, StackSecret> {
    let top = format!("{}s", kind.as_str());
    let mut out = BTreeMap::new();
    let Some(t) = walk::table(sink, v, &top) else {
        return out;
    };
    for (key, value) in walk::entries(t) {
        let short: &str = key.get_ref();
        let path = format!("{top}.{short}");
        if let Err(e) = units::validate_name(kind.as_str(), short) {
            sink.error(key.span(), e);
        }
        let Some(st) = walk::table(sink, value, &path) else {
            continue;
        };
        walk::check_keys(sink, st, &format!("[{path}]"), &SECRET_KEYS);
        let mut s = StackSecret::default();
        if let Some(v) = st.get("external") {
            s.external = walk::boolean(sink, v, &format!("{path}.external")).unwrap_or(false);
        }
        if let Some(v) = st.get("name")
            && let Some(n) = walk::string(sink, v, &format!("{path}.name"))
        {
            match units::validate_name(kind.as_str(), n) {
                Ok(()) => s.name = Some(n.to_string()),
                Err(e) => sink.error(v.span(), format!("{path}.name: {e}")),
            }
            if !s.external {
                sink.error(
                    v.span(),
                    format!(
                        "{path}.name: only an external {k} takes a name (a stack's own is {{stack}}_{short})",
                        k = kind.as_str()
                    ),
                );
            }
        }
        if let Some(v) = st.get("file")
            && let Some(f) = walk::string(sink, v, &format!("{path}.file"))
        {
            if f.is_empty() || f.contains('\0') {
                sink.error(v.span(), format!("{path}.file: must be a file path"));
            } else if s.external {
                sink.error(
                    v.span(),
                    format!(
                        "{path}.file: not allowed with external = true (the {} exists already)",
                        kind.as_str()
                    ),
                );
            } else {
                s.file = Some(f.to_string());
            }
        }
        if !s.external && s.file.is_none() && st.get("file").is_none() {
            sink.error(
                key.span(),
                format!(
                    "[{path}]: set file = \"PATH\" (read when the stack is deployed or reloaded) or external = true (made with `shoal {} create`)",
                    kind.as_str()
                ),
            );
        }
        out.insert(short.to_string(), s);
    }
    out
}

/// A service's `secrets` or `configs`: `["NAME", { source = "NAME", target, uid, gid, mode }]`,
/// each naming a `[secrets.NAME]` of the stack. The references keep the names used in the file;
/// the deploy resolves them to the cluster's versions.
pub(crate) fn service_refs(
    sink: &mut Sink<'_>,
    kind: SecretKind,
    path: &str,
    v: &Value<'_>,
    declared: &BTreeMap<String, StackSecret>,
) -> Vec<SecretRef> {
    let key = format!("{path}.{}s", kind.as_str());
    let mut out: Vec<SecretRef> = Vec::new();
    let Some(items) = walk::array(sink, v, &key) else {
        return out;
    };
    if items.len() > model::limits::MAX_MOUNTS {
        sink.error(
            v.span(),
            format!(
                "{key}: {} entries is above the limit of {}",
                items.len(),
                model::limits::MAX_MOUNTS
            ),
        );
        return out;
    }
    for (i, item) in items.iter().enumerate() {
        let place = format!("{key}[{i}]");
        let r = match item.get_ref() {
            DeValue::String(s) => Some(SecretRef::new(kind, s)),
            DeValue::Table(t) => long_ref(sink, kind, &place, item.span(), t),
            _ => {
                sink.error(
                    item.span(),
                    format!(
                        "{place}: expected a {k} name or {{ source = \"NAME\", target, uid, gid, mode }}, found {}",
                        item.get_ref().type_str(),
                        k = kind.as_str()
                    ),
                );
                None
            }
        };
        let Some(r) = r else { continue };
        if !declared.contains_key(&r.name) {
            sink.error(
                item.span(),
                format!(
                    "{place}: {k} \"{n}\" is not declared; add a [{k}s.{n}] table with file = \"PATH\" or external = true",
                    k = kind.as_str(),
                    n = r.name
                ),
            );
            continue;
        }
        if let Err(e) = model::secret::check_ref(kind, &r) {
            sink.error(item.span(), format!("{place}: {e}"));
            continue;
        }
        if out.iter().any(|o| o.target == r.target) {
            sink.error(
                item.span(),
                format!("{place}: target \"{}\" is used twice", r.target),
            );
            continue;
        }
        out.push(r);
    }
    out
}

fn long_ref(
    sink: &mut Sink<'_>,
    kind: SecretKind,
    place: &str,
    span: Range<usize>,
    t: &DeTable<'_>,
) -> Option<SecretRef> {
    walk::check_keys(sink, t, place, &REF_KEYS);
    let Some(source) = t.get("source") else {
        sink.error(span, format!("{place}: missing key \"source\""));
        return None;
    };
    let source = walk::string(sink, source, &format!("{place}.source"))?;
    let mut r = SecretRef::new(kind, source);
    let mut ok = true;
    if let Some(v) = t.get("target")
        && let Some(s) = walk::string(sink, v, &format!("{place}.target"))
    {
        r.target = s.to_string();
    }
    for (k, slot) in [("uid", &mut r.uid), ("gid", &mut r.gid)] {
        if let Some(v) = t.get(k) {
            let text = match v.get_ref() {
                DeValue::String(s) => s.to_string(),
                DeValue::Integer(i) => i.as_str().to_string(),
                _ => {
                    sink.error(v.span(), format!("{place}.{k}: expected a number"));
                    ok = false;
                    continue;
                }
            };
            match parse_id(k, &text) {
                Ok(n) => *slot = n,
                Err(e) => {
                    sink.error(v.span(), format!("{place}.{k}: {e}"));
                    ok = false;
                }
            }
        }
    }
    if let Some(v) = t.get("mode") {
        let m = match v.get_ref() {
            DeValue::Integer(i) => u32::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| format!("{} is not a file mode", i.as_str())),
            DeValue::String(s) => parse_mode(s),
            _ => Err("expected a file mode such as 0o440 or \"0440\"".to_string()),
        };
        match m {
            Ok(m) => r.mode = m,
            Err(e) => {
                sink.error(v.span(), format!("{place}.mode: {e}"));
                ok = false;
            }
        }
    }
    ok.then_some(r)
}

fn parse_id(what: &str, s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .map_err(|_| format!("{what} \"{s}\" must be a number from 0 to {}", u32::MAX))
}

/// A file mode written in octal: `0440`, `0o440` or `440`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("mode \"{s}\" must be octal permission bits such as 0440"))
}

/// The one parser of `--secret` and `--config` values (CLI flags and D-Bus properties):
/// `NAME`, or `source=NAME,target=T,uid=U,gid=G,mode=0440` (Docker's syntax; `src` and `dst`
/// are accepted too).
pub fn parse_ref_flag(kind: SecretKind, s: &str) -> Result<SecretRef, String> {
    let k = kind.as_str();
    if !s.contains('=') {
        units::validate_name(k, s)?;
        return Ok(SecretRef::new(kind, s));
    }
    let mut source = None;
    let mut fields: Vec<(&str, &str)> = Vec::new();
    for part in s.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("--{k} {s}: \"{part}\" is not KEY=VALUE"))?;
        match key {
            "source" | "src" => source = Some(value),
            "target" | "dst" | "destination" | "uid" | "gid" | "mode" => fields.push((key, value)),
            other => {
                return Err(format!(
                    "--{k} {s}: unknown key \"{other}\" (known: source, target, uid, gid, mode)"
                ));
            }
        }
    }
    let source = source.ok_or_else(|| format!("--{k} {s}: source=NAME is required"))?;
    units::validate_name(k, source)?;
    let mut r = SecretRef::new(kind, source);
    for (key, value) in fields {
        match key {
            "uid" => r.uid = parse_id("uid", value)?,
            "gid" => r.gid = parse_id("gid", value)?,
            "mode" => r.mode = parse_mode(value)?,
            _ => r.target = value.to_string(),
        }
    }
    model::secret::check_ref(kind, &r)?;
    Ok(r)
}

/// The `--secret`/`--config` text of a reference, which [`parse_ref_flag`] reads back.
pub fn format_ref_flag(kind: SecretKind, r: &SecretRef) -> String {
    let default = SecretRef::new(kind, &r.name);
    if r.target == default.target && r.uid == 0 && r.gid == 0 && r.mode == default.mode {
        return r.name.clone();
    }
    format!(
        "source={},target={},uid={},gid={},mode={:04o}",
        r.name, r.target, r.uid, r.gid, r.mode
    )
}

/// The `file` sources of a stack's secrets and configs, as written.
pub fn stack_file_sources(spec: &StackSpec) -> Vec<String> {
    let mut out: Vec<String> = spec
        .secrets
        .values()
        .chain(spec.configs.values())
        .filter_map(|s| s.file.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Fill in the content and sha256 of every `file` secret and config of `spec`, asking `read`
/// for each file as written. `path` (the stack file) names the problems. Every problem is
/// reported at once; a file above the kind's size limit is one.
pub fn read_stack_files(
    path: &Path,
    spec: &mut StackSpec,
    read: &mut dyn FnMut(&str) -> Result<Vec<u8>, String>,
) -> Result<(), Errors> {
    let mut errors = Vec::new();
    for (kind, map) in [
        (SecretKind::Secret, &mut spec.secrets),
        (SecretKind::Config, &mut spec.configs),
    ] {
        for (short, s) in map.iter_mut() {
            let Some(file) = s.file.clone() else { continue };
            let place = format!("[{}s.{short}] file {file}", kind.as_str());
            match read(&file) {
                Ok(bytes) => match kind.check_size(bytes.len()) {
                    Ok(()) => {
                        s.digest = hex::encode(Sha256::digest(&bytes));
                        s.data = Some(SecretData::new(bytes));
                    }
                    Err(e) => errors.push(Diagnostic::whole_file(path, format!("{place}: {e}"))),
                },
                Err(e) => errors.push(Diagnostic::whole_file(
                    path,
                    format!("{place}: failed to read: {e}"),
                )),
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Errors(errors))
    }
}

/// The contents of a stack's `file` secrets and configs, by the file as written (what a client
/// sends with the stack, and a follower with its stack files).
pub fn stack_file_contents(spec: &StackSpec) -> BTreeMap<String, SecretData> {
    spec.secrets
        .values()
        .chain(spec.configs.values())
        .filter_map(|s| Some((s.file.clone()?, s.data.clone()?)))
        .collect()
}

/// Reads a stack's secret files from `files` (sent by a client or a follower).
pub fn read_from_map(
    files: &BTreeMap<String, SecretData>,
) -> impl FnMut(&str) -> Result<Vec<u8>, String> + '_ {
    move |file: &str| {
        files
            .get(file)
            .map(|d| d.expose().to_vec())
            .ok_or_else(|| "the content of this file was not sent with the stack".to_string())
    }
}

/// Reads a stack's secret files from disk: relative paths from the stack file's directory.
pub fn read_from_disk(stack_file: &Path) -> impl FnMut(&str) -> Result<Vec<u8>, String> + '_ {
    move |file: &str| {
        let p = Path::new(file);
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            stack_file
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(p)
        };
        let meta = std::fs::metadata(&full).map_err(|e| format!("{}: {e}", full.display()))?;
        // Refuse before reading a huge file into memory.
        if meta.len() > model::secret::MAX_CONFIG_BYTES as u64 {
            return Err(format!(
                "{}: {} bytes is above the limit of {} bytes for a secret and {} bytes for a config",
                full.display(),
                meta.len(),
                model::secret::MAX_SECRET_BYTES,
                model::secret::MAX_CONFIG_BYTES
            ));
        }
        std::fs::read(&full).map_err(|e| format!("{}: {e}", full.display()))
    }
}

/// The digests of a stack's secret files, folded into its file hash so that a reload sees a
/// changed secret file even when the stack file is the same. Empty for a stack without any, so
/// the hash of such a stack is the file's.
pub(crate) fn digest_suffix(spec: &StackSpec) -> String {
    let mut out = String::new();
    for (kind, map) in [
        (SecretKind::Secret, &spec.secrets),
        (SecretKind::Config, &spec.configs),
    ] {
        for (short, s) in map {
            if !s.digest.is_empty() {
                out.push_str(&format!("\n{}.{short}={}", kind.as_str(), s.digest));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK: &str = r#"
[secrets.db_password]
file = "./pw.txt"

[secrets.shared]
external = true
name = "global_pw"

[configs.app]
file = "/etc/app.conf"

[services.web]
image = "a"
secrets = ["db_password", { source = "shared", target = "other", uid = "1000", gid = 1000, mode = 0o400 }]
configs = [{ source = "app", target = "/etc/app/app.conf", mode = "0440" }]
"#;

    fn errs(text: &str) -> Vec<String> {
        match crate::parse_stack(Path::new("/s/shop.toml"), text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn stack_secrets_and_service_references_parse_with_swarm_defaults() {
        let s = crate::parse_stack(Path::new("/s/shop.toml"), STACK).unwrap();
        let pw = &s.secrets["db_password"];
        assert_eq!(pw.file.as_deref(), Some("./pw.txt"));
        assert!(!pw.external && pw.data.is_none());
        assert!(s.secrets["shared"].external);
        assert_eq!(s.secrets["shared"].name.as_deref(), Some("global_pw"));
        let t = &s.services[0].task;
        assert_eq!(
            t.secrets[0],
            SecretRef::new(SecretKind::Secret, "db_password")
        );
        assert_eq!(t.secrets[0].target, "db_password");
        assert_eq!(t.secrets[0].mode, 0o444);
        assert_eq!(
            (
                t.secrets[1].target.as_str(),
                t.secrets[1].uid,
                t.secrets[1].gid,
                t.secrets[1].mode
            ),
            ("other", 1000, 1000, 0o400)
        );
        assert_eq!(t.configs[0].target, "/etc/app/app.conf");
        assert_eq!(t.configs[0].mode, 0o440);
    }

    #[test]
    fn bad_secrets_are_reported_at_their_place() {
        let e = errs(
            r#"
[secrets.a]
external = true
file = "x"

[secrets.b]

[services.web]
image = "a"
secrets = ["a", "nope", { source = "a", target = "../x" }, { source = "a", mode = 0o4777 }]
configs = [{ source = "c", target = "rel" }]
"#,
        );
        let all = e.join("\n");
        for want in [
            "shop.toml:4:8: secrets.a.file",
            "secrets.a.file: not allowed with external = true",
            "[secrets.b]: set file = \"PATH\"",
            "secret \"nope\" is not declared",
            "target \"../x\" must be a file name",
            "mode",
            "config \"c\" is not declared",
        ] {
            assert!(all.contains(want), "no {want:?} in:\n{all}");
        }
    }

    #[test]
    fn the_flag_syntax_is_dockers() {
        let r = parse_ref_flag(SecretKind::Secret, "db").unwrap();
        assert_eq!(r, SecretRef::new(SecretKind::Secret, "db"));
        let r = parse_ref_flag(
            SecretKind::Secret,
            "source=db,target=pw,uid=1,gid=2,mode=0400",
        )
        .unwrap();
        assert_eq!(
            (r.name.as_str(), r.target.as_str(), r.uid, r.gid, r.mode),
            ("db", "pw", 1, 2, 0o400)
        );
        assert_eq!(
            parse_ref_flag(SecretKind::Secret, &format_ref_flag(SecretKind::Secret, &r)).unwrap(),
            r
        );
        let c = parse_ref_flag(SecretKind::Config, "src=app,target=/etc/app.conf").unwrap();
        assert_eq!(c.target, "/etc/app.conf");
        for bad in [
            "",
            "bad name",
            "target=x",
            "source=db,color=red",
            "source=db,mode=999",
            "source=db,target=a/b",
        ] {
            assert!(parse_ref_flag(SecretKind::Secret, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_are_read_relative_to_the_stack_file_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw.txt"), b"s3cret").unwrap();
        std::fs::write(
            dir.path().join("big"),
            vec![b'x'; model::secret::MAX_SECRET_BYTES + 1],
        )
        .unwrap();
        let stack = dir.path().join("shop.toml");
        std::fs::write(
            &stack,
            "[secrets.pw]\nfile = \"pw.txt\"\n[services.web]\nimage = \"a\"\nsecrets = [\"pw\"]\n",
        )
        .unwrap();
        let loaded = crate::load_stack_file(&stack).unwrap();
        let pw = &loaded.spec.secrets["pw"];
        assert_eq!(pw.data.as_ref().unwrap().expose(), b"s3cret");
        assert_eq!(pw.digest, hex::encode(Sha256::digest(b"s3cret")));
        // The stack's hash follows the secret's content.
        std::fs::write(dir.path().join("pw.txt"), b"other").unwrap();
        let again = crate::load_stack_file(&stack).unwrap();
        assert_ne!(again.hash, loaded.hash);
        // Too big, or missing: an error naming the stack file and the secret, never the data.
        std::fs::write(
            &stack,
            "[secrets.pw]\nfile = \"big\"\n[secrets.gone]\nfile = \"missing\"\n[services.web]\nimage = \"a\"\nsecrets = [\"pw\", \"gone\"]\n",
        )
        .unwrap();
        let e = crate::load_stack_file(&stack).unwrap_err().to_string();
        assert!(e.contains("[secrets.pw] file big: secret data of 512001 bytes is above the limit of 512000 bytes (500 KiB)"), "{e}");
        assert!(
            e.contains("[secrets.gone] file missing: failed to read"),
            "{e}"
        );
    }
}
