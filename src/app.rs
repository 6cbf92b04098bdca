//! The daemon's shared state: resolved server settings, the supervision tree (with its published
//! snapshots) and process-wide counters. One `Arc<App>` is shared by every connection task.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;
use std::time::SystemTime;

use olla_actors::Tree;

use crate::admin::Control;
use crate::config::ServerSettings;

/// Process-wide request counters (status endpoints).
#[derive(Default, Debug)]
pub struct GlobalStats {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub active: AtomicI64,
    /// Client connections closed at accept because `server.max_connections` were open.
    pub rejected_connections: AtomicU64,
}

pub struct App {
    pub settings: ServerSettings,
    pub tree: Tree,
    pub started_at: SystemTime,
    pub started: std::time::Instant,
    pub stats: GlobalStats,
    /// `proxy.load_balancer` as configured (status output).
    pub balancer: String,
    /// The admin endpoint's settings and the effective config.
    pub control: Control,
    /// `/olla/anthropic` counters (`/internal/stats/translators`).
    pub translators: crate::api::anthropic::TranslatorStats,
    /// `dashboard.*`: the web UI and its access policy.
    pub dashboard: crate::dashboard::DashboardSettings,
    /// The last reading of the supervision tree (`/internal/status/supervision`).
    pub supervision: crate::dashboard::SupervisionCache,
    /// CORS, client identity, API keys, rate and size limits, TLS certificates.
    pub gate: crate::gate::Gate,
    /// Metrics, the recent-requests ring, finish observers and extra metrics sources.
    pub telemetry: crate::telemetry::Telemetry,
    /// The OTLP trace exporter when `telemetry.otlp` is on (started with the app; a config
    /// reload does not change it).
    pub tracer: Option<std::sync::Arc<crate::telemetry::trace::TraceExporter>>,
}

impl App {
    pub fn new(settings: ServerSettings, tree: Tree, balancer: String) -> Self {
        // The exporter's task needs a runtime; outside one (some unit tests) tracing stays off.
        let tracer = settings
            .otlp
            .as_ref()
            .filter(|_| tokio::runtime::Handle::try_current().is_ok())
            .map(crate::telemetry::trace::TraceExporter::start);
        let gate = crate::gate::Gate::new(
            &settings.gate,
            settings.trusted_proxies.clone(),
            settings.max_header_size,
            settings.max_body_size,
        );
        let telemetry = crate::telemetry::Telemetry::new(crate::telemetry::TelemetrySettings {
            metrics: settings.metrics_enabled,
            access_log: settings.request_logging,
        });
        telemetry.add_source(gate.stats.clone());
        telemetry.add_observer(gate.keys.clone());
        telemetry.add_source(Arc::new(StickyMetrics(tree.published.clone())));
        if let Some(t) = &tracer {
            telemetry.add_source(t.stats().clone());
        }
        Self {
            gate,
            tracer,
            tree,
            started_at: SystemTime::now(),
            started: std::time::Instant::now(),
            stats: GlobalStats::default(),
            balancer,
            control: Control::default(),
            translators: Default::default(),
            dashboard: Default::default(),
            supervision: Default::default(),
            telemetry,
            settings,
        }
    }

    /// The same app with the dashboard's settings.
    pub fn with_dashboard(mut self, dashboard: crate::dashboard::DashboardSettings) -> Self {
        self.dashboard = dashboard;
        self
    }

    /// The same app with the admin endpoint's settings.
    pub fn with_control(mut self, control: Control) -> Self {
        self.control = control;
        self
    }
}

/// The sticky-session table's counters in `/internal/metrics`.
struct StickyMetrics(Arc<olla_actors::published::Published>);

impl crate::telemetry::MetricsSource for StickyMetrics {
    fn render_prometheus(&self, out: &mut String) {
        self.0.routing.sticky.render_prometheus(out);
    }
}
