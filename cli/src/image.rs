//! `shoal image`: the images of the node the CLI talks to (as `docker image` acts on one
//! engine), and pruning the ones nothing needs.

use std::io::{BufRead, Write};

use anyhow::{Result, bail};
use clap::Subcommand;
use shoal_dbus::{Client, ImageRow};

use crate::ListArgs;
use crate::render;

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCmd {
    /// List this node's images, and what keeps each
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Remove this node's images that nothing needs now, without waiting for
    /// `[images] prune_after`
    Prune {
        /// Also remove the images kept for rollbacks and preloads: keep only what a task uses
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation
        #[arg(short, long)]
        force: bool,
    },
}

pub(crate) async fn run(c: &Client, cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Ls(l) => {
            let rows = c.list_images().await?;
            if l.quiet {
                let mut seen = std::collections::BTreeSet::new();
                for r in &rows {
                    let id = short_digest(&r.digest);
                    if seen.insert(id) {
                        println!("{id}");
                    }
                }
            } else if crate::json(&l.format) {
                crate::print_json(&rows)?;
            } else {
                print!("{}", image_ls(&rows, now_ms()));
            }
        }
        ImageCmd::Prune { all, force } => {
            if !force && !confirm(all)? {
                return Ok(());
            }
            let report = c.prune_images(all).await?;
            if !report.removed.is_empty() {
                println!("Deleted Images:");
                for name in &report.removed {
                    println!("deleted: {name}");
                }
                println!();
            }
            println!("Total reclaimed space: {}", human_size(report.reclaimed));
        }
    }
    Ok(())
}

/// Ask as `docker image prune` does; anything but yes cancels.
fn confirm(all: bool) -> Result<bool> {
    let what = if all {
        "every image shoal pulled on this node that no task uses (rollback and preloaded images too)"
    } else {
        "every image shoal pulled on this node that no task, rollback or preload needs"
    };
    print!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer)? == 0 {
        println!();
        bail!("no answer on standard input: nothing removed (use -f to prune without asking)");
    }
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The 12 hex digits docker shows as IMAGE ID.
fn short_digest(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

/// Docker's `units.HumanSizeWithPrecision(size, 3)`: decimal units, three significant digits.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{s}{}", UNITS[unit])
}

/// `image ls`: docker's columns, then why the node keeps the image.
pub fn image_ls(rows: &[ImageRow], now: u64) -> String {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.repository.clone(),
                r.tag.clone(),
                short_digest(&r.digest).to_string(),
                if r.created_at == 0 {
                    "N/A".to_string()
                } else {
                    format!(
                        "{} ago",
                        render::human_duration(now.saturating_sub(r.created_at))
                    )
                },
                human_size(r.size),
                if r.in_use.is_empty() {
                    "-".to_string()
                } else {
                    r.in_use.clone()
                },
            ]
        })
        .collect();
    render::table(
        &[
            "REPOSITORY",
            "TAG",
            "IMAGE ID",
            "CREATED",
            "SIZE",
            "IN USE BY",
        ],
        &table,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_234), "1.23kB");
        assert_eq!(human_size(12_345), "12.3kB");
        assert_eq!(human_size(4_262_912), "4.26MB");
        assert_eq!(human_size(1_000_000), "1MB");
        assert_eq!(human_size(150_000_000), "150MB");
    }

    #[test]
    fn image_ls_has_docker_columns_and_says_what_keeps_each() {
        let row = |name: &str, digest: &str, in_use: &str| {
            let (repository, tag) = ImageRow::split_name(name);
            ImageRow {
                name: name.into(),
                repository,
                tag,
                digest: digest.into(),
                created_at: 1_000,
                size: 4_262_912,
                in_use: in_use.into(),
                unused_since: 0,
                managed: true,
            }
        };
        let out = image_ls(
            &[
                row("localhost:5000/web:a", "sha256:aaaaaaaaaaaaaaaaaaaa", ""),
                row(
                    "localhost:5000/web@sha256:cccc",
                    "sha256:cccccccccccccccc",
                    "task",
                ),
            ],
            1_000 + 2 * 3600 * 1000,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("REPOSITORY")
                && lines[0].contains("TAG")
                && lines[0].contains("IMAGE ID")
                && lines[0].contains("CREATED")
                && lines[0].contains("SIZE")
                && lines[0].contains("IN USE BY"),
            "{out}"
        );
        assert!(
            lines[1].contains("localhost:5000/web")
                && lines[1].contains(" a ")
                && lines[1].contains("aaaaaaaaaaaa")
                && lines[1].contains("2 hours ago")
                && lines[1].contains("4.26MB")
                && lines[1].trim_end().ends_with('-'),
            "{out}"
        );
        assert!(
            lines[2].contains("<none>") && lines[2].trim_end().ends_with("task"),
            "{out}"
        );
    }
}
