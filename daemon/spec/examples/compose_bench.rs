//! Converts and validates a Compose file of 200 services (most mapped keys used, a chain of
//! `depends_on`, anchors, interpolation, an override file) and prints how long it takes.
//!
//! `cargo run -p spec --release --example compose_bench [SERVICES] [ROUNDS]`
//!
//! A benchmark, not a test: it prints numbers and does not judge them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use spec::compose::{self, ComposeFile, Options, Variables};

fn compose_file(services: usize) -> String {
    let mut s = String::from(
        "version: \"3.8\"\nx-defaults: &defaults\n  image: registry.example.com/app:${TAG:-1.0}\n  stop_grace_period: 5s\n  environment: &env\n    LOG_LEVEL: info\nservices:\n",
    );
    for i in 0..services {
        writeln!(
            s,
            r#"  svc{i}:
    <<: *defaults
    command: ["serve", "--id", "{i}"]
    environment:
      <<: *env
      INDEX: "{i}"
      REGION: ${{REGION}}
    ports:
      - "{}:80"
    volumes:
      - data{i}:/data
      - ./conf:/etc/app:ro
    labels:
      com.example.index: "{i}"
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://127.0.0.1/"]
      interval: 5s
    depends_on: [{}]
    extra_hosts: ["db.local:10.0.0.5"]
    dns: [10.0.0.2]
    cap_drop: [NET_RAW]
    init: true
    deploy:
      replicas: 3
      placement:
        constraints: [node.role == worker, node.labels.zone != c]
        preferences: [{{spread: node.labels.zone}}]
        max_replicas_per_node: 2
      resources:
        limits: {{cpus: "0.5", memory: 256M}}
      restart_policy: {{condition: on-failure, delay: 5s, max_attempts: 3}}
      update_config: {{parallelism: 1, delay: 10s, order: start-first}}
      labels: [com.example.tier=backend]"#,
            10000 + i,
            if i == 0 {
                String::new()
            } else {
                format!("svc{}", i - 1)
            }
        )
        .unwrap();
    }
    s.push_str("volumes:\n");
    for i in 0..services {
        writeln!(s, "  data{i}:").unwrap();
    }
    s
}

fn main() {
    let mut args = std::env::args().skip(1);
    let services: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let files = vec![
        ComposeFile {
            path: PathBuf::from("docker-stack.yml"),
            text: compose_file(services),
        },
        ComposeFile {
            path: PathBuf::from("docker-stack.prod.yml"),
            text: "services:\n  svc0:\n    deploy:\n      replicas: 5\n".to_string(),
        },
    ];
    let read = |_: &Path| -> std::io::Result<String> { Ok(String::new()) };
    let opts = Options {
        vars: Variables {
            env: BTreeMap::from([("REGION".to_string(), "eu".to_string())]),
            dotenv: BTreeMap::new(),
        },
        base_dir: PathBuf::from("/srv/app"),
        read: &read,
        strict: false,
    };
    let bytes: usize = files.iter().map(|f| f.text.len()).sum();
    let mut times = Vec::with_capacity(rounds);
    let mut converted = None;
    for _ in 0..rounds {
        let start = Instant::now();
        let c = compose::convert("bench", &files, &opts).expect("the generated file is valid");
        times.push(start.elapsed());
        converted = Some(c);
    }
    let c = converted.expect("at least one round");
    times.sort();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!(
        "compose convert+validate: {services} services, {} KiB of YAML -> {} KiB of TOML",
        bytes / 1024,
        c.toml.len() / 1024
    );
    println!(
        "  {rounds} rounds: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    );
    assert_eq!(c.spec.services.len(), services);
}
