//! [`Clock`]: the seconds clock every request reads. Imports nothing of
//! this crate.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A seconds clock read on every request without a syscall: a background
/// task stores the time every 100 ms (memcached keeps a 1 s timer for the
/// same reason).
#[derive(Debug)]
pub struct Clock {
    now: AtomicU32,
}

impl Clock {
    /// A clock set to the current time.
    pub fn new() -> Clock {
        let clock = Clock {
            now: AtomicU32::new(0),
        };
        clock.tick();
        clock
    }

    /// Unix seconds, as of the last tick.
    #[inline]
    pub fn now(&self) -> u32 {
        self.now.load(Ordering::Relaxed)
    }

    /// Reads the system clock.
    pub fn tick(&self) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.now
            .store(u32::try_from(secs).unwrap_or(u32::MAX), Ordering::Relaxed);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
