//! Observability: the per-request context and its finisher, the metrics registry and
//! `/internal/metrics`, the access log, and the stats routes (`/internal/stats/models`,
//! `/internal/stats/recent`, `/internal/process`).
//!
//! Everything a request leaves behind is recorded in one place, [`Telemetry::finish`], called
//! exactly once per request by the finisher ([`context`]): metrics, the recent-requests ring,
//! the access log and every registered [`FinishObserver`]. Route handlers record nothing.
//! Other modules add their own metrics text through [`MetricsSource`].
//!
//! Beside them: [`trace`] (W3C trace context, OTLP spans and the OTLP/HTTP exporter) and
//! [`stream_usage`] (`proxy.inject_stream_usage`).

pub mod access_log;
pub mod context;
pub mod hist;
pub mod metrics;
pub mod process;
pub mod recent;
pub mod render;
pub mod stats_models;
pub mod stream_usage;
pub mod trace;
pub mod usage;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use olla_actors::catalog::Catalog;

pub use context::{
    catch_unwind, AttemptError, AttemptOutcome, EndReason, EndpointName, FinishRecord, Finisher,
    RequestContext, Route, UpstreamAttempt, UsageTap,
};
pub use metrics::Metrics;

/// Told about every finished request (after metrics, before the access log). Must be cheap:
/// it runs on the serving thread, possibly while a panic unwinds, and must not panic.
pub trait FinishObserver: Send + Sync + 'static {
    fn on_finish(&self, rec: &FinishRecord);
}

/// Another module's metrics, appended to `/internal/metrics` (Prometheus text 0.0.4: `# HELP`
/// and `# TYPE` lines, then samples).
pub trait MetricsSource: Send + Sync {
    fn render_prometheus(&self, out: &mut String);
}

/// Settings of this module.
#[derive(Clone, Debug)]
pub struct TelemetrySettings {
    /// `telemetry.metrics.enabled`: record request metrics (the route still answers).
    pub metrics: bool,
    /// `server.request_logging`: write the access log.
    pub access_log: bool,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            metrics: true,
            access_log: true,
        }
    }
}

/// The daemon's telemetry state (one per `App`).
pub struct Telemetry {
    pub settings: TelemetrySettings,
    pub metrics: Metrics,
    pub recent: Arc<recent::RecentRing>,
    observers: ArcSwap<Vec<Arc<dyn FinishObserver>>>,
    sources: ArcSwap<Vec<Arc<dyn MetricsSource>>>,
    /// Proxied requests begun and not yet finished.
    pub in_flight: AtomicI64,
}

impl Telemetry {
    pub fn new(settings: TelemetrySettings) -> Self {
        let recent = Arc::new(recent::RecentRing::default());
        let first: Arc<dyn FinishObserver> = recent.clone();
        Self {
            metrics: Metrics::new(settings.metrics),
            settings,
            recent,
            observers: ArcSwap::from_pointee(vec![first]),
            sources: ArcSwap::from_pointee(Vec::new()),
            in_flight: AtomicI64::new(0),
        }
    }

    /// Registers an observer of finished requests.
    pub fn add_observer(&self, o: Arc<dyn FinishObserver>) {
        self.observers.rcu(|cur| {
            let mut v = (**cur).clone();
            v.push(o.clone());
            v
        });
    }

    /// Registers another module's metrics text.
    pub fn add_source(&self, s: Arc<dyn MetricsSource>) {
        self.sources.rcu(|cur| {
            let mut v = (**cur).clone();
            v.push(s.clone());
            v
        });
    }

    /// Appends every registered source's text.
    pub fn render_sources(&self, out: &mut String) {
        for s in self.sources.load().iter() {
            s.render_prometheus(out);
        }
    }

    /// A request begins (called by the finisher's constructor); `true` when it was counted in
    /// flight (a proxy route), to be ended by [`Telemetry::end_in_flight`].
    pub fn begin(&self, route: Route) -> bool {
        if route.is_proxy() {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        route.is_proxy()
    }

    pub fn end_in_flight(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records one finished request everywhere (see the module doc).
    pub fn finish(&self, rec: &FinishRecord, gaps: &hist::LocalHist, catalog: &Catalog) {
        self.metrics.record(rec, gaps, catalog);
        for o in self.observers.load().iter() {
            o.on_finish(rec);
        }
        if self.settings.access_log {
            access_log::log(rec);
        }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new(TelemetrySettings::default())
    }
}
