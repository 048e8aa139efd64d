//! Secrets and configs: small immutable blobs kept in the replicated state and given to the tasks
//! that name them, as Swarm's.
//!
//! Both kinds share one type, [`Secret`], kept in two maps of [`ClusterState`] (`secrets` and
//! `configs`). What differs is where a task sees them (`/run/secrets/TARGET` or the config's
//! target path), the size limit ([`SecretKind::max_bytes`]) and that a config's data may be
//! shown (`shoal config inspect` does not, to keep the rule simple: data never leaves the state
//! except towards a node that runs a task using it).
//!
//! Invariants:
//! - The data is never printed: [`SecretData`]'s `Debug` shows only its size, it has no
//!   `Display`, and no listing row carries it.
//! - A secret never changes. A stack whose file changes gets a new *version*: a new secret with
//!   the same name, a new id and the stack set (only stack-owned secrets share a name); the
//!   newest version is the current one ([`ClusterState::current_secret`]). Services name the
//!   version they use by id in their [`SecretRef`]s, so a new version changes the task spec and
//!   rolls the service; an old version is removed (`control::secrets`) once nothing uses it.
//! - A secret is removed only while no service (current or previous spec) and no runnable task
//!   names it ([`ClusterState::secret_users`]).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{ClusterState, Id, Millis};

/// The largest secret, as Swarm's (`MaxSecretSize`).
pub const MAX_SECRET_BYTES: usize = 500 * 1024;
/// The largest config, as Swarm's (`MaxConfigSize`).
pub const MAX_CONFIG_BYTES: usize = 1000 * 1024;

/// Which of the two maps a secret lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    Secret,
    Config,
}

impl SecretKind {
    /// `secret` or `config`, as the commands spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::Secret => "secret",
            SecretKind::Config => "config",
        }
    }

    pub fn max_bytes(self) -> usize {
        match self {
            SecretKind::Secret => MAX_SECRET_BYTES,
            SecretKind::Config => MAX_CONFIG_BYTES,
        }
    }

    /// The size check shared by every way in (CLI, D-Bus, stack files, apply).
    pub fn check_size(self, len: usize) -> Result<(), String> {
        let max = self.max_bytes();
        if len == 0 {
            return Err(format!("{} data must not be empty", self.as_str()));
        }
        if len > max {
            return Err(format!(
                "{} data of {len} bytes is above the limit of {max} bytes ({} KiB)",
                self.as_str(),
                max / 1024
            ));
        }
        Ok(())
    }

    /// Where a task sees a reference's file when it sets no target: `/run/secrets/NAME` for a
    /// secret, `/NAME` for a config (Swarm's defaults).
    pub fn default_target(self, name: &str) -> String {
        match self {
            SecretKind::Secret => name.to_string(),
            SecretKind::Config => format!("/{name}"),
        }
    }
}

/// The bytes of a secret or config. Serialized as base64; `Debug` never shows them.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretData(Vec<u8>);

impl SecretData {
    pub fn new(bytes: Vec<u8>) -> SecretData {
        SecretData(bytes)
    }

    /// The bytes, for the node that writes them into a task's files.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

impl Serialize for SecretData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for SecretData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SecretData, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(SecretData)
            .map_err(|_| serde::de::Error::custom("secret data is not valid base64"))
    }
}

/// A secret or config in the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub id: Id,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub data: SecretData,
    /// Lowercase hex sha256 of the data: how a stack sees that its file changed.
    pub digest: String,
    pub created_at: Millis,
    /// The stack whose file it came from; such secrets are versioned and removed by the
    /// reconciler once nothing uses them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

/// A service's use of a secret or config: which version (`id`, filled from `name` when the spec
/// is committed), and the file the task sees.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SecretRef {
    /// The version used; empty in a spec that has not been resolved yet (the current version of
    /// `name` is taken).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: Id,
    /// The cluster name of the secret (`STACK_NAME` for a stack's own).
    pub name: String,
    /// A file name under `/run/secrets` (secrets) or an absolute path (configs).
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits of the file.
    pub mode: u32,
}

/// Mode of a secret or config file when none is given (Swarm's 0444).
pub const DEFAULT_FILE_MODE: u32 = 0o444;

impl SecretRef {
    /// A reference with Swarm's defaults: target named after the secret, root-owned, 0444.
    pub fn new(kind: SecretKind, name: &str) -> SecretRef {
        SecretRef {
            id: String::new(),
            name: name.to_string(),
            target: kind.default_target(name),
            uid: 0,
            gid: 0,
            mode: DEFAULT_FILE_MODE,
        }
    }
}

/// The data of one secret or config, as a node receives it with its assignments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretFile {
    pub kind: SecretKind,
    pub id: Id,
    pub data: SecretData,
}

impl ClusterState {
    pub fn secrets_of(&self, kind: SecretKind) -> &crate::Map<Id, Secret> {
        match kind {
            SecretKind::Secret => &self.secrets,
            SecretKind::Config => &self.configs,
        }
    }

    pub(crate) fn secrets_of_mut(&mut self, kind: SecretKind) -> &mut crate::Map<Id, Secret> {
        match kind {
            SecretKind::Secret => &mut self.secrets,
            SecretKind::Config => &mut self.configs,
        }
    }

    /// The current version of the secret called `name`: the newest of that name.
    pub fn current_secret(&self, kind: SecretKind, name: &str) -> Option<&Secret> {
        self.secrets_of(kind)
            .values()
            .filter(|s| s.name == name)
            .max_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)))
    }

    /// A secret by id, name (its current version) or unique id prefix.
    pub fn find_secret(&self, kind: SecretKind, key: &str) -> Option<&Secret> {
        let map = self.secrets_of(kind);
        if let Some(s) = map.get(key) {
            return Some(s);
        }
        if let Some(s) = self.current_secret(kind, key) {
            return Some(s);
        }
        let mut it = map.values().filter(|s| s.id.starts_with(key));
        match (it.next(), it.next()) {
            (Some(s), None) if !key.is_empty() => Some(s),
            _ => None,
        }
    }

    /// The names of the services that use secret `id` (in their spec or the spec a rollback
    /// would go back to) or have a runnable task that does. Sorted, without repeats.
    pub fn secret_users(&self, kind: SecretKind, id: &str) -> Vec<String> {
        let uses = |t: &crate::TaskSpec| refs_of(t, kind).iter().any(|r| r.id == id);
        let mut out: Vec<String> = self
            .services
            .values()
            .filter(|s| {
                uses(&s.spec.task) || s.previous_spec.as_ref().is_some_and(|p| uses(&p.task))
            })
            .map(|s| s.spec.name.clone())
            .collect();
        for t in self.tasks.values() {
            if !t.status.state.is_terminal() && uses(&t.spec) {
                out.push(t.service_name.clone());
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Whether anything named in [`ClusterState::secret_users`] uses secret `id`. Reads the
    /// services first and the tasks only when no service uses it (a version kept for a
    /// rollback is answered from the services alone).
    pub fn secret_in_use(&self, kind: SecretKind, id: &str) -> bool {
        let uses = |t: &crate::TaskSpec| refs_of(t, kind).iter().any(|r| r.id == id);
        self.services
            .values()
            .any(|s| uses(&s.spec.task) || s.previous_spec.as_ref().is_some_and(|p| uses(&p.task)))
            || self
                .tasks
                .values()
                .any(|t| !t.status.state.is_terminal() && uses(&t.spec))
    }

    /// Fill the `id` of every reference of `spec` that has none with the current version of its
    /// name. Fails naming the first secret or config that does not exist.
    pub fn resolve_secret_refs(&self, spec: &mut crate::TaskSpec) -> Result<(), String> {
        for kind in [SecretKind::Secret, SecretKind::Config] {
            for r in refs_of_mut(spec, kind) {
                if !r.id.is_empty() {
                    continue;
                }
                let s = self.current_secret(kind, &r.name).ok_or_else(|| {
                    format!(
                        "{kind} {name} not found: create it with `shoal {kind} create {name} FILE` (see `shoal {kind} ls`)",
                        kind = kind.as_str(),
                        name = r.name
                    )
                })?;
                r.id = s.id.clone();
            }
        }
        Ok(())
    }

    /// The data of every secret and config the runnable tasks of `node` use, for its
    /// assignment set: a node never receives a secret none of its tasks needs.
    pub fn node_secret_files(&self, node: &str) -> Vec<SecretFile> {
        let mut want: BTreeMap<(SecretKind, Id), ()> = BTreeMap::new();
        for t in self.tasks_on(node) {
            if !t.is_runnable() {
                continue;
            }
            for kind in [SecretKind::Secret, SecretKind::Config] {
                for r in refs_of(&t.spec, kind) {
                    want.insert((kind, r.id.clone()), ());
                }
            }
        }
        want.into_keys()
            .filter_map(|(kind, id)| {
                self.secrets_of(kind).get(&id).map(|s| SecretFile {
                    kind,
                    id,
                    data: s.data.clone(),
                })
            })
            .collect()
    }
}

/// The listing row of a secret or config (`ListSecrets`, `secret inspect`): never the data,
/// nor its digest (a digest of a short password is as good as the password).
pub fn secret_row(state: &ClusterState, kind: SecretKind, s: &Secret) -> BTreeMap<String, String> {
    let mut row = BTreeMap::new();
    row.insert("Id".to_string(), s.id.clone());
    row.insert("Name".to_string(), s.name.clone());
    row.insert("Created".to_string(), s.created_at.to_string());
    row.insert("Stack".to_string(), s.stack.clone().unwrap_or_default());
    row.insert(
        "Services".to_string(),
        state.secret_users(kind, &s.id).join(","),
    );
    let current = state
        .current_secret(kind, &s.name)
        .is_some_and(|c| c.id == s.id);
    row.insert("Current".to_string(), current.to_string());
    for (k, v) in &s.labels {
        row.insert(format!("Label.{k}"), v.clone());
    }
    row
}

/// The references of one kind in a task spec.
pub fn refs_of(t: &crate::TaskSpec, kind: SecretKind) -> &[SecretRef] {
    match kind {
        SecretKind::Secret => &t.secrets,
        SecretKind::Config => &t.configs,
    }
}

fn refs_of_mut(t: &mut crate::TaskSpec, kind: SecretKind) -> &mut Vec<SecretRef> {
    match kind {
        SecretKind::Secret => &mut t.secrets,
        SecretKind::Config => &mut t.configs,
    }
}

/// The one check of a reference's file fields, for stack files, flags and D-Bus: a secret's
/// target is a plain file name (no `/`, not `.` or `..`), a config's an absolute path; the mode
/// fits in the permission bits.
pub fn check_ref(kind: SecretKind, r: &SecretRef) -> Result<(), String> {
    match kind {
        SecretKind::Secret => {
            if r.target.is_empty()
                || r.target.contains('/')
                || r.target == "."
                || r.target == ".."
                || r.target.contains('\0')
            {
                return Err(format!(
                    "secret {}: target \"{}\" must be a file name (the file is /run/secrets/TARGET)",
                    r.name, r.target
                ));
            }
        }
        SecretKind::Config => {
            if !r.target.starts_with('/')
                || r.target == "/"
                || r.target.split('/').any(|c| c == "..")
                || r.target.contains('\0')
            {
                return Err(format!(
                    "config {}: target \"{}\" must be an absolute file path",
                    r.name, r.target
                ));
            }
        }
    }
    if r.target.len() > 4096 {
        return Err(format!(
            "{} {}: target is longer than 4096 characters",
            kind.as_str(),
            r.name
        ));
    }
    if r.mode > 0o777 {
        return Err(format!(
            "{} {}: mode {:o} is not a file permission (0 to 0777)",
            kind.as_str(),
            r.name,
            r.mode
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::svc;
    use crate::{ApplyError, Command, StackChange};

    fn secret(id: &str, name: &str, data: &[u8], stack: Option<&str>, at: Millis) -> Secret {
        Secret {
            id: id.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            data: SecretData::new(data.to_vec()),
            digest: format!("d-{id}"),
            created_at: at,
            stack: stack.map(str::to_string),
        }
    }

    fn task_on(id: &str, node: &str) -> crate::Task {
        crate::Task {
            id: id.into(),
            service_id: "svc".into(),
            service_name: "svc".into(),
            slot: 1,
            node_id: Some(node.into()),
            spec_version: 1,
            spec: crate::TaskSpec::default(),
            image_digest: None,
            ports: vec![],
            desired: crate::TaskState::Running,
            status: crate::TaskStatus {
                state: crate::TaskState::Assigned,
                ..Default::default()
            },
            created_at: 0,
            not_before: None,
            restart_attempt: 0,
            started_at: None,
            networks: vec![],
        }
    }

    fn create(st: &mut ClusterState, kind: SecretKind, s: Secret) -> Result<(), ApplyError> {
        st.apply(&Command::CreateSecret { kind, secret: s })
            .map(|_| ())
    }

    #[test]
    fn data_never_shows_in_debug_and_round_trips_as_base64() {
        let s = secret("s1", "db", b"hunter2-password", None, 1);
        let dbg = format!(
            "{s:?} {:?}",
            Command::CreateSecret {
                kind: SecretKind::Secret,
                secret: s.clone()
            }
        );
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("<redacted 16 bytes>"), "{dbg}");
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        let back: Secret = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn a_spec_without_secrets_keeps_its_stored_form() {
        // Specs stored before secrets existed must read and serialize the same.
        let spec = crate::TaskSpec::default();
        let json = serde_json::to_string(&spec).unwrap();
        assert!(
            !json.contains("secrets") && !json.contains("configs"),
            "{json}"
        );
        let back: crate::TaskSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        let stack = crate::StackSpec::default();
        let json = serde_json::to_string(&stack).unwrap();
        assert!(!json.contains("secrets"), "{json}");
    }

    #[test]
    fn names_are_unique_except_for_versions_of_one_stack_and_sizes_are_bounded() {
        let mut st = ClusterState::default();
        create(
            &mut st,
            SecretKind::Secret,
            secret("a", "db", b"x", None, 1),
        )
        .unwrap();
        assert!(matches!(
            create(
                &mut st,
                SecretKind::Secret,
                secret("b", "db", b"y", None, 2)
            ),
            Err(ApplyError::SecretExists(_))
        ));
        // The same name as a config is another object.
        create(
            &mut st,
            SecretKind::Config,
            secret("c", "db", b"y", None, 2),
        )
        .unwrap();
        // A stack's versions share a name; the newest is current.
        create(
            &mut st,
            SecretKind::Secret,
            secret("v1", "s_pw", b"1", Some("s"), 1),
        )
        .unwrap();
        create(
            &mut st,
            SecretKind::Secret,
            secret("v2", "s_pw", b"2", Some("s"), 5),
        )
        .unwrap();
        assert_eq!(
            st.current_secret(SecretKind::Secret, "s_pw").unwrap().id,
            "v2"
        );
        assert!(
            create(
                &mut st,
                SecretKind::Secret,
                secret("v3", "s_pw", b"3", None, 9)
            )
            .is_err()
        );
        assert!(
            create(
                &mut st,
                SecretKind::Secret,
                secret("v3", "s_pw", b"3", Some("t"), 9)
            )
            .is_err()
        );
        // Limits: Swarm's 500 KiB for secrets, 1000 KiB for configs; empty is refused.
        let big = vec![b'x'; MAX_SECRET_BYTES + 1];
        let err = create(
            &mut st,
            SecretKind::Secret,
            secret("big", "big", &big, None, 1),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("above the limit of 512000 bytes (500 KiB)"),
            "{err}"
        );
        create(
            &mut st,
            SecretKind::Config,
            secret("big", "big", &big, None, 1),
        )
        .unwrap();
        assert!(create(&mut st, SecretKind::Secret, secret("e", "e", b"", None, 1)).is_err());
    }

    #[test]
    fn a_service_names_an_existing_version_and_removal_waits_until_nothing_uses_it() {
        let mut st = ClusterState::default();
        let mut s = svc("svc1", "web", None);
        s.spec
            .task
            .secrets
            .push(SecretRef::new(SecretKind::Secret, "db"));
        // Unknown secret: refused.
        let mut unresolved = s.clone();
        assert!(st.resolve_secret_refs(&mut unresolved.spec.task).is_err());
        assert!(matches!(
            st.apply(&Command::CreateService(unresolved)),
            Err(ApplyError::SecretNotFound(_))
        ));
        create(
            &mut st,
            SecretKind::Secret,
            secret("a", "db", b"x", None, 1),
        )
        .unwrap();
        st.resolve_secret_refs(&mut s.spec.task).unwrap();
        assert_eq!(s.spec.task.secrets[0].id, "a");
        assert_eq!(s.spec.task.secrets[0].target, "db");
        assert_eq!(s.spec.task.secrets[0].mode, 0o444);
        st.apply(&Command::CreateService(s.clone())).unwrap();
        let err = st
            .apply(&Command::RemoveSecret {
                kind: SecretKind::Secret,
                id: "a".into(),
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("secret db is in use by the following services: web"),
            "{err}"
        );
        // Once the service is gone (and no task of it runs), the secret may go.
        st.apply(&Command::RemoveService { id: "svc1".into() })
            .unwrap();
        st.apply(&Command::RemoveSecret {
            kind: SecretKind::Secret,
            id: "a".into(),
        })
        .unwrap();
        assert!(st.secrets.is_empty());
    }

    #[test]
    fn a_new_version_changes_the_task_spec_and_so_rolls_the_service() {
        let mut st = ClusterState::default();
        create(
            &mut st,
            SecretKind::Secret,
            secret("v1", "s_pw", b"1", Some("s"), 1),
        )
        .unwrap();
        let mut s = svc("svc1", "s_web", None);
        s.spec
            .task
            .secrets
            .push(SecretRef::new(SecretKind::Secret, "s_pw"));
        st.resolve_secret_refs(&mut s.spec.task).unwrap();
        st.apply(&Command::CreateService(s.clone())).unwrap();
        let v = st.services["svc1"].version;
        let mut spec = s.spec.clone();
        spec.task.secrets[0].id = "v2".into();
        let change = StackChange {
            name: "s".into(),
            stack: None,
            create: vec![],
            update: vec![("svc1".into(), spec.clone(), None)],
            remove: vec![],
            networks: vec![],
            secrets: vec![(SecretKind::Secret, secret("v2", "s_pw", b"2", Some("s"), 2))],
            now: 3,
        };
        st.apply(&Command::ApplyStack(change)).unwrap();
        assert_eq!(st.services["svc1"].version, v + 1);
        // The old version stays while the rollback spec names it.
        assert_eq!(st.secret_users(SecretKind::Secret, "v1"), vec!["s_web"]);
        // A stack change naming a version that does not exist applies nothing at all.
        let mut bad = spec;
        bad.task.secrets[0].id = "v9".into();
        let change = StackChange {
            name: "s".into(),
            stack: None,
            create: vec![],
            update: vec![("svc1".into(), bad, None)],
            remove: vec![],
            networks: vec![],
            secrets: vec![(SecretKind::Secret, secret("v3", "s_pw", b"3", Some("s"), 4))],
            now: 5,
        };
        assert!(st.apply(&Command::ApplyStack(change)).is_err());
        assert!(!st.secrets.contains_key("v3"));
    }

    #[test]
    fn a_node_receives_only_the_secrets_of_its_runnable_tasks() {
        let mut st = ClusterState::default();
        create(&mut st, SecretKind::Secret, secret("a", "a", b"A", None, 1)).unwrap();
        create(&mut st, SecretKind::Secret, secret("b", "b", b"B", None, 1)).unwrap();
        create(&mut st, SecretKind::Config, secret("c", "c", b"C", None, 1)).unwrap();
        let mut t1 = task_on("t1", "n1");
        t1.spec.secrets.push(SecretRef {
            id: "a".into(),
            ..SecretRef::new(SecretKind::Secret, "a")
        });
        t1.spec.configs.push(SecretRef {
            id: "c".into(),
            ..SecretRef::new(SecretKind::Config, "c")
        });
        let mut t2 = task_on("t2", "n2");
        t2.spec.secrets.push(SecretRef {
            id: "b".into(),
            ..SecretRef::new(SecretKind::Secret, "b")
        });
        st.tasks.insert("t1".into(), t1);
        st.tasks.insert("t2".into(), t2);
        st.rebuild_index();
        let files = st.node_secret_files("n1");
        let ids: Vec<_> = files.iter().map(|f| (f.kind, f.id.as_str())).collect();
        assert_eq!(
            ids,
            vec![(SecretKind::Secret, "a"), (SecretKind::Config, "c")]
        );
        assert_eq!(files[0].data.expose(), b"A");
        assert!(st.node_secret_files("n3").is_empty());
    }

    #[test]
    fn reference_targets_and_modes_are_checked() {
        let ok = SecretRef::new(SecretKind::Secret, "db");
        assert!(check_ref(SecretKind::Secret, &ok).is_ok());
        for bad in ["../x", "a/b", "", ".."] {
            let r = SecretRef {
                target: bad.into(),
                ..ok.clone()
            };
            assert!(check_ref(SecretKind::Secret, &r).is_err(), "{bad}");
        }
        let c = SecretRef::new(SecretKind::Config, "app");
        assert_eq!(c.target, "/app");
        assert!(check_ref(SecretKind::Config, &c).is_ok());
        let r = SecretRef {
            target: "rel".into(),
            ..c.clone()
        };
        assert!(check_ref(SecretKind::Config, &r).is_err());
        let r = SecretRef { mode: 0o4755, ..c };
        assert!(check_ref(SecretKind::Config, &r).is_err());
    }
}
