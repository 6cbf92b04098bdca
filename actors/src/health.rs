//! Active health of one backend: how a probe result maps to a status (Olla's table), and the
//! hysteresis/backoff state machine that decides the published status and the next probe time.
//! Pure: time and jitter are passed in.

use std::time::Duration;

use crate::spec::HealthSettings;
use crate::wait::clamp_backend_wait;

/// Published status of a backend, serialised as Olla does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EndpointStatus {
    Unknown = 0,
    Healthy = 1,
    Busy = 2,
    Warming = 3,
    Unhealthy = 4,
    Offline = 5,
    RateLimited = 6,
    ConfigError = 7,
}

impl EndpointStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Busy => "busy",
            Self::Warming => "warming",
            Self::Unhealthy => "unhealthy",
            Self::Offline => "offline",
            Self::RateLimited => "rate_limited",
            Self::ConfigError => "config_error",
        }
    }

    #[inline]
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Healthy,
            2 => Self::Busy,
            3 => Self::Warming,
            4 => Self::Unhealthy,
            5 => Self::Offline,
            6 => Self::RateLimited,
            7 => Self::ConfigError,
            _ => Self::Unknown,
        }
    }

    /// Whether new requests may go to a backend in this status.
    #[inline]
    pub fn is_routable(self) -> bool {
        matches!(self, Self::Healthy | Self::Busy | Self::Warming)
    }

    /// Share of traffic inside a priority tier (busy and warming backends get less).
    #[inline]
    pub fn traffic_factor(self) -> f64 {
        match self {
            Self::Healthy => 1.0,
            Self::Busy => 0.3,
            Self::Warming => 0.1,
            _ => 0.0,
        }
    }
}

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// No HTTP answer: refused, reset, DNS, TLS, or the probe timed out.
    Transport(String),
    /// An HTTP answer.
    Http {
        status: u16,
        elapsed: Duration,
        retry_after: Option<Duration>,
    },
}

/// The verdict of one probe, per Olla's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Busy,
    Unhealthy,
    Offline,
    ConfigError,
    RateLimited(Duration),
}

impl Verdict {
    fn is_good(self) -> bool {
        matches!(self, Self::Healthy | Self::Busy)
    }
    fn status(self) -> EndpointStatus {
        match self {
            Self::Healthy => EndpointStatus::Healthy,
            Self::Busy => EndpointStatus::Busy,
            Self::Unhealthy => EndpointStatus::Unhealthy,
            Self::Offline => EndpointStatus::Offline,
            Self::ConfigError => EndpointStatus::ConfigError,
            Self::RateLimited(_) => EndpointStatus::RateLimited,
        }
    }
}

/// Maps a probe result to a verdict: transport error → offline, 401/403 → config error,
/// 429 → rate-limited (honouring `Retry-After`, clamped to `max_retry_after`), slow 2xx → busy,
/// 2xx → healthy, else unhealthy.
pub fn classify(result: &ProbeResult, settings: &HealthSettings) -> Verdict {
    match result {
        ProbeResult::Transport(_) => Verdict::Offline,
        ProbeResult::Http {
            status,
            elapsed,
            retry_after,
        } => match *status {
            401 | 403 => Verdict::ConfigError,
            429 => Verdict::RateLimited(clamp_backend_wait(
                retry_after.unwrap_or(settings.default_retry_after),
                settings.max_retry_after,
            )),
            200..=299 if *elapsed > settings.busy_threshold => Verdict::Busy,
            200..=299 => Verdict::Healthy,
            _ => Verdict::Unhealthy,
        },
    }
}

/// What the actor must do after a probe.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthStep {
    /// The published status after this probe.
    pub status: EndpointStatus,
    /// `Some((old, new))` when the published status changed.
    pub changed: Option<(EndpointStatus, EndpointStatus)>,
    /// The backend just came back (down → up): re-discover its models.
    pub recovered: bool,
    /// When to probe next.
    pub next_check: Duration,
}

/// Hysteresis and backoff: K consecutive failures to go down, M successes to come back,
/// exponential backoff with jitter while down.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    settings: HealthSettings,
    interval: Duration,
    status: EndpointStatus,
    failures: u32,
    successes: u32,
    /// Consecutive probes while down; drives the backoff.
    down_probes: u32,
    last_error: Option<String>,
}

/// Recheck delay while a verdict is still being confirmed (suspect or recovering).
const CONFIRM_RECHECK: Duration = Duration::from_millis(500);

impl HealthTracker {
    /// `initial` lets a restarted actor keep its predecessor's status until the first probe.
    pub fn new(settings: HealthSettings, interval: Duration, initial: EndpointStatus) -> Self {
        Self {
            settings,
            interval,
            status: initial,
            failures: 0,
            successes: 0,
            down_probes: 0,
            last_error: None,
        }
    }

    pub fn status(&self) -> EndpointStatus {
        self.status
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Whether the published status is routable (a live connection failure then warrants an
    /// immediate probe).
    pub fn is_up(&self) -> bool {
        self.status.is_routable()
    }

    /// Folds one probe result in. `jitter` is a random number in `[-1, 1]` (±20% of backoff).
    pub fn observe(&mut self, result: &ProbeResult, jitter: f64) -> HealthStep {
        let verdict = classify(result, &self.settings);
        self.last_error = match result {
            ProbeResult::Transport(e) => Some(e.clone()),
            ProbeResult::Http { status, .. } if !verdict.is_good() => {
                Some(format!("health check returned HTTP {status}"))
            }
            _ => None,
        };
        let old = self.status;
        let mut recovered = false;
        let next_check;

        if let Verdict::RateLimited(wait) = verdict {
            // Rate-limited is not broken: park until Retry-After, keep counters.
            self.status = EndpointStatus::RateLimited;
            next_check = wait.max(Duration::from_millis(100));
        } else if verdict.is_good() {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            // A first probe decides at once, and so does the end of a rate-limit pause:
            // rate-limited is not broken.
            let first_ever = old == EndpointStatus::Unknown;
            let pause_over = old == EndpointStatus::RateLimited && self.failures == 0;
            if self.is_up()
                || first_ever
                || pause_over
                || self.successes >= self.settings.rise.max(1)
            {
                if !self.is_up() {
                    recovered = !first_ever && !pause_over;
                }
                self.status = verdict.status();
                self.down_probes = 0;
                next_check = self.interval;
            } else {
                // Down and not yet confirmed back: recheck soon.
                next_check = self.interval.min(CONFIRM_RECHECK);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            let first_ever = old == EndpointStatus::Unknown;
            if self.is_up() && !first_ever && self.failures < self.settings.fall.max(1) {
                // Suspect: still routable, confirm quickly.
                next_check = self.interval.min(CONFIRM_RECHECK);
            } else {
                self.status = verdict.status();
                self.down_probes = self.down_probes.saturating_add(1);
                next_check = self.backoff(jitter);
            }
        }
        HealthStep {
            status: self.status,
            changed: (old != self.status).then_some((old, self.status)),
            recovered,
            next_check,
        }
    }

    /// A live request found the backend's port closed: down at once, whatever the hysteresis
    /// says (a refused connection is definitive). `None` when it is not up anyway (nothing to
    /// change; the probe loop already owns it).
    pub fn force_down(&mut self, error: String, jitter: f64) -> Option<HealthStep> {
        if !self.is_up() {
            return None;
        }
        let old = self.status;
        self.last_error = Some(error);
        self.successes = 0;
        self.failures = self.failures.saturating_add(1).max(self.settings.fall);
        self.status = EndpointStatus::Offline;
        self.down_probes = 1;
        Some(HealthStep {
            status: self.status,
            changed: Some((old, self.status)),
            recovered: false,
            next_check: self.backoff(jitter),
        })
    }

    /// Backoff while down: interval × 2^(n-1), capped, with ±20% jitter.
    fn backoff(&self, jitter: f64) -> Duration {
        let n = self.down_probes.saturating_sub(1).min(16);
        let cap = self.settings.max_backoff.max(self.interval);
        let base = self.interval.saturating_mul(1u32 << n).min(cap);
        let factor = 1.0 + 0.2 * jitter.clamp(-1.0, 1.0);
        base.mul_f64(factor).max(Duration::from_millis(50))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> ProbeResult {
        ProbeResult::Http {
            status: 200,
            elapsed: Duration::from_millis(5),
            retry_after: None,
        }
    }
    fn refused() -> ProbeResult {
        ProbeResult::Transport("connection refused".into())
    }
    fn tracker(initial: EndpointStatus) -> HealthTracker {
        let settings = HealthSettings {
            fall: 2,
            rise: 3,
            max_backoff: Duration::from_secs(8),
            ..HealthSettings::default()
        };
        HealthTracker::new(settings, Duration::from_secs(1), initial)
    }

    #[test]
    fn classification_follows_ollas_table() {
        let s = HealthSettings::default();
        let http = |status, ms| ProbeResult::Http {
            status,
            elapsed: Duration::from_millis(ms),
            retry_after: None,
        };
        assert_eq!(classify(&refused(), &s), Verdict::Offline);
        assert_eq!(classify(&http(401, 1), &s), Verdict::ConfigError);
        assert_eq!(classify(&http(403, 1), &s), Verdict::ConfigError);
        assert_eq!(
            classify(&http(429, 1), &s),
            Verdict::RateLimited(Duration::from_secs(30))
        );
        assert_eq!(classify(&http(200, 11_000), &s), Verdict::Busy);
        assert_eq!(classify(&http(204, 1), &s), Verdict::Healthy);
        assert_eq!(classify(&http(500, 1), &s), Verdict::Unhealthy);
        assert_eq!(classify(&http(404, 1), &s), Verdict::Unhealthy);
    }

    #[test]
    fn first_probe_decides_at_once() {
        let mut t = tracker(EndpointStatus::Unknown);
        let step = t.observe(&ok(), 0.0);
        assert_eq!(step.status, EndpointStatus::Healthy);
        assert!(!step.recovered);
        let mut t = tracker(EndpointStatus::Unknown);
        assert_eq!(t.observe(&refused(), 0.0).status, EndpointStatus::Offline);
    }

    #[test]
    fn k_failures_to_go_down_with_quick_confirmation() {
        let mut t = tracker(EndpointStatus::Healthy);
        let s1 = t.observe(&refused(), 0.0);
        assert_eq!(
            s1.status,
            EndpointStatus::Healthy,
            "one failure is only suspect"
        );
        assert_eq!(s1.next_check, Duration::from_millis(500));
        let s2 = t.observe(&refused(), 0.0);
        assert_eq!(s2.status, EndpointStatus::Offline);
        assert_eq!(
            s2.changed,
            Some((EndpointStatus::Healthy, EndpointStatus::Offline))
        );
        assert_eq!(t.last_error(), Some("connection refused"));
    }

    #[test]
    fn a_success_between_failures_resets_the_count() {
        let mut t = tracker(EndpointStatus::Healthy);
        t.observe(&refused(), 0.0);
        t.observe(&ok(), 0.0);
        assert_eq!(t.observe(&refused(), 0.0).status, EndpointStatus::Healthy);
    }

    #[test]
    fn exponential_backoff_while_down_is_capped_and_jittered() {
        let mut t = tracker(EndpointStatus::Offline);
        let delays: Vec<u64> = (0..6)
            .map(|_| t.observe(&refused(), 0.0).next_check.as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![1000, 2000, 4000, 8000, 8000, 8000]);
        let hi = t.observe(&refused(), 1.0).next_check;
        let lo = t.observe(&refused(), -1.0).next_check;
        assert_eq!(hi, Duration::from_millis(9600));
        assert_eq!(lo, Duration::from_millis(6400));
    }

    #[test]
    fn m_successes_to_come_back_then_recovered() {
        let mut t = tracker(EndpointStatus::Offline);
        t.observe(&refused(), 0.0);
        let a = t.observe(&ok(), 0.0);
        assert_eq!(a.status, EndpointStatus::Offline);
        assert_eq!(a.next_check, Duration::from_millis(500));
        assert_eq!(t.observe(&ok(), 0.0).status, EndpointStatus::Offline);
        let c = t.observe(&ok(), 0.0);
        assert_eq!(c.status, EndpointStatus::Healthy);
        assert!(c.recovered);
        assert_eq!(c.next_check, Duration::from_secs(1));
        // Backoff restarts from the interval after recovery.
        t.observe(&refused(), 0.0);
        assert_eq!(
            t.observe(&refused(), 0.0).next_check,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn rate_limited_parks_for_retry_after() {
        let mut t = tracker(EndpointStatus::Healthy);
        let step = t.observe(
            &ProbeResult::Http {
                status: 429,
                elapsed: Duration::ZERO,
                retry_after: Some(Duration::from_secs(2)),
            },
            0.0,
        );
        assert_eq!(step.status, EndpointStatus::RateLimited);
        assert_eq!(step.next_check, Duration::from_secs(2));
        assert!(!step.status.is_routable());
        // A good probe after the wait: rate limiting is not "down", it comes back at once.
        let back = t.observe(&ok(), 0.0);
        assert_eq!(back.status, EndpointStatus::Healthy);
    }

    #[test]
    fn config_error_is_not_routable_and_backs_off() {
        let mut t = tracker(EndpointStatus::Healthy);
        let auth = ProbeResult::Http {
            status: 401,
            elapsed: Duration::ZERO,
            retry_after: None,
        };
        t.observe(&auth, 0.0);
        let s = t.observe(&auth, 0.0);
        assert_eq!(s.status, EndpointStatus::ConfigError);
        assert_eq!(t.last_error(), Some("health check returned HTTP 401"));
    }

    #[test]
    fn a_refused_live_connection_takes_it_down_at_once_and_rise_brings_it_back() {
        let mut t = tracker(EndpointStatus::Healthy);
        let step = t.force_down("connection refused".into(), 0.0).unwrap();
        assert_eq!(step.status, EndpointStatus::Offline);
        assert_eq!(
            step.changed,
            Some((EndpointStatus::Healthy, EndpointStatus::Offline))
        );
        assert_eq!(step.next_check, Duration::from_secs(1));
        assert!(t.force_down("again".into(), 0.0).is_none(), "already down");
        // A stale good probe does not bring it back: M successes are needed.
        assert_eq!(t.observe(&ok(), 0.0).status, EndpointStatus::Offline);
        assert_eq!(t.observe(&ok(), 0.0).status, EndpointStatus::Offline);
        let back = t.observe(&ok(), 0.0);
        assert_eq!(back.status, EndpointStatus::Healthy);
        assert!(back.recovered);
    }

    #[test]
    fn a_huge_retry_after_parks_at_most_max_retry_after() {
        let mut t = tracker(EndpointStatus::Healthy);
        let step = t.observe(
            &ProbeResult::Http {
                status: 429,
                elapsed: Duration::ZERO,
                retry_after: Some(Duration::MAX),
            },
            0.0,
        );
        assert_eq!(step.status, EndpointStatus::RateLimited);
        assert_eq!(step.next_check, Duration::from_secs(3600));
    }
}
