//! shoal's D-Bus API, the only crate that knows zbus.
//!
//! - Server: [`serve`] puts the `org.shoal.Shoal1.Manager` interface at `/org/shoal/Shoal1` on
//!   the system bus and answers calls with a [`Backend`] the daemon implements; [`Events`]
//!   emits its signals.
//! - Client: [`Client`] (used by the `shoal` CLI) wraps the generated proxy.
//! - [`objects`]: one object per node, service, stack and task under `/org/shoal/Shoal1`, with
//!   an `org.freedesktop.DBus.ObjectManager` and coalesced `PropertiesChanged` signals.
//! - [`props`]: service specs as systemd-style `a(sv)` property lists, both ways.
//!
//! Reading is open to every local user; changing needs root or the `shoal` group. The D-Bus
//! policy (`systemd/org.shoal.Shoal1.conf`) enforces that, not this crate.

pub mod backend;
pub mod client;
mod error;
pub mod objects;
pub mod props;
mod server;
pub mod types;

pub use backend::{Backend, ServiceDetail, Snapshot, SpecPatch};
pub use client::{Client, ClientError, ServiceInspect, TaskEvent, TaskHealthView};
pub use error::ApiError;
pub use props::{InvalidSpec, Property, apply_properties, port_properties, spec_to_properties};
pub use server::{Events, Manager, ServerError, serve, serve_at_address};
pub use types::*;
/// The bus connection [`serve`] returns; keep it alive to keep serving.
pub use zbus::Connection;

/// Well-known name on the system bus.
pub const BUS_NAME: &str = "org.shoal.Shoal1";
/// The object that carries the manager interface.
pub const OBJECT_PATH: &str = "/org/shoal/Shoal1";
/// The interface name.
pub const MANAGER_INTERFACE: &str = "org.shoal.Shoal1.Manager";
/// Prefix of the named errors.
pub const ERROR_PREFIX: &str = "org.shoal.Shoal1.Error";

#[cfg(feature = "fake")]
pub mod fake;
