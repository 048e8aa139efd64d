//! `shoal`: the command-line interface of the shoal orchestrator. It talks to the local
//! `shoald` over D-Bus (`org.shoal.Shoal1` on the system bus; `DBUS_SYSTEM_BUS_ADDRESS`
//! overrides the bus), except `stack validate`, which works without a daemon.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error.

mod flags;
mod image;
mod network;
mod render;
mod rows;
mod secret;
mod stackfile;
mod wait;

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use shoal_dbus::{Client, ClientError, LogOptions, TaskFilter};

use crate::flags::{CommonFlags, CreateFlags, UpdateFlags};
use crate::wait::WaitOpts;

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "Manage a shoal cluster: services, stacks and nodes",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once per process; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show what this node knows about itself and the cluster
    Info(FormatArgs),
    /// Re-read the stack files and apply them (what `systemctl reload shoald` runs)
    Reload,
    /// Manage the cluster
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Manage nodes
    #[command(subcommand)]
    Node(NodeCmd),
    /// Manage services
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Manage stacks
    #[command(subcommand)]
    Stack(StackCmd),
    /// Manage overlay networks
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// Manage secrets
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// Manage configs
    #[command(subcommand)]
    Config(secret::SecretCmd),
    /// Manage this node's images
    #[command(subcommand)]
    Image(image::ImageCmd),
}

#[derive(Debug, Clone, Args)]
struct FormatArgs {
    /// Output format: "table" (default) or "json"
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

#[derive(Debug, Clone, Args)]
struct ListArgs {
    /// Only display IDs (names for stacks)
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    format: FormatArgs,
}

#[derive(Debug, Clone, Args)]
struct WaitArgs {
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    detach: bool,
    /// Give up waiting for convergence after this long (ns|us|ms|s|m|h)
    #[arg(long, default_value = "5m", value_parser = flags::parse_timeout)]
    timeout: Duration,
    /// Suppress progress output
    #[arg(short, long)]
    quiet: bool,
}

impl WaitArgs {
    fn opts(&self) -> WaitOpts {
        WaitOpts {
            timeout: self.timeout,
            tty: std::io::stdout().is_terminal(),
            quiet: self.quiet,
            max_failures: 3,
            rollback_requested: false,
        }
    }
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// List nodes in the cluster
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Display detailed information on one or more nodes ("self" for this node)
    Inspect {
        /// Print the information in a human friendly format
        #[arg(long)]
        pretty: bool,
        #[arg(default_value = "self")]
        nodes: Vec<String>,
    },
    /// Update a node: availability, labels
    Update {
        /// active, pause (keep tasks, place nothing new) or drain (move tasks away)
        #[arg(long, value_parser = ["active", "pause", "drain"])]
        availability: Option<String>,
        /// Add or update a node label (KEY=VALUE)
        #[arg(long = "label-add", value_name = "KEY=VALUE")]
        label_add: Vec<String>,
        /// Remove a node label
        #[arg(long = "label-rm", value_name = "KEY")]
        label_rm: Vec<String>,
        node: String,
    },
    /// Make workers managers
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the cluster
    #[command(alias = "remove")]
    Rm {
        /// Remove a node that is not down
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Form a new cluster with this node as its first manager
    Init,
    /// Join a cluster as a worker or a manager (the token decides)
    Join {
        /// The token from `shoal cluster join-token worker|manager` on a manager
        #[arg(long)]
        token: String,
        /// A manager's address (host:port; port 4600 by default)
        #[arg(required = true)]
        addrs: Vec<String>,
    },
    /// Stop this node's tasks and leave the cluster
    Leave {
        /// Leave even if this node is a manager (may break the cluster's quorum)
        #[arg(short, long)]
        force: bool,
    },
    /// Change cluster-wide settings
    Update {
        /// Heartbeat period of the nodes (a node is down after three missed ones), e.g. 1s
        #[arg(long, value_name = "DURATION")]
        heartbeat_period: Option<String>,
        /// Finished tasks kept per slot
        #[arg(long, value_name = "N")]
        task_history_limit: Option<u64>,
        /// Raft entries between snapshots
        #[arg(long, value_name = "N")]
        snapshot_interval: Option<u64>,
        /// Validity of node certificates, e.g. 2160h
        #[arg(long, value_name = "DURATION")]
        cert_expiry: Option<String>,
        /// Encrypt the raft state at rest (not supported yet)
        #[arg(long, value_name = "BOOL")]
        autolock: Option<bool>,
    },
    /// Print the token that joins a node as a worker or as a manager
    JoinToken {
        /// Print the token only
        #[arg(short, long)]
        quiet: bool,
        /// Make a new token (the old one stops working for new joins)
        #[arg(long)]
        rotate: bool,
        #[arg(value_parser = ["worker", "manager"])]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCmd {
    /// Create a new service
    Create {
        #[command(flatten)]
        create: CreateFlags,
        #[command(flatten)]
        common: CommonFlags,
        #[command(flatten)]
        wait: WaitArgs,
        /// Image reference
        image: String,
        /// Command and arguments
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List services
    #[command(alias = "list")]
    Ls(ListArgs),
    /// List the tasks of one or more services
    Ps {
        /// Filter output based on conditions provided (desired-state=running, node=NAME)
        #[arg(short, long)]
        filter: Vec<String>,
        /// Do not truncate output
        #[arg(long)]
        no_trunc: bool,
        #[command(flatten)]
        list: ListArgs,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Display detailed information on one or more services
    Inspect {
        /// Print the information in a human friendly format
        #[arg(long)]
        pretty: bool,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Scale one or more replicated services (NAME=REPLICAS)
    Scale {
        #[command(flatten)]
        wait: WaitArgs,
        #[arg(required = true, value_parser = parse_scale)]
        services: Vec<(String, u64)>,
    },
    /// Update a service
    Update {
        #[command(flatten)]
        update: UpdateFlags,
        #[command(flatten)]
        common: CommonFlags,
        #[command(flatten)]
        wait: WaitArgs,
        service: String,
    },
    /// Revert changes to a service's configuration
    Rollback {
        #[command(flatten)]
        wait: WaitArgs,
        service: String,
    },
    /// Remove one or more services
    #[command(alias = "remove")]
    Rm {
        #[command(flatten)]
        wait: WaitArgs,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Fetch the logs of a service
    Logs {
        /// Follow log output
        #[arg(short, long)]
        follow: bool,
        /// Number of lines to show from the end of the logs ("all" or a number)
        #[arg(short = 'n', long, default_value = "all")]
        tail: String,
        /// Show timestamps
        #[arg(short, long)]
        timestamps: bool,
        service: String,
    },
}

#[derive(Debug, Subcommand)]
enum StackCmd {
    /// Deploy a new stack or update an existing stack
    #[command(alias = "up")]
    Deploy {
        /// Path to the stack file: a shoal TOML stack file, or Compose files (YAML), which are
        /// merged in order when -c is given several times
        #[arg(short = 'c', long = "compose-file", alias = "file", required = true)]
        files: Vec<PathBuf>,
        /// Refuse the Compose keys that docker stack deploy ignores, instead of warning
        #[arg(long)]
        strict: bool,
        #[command(flatten)]
        wait: WaitArgs,
        name: String,
    },
    /// List stacks
    #[command(alias = "list")]
    Ls(ListArgs),
    /// List the tasks in the stack
    Ps {
        #[arg(short, long)]
        filter: Vec<String>,
        #[arg(long)]
        no_trunc: bool,
        #[command(flatten)]
        list: ListArgs,
        name: String,
    },
    /// List the services in the stack
    Services {
        #[command(flatten)]
        list: ListArgs,
        name: String,
    },
    /// Remove one or more stacks
    #[command(alias = "remove", alias = "down")]
    Rm {
        #[command(flatten)]
        wait: WaitArgs,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Check stack files without a daemon; prints every problem as file:line:col: message
    Validate {
        /// Refuse the Compose keys that docker stack deploy ignores, instead of warning
        #[arg(long)]
        strict: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the shoal TOML stack file (or, with --nix, the NixOS module's attribute set) that
    /// Compose files convert to; several files are merged in order
    Convert {
        /// Write to this file instead of standard output
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Print the attribute set for services.shoal.stacks.<name>.settings
        #[arg(long)]
        nix: bool,
        /// The stack name (default: the first file's name without its extension)
        #[arg(long)]
        name: Option<String>,
        /// Refuse the Compose keys that docker stack deploy ignores, instead of warning
        #[arg(long)]
        strict: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn parse_scale(s: &str) -> Result<(String, u64), String> {
    let (name, n) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid scale specifier {s:?}: expected SERVICE=REPLICAS"))?;
    if name.is_empty() {
        return Err(format!(
            "invalid scale specifier {s:?}: the service name is empty"
        ));
    }
    let n = n
        .parse::<u64>()
        .map_err(|_| format!("invalid replicas value {n:?}: expected a non-negative number"))?;
    let n = spec::placement::check_replicas(n)?;
    Ok((name.to_string(), n))
}

fn print_json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v).context("failed to encode JSON")?;
    println!("{text}");
    Ok(())
}

fn json(args: &FormatArgs) -> bool {
    args.format == "json"
}

/// After `service rm` / `stack rm`: wait until the removed services' tasks are gone (unless
/// `--detach`), then fail with every name that could not be removed.
async fn finish_removal(
    c: &Client,
    removed: &[String],
    failed: &[String],
    wait: &WaitArgs,
) -> Result<()> {
    if !wait.detach && !removed.is_empty() {
        wait::removed(c, removed, wait.opts()).await?;
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// Print a listing the way every `ls`/`ps` does: ids with `-q`, JSON with `--format json`,
/// otherwise the table `table` renders.
fn print_listing<T: Serialize>(
    list: &ListArgs,
    rows: &[T],
    id: impl Fn(&T) -> &str,
    table: impl FnOnce(&[T]) -> String,
) -> Result<()> {
    if list.quiet {
        rows.iter().for_each(|r| println!("{}", id(r)));
    } else if json(&list.format) {
        print_json(rows)?;
    } else {
        print!("{}", table(rows));
    }
    Ok(())
}

async fn connect() -> Result<Client> {
    Ok(Client::connect_system().await?)
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Info(f) => {
            let c = connect().await?;
            let info = c.info().await?;
            let details = c.cluster_details().await.unwrap_or_default();
            if json(&f) {
                let mut v = serde_json::to_value(&info)?;
                v["cluster"] = serde_json::to_value(&details)?;
                return print_json(&v);
            }
            render::info(&info, &details);
            Ok(())
        }
        Cmd::Reload => {
            let c = connect().await?;
            let r = c.reload().await?;
            let show = |label: &str, v: &[String]| {
                if !v.is_empty() {
                    println!("{label}: {}", v.join(", "));
                }
            };
            show("added", &r.added);
            show("changed", &r.changed);
            show("removed", &r.removed);
            show("unchanged", &r.unchanged);
            if r.added.is_empty() && r.changed.is_empty() && r.removed.is_empty() {
                println!("reload: nothing changed");
            }
            Ok(())
        }
        Cmd::Cluster(cmd) => cluster(cmd).await,
        Cmd::Node(cmd) => node(cmd).await,
        Cmd::Service(cmd) => service(cmd).await,
        Cmd::Stack(cmd) => stack(cmd).await,
        Cmd::Network(cmd) => network::run(&connect().await?, cmd).await,
        Cmd::Secret(cmd) => secret::run(&connect().await?, model::SecretKind::Secret, cmd).await,
        Cmd::Config(cmd) => secret::run(&connect().await?, model::SecretKind::Config, cmd).await,
        Cmd::Image(cmd) => image::run(&connect().await?, cmd).await,
    }
}

async fn cluster(cmd: ClusterCmd) -> Result<()> {
    let c = connect().await?;
    match cmd {
        ClusterCmd::Init => {
            let id = c.cluster_init().await?;
            println!("Cluster initialized: {id}; this node is now its manager.\n");
            let token = c.join_token("worker", false).await?;
            println!("To add a worker to this cluster, run the following command:\n");
            println!("    shoal cluster join --token {token} ADDRESS_OF_THIS_NODE:4600\n");
            println!(
                "To add a manager, run `shoal cluster join-token manager` and follow the instructions."
            );
        }
        ClusterCmd::Join { token, addrs } => {
            let role = c.cluster_join(&token, &addrs).await?;
            println!("This node joined the cluster as a {role}.");
        }
        ClusterCmd::Leave { force } => {
            c.cluster_leave(force).await?;
            println!("Node left the cluster.");
        }
        ClusterCmd::Update {
            heartbeat_period,
            task_history_limit,
            snapshot_interval,
            cert_expiry,
            autolock,
        } => {
            let mut m = std::collections::BTreeMap::new();
            if let Some(v) = heartbeat_period {
                m.insert("heartbeat_period".to_string(), v);
            }
            if let Some(v) = task_history_limit {
                m.insert("task_history_limit".to_string(), v.to_string());
            }
            if let Some(v) = snapshot_interval {
                m.insert("snapshot_interval".to_string(), v.to_string());
            }
            if let Some(v) = cert_expiry {
                m.insert("cert_expiry".to_string(), v);
            }
            if let Some(v) = autolock {
                m.insert("autolock".to_string(), v.to_string());
            }
            if m.is_empty() {
                anyhow::bail!("nothing to update: give at least one setting (see --help)");
            }
            c.update_cluster(&m).await?;
            println!("Cluster updated.");
        }
        ClusterCmd::JoinToken {
            quiet,
            rotate,
            role,
        } => {
            let token = c.join_token(&role, rotate).await?;
            if quiet {
                println!("{token}");
            } else {
                if rotate {
                    println!("Successfully rotated {role} join token.\n");
                }
                println!("To add a {role} to this cluster, run the following command:\n");
                println!("    shoal cluster join --token {token} ADDRESS_OF_A_MANAGER:4600\n");
                println!("or write the token to the node's token_file and set [cluster] join.");
            }
        }
    }
    Ok(())
}

async fn node(cmd: NodeCmd) -> Result<()> {
    let c = connect().await?;
    match cmd {
        NodeCmd::Update {
            availability,
            label_add,
            label_rm,
            node,
        } => {
            let mut labels_add = std::collections::BTreeMap::new();
            for l in &label_add {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                labels_add.insert(k.to_string(), v.to_string());
            }
            let change = shoal_dbus::NodeChange {
                availability,
                role: None,
                labels_add,
                labels_rm: label_rm,
            };
            c.update_node(&node, &change).await?;
            println!("{node}");
        }
        NodeCmd::Promote { nodes } => {
            for n in &nodes {
                let change = shoal_dbus::NodeChange {
                    role: Some("manager".into()),
                    ..Default::default()
                };
                c.update_node(n, &change).await?;
                println!("Node {n} promoted to a manager in the cluster.");
            }
        }
        NodeCmd::Demote { nodes } => {
            for n in &nodes {
                let change = shoal_dbus::NodeChange {
                    role: Some("worker".into()),
                    ..Default::default()
                };
                c.update_node(n, &change).await?;
                println!("Manager {n} demoted in the cluster.");
            }
        }
        NodeCmd::Rm { force, nodes } => {
            for n in &nodes {
                c.remove_node(n, force).await?;
                println!("{n}");
            }
        }
        NodeCmd::Ls(l) => {
            let rows = c.list_nodes().await?;
            print_listing(&l, &rows, |n| &n.id, render::node_ls)?;
        }
        NodeCmd::Inspect { pretty, nodes } => {
            let mut out = Vec::new();
            for n in &nodes {
                out.push(c.inspect_node(n).await?);
            }
            if pretty {
                for n in &out {
                    println!("ID:\t\t\t{}", n.id);
                    println!("Hostname:\t\t{}", n.name);
                    println!("Role:\t\t\t{}", n.role);
                    println!("Status:\t\t\t{}", n.status);
                    println!("Availability:\t\t{}", n.availability);
                    if !n.manager_status.is_empty() {
                        println!("Manager Status:\t\t{}", n.manager_status);
                    }
                    println!("Address:\t\t{}", n.addr);
                    println!("Version:\t\t{}", n.version);
                    for (k, v) in &n.labels {
                        println!("Label:\t\t\t{k}={v}");
                    }
                }
            } else {
                print_json(&out)?;
            }
        }
    }
    Ok(())
}

fn task_filter(filters: &[String]) -> Result<TaskFilter> {
    let mut f = TaskFilter::default();
    for s in filters {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid filter {s:?}: expected KEY=VALUE"))?;
        match k {
            "desired-state" => {
                f.desired_state = Some(model::TaskState::parse(v).ok_or_else(|| {
                    anyhow!(
                        "invalid desired-state {v:?}: expected running, shutdown, accepted, ..."
                    )
                })?)
            }
            "node" => f.node = Some(v.to_string()),
            other => bail!("invalid filter {other:?}: use desired-state=STATE or node=NODE"),
        }
    }
    Ok(f)
}

async fn print_tasks(
    c: &Client,
    filters: Vec<TaskFilter>,
    list: &ListArgs,
    no_trunc: bool,
) -> Result<()> {
    let mut tasks = Vec::new();
    for f in &filters {
        tasks.extend(c.list_tasks(f).await?);
    }
    render::sort_tasks(&mut tasks);
    if list.quiet {
        tasks.iter().for_each(|t| println!("{}", t.id));
        return Ok(());
    }
    let health = c.task_health().await?;
    if json(&list.format) {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            #[serde(flatten)]
            row: &'a shoal_dbus::TaskRow,
            #[serde(skip_serializing_if = "Option::is_none")]
            health: Option<&'a shoal_dbus::TaskHealthView>,
        }
        let rows: Vec<Row<'_>> = tasks
            .iter()
            .map(|row| Row {
                row,
                health: health.get(&row.id),
            })
            .collect();
        print_json(&rows)?;
    } else {
        let now = c.info().await?.now;
        print!("{}", render::service_ps(&tasks, &health, now, no_trunc));
    }
    Ok(())
}

fn fail_on_errors(errs: Vec<String>) -> anyhow::Error {
    anyhow!("{}", errs.join("\n"))
}

async fn service(cmd: ServiceCmd) -> Result<()> {
    let c = connect().await?;
    match cmd {
        ServiceCmd::Create {
            create,
            common,
            wait,
            image,
            command,
        } => {
            let props = flags::create_properties(&image, &command, &common, &create)
                .map_err(fail_on_errors)?;
            let name = match &create.name {
                Some(n) => n.clone(),
                None => default_name(&image),
            };
            let id = c.create_service(&name, &props).await?;
            println!("{id}");
            if !wait.detach {
                wait::converge(&c, &name, wait.opts()).await?;
            }
        }
        ServiceCmd::Ls(l) => {
            let rows = c.list_services().await?;
            print_listing(&l, &rows, |r| &r.id, render::service_ls)?;
        }
        ServiceCmd::Ps {
            filter,
            no_trunc,
            list,
            services,
        } => {
            let base = task_filter(&filter)?;
            let filters = services
                .iter()
                .map(|s| TaskFilter {
                    service: Some(s.clone()),
                    ..base.clone()
                })
                .collect();
            print_tasks(&c, filters, &list, no_trunc).await?;
        }
        ServiceCmd::Inspect { pretty, services } => {
            let mut out = Vec::new();
            for s in &services {
                let mut inspect = c.inspect_service(s).await?;
                inspect.task_health = c.service_task_health(&inspect.info.id).await?;
                out.push(inspect);
            }
            if pretty {
                for s in &out {
                    print_pretty_service(s);
                }
            } else {
                print_json(&out)?;
            }
        }
        ServiceCmd::Scale { wait, services } => {
            for (name, n) in &services {
                c.scale_service(name, *n).await?;
                println!("{name} scaled to {n}");
            }
            if !wait.detach {
                for (name, _) in &services {
                    wait::converge(&c, name, wait.opts()).await?;
                }
            }
        }
        ServiceCmd::Update {
            update,
            common,
            wait,
            service,
        } => {
            let current = if flags::update_needs_current(&update) {
                Some(c.inspect_service(&service).await?)
            } else {
                None
            };
            let props = flags::update_properties(&common, &update, current.as_ref())
                .map_err(fail_on_errors)?;
            c.update_service(&service, &props).await?;
            println!("{service}");
            if !wait.detach {
                wait::converge(&c, &service, wait.opts()).await?;
            }
        }
        ServiceCmd::Rollback { wait, service } => {
            c.rollback_service(&service).await?;
            println!("{service}");
            println!("rollback: manually requested rollback");
            if !wait.detach {
                let opts = WaitOpts {
                    rollback_requested: true,
                    ..wait.opts()
                };
                wait::converge(&c, &service, opts).await?;
            }
        }
        ServiceCmd::Rm { wait, services } => {
            let mut failed = Vec::new();
            let mut removed = Vec::new();
            for s in &services {
                // Resolve to the full name first so that waiting can match tasks.
                let name = match c.inspect_service(s).await {
                    Ok(i) => i.info.name,
                    Err(e) => {
                        failed.push(format!("{s}: {e}"));
                        continue;
                    }
                };
                match c.remove_service(s).await {
                    Ok(()) => {
                        println!("{s}");
                        removed.push(name);
                    }
                    Err(e @ (ClientError::AccessDenied(_) | ClientError::Unreachable(_))) => {
                        return Err(e.into());
                    }
                    Err(e) => failed.push(format!("{s}: {e}")),
                }
            }
            finish_removal(&c, &removed, &failed, &wait).await?;
        }
        ServiceCmd::Logs {
            follow,
            tail,
            timestamps,
            service,
        } => {
            let tail = if tail == "all" {
                None
            } else {
                Some(tail.parse::<u64>().map_err(|_| {
                    anyhow!("invalid --tail {tail:?}: expected \"all\" or a number of lines")
                })?)
            };
            let fd = c
                .open_logs(
                    &service,
                    LogOptions {
                        tail,
                        follow,
                        timestamps,
                    },
                )
                .await?;
            tokio::task::spawn_blocking(move || -> Result<()> {
                let mut src = std::fs::File::from(fd);
                let mut out = std::io::stdout().lock();
                let mut buf = [0u8; 8192];
                loop {
                    let n = src
                        .read(&mut buf)
                        .context("failed to read the log stream")?;
                    if n == 0 {
                        return Ok(());
                    }
                    if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                        // The reader went away (e.g. `| head`): stop quietly.
                        return Ok(());
                    }
                }
            })
            .await
            .context("log copier panicked")??;
        }
    }
    Ok(())
}

fn print_pretty_service(s: &shoal_dbus::ServiceInspect) {
    let spec = &s.spec;
    println!("ID:\t\t{}", s.info.id);
    println!("Name:\t\t{}", s.info.name);
    if !s.info.stack.is_empty() {
        println!("Stack:\t\t{}", s.info.stack);
    }
    match spec.mode {
        model::ServiceMode::Replicated { replicas } => {
            println!("Service Mode:\tReplicated");
            println!(" Replicas:\t{replicas}");
        }
        model::ServiceMode::Global => println!("Service Mode:\tGlobal"),
        model::ServiceMode::ReplicatedJob {
            replicas,
            max_concurrent,
        } => {
            println!("Service Mode:\tReplicated Job");
            println!(" Max Concurrent:\t{max_concurrent}");
            println!(" Total Completions:\t{replicas}");
        }
        model::ServiceMode::GlobalJob => println!("Service Mode:\tGlobal Job"),
    }
    println!("Running:\t{}/{}", s.info.running, s.info.desired);
    if spec.mode.is_job() {
        println!("Completed:\t{}/{}", s.info.completed, s.info.desired);
    }
    if !s.info.update_state.is_empty() {
        println!("UpdateStatus:");
        println!(" State:\t\t{}", s.info.update_state);
        if !s.info.update_message.is_empty() {
            println!(" Message:\t{}", s.info.update_message);
        }
    }
    if !spec.depends_on.is_empty() {
        println!("Depends on:");
        for (name, condition) in &spec.depends_on {
            println!(" {name}:\t{}", condition.as_str());
        }
    }
    print!("{}", render::placement_pretty(&spec.placement));
    for (title, kind, refs) in [
        ("Secrets", model::SecretKind::Secret, &spec.task.secrets),
        ("Configs", model::SecretKind::Config, &spec.task.configs),
    ] {
        if refs.is_empty() {
            continue;
        }
        println!("{title}:");
        for r in refs {
            let target = match kind {
                model::SecretKind::Secret => format!("/run/secrets/{}", r.target),
                model::SecretKind::Config => r.target.clone(),
            };
            println!(
                " {}:	{target} (uid {}, gid {}, mode {:04o})",
                r.name, r.uid, r.gid, r.mode
            );
        }
    }
    if let Some(h) = &spec.task.healthcheck {
        println!("Healthcheck:");
        if h.is_disabled() {
            println!(" Disabled:\ttrue");
        } else {
            if !h.test.is_empty() {
                println!(" Test:\t\t{:?}", h.test);
            }
            for (name, ms) in [
                ("Interval", h.interval),
                ("Timeout", h.timeout),
                ("StartPeriod", h.start_period),
                ("StartInterval", h.start_interval),
            ] {
                if ms > 0 {
                    println!(" {name}:\t{}", spec::units::format_duration(ms));
                }
            }
            if h.retries > 0 {
                println!(" Retries:\t{}", h.retries);
            }
        }
    }
    if !s.task_health.is_empty() {
        println!("Task health:");
        for h in s.task_health.values() {
            println!(
                " {}:\t{} (failing streak {}, last check exit {})",
                h.task, h.status, h.failing_streak, h.exit_code
            );
            for line in h.output.lines().take(10) {
                println!("   {line}");
            }
        }
    }
    println!("UpdateConfig:");
    println!(" Parallelism:\t{}", spec.update.parallelism);
    println!(
        " Delay:\t\t{}",
        spec::units::format_duration(spec.update.delay)
    );
    println!(" On failure:\t{:?}", spec.update.failure_action);
    println!(" Order:\t\t{:?}", spec.update.order);
    println!("ContainerSpec:");
    println!(" Image:\t\t{}", spec.task.image);
    if let Some(cmd) = &spec.task.command {
        println!(" Args:\t\t{}", cmd.join(" "));
    }
    if !spec.task.env.is_empty() {
        println!(" Env:");
        for (k, v) in &spec.task.env {
            println!("  {k}={v}");
        }
    }
    if !spec.ports.is_empty() {
        println!("Ports:");
        for p in &spec.ports {
            println!(
                " PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {:?}",
                p.published,
                p.protocol.as_str(),
                p.target,
                p.mode
            );
        }
    }
}

/// Docker names an unnamed service after nothing useful; use the image's last path component.
fn default_name(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    let base = last.split([':', '@']).next().unwrap_or(last);
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "service".into()
    } else {
        cleaned
    }
}

async fn stack(cmd: StackCmd) -> Result<()> {
    // Validation and conversion need no daemon.
    match &cmd {
        StackCmd::Validate { files, strict } => return validate(files, *strict),
        StackCmd::Convert {
            output,
            nix,
            name,
            strict,
            files,
        } => return stackfile::convert(files, name.as_deref(), output.as_deref(), *nix, *strict),
        _ => {}
    }
    let c = connect().await?;
    match cmd {
        StackCmd::Validate { .. } | StackCmd::Convert { .. } => {}
        StackCmd::Deploy {
            files,
            strict,
            wait,
            name,
        } => {
            let text = stackfile::stack_text(&files, &name, strict)?;
            let secret_files = stackfile::secret_files(&files, &name, &text)?;
            let report = if secret_files.is_empty() {
                c.deploy_stack(&name, &text).await?
            } else {
                c.deploy_stack_with_files(&name, &text, &secret_files)
                    .await?
            };
            for s in &report.removed {
                println!("Removing service {s}");
            }
            for s in &report.changed {
                println!("Updating service {s}");
            }
            for s in &report.added {
                println!("Creating service {s}");
            }
            if !wait.detach {
                let mut names: Vec<&String> = report.added.iter().chain(&report.changed).collect();
                names.sort();
                for s in names {
                    wait::converge(&c, s, wait.opts()).await?;
                }
                if !report.removed.is_empty() {
                    wait::removed(&c, &report.removed, wait.opts()).await?;
                }
            }
        }
        StackCmd::Ls(l) => {
            let rows = c.list_stacks().await?;
            print_listing(&l, &rows, |r| &r.name, render::stack_ls)?;
        }
        StackCmd::Ps {
            filter,
            no_trunc,
            list,
            name,
        } => {
            let f = TaskFilter {
                stack: Some(name),
                ..task_filter(&filter)?
            };
            print_tasks(&c, vec![f], &list, no_trunc).await?;
        }
        StackCmd::Services { list, name } => {
            let stacks = c.list_stacks().await?;
            if !stacks.iter().any(|s| s.name == name) {
                bail!("stack {name} not found: see shoal stack ls");
            }
            let rows: Vec<_> = c
                .list_services()
                .await?
                .into_iter()
                .filter(|r| r.stack == name)
                .collect();
            print_listing(&list, &rows, |r| &r.id, render::service_ls)?;
        }
        StackCmd::Rm { wait, names } => {
            let mut all = Vec::new();
            let mut failed = Vec::new();
            for n in &names {
                match c.remove_stack(n).await {
                    Ok(services) => {
                        for s in &services {
                            println!("Removing service {s}");
                        }
                        all.extend(services);
                    }
                    Err(e @ (ClientError::AccessDenied(_) | ClientError::Unreachable(_))) => {
                        return Err(e.into());
                    }
                    Err(e) => failed.push(format!("{n}: {e}")),
                }
            }
            finish_removal(&c, &all, &failed, &wait).await?;
        }
    }
    Ok(())
}

/// `stack validate`: parse every file with the `spec` crate, report every problem.
fn validate(files: &[PathBuf], strict: bool) -> Result<()> {
    let mut bad = 0;
    for f in files {
        match validate_file(f, strict) {
            Ok(n) => println!("{}: ok ({n} services)", f.display()),
            Err(e) => {
                eprintln!("{e}");
                bad += 1;
            }
        }
    }
    if bad > 0 {
        bail!("{bad} of {} stack files are invalid", files.len());
    }
    Ok(())
}

/// Parse one stack file; the error text has one `file:line:col: message` per line. A Compose
/// file is converted under the name `convert` would give it, and its warnings are printed.
fn validate_file(path: &Path, strict: bool) -> std::result::Result<usize, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: failed to read stack file: {e}", path.display()))?;
    if spec::compose::looks_like_compose(path, &text) {
        let name = spec::compose::default_stack_name(path);
        let file = spec::compose::ComposeFile {
            path: path.to_path_buf(),
            text,
        };
        return match spec::compose::load(&name, &[file], strict) {
            Ok(c) => {
                stackfile::print_warnings(&c.warnings);
                Ok(c.spec.services.len())
            }
            Err(r) => {
                stackfile::print_warnings(&r.warnings);
                Err(r.errors.to_string())
            }
        };
    }
    spec::parse_stack(path, &text)
        .map(|s| s.services.len())
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn scale_specifiers_parse() {
        assert_eq!(parse_scale("web=3").unwrap(), ("web".into(), 3));
        assert!(parse_scale("web").is_err());
        assert!(parse_scale("=3").is_err());
        assert!(parse_scale("web=-1").is_err());
    }

    #[test]
    fn cli_parses_docker_style_create() {
        let cli = Cli::try_parse_from([
            "shoal",
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "-p",
            "8080:80",
            "-e",
            "A=1",
            "--detach",
            "nginx:1.27",
            "nginx",
            "-g",
            "daemon off;",
        ])
        .unwrap();
        let Cmd::Service(ServiceCmd::Create {
            create,
            common,
            wait,
            image,
            command,
        }) = cli.command
        else {
            panic!("not a create");
        };
        assert_eq!(create.name.as_deref(), Some("web"));
        assert_eq!(common.replicas, Some(2));
        assert!(wait.detach);
        assert_eq!(image, "nginx:1.27");
        assert_eq!(command, vec!["nginx", "-g", "daemon off;"]);
    }

    #[test]
    fn usage_errors_are_reported_by_clap() {
        let e = Cli::try_parse_from(["shoal", "service", "scale"]).unwrap_err();
        assert!(e.use_stderr());
        let e = Cli::try_parse_from(["shoal", "service", "ls", "--format", "yaml"]).unwrap_err();
        assert!(e.use_stderr());
    }

    #[test]
    fn default_names_come_from_the_image() {
        assert_eq!(default_name("docker.io/library/nginx:1.27"), "nginx");
        assert_eq!(default_name("localhost:5000/app@sha256:abc"), "app");
    }

    #[test]
    fn filters_parse() {
        let f = task_filter(&["desired-state=running".into(), "node=n1".into()]).unwrap();
        assert_eq!(f.desired_state, Some(model::TaskState::Running));
        assert_eq!(f.node.as_deref(), Some("n1"));
        assert!(task_filter(&["colour=red".into()]).is_err());
    }
}
