//! Real-kernel test of overlay networks between two hosts: each host is a network namespace with
//! its own `Network` (node bridge, state and run directories), joined to the other by a veth
//! "LAN"; a task on each host gets an interface on the overlay, and traffic between them crosses
//! VXLAN with forwarding entries written from the plan alone. Needs root, `ip`, `bridge`,
//! `nsenter` and `busybox`.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{http_get_eventually, httpd, in_netns, ping_from, run_in};
use net::{NetConfig, Network, OverlayAddress, OverlayNetwork, PortBinding, Protocol, Repairs};

/// A host: a named network namespace and the directories of its node network.
struct Host {
    ns: String,
    lan: Ipv4Addr,
    cfg: NetConfig,
}

impl Host {
    fn ns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.ns)
    }

    /// Runs `f` with this host's `Network` on a thread inside the host's namespace (with its
    /// own runtime, so every thread the network starts is in that namespace too).
    fn run<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Network) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let cfg = self.cfg.clone();
        in_netns(&self.ns_path(), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(f(Network::new(cfg).unwrap()))
        })
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.ns])
            .args(args)
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn bridge_fdb(&self, dev: &str) -> String {
        let out = Command::new("bridge")
            .args(["-n", &self.ns, "fdb", "show", "dev", dev])
            .output()
            .expect("run bridge");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?} failed");
}

/// Two hosts on a LAN `192.168.250.0/24`; removed (with everything in them) on drop.
struct Lan {
    hosts: [Host; 2],
    _dir: tempfile::TempDir,
}

impl Lan {
    fn new() -> Lan {
        let dir = tempfile::tempdir().unwrap();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pid = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let hosts = [1u8, 2].map(|i| {
            let root = dir.path().join(format!("h{i}"));
            Host {
                ns: format!("shovl{i}-{pid}"),
                lan: Ipv4Addr::new(192, 168, 250, i),
                cfg: NetConfig {
                    run_dir: root.join("run"),
                    state_dir: root.join("state"),
                    bridge: "shoal0".into(),
                    subnet: "10.231.0.0/16".into(),
                    cni_bin_dir: PathBuf::from("/usr/lib/cni"),
                    nft_table: "shoal".into(),
                },
            }
        });
        for h in &hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
            sh(&["ip", "netns", "add", &h.ns]);
        }
        sh(&[
            "ip",
            "link",
            "add",
            "lan0",
            "netns",
            &hosts[0].ns,
            "type",
            "veth",
            "peer",
            "name",
            "lan0",
            "netns",
            &hosts[1].ns,
        ]);
        for h in &hosts {
            h.ip(&["addr", "add", &format!("{}/24", h.lan), "dev", "lan0"]);
            h.ip(&["link", "set", "lan0", "up"]);
            h.ip(&["link", "set", "lo", "up"]);
        }
        Lan { hosts, _dir: dir }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = h.run(|net| async move { net.destroy().await });
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
        }
    }
}

const VNI: u32 = 4242;

fn subnet() -> net::Ipv4Subnet {
    "10.99.0.0/24".parse().unwrap()
}

fn ping_once(netns: &Path, ip: Ipv4Addr) -> bool {
    run_in(
        netns,
        &["busybox", "ping", "-c", "1", "-W", "1", &ip.to_string()],
    )
}

fn plan(local: Ipv4Addr, peers: &[(Ipv4Addr, Ipv4Addr)]) -> Vec<OverlayNetwork> {
    vec![OverlayNetwork {
        vni: VNI,
        local,
        peers: peers.iter().copied().collect::<BTreeMap<_, _>>(),
        host: None,
    }]
}

#[test]
fn tasks_on_two_hosts_reach_each_other_over_vxlan_with_entries_from_the_plan() {
    let lan = Lan::new();
    let [a, b] = &lan.hosts;
    let (addr_a, addr_b) = (Ipv4Addr::new(10, 99, 0, 2), Ipv4Addr::new(10, 99, 0, 3));

    // A task on each host, with an interface on the overlay.
    let mut netns = Vec::new();
    for (h, task, addr) in [(a, "task-a", addr_a), (b, "task-b", addr_b)] {
        let local = h.lan;
        let path = h.run(move |net| async move {
            net.setup().await.unwrap();
            let att = net.attach(task).await.unwrap();
            net.attach_overlays(
                task,
                vec![OverlayAddress {
                    vni: VNI,
                    subnet: subnet(),
                    local,
                    addr,
                }],
            )
            .await
            .unwrap();
            att.netns_path
        });
        netns.push(path);
    }
    // The interface is eth1 with the derived MAC and the overlay MTU.
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns[0].display()))
        .args(["ip", "-o", "link", "show", "eth1"])
        .output()
        .unwrap();
    let eth1 = String::from_utf8_lossy(&out.stdout);
    assert!(eth1.contains("02:42:0a:63:00:02"), "{eth1}");
    assert!(eth1.contains("mtu 1450"), "{eth1}");

    // Without forwarding entries nothing crosses: the devices do not flood or learn.
    assert!(
        !ping_once(&netns[0], addr_b),
        "reached the other host before any entry was written"
    );

    // The plans: each host forwards the other's task to the other host.
    let (la, lb) = (a.lan, b.lan);
    let rep: Repairs = a
        .run(move |net| async move { net.sync_overlays(plan(la, &[(addr_b, lb)])).await.unwrap() });
    assert_eq!(rep.added, 2, "one FDB and one neighbour entry: {rep:?}");
    b.run(move |net| async move { net.sync_overlays(plan(lb, &[(addr_a, la)])).await.unwrap() });
    assert!(ping_from(&netns[0], addr_b), "task-a cannot reach task-b");
    assert!(ping_from(&netns[1], addr_a), "task-b cannot reach task-a");
    let fdb = a.bridge_fdb(&format!("shvx-{VNI}"));
    assert!(
        fdb.contains(&format!("02:42:0a:63:00:03 dst {lb} self permanent")),
        "{fdb}"
    );

    // A sync with nothing to do changes nothing.
    let again = a
        .run(move |net| async move { net.sync_overlays(plan(la, &[(addr_b, lb)])).await.unwrap() });
    assert!(again.is_empty(), "{again:?}");

    // Something else flushes the entries and deletes the VXLAN device: the next sync puts
    // everything back, and says so.
    a.ip(&["neigh", "flush", "dev", &format!("shvx-{VNI}")]);
    a.ip(&["link", "del", &format!("shvx-{VNI}")]);
    assert!(!ping_once(&netns[0], addr_b));
    let rep = a
        .run(move |net| async move { net.sync_overlays(plan(la, &[(addr_b, lb)])).await.unwrap() });
    assert!(rep.devices >= 1 && rep.added == 2, "{rep:?}");
    assert!(ping_from(&netns[0], addr_b), "not repaired");

    // The task's interface taken off the bridge is put back.
    let out = Command::new("ip")
        .args([
            "-n",
            &a.ns,
            "-o",
            "link",
            "show",
            "master",
            &format!("shbr-{VNI}"),
        ])
        .output()
        .unwrap();
    let port = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_owned())
        .find(|n| n.starts_with("shw"))
        .expect("the task's port on the overlay bridge");
    a.ip(&["link", "set", &port, "nomaster"]);
    let rep = a
        .run(move |net| async move { net.sync_overlays(plan(la, &[(addr_b, lb)])).await.unwrap() });
    assert_eq!(rep.devices, 1, "{rep:?}");
    assert!(ping_from(&netns[0], addr_b), "port not put back");

    // The peer leaves: its entries go.
    let rep = a.run(move |net| async move { net.sync_overlays(plan(la, &[])).await.unwrap() });
    assert_eq!(rep.removed, 2, "{rep:?}");
    let neigh = a.ip(&["neigh", "show", "dev", &format!("shvx-{VNI}")]);
    assert!(neigh.trim().is_empty(), "{neigh}");

    // While a task is attached its network's devices stay, even with no plan; once it is
    // detached, the next sync leaves nothing behind.
    a.run(move |net| async move { net.sync_overlays(vec![]).await.unwrap() });
    assert!(
        a.ip(&["link", "show", &format!("shbr-{VNI}")])
            .contains("shbr-")
    );
    // A device of the same kind that another daemon made (another owner) is never touched.
    a.ip(&["link", "add", "shbr-4343", "type", "bridge"]);
    let rep = a.run(move |net| async move {
        net.detach("task-a").await.unwrap();
        net.sync_overlays(vec![]).await.unwrap()
    });
    assert_eq!(rep.devices, 2, "{rep:?}");
    let links = a.ip(&["-o", "link", "show"]);
    assert!(
        links.contains("shbr-4343"),
        "another's device removed: {links}"
    );
    a.ip(&["link", "del", "shbr-4343"]);
    let links = a.ip(&["-o", "link", "show"]);
    assert!(
        !links.contains("shbr-") && !links.contains("shvx-") && !links.contains("shw"),
        "{links}"
    );
}

/// `localhost` reaches a published port with `route_localnet` on the bridge alone: shoal never
/// turns it on for every interface (which would let packets for 127.0.0.0/8 from the network in
/// whenever its drop rule is missing).
#[test]
fn localhost_reaches_published_ports_with_route_localnet_on_the_bridge_only() {
    let lan = Lan::new();
    let h = &lan.hosts[0];
    let www = lan._dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from web").unwrap();
    // New namespaces may inherit the host's `all` setting: start from 0.
    sh(&[
        "ip",
        "netns",
        "exec",
        &h.ns,
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.route_localnet=0",
    ]);
    let netns = h.run(|net| async move {
        net.setup().await.unwrap();
        net.attach("web").await.unwrap().netns_path
    });
    let _server = httpd(&netns, &www);
    let ip = h.run(|net| async move { net.attachment("web").unwrap().ip });
    h.run(move |net| async move {
        net.sync_ports(&[PortBinding {
            remote: Vec::new(),
            host_ip: None,
            peers: Vec::new(),
            published: 8080,
            protocol: Protocol::Tcp,
            backends: vec![(ip, 80)],
        }])
        .await
        .unwrap()
    });
    let body = in_netns(&h.ns_path(), || {
        http_get_eventually("127.0.0.1:8080".parse().unwrap())
    });
    assert_eq!(body, "hello from web");
    let sysctl = |dev: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &h.ns, "cat"])
            .arg(format!("/proc/sys/net/ipv4/conf/{dev}/route_localnet"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        sysctl("all"),
        "0",
        "route_localnet turned on for every interface"
    );
    assert_eq!(sysctl("shoal0"), "1");
}
