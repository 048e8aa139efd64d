//! The DNS server tasks on overlay networks use: service discovery by name, everything else
//! passed on to the node's own resolvers.
//!
//! It listens on the node bridge's gateway (port 53, UDP), which every task reaches through
//! `eth0`, and knows who asks by the source address (a task's `eth0` address). A task is
//! answered, on the networks it is attached to only: a service's name (`STACK_SERVICE`, or the
//! short name inside its own stack) with the service's VIP on that network, and
//! `tasks.NAME` with the addresses of the service's running tasks there. A service name that
//! exists only on networks the task is not on gets NXDOMAIN; any other name is forwarded to the
//! node's resolvers (`/etc/resolv.conf`) and their answer relayed. Answers have TTL 0, since
//! they follow tasks as they start, stop and move. Messages are read and written with
//! `hickory-proto`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType, rdata::A};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// A service as one network's DNS knows it: its name, stack, VIP and running tasks' addresses.
pub use model::network::ServiceRecord as ServiceName;

/// A task that may ask: the networks it is on, its stack, and the resolvers its service names
/// (`dns`) for names outside the cluster (empty: the node's).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Asker {
    pub networks: Vec<String>,
    pub stack: Option<String>,
    pub upstreams: Vec<SocketAddr>,
}

/// Everything the server answers from; replaced whole when the node's plan changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Names {
    /// By the asking task's `eth0` address.
    pub askers: HashMap<Ipv4Addr, Asker>,
    /// By network id.
    pub networks: HashMap<String, Vec<ServiceName>>,
}

/// What a name resolves to for one asker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A cluster name on one of the asker's networks (possibly no address: a service without
    /// running tasks).
    Addrs(Vec<Ipv4Addr>),
    /// A cluster name, but not on any network of the asker.
    NxDomain,
    /// Not a cluster name: for the node's resolvers.
    Forward,
}

impl Names {
    /// Resolves `qname` (any case, with or without the final dot) for the task at `from`.
    pub fn lookup(&self, from: Ipv4Addr, qname: &str) -> Answer {
        let q = qname.trim_end_matches('.').to_ascii_lowercase();
        let (name, tasks) = match q.strip_prefix("tasks.") {
            Some(rest) => (rest, true),
            None => (q.as_str(), false),
        };
        let matches = |s: &ServiceName, stack: Option<&str>| {
            s.name.eq_ignore_ascii_case(name)
                || (stack.is_some()
                    && s.stack.as_deref() == stack
                    && s.name
                        .strip_prefix(stack.unwrap_or_default())
                        .and_then(|r| r.strip_prefix('_'))
                        .is_some_and(|short| short.eq_ignore_ascii_case(name)))
        };
        if let Some(asker) = self.askers.get(&from) {
            let mut found = false;
            let mut out: Vec<Ipv4Addr> = Vec::new();
            for net in &asker.networks {
                for s in self.networks.get(net).into_iter().flatten() {
                    if matches(s, asker.stack.as_deref()) {
                        found = true;
                        match (tasks, s.vip) {
                            (false, Some(vip)) => out.push(vip),
                            _ => out.extend(&s.tasks),
                        }
                    }
                }
            }
            if found {
                out.sort();
                out.dedup();
                return Answer::Addrs(out);
            }
        }
        let known = self
            .networks
            .values()
            .flatten()
            .any(|s| s.name.eq_ignore_ascii_case(name));
        if known {
            Answer::NxDomain
        } else {
            Answer::Forward
        }
    }
}

/// The node's resolvers from a `resolv.conf` text (port 53), loopback ones included: the server
/// runs in the node's namespace.
pub fn upstreams(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The answer to the query `bytes` from `from`; `None` when it is to be forwarded (or is not a
/// query at all, which gets no answer).
pub fn answer(names: &Names, from: Ipv4Addr, bytes: &[u8]) -> Option<Result<Vec<u8>, ()>> {
    let Ok(query) = Message::from_vec(bytes) else {
        return None;
    };
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let Some(q) = query.queries.first().cloned() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return Some(reply.to_vec().map_err(drop));
    };
    if query.metadata.op_code != OpCode::Query {
        reply.metadata.response_code = ResponseCode::NotImp;
        reply.add_query(q);
        return Some(reply.to_vec().map_err(drop));
    }
    let lookup = names.lookup(from, &q.name().to_ascii());
    match lookup {
        Answer::Forward => return Some(Err(())),
        Answer::NxDomain => reply.metadata.response_code = ResponseCode::NXDomain,
        Answer::Addrs(addrs) => {
            reply.metadata.authoritative = true;
            // AAAA and other types of a cluster name: no records, no error (NODATA).
            if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
                for a in addrs {
                    reply.add_answer(Record::from_rdata(q.name().clone(), 0, RData::A(A(a))));
                }
            }
        }
    }
    reply.add_query(q);
    Some(reply.to_vec().map_err(drop))
}

/// Serves DNS on `socket` until it fails: answers from the latest `names`, forwards the rest to
/// the asker's own resolvers if its service names some, else to `upstreams` (one at a time, 2 s
/// each; SERVFAIL when none answers).
pub async fn serve(
    socket: UdpSocket,
    names: watch::Receiver<Arc<Names>>,
    upstreams: Vec<SocketAddr>,
) -> std::io::Result<()> {
    let socket = Arc::new(socket);
    let upstreams = Arc::new(upstreams);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = socket.recv_from(&mut buf).await?;
        let SocketAddr::V4(peer4) = peer else {
            continue;
        };
        let bytes = buf[..n].to_vec();
        let current = names.borrow().clone();
        match answer(&current, *peer4.ip(), &bytes) {
            None => {}
            Some(Ok(reply)) => {
                let _ = socket.send_to(&reply, peer).await;
            }
            Some(Err(())) => {
                let socket = socket.clone();
                let upstreams = match current.askers.get(peer4.ip()) {
                    Some(a) if !a.upstreams.is_empty() => Arc::new(a.upstreams.clone()),
                    _ => upstreams.clone(),
                };
                tokio::spawn(async move {
                    let reply = match forward(&bytes, &upstreams).await {
                        Some(r) => r,
                        None => servfail(&bytes).unwrap_or_default(),
                    };
                    if !reply.is_empty() {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                });
            }
        }
    }
}

fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut reply = Message::error_msg(q.metadata.id, q.metadata.op_code, ResponseCode::ServFail);
    reply.metadata.recursion_desired = q.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(q.queries);
    reply.to_vec().ok()
}

async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.send_to(query, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await
        {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn names() -> Names {
        let mut n = Names::default();
        n.askers.insert(
            ip("10.231.0.2"),
            Asker {
                networks: vec!["front".into()],
                stack: Some("shop".into()),
                ..Default::default()
            },
        );
        n.askers.insert(
            ip("10.231.0.3"),
            Asker {
                networks: vec!["back".into()],
                stack: None,
                ..Default::default()
            },
        );
        n.networks.insert(
            "front".into(),
            vec![ServiceName {
                name: "shop_web".into(),
                stack: Some("shop".into()),
                vip: Some(ip("10.0.0.2")),
                tasks: vec![ip("10.0.0.3"), ip("10.0.0.4")],
            }],
        );
        n.networks.insert(
            "back".into(),
            vec![ServiceName {
                name: "db".into(),
                stack: None,
                vip: Some(ip("10.0.1.2")),
                tasks: vec![],
            }],
        );
        n
    }

    #[test]
    fn names_resolve_on_the_askers_networks_only() {
        let n = names();
        let web = ip("10.231.0.2");
        assert_eq!(
            n.lookup(web, "shop_web"),
            Answer::Addrs(vec![ip("10.0.0.2")])
        );
        assert_eq!(n.lookup(web, "WEB."), Answer::Addrs(vec![ip("10.0.0.2")]));
        assert_eq!(
            n.lookup(web, "tasks.web"),
            Answer::Addrs(vec![ip("10.0.0.3"), ip("10.0.0.4")])
        );
        // db is a cluster name, but on a network web's task is not on.
        assert_eq!(n.lookup(web, "db"), Answer::NxDomain);
        assert_eq!(n.lookup(web, "example.org"), Answer::Forward);
        // The short name works inside the stack only.
        let other = ip("10.231.0.3");
        assert_eq!(n.lookup(other, "web"), Answer::Forward);
        assert_eq!(n.lookup(other, "shop_web"), Answer::NxDomain);
        assert_eq!(n.lookup(other, "tasks.db"), Answer::Addrs(vec![]));
        // Someone who is not a task of this node gets nothing of the cluster.
        assert_eq!(n.lookup(ip("10.231.0.99"), "shop_web"), Answer::NxDomain);
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    #[test]
    fn messages_are_answered_as_dns_clients_expect() {
        let n = names();
        let web = ip("10.231.0.2");
        let reply = answer(&n, web, &query("tasks.web.", RecordType::A))
            .unwrap()
            .unwrap();
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.id, 4242);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let addrs: Vec<_> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        assert_eq!(addrs, vec![ip("10.0.0.3"), ip("10.0.0.4")]);
        assert!(m.answers.iter().all(|r| r.ttl == 0));
        // AAAA of a service: NODATA; a name elsewhere: NXDOMAIN; others: forwarded.
        let m = Message::from_vec(
            &answer(&n, web, &query("web.", RecordType::AAAA))
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert!(m.answers.is_empty() && m.metadata.response_code == ResponseCode::NoError);
        let m = Message::from_vec(
            &answer(&n, web, &query("db.", RecordType::A))
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(
            answer(&n, web, &query("example.org.", RecordType::A)),
            Some(Err(()))
        );
        // Garbage gets no answer at all.
        assert_eq!(answer(&n, web, b"\x01\x02garbage"), None);
        assert_eq!(
            upstreams("# c\nnameserver 127.0.0.53\nnameserver 10.1.1.1\nsearch x\n"),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "10.1.1.1:53".parse().unwrap()
            ]
        );
    }

    /// A fake resolver on 127.0.0.1 that answers every query with `addr`.
    async fn fake_upstream(addr: Ipv4Addr) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = Message::response(q.metadata.id, q.metadata.op_code);
                let query = q.queries[0].clone();
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    0,
                    RData::A(A(addr)),
                ));
                r.add_query(query);
                let _ = sock.send_to(&r.to_vec().unwrap(), peer).await;
            }
        });
        local
    }

    async fn ask(server: SocketAddr, name: &str) -> Vec<Ipv4Addr> {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut q = Message::query();
        q.metadata.id = 7;
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        sock.send_to(&q.to_vec().unwrap(), server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        Message::from_vec(&buf[..n])
            .unwrap()
            .answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_task_whose_service_names_resolvers_is_forwarded_to_them() {
        let node_resolver = fake_upstream(ip("1.1.1.1")).await;
        let service_resolver = fake_upstream(ip("2.2.2.2")).await;
        let mut names = Names::default();
        let (tx, rx) = watch::channel(Arc::new(names.clone()));
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = sock.local_addr().unwrap();
        tokio::spawn(serve(sock, rx, vec![node_resolver]));
        // An asker without resolvers of its own: the node's.
        assert_eq!(ask(server, "example.com.").await, vec![ip("1.1.1.1")]);
        // The same address as a task whose service sets `dns`: its resolvers.
        names.askers.insert(
            ip("127.0.0.1"),
            Asker {
                upstreams: vec![service_resolver],
                ..Default::default()
            },
        );
        tx.send(Arc::new(names)).unwrap();
        assert_eq!(ask(server, "example.com.").await, vec![ip("2.2.2.2")]);
    }
}
