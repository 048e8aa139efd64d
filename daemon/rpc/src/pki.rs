//! The cluster CA and node certificates.
//!
//! The CA is an ECDSA P-256 key with a self-signed certificate made at bootstrap; managers keep
//! it in the replicated state. A node certificate carries the node id as CN, the role as OU
//! (`manager` or `worker`) and the cluster id as O, and the DNS names `node.shoal` (every node)
//! and `manager.shoal` (managers only): a client that must talk to a manager verifies the server
//! against `manager.shoal`, so a worker certificate can never pose as a manager.
//!
//! A joining node makes its own key and sends a certificate signing request; the manager takes
//! only the public key from it and decides every field of the certificate itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use model::NodeRole;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::RpcError;

/// DNS name every node certificate carries.
pub const NODE_NAME: &str = "node.shoal";
/// DNS name only manager certificates carry.
pub const MANAGER_NAME: &str = "manager.shoal";

/// How long the CA certificate is valid (Swarm: 20 years).
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// The cluster CA: certificate and private key, both PEM. The key is a secret: `Debug` hides it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaKeys {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaKeys")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A node's certificate and key (PEM), with the CA certificate that signed it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What a node certificate says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    pub node_id: String,
    pub role: NodeRole,
    pub cluster_id: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

fn pki(what: &str, e: impl std::fmt::Display) -> RpcError {
    RpcError::Pki(format!("{what}: {e}"))
}

fn offset(t: SystemTime) -> Result<time::OffsetDateTime, RpcError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|e| pki("clock before 1970", e))?
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64).map_err(|e| pki("time out of range", e))
}

/// Make a new CA for cluster `cluster_id`, valid from `now` (an hour back, for clock skew).
pub fn new_ca(cluster_id: &str, now: SystemTime) -> Result<CaKeys, RpcError> {
    let key = KeyPair::generate().map_err(|e| pki("failed to generate the CA key", e))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "shoal cluster CA");
    dn.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(now - Duration::from_secs(3600))?;
    params.not_after = offset(now + CA_VALIDITY)?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| pki("failed to sign the CA certificate", e))?;
    Ok(CaKeys {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The digest a join token carries: sha256 of the CA certificate's DER, lowercase hex.
pub fn ca_digest(ca_pem: &str) -> Result<String, RpcError> {
    let der = pem_der(ca_pem, "CERTIFICATE")?;
    Ok(hex::encode(Sha256::digest(&der)))
}

/// The DER bytes of the first PEM block with tag `tag`.
pub fn pem_der(pem: &str, tag: &str) -> Result<Vec<u8>, RpcError> {
    let mut rest = pem.as_bytes();
    loop {
        let (r, block) = x509_parser::pem::parse_x509_pem(rest)
            .map_err(|e| pki(&format!("no {tag} in PEM"), e))?;
        if block.label == tag {
            return Ok(block.contents);
        }
        rest = r;
        if rest.is_empty() {
            return Err(pki(&format!("no {tag} in PEM"), "not found"));
        }
    }
}

/// A new node key (PEM) and a signing request for it (PEM).
pub fn new_node_key() -> Result<(String, String), RpcError> {
    let key = KeyPair::generate().map_err(|e| pki("failed to generate a node key", e))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| pki("failed to make a certificate request", e))?
        .pem()
        .map_err(|e| pki("failed to encode a certificate request", e))?;
    Ok((key.serialize_pem(), csr))
}

/// Sign a node certificate for the key in `csr_pem`: CN `node_id`, OU `role`, O `cluster_id`,
/// valid from `now` (minus an hour of skew) for `validity`.
pub fn issue(
    ca: &CaKeys,
    csr_pem: &str,
    node_id: &str,
    role: NodeRole,
    cluster_id: &str,
    now: SystemTime,
    validity: Duration,
) -> Result<String, RpcError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| pki("invalid certificate request", e))?;
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| pki("invalid CA key", e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(|e| pki("invalid CA certificate", e))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id);
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    dn.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = dn;
    let mut names = vec![NODE_NAME.to_string()];
    if role == NodeRole::Manager {
        names.push(MANAGER_NAME.to_string());
    }
    params.subject_alt_names = names
        .into_iter()
        .map(|n| n.try_into().map(SanType::DnsName))
        .collect::<Result<_, _>>()
        .map_err(|e| pki("invalid DNS name", e))?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = offset(now - Duration::from_secs(3600))?;
    params.not_after = offset(now + validity)?;
    let cert = params
        .signed_by(&csr.public_key, &issuer)
        .map_err(|e| pki("failed to sign the node certificate", e))?;
    Ok(cert.pem())
}

/// Read what a node certificate (DER) says.
pub fn cert_info_der(der: &[u8]) -> Result<CertInfo, RpcError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| pki("invalid certificate", e))?;
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let node_id = first(&mut subject.iter_common_name());
    let role = match first(&mut subject.iter_organizational_unit()).as_str() {
        "manager" => NodeRole::Manager,
        "worker" => NodeRole::Worker,
        other => {
            return Err(pki(
                "certificate has no shoal role",
                format!("OU={other:?}"),
            ));
        }
    };
    let cluster_id = first(&mut subject.iter_organization());
    if node_id.is_empty() || cluster_id.is_empty() {
        return Err(pki(
            "certificate is not a shoal node certificate",
            "CN or O missing",
        ));
    }
    Ok(CertInfo {
        node_id,
        role,
        cluster_id,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// When a certificate (the CA's, say) expires, in unix seconds.
pub fn ca_not_after(pem: &str) -> Result<i64, RpcError> {
    let der = pem_der(pem, "CERTIFICATE")?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| pki("invalid certificate", e))?;
    Ok(cert.validity().not_after.timestamp())
}

/// [`cert_info_der`] for a PEM certificate.
pub fn cert_info(pem: &str) -> Result<CertInfo, RpcError> {
    cert_info_der(&pem_der(pem, "CERTIFICATE")?)
}

/// Whether a certificate valid from `not_before` to `not_after` should be renewed at `now`
/// (all unix seconds): once less than a third of its lifetime is left, as Swarm renews between
/// half and 80 % of the lifetime.
pub fn needs_renewal(not_before: i64, not_after: i64, now: i64) -> bool {
    let life = (not_after - not_before).max(1);
    not_after - now < life / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_carries_id_role_and_cluster() {
        let now = SystemTime::now();
        let ca = new_ca("c1", now).unwrap();
        let (key, csr) = new_node_key().unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let cert = issue(
            &ca,
            &csr,
            "n1",
            NodeRole::Worker,
            "c1",
            now,
            Duration::from_secs(7200),
        )
        .unwrap();
        let info = cert_info(&cert).unwrap();
        assert_eq!(info.node_id, "n1");
        assert_eq!(info.role, NodeRole::Worker);
        assert_eq!(info.cluster_id, "c1");
        assert!(info.not_after - info.not_before >= 7200);
        assert_eq!(ca_digest(&ca.cert_pem).unwrap().len(), 64);
        assert!(!format!("{ca:?}").contains("PRIVATE"));
        // The CA certificate is not a node certificate.
        assert!(cert_info(&ca.cert_pem).is_err());
        assert!(
            issue(
                &ca,
                "garbage",
                "n1",
                NodeRole::Worker,
                "c1",
                now,
                Duration::from_secs(60)
            )
            .is_err()
        );
    }

    #[test]
    fn renewal_starts_in_the_last_third() {
        assert!(!needs_renewal(0, 90, 10));
        assert!(!needs_renewal(0, 90, 59));
        assert!(needs_renewal(0, 90, 61));
        assert!(needs_renewal(0, 90, 100));
    }
}
