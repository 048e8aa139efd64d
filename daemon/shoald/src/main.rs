//! `shoald`: the shoal node daemon. Wiring only: the logic lives in the library crates.
//!
//! `shoald [--config PATH]` runs the node (default `/etc/shoal/cluster.toml`; without that file
//! a single-node cluster with default settings). `shoald log-driver ...` is the log driver the
//! containerd shim starts for each task (internal).

mod backend;
mod certs;
mod daemon;
mod dispatcher;
mod dns;
mod executor;
mod forward;
mod identity;
mod images;
mod join;
mod logs;
mod notify;
mod secrets;
mod session;
mod transport;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "shoald",
    version,
    about = "shoal node daemon: runs the cluster's tasks on this node"
)]
struct Args {
    /// The cluster file. Without it (and when the default file does not exist) the node runs a
    /// single-node cluster with default settings.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate a cluster file, print every problem as file:line:col and exit (non-zero when
    /// the file is bad). Reads neither the token file nor any state.
    #[arg(long, value_name = "PATH")]
    check_config: Option<PathBuf>,
}

static CONFIG_PATH: OnceLock<PathBuf> = OnceLock::new();

/// The cluster file in use, for error messages.
pub fn config_path_hint() -> String {
    CONFIG_PATH
        .get()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the cluster file".into())
}

fn init_tracing() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    // Under systemd, log to the journal with structured fields; elsewhere to stderr.
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(layer) = tracing_journald::layer()
    {
        tracing_subscriber::registry()
            .with(filter)
            .with(
                layer
                    .with_syslog_identifier("shoald".into())
                    .with_field_prefix(None),
            )
            .init();
        return;
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours only on a terminal: a log file or pipe gets plain text.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
}

fn load_config(args: &Args) -> Result<spec::ClusterConfig> {
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(spec::DEFAULT_CLUSTER_FILE));
    let _ = CONFIG_PATH.set(path.clone());
    if args.config.is_none() && !path.exists() {
        info!(path = %path.display(), "no cluster file; running a single-node cluster with default settings");
        return Ok(spec::ClusterConfig::default_single_node());
    }
    spec::load_cluster_file(&path).map_err(|e| anyhow!("invalid cluster file:\n{e}"))
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some(shoal_containerd::logger::LOG_DRIVER_ARG)
        || shoal_containerd::logger::is_log_driver_invocation(&raw)
    {
        return ExitCode::from(shoal_containerd::run_logger(&raw).clamp(0, 255) as u8);
    }
    let args = Args::parse();
    if let Some(path) = &args.check_config {
        return match spec::load_cluster_file(path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoald: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("shoald: {e:#}");
            notify::status(&format!("failed: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = load_config(&args)?;
    let d = daemon::start(cfg).await?;
    join::establish(&d).await?;
    let reports = session::start(&d);
    {
        let d = d.clone();
        std::thread::Builder::new()
            .name("store-health".into())
            .spawn(move || daemon::run_store_health(d))
            .context("failed to start the store health thread")?;
    }
    tokio::spawn(daemon::run_control_loop(d.clone()));
    tokio::spawn(dispatcher::run_liveness(d.clone()));
    tokio::spawn(dispatcher::run_membership(d.clone()));
    tokio::spawn(daemon::run_ports(d.clone()));
    tokio::spawn(daemon::run_overlays(d.clone()));
    tokio::spawn(dns::run(d.clone()));
    tokio::spawn(daemon::run_log_gc(d.clone()));
    tokio::spawn(images::run_gc(d.clone()));

    let backend = Arc::new(forward::ClusterBackend(backend::DaemonBackend(d.clone())));
    let conn = shoal_dbus::serve(backend.clone()).await.context(
        "failed to own org.shoal.Shoal1 on the system bus (is the D-Bus policy org.shoal.Shoal1.conf installed, and is the bus running?)",
    )?;
    if let Ok(mut e) = d.events.lock() {
        *e = Some(shoal_dbus::Events::new(&conn));
    }
    // One object per node, service, stack and task, following the replicated state (a worker,
    // which holds none, asks the leader on every poll).
    tokio::spawn(shoal_dbus::objects::run(
        conn.clone(),
        backend.clone(),
        d.store.subscribe(),
        shoal_dbus::objects::Pacing::default(),
    ));

    // READY once the store is open and the bus name is owned; the stacks directory is applied
    // right after, in the background, so that a slow first image pull never runs into the
    // unit's start timeout.
    notify::ready("applying stacks");
    info!("shoald ready");
    {
        let backend = backend.clone();
        let d = d.clone();
        tokio::spawn(async move {
            d.set_status("applying stacks");
            if let Err(e) = backend.0.do_reload().await {
                warn!(error = %e.message(), "stacks directory not applied at start-up; fix the files and reload");
            }
            d.set_status(d.summary());
        });
    }

    if let Some(period) = notify::watchdog_period() {
        tokio::spawn(daemon::run_watchdog(d.clone(), period));
    }

    let mut hup = signal(SignalKind::hangup()).context("failed to install SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("failed to install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("failed to install SIGINT handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading stacks");
                let backend = backend.clone();
                // In the background: a reload that pulls images must not hold up SIGTERM.
                tokio::spawn(async move { backend.0.do_reload().await });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping; tasks keep running");
    notify::stopping();
    daemon::drain_reports(&reports, std::time::Duration::from_secs(5)).await;
    drop(conn);
    Ok(())
}
