//! Unit tests: good and bad stack and cluster files, the value parsers, and the examples in
//! `configs/`.

use std::path::{Path, PathBuf};

use model::{
    Availability, ClusterSettings, FailureAction, MountKind, NodeRole, Protocol, PublishMode,
    RestartCondition, RestartPolicy, ServiceMode, ServiceSpec, UpdateConfig, UpdateOrder,
};

use crate::units::*;
use crate::*;

fn stack(text: &str) -> Result<model::StackSpec, Errors> {
    parse_stack(Path::new("/etc/shoal/stacks/shop.toml"), text)
}

fn stack_ok(text: &str) -> model::StackSpec {
    match stack(text) {
        Ok(s) => s,
        Err(e) => panic!("expected a valid stack, got:\n{e}"),
    }
}

/// Every diagnostic as `line:col: message`.
fn stack_errs(text: &str) -> Vec<String> {
    match stack(text) {
        Ok(s) => panic!("expected errors, got a valid stack: {s:?}"),
        Err(e) => e
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .collect(),
    }
}

fn svc<'a>(s: &'a model::StackSpec, name: &str) -> &'a ServiceSpec {
    s.services
        .iter()
        .find(|x| x.name == name)
        .unwrap_or_else(|| panic!("no service {name} in {:?}", s.services))
}

fn cluster(text: &str) -> Result<ClusterConfig, Errors> {
    parse_cluster(Path::new("/etc/shoal/cluster.toml"), text)
}

fn cluster_errs(text: &str) -> Vec<String> {
    match cluster(text) {
        Ok(c) => panic!("expected errors, got a valid cluster file: {c:?}"),
        Err(e) => e
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
            .collect(),
    }
}

fn assert_has(errs: &[String], needle: &str) {
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "no error contains {needle:?}; errors:\n{}",
        errs.join("\n")
    );
}

// ---------------------------------------------------------------- stack files: good input

#[test]
fn minimal_service_gets_every_default() {
    let s = stack_ok("[services.web]\nimage = \"nginx\"\n");
    assert_eq!(s.name, "shop");
    assert_eq!(s.services.len(), 1);
    let web = &s.services[0];
    assert_eq!(web.name, "shop_web");
    assert_eq!(web.stack.as_deref(), Some("shop"));
    assert_eq!(web.mode, ServiceMode::Replicated { replicas: 1 });
    assert_eq!(web.task.image, "nginx");
    assert_eq!(web.task.stop_signal, "SIGTERM");
    assert_eq!(web.task.stop_grace_period, 10_000);
    assert_eq!(web.task.command, None);
    assert_eq!(web.task.entrypoint, None);
    assert!(web.ports.is_empty());
    assert!(web.task.mounts.is_empty());
    assert!(!web.task.read_only);
    assert_eq!(web.restart, RestartPolicy::default());
    assert_eq!(web.restart.delay, 100);
    assert_eq!(web.restart.max_delay, 30_000);
    assert_eq!(web.update, UpdateConfig::default());
    assert_eq!(web.rollback, UpdateConfig::default());
    // Every service of a stack is on the stack's default network unless it names others.
    assert_eq!(web.networks, vec!["shop_default".to_string()]);
    assert_eq!(
        s.networks.keys().collect::<Vec<_>>(),
        vec!["default"],
        "the default network is declared implicitly"
    );
}

#[test]
fn full_service_is_parsed() {
    let s = stack_ok(
        r#"
[services.api]
image = "localhost:5000/shop/api:1.4"
replicas = 3
command = ["serve", "--port", "8080"]
entrypoint = "/bin/sh -c 'exec \"$0\" \"$@\"'"
env = { LOG = "debug", WORKERS = 4, DEBUG = true }
working_dir = "/srv"
user = 1000
hostname = "api.local"
labels = { tier = "backend" }
container_labels = ["com.example.role=api"]
ports = ["8080:80", "53:53/udp", { published = 9000, target = 9090, protocol = "udp", mode = "host" }]
volumes = ["/srv/data:/data:ro", "cache:/cache", { type = "tmpfs", target = "/tmp", tmpfs = { size = "64M" } }]
stop_signal = "quit"
stop_grace_period = "1m30s"
read_only = true
resources = { cpus = 0.5, memory = "256M", pids = 100 }

[services.api.restart]
condition = "on-failure"
delay = "2s"
max_delay = "1m"
max_attempts = 5
window = "30s"

[services.api.update]
parallelism = 2
delay = "5s"
order = "start-first"
failure_action = "rollback"
monitor = "10s"
max_failure_ratio = 0.25

[services.api.rollback]
parallelism = 0
order = "stop-first"
failure_action = "continue"
"#,
    );
    let api = svc(&s, "shop_api");
    assert_eq!(api.mode, ServiceMode::Replicated { replicas: 3 });
    assert_eq!(api.task.image, "localhost:5000/shop/api:1.4");
    assert_eq!(
        api.task.command,
        Some(vec!["serve".into(), "--port".into(), "8080".into()])
    );
    assert_eq!(
        api.task.entrypoint,
        Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "exec \"$0\" \"$@\"".into()
        ])
    );
    assert_eq!(api.task.env["LOG"], "debug");
    assert_eq!(api.task.env["WORKERS"], "4");
    assert_eq!(api.task.env["DEBUG"], "true");
    assert_eq!(api.task.workdir.as_deref(), Some("/srv"));
    assert_eq!(api.task.user.as_deref(), Some("1000"));
    assert_eq!(api.task.hostname.as_deref(), Some("api.local"));
    assert_eq!(api.labels["tier"], "backend");
    assert_eq!(api.task.labels["com.example.role"], "api");
    assert_eq!(api.ports.len(), 3);
    assert_eq!(api.ports[0].display(), "*:8080->80/tcp");
    assert_eq!(api.ports[0].mode, PublishMode::Ingress);
    assert_eq!(api.ports[1].protocol, Protocol::Udp);
    assert_eq!((api.ports[2].published, api.ports[2].target), (9000, 9090));
    assert_eq!(api.ports[2].mode, PublishMode::Host);
    assert_eq!(api.ports[2].protocol, Protocol::Udp);
    let m = &api.task.mounts;
    assert_eq!(m.len(), 3);
    assert_eq!(
        (
            m[0].kind.clone(),
            m[0].source.as_str(),
            m[0].target.as_str(),
            m[0].read_only
        ),
        (MountKind::Bind, "/srv/data", "/data", true)
    );
    assert_eq!(
        (m[1].kind.clone(), m[1].source.as_str(), m[1].read_only),
        (MountKind::Volume, "cache", false)
    );
    assert_eq!(m[2].kind, MountKind::Tmpfs);
    assert_eq!(m[2].size, Some(64 << 20));
    assert_eq!(api.task.stop_signal, "SIGQUIT");
    assert_eq!(api.task.stop_grace_period, 90_000);
    assert!(api.task.read_only);
    assert_eq!(api.task.resources.nano_cpus, Some(500_000_000));
    assert_eq!(api.task.resources.memory_bytes, Some(256 << 20));
    assert_eq!(api.task.resources.pids, Some(100));
    assert_eq!(
        api.restart,
        RestartPolicy {
            condition: RestartCondition::OnFailure,
            delay: 2_000,
            max_delay: 60_000,
            max_attempts: Some(5),
            window: 30_000,
        }
    );
    assert_eq!(
        api.update,
        UpdateConfig {
            parallelism: 2,
            delay: 5_000,
            order: UpdateOrder::StartFirst,
            failure_action: FailureAction::Rollback,
            monitor: 10_000,
            max_failure_ratio_permille: 250,
        }
    );
    assert_eq!(api.rollback.parallelism, 0);
    assert_eq!(api.rollback.failure_action, FailureAction::Continue);
    assert_eq!(
        api.rollback.monitor, 5_000,
        "unset fields keep their default"
    );
}

#[test]
fn global_mode_and_services_in_file_order() {
    let s = stack_ok(
        "[services.zeta]\nimage = \"a\"\nmode = \"global\"\n[services.alpha]\nimage = \"b\"\nmode = \"replicated\"\nreplicas = 0\n",
    );
    assert_eq!(s.services[0].name, "shop_zeta");
    assert_eq!(s.services[0].mode, ServiceMode::Global);
    assert_eq!(s.services[1].name, "shop_alpha");
    assert_eq!(s.services[1].mode, ServiceMode::Replicated { replicas: 0 });
}

#[test]
fn env_as_array_and_mounts_alias() {
    let s = stack_ok(
        "[services.w]\nimage = \"a\"\nenv = [\"A=1\", \"B=x=y\", \"EMPTY=\"]\nmounts = [{ type = \"bind\", source = \"/h\", target = \"/c\", read_only = true }]\n",
    );
    let w = &s.services[0];
    assert_eq!(w.task.env["A"], "1");
    assert_eq!(w.task.env["B"], "x=y");
    assert_eq!(w.task.env["EMPTY"], "");
    assert_eq!(w.task.mounts[0].kind, MountKind::Bind);
    assert!(w.task.mounts[0].read_only);
}

#[test]
fn archive_images_and_digests_are_accepted() {
    for image in [
        "oci-archive:/var/lib/shoal/images/busybox.tar",
        "docker-archive:/nix/store/abc-agent.tar.gz",
        "busybox",
        "library/busybox:1.36",
        "docker.io/library/nginx:1.27",
        "127.0.0.1:5000/x/y",
        "localhost/foo",
        "nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        assert_eq!(validate_image(image), Ok(()), "{image}");
    }
    for image in [
        "",
        "oci-archive:relative.tar",
        "Nginx",
        "nginx:",
        "docker://nginx",
        "nginx@sha256:abc",
        "a//b",
    ] {
        assert!(validate_image(image).is_err(), "{image} should be refused");
    }
}

#[test]
fn restart_delay_above_default_max_raises_max() {
    let s = stack_ok("[services.w]\nimage = \"a\"\nrestart = { delay = \"1m\" }\n");
    assert_eq!(s.services[0].restart.delay, 60_000);
    assert_eq!(s.services[0].restart.max_delay, 60_000);
}

#[test]
fn max_attempts_zero_means_unlimited_as_in_swarm() {
    let s = stack_ok("[services.w]\nimage = \"a\"\nrestart = { max_attempts = 0 }\n");
    assert_eq!(s.services[0].restart.max_attempts, None);
}

#[test]
fn port_ranges_expand() {
    let s = stack_ok("[services.w]\nimage = \"a\"\nports = [\"8000-8002:9000-9002/udp\"]\n");
    let ports: Vec<_> = s.services[0]
        .ports
        .iter()
        .map(|p| (p.published, p.target, p.protocol))
        .collect();
    assert_eq!(
        ports,
        vec![
            (8000, 9000, Protocol::Udp),
            (8001, 9001, Protocol::Udp),
            (8002, 9002, Protocol::Udp)
        ]
    );
}

#[test]
fn same_port_number_on_tcp_and_udp_is_fine() {
    let s = stack_ok(
        "[services.a]\nimage = \"a\"\nports = [\"53:53\"]\n[services.b]\nimage = \"a\"\nports = [\"53:53/udp\"]\n",
    );
    assert_eq!(s.services.len(), 2);
}

#[test]
fn explicit_stack_name() {
    let s = parse_stack_named(
        Path::new("/tmp/x.toml"),
        "other",
        "[services.w]\nimage = \"a\"\n",
    )
    .unwrap();
    assert_eq!(s.name, "other");
    assert_eq!(s.services[0].name, "other_w");
    assert_eq!(s.services[0].stack.as_deref(), Some("other"));
}

// ---------------------------------------------------------------- stack files: bad input

#[test]
fn unknown_key_with_suggestion_and_position() {
    let errs = stack_errs("[services.web]\nimage = \"nginx\"\nreplica = 3\n");
    assert_eq!(
        errs,
        vec![
            "3:1: unknown key \"replica\" in [services.web]; did you mean \"replicas\"?"
                .to_string()
        ]
    );
}

#[test]
fn display_has_file_line_column() {
    let e = stack("\n\n\n\n\n[services.web]\nreplica = 3\nimage = \"x\"\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/shoal/stacks/shop.toml:7:1: unknown key \"replica\" in [services.web]; did you mean \"replicas\"?"
    );
    let as_error: &dyn std::error::Error = &e;
    assert!(as_error.to_string().contains(":7:1:"));
}

#[test]
fn many_errors_reported_at_once_in_order() {
    let text = r#"[services.web]
image = "nginx"
replicas = "three"
ports = ["8080:80", "99999:80"]
stop_grace_period = "10x"
healthcheck = { test = ["curl", "true"] }

[services.db]
imgae = "postgres"
resources = { memory = "1M", cpus = 0.0001 }

[services.web.restart]
condition = "always"
"#;
    let errs = stack_errs(text);
    assert_eq!(
        errs,
        vec![
            "3:12: services.web.replicas: expected an integer, found string",
            "4:21: services.web.ports[1]: invalid port \"99999:80\": port 99999 is out of range 1-65535",
            "5:21: services.web.stop_grace_period: invalid duration \"10x\": unknown unit \"x\" (use ns, us, ms, s, m or h)",
            "6:24: services.web.healthcheck.test: the test starts with \"curl\": it must start with \"CMD\", \"CMD-SHELL\" or \"NONE\" (or be one string, run by the shell)",
            "8:1: missing key \"image\" in [services.db]; every service needs an image",
            "9:1: unknown key \"imgae\" in [services.db]; did you mean \"image\"?",
            "10:24: services.db.resources.memory: 1048576 bytes is below the minimum of 4M",
            "10:37: services.db.resources.cpus: invalid cpus 0.0001: must be at least 0.001",
            "13:13: services.web.restart.condition: invalid value \"always\"; expected one of \"any\", \"on-failure\", \"none\"",
        ]
    );
}

#[test]
fn unsupported_keys_are_refused_not_ignored() {
    let text = r#"
[services.web]
image = "a"

[networks.backend]
driver = "overlay"
internal = true
"#;
    let errs = stack_errs(text);
    assert_has(&errs, "\"internal\" in [networks.backend]");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs.iter().all(|e| e.contains("not supported yet")),
        "{errs:#?}"
    );
}

#[test]
fn depends_on_takes_compose_forms_and_names_services_of_the_stack() {
    let s = stack_ok(
        r#"
[services.db]
image = "postgres"

[services.migrate]
image = "app"
depends_on = ["db"]

[services.web]
image = "app"
depends_on = { db = { condition = "service_healthy" }, migrate = { condition = "service_completed_successfully" } }

[services.cache]
image = "redis"
[services.cache.depends_on.db]
"#,
    );
    use model::DependCondition::*;
    let deps = |n: &str| {
        svc(&s, n)
            .depends_on
            .clone()
            .into_iter()
            .collect::<Vec<_>>()
    };
    assert_eq!(deps("shop_db"), vec![]);
    assert_eq!(
        deps("shop_migrate"),
        vec![("shop_db".to_string(), ServiceStarted)]
    );
    assert_eq!(
        deps("shop_web"),
        vec![
            ("shop_db".to_string(), ServiceHealthy),
            ("shop_migrate".to_string(), ServiceCompletedSuccessfully)
        ]
    );
    assert_eq!(
        deps("shop_cache"),
        vec![("shop_db".to_string(), ServiceStarted)]
    );
}

#[test]
fn depends_on_problems_are_all_reported_with_their_place() {
    let errs = stack_errs(
        r#"
[services.a]
image = "x"
depends_on = ["b", "ghost", "b"]

[services.b]
image = "x"
depends_on = { c = { condition = "service_ready" } }

[services.c]
image = "x"
depends_on = { a = { restart = true }, c = {} }

[services.d]
image = "x"
depends_on = "a"
"#,
    );
    assert_eq!(
        errs,
        vec![
            "4:20: services.a.depends_on: service \"ghost\" is not defined in this stack",
            "4:29: services.a.depends_on: \"b\" is named twice",
            "8:34: services.b.depends_on.c.condition: invalid value \"service_ready\"; expected one of \"service_started\", \"service_healthy\", \"service_completed_successfully\" (did you mean \"service_healthy\"?)",
            "12:16: services.c.depends_on: dependency cycle a -> b -> c -> a",
            "12:22: \"restart\" in [services.c.depends_on.a] is not supported yet",
            "12:40: services.c.depends_on: a service cannot depend on itself",
            "16:14: services.d.depends_on: expected a list of service names or a table of { condition = ... }, e.g. depends_on = [\"db\"]",
        ],
        "{errs:#?}"
    );
}

#[test]
fn extra_hosts_and_resolver_settings_are_read_and_checked() {
    let s = stack_ok(
        r#"
[services.a]
image = "x"
extra_hosts = ["db.local:10.0.0.5", "v6=2001:db8::1"]
dns = "10.0.0.2"
dns_search = ["example.com"]
dns_opt = "ndots:2"

[services.b]
image = "x"
extra_hosts = { "gw.local" = "192.168.1.1" }
dns = ["10.0.0.2", "10.0.0.3"]
"#,
    );
    let a = &svc(&s, "shop_a").task;
    assert_eq!(
        a.extra_hosts,
        vec![
            ("db.local".to_string(), "10.0.0.5".parse().unwrap()),
            ("v6".to_string(), "2001:db8::1".parse().unwrap())
        ]
    );
    assert_eq!(a.dns, vec!["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(a.dns_search, vec!["example.com"]);
    assert_eq!(a.dns_options, vec!["ndots:2"]);
    let b = &svc(&s, "shop_b").task;
    assert_eq!(b.extra_hosts[0].0, "gw.local");
    assert_eq!(b.dns.len(), 2);

    let errs = stack_errs(
        r#"
[services.a]
image = "x"
extra_hosts = ["nohost", "a:b"]
dns = ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"]
dns_opt = 5
"#,
    );
    assert_eq!(
        errs,
        vec![
            "4:16: services.a.extra_hosts: invalid extra host \"nohost\": expected NAME:ADDRESS, like db.local:10.0.0.5",
            "4:26: services.a.extra_hosts: invalid extra host \"a:b\": \"b\" is not an IP address",
            "5:1: services.a.dns: 4 DNS servers is above the limit of 3",
            "6:11: services.a.dns_opt: expected a string or a list of strings",
        ]
    );
}

#[test]
fn stack_networks_are_declared_named_after_the_stack_and_checked() {
    let s = stack_ok(
        r#"
[services.web]
image = "a"
networks = ["front", "back", "shared"]

[services.db]
image = "b"
networks = ["back"]

[services.cron]
image = "c"

[networks.front]
[networks.back]
subnet = "10.50.0.0/16"
attachable = true
labels = { tier = "data" }
[networks.shared]
external = true
"#,
    );
    assert_eq!(
        svc(&s, "shop_web").networks,
        vec!["shop_front", "shop_back", "shared"]
    );
    assert_eq!(svc(&s, "shop_db").networks, vec!["shop_back"]);
    assert_eq!(svc(&s, "shop_cron").networks, vec!["shop_default"]);
    let back = &s.networks["back"];
    assert_eq!(back.subnet.as_deref(), Some("10.50.0.0/16"));
    assert!(back.attachable && !back.external);
    assert_eq!(back.labels["tier"], "data");
    assert!(s.networks["shared"].external);
    assert!(s.networks.contains_key("default"));
    assert_eq!(svc(&s, "shop_web").endpoint_mode, model::EndpointMode::Vip);
    let rr = stack_ok("[services.db]\nimage = \"b\"\nendpoint_mode = \"dnsrr\"\n");
    assert_eq!(
        svc(&rr, "shop_db").endpoint_mode,
        model::EndpointMode::Dnsrr
    );
    assert_has(
        &stack_errs("[services.db]\nimage = \"b\"\nendpoint_mode = \"dns\"\n"),
        "3:17: services.db.endpoint_mode: endpoint mode \"dns\" is not one of",
    );

    let errs = stack_errs(
        r#"
[services.web]
image = "a"
networks = ["nowhere"]

[networks.bad]
subnet = "10.0.0.0/30"
driver = "macvlan"

[networks.ext]
external = true
subnet = "10.1.0.0/16"
"#,
    );
    assert_has(
        &errs,
        "4:1: services.web.networks: network \"nowhere\" is not declared",
    );
    assert_has(
        &errs,
        "[networks.bad]: subnet 10.0.0.0/30: the prefix length",
    );
    assert_has(
        &errs,
        "[networks.bad]: network driver \"macvlan\" is not supported yet",
    );
    assert_has(
        &errs,
        "networks.ext.subnet: not allowed with external = true",
    );
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

#[test]
fn job_modes_take_replicas_and_max_concurrent() {
    let s = stack_ok(
        "[services.j]\nimage = \"a\"\nmode = \"replicated-job\"\nreplicas = 6\nmax_concurrent = 2\n\n\
         [services.k]\nimage = \"a\"\nmode = \"replicated-job\"\nreplicas = 4\n\n\
         [services.g]\nimage = \"a\"\nmode = \"global-job\"\n",
    );
    assert_eq!(
        svc(&s, "shop_j").mode,
        ServiceMode::ReplicatedJob {
            replicas: 6,
            max_concurrent: 2
        }
    );
    assert_eq!(
        svc(&s, "shop_k").mode,
        ServiceMode::ReplicatedJob {
            replicas: 4,
            max_concurrent: 4
        }
    );
    assert_eq!(svc(&s, "shop_g").mode, ServiceMode::GlobalJob);
    let errs = stack_errs(
        "[services.w]\nimage = \"a\"\nmax_concurrent = 2\n\n\
         [services.x]\nimage = \"a\"\nmode = \"replicated-job\"\nmax_concurrent = 0\n\n\
         [services.y]\nimage = \"a\"\nmode = \"global-job\"\nreplicas = 2\n",
    );
    assert_eq!(
        errs,
        vec![
            "3:1: services.w.max_concurrent: only for mode = \"replicated-job\"",
            "8:18: services.x.max_concurrent: must be at least 1",
            "13:1: services.y.replicas: not allowed with mode = \"global-job\" (a global job runs once on every eligible node)",
        ]
    );
}

#[test]
fn compose_names_get_hints() {
    let errs = stack_errs(
        "[services.w]\nimage = \"a\"\nenvironment = { A = \"1\" }\ndeploy = { replicas = 2 }\nupdate_config = {}\n",
    );
    assert_has(
        &errs,
        "3:1: unknown key \"environment\" in [services.w]; did you mean \"env\"?",
    );
    assert_has(
        &errs,
        "4:1: unknown key \"deploy\" in [services.w]; stack files have no deploy section",
    );
    assert_has(
        &errs,
        "5:1: unknown key \"update_config\" in [services.w]; did you mean \"update\"?",
    );
}

#[test]
fn unknown_key_without_close_match_lists_choices() {
    let errs = stack_errs("[services.w]\nimage = \"a\"\nrestart = { zzz = 1 }\n");
    assert_eq!(
        errs,
        vec![
            "3:13: unknown key \"zzz\" in [services.w.restart]; expected one of: \"condition\", \"delay\", \"max_delay\", \"max_attempts\", \"window\""
        ]
    );
}

#[test]
fn replicas_not_allowed_with_global() {
    let errs = stack_errs("[services.w]\nimage = \"a\"\nmode = \"global\"\nreplicas = 2\n");
    assert_eq!(
        errs,
        vec![
            "4:1: services.w.replicas: not allowed with mode = \"global\" (a global service runs one task on every eligible node)"
        ]
    );
}

#[test]
fn duplicate_published_ports_across_services() {
    let errs = stack_errs(
        "[services.a]\nimage = \"a\"\nports = [\"8080:80\"]\n[services.b]\nimage = \"b\"\nports = [{ published = 8080, target = 81 }]\n",
    );
    assert_eq!(
        errs,
        vec![
            "6:10: services.b.ports[0]: published port 8080/tcp is already used by services.a.ports[0] (line 3)"
        ]
    );
}

#[test]
fn duplicate_published_ports_in_one_service() {
    let errs = stack_errs("[services.a]\nimage = \"a\"\nports = [\"8080:80\", \"8080:81\"]\n");
    assert_eq!(errs.len(), 1);
    assert_has(
        &errs,
        "3:21: services.a.ports[1]: published port 8080/tcp is already used",
    );
}

#[test]
fn a_published_port_bound_to_a_host_address() {
    let s = stack_ok(
        r#"[services.a]
image = "a"
ports = ["127.0.0.1:8080:80", "10.1.2.3::81/udp", { published = 83, target = 80, host_ip = "10.1.2.3" }, "84:80"]
"#,
    );
    let ports = &svc(&s, "shop_a").ports;
    let shown: Vec<String> = ports.iter().map(|p| p.display()).collect();
    assert_eq!(
        shown,
        [
            "127.0.0.1:8080->80/tcp",
            "10.1.2.3:0->81/udp",
            "10.1.2.3:83->80/tcp",
            "*:84->80/tcp"
        ]
    );
    let errs = stack_errs("[services.a]\nimage = \"a\"\nports = [\"[::1]:8080:80\"]\n");
    assert_has(
        &errs,
        "3:10: services.a.ports[0]: invalid port \"[::1]:8080:80\": IPv6 host addresses are not supported yet; bind to an IPv4 address",
    );
}

#[test]
fn bad_ports() {
    let errs = stack_errs(
        r#"[services.a]
image = "a"
ports = [
  "80",
  "0.0.0.0:80:80",
  "80:80/sctp",
  "x:80",
  80,
  { target = 80 },
  { published = 0, target = 80 },
  { published = 81, target = 80, mode = "mesh" },
  { published = 82, target = 80, protocol = "icmp" },
  { published = 83, target = 80, host_ip = "localhost" },
  true,
]
"#,
    );
    assert_has(
        &errs,
        "5:3: services.a.ports[1]: invalid port \"0.0.0.0:80:80\": host address 0.0.0.0 means every address: leave the address out to publish on all of them",
    );
    assert_has(
        &errs,
        "6:3: services.a.ports[2]: protocol \"sctp\" is not supported yet",
    );
    assert_has(
        &errs,
        "7:3: services.a.ports[3]: invalid port \"x:80\": \"x\" is not a port number",
    );
    assert_has(
        &errs,
        "10:17: services.a.ports[6].published: port 0 is out of range 1-65535",
    );
    assert_has(
        &errs,
        "11:41: services.a.ports[7].mode: invalid value \"mesh\"; expected one of \"ingress\", \"host\"",
    );
    assert_has(
        &errs,
        "12:45: services.a.ports[8].protocol: invalid protocol \"icmp\" (use tcp or udp)",
    );
    assert_has(
        &errs,
        "13:44: services.a.ports[9].host_ip: host address \"localhost\" is not an IPv4 address like 127.0.0.1",
    );
    assert_has(
        &errs,
        "14:3: services.a.ports[10]: expected a string like \"8080:80\"",
    );
    // A target alone ("80", 80, { target = 80 }) is published on a port the cluster picks.
    assert_eq!(errs.len(), 8, "{errs:#?}");
    let s = stack_ok("[services.a]\nimage = \"a\"\nports = [\"80\", 81, { target = 82 }]\n");
    let ports = &svc(&s, "shop_a").ports;
    assert_eq!(ports.len(), 3);
    assert!(ports.iter().all(|p| p.published == 0), "{ports:?}");
}

#[test]
fn bad_mounts() {
    let errs = stack_errs(
        r#"[services.a]
image = "a"
volumes = [
  "/data",
  "./rel:/x",
  "/h:/c:rx",
  "/h:relative",
  "bad name:/y",
  { type = "bind", target = "/z" },
  { type = "nfs", source = "s", target = "/n" },
  { type = "volume", source = "v", target = "/t", tmpfs = { size = "1M" } },
  { type = "tmpfs", source = "x", target = "/tmp" },
  "/h1:/same",
  "/h2:/same",
]
"#,
    );
    assert_has(
        &errs,
        "4:3: services.a.volumes[0]: invalid volume \"/data\": anonymous volumes are not supported yet",
    );
    assert_has(
        &errs,
        "5:3: services.a.volumes[1]: invalid volume \"./rel:/x\": the host path \"./rel\" must be absolute",
    );
    assert_has(
        &errs,
        "6:3: services.a.volumes[2]: invalid volume \"/h:/c:rx\": unknown option \"rx\"",
    );
    assert_has(
        &errs,
        "7:3: services.a.volumes[3]: invalid volume \"/h:relative\": target \"relative\" must be an absolute path",
    );
    assert_has(
        &errs,
        "8:3: services.a.volumes[4]: invalid volume \"bad name:/y\": invalid volume name \"bad name\"",
    );
    assert_has(&errs, "9:3: services.a.volumes[5]: missing key \"source\"");
    assert_has(
        &errs,
        "10:12: services.a.volumes[6].type: invalid value \"nfs\"",
    );
    assert_has(
        &errs,
        "11:51: services.a.volumes[7].tmpfs: only valid with type = \"tmpfs\"",
    );
    assert_has(
        &errs,
        "12:3: services.a.volumes[8]: a tmpfs mount takes no source",
    );
    assert_has(
        &errs,
        "14:3: services.a.volumes[10]: target \"/same\" is already mounted by services.a.volumes[9]",
    );
    assert_eq!(errs.len(), 10, "{errs:#?}");
}

#[test]
fn volumes_and_mounts_together_is_an_error() {
    let errs = stack_errs("[services.a]\nimage = \"a\"\nvolumes = []\nmounts = []\n");
    assert_eq!(
        errs,
        vec![
            "4:1: services.a.mounts: use either \"volumes\" or \"mounts\", not both (they mean the same); move these into \"volumes\""
        ]
    );
}

#[test]
fn wrong_types_everywhere() {
    let errs = stack_errs(
        r#"[services.a]
image = 5
command = 7
env = "A=1"
read_only = "yes"
labels = { a = [1] }
restart = "always"
update = { parallelism = -1, max_failure_ratio = 2 }
ports = "8080:80"
"#,
    );
    assert_eq!(
        errs,
        vec![
            "2:9: services.a.image: expected a string, found integer",
            "3:11: services.a.command: expected an array of strings or a string, found integer",
            "4:7: services.a.env: expected a table of strings or an array of \"KEY=VALUE\" strings, found string",
            "5:13: services.a.read_only: expected true or false, found string",
            "6:16: services.a.labels.a: expected a string, found array",
            "7:11: services.a.restart: expected a table, found string",
            "8:26: services.a.update.parallelism: must not be negative, found -1",
            "8:50: services.a.update.max_failure_ratio: 2 is not between 0 and 1",
            "9:9: services.a.ports: expected an array, found string",
        ]
    );
}

#[test]
fn bad_env_and_command() {
    let errs = stack_errs(
        "[services.a]\nimage = \"a\"\nenv = [\"NOVALUE\", \"A=1\", \"A=2\", 3]\ncommand = \"echo 'unterminated\"\nentrypoint = []\n",
    );
    assert_eq!(
        errs,
        vec![
            "3:8: services.a.env[0]: expected \"KEY=VALUE\", found \"NOVALUE\"",
            "3:26: services.a.env[2]: variable \"A\" is set twice",
            "3:33: services.a.env[3]: expected a string, found integer",
            "4:11: services.a.command: unterminated single quote in \"echo 'unterminated\"",
            "5:14: services.a.entrypoint: must not be empty (leave it out to use the image's default)",
        ]
    );
}

#[test]
fn bad_scalars() {
    let errs = stack_errs(
        r#"[services.a]
image = "oci-archive:images/x.tar"
working_dir = "srv"
user = "a b"
hostname = "-bad-"
stop_signal = "SIGFOO"
stop_grace_period = 10
resources = { memory = "lots", pids = 0 }
"#,
    );
    assert_eq!(
        errs,
        vec![
            "2:9: services.a.image: invalid image \"oci-archive:images/x.tar\": the archive path after \"oci-archive:\" must be absolute",
            "3:15: services.a.working_dir: \"srv\" must be an absolute path",
            "4:8: services.a.user: invalid user \"a b\"; use NAME, UID, NAME:GROUP or UID:GID",
            "5:12: services.a.hostname: invalid hostname \"-bad-\": use dot-separated labels of letters, digits and '-' (at most 63 characters each)",
            "6:15: services.a.stop_signal: unknown signal \"SIGFOO\" (use a name such as SIGTERM, SIGINT, SIGQUIT or SIGKILL)",
            "7:21: services.a.stop_grace_period: expected a duration string like \"10s\" or \"1m30s\", found integer",
            "8:24: services.a.resources.memory: invalid memory size \"lots\": expected a number with an optional unit, like \"256M\" or \"1G\"",
            "8:39: services.a.resources.pids: must be at least 1 (leave it out for no limit)",
        ]
    );
}

#[test]
fn rollback_cannot_roll_back_and_max_delay_below_delay() {
    let errs = stack_errs(
        "[services.a]\nimage = \"a\"\nrollback = { failure_action = \"rollback\" }\nrestart = { delay = \"10s\", max_delay = \"1s\" }\n",
    );
    assert_eq!(
        errs,
        vec![
            "3:31: services.a.rollback.failure_action: a rollback cannot be rolled back; use \"pause\" or \"continue\"",
            "4:40: services.a.restart.max_delay: 1s is shorter than delay 10s",
        ]
    );
}

#[test]
fn invalid_service_names() {
    let errs = stack_errs(
        "[services.\"_web\"]\nimage = \"a\"\n[services.\"a b\"]\nimage = \"a\"\n[services.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]\nimage = \"a\"\n",
    );
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert_has(&errs, "1:11: invalid service name \"_web\"");
    assert_has(&errs, "3:11: invalid service name \"a b\"");
    assert_has(&errs, "5:11: full service name \"shop_aaaa");
}

#[test]
fn invalid_stack_name_from_file_is_reported_with_the_other_errors() {
    let e = parse_stack(
        Path::new("/etc/shoal/stacks/my stack.toml"),
        "[services.a]\nimagee = \"a\"\n",
    )
    .unwrap_err();
    let lines: Vec<String> = e.iter().map(|d| d.to_string()).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("/etc/shoal/stacks/my stack.toml: invalid stack name \"my stack\"")
    );
    assert!(lines[0].ends_with("(the stack name is the file name without .toml)"));
    assert!(lines[1].starts_with("/etc/shoal/stacks/my stack.toml:1:1: missing key \"image\""));
    assert!(lines[2].contains("2:1: unknown key \"imagee\""));
}

#[test]
fn empty_stack_and_bad_top_level() {
    assert_eq!(
        stack_errs(""),
        vec!["1:1: stack has no services; add a [services.NAME] table with at least an image"]
    );
    let errs = stack_errs("version = \"3\"\nservices = []\n");
    assert_eq!(
        errs,
        vec![
            "1:1: unknown key \"version\" in the stack file; stack files have no version; remove it",
            "2:12: services: expected a table, found array",
        ]
    );
}

#[test]
fn syntax_errors_have_positions() {
    let errs = stack_errs("[services.web]\nimage = \"x\nreplicas = = 3\n");
    assert!(!errs.is_empty());
    assert!(errs.iter().all(|e| e.contains("invalid TOML")), "{errs:#?}");
    assert!(errs[0].starts_with("2:"), "{errs:#?}");
    let dup = stack_errs("[services.web]\nimage = \"x\"\nimage = \"y\"\n");
    assert_eq!(dup, vec!["3:1: invalid TOML: duplicate key"]);
}

#[test]
fn columns_count_characters_not_bytes() {
    let errs = stack_errs(
        "[services.web]\nimage = \"a\"\nlabels = { \"é\" = \"ü\", b = 1.5 }\nreplica = 1\n",
    );
    assert_eq!(
        errs,
        vec!["4:1: unknown key \"replica\" in [services.web]; did you mean \"replicas\"?"]
    );
    let errs =
        stack_errs("[services.web]\nimage = \"a\"\nenv = { \"é\" = \"ü\", \"x y\" = \"1\" }\n");
    assert_eq!(
        errs,
        vec![
            "3:20: services.web.env: invalid variable name \"x y\": must not contain '=', whitespace or NUL"
        ]
    );
}

// ---------------------------------------------------------------- loading files

#[test]
fn load_stacks_dir_reads_sorted_files_with_hashes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.toml"), "[services.w]\nimage = \"b\"\n").unwrap();
    std::fs::write(dir.path().join("a.toml"), "[services.w]\nimage = \"a\"\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a stack").unwrap();
    let stacks = load_stacks_dir(dir.path()).unwrap();
    let names: Vec<_> = stacks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(stacks[0].path, dir.path().join("a.toml"));
    assert_eq!(stacks[0].spec.services[0].name, "a_w");
    // sha256 of the exact bytes
    assert_eq!(stacks[0].hash.len(), 64);
    assert_ne!(stacks[0].hash, stacks[1].hash);
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"[services.w]\nimage = \"a\"\n"))
    };
    assert_eq!(stacks[0].hash, expected);
}

#[test]
fn load_stacks_dir_collects_errors_of_every_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        "[services.w]\nimage = \"a\"\nreplica = 1\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("b.toml"), "[services.w]\nimage = \"b\"\n").unwrap();
    std::fs::write(dir.path().join("c.toml"), "[services.w]\nimage = 1\n").unwrap();
    let e = load_stacks_dir(dir.path()).unwrap_err();
    assert_eq!(e.len(), 2, "{e}");
    assert_eq!(e.0[0].file, dir.path().join("a.toml"));
    assert_eq!((e.0[0].line, e.0[0].column), (3, 1));
    assert_eq!(e.0[1].file, dir.path().join("c.toml"));
    assert_eq!((e.0[1].line, e.0[1].column), (2, 9));
    let text = e.to_string();
    assert_eq!(text.lines().count(), 2);
    assert!(
        text.contains("a.toml:3:1: unknown key \"replica\""),
        "{text}"
    );
}

#[test]
fn hidden_and_non_toml_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".#a.toml"), "garbage = = =").unwrap();
    std::fs::write(dir.path().join("a.toml.swp"), "garbage = = =").unwrap();
    std::fs::create_dir(dir.path().join("sub.toml")).unwrap();
    std::fs::write(dir.path().join("a.toml"), "[services.w]\nimage = \"a\"\n").unwrap();
    let stacks = load_stacks_dir(dir.path()).unwrap();
    assert_eq!(stacks.len(), 1);
    assert_eq!(stacks[0].name, "a");
}

#[test]
fn a_compose_file_in_the_stacks_directory_is_an_error_that_says_how_to_convert_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), "[services.w]\nimage = \"a\"\n").unwrap();
    std::fs::write(
        dir.path().join("docker-stack.yml"),
        "services:\n  w:\n    image: a\n",
    )
    .unwrap();
    let e = load_stacks_dir(dir.path()).unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
    assert_eq!(e.0[0].file, dir.path().join("docker-stack.yml"));
    assert!(e.0[0].message.contains("shoal stack convert"), "{e}");
}

#[test]
fn invalid_explicit_stack_name() {
    let e = parse_stack_named(
        Path::new("f.toml"),
        "bad name",
        "[services.w]\nimage = \"a\"\n",
    )
    .unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(
        e.to_string(),
        "f.toml: invalid stack name \"bad name\": use letters, digits, '_', '.' and '-', starting with a letter or digit"
    );
}

#[test]
fn a_missing_stacks_dir_is_an_error_not_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_stacks_dir(&dir.path().join("nope")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("nope") && msg.contains("does not exist"),
        "{msg}"
    );
    assert!(msg.contains("paths.stacks_dir"), "{msg}");
}

#[test]
fn unreadable_or_non_utf8_stack_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bin.toml");
    std::fs::write(&p, [0xff, 0xfe, b'\n']).unwrap();
    let e = load_stack_file(&p).unwrap_err();
    assert_eq!(e.0[0].line, 0);
    assert!(e.to_string().contains("not valid UTF-8"), "{e}");
    let e = load_stack_file(&dir.path().join("missing.toml")).unwrap_err();
    assert!(e.to_string().contains("failed to read stack file"), "{e}");
}

// ---------------------------------------------------------------- cluster file

#[test]
fn empty_cluster_file_is_the_single_node_default() {
    let c = cluster("").unwrap();
    assert_eq!(c, ClusterConfig::default_single_node());
    assert!(c.cluster.bootstrap);
    assert_eq!(c.node.role, NodeRole::Manager);
    assert_eq!(c.node.name, None);
    assert_eq!(c.network.listen.to_string(), "0.0.0.0:4600");
    assert_eq!(c.cluster.settings, ClusterSettings::default());
    assert_eq!(c.containerd.namespace, "shoal");
    assert_eq!(
        c.containerd.address,
        PathBuf::from("/run/containerd/containerd.sock")
    );
    assert_eq!(c.paths.state_dir, PathBuf::from("/var/lib/shoal"));
    assert_eq!(c.paths.stacks_dir, PathBuf::from("/etc/shoal/stacks"));
}

#[test]
fn full_cluster_file() {
    let c = cluster(
        r#"
[node]
name = "m2"
role = "manager"
labels = { zone = "a" }
availability = "drain"

[network]
listen = "0.0.0.0:4700"
advertise = "192.168.1.11"

[cluster]
join = ["192.168.1.10:4600", "m3.example", "[fd00::1]:4601"]
token_file = "/run/keys/shoal-token"

[cluster.settings]
heartbeat_period = "2s"
task_history_limit = 3
snapshot_interval = 500
cert_expiry = "720h"
default_addr_pool = ["10.20.0.0/16", "10.30.0.0/16"]
default_subnet_size = 26
autolock = true

[containerd]
address = "/run/ctd/c.sock"
namespace = "test"

[registries."localhost:5000"]
insecure = true

[paths]
state_dir = "/srv/shoal"
stacks_dir = "/srv/stacks"
"#,
    )
    .unwrap();
    assert_eq!(c.node.name.as_deref(), Some("m2"));
    assert_eq!(c.node.labels["zone"], "a");
    assert_eq!(c.node.availability, Availability::Drain);
    assert_eq!(c.network.listen.to_string(), "0.0.0.0:4700");
    assert_eq!(
        c.network.advertise.map(|a| a.to_string()).as_deref(),
        Some("192.168.1.11:4700"),
        "a bare advertise IP takes the listen port"
    );
    assert!(
        !c.cluster.bootstrap,
        "a node with join addresses does not bootstrap"
    );
    assert_eq!(
        c.cluster.join,
        vec!["192.168.1.10:4600", "m3.example:4600", "[fd00::1]:4601"]
    );
    assert_eq!(
        c.cluster.token_file,
        Some(PathBuf::from("/run/keys/shoal-token"))
    );
    assert_eq!(
        c.cluster.settings,
        ClusterSettings {
            heartbeat_period: 2_000,
            task_history_limit: 3,
            snapshot_interval: 500,
            cert_expiry: 720 * 3600 * 1000,
            autolock: true,
            default_addr_pool: vec![
                "10.20.0.0/16".parse().unwrap(),
                "10.30.0.0/16".parse().unwrap()
            ],
            default_subnet_size: 26,
        }
    );
    assert_eq!(c.containerd.address, PathBuf::from("/run/ctd/c.sock"));
    assert_eq!(c.containerd.namespace, "test");
    assert!(c.registry_is_insecure("localhost:5000"));
    assert!(!c.registry_is_insecure("docker.io"));
    assert_eq!(c.paths.state_dir, PathBuf::from("/srv/shoal"));
}

#[test]
fn cluster_errors_all_at_once() {
    let errs = cluster_errs(
        r#"[node]
nmae = "x"
role = "boss"

[network]
listen = "nowhere"
advertise = "0.0.0.0:4600"

[cluster]
token = "SWMTKN-abc"
token_file = "relative"

[cluster.settings]
cert_expiry = "10m"
heartbeat_period = "0s"

[registries."localhost:5000"]
insecure = "yes"
mirrors = ["x"]

[paths]
state_dir = "var/lib"

[stacks.web]
"#,
    );
    assert_eq!(
        errs,
        vec![
            "2:1: unknown key \"nmae\" in [node]; did you mean \"name\"?",
            "3:8: node.role: invalid value \"boss\"; expected one of \"manager\", \"worker\"",
            "6:10: network.listen: invalid address \"nowhere\"; write IP:PORT like \"192.168.1.10:4600\"",
            "7:13: network.advertise: 0.0.0.0:4600 is not an address other nodes can reach",
            "10:1: unknown key \"token\" in [cluster]; never put the join token in the file; write it to a file and set token_file",
            "11:14: cluster.token_file: \"relative\" must be an absolute path",
            "14:15: cluster.settings.cert_expiry: must be at least 1h",
            "15:20: cluster.settings.heartbeat_period: must be longer than 0s",
            "18:12: registries.\"localhost:5000\".insecure: expected true or false, found string",
            "19:1: \"mirrors\" in [registries.\"localhost:5000\"] is not supported yet",
            "22:13: paths.state_dir: \"var/lib\" must be an absolute path",
            "24:2: unknown key \"stacks\" in the cluster file; stacks go in files of the stacks directory, one per stack",
        ]
    );
}

#[test]
fn cluster_role_and_join_rules() {
    assert_eq!(
        cluster_errs("[node]\nrole = \"worker\"\n"),
        vec![
            "2:8: node.role: a worker needs managers to join; set cluster.join and cluster.token_file"
        ]
    );
    assert_eq!(
        cluster_errs("[node]\nrole = \"worker\"\n[cluster]\nbootstrap = true\n"),
        vec![
            "4:13: cluster.bootstrap: a worker cannot bootstrap a cluster; set node.role = \"manager\" or join an existing cluster"
        ]
    );
    assert_eq!(
        cluster_errs("[cluster]\njoin = [\"10.0.0.1\"]\n"),
        vec![
            "2:1: cluster.join: joining needs the join token; set cluster.token_file to a file that holds it"
        ]
    );
    assert_eq!(
        cluster_errs("[cluster]\nbootstrap = true\njoin = [\"10.0.0.1\"]\ntoken_file = \"/t\"\n"),
        vec![
            "2:13: cluster.bootstrap: a node either bootstraps a new cluster or joins one; remove bootstrap or join"
        ]
    );
    assert_eq!(
        cluster_errs("[cluster]\njoin = [\"bad host:1\", \"h:0\"]\ntoken_file = \"/t\"\n"),
        vec![
            "2:9: cluster.join[0]: invalid host \"bad host\" in \"bad host:1\"",
            "2:23: cluster.join[1]: invalid port in \"h:0\"",
        ]
    );
    let w = cluster("[node]\nrole = \"worker\"\n[cluster]\njoin = [\"10.0.0.1:4600\"]\ntoken_file = \"/run/keys/t\"\n")
        .unwrap();
    assert_eq!(w.node.role, NodeRole::Worker);
    assert!(!w.cluster.bootstrap);
    let m = cluster("[cluster]\nbootstrap = false\n").unwrap();
    assert!(
        !m.cluster.bootstrap,
        "an explicit bootstrap = false is kept"
    );
}

#[test]
fn cluster_syntax_error() {
    let e = cluster("[node\nname = 1\n").unwrap_err();
    assert!(
        e.0[0].line == 1 && e.0[0].message.starts_with("invalid TOML"),
        "{e}"
    );
}

#[test]
fn load_cluster_file_reads_and_reports_missing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cluster.toml");
    std::fs::write(&p, "[node]\nname = \"n1\"\n").unwrap();
    assert_eq!(
        load_cluster_file(&p).unwrap().node.name.as_deref(),
        Some("n1")
    );
    let e = load_cluster_file(&dir.path().join("none.toml")).unwrap_err();
    assert!(e.to_string().contains("failed to read cluster file"), "{e}");
}

// ---------------------------------------------------------------- value parsers

#[test]
fn durations() {
    for (s, ms) in [
        ("0", 0),
        ("0s", 0),
        ("100ms", 100),
        ("5s", 5_000),
        ("1m30s", 90_000),
        ("2h", 7_200_000),
        ("1.5s", 1_500),
        ("1h2m3s4ms", 3_723_004),
        ("2160h", 2160 * 3_600_000),
        ("1000us", 1),
        ("1500000ns", 2),
        (".5s", 500),
    ] {
        assert_eq!(parse_duration(s), Ok(ms), "{s}");
    }
    for s in ["", "5", "-1s", "10x", "s", "1..2s", "100us", "1e3s"] {
        assert!(parse_duration(s).is_err(), "{s} should be refused");
    }
}

#[test]
fn durations_format_round_trip() {
    for ms in [
        0,
        1,
        100,
        1_000,
        1_500,
        90_000,
        3_600_000,
        3_723_004,
        7_776_000_000,
    ] {
        assert_eq!(parse_duration(&format_duration(ms)), Ok(ms), "{ms}");
    }
    assert_eq!(format_duration(90_000), "1m30s");
    assert_eq!(format_duration(100), "100ms");
    assert_eq!(format_duration(3_600_000), "1h");
}

#[test]
fn memory_sizes() {
    for (s, b) in [
        ("256M", 256u64 << 20),
        ("1G", 1 << 30),
        ("1g", 1 << 30),
        ("512mb", 512 << 20),
        ("512MiB", 512 << 20),
        ("1.5G", 3 << 29),
        ("4096k", 4 << 20),
        ("1048576", 1 << 20),
        ("100b", 100),
        ("2T", 2 << 40),
    ] {
        assert_eq!(parse_memory(s), Ok(b), "{s}");
    }
    for s in ["", "G", "12Q", "1.2.3M", "-1M"] {
        assert!(parse_memory(s).is_err(), "{s} should be refused");
    }
}

#[test]
fn memory_as_integer_bytes_and_minimum() {
    let s = stack_ok("[services.a]\nimage = \"a\"\nresources = { memory = 4194304 }\n");
    assert_eq!(s.services[0].task.resources.memory_bytes, Some(4 << 20));
    let errs = stack_errs("[services.a]\nimage = \"a\"\nresources = { memory = 4194303 }\n");
    assert_eq!(
        errs,
        vec!["3:24: services.a.resources.memory: 4194303 bytes is below the minimum of 4M"]
    );
}

#[test]
fn cpus_values() {
    assert_eq!(cpus_to_nano(0.5), Ok(500_000_000));
    assert_eq!(cpus_to_nano(2.0), Ok(2_000_000_000));
    assert_eq!(cpus_to_nano(0.001), Ok(1_000_000));
    assert!(cpus_to_nano(0.0009).is_err());
    assert!(cpus_to_nano(-1.0).is_err());
    let s = stack_ok(
        "[services.a]\nimage = \"a\"\nresources = { cpus = 2 }\n[services.b]\nimage = \"a\"\nresources = { cpus = \"0.25\" }\n",
    );
    assert_eq!(s.services[0].task.resources.nano_cpus, Some(2_000_000_000));
    assert_eq!(s.services[1].task.resources.nano_cpus, Some(250_000_000));
}

#[test]
fn command_splitting() {
    assert_eq!(
        split_command("nginx -g 'daemon off;'").unwrap(),
        vec!["nginx", "-g", "daemon off;"]
    );
    assert_eq!(
        split_command("  a\t\"b c\"  d\\ e \"x\\\"y\" ''").unwrap(),
        vec!["a", "b c", "d e", "x\"y", ""]
    );
    assert_eq!(split_command("").unwrap(), Vec::<String>::new());
    assert!(split_command("a \"b").is_err());
    assert!(split_command("a\\").is_err());
}

#[test]
fn short_ports() {
    let p = parse_port_short("8080:80").unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].published, p[0].target, p[0].protocol, p[0].mode),
        (8080, 80, Protocol::Tcp, PublishMode::Ingress)
    );
    assert_eq!(
        parse_port_short("53:53/UDP").unwrap()[0].protocol,
        Protocol::Udp
    );
    assert!(parse_port_short("8000-8001:80").is_err());
    assert!(parse_port_short("8002-8001:80-81").is_err());
    assert!(parse_port_short("0:80").is_err());
    assert!(parse_port_short("80:65536").is_err());
    assert!(parse_port_short("a:b:c:d").is_err());
}

#[test]
fn short_mounts() {
    let m = parse_mount_short("/srv:/data:ro").unwrap();
    assert_eq!((m.kind, m.read_only), (MountKind::Bind, true));
    let m = parse_mount_short("data:/data:rw").unwrap();
    assert_eq!(
        (m.kind, m.source.as_str(), m.read_only),
        (MountKind::Volume, "data", false)
    );
    assert!(parse_mount_short("data:/").is_err());
    assert!(parse_mount_short("a:b:c:d").is_err());
}

#[test]
fn names_and_signals_and_suggestions() {
    assert!(is_valid_name("web"));
    assert!(is_valid_name("Web-1.x_y"));
    assert!(is_valid_name("1web"));
    assert!(!is_valid_name(""));
    assert!(!is_valid_name("-web"));
    assert!(!is_valid_name("web app"));
    assert!(!is_valid_name("wéb"));
    assert_eq!(normalize_signal("term").unwrap(), "SIGTERM");
    assert_eq!(normalize_signal("SIGKILL").unwrap(), "SIGKILL");
    assert_eq!(normalize_signal("sigusr1").unwrap(), "SIGUSR1");
    assert!(normalize_signal("9").is_err());
    assert_eq!(suggest("replica", &["image", "replicas"]), Some("replicas"));
    assert_eq!(suggest("imgae", &["image", "replicas"]), Some("image"));
    assert_eq!(suggest("zzz", &["image", "replicas"]), None);
}

// ---------------------------------------------------------------- the examples in configs/

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

#[test]
fn every_example_config_parses() {
    let dir = configs_dir();
    let mut clusters = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = load_cluster_file(&path) {
                panic!("{e}");
            }
            clusters += 1;
        }
    }
    assert!(
        clusters >= 2,
        "expected at least two cluster examples in {}",
        dir.display()
    );
    let stacks = match load_stacks_dir(&dir.join("stacks")) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    assert!(stacks.len() >= 2, "expected at least two example stacks");
}

#[test]
fn example_cluster_file_equals_the_embedded_default() {
    let c = load_cluster_file(&configs_dir().join("cluster.toml")).unwrap();
    let mut expected = ClusterConfig::default_single_node();
    expected
        .registries
        .insert("localhost:5000".into(), RegistryConfig { insecure: true });
    assert_eq!(c, expected);
}

#[test]
fn demo_stack_is_the_readme_example() {
    let demo = load_stack_file(&configs_dir().join("stacks/demo.toml")).unwrap();
    assert_eq!(demo.name, "demo");
    let web = svc(&demo.spec, "demo_web");
    assert_eq!(
        web.task.image,
        "oci-archive:/var/lib/shoal/images/busybox.tar"
    );
    assert_eq!(web.mode, ServiceMode::Replicated { replicas: 2 });
    assert_eq!(web.ports[0].display(), "*:8080->80/tcp");
    let cmd = web.task.command.as_ref().unwrap();
    assert_eq!(cmd[0..2], ["sh".to_string(), "-c".to_string()]);
    assert!(cmd[2].contains("exec httpd -f -p 80 -h /www"));
}

mod node_local_additions {
    use std::path::Path;

    #[test]
    fn prune_after_is_a_bounded_duration() {
        let c =
            crate::parse_cluster(Path::new("c.toml"), "[images]\nprune_after = \"10m\"\n").unwrap();
        assert_eq!(c.images.prune_after, 600 * 1000);
        for (bad, why) in [
            ("\"0s\"", "between 1s and 24h"),
            ("\"25h\"", "between 1s and 24h"),
            ("\"soon\"", "images.prune_after"),
            ("3", "images.prune_after"),
        ] {
            let text = format!("[images]\nprune_after = {bad}\n");
            let err = crate::parse_cluster(Path::new("c.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("c.toml:2:") && err.contains(why),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bridge_subnet_run_dir_and_preload_are_read() {
        let text = r#"
[network]
bridge = "shtest0"
subnet = "10.99.0.0/24"

[paths]
run_dir = "/tmp/shoal-run"

[images]
preload = ["oci-archive:/var/lib/shoal/images/busybox.tar", "docker-archive:/nix/store/x-img.tar.gz"]
"#;
        let c = crate::parse_cluster(Path::new("c.toml"), text).unwrap();
        assert_eq!(c.network.bridge, "shtest0");
        assert_eq!(c.network.subnet, "10.99.0.0/24");
        assert_eq!(c.paths.run_dir, Path::new("/tmp/shoal-run"));
        assert_eq!(c.images.preload.len(), 2);
        assert_eq!(c.images.prune_after, 3600 * 1000, "the default is an hour");
        let d = crate::ClusterConfig::default_single_node();
        assert_eq!(
            (d.network.bridge.as_str(), d.network.subnet.as_str()),
            ("shoal0", "10.231.0.0/16")
        );
    }

    #[test]
    fn bad_bridge_subnet_and_relative_run_dir_all_reported() {
        let text = "[network]\nbridge = \"way-too-long-bridge-name\"\nsubnet = \"10.0.0.0\"\n[paths]\nrun_dir = \"run\"\n";
        let err = crate::parse_cluster(Path::new("c.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.toml:2:10: network.bridge"), "{err}");
        assert!(err.contains("c.toml:3:10: network.subnet"), "{err}");
        assert!(err.contains("c.toml:5:11: paths.run_dir"), "{err}");
    }

    /// The validator and the node bridge parse the subnet with the same code: a subnet with
    /// host bits set used to validate and then stop `shoald` at start.
    #[test]
    fn a_bridge_subnet_that_validates_also_starts() {
        for (subnet, what) in [
            (
                "10.231.0.1/16",
                "host bits set: use the network address 10.231.0.0/16",
            ),
            ("10.231.0.0/30", "use a prefix of 8 to 28"),
            ("10.231.0.0/33", "prefix length 33 is out of range"),
        ] {
            let text = format!("[network]\nsubnet = \"{subnet}\"\n");
            let err = crate::parse_cluster(Path::new("c.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("c.toml:2:10: network.subnet") && err.contains(what),
                "{err}"
            );
        }
        let ok = crate::parse_cluster(Path::new("c.toml"), "[network]\nsubnet = \"10.9.0.0/28\"\n")
            .unwrap();
        assert!(ok.network.subnet.parse::<model::Ipv4Subnet>().is_ok());
    }
}

#[test]
fn placement_is_parsed_and_validated() {
    let st = stack_ok(
        r#"
[services.web]
image = "a"
replicas = 4

[services.web.placement]
constraints = ["node.labels.zone in (a, b)", "node.role != manager"]
preferences = [{ spread = "node.labels.zone" }]
max_replicas_per_node = 2
"#,
    );
    let p = &svc(&st, "shop_web").placement;
    assert_eq!(
        p.constraints
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>(),
        vec!["node.labels.zone in (a, b)", "node.role != manager"]
    );
    assert_eq!(
        p.preferences,
        vec![model::PlacementPreference::Spread {
            label: "zone".into()
        }]
    );
    assert_eq!(p.max_replicas_per_node, Some(2));
    let zero = stack_ok("[services.w]\nimage = \"a\"\nplacement = { max_replicas_per_node = 0 }\n");
    assert_eq!(svc(&zero, "shop_w").placement.max_replicas_per_node, None);
}

#[test]
fn bad_placement_and_replicas_name_file_line_and_column() {
    let errs = stack_errs(
        r#"[services.web]
image = "a"
replicas = 30000000000
placement = { constraints = ["node.ip == 1.2.3.4", 3], preferences = [{ spread = "zone" }, { binpack = "x" }], max_replicas = 1 }
"#,
    );
    assert_has(
        &errs,
        "3:12: services.web.replicas: 30000000000 replicas is more than the limit of 100000",
    );
    assert_has(
        &errs,
        "4:30: services.web.placement.constraints[0]: constraint \"node.ip == 1.2.3.4\": unknown key",
    );
    assert_has(&errs, "4:52: services.web.placement.constraints[1]");
    assert_has(
        &errs,
        "services.web.placement.preferences[0].spread: placement preference \"zone\"",
    );
    assert_has(&errs, "\"binpack\"");
    assert_has(&errs, "max_replicas_per_node");
    assert_eq!(errs.len(), 7, "{errs:#?}");
}

#[test]
fn address_pool_settings_are_checked() {
    assert_eq!(
        cluster_errs(
            "[cluster.settings]\ndefault_addr_pool = [\"10.0.0.0/8\", \"10.1.2.3/16\", 7]\ndefault_subnet_size = 30\n"
        ),
        vec![
            "2:36: cluster.settings.default_addr_pool[1]: \"10.1.2.3/16\": 10.1.2.3 has host bits set: use the network address 10.1.0.0/16",
            "2:51: cluster.settings.default_addr_pool[2]: expected a string, found integer",
            "3:23: cluster.settings.default_subnet_size: must be a prefix length from 16 to 28",
        ]
    );
    assert_eq!(
        cluster_errs("[cluster.settings]\ndefault_addr_pool = [\"10.9.0.0/25\"]\n"),
        vec![
            "2:21: cluster.settings: the pool subnet 10.9.0.0/25 is smaller than default_subnet_size /24"
        ]
    );
    assert_eq!(
        cluster_errs("[cluster.settings]\ndefault_addr_pool = []\n"),
        vec![
            "2:21: cluster.settings.default_addr_pool: name at least one subnet, e.g. [\"10.0.0.0/8\"]"
        ]
    );
}

#[test]
fn sandbox_keys_are_parsed() {
    let s = stack_ok(
        r#"
[services.web]
image = "nginx"
cap_add = ["net_admin", "CAP_SYS_TIME"]
cap_drop = ["ALL"]
security_opt = ["no-new-privileges:true", "seccomp=unconfined"]
init = true
read_only = true
user = "1000:1000"
ulimits = { nofile = { soft = 1024, hard = 2048 }, nproc = 512, core = -1 }
sysctls = { "net.core.somaxconn" = 1024 }
tmpfs = ["/run/app:size=64m", "/tmp"]
resources = { memory = "1G", cpus = 2, reservations = { cpus = 0.5, memory = "256M" } }
"#,
    );
    let t = &svc(&s, "shop_web").task;
    assert_eq!(t.cap_add, vec!["CAP_NET_ADMIN", "CAP_SYS_TIME"]);
    assert_eq!(t.cap_drop, vec!["ALL"]);
    assert!(t.no_new_privileges && t.seccomp_unconfined && t.init && t.read_only);
    assert_eq!(t.user.as_deref(), Some("1000:1000"));
    assert_eq!(
        t.ulimits["nofile"],
        model::Ulimit {
            soft: 1024,
            hard: 2048
        }
    );
    assert_eq!(t.ulimits["nproc"].hard, 512);
    assert_eq!(t.ulimits["core"].soft, u64::MAX);
    assert_eq!(t.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(t.mounts.len(), 2);
    assert_eq!(t.mounts[0].kind, MountKind::Tmpfs);
    assert_eq!(t.mounts[0].target, "/run/app");
    assert_eq!(t.mounts[0].size, Some(64 << 20));
    assert_eq!(t.reservations.nano_cpus, Some(500_000_000));
    assert_eq!(t.reservations.memory_bytes, Some(256 << 20));
    assert_eq!(t.resources.memory_bytes, Some(1 << 30));

    // Nothing set: Docker's defaults, which the runtime spec fills in.
    let s = stack_ok("[services.a]\nimage = \"x\"\n");
    let t = &svc(&s, "shop_a").task;
    assert!(t.cap_add.is_empty() && t.cap_drop.is_empty() && t.ulimits.is_empty());
    assert!(!t.no_new_privileges && !t.seccomp_unconfined && !t.init);
}

#[test]
fn sandbox_keys_are_checked_with_positions() {
    let errs = stack_errs(
        r#"[services.a]
image = "x"
cap_add = ["NET_ADMN"]
cap_drop = [3]
security_opt = ["apparmor=unconfined", "seccomp=/p.json"]
init = "yes"
ulimits = { nofile = { soft = 4096, hard = 1024 }, nofiles = 3, nproc = { soft = 1 } }
sysctls = { "kernel.panic" = "1" }
tmpfs = ["/t:exec"]
resources = { memory = "128M", reservations = { memory = "256M", gpus = 1 } }
"#,
    );
    for (needle, line) in [
        (
            "services.a.cap_add[0]: unknown capability \"NET_ADMN\" (did you mean NET_ADMIN?)",
            3,
        ),
        ("services.a.cap_drop[0]: expected a string", 4),
        (
            "services.a.security_opt[0]: security option \"apparmor=unconfined\" is not supported",
            5,
        ),
        (
            "services.a.security_opt[1]: security option \"seccomp=/p.json\" is not supported: custom seccomp profiles",
            5,
        ),
        ("services.a.init: expected true or false, found string", 6),
        (
            "services.a.ulimits.nofile: ulimit nofile: the soft limit 4096 is above the hard limit 1024",
            7,
        ),
        (
            "services.a.ulimits.nofiles: unknown ulimit \"nofiles\" (did you mean nofile?)",
            7,
        ),
        ("services.a.ulimits.nproc: missing key \"hard\"", 7),
        (
            "services.a.sysctls: sysctl \"kernel.panic\" is not allowed",
            8,
        ),
        (
            "services.a.tmpfs[0]: invalid tmpfs \"/t:exec\": option \"exec\" is not supported",
            9,
        ),
        (
            "unknown key \"gpus\" in [services.a.resources.reservations]",
            10,
        ),
        (
            "services.a.resources.reservations: memory reservation (268435456 bytes) is above the memory limit (134217728 bytes)",
            10,
        ),
    ] {
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("{line}:")) && e.contains(needle)),
            "no error at line {line} contains {needle:?}; errors:\n{}",
            errs.join("\n")
        );
    }
}

#[test]
fn stack_files_and_stacks_are_bounded() {
    let big = format!(
        "[services.a]\nimage = \"x\"\n# {}\n",
        "x".repeat(model::limits::MAX_STACK_FILE_BYTES)
    );
    assert_has(&stack_errs(&big), "above the limit of 1048576 bytes");
    let many: String = (0..=model::limits::MAX_SERVICES_PER_STACK)
        .map(|i| format!("[services.s{i}]\nimage = \"x\"\n"))
        .collect();
    assert_has(
        &stack_errs(&many),
        "1001 services is above the limit of 1000 per stack; split the stack",
    );
    // A bound is reported at its key.
    let errs = stack_errs("[services.a]\nimage = \"x\"\n[services.a.update]\ndelay = \"30h\"\n");
    assert_eq!(
        errs,
        vec!["4:1: services.a.update.delay: 30h is above the limit of 24h"]
    );
}

#[test]
fn healthcheck_forms_and_bounds() {
    let s = stack_ok(
        r#"
[services.web]
image = "a"
healthcheck = { test = ["CMD", "wget", "-qO-", "http://127.0.0.1/"], interval = "5s", timeout = "2s", retries = 4, start_period = "1m", start_interval = "500ms" }

[services.shell]
image = "a"
healthcheck = { test = "curl -f http://localhost/ || exit 1" }

[services.off]
image = "a"
healthcheck = { disable = true }

[services.timing]
image = "a"
healthcheck = { interval = "1s" }
"#,
    );
    let h = svc(&s, "shop_web").task.healthcheck.clone().unwrap();
    assert_eq!(h.test, ["CMD", "wget", "-qO-", "http://127.0.0.1/"]);
    assert_eq!(
        (
            h.interval,
            h.timeout,
            h.retries,
            h.start_period,
            h.start_interval
        ),
        (5_000, 2_000, 4, 60_000, 500)
    );
    let shell = svc(&s, "shop_shell").task.healthcheck.clone().unwrap();
    assert_eq!(
        shell.test,
        ["CMD-SHELL", "curl -f http://localhost/ || exit 1"]
    );
    assert!(
        svc(&s, "shop_off")
            .task
            .healthcheck
            .as_ref()
            .unwrap()
            .is_disabled()
    );
    let timing = svc(&s, "shop_timing").task.healthcheck.clone().unwrap();
    assert!(timing.test.is_empty(), "an unset test comes from the image");

    let errs = stack_errs(
        r#"[services.web]
image = "a"
healthcheck = { test = ["CMD"], interval = "48h", retries = 100000, intervall = "1s" }
"#,
    );
    assert_eq!(
        errs,
        vec![
            "3:24: services.web.healthcheck.test: [\"CMD\", ...] needs a program to run, e.g. [\"CMD\", \"wget\", \"-qO-\", \"http://127.0.0.1/\"]",
            "3:33: services.web.healthcheck.interval: 48h is above the limit of 24h",
            "3:51: services.web.healthcheck.retries: 100000 is above the limit of 10000",
            "3:69: unknown key \"intervall\" in [services.web.healthcheck]; did you mean \"interval\"?",
        ]
    );
}
