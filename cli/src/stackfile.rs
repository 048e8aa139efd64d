//! Stack files given on the command line: a shoal TOML stack file is sent as it is; Compose
//! files are converted (and validated) here with `spec::compose`, so that their problems name
//! the YAML file's lines and the daemon only ever receives TOML.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The stack file text to send for `stack deploy -c FILE...`: a TOML stack file as it is, or
/// Compose files converted (and validated here, so that problems name the YAML file's lines).
pub(crate) fn stack_text(files: &[PathBuf], name: &str, strict: bool) -> Result<String> {
    let mut texts = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("failed to read stack file {}", f.display()))?;
        texts.push(text);
    }
    let compose = files
        .iter()
        .zip(&texts)
        .any(|(f, t)| spec::compose::looks_like_compose(f, t));
    if !compose {
        if files.len() > 1 {
            bail!(
                "several -c files are merged only for Compose files; a shoal stack is one TOML file"
            );
        }
        return Ok(texts.remove(0));
    }
    Ok(load_compose(name, files, strict)?.toml)
}

/// Converts Compose files, printing warnings as docker stack deploy does (plus each place).
pub(crate) fn load_compose(
    name: &str,
    files: &[PathBuf],
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
                    .map(|f| f.display().to_string())
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
    let converted = load_compose(&name, files, strict)?;
    let text = if nix { converted.nix } else { converted.toml };
    match output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("failed to write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}
