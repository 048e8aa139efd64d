//! Stack files given on the command line: a shoal TOML stack file is sent as it is; Compose
//! files are converted (and validated) here with `spec::compose`, so that their problems name
//! the YAML file's lines and the daemon only ever receives TOML.

use std::path::{Path, PathBuf};

use std::io::Read;

use anyhow::{Context, Result, bail};
use spec::compose::ComposeFile;

/// Reads the files named on the command line; `-` is standard input.
fn read(paths: &[PathBuf]) -> Result<Vec<ComposeFile>> {
    let mut files = Vec::new();
    for p in paths {
        let text = if p.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("failed to read the stack file from standard input")?;
            text
        } else {
            std::fs::read_to_string(p)
                .with_context(|| format!("failed to read stack file {}", p.display()))?
        };
        files.push(ComposeFile {
            path: p.clone(),
            text,
        });
    }
    Ok(files)
}

/// The stack file text to send for `stack deploy -c FILE...`: a TOML stack file as it is, or
/// Compose files converted (and validated here, so that problems name the YAML file's lines).
/// Each file is read once, so `-c -` and `-c <(docker compose config)` work.
pub(crate) fn stack_text(paths: &[PathBuf], name: &str, strict: bool) -> Result<String> {
    let mut files = read(paths)?;
    let compose = files
        .iter()
        .any(|f| spec::compose::looks_like_compose(&f.path, &f.text));
    if !compose {
        if files.len() > 1 {
            bail!(
                "several -c files are merged only for Compose files; a shoal stack is one TOML file"
            );
        }
        return Ok(files.remove(0).text);
    }
    Ok(load_compose(name, &files, strict)?.toml)
}

/// The contents of the `file` secrets and configs of the stack `text` (deployed from
/// `paths`), read relative to the first stack file, as the daemon cannot read them itself.
/// Empty for a stack without any (or with problems: the daemon reports those).
pub(crate) fn secret_files(
    paths: &[PathBuf],
    name: &str,
    text: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let base = paths
        .first()
        .filter(|p| p.as_os_str() != "-")
        .cloned()
        .unwrap_or_else(|| PathBuf::from("stdin"));
    let Ok(mut stack) = spec::parse_stack_named(&base, name, text) else {
        return Ok(Default::default());
    };
    if spec::secrets::stack_file_sources(&stack).is_empty() {
        return Ok(Default::default());
    }
    // From standard input, relative paths are taken from the current directory.
    let anchor = if base == Path::new("stdin") {
        PathBuf::from("./stdin")
    } else {
        base.clone()
    };
    if let Err(e) = spec::secrets::read_stack_files(
        &base,
        &mut stack,
        &mut spec::secrets::read_from_disk(&anchor),
    ) {
        eprintln!("{e}");
        bail!(
            "cannot read the secret and config files of {}",
            base.display()
        );
    }
    Ok(spec::secrets::stack_file_contents(&stack)
        .into_iter()
        .map(|(k, v)| (k, v.expose().to_vec()))
        .collect())
}

/// Converts Compose files, printing warnings as docker stack deploy does (plus each place).
pub(crate) fn load_compose(
    name: &str,
    files: &[ComposeFile],
    strict: bool,
) -> Result<spec::compose::Converted> {
    match spec::compose::load(name, files, strict) {
        Ok(c) => {
            print_warnings(&c.warnings);
            Ok(c)
        }
        Err(r) => {
            print_warnings(&r.warnings);
            eprintln!("{}", r.errors);
            bail!(
                "{} problem{} in {}",
                r.errors.len(),
                if r.errors.len() == 1 { "" } else { "s" },
                files
                    .iter()
                    .map(|f| f.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    }
}

pub(crate) fn print_warnings(warnings: &[spec::Diagnostic]) {
    let ignored = spec::compose::ignored_names(warnings);
    if !ignored.is_empty() {
        eprintln!("Ignoring unsupported options: {}", ignored.join(", "));
    }
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

/// `stack convert`: Compose files to a TOML stack file or a NixOS attribute set.
pub(crate) fn convert(
    files: &[PathBuf],
    name: Option<&str>,
    output: Option<&Path>,
    nix: bool,
    strict: bool,
) -> Result<()> {
    let name = match name {
        Some(n) => n.to_string(),
        None => spec::compose::default_stack_name(&files[0]),
    };
    let converted = load_compose(&name, &read(files)?, strict)?;
    let text = if nix { converted.nix } else { converted.toml };
    match output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("failed to write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}
