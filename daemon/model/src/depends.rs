//! `depends_on`: when a service's dependencies let its tasks start.
//!
//! A dependency's condition is read from its tasks as they are now (level-triggered, like the
//! rest of the control plane): `service_started` holds while one of its tasks is RUNNING or has
//! COMPLETEd; `service_healthy` while one is RUNNING (a task with a healthcheck is only RUNNING
//! once a check passed, so a dependency without one counts as healthy once it runs);
//! `service_completed_successfully` once one has COMPLETEd (exited with status 0). One task is
//! enough: a dependant of a service of many replicas starts as soon as the first is ready.
//!
//! The control plane asks before it places a task: the scheduler leaves a dependant's pending
//! tasks PENDING with the reason in their error, and the orchestrator and the updater create no
//! task of a global dependant (global tasks are placed when created). The condition is asked
//! again for every new task, so a replacement of a crashed dependant also waits while its
//! dependency is down. A dependency that does not exist (removed by hand) is never met.

use crate::{ClusterState, DependCondition, ServiceSpec, TaskState};

impl ClusterState {
    /// The slots of a job whose task of the current spec completed (0 for services).
    pub fn completed_count(&self, svc: &crate::Service) -> u64 {
        if !svc.spec.mode.is_job() {
            return 0;
        }
        let mut slots: Vec<crate::SlotKey> = self
            .tasks_of(&svc.id)
            .filter(|t| t.spec_version == svc.version && t.status.state == TaskState::Complete)
            .map(|t| t.slot_key())
            .collect();
        slots.sort();
        slots.dedup();
        slots.len() as u64
    }

    /// Why `spec`'s tasks may not start yet: the first dependency (by name) whose condition does
    /// not hold, as a message for `service ps`; `None` when every condition holds.
    pub fn unmet_dependency(&self, spec: &ServiceSpec) -> Option<String> {
        spec.depends_on.iter().find_map(|(name, condition)| {
            let Some(dep) = self.service_by_name(name) else {
                return Some(format!(
                    "waiting for dependency {name}, which does not exist"
                ));
            };
            let met = self.tasks_of(&dep.id).any(|t| match condition {
                DependCondition::ServiceStarted => {
                    matches!(t.status.state, TaskState::Running | TaskState::Complete)
                }
                DependCondition::ServiceHealthy => {
                    t.status.state == TaskState::Running && t.desired <= TaskState::Running
                }
                DependCondition::ServiceCompletedSuccessfully => {
                    t.status.state == TaskState::Complete
                }
            });
            (!met).then(|| {
                let what = match condition {
                    DependCondition::ServiceStarted => "to start",
                    DependCondition::ServiceHealthy => "to be healthy",
                    DependCondition::ServiceCompletedSuccessfully => "to complete successfully",
                };
                format!(
                    "waiting for dependency {name} {what} ({})",
                    condition.as_str()
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Task;
    use crate::state::tests::svc;

    fn task(id: &str, service: &str, state: TaskState) -> Task {
        let mut t = crate::state::multi_node::task(id, service, 1);
        t.status.state = state;
        t
    }

    fn state_with(db_tasks: &[TaskState]) -> (ClusterState, ServiceSpec) {
        let mut st = ClusterState::default();
        st.services.insert("db".into(), svc("db", "s_db", None));
        for (i, s) in db_tasks.iter().enumerate() {
            let t = task(&format!("t{i}"), "db", *s);
            st.tasks.insert(t.id.clone(), t);
        }
        st.rebuild_index();
        let web = svc("web", "s_web", None).spec;
        (st, web)
    }

    #[test]
    fn each_condition_holds_only_for_the_states_it_names() {
        use DependCondition::*;
        use TaskState::*;
        let cases: [(DependCondition, &[TaskState], bool); 10] = [
            (ServiceStarted, &[], false),
            (ServiceStarted, &[Pending, Starting], false),
            (ServiceStarted, &[Failed, Running], true),
            (ServiceStarted, &[Complete], true),
            (ServiceHealthy, &[Starting], false),
            (ServiceHealthy, &[Complete], false),
            (ServiceHealthy, &[Failed, Running], true),
            (ServiceCompletedSuccessfully, &[Running, Failed], false),
            (ServiceCompletedSuccessfully, &[Failed, Complete], true),
            (ServiceCompletedSuccessfully, &[], false),
        ];
        for (condition, states, met) in cases {
            let (st, mut web) = state_with(states);
            web.depends_on.insert("s_db".into(), condition);
            let why = st.unmet_dependency(&web);
            assert_eq!(why.is_none(), met, "{condition:?} with {states:?}: {why:?}");
            if let Some(why) = why {
                assert!(
                    why.contains("s_db") && why.contains(condition.as_str()),
                    "{why}"
                );
            }
        }
    }

    #[test]
    fn no_dependencies_always_hold_and_a_missing_one_never_does() {
        let (st, mut web) = state_with(&[]);
        assert_eq!(st.unmet_dependency(&web), None);
        web.depends_on
            .insert("s_gone".into(), DependCondition::ServiceStarted);
        let why = st.unmet_dependency(&web).unwrap();
        assert!(why.contains("s_gone, which does not exist"), "{why}");
    }

    #[test]
    fn a_running_task_being_stopped_is_not_healthy() {
        let (mut st, mut web) = state_with(&[TaskState::Running]);
        web.depends_on
            .insert("s_db".into(), DependCondition::ServiceHealthy);
        assert_eq!(st.unmet_dependency(&web), None);
        st.tasks.get_mut("t0").unwrap().desired = TaskState::Shutdown;
        assert!(st.unmet_dependency(&web).is_some());
    }

    #[test]
    fn condition_names_parse_back() {
        for c in DependCondition::ALL {
            assert_eq!(DependCondition::parse(c.as_str()), Ok(c));
        }
        assert!(
            DependCondition::parse("service_ready")
                .unwrap_err()
                .contains("service_healthy")
        );
    }
}
