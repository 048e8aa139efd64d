//! The kernel side of overlay networks, over rtnetlink: per network a bridge without an address
//! and a VXLAN device as its port; a task's interface on the network; and the forwarding entries
//! of the tasks on other nodes, written from the cluster state (nothing is learned by flooding).
//!
//! - Bridge `shbr-<vni>` (no address: the node has no presence on the network) and VXLAN device
//!   `shvx-<vni>` (`id` = VNI, UDP 4789, `local` = the node's advertise address, learning off,
//!   ARP proxy on, MTU 1450) as its port.
//! - A task's interface (`eth1`, `eth2`, ... in the order of its networks) is a veth whose node
//!   end (`shw` + 12 hex digits) is a port of the bridge and whose MAC is derived from its address
//!   (`02:42:` and the four address bytes), so neither the state nor a peer ever needs a MAC.
//! - For every task of the network on another node: a static FDB entry on the VXLAN device (its
//!   MAC → that node's address) and a permanent neighbour entry (its address → its MAC), so the
//!   VXLAN device answers ARP itself and nothing is flooded between nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkInfo,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan};

use crate::error::{Error, Result};
use crate::netlink::{
    Handles, controller, delete_link, errno, is_up, link_by_name, nl_err, set_up,
};

/// The VXLAN UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// The MTU of overlay interfaces: a 1500-byte underlay less VXLAN's 50 bytes.
pub const OVERLAY_MTU: u32 = 1450;

pub(crate) const BRIDGE_PREFIX: &str = "shbr-";
const VXLAN_PREFIX: &str = "shvx-";
const EEXIST: i32 = nix::errno::Errno::EEXIST as i32;
const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;

pub(crate) fn bridge_name(vni: u32) -> String {
    format!("{BRIDGE_PREFIX}{vni}")
}

pub(crate) fn vxlan_name(vni: u32) -> String {
    format!("{VXLAN_PREFIX}{vni}")
}

/// The MAC of an overlay address: `02:42:` and its four bytes (locally administered, unicast).
pub fn mac_of(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

fn vxlan_info(link: &rtnetlink::packet_route::link::LinkMessage) -> Option<&Vec<InfoVxlan>> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
            _ => None,
        }),
        _ => None,
    })
}

fn is_kind(link: &rtnetlink::packet_route::link::LinkMessage, kind: &InfoKind) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(k) if k == kind)),
        _ => false,
    })
}

/// What was changed to bring a network to its plan (for the log line of a repair).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repairs {
    /// Devices created or recreated.
    pub devices: usize,
    /// Forwarding and neighbour entries added or replaced.
    pub added: usize,
    /// Entries removed (peers gone, or entries nobody asked for).
    pub removed: usize,
}

impl Repairs {
    pub fn is_empty(&self) -> bool {
        *self == Repairs::default()
    }
}

/// Makes the bridge and VXLAN device of network `vni` exist as they should (a VXLAN device with
/// another id, `local` address or port is recreated). Returns the VXLAN device's index.
///
/// `owner` (`shoal:<node bridge>`) is set as the devices' alias, so that a daemon only ever
/// removes devices it made (two daemons sharing a network namespace, as tests do, never take
/// each other's down).
pub(crate) async fn ensure(
    h: &Handle,
    vni: u32,
    local: Ipv4Addr,
    host: Option<Ipv4Addr>,
    owner: &str,
    rep: &mut Repairs,
) -> Result<u32> {
    let br_name = bridge_name(vni);
    let bridge = match link_by_name(h, &br_name).await? {
        Some(l) if is_kind(&l, &InfoKind::Bridge) => l,
        other => {
            if other.is_some() {
                delete_link(h, &br_name).await?;
            }
            let add = LinkBridge::new(&br_name).mtu(OVERLAY_MTU).up().build();
            let created = match h.link().add(add).execute().await {
                Ok(()) => true,
                Err(e) if errno(&e) == Some(EEXIST) => false,
                Err(e) => return Err(nl_err(format!("create bridge {br_name}"))(e)),
            };
            let link = link_by_name(h, &br_name)
                .await?
                .ok_or_else(|| Error::Netlink {
                    action: format!("find bridge {br_name}"),
                    message: "it vanished right after it was created".into(),
                })?;
            if created {
                rep.devices += 1;
                set_alias(h, link.header.index, owner, &br_name).await?;
            }
            link
        }
    };
    if !bridge
        .header
        .flags
        .contains(rtnetlink::packet_route::link::LinkFlags::Up)
    {
        set_up(h, bridge.header.index, &br_name).await?;
        rep.devices += 1;
    }
    if let Some(addr) = host {
        host_address(h, &bridge, &br_name, addr, rep).await?;
    }
    let vx_name = vxlan_name(vni);
    let existing = link_by_name(h, &vx_name).await?;
    let fits = existing.as_ref().is_some_and(|l| {
        vxlan_info(l).is_some_and(|info| {
            info.contains(&InfoVxlan::Id(vni))
                && info.contains(&InfoVxlan::Local(local))
                && info.contains(&InfoVxlan::Port(VXLAN_PORT))
                && info.contains(&InfoVxlan::Learning(false))
        })
    });
    let vx = match existing {
        Some(l) if fits => l,
        other => {
            if other.is_some() {
                tracing::warn!(device = %vx_name, "recreating a VXLAN device that differs from its network");
                delete_link(h, &vx_name).await?;
            }
            let add = LinkVxlan::new(&vx_name, vni)
                .local(local)
                .port(VXLAN_PORT)
                .learning(false)
                .proxy(true)
                .mtu(OVERLAY_MTU)
                .controller(bridge.header.index)
                .up()
                .build();
            let created = match h.link().add(add).execute().await {
                Ok(()) => true,
                Err(e) if errno(&e) == Some(EEXIST) => false,
                Err(e) => {
                    return Err(nl_err(format!(
                        "create VXLAN device {vx_name} (id {vni}, local {local}, port {VXLAN_PORT})"
                    ))(e));
                }
            };
            let link = link_by_name(h, &vx_name)
                .await?
                .ok_or_else(|| Error::Netlink {
                    action: format!("find VXLAN device {vx_name}"),
                    message: "it vanished right after it was created".into(),
                })?;
            if created {
                rep.devices += 1;
                set_alias(h, link.header.index, owner, &vx_name).await?;
            }
            link
        }
    };
    let index = vx.header.index;
    if controller(&vx) != Some(bridge.header.index)
        || !vx
            .header
            .flags
            .contains(rtnetlink::packet_route::link::LinkFlags::Up)
    {
        h.link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge.header.index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!("attach {vx_name} to {br_name}")))?;
        rep.devices += 1;
    }
    Ok(index)
}

/// Gives the bridge the node's own address on the network, as a /32, and the MAC derived from
/// it (what the other nodes' forwarding and neighbour entries point at). A /32 adds no route for
/// the network's subnet to the host: only the other nodes' addresses are routed to the bridge
/// ([`sync_host_routes`]), so a LAN that happens to use the same subnet stays reachable.
async fn host_address(
    h: &Handle,
    bridge: &rtnetlink::packet_route::link::LinkMessage,
    name: &str,
    addr: Ipv4Addr,
    rep: &mut Repairs,
) -> Result<()> {
    let prefix_len = 32;
    use rtnetlink::packet_route::link::LinkAttribute;
    let index = bridge.header.index;
    let mac = mac_of(addr).to_vec();
    let has_mac = bridge
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Address(m) if *m == mac));
    if !has_mac {
        h.link()
            .set(LinkUnspec::new_with_index(index).address(mac).build())
            .execute()
            .await
            .map_err(nl_err(format!("set the MAC address of bridge {name}")))?;
        rep.devices += 1;
    }
    match h
        .address()
        .add(index, std::net::IpAddr::V4(addr), prefix_len)
        .execute()
        .await
    {
        Ok(()) => rep.devices += 1,
        Err(e) if errno(&e) == Some(EEXIST) => {}
        Err(e) => {
            return Err(nl_err(format!(
                "add address {addr}/{prefix_len} to bridge {name}"
            ))(e));
        }
    }
    // `localhost` on a node without a task reaches the routing mesh: a packet from 127.0.0.1,
    // DNAT-ed to another node's address, leaves through this bridge, which the kernel allows
    // only with route_localnet on it. Packets for 127.0.0.0/8 arriving on it from the overlay
    // are dropped by shoal's `input` chain (see ARCHITECTURE.md for the window after a flush).
    crate::enable_sysctl(&format!("net.ipv4.conf.{name}.route_localnet"))?;
    Ok(())
}

/// Routes exactly `peers` (as /32s, in the main table) to the bridge of network `vni`: the other
/// nodes' addresses on a network the host itself is on (the ingress network). Only unicast
/// routes of the main table are looked at: the kernel's own (the local route of the bridge's
/// address) are never touched.
pub(crate) async fn sync_host_routes(
    h: &Handle,
    vni: u32,
    peers: &BTreeSet<Ipv4Addr>,
    rep: &mut Repairs,
) -> Result<()> {
    use rtnetlink::RouteMessageBuilder;
    use rtnetlink::packet_route::route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteScope, RouteType,
    };
    let name = bridge_name(vni);
    let Some(bridge) = link_by_name(h, &name).await? else {
        return Ok(());
    };
    let index = bridge.header.index;
    let routes: Vec<_> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl_err(format!("list the routes of {name}")))?;
    let mut present = BTreeSet::new();
    for r in routes {
        if r.header.table != RouteHeader::RT_TABLE_MAIN
            || r.header.kind != RouteType::Unicast
            || r.header.destination_prefix_length != 32
            || !r
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index))
        {
            continue;
        }
        let Some(ip) = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        }) else {
            continue;
        };
        if peers.contains(&ip) {
            present.insert(ip);
        } else {
            h.route()
                .del(r)
                .execute()
                .await
                .map_err(nl_err(format!("delete the route to {ip} on {name}")))?;
            rep.removed += 1;
        }
    }
    for ip in peers.difference(&present) {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(*ip, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("route {ip} to {name}")))?;
        rep.added += 1;
    }
    Ok(())
}

/// Marks a device this daemon made as its own (the kernel ignores an alias given at creation).
async fn set_alias(h: &Handle, index: u32, owner: &str, what: &str) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).alias(owner).build())
        .execute()
        .await
        .map_err(nl_err(format!("set the alias of {what}")))
}

/// Deletes network `vni`'s devices (a missing one is fine). Returns how many existed.
pub(crate) async fn remove(h: &Handle, vni: u32) -> Result<usize> {
    let mut n = 0;
    for name in [vxlan_name(vni), bridge_name(vni)] {
        if delete_link(h, &name).await? {
            n += 1;
        }
    }
    Ok(n)
}

/// The VNIs of every overlay network that has a device of `owner` on this node.
pub(crate) async fn present(h: &Handle, owner: &str) -> Result<BTreeSet<u32>> {
    let links: Vec<_> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("list links"))?;
    Ok(links
        .iter()
        .filter(|l| {
            l.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfAlias(x) if x == owner))
        })
        .filter_map(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => n
                    .strip_prefix(VXLAN_PREFIX)
                    .or_else(|| n.strip_prefix(BRIDGE_PREFIX))
                    .and_then(|v| v.parse::<u32>().ok()),
                _ => None,
            })
        })
        .collect())
}

fn dst_of(m: &NeighbourMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        // In the bridge family (FDB entries) the kernel's address comes unparsed.
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

fn lla_of(m: &NeighbourMessage) -> Option<&[u8]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => Some(l.as_slice()),
        _ => None,
    })
}

async fn dump(h: &Handle, family: AddressFamily, index: u32) -> Result<Vec<NeighbourMessage>> {
    let all: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("list neighbour entries"))?;
    Ok(all
        .into_iter()
        .filter(|m| m.header.ifindex == index)
        .collect())
}

async fn delete_entry(h: &Handle, m: NeighbourMessage, what: &str) -> Result<()> {
    match h.neighbours().del(m).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(ENOENT) => Ok(()),
        Err(e) => Err(nl_err(format!("remove {what}"))(e)),
    }
}

/// Makes the VXLAN device `index` forward exactly to `peers` (overlay address → node address):
/// adds or replaces the entries that are missing or differ and removes the others.
pub(crate) async fn sync_peers(
    h: &Handle,
    index: u32,
    peers: &BTreeMap<Ipv4Addr, Ipv4Addr>,
    rep: &mut Repairs,
) -> Result<()> {
    // FDB: MAC → node address, on the device itself ("self"), static.
    let want_fdb: BTreeMap<[u8; 6], Ipv4Addr> =
        peers.iter().map(|(a, node)| (mac_of(*a), *node)).collect();
    let mut have_fdb: BTreeMap<[u8; 6], Ipv4Addr> = BTreeMap::new();
    for m in dump(h, AddressFamily::Bridge, index).await? {
        if !m.header.flags.contains(NeighbourFlags::Own) {
            // The bridge's own entries for this port (learned, or its MAC).
            continue;
        }
        let mac: Option<[u8; 6]> = lla_of(&m).and_then(|l| l.try_into().ok());
        match (mac, dst_of(&m)) {
            (Some(mac), Some(dst)) if want_fdb.get(&mac) == Some(&dst) => {
                have_fdb.insert(mac, dst);
            }
            _ => {
                delete_entry(h, m, "a stale forwarding entry").await?;
                rep.removed += 1;
            }
        }
    }
    for (mac, node) in &want_fdb {
        if have_fdb.contains_key(mac) {
            continue;
        }
        h.neighbours()
            .add_bridge(index, mac)
            .destination(IpAddr::V4(*node))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("add the forwarding entry to {node}")))?;
        rep.added += 1;
    }
    // Neighbours: overlay address → MAC, answered by the device's ARP proxy.
    let mut have_neigh: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for m in dump(h, AddressFamily::Inet, index).await? {
        let ok = dst_of(&m).is_some_and(|ip| {
            peers.contains_key(&ip)
                && lla_of(&m) == Some(mac_of(ip).as_slice())
                && m.header.state == NeighbourState::Permanent
        });
        match dst_of(&m) {
            Some(ip) if ok => {
                have_neigh.insert(ip);
            }
            _ => {
                delete_entry(h, m, "a stale neighbour entry").await?;
                rep.removed += 1;
            }
        }
    }
    for addr in peers.keys() {
        if have_neigh.contains(addr) {
            continue;
        }
        h.neighbours()
            .add(index, IpAddr::V4(*addr))
            .link_layer_address(&mac_of(*addr))
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("add the neighbour entry of {addr}")))?;
        rep.added += 1;
    }
    Ok(())
}

/// A task's interface on an overlay network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    /// The node end, a port of the network's bridge.
    pub host_ifname: String,
    /// The name inside the task (`eth1`, ...).
    pub ifname: String,
    pub vni: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// Creates `link` (the network's devices must exist): a veth pair whose node end joins the
/// bridge and whose other end is created inside the task's namespace with the derived MAC, the
/// address and MTU 1450. A leftover of an earlier try (either end) is replaced.
pub(crate) async fn wire(handles: &Handles, link: &Link) -> Result<()> {
    let host = &handles.host;
    let task = handles
        .task
        .as_ref()
        .expect("wire needs the task namespace");
    let br_name = bridge_name(link.vni);
    let bridge = link_by_name(host, &br_name)
        .await?
        .ok_or_else(|| Error::Netlink {
            action: format!("attach {} to network {}", link.ifname, link.vni),
            message: format!("bridge {br_name} does not exist"),
        })?;
    delete_link(host, &link.host_ifname).await?;
    delete_link(&task.handle, &link.ifname).await?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(link.ifname.clone())
        .address(mac_of(link.addr).to_vec())
        .mtu(OVERLAY_MTU)
        .setns_by_fd(task.file.as_raw_fd())
        .build();
    let veth = LinkVeth::new(&link.host_ifname, &link.ifname)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(OVERLAY_MTU)
        .controller(bridge.header.index)
        .up()
        .build();
    host.link()
        .add(veth)
        .execute()
        .await
        .map_err(nl_err(format!(
            "create veth pair {} / {}",
            link.host_ifname, link.ifname
        )))?;
    let t = &task.handle;
    let inside = link_by_name(t, &link.ifname)
        .await?
        .ok_or_else(|| Error::Netlink {
            action: format!("find {} in the task namespace", link.ifname),
            message: "it is missing right after it was created".into(),
        })?
        .header
        .index;
    t.address()
        .add(inside, IpAddr::V4(link.addr), link.prefix_len)
        .execute()
        .await
        .map_err(nl_err(format!(
            "add address {}/{} to {}",
            link.addr, link.prefix_len, link.ifname
        )))?;
    set_up(t, inside, &link.ifname).await
}

/// Where a task's overlay interface stands.
pub(crate) enum Port {
    /// An up port of its network's bridge.
    Ok,
    /// It was off its bridge or down, and has been put back.
    Fixed,
    /// Its node end is gone (and with it the pair): it must be wired again.
    Missing,
}

/// Checks `link`'s node end and puts it back on its bridge, up, when it is not.
pub(crate) async fn port_of(h: &Handle, link: &Link) -> Result<Port> {
    let Some(end) = link_by_name(h, &link.host_ifname).await? else {
        return Ok(Port::Missing);
    };
    let br_name = bridge_name(link.vni);
    let Some(bridge) = link_by_name(h, &br_name).await? else {
        return Ok(Port::Missing);
    };
    if controller(&end) == Some(bridge.header.index) && is_up(&end) {
        return Ok(Port::Ok);
    }
    h.link()
        .set(
            LinkUnspec::new_with_index(end.header.index)
                .controller(bridge.header.index)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl_err(format!(
            "put {} back on {br_name}",
            link.host_ifname
        )))?;
    Ok(Port::Fixed)
}
