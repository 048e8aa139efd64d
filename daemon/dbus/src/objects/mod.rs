//! The object tree: one object per node, service, stack and task under `/org/shoal/Shoal1`,
//! announced through `org.freedesktop.DBus.ObjectManager` on `/org/shoal/Shoal1`.
//!
//! [`run`] keeps the tree in line with what the [`Backend`] shows (level-triggered: it reads a
//! whole [`Snapshot`] and compares it with what is published). It adds and removes objects
//! (zbus emits `InterfacesAdded`/`InterfacesRemoved`), and for an object whose row changed it
//! emits one `PropertiesChanged` with exactly the properties whose value changed. A pass runs
//! when the daemon says its state changed, and at least every `poll` (a worker holds no state of
//! its own: the backend asks the leader), but never more often than every `coalesce`: a deploy
//! of 100 tasks gives each task one signal per pass, not one per state report.

mod ifaces;
pub mod path;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use zbus::object_server::Interface;
use zbus::zvariant::OwnedVariant;
use zbus::{Connection, Variant};

pub use self::ifaces::{
    INTERFACE_VERSION, NodeObject, ServiceObject, StackEntry, StackObject, TaskEntry, TaskObject,
};
use self::path::{Kind, object_path};
use crate::backend::{Backend, ServiceDetail, Snapshot};
use crate::server::Manager;
use crate::types::NodeRow;
use crate::{MANAGER_INTERFACE, OBJECT_PATH};

/// How often [`run`] looks at the state.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// At most one pass per this period: changes in between are published together.
    pub coalesce: Duration,
    /// A pass at least this often, whether or not a change was announced.
    pub poll: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            coalesce: Duration::from_millis(150),
            poll: Duration::from_secs(2),
        }
    }
}

/// Keep the object tree on `conn` in line with `backend`'s state until `conn` is closed. A new
/// value on `changes` (e.g. the store's applied state) asks for a pass; a closed channel just
/// leaves the periodic passes.
pub async fn run<B: Backend, T: Send + Sync>(
    conn: Connection,
    backend: Arc<B>,
    mut changes: watch::Receiver<T>,
    pacing: Pacing,
) {
    let mut tree = Tree::new(conn, backend.clone());
    let mut open = true;
    loop {
        let started = tokio::time::Instant::now();
        tracing::debug!("object tree pass");
        match backend.snapshot().await {
            Ok(snapshot) => {
                tracing::debug!(
                    nodes = snapshot.nodes.len(),
                    services = snapshot.services.len(),
                    tasks = snapshot.tasks.len(),
                    stacks = snapshot.stacks.len(),
                    "object tree snapshot"
                );
                if let Err(e) = tree.apply(snapshot).await {
                    tracing::warn!(error = %e, "failed to update the D-Bus object tree");
                }
            }
            Err(e) => tracing::debug!(error = %e.message(), "no state for the D-Bus object tree"),
        }
        if let Err(e) = tree.manager_changed().await {
            tracing::warn!(error = %e, "failed to emit the manager's PropertiesChanged");
        }
        tokio::select! {
            r = changes.changed(), if open => open = r.is_ok(),
            _ = tokio::time::sleep(pacing.poll) => {}
        }
        tokio::time::sleep_until(started + pacing.coalesce).await;
    }
}

/// What one kind of object needs for the tree to publish it.
trait Published<B: Backend>: Interface + Sized {
    type Row: PartialEq + Clone + Send + Sync + 'static;
    const KIND: Kind;
    fn new(backend: &Arc<B>, row: Self::Row) -> Self;
    fn replace(&mut self, row: Self::Row);
    /// Two rows at one path are the same thing (a service removed and created again under its
    /// name is a new object).
    fn same(_a: &Self::Row, _b: &Self::Row) -> bool {
        true
    }
}

impl<B: Backend> Published<B> for NodeObject<B> {
    type Row = NodeRow;
    const KIND: Kind = Kind::Node;
    fn new(backend: &Arc<B>, row: NodeRow) -> Self {
        NodeObject {
            backend: backend.clone(),
            row,
        }
    }
    fn replace(&mut self, row: NodeRow) {
        self.row = row;
    }
}

impl<B: Backend> Published<B> for ServiceObject<B> {
    type Row = ServiceDetail;
    const KIND: Kind = Kind::Service;
    fn new(backend: &Arc<B>, detail: ServiceDetail) -> Self {
        ServiceObject {
            backend: backend.clone(),
            detail,
        }
    }
    fn replace(&mut self, detail: ServiceDetail) {
        self.detail = detail;
    }
    fn same(a: &ServiceDetail, b: &ServiceDetail) -> bool {
        a.service.id == b.service.id
    }
}

impl<B: Backend> Published<B> for StackObject<B> {
    type Row = StackEntry;
    const KIND: Kind = Kind::Stack;
    fn new(backend: &Arc<B>, row: StackEntry) -> Self {
        StackObject {
            backend: backend.clone(),
            row,
        }
    }
    fn replace(&mut self, row: StackEntry) {
        self.row = row;
    }
}

impl<B: Backend> Published<B> for TaskObject {
    type Row = TaskEntry;
    const KIND: Kind = Kind::Task;
    fn new(_: &Arc<B>, entry: TaskEntry) -> Self {
        TaskObject { entry }
    }
    fn replace(&mut self, entry: TaskEntry) {
        self.entry = entry;
    }
}

/// What is published now, by path key.
struct Tree<B: Backend> {
    conn: Connection,
    backend: Arc<B>,
    nodes: BTreeMap<String, NodeRow>,
    services: BTreeMap<String, ServiceDetail>,
    stacks: BTreeMap<String, StackEntry>,
    tasks: BTreeMap<String, TaskEntry>,
    manager: Option<HashMap<String, OwnedVariant>>,
}

impl<B: Backend> Tree<B> {
    fn new(conn: Connection, backend: Arc<B>) -> Self {
        Tree {
            conn,
            backend,
            nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            stacks: BTreeMap::new(),
            tasks: BTreeMap::new(),
            manager: None,
        }
    }

    async fn apply(&mut self, s: Snapshot) -> zbus::Result<()> {
        let mut stacks: BTreeMap<String, StackEntry> = s
            .stacks
            .into_iter()
            .map(|row| {
                let entry = StackEntry {
                    row,
                    services: Vec::new(),
                };
                (entry.row.name.clone(), entry)
            })
            .collect();
        for d in &s.services {
            if let Some(stack) = d
                .service
                .spec
                .stack
                .as_ref()
                .and_then(|n| stacks.get_mut(n))
            {
                stack.services.push(d.service.spec.name.clone());
            }
        }
        for entry in stacks.values_mut() {
            entry.services.sort();
        }
        let nodes = s.nodes.into_iter().map(|n| (n.id.clone(), n)).collect();
        let services = s
            .services
            .into_iter()
            .map(|d| (d.service.spec.name.clone(), d))
            .collect();
        let mut health = s.task_health;
        let tasks = s
            .tasks
            .into_iter()
            .map(|row| {
                let health = health.remove(&row.id);
                (row.id.clone(), TaskEntry { row, health })
            })
            .collect();
        // Services before tasks and stacks, which point at them; removals of tasks go first
        // within their own kind.
        sync::<B, NodeObject<B>>(&self.conn, &self.backend, &mut self.nodes, nodes).await?;
        sync::<B, ServiceObject<B>>(&self.conn, &self.backend, &mut self.services, services)
            .await?;
        sync::<B, StackObject<B>>(&self.conn, &self.backend, &mut self.stacks, stacks).await?;
        sync::<B, TaskObject>(&self.conn, &self.backend, &mut self.tasks, tasks).await?;
        Ok(())
    }

    /// `PropertiesChanged` for the manager interface when its values moved since the last pass.
    async fn manager_changed(&mut self) -> zbus::Result<()> {
        let server = self.conn.object_server();
        let iface = server.interface::<_, Manager<B>>(OBJECT_PATH).await?;
        let now = iface
            .get()
            .await
            .get_all(server, &self.conn, None, iface.signal_emitter())
            .await?;
        if let Some(before) = &self.manager {
            let changed = changed_properties(before, &now)?;
            if !changed.is_empty() {
                zbus::fdo::Properties::properties_changed(
                    iface.signal_emitter(),
                    zbus::names::InterfaceName::from_static_str_unchecked(MANAGER_INTERFACE),
                    changed,
                    Cow::Borrowed(&[]),
                )
                .await?;
            }
        }
        self.manager = Some(now);
        Ok(())
    }
}

/// The entries of `after` whose value differs from `before`.
fn changed_properties<'a>(
    before: &HashMap<String, OwnedVariant>,
    after: &'a HashMap<String, OwnedVariant>,
) -> zbus::Result<HashMap<&'a str, Variant<'a>>> {
    let mut out = HashMap::new();
    for (k, v) in after {
        if before.get(k) != Some(v) {
            out.insert(k.as_str(), Variant::try_from(v)?);
        }
    }
    Ok(out)
}

/// Publish `fresh` for one kind of object: remove what is gone, add what is new, and emit
/// `PropertiesChanged` for what changed.
async fn sync<B: Backend, O: Published<B>>(
    conn: &Connection,
    backend: &Arc<B>,
    known: &mut BTreeMap<String, O::Row>,
    mut fresh: BTreeMap<String, O::Row>,
) -> zbus::Result<()> {
    let server = conn.object_server();
    let gone: Vec<String> = known
        .iter()
        .filter(|(k, old)| fresh.get(*k).is_none_or(|new| !O::same(old, new)))
        .map(|(k, _)| k.clone())
        .collect();
    for key in gone {
        match server.remove::<O, _>(object_path(O::KIND, &key)).await {
            Ok(_) | Err(zbus::Error::InterfaceNotFound) => {}
            Err(e) => return Err(e),
        }
        known.remove(&key);
    }
    for (key, row) in std::mem::take(&mut fresh) {
        let path = object_path(O::KIND, &key);
        match known.get(&key) {
            None => {
                server.at(&path, O::new(backend, row.clone())).await?;
            }
            Some(old) if *old != row => {
                let iface = server.interface::<_, O>(&path).await?;
                let mut obj = iface.get_mut().await;
                let emitter = iface.signal_emitter();
                let before = obj.get_all(server, conn, None, emitter).await?;
                obj.replace(row.clone());
                let after = obj.get_all(server, conn, None, emitter).await?;
                drop(obj);
                let changed = changed_properties(&before, &after)?;
                if !changed.is_empty() {
                    zbus::fdo::Properties::properties_changed(
                        emitter,
                        O::name(),
                        changed,
                        Cow::Borrowed(&[]),
                    )
                    .await?;
                }
            }
            Some(_) => {}
        }
        known.insert(key, row);
    }
    Ok(())
}
