//! systemd integration: readiness, status lines, reload and stop notifications, the watchdog.
//! Every call is a no-op when the daemon does not run under systemd (`NOTIFY_SOCKET` unset).

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "failed to notify systemd");
    }
}

/// `READY=1` with a status line: the store is open and the bus name is owned.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A `STATUS=` line saying what the node is doing.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `RELOADING=1` (with `MONOTONIC_USEC`, as systemd >= 253 wants) before a reload.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(usec) => send(&[
            NotifyState::Reloading,
            usec,
            NotifyState::Status("reloading stacks"),
        ]),
        Err(_) => send(&[
            NotifyState::Reloading,
            NotifyState::Status("reloading stacks"),
        ]),
    }
}

/// `READY=1` again after a reload, with the resulting status line.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping (tasks keep running)"),
    ]);
}

/// The watchdog period systemd asked for (`WatchdogSec`), if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}
