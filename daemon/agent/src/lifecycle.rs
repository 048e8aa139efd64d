//! The pure part of a task's life on this node: given what was observed and what the managers
//! want, what happens next. No IO and no clock: `now` is an argument.
//!
//! Swarm's rules (swarmkit `agent/exec/controller.go Do`):
//!
//! | observed            | desired          | next                                              |
//! |---------------------|------------------|---------------------------------------------------|
//! | terminal            | any              | remove the container, then nothing                |
//! | below terminal      | ≥ SHUTDOWN       | stop the process if any, report SHUTDOWN          |
//! | NEW/PENDING/ASSIGNED| > observed       | report ACCEPTED                                   |
//! | ACCEPTED            | > ACCEPTED       | report PREPARING                                  |
//! | PREPARING           | any              | prepare, report READY (may pass desired READY)    |
//! | READY               | > READY          | after `not_before`: report STARTING               |
//! | STARTING            | any              | start, report RUNNING (with a healthcheck: report |
//! |                     |                  | the process, RUNNING once a check passed)         |
//! | STARTING, started   | any              | wait for the exit and the healthcheck             |
//! | RUNNING             | any              | wait for the exit: COMPLETE or FAILED             |
//!
//! After an agent restart the container may have to be prepared again (to learn its address)
//! without a report: observed states never move backwards.

use model::{Millis, TaskState};

use crate::executor::ExitStatus;

/// The next step of a task manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The task is terminal: remove what is left of it.
    Cleanup,
    /// Desired state is SHUTDOWN or beyond: stop the process, report SHUTDOWN.
    Shutdown,
    /// Report this state; no runtime call is needed.
    Advance(TaskState, &'static str),
    /// Call `prepare`; report READY when `report` is set.
    Prepare { report: bool },
    /// READY and wanted running, but `not_before` lies ahead: wait until then.
    WaitUntil(Millis),
    /// Call `start`, report RUNNING.
    Start,
    /// The process runs: wait for it to exit.
    Wait,
    /// Nothing to do until the assignment changes.
    Idle,
}

/// Decides the next step. `prepared` says whether `prepare` succeeded in this agent's lifetime,
/// `started` whether the process was started (or adopted running) in it.
pub fn decide(
    observed: TaskState,
    desired: TaskState,
    prepared: bool,
    started: bool,
    not_before: Option<Millis>,
    now: Millis,
) -> Next {
    if observed.is_terminal() {
        return Next::Cleanup;
    }
    if desired >= TaskState::Shutdown {
        return Next::Shutdown;
    }
    match observed {
        TaskState::New | TaskState::Pending | TaskState::Assigned => {
            if desired > observed {
                Next::Advance(TaskState::Accepted, "accepted")
            } else {
                Next::Idle
            }
        }
        TaskState::Accepted => {
            if desired > TaskState::Accepted {
                Next::Advance(TaskState::Preparing, "preparing")
            } else {
                Next::Idle
            }
        }
        TaskState::Preparing => Next::Prepare { report: true },
        TaskState::Ready if !prepared => Next::Prepare { report: false },
        TaskState::Ready => {
            if desired <= TaskState::Ready {
                Next::Idle
            } else {
                match not_before {
                    Some(at) if at > now => Next::WaitUntil(at),
                    _ => Next::Advance(TaskState::Starting, "starting"),
                }
            }
        }
        // Started, waiting for a healthcheck to pass.
        TaskState::Starting if started => Next::Wait,
        TaskState::Starting if !prepared => Next::Prepare { report: false },
        TaskState::Starting => Next::Start,
        // RUNNING; the terminal states returned above.
        _ => Next::Wait,
    }
}

/// The terminal state, message and error of a process that exited on its own.
pub fn exit_outcome(exit: ExitStatus) -> (TaskState, &'static str, Option<String>) {
    if exit.oom_killed {
        (
            TaskState::Failed,
            "failed",
            Some("task: OOM killed".to_string()),
        )
    } else if exit.code == 0 {
        (TaskState::Complete, "finished", None)
    } else {
        (
            TaskState::Failed,
            "failed",
            Some(format!("task: non-zero exit ({})", exit.code)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    fn d(observed: TaskState, desired: TaskState) -> Next {
        decide(observed, desired, true, false, None, 0)
    }

    #[test]
    fn walks_forward_to_running() {
        assert_eq!(d(New, Running), Next::Advance(Accepted, "accepted"));
        assert_eq!(d(Assigned, Running), Next::Advance(Accepted, "accepted"));
        assert_eq!(d(Accepted, Running), Next::Advance(Preparing, "preparing"));
        assert_eq!(d(Preparing, Running), Next::Prepare { report: true });
        assert_eq!(d(Ready, Running), Next::Advance(Starting, "starting"));
        assert_eq!(d(Starting, Running), Next::Start);
        assert_eq!(d(Running, Running), Next::Wait);
    }

    #[test]
    fn a_started_task_waits_for_its_healthcheck_in_starting() {
        assert_eq!(decide(Starting, Running, true, true, None, 0), Next::Wait);
        // Adopted after a restart: no prepare needed for a process that runs.
        assert_eq!(decide(Starting, Running, false, true, None, 0), Next::Wait);
        assert_eq!(
            decide(Starting, Shutdown, true, true, None, 0),
            Next::Shutdown
        );
    }

    #[test]
    fn desired_ready_prepares_but_does_not_start() {
        assert_eq!(d(Assigned, Ready), Next::Advance(Accepted, "accepted"));
        assert_eq!(d(Accepted, Ready), Next::Advance(Preparing, "preparing"));
        assert_eq!(d(Preparing, Ready), Next::Prepare { report: true });
        assert_eq!(d(Ready, Ready), Next::Idle);
    }

    #[test]
    fn nothing_moves_past_a_low_desired_state() {
        assert_eq!(d(Assigned, Assigned), Next::Idle);
        assert_eq!(d(Accepted, Accepted), Next::Idle);
    }

    #[test]
    fn jobs_with_desired_complete_start() {
        assert_eq!(d(Ready, Complete), Next::Advance(Starting, "starting"));
    }

    #[test]
    fn not_before_delays_starting_only() {
        let at = 5_000;
        assert_eq!(
            decide(Preparing, Running, false, false, Some(at), 0),
            Next::Prepare { report: true }
        );
        assert_eq!(
            decide(Ready, Running, true, false, Some(at), 4_999),
            Next::WaitUntil(at)
        );
        assert_eq!(
            decide(Ready, Running, true, false, Some(at), 5_000),
            Next::Advance(Starting, "starting")
        );
    }

    #[test]
    fn shutdown_wins_over_everything_but_terminal() {
        for observed in [New, Accepted, Preparing, Ready, Starting, Running] {
            assert_eq!(d(observed, Shutdown), Next::Shutdown);
            assert_eq!(d(observed, Remove), Next::Shutdown);
        }
        for observed in [Complete, Shutdown, Failed, Rejected, Orphaned] {
            assert_eq!(d(observed, Running), Next::Cleanup);
            assert_eq!(d(observed, Remove), Next::Cleanup);
        }
    }

    #[test]
    fn after_a_restart_the_container_is_prepared_again_silently() {
        assert_eq!(
            decide(Ready, Ready, false, false, None, 0),
            Next::Prepare { report: false }
        );
        assert_eq!(
            decide(Starting, Running, false, false, None, 0),
            Next::Prepare { report: false }
        );
    }

    #[test]
    fn exit_outcomes() {
        let exit = |code, oom_killed| ExitStatus { code, oom_killed };
        assert_eq!(exit_outcome(exit(0, false)), (Complete, "finished", None));
        assert_eq!(
            exit_outcome(exit(3, false)),
            (Failed, "failed", Some("task: non-zero exit (3)".into()))
        );
        assert_eq!(
            exit_outcome(exit(137, true)),
            (Failed, "failed", Some("task: OOM killed".into()))
        );
    }
}
