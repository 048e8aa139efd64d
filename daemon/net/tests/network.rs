//! Real-kernel tests of the node network: namespaces, the bridge and veths made over rtnetlink,
//! published ports through nftables. They need root, `nft`, `ip`, `nsenter` and `busybox`; the
//! upgrade test also needs the CNI plugins in `/usr/lib/cni` and `iptables`.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

use common::{
    Env, http_get, http_get_eventually, httpd, in_netns, nft_table, ping_from, random_port,
    udp_request, with_config, with_network,
};
use net::{Error, NetConfig, Network, PortBinding, Protocol};

fn tcp(published: u16, backends: &[(Ipv4Addr, u16)]) -> PortBinding {
    PortBinding {
        remote: Vec::new(),
        host_ip: None,
        peers: Vec::new(),
        published,
        protocol: Protocol::Tcp,
        backends: backends.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_tasks_reach_each_other_and_survive_a_restart() {
    with_network(1, |env: Env| async move {
        let net = &env.net;
        let a = net.attach("task-a").await.expect("attach task-a");
        let b = net.attach("task-b").await.expect("attach task-b");

        assert_ne!(a.ip, b.ip, "two tasks got the same address");
        for att in [&a, &b] {
            assert!(
                net.subnet().contains(att.ip),
                "{} outside the subnet",
                att.ip
            );
            assert_ne!(att.ip, net.gateway());
            assert_eq!(att.gateway, net.gateway());
            assert_eq!(att.prefix_len, 24);
            assert_eq!(
                att.netns_path,
                env.config().run_dir.join("netns").join(&att.task_id)
            );
        }
        assert!(ping_from(&a.netns_path, b.ip), "task-a cannot ping task-b");
        assert!(ping_from(&b.netns_path, a.ip), "task-b cannot ping task-a");
        assert!(
            ping_from(&a.netns_path, net.gateway()),
            "task-a cannot ping the gateway"
        );
        assert!(
            ping_from(&a.netns_path, Ipv4Addr::LOCALHOST),
            "lo is down in task-a"
        );
        net.check("task-a").await.expect("check of task-a");

        // Attaching again is a no-op returning the same attachment.
        assert_eq!(net.attach("task-a").await.unwrap(), a);
        assert_eq!(net.attachments().unwrap(), ["task-a", "task-b"]);

        // A restarted daemon (a new Network over the same directories) finds everything.
        let restarted = Network::new(env.config()).unwrap();
        restarted.setup().await.expect("setup after restart");
        assert_eq!(restarted.attachment("task-a"), Some(a.clone()));
        assert_eq!(restarted.attach("task-a").await.unwrap(), a);
        assert_eq!(restarted.attachments().unwrap(), ["task-a", "task-b"]);
        assert!(
            ping_from(&b.netns_path, a.ip),
            "task-a unreachable after the restart"
        );

        // Detach is idempotent and releases everything.
        let ipam_file = env
            .config()
            .state_dir
            .join("net/ipam")
            .join(&env.config().bridge)
            .join(a.ip.to_string());
        assert!(ipam_file.exists(), "no allocation file {ipam_file:?}");
        restarted.detach("task-a").await.expect("detach task-a");
        restarted
            .detach("task-a")
            .await
            .expect("detach task-a again");
        restarted
            .detach("never-attached")
            .await
            .expect("detach an unknown task");
        assert!(!a.netns_path.exists(), "namespace file left after detach");
        assert!(!ipam_file.exists(), "address not released after detach");
        assert_eq!(restarted.attachment("task-a"), None);
        assert_eq!(net.attachments().unwrap(), ["task-b"]);
        assert!(matches!(
            net.check("task-a").await,
            Err(Error::NotAttached { .. })
        ));
        assert!(
            ping_from(&b.netns_path, net.gateway()),
            "task-b lost its link"
        );

        // Attaching again after detach gives a working attachment.
        let a2 = net.attach("task-a").await.expect("re-attach task-a");
        assert!(
            ping_from(&a2.netns_path, b.ip),
            "re-attached task-a cannot reach task-b"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_port_is_reachable_on_every_node_address() {
    with_network(2, |env: Env| async move {
        let net = &env.net;
        let web = net.attach("web-1").await.unwrap();
        let client = net.attach("client-1").await.unwrap();
        let _server = httpd(&web.netns_path, &env.www("web", "hello from web-1"));
        // The server answers on its own address first.
        assert_eq!(
            http_get_eventually(SocketAddr::from((web.ip, 80))),
            "hello from web-1"
        );

        let port = random_port();
        net.sync_ports(&[tcp(port, &[(web.ip, 80)])])
            .await
            .expect("publish the port");
        let host = common::host_address(net.gateway());
        for addr in [Ipv4Addr::LOCALHOST, host, net.gateway()] {
            assert_eq!(
                http_get_eventually(SocketAddr::from((addr, port))),
                "hello from web-1",
                "published port on {addr}"
            );
        }
        // From another task, and from the serving task itself (hairpin), through the node address.
        for from in [&client, &web] {
            let body = in_netns(&from.netns_path, move || {
                http_get_eventually(SocketAddr::from((host, port)))
            });
            assert_eq!(body, "hello from web-1", "from {}", from.task_id);
        }

        // A binding without backends, and then an empty list, stop serving the port.
        net.sync_ports(&[tcp(port, &[])]).await.unwrap();
        assert!(!nft_table(&env.config().nft_table).contains(&format!("dport {port}")));
        assert!(http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_err());
        net.sync_ports(&[tcp(port, &[(web.ip, 80)])]).await.unwrap();
        assert_eq!(
            http_get_eventually(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
            "hello from web-1"
        );
        net.sync_ports(&[]).await.unwrap();
        assert!(!nft_table(&env.config().nft_table).contains(&format!("dport {port}")));
        assert!(
            http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_err(),
            "port still served after sync_ports(&[])"
        );

        // Bound to one address: served there only.
        let mut bound = tcp(port, &[(web.ip, 80)]);
        bound.host_ip = Some(Ipv4Addr::LOCALHOST);
        net.sync_ports(&[bound]).await.unwrap();
        assert_eq!(
            http_get_eventually(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
            "hello from web-1"
        );
        for addr in [host, net.gateway()] {
            assert!(
                http_get(SocketAddr::from((addr, port))).is_err(),
                "a port bound to 127.0.0.1 answered on {addr}"
            );
        }

        // setup() after a restart keeps serving what is published.
        net.sync_ports(&[tcp(port, &[(web.ip, 80)])]).await.unwrap();
        Network::new(env.config()).unwrap().setup().await.unwrap();
        assert_eq!(
            http_get_eventually(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
            "hello from web-1"
        );
        net.teardown_ports().await.unwrap();
        net.teardown_ports().await.expect("teardown is idempotent");
        assert!(http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_port_balances_over_all_backends() {
    with_network(3, |env: Env| async move {
        let net = &env.net;
        let a = net.attach("lb-a").await.unwrap();
        let b = net.attach("lb-b").await.unwrap();
        let _sa = httpd(&a.netns_path, &env.www("a", "backend a"));
        let _sb = httpd(&b.netns_path, &env.www("b", "backend b"));
        for t in [&a, &b] {
            http_get_eventually(SocketAddr::from((t.ip, 80)));
        }

        let port = random_port();
        net.sync_ports(&[tcp(port, &[(a.ip, 80), (b.ip, 80)])])
            .await
            .unwrap();
        let mut hits = BTreeMap::<String, usize>::new();
        for _ in 0..10 {
            let body = http_get_eventually(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
            *hits.entry(body).or_default() += 1;
        }
        assert_eq!(
            hits.keys().collect::<Vec<_>>(),
            ["backend a", "backend b"],
            "hits: {hits:?}"
        );

        // Dropping a backend sends every new connection to the other.
        net.sync_ports(&[tcp(port, &[(b.ip, 80)])]).await.unwrap();
        for _ in 0..6 {
            assert_eq!(
                http_get_eventually(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
                "backend b"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_udp_port_reaches_a_task() {
    with_network(4, |env: Env| async move {
        let net = &env.net;
        let task = net.attach("udp-1").await.unwrap();
        let server = in_netns(&task.netns_path, || UdpSocket::bind(("0.0.0.0", 7000)))
            .expect("bind a UDP socket in the task namespace");
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            // Echo until the test is done (it sends "stop").
            loop {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                server.send_to(&buf[..n], from).unwrap();
                if &buf[..n] == b"stop" {
                    break;
                }
            }
        });

        let port = random_port();
        net.sync_ports(&[PortBinding {
            remote: Vec::new(),
            host_ip: None,
            peers: Vec::new(),
            published: port,
            protocol: Protocol::Udp,
            backends: vec![(task.ip, 7000)],
        }])
        .await
        .unwrap();
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let reply = udp_request(
            &client,
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            b"ping",
        );
        assert_eq!(reply.as_deref(), Some(&b"ping"[..]));

        // The same port number over TCP is a different binding and is not served.
        assert!(http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_err());

        let direct = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let stop = udp_request(&direct, SocketAddr::from((task.ip, 7000)), b"stop");
        assert_eq!(stop.as_deref(), Some(&b"stop"[..]));
        echo.join().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attach_leaves_nothing_behind() {
    // A /30 has room for the gateway and exactly one task.
    with_config(
        5,
        |cfg| NetConfig {
            subnet: "10.232.5.0/30".into(),
            ..cfg
        },
        |env: Env| async move {
            let net = &env.net;
            let first = net.attach("only-1").await.expect("attach the only task");
            let err = net
                .attach("only-2")
                .await
                .expect_err("a second task cannot fit in a /30");
            let msg = err.to_string();
            assert!(matches!(err, Error::SubnetFull { .. }), "{msg}");
            assert!(
                msg.starts_with("no free address in subnet 10.232.5.0/30:"),
                "{msg}"
            );
            assert!(!net.netns_path("only-2").exists(), "namespace left behind");
            assert_eq!(net.attachment("only-2"), None);
            assert_eq!(net.attachments().unwrap(), ["only-1"]);

            // Once the first task leaves, its address is free again.
            net.detach("only-1").await.unwrap();
            let second = net.attach("only-2").await.expect("attach after detach");
            assert_eq!(second.ip, first.ip);
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = NetConfig {
        run_dir: dir.path().join("run"),
        state_dir: dir.path().join("state"),
        bridge: "shtest6".into(),
        subnet: "10.232.6.0/24".into(),
        cni_bin_dir: dir.path().join("no-cni"),
        nft_table: format!("shtest6_{}", std::process::id()),
    };
    let net = Network::new(cfg).unwrap();
    assert!(matches!(
        net.attach("../etc").await,
        Err(Error::InvalidTaskId { .. })
    ));
    assert!(matches!(
        net.detach("").await,
        Err(Error::InvalidTaskId { .. })
    ));
    let dup = [tcp(18000, &[]), tcp(18000, &[])];
    assert!(matches!(
        net.sync_ports(&dup).await,
        Err(Error::InvalidPortBinding { .. })
    ));
    assert!(matches!(
        net.check("t1").await,
        Err(Error::NotAttached { .. })
    ));
    net.destroy().await.expect("destroy");
    assert!(!common::nft_table_exists(&net.config().nft_table));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_broken_wiring_and_attach_recreates_a_deleted_bridge() {
    with_network(9, |env: Env| async move {
        let net = &env.net;
        let a = net.attach("chk-a").await.unwrap();
        net.check("chk-a")
            .await
            .expect("a fresh attachment checks out");
        assert!(
            common::run_in(&a.netns_path, &["ip", "route", "del", "default"]),
            "delete the default route"
        );
        let err = net.check("chk-a").await.unwrap_err();
        assert!(matches!(err, Error::Broken { .. }), "{err}");
        assert!(err.to_string().contains("default route"), "{err}");
        assert!(
            common::run_in(&a.netns_path, &["ip", "link", "set", "eth0", "down"]),
            "take eth0 down"
        );
        let err = net.check("chk-a").await.unwrap_err().to_string();
        assert!(err.contains("eth0 is down"), "{err}");
        net.detach("chk-a").await.unwrap();

        // Someone deletes the bridge: the next attach makes it again, with its gateway address.
        let bridge = &env.config().bridge;
        assert!(
            std::process::Command::new("ip")
                .args(["link", "del", bridge])
                .status()
                .unwrap()
                .success()
        );
        let b = net
            .attach("chk-b")
            .await
            .expect("attach after the bridge vanished");
        let c = net.attach("chk-c").await.unwrap();
        net.check("chk-b").await.unwrap();
        // The bridge's MAC is pinned (set explicitly), so it does not follow its ports.
        let assign =
            std::fs::read_to_string(format!("/sys/class/net/{bridge}/addr_assign_type")).unwrap();
        assert_eq!(assign.trim(), "3", "bridge MAC not pinned (NET_ADDR_SET)");
        assert!(ping_from(&b.netns_path, c.ip), "chk-b cannot reach chk-c");
        assert!(
            ping_from(&b.netns_path, net.gateway()),
            "gateway unreachable"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_attaches_get_distinct_addresses() {
    with_network(7, |env: Env| async move {
        // The first attaches race to create the bridge and its gateway address.
        let attaches = (0..8).map(|i| {
            let net = env.net.clone();
            tokio::spawn(async move { net.attach(&format!("par-{i}")).await })
        });
        let mut ips = Vec::new();
        for handle in attaches {
            ips.push(handle.await.unwrap().expect("concurrent attach").ip);
        }
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 8, "addresses handed out twice: {ips:?}");
        let first = env.net.attachment("par-0").unwrap();
        let last = env.net.attachment("par-7").unwrap();
        assert!(ping_from(&first.netns_path, last.ip));

        let detaches = (0..8).map(|i| {
            let net = env.net.clone();
            tokio::spawn(async move { net.detach(&format!("par-{i}")).await })
        });
        for handle in detaches {
            handle.await.unwrap().expect("concurrent detach");
        }
        assert!(env.net.attachments().unwrap().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_made_by_the_cni_implementation_keep_working() {
    with_network(10, |env: Env| async move {
        let net = &env.net;
        let cfg = env.config();
        let fresh = net.attach("new-1").await.unwrap();
        // An upgraded node: a task attached by the CNI plugins, next to one attached natively.
        let old = common::legacy_cni_attach(&cfg, "old-1");
        assert_ne!(old.ip, fresh.ip, "host-local ignored our allocation");
        let chain = common::legacy_masquerade_chain("old-1")
            .expect("the bridge plugin installed a masquerade rule");
        assert!(common::iptables_nat_chain_exists(&chain));
        assert!(old.cni_result.get("ips").is_some());

        // A new daemon finds, checks and reaches the old attachment.
        let restarted = Network::new(cfg.clone()).unwrap();
        restarted.setup().await.unwrap();
        let att = restarted
            .attachment("old-1")
            .expect("legacy record is read");
        assert_eq!(att.ip, old.ip);
        assert_eq!(att.netns_path, old.netns_path);
        assert_eq!(restarted.attach("old-1").await.unwrap(), att);
        restarted
            .check("old-1")
            .await
            .expect("check of the legacy attachment");
        assert_eq!(restarted.attachments().unwrap(), ["new-1", "old-1"]);
        assert!(
            ping_from(&fresh.netns_path, old.ip),
            "new task cannot reach the old one"
        );
        assert!(
            ping_from(&old.netns_path, fresh.ip),
            "old task cannot reach the new one"
        );

        // Addresses taken by host-local are never handed out again while in use.
        let second = restarted.attach("new-2").await.unwrap();
        assert!(![old.ip, fresh.ip].contains(&second.ip));

        // Detaching the old task removes its veth, address, masquerade chain and namespace.
        let ipam_file = cfg
            .state_dir
            .join("net/ipam")
            .join(&cfg.bridge)
            .join(old.ip.to_string());
        assert!(ipam_file.exists());
        assert!(common::link_exists(&old.host_veth));
        restarted
            .detach("old-1")
            .await
            .expect("detach the legacy task");
        assert!(
            !common::link_exists(&old.host_veth),
            "legacy veth left behind"
        );
        assert!(!ipam_file.exists(), "legacy address not released");
        assert_eq!(common::legacy_masquerade_chain("old-1"), None);
        assert!(
            !common::iptables_nat_chain_exists(&chain),
            "legacy chain left behind"
        );
        assert!(!old.netns_path.exists());
        assert_eq!(restarted.attachments().unwrap(), ["new-1", "new-2"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_task_traffic_is_masqueraded() {
    with_network(11, |env: Env| async move {
        let net = &env.net;
        net.setup().await.unwrap();
        let task = net.attach("masq-1").await.unwrap();
        let node_ip = Ipv4Addr::new(10, 232, 211, 1);
        let outside_ip = Ipv4Addr::new(10, 232, 211, 2);
        let outside =
            common::OutsideNet::new(env.root().join("outside"), "shtest11o", node_ip, outside_ip);
        // A UDP server out there that answers with the source address it saw.
        let server = in_netns(&outside.path, move || UdpSocket::bind((outside_ip, 7001)))
            .expect("bind a UDP socket outside");
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                server
                    .send_to(from.ip().to_string().as_bytes(), from)
                    .unwrap();
                if &buf[..n] == b"stop" {
                    break;
                }
            }
        });
        let seen = in_netns(&task.netns_path, move || {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            let seen = udp_request(&socket, SocketAddr::from((outside_ip, 7001)), b"who am i");
            udp_request(&socket, SocketAddr::from((outside_ip, 7001)), b"stop");
            seen
        });
        echo.join().unwrap();
        drop(outside);
        let seen = String::from_utf8(seen.expect("no reply from outside the subnet")).unwrap();
        assert_eq!(
            seen,
            node_ip.to_string(),
            "task traffic left without masquerade"
        );
    })
    .await;
}
