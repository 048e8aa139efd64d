//! The cluster's secrets, kept in the replicated state (managers only; workers never receive
//! the state): the CA key and the join secrets. `Debug` never shows them.

use serde::{Deserialize, Serialize};

/// The cluster CA and the join secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Security {
    /// PEM of the CA certificate (public).
    pub ca_cert_pem: String,
    /// PEM of the CA key (secret).
    pub ca_key_pem: String,
    /// Secret of the worker join token.
    pub worker_secret: String,
    /// Secret of the manager join token.
    pub manager_secret: String,
    /// The provisioning secret from the bootstrap manager's `token_file`, if any.
    pub shared_secret: Option<String>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("ca_cert_pem", &self.ca_cert_pem.len())
            .field("secrets", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let s = Security {
            ca_key_pem: "KEY-MATERIAL".into(),
            worker_secret: "w-secret".into(),
            manager_secret: "m-secret".into(),
            shared_secret: Some("shared".into()),
            ..Default::default()
        };
        let d = format!("{s:?}");
        for secret in ["KEY-MATERIAL", "w-secret", "m-secret", "shared"] {
            assert!(!d.contains(secret), "{d}");
        }
    }
}
