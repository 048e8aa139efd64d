//! The node port over real TCP on loopback: mutual TLS against the cluster CA, the join steps,
//! and what a peer without the right certificate gets (nothing).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use model::{Availability, NodeRole};
use rpc::client::{Target, ca_proof, join};
use rpc::pki::{self, CaKeys, CertInfo, NodeCert};
use rpc::server::Peer;
use rpc::{
    Client, ErrorKind, Handler, JoinReply, JoinRequest, Request, Response, RpcError, TlsState,
    token,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SECRET: &str = "provisioning-secret-0123456789";

struct TestHandler {
    ca: CaKeys,
    removed: String,
}

impl Handler for TestHandler {
    fn admits(&self, cert: &CertInfo) -> bool {
        cert.node_id != self.removed
    }

    async fn handle(&self, peer: Peer, req: Request) -> Response {
        match req {
            Request::CaProof { nonce } => {
                let digest = pki::ca_digest(&self.ca.cert_pem).unwrap();
                Response::CaProof {
                    ca_pem: self.ca.cert_pem.clone(),
                    proof: Some(token::proof(SECRET, &nonce, &digest)),
                }
            }
            Request::Join(j) => {
                if !token::secrets_equal(&j.secret, SECRET) {
                    return Response::error(ErrorKind::Refused, "join token refused");
                }
                let cert = pki::issue(
                    &self.ca,
                    &j.csr_pem,
                    &j.node_id,
                    j.role,
                    "c1",
                    SystemTime::now(),
                    Duration::from_secs(3600),
                )
                .unwrap();
                Response::Joined(JoinReply {
                    cert_pem: cert,
                    ca_pem: self.ca.cert_pem.clone(),
                    cluster_id: "c1".into(),
                    role: j.role,
                    managers: vec![],
                })
            }
            Request::Raft { body, .. } => Response::Raft {
                body: format!("{body} from {}", peer.cert.unwrap().node_id),
            },
            _ => Response::Ok,
        }
    }
}

fn node_cert(ca: &CaKeys, id: &str, role: NodeRole) -> NodeCert {
    let (key, csr) = pki::new_node_key().unwrap();
    let cert = pki::issue(
        ca,
        &csr,
        id,
        role,
        "c1",
        SystemTime::now(),
        Duration::from_secs(3600),
    )
    .unwrap();
    NodeCert {
        ca_pem: ca.cert_pem.clone(),
        cert_pem: cert,
        key_pem: key,
    }
}

async fn start(ca: &CaKeys, role: NodeRole) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let tls = Arc::new(TlsState::new(&node_cert(ca, "server", role)).unwrap());
    let handler = Arc::new(TestHandler {
        ca: ca.clone(),
        removed: "gone".into(),
    });
    tokio::spawn(rpc::serve(listener, tls, handler));
    addr
}

fn raft() -> Request {
    Request::Raft {
        kind: "vote".into(),
        body: "hello".into(),
    }
}

#[tokio::test]
async fn managers_talk_over_mutual_tls() {
    let ca = pki::new_ca("c1", SystemTime::now()).unwrap();
    let addr = start(&ca, NodeRole::Manager).await;
    let client = Client::new(Arc::new(
        TlsState::new(&node_cert(&ca, "m2", NodeRole::Manager)).unwrap(),
    ));
    for _ in 0..3 {
        // Pooled connections are reused.
        match client
            .call(&addr, Target::Manager, &raft(), Duration::from_secs(5))
            .await
            .unwrap()
        {
            Response::Raft { body } => assert_eq!(body, "hello from m2"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_worker_certificate_cannot_speak_raft_or_pose_as_a_manager() {
    let ca = pki::new_ca("c1", SystemTime::now()).unwrap();
    let manager = start(&ca, NodeRole::Manager).await;
    let worker_client = Client::new(Arc::new(
        TlsState::new(&node_cert(&ca, "w1", NodeRole::Worker)).unwrap(),
    ));
    // Raft from a worker: the connection is closed without an answer.
    let err = worker_client
        .call(&manager, Target::Manager, &raft(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Closed { .. }), "{err}");
    // Other requests from a worker are answered.
    assert!(matches!(
        worker_client
            .call(
                &manager,
                Target::Manager,
                &Request::Report { reports: vec![] },
                Duration::from_secs(5)
            )
            .await
            .unwrap(),
        Response::Ok
    ));

    // A server with a worker certificate is not accepted where a manager is expected.
    let worker_server = start(&ca, NodeRole::Worker).await;
    let manager_client = Client::new(Arc::new(
        TlsState::new(&node_cert(&ca, "m1", NodeRole::Manager)).unwrap(),
    ));
    let err = manager_client
        .call(
            &worker_server,
            Target::Manager,
            &raft(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err}");
    // ... but is as a node.
    assert!(
        manager_client
            .call(
                &worker_server,
                Target::Node,
                &raft(),
                Duration::from_secs(5)
            )
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn peers_without_the_cluster_ca_get_nothing() {
    let ca = pki::new_ca("c1", SystemTime::now()).unwrap();
    let addr = start(&ca, NodeRole::Manager).await;

    // A certificate from another CA: the handshake fails.
    let other = pki::new_ca("c2", SystemTime::now()).unwrap();
    let mut foreign = node_cert(&other, "x", NodeRole::Manager);
    foreign.ca_pem = ca.cert_pem.clone(); // it even trusts our CA
    let client = Client::new(Arc::new(TlsState::new(&foreign).unwrap()));
    let err = client
        .call(&addr, Target::Manager, &raft(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RpcError::Unreachable { .. } | RpcError::Closed { .. }),
        "{err}"
    );

    // No certificate at all, asking for raft: closed without a byte of answer.
    let cfg = rpc::tls::client_config(&ca.cert_pem, None).unwrap();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("manager.shoal").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    rpc::wire::write(&mut tls, &raft()).await.unwrap();
    let mut buf = Vec::new();
    let n = tls.read_to_end(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "a peer without a certificate got an answer");

    // Plain TCP garbage: closed, nothing answered.
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP"), "{buf:?}");

    // A removed node's certificate is refused.
    let gone = Client::new(Arc::new(
        TlsState::new(&node_cert(&ca, "gone", NodeRole::Manager)).unwrap(),
    ));
    assert!(
        gone.call(&addr, Target::Manager, &raft(), Duration::from_secs(5))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn joining_pins_the_ca_the_manager_proved() {
    let ca = pki::new_ca("c1", SystemTime::now()).unwrap();
    let addr = start(&ca, NodeRole::Manager).await;
    let (ca_pem, proof) = ca_proof(&addr, "nonce-1", Duration::from_secs(5))
        .await
        .unwrap();
    let digest = pki::ca_digest(&ca_pem).unwrap();
    assert!(token::verify_proof(
        SECRET,
        "nonce-1",
        &digest,
        &proof.clone().unwrap()
    ));
    assert!(!token::verify_proof(
        "a-different-secret-xyz",
        "nonce-1",
        &digest,
        &proof.unwrap()
    ));

    let (key, csr) = pki::new_node_key().unwrap();
    let req = |secret: &str| JoinRequest {
        secret: secret.into(),
        role: NodeRole::Worker,
        node_id: "w9".into(),
        raft_id: 9,
        name: "w9".into(),
        addr: "127.0.0.1:1".into(),
        labels: Default::default(),
        availability: Availability::Active,
        version: "test".into(),
        csr_pem: csr.clone(),
    };
    let refused = join(
        &addr,
        &ca_pem,
        req("wrong-secret-wrong-secret"),
        Duration::from_secs(5),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Refused);
    let reply = join(&addr, &ca_pem, req(SECRET), Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let info = pki::cert_info(&reply.cert_pem).unwrap();
    assert_eq!((info.node_id.as_str(), info.role), ("w9", NodeRole::Worker));

    // The new certificate works for mutual TLS.
    let cert = NodeCert {
        ca_pem: reply.ca_pem,
        cert_pem: reply.cert_pem,
        key_pem: key,
    };
    let client = Client::new(Arc::new(TlsState::new(&cert).unwrap()));
    assert!(matches!(
        client
            .call(
                &addr,
                Target::Manager,
                &Request::Report { reports: vec![] },
                Duration::from_secs(5)
            )
            .await
            .unwrap(),
        Response::Ok
    ));

    // A join sent to a server of another CA fails before the secret leaves.
    let other = pki::new_ca("c2", SystemTime::now()).unwrap();
    let err = join(&addr, &other.cert_pem, req(SECRET), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err}");
}

#[tokio::test]
async fn a_new_certificate_is_used_even_by_connections_busy_during_the_switch() {
    struct Echo;
    impl Handler for Echo {
        fn admits(&self, _: &CertInfo) -> bool {
            true
        }
        async fn handle(&self, peer: Peer, req: Request) -> Response {
            if let Request::Assignments { wait_ms, .. } = req {
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            }
            Response::Raft {
                body: format!("{:?}", peer.cert.map(|c| c.role)),
            }
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = pki::new_ca("c1", SystemTime::now()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server_tls = Arc::new(TlsState::new(&node_cert(&ca, "server", NodeRole::Manager)).unwrap());
    tokio::spawn(rpc::serve(listener, server_tls, Arc::new(Echo)));

    let tls = Arc::new(TlsState::new(&node_cert(&ca, "n1", NodeRole::Worker)).unwrap());
    let client = Arc::new(Client::new(tls.clone()));
    let role = |r: Response| match r {
        Response::Raft { body } => body,
        other => panic!("{other:?}"),
    };
    // A long call is in flight while the certificate changes (a promotion).
    let slow = {
        let client = client.clone();
        let addr = addr.clone();
        tokio::spawn(async move {
            let req = Request::Assignments {
                known: String::new(),
                wait_ms: 300,
            };
            client
                .call(&addr, Target::Manager, &req, Duration::from_secs(5))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    tls.update(&node_cert(&ca, "n1", NodeRole::Manager))
        .unwrap();
    client.clear();
    assert_eq!(role(slow.await.unwrap().unwrap()), "Some(Worker)");
    // Every later call presents the new certificate, even on connections reused from the pool.
    for _ in 0..3 {
        let r = client
            .call(&addr, Target::Manager, &raft(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(role(r), "Some(Manager)");
    }
}
