//! The Compose corpus: every `tests/compose/*.yml` is converted and checked against its
//! `.out` file (the diagnostics, or the stack file it converts to). Files named `NAME.yml` with
//! `NAME.override.yml` beside them are merged in that order, as `-c NAME.yml -c
//! NAME.override.yml` would. Variables come from a fixed environment (below) plus
//! `tests/compose/.env`; relative paths are taken from `/srv/app`, which maps to the corpus
//! folder for `env_file`s.
//!
//! Every converted stack is also written to a TOML file and loaded back with the stack loader:
//! the services must be the same as the ones the Compose file gave. The `.out` file of a case that
//! converts holds the TOML and the Nix attribute set (`stack convert --nix`).
//!
//! `UPDATE_EXPECT=1 cargo test -p spec --test compose_corpus` rewrites the `.out` files; read
//! the diff before committing it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use spec::compose::{self, ComposeFile, Options, Variables};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose")
}

fn vars() -> Variables {
    let env: BTreeMap<String, String> = [
        ("TAG", "1.27"),
        ("REPLICAS", "3"),
        ("EMPTY", ""),
        ("HOME", "/home/user"),
        ("FROM_SHELL", "shell-value"),
        ("SHARED", "from-shell"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let dotenv =
        compose::parse_dotenv(&std::fs::read_to_string(corpus().join(".env")).unwrap()).unwrap();
    Variables { env, dotenv }
}

fn render(name: &str, files: &[ComposeFile], strict: bool) -> (String, Option<compose::Converted>) {
    let dir = corpus();
    let read = move |p: &Path| {
        let rel = p
            .strip_prefix("/srv/app")
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::NotFound, "outside the corpus"))?;
        std::fs::read_to_string(dir.join(rel))
    };
    let opts = Options {
        vars: vars(),
        base_dir: PathBuf::from("/srv/app"),
        read: &read,
        strict,
    };
    let mut out = String::new();
    match compose::convert(name, files, &opts) {
        Ok(c) => {
            out.push_str(&format!("ok: {} services\n", c.spec.services.len()));
            for w in &c.warnings {
                out.push_str(&format!("warning: {w}\n"));
            }
            out.push_str("--- toml\n");
            out.push_str(&c.toml);
            out.push_str("--- nix\n");
            out.push_str(&c.nix);
            (out, Some(c))
        }
        Err(r) => {
            for e in r.errors.iter() {
                out.push_str(&format!("error: {e}\n"));
            }
            for w in &r.warnings {
                out.push_str(&format!("warning: {w}\n"));
            }
            (out, None)
        }
    }
}

fn cases() -> Vec<(String, Vec<PathBuf>)> {
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(corpus()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if !file.ends_with(".yml") || file.ends_with(".override.yml") {
            continue;
        }
        let stem = file.trim_end_matches(".yml").to_string();
        let mut files = vec![path.clone()];
        let over = corpus().join(format!("{stem}.override.yml"));
        if over.exists() {
            files.push(over);
        }
        cases.push((stem, files));
    }
    cases.sort();
    cases
}

#[test]
fn every_compose_example_gives_its_expected_output() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    let cases = cases();
    assert!(cases.len() >= 40, "the corpus has {} cases", cases.len());
    for (stem, paths) in &cases {
        let files: Vec<ComposeFile> = paths
            .iter()
            .map(|p| ComposeFile {
                path: PathBuf::from(p.file_name().unwrap()),
                text: std::fs::read_to_string(p).unwrap(),
            })
            .collect();
        let strict = stem.starts_with("strict-");
        let (got, converted) = render("shop", &files, strict);
        let expect_path = corpus().join(format!("{stem}.out"));
        if update {
            std::fs::write(&expect_path, &got).unwrap();
        } else {
            let want = std::fs::read_to_string(&expect_path).unwrap_or_default();
            if want != got {
                failures.push(format!("{stem}:\n--- want\n{want}--- got\n{got}"));
            }
        }
        // Cases named ok-* must convert; err-* and strict-* must not.
        assert_eq!(
            converted.is_some(),
            stem.starts_with("ok-"),
            "{stem}: {got}"
        );
        if let Some(c) = converted {
            // The TOML stack file gives the same services as the Compose file.
            let tmp = tempfile::tempdir().unwrap();
            let toml_path = tmp.path().join("shop.toml");
            std::fs::write(&toml_path, &c.toml).unwrap();
            // Parsed, not loaded: loading would also read the secret files the stack names.
            let loaded =
                spec::parse_stack(&toml_path, &c.toml).unwrap_or_else(|e| panic!("{stem}: {e}"));
            assert_eq!(loaded, c.spec, "{stem}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_compose_example_gives_the_services_of_the_toml_example() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let path = configs.join("compose/shop.yml");
    let files = [ComposeFile {
        path: path.clone(),
        text: std::fs::read_to_string(&path).unwrap(),
    }];
    let read = |p: &Path| std::fs::read_to_string(p);
    let opts = Options {
        vars: Variables::default(),
        base_dir: configs.join("compose"),
        read: &read,
        strict: false,
    };
    let converted = compose::convert("shop", &files, &opts).unwrap_or_else(|e| panic!("{e}"));
    let toml = spec::load_stack_file(&configs.join("stacks/shop.toml")).unwrap();
    assert_eq!(converted.spec, toml.spec);
    assert_eq!(converted.ignored_keys(), ["build"]);
    // --strict refuses what docker stack deploy would ignore, with its place.
    let strict = Options {
        strict: true,
        ..opts
    };
    let err = compose::convert("shop", &files, &strict).unwrap_err();
    assert_eq!(err.errors.len(), 1, "{err}");
    let d = &err.errors.0[0];
    assert_eq!((d.line, d.column), (49, 5), "{d}");
    assert!(d.message.contains("\"build\" in services.api"), "{d}");
}

#[test]
fn compose_files_are_told_from_stack_files_by_extension_or_content() {
    let yaml = "services:\n  web:\n    image: web:1\n";
    let toml = "[services.web]\nimage = \"web:1\"\n";
    assert!(compose::looks_like_compose(
        Path::new("docker-stack.yml"),
        ""
    ));
    assert!(compose::looks_like_compose(Path::new("compose.yaml"), ""));
    assert!(!compose::looks_like_compose(Path::new("shop.toml"), yaml));
    assert!(compose::looks_like_compose(Path::new("stack"), yaml));
    assert!(!compose::looks_like_compose(Path::new("stack"), toml));
    assert!(!compose::looks_like_compose(Path::new("/dev/stdin"), toml));
}

/// Bad input never panics: every prefix of every corpus file (cut at every third character)
/// converts or fails with diagnostics that have a place.
#[test]
fn truncated_compose_files_never_panic() {
    let mut runs = 0;
    for (_, paths) in cases() {
        let text = std::fs::read_to_string(&paths[0]).unwrap();
        let cuts: Vec<usize> = text.char_indices().map(|(i, _)| i).step_by(3).collect();
        for cut in cuts {
            let files = [ComposeFile {
                path: PathBuf::from("cut.yml"),
                text: text[..cut].to_string(),
            }];
            let (out, _) = render("shop", &files, false);
            assert!(!out.is_empty());
            runs += 1;
        }
    }
    assert!(runs > 1000, "{runs} runs");
}
