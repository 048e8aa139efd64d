//! Harness for the real-kernel network tests: each test gets its own bridge (`shtest<N>`),
//! subnet (`10.232.<N>.0/24`), nftables table and temporary run/state directories, and everything
//! is removed afterwards, also when the test fails.

#![allow(dead_code)]

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use net::{Ipv4Subnet, NetConfig, Network};
use nix::sched::CloneFlags;

/// How long a test waits for something that should happen (a server starting, a ping).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// What a test body gets.
#[derive(Clone)]
pub struct Env {
    pub net: Network,
    pub n: u8,
    dir: Arc<tempfile::TempDir>,
}

impl Env {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration of this test's network; a second `Network` made from it acts like the
    /// daemon after a restart.
    pub fn config(&self) -> NetConfig {
        config(self.n, self.dir.path())
    }

    /// A directory holding `index.html` with `body`, for `busybox httpd`.
    pub fn www(&self, name: &str, body: &str) -> PathBuf {
        let dir = self.dir.path().join("www").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), body).unwrap();
        dir
    }
}

fn config(n: u8, root: &Path) -> NetConfig {
    NetConfig {
        run_dir: root.join("run"),
        state_dir: root.join("state"),
        bridge: format!("shtest{n}"),
        subnet: format!("10.232.{n}.0/24"),
        cni_bin_dir: PathBuf::from("/usr/lib/cni"),
        // Unique per test process, so concurrent runs never replace each other's table.
        nft_table: format!("shtest{n}_{}", std::process::id()),
    }
}

/// Runs `body` against a freshly set up network `n`, then destroys the network and checks that
/// nothing is left: no bridge, no nftables table, no namespaces. A panic in `body` is re-raised
/// after the cleanup.
pub async fn with_network<F, Fut>(n: u8, body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    with_config(n, |cfg| cfg, body).await
}

/// Like [`with_network`] with a changed configuration.
pub async fn with_config<C, F, Fut>(n: u8, change: C, body: F)
where
    C: FnOnce(NetConfig) -> NetConfig,
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = Arc::new(tempfile::tempdir().expect("create a temporary directory"));
    let cfg = change(config(n, dir.path()));
    let table = cfg.nft_table.clone();
    let bridge = cfg.bridge.clone();
    let run_dir = cfg.run_dir.clone();
    let net = Network::new(cfg).expect("valid test configuration");
    let env = Env {
        net: net.clone(),
        n,
        dir: dir.clone(),
    };
    let outcome = tokio::spawn(body(env)).await;
    net.destroy().await.expect("destroy the test network");
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "bridge {bridge} is left behind"
    );
    assert!(
        !nft_table_exists(&table),
        "nftables table {table} is left behind"
    );
    assert!(
        !run_dir.join("netns").exists(),
        "namespace directory is left behind"
    );
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test body did not finish: {e}"),
        }
    }
}

pub fn nft_table_exists(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "ip", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run nft")
        .success()
}

pub fn nft_table(table: &str) -> String {
    let out = Command::new("nft")
        .args(["list", "table", "ip", table])
        .output()
        .expect("run nft");
    assert!(out.status.success(), "nft list table ip {table} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// A published port unlikely to collide with anything else on the machine.
pub fn random_port() -> u16 {
    18000 + rand::random_range(0..12000)
}

/// A process that is killed when dropped.
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `busybox httpd` on port 80 inside the namespace at `netns`, serving `www`.
pub fn httpd(netns: &Path, www: &Path) -> Proc {
    let child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["busybox", "httpd", "-f", "-p", "80", "-h"])
        .arg(www)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start busybox httpd with nsenter");
    Proc(child)
}

/// Runs a command inside the namespace at `netns` and tells whether it succeeded.
pub fn run_in(netns: &Path, args: &[&str]) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run nsenter")
        .success()
}

/// Runs `f` on a thread that has joined the namespace at `netns`: sockets it creates live there.
pub fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = netns.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace file");
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).expect("join the namespace");
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

/// Pings `ip` from inside `netns` until it answers or the deadline passes.
pub fn ping_from(netns: &Path, ip: Ipv4Addr) -> bool {
    let target = ip.to_string();
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if run_in(netns, &["busybox", "ping", "-c", "1", "-W", "2", &target]) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// One HTTP/1.0 GET of `/`; returns the body.
pub fn http_get(addr: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.trim().to_owned())
        }
        _ => Err(io::Error::other(format!(
            "unexpected response: {response:?}"
        ))),
    }
}

/// [`http_get`] retried until it succeeds or the deadline passes (servers take a moment to start).
pub fn http_get_eventually(addr: SocketAddr) -> String {
    let start = Instant::now();
    loop {
        match http_get(addr) {
            Ok(body) => return body,
            Err(e) if start.elapsed() > DEADLINE => panic!("GET http://{addr}/ failed: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Sends `payload` to `addr` over UDP from a socket made by `make_socket` until a reply arrives
/// or the deadline passes; returns the reply.
pub fn udp_request(socket: &UdpSocket, addr: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    while start.elapsed() < DEADLINE {
        socket.send_to(payload, addr).ok()?;
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// The node's first global IPv4 address outside the test subnets (e.g. eth0's), or `fallback`.
pub fn host_address(fallback: Ipv4Addr) -> Ipv4Addr {
    let tests: Ipv4Subnet = "10.232.0.0/16".parse().unwrap();
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("run ip addr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse::<Ipv4Addr>().ok()
        })
        .find(|ip| !tests.contains(*ip))
        .unwrap_or(fallback)
}

/// What the CNI implementation of attach (shoal before rtnetlink) left on a node for one task.
pub struct LegacyAttachment {
    pub netns_path: PathBuf,
    pub ip: Ipv4Addr,
    /// The node-side veth the `bridge` plugin made.
    pub host_veth: String,
    pub cni_result: serde_json::Value,
}

/// Runs one CNI plugin from `/usr/lib/cni` and returns its stdout.
fn cni(
    plugin: &str,
    command: &str,
    task_id: &str,
    netns: &Path,
    ifname: &str,
    config: &serde_json::Value,
) -> String {
    let mut child = Command::new(Path::new("/usr/lib/cni").join(plugin))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", task_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("run CNI plugin {plugin} (install containernetworking-plugins): {e}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "CNI {plugin} {command} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Attaches `task_id` the way shoal did before it spoke rtnetlink itself: a namespace mounted at
/// `<run_dir>/netns/<task_id>`, the CNI `loopback` and `bridge` plugins (with `host-local`
/// addresses in `<state_dir>/net/ipam`), and the attachment record with the CNI result.
pub fn legacy_cni_attach(cfg: &NetConfig, task_id: &str) -> LegacyAttachment {
    let netns_path = cfg.run_dir.join("netns").join(task_id);
    std::fs::File::create(&netns_path).expect("create the namespace file");
    let target = netns_path.clone();
    std::thread::spawn(move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare a network namespace");
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind-mount the namespace");
    })
    .join()
    .unwrap();
    let subnet: Ipv4Subnet = cfg.subnet.parse().unwrap();
    let loopback =
        serde_json::json!({"cniVersion": "1.0.0", "name": "loopback", "type": "loopback"});
    cni("loopback", "ADD", task_id, &netns_path, "lo", &loopback);
    let bridge = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": cfg.bridge,
        "type": "bridge",
        "bridge": cfg.bridge,
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet.to_string(), "gateway": subnet.gateway().to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": cfg.state_dir.join("net/ipam"),
        },
    });
    let result: serde_json::Value =
        serde_json::from_str(&cni("bridge", "ADD", task_id, &netns_path, "eth0", &bridge)).unwrap();
    let address = result["ips"][0]["address"].as_str().unwrap();
    let ip: Ipv4Addr = address.split('/').next().unwrap().parse().unwrap();
    let host_veth = result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i.get("sandbox").is_none() && i["name"] != cfg.bridge.as_str())
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let record = serde_json::json!({
        "task_id": task_id,
        "netns_path": netns_path,
        "ip": ip,
        "prefix_len": subnet.prefix_len(),
        "gateway": subnet.gateway(),
        "cni_result": result,
    });
    let records = cfg.state_dir.join("net/attachments");
    std::fs::create_dir_all(&records).unwrap();
    std::fs::write(
        records.join(format!("{task_id}.json")),
        serde_json::to_vec_pretty(&record).unwrap(),
    )
    .unwrap();
    LegacyAttachment {
        netns_path,
        ip,
        host_veth,
        cni_result: result,
    }
}

/// Whether the node has a link called `name`.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Whether the iptables nat table has a chain called `chain`.
pub fn iptables_nat_chain_exists(chain: &str) -> bool {
    Command::new("iptables")
        .args(["-w", "5", "-t", "nat", "-S", chain])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run iptables")
        .success()
}

/// The chain a legacy `bridge` plugin masquerade rule for `task_id` jumps to, if the rule exists.
pub fn legacy_masquerade_chain(task_id: &str) -> Option<String> {
    let out = Command::new("iptables")
        .args(["-w", "5", "-t", "nat", "-S", "POSTROUTING"])
        .output()
        .expect("run iptables");
    let marker = format!("id: \\\"{task_id}\\\"");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|line| line.contains(&marker))
        .and_then(|line| line.split_whitespace().skip_while(|w| *w != "-j").nth(1))
        .map(str::to_owned)
}

/// A network outside the node: a namespace mounted at `path` linked to the node by a veth pair,
/// with `node_ip/24` on the node's end (`name`) and `outside_ip/24` inside. It has no route to
/// the task subnet, so only masqueraded task traffic gets replies. Removed when dropped.
pub struct OutsideNet {
    name: String,
    pub path: PathBuf,
}

impl OutsideNet {
    pub fn new(path: PathBuf, name: &str, node_ip: Ipv4Addr, outside_ip: Ipv4Addr) -> OutsideNet {
        let ns = path.display().to_string();
        let outside = OutsideNet {
            name: name.to_owned(),
            path,
        };
        let ns_arg = format!("--net={ns}");
        let node_cidr = format!("{node_ip}/24");
        let outside_cidr = format!("{outside_ip}/24");
        let steps: [&[&str]; 7] = [
            &["unshare", &ns_arg, "true"],
            &[
                "ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
            &["ip", "addr", "add", &node_cidr, "dev", name],
            &["ip", "link", "set", name, "up"],
            &[
                "nsenter",
                &ns_arg,
                "ip",
                "addr",
                "add",
                &outside_cidr,
                "dev",
                "eth0",
            ],
            &["nsenter", &ns_arg, "ip", "link", "set", "eth0", "up"],
            &["nsenter", &ns_arg, "ip", "link", "set", "lo", "up"],
        ];
        std::fs::File::create(&outside.path).expect("create the namespace file");
        for args in steps {
            let ok = Command::new(args[0])
                .args(&args[1..])
                .status()
                .expect("run a command")
                .success();
            assert!(ok, "{} failed", args.join(" "));
        }
        outside
    }
}

impl Drop for OutsideNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.path);
    }
}
