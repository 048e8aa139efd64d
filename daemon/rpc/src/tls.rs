//! rustls configurations for the node port.

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::RpcError;
use crate::pki::{NodeCert, pem_der};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls(what: &str, e: impl std::fmt::Display) -> RpcError {
    RpcError::Pki(format!("{what}: {e}"))
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, RpcError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(pem_der(ca_pem, "CERTIFICATE")?))
        .map_err(|e| tls("invalid CA certificate", e))?;
    Ok(Arc::new(roots))
}

fn identity(
    cert: &NodeCert,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), RpcError> {
    let chain = vec![CertificateDer::from(pem_der(
        &cert.cert_pem,
        "CERTIFICATE",
    )?)];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pem_der(
        &cert.key_pem,
        "PRIVATE KEY",
    )?));
    Ok((chain, key))
}

/// The server side: presents the node certificate; verifies a client certificate against the CA
/// when there is one (a client without one may only ask to join).
pub fn server_config(cert: &NodeCert) -> Result<Arc<ServerConfig>, RpcError> {
    let p = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&cert.ca_pem)?, p.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls("invalid client verifier", e))?;
    let (chain, key) = identity(cert)?;
    let cfg = ServerConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls("invalid node certificate", e))?;
    Ok(Arc::new(cfg))
}

/// A client that presents `cert` (when given) and trusts only the CA `ca_pem`.
pub fn client_config(ca_pem: &str, cert: Option<&NodeCert>) -> Result<Arc<ClientConfig>, RpcError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("TLS versions", e))?
        .with_root_certificates(roots(ca_pem)?);
    let cfg = match cert {
        Some(cert) => {
            let (chain, key) = identity(cert)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls("invalid node certificate", e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// A client for the first step of a join only: it accepts any server certificate, because it
/// does not know the CA yet. What it receives is checked against the token before it is
/// trusted, and it sends nothing secret.
pub fn probe_config() -> Arc<ClientConfig> {
    let p = provider();
    let verifier = AnyServer(p.signature_verification_algorithms);
    Arc::new(
        ClientConfig::builder_with_provider(p)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
    )
}

#[derive(Debug)]
struct AnyServer(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// This node's current TLS configurations; replaced when its certificate is renewed or its role
/// changes.
pub struct TlsState {
    inner: RwLock<(Arc<ServerConfig>, Arc<ClientConfig>, NodeCert)>,
}

impl TlsState {
    pub fn new(cert: &NodeCert) -> Result<TlsState, RpcError> {
        Ok(TlsState {
            inner: RwLock::new((
                server_config(cert)?,
                client_config(&cert.ca_pem, Some(cert))?,
                cert.clone(),
            )),
        })
    }

    /// Switch to a new certificate (new connections use it; open ones keep the old one).
    pub fn update(&self, cert: &NodeCert) -> Result<(), RpcError> {
        let next = (
            server_config(cert)?,
            client_config(&cert.ca_pem, Some(cert))?,
            cert.clone(),
        );
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    pub fn server(&self) -> Arc<ServerConfig> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    pub fn client(&self) -> Arc<ClientConfig> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    pub fn cert(&self) -> NodeCert {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .2
            .clone()
    }
}
