//! Plain aligned tables and human-readable times, the way the docker CLI prints them.

use std::collections::BTreeMap;

use model::{Placement, short_id};
use shoal_dbus::{NodeRow, ServiceRow, StackRow, TaskHealthView, TaskRow};

/// Columns separated by at least three spaces; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width = vec![0usize; cols];
    for (i, h) in header.iter().enumerate() {
        width[i] = h.chars().count();
    }
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(c);
                let pad = width[i] - c.chars().count() + 3;
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// Docker's `units.HumanDuration`.
pub fn human_duration(ms: u64) -> String {
    let secs = ms / 1000;
    if secs < 1 {
        return "Less than a second".into();
    }
    if secs == 1 {
        return "1 second".into();
    }
    if secs < 60 {
        return format!("{secs} seconds");
    }
    let mins = secs / 60;
    if mins == 1 {
        return "About a minute".into();
    }
    if mins < 60 {
        return format!("{mins} minutes");
    }
    let hours = (secs as f64 / 3600.0).round() as u64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", hours / 24 / 365)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

pub fn service_ls(rows: &[ServiceRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                short_id(&r.id).to_string(),
                r.name.clone(),
                r.mode.clone(),
                if r.mode.ends_with("-job") {
                    // Swarm's form: running tasks, then completions.
                    format!(
                        "{}/{} ({}/{} completed)",
                        r.running, r.desired, r.completed, r.desired
                    )
                } else {
                    format!("{}/{}", r.running, r.desired)
                },
                r.image.clone(),
                r.ports
                    .iter()
                    .map(|p| p.display())
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], &body)
}

/// Sort tasks like docker: by service, slot (or node), newest first within a slot.
pub fn sort_tasks(tasks: &mut [TaskRow]) {
    tasks.sort_by(|a, b| {
        a.service
            .cmp(&b.service)
            .then(a.slot.cmp(&b.slot))
            .then(a.node_id.cmp(&b.node_id))
            .then(b.created_at.cmp(&a.created_at))
            .then(b.id.cmp(&a.id))
    });
}

/// `service ps` / `stack ps`: the newest task of a slot by name, older ones as ` \_ name`.
/// `service ps`: docker's columns; a task that runs a healthcheck shows its health after its
/// state, as `docker ps` does (`Running 5 seconds ago (healthy)`).
pub fn service_ps(
    tasks: &[TaskRow],
    health: &BTreeMap<String, TaskHealthView>,
    now: u64,
    no_trunc: bool,
) -> String {
    let mut tasks = tasks.to_vec();
    sort_tasks(&mut tasks);
    let mut body = Vec::new();
    let mut prev_slot: Option<(String, u64, String)> = None;
    for t in &tasks {
        let key = (t.service.clone(), t.slot, t.node_id.clone());
        let key = if t.slot > 0 {
            (key.0, key.1, String::new())
        } else {
            key
        };
        let name = if prev_slot.as_ref() == Some(&key) {
            format!(" \\_ {}", t.name)
        } else {
            t.name.clone()
        };
        prev_slot = Some(key);
        let since = human_duration(now.saturating_sub(t.state_since));
        let error = if t.error.is_empty() {
            String::new()
        } else if no_trunc || t.error.chars().count() <= 30 {
            format!("\"{}\"", t.error)
        } else {
            let cut: String = t.error.chars().take(29).collect();
            format!("\"{cut}…\"")
        };
        body.push(vec![
            if no_trunc {
                t.id.clone()
            } else {
                short_id(&t.id).to_string()
            },
            name,
            t.image.clone(),
            t.node.clone(),
            capitalize(&t.desired),
            match health.get(&t.id) {
                Some(h) if !t.state().is_some_and(|s| s.is_terminal()) => {
                    let h = if h.status == "healthy" {
                        h.status.clone()
                    } else {
                        format!("health: {}", h.status)
                    };
                    format!("{} {} ago ({h})", capitalize(&t.state), since)
                }
                _ => format!("{} {} ago", capitalize(&t.state), since),
            },
            error,
        ]);
    }
    table(
        &[
            "ID",
            "NAME",
            "IMAGE",
            "NODE",
            "DESIRED STATE",
            "CURRENT STATE",
            "ERROR",
        ],
        &body,
    )
}

/// The `Placement:` block of `service inspect --pretty`, as docker prints it: the header, then
/// only the parts that are set, lists in Go's `[a b]` form.
pub fn placement_pretty(p: &Placement) -> String {
    let list = |items: Vec<String>| format!("[{}]", items.join(" "));
    let mut out = String::from("Placement:\n");
    if !p.constraints.is_empty() {
        let c = p.constraints.iter().map(ToString::to_string).collect();
        out.push_str(&format!(" Constraints:\t{}\n", list(c)));
    }
    if !p.preferences.is_empty() {
        let s = p.preferences.iter().map(ToString::to_string).collect();
        out.push_str(&format!(" Preferences:   {}\n", list(s)));
    }
    if let Some(n) = p.max_replicas_per_node {
        out.push_str(&format!(" Max Replicas Per Node:   {n}\n"));
    }
    out
}

pub fn node_ls(rows: &[NodeRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|n| {
            let id = if n.is_self {
                format!("{} *", short_id(&n.id))
            } else {
                short_id(&n.id).to_string()
            };
            vec![
                id,
                n.name.clone(),
                capitalize(&n.status),
                capitalize(&n.availability),
                capitalize(&n.manager_status),
                n.version.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "MANAGER STATUS",
            "ENGINE VERSION",
        ],
        &body,
    )
}

pub fn stack_ls(rows: &[StackRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|s| vec![s.name.clone(), s.services.to_string(), s.status.clone()])
        .collect();
    table(&["NAME", "SERVICES", "STATUS"], &body)
}

/// `shoal info`: this node, then the cluster section as `docker info` shows Swarm's.
pub fn info(info: &shoal_dbus::ClusterInfo, d: &std::collections::BTreeMap<String, String>) {
    let get = |k: &str| d.get(k).cloned().unwrap_or_default();
    let leader = if info.is_leader { " (leader)" } else { "" };
    println!("Node: {} ({})", info.node_name, info.node_id);
    println!("Role: {}{leader}", info.role);
    println!("Status: {}", info.status);
    if get("node_in_cluster") != "true" && info.cluster_id.is_empty() {
        println!("Cluster: inactive");
    } else {
        println!("Cluster: active");
        println!(" Cluster ID: {}", get("cluster_id"));
        println!(" Is Manager: {}", info.role == "manager");
        println!(" Node Address: {}", get("node_addr"));
        println!(" Managers: {}", get("managers"));
        println!(" Nodes: {}", get("nodes"));
        let addrs = get("manager_addresses");
        if !addrs.is_empty() {
            println!(" Manager Addresses:");
            for a in addrs.split(',') {
                println!("  {a}");
            }
        }
        let ms = |k: &str| get(k).parse::<u64>().map(go_duration).unwrap_or_default();
        println!(" Dispatcher:");
        println!("  Heartbeat Period: {}", ms("heartbeat_period_ms"));
        println!(" Orchestration:");
        println!(
            "  Task History Retention Limit: {}",
            get("task_history_limit")
        );
        println!(" Raft:");
        println!("  Snapshot Interval: {}", get("snapshot_interval"));
        if d.contains_key("raft_role") && info.role == "manager" {
            println!("  Role: {}", get("raft_role"));
            println!("  Term: {}", get("raft_term"));
            println!("  Last Log Index: {}", get("raft_last_index"));
            println!("  Voters: {}", get("raft_voters"));
        }
        println!(" CA Configuration:");
        println!("  Expiry Duration: {}", ms("cert_expiry_ms"));
        let when = |k: &str| {
            get(k)
                .parse::<i64>()
                .ok()
                .map(|secs| {
                    let left_ms = secs.saturating_mul(1000) - info.now as i64;
                    format!("in {} days", left_ms / 86_400_000)
                })
                .unwrap_or_default()
        };
        println!("  CA Certificate Expires: {}", when("ca_expiry"));
        println!("  Node Certificate Expires: {}", when("node_cert_expiry"));
        println!(" Autolock Managers: {}", get("autolock"));
    }
    if info.role == "manager" {
        println!("Services: {}", info.services);
        println!("Tasks: {} ({} running)", info.tasks, info.running);
        println!("Stacks: {}", info.stacks);
    }
    println!("Version: {}", info.version);
}

/// A duration as Go (and so docker) prints it: `1s`, `1m30s`, `2160h0m0s`, `500ms`.
pub fn go_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, rest) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let secs = if rest == 0 {
        format!("{s}s")
    } else {
        format!("{}s", format!("{s}.{rest:03}").trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_dbus::PortRow;

    #[test]
    fn columns_align_with_three_spaces() {
        let out = table(
            &["ID", "NAME"],
            &[
                vec!["abc".into(), "web".into()],
                vec!["a".into(), "longer".into()],
            ],
        );
        assert_eq!(out, "ID    NAME\nabc   web\na     longer\n");
    }

    #[test]
    fn service_ls_matches_docker_columns() {
        let rows = vec![ServiceRow {
            id: "0123456789abcdefghij".into(),
            name: "web".into(),
            mode: "replicated".into(),
            running: 2,
            desired: 3,
            image: "nginx:1.27".into(),
            ports: vec![PortRow {
                published: 8080,
                target: 80,
                protocol: "tcp".into(),
                mode: "ingress".into(),
            }],
            ..Default::default()
        }];
        let out = service_ls(&rows);
        let mut lines = out.lines();
        assert_eq!(
            lines.next().unwrap(),
            "ID             NAME   MODE         REPLICAS   IMAGE        PORTS"
        );
        assert_eq!(
            lines.next().unwrap(),
            "0123456789ab   web    replicated   2/3        nginx:1.27   *:8080->80/tcp"
        );
    }

    #[test]
    fn human_durations_follow_docker() {
        assert_eq!(human_duration(300), "Less than a second");
        assert_eq!(human_duration(1_000), "1 second");
        assert_eq!(human_duration(5_000), "5 seconds");
        assert_eq!(human_duration(60_000), "About a minute");
        assert_eq!(human_duration(5 * 60_000), "5 minutes");
        assert_eq!(human_duration(3_600_000), "About an hour");
        assert_eq!(human_duration(3 * 3_600_000), "3 hours");
        assert_eq!(human_duration(3 * 24 * 3_600_000), "3 days");
    }

    fn task(id: &str, slot: u64, created: u64, state: &str, desired: &str) -> TaskRow {
        TaskRow {
            id: id.into(),
            name: format!("web.{slot}"),
            service: "web".into(),
            slot,
            node: "n1".into(),
            image: "busybox".into(),
            desired: desired.into(),
            state: state.into(),
            state_since: created,
            created_at: created,
            exit_code: -1,
            ..Default::default()
        }
    }

    #[test]
    fn ps_shows_the_health_of_live_tasks() {
        let view = |status: &str| TaskHealthView {
            status: status.into(),
            ..Default::default()
        };
        let tasks = vec![
            task("a", 1, 1_000, "running", "running"),
            task("b", 2, 1_000, "starting", "running"),
            task("c", 3, 1_000, "failed", "shutdown"),
        ];
        let health: BTreeMap<String, TaskHealthView> = [
            ("a".to_string(), view("healthy")),
            ("b".to_string(), view("starting")),
            ("c".to_string(), view("unhealthy")),
        ]
        .into_iter()
        .collect();
        let out = service_ps(&tasks, &health, 3_000, false);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[1].contains("Running 2 seconds ago (healthy)"),
            "{out}"
        );
        assert!(
            lines[2].contains("Starting 2 seconds ago (health: starting)"),
            "{out}"
        );
        assert!(lines[3].contains("Failed 2 seconds ago"), "{out}");
        assert!(!lines[3].contains("unhealthy"), "{out}");
    }

    #[test]
    fn ps_shows_history_under_the_current_task() {
        let mut failed = task("old1", 1, 1_000, "failed", "shutdown");
        failed.error = "task: non-zero exit (1)".into();
        let tasks = vec![
            failed,
            task("new1", 1, 2_000, "running", "running"),
            task("new2", 2, 2_000, "running", "running"),
        ];
        let out = service_ps(&tasks, &BTreeMap::new(), 7_000, false);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("ID "));
        assert!(lines[0].contains("DESIRED STATE   CURRENT STATE"));
        assert!(lines[1].starts_with("new1 "), "{out}");
        assert!(
            lines[1].contains("Running         Running 5 seconds ago"),
            "{out}"
        );
        assert!(lines[2].contains(" \\_ web.1"), "{out}");
        assert!(lines[2].contains("\"task: non-zero exit (1)\""), "{out}");
        assert!(lines[3].contains("web.2"), "{out}");
        assert!(!lines[3].contains("\\_"), "{out}");
    }

    #[test]
    fn ps_shows_why_a_pending_task_has_no_node() {
        let mut pending = task("pend1", 1, 1_000, "pending", "running");
        pending.node = String::new();
        pending.error = "no suitable node (scheduling constraints not satisfied on 3 nodes)".into();
        let out = service_ps(
            std::slice::from_ref(&pending),
            &BTreeMap::new(),
            3_000,
            false,
        );
        let row = out.lines().nth(1).unwrap();
        assert!(
            row.ends_with(
                "Running         Pending 2 seconds ago   \"no suitable node (scheduling …\""
            ),
            "{out}"
        );
        let out = service_ps(&[pending], &BTreeMap::new(), 3_000, true);
        assert!(
            out.lines().nth(1).unwrap().ends_with(
                "\"no suitable node (scheduling constraints not satisfied on 3 nodes)\""
            ),
            "{out}"
        );
    }

    #[test]
    fn placement_pretty_prints_like_docker() {
        assert_eq!(placement_pretty(&Placement::default()), "Placement:\n");
        let p = spec::placement::parse_placement(
            &["node.labels.zone==a".into(), "node.role != manager".into()],
            &["spread=node.labels.zone".into()],
            2,
        )
        .unwrap();
        assert_eq!(
            placement_pretty(&p),
            "Placement:\n Constraints:\t[node.labels.zone == a node.role != manager]\n \
             Preferences:   [spread=node.labels.zone]\n Max Replicas Per Node:   2\n"
        );
    }

    #[test]
    fn go_durations_match_docker_info() {
        assert_eq!(go_duration(1000), "1s");
        assert_eq!(go_duration(500), "500ms");
        assert_eq!(go_duration(90_000), "1m30s");
        assert_eq!(go_duration(10_500), "10.5s");
        assert_eq!(go_duration(2160 * 3_600_000), "2160h0m0s");
    }

    #[test]
    fn node_ls_marks_self_and_leader() {
        let out = node_ls(&[NodeRow {
            id: "abcdefabcdefabcdef".into(),
            name: "m1".into(),
            status: "ready".into(),
            availability: "active".into(),
            manager_status: "leader".into(),
            is_self: true,
            ..Default::default()
        }]);
        assert_eq!(
            out.lines().nth(1).unwrap(),
            "abcdefabcdef *   m1         Ready    Active         Leader"
        );
    }
}
