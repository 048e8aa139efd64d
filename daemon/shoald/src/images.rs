//! This node's images: what `shoal image ls` shows, what `shoal image prune` removes, and the
//! collection that removes the images nothing has needed for `[images] prune_after`.
//!
//! The decisions are `agent::images`' (pure); this module gathers their inputs (the node's tasks
//! from its assignment set, history included; on a manager the services of the replicated
//! state; containerd's containers and image records) and removes what they name. Images are per
//! node, as with `docker image ls`: nothing here is forwarded to the leader.
//!
//! An image a change has just resolved (pulled or imported) is not referenced by any service
//! until that change is committed: API calls hold [`NodeImages::in_use`] shared from resolving
//! until committing, and every removal holds it exclusively, so such an image is never removed
//! in between.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use agent::images::{Need, ServiceImages, StoredImage, UnusedSince};
use model::NodeRole;
use shoal_containerd::ImageRecord;
use shoal_dbus::{ApiError, ImageRow, PruneReport};
use tracing::{debug, info, warn};

use crate::daemon::{Daemon, now_ms};

/// The daemon's image bookkeeping.
#[derive(Default)]
pub struct NodeImages {
    /// Shared by API calls from resolving an image until the change is committed; exclusive
    /// for every removal.
    pub in_use: tokio::sync::RwLock<()>,
    /// Digests of the configured preloads.
    preloaded: Mutex<BTreeSet<String>>,
    /// Since when each unneeded image has been unneeded.
    unused: Mutex<UnusedSince>,
    /// Bumped whenever images were removed: the executor then checks its images again.
    pub epoch: AtomicU64,
}

impl NodeImages {
    /// `digest` was preloaded (`[images] preload`): keep it.
    pub fn preloaded(&self, digest: String) {
        self.preloaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest);
    }
}

/// The images of this node and what needs each.
struct Survey {
    images: Vec<ImageRecord>,
    needed: BTreeMap<String, Need>,
}

fn unavailable(e: shoal_containerd::Error) -> ApiError {
    ApiError::Unavailable(format!(
        "cannot read this node's images from containerd: {e} (is containerd running?)"
    ))
}

/// Look at this node. `None` until the node has its first assignment set: before that it does
/// not know which tasks it runs, so nothing may be removed.
async fn survey(d: &Daemon) -> Result<Option<Survey>, ApiError> {
    let Some(tasks) = d.assignments.borrow().as_ref().map(|set| set.tasks.clone()) else {
        return Ok(None);
    };
    let state = d.state();
    // A manager knows every service's current and previous image; a worker only its tasks.
    let services: Option<BTreeMap<String, ServiceImages>> =
        (d.role() == NodeRole::Manager && !state.cluster_id.is_empty()).then(|| {
            state
                .services
                .values()
                .map(|s| {
                    (
                        s.id.clone(),
                        ServiceImages {
                            current: s.image_digest.clone(),
                            previous: s.previous_image_digest.clone(),
                        },
                    )
                })
                .collect()
        });
    let images = d.runtime.list_images().await.map_err(unavailable)?;
    let by_name: BTreeMap<&str, &str> = images
        .iter()
        .map(|i| (i.name.as_str(), i.digest.as_str()))
        .collect();
    // A container keeps its image even when no task of the assignment names it (yet).
    let containers: BTreeSet<String> = d
        .runtime
        .list()
        .await
        .map_err(unavailable)?
        .iter()
        .filter_map(|c| {
            by_name
                .get(c.image.as_str())
                .map(|d| d.to_string())
                .or_else(|| c.image.split_once('@').map(|(_, d)| d.to_string()))
        })
        .collect();
    let preloaded = d
        .images
        .preloaded
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let needed = agent::images::needed(&tasks, services.as_ref(), &containers, &preloaded);
    Ok(Some(Survey { images, needed }))
}

fn stored(images: &[ImageRecord]) -> Vec<StoredImage> {
    images
        .iter()
        .map(|i| StoredImage {
            name: i.name.clone(),
            digest: i.digest.clone(),
            managed: i.managed,
        })
        .collect()
}

fn millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ListImages`.
pub async fn list(d: &Daemon) -> Result<Vec<ImageRow>, ApiError> {
    let (images, needed) = match survey(d).await? {
        Some(s) => (s.images, Some(s.needed)),
        None => (d.runtime.list_images().await.map_err(unavailable)?, None),
    };
    let unused = d.images.unused.lock().unwrap_or_else(|e| e.into_inner());
    Ok(images
        .iter()
        .map(|i| {
            let (repository, tag) = ImageRow::split_name(&i.name);
            let need = needed.as_ref().and_then(|n| n.get(&i.digest));
            ImageRow {
                name: i.name.clone(),
                repository,
                tag,
                digest: i.digest.clone(),
                created_at: millis(i.created),
                size: i.size(),
                in_use: need.map(Need::as_str).unwrap_or_default().to_string(),
                unused_since: match need {
                    None if i.managed => unused.get(&i.digest).unwrap_or(0),
                    _ => 0,
                },
                managed: i.managed,
            }
        })
        .collect())
}

/// `PruneImages`: remove now what nothing needs (`all`: what no task or container uses).
pub async fn prune(d: &Daemon, all: bool) -> Result<PruneReport, ApiError> {
    let _exclusive = d.images.in_use.write().await;
    let Some(survey) = survey(d).await? else {
        return Err(ApiError::Unavailable(
            "this node has not received its tasks from the managers yet, so it cannot tell which images they need; try again in a moment".into(),
        ));
    };
    let names = agent::images::prunable(&stored(&survey.images), &survey.needed, all);
    let why = if all { "pruned (-a)" } else { "pruned" };
    Ok(remove(d, &survey.images, &names, why).await)
}

/// Remove the records `names` of `images`, logging each; the space freed is what the removed
/// images held that no remaining image shares.
async fn remove(d: &Daemon, images: &[ImageRecord], names: &[String], why: &str) -> PruneReport {
    let mut report = PruneReport::default();
    for name in names {
        let digest = images
            .iter()
            .find(|i| &i.name == name)
            .map(|i| i.digest.as_str())
            .unwrap_or_default();
        match d.runtime.remove_image(name).await {
            Ok(_) => {
                info!(image = %name, %digest, reason = why, "image removed");
                report.removed.push(name.clone());
            }
            Err(e) => warn!(image = %name, error = %e, "failed to remove an image"),
        }
    }
    if !report.removed.is_empty() {
        d.images.epoch.fetch_add(1, Ordering::SeqCst);
    }
    let kept: BTreeSet<&str> = images
        .iter()
        .filter(|i| !report.removed.contains(&i.name))
        .flat_map(|i| i.blobs.iter().map(|(b, _)| b.as_str()))
        .collect();
    let freed: BTreeMap<&str, u64> = images
        .iter()
        .filter(|i| report.removed.contains(&i.name))
        .flat_map(|i| i.blobs.iter())
        .filter(|(b, _)| !kept.contains(b.as_str()))
        .map(|(b, n)| (b.as_str(), *n))
        .collect();
    report.reclaimed = freed.values().sum();
    report
}

/// How often the collection looks: a quarter of the grace period, between 1 s and a minute.
fn gc_interval(prune_after: u64) -> Duration {
    Duration::from_millis((prune_after / 4).clamp(1000, 60_000))
}

/// Remove the images nothing has needed for `[images] prune_after`, checking every
/// [`gc_interval`].
pub async fn run_gc(d: std::sync::Arc<Daemon>) {
    let grace = d.cfg.images.prune_after;
    loop {
        tokio::time::sleep(gc_interval(grace)).await;
        let _exclusive = d.images.in_use.write().await;
        let survey = match survey(&d).await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                debug!(error = %e.message(), "image collection skipped");
                continue;
            }
        };
        let due = d
            .images
            .unused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sweep(&stored(&survey.images), &survey.needed, now_ms(), grace);
        if !due.is_empty() {
            let why = format!("unused for {}", spec::units::format_duration(grace));
            let report = remove(&d, &survey.images, &due, &why).await;
            info!(
                removed = report.removed.len(),
                reclaimed = report.reclaimed,
                "unused images removed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_collection_looks_often_enough_but_not_too_often() {
        assert_eq!(gc_interval(3600 * 1000), Duration::from_secs(60));
        assert_eq!(gc_interval(8_000), Duration::from_secs(2));
        assert_eq!(gc_interval(1_000), Duration::from_secs(1));
    }
}
