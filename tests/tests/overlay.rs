//! Overlay networks on real nodes: two hosts (each its own network namespace on a shared LAN
//! bridge, with its own containerd, D-Bus bus and `shoald`) form a cluster; a network made with
//! `shoal network create` carries a service's tasks on both hosts, which reach each other over
//! VXLAN with forwarding entries written from the cluster state.

use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use shoal_tests::images;
use shoal_tests::lan::Lan;
use shoal_tests::node::{Node, NodeOptions};

const SECRET: &str = "overlay-test-provisioning-secret-42";

fn cluster(lan: &Lan, dir: &std::path::Path) -> (Node, Node) {
    let tok = dir.join("join-token");
    std::fs::write(&tok, SECRET).unwrap();
    let tok = tok.display().to_string();
    let manager = Node::start_with(NodeOptions {
        extra_config: format!("[cluster]\nbootstrap = true\ntoken_file = \"{tok}\"\n"),
        host: Some(lan.host()),
        ..Default::default()
    });
    let worker = Node::start_with(NodeOptions {
        node_config: "role = \"worker\"".into(),
        extra_config: format!(
            "[cluster]\njoin = [\"{}\"]\ntoken_file = \"{tok}\"\n",
            manager.addr
        ),
        host: Some(lan.host()),
        ..Default::default()
    });
    manager.wait_for("two ready nodes", Duration::from_secs(60), |m| {
        let out = m.shoal(&["node", "ls", "--format", "json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rows.len() == 2 && rows.iter().all(|r| r["status"] == "ready")
    });
    (manager, worker)
}

/// Runs `args` inside the network namespace of the process `pid` (a task's container).
fn in_task(pid: u32, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(args)
        .output()
        .expect("run nsenter")
}

/// The IPv4 address of `ifname` in the container of `pid`.
fn address(pid: u32, ifname: &str) -> Option<String> {
    let out = in_task(pid, &["ip", "-o", "-4", "addr", "show", ifname]);
    let text = String::from_utf8_lossy(&out.stdout);
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    Some(word.split('/').next()?.to_string())
}

/// One HTTP/1.0 `GET http://addr:8080/` from a thread inside the network namespace of the
/// container of `pid`.
fn get_once(pid: u32, addr: &str) -> Result<String, String> {
    let ip: std::net::Ipv4Addr = addr.parse().unwrap();
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        http_get_from_here(ip, 8080)
    })
    .join()
    .unwrap()
}

/// Asks the DNS server in `/etc/resolv.conf` of the container of `pid` for the A records of
/// `name`, from inside the container's network namespace: the response code and the addresses.
fn resolve(pid: u32, name: &str) -> (ResponseCode, Vec<String>) {
    let resolv = std::fs::read_to_string(format!("/proc/{pid}/root/etc/resolv.conf")).unwrap();
    let server = resolv
        .lines()
        .find_map(|l| l.strip_prefix("nameserver "))
        .expect("a nameserver")
        .trim()
        .to_string();
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    let name = name.to_string();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(
            Name::from_ascii(&name).unwrap(),
            RecordType::A,
        ));
        sock.send_to(&q.to_vec().unwrap(), format!("{server}:53"))
            .unwrap();
        let mut buf = [0u8; 2048];
        let n = sock.recv(&mut buf).expect("a DNS answer");
        let m = Message::from_vec(&buf[..n]).unwrap();
        let mut addrs: Vec<String> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect();
        addrs.sort();
        (m.metadata.response_code, addrs)
    })
    .join()
    .unwrap()
}

/// One HTTP/1.0 GET of `http://ip:port/` from the calling thread's namespace.
fn http_get_from_here(ip: std::net::Ipv4Addr, port: u16) -> Result<String, String> {
    http_get_path_from_here(ip, port, "/")
}

/// One HTTP/1.0 GET of `http://ip:port{path}` from the calling thread's namespace.
fn http_get_path_from_here(
    ip: std::net::Ipv4Addr,
    port: u16,
    path: &str,
) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.contains(" 200 ") => Ok(body.trim().to_string()),
        _ => Err(format!("unexpected answer {text:?}")),
    }
}

/// [`get_once`], retried for a while.
fn fetch_from(pid: u32, addr: &str) -> Result<String, String> {
    let start = Instant::now();
    loop {
        match get_once(pid, addr) {
            Ok(body) => return Ok(body),
            Err(e) if start.elapsed() > Duration::from_secs(30) => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// The overlay devices and entries of each host, and what the daemons logged about them.
fn debug(nodes: &[&Node]) -> String {
    let mut out = String::new();
    for n in nodes {
        let ns = &n.host.as_ref().unwrap().ns;
        for args in [
            vec!["ip", "-n", ns, "-d", "link", "show"],
            vec!["bridge", "-n", ns, "fdb", "show"],
            vec!["ip", "-n", ns, "neigh", "show"],
            vec!["ip", "-n", ns, "-4", "route", "show", "table", "all"],
            vec!["ip", "-n", ns, "-4", "addr", "show"],
            vec!["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
        ] {
            let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
            out += &format!(
                "$ {}\n{}\n",
                args.join(" "),
                String::from_utf8_lossy(&o.stdout)
            );
        }
        for l in n
            .log()
            .lines()
            .filter(|l| l.contains("overlay") || l.contains("ERROR"))
        {
            out += l;
            out += "\n";
        }
    }
    out
}

/// `network ls` without the ingress network, which is always there.
fn network_rows(node: &Node) -> Vec<serde_json::Value> {
    all_network_rows(node)
        .into_iter()
        .filter(|r| r["Ingress"] != "true")
        .collect()
}

fn all_network_rows(node: &Node) -> Vec<serde_json::Value> {
    let out = node.shoal_ok(&["network", "ls", "--format", "json"]);
    serde_json::from_str(&out).unwrap()
}

#[test]
fn a_service_on_an_overlay_network_reaches_its_tasks_on_another_host() {
    let lan = Lan::new();
    let dir = tempfile::tempdir().unwrap();
    let (manager, worker) = cluster(&lan, dir.path());

    // The routing mesh's network is there from the start, as in Swarm, and cannot be removed.
    let ingress = all_network_rows(&manager)
        .into_iter()
        .find(|r| r["Ingress"] == "true")
        .expect("an ingress network");
    assert_eq!(ingress["Name"], "ingress");
    assert_eq!(ingress["Driver"], "overlay");
    let ingress_vni = ingress["Vni"].as_str().unwrap().to_string();
    let refused = manager.shoal(&["network", "rm", "ingress"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("routing mesh"),
        "{refused:?}"
    );

    // A network from the worker's CLI (forwarded to the leader), with a subnet larger than a /24.
    let id = worker.shoal_ok(&["network", "create", "--subnet", "10.96.0.0/20", "appnet"]);
    let id = id.trim();
    assert!(!id.is_empty());
    let rows = network_rows(&manager);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["Name"], "appnet");
    assert_eq!(rows[0]["Id"], id);
    assert_eq!(rows[0]["Driver"], "overlay");
    assert_eq!(rows[0]["Subnet"], "10.96.0.0/20");
    let table = manager.shoal_ok(&["network", "ls"]);
    assert!(
        table.starts_with("NETWORK ID") && table.contains("appnet") && table.contains("overlay"),
        "{table}"
    );
    // A name taken, and an overlapping subnet, are refused with what to do.
    let again = manager.shoal(&["network", "create", "appnet"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    let overlap = manager.shoal(&["network", "create", "--subnet", "10.96.4.0/24", "other"]);
    assert!(
        String::from_utf8_lossy(&overlap.stderr).contains("overlaps network appnet"),
        "{overlap:?}"
    );
    // A second network without a subnet gets one from the pool (not the first's).
    manager.shoal_ok(&["network", "create", "spare"]);

    // A service on the network, one task per host, each serving its own host name.
    let image = dir.path().join("bb.tar");
    images::write_oci_archive(&image, false, "example.org/bb:1");
    let image = format!("oci-archive:{}", image.display());
    manager.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        "--network",
        "appnet",
        &image,
        "sh",
        "-c",
        "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www",
    ]);
    manager.wait_for("a task on each host", Duration::from_secs(90), |m| {
        m.running("web").len() == 2
            && m.container_tasks().len() == 1
            && worker.container_tasks().len() == 1
    });
    let pid_m = manager.container_tasks()[0].1;
    let pid_w = worker.container_tasks()[0].1;
    let addr_m = address(pid_m, "eth1").expect("the manager's task has eth1");
    let addr_w = address(pid_w, "eth1").expect("the worker's task has eth1");
    assert!(
        addr_m.starts_with("10.96.") && addr_w.starts_with("10.96.") && addr_m != addr_w,
        "{addr_m} {addr_w}"
    );
    // Each task reaches the other across the hosts, over the overlay.
    let from_m = fetch_from(pid_m, &addr_w).unwrap_or_else(|e| {
        panic!(
            "manager's task does not reach the worker's: {e}\n{}",
            debug(&[&manager, &worker])
        )
    });
    let from_w = fetch_from(pid_w, &addr_m).expect("worker's task reaches the manager's");
    assert_ne!(from_m, from_w, "the two answers come from two tasks");

    // Service discovery: the tasks ask the node's DNS server; the service's name (full, or
    // short within its stack... here a plain service) gives its VIP, tasks.NAME every running
    // task's address, another name goes to the host's resolvers, and a service on a network
    // the task is not on is not answered.
    let mut both = vec![addr_m.clone(), addr_w.clone()];
    both.sort();
    let mut vips = Vec::new();
    for pid in [pid_m, pid_w] {
        let (code, addrs) = resolve(pid, "tasks.web");
        assert_eq!((code, &addrs), (ResponseCode::NoError, &both), "tasks.web");
        let (code, vip) = resolve(pid, "web");
        assert_eq!(code, ResponseCode::NoError);
        assert_eq!(vip.len(), 1, "{vip:?}");
        assert!(
            vip[0].starts_with("10.96.") && !both.contains(&vip[0]),
            "{vip:?}"
        );
        vips.push(vip[0].clone());
    }
    assert_eq!(vips[0], vips[1], "one VIP, whichever node asks");
    let vip = vips[0].clone();

    // The VIP spreads connections over both tasks, from either host.
    for pid in [pid_m, pid_w] {
        let answers: std::collections::BTreeSet<String> = (0..6)
            .map(|_| fetch_from(pid, &vip).expect("the VIP answers"))
            .collect();
        let expected: std::collections::BTreeSet<String> =
            [from_m.clone(), from_w.clone()].into_iter().collect();
        assert_eq!(answers, expected, "connections to the VIP reach both tasks");
    }
    manager.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "hidden",
        "--network",
        "spare",
        &image,
        "sleep",
        "3600",
    ]);
    manager.wait_for("hidden runs", Duration::from_secs(60), |m| {
        m.running("hidden").len() == 1
    });
    // Not answered: NXDOMAIN where the node knows the name, else whatever the host's
    // resolvers say of it (here, with no resolver reachable, SERVFAIL); never an address.
    for name in ["hidden", "tasks.hidden"] {
        let (code, addrs) = resolve(pid_m, name);
        assert!(
            addrs.is_empty() && code != ResponseCode::NoError,
            "{name}: {code:?} {addrs:?}"
        );
    }
    manager.shoal_ok(&["service", "rm", "hidden"]);

    // A DNS round-robin service: its name gives its tasks' addresses, and it has no VIP.
    manager.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "rr",
        "--replicas",
        "2",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        "appnet",
        &image,
        "sleep",
        "3600",
    ]);
    manager.wait_for(
        "rr resolves to its two tasks",
        Duration::from_secs(60),
        |_| {
            let (code, addrs) = resolve(pid_m, "rr");
            code == ResponseCode::NoError && addrs.len() == 2
        },
    );
    let (_, rr) = resolve(pid_m, "rr");
    assert_eq!(resolve(pid_m, "tasks.rr").1, rr);
    assert!(
        rr.iter().all(|a| a.starts_with("10.96.") && *a != vip),
        "{rr:?}"
    );
    manager.shoal_ok(&["service", "rm", "rr"]);

    // The network cannot go while the service names it.
    let busy = manager.shoal(&["network", "rm", "appnet"]);
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("in use by service web"),
        "{busy:?}"
    );

    // Something flushes the worker's VXLAN entries: within seconds they are back, with a log
    // line saying so.
    let vni = rows[0]["Vni"].as_str().unwrap().to_string();
    let flush = worker.host.as_ref().unwrap().run_in({
        let dev = format!("shvx-{vni}");
        move || {
            Command::new("ip")
                .args(["neigh", "flush", "dev", &dev, "nud", "permanent"])
                .status()
                .unwrap()
                .success()
        }
    });
    assert!(flush);
    let from_w = fetch_from(pid_w, &addr_m).expect("repaired after a flush");
    assert!(!from_w.is_empty());
    worker.wait_for("the repair in the log", Duration::from_secs(20), |w| {
        w.log().contains("overlay networks had drifted")
    });

    // One task stops: new connections to the VIP go to the other at once (as soon as the node
    // hears of it), never to the stopped one.
    manager.shoal_ok(&["service", "scale", "--detach", "web=1"]);
    manager.wait_for("one task left", Duration::from_secs(60), |m| {
        m.running("web").len() == 1
            && m.container_tasks().len() + worker.container_tasks().len() == 1
    });
    let survivor_pid = manager
        .container_tasks()
        .first()
        .or(worker.container_tasks().first())
        .map(|t| t.1)
        .unwrap();
    let survivor = fetch_from(survivor_pid, "127.0.0.1").expect("the survivor serves");
    for _ in 0..6 {
        assert_eq!(fetch_from(survivor_pid, &vip).unwrap(), survivor);
    }

    // `nft flush ruleset` on a host (as the NixOS nftables service does on reload): shoal's
    // table comes back within seconds, with a log line saying why.
    let ns = worker.host.as_ref().unwrap().ns.clone();
    let nft = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "nft"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(nft(&["list", "tables"]).contains("table ip "));
    assert!(
        !worker
            .log()
            .contains("nftables table was removed or changed")
    );
    // The daemon's recheck may already run between the flush and a listing, so the proof that
    // the table was gone is the daemon's own warning, not an empty listing right after.
    let flushed = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "flush", "ruleset"])
        .status()
        .unwrap();
    assert!(flushed.success(), "nft flush ruleset failed");
    worker.wait_for("shoal's table back", Duration::from_secs(30), |w| {
        nft(&["list", "tables"]).contains("table ip ")
            && w.log().contains("nftables table was removed or changed")
    });

    let server = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www";

    // The routing mesh: a port published by a service whose one task runs on the worker
    // answers on both hosts, reached from a third host of the LAN that runs nothing.
    manager.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "pub",
        "--constraint",
        "node.role==worker",
        "--publish",
        "18080:8080",
        &image,
        "sh",
        "-c",
        server,
    ]);
    manager.wait_for("pub runs on the worker", Duration::from_secs(60), |m| {
        m.running("pub").len() == 1
    });
    let client = lan.host();
    for node in [&manager, &worker] {
        let ip = node.host.as_ref().unwrap().addr;
        let body = client.run_in(move || {
            let start = Instant::now();
            loop {
                match http_get_from_here(ip, 18080) {
                    Ok(b) => return Ok(b),
                    Err(e) if start.elapsed() > Duration::from_secs(30) => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(300)),
                }
            }
        });
        assert!(
            body.as_ref().is_ok_and(|b| !b.is_empty()),
            "published port on {ip}: {body:?}\n{}",
            debug(&[&manager, &worker])
        );
    }
    manager.shoal_ok(&["service", "rm", "pub"]);

    // Two stacks, each on its own default network: a task finds its stack's service by its
    // short name, and neither reaches nor resolves the other stack's.
    for name in ["a", "b"] {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "[services.web]\nimage = \"{image}\"\ncommand = [\"sh\", \"-c\", \"{server}\"]\n"
            ),
        )
        .unwrap();
        manager.shoal_ok(&[
            "stack",
            "deploy",
            "--detach",
            "-c",
            file.to_str().unwrap(),
            name,
        ]);
    }
    manager.wait_for("both stacks running", Duration::from_secs(90), |m| {
        m.running("a_web").len() == 1 && m.running("b_web").len() == 1
    });
    let names = network_rows(&manager);
    assert!(
        ["a_default", "b_default"]
            .iter()
            .all(|n| names.iter().any(|r| r["Name"] == *n)),
        "{names:?}"
    );
    // Which container is whose: its eth1 is in its stack's subnet.
    let subnet_of = |n: &str| {
        names.iter().find(|r| r["Name"] == n).unwrap()["Subnet"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let prefix = |cidr: &str| cidr.rsplit_once('.').unwrap().0.to_string() + ".";
    let (pa, pb) = (
        prefix(&subnet_of("a_default")),
        prefix(&subnet_of("b_default")),
    );
    let mut a_task = None;
    let mut b_task = None;
    for pid in manager
        .container_tasks()
        .into_iter()
        .chain(worker.container_tasks())
        .map(|t| t.1)
    {
        match address(pid, "eth1") {
            Some(a) if a.starts_with(&pa) => a_task = Some((pid, a)),
            Some(a) if a.starts_with(&pb) => b_task = Some((pid, a)),
            _ => {}
        }
    }
    let (a_pid, _) = a_task.expect("a's task");
    let (_, b_addr) = b_task.expect("b's task");
    let (code, a_vip) = resolve(a_pid, "web");
    assert_eq!(code, ResponseCode::NoError);
    assert!(a_vip.len() == 1 && a_vip[0].starts_with(&pa), "{a_vip:?}");
    assert!(
        fetch_from(a_pid, &a_vip[0]).is_ok(),
        "a reaches its own service"
    );
    let (_, other) = resolve(a_pid, "b_web");
    assert!(other.is_empty(), "b_web resolved from stack a: {other:?}");
    assert!(
        get_once(a_pid, &b_addr).is_err(),
        "stack a reached stack b's task at {b_addr}"
    );
    manager.shoal_ok(&["stack", "rm", "a", "b"]);

    // Removing the service, then the networks, leaves no overlay device on either host.
    manager.shoal_ok(&["service", "rm", "web"]);
    manager.wait_for("no containers", Duration::from_secs(60), |m| {
        m.container_tasks().is_empty() && worker.container_tasks().is_empty()
    });
    manager.wait_for("the network free", Duration::from_secs(60), |m| {
        m.shoal(&["network", "rm", "appnet"]).status.success()
    });
    manager.shoal_ok(&["network", "rm", "spare"]);
    // The stacks' networks go by themselves once their tasks are gone.
    manager.wait_for("no network left", Duration::from_secs(60), |m| {
        network_rows(m).is_empty()
    });
    for node in [&manager, &worker] {
        node.wait_for("no overlay devices", Duration::from_secs(20), |n| {
            let links = n.host.as_ref().unwrap().run_in(|| {
                let out = Command::new("ip")
                    .args(["-o", "link", "show"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            });
            // The ingress network's devices stay: the mesh uses them.
            let links = links
                .replace(&format!("shvx-{ingress_vni}"), "")
                .replace(&format!("shbr-{ingress_vni}"), "");
            !links.contains("shvx-") && !links.contains("shbr-") && !links.contains(" shw")
        });
    }
}

/// Runs `cmd` with `args` inside the network namespace `ns` (`ip netns exec`); its stdout.
fn in_ns(ns: &str, cmd: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, cmd])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a host's kernel networking looks like: links, addresses, routes, nftables (without
/// counters) and the iptables filter table. Interface indexes and the carrier state, which the
/// kernel changes by itself, are left out.
fn snapshot(ns: &str) -> String {
    let links: Vec<String> = in_ns(ns, "ip", &["-o", "link", "show"])
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .collect();
    let addrs: Vec<String> = in_ns(ns, "ip", &["-o", "-4", "addr", "show"])
        .lines()
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    format!(
        "links: {links:?}\naddrs: {addrs:?}\nroutes:\n{}\nnft:\n{}\niptables:\n{}",
        // A bridge whose last port went away says `linkdown`; one that never had a port not.
        // IPv4 only: shoal has no IPv6 routes, and the kernel adds link-local ones by itself.
        in_ns(ns, "ip", &["-4", "route", "show", "table", "all"]).replace(" linkdown", ""),
        in_ns(ns, "nft", &["-s", "list", "ruleset"]),
        in_ns(ns, "iptables", &["-w", "-S"]),
    )
}

/// The rules Docker writes into iptables' filter table (FORWARD policy DROP, its DOCKER-USER
/// and isolation chains), bridge netfilter on, and a strict reverse-path filter (the NixOS
/// firewall's default), on host `ns`.
fn docker_and_strict_rp_filter(ns: &str) {
    for args in [
        &["-N", "DOCKER"][..],
        &["-N", "DOCKER-ISOLATION-STAGE-1"],
        &["-N", "DOCKER-ISOLATION-STAGE-2"],
        &["-N", "DOCKER-USER"],
        &["-A", "DOCKER-USER", "-j", "RETURN"],
        &["-A", "DOCKER-ISOLATION-STAGE-1", "-j", "RETURN"],
        &["-A", "DOCKER-ISOLATION-STAGE-2", "-j", "RETURN"],
        &["-A", "FORWARD", "-j", "DOCKER-USER"],
        &["-A", "FORWARD", "-j", "DOCKER-ISOLATION-STAGE-1"],
        &["-A", "FORWARD", "-o", "docker0", "-j", "DOCKER"],
        &["-P", "FORWARD", "DROP"],
    ] {
        in_ns(ns, "iptables", &[&["-w"], args].concat());
    }
    in_ns(
        ns,
        "sh",
        &[
            "-c",
            "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables && \
             sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.default.rp_filter=1 \
             net.ipv4.conf.eth0.rp_filter=1",
        ],
    );
}

/// Docker's tutorial, then the example stack of `configs/`, on three hosts that have Docker's
/// iptables rules and a strict reverse-path filter: an overlay network, a published port
/// answered on every node, a front end reaching its API by name, a port bound to one address,
/// tasks that move when a node is drained (DNS and the mesh follow), and after removing
/// everything each host's links, addresses, routes and rules as they were before.
#[test]
fn the_tutorial_and_the_example_stack_work_across_three_hosts_with_docker_rules() {
    let lan = Lan::new();
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("join-token");
    std::fs::write(&tok, SECRET).unwrap();
    let tok = tok.display().to_string();
    let host = || {
        let h = lan.host();
        docker_and_strict_rp_filter(&h.ns);
        h
    };
    let manager = Node::start_with(NodeOptions {
        extra_config: format!("[cluster]\nbootstrap = true\ntoken_file = \"{tok}\"\n"),
        host: Some(host()),
        ..Default::default()
    });
    let workers: Vec<Node> = (0..2)
        .map(|_| {
            Node::start_with(NodeOptions {
                node_config: "role = \"worker\"".into(),
                extra_config: format!(
                    "[cluster]\njoin = [\"{}\"]\ntoken_file = \"{tok}\"\n",
                    manager.addr
                ),
                host: Some(host()),
                ..Default::default()
            })
        })
        .collect();
    let nodes: Vec<&Node> = std::iter::once(&manager).chain(&workers).collect();
    manager.wait_for("three ready nodes", Duration::from_secs(90), |m| {
        let out = m.shoal(&["node", "ls", "--format", "json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rows.len() == 3 && rows.iter().all(|r| r["status"] == "ready")
    });
    let ns = |n: &Node| n.host.as_ref().unwrap().ns.clone();
    // Each node accepts its traffic in Docker's DOCKER-USER chain, ahead of Docker's DROP.
    for n in &nodes {
        n.wait_for(
            "shoal's rules in DOCKER-USER",
            Duration::from_secs(30),
            |n| {
                in_ns(&ns(n), "iptables", &["-w", "-S", "DOCKER-USER"])
                    .lines()
                    .nth(1)
                    .is_some_and(|l| l.contains("--comment shoal"))
            },
        );
    }
    let before: Vec<String> = nodes.iter().map(|n| snapshot(&ns(n))).collect();
    // A log written to a file has no terminal colour codes.
    assert!(!manager.log().contains('\u{1b}'), "colour codes in the log");

    let image = dir.path().join("bb.tar");
    images::write_oci_archive(&image, false, "example.org/bb:1");
    let image = format!("oci-archive:{}", image.display());
    let client = lan.host();
    let get = |node: &Node, port: u16, path: &str| {
        let ip = node.host.as_ref().unwrap().addr;
        let path = path.to_string();
        client.run_in(move || {
            let start = Instant::now();
            loop {
                match http_get_path_from_here(ip, port, &path) {
                    Ok(b) => return Ok(b),
                    Err(e) if start.elapsed() > Duration::from_secs(30) => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(300)),
                }
            }
        })
    };

    // The tutorial: an overlay network and a published service on it, two replicas on three
    // nodes, answered on every node (one of them runs no task).
    manager.shoal_ok(&["network", "create", "-d", "overlay", "nginx_net"]);
    manager.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "my-web",
        "--publish",
        "published=8080,target=80",
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        "--network",
        "nginx_net",
        &image,
        "sh",
        "-c",
        "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    manager.wait_for("my-web runs", Duration::from_secs(90), |m| {
        m.running("my-web").len() == 2
    });
    for n in &nodes {
        let body = get(n, 8080, "/");
        assert!(
            body.as_ref().is_ok_and(|b| !b.is_empty()),
            "my-web on {}: {body:?}\n{}",
            n.addr,
            debug(&nodes)
        );
    }
    // The node without a task forwards over the ingress network: to the other nodes' ingress
    // addresses, not their LAN addresses.
    let ingress = all_network_rows(&manager)
        .into_iter()
        .find(|r| r["Name"] == "ingress")
        .expect("the ingress network in network ls");
    let subnet = ingress["Subnet"].as_str().unwrap();
    let prefix = subnet.rsplit_once('.').unwrap().0.to_string() + ".";
    let idle = nodes
        .iter()
        .find(|n| n.container_tasks().is_empty())
        .expect("a node without a task");
    let rules = in_ns(&ns(idle), "nft", &["list", "ruleset"]);
    let forward = rules
        .lines()
        .find(|l| l.contains("dport 8080") && l.contains("dnat"))
        .unwrap_or_default();
    assert!(
        forward.contains(&format!(" : {prefix}")) && !forward.contains(" : 10.234."),
        "forwarded over {subnet}: {forward}"
    );
    // The host routes only the other nodes' ingress addresses, never the ingress subnet (a LAN
    // using the same subnet stays reachable); a deleted route comes back.
    let routes = in_ns(&ns(idle), "ip", &["-4", "route", "show"]);
    let peer_routes: Vec<&str> = routes
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(" dev shbr-"))
        .collect();
    assert_eq!(peer_routes.len(), 2, "{routes}");
    assert!(!routes.contains(&format!("{subnet} ")), "{routes}");
    let gone = peer_routes[0]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    in_ns(&ns(idle), "ip", &["route", "del", &gone]);
    idle.wait_for("the ingress route back", Duration::from_secs(20), |n| {
        in_ns(&ns(n), "ip", &["-4", "route", "show"]).contains(&format!("{gone} dev shbr-"))
    });
    manager.shoal_ok(&["service", "rm", "my-web"]);
    manager.wait_for("nginx_net free", Duration::from_secs(60), |m| {
        m.shoal(&["network", "rm", "nginx_net"]).status.success()
    });

    // The example stack of configs/, with the image at hand.
    let stack = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/stacks/demo.toml"),
    )
    .unwrap()
    .replace("oci-archive:/var/lib/shoal/images/busybox.tar", &image);
    let file = dir.path().join("demo.toml");
    std::fs::write(&file, stack).unwrap();
    manager.shoal_ok(&[
        "stack",
        "deploy",
        "--detach",
        "-c",
        file.to_str().unwrap(),
        "demo",
    ]);
    manager.wait_for("demo runs", Duration::from_secs(120), |m| {
        m.running("demo_web").len() == 2 && m.running("demo_api").len() == 2
    });
    // Every node's published port reaches the API through the front end.
    let api_through_every_node = |when: &str| {
        for n in &nodes {
            let body = get(n, 8080, "/cgi-bin/api");
            assert!(
                body.as_ref()
                    .is_ok_and(|b| b.contains("asked the api: hello from api")),
                "{when}, on {}: {body:?}\n{}",
                n.addr,
                debug(&nodes)
            );
        }
    };
    api_through_every_node("deployed");

    // A port bound to 127.0.0.1, its one task on the last worker: not answered on the LAN,
    // answered on 127.0.0.1 of the node that runs it and of a node that does not.
    let last = &workers[1];
    let info: serde_json::Value =
        serde_json::from_str(&last.shoal_ok(&["info", "--format", "json"])).unwrap();
    let last_id = info["node_id"]
        .as_str()
        .expect("node_id in info")
        .to_string();
    manager.shoal_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "local",
        "--constraint",
        &format!("node.id=={last_id}"),
        "--publish",
        "127.0.0.1:18081:80",
        &image,
        "sh",
        "-c",
        "mkdir -p /www && echo bound > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    manager.wait_for("local runs", Duration::from_secs(60), |m| {
        m.running("local").len() == 1
    });
    for n in [last, &manager] {
        let body = n.host.as_ref().unwrap().run_in(|| {
            let start = Instant::now();
            loop {
                match http_get_from_here(std::net::Ipv4Addr::LOCALHOST, 18081) {
                    Ok(b) => return Ok(b),
                    Err(e) if start.elapsed() > Duration::from_secs(30) => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(300)),
                }
            }
        });
        assert_eq!(
            body.as_deref(),
            Ok("bound"),
            "127.0.0.1:18081 on {}",
            n.addr
        );
    }
    let lan_ip = last.host.as_ref().unwrap().addr;
    assert!(
        client
            .run_in(move || http_get_from_here(lan_ip, 18081))
            .is_err(),
        "a port bound to 127.0.0.1 answered on the LAN"
    );
    manager.shoal_ok(&["service", "rm", "local"]);

    // Tasks move: the node running an API task is drained; tasks.api follows the running
    // tasks, and every node's published port still reaches the API through the front end.
    let web_pid = || {
        // Containers are named NAME.SLOT.TASK_ID.
        nodes
            .iter()
            .flat_map(|n| n.container_tasks())
            .find(|(id, _)| id.starts_with("demo_web."))
            .map(|t| t.1)
            .expect("a web task's container")
    };
    let (_, api_before) = resolve(web_pid(), "tasks.api");
    assert_eq!(api_before.len(), 2, "{api_before:?}");
    let api_node = manager.running("demo_api")[0].node.clone();
    manager.shoal_ok(&["node", "update", "--availability", "drain", &api_node]);
    manager.wait_for("api tasks moved", Duration::from_secs(120), |m| {
        let api = m.running("demo_api");
        let web = m.running("demo_web");
        api.len() == 2
            && web.len() == 2
            && api.iter().chain(&web).all(|t| t.node != api_node)
            && resolve(web_pid(), "tasks.api").1.len() == 2
    });
    let (_, api_after) = resolve(web_pid(), "tasks.api");
    assert_ne!(api_before, api_after, "tasks.api did not follow the move");
    for addr in &api_after {
        let pid = web_pid();
        let addr = addr.clone();
        let body = std::thread::spawn(move || {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            http_get_from_here(addr.parse().unwrap(), 80)
        })
        .join()
        .unwrap();
        assert!(
            body.as_ref().is_ok_and(|b| b.starts_with("hello from api")),
            "{body:?}"
        );
    }
    api_through_every_node("after the move");
    manager.shoal_ok(&["node", "update", "--availability", "active", &api_node]);

    // Everything removed: each host as it was before the first service.
    manager.shoal_ok(&["stack", "rm", "demo"]);
    manager.wait_for(
        "no containers and no network",
        Duration::from_secs(90),
        |m| nodes.iter().all(|n| n.container_tasks().is_empty()) && network_rows(m).is_empty(),
    );
    for (n, before) in nodes.iter().zip(&before) {
        let start = Instant::now();
        loop {
            let now = snapshot(&ns(n));
            if now == *before {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "host {} differs after removing everything:\nbefore:\n{before}\nnow:\n{now}",
                n.addr
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
