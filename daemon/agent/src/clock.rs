//! Where the agent reads the time: the timestamps of its reports and the `not_before` of a task.
//!
//! The agent waits with `tokio::time`, so a clock must move with tokio's time for the waits to end
//! when expected. [`SystemClock`] is the wall clock; [`TokioClock`] follows tokio's clock, which in
//! tests with paused time is virtual and jumps forward whenever every task waits.

use std::time::{SystemTime, UNIX_EPOCH};

use model::Millis;

/// The current time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0)
    }
}

/// `epoch` plus the tokio time elapsed since the clock was made. With
/// `#[tokio::test(start_paused = true)]` this is virtual time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    epoch: Millis,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `epoch` now. Call it inside a tokio runtime.
    pub fn starting_at(epoch: Millis) -> TokioClock {
        TokioClock {
            epoch,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Millis {
        self.epoch + self.start.elapsed().as_millis() as Millis
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_virtual_time() {
        let clock = TokioClock::starting_at(1_000);
        assert_eq!(clock.now(), 1_000);
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(clock.now(), 3_500);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now() > 1_577_836_800_000);
    }
}
