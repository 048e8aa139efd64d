//! Stack secrets: a file's new content is a new version that rolls the services using it; the
//! old version goes once nothing uses it; an unchanged file changes nothing.

use std::collections::BTreeMap;

use model::*;

use super::Sim;
use crate::SeqIds;
use crate::stacks::{FileStack, PlanError, plan_reload};

fn stack_with_secret(content: &[u8]) -> StackSpec {
    let mut web = ServiceSpec {
        name: "s_web".into(),
        stack: Some("s".into()),
        ..Default::default()
    };
    web.task.image = "bb".into();
    web.task.stop_signal = "SIGTERM".into();
    web.task
        .secrets
        .push(SecretRef::new(SecretKind::Secret, "db_password"));
    let digest = format!("digest-of-{}", String::from_utf8_lossy(content));
    StackSpec {
        name: "s".into(),
        services: vec![web],
        secrets: BTreeMap::from([(
            "db_password".to_string(),
            StackSecret {
                file: Some("./pw.txt".into()),
                digest,
                data: Some(SecretData::new(content.to_vec())),
                ..Default::default()
            },
        )]),
        ..Default::default()
    }
}

fn file(hash: &str, spec: StackSpec) -> FileStack {
    FileStack {
        name: "s".into(),
        path: "/etc/shoal/stacks/s.toml".into(),
        hash: hash.into(),
        spec,
    }
}

fn reload(sim: &mut Sim, f: FileStack, ids: &mut SeqIds) {
    let p = plan_reload(&sim.state, &[f], &BTreeMap::new(), sim.now, ids).unwrap();
    if let Some(c) = &p.command {
        sim.state.apply(c).unwrap();
    }
}

#[test]
fn a_changed_secret_file_is_a_new_version_that_rolls_the_service_and_the_old_one_goes() {
    let mut sim = Sim::new(&["n1"]);
    let mut ids = SeqIds::new("x");
    reload(&mut sim, file("h1", stack_with_secret(b"one")), &mut ids);
    let svc = sim.state.service_by_name("s_web").unwrap().id.clone();
    sim.run_until("1", |s| s.converged(&svc, 1));
    let v1 = sim
        .state
        .current_secret(SecretKind::Secret, "s_db_password")
        .unwrap()
        .clone();
    assert_eq!(v1.data.expose(), b"one");
    assert_eq!(v1.stack.as_deref(), Some("s"));
    let task = sim.running(&svc)[0].clone();
    assert_eq!(task.spec.secrets[0].id, v1.id);
    assert_eq!(task.spec.secrets[0].name, "s_db_password");
    assert_eq!(task.spec.secrets[0].target, "db_password");
    // The stored stack keeps the digest, never the content.
    let stored = &sim.state.stacks["s"].spec.secrets["db_password"];
    assert!(stored.data.is_none() && !stored.digest.is_empty());

    // The same content under a changed stack file hash: no new version, nothing rolls.
    reload(&mut sim, file("h2", stack_with_secret(b"one")), &mut ids);
    assert_eq!(sim.state.secrets.len(), 1);
    assert_eq!(sim.state.services[&svc].version, 1);

    // New content: a new version, the service rolls to it.
    reload(&mut sim, file("h3", stack_with_secret(b"two")), &mut ids);
    let v2 = sim
        .state
        .current_secret(SecretKind::Secret, "s_db_password")
        .unwrap()
        .clone();
    assert_ne!(v2.id, v1.id);
    assert_eq!(v2.data.expose(), b"two");
    sim.run_until("rolled", |s| {
        s.converged(&svc, 1) && s.running(&svc)[0].spec.secrets[0].id == v2.id
    });
    // The old version stays while the rollback spec names it; a later change lets it go.
    assert!(sim.state.secrets.contains_key(&v1.id));
    sim.update(&svc, |s| {
        s.task.env.insert("A".into(), "1".into());
    });
    sim.run_until("old version collected", |s| {
        !s.state.secrets.contains_key(&v1.id)
    });
    assert!(sim.state.secrets.contains_key(&v2.id));

    // Removing the stack removes its secrets once its tasks are gone.
    let p = plan_reload(&sim.state, &[], &BTreeMap::new(), sim.now, &mut ids).unwrap();
    sim.state.apply(p.command.as_ref().unwrap()).unwrap();
    sim.run_until("all collected", |s| s.state.secrets.is_empty());
}

#[test]
fn a_secret_of_the_same_name_outside_the_stack_is_an_error() {
    let mut sim = Sim::new(&["n1"]);
    sim.state
        .apply(&Command::CreateSecret {
            kind: SecretKind::Secret,
            secret: Secret {
                id: "u1".into(),
                name: "s_db_password".into(),
                labels: BTreeMap::new(),
                data: SecretData::new(b"x".to_vec()),
                digest: "d".into(),
                created_at: 1,
                stack: None,
            },
        })
        .unwrap();
    let err = plan_reload(
        &sim.state,
        &[file("h1", stack_with_secret(b"one"))],
        &BTreeMap::new(),
        sim.now,
        &mut SeqIds::new("x"),
    )
    .unwrap_err();
    assert!(matches!(&err[0], PlanError::Secret { .. }), "{err:?}");
    assert!(
        err[0]
            .to_string()
            .contains("already exists outside the stack")
    );
}
