//! Compose files (`docker-stack.yml`, `compose.yaml`) as a front end to the stack validator.
//!
//! A Compose file is read into a YAML tree that knows every node's file, line and column
//! ([`yaml`]); variables are interpolated ([`interp`]); several files are merged in order
//! ([`merge`]); the result is mapped onto the stack document ([`map`]), written out as a TOML
//! stack file ([`emit`]) and checked by the one stack validator, [`crate::parse_stack_named`].
//! Each problem the validator finds in the written TOML is traced back to the place in the
//! Compose file the value came from, and named with the Compose key (`deploy.replicas`, not
//! `replicas`). So a Compose file and its converted TOML give the same services by
//! construction, and there is still one validator.
//!
//! What is refused, ignored or warned about is listed in [`map`]. Nothing here does IO except
//! [`load`], which reads the files, the `.env` file beside the first one, `env_file`s and the
//! process environment.

mod emit;
mod interp;
mod map;
mod merge;
mod secrets;
mod values;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use model::StackSpec;

pub use interp::{Variables, parse_dotenv};

use crate::diag::{Diagnostic, Errors};
use yaml::{Kind, Node, Pos};

/// One Compose file's name and text.
#[derive(Debug, Clone)]
pub struct ComposeFile {
    pub path: PathBuf,
    pub text: String,
}

/// A Compose file converted and validated.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The validated stack, exactly what the TOML in `toml` gives.
    pub spec: StackSpec,
    /// The equivalent stack file.
    pub toml: String,
    /// The equivalent attribute set for the NixOS module's `stacks.<name>.settings`.
    pub nix: String,
    /// Keys `docker stack deploy` ignores, and unset variables; each with its place.
    pub warnings: Vec<Diagnostic>,
}

impl Converted {
    /// The names of the ignored keys, for a one-line "Ignoring unsupported options: ..." summary.
    pub fn ignored_keys(&self) -> Vec<String> {
        ignored_names(&self.warnings)
    }
}

/// The warnings that name ignored keys (`"build" in services.web is ignored: ...`): their keys,
/// each once, in order of appearance.
pub fn ignored_names(warnings: &[Diagnostic]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in warnings {
        if w.message.starts_with('"')
            && w.message.contains(" is ignored: ")
            && let Some(name) = w.message.split('"').nth(1)
            && !out.iter().any(|n| n == name)
        {
            out.push(name.to_string());
        }
    }
    out
}

/// Why a conversion failed: every error, plus the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub errors: Errors,
    pub warnings: Vec<Diagnostic>,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.errors.fmt(f)
    }
}

impl std::error::Error for Rejected {}

/// How to convert: where variables and relative paths come from, and whether ignored keys are
/// errors.
pub struct Options<'a> {
    pub vars: Variables,
    /// The folder relative paths are taken from (the first file's folder).
    pub base_dir: PathBuf,
    /// Reads `env_file`s.
    pub read: &'a dyn Fn(&Path) -> std::io::Result<String>,
    /// Keys `docker stack deploy` ignores are errors instead of warnings.
    pub strict: bool,
}

/// Whether a stack file is a Compose file: by extension (`.yml`, `.yaml`; `.toml` is not), or
/// else by content (text that is not valid TOML).
pub fn looks_like_compose(path: &Path, text: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yml" | "yaml") => true,
        Some("toml") => false,
        _ => toml::de::DeTable::parse(text).is_err(),
    }
}

/// Converts Compose files (merged in order) into the stack `name`, validated.
pub fn convert(
    name: &str,
    files: &[ComposeFile],
    opts: &Options<'_>,
) -> Result<Converted, Rejected> {
    let mut errors: Vec<(Pos, String)> = Vec::new();
    let mut warnings: Vec<(Pos, String)> = Vec::new();
    let mut merged: Option<Node> = None;
    let first_file: Arc<Path> = Arc::from(
        files
            .first()
            .map_or(Path::new("compose.yml"), |f| f.path.as_path()),
    );
    for f in files {
        let file: Arc<Path> = Arc::from(f.path.as_path());
        match yaml::parse(&file, &f.text) {
            Err(e) => errors.extend(e),
            Ok(None) => errors.push((
                Pos {
                    file: file.clone(),
                    line: 0,
                    column: 0,
                },
                "the Compose file is empty".to_string(),
            )),
            Ok(Some(mut doc)) => {
                interpolate(&mut doc, "", &opts.vars, &mut errors, &mut warnings);
                merge::normalize(&mut doc);
                match &mut merged {
                    None => merged = Some(doc),
                    Some(base) => merge::merge(base, doc, ""),
                }
            }
        }
    }
    let Some(doc) = merged else {
        return Err(finish_rejected(
            &first_file,
            files,
            errors,
            warnings,
            Vec::new(),
        ));
    };
    let mut mapper = map::Mapper::new(name, &opts.vars, &opts.base_dir, opts.read);
    let out = mapper.document(&doc);
    errors.append(&mut mapper.errors);
    warnings.append(&mut mapper.warnings);
    for (pos, what, why) in std::mem::take(&mut mapper.ignored) {
        if opts.strict {
            errors.push((pos, format!("{what} is refused with --strict ({why})")));
        } else {
            warnings.push((pos, format!("{what} is ignored: {why}")));
        }
    }
    let sources: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
    let header = format!(
        "# stack \"{name}\", converted from {} by `shoal stack convert`\n",
        sources.join(", ")
    );
    let (toml_text, source_map) = emit::toml(&out, &header);
    let nix = emit::nix(&out, &header);
    let validated = crate::parse_stack_named(&first_file, name, &toml_text);
    let mut whole_file = Vec::new();
    let mut late = Vec::new();
    match &validated {
        Ok(_) => {}
        Err(e) => {
            let lines = LineIndex::new(&toml_text);
            for d in e.iter() {
                if d.message.starts_with("stack has no services") {
                    continue; // the mapper names this in Compose terms
                }
                if d.line == 0 {
                    whole_file.push(d.message.clone());
                    continue;
                }
                let offset = lines.offset(d.line, d.column);
                let pos = source_map
                    .find(offset)
                    .cloned()
                    .unwrap_or_else(|| doc.pos.clone());
                // One error per place: what the earlier steps found there explains it.
                if errors.iter().any(|(p, _)| *p == pos) {
                    continue;
                }
                let msg = compose_words(&rename(&d.message, &mapper.renames));
                let msg = fix_line_refs(&msg, &pos, &lines, &source_map);
                late.push((pos, msg));
            }
        }
    }
    errors.append(&mut late);
    match validated {
        Ok(spec) if errors.is_empty() && whole_file.is_empty() => Ok(Converted {
            spec,
            toml: toml_text,
            nix,
            warnings: diagnostics(files, warnings),
        }),
        _ => Err(finish_rejected(
            &first_file,
            files,
            errors,
            warnings,
            whole_file,
        )),
    }
}

fn finish_rejected(
    first: &Path,
    files: &[ComposeFile],
    errors: Vec<(Pos, String)>,
    warnings: Vec<(Pos, String)>,
    whole_file: Vec<String>,
) -> Rejected {
    let mut all: Vec<Diagnostic> = whole_file
        .into_iter()
        .map(|m| Diagnostic::whole_file(first, m))
        .collect();
    all.extend(diagnostics(files, errors));
    Rejected {
        errors: Errors(all),
        warnings: diagnostics(files, warnings),
    }
}

/// Sorted by file (in the order given), line and column; duplicates dropped.
fn diagnostics(files: &[ComposeFile], mut items: Vec<(Pos, String)>) -> Vec<Diagnostic> {
    let order = |p: &Pos| {
        files
            .iter()
            .position(|f| f.path.as_path() == p.file.as_ref())
            .unwrap_or(usize::MAX)
    };
    items.sort_by(|a, b| {
        (order(&a.0), a.0.line, a.0.column, &a.1).cmp(&(order(&b.0), b.0.line, b.0.column, &b.1))
    });
    items.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    items
        .into_iter()
        .map(|(p, message)| Diagnostic {
            file: p.file.to_path_buf(),
            line: p.line,
            column: p.column,
            message,
        })
        .collect()
}

/// Interpolates every scalar value (not keys) of a document.
fn interpolate(
    node: &mut Node,
    path: &str,
    vars: &Variables,
    errors: &mut Vec<(Pos, String)>,
    warnings: &mut Vec<(Pos, String)>,
) {
    match &mut node.kind {
        Kind::Scalar { text, .. } => {
            if !text.contains('$') {
                return;
            }
            match interp::interpolate(text, vars) {
                Ok(r) => {
                    for v in r.unset {
                        warnings.push((
                            node.pos.clone(),
                            format!("variable {v} is not set; using an empty string"),
                        ));
                    }
                    *text = r.text;
                }
                Err(e) => errors.push((node.pos.clone(), format!("{path}: {e}"))),
            }
        }
        Kind::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &format!("{path}[{i}]"), vars, errors, warnings);
            }
        }
        Kind::Map(entries) => {
            for e in entries {
                let child = if path.is_empty() {
                    e.key.clone()
                } else {
                    format!("{path}.{}", e.key)
                };
                interpolate(&mut e.value, &child, vars, errors, warnings);
            }
        }
    }
}

/// Byte offsets of line starts in the written TOML.
struct LineIndex<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    fn new(text: &'t str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    /// The byte offset of a 1-based line and character column.
    fn offset(&self, line: usize, column: usize) -> usize {
        let start = self
            .starts
            .get(line - 1)
            .copied()
            .unwrap_or(self.text.len());
        let rest = &self.text[start..];
        start
            + rest
                .char_indices()
                .nth(column.saturating_sub(1))
                .map_or(rest.len(), |(i, _)| i)
    }
}

/// Replaces stack-file paths in a message by the Compose paths they came from
/// (`services.web.restart.delay` → `services.web.deploy.restart_policy.delay`).
fn rename(msg: &str, renames: &[(String, String)]) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    'outer: while let Some(i) = rest.find("services.") {
        out.push_str(&rest[..i]);
        let here = &rest[i..];
        let best = renames
            .iter()
            .filter(|(toml, _)| {
                here.starts_with(toml.as_str())
                    && here[toml.len()..]
                        .chars()
                        .next()
                        .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-'))
            })
            .max_by_key(|(toml, _)| toml.len());
        if let Some((toml, compose)) = best {
            out.push_str(compose);
            rest = &here[toml.len()..];
            continue 'outer;
        }
        out.push_str("services.");
        rest = &here["services.".len()..];
    }
    out.push_str(rest);
    out
}

/// The validator's type names in YAML's words.
fn compose_words(msg: &str) -> String {
    msg.replace("expected an array", "expected a sequence")
        .replace("expected a table", "expected a mapping")
        .replace("found array", "found a sequence")
        .replace("found table", "found a mapping")
        .replace("found string", "found a string")
        .replace("found integer", "found a number")
        .replace("found float", "found a number")
        .replace("found boolean", "found a boolean")
}

/// The validator names earlier uses by their line in the TOML ("(line 12)"); name the place
/// in the Compose file instead.
fn fix_line_refs(msg: &str, at: &Pos, lines: &LineIndex<'_>, map: &emit::SourceMap) -> String {
    let Some(i) = msg.rfind(" (line ") else {
        return msg.to_string();
    };
    let tail = &msg[i + 7..];
    let Some(end) = tail.find(')') else {
        return msg.to_string();
    };
    let Ok(line) = tail[..end].parse::<usize>() else {
        return msg.to_string();
    };
    let offset = lines.offset(line, 1);
    // The first mark on that line is the key or value the validator means.
    let next_line = lines.offset(line + 1, 1);
    let pos = map
        .marks
        .iter()
        .find(|(o, _)| *o >= offset && *o < next_line)
        .map(|(_, p)| p);
    let Some(pos) = pos else {
        return msg.to_string();
    };
    let place = if pos.file == at.file {
        format!("line {}", pos.line)
    } else {
        format!("{}:{}", pos.file.display(), pos.line)
    };
    format!("{} ({place}){}", &msg[..i], &tail[end + 1..])
}

/// Converts Compose files already read: variables from the process environment and from a
/// `.env` file beside the first file (the environment wins), relative paths from the first
/// file's folder (the current folder for standard input, `-`).
pub fn load(name: &str, files: &[ComposeFile], strict: bool) -> Result<Converted, Rejected> {
    let reject = |d: Diagnostic| Rejected {
        errors: Errors(vec![d]),
        warnings: Vec::new(),
    };
    let first = files
        .first()
        .map(|f| f.path.as_path())
        .filter(|p| *p != Path::new("-"))
        .unwrap_or(Path::new("./-"));
    let dir = first
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base_dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut vars = Variables {
        env: std::env::vars().collect::<BTreeMap<_, _>>(),
        dotenv: BTreeMap::new(),
    };
    let dotenv = dir.join(".env");
    match std::fs::read_to_string(&dotenv) {
        Ok(text) => match parse_dotenv(&text) {
            Ok(v) => vars.dotenv = v,
            Err(errs) => {
                return Err(Rejected {
                    errors: Errors(
                        errs.into_iter()
                            .map(|(line, message)| Diagnostic {
                                file: dotenv.clone(),
                                line,
                                column: 1,
                                message,
                            })
                            .collect(),
                    ),
                    warnings: Vec::new(),
                });
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(reject(Diagnostic::whole_file(
                &dotenv,
                format!("failed to read: {e}"),
            )));
        }
    }
    let read = |p: &Path| std::fs::read_to_string(p);
    convert(
        name,
        files,
        &Options {
            vars,
            base_dir,
            read: &read,
            strict,
        },
    )
}

/// The stack name for a Compose file validated on its own: the file stem when it is a valid
/// stack name (`docker-stack.yml` → `docker-stack`), else `stack`.
pub fn default_stack_name(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| crate::units::validate_name("stack", s).is_ok())
        .unwrap_or("stack")
        .to_string()
}
