//! Service specs as systemd-style property lists (`a(sv)`, as in `StartTransientUnit`).
//!
//! `CreateService` applies a list onto a default spec, `UpdateService` onto the current one, and
//! `InspectService` returns the whole spec as a list. [`Property`] is the typed form; on the bus
//! each becomes `(name, variant)`:
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `Image` | `s` | image reference |
//! | `Mode` | `s` | `replicated` or `global` |
//! | `Replicas` | `t` | replica count (replicated services only) |
//! | `Command` / `Entrypoint` | `as` | replace the image's cmd / entrypoint; empty: use the image's |
//! | `Env` / `Labels` / `ContainerLabels` | `a{ss}` | replaced whole |
//! | `Ports` | `a(qqss)` | published, target, `tcp`/`udp`, `ingress`/`host`; replaced whole, host addresses included |
//! | `PortAddresses` | `a{ss}` | `PUBLISHED/PROTOCOL` (e.g. `8080/tcp`) to the IPv4 address the port is served on; applied after `Ports`; only listed ports, which are served on every address |
//! | `Mounts` | `a(sssbt)` | kind (`bind`/`volume`/`tmpfs`), source, target, read-only, tmpfs size in bytes (0: default) |
//! | `Networks` | `as` | networks the tasks attach to |
//! | `EndpointMode` | `s` | `vip` (default) or `dnsrr` |
//! | `Workdir` / `User` / `Hostname` | `s` | empty: the image's default |
//! | `StopSignal` | `s` | e.g. `SIGTERM` |
//! | `StopGracePeriodUSec` | `t` | microseconds, like systemd's `*USec` |
//! | `RestartCondition` | `s` | `any`, `on-failure`, `none` |
//! | `RestartDelayUSec` / `RestartMaxDelayUSec` / `RestartWindowUSec` | `t` | |
//! | `RestartMaxAttempts` | `t` | 0: unlimited |
//! | `UpdateParallelism` / `RollbackParallelism` | `t` | 0: all at once |
//! | `UpdateDelayUSec` / `UpdateMonitorUSec` (and `Rollback…`) | `t` | |
//! | `UpdateOrder` / `RollbackOrder` | `s` | `stop-first`, `start-first` |
//! | `UpdateFailureAction` / `RollbackFailureAction` | `s` | `pause`, `continue`, `rollback` |
//! | `UpdateMaxFailureRatio` / `RollbackMaxFailureRatio` | `d` | 0.0 to 1.0 |
//! | `MemoryMax` | `t` | bytes; 0: no limit |
//! | `CPUs` | `d` | CPUs, e.g. 0.5; 0: no limit |
//! | `PidsMax` | `t` | 0: no limit |
//! | `ReadOnly` | `b` | read-only root file system |
//! | `Constraints` | `as` | placement constraints, e.g. `node.labels.zone == a`, `node.role != manager`, `node.labels.zone in (a, b)`; replaced whole |
//! | `PlacementPreferences` | `as` | spread preferences, `spread=node.labels.KEY`; replaced whole |
//! | `MaxReplicasPerNode` | `t` | at most this many tasks of the service per node; 0: no limit |
//! | `CapAdd` / `CapDrop` | `as` | capabilities added to / dropped from Docker's default set (`NET_ADMIN`, `CAP_NET_ADMIN` or `ALL`); replaced whole |
//! | `SecurityOpt` | `as` | `no-new-privileges[=true\|false]`, `seccomp=unconfined`; replaced whole |
//! | `Init` | `b` | run `tini` as PID 1 (the node needs `/usr/bin/tini-static`) |
//! | `Ulimits` | `a{s(tt)}` | name (`nofile`, `nproc`, ...) to (soft, hard); `u64::MAX` is unlimited; replaced whole |
//! | `Sysctls` | `a{ss}` | namespaced sysctls (`net.*`, `fs.mqueue.*`, IPC `kernel.*`); replaced whole |
//! | `CPUsReservation` | `d` | CPUs the scheduler reserves on the node; 0: none |
//! | `MemoryReservation` | `t` | bytes the scheduler reserves on the node; 0: none |
//! | `HealthTest` | `as` | `["CMD", program, args...]`, `["CMD-SHELL", command]`, `["NONE"]` (no healthcheck, not even the image's); empty: the image's test |
//! | `HealthIntervalUSec` / `HealthTimeoutUSec` / `HealthStartPeriodUSec` / `HealthStartIntervalUSec` | `t` | 0: the image's value, else 30 s / 30 s / 0 / 5 s |
//! | `HealthRetries` | `t` | failed checks in a row that make a task unhealthy; 0: the image's, else 3 |
//! | `Mode` values | | also `replicated-job` (tasks run to completion, `Replicas` of them) and `global-job` (once on every eligible node) |
//! | `MaxConcurrent` | `t` | replicated jobs: tasks running at once (default: `Replicas`) |
//! | `ExtraHosts` | `as` | extra `/etc/hosts` entries, `NAME:ADDRESS`; replaced whole |
//! | `DNS` / `DNSSearch` / `DNSOptions` | `as` | resolvers for names outside the cluster (at most 3), search domains, resolver options (`ndots:2`); each replaced whole |
//! | `DependsOn` | `a{ss}` | full service name to condition (`service_started`, `service_healthy`, `service_completed_successfully`); declared by a stack's `depends_on`: `CreateService` and `UpdateService` refuse to set or change it |
//! | `ForceUpdate` | `b` | true: bump the force-update counter so the tasks roll even if nothing else changed (never returned by `InspectService`) |
//!
//! Milliseconds in the model become microseconds on the bus; sub-millisecond parts are dropped.
//! `Replicas`, `MaxReplicasPerNode`, `Constraints` and `PlacementPreferences` are checked by the
//! shared validator in `spec::placement`, the one stack files and CLI flags use; the sandbox
//! properties by `spec::sandbox`.

use std::collections::BTreeMap;

use model::{
    FailureAction, Mount, MountKind, PortSpec, Protocol, PublishMode, RestartCondition,
    ServiceMode, ServiceSpec, UpdateConfig, UpdateOrder,
};
use serde::{Deserialize, Serialize};
use spec::{placement, resolver, sandbox};
use zbus::{OwnedVariant, Variant};

use crate::types::PortRow;

/// The wire form of a property list: `a(sv)`.
pub type PropertyList = Vec<(String, OwnedVariant)>;

/// A property list could not be applied to a spec. Holds every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct InvalidSpec(pub Vec<String>);

impl InvalidSpec {
    pub fn one(msg: impl Into<String>) -> InvalidSpec {
        InvalidSpec(vec![msg.into()])
    }
}

/// A mount in a property list: signature `(sssbt)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, zbus::Type)]
pub struct MountRow {
    /// `bind`, `volume` or `tmpfs`.
    pub kind: String,
    pub source: String,
    pub target: String,
    pub read_only: bool,
    /// tmpfs size in bytes; 0 for the default.
    pub size: u64,
}

/// One typed property. See the module documentation for names, types and units.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Property {
    Image(String),
    Mode(String),
    Replicas(u64),
    Command(Vec<String>),
    Entrypoint(Vec<String>),
    Env(BTreeMap<String, String>),
    Labels(BTreeMap<String, String>),
    ContainerLabels(BTreeMap<String, String>),
    Ports(Vec<PortRow>),
    PortAddresses(BTreeMap<String, String>),
    Mounts(Vec<MountRow>),
    Networks(Vec<String>),
    EndpointMode(String),
    Workdir(String),
    User(String),
    Hostname(String),
    StopSignal(String),
    StopGracePeriodUSec(u64),
    RestartCondition(String),
    RestartDelayUSec(u64),
    RestartMaxDelayUSec(u64),
    RestartMaxAttempts(u64),
    RestartWindowUSec(u64),
    UpdateParallelism(u64),
    UpdateDelayUSec(u64),
    UpdateMonitorUSec(u64),
    UpdateOrder(String),
    UpdateFailureAction(String),
    UpdateMaxFailureRatio(f64),
    RollbackParallelism(u64),
    RollbackDelayUSec(u64),
    RollbackMonitorUSec(u64),
    RollbackOrder(String),
    RollbackFailureAction(String),
    RollbackMaxFailureRatio(f64),
    MemoryMax(u64),
    CPUs(f64),
    PidsMax(u64),
    ReadOnly(bool),
    Constraints(Vec<String>),
    PlacementPreferences(Vec<String>),
    MaxReplicasPerNode(u64),
    ForceUpdate(bool),
    CapAdd(Vec<String>),
    CapDrop(Vec<String>),
    SecurityOpt(Vec<String>),
    Init(bool),
    Ulimits(BTreeMap<String, (u64, u64)>),
    Sysctls(BTreeMap<String, String>),
    CPUsReservation(f64),
    MemoryReservation(u64),
    HealthTest(Vec<String>),
    DependsOn(BTreeMap<String, String>),
    MaxConcurrent(u64),
    ExtraHosts(Vec<String>),
    DNS(Vec<String>),
    DNSSearch(Vec<String>),
    DNSOptions(Vec<String>),
    HealthIntervalUSec(u64),
    HealthTimeoutUSec(u64),
    HealthStartPeriodUSec(u64),
    HealthStartIntervalUSec(u64),
    HealthRetries(u64),
}

fn ov<'a, T: Into<Variant<'a>>>(v: T) -> OwnedVariant {
    // Converting an owned value into an owned variant only fails for file descriptors, which no
    // property carries.
    OwnedVariant::try_from(v.into()).expect("property values contain no file descriptors")
}

fn usec(ms: u64) -> u64 {
    ms.saturating_mul(1000)
}

fn ms(usec: u64) -> u64 {
    usec / 1000
}

impl Property {
    /// Every property name, in the order `spec_to_properties` emits them.
    pub const NAMES: [&'static str; 63] = [
        "Image",
        "Mode",
        "Replicas",
        "Command",
        "Entrypoint",
        "Env",
        "Labels",
        "ContainerLabels",
        "Ports",
        "PortAddresses",
        "Mounts",
        "Networks",
        "EndpointMode",
        "Workdir",
        "User",
        "Hostname",
        "StopSignal",
        "StopGracePeriodUSec",
        "RestartCondition",
        "RestartDelayUSec",
        "RestartMaxDelayUSec",
        "RestartMaxAttempts",
        "RestartWindowUSec",
        "UpdateParallelism",
        "UpdateDelayUSec",
        "UpdateMonitorUSec",
        "UpdateOrder",
        "UpdateFailureAction",
        "UpdateMaxFailureRatio",
        "RollbackParallelism",
        "RollbackDelayUSec",
        "RollbackMonitorUSec",
        "RollbackOrder",
        "RollbackFailureAction",
        "RollbackMaxFailureRatio",
        "MemoryMax",
        "CPUs",
        "PidsMax",
        "ReadOnly",
        "Constraints",
        "PlacementPreferences",
        "MaxReplicasPerNode",
        "ForceUpdate",
        "CapAdd",
        "CapDrop",
        "SecurityOpt",
        "Init",
        "Ulimits",
        "Sysctls",
        "CPUsReservation",
        "MemoryReservation",
        "HealthTest",
        "DependsOn",
        "MaxConcurrent",
        "ExtraHosts",
        "DNS",
        "DNSSearch",
        "DNSOptions",
        "HealthIntervalUSec",
        "HealthTimeoutUSec",
        "HealthStartPeriodUSec",
        "HealthStartIntervalUSec",
        "HealthRetries",
    ];

    /// The D-Bus name.
    pub fn name(&self) -> &'static str {
        use Property::*;
        match self {
            Image(_) => "Image",
            Mode(_) => "Mode",
            Replicas(_) => "Replicas",
            Command(_) => "Command",
            Entrypoint(_) => "Entrypoint",
            Env(_) => "Env",
            Labels(_) => "Labels",
            ContainerLabels(_) => "ContainerLabels",
            Ports(_) => "Ports",
            PortAddresses(_) => "PortAddresses",
            Mounts(_) => "Mounts",
            Networks(_) => "Networks",
            EndpointMode(_) => "EndpointMode",
            Workdir(_) => "Workdir",
            User(_) => "User",
            Hostname(_) => "Hostname",
            StopSignal(_) => "StopSignal",
            StopGracePeriodUSec(_) => "StopGracePeriodUSec",
            RestartCondition(_) => "RestartCondition",
            RestartDelayUSec(_) => "RestartDelayUSec",
            RestartMaxDelayUSec(_) => "RestartMaxDelayUSec",
            RestartMaxAttempts(_) => "RestartMaxAttempts",
            RestartWindowUSec(_) => "RestartWindowUSec",
            UpdateParallelism(_) => "UpdateParallelism",
            UpdateDelayUSec(_) => "UpdateDelayUSec",
            UpdateMonitorUSec(_) => "UpdateMonitorUSec",
            UpdateOrder(_) => "UpdateOrder",
            UpdateFailureAction(_) => "UpdateFailureAction",
            UpdateMaxFailureRatio(_) => "UpdateMaxFailureRatio",
            RollbackParallelism(_) => "RollbackParallelism",
            RollbackDelayUSec(_) => "RollbackDelayUSec",
            RollbackMonitorUSec(_) => "RollbackMonitorUSec",
            RollbackOrder(_) => "RollbackOrder",
            RollbackFailureAction(_) => "RollbackFailureAction",
            RollbackMaxFailureRatio(_) => "RollbackMaxFailureRatio",
            MemoryMax(_) => "MemoryMax",
            CPUs(_) => "CPUs",
            PidsMax(_) => "PidsMax",
            ReadOnly(_) => "ReadOnly",
            Constraints(_) => "Constraints",
            PlacementPreferences(_) => "PlacementPreferences",
            MaxReplicasPerNode(_) => "MaxReplicasPerNode",
            ForceUpdate(_) => "ForceUpdate",
            CapAdd(_) => "CapAdd",
            CapDrop(_) => "CapDrop",
            SecurityOpt(_) => "SecurityOpt",
            Init(_) => "Init",
            Ulimits(_) => "Ulimits",
            Sysctls(_) => "Sysctls",
            CPUsReservation(_) => "CPUsReservation",
            MemoryReservation(_) => "MemoryReservation",
            HealthTest(_) => "HealthTest",
            DependsOn(_) => "DependsOn",
            MaxConcurrent(_) => "MaxConcurrent",
            ExtraHosts(_) => "ExtraHosts",
            DNS(_) => "DNS",
            DNSSearch(_) => "DNSSearch",
            DNSOptions(_) => "DNSOptions",
            HealthIntervalUSec(_) => "HealthIntervalUSec",
            HealthTimeoutUSec(_) => "HealthTimeoutUSec",
            HealthStartPeriodUSec(_) => "HealthStartPeriodUSec",
            HealthStartIntervalUSec(_) => "HealthStartIntervalUSec",
            HealthRetries(_) => "HealthRetries",
        }
    }

    /// The wire form of the value.
    pub fn to_variant(&self) -> OwnedVariant {
        use Property::*;
        match self {
            Image(s)
            | Mode(s)
            | Workdir(s)
            | User(s)
            | Hostname(s)
            | StopSignal(s)
            | EndpointMode(s)
            | RestartCondition(s)
            | UpdateOrder(s)
            | UpdateFailureAction(s)
            | RollbackOrder(s)
            | RollbackFailureAction(s) => ov(s.as_str()),
            Replicas(n)
            | MaxConcurrent(n)
            | StopGracePeriodUSec(n)
            | RestartDelayUSec(n)
            | RestartMaxDelayUSec(n)
            | RestartMaxAttempts(n)
            | RestartWindowUSec(n)
            | UpdateParallelism(n)
            | UpdateDelayUSec(n)
            | UpdateMonitorUSec(n)
            | RollbackParallelism(n)
            | RollbackDelayUSec(n)
            | RollbackMonitorUSec(n)
            | MemoryMax(n)
            | PidsMax(n)
            | MaxReplicasPerNode(n)
            | MemoryReservation(n)
            | HealthIntervalUSec(n)
            | HealthTimeoutUSec(n)
            | HealthStartPeriodUSec(n)
            | HealthStartIntervalUSec(n)
            | HealthRetries(n) => ov(*n),
            Command(v)
            | Entrypoint(v)
            | Networks(v)
            | Constraints(v)
            | PlacementPreferences(v)
            | CapAdd(v)
            | CapDrop(v)
            | SecurityOpt(v)
            | HealthTest(v)
            | ExtraHosts(v)
            | DNS(v)
            | DNSSearch(v)
            | DNSOptions(v) => ov(v.clone()),
            Env(m) | Labels(m) | ContainerLabels(m) | Sysctls(m) | PortAddresses(m)
            | DependsOn(m) => ov(m.clone()),
            Ulimits(m) => ov(m.clone()),
            Ports(p) => ov(p
                .iter()
                .map(|p| (p.published, p.target, p.protocol.clone(), p.mode.clone()))
                .collect::<Vec<_>>()),
            Mounts(m) => ov(m
                .iter()
                .map(|m| {
                    (
                        m.kind.clone(),
                        m.source.clone(),
                        m.target.clone(),
                        m.read_only,
                        m.size,
                    )
                })
                .collect::<Vec<_>>()),
            UpdateMaxFailureRatio(d)
            | RollbackMaxFailureRatio(d)
            | CPUs(d)
            | CPUsReservation(d) => ov(*d),
            ReadOnly(b) | ForceUpdate(b) | Init(b) => ov(*b),
        }
    }

    /// The wire pair `(name, variant)`.
    pub fn to_wire(&self) -> (String, OwnedVariant) {
        (self.name().to_string(), self.to_variant())
    }

    /// Decode one wire pair. Unknown names and wrong value types are refused.
    pub fn from_wire(name: &str, value: &OwnedVariant) -> Result<Property, String> {
        let v: Variant<'static> = Variant::from(
            value
                .try_clone()
                .map_err(|e| format!("property {name}: {e}"))?,
        );
        let bad = |ty: &str| {
            format!(
                "property {name} has type {}, expected {ty}",
                v.value_signature()
            )
        };
        macro_rules! get {
            ($t:ty, $sig:expr) => {
                v.clone().downcast::<$t>().map_err(|_| bad($sig))?
            };
        }
        use Property::*;
        let p = match name {
            "Image" => Image(get!(String, "s")),
            "Mode" => Mode(get!(String, "s")),
            "Replicas" => Replicas(get!(u64, "t")),
            "Command" => Command(get!(Vec<String>, "as")),
            "Entrypoint" => Entrypoint(get!(Vec<String>, "as")),
            "Env" => Env(get!(BTreeMap<String, String>, "a{ss}")),
            "Labels" => Labels(get!(BTreeMap<String, String>, "a{ss}")),
            "ContainerLabels" => ContainerLabels(get!(BTreeMap<String, String>, "a{ss}")),
            "Ports" => Ports(
                get!(Vec<(u16, u16, String, String)>, "a(qqss)")
                    .into_iter()
                    .map(|(published, target, protocol, mode)| PortRow {
                        published,
                        target,
                        protocol,
                        mode,
                    })
                    .collect(),
            ),
            "PortAddresses" => PortAddresses(get!(BTreeMap<String, String>, "a{ss}")),
            "Mounts" => Mounts(
                get!(Vec<(String, String, String, bool, u64)>, "a(sssbt)")
                    .into_iter()
                    .map(|(kind, source, target, read_only, size)| MountRow {
                        kind,
                        source,
                        target,
                        read_only,
                        size,
                    })
                    .collect(),
            ),
            "Networks" => Networks(get!(Vec<String>, "as")),
            "EndpointMode" => EndpointMode(get!(String, "s")),
            "Workdir" => Workdir(get!(String, "s")),
            "User" => User(get!(String, "s")),
            "Hostname" => Hostname(get!(String, "s")),
            "StopSignal" => StopSignal(get!(String, "s")),
            "StopGracePeriodUSec" => StopGracePeriodUSec(get!(u64, "t")),
            "RestartCondition" => RestartCondition(get!(String, "s")),
            "RestartDelayUSec" => RestartDelayUSec(get!(u64, "t")),
            "RestartMaxDelayUSec" => RestartMaxDelayUSec(get!(u64, "t")),
            "RestartMaxAttempts" => RestartMaxAttempts(get!(u64, "t")),
            "RestartWindowUSec" => RestartWindowUSec(get!(u64, "t")),
            "UpdateParallelism" => UpdateParallelism(get!(u64, "t")),
            "UpdateDelayUSec" => UpdateDelayUSec(get!(u64, "t")),
            "UpdateMonitorUSec" => UpdateMonitorUSec(get!(u64, "t")),
            "UpdateOrder" => UpdateOrder(get!(String, "s")),
            "UpdateFailureAction" => UpdateFailureAction(get!(String, "s")),
            "UpdateMaxFailureRatio" => UpdateMaxFailureRatio(get!(f64, "d")),
            "RollbackParallelism" => RollbackParallelism(get!(u64, "t")),
            "RollbackDelayUSec" => RollbackDelayUSec(get!(u64, "t")),
            "RollbackMonitorUSec" => RollbackMonitorUSec(get!(u64, "t")),
            "RollbackOrder" => RollbackOrder(get!(String, "s")),
            "RollbackFailureAction" => RollbackFailureAction(get!(String, "s")),
            "RollbackMaxFailureRatio" => RollbackMaxFailureRatio(get!(f64, "d")),
            "MemoryMax" => MemoryMax(get!(u64, "t")),
            "CPUs" => CPUs(get!(f64, "d")),
            "PidsMax" => PidsMax(get!(u64, "t")),
            "ReadOnly" => ReadOnly(get!(bool, "b")),
            "Constraints" => Constraints(get!(Vec<String>, "as")),
            "PlacementPreferences" => PlacementPreferences(get!(Vec<String>, "as")),
            "MaxReplicasPerNode" => MaxReplicasPerNode(get!(u64, "t")),
            "ForceUpdate" => ForceUpdate(get!(bool, "b")),
            "CapAdd" => CapAdd(get!(Vec<String>, "as")),
            "CapDrop" => CapDrop(get!(Vec<String>, "as")),
            "SecurityOpt" => SecurityOpt(get!(Vec<String>, "as")),
            "Init" => Init(get!(bool, "b")),
            "Ulimits" => Ulimits(get!(BTreeMap<String, (u64, u64)>, "a{s(tt)}")),
            "Sysctls" => Sysctls(get!(BTreeMap<String, String>, "a{ss}")),
            "CPUsReservation" => CPUsReservation(get!(f64, "d")),
            "MemoryReservation" => MemoryReservation(get!(u64, "t")),
            "HealthTest" => HealthTest(get!(Vec<String>, "as")),
            "DependsOn" => DependsOn(get!(BTreeMap<String, String>, "a{ss}")),
            "MaxConcurrent" => MaxConcurrent(get!(u64, "t")),
            "ExtraHosts" => ExtraHosts(get!(Vec<String>, "as")),
            "DNS" => DNS(get!(Vec<String>, "as")),
            "DNSSearch" => DNSSearch(get!(Vec<String>, "as")),
            "DNSOptions" => DNSOptions(get!(Vec<String>, "as")),
            "HealthIntervalUSec" => HealthIntervalUSec(get!(u64, "t")),
            "HealthTimeoutUSec" => HealthTimeoutUSec(get!(u64, "t")),
            "HealthStartPeriodUSec" => HealthStartPeriodUSec(get!(u64, "t")),
            "HealthStartIntervalUSec" => HealthStartIntervalUSec(get!(u64, "t")),
            "HealthRetries" => HealthRetries(get!(u64, "t")),
            other => {
                return Err(format!(
                    "unknown property {other:?}: expected one of {}",
                    Property::NAMES.join(", ")
                ));
            }
        };
        Ok(p)
    }
}

/// Encode typed properties for the bus.
pub fn to_wire(props: &[Property]) -> PropertyList {
    props.iter().map(Property::to_wire).collect()
}

/// Decode a wire property list, collecting every problem.
pub fn from_wire(list: &[(String, OwnedVariant)]) -> Result<Vec<Property>, InvalidSpec> {
    let mut out = Vec::with_capacity(list.len());
    let mut errors = Vec::new();
    for (name, value) in list {
        match Property::from_wire(name, value) {
            Ok(p) => out.push(p),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(InvalidSpec(errors))
    }
}

fn none_if_empty(s: &str) -> Option<String> {
    if s.is_empty() { None } else { Some(s.into()) }
}

fn vec_or_none(v: &[String]) -> Option<Vec<String>> {
    if v.is_empty() { None } else { Some(v.to_vec()) }
}

fn parse_restart(s: &str) -> Result<RestartCondition, String> {
    match s {
        "any" => Ok(RestartCondition::Any),
        "on-failure" => Ok(RestartCondition::OnFailure),
        "none" => Ok(RestartCondition::None),
        _ => Err(format!(
            "invalid restart condition {s:?}: expected any, on-failure or none"
        )),
    }
}

fn restart_str(c: RestartCondition) -> &'static str {
    match c {
        RestartCondition::Any => "any",
        RestartCondition::OnFailure => "on-failure",
        RestartCondition::None => "none",
    }
}

fn parse_order(s: &str) -> Result<UpdateOrder, String> {
    match s {
        "stop-first" => Ok(UpdateOrder::StopFirst),
        "start-first" => Ok(UpdateOrder::StartFirst),
        _ => Err(format!(
            "invalid update order {s:?}: expected stop-first or start-first"
        )),
    }
}

fn order_str(o: UpdateOrder) -> &'static str {
    match o {
        UpdateOrder::StopFirst => "stop-first",
        UpdateOrder::StartFirst => "start-first",
    }
}

fn parse_failure_action(s: &str) -> Result<FailureAction, String> {
    match s {
        "pause" => Ok(FailureAction::Pause),
        "continue" => Ok(FailureAction::Continue),
        "rollback" => Ok(FailureAction::Rollback),
        _ => Err(format!(
            "invalid failure action {s:?}: expected pause, continue or rollback"
        )),
    }
}

fn failure_action_str(a: FailureAction) -> &'static str {
    match a {
        FailureAction::Pause => "pause",
        FailureAction::Continue => "continue",
        FailureAction::Rollback => "rollback",
    }
}

fn ratio_to_permille(r: f64) -> Result<u32, String> {
    if !(0.0..=1.0).contains(&r) {
        return Err(format!(
            "invalid max failure ratio {r}: expected a number between 0 and 1"
        ));
    }
    Ok((r * 1000.0).round() as u32)
}

fn port_from_row(p: &PortRow) -> Result<PortSpec, String> {
    let protocol = match p.protocol.as_str() {
        "tcp" | "" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => {
            return Err(format!(
                "port {}: invalid protocol {other:?}: expected tcp or udp",
                p.target
            ));
        }
    };
    let mode = match p.mode.as_str() {
        "ingress" | "" => PublishMode::Ingress,
        "host" => PublishMode::Host,
        other => {
            return Err(format!(
                "port {}: invalid publish mode {other:?}: expected ingress or host",
                p.target
            ));
        }
    };
    if p.target == 0 {
        return Err("invalid port: the target (container) port must not be 0".into());
    }
    Ok(PortSpec {
        published: p.published,
        target: p.target,
        protocol,
        mode,
        host_ip: None,
    })
}

/// `ports` as properties: `Ports`, and `PortAddresses` when a port is bound to an address.
pub fn port_properties(ports: &[PortSpec]) -> Vec<Property> {
    let mut out = vec![Property::Ports(ports.iter().map(PortRow::from).collect())];
    let addresses: BTreeMap<String, String> = ports
        .iter()
        .filter_map(|p| Some((port_key(p), p.host_ip?.to_string())))
        .collect();
    if !addresses.is_empty() {
        out.push(Property::PortAddresses(addresses));
    }
    out
}

/// A port's key in `PortAddresses`: `8080/tcp`.
fn port_key(p: &PortSpec) -> String {
    format!("{}/{}", p.published, p.protocol.as_str())
}

/// Binds the ports of `ports` named in `addresses` to their address.
fn bind_ports(ports: &mut [PortSpec], addresses: &BTreeMap<String, String>) -> Vec<String> {
    let mut errors = Vec::new();
    for (key, ip) in addresses {
        let Some(p) = ports.iter_mut().find(|p| port_key(p) == *key) else {
            errors.push(format!(
                "PortAddresses: no published port {key:?} (keys are PUBLISHED/PROTOCOL of a port in Ports, like 8080/tcp)"
            ));
            continue;
        };
        match spec::units::parse_host_ip(ip) {
            Ok(ip) => p.host_ip = Some(ip),
            Err(e) => errors.push(format!("PortAddresses {key}: {e}")),
        }
    }
    errors
}

fn mount_from_row(m: &MountRow) -> Result<Mount, String> {
    let kind = match m.kind.as_str() {
        "bind" => MountKind::Bind,
        "volume" => MountKind::Volume,
        "tmpfs" => MountKind::Tmpfs,
        other => {
            return Err(format!(
                "mount {}: invalid type {other:?}: expected bind, volume or tmpfs",
                m.target
            ));
        }
    };
    if !m.target.starts_with('/') {
        return Err(format!(
            "mount target {:?} must be an absolute path",
            m.target
        ));
    }
    match kind {
        MountKind::Bind if !m.source.starts_with('/') => {
            return Err(format!(
                "bind mount source {:?} must be an absolute host path",
                m.source
            ));
        }
        MountKind::Volume if m.source.is_empty() => {
            return Err(format!("volume mount {} needs a volume name", m.target));
        }
        MountKind::Tmpfs if !m.source.is_empty() => {
            return Err(format!("tmpfs mount {} takes no source", m.target));
        }
        _ => {}
    }
    if kind != MountKind::Tmpfs && m.size != 0 {
        return Err(format!(
            "mount {}: a size is only valid for tmpfs",
            m.target
        ));
    }
    Ok(Mount {
        kind,
        source: m.source.clone(),
        target: m.target.clone(),
        read_only: m.read_only,
        size: if m.size == 0 { None } else { Some(m.size) },
    })
}

/// The wire form of a mount.
pub fn mount_to_row(m: &Mount) -> MountRow {
    MountRow {
        kind: match m.kind {
            MountKind::Bind => "bind",
            MountKind::Volume => "volume",
            MountKind::Tmpfs => "tmpfs",
        }
        .into(),
        source: m.source.clone(),
        target: m.target.clone(),
        read_only: m.read_only,
        size: m.size.unwrap_or(0),
    }
}

/// Apply `props` onto `spec` in order. Every problem is collected; on error `spec` is left
/// unchanged. `Replicas` on a global service, and `Mode = global` together with `Replicas`,
/// are refused.
pub fn apply_properties(spec: &mut ServiceSpec, props: &[Property]) -> Result<(), InvalidSpec> {
    let mut next = spec.clone();
    let mut errors = Vec::new();
    let mut want_mode: Option<String> = None;
    let mut want_replicas: Option<u64> = None;
    let mut want_addresses: Option<&BTreeMap<String, String>> = None;
    let mut depends_on = None;
    let mut want_max_concurrent: Option<u64> = None;
    {
        let t = &mut next.task;
        let mut check = |r: Result<(), String>| {
            if let Err(e) = r {
                errors.push(e);
            }
        };
        for p in props {
            use Property::*;
            match p {
                Image(s) => {
                    if s.trim().is_empty() {
                        check(Err("image must not be empty".into()));
                    } else {
                        t.image = s.clone();
                    }
                }
                Mode(m) => want_mode = Some(m.clone()),
                Replicas(n) => match placement::check_replicas(*n) {
                    Ok(n) => want_replicas = Some(n),
                    Err(e) => check(Err(e)),
                },
                Command(v) => t.command = vec_or_none(v),
                Entrypoint(v) => t.entrypoint = vec_or_none(v),
                Env(m) => {
                    for k in m.keys() {
                        if k.is_empty() || k.contains('=') {
                            check(Err(format!(
                                "invalid environment variable name {k:?}: it must be non-empty and contain no '='"
                            )));
                        }
                    }
                    t.env = m.clone();
                }
                Labels(m) => next.labels = m.clone(),
                ContainerLabels(m) => t.labels = m.clone(),
                Ports(rows) => {
                    let mut ports = Vec::new();
                    for r in rows {
                        match port_from_row(r) {
                            Ok(p) => {
                                if ports.iter().any(|q: &PortSpec| {
                                    q.published == p.published && q.protocol == p.protocol
                                }) {
                                    check(Err(format!(
                                        "port {}/{} is published twice",
                                        p.published,
                                        p.protocol.as_str()
                                    )));
                                }
                                ports.push(p)
                            }
                            Err(e) => check(Err(e)),
                        }
                    }
                    next.ports = ports;
                }
                PortAddresses(m) => want_addresses = Some(m),
                Mounts(rows) => {
                    let mut mounts = Vec::new();
                    for r in rows {
                        match mount_from_row(r) {
                            Ok(m) => {
                                if mounts.iter().any(|o: &Mount| o.target == m.target) {
                                    check(Err(format!("mount target {} is used twice", m.target)));
                                }
                                mounts.push(m)
                            }
                            Err(e) => check(Err(e)),
                        }
                    }
                    t.mounts = mounts;
                }
                Networks(v) => next.networks = v.clone(),
                EndpointMode(s) => match model::EndpointMode::parse(s) {
                    Ok(m) => next.endpoint_mode = m,
                    Err(e) => check(Err(e)),
                },
                Workdir(s) => {
                    if !s.is_empty() && !s.starts_with('/') {
                        check(Err(format!(
                            "working directory {s:?} must be an absolute path"
                        )));
                    }
                    t.workdir = none_if_empty(s)
                }
                User(s) => t.user = none_if_empty(s),
                Hostname(s) => t.hostname = none_if_empty(s),
                StopSignal(s) => {
                    if s.is_empty() {
                        check(Err("stop signal must not be empty".into()));
                    } else {
                        t.stop_signal = s.clone();
                    }
                }
                StopGracePeriodUSec(n) => t.stop_grace_period = ms(*n),
                RestartCondition(s) => match parse_restart(s) {
                    Ok(c) => next.restart.condition = c,
                    Err(e) => check(Err(e)),
                },
                RestartDelayUSec(n) => next.restart.delay = ms(*n),
                RestartMaxDelayUSec(n) => next.restart.max_delay = ms(*n),
                RestartMaxAttempts(n) => {
                    next.restart.max_attempts = if *n == 0 { None } else { Some(*n) }
                }
                RestartWindowUSec(n) => next.restart.window = ms(*n),
                UpdateParallelism(n) => next.update.parallelism = *n,
                UpdateDelayUSec(n) => next.update.delay = ms(*n),
                UpdateMonitorUSec(n) => next.update.monitor = ms(*n),
                UpdateOrder(s) => match parse_order(s) {
                    Ok(o) => next.update.order = o,
                    Err(e) => check(Err(e)),
                },
                UpdateFailureAction(s) => match parse_failure_action(s) {
                    Ok(a) => next.update.failure_action = a,
                    Err(e) => check(Err(e)),
                },
                UpdateMaxFailureRatio(r) => match ratio_to_permille(*r) {
                    Ok(p) => next.update.max_failure_ratio_permille = p,
                    Err(e) => check(Err(e)),
                },
                RollbackParallelism(n) => next.rollback.parallelism = *n,
                RollbackDelayUSec(n) => next.rollback.delay = ms(*n),
                RollbackMonitorUSec(n) => next.rollback.monitor = ms(*n),
                RollbackOrder(s) => match parse_order(s) {
                    Ok(o) => next.rollback.order = o,
                    Err(e) => check(Err(e)),
                },
                RollbackFailureAction(s) => match parse_failure_action(s) {
                    // As the stack files say it.
                    Ok(FailureAction::Rollback) => check(Err(
                        "rollback failure action: a rollback cannot be rolled back; use \"pause\" or \"continue\"".into(),
                    )),
                    Ok(a) => next.rollback.failure_action = a,
                    Err(e) => check(Err(e)),
                },
                RollbackMaxFailureRatio(r) => match ratio_to_permille(*r) {
                    Ok(p) => next.rollback.max_failure_ratio_permille = p,
                    Err(e) => check(Err(e)),
                },
                MemoryMax(n) => {
                    if *n != 0 && *n < 4 * 1024 * 1024 {
                        check(Err(format!(
                            "memory limit {n} bytes is too small: the minimum is 4 MiB"
                        )));
                    }
                    t.resources.memory_bytes = if *n == 0 { None } else { Some(*n) }
                }
                CPUs(c) => {
                    if !c.is_finite() || *c < 0.0 {
                        check(Err(format!(
                            "invalid CPU limit {c}: expected a positive number such as 0.5"
                        )));
                    } else if *c != 0.0 && *c < 0.001 {
                        check(Err(format!(
                            "CPU limit {c} is too small: the minimum is 0.001"
                        )));
                    } else {
                        let nano = (c * 1e9).round() as u64;
                        t.resources.nano_cpus = if nano == 0 { None } else { Some(nano) };
                    }
                }
                PidsMax(n) => {
                    t.resources.pids = if *n == 0 {
                        None
                    } else {
                        Some(i64::try_from(*n).unwrap_or(i64::MAX))
                    }
                }
                ReadOnly(b) => t.read_only = *b,
                Constraints(v) => {
                    let mut constraints = Vec::with_capacity(v.len());
                    for c in v {
                        match placement::parse_constraint(c) {
                            Ok(c) => constraints.push(c),
                            Err(e) => check(Err(e)),
                        }
                    }
                    next.placement.constraints = constraints;
                }
                PlacementPreferences(v) => {
                    let mut preferences = Vec::with_capacity(v.len());
                    for s in v {
                        match placement::parse_preference(s) {
                            Ok(p) => preferences.push(p),
                            Err(e) => check(Err(e)),
                        }
                    }
                    next.placement.preferences = preferences;
                }
                MaxReplicasPerNode(n) => match placement::parse_max_replicas_per_node(*n) {
                    Ok(m) => next.placement.max_replicas_per_node = m,
                    Err(e) => check(Err(format!("max replicas per node: {e}"))),
                },
                ForceUpdate(b) => {
                    if *b {
                        t.force_update = t.force_update.wrapping_add(1);
                    }
                }
                CapAdd(v) => match sandbox::parse_capabilities(v) {
                    Ok(caps) => t.cap_add = caps,
                    Err(e) => e
                        .into_iter()
                        .for_each(|e| check(Err(format!("CapAdd: {e}")))),
                },
                CapDrop(v) => match sandbox::parse_capabilities(v) {
                    Ok(caps) => t.cap_drop = caps,
                    Err(e) => e
                        .into_iter()
                        .for_each(|e| check(Err(format!("CapDrop: {e}")))),
                },
                SecurityOpt(v) => {
                    if let Err(e) = sandbox::apply_security_opts(v, t) {
                        e.into_iter()
                            .for_each(|e| check(Err(format!("SecurityOpt: {e}"))));
                    }
                }
                Init(b) => t.init = *b,
                Ulimits(m) => {
                    let mut out = BTreeMap::new();
                    for (name, (soft, hard)) in m {
                        let u = model::Ulimit {
                            soft: *soft,
                            hard: *hard,
                        };
                        match sandbox::check_ulimit(name, u) {
                            Ok(()) => {
                                out.insert(name.clone(), u);
                            }
                            Err(e) => check(Err(format!("Ulimits: {e}"))),
                        }
                    }
                    t.ulimits = out;
                }
                Sysctls(m) => {
                    for (k, v) in m {
                        if let Err(e) = sandbox::check_sysctl(k, v) {
                            check(Err(format!("Sysctls: {e}")));
                        }
                    }
                    t.sysctls = m.clone();
                }
                CPUsReservation(c) => {
                    if *c == 0.0 {
                        t.reservations.nano_cpus = None;
                    } else {
                        match spec::units::cpus_to_nano(*c) {
                            Ok(n) => t.reservations.nano_cpus = Some(n),
                            Err(e) => check(Err(format!("CPUsReservation: {e}"))),
                        }
                    }
                }
                MemoryReservation(n) => {
                    t.reservations.memory_bytes = if *n == 0 { None } else { Some(*n) }
                }
                HealthTest(v) => match model::health::check_test(v) {
                    Ok(()) => t.healthcheck.get_or_insert_default().test = v.clone(),
                    Err(e) => check(Err(format!("HealthTest: {e}"))),
                },
                HealthIntervalUSec(n) => t.healthcheck.get_or_insert_default().interval = ms(*n),
                HealthTimeoutUSec(n) => t.healthcheck.get_or_insert_default().timeout = ms(*n),
                HealthStartPeriodUSec(n) => {
                    t.healthcheck.get_or_insert_default().start_period = ms(*n)
                }
                HealthStartIntervalUSec(n) => {
                    t.healthcheck.get_or_insert_default().start_interval = ms(*n)
                }
                HealthRetries(n) => {
                    t.healthcheck.get_or_insert_default().retries =
                        u32::try_from(*n).unwrap_or(u32::MAX)
                }
                MaxConcurrent(n) => want_max_concurrent = Some(*n),
                ExtraHosts(v) => {
                    let mut hosts = Vec::new();
                    for s in v {
                        match resolver::parse_extra_host(s) {
                            Ok(h) => hosts.push(h),
                            Err(e) => check(Err(format!("ExtraHosts: {e}"))),
                        }
                    }
                    t.extra_hosts = hosts;
                }
                DNS(v) => {
                    let mut servers = Vec::new();
                    for s in v {
                        match resolver::parse_dns_server(s) {
                            Ok(ip) => servers.push(ip),
                            Err(e) => check(Err(format!("DNS: {e}"))),
                        }
                    }
                    t.dns = servers;
                }
                DNSSearch(v) => {
                    for s in v {
                        check(resolver::check_dns_search(s).map_err(|e| format!("DNSSearch: {e}")));
                    }
                    t.dns_search = v.clone();
                }
                DNSOptions(v) => {
                    for s in v {
                        check(resolver::check_dns_option(s).map_err(|e| format!("DNSOptions: {e}")));
                    }
                    t.dns_options = v.clone();
                }
                DependsOn(m) => match depends_on_from(m) {
                    Ok(d) => depends_on = Some(d),
                    Err(e) => check(Err(e)),
                },
            }
        }
        // A healthcheck with nothing set is the image's: the same as none.
        if t.healthcheck.as_ref() == Some(&model::Healthcheck::default()) {
            t.healthcheck = None;
        }
        errors.extend(
            resolver::check_counts(
                t.extra_hosts.len(),
                t.dns.len(),
                t.dns_search.len(),
                t.dns_options.len(),
            )
            .into_iter()
            .map(|(_, e)| e),
        );
    }
    if let Some(d) = depends_on {
        next.depends_on = d;
    }
    let current = spec.mode.replicas().unwrap_or(1);
    match (want_mode.as_deref(), want_replicas) {
        (Some(m @ ("global" | "global-job")), Some(_)) => {
            errors.push(format!("replicas cannot be set for a {m} service"))
        }
        (Some("global"), None) => next.mode = ServiceMode::Global,
        (Some("global-job"), None) => next.mode = ServiceMode::GlobalJob,
        (Some("replicated"), r) => {
            next.mode = ServiceMode::Replicated {
                replicas: r.unwrap_or(current),
            };
        }
        (Some("replicated-job"), r) => {
            let replicas = r.unwrap_or(current);
            next.mode = ServiceMode::ReplicatedJob {
                replicas,
                max_concurrent: replicas,
            };
        }
        (Some(other), _) => errors.push(format!(
            "invalid mode {other:?}: expected replicated, global, replicated-job or global-job"
        )),
        (None, Some(r)) => match next.mode {
            ServiceMode::Replicated { .. } => next.mode = ServiceMode::Replicated { replicas: r },
            ServiceMode::ReplicatedJob { max_concurrent, .. } => {
                next.mode = ServiceMode::ReplicatedJob {
                    replicas: r,
                    max_concurrent,
                }
            }
            ServiceMode::Global | ServiceMode::GlobalJob => errors.push(format!(
                "service {} is {}: replicas can only be set for replicated services and jobs",
                spec.name,
                next.mode.name()
            )),
        },
        (None, None) => {}
    }
    if let Some(n) = want_max_concurrent {
        match (&mut next.mode, placement::check_replicas(n)) {
            (_, Err(e)) => errors.push(format!("MaxConcurrent: {e}")),
            (_, Ok(0)) => errors.push("MaxConcurrent: must be at least 1".into()),
            (ServiceMode::ReplicatedJob { max_concurrent, .. }, Ok(n)) => *max_concurrent = n,
            (_, Ok(_)) => errors.push("MaxConcurrent is only for replicated-job services".into()),
        }
    }
    if let Some(addresses) = want_addresses {
        errors.extend(bind_ports(&mut next.ports, addresses));
    }
    if let Err(e) = sandbox::check_reservations(&next.task) {
        errors.push(e);
    }
    // Every count, size and duration within its bound: the checker the stack files use.
    errors.extend(
        model::limits::violations(&next)
            .iter()
            .map(ToString::to_string),
    );
    if next.restart.max_delay < next.restart.delay {
        errors.push(format!(
            "restart max delay ({} ms) is shorter than the restart delay ({} ms)",
            next.restart.max_delay, next.restart.delay
        ));
    }
    if errors.is_empty() {
        *spec = next;
        Ok(())
    } else {
        Err(InvalidSpec(errors))
    }
}

fn update_props(u: &UpdateConfig, rollback: bool) -> Vec<Property> {
    use Property::*;
    if rollback {
        vec![
            RollbackParallelism(u.parallelism),
            RollbackDelayUSec(usec(u.delay)),
            RollbackMonitorUSec(usec(u.monitor)),
            RollbackOrder(order_str(u.order).into()),
            RollbackFailureAction(failure_action_str(u.failure_action).into()),
            RollbackMaxFailureRatio(u.max_failure_ratio_permille as f64 / 1000.0),
        ]
    } else {
        vec![
            UpdateParallelism(u.parallelism),
            UpdateDelayUSec(usec(u.delay)),
            UpdateMonitorUSec(usec(u.monitor)),
            UpdateOrder(order_str(u.order).into()),
            UpdateFailureAction(failure_action_str(u.failure_action).into()),
            UpdateMaxFailureRatio(u.max_failure_ratio_permille as f64 / 1000.0),
        ]
    }
}

/// The whole spec as properties (everything but `name`, `stack` and the force-update counter,
/// which travel outside the list). Applying the result onto a default spec with the same name
/// and stack gives `spec` back, up to sub-millisecond precision.
pub fn spec_to_properties(spec: &ServiceSpec) -> Vec<Property> {
    use Property::*;
    let t = &spec.task;
    let mut out = vec![Image(t.image.clone()), Mode(spec.mode.name().into())];
    if let Some(replicas) = spec.mode.replicas() {
        out.push(Replicas(replicas));
    }
    if let ServiceMode::ReplicatedJob { max_concurrent, .. } = spec.mode {
        out.push(MaxConcurrent(max_concurrent));
    }
    out.extend([
        Command(t.command.clone().unwrap_or_default()),
        Entrypoint(t.entrypoint.clone().unwrap_or_default()),
        Env(t.env.clone()),
        Labels(spec.labels.clone()),
        ContainerLabels(t.labels.clone()),
    ]);
    out.extend(port_properties(&spec.ports));
    out.extend([
        Mounts(t.mounts.iter().map(mount_to_row).collect()),
        Networks(spec.networks.clone()),
        EndpointMode(spec.endpoint_mode.as_str().into()),
        Workdir(t.workdir.clone().unwrap_or_default()),
        User(t.user.clone().unwrap_or_default()),
        Hostname(t.hostname.clone().unwrap_or_default()),
        StopSignal(t.stop_signal.clone()),
        StopGracePeriodUSec(usec(t.stop_grace_period)),
        RestartCondition(restart_str(spec.restart.condition).into()),
        RestartDelayUSec(usec(spec.restart.delay)),
        RestartMaxDelayUSec(usec(spec.restart.max_delay)),
        RestartMaxAttempts(spec.restart.max_attempts.unwrap_or(0)),
        RestartWindowUSec(usec(spec.restart.window)),
    ]);
    out.extend(update_props(&spec.update, false));
    out.extend(update_props(&spec.rollback, true));
    out.extend([
        MemoryMax(t.resources.memory_bytes.unwrap_or(0)),
        CPUs(t.resources.nano_cpus.map(|n| n as f64 / 1e9).unwrap_or(0.0)),
        PidsMax(t.resources.pids.map(|p| p.max(0) as u64).unwrap_or(0)),
        ReadOnly(t.read_only),
        Constraints(
            spec.placement
                .constraints
                .iter()
                .map(ToString::to_string)
                .collect(),
        ),
        PlacementPreferences(
            spec.placement
                .preferences
                .iter()
                .map(ToString::to_string)
                .collect(),
        ),
        MaxReplicasPerNode(spec.placement.max_replicas_per_node.unwrap_or(0)),
        CapAdd(t.cap_add.clone()),
        CapDrop(t.cap_drop.clone()),
        SecurityOpt(sandbox::security_opts(t)),
        Init(t.init),
        Ulimits(
            t.ulimits
                .iter()
                .map(|(k, u)| (k.clone(), (u.soft, u.hard)))
                .collect(),
        ),
        Sysctls(t.sysctls.clone()),
        CPUsReservation(
            t.reservations
                .nano_cpus
                .map(|n| n as f64 / 1e9)
                .unwrap_or(0.0),
        ),
        MemoryReservation(t.reservations.memory_bytes.unwrap_or(0)),
    ]);
    out.extend([
        ExtraHosts(
            t.extra_hosts
                .iter()
                .map(resolver::format_extra_host)
                .collect(),
        ),
        DNS(t.dns.iter().map(|ip| ip.to_string()).collect()),
        DNSSearch(t.dns_search.clone()),
        DNSOptions(t.dns_options.clone()),
    ]);
    if !spec.depends_on.is_empty() {
        out.push(DependsOn(
            spec.depends_on
                .iter()
                .map(|(k, c)| (k.clone(), c.as_str().to_string()))
                .collect(),
        ));
    }
    let h = t.healthcheck.clone().unwrap_or_default();
    out.extend([
        HealthTest(h.test),
        HealthIntervalUSec(usec(h.interval)),
        HealthTimeoutUSec(usec(h.timeout)),
        HealthStartPeriodUSec(usec(h.start_period)),
        HealthStartIntervalUSec(usec(h.start_interval)),
        HealthRetries(u64::from(h.retries)),
    ]);
    // An empty stop signal is not a valid property value; leave it out so that applying the
    // list keeps the default of the receiving spec.
    out.retain(|p| !matches!(p, StopSignal(s) if s.is_empty()));
    out
}

/// `DependsOn`'s conditions, by the model's one parser.
fn depends_on_from(
    m: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, model::DependCondition>, String> {
    m.iter()
        .map(|(name, c)| {
            model::DependCondition::parse(c)
                .map(|c| (name.clone(), c))
                .map_err(|e| format!("DependsOn {name}: {e}"))
        })
        .collect()
}

/// The spec a new service gets before its properties are applied: the model defaults plus
/// `SIGTERM` and a 10 s stop grace period, as Swarm does.
pub fn default_spec(name: &str) -> ServiceSpec {
    let mut spec = ServiceSpec {
        name: name.into(),
        ..Default::default()
    };
    spec.task.stop_signal = "SIGTERM".into();
    spec.task.stop_grace_period = 10_000;
    spec
}

/// A spec for `CreateService`: [`default_spec`] with `props` applied; the image is required.
pub fn new_spec(name: &str, props: &[Property]) -> Result<ServiceSpec, InvalidSpec> {
    let mut spec = default_spec(name);
    apply_properties(&mut spec, props)?;
    if spec.task.image.is_empty() {
        return Err(InvalidSpec::one(format!(
            "service {name} has no image: set the Image property"
        )));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_spec() -> ServiceSpec {
        let mut spec = default_spec("web");
        spec.labels.insert("tier".into(), "front".into());
        spec.mode = ServiceMode::Replicated { replicas: 3 };
        spec.ports = vec![
            PortSpec {
                published: 8080,
                target: 80,
                protocol: Protocol::Tcp,
                mode: PublishMode::Ingress,
                host_ip: Some("127.0.0.1".parse().unwrap()),
            },
            PortSpec {
                published: 53,
                target: 53,
                protocol: Protocol::Udp,
                mode: PublishMode::Host,
                host_ip: None,
            },
        ];
        spec.networks = vec!["backend".into()];
        spec.depends_on
            .insert("shop_db".into(), model::DependCondition::ServiceHealthy);
        spec.task.extra_hosts = vec![
            ("db.local".into(), "10.0.0.5".parse().unwrap()),
            ("v6".into(), "2001:db8::1".parse().unwrap()),
        ];
        spec.task.dns = vec!["10.0.0.2".parse().unwrap()];
        spec.task.dns_search = vec!["example.com".into()];
        spec.task.dns_options = vec!["ndots:2".into()];
        spec.restart = model::RestartPolicy {
            condition: RestartCondition::OnFailure,
            delay: 250,
            max_delay: 60_000,
            max_attempts: Some(4),
            window: 20_000,
        };
        spec.update = UpdateConfig {
            parallelism: 2,
            delay: 5_000,
            order: UpdateOrder::StartFirst,
            failure_action: FailureAction::Rollback,
            monitor: 7_000,
            max_failure_ratio_permille: 250,
        };
        spec.rollback = UpdateConfig {
            parallelism: 0,
            failure_action: FailureAction::Continue,
            ..Default::default()
        };
        let t = &mut spec.task;
        t.image = "docker.io/library/nginx:1.27".into();
        t.command = Some(vec!["nginx".into(), "-g".into(), "daemon off;".into()]);
        t.entrypoint = Some(vec!["/docker-entrypoint.sh".into()]);
        t.env.insert("LOG_LEVEL".into(), "info".into());
        t.workdir = Some("/srv".into());
        t.user = Some("101:101".into());
        t.hostname = Some("web-host".into());
        t.mounts = vec![
            Mount {
                kind: MountKind::Bind,
                source: "/etc/ssl".into(),
                target: "/ssl".into(),
                read_only: true,
                size: None,
            },
            Mount {
                kind: MountKind::Tmpfs,
                source: String::new(),
                target: "/tmp".into(),
                read_only: false,
                size: Some(64 << 20),
            },
        ];
        t.resources.memory_bytes = Some(256 << 20);
        t.resources.nano_cpus = Some(500_000_000);
        t.resources.pids = Some(100);
        t.stop_signal = "SIGQUIT".into();
        t.stop_grace_period = 30_000;
        t.labels.insert("c".into(), "1".into());
        t.read_only = true;
        t.cap_add = vec!["CAP_NET_ADMIN".into()];
        t.cap_drop = vec!["CAP_CHOWN".into()];
        t.no_new_privileges = true;
        t.seccomp_unconfined = true;
        t.init = true;
        t.ulimits.insert(
            "nofile".into(),
            model::Ulimit {
                soft: 1024,
                hard: 2048,
            },
        );
        t.sysctls.insert("net.core.somaxconn".into(), "1024".into());
        t.reservations.nano_cpus = Some(250_000_000);
        t.reservations.memory_bytes = Some(128 << 20);
        t.healthcheck = Some(model::Healthcheck {
            test: vec!["CMD-SHELL".into(), "wget -qO- http://127.0.0.1/".into()],
            interval: 5_000,
            timeout: 2_000,
            start_period: 60_000,
            start_interval: 500,
            retries: 4,
        });
        spec.placement = spec::placement::parse_placement(
            &[
                "node.labels.zone in (a, b)".into(),
                "node.role != manager".into(),
            ],
            &["spread=node.labels.zone".into(), "node.labels.rack".into()],
            2,
        )
        .unwrap();
        spec
    }

    #[test]
    fn spec_round_trips_through_properties() {
        let spec = full_spec();
        let props = spec_to_properties(&spec);
        let back = new_spec("web", &props).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn spec_round_trips_through_the_wire_form() {
        let spec = full_spec();
        let wire = to_wire(&spec_to_properties(&spec));
        // Serialise as a D-Bus message body would and decode again.
        let ctxt = zbus::wire::serialized::Context::new(zbus::wire::LE, 0);
        let bytes = zbus::wire::to_bytes(ctxt, &wire).unwrap();
        let decoded: PropertyList = bytes.deserialize().unwrap().0;
        let props = from_wire(&decoded).unwrap();
        assert_eq!(new_spec("web", &props).unwrap(), spec);
    }

    #[test]
    fn global_round_trips_and_has_no_replicas() {
        let mut spec = full_spec();
        spec.mode = ServiceMode::Global;
        let props = spec_to_properties(&spec);
        assert!(!props.iter().any(|p| matches!(p, Property::Replicas(_))));
        assert_eq!(new_spec("web", &props).unwrap(), spec);
    }

    #[test]
    fn every_name_decodes() {
        let mut spec = full_spec();
        let mut props = spec_to_properties(&spec);
        props.push(Property::ForceUpdate(true));
        let mut job = spec.clone();
        job.mode = ServiceMode::ReplicatedJob {
            replicas: 6,
            max_concurrent: 2,
        };
        let job_props = spec_to_properties(&job);
        assert_eq!(new_spec("web", &job_props).unwrap().mode, job.mode);
        props.extend(job_props);
        let names: Vec<&str> = props.iter().map(|p| p.name()).collect();
        for n in Property::NAMES {
            assert!(names.contains(&n), "{n} not produced");
        }
        for p in &props {
            let (n, v) = p.to_wire();
            assert_eq!(&Property::from_wire(&n, &v).unwrap(), p);
        }
        apply_properties(&mut spec, &[Property::ForceUpdate(true)]).unwrap();
        assert_eq!(spec.task.force_update, 1);
    }

    /// The sandbox properties go through the validator the stack files use, so the same bad
    /// value gets the same message both ways.
    #[test]
    fn sandbox_properties_use_the_shared_validator() {
        let toml_errors = |service: &str| -> Vec<String> {
            let text = format!("[services.web]\nimage = \"x\"\n{service}\n");
            match spec::parse_stack(std::path::Path::new("s.toml"), &text) {
                Ok(_) => panic!("{service} is refused"),
                Err(e) => e.iter().map(|d| d.message.clone()).collect(),
            }
        };
        let cases: Vec<(Property, &str)> = vec![
            (
                Property::CapAdd(vec!["NET_ADMN".into()]),
                "cap_add = [\"NET_ADMN\"]",
            ),
            (
                Property::CapDrop(vec!["bogus".into()]),
                "cap_drop = [\"bogus\"]",
            ),
            (
                Property::SecurityOpt(vec!["apparmor=x".into()]),
                "security_opt = [\"apparmor=x\"]",
            ),
            (
                Property::Ulimits(BTreeMap::from([("nofile".to_string(), (10, 5))])),
                "ulimits = { nofile = { soft = 10, hard = 5 } }",
            ),
            (
                Property::Sysctls(BTreeMap::from([(
                    "vm.swappiness".to_string(),
                    "1".to_string(),
                )])),
                "sysctls = { \"vm.swappiness\" = \"1\" }",
            ),
        ];
        for (prop, toml) in cases {
            let mut spec = default_spec("web");
            let dbus = apply_properties(&mut spec, std::slice::from_ref(&prop))
                .unwrap_err()
                .0;
            assert_eq!(dbus.len(), 1, "{dbus:?}");
            let (name, message) = dbus[0].split_once(": ").unwrap();
            assert_eq!(name, prop.name());
            let from_file = toml_errors(toml);
            assert!(
                from_file.iter().any(|e| e.ends_with(message)),
                "D-Bus says {message:?}, the file says {from_file:?}"
            );
        }
        let mut spec = default_spec("web");
        let e = apply_properties(
            &mut spec,
            &[
                Property::MemoryMax(64 << 20),
                Property::MemoryReservation(128 << 20),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("above the memory limit"), "{e}");
        apply_properties(
            &mut spec,
            &[
                Property::CapAdd(vec!["sys_time".into(), "SYS_TIME".into()]),
                Property::SecurityOpt(vec!["no-new-privileges".into()]),
                Property::CPUsReservation(0.5),
            ],
        )
        .unwrap();
        assert_eq!(spec.task.cap_add, vec!["CAP_SYS_TIME"]);
        assert!(spec.task.no_new_privileges);
        assert_eq!(spec.task.reservations.nano_cpus, Some(500_000_000));
    }

    /// One case per class of bound (counts, sizes, durations): the same bad input through a
    /// stack file and through D-Bus properties gets the same message.
    #[test]
    fn bounds_give_the_same_message_from_a_file_and_from_dbus() {
        use model::MAX_REPLICAS;
        use model::limits::*;
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        let many_env: BTreeMap<String, String> = (0..=MAX_MAP_ENTRIES)
            .map(|i| (format!("V{i}"), "1".to_string()))
            .collect();
        let env_toml = many_env
            .keys()
            .map(|k| format!("{k} = \"1\""))
            .collect::<Vec<_>>()
            .join(", ");
        let ports: Vec<String> = (0..=MAX_PORTS)
            .map(|i| format!("{}:80", 10000 + i))
            .collect();
        let cases: Vec<(Vec<Property>, String, &str)> = vec![
            (
                vec![Property::RestartWindowUSec(25 * 3600 * 1_000_000)],
                "restart = { window = \"25h\" }".into(),
                "restart.window: 25h is above the limit of 24h",
            ),
            (
                vec![Property::StopGracePeriodUSec(48 * 3600 * 1_000_000)],
                "stop_grace_period = \"48h\"".into(),
                "stop_grace_period: 48h is above the limit of 24h",
            ),
            (
                vec![Property::UpdateMonitorUSec(100 * 3600 * 1_000_000)],
                "update = { monitor = \"100h\" }".into(),
                "update.monitor: 100h is above the limit of 24h",
            ),
            (
                vec![Property::HealthIntervalUSec(48 * 3600 * 1_000_000)],
                "healthcheck = { interval = \"48h\" }".into(),
                "healthcheck.interval: 48h is above the limit of 24h",
            ),
            (
                vec![Property::HealthRetries(100_000)],
                "healthcheck = { retries = 100000 }".into(),
                "healthcheck.retries: 100000 is above the limit of 10000",
            ),
            (
                vec![Property::UpdateParallelism(MAX_REPLICAS + 1)],
                format!("update = {{ parallelism = {} }}", MAX_REPLICAS + 1),
                "update.parallelism: 100001 is above the limit of 100000",
            ),
            (
                vec![Property::RestartMaxAttempts(MAX_RESTART_ATTEMPTS + 1)],
                format!(
                    "restart = {{ max_attempts = {} }}",
                    MAX_RESTART_ATTEMPTS + 1
                ),
                "restart.max_attempts: 1000001 is above the limit of 1000000 (0 means no limit)",
            ),
            (
                vec![Property::Env(many_env)],
                format!("env = {{ {env_toml} }}"),
                "env: 1001 variables is above the limit of 1000",
            ),
            (
                vec![Property::Command(vec![big.clone()])],
                format!("command = [\"{big}\"]"),
                "command: argument 0 (32769 bytes) is above the limit of 32768 bytes",
            ),
            (
                vec![Property::Ports(
                    (0..=MAX_PORTS as u16)
                        .map(|i| PortRow {
                            published: 10000 + i,
                            target: 80,
                            protocol: "tcp".into(),
                            mode: "ingress".into(),
                        })
                        .collect(),
                )],
                format!("ports = {:?}", ports),
                "ports: 1001 ports is above the limit of 1000",
            ),
        ];
        for (props, toml, want) in cases {
            let mut spec = default_spec("web");
            let dbus = apply_properties(&mut spec, &props).unwrap_err().0;
            assert_eq!(dbus, vec![want.to_string()], "D-Bus");
            let text = format!("[services.web]\nimage = \"x\"\n{toml}\n");
            let file: Vec<String> = match spec::parse_stack(std::path::Path::new("s.toml"), &text) {
                Ok(_) => panic!("{toml} is refused"),
                Err(e) => e.iter().map(|d| d.message.clone()).collect(),
            };
            assert_eq!(file, vec![format!("services.web.{want}")], "the file");
        }
        // Replicas: the same validator for files, D-Bus and `service scale`.
        let mut spec = default_spec("web");
        let e = apply_properties(&mut spec, &[Property::Replicas(30_000_000_000)]).unwrap_err();
        assert_eq!(
            e.0,
            vec!["30000000000 replicas is more than the limit of 100000".to_string()]
        );
    }

    #[test]
    fn a_rollback_cannot_be_rolled_back() {
        let mut spec = default_spec("web");
        let err = apply_properties(
            &mut spec,
            &[Property::RollbackFailureAction("rollback".into())],
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot be rolled back"), "{err}");
    }

    #[test]
    fn health_properties_use_the_shared_validator_and_an_empty_check_is_none() {
        let mut spec = default_spec("web");
        let err =
            apply_properties(&mut spec, &[Property::HealthTest(vec!["CMD".into()])]).unwrap_err();
        assert!(
            err.to_string()
                .contains("HealthTest: [\"CMD\", ...] needs a program"),
            "{err}"
        );
        // Only timings: the image's test with these timings.
        apply_properties(&mut spec, &[Property::HealthIntervalUSec(1_000_000)]).unwrap();
        assert_eq!(spec.task.healthcheck.as_ref().unwrap().interval, 1_000);
        // Everything back to zero is the same as no healthcheck of the service's own.
        apply_properties(&mut spec, &[Property::HealthIntervalUSec(0)]).unwrap();
        assert_eq!(spec.task.healthcheck, None);
        apply_properties(&mut spec, &[Property::HealthTest(vec!["NONE".into()])]).unwrap();
        assert!(spec.task.healthcheck.as_ref().unwrap().is_disabled());
    }

    #[test]
    fn partial_update_keeps_other_fields() {
        let mut spec = full_spec();
        apply_properties(
            &mut spec,
            &[Property::Image("nginx:1.28".into()), Property::Replicas(5)],
        )
        .unwrap();
        assert_eq!(spec.task.image, "nginx:1.28");
        assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 5 });
        assert_eq!(spec.task.env["LOG_LEVEL"], "info");
        assert_eq!(spec.update.parallelism, 2);
    }

    #[test]
    fn errors_are_collected_and_leave_spec_unchanged() {
        let mut spec = full_spec();
        let before = spec.clone();
        let err = apply_properties(
            &mut spec,
            &[
                Property::Image("busybox".into()),
                Property::RestartCondition("sometimes".into()),
                Property::UpdateOrder("random".into()),
                Property::Ports(vec![PortRow {
                    published: 8080,
                    target: 0,
                    protocol: "tcp".into(),
                    mode: "ingress".into(),
                }]),
            ],
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
        assert!(err.to_string().contains("sometimes"));
        assert!(err.to_string().contains("random"));
        assert!(
            err.to_string()
                .contains("target (container) port must not be 0")
        );
        assert_eq!(spec, before);
    }

    #[test]
    fn replicas_refused_for_global() {
        let mut spec = default_spec("agent");
        apply_properties(&mut spec, &[Property::Mode("global".into())]).unwrap();
        assert_eq!(spec.mode, ServiceMode::Global);
        let err = apply_properties(&mut spec, &[Property::Replicas(2)]).unwrap_err();
        assert!(err.to_string().contains("global"), "{err}");
        let err = new_spec(
            "x",
            &[
                Property::Image("busybox".into()),
                Property::Mode("global".into()),
                Property::Replicas(2),
            ],
        )
        .unwrap_err();
        assert!(err.to_string().contains("replicas cannot be set"), "{err}");
    }

    #[test]
    fn wrong_type_and_unknown_name_are_refused() {
        let wire = vec![
            ("Replicas".to_string(), OwnedVariant::from(3u32)),
            ("Colour".to_string(), OwnedVariant::from(true)),
        ];
        let err = from_wire(&wire).unwrap_err();
        assert_eq!(err.0.len(), 2);
        assert!(
            err.0[0].contains("Replicas has type u, expected t"),
            "{err}"
        );
        assert!(err.0[1].contains("unknown property \"Colour\""), "{err}");
    }

    #[test]
    fn placement_travels_as_strings_and_reads_back() {
        let props = spec_to_properties(&full_spec());
        let find = |name: &str| props.iter().find(|p| p.name() == name).cloned();
        assert_eq!(
            find("Constraints"),
            Some(Property::Constraints(vec![
                "node.labels.zone in (a, b)".into(),
                "node.role != manager".into(),
            ]))
        );
        assert_eq!(
            find("PlacementPreferences"),
            Some(Property::PlacementPreferences(vec![
                "spread=node.labels.zone".into(),
                "spread=node.labels.rack".into(),
            ]))
        );
        assert_eq!(
            find("MaxReplicasPerNode"),
            Some(Property::MaxReplicasPerNode(2))
        );
        // A spec without placement says so explicitly, so an update can clear it.
        let plain = spec_to_properties(&default_spec("x"));
        assert!(plain.contains(&Property::Constraints(vec![])));
        assert!(plain.contains(&Property::MaxReplicasPerNode(0)));
        let mut spec = full_spec();
        apply_properties(
            &mut spec,
            &[
                Property::Constraints(vec![]),
                Property::PlacementPreferences(vec![]),
                Property::MaxReplicasPerNode(0),
            ],
        )
        .unwrap();
        assert_eq!(spec.placement, model::Placement::default());
    }

    #[test]
    fn placement_and_replicas_go_through_the_shared_validator() {
        let mut spec = full_spec();
        let before = spec.clone();
        let err = apply_properties(
            &mut spec,
            &[
                Property::Replicas(30_000_000_000),
                Property::Constraints(vec![
                    "node.labels.zone == a".into(),
                    "node.ip == 10.0.0.1".into(),
                    "node.role == boss".into(),
                ]),
                Property::PlacementPreferences(vec!["binpack=node.labels.zone".into()]),
                Property::MaxReplicasPerNode(u64::MAX),
            ],
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 5, "{err}");
        let text = err.to_string();
        assert!(text.contains("more than the limit of 100000"), "{text}");
        assert!(text.contains("unknown key \"node.ip\""), "{text}");
        assert!(text.contains("manager or worker"), "{text}");
        assert!(text.contains("only spread exists"), "{text}");
        assert!(text.contains("max replicas per node"), "{text}");
        assert_eq!(spec, before);
        // An update that sets only one part keeps the others.
        apply_properties(
            &mut spec,
            &[Property::Constraints(vec!["node.labels.disk==ssd".into()])],
        )
        .unwrap();
        assert_eq!(
            spec.placement.constraints[0].to_string(),
            "node.labels.disk == ssd"
        );
        assert_eq!(spec.placement.preferences, before.placement.preferences);
        assert_eq!(spec.placement.max_replicas_per_node, Some(2));
        assert!(
            new_spec(
                "x",
                &[
                    Property::Image("busybox".into()),
                    Property::Replicas(model::MAX_REPLICAS)
                ]
            )
            .is_ok()
        );
    }

    #[test]
    fn image_is_required_on_create() {
        let err = new_spec("web", &[Property::Replicas(1)]).unwrap_err();
        assert!(err.to_string().contains("no image"), "{err}");
    }

    #[test]
    fn units_convert() {
        let spec = new_spec(
            "web",
            &[
                Property::Image("busybox".into()),
                Property::CPUs(1.5),
                Property::StopGracePeriodUSec(2_500_000),
                Property::MemoryMax(0),
            ],
        )
        .unwrap();
        assert_eq!(spec.task.resources.nano_cpus, Some(1_500_000_000));
        assert_eq!(spec.task.stop_grace_period, 2_500);
        assert_eq!(spec.task.resources.memory_bytes, None);
        assert_eq!(spec.task.stop_signal, "SIGTERM");
    }
}
