//! Test harnesses shared by shoal's integration tests: real containerd, a private dbus-daemon
//! loading the shipped policy, a real OCI registry, and test images built from busybox-static.

pub mod containerd;
pub mod dbus;
pub mod images;
pub mod lan;
pub mod node;
pub mod registry;
