//! The kernel side of attachments, spoken over rtnetlink in-process: the bridge, the veth pairs,
//! and the address, routes and links inside task namespaces.
//!
//! A netlink socket belongs to the network namespace of the thread that opened it. Every
//! operation therefore runs on a short-lived dedicated OS thread ([`run`]) with a current-thread
//! tokio runtime: it opens a socket in the node's namespace first and then, when the operation
//! needs one, joins the task's namespace (`setns`) and opens a second socket there. No tokio worker
//! or blocking-pool thread ever changes namespace.

use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::error::{Error, Result};

/// The task's interface inside its namespace.
pub(crate) const TASK_IFNAME: &str = "eth0";

/// The loopback interface has index 1 in every network namespace.
const LOOPBACK_INDEX: u32 = 1;

const EEXIST: i32 = nix::errno::Errno::EEXIST as i32;
const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;

/// The positive errno of a netlink error reply, if it is one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

/// Maps a netlink failure to [`Error::Netlink`], naming what was being done.
pub(crate) fn nl_err(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let action = action.into();
    move |e| Error::Netlink {
        action,
        message: match &e {
            // rtnetlink's own text wraps the errno in "Received a netlink error message".
            rtnetlink::Error::NetlinkError(msg) => msg.to_io().to_string(),
            other => other.to_string(),
        },
    }
}

/// The two netlink handles an operation gets: one in the node's namespace and, when asked for,
/// one in the task's.
pub(crate) struct Handles {
    pub host: Handle,
    pub task: Option<TaskNs>,
}

/// A handle in a task's namespace, and that namespace's file (to move links into it).
pub(crate) struct TaskNs {
    pub handle: Handle,
    pub file: File,
}

/// Runs `op` on a dedicated thread with a netlink handle in the node's namespace and, when
/// `netns` is given, one in that namespace.
pub(crate) fn run<T, F, Fut>(netns: Option<&Path>, op: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handles) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let netns: Option<PathBuf> = netns.map(Path::to_owned);
    std::thread::Builder::new()
        .name("shoal-netlink".into())
        .spawn(move || -> Result<T> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| Error::Worker(format!("cannot start a netlink runtime: {e}")))?;
            rt.block_on(async move {
                let host = connect("the node's network namespace")?;
                let task = match &netns {
                    Some(path) => {
                        let file = File::open(path)
                            .map_err(|e| Error::io("open network namespace", path, e))?;
                        // This thread is ours alone and ends with the operation.
                        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| {
                            Error::Netns {
                                action: "join",
                                path: path.clone(),
                                source,
                            }
                        })?;
                        let handle = connect(&format!("network namespace {}", path.display()))?;
                        Some(TaskNs { handle, file })
                    }
                    None => None,
                };
                op(Handles { host, task }).await
            })
        })
        .map_err(|e| Error::Worker(format!("cannot spawn a netlink thread: {e}")))?
        .join()
        .map_err(|_| Error::Worker("netlink thread panicked".into()))?
}

/// Opens a netlink socket in the calling thread's namespace; its connection task runs on the
/// thread's own runtime and ends with it.
fn connect(place: &str) -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| Error::Netlink {
        action: format!("open a netlink socket in {place}"),
        message: e.to_string(),
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The link called `name`, or `None` when there is none.
pub(crate) async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("look up link {name}"))(e)),
    }
}

pub(crate) fn is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

pub(crate) fn controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

fn is_bridge(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

pub(crate) async fn set_up(h: &Handle, index: u32, what: &str) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl_err(format!("bring up {what}")))
}

/// Creates the bridge with `gateway/prefix_len` and brings it up; whatever already exists is kept.
/// Returns its index.
pub(crate) async fn ensure_bridge(
    h: &Handle,
    name: &str,
    gateway: Ipv4Addr,
    prefix_len: u8,
) -> Result<u32> {
    let link = match link_by_name(h, name).await? {
        Some(link) => link,
        None => {
            match h.link().add(LinkBridge::new(name).build()).execute().await {
                Ok(()) => tracing::info!(bridge = name, "bridge created"),
                // Another process made it in the meantime.
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(nl_err(format!("create bridge {name}"))(e)),
            }
            link_by_name(h, name).await?.ok_or_else(|| Error::Netlink {
                action: format!("find bridge {name}"),
                message: "it vanished right after it was created".into(),
            })?
        }
    };
    if !is_bridge(&link) {
        return Err(Error::Netlink {
            action: format!("use {name} as the node bridge"),
            message: "a link of another kind has that name: rename it or configure another bridge"
                .into(),
        });
    }
    let index = link.header.index;
    // A bridge without an explicitly set MAC takes the lowest MAC of its ports, which changes as
    // tasks come and go and leaves the tasks' ARP entry of the gateway stale. Setting it (to its
    // current value) pins it, as the CNI bridge plugin does.
    let mac = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.clone()),
        _ => None,
    });
    if let Some(mac) = mac {
        h.link()
            .set(LinkUnspec::new_with_index(index).address(mac).build())
            .execute()
            .await
            .map_err(nl_err(format!("pin the MAC address of bridge {name}")))?;
    }
    match h
        .address()
        .add(index, IpAddr::V4(gateway), prefix_len)
        .execute()
        .await
    {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(EEXIST) => {}
        Err(e) => {
            return Err(nl_err(format!(
                "add address {gateway}/{prefix_len} to bridge {name}"
            ))(e));
        }
    }
    if !is_up(&link) {
        set_up(h, index, &format!("bridge {name}")).await?;
    }
    Ok(index)
}

/// Deletes the link `name`; a missing link is fine. Returns whether it existed.
pub(crate) async fn delete_link(h: &Handle, name: &str) -> Result<bool> {
    let Some(link) = link_by_name(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
        Err(e) => Err(nl_err(format!("delete link {name}"))(e)),
    }
}

/// What a task's wiring is made of.
pub(crate) struct Wiring {
    pub bridge: String,
    pub host_ifname: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// The bridge is gone (deleted behind shoal's back); the caller recreates it and retries.
pub(crate) struct BridgeMissing;

/// Wires the task namespace to the bridge: a veth pair whose node end joins the bridge (hairpin
/// on) and whose other end is created directly inside the namespace as `eth0`, with the task's
/// address and a default route through the gateway; `lo` is brought up too.
pub(crate) async fn wire(
    handles: &Handles,
    w: &Wiring,
) -> Result<std::result::Result<(), BridgeMissing>> {
    let host = &handles.host;
    let task = handles
        .task
        .as_ref()
        .expect("wire needs the task namespace");
    let Some(bridge) = link_by_name(host, &w.bridge).await? else {
        return Ok(Err(BridgeMissing));
    };
    // The node end is created up and already a port of the bridge, the task end directly inside
    // the namespace: one request instead of a create, a move, a rename and two link changes. (The
    // task end cannot be created up: the kernel opens it before the pair is linked, ENOTCONN.)
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(TASK_IFNAME.to_owned())
        .setns_by_fd(task.file.as_raw_fd())
        .build();
    let veth = LinkVeth::new(&w.host_ifname, TASK_IFNAME)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .controller(bridge.header.index)
        .up()
        .build();
    let created = match host.link().add(veth.clone()).execute().await {
        // A leftover of an earlier attach of this task whose namespace is gone but still held
        // (by a process that joined it): replace it.
        Err(e) if errno(&e) == Some(EEXIST) => {
            tracing::warn!(veth = %w.host_ifname, "replacing a leftover veth");
            delete_link(host, &w.host_ifname).await?;
            host.link().add(veth).execute().await
        }
        other => other,
    };
    created.map_err(nl_err(format!(
        "create veth pair {} / {TASK_IFNAME}",
        w.host_ifname
    )))?;
    let node_end = link_by_name(host, &w.host_ifname)
        .await?
        .ok_or_else(|| Error::Netlink {
            action: format!("find veth {}", w.host_ifname),
            message: "it vanished right after it was created".into(),
        })?;
    // With br_netfilter loaded, a task reaching a port it publishes itself (through the node's
    // address) gets its DNAT-ed frames back through its own bridge port.
    host.link()
        .set_port(
            LinkBridgePort::new(node_end.header.index)
                .hairpin(true)
                .build(),
        )
        .execute()
        .await
        .map_err(nl_err(format!("turn on hairpin mode of {}", w.host_ifname)))?;

    let t = &task.handle;
    let eth0 = link_by_name(t, TASK_IFNAME)
        .await?
        .ok_or_else(|| Error::Netlink {
            action: format!("find {TASK_IFNAME} in the task namespace"),
            message: "it is missing right after it was created".into(),
        })?
        .header
        .index;
    set_up(t, LOOPBACK_INDEX, "lo").await?;
    t.address()
        .add(eth0, IpAddr::V4(w.ip), w.prefix_len)
        .execute()
        .await
        .map_err(nl_err(format!(
            "add address {}/{} to {TASK_IFNAME}",
            w.ip, w.prefix_len
        )))?;
    set_up(t, eth0, TASK_IFNAME).await?;
    let default_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(w.gateway)
        .output_interface(eth0)
        .build();
    t.route()
        .add(default_route)
        .execute()
        .await
        .map_err(nl_err(format!("add the default route via {}", w.gateway)))?;
    Ok(Ok(()))
}

/// Verifies a task's wiring; returns what is wrong, if anything.
pub(crate) async fn inspect(
    handles: &Handles,
    w: &Wiring,
) -> Result<std::result::Result<(), String>> {
    let host = &handles.host;
    let task = handles
        .task
        .as_ref()
        .expect("inspect needs the task namespace");
    let Some(bridge) = link_by_name(host, &w.bridge).await? else {
        return Ok(Err(format!("bridge {} does not exist", w.bridge)));
    };
    let Some(node_end) = link_by_name(host, &w.host_ifname).await? else {
        return Ok(Err(format!("veth {} does not exist", w.host_ifname)));
    };
    if controller(&node_end) != Some(bridge.header.index) {
        return Ok(Err(format!(
            "veth {} is not a port of bridge {}",
            w.host_ifname, w.bridge
        )));
    }
    if !is_up(&node_end) {
        return Ok(Err(format!("veth {} is down", w.host_ifname)));
    }
    let t = &task.handle;
    let Some(eth0) = link_by_name(t, TASK_IFNAME).await? else {
        return Ok(Err(format!(
            "{TASK_IFNAME} is missing in the task namespace"
        )));
    };
    if !is_up(&eth0) {
        return Ok(Err(format!("{TASK_IFNAME} is down")));
    }
    let index = eth0.header.index;
    let addresses: Vec<_> = t
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl_err(format!("list the addresses of {TASK_IFNAME}")))?;
    let has_address = addresses.iter().any(|a| {
        a.header.prefix_len == w.prefix_len
            && a.attributes.iter().any(
                |attr| matches!(attr, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == w.ip),
            )
    });
    if !has_address {
        return Ok(Err(format!(
            "{TASK_IFNAME} lacks its address {}/{}",
            w.ip, w.prefix_len
        )));
    }
    let routes: Vec<_> = t
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("list the routes of the task namespace"))?;
    let has_default = routes.iter().any(|r| {
        r.header.destination_prefix_length == 0
            && r.attributes.iter().any(|a| {
                matches!(a, RouteAttribute::Gateway(RouteAddress::Inet(gw)) if *gw == w.gateway)
            })
            && r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index))
    });
    if !has_default {
        return Ok(Err(format!(
            "the default route via {} on {TASK_IFNAME} is missing",
            w.gateway
        )));
    }
    Ok(Ok(()))
}
