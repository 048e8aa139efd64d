//! Overlay networks as the replicated state records them: name, subnet, VXLAN id, and who may
//! attach. The cluster allocates both from its settings (`default_addr_pool`,
//! `default_subnet_size`), so a network's subnet and VNI are decided once, by the leader, and
//! survive leader changes; `CreateNetwork` refuses a name, subnet or VNI already taken, whoever
//! proposed it. (Task and VIP addresses inside a network, and the data plane that carries them,
//! build on these records.)

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{ClusterState, Id, Ipv4Subnet, Map, Millis};

/// The VXLAN ids shoal hands out: above 4095 (Docker's overlay starts at 4096 too, so ids never
/// look like VLAN ids), below 2^24.
pub const VNI_FIRST: u32 = 4096;
pub const VNI_LAST: u32 = (1 << 24) - 1;

/// The name of the routing mesh's network, as Swarm names it.
pub const INGRESS_NETWORK: &str = "ingress";

/// How a network carries traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NetworkDriver {
    /// Between hosts over VXLAN (4789/udp), forwarding entries programmed from the state.
    #[default]
    Overlay,
}

impl NetworkDriver {
    pub fn as_str(&self) -> &'static str {
        match self {
            NetworkDriver::Overlay => "overlay",
        }
    }
}

/// A network of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: Id,
    /// Unique in the cluster (`STACK_NAME` for a stack's networks).
    pub name: String,
    pub driver: NetworkDriver,
    pub subnet: Ipv4Subnet,
    /// The VXLAN network identifier.
    pub vni: u32,
    /// Whether standalone containers may attach (Swarm's `--attachable`).
    #[serde(default)]
    pub attachable: bool,
    /// The routing mesh's network (one per cluster).
    #[serde(default)]
    pub ingress: bool,
    /// The stack that owns this network, if any.
    #[serde(default)]
    pub stack: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created_at: Millis,
}

impl Network {
    /// The subnet's first address, the gateway on every node.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }
}

/// An address on a network: a task's, or a service's virtual IP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attachment {
    /// The network's id.
    pub network: Id,
    pub addr: Ipv4Addr,
}

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddressOwner {
    Task(Id),
    /// A service's virtual IP.
    Vip(Id),
}

/// The addresses in use on each network: derived from the tasks that are not yet observed
/// terminal and from the services' VIPs, never serialized, rebuilt on deserialization and kept
/// by every change of a task or service. It is what makes "never hands one address out twice"
/// a precondition of apply rather than a hope of the planner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AddressIndex {
    used: Map<Id, Map<Ipv4Addr, AddressOwner>>,
}

impl AddressIndex {
    pub(crate) fn reserve(&mut self, owner: &AddressOwner, list: &[Attachment]) {
        for a in list {
            self.used
                .entry(a.network.clone())
                .or_default()
                .insert(a.addr, owner.clone());
        }
    }

    /// Forget `owner`'s addresses in `list` (an address since given to someone else stays).
    pub(crate) fn release(&mut self, owner: &AddressOwner, list: &[Attachment]) {
        for a in list {
            if let Some(m) = self.used.get_mut(&a.network) {
                if m.get(&a.addr) == Some(owner) {
                    m.remove(&a.addr);
                }
                if m.is_empty() {
                    self.used.remove(&a.network);
                }
            }
        }
    }

    pub(crate) fn owner(&self, a: &Attachment) -> Option<&AddressOwner> {
        self.used.get(&a.network).and_then(|m| m.get(&a.addr))
    }

    pub(crate) fn in_use(&self, network: &str) -> usize {
        self.used.get(network).map_or(0, |m| m.len())
    }

    fn used_on(&self, network: &str) -> Option<&Map<Ipv4Addr, AddressOwner>> {
        self.used.get(network)
    }
}

/// Whether a task holds its addresses: until it is observed terminal (its container is gone).
pub(crate) fn holds_addresses(t: &crate::Task) -> bool {
    !t.networks.is_empty() && !t.status.state.is_terminal()
}

/// Take (`hold`) or give back a task's addresses whatever its state: for a change of the state
/// alone (observed terminal, or the undo of that).
pub(crate) fn hold_task_addresses(idx: &mut AddressIndex, t: &crate::Task, hold: bool) {
    let owner = AddressOwner::Task(t.id.clone());
    if hold {
        idx.reserve(&owner, &t.networks);
    } else {
        idx.release(&owner, &t.networks);
    }
}

/// Keep `idx` across a task change (`None`: absent). A function of the fields, not of the
/// state, so apply can call it while it holds the task map.
pub(crate) fn readdress_task(
    idx: &mut AddressIndex,
    before: Option<&crate::Task>,
    after: Option<&crate::Task>,
) {
    let held = |t: Option<&crate::Task>| t.is_some_and(holds_addresses);
    if held(before) == held(after) && before.map(|t| &t.networks) == after.map(|t| &t.networks) {
        return;
    }
    if let Some(b) = before.filter(|t| holds_addresses(t)) {
        idx.release(&AddressOwner::Task(b.id.clone()), &b.networks);
    }
    if let Some(a) = after.filter(|t| holds_addresses(t)) {
        idx.reserve(&AddressOwner::Task(a.id.clone()), &a.networks);
    }
}

/// A new overlay network named `name`: `subnet` if given (refused when it overlaps a network
/// or `avoid`), else the next free one of the cluster's pool in `default_subnet_size` steps;
/// the lowest free VNI. Apply checks the same again, so a race loses cleanly.
pub fn new_network(
    st: &ClusterState,
    id: Id,
    name: &str,
    subnet: Option<Ipv4Subnet>,
    avoid: &[Ipv4Subnet],
    now: Millis,
) -> Result<Network, String> {
    let subnet = match subnet {
        Some(s) => {
            if let Some(n) = st.networks.values().find(|n| n.subnet.overlaps(&s)) {
                return Err(format!(
                    "subnet {s} overlaps network {} ({})",
                    n.name, n.subnet
                ));
            }
            if let Some(a) = avoid.iter().find(|a| a.overlaps(&s)) {
                return Err(format!(
                    "subnet {s} overlaps {a}, a node's bridge or address: choose another"
                ));
            }
            s
        }
        None => st
            .free_subnet(
                &st.settings.default_addr_pool,
                st.settings.default_subnet_size,
                avoid,
            )
            .ok_or_else(|| {
                format!(
                    "no free /{} subnet left in the cluster's address pool ({}): remove a network or widen default_addr_pool",
                    st.settings.default_subnet_size,
                    st.settings
                        .default_addr_pool
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?,
    };
    let vni = st
        .free_vni()
        .ok_or_else(|| "no free VXLAN id left".to_string())?;
    Ok(Network {
        id,
        name: name.to_owned(),
        driver: NetworkDriver::Overlay,
        subnet,
        vni,
        attachable: false,
        ingress: false,
        stack: None,
        labels: BTreeMap::new(),
        created_at: now,
    })
}

/// A network as `ListNetworks` shows it: named strings, new keys may appear.
pub fn network_row(st: &ClusterState, n: &Network) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("Id".into(), n.id.clone());
    m.insert("Name".into(), n.name.clone());
    m.insert("Driver".into(), n.driver.as_str().into());
    m.insert("Scope".into(), "swarm".into());
    m.insert("Subnet".into(), n.subnet.to_string());
    m.insert("Gateway".into(), n.gateway().to_string());
    m.insert("Vni".into(), n.vni.to_string());
    m.insert("Attachable".into(), n.attachable.to_string());
    m.insert("Ingress".into(), n.ingress.to_string());
    m.insert("Stack".into(), n.stack.clone().unwrap_or_default());
    m.insert("Created".into(), n.created_at.to_string());
    let services: Vec<&str> = st
        .services_on_network(n)
        .map(|s| s.spec.name.as_str())
        .collect();
    m.insert("Services".into(), services.join(","));
    m.insert("Addresses".into(), st.addresses.in_use(&n.id).to_string());
    for (k, v) in &n.labels {
        m.insert(format!("Label.{k}"), v.clone());
    }
    m
}

/// What one node needs to carry its tasks' overlay traffic: every network a task of the node
/// holds an address on and, for each, the addresses held by tasks on other nodes with the
/// underlay address of the node each runs on. Workers hold no cluster state; this reaches them
/// with their assignments, and the data plane is programmed from it alone (nothing is learned
/// by flooding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeNetworks {
    pub networks: Vec<NetworkPlan>,
    /// Every published port of the cluster as this node serves it (the routing mesh).
    #[serde(default)]
    pub ports: Vec<PortPlan>,
}

/// A published port as one node serves it: to its own running tasks when it has some, else
/// (ingress mode) forwarded to the nodes that have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPlan {
    pub published: u16,
    pub protocol: crate::Protocol,
    /// The one address of the node the port is served on (`None`: every address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
    /// For a bound port in ingress mode served here: the other ready nodes, whose forwarded
    /// connections arrive at this node's own address rather than the bound one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Ipv4Addr>,
    /// This node's running tasks: their node-bridge address and target port.
    pub local: Vec<(Ipv4Addr, u16)>,
    /// Where the other ready nodes running a task of the service are reached: their ingress
    /// addresses, else their underlay addresses ([`ClusterState::mesh_address`]; empty in host
    /// mode).
    pub remote: Vec<Ipv4Addr>,
}

impl NodeNetworks {
    /// The plan of network `id`, if a task of the node is on it.
    pub fn get(&self, id: &str) -> Option<&NetworkPlan> {
        self.networks.iter().find(|n| n.id == id)
    }
}

/// One network as a node programs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    pub id: Id,
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Subnet,
    /// Addresses held by tasks on other nodes, sorted by address.
    pub peers: Vec<Peer>,
    /// The services on the network, for the node's DNS (sorted by name).
    #[serde(default)]
    pub services: Vec<ServiceRecord>,
    /// The node's own address on the network, set on its bridge (the ingress network: the
    /// routing mesh reaches other nodes there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Ipv4Addr>,
}

/// A service as DNS answers for it on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The full name (`STACK_SERVICE` for a stack's service).
    pub name: String,
    pub stack: Option<String>,
    /// The service's virtual IP on this network.
    pub vip: Option<Ipv4Addr>,
    /// The addresses on this network of the service's running tasks, sorted.
    pub tasks: Vec<Ipv4Addr>,
}

/// A task's address on another node, and where that node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    pub addr: Ipv4Addr,
    /// The underlay address of the node the task runs on (its advertise address).
    pub node_ip: Ipv4Addr,
}

/// The IPv4 address of a node's advertise address (`IP:PORT`, or a bare IP).
pub fn node_ip(addr: &str) -> Option<Ipv4Addr> {
    addr.parse::<std::net::SocketAddrV4>()
        .map(|a| *a.ip())
        .or_else(|_| addr.parse::<Ipv4Addr>())
        .ok()
}

impl ClusterState {
    /// Every node's underlay address as a /32: what a new network's subnet must not contain
    /// (a task could not reach a node whose address is inside one of its networks).
    pub fn node_subnets(&self) -> Vec<Ipv4Subnet> {
        self.nodes
            .values()
            .filter_map(|n| node_ip(&n.addr))
            .filter_map(|ip| Ipv4Subnet::new(ip, 32))
            .collect()
    }

    /// The overlay plan of node `node` (see [`NodeNetworks`]). Cost: the node's tasks plus the
    /// addresses held on its networks.
    pub fn node_networks(&self, node: &str) -> NodeNetworks {
        let mut ids: std::collections::BTreeSet<&str> = Default::default();
        for t in self.tasks_on(node).filter(|t| holds_addresses(t)) {
            ids.extend(t.networks.iter().map(|a| a.network.as_str()));
        }
        let networks = ids
            .into_iter()
            .filter_map(|id| self.networks.get(id))
            .map(|net| {
                let mut peers: Vec<Peer> = self
                    .addresses
                    .used_on(&net.id)
                    .into_iter()
                    .flat_map(|m| m.iter())
                    .filter_map(|(addr, owner)| {
                        let AddressOwner::Task(task) = owner else {
                            return None;
                        };
                        let on = self.tasks.get(task)?.node_id.as_deref()?;
                        if on == node {
                            return None;
                        }
                        let node_ip = node_ip(&self.nodes.get(on)?.addr)?;
                        Some(Peer {
                            addr: *addr,
                            node_ip,
                        })
                    })
                    .collect();
                peers.sort();
                let mut services: Vec<ServiceRecord> = self
                    .services_on_network(net)
                    .map(|svc| {
                        let on_net = |list: &[Attachment]| {
                            list.iter().find(|a| a.network == net.id).map(|a| a.addr)
                        };
                        let mut tasks: Vec<Ipv4Addr> = self
                            .tasks_of(&svc.id)
                            .filter(|t| {
                                t.status.state == crate::TaskState::Running
                                    && t.desired == crate::TaskState::Running
                            })
                            .filter_map(|t| on_net(&t.networks))
                            .collect();
                        tasks.sort();
                        ServiceRecord {
                            name: svc.spec.name.clone(),
                            stack: svc.spec.stack.clone(),
                            vip: on_net(&svc.vips),
                            tasks,
                        }
                    })
                    .collect();
                services.sort_by(|a, b| a.name.cmp(&b.name));
                NetworkPlan {
                    id: net.id.clone(),
                    name: net.name.clone(),
                    vni: net.vni,
                    subnet: net.subnet,
                    peers,
                    services,
                    host: None,
                }
            })
            .collect::<Vec<_>>();
        let mut networks = networks;
        networks.extend(self.ingress_plan(node));
        NodeNetworks {
            networks,
            ports: self.node_ports(node),
        }
    }

    /// The routing mesh's network, if the cluster has one yet.
    pub fn ingress_network(&self) -> Option<&Network> {
        self.networks.values().find(|n| n.ingress)
    }

    /// The lowest host address of the ingress network no node holds (the gateway address is
    /// left out, as on every network).
    pub fn free_ingress_address(&self) -> Option<Ipv4Addr> {
        let subnet = self.ingress_network()?.subnet;
        let taken: std::collections::BTreeSet<Ipv4Addr> =
            self.nodes.values().filter_map(|n| n.ingress_addr).collect();
        let first = u32::from(subnet.gateway()) + 1;
        let last = u32::from(subnet.broadcast());
        (first..last)
            .map(Ipv4Addr::from)
            .find(|a| !taken.contains(a))
    }

    /// The ingress network as node `node` carries it: its own address on the bridge, and every
    /// other ready node's address reached over VXLAN. `None` before the node has an address.
    fn ingress_plan(&self, node: &str) -> Option<NetworkPlan> {
        let net = self.ingress_network()?;
        let host = self.nodes.get(node)?.ingress_addr?;
        let mut peers: Vec<Peer> = self
            .nodes
            .values()
            .filter(|n| n.id != node && n.status == crate::NodeStatus::Ready)
            .filter_map(|n| {
                Some(Peer {
                    addr: n.ingress_addr?,
                    node_ip: node_ip(&n.addr)?,
                })
            })
            .collect();
        peers.sort();
        Some(NetworkPlan {
            id: net.id.clone(),
            name: net.name.clone(),
            vni: net.vni,
            subnet: net.subnet,
            peers,
            services: Vec::new(),
            host: Some(host),
        })
    }

    /// Where the routing mesh reaches node `to` from node `from`: its ingress address when both
    /// have one (the path over the ingress network), else its underlay address.
    fn mesh_address(&self, from: &str, to: &crate::Node) -> Option<Ipv4Addr> {
        let over_ingress = self.ingress_network().is_some()
            && self
                .nodes
                .get(from)
                .is_some_and(|n| n.ingress_addr.is_some());
        match to.ingress_addr {
            Some(a) if over_ingress => Some(a),
            _ => node_ip(&to.addr),
        }
    }

    /// Every published port of every service as node `node` serves it (see [`PortPlan`]).
    pub fn node_ports(&self, node: &str) -> Vec<PortPlan> {
        let mut out = Vec::new();
        for svc in self.services.values() {
            if svc.spec.ports.is_empty() {
                continue;
            }
            let running: Vec<&crate::Task> = self
                .tasks_of(&svc.id)
                .filter(|t| {
                    t.status.state == crate::TaskState::Running
                        && t.desired <= crate::TaskState::Running
                })
                .collect();
            for p in &svc.spec.ports {
                let mut local: Vec<(Ipv4Addr, u16)> = running
                    .iter()
                    .filter(|t| t.node_id.as_deref() == Some(node))
                    .filter_map(|t| {
                        let ip: Ipv4Addr = t
                            .status
                            .address
                            .as_deref()?
                            .split('/')
                            .next()?
                            .parse()
                            .ok()?;
                        // The task's own copy of the ports says which target it listens on.
                        let target = t
                            .ports
                            .iter()
                            .find(|q| {
                                q.published == p.published
                                    && q.protocol == p.protocol
                                    && q.host_ip == p.host_ip
                            })
                            .map_or(p.target, |q| q.target);
                        Some((ip, target))
                    })
                    .collect();
                local.sort();
                let mut remote: Vec<Ipv4Addr> = Vec::new();
                if p.mode == crate::PublishMode::Ingress {
                    remote = running
                        .iter()
                        .filter_map(|t| t.node_id.as_deref())
                        .filter(|n| *n != node)
                        .filter_map(|n| self.nodes.get(n))
                        .filter(|n| n.status == crate::NodeStatus::Ready)
                        .filter_map(|n| self.mesh_address(node, n))
                        .collect();
                    remote.sort();
                    remote.dedup();
                }
                let mut peers = Vec::new();
                if p.host_ip.is_some() && p.mode == crate::PublishMode::Ingress && !local.is_empty()
                {
                    peers = self
                        .nodes
                        .values()
                        .filter(|n| n.id != node && n.status == crate::NodeStatus::Ready)
                        .filter_map(|n| self.mesh_address(node, n))
                        .collect();
                    peers.sort();
                    peers.dedup();
                }
                out.push(PortPlan {
                    published: p.published,
                    protocol: p.protocol,
                    host_ip: p.host_ip,
                    peers,
                    local,
                    remote,
                });
            }
        }
        out.sort_by_key(|b| (b.published, b.protocol.as_str(), b.host_ip));
        out
    }
}

impl ClusterState {
    /// Why `list` cannot be taken by `owner`, if it cannot: an unknown network, an address
    /// outside the subnet or reserved (network, gateway, broadcast), or one held by another.
    pub(crate) fn check_attachments(
        &self,
        owner: &AddressOwner,
        list: &[Attachment],
    ) -> Result<(), String> {
        for (i, a) in list.iter().enumerate() {
            let Some(net) = self.networks.get(&a.network) else {
                return Err(format!("network {} does not exist", a.network));
            };
            let reserved = [net.subnet.network(), net.gateway(), net.subnet.broadcast()];
            if !net.subnet.contains(a.addr) || reserved.contains(&a.addr) {
                return Err(format!(
                    "{} is not an address for a task in {} ({})",
                    a.addr, net.name, net.subnet
                ));
            }
            if list[..i].iter().any(|b| b.network == a.network) {
                return Err(format!("two addresses on network {}", net.name));
            }
            match self.addresses.owner(a) {
                Some(o) if o != owner => {
                    return Err(format!("{} on {} is taken", a.addr, net.name));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The lowest address of `network` no task or VIP holds and not in `exclude` (addresses
    /// picked earlier in the same plan); `None` when the network is full or unknown.
    pub fn free_address(
        &self,
        network: &str,
        exclude: &std::collections::BTreeSet<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        let net = self.networks.get(network)?;
        let first = u32::from(net.gateway()) + 1;
        let last = u32::from(net.subnet.broadcast()).checked_sub(1)?;
        let used = self.addresses.used_on(network);
        let taken = |a: Ipv4Addr| exclude.contains(&a) || used.is_some_and(|m| m.contains_key(&a));
        // Walk the used addresses in order to the first gap: cost proportional to what is used.
        (first..=last).map(Ipv4Addr::from).find(|a| !taken(*a))
    }

    /// How many addresses of `network` tasks and VIPs hold.
    pub fn addresses_in_use(&self, network: &str) -> usize {
        self.addresses.in_use(network)
    }

    /// Who holds `addr` on `network`.
    pub fn address_owner(&self, network: &str, addr: Ipv4Addr) -> Option<&AddressOwner> {
        self.addresses.owner(&Attachment {
            network: network.into(),
            addr,
        })
    }

    /// Rebuild the address index from the tasks and services.
    pub(crate) fn rebuild_addresses(&mut self) {
        let mut idx = AddressIndex::default();
        for t in self.tasks.values().filter(|t| holds_addresses(t)) {
            idx.reserve(&AddressOwner::Task(t.id.clone()), &t.networks);
        }
        for s in self.services.values() {
            idx.reserve(&AddressOwner::Vip(s.id.clone()), &s.vips);
        }
        self.addresses = idx;
    }

    /// Keep the address index across a change of service `id`'s VIPs.
    pub(crate) fn readdress_service(
        &mut self,
        id: &str,
        before: &[Attachment],
        after: &[Attachment],
    ) {
        if before != after {
            let owner = AddressOwner::Vip(id.to_string());
            self.addresses.release(&owner, before);
            self.addresses.reserve(&owner, after);
        }
    }

    /// A network by id, name, or unique id prefix.
    pub fn find_network(&self, key: &str) -> Option<&Network> {
        if let Some(n) = self.networks.get(key) {
            return Some(n);
        }
        if let Some(n) = self.networks.values().find(|n| n.name == key) {
            return Some(n);
        }
        let mut it = self.networks.values().filter(|n| n.id.starts_with(key));
        match (it.next(), it.next()) {
            (Some(n), None) if !key.is_empty() => Some(n),
            _ => None,
        }
    }

    /// The first subnet of `prefix_len` in `pool` (in order) that overlaps no network's subnet
    /// and none of `avoid` (the node bridges' subnets, say); `None` when the pool is full.
    pub fn free_subnet(
        &self,
        pool: &[Ipv4Subnet],
        prefix_len: u8,
        avoid: &[Ipv4Subnet],
    ) -> Option<Ipv4Subnet> {
        let taken: Vec<Ipv4Subnet> = self
            .networks
            .values()
            .map(|n| n.subnet)
            .chain(avoid.iter().copied())
            .collect();
        for range in pool {
            if prefix_len < range.prefix_len() {
                continue;
            }
            let step = 1u64 << (32 - u32::from(prefix_len));
            let mut at = u64::from(u32::from(range.network()));
            let end = u64::from(u32::from(range.broadcast()));
            while at <= end {
                let candidate = Ipv4Subnet::new(Ipv4Addr::from(at as u32), prefix_len)?;
                match taken.iter().find(|t| t.overlaps(&candidate)) {
                    None => return Some(candidate),
                    // Skip past the blocking subnet (it may be larger than a step).
                    Some(t) => {
                        let past = u64::from(u32::from(t.broadcast())) + 1;
                        at = (at + step).max(past.div_ceil(step) * step);
                    }
                }
            }
        }
        None
    }

    /// The lowest VNI no network uses.
    pub fn free_vni(&self) -> Option<u32> {
        let used: std::collections::BTreeSet<u32> = self.networks.values().map(|n| n.vni).collect();
        (VNI_FIRST..=VNI_LAST).find(|v| !used.contains(v))
    }

    /// The services whose spec names this network (by id or name).
    pub fn services_on_network<'a>(
        &'a self,
        net: &'a Network,
    ) -> impl Iterator<Item = &'a crate::Service> + 'a {
        self.services.values().filter(move |s| {
            s.spec
                .networks
                .iter()
                .any(|n| *n == net.id || *n == net.name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApplyError, Command};

    fn net(id: &str, subnet: &str, vni: u32) -> Network {
        Network {
            id: id.into(),
            name: format!("net-{id}"),
            driver: NetworkDriver::Overlay,
            subnet: subnet.parse().unwrap(),
            vni,
            attachable: false,
            ingress: false,
            stack: None,
            labels: BTreeMap::new(),
            created_at: 0,
        }
    }

    fn sn(s: &str) -> Ipv4Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_come_from_the_pool_in_order_around_what_is_taken() {
        let mut st = ClusterState::default();
        let pool = [sn("10.0.0.0/8")];
        assert_eq!(st.free_subnet(&pool, 24, &[]), Some(sn("10.0.0.0/24")));
        // A larger network in the way (a /16 at 10.0.0.0) is skipped whole.
        st.apply(&Command::CreateNetwork(net("a", "10.0.0.0/16", 4096)))
            .unwrap();
        assert_eq!(st.free_subnet(&pool, 24, &[]), Some(sn("10.1.0.0/24")));
        // The node bridges' subnets are avoided too; larger sizes than /24 work.
        assert_eq!(
            st.free_subnet(&pool, 20, &[sn("10.1.0.0/16")]),
            Some(sn("10.2.0.0/20"))
        );
        // Several pools, in order; a full pool gives None.
        let small = [sn("192.168.7.0/24"), sn("192.168.9.0/24")];
        assert_eq!(st.free_subnet(&small, 24, &[]), Some(sn("192.168.7.0/24")));
        st.apply(&Command::CreateNetwork(net("b", "192.168.7.0/24", 4097)))
            .unwrap();
        assert_eq!(st.free_subnet(&small, 24, &[]), Some(sn("192.168.9.0/24")));
        st.apply(&Command::CreateNetwork(net("c", "192.168.9.0/24", 4098)))
            .unwrap();
        assert_eq!(st.free_subnet(&small, 24, &[]), None);
        // A pool smaller than the size asked for gives nothing rather than a bad subnet.
        assert_eq!(st.free_subnet(&[sn("172.16.0.0/26")], 24, &[]), None);
    }

    #[test]
    fn a_network_never_shares_a_name_subnet_or_vni() {
        let mut st = ClusterState::default();
        assert_eq!(st.free_vni(), Some(VNI_FIRST));
        st.apply(&Command::CreateNetwork(net("a", "10.0.0.0/24", 4096)))
            .unwrap();
        assert_eq!(st.free_vni(), Some(4097));
        let mut same_name = net("b", "10.0.1.0/24", 4097);
        same_name.name = "net-a".into();
        assert!(matches!(
            st.apply(&Command::CreateNetwork(same_name)),
            Err(ApplyError::NetworkExists(_))
        ));
        for clash in [
            net("c", "10.0.0.128/25", 4099), // overlaps a's subnet
            net("d", "10.0.0.0/16", 4099),   // contains it
            net("e", "10.0.2.0/24", 4096),   // a's VNI
            net("f", "10.0.3.0/24", 12),     // a VLAN-range VNI
            net("g", "10.0.4.0/24", 1 << 24),
        ] {
            let r = st.apply(&Command::CreateNetwork(clash.clone()));
            assert!(
                matches!(r, Err(ApplyError::Precondition(_))),
                "{clash:?}: {r:?}"
            );
        }
        assert_eq!(st.networks.len(), 1);
        assert_eq!(st.find_network("net-a").map(|n| n.id.as_str()), Some("a"));
        assert_eq!(st.find_network("a").map(|n| n.name.as_str()), Some("net-a"));
        assert_eq!(st.networks["a"].gateway().to_string(), "10.0.0.1");
    }

    #[test]
    fn a_network_in_use_is_not_removed_and_batches_undo_network_changes() {
        let mut st = ClusterState::default();
        st.apply(&Command::CreateNetwork(net("a", "10.0.0.0/24", 4096)))
            .unwrap();
        let mut svc = crate::state::tests::svc("s", "web", None);
        svc.spec.networks = vec!["net-a".into()];
        st.apply(&Command::CreateService(svc)).unwrap();
        let r = st.apply(&Command::RemoveNetwork { id: "a".into() });
        assert!(
            matches!(&r, Err(ApplyError::Precondition(m)) if m.contains("service web")),
            "{r:?}"
        );
        // A batch that creates a network and then fails leaves no network behind.
        let before = st.clone();
        let r = st.apply(&Command::Batch(vec![
            Command::CreateNetwork(net("b", "10.0.1.0/24", 4097)),
            Command::RemoveNetwork { id: "nope".into() },
        ]));
        assert!(matches!(r, Err(ApplyError::NetworkNotFound(_))));
        assert_eq!(st, before);
        st.apply(&Command::RemoveService { id: "s".into() })
            .unwrap();
        st.apply(&Command::RemoveNetwork { id: "a".into() })
            .unwrap();
        assert!(st.networks.is_empty());
    }

    /// `service create --network` used to be stored and ignored; now a network that does not
    /// exist is an error whichever path the spec comes by.
    #[test]
    fn a_service_naming_an_unknown_network_is_refused() {
        let mut st = ClusterState::default();
        let mut svc = crate::state::tests::svc("s", "web", None);
        svc.spec.networks = vec!["backend".into()];
        assert!(matches!(
            st.apply(&Command::CreateService(svc.clone())),
            Err(ApplyError::NetworkNotFound(n)) if n == "backend"
        ));
        let mut backend = net("b", "10.0.0.0/24", 4096);
        backend.name = "backend".into();
        st.apply(&Command::CreateNetwork(backend)).unwrap();
        st.apply(&Command::CreateService(svc.clone())).unwrap();
        let update = |networks: Vec<&str>| {
            let mut spec = svc.spec.clone();
            spec.networks = networks.into_iter().map(String::from).collect();
            spec.mode = crate::ServiceMode::Replicated { replicas: 3 };
            Command::UpdateService {
                id: "s".into(),
                spec,
                image_digest: None,
                now: 1,
                if_revision: None,
            }
        };
        assert!(matches!(
            st.apply(&update(vec!["backend", "front"])),
            Err(ApplyError::NetworkNotFound(n)) if n == "front"
        ));
        // A service stored before networks existed names one that is not there: it still scales.
        let mut legacy = crate::state::tests::svc("l", "legacy", None);
        legacy.spec.networks = vec!["gone".into()];
        st.services.insert("l".into(), legacy.clone());
        let mut spec = legacy.spec.clone();
        spec.mode = crate::ServiceMode::Replicated { replicas: 2 };
        st.apply(&Command::UpdateService {
            id: "l".into(),
            spec,
            image_digest: None,
            now: 1,
            if_revision: None,
        })
        .unwrap();
    }

    fn task_on(id: &str, net: &str, addr: &str) -> crate::Task {
        let mut t = crate::Task {
            id: id.into(),
            service_id: "s".into(),
            service_name: "web".into(),
            slot: 1,
            node_id: None,
            spec_version: 1,
            spec: Default::default(),
            image_digest: None,
            ports: vec![],
            desired: crate::TaskState::Running,
            status: Default::default(),
            created_at: 0,
            not_before: None,
            restart_attempt: 0,
            started_at: None,
            networks: vec![],
        };
        t.networks = vec![Attachment {
            network: net.into(),
            addr: addr.parse().unwrap(),
        }];
        t
    }

    /// A state with network `a` (10.0.0.0/29: addresses .2 to .6 for tasks) and service `s`.
    fn small() -> ClusterState {
        let mut st = ClusterState::default();
        st.apply(&Command::CreateNetwork(net("a", "10.0.0.0/29", 4096)))
            .unwrap();
        let mut svc = crate::state::tests::svc("s", "web", None);
        svc.spec.mode = crate::ServiceMode::Replicated { replicas: 10 };
        svc.vips = vec![Attachment {
            network: "a".into(),
            addr: "10.0.0.2".parse().unwrap(),
        }];
        st.apply(&Command::CreateService(svc)).unwrap();
        st
    }

    #[test]
    fn an_address_is_never_handed_out_twice() {
        let mut st = small();
        let none = std::collections::BTreeSet::new();
        // .1 is the gateway, .2 the service's VIP.
        assert_eq!(
            st.free_address("a", &none),
            Some("10.0.0.3".parse().unwrap())
        );
        st.apply(&Command::PutTasks(vec![task_on("t1", "a", "10.0.0.3")]))
            .unwrap();
        assert_eq!(
            st.address_owner("a", "10.0.0.3".parse().unwrap()),
            Some(&AddressOwner::Task("t1".into()))
        );
        // A plan that picked the same address (or the VIP's, the gateway, one outside the subnet
        // or on a network that does not exist) is refused whole.
        for (addr, net) in [
            ("10.0.0.3", "a"),
            ("10.0.0.2", "a"),
            ("10.0.0.1", "a"),
            ("10.0.0.7", "a"),
            ("10.0.1.4", "a"),
            ("10.0.0.4", "zz"),
        ] {
            let mut t = task_on("t2", net, addr);
            t.slot = 2;
            let r = st.apply(&Command::PutTasks(vec![t]));
            assert!(
                matches!(r, Err(ApplyError::Precondition(_))),
                "{addr} on {net}: {r:?}"
            );
        }
        // Two picks in one plan: `exclude` carries the first.
        let first = st.free_address("a", &none).unwrap();
        let second = st.free_address("a", &[first].into()).unwrap();
        assert_eq!(
            (first.to_string(), second.to_string()),
            ("10.0.0.4".into(), "10.0.0.5".into())
        );
        // The network cannot go while addresses are held.
        let r = st.apply(&Command::RemoveNetwork { id: "a".into() });
        assert!(matches!(r, Err(ApplyError::Precondition(_))), "{r:?}");
    }

    #[test]
    fn a_node_plans_the_networks_of_its_tasks_with_the_peers_on_other_nodes() {
        let mut st = small();
        st.apply(&Command::CreateNetwork(net("b", "10.0.1.0/24", 4097)))
            .unwrap();
        for (id, addr) in [("n1", "192.168.1.1:4600"), ("n2", "192.168.1.2:4600")] {
            st.nodes.insert(
                id.into(),
                crate::Node {
                    id: id.into(),
                    raft_id: 1,
                    name: id.into(),
                    role: crate::NodeRole::Worker,
                    availability: crate::Availability::Active,
                    status: crate::NodeStatus::Ready,
                    labels: Default::default(),
                    addr: addr.into(),
                    last_heartbeat: 0,
                    version: String::new(),
                    status_message: String::new(),
                    resources: Default::default(),
                    ingress_addr: None,
                },
            );
        }
        let mut tasks = vec![
            ("t1", "a", "10.0.0.3", "n1"),
            ("t2", "a", "10.0.0.4", "n2"),
            ("t3", "a", "10.0.0.5", "n2"),
            ("t4", "b", "10.0.1.2", "n2"),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (id, net, addr, node))| {
            let mut t = task_on(id, net, addr);
            t.slot = i as u64 + 1;
            t.node_id = Some(node.into());
            t
        })
        .collect::<Vec<_>>();
        tasks[2].status.state = crate::TaskState::Running;
        st.apply(&Command::PutTasks(tasks)).unwrap();
        let plan = st.node_networks("n1");
        // n1 is only on `a`; its peers are n2's tasks there (not its own, not the VIP, nothing
        // of `b`).
        assert_eq!(plan.networks.len(), 1, "{plan:?}");
        let a = plan.get("a").unwrap();
        assert_eq!((a.vni, a.subnet.to_string()), (4096, "10.0.0.0/29".into()));
        let n2: Ipv4Addr = "192.168.1.2".parse().unwrap();
        assert_eq!(
            a.peers,
            vec![
                Peer {
                    addr: "10.0.0.4".parse().unwrap(),
                    node_ip: n2
                },
                Peer {
                    addr: "10.0.0.5".parse().unwrap(),
                    node_ip: n2
                },
            ]
        );
        // n2 sees t1 on n1 and has both networks.
        let plan = st.node_networks("n2");
        assert_eq!(plan.networks.len(), 2);
        assert_eq!(plan.get("a").unwrap().peers.len(), 1);
        assert!(plan.get("b").unwrap().peers.is_empty());
        // A peer observed terminal is gone from the plan; a node with no task has no network.
        st.apply(&Command::UpdateTaskStatus {
            task_id: "t3".into(),
            node_id: "n2".into(),
            status: crate::TaskStatus {
                state: crate::TaskState::Failed,
                ..Default::default()
            },
        })
        .unwrap();
        assert_eq!(st.node_networks("n1").get("a").unwrap().peers.len(), 1);
        assert_eq!(st.node_networks("n3"), NodeNetworks::default());
        assert_eq!(node_ip("10.1.2.3"), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(node_ip("host.example:4600"), None);
    }

    #[test]
    fn a_terminal_task_frees_its_address_and_undo_takes_it_back() {
        let mut st = small();
        st.apply(&Command::PutTasks(vec![task_on("t1", "a", "10.0.0.3")]))
            .unwrap();
        // The task runs on n1.
        {
            let t = st.tasks.get_mut("t1").unwrap();
            t.node_id = Some("n1".into());
            t.status.state = crate::TaskState::Running;
        }
        st.rebuild_index();
        let failed = Command::UpdateTaskStatus {
            task_id: "t1".into(),
            node_id: "n1".into(),
            status: crate::TaskStatus {
                state: crate::TaskState::Failed,
                ..Default::default()
            },
        };
        // Observed terminal inside a batch that fails: the address is held again afterwards.
        let before = st.clone();
        let r = st.apply(&Command::Batch(vec![
            failed.clone(),
            Command::RemoveNetwork { id: "nope".into() },
        ]));
        assert!(r.is_err());
        assert_eq!(st, before);
        assert!(st.address_owner("a", "10.0.0.3".parse().unwrap()).is_some());
        let rebuilt = |st: &ClusterState| {
            let mut r = st.clone();
            r.rebuild_index();
            r.addresses
        };
        assert_eq!(rebuilt(&st), st.addresses, "undo keeps the index exact");
        // For real now: its container is gone, its address is free again.
        assert_eq!(st.apply(&failed).unwrap().changed, 1);
        assert_eq!(st.address_owner("a", "10.0.0.3".parse().unwrap()), None);
        assert_eq!(rebuilt(&st), st.addresses);
        assert_eq!(
            st.free_address("a", &Default::default()),
            Some("10.0.0.3".parse().unwrap())
        );
        // The index rebuilt from scratch (as after a restart) agrees.
        let json = serde_json::to_string(&st).unwrap();
        let back: ClusterState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.address_owner("a", "10.0.0.3".parse().unwrap()), None);
        assert_eq!(
            back.address_owner("a", "10.0.0.2".parse().unwrap()),
            Some(&AddressOwner::Vip("s".into()))
        );
        // Removing the service frees its VIP; then the network can go.
        st.apply(&Command::RemoveService { id: "s".into() })
            .unwrap();
        st.apply(&Command::DeleteTasks(vec!["t1".into()])).unwrap();
        assert_eq!(st.addresses.in_use("a"), 0);
        st.apply(&Command::RemoveNetwork { id: "a".into() })
            .unwrap();
    }

    #[test]
    fn networks_round_trip_and_old_states_read_without_them() {
        let mut st = ClusterState::default();
        st.apply(&Command::CreateNetwork(net("a", "10.0.0.0/24", 4096)))
            .unwrap();
        let json = serde_json::to_string(&st).unwrap();
        assert!(json.contains("\"subnet\":\"10.0.0.0/24\""), "{json}");
        let back: ClusterState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, st);
        let mut old = serde_json::to_value(ClusterState::default()).unwrap();
        old.as_object_mut().unwrap().remove("networks");
        old["settings"]
            .as_object_mut()
            .unwrap()
            .retain(|k, _| !k.starts_with("default_"));
        let old: ClusterState = serde_json::from_value(old).unwrap();
        assert!(old.networks.is_empty());
        assert_eq!(old.settings.default_subnet_size, 24);
        assert_eq!(old.settings.default_addr_pool, vec![sn("10.0.0.0/8")]);
    }
}
