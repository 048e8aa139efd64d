//! Planning stack changes: what a deploy or a reload does to the cluster state.
//!
//! Pure: the caller has already parsed the files and resolved every image to a digest, so a
//! plan either applies whole (one `ApplyStack` command per stack, all stacks of a reload in one
//! batch) or the reload fails before anything changes.

use std::collections::BTreeMap;

use model::{
    ClusterState, Command, Ipv4Subnet, Millis, Network, Service, Stack, StackChange, StackSource,
    StackSpec,
};

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
    #[error(
        "stack {stack}: network {network} already exists outside the stack; remove it or rename the stack's network"
    )]
    NetworkOwnedElsewhere { stack: String, network: String },
    #[error(
        "network {network} exists with subnet {subnet}; a network's subnet cannot change in place: remove the stack first, or leave the subnet as it is"
    )]
    NetworkChanged { network: String, subnet: String },
    #[error("network {network}: {reason}")]
    Network { network: String, reason: String },
}

impl PlanError {
    /// The stack the error is about (stack networks are named `STACK_NAME`).
    pub fn stack(&self) -> &str {
        match self {
            PlanError::ServiceOwnedElsewhere { stack, .. }
            | PlanError::NetworkOwnedElsewhere { stack, .. } => stack,
            PlanError::OwnedByCli(stack) => stack,
            PlanError::NetworkChanged { network, .. } | PlanError::Network { network, .. } => {
                network.split('_').next().unwrap_or(network)
            }
        }
    }
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
        networks: Vec::new(),
        now,
    };
    change.networks = plan_networks(state, spec, now, ids)?;
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
                // Ports published without a number keep the ones they were given, and a
                // `service update --force` is not undone (nor repeated) by a redeploy.
                let mut desired = svc_spec.clone();
                model::keep_published_ports(&mut desired, &existing.spec);
                desired.task.force_update = existing.spec.task.force_update;
                if existing.spec != desired || !same_digest {
                    change.update.push((existing.id.clone(), desired, digest));
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
        && change.networks.is_empty()
        && change.create.is_empty()
        && change.update.is_empty()
        && change.remove.is_empty()
    {
        return Ok(None);
    }
    Ok(Some(change))
}

/// The stack's networks that do not exist yet, each with a subnet (its own, or the next free
/// one of the cluster's pool avoiding the nodes' addresses) and a VNI. A declared network that
/// exists with another subnet, or belongs to something else, is an error: networks are not
/// changed in place (as in Swarm).
fn plan_networks(
    state: &ClusterState,
    spec: &StackSpec,
    now: Millis,
    ids: &mut dyn IdSource,
) -> Result<Vec<Network>, PlanError> {
    let mut scratch = state.clone();
    let avoid = scratch.node_subnets();
    let mut out = Vec::new();
    for (short, net) in &spec.networks {
        if net.external {
            continue;
        }
        let full = format!("{}_{short}", spec.name);
        let subnet: Option<Ipv4Subnet> = net.subnet.as_deref().and_then(|s| s.parse().ok());
        if let Some(existing) = state.networks.values().find(|n| n.name == full) {
            if existing.stack.as_deref() != Some(spec.name.as_str()) {
                return Err(PlanError::NetworkOwnedElsewhere {
                    stack: spec.name.clone(),
                    network: full,
                });
            }
            if subnet.is_some_and(|s| s != existing.subnet) {
                return Err(PlanError::NetworkChanged {
                    network: full,
                    subnet: existing.subnet.to_string(),
                });
            }
            continue;
        }
        let mut n =
            model::network::new_network(&scratch, ids.next_id(), &full, subnet, &avoid, now)
                .map_err(|reason| PlanError::Network {
                    network: full.clone(),
                    reason,
                })?;
        n.attachable = net.attachable;
        n.labels = net.labels.clone();
        n.stack = Some(spec.name.clone());
        scratch.networks.insert(n.id.clone(), n.clone());
        out.push(n);
    }
    Ok(out)
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
        networks: vec![],
        now,
    })
}

/// Plan a reload of the stacks directory: every file's stack is made what the file says (added,
/// changed, or put back where it drifted), and stacks whose file is gone are removed. Stacks
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
    // Networks planned for earlier stacks of the reload: the next stack's must not overlap them.
    let mut scratch = state.clone();
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
        // Every file is planned, changed or not: a service that drifted from its file (changed
        // by a version of shoal that allowed it) is put back as the file says.
        match plan_stack(&scratch, &f.spec, source, digests, now, ids) {
            Ok(Some(change)) => {
                for n in &change.networks {
                    scratch.networks.insert(n.id.clone(), n.clone());
                }
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
