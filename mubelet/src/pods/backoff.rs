//! Kubernetes' container restart back-off: the first restart after an exit
//! is immediate; each later one waits `base` (10 s) after the previous
//! restart, doubling up to `max` (5 min). A container that ran for
//! `max * 2` before exiting starts over. While it waits, the container
//! shows `CrashLoopBackOff`.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

/// One container's back-off.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    /// The wait after the last restart; zero before the first.
    current: Duration,
    last_restart: Option<Instant>,
}

impl Backoff {
    /// When the next start may happen, for an instance that ran `ran`.
    pub fn next_start(&mut self, policy: Policy, ran: Duration, now: Instant) -> Instant {
        if ran >= policy.max * 2 {
            *self = Backoff::default();
        }
        match self.last_restart {
            None => now,
            Some(at) => at + self.current,
        }
    }

    /// Records a restart made at `now`.
    pub fn restarted(&mut self, policy: Policy, now: Instant) {
        self.current = if self.last_restart.is_none() {
            policy.base
        } else {
            (self.current * 2).min(policy.max)
        };
        self.last_restart = Some(now);
    }

    /// The wait in force, for `back-off 20s restarting failed container`.
    pub fn current(&self) -> Duration {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediate_then_doubling_to_the_cap() {
        let policy = Policy {
            base: Duration::from_secs(10),
            max: Duration::from_secs(40),
        };
        let short = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.next_start(policy, short, t0), t0);
        b.restarted(policy, t0);
        let s = |n| Duration::from_secs(n);
        assert_eq!(b.next_start(policy, short, t0 + s(1)), t0 + s(10));
        b.restarted(policy, t0 + s(10));
        assert_eq!(b.next_start(policy, short, t0 + s(11)), t0 + s(30));
        b.restarted(policy, t0 + s(30));
        assert_eq!(b.current(), s(40));
        b.restarted(policy, t0 + s(70));
        assert_eq!(b.current(), s(40), "capped");
        // A long, healthy run starts over.
        assert_eq!(b.next_start(policy, s(80), t0 + s(200)), t0 + s(200));
    }
}
