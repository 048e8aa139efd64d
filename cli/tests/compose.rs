//! `shoal stack validate` and `shoal stack convert` on Compose files: the real binary, no daemon.

use std::path::Path;
use std::process::{Command, Output};

fn shoal(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .current_dir(dir)
        .env_remove("TAG")
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")
        .output()
        .expect("run shoal")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const STACK: &str = "services:\n  web:\n    image: nginx:${TAG}\n    build: .\n    ports: ['8080:80']\n    volumes: ['./html:/usr/share/nginx/html:ro']\n";

#[test]
fn validate_reads_dotenv_warns_about_ignored_keys_and_strict_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("docker-stack.yml"), STACK).unwrap();
    std::fs::write(dir.path().join(".env"), "TAG=1.27\n").unwrap();

    let out = shoal(dir.path(), &["stack", "validate", "docker-stack.yml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "docker-stack.yml: ok (1 services)\n");
    let err = text(&out.stderr);
    assert!(
        err.starts_with("Ignoring unsupported options: build\n"),
        "{err}"
    );
    assert!(
        err.contains("docker-stack.yml:4:5: \"build\" in services.web is ignored"),
        "{err}"
    );

    let out = shoal(
        dir.path(),
        &["stack", "validate", "--strict", "docker-stack.yml"],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("docker-stack.yml:4:5: \"build\" in services.web is refused with --strict"),
        "{err}"
    );
    assert!(err.contains("1 of 1 stack files are invalid"), "{err}");
}

#[test]
fn convert_prints_toml_and_nix_and_writes_a_file_that_validates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("docker-stack.yml"), STACK).unwrap();
    std::fs::write(dir.path().join(".env"), "TAG=1.27\n").unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();

    let out = shoal(dir.path(), &["stack", "convert", "docker-stack.yml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = text(&out.stdout);
    assert!(
        toml.contains("[services.web]\nimage = \"nginx:1.27\"\n"),
        "{toml}"
    );
    // A relative bind source is made absolute from the Compose file's folder.
    let bind = format!("\"{}/html:/usr/share/nginx/html:ro\"", base.display());
    assert!(toml.contains(&bind), "{toml}");

    let out = shoal(
        dir.path(),
        &["stack", "convert", "--nix", "docker-stack.yml"],
    );
    assert!(out.status.success());
    let nix = text(&out.stdout);
    assert!(
        nix.contains("    web = {\n      image = \"nginx:1.27\";\n"),
        "{nix}"
    );

    let out = shoal(
        dir.path(),
        &[
            "stack",
            "convert",
            "docker-stack.yml",
            "--name",
            "shop",
            "-o",
            "shop.toml",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let out = shoal(dir.path(), &["stack", "validate", "shop.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "shop.toml: ok (1 services)\n");
}

#[test]
fn a_bad_compose_file_fails_with_every_problem_and_its_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("stack.yaml"),
        "services:\n  web:\n    image: web:1\n    deploy:\n      replicas: two\n    secrets:\n      - s\n  db:\n    image: ${DB_IMAGE:?set DB_IMAGE}\n",
    )
    .unwrap();
    let out = shoal(dir.path(), &["stack", "convert", "stack.yaml"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing is printed for a bad file");
    let err = text(&out.stderr);
    for want in [
        "stack.yaml:5:17: services.web.deploy.replicas: expected an integer, found a string",
        "stack.yaml:7:9: services.web.secrets[0]: secret \"s\" is not declared",
        "stack.yaml:9:12: services.db.image: required variable DB_IMAGE is missing a value: set DB_IMAGE",
        "3 problems in stack.yaml",
    ] {
        assert!(err.contains(want), "{want} in:\n{err}");
    }
}

#[test]
fn convert_reads_a_compose_file_from_standard_input() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["stack", "convert", "--name", "shop", "-"])
        .current_dir(dir.path())
        .env("TAG", "1.27")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"services:\n  web:\n    image: nginx:${TAG}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = text(&out.stdout);
    assert!(
        toml.contains("[services.web]\nimage = \"nginx:1.27\"\n"),
        "{toml}"
    );
}
