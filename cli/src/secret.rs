//! `shoal secret` and `shoal config`: create, list, inspect and remove. The data goes to the
//! daemon once, at creation, and never comes back: listings and inspect show names, ids, dates,
//! labels and the services that use it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use model::SecretKind;
use shoal_dbus::{Client, ClientError};

use crate::render;
use crate::{FormatArgs, ListArgs};

use crate::rows::{self, Row, get};

#[derive(Debug, Subcommand)]
pub(crate) enum SecretCmd {
    /// Create from a file, or from standard input with "-"
    Create {
        /// Set a label (KEY=VALUE)
        #[arg(short, long = "label")]
        labels: Vec<String>,
        name: String,
        /// The file to read, or "-" for standard input
        file: PathBuf,
    },
    /// List them
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Display detailed information (never the data)
    Inspect {
        #[command(flatten)]
        format: FormatArgs,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove one or more (refused while a service uses it)
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// By exact id, current version of a name, or unique id prefix, as the daemon resolves them.
fn find<'a>(rows: &'a [Row], key: &str) -> Option<&'a Row> {
    rows::find(rows, key, |r| {
        get(r, "Id") == key || (get(r, "Name") == key && get(r, "Current") == "true")
    })
}

/// Unix milliseconds as docker prints a creation time.
fn ago(ms: &str) -> String {
    let Ok(ms) = ms.parse::<u64>() else {
        return String::new();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!(
        "{} ago",
        crate::render::human_duration(now.saturating_sub(ms))
    )
}

fn read_data(kind: SecretKind, file: &PathBuf) -> Result<Vec<u8>> {
    let k = kind.as_str();
    let max = kind.max_bytes();
    let mut data = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .take(max as u64 + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("failed to read the {k} from standard input"))?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(max as u64 + 1).read_to_end(&mut data))
            .with_context(|| format!("failed to read the {k} from {}", file.display()))?;
    }
    if data.len() > max {
        bail!(
            "{k} data of more than {max} bytes is above the limit of {max} bytes ({} KiB)",
            max / 1024
        );
    }
    kind.check_size(data.len()).map_err(anyhow::Error::msg)?;
    Ok(data)
}

pub(crate) async fn run(c: &Client, kind: SecretKind, cmd: SecretCmd) -> Result<()> {
    let k = kind.as_str();
    match cmd {
        SecretCmd::Create { labels, name, file } => {
            spec::units::validate_name(k, &name).map_err(anyhow::Error::msg)?;
            let data = read_data(kind, &file)?;
            let mut map = BTreeMap::new();
            for l in labels {
                let (lk, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                map.insert(lk.to_string(), v.to_string());
            }
            println!("{}", c.create_secret(kind, &name, &map, &data).await?);
        }
        SecretCmd::Ls(l) => {
            let rows = c.list_secrets(kind).await?;
            if l.quiet {
                rows.iter().for_each(|r| println!("{}", get(r, "Id")));
            } else if crate::json(&l.format) {
                crate::print_json(&rows)?;
            } else {
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        let mut name = get(r, "Name").to_string();
                        if get(r, "Current") == "false" {
                            name.push_str(" (old version)");
                        }
                        vec![
                            model::short_id(get(r, "Id")).to_string(),
                            name,
                            ago(get(r, "Created")),
                            get(r, "Services").replace(',', ", "),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render::table(&["ID", "NAME", "CREATED", "SERVICES"], &table)
                );
            }
        }
        SecretCmd::Inspect { format, names } => {
            let _ = format;
            let rows = c.list_secrets(kind).await?;
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for n in &names {
                match find(&rows, n) {
                    Some(r) => found.push(r.clone()),
                    None => missing.push(n.as_str()),
                }
            }
            crate::print_json(&found)?;
            if !missing.is_empty() {
                bail!("no such {k}: {}", missing.join(", "));
            }
        }
        SecretCmd::Rm { names } => {
            let mut failed = Vec::new();
            for n in &names {
                match c.remove_secret(kind, n).await {
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
