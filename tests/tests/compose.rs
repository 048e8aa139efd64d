//! Compose files deployed through the real CLI on a real node (containerd, runc, D-Bus): a
//! Swarm-style `docker-stack.yml` with an override file, a `.env` file, YAML anchors, a named
//! volume shared by two services, a file secret, two networks, a published port, and keys
//! docker stack deploy ignores.

use std::time::Duration;

use shoal_tests::images;
use shoal_tests::node::{Node, free_port, http_get};

const LONG: Duration = Duration::from_secs(120);

/// Runs until SIGTERM, then exits 0 promptly.
const SLEEPER: &str = "trap 'exit 0' TERM; while true; do sleep 1 & wait $$!; done";

#[test]
fn a_swarm_style_compose_stack_deploys_with_its_override_env_and_named_volume() {
    let node = Node::start();
    let archive = node.dir.path().join("bb.tar");
    images::write_oci_archive(&archive, true, "example.org/bb:1");
    let port = free_port();
    let app = node.dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    // Variables from a .env file beside the first file.
    std::fs::write(
        app.join(".env"),
        format!("IMAGE=oci-archive:{}\nPORT={port}\n", archive.display()),
    )
    .unwrap();
    let base = app.join("docker-stack.yml");
    std::fs::write(
        &base,
        format!(
            r#"version: "3.8"
x-defaults: &defaults
  image: ${{IMAGE}}
  stop_grace_period: 2s
services:
  web:
    <<: *defaults
    build: ./web
    command: ["sh", "-c", "while [ ! -s /content/index.html ]; do sleep 0.2; done; exec httpd -f -p 80 -h /content"]
    ports:
      - "${{PORT}}:80"
    volumes:
      - content:/content:ro
    networks: [front, back]
    deploy:
      replicas: 1
  writer:
    <<: *defaults
    command: ["sh", "-c", "echo hello from $$GREETING and $$(cat /run/secrets/signature) > /content/index.html; {SLEEPER}"]
    environment:
      - GREETING=compose
    secrets:
      - signature
    networks:
      back: {{}}
    volumes:
      - type: volume
        source: content
        target: /content
    deploy:
      mode: global
      restart_policy:
        condition: on-failure
volumes:
  content:
secrets:
  signature:
    file: ./signature.txt
networks:
  front:
  back:
    driver: overlay
"#
        ),
    )
    .unwrap();
    // A file secret beside the Compose file: read by the CLI, mounted into the writer.
    std::fs::write(app.join("signature.txt"), "the secret sauce\n").unwrap();
    let prod = app.join("docker-stack.prod.yml");
    std::fs::write(&prod, "services:\n  web:\n    deploy:\n      replicas: 2\n").unwrap();

    let out = node.shoal(&[
        "stack",
        "deploy",
        "-c",
        base.to_str().unwrap(),
        "-c",
        prod.to_str().unwrap(),
        "shop",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deploy failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("shop_web") && stdout.contains("shop_writer"),
        "deploy reports both services: {stdout}"
    );
    // The ignored key is named, with its place, as docker stack deploy names it.
    assert!(
        stderr.contains("Ignoring unsupported options: build"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:8:5:", base.display())),
        "the warning names file:line:col: {stderr}"
    );

    // The override's replica count, the global writer, and both on the shared named volume.
    node.wait_for("2 web tasks and the writer running", LONG, |n| {
        n.running("shop_web").len() == 2 && n.running("shop_writer").len() == 1
    });
    let services = node.services();
    let web = services.iter().find(|s| s.name == "shop_web").unwrap();
    assert_eq!(web.mode, "replicated");
    let writer = services.iter().find(|s| s.name == "shop_writer").unwrap();
    assert_eq!(writer.mode, "global");
    // The writer's file, written to the volume, is served by web through the published port:
    // the volume is shared (named "shop_content", as Swarm names it) and the $$ escape reached
    // the container's shell as a single $.
    let mut body = None;
    node.wait_for("the page written by the writer", LONG, |_| {
        body = http_get(port);
        body.is_some()
    });
    assert_eq!(
        body.unwrap().trim(),
        "hello from compose and the secret sauce"
    );
    // The secret is the stack's (named as Swarm names it), and never shown.
    let secrets = node.shoal_ok(&["secret", "ls"]);
    assert!(secrets.contains("shop_signature"), "{secrets}");
    let writer_inspect = node.shoal_ok(&["service", "inspect", "shop_writer"]);
    assert!(!writer_inspect.contains("secret sauce"), "{writer_inspect}");
    let inspect = node.shoal_ok(&["service", "inspect", "shop_web"]);
    assert!(inspect.contains("shop_content"), "{inspect}");
    // The two networks exist under the stack's name, and the web tasks are on both.
    let nets = node.shoal_ok(&["network", "ls"]);
    assert!(
        nets.contains("shop_front") && nets.contains("shop_back"),
        "{nets}"
    );
    assert!(
        inspect.contains("shop_front") && inspect.contains("shop_back"),
        "{inspect}"
    );

    // A bad file is refused with every problem at its place, and nothing changes.
    let bad = app.join("bad.yml");
    std::fs::write(
        &bad,
        "services:\n  web:\n    image: x:1\n    networks: [front]\n    secrets:\n      - s\n",
    )
    .unwrap();
    let out = node.shoal(&["stack", "deploy", "-c", bad.to_str().unwrap(), "shop"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for want in [
        format!(
            "{}:4:5: services.web.networks: network \"front\" is not declared",
            bad.display()
        ),
        format!(
            "{}:6:9: services.web.secrets[0]: secret \"s\" is not declared",
            bad.display()
        ),
    ] {
        assert!(stderr.contains(&want), "{want} in:\n{stderr}");
    }
    assert_eq!(
        node.running("shop_web").len(),
        2,
        "the bad file changed nothing"
    );

    // convert gives the TOML that deploys the same services: redeploying it changes nothing.
    let toml = app.join("shop.toml");
    node.shoal_ok(&[
        "stack",
        "convert",
        base.to_str().unwrap(),
        prod.to_str().unwrap(),
        "--name",
        "shop",
        "-o",
        toml.to_str().unwrap(),
    ]);
    let out = node.shoal_ok(&[
        "stack",
        "deploy",
        "-c",
        toml.to_str().unwrap(),
        "--detach",
        "shop",
    ]);
    assert!(
        !out.contains("Updating") && !out.contains("Creating") && !out.contains("Removing"),
        "the converted TOML is the same stack: {out}"
    );

    node.shoal_ok(&["stack", "rm", "shop"]);
    node.wait_for("stack removed", LONG, |n| {
        n.services().is_empty() && n.container_tasks().is_empty()
    });
}
