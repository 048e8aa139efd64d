//! shoal's configuration files: the cluster file (`/etc/shoal/cluster.toml`) and the stack files
//! (`/etc/shoal/stacks/NAME.toml`), turned into validated values.
//!
//! - [`parse_cluster`] / [`load_cluster_file`] give a [`ClusterConfig`]: the node-local parts
//!   (`[node]`, `[network]`, `[cluster]` bootstrap/join/token_file, `[containerd]`,
//!   `[registries."host:port"]`, `[paths]`) plus the cluster-wide [`model::ClusterSettings`] from
//!   `[cluster.settings]`. [`ClusterConfig::default_single_node`] is the embedded default used
//!   when there is no cluster file.
//! - [`parse_stack`] / [`load_stack_file`] / [`load_stacks_dir`] give [`model::StackSpec`]s whose
//!   services carry full names (`STACK_SERVICE`) and `stack = Some(STACK)`, with every default
//!   applied.
//!
//! The TOML is parsed into a spanned tree and walked by hand, so that one pass reports every
//! problem of every file at once: syntax errors, unknown keys (with a suggestion when one is
//! close), keys of the contract that are not supported yet, wrong types and invalid values. Each
//! [`Diagnostic`] renders as `file:line:column: message`; [`Errors`] holds them all.
//!
//! [`compose`] reads Compose files (`docker-stack.yml`): it maps them onto a stack file and
//! checks that with the same stack validator, reporting every problem at its place in the YAML.
//! The daemon never reads them: the CLI converts them before deploying, the NixOS module when
//! the system is built, and a Compose file in the stacks directory is an error.
//!
//! [`placement`] is the one validator of placement constraints, spread preferences and replica
//! bounds, for stack files, CLI flags and D-Bus alike.
//!
//! [`units`] exposes the small value parsers (durations, memory sizes, ports, mounts, command
//! lines, names, image references, signals) for reuse by the CLI.
//!
//! No file here does IO except the `load_*` functions, which only read files.

mod cluster;
pub mod compose;
mod diag;
pub mod network;
pub mod placement;
pub mod resolver;
pub mod sandbox;
mod stack;
pub mod units;
mod walk;

pub use cluster::{
    ClusterConfig, ClusterSection, ContainerdConfig, DEFAULT_BRIDGE, DEFAULT_CLUSTER_FILE,
    DEFAULT_CONTAINERD_ADDRESS, DEFAULT_CONTAINERD_NAMESPACE, DEFAULT_PORT, DEFAULT_RUN_DIR,
    DEFAULT_STACKS_DIR, DEFAULT_STATE_DIR, DEFAULT_SUBNET, ImagesConfig, MIN_CERT_EXPIRY,
    NetworkConfig, NodeConfig, PathsConfig, RegistryConfig, load_cluster_file, parse_cluster,
};
pub use diag::{Diagnostic, Errors};
pub use stack::{
    DEFAULT_STOP_GRACE_PERIOD, DEFAULT_STOP_SIGNAL, LoadedStack, load_stack_file, load_stacks_dir,
    parse_stack, parse_stack_named, stack_name_from_path,
};

#[cfg(test)]
mod tests;
