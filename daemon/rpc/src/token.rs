//! Join tokens.
//!
//! - `SWMTKN-1-<ca digest>-<secret>`, printed by `shoal cluster join-token worker|manager`, as
//!   Swarm's: the digest (sha256 of the CA certificate, hex) lets the joining node pin the CA
//!   before it sends the secret; the secret says the role (a worker secret never yields a
//!   manager certificate).
//! - A provisioning secret: any other string of at least [`MIN_SHARED_LEN`] characters, written
//!   to `token_file` on the bootstrap manager and on the nodes that join it (how NixOS
//!   provisions a cluster with no interactive step). It carries no digest, so the joining node
//!   first asks the manager to prove that it knows the secret (an HMAC over a fresh nonce and the
//!   CA digest) and pins the CA it proved; the secret itself is sent only to that CA. It is
//!   manager-grade: the joining node gets the role its own configuration asks for.

use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::Sha256;

use crate::RpcError;

/// The prefix and version of Swarm-form tokens.
pub const PREFIX: &str = "SWMTKN-1-";
/// The shortest provisioning secret accepted.
pub const MIN_SHARED_LEN: usize = 16;

/// A parsed join token. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum JoinToken {
    Swarm { ca_digest: String, secret: String },
    Shared(String),
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinToken::Swarm { ca_digest, .. } => {
                write!(
                    f,
                    "JoinToken::Swarm {{ ca_digest: {ca_digest}, secret: <redacted> }}"
                )
            }
            JoinToken::Shared(_) => write!(f, "JoinToken::Shared(<redacted>)"),
        }
    }
}

impl JoinToken {
    /// Parse the content of a token file or a `--token` argument (surrounding whitespace is
    /// ignored).
    pub fn parse(text: &str) -> Result<JoinToken, RpcError> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix(PREFIX) {
            let bad = || {
                RpcError::Pki(format!(
                    "invalid join token: expected {PREFIX}<64 hex digits>-<secret>, as `shoal cluster join-token` prints it"
                ))
            };
            let (digest, secret) = rest.split_once('-').ok_or_else(bad)?;
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            if secret.len() < MIN_SHARED_LEN || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad());
            }
            return Ok(JoinToken::Swarm {
                ca_digest: digest.to_ascii_lowercase(),
                secret: secret.to_string(),
            });
        }
        if text.starts_with("SWMTKN-") {
            return Err(RpcError::Pki(
                "unsupported join token version: this shoal understands SWMTKN-1 tokens".into(),
            ));
        }
        if text.chars().count() < MIN_SHARED_LEN || text.chars().any(char::is_whitespace) {
            return Err(RpcError::Pki(format!(
                "invalid join token: expected a token from `shoal cluster join-token` ({PREFIX}...) or a provisioning secret of at least {MIN_SHARED_LEN} characters without spaces"
            )));
        }
        Ok(JoinToken::Shared(text.to_string()))
    }

    /// The secret the manager checks.
    pub fn secret(&self) -> &str {
        match self {
            JoinToken::Swarm { secret, .. } => secret,
            JoinToken::Shared(s) => s,
        }
    }
}

/// The token text for a CA digest and a secret.
pub fn format(ca_digest: &str, secret: &str) -> String {
    format!("{PREFIX}{ca_digest}-{secret}")
}

/// A new random secret: 25 lowercase base-36 characters.
pub fn new_secret() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..25)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn mac(secret: &str, nonce: &str, ca_digest: &str) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    m.update(b"shoal ca proof\0");
    m.update(nonce.as_bytes());
    m.update(b"\0");
    m.update(ca_digest.as_bytes());
    m
}

/// The manager's proof that it knows `secret`, for the joiner's `nonce` and the CA digest.
pub fn proof(secret: &str, nonce: &str, ca_digest: &str) -> String {
    hex::encode(mac(secret, nonce, ca_digest).finalize().into_bytes())
}

/// Check a [`proof`] in constant time.
pub fn verify_proof(secret: &str, nonce: &str, ca_digest: &str, proof: &str) -> bool {
    let Ok(bytes) = hex::decode(proof) else {
        return false;
    };
    mac(secret, nonce, ca_digest).verify_slice(&bytes).is_ok()
}

/// Compare two secrets in constant time.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_hide_their_secret() {
        let digest = "ab".repeat(32);
        let t = JoinToken::parse(&format!(
            " {} \n",
            format(&digest, "0123456789abcdefghijklmno")
        ))
        .unwrap();
        assert_eq!(
            t,
            JoinToken::Swarm {
                ca_digest: digest.clone(),
                secret: "0123456789abcdefghijklmno".into()
            }
        );
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
        assert!(JoinToken::parse("SWMTKN-1-abc-def").is_err());
        assert!(JoinToken::parse(&format!("SWMTKN-1-{digest}-x")).is_err());
        assert!(
            JoinToken::parse("SWMTKN-2-whatever-else")
                .unwrap_err()
                .to_string()
                .contains("version")
        );
        assert_eq!(
            JoinToken::parse("a-long-enough-shared-secret").unwrap(),
            JoinToken::Shared("a-long-enough-shared-secret".into())
        );
        assert!(JoinToken::parse("short").is_err());
        assert!(JoinToken::parse("has a space in it ok").is_err());
    }

    #[test]
    fn proofs_bind_secret_nonce_and_ca() {
        let p = proof("s3cret-s3cret-s3cret", "n1", "d1");
        assert!(verify_proof("s3cret-s3cret-s3cret", "n1", "d1", &p));
        assert!(!verify_proof("other-other-other-x", "n1", "d1", &p));
        assert!(!verify_proof("s3cret-s3cret-s3cret", "n2", "d1", &p));
        assert!(!verify_proof("s3cret-s3cret-s3cret", "n1", "d2", &p));
        assert!(!verify_proof("s3cret-s3cret-s3cret", "n1", "d1", "zz"));
        assert!(
            secrets_equal("abc", "abc")
                && !secrets_equal("abc", "abd")
                && !secrets_equal("abc", "ab")
        );
        assert_eq!(new_secret().len(), 25);
    }
}
