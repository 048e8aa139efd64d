//! Overlay networks as the replicated state records them: name, subnet, VXLAN id, and who may
//! attach. The cluster allocates both from its settings (`default_addr_pool`,
//! `default_subnet_size`), so a network's subnet and VNI are decided once, by the leader, and
//! survive leader changes; `CreateNetwork` refuses a name, subnet or VNI already taken, whoever
//! proposed it. (Task and VIP addresses inside a network, and the data plane that carries them,
//! build on these records.)

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{ClusterState, Id, Ipv4Subnet, Millis};

/// The VXLAN ids shoal hands out: above 4095 (Docker's overlay starts at 4096 too, so ids never
/// look like VLAN ids), below 2^24.
pub const VNI_FIRST: u32 = 4096;
pub const VNI_LAST: u32 = (1 << 24) - 1;

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

impl ClusterState {
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
