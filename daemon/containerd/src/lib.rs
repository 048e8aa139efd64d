//! shoal-containerd
