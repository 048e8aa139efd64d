//! dbus test harness
