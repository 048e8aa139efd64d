//! The rolling updater: replaces the tasks of a service whose spec changed, slot by slot,
//! following the service's `update` settings (or `rollback` settings while rolling back).
//!
//! Level-triggered: progress is read from the tasks themselves.
//! - A slot is *dirty* when its runnable task was made from an older service version.
//! - A slot is *in flight* while its new task has not reached RUNNING (or, stop-first, while it
//!   waits for the old task to stop), and then for `monitor` after it did: the next batch waits
//!   for the new tasks to be running and to stay so. RUNNING means healthy for a task with a
//!   healthcheck (its node reports it RUNNING only after a check passed), so an update waits
//!   for each new task to be healthy for `monitor`.
//! - A new batch starts when fewer than `parallelism` slots are in flight (0: no limit) and
//!   `delay` has passed since the last new task's `monitor` ended.
//! - stop-first: the old task gets desired SHUTDOWN and the new one is created with desired
//!   READY; it is released to RUNNING once the old task has stopped.
//! - start-first: the new task starts at once; the old one is shut down when the new one runs.
//!   When a batch starts, the next batch's new tasks are *staged*: created with desired READY
//!   while their slots' old tasks still serve, so their nodes pull the image, attach the network
//!   and create the container (and its runtime task) while the current batch is watched. When
//!   their turn comes they are released to RUNNING and only have to start. A staged task is not
//!   in flight and does not count as updated until released; one that fails while being
//!   prepared counts as a failure of the update. Staged tasks of a spec that is no longer
//!   current are retired like any unfinished new task, and a paused update shuts them down.
//! - A new task that fails (or exits) before RUNNING, or within `monitor` of it, counts as a
//!   failure (an unhealthy task is one: its node fails it); above `max_failure_ratio` the
//!   `failure_action` applies: pause, continue, or rollback to the previous spec (a failing
//!   rollback pauses). The status message names the task that failed and why.

use model::{
    ClusterState, Command, FailureAction, Id, Service, SlotKey, TaskState, UpdateConfig,
    UpdateOrder, UpdateState, UpdateStatus,
};

use crate::Pass;
use crate::orchestrator::{new_task, tasks_by_slot, wanted_slots};

/// Every runnable task of the service is of its current version and released (none held at
/// desired READY). From the index's counts when it is fresh: cost independent of the tasks.
fn at_rest(state: &ClusterState, svc: &Service) -> bool {
    match state.service_tasks(&svc.id) {
        Some(counts) => {
            counts.held() == 0
                && counts
                    .runnable_of_version()
                    .keys()
                    .all(|v| *v == svc.version)
        }
        None => state.tasks_of(&svc.id).all(|t| {
            !t.is_runnable() || (t.spec_version == svc.version && t.desired != TaskState::Ready)
        }),
    }
}

pub(crate) fn update_service(pass: &mut Pass<'_>, service_id: &Id) {
    let Some(svc) = pass.state.services.get(service_id).cloned() else {
        return;
    };
    // A changed job is not rolled: it runs again (see the orchestrator).
    if svc.spec.mode.is_job() {
        return;
    }
    let rolling_back = matches!(
        svc.update_status.as_ref().map(|s| s.state),
        Some(UpdateState::RollbackStarted | UpdateState::RollbackPaused)
    );
    let config = if rolling_back {
        svc.spec.rollback.clone()
    } else {
        svc.spec.update.clone()
    };
    let status = svc.update_status.clone();

    // A paused update stays paused until the spec changes again.
    if let Some(st) = &status {
        let paused = matches!(st.state, UpdateState::Paused | UpdateState::RollbackPaused);
        if paused && svc.updated_at <= st.started_at {
            return;
        }
    }

    // Fast path for a service at rest (the common case): no update under way, and every
    // runnable task is of the current version and released.
    let active = matches!(
        status.as_ref().map(|s| s.state),
        Some(UpdateState::Updating | UpdateState::RollbackStarted)
    );
    if !active && at_rest(pass.state, &svc) {
        return;
    }

    let now = pass.now;
    let started_at = status
        .as_ref()
        .filter(|s| {
            matches!(
                s.state,
                UpdateState::Updating | UpdateState::RollbackStarted
            )
        })
        .map(|s| s.started_at)
        .unwrap_or(svc.updated_at);
    let Progress {
        mut dirty,
        in_flight,
        release,
        shut_old,
        last_running,
        updated,
        failed,
        first_failure,
        watch_until,
        monitor_until,
    } = progress(pass.state, &svc, &config, started_at, now);
    let why = first_failure
        .map(|(name, err)| format!(": task {name} failed: {err}"))
        .unwrap_or_default();

    if !release.is_empty() {
        pass.push(Command::SetDesired {
            task_ids: release,
            desired: TaskState::Running,
        });
    }
    if !shut_old.is_empty() {
        pass.push(Command::SetDesired {
            task_ids: shut_old,
            desired: TaskState::Shutdown,
        });
    }

    // An update is under way when the status says so (and no newer spec arrived since it began),
    // or when old tasks wait to be replaced. New tasks of a service that is simply starting, or
    // of a slot being restarted, are not an update.
    if !active && dirty.is_empty() {
        return;
    }
    if let Some(until) = watch_until {
        pass.plan.wake(until);
    }
    if let Some(until) = monitor_until {
        pass.plan.wake(until);
    }
    let updating = dirty.len() as u64 + in_flight > 0 || (active && watch_until.is_some());
    // Every command below names the revision it was planned from (see `Service::revision`).
    let revision = svc.revision;
    let set_status = |pass: &mut Pass<'_>, state: UpdateState, message: &str, started: u64| {
        let completed_at = matches!(
            state,
            UpdateState::Completed | UpdateState::RollbackCompleted
        )
        .then_some(now);
        pass.push(Command::SetUpdateStatus {
            service_id: service_id.clone(),
            status: Some(UpdateStatus {
                state,
                started_at: started,
                completed_at,
                message: message.into(),
            }),
            if_revision: Some(revision),
        });
    };

    // Failure handling.
    if failed > 0 && (updating || active) {
        let ratio_exceeded =
            failed * 1000 > u64::from(config.max_failure_ratio_permille) * updated.max(1);
        if ratio_exceeded {
            match (config.failure_action, rolling_back) {
                (FailureAction::Continue, _) => {}
                (_, true) => {
                    shut_staged(pass, &dirty);
                    set_status(
                        pass,
                        UpdateState::RollbackPaused,
                        &format!("rollback paused{why}"),
                        started_at,
                    );
                    return;
                }
                (FailureAction::Pause, false) => {
                    shut_staged(pass, &dirty);
                    set_status(
                        pass,
                        UpdateState::Paused,
                        &format!("update paused{why}"),
                        started_at,
                    );
                    return;
                }
                (FailureAction::Rollback, false) => {
                    if let Some(prev) = svc.previous_spec.clone() {
                        // Status first: the rollback below moves the revision on.
                        set_status(
                            pass,
                            UpdateState::RollbackStarted,
                            &format!("update rolled back{why}"),
                            now,
                        );
                        pass.push(Command::UpdateService {
                            id: service_id.clone(),
                            spec: prev,
                            image_digest: svc.previous_image_digest.clone(),
                            now,
                            if_revision: Some(revision),
                        });
                    } else {
                        shut_staged(pass, &dirty);
                        set_status(
                            pass,
                            UpdateState::Paused,
                            "update paused: no previous spec",
                            started_at,
                        );
                    }
                    return;
                }
            }
        }
    }

    if !updating {
        match status.as_ref().map(|s| s.state) {
            Some(UpdateState::Updating) => {
                set_status(pass, UpdateState::Completed, "update completed", started_at)
            }
            Some(UpdateState::RollbackStarted) => set_status(
                pass,
                UpdateState::RollbackCompleted,
                "rollback completed",
                started_at,
            ),
            _ => {}
        }
        return;
    }

    if !matches!(
        status.as_ref().map(|s| s.state),
        Some(UpdateState::Updating | UpdateState::RollbackStarted)
    ) || status
        .as_ref()
        .is_some_and(|s| s.started_at < svc.updated_at && !rolling_back)
    {
        // `max`: a wall clock that stepped back must not restart the update on every pass.
        set_status(
            pass,
            UpdateState::Updating,
            "update in progress",
            now.max(svc.updated_at),
        );
    }

    // Start the next batch once there is room and the delay has passed.
    let room = if config.parallelism == 0 {
        u64::MAX
    } else {
        config.parallelism.saturating_sub(in_flight)
    };
    if room == 0 || dirty.is_empty() {
        return;
    }
    // A global task is placed as it is created: a global dependant's update waits for its
    // dependencies (a replicated one's new tasks wait in the scheduler).
    if svc.spec.mode.is_global() && pass.state.unmet_dependency(&svc.spec).is_some() {
        return;
    }
    if let Some(last) = last_running
        && in_flight == 0
        && config.delay > 0
        && now < last + config.delay
    {
        pass.plan.wake(last + config.delay);
        return;
    }
    // Staged slots go first (the sort is stable: the rest keep their slot order).
    dirty.sort_by_key(|d| d.staged.is_none());
    let take = room.min(dirty.len() as u64) as usize;
    let rest = dirty.split_off(take);
    // Stage the batch after this one (start-first with a batch size only: stop-first keeps its
    // promise that a slot's new task is set up only once the old one is gone).
    let stage = if config.order == UpdateOrder::StartFirst && config.parallelism > 0 {
        let staged = rest.iter().filter(|d| d.staged.is_some()).count() as u64;
        let more = config.parallelism.saturating_sub(staged) as usize;
        rest.into_iter()
            .filter(|d| d.staged.is_none())
            .take(more)
            .collect()
    } else {
        Vec::new()
    };
    start_batch(pass, &svc, &config, dirty, stage);
}

/// A slot whose runnable task is of an older version.
struct Dirty {
    slot: SlotKey,
    /// The old task that serves the slot until it is replaced (none when it died).
    old: Vec<Id>,
    /// The slot's new task staged at desired READY, waiting for its batch.
    staged: Option<Id>,
}

/// A paused update leaves the serving tasks alone and shuts the staged ones down.
fn shut_staged(pass: &mut Pass<'_>, dirty: &[Dirty]) {
    let staged: Vec<Id> = dirty.iter().filter_map(|d| d.staged.clone()).collect();
    if !staged.is_empty() {
        pass.push(Command::SetDesired {
            task_ids: staged,
            desired: TaskState::Shutdown,
        });
    }
}

/// What the tasks say about a service's update, read in one go from the state.
struct Progress {
    /// Slots whose runnable task is of an older version, with the task to replace.
    dirty: Vec<Dirty>,
    in_flight: u64,
    /// stop-first new tasks whose old task has stopped: release them to RUNNING.
    release: Vec<Id>,
    /// Old tasks to shut down (start-first hand-over done, or an interrupted update).
    shut_old: Vec<Id>,
    last_running: Option<u64>,
    updated: u64,
    failed: u64,
    /// The first failed new task: its name and error.
    first_failure: Option<(String, String)>,
    /// When the first new task under `monitor` leaves it (its slot is no longer in flight).
    monitor_until: Option<u64>,
    /// After the last slot, new tasks stay under watch until `monitor` has passed since they
    /// started: a crash then still counts as a failed update.
    watch_until: Option<u64>,
}

fn progress(
    state: &ClusterState,
    svc: &Service,
    config: &UpdateConfig,
    started_at: u64,
    now: u64,
) -> Progress {
    let wanted = wanted_slots(state, svc);
    let slots = tasks_by_slot(state, &svc.id);

    let mut dirty = Vec::new();
    let mut in_flight = 0u64;
    let mut release = Vec::new();
    let mut shut_old = Vec::new();
    let mut last_running: Option<u64> = None;
    let mut updated = 0u64;
    let mut failed = 0u64;
    let mut first_failure: Option<(u64, String, String)> = None;
    let mut monitor_until: Option<u64> = None;

    for (slot, tasks) in &slots {
        if !wanted.contains(slot) {
            continue;
        }
        // A paused node gets no new tasks, updates included: its global task stays as it is
        // until the node is active again.
        if let SlotKey::Node(n) = slot
            && !state.nodes.get(n).is_some_and(|n| n.is_eligible())
        {
            continue;
        }
        let runnable: Vec<_> = tasks.iter().filter(|t| t.is_runnable()).collect();
        let new: Vec<_> = runnable
            .iter()
            .filter(|t| t.spec_version == svc.version)
            .collect();
        let old: Vec<_> = runnable
            .iter()
            .filter(|t| t.spec_version != svc.version)
            .collect();
        // Old tasks still stopping in this slot (stop-first hand-over).
        let old_stopping = tasks.iter().any(|t| {
            t.spec_version != svc.version
                && t.desired >= TaskState::Shutdown
                && !t.status.state.is_terminal()
                && t.node_id.is_some()
        });

        // The slot's new task waits at READY while an old one serves: staged for a later batch.
        let staged = new
            .first()
            .filter(|n| n.desired == TaskState::Ready && !old.is_empty())
            .map(|n| n.id.clone());

        // A slot whose new task failed is done for the update (its failure counts, the
        // restart policy replaces it): the update goes on with the next slot, as Swarm's.
        let mut slot_failed = false;
        for t in tasks
            .iter()
            .filter(|t| t.spec_version == svc.version && t.created_at >= started_at)
        {
            if t.restart_attempt == 0 && staged.as_ref() != Some(&t.id) {
                updated += 1;
            }
            if t.status.state == TaskState::Running {
                // The batch is done once its tasks stayed running for `monitor`.
                let settled = t.started_at.unwrap_or(t.status.timestamp) + config.monitor;
                last_running = Some(last_running.map_or(settled, |l| l.max(settled)));
            }
            if failed_within_monitor(t, config) {
                slot_failed = true;
                let at = t.status.timestamp;
                if first_failure.as_ref().is_none_or(|(first, ..)| at < *first) {
                    let err = t
                        .status
                        .err
                        .clone()
                        .unwrap_or_else(|| format!("ended {}", t.status.state));
                    first_failure = Some((at, t.name(), err));
                }
            }
        }

        // Failures count per slot, like the updated tasks (restarts in a slot do not add up).
        failed += u64::from(slot_failed);
        if staged.is_some() || (new.is_empty() && !old.is_empty()) {
            // Still to be replaced. When a newer spec interrupted an update of this slot, keep
            // the task that serves (the newest running one, else the newest) and retire the
            // unfinished others.
            let keep = old
                .iter()
                .filter(|t| t.status.state == TaskState::Running)
                .max_by_key(|t| t.created_at)
                .or_else(|| old.iter().max_by_key(|t| t.created_at))
                .map(|t| t.id.clone());
            shut_old.extend(
                old.iter()
                    .filter(|t| Some(&t.id) != keep.as_ref())
                    .map(|t| t.id.clone()),
            );
            dirty.push(Dirty {
                slot: slot.clone(),
                old: keep.into_iter().collect(),
                staged,
            });
            continue;
        }
        if let Some(n) = new.first() {
            if n.desired == TaskState::Ready {
                // stop-first: wait for the old task to stop, then release the new one.
                if !old_stopping && old.is_empty() {
                    release.push(n.id.clone());
                }
                if !slot_failed {
                    in_flight += 1;
                }
            } else if n.status.state < TaskState::Running {
                if !slot_failed {
                    in_flight += 1;
                }
            } else {
                if !old.is_empty() {
                    // start-first: the new task runs, retire the old one.
                    shut_old.extend(old.iter().map(|t| t.id.clone()));
                }
                // Running: still in flight until it stayed so for `monitor`.
                if n.created_at >= started_at
                    && let Some(s) = n.started_at
                    && s + config.monitor > now
                {
                    in_flight += 1;
                    let until = s + config.monitor;
                    monitor_until = Some(monitor_until.map_or(until, |u| u.min(until)));
                }
            }
        }
    }

    let watch_until = slots
        .values()
        .flatten()
        .filter(|t| t.spec_version == svc.version && t.created_at >= started_at && t.is_runnable())
        .filter_map(|t| t.started_at)
        .map(|s| s + config.monitor)
        .max()
        .filter(|until| *until > now);
    Progress {
        dirty,
        in_flight,
        release,
        shut_old,
        last_running,
        updated,
        failed,
        first_failure: first_failure.map(|(_, name, err)| (name, err)),
        watch_until,
        monitor_until,
    }
}

/// Starts `batch` (releasing the slots' staged tasks, creating new ones for the others) and
/// stages `stage`.
fn start_batch(
    pass: &mut Pass<'_>,
    svc: &Service,
    config: &UpdateConfig,
    batch: Vec<Dirty>,
    stage: Vec<Dirty>,
) {
    let mut tasks = Vec::new();
    let mut stop = Vec::new();
    let mut release = Vec::new();
    for d in batch {
        let stop_first = config.order == UpdateOrder::StopFirst;
        match d.staged {
            // stop-first (the order changed since it was staged): it is released once the old
            // task has stopped, as any stop-first new task.
            Some(_) if stop_first => stop.extend(d.old),
            Some(id) => release.push(id),
            None => {
                let Some(mut t) = new_task(pass, svc, &d.slot) else {
                    // No free address on one of its networks: this slot waits for the next pass.
                    continue;
                };
                if stop_first {
                    t.desired = TaskState::Ready;
                    stop.extend(d.old);
                }
                tasks.push(t);
            }
        }
    }
    for d in stage {
        let Some(mut t) = new_task(pass, svc, &d.slot) else {
            continue;
        };
        t.desired = TaskState::Ready;
        tasks.push(t);
    }
    if !release.is_empty() {
        pass.push(Command::SetDesired {
            task_ids: release,
            desired: TaskState::Running,
        });
    }
    if !stop.is_empty() {
        pass.push(Command::SetDesired {
            task_ids: stop,
            desired: TaskState::Shutdown,
        });
    }
    pass.push(Command::PutTasks(tasks));
}

/// A new task that ended (failed, rejected or even completed) within `monitor` of its start.
fn failed_within_monitor(t: &model::Task, config: &UpdateConfig) -> bool {
    match t.status.state {
        // A task that never ran failed its update; one that ran counts within `monitor`.
        TaskState::Failed | TaskState::Rejected | TaskState::Complete => {
            t.started_at.is_none() || crate::orchestrator::ran_for(t) <= config.monitor
        }
        _ => false,
    }
}
