//! Job modes: tasks run to completion, at most `max_concurrent` at once; a completed task is
//! never restarted, a failed one is under the restart policy, and a changed job runs again.

use model::*;

use super::Sim;

fn completed(sim: &Sim, svc: &str) -> Vec<u64> {
    let version = sim.state.services[svc].version;
    let mut v: Vec<u64> = sim
        .state
        .tasks_of(svc)
        .filter(|t| t.status.state == TaskState::Complete && t.spec_version == version)
        .map(|t| t.slot)
        .collect();
    v.sort();
    v
}

fn active(sim: &Sim, svc: &str) -> usize {
    sim.state.tasks_of(svc).filter(|t| t.is_runnable()).count()
}

#[test]
fn a_replicated_job_completes_each_slot_once_at_most_max_concurrent_at_a_time() {
    let mut sim = Sim::new(&["n1", "n2"]);
    let job = sim.create(
        "migrate",
        ServiceMode::ReplicatedJob {
            replicas: 5,
            max_concurrent: 2,
        },
        "oneshot",
    );
    let mut most = 0;
    sim.run_until("5 completions", |s| {
        most = most.max(active(s, &job));
        completed(s, &job).len() == 5
    });
    assert_eq!(completed(&sim, &job), vec![1, 2, 3, 4, 5]);
    assert!(most <= 2, "at most 2 at once, saw {most}");
    assert!(most == 2, "it did run 2 at once");
    // Done: nothing more starts, whatever the default restart condition (any) says.
    let tasks = sim.state.tasks_of(&job).count();
    for _ in 0..100 {
        sim.step();
    }
    assert_eq!(sim.state.tasks_of(&job).count(), tasks);
    assert_eq!(active(&sim, &job), 0);
}

#[test]
fn a_failing_job_task_is_retried_under_the_restart_policy_then_given_up() {
    let mut sim = Sim::new(&["n1"]);
    let job = sim.create(
        "flaky",
        ServiceMode::ReplicatedJob {
            replicas: 1,
            max_concurrent: 1,
        },
        "bad",
    );
    sim.update(&job, |s| {
        s.restart.condition = RestartCondition::OnFailure;
        s.restart.max_attempts = Some(2);
    });
    for _ in 0..300 {
        sim.step();
    }
    let version = sim.state.services[&job].version;
    let tries = sim
        .state
        .tasks_of(&job)
        .filter(|t| t.spec_version == version)
        .count();
    assert_eq!(tries, 3, "the first try and 2 restarts");
    assert_eq!(active(&sim, &job), 0);
}

#[test]
fn a_changed_job_runs_again() {
    let mut sim = Sim::new(&["n1"]);
    let job = sim.create(
        "report",
        ServiceMode::ReplicatedJob {
            replicas: 3,
            max_concurrent: 3,
        },
        "oneshot",
    );
    sim.run_until("3 completions", |s| completed(s, &job).len() == 3);
    let first: Vec<Id> = sim.state.tasks_of(&job).map(|t| t.id.clone()).collect();
    sim.update(&job, |s| {
        s.task.env.insert("RUN".into(), "2".into());
    });
    sim.run_until("3 completions of the new spec", |s| {
        completed(s, &job).len() == 3
    });
    let second = sim
        .state
        .tasks_of(&job)
        .filter(|t| !first.contains(&t.id))
        .count();
    assert_eq!(second, 3);
}

#[test]
fn a_global_job_completes_once_on_every_node() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    let job = sim.create("prune", ServiceMode::GlobalJob, "oneshot");
    sim.run_until("one completion per node", |s| {
        s.state
            .tasks_of(&job)
            .filter(|t| t.status.state == TaskState::Complete)
            .count()
            == 3
    });
    for _ in 0..100 {
        sim.step();
    }
    assert_eq!(sim.state.tasks_of(&job).count(), 3, "none restarted");
    let mut nodes: Vec<_> = sim
        .state
        .tasks_of(&job)
        .map(|t| t.node_id.clone().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, vec!["n1", "n2", "n3"]);
}
