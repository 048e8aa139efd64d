//! Planning stack changes: what a deploy or a reload does to the cluster state.
//!
//! Pure: the caller has already parsed the files and resolved every image to a digest, so a
//! plan either applies whole (one `ApplyStack` command per stack, all stacks of a reload in one
//! batch) or the reload fails before anything changes.

use std::collections::BTreeMap;

use model::{ClusterState, Command, Millis, Service, Stack, StackChange, StackSource, StackSpec};

use crate::IdSource;

/// A stack read from a file in the stacks directory.
#[derive(Debug, Clone)]
pub struct FileStack {
    pub name: String,
    pub path: String,
    /// sha256 of the file's bytes: an unchanged file changes nothing.
    pub hash: String,
    pub spec: StackSpec,
}

/// What a reload will do, by stack name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// One command applying every change atomically; `None` when nothing changes.
    pub command: Option<Command>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "stack {stack}: service {service} already exists outside the stack; remove it or rename the service"
    )]
    ServiceOwnedElsewhere { stack: String, service: String },
    #[error(
        "stack {0} was deployed with `shoal stack deploy`; remove it with `shoal stack rm {0}` before managing it from a file"
    )]
    OwnedByCli(String),
}

/// Plan one stack deploy (from a file or the CLI). `digests` maps each image reference of the
/// stack to the digest it resolved to. Returns `None` when the stack is already exactly so.
pub fn plan_stack(
    state: &ClusterState,
    spec: &StackSpec,
    source: StackSource,
    digests: &BTreeMap<String, String>,
    now: Millis,
    ids: &mut dyn IdSource,
) -> Result<Option<StackChange>, PlanError> {
    let name = &spec.name;
    let mut change = StackChange {
        name: name.clone(),
        stack: Some(Stack {
            name: name.clone(),
            source,
            spec: spec.clone(),
            updated_at: now,
        }),
        create: Vec::new(),
        update: Vec::new(),
        remove: Vec::new(),
        now,
    };
    for svc_spec in &spec.services {
        let digest = digests.get(&svc_spec.task.image).cloned();
        match state.service_by_name(&svc_spec.name) {
            Some(existing) if existing.spec.stack.as_deref() != Some(name.as_str()) => {
                return Err(PlanError::ServiceOwnedElsewhere {
                    stack: name.clone(),
                    service: svc_spec.name.clone(),
                });
            }
            Some(existing) => {
                let same_digest = digest.is_none() || existing.image_digest == digest;
                if existing.spec != *svc_spec || !same_digest {
                    change
                        .update
                        .push((existing.id.clone(), svc_spec.clone(), digest));
                }
            }
            None => change
                .create
                .push(Service::new(ids.next_id(), svc_spec.clone(), digest, now)),
        }
    }
    for svc in state.services.values() {
        let ours = svc.spec.stack.as_deref() == Some(name.as_str());
        if ours && !spec.services.iter().any(|s| s.name == svc.spec.name) {
            change.remove.push(svc.id.clone());
        }
    }
    let unchanged_stack = state.stacks.get(name).is_some_and(|s| {
        s.spec == *spec && Some(&s.source) == change.stack.as_ref().map(|c| &c.source)
    });
    if unchanged_stack
        && change.create.is_empty()
        && change.update.is_empty()
        && change.remove.is_empty()
    {
        return Ok(None);
    }
    Ok(Some(change))
}

/// Plan the removal of a stack and all its services.
pub fn plan_stack_removal(state: &ClusterState, name: &str, now: Millis) -> Option<StackChange> {
    let remove: Vec<_> = state
        .services
        .values()
        .filter(|s| s.spec.stack.as_deref() == Some(name))
        .map(|s| s.id.clone())
        .collect();
    if remove.is_empty() && !state.stacks.contains_key(name) {
        return None;
    }
    Some(StackChange {
        name: name.into(),
        stack: None,
        create: vec![],
        update: vec![],
        remove,
        now,
    })
}

/// Plan a reload of the stacks directory: files added, changed (by hash) or gone. Stacks
/// deployed from the CLI are never touched. All errors are collected.
pub fn plan_reload(
    state: &ClusterState,
    files: &[FileStack],
    digests: &BTreeMap<String, String>,
    now: Millis,
    ids: &mut dyn IdSource,
) -> Result<ReloadPlan, Vec<PlanError>> {
    let mut plan = ReloadPlan::default();
    let mut changes = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let existing = state.stacks.get(&f.name);
        if let Some(Stack {
            source: StackSource::Cli,
            ..
        }) = existing
        {
            errors.push(PlanError::OwnedByCli(f.name.clone()));
            continue;
        }
        let source = StackSource::File {
            path: f.path.clone(),
            hash: f.hash.clone(),
        };
        if existing.is_some_and(|s| s.source == source) {
            plan.unchanged.push(f.name.clone());
            continue;
        }
        match plan_stack(state, &f.spec, source, digests, now, ids) {
            Ok(Some(change)) => {
                if existing.is_some() {
                    plan.changed.push(f.name.clone());
                } else {
                    plan.added.push(f.name.clone());
                }
                changes.push(Command::ApplyStack(change));
            }
            Ok(None) => plan.unchanged.push(f.name.clone()),
            Err(e) => errors.push(e),
        }
    }
    for (name, stack) in &state.stacks {
        let from_file = matches!(stack.source, StackSource::File { .. });
        if from_file
            && !files.iter().any(|f| &f.name == name)
            && let Some(change) = plan_stack_removal(state, name, now)
        {
            plan.removed.push(name.clone());
            changes.push(Command::ApplyStack(change));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if !changes.is_empty() {
        plan.command = Some(Command::Batch(changes));
    }
    Ok(plan)
}
