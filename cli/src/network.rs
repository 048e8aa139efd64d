//! `shoal network`: create, list, inspect and remove overlay networks.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use clap::Subcommand;
use shoal_dbus::{Client, ClientError};

use crate::render;
use crate::{FormatArgs, ListArgs};

use crate::rows::{self, Row, get};

#[derive(Debug, Subcommand)]
pub(crate) enum NetworkCmd {
    /// Create an overlay network
    Create {
        /// Driver to manage the network ("overlay", the only one)
        #[arg(short, long, default_value = "overlay")]
        driver: String,
        /// Subnet in CIDR format (default: the next free one of the cluster's address pool)
        #[arg(long)]
        subnet: Option<String>,
        /// Let standalone containers attach (recorded; shoal has no standalone containers yet)
        #[arg(long)]
        attachable: bool,
        /// Set a label (KEY=VALUE)
        #[arg(long = "label")]
        labels: Vec<String>,
        name: String,
    },
    /// List networks
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Display detailed information on one or more networks
    Inspect {
        #[command(flatten)]
        format: FormatArgs,
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove one or more networks
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

/// A network by exact id, exact name, or unique id prefix, as the daemon resolves names.
fn find<'a>(rows: &'a [Row], key: &str) -> Option<&'a Row> {
    rows::find(rows, key, |r| get(r, "Id") == key || get(r, "Name") == key)
}

pub(crate) async fn run(c: &Client, cmd: NetworkCmd) -> Result<()> {
    match cmd {
        NetworkCmd::Create {
            driver,
            subnet,
            attachable,
            labels,
            name,
        } => {
            let mut opts = BTreeMap::new();
            opts.insert("Driver".to_string(), driver);
            if let Some(s) = subnet {
                opts.insert("Subnet".into(), s);
            }
            opts.insert("Attachable".into(), attachable.to_string());
            for l in labels {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                opts.insert(format!("Label.{k}"), v.to_string());
            }
            println!("{}", c.create_network(&name, &opts).await?);
        }
        NetworkCmd::Ls(l) => {
            let rows = c.list_networks().await?;
            if l.quiet {
                rows.iter().for_each(|r| println!("{}", get(r, "Id")));
            } else if crate::json(&l.format) {
                crate::print_json(&rows)?;
            } else {
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            model::short_id(get(r, "Id")).to_string(),
                            get(r, "Name").to_string(),
                            get(r, "Driver").to_string(),
                            get(r, "Scope").to_string(),
                            get(r, "Subnet").to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render::table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET"], &table)
                );
            }
        }
        NetworkCmd::Inspect { format, networks } => {
            let rows = c.list_networks().await?;
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for n in &networks {
                match find(&rows, n) {
                    Some(r) => found.push(r.clone()),
                    None => missing.push(n.as_str()),
                }
            }
            if crate::json(&format) || format.format == "table" {
                crate::print_json(&found)?;
            }
            if !missing.is_empty() {
                bail!("no such network: {}", missing.join(", "));
            }
        }
        NetworkCmd::Rm { networks } => {
            let mut failed = Vec::new();
            for n in &networks {
                match c.remove_network(n).await {
                    Ok(()) => println!("{n}"),
                    Err(e @ (ClientError::AccessDenied(_) | ClientError::Unreachable(_))) => {
                        return Err(e.into());
                    }
                    Err(e) => failed.push(format!("{n}: {e}")),
                }
            }
            if !failed.is_empty() {
                bail!("{}", failed.join("\n"));
            }
        }
    }
    Ok(())
}
