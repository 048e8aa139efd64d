//! Waiting for a service to converge, with docker's progress display.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use model::TaskState;
use shoal_dbus::{Client, TaskFilter, TaskRow};

/// How to wait.
#[derive(Debug, Clone, Copy)]
pub struct WaitOpts {
    pub timeout: Duration,
    /// Redraw in place (a terminal) or print plain lines.
    pub tty: bool,
    /// Print nothing but errors.
    pub quiet: bool,
    /// Failures of tasks of the current version that make the wait give up.
    pub max_failures: usize,
    /// The command itself asked for a rollback, so a rollback state is not a failure.
    pub rollback_requested: bool,
}

const POLL: Duration = Duration::from_millis(300);
const BAR: usize = 50;

/// The stages docker's progress bar walks through for a task.
const STAGES: [TaskState; 8] = [
    TaskState::New,
    TaskState::Pending,
    TaskState::Assigned,
    TaskState::Accepted,
    TaskState::Preparing,
    TaskState::Ready,
    TaskState::Starting,
    TaskState::Running,
];

/// `[=====>     ]` for a task in `state`.
pub fn bar(state: Option<TaskState>) -> String {
    let stage = state
        .and_then(|s| STAGES.iter().position(|x| *x == s))
        .map(|i| i + 1)
        .unwrap_or(0);
    let filled = stage * BAR / STAGES.len();
    let mut s = String::from("[");
    if filled > 0 {
        s.push_str(&"=".repeat(filled - 1));
        s.push('>');
    }
    s.push_str(&" ".repeat(BAR - filled));
    s.push(']');
    s
}

struct Display {
    opts: WaitOpts,
    drawn: usize,
    last_plain: String,
}

impl Display {
    fn new(opts: WaitOpts) -> Display {
        Display {
            opts,
            drawn: 0,
            last_plain: String::new(),
        }
    }

    fn show(&mut self, lines: &[String]) {
        if self.opts.quiet {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.opts.tty {
            if self.drawn > 0 {
                let _ = write!(out, "\x1b[{}A", self.drawn);
            }
            for l in lines {
                let _ = writeln!(out, "\x1b[2K{l}");
            }
            self.drawn = lines.len();
        } else if let Some(first) = lines.first()
            && *first != self.last_plain
        {
            let _ = writeln!(out, "{first}");
            self.last_plain = first.clone();
        }
        let _ = out.flush();
    }

    fn line(&mut self, l: &str) {
        if !self.opts.quiet {
            println!("{l}");
        }
    }
}

fn is_failure(t: &TaskRow) -> bool {
    matches!(t.state(), Some(TaskState::Failed | TaskState::Rejected))
}

/// Wait until `service` runs its desired number of tasks of its current version and no task of
/// an older version still runs.
pub async fn converge(client: &Client, service: &str, opts: WaitOpts) -> Result<()> {
    let start = Instant::now();
    let filter = TaskFilter {
        service: Some(service.to_string()),
        ..Default::default()
    };
    let baseline: BTreeSet<String> = client
        .list_tasks(&filter)
        .await?
        .into_iter()
        .filter(is_failure)
        .map(|t| t.id)
        .collect();
    let mut display = Display::new(opts);
    display.line(service);
    let mut stable = 0;
    let mut first_version = None;
    loop {
        let inspect = client.inspect_service(service).await?;
        let version = inspect.info.version;
        let first_version = *first_version.get_or_insert(version);
        let update_state = inspect.info.update_state.as_str();
        let desired = inspect.info.desired;
        let tasks = client.list_tasks(&filter).await?;
        let current: Vec<&TaskRow> = tasks
            .iter()
            .filter(|t| t.spec_version == version)
            .filter(|t| {
                matches!(
                    t.desired_state(),
                    Some(TaskState::Running | TaskState::Ready)
                )
            })
            .collect();
        let running = current
            .iter()
            .filter(|t| t.state() == Some(TaskState::Running))
            .count() as u64;
        let old_running = tasks
            .iter()
            .filter(|t| t.spec_version != version && t.state() == Some(TaskState::Running))
            .count();
        let mut failures: Vec<&TaskRow> = tasks
            .iter()
            .filter(|t| t.spec_version == version && is_failure(t) && !baseline.contains(&t.id))
            .collect();
        failures.sort_by_key(|t| t.state_since);

        if inspect.info.mode.ends_with("-job") {
            // A job is done once each of its tasks completed.
            let completed = inspect.info.completed;
            display.show(&[format!(
                "job progress: {completed} out of {desired} complete"
            )]);
            if let Some(last) = failures.last()
                && failures.len() >= opts.max_failures
            {
                bail!(
                    "job {service} is failing: {} tasks failed, the last with: {}\n  see: shoal service ps {service}",
                    failures.len(),
                    if last.error.is_empty() {
                        &last.state
                    } else {
                        &last.error
                    }
                );
            }
            if completed >= desired {
                display.line("verify: Job complete");
                return Ok(());
            }
            if start.elapsed() > opts.timeout {
                bail!(
                    "timed out after {} waiting for job {service} ({completed} of {desired} complete); it goes on in the background: see shoal service ps {service}",
                    spec::units::format_duration(opts.timeout.as_millis() as u64)
                );
            }
            tokio::time::sleep(POLL).await;
            continue;
        }

        let mut lines = vec![format!(
            "overall progress: {running} out of {desired} tasks"
        )];
        let mut slots: Vec<&TaskRow> = current.clone();
        slots.sort_by(|a, b| a.slot.cmp(&b.slot).then(a.node.cmp(&b.node)));
        let width = desired.to_string().len();
        for t in &slots {
            let label = if t.slot > 0 {
                format!("{:>width$}/{desired}", t.slot)
            } else {
                t.node.clone()
            };
            lines.push(format!("{label}: {:<9} {}", t.state, bar(t.state())));
        }
        display.show(&lines);

        if failures.len() >= opts.max_failures {
            let last = failures.last().expect("at least one failure");
            let err = if last.error.is_empty() {
                last.state.clone()
            } else {
                last.error.clone()
            };
            bail!(
                "service {service} is not converging: {} tasks failed, the last with: {err}\n  see: shoal service ps {service}",
                failures.len()
            );
        }
        // An update is over only once its last tasks stayed running (healthy) for `monitor`:
        // until then the updater still says `updating` (or `rollback_started`).
        let settled = !matches!(update_state, "updating" | "rollback_started");
        let converged =
            running == desired && old_running == 0 && current.len() as u64 == desired && settled;
        if !converged && matches!(update_state, "paused" | "rollback_paused") {
            bail!(
                "the update of service {service} is paused: {}\n  fix the spec and run shoal service update again, or run shoal service rollback {service}",
                inspect.info.update_message
            );
        }
        if converged {
            stable += 1;
            if stable >= 2 {
                if version > first_version
                    && update_state.starts_with("rollback")
                    && !opts.rollback_requested
                {
                    bail!(
                        "service {service} was rolled back after a failed update: {}\n  see: shoal service ps {service}",
                        inspect.info.update_message
                    );
                }
                display.line("verify: Service converged");
                return Ok(());
            }
        } else {
            stable = 0;
        }
        if start.elapsed() > opts.timeout {
            bail!(
                "timed out after {} waiting for service {service} to converge ({running} of {desired} tasks running); it keeps converging in the background: see shoal service ps {service}",
                spec::units::format_duration(opts.timeout.as_millis() as u64)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Wait until no task of the removed `services` runs any more.
pub async fn removed(client: &Client, services: &[String], opts: WaitOpts) -> Result<()> {
    let start = Instant::now();
    let mut display = Display::new(opts);
    loop {
        let tasks = client.list_tasks(&TaskFilter::default()).await?;
        let left = tasks
            .iter()
            .filter(|t| services.contains(&t.service))
            .filter(|t| !t.state().is_some_and(|s| s.is_terminal()))
            .count();
        if left == 0 {
            return Ok(());
        }
        display.show(&[format!("waiting for {left} tasks to stop")]);
        if start.elapsed() > opts.timeout {
            bail!(
                "timed out waiting for {left} tasks of {} to stop; they keep stopping in the background",
                services.join(", ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_fills_with_the_state() {
        assert_eq!(
            bar(Some(TaskState::Running)),
            format!("[{}>]", "=".repeat(49))
        );
        assert_eq!(bar(None), format!("[{}]", " ".repeat(50)));
        let half = bar(Some(TaskState::Accepted));
        assert_eq!(half.len(), 52);
        assert!(half.starts_with("[========================>"), "{half}");
    }
}
