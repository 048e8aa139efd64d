//! `depends_on`: a dependant's tasks are placed only once its dependencies meet their condition,
//! and wait, PENDING with the reason, until then.

use model::*;

use super::Sim;

fn pending_reasons(sim: &Sim, svc: &str) -> Vec<String> {
    sim.state
        .tasks_of(svc)
        .filter(|t| t.status.state == TaskState::Pending)
        .filter_map(|t| t.status.err.clone())
        .collect()
}

fn first_start(sim: &Sim, svc: &str) -> Option<Millis> {
    sim.state.tasks_of(svc).filter_map(|t| t.started_at).min()
}

fn run_steps(sim: &mut Sim, n: usize) {
    for _ in 0..n {
        sim.step();
    }
}

#[test]
fn a_dependant_waits_for_a_healthy_dependency_and_says_why() {
    let mut sim = Sim::new(&["n1", "n2"]);
    // A database that never becomes healthy, and a web service that needs it healthy.
    let db = sim.create("db", ServiceMode::Replicated { replicas: 1 }, "unhealthy");
    let web = sim.create("web", ServiceMode::Replicated { replicas: 2 }, "web");
    sim.update(&web, |s| {
        s.depends_on
            .insert("db".into(), DependCondition::ServiceHealthy);
    });
    run_steps(&mut sim, 100);
    assert!(sim.running(&web).is_empty());
    assert!(
        sim.state.tasks_of(&web).all(|t| t.node_id.is_none()),
        "no task of web was placed"
    );
    let reasons = pending_reasons(&sim, &web);
    assert_eq!(reasons.len(), 2, "{:#?}", sim.state.tasks);
    assert!(
        reasons
            .iter()
            .all(|r| r == "waiting for dependency db to be healthy (service_healthy)"),
        "{reasons:?}"
    );

    // The database's new image becomes healthy: web follows, and not before.
    sim.update(&db, |s| s.task.image = "db-v2".into());
    sim.run_until("web runs", |s| s.converged(&web, 2));
    let db_up = sim
        .state
        .tasks_of(&db)
        .filter(|t| t.spec.image == "db-v2")
        .filter_map(|t| t.started_at)
        .min()
        .unwrap();
    assert!(first_start(&sim, &web).unwrap() > db_up);
    assert!(sim.state.tasks_of(&web).all(|t| t.status.err.is_none()));
}

#[test]
fn a_dependant_of_a_one_shot_job_starts_after_it_exits_with_status_zero() {
    let mut sim = Sim::new(&["n1"]);
    let migrate = sim.create(
        "migrate",
        ServiceMode::Replicated { replicas: 1 },
        "oneshot",
    );
    sim.update(&migrate, |s| {
        s.restart.condition = RestartCondition::OnFailure
    });
    let app = sim.create("app", ServiceMode::Replicated { replicas: 1 }, "app");
    sim.update(&app, |s| {
        s.depends_on.insert(
            "migrate".into(),
            DependCondition::ServiceCompletedSuccessfully,
        );
    });
    sim.run_until("app runs", |s| s.converged(&app, 1));
    let done = sim
        .state
        .tasks_of(&migrate)
        .find(|t| t.status.state == TaskState::Complete)
        .expect("the job completed")
        .status
        .timestamp;
    assert!(first_start(&sim, &app).unwrap() > done);
}

#[test]
fn a_global_dependant_gets_no_task_until_its_dependency_runs() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    let db = sim.create("db", ServiceMode::Replicated { replicas: 0 }, "db");
    let agent = sim.create("agent", ServiceMode::Global, "agent");
    sim.update(&agent, |s| {
        s.depends_on
            .insert("db".into(), DependCondition::ServiceStarted);
    });
    run_steps(&mut sim, 50);
    assert_eq!(sim.state.tasks_of(&agent).count(), 0);
    sim.update(&db, |s| s.mode = ServiceMode::Replicated { replicas: 1 });
    sim.run_until("agent everywhere", |s| s.converged(&agent, 3));
}

#[test]
fn a_replacement_of_a_crashed_dependant_waits_while_its_dependency_is_down() {
    let mut sim = Sim::new(&["n1"]);
    let db = sim.create("db", ServiceMode::Replicated { replicas: 1 }, "db");
    let web = sim.create("web", ServiceMode::Replicated { replicas: 1 }, "web");
    sim.update(&web, |s| {
        s.depends_on
            .insert("db".into(), DependCondition::ServiceStarted);
    });
    sim.run_until("both run", |s| s.converged(&db, 1) && s.converged(&web, 1));
    // The database is scaled to zero and the web task crashes: its replacement waits.
    sim.update(&db, |s| s.mode = ServiceMode::Replicated { replicas: 0 });
    sim.run_until("db stopped", |s| s.running(&db).is_empty());
    let w = sim.running(&web)[0].id.clone();
    sim.crash(&w);
    run_steps(&mut sim, 50);
    assert!(sim.running(&web).is_empty());
    assert_eq!(
        pending_reasons(&sim, &web),
        vec!["waiting for dependency db to start (service_started)".to_string()]
    );
    sim.update(&db, |s| s.mode = ServiceMode::Replicated { replicas: 1 });
    sim.run_until("web back", |s| s.converged(&web, 1));
}

#[test]
fn a_dependency_on_itself_is_refused_at_apply() {
    let mut sim = Sim::new(&["n1"]);
    let web = sim.create("web", ServiceMode::Replicated { replicas: 1 }, "web");
    let mut spec = sim.state.services[&web].spec.clone();
    spec.depends_on
        .insert("web".into(), DependCondition::ServiceStarted);
    let err = sim
        .state
        .apply(&Command::UpdateService {
            id: web.clone(),
            spec,
            image_digest: None,
            now: sim.now,
            if_revision: None,
        })
        .unwrap_err();
    assert!(err.to_string().contains("depends on itself"), "{err}");
}
