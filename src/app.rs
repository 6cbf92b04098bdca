//! The daemon's shared state: resolved server settings, the supervision tree (with its published
//! snapshots) and process-wide counters. One `Arc<App>` is shared by every connection task.

use std::sync::atomic::{AtomicI64, AtomicU64};
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
    pub size_violations: AtomicU64,
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
        Self {
            tracer,
            settings,
            tree,
            started_at: SystemTime::now(),
            started: std::time::Instant::now(),
            stats: GlobalStats::default(),
            balancer,
            control: Control::default(),
            translators: Default::default(),
        }
    }

    /// The same app with the admin endpoint's settings.
    pub fn with_control(mut self, control: Control) -> Self {
        self.control = control;
        self
    }
}
