//! The passive circuit breaker of one backend: a pure state machine over live-traffic outcomes.
//!
//! Terms: *closed* = traffic flows; *open* = the backend is not routable; *half-open* = a bounded
//! number of trial requests are admitted. Only backend faults (connection errors, timeouts, 5xx)
//! count; 4xx never does. Time is passed in (`tokio::time::Instant`), so tests run on paused time.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::spec::BreakerSettings;

/// Where the breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Not routable until the instant; then half-open.
    Open {
        until: Instant,
    },
    /// `trials` requests are in flight as trials.
    HalfOpen {
        trials: u32,
    },
}

/// The answer to "may a request go to this backend now?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go.
    Pass,
    /// Half-open: go as a trial; its outcome decides the breaker.
    Trial,
    /// Open, or half-open with every trial slot taken.
    Reject,
}

/// A state change worth telling the actor about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerTransition {
    Opened { open_for: Duration },
    Closed,
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: BreakerState,
    faults: VecDeque<Instant>,
    /// Consecutive re-openings from half-open; doubles `open_for`.
    reopenings: u32,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: BreakerState::Closed,
            faults: VecDeque::new(),
            reopenings: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// Whether every request passes without a look at the clock or a trial slot: disabled,
    /// or closed. Published lock-free by the backend handle for the routing hot path.
    pub fn passes_all(&self) -> bool {
        !self.settings.enabled || self.state == BreakerState::Closed
    }

    /// Whether a request would be admitted now, without taking a trial slot.
    pub fn would_admit(&self, now: Instant) -> bool {
        if !self.settings.enabled {
            return true;
        }
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen { trials } => trials < self.settings.half_open_max_requests,
        }
    }

    /// Admits a request: takes a trial slot when half-open.
    pub fn admit(&mut self, now: Instant) -> Admission {
        if !self.settings.enabled {
            return Admission::Pass;
        }
        if let BreakerState::Open { until } = self.state {
            if now < until {
                return Admission::Reject;
            }
            self.state = BreakerState::HalfOpen { trials: 0 };
        }
        match self.state {
            BreakerState::Closed => Admission::Pass,
            BreakerState::HalfOpen { trials } if trials < self.settings.half_open_max_requests => {
                self.state = BreakerState::HalfOpen { trials: trials + 1 };
                Admission::Trial
            }
            _ => Admission::Reject,
        }
    }

    /// A request (trial or not) succeeded, or ended in a client error (4xx) which proves the
    /// backend answers.
    pub fn on_success(&mut self, trial: bool) -> Option<BreakerTransition> {
        if trial {
            if let BreakerState::HalfOpen { .. } = self.state {
                self.state = BreakerState::Closed;
                self.faults.clear();
                self.reopenings = 0;
                return Some(BreakerTransition::Closed);
            }
        }
        None
    }

    /// A trial ended without a verdict (client went away): free its slot.
    pub fn release_trial(&mut self) {
        if let BreakerState::HalfOpen { trials } = self.state {
            self.state = BreakerState::HalfOpen {
                trials: trials.saturating_sub(1),
            };
        }
    }

    /// A backend fault: connection error, timeout or 5xx.
    pub fn on_fault(&mut self, now: Instant, trial: bool) -> Option<BreakerTransition> {
        if !self.settings.enabled {
            return None;
        }
        match self.state {
            BreakerState::HalfOpen { .. } if trial => {
                self.reopenings = self.reopenings.saturating_add(1);
                Some(self.open(now))
            }
            BreakerState::Closed => {
                let window = self.settings.window;
                while let Some(first) = self.faults.front() {
                    if now.duration_since(*first) > window {
                        self.faults.pop_front();
                    } else {
                        break;
                    }
                }
                self.faults.push_back(now);
                if self.faults.len() as u32 >= self.settings.failure_threshold.max(1) {
                    Some(self.open(now))
                } else {
                    None
                }
            }
            // Faults of requests admitted before the breaker opened change nothing.
            _ => None,
        }
    }

    /// Forces the breaker open (used when a probe proves the backend down): no-op if open.
    fn open(&mut self, now: Instant) -> BreakerTransition {
        let factor = 1u32 << self.reopenings.min(16);
        let open_for = self
            .settings
            .open_for
            .saturating_mul(factor)
            .min(self.settings.max_open_for.max(self.settings.open_for));
        self.state = BreakerState::Open {
            until: now + open_for,
        };
        self.faults.clear();
        BreakerTransition::Opened { open_for }
    }

    /// Clears everything (the backend was proven healthy again by probes after being down).
    pub fn reset(&mut self) {
        self.state = BreakerState::Closed;
        self.faults.clear();
        self.reopenings = 0;
    }

    /// Name of the state for status output.
    pub fn state_name(&self, now: Instant) -> &'static str {
        match self.state {
            BreakerState::Closed => "closed",
            BreakerState::Open { until } if now >= until => "half-open",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half-open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            enabled: true,
            failure_threshold: 3,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(20),
            half_open_max_requests: 2,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_faults_in_window() {
        let mut b = Breaker::new(settings());
        let t = Instant::now();
        assert_eq!(b.on_fault(t, false), None);
        assert_eq!(b.on_fault(t, false), None);
        assert_eq!(
            b.on_fault(t, false),
            Some(BreakerTransition::Opened {
                open_for: Duration::from_secs(5)
            })
        );
        assert_eq!(b.admit(t), Admission::Reject);
        assert!(!b.would_admit(t + Duration::from_secs(4)));
    }

    #[tokio::test(start_paused = true)]
    async fn faults_outside_window_do_not_count() {
        let mut b = Breaker::new(settings());
        let t = Instant::now();
        b.on_fault(t, false);
        b.on_fault(t + Duration::from_secs(1), false);
        assert_eq!(b.on_fault(t + Duration::from_secs(12), false), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_bounded_trials_and_closes_on_success() {
        let mut b = Breaker::new(settings());
        let t = Instant::now();
        for _ in 0..3 {
            b.on_fault(t, false);
        }
        let later = t + Duration::from_secs(5);
        assert!(b.would_admit(later));
        assert_eq!(b.admit(later), Admission::Trial);
        assert_eq!(b.admit(later), Admission::Trial);
        assert_eq!(b.admit(later), Admission::Reject, "only two trials at once");
        b.release_trial();
        assert_eq!(
            b.admit(later),
            Admission::Trial,
            "a released slot is reusable"
        );
        assert_eq!(b.on_success(true), Some(BreakerTransition::Closed));
        assert_eq!(b.admit(later), Admission::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_trial_reopens_with_longer_backoff_capped() {
        let mut b = Breaker::new(settings());
        let mut t = Instant::now();
        for _ in 0..3 {
            b.on_fault(t, false);
        }
        let mut expected = [10u64, 20, 20].into_iter();
        for _ in 0..3 {
            t += Duration::from_secs(30);
            assert_eq!(b.admit(t), Admission::Trial);
            let want = Duration::from_secs(expected.next().unwrap());
            assert_eq!(
                b.on_fault(t, true),
                Some(BreakerTransition::Opened { open_for: want })
            );
            assert!(!b.would_admit(t + want - Duration::from_millis(1)));
            assert!(b.would_admit(t + want));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn non_trial_success_does_not_close_half_open_and_disabled_always_passes() {
        let mut b = Breaker::new(settings());
        let t = Instant::now();
        for _ in 0..3 {
            b.on_fault(t, false);
        }
        assert_eq!(b.on_success(false), None);
        let mut off = Breaker::new(BreakerSettings {
            enabled: false,
            ..settings()
        });
        for _ in 0..10 {
            assert_eq!(off.on_fault(t, false), None);
        }
        assert_eq!(off.admit(t), Admission::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn state_names() {
        let mut b = Breaker::new(settings());
        let t = Instant::now();
        assert_eq!(b.state_name(t), "closed");
        for _ in 0..3 {
            b.on_fault(t, false);
        }
        assert_eq!(b.state_name(t), "open");
        assert_eq!(b.state_name(t + Duration::from_secs(6)), "half-open");
        b.reset();
        assert_eq!(b.state_name(t), "closed");
    }
}
