//! containerd test harness
