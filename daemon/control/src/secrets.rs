//! Secrets and configs of stacks: the versions a deploy or reload creates, the references of the
//! stack's services resolved to them, and the removal of versions nothing uses any more.
//!
//! A stack's `[secrets.NAME] file = ...` is the cluster secret `STACK_NAME`. Its content is
//! compared by sha256 with the current version: the same content keeps that version; other
//! content makes a new one (same name, new id), which the stack's services then name, so they
//! roll. An external secret is used under its own name, at its current version.

use std::collections::BTreeMap;

use model::{ClusterState, Command, Id, Millis, Secret, SecretKind, StackSpec};

use crate::stacks::PlanError;
use crate::{IdSource, Pass};

/// The cluster name and version id of each secret (by kind and the name used in the stack
/// file), and the new versions to create.
#[derive(Debug, Default)]
pub(crate) struct StackSecrets {
    pub resolved: BTreeMap<(SecretKind, String), (String, Id)>,
    pub create: Vec<(SecretKind, Secret)>,
}

/// Plan the versions of a stack's secrets and configs.
pub(crate) fn plan_stack_secrets(
    state: &ClusterState,
    spec: &StackSpec,
    now: Millis,
    ids: &mut dyn IdSource,
) -> Result<StackSecrets, PlanError> {
    let mut out = StackSecrets::default();
    for (kind, declared) in [
        (SecretKind::Secret, &spec.secrets),
        (SecretKind::Config, &spec.configs),
    ] {
        for (short, s) in declared {
            let err = |reason: String| PlanError::Secret {
                stack: spec.name.clone(),
                kind: kind.as_str(),
                name: short.clone(),
                reason,
            };
            if s.external {
                let name = s.name.clone().unwrap_or_else(|| short.clone());
                let cur = state.current_secret(kind, &name).ok_or_else(|| {
                    err(format!(
                        "external {k} {name} not found: create it with `shoal {k} create {name} FILE`",
                        k = kind.as_str()
                    ))
                })?;
                out.resolved
                    .insert((kind, short.clone()), (name, cur.id.clone()));
                continue;
            }
            let full = format!("{}_{short}", spec.name);
            let Some(data) = &s.data else {
                return Err(err("its file was not read".into()));
            };
            if let Some(other) = state
                .secrets_of(kind)
                .values()
                .find(|o| o.name == full && o.stack.as_deref() != Some(spec.name.as_str()))
            {
                return Err(err(format!(
                    "{} {} already exists outside the stack; remove it or rename the stack's {}",
                    kind.as_str(),
                    other.name,
                    kind.as_str()
                )));
            }
            match state.current_secret(kind, &full) {
                Some(cur) if cur.digest == s.digest => {
                    out.resolved
                        .insert((kind, short.clone()), (full, cur.id.clone()));
                }
                _ => {
                    let id = ids.next_id();
                    out.resolved
                        .insert((kind, short.clone()), (full.clone(), id.clone()));
                    out.create.push((
                        kind,
                        Secret {
                            id,
                            name: full,
                            labels: BTreeMap::from([(
                                "com.docker.stack.namespace".to_string(),
                                spec.name.clone(),
                            )]),
                            data: data.clone(),
                            digest: s.digest.clone(),
                            created_at: now,
                            stack: Some(spec.name.clone()),
                        },
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Point every reference of a stack's service at the version planned for it. The spec crate
/// writes references by the name used in the stack file.
pub(crate) fn resolve_service_refs(
    stack: &str,
    planned: &StackSecrets,
    spec: &mut model::ServiceSpec,
) -> Result<(), PlanError> {
    for (kind, refs) in [
        (SecretKind::Secret, &mut spec.task.secrets),
        (SecretKind::Config, &mut spec.task.configs),
    ] {
        for r in refs.iter_mut() {
            let Some((name, id)) = planned.resolved.get(&(kind, r.name.clone())) else {
                return Err(PlanError::Secret {
                    stack: stack.to_string(),
                    kind: kind.as_str(),
                    name: r.name.clone(),
                    reason: format!(
                        "service {} names it but the stack does not declare it",
                        spec.name
                    ),
                });
            };
            r.name = name.clone();
            r.id = id.clone();
        }
    }
    Ok(())
}

/// Remove the versions of stacks' secrets and configs that are no longer current (a newer
/// version exists, or the stack no longer declares them, or is gone) once nothing uses them:
/// no service spec, no spec a rollback would go back to, no runnable task. Apply checks the use
/// again, so a version in use is never removed.
pub(crate) fn collect_stack_secrets(pass: &mut Pass<'_>) {
    let mut stale: Vec<(SecretKind, Id)> = Vec::new();
    for kind in [SecretKind::Secret, SecretKind::Config] {
        for s in pass.state.secrets_of(kind).values() {
            let Some(stack) = s.stack.as_deref() else {
                continue;
            };
            let declared = pass.state.stacks.get(stack).is_some_and(|st| {
                let map = match kind {
                    SecretKind::Secret => &st.spec.secrets,
                    SecretKind::Config => &st.spec.configs,
                };
                map.iter()
                    .any(|(short, d)| !d.external && format!("{stack}_{short}") == s.name)
            });
            let current = pass
                .state
                .current_secret(kind, &s.name)
                .is_some_and(|c| c.id == s.id);
            let stale_version = !(declared && current);
            if stale_version && !pass.state.secret_in_use(kind, &s.id) {
                stale.push((kind, s.id.clone()));
            }
        }
    }
    for (kind, id) in stale {
        pass.push(Command::RemoveSecret { kind, id });
    }
}
