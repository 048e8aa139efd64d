//! This node's identity: a random id and raft id chosen on first start and kept in
//! `<state_dir>/node.json`.

use std::path::Path;

use anyhow::{Context, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub node_id: String,
    pub raft_id: u64,
}

/// A new random id: 25 lowercase base-36 characters, as Swarm's.
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..25)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Load the identity, or create and persist a new one.
pub fn load_or_create(state_dir: &Path) -> Result<Identity> {
    let path = state_dir.join("node.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "node identity {} is corrupt; move it away to start as a new node",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Identity {
                node_id: new_id(),
                raft_id: rand::rng().random_range(1..u64::MAX / 2),
            };
            std::fs::create_dir_all(state_dir).with_context(|| {
                format!("failed to create state directory {}", state_dir.display())
            })?;
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&id)?)
                .with_context(|| format!("failed to write {}", tmp.display()))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("failed to write {}", path.display()))?;
            Ok(id)
        }
        Err(e) => {
            Err(e).with_context(|| format!("failed to read node identity {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.node_id.len(), 25);
        std::fs::write(dir.path().join("node.json"), b"{garbage").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }
}
