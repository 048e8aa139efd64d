//! shoal-dbus
