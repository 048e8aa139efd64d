//! `extra_hosts`, `dns`, `dns_search` and `dns_opt` on real parts: what a task finds in its
//! `/etc/hosts` and `/etc/resolv.conf`, from a stack file (on the stack's overlay network, where
//! the node's DNS server answers) and from `service create` flags (no network: its own
//! resolvers).

use std::time::Duration;

use shoal_tests::images::{SLEEPER, node_image as image};
use shoal_tests::node::Node;

const LONG: Duration = Duration::from_secs(120);

const SHOW: &str = "cat /etc/hosts /etc/resolv.conf";

#[test]
fn a_task_gets_its_extra_hosts_and_resolver_settings() {
    let node = Node::start();
    let img = image(&node, "bb");
    let stack = node.dir.path().join("net.toml");
    std::fs::write(
        &stack,
        format!(
            r#"[services.app]
image = "{img}"
command = ["sh", "-c", "{SHOW}; {SLEEPER}"]
extra_hosts = ["db.local:10.0.0.5", "v6.local:2001:db8::1"]
dns = "10.9.9.9"
dns_search = ["corp.example"]
dns_opt = ["ndots:2"]
"#
        ),
    )
    .unwrap();
    node.shoal_ok(&["stack", "deploy", "-c", stack.to_str().unwrap(), "net"]);
    node.shoal_ok(&[
        "service",
        "create",
        "--name",
        "plain",
        "--host",
        "gw.local:192.168.7.1",
        "--dns",
        "10.8.8.8",
        "--dns-search",
        "example.org",
        "--dns-option",
        "timeout:1",
        &img,
        "sh",
        "-c",
        &format!("{SHOW}; {SLEEPER}"),
    ]);
    let logs = |svc: &str| {
        let mut out = String::new();
        node.wait_for("the task printed its files", LONG, |n| {
            out = n.shoal_ok(&["service", "logs", svc]);
            out.contains("nameserver")
        });
        out
    };

    // On the stack's overlay network: the node's DNS server (which forwards to 10.9.9.9 what
    // is not a service name), with the search domain and the option, and ndots:2 replacing
    // the default ndots:0.
    let app = logs("net_app");
    assert!(app.contains("10.0.0.5\tdb.local"), "{app}");
    assert!(app.contains("2001:db8::1\tv6.local"), "{app}");
    assert!(app.contains("search corp.example"), "{app}");
    assert!(app.contains("options ndots:2"), "{app}");
    assert!(!app.contains("ndots:0"), "{app}");
    assert!(
        !app.contains("nameserver 10.9.9.9"),
        "asks the node's server: {app}"
    );

    // No network: its own resolvers in resolv.conf.
    let plain = logs("plain");
    assert!(plain.contains("192.168.7.1\tgw.local"), "{plain}");
    assert!(plain.contains("nameserver 10.8.8.8"), "{plain}");
    assert!(plain.contains("search example.org"), "{plain}");
    assert!(plain.contains("options timeout:1"), "{plain}");

    // inspect shows them; the same bad value is refused with the files' message.
    let pretty = node.shoal_ok(&["service", "inspect", "plain"]);
    assert!(
        pretty.contains("\"extra_hosts\"") && pretty.contains("10.8.8.8"),
        "{pretty}"
    );
    let out = node.shoal(&[
        "service",
        "update",
        "--detach",
        "--dns",
        "dns.google",
        "plain",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid DNS server \"dns.google\": expected an IP address"),
        "{err}"
    );
}
