//! Health-gated rolling updates: each new task must be RUNNING (healthy) and stay so for
//! `monitor` before the next batch; a new task that never becomes healthy is a failed update;
//! `--force` rolls every task one batch at a time.

use model::*;

use super::Sim;

/// When each task of `image` was created and when it started, in creation order.
fn batches(sim: &Sim, svc: &str, image: &str) -> Vec<(Millis, Option<Millis>)> {
    let mut v: Vec<_> = sim
        .state
        .tasks_of(svc)
        .filter(|t| t.spec.image == image)
        .map(|t| (t.created_at, t.started_at))
        .collect();
    v.sort();
    v
}

#[test]
fn each_batch_waits_for_the_last_to_stay_running_for_monitor() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 3 }, "v1");
    sim.run_until("3", |s| s.converged(&svc, 3));
    sim.update(&svc, |s| {
        s.task.image = "v2".into();
        s.update.monitor = 2_000;
        s.update.delay = 500;
    });
    sim.run_until("updated", |s| {
        s.converged(&svc, 3)
            && s.running(&svc).iter().all(|t| t.spec.image == "v2")
            && s.state.services[&svc]
                .update_status
                .as_ref()
                .is_some_and(|u| u.state == UpdateState::Completed)
    });
    let b = batches(&sim, &svc, "v2");
    assert_eq!(b.len(), 3, "{b:?}");
    for w in b.windows(2) {
        let started = w[0].1.expect("the new task ran");
        assert!(
            w[1].0 >= started + 2_000 + 500,
            "the next batch waited monitor (2s) and delay (0.5s) after the last one ran: {b:?}"
        );
    }
    let st = sim.state.services[&svc].update_status.clone().unwrap();
    assert_eq!(st.message, "update completed");
}

#[test]
fn a_monitor_of_zero_goes_on_as_soon_as_the_task_runs() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 3 }, "v1");
    sim.run_until("3", |s| s.converged(&svc, 3));
    sim.update(&svc, |s| {
        s.task.image = "v2".into();
        s.update.monitor = 0;
    });
    sim.run_until("updated", |s| {
        s.converged(&svc, 3) && s.running(&svc).iter().all(|t| t.spec.image == "v2")
    });
    let b = batches(&sim, &svc, "v2");
    assert!(b[2].0 - b[0].0 < 2_000, "{b:?}");
}

#[test]
fn new_tasks_that_never_become_healthy_roll_back_and_say_why() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 3 }, "v1");
    sim.run_until("3", |s| s.converged(&svc, 3));
    sim.update(&svc, |s| {
        s.task.image = "unhealthy".into();
        s.update.failure_action = FailureAction::Rollback;
    });
    let mut messages = Vec::new();
    sim.run_until("rolled back", |s| {
        if let Some(u) = &s.state.services[&svc].update_status
            && messages.last() != Some(&u.message)
        {
            messages.push(u.message.clone());
        }
        s.state.services[&svc]
            .update_status
            .as_ref()
            .is_some_and(|u| u.state == UpdateState::RollbackCompleted)
    });
    assert!(sim.converged(&svc, 3));
    assert!(sim.running(&svc).iter().all(|t| t.spec.image == "v1"));
    assert_eq!(sim.state.services[&svc].spec.task.image, "v1");
    // Only the first batch tried the new spec, and none of it ever ran.
    let bad: Vec<_> = sim
        .state
        .tasks_of(&svc)
        .filter(|t| t.spec.image == "unhealthy")
        .collect();
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert!(bad.iter().all(|t| t.started_at.is_none()));
    assert!(
        messages
            .iter()
            .any(|m| m == "update rolled back: task web.1 failed: task: unhealthy container"),
        "{messages:?}"
    );
    assert_eq!(messages.last().unwrap(), "rollback completed");
}

#[test]
fn pause_keeps_old_tasks_serving_and_continue_goes_on_under_the_ratio() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 4 }, "v1");
    sim.run_until("4", |s| s.converged(&svc, 4));
    sim.update(&svc, |s| {
        s.task.image = "unhealthy".into();
        s.update.failure_action = FailureAction::Pause;
    });
    sim.run_until("paused", |s| {
        s.state.services[&svc]
            .update_status
            .as_ref()
            .is_some_and(|u| u.state == UpdateState::Paused)
    });
    for _ in 0..100 {
        sim.step();
    }
    let old = sim
        .running(&svc)
        .iter()
        .filter(|t| t.spec.image == "v1")
        .count();
    assert_eq!(
        old, 3,
        "one slot tried the update, three old tasks still serve"
    );
    assert_eq!(
        sim.state.services[&svc]
            .update_status
            .as_ref()
            .unwrap()
            .message,
        "update paused: task web.1 failed: task: unhealthy container"
    );

    // A tolerated ratio lets the update go on past a failure.
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 4 }, "v1");
    sim.run_until("4", |s| s.converged(&svc, 4));
    sim.update(&svc, |s| {
        s.task.image = "unhealthy".into();
        s.update.failure_action = FailureAction::Pause;
        s.update.max_failure_ratio_permille = 1000;
    });
    for _ in 0..300 {
        sim.step();
    }
    let slots: std::collections::BTreeSet<u64> = sim
        .state
        .tasks_of(&svc)
        .filter(|t| t.spec.image == "unhealthy")
        .map(|t| t.slot)
        .collect();
    assert_eq!(slots.len(), 4, "a ratio of 1 tolerates every failure");
}

#[test]
fn force_update_restarts_every_task_one_batch_at_a_time() {
    let mut sim = Sim::new(&["n1"]);
    let svc = sim.create("web", ServiceMode::Replicated { replicas: 3 }, "v1");
    sim.run_until("3", |s| s.converged(&svc, 3));
    let before: Vec<Id> = sim.running(&svc).iter().map(|t| t.id.clone()).collect();
    sim.update(&svc, |s| {
        s.task.force_update += 1;
        s.update.monitor = 1_000;
    });
    let mut most_down = 0;
    sim.run_until("restarted", |s| {
        let running = s.running(&svc);
        most_down = most_down.max(3 - running.len());
        running.len() == 3 && running.iter().all(|t| !before.contains(&t.id))
    });
    assert_eq!(most_down, 1, "one task at a time");
    let b: Vec<_> = sim
        .state
        .tasks_of(&svc)
        .filter(|t| !before.contains(&t.id))
        .map(|t| t.created_at)
        .collect();
    assert_eq!(b.len(), 3, "each task replaced once");
}
