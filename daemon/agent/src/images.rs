//! Which images a node keeps, and which it may remove: pure decisions, no IO, no clock.
//!
//! Images are compared by manifest digest (the digest a service resolved its image to, which
//! every task of that version carries). A digest is needed on a node, strongest reason first:
//!
//! - [`Need::Task`]: a task on this node that has not finished (observed state before
//!   COMPLETE: assigned, preparing, starting, running, stopping) runs it, or a container in
//!   containerd was made from it;
//! - [`Need::Service`]: it is the current or the previous (rollback) image of a service that has
//!   tasks on this node, history included;
//! - [`Need::Preload`]: the node's configuration preloads it (`[images] preload`).
//!
//! Only images shoal recorded itself ([`StoredImage::managed`]) are ever removed. The automatic
//! collection removes an image nothing has needed for a whole grace period ([`UnusedSince`]);
//! `shoal image prune` removes what is unneeded now ([`prunable`]).

use std::collections::{BTreeMap, BTreeSet};

use model::{Id, Millis, Task};

/// Why a node keeps an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// A task on this node that has not finished, or a container, uses it.
    Task,
    /// The current or previous image of a service with tasks on this node.
    Service,
    /// Listed in the node's `[images] preload`.
    Preload,
}

impl Need {
    /// As `shoal image ls` shows it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Need::Task => "task",
            Need::Service => "service",
            Need::Preload => "preload",
        }
    }
}

/// What the managers know of a service's images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceImages {
    pub current: Option<String>,
    pub previous: Option<String>,
}

/// An image record in containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// The record's name (`localhost:5000/web:1`, `localhost:5000/web@sha256:...`).
    pub name: String,
    /// The manifest digest the record points at.
    pub digest: String,
    /// Recorded by shoal (its pull or import); anything else is never removed.
    pub managed: bool,
}

/// The digests this node needs and why (the strongest reason of each).
///
/// `tasks` are this node's tasks, history included. `services` is the managers' view of the
/// services (`None` on a worker, which has no state: the current and previous images of a
/// service are then those of the two newest versions among its tasks here); with `Some`, a
/// service missing from the map was removed, and only its unfinished tasks keep images.
/// `containers` are the digests of the containers present in containerd, `preloaded` those of
/// the configured preloads.
pub fn needed(
    tasks: &[Task],
    services: Option<&BTreeMap<Id, ServiceImages>>,
    containers: &BTreeSet<String>,
    preloaded: &BTreeSet<String>,
) -> BTreeMap<String, Need> {
    let mut out: BTreeMap<String, Need> = BTreeMap::new();
    let mut add = |digest: &str, need: Need| {
        out.entry(digest.to_string())
            .and_modify(|n| *n = (*n).min(need))
            .or_insert(need);
    };
    for d in containers {
        add(d, Need::Task);
    }
    for t in tasks {
        if let Some(d) = &t.image_digest
            && !t.status.state.is_terminal()
        {
            add(d, Need::Task);
        }
    }
    // The services with tasks here, and (for a worker) each one's versions, newest first.
    let mut versions: BTreeMap<&Id, BTreeMap<std::cmp::Reverse<u64>, &str>> = BTreeMap::new();
    for t in tasks {
        let by_version = versions.entry(&t.service_id).or_default();
        if let Some(d) = &t.image_digest {
            by_version.insert(std::cmp::Reverse(t.spec_version), d);
        }
    }
    for (service, by_version) in versions {
        match services {
            Some(known) => {
                if let Some(s) = known.get(service) {
                    for d in [&s.current, &s.previous].into_iter().flatten() {
                        add(d, Need::Service);
                    }
                }
            }
            None => {
                for d in by_version.values().take(2) {
                    add(d, Need::Service);
                }
            }
        }
    }
    for d in preloaded {
        add(d, Need::Preload);
    }
    out
}

/// The records `shoal image prune` removes now: shoal's images that nothing needs, or with
/// `all`, that no task or container needs (rollback and preloaded images go too).
pub fn prunable(images: &[StoredImage], needed: &BTreeMap<String, Need>, all: bool) -> Vec<String> {
    images
        .iter()
        .filter(|i| i.managed)
        .filter(|i| match needed.get(&i.digest) {
            None => true,
            Some(Need::Task) => false,
            Some(_) => all,
        })
        .map(|i| i.name.clone())
        .collect()
}

/// The automatic collection's memory: since when each of shoal's images has been unneeded.
/// Kept in memory, so a restarted daemon waits a whole grace period again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnusedSince {
    since: BTreeMap<String, Millis>,
}

impl UnusedSince {
    /// Look at the images at `now` and return the records to remove: those of shoal's images
    /// that nothing has needed for at least `grace`.
    pub fn sweep(
        &mut self,
        images: &[StoredImage],
        needed: &BTreeMap<String, Need>,
        now: Millis,
        grace: Millis,
    ) -> Vec<String> {
        let unneeded: BTreeSet<&str> = images
            .iter()
            .filter(|i| i.managed && !needed.contains_key(&i.digest))
            .map(|i| i.digest.as_str())
            .collect();
        // Needed again, or gone: forget; newly unneeded: the clock starts now.
        self.since.retain(|d, _| unneeded.contains(d.as_str()));
        for d in &unneeded {
            self.since.entry(d.to_string()).or_insert(now);
        }
        images
            .iter()
            .filter(|i| i.managed)
            .filter(|i| {
                self.since
                    .get(&i.digest)
                    .is_some_and(|since| now.saturating_sub(*since) >= grace)
            })
            .map(|i| i.name.clone())
            .collect()
    }

    /// Since when `digest` has been unneeded, if it is.
    pub fn get(&self, digest: &str) -> Option<Millis> {
        self.since.get(digest).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{TaskSpec, TaskState, TaskStatus};

    fn task(service: &str, version: u64, digest: &str, state: TaskState) -> Task {
        Task {
            id: format!("{service}-{version}-{}", state.as_str()),
            service_id: service.into(),
            service_name: service.into(),
            slot: 1,
            node_id: Some("n1".into()),
            spec_version: version,
            spec: TaskSpec::default(),
            image_digest: Some(digest.into()),
            ports: Vec::new(),
            desired: if state.is_terminal() {
                TaskState::Shutdown
            } else {
                TaskState::Running
            },
            status: TaskStatus {
                state,
                ..Default::default()
            },
            created_at: 0,
            not_before: None,
            restart_attempt: 0,
            started_at: None,
            networks: Vec::new(),
        }
    }

    fn image(name: &str, digest: &str) -> StoredImage {
        StoredImage {
            name: name.into(),
            digest: digest.into(),
            managed: true,
        }
    }

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    /// web went A -> B -> C; its tasks of A and B are history, C runs.
    fn web_history() -> Vec<Task> {
        vec![
            task("web", 1, "A", TaskState::Shutdown),
            task("web", 2, "B", TaskState::Shutdown),
            task("web", 3, "C", TaskState::Running),
        ]
    }

    #[test]
    fn a_worker_keeps_the_running_image_and_the_one_before_it() {
        let need = needed(&web_history(), None, &none(), &none());
        assert_eq!(need.get("C"), Some(&Need::Task));
        assert_eq!(need.get("B"), Some(&Need::Service));
        assert_eq!(need.get("A"), None);
    }

    #[test]
    fn a_manager_keeps_what_the_service_says() {
        let services = BTreeMap::from([(
            "web".to_string(),
            ServiceImages {
                current: Some("C".into()),
                previous: Some("B".into()),
            },
        )]);
        let need = needed(&web_history(), Some(&services), &none(), &none());
        assert_eq!(need.get("C"), Some(&Need::Task));
        assert_eq!(need.get("B"), Some(&Need::Service));
        assert_eq!(need.get("A"), None);
    }

    #[test]
    fn a_removed_service_keeps_only_what_still_runs() {
        // The service is gone from the state; one task is still stopping.
        let tasks = vec![
            task("web", 1, "A", TaskState::Shutdown),
            task("web", 2, "B", TaskState::Running),
        ];
        let need = needed(&tasks, Some(&BTreeMap::new()), &none(), &none());
        assert_eq!(need.get("B"), Some(&Need::Task));
        assert_eq!(need.get("A"), None);
        let tasks = vec![task("web", 2, "B", TaskState::Shutdown)];
        assert!(needed(&tasks, Some(&BTreeMap::new()), &none(), &none()).is_empty());
    }

    #[test]
    fn starting_tasks_and_containers_hold_their_images() {
        let tasks = vec![
            task("a", 1, "A", TaskState::Assigned),
            task("b", 1, "B", TaskState::Preparing),
            task("c", 1, "C", TaskState::Starting),
            task("d", 1, "D", TaskState::Failed),
        ];
        let containers = BTreeSet::from(["E".to_string()]);
        let need = needed(&tasks, Some(&BTreeMap::new()), &containers, &none());
        for d in ["A", "B", "C", "E"] {
            assert_eq!(need.get(d), Some(&Need::Task), "{d}");
        }
        assert_eq!(need.get("D"), None);
    }

    #[test]
    fn preloaded_images_are_kept_and_the_strongest_reason_wins() {
        let preloaded = BTreeSet::from(["C".to_string(), "P".to_string()]);
        let need = needed(&web_history(), None, &none(), &preloaded);
        assert_eq!(need.get("P"), Some(&Need::Preload));
        assert_eq!(need.get("C"), Some(&Need::Task));
    }

    #[test]
    fn prune_removes_every_record_of_an_unneeded_image_and_only_shoals() {
        let images = vec![
            image("r/web:a", "A"),
            image("r/web@A", "A"),
            image("r/web:b", "B"),
            image("r/web:c", "C"),
            StoredImage {
                managed: false,
                ..image("someone/else:1", "X")
            },
        ];
        let need = needed(&web_history(), None, &none(), &none());
        assert_eq!(prunable(&images, &need, false), ["r/web:a", "r/web@A"]);
        // -a: the rollback image goes too, never the running one.
        assert_eq!(
            prunable(&images, &need, true),
            ["r/web:a", "r/web@A", "r/web:b"]
        );
    }

    #[test]
    fn the_collection_waits_a_whole_grace_period_of_disuse() {
        let images = vec![image("r/web:a", "A"), image("r/web:c", "C")];
        let need = needed(&web_history(), None, &none(), &none());
        let mut unused = UnusedSince::default();
        let grace = 3_600_000;
        assert!(unused.sweep(&images, &need, 1_000, grace).is_empty());
        assert_eq!(unused.get("A"), Some(1_000));
        assert!(
            unused
                .sweep(&images, &need, 1_000 + grace - 1, grace)
                .is_empty()
        );
        assert_eq!(
            unused.sweep(&images, &need, 1_000 + grace, grace),
            ["r/web:a"]
        );
    }

    #[test]
    fn an_image_needed_again_starts_its_grace_period_over() {
        let images = vec![image("r/web:a", "A")];
        let grace = 100;
        let mut unused = UnusedSince::default();
        unused.sweep(&images, &BTreeMap::new(), 0, grace);
        // A task uses it again for a while...
        let in_use = BTreeMap::from([("A".to_string(), Need::Task)]);
        assert!(unused.sweep(&images, &in_use, 90, grace).is_empty());
        assert_eq!(unused.get("A"), None);
        // ...so its disuse counts from when that task went away.
        assert!(
            unused
                .sweep(&images, &BTreeMap::new(), 150, grace)
                .is_empty()
        );
        assert!(
            unused
                .sweep(&images, &BTreeMap::new(), 249, grace)
                .is_empty()
        );
        assert_eq!(
            unused.sweep(&images, &BTreeMap::new(), 250, grace),
            ["r/web:a"]
        );
    }

    #[test]
    fn images_shoal_did_not_record_are_never_collected() {
        let images = vec![StoredImage {
            managed: false,
            ..image("someone/else:1", "X")
        }];
        let mut unused = UnusedSince::default();
        unused.sweep(&images, &BTreeMap::new(), 0, 0);
        assert!(unused.sweep(&images, &BTreeMap::new(), 10, 0).is_empty());
        assert!(prunable(&images, &BTreeMap::new(), true).is_empty());
    }
}
