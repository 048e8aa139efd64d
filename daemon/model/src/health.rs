//! Healthchecks: what a service asks for ([`Healthcheck`]), the check a task really runs once
//! the image's own HEALTHCHECK and Swarm's defaults are applied ([`ResolvedHealthcheck`]), what
//! the node that runs the task observed ([`TaskHealth`]), and the pure rules that turn check
//! results into a health status (Docker's: `daemon/health.go`).
//!
//! A task with a healthcheck stays STARTING until a check passes, then becomes RUNNING; once
//! `retries` checks in a row fail (failures inside `start_period` do not count while the task
//! has never been healthy) it is unhealthy, and its node stops it and reports it FAILED. A
//! starting task is also checked early, from its start on ([`Schedule`]), so that a task ready
//! at once does not wait an interval to be RUNNING.

use serde::{Deserialize, Serialize};

use crate::Millis;

/// Swarm's default time between checks.
pub const DEFAULT_INTERVAL: Millis = 30_000;
/// Swarm's default time a check may take before it counts as failed.
pub const DEFAULT_TIMEOUT: Millis = 30_000;
/// Swarm's default number of failed checks in a row that make a task unhealthy.
pub const DEFAULT_RETRIES: u32 = 3;
/// Swarm's default time between checks during `start_period`.
pub const DEFAULT_START_INTERVAL: Millis = 5_000;
/// The most failed checks in a row a service may wait for.
pub const MAX_RETRIES: u32 = 10_000;
/// The most bytes of a check's output kept (its last bytes).
pub const MAX_OUTPUT_BYTES: usize = 4096;
/// The error of a task its node stopped because its healthcheck failed.
pub const UNHEALTHY_ERROR: &str = "task: unhealthy container";

/// A service's healthcheck as written (`healthcheck` in a stack file, `--health-*` flags). A
/// field left at zero (or an empty `test`) comes from the image's HEALTHCHECK, else from
/// Swarm's defaults, as Docker does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Healthcheck {
    /// `["CMD", program, args...]`, `["CMD-SHELL", command]` or `["NONE"]` (no healthcheck,
    /// not even the image's); empty: the image's test.
    pub test: Vec<String>,
    pub interval: Millis,
    pub timeout: Millis,
    pub start_period: Millis,
    pub start_interval: Millis,
    pub retries: u32,
}

impl Healthcheck {
    /// `test = ["NONE"]`: the task runs no check, not even the image's.
    pub fn is_disabled(&self) -> bool {
        self.test.first().map(String::as_str) == Some("NONE")
    }
}

/// The one check of a test's form, shared by stack files, Compose files, flags and D-Bus.
pub fn check_test(test: &[String]) -> Result<(), String> {
    match test.first().map(String::as_str) {
        None => Ok(()),
        Some("NONE") if test.len() == 1 => Ok(()),
        Some("NONE") => Err("[\"NONE\"] takes no arguments".into()),
        Some("CMD") if test.len() >= 2 && !test[1].is_empty() => Ok(()),
        Some("CMD") => Err("[\"CMD\", ...] needs a program to run, e.g. [\"CMD\", \"wget\", \"-qO-\", \"http://127.0.0.1/\"]".into()),
        Some("CMD-SHELL") if test.len() == 2 && !test[1].trim().is_empty() => Ok(()),
        Some("CMD-SHELL") => Err("[\"CMD-SHELL\", \"...\"] takes exactly one command line".into()),
        Some(other) => Err(format!(
            "the test starts with {other:?}: it must start with \"CMD\", \"CMD-SHELL\" or \"NONE\" (or be one string, run by the shell)"
        )),
    }
}

/// The check a task runs, every value resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedHealthcheck {
    /// The program and arguments run inside the task (`CMD-SHELL` becomes `/bin/sh -c`).
    pub command: Vec<String>,
    pub interval: Millis,
    pub timeout: Millis,
    pub start_period: Millis,
    pub start_interval: Millis,
    pub retries: u32,
}

/// Docker's merge of a service's healthcheck over the image's: the service's test when it has
/// one, else the image's; each other field the service's when set, else the image's, else the
/// default. `None` when there is no test or it is `NONE`.
pub fn resolve(
    service: Option<&Healthcheck>,
    image: Option<&Healthcheck>,
) -> Option<ResolvedHealthcheck> {
    if service.is_some_and(Healthcheck::is_disabled) {
        return None;
    }
    let pick = |f: fn(&Healthcheck) -> Millis, default: Millis| {
        [service, image]
            .into_iter()
            .flatten()
            .map(f)
            .find(|v| *v > 0)
            .unwrap_or(default)
    };
    let test = service
        .map(|h| &h.test)
        .filter(|t| !t.is_empty())
        .or_else(|| image.map(|h| &h.test))?;
    let command = match test.first().map(String::as_str) {
        Some("CMD") if test.len() >= 2 => test[1..].to_vec(),
        Some("CMD-SHELL") if test.len() >= 2 => {
            vec!["/bin/sh".into(), "-c".into(), test[1..].join(" ")]
        }
        _ => return None,
    };
    let retries = [service, image]
        .into_iter()
        .flatten()
        .map(|h| h.retries)
        .find(|r| *r > 0)
        .unwrap_or(DEFAULT_RETRIES);
    Some(ResolvedHealthcheck {
        command,
        interval: pick(|h| h.interval, DEFAULT_INTERVAL),
        timeout: pick(|h| h.timeout, DEFAULT_TIMEOUT),
        start_period: pick(|h| h.start_period, 0),
        start_interval: pick(|h| h.start_interval, DEFAULT_START_INTERVAL),
        retries,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// No check has passed yet.
    Starting,
    Healthy,
    /// `retries` checks in a row failed: the task is being stopped.
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// One check as it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct CheckResult {
    /// The check's exit code; -1 when it timed out or could not run.
    pub exit_code: i32,
    /// The last [`MAX_OUTPUT_BYTES`] of its stdout and stderr.
    pub output: String,
    pub started_at: Millis,
    pub ended_at: Millis,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.exit_code == 0
    }
}

/// Keeps the last [`MAX_OUTPUT_BYTES`] of `bytes` as text.
pub fn tail_output(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(MAX_OUTPUT_BYTES);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let mut s = text.into_owned();
    while s.len() > MAX_OUTPUT_BYTES {
        s.remove(0);
    }
    s
}

/// A task's health as its node observed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskHealth {
    pub status: HealthStatus,
    /// Failed checks in a row (that counted).
    #[serde(default)]
    pub failing_streak: u32,
    /// The last check that ran.
    #[serde(default)]
    pub last: Option<CheckResult>,
}

impl Default for TaskHealth {
    fn default() -> Self {
        TaskHealth {
            status: HealthStatus::Starting,
            failing_streak: 0,
            last: None,
        }
    }
}

impl TaskHealth {
    /// Records a check that started `since_start` after the task's process did; returns the new
    /// status. A pass makes the task healthy; a failure counts unless the task has never been
    /// healthy and is still in its start period, and `retries` counted failures in a row make
    /// it unhealthy (for good: an unhealthy task is stopped).
    pub fn record(
        &mut self,
        check: &ResolvedHealthcheck,
        result: CheckResult,
        since_start: Millis,
    ) -> HealthStatus {
        if self.status == HealthStatus::Unhealthy {
            self.last = Some(result);
            return self.status;
        }
        if result.passed() {
            self.failing_streak = 0;
            self.status = HealthStatus::Healthy;
        } else {
            let grace = self.status == HealthStatus::Starting && since_start < check.start_period;
            if !grace {
                self.failing_streak += 1;
                if self.failing_streak >= check.retries {
                    self.status = HealthStatus::Unhealthy;
                }
            }
        }
        self.last = Some(result);
        self.status
    }

    /// How long to wait before the next check: `start_interval` while the task has never been
    /// healthy and is in its start period, else `interval`.
    pub fn next_delay(&self, check: &ResolvedHealthcheck, since_start: Millis) -> Millis {
        if self.status == HealthStatus::Starting
            && check.start_period > 0
            && since_start < check.start_period
        {
            check.start_interval
        } else {
            check.interval
        }
    }
}

/// The gap between the first early check (at the start) and the second; each next gap doubles.
pub const EARLY_FIRST_GAP: Millis = 100;

/// When one task's checks run. Docker runs a task's first check one `interval` (in a start
/// period, one `start_interval`) after its start, so a task ready at once waits that long to
/// become RUNNING and a rolling update advances one interval a batch. Here a starting task is
/// also checked early, as Kubernetes probes at once: at its start, then after 100 ms, 200 ms,
/// 400 ms... (doubling) while it has never passed and the next early check still begins before
/// the first regular one. An early check that passes makes the task healthy; one that fails
/// does not count against `retries` (it is shown as the last check, as a failure in a start
/// period is). The regular checks keep Docker's times, so a task is never unhealthy sooner than
/// under Docker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The first regular check, after the start.
    first_regular: Millis,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Early checks, with the wait before the next one (0: none ran yet).
    Early(Millis),
    /// The first regular check is next.
    FirstRegular {
        after_early: bool,
    },
    Regular,
}

/// The next check of a [`Schedule`]: when, and whether it is an early one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextCheck {
    /// How long from now.
    pub delay: Millis,
    pub early: bool,
}

impl Schedule {
    pub fn new(check: &ResolvedHealthcheck) -> Self {
        let first_regular = if check.start_period > 0 {
            check.start_interval
        } else {
            check.interval
        };
        Schedule {
            first_regular,
            phase: Phase::Early(0),
        }
    }

    /// The next check of a task whose process started `since_start` ago and whose health is
    /// `health`.
    pub fn next(
        &mut self,
        check: &ResolvedHealthcheck,
        health: &TaskHealth,
        since_start: Millis,
    ) -> NextCheck {
        if let Phase::Early(gap) = self.phase {
            if health.status == HealthStatus::Starting
                && since_start.saturating_add(gap) < self.first_regular
            {
                let next_gap = if gap == 0 {
                    EARLY_FIRST_GAP
                } else {
                    gap.saturating_mul(2)
                };
                self.phase = Phase::Early(next_gap);
                return NextCheck {
                    delay: gap,
                    early: true,
                };
            }
            self.phase = Phase::FirstRegular {
                after_early: gap > 0,
            };
        }
        if let Phase::FirstRegular { after_early } =
            std::mem::replace(&mut self.phase, Phase::Regular)
            && (since_start < self.first_regular || after_early)
        {
            // At its time, or at once after an early check that ran past it. (An agent that
            // restarts long after a task's start checks it one interval later, as ever.)
            return NextCheck {
                delay: self.first_regular.saturating_sub(since_start),
                early: false,
            };
        }
        NextCheck {
            delay: health.next_delay(check, since_start),
            early: false,
        }
    }
}

impl TaskHealth {
    /// Records an early check (see [`Schedule`]): a pass counts as [`TaskHealth::record`]'s,
    /// a failure only becomes the last check.
    pub fn record_early(
        &mut self,
        check: &ResolvedHealthcheck,
        result: CheckResult,
        since_start: Millis,
    ) -> HealthStatus {
        if result.passed() || self.status != HealthStatus::Starting {
            return self.record(check, result, since_start);
        }
        self.last = Some(result);
        self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(test: &[&str]) -> Healthcheck {
        Healthcheck {
            test: test.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn result(exit_code: i32) -> CheckResult {
        CheckResult {
            exit_code,
            ..Default::default()
        }
    }

    #[test]
    fn test_forms() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_test(&s(&["CMD", "true"])).is_ok());
        assert!(check_test(&s(&["CMD-SHELL", "exit 0"])).is_ok());
        assert!(check_test(&s(&["NONE"])).is_ok());
        assert!(check_test(&[]).is_ok());
        assert!(check_test(&s(&["CMD"])).is_err());
        assert!(check_test(&s(&["CMD-SHELL", "a", "b"])).is_err());
        assert!(check_test(&s(&["NONE", "x"])).is_err());
        let e = check_test(&s(&["curl", "x"])).unwrap_err();
        assert!(e.contains("\"CMD\", \"CMD-SHELL\" or \"NONE\""), "{e}");
    }

    #[test]
    fn defaults_image_and_service_merge_as_docker() {
        assert_eq!(resolve(None, None), None);
        let r = resolve(Some(&hc(&["CMD", "true"])), None).unwrap();
        assert_eq!(r.command, vec!["true"]);
        assert_eq!(
            (
                r.interval,
                r.timeout,
                r.retries,
                r.start_period,
                r.start_interval
            ),
            (30_000, 30_000, 3, 0, 5_000)
        );
        let shell = resolve(Some(&hc(&["CMD-SHELL", "exit 1"])), None).unwrap();
        assert_eq!(shell.command, vec!["/bin/sh", "-c", "exit 1"]);

        // The image's check is used when the service sets none, and NONE turns it off.
        let mut image = hc(&["CMD", "img-check"]);
        image.interval = 7_000;
        image.retries = 5;
        let r = resolve(None, Some(&image)).unwrap();
        assert_eq!(
            (r.command[0].as_str(), r.interval, r.retries),
            ("img-check", 7_000, 5)
        );
        assert_eq!(resolve(Some(&hc(&["NONE"])), Some(&image)), None);

        // A service that sets only timings keeps the image's test; its own values win.
        let mut timing = hc(&[]);
        timing.interval = 1_000;
        let r = resolve(Some(&timing), Some(&image)).unwrap();
        assert_eq!(
            (r.command[0].as_str(), r.interval, r.retries),
            ("img-check", 1_000, 5)
        );
        assert_eq!(resolve(Some(&timing), None), None);
    }

    #[test]
    fn a_pass_makes_healthy_and_retries_failures_make_unhealthy() {
        let check = resolve(Some(&hc(&["CMD", "x"])), None).unwrap();
        let mut h = TaskHealth::default();
        assert_eq!(h.record(&check, result(1), 0), HealthStatus::Starting);
        assert_eq!(h.record(&check, result(0), 0), HealthStatus::Healthy);
        assert_eq!(h.failing_streak, 0);
        assert_eq!(h.record(&check, result(1), 0), HealthStatus::Healthy);
        assert_eq!(h.record(&check, result(1), 0), HealthStatus::Healthy);
        assert_eq!(h.record(&check, result(-1), 0), HealthStatus::Unhealthy);
        assert_eq!(h.failing_streak, 3);
        // Unhealthy is final.
        assert_eq!(h.record(&check, result(0), 0), HealthStatus::Unhealthy);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_until_healthy() {
        let mut spec = hc(&["CMD", "x"]);
        spec.start_period = 10_000;
        spec.retries = 1;
        let check = resolve(Some(&spec), None).unwrap();
        let mut h = TaskHealth::default();
        assert_eq!(h.next_delay(&check, 0), 5_000);
        assert_eq!(h.record(&check, result(1), 9_999), HealthStatus::Starting);
        assert_eq!(h.failing_streak, 0);
        assert_eq!(h.next_delay(&check, 10_000), 30_000);
        assert_eq!(h.record(&check, result(1), 10_000), HealthStatus::Unhealthy);

        let mut h = TaskHealth::default();
        h.record(&check, result(0), 1_000);
        assert_eq!(h.next_delay(&check, 1_000), 30_000);
        // Once healthy, a failure counts even inside the start period.
        assert_eq!(h.record(&check, result(1), 2_000), HealthStatus::Unhealthy);
    }

    #[test]
    fn a_starting_task_is_checked_early_then_on_dockers_schedule() {
        let mut spec = hc(&["CMD", "x"]);
        spec.interval = 1_000;
        spec.retries = 1;
        let check = resolve(Some(&spec), None).unwrap();
        let mut h = TaskHealth::default();
        let mut sched = Schedule::new(&check);
        // Early checks at 0, 100, 300 and 700 ms (each check here takes no time), then the
        // first regular one at the interval, then every interval.
        let mut at = 0;
        let mut runs = vec![];
        for _ in 0..7 {
            let next = sched.next(&check, &h, at);
            at += next.delay;
            runs.push((at, next.early));
            if next.early {
                // Failed early checks do not count, even with retries = 1.
                assert_eq!(
                    h.record_early(&check, result(1), at),
                    HealthStatus::Starting
                );
                assert_eq!(h.failing_streak, 0);
                assert_eq!(h.last.as_ref().map(|l| l.exit_code), Some(1));
            } else {
                h.record(&check, result(0), at);
            }
        }
        assert_eq!(
            runs,
            [
                (0, true),
                (100, true),
                (300, true),
                (700, true),
                (1_000, false),
                (2_000, false),
                (3_000, false)
            ]
        );

        // A pass at the start makes the task healthy at once; the next check is regular.
        let mut h = TaskHealth::default();
        let mut sched = Schedule::new(&check);
        assert_eq!(
            sched.next(&check, &h, 0),
            NextCheck {
                delay: 0,
                early: true
            }
        );
        assert_eq!(h.record_early(&check, result(0), 0), HealthStatus::Healthy);
        assert_eq!(
            sched.next(&check, &h, 60),
            NextCheck {
                delay: 940,
                early: false
            }
        );
        assert_eq!(
            sched.next(&check, &h, 1_000),
            NextCheck {
                delay: 1_000,
                early: false
            }
        );

        // A slow early check that ends after the first regular one was due: it runs at once.
        let mut h = TaskHealth::default();
        let mut sched = Schedule::new(&check);
        sched.next(&check, &h, 0);
        h.record_early(&check, result(1), 0);
        assert_eq!(
            sched.next(&check, &h, 1_200),
            NextCheck {
                delay: 0,
                early: false
            }
        );

        // An agent that restarts long after the start goes on with the regular checks.
        let h = TaskHealth::default();
        let mut sched = Schedule::new(&check);
        assert_eq!(
            sched.next(&check, &h, 60_000),
            NextCheck {
                delay: 1_000,
                early: false
            }
        );

        // In a start period the first regular check comes after start_interval, and the
        // next ones too while the task is starting.
        spec.start_period = 30_000;
        spec.start_interval = 250;
        let check = resolve(Some(&spec), None).unwrap();
        let h = TaskHealth::default();
        let mut sched = Schedule::new(&check);
        let mut at = 0;
        let mut runs = vec![];
        for _ in 0..4 {
            let next = sched.next(&check, &h, at);
            at += next.delay;
            runs.push((at, next.early));
        }
        assert_eq!(runs, [(0, true), (100, true), (250, false), (500, false)]);
    }

    #[test]
    fn output_keeps_the_last_bytes() {
        let long = "a".repeat(MAX_OUTPUT_BYTES) + "tail";
        let out = tail_output(long.as_bytes());
        assert_eq!(out.len(), MAX_OUTPUT_BYTES);
        assert!(out.ends_with("tail"));
        assert_eq!(tail_output(b"ok\n"), "ok\n");
    }
}
