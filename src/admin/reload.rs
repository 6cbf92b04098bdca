//! Config reload (`POST /admin/reload`, `SIGHUP`): re-read the file, validate all of it, and
//! apply the difference ([`crate::config::diff`]) to the running tree. An invalid file changes
//! nothing. Removed backends are drained at once (no request sent after the reload answered
//! reaches them) and removed once their in-flight requests end (or after a bound).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use olla_actors::RoutingChange;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::AdminError;
use crate::app::App;
use crate::config::diff::{diff, Change};
use crate::config::{load_file, resolve};

/// How long a backend removed by a reload may take to finish its in-flight requests.
const REMOVE_DRAIN: Duration = Duration::from_secs(30);

/// Re-reads the config file and applies it. `Err` lists every problem (nothing applied).
pub async fn reload(app: &Arc<App>) -> Result<Value, AdminError> {
    let _one = app.control.reloading.lock().await;
    let Some(path) = app.control.origin.read().path.clone() else {
        return Err(AdminError::bad_request(
            "the daemon was started without a config file: nothing to reload",
        ));
    };
    let invalid = |errors: Vec<String>| {
        let mut e = AdminError::new(
            StatusCode::BAD_REQUEST,
            "invalid_config",
            format!(
                "{} has {} problem(s); the running config is unchanged",
                path.display(),
                errors.len()
            ),
        );
        e.errors = errors;
        e
    };
    let config = load_file(&path).map_err(|e| invalid(vec![e]))?;
    let runtime = resolve(&config).map_err(invalid)?;
    // Inbound keys are replaced and TLS certificates swapped (new connections only); a bad
    // certificate failed `resolve` above, so the running one stays.
    app.gate.reload(&runtime.server.gate);
    let running = app.tree.published.specs.read().clone();
    let plan = diff(&running, &runtime.tree.specs);

    app.tree
        .set_policy(runtime.tree.policy.clone())
        .await
        .map_err(AdminError::unavailable)?;
    app.tree
        .set_model_aliases(runtime.tree.model_aliases.clone());

    // Removed backends stop taking requests before anything else changes.
    for name in &plan.removed {
        let draining = RoutingChange {
            draining: Some(true),
            ..Default::default()
        };
        app.tree
            .route(name, draining)
            .await
            .map_err(AdminError::unavailable)?;
    }
    let mut failed = Vec::new();
    for spec in &plan.added {
        if let Err(e) = app.tree.add_backend(spec.clone()).await {
            failed.push(format!("add {}: {e}", spec.name));
        }
    }
    for (spec, change) in &plan.changed {
        let r = match change {
            Change::Routing => app
                .tree
                .route(
                    &spec.name,
                    RoutingChange {
                        priority: Some(spec.priority),
                        weight: Some(spec.weight),
                        ..Default::default()
                    },
                )
                .await
                .map(|_| ()),
            Change::Spec => app.tree.update_backend(spec.clone()).await.map(|_| ()),
        };
        if let Err(e) = r {
            failed.push(format!("update {}: {e}", spec.name));
        }
    }
    for name in plan.removed.clone() {
        let app = app.clone();
        tokio::spawn(async move {
            match app.tree.drain_and_remove(&name, REMOVE_DRAIN).await {
                Ok(Some(0)) => info!(backend = %name, "removed by reload after draining"),
                Ok(Some(left)) => {
                    warn!(backend = %name, in_flight = left, "removed by reload; drain bound reached")
                }
                Ok(None) => {}
                Err(e) => warn!(backend = %name, error = %e, "removal after reload failed"),
            }
        });
    }
    let restart_needed = restart_needed(&app.control.origin.read().config, &config);
    app.control.origin.write().config = config;
    let names = |v: &[Arc<olla_actors::BackendSpec>]| -> Vec<String> {
        v.iter().map(|s| s.name.clone()).collect()
    };
    let report = json!({
        "reloaded": path.display().to_string(),
        "added": names(&plan.added),
        "removed": plan.removed.clone(),
        "changed": plan.changed.iter().map(|(s, _)| s.name.clone()).collect::<Vec<_>>(),
        "unchanged": plan.unchanged,
        "restart_required_for": restart_needed,
        "failed": failed,
        "keys": app.gate.keys.list().len(),
        "tls_reloaded": app.gate.tls.is_some() || app.gate.admin_tls.is_some(),
    });
    info!(
        added = plan.added.len(),
        removed = plan.removed.len(),
        changed = plan.changed.len(),
        "config reloaded"
    );
    Ok(report)
}

/// Sections a reload does not apply (they need a restart).
fn restart_needed(old: &crate::config::Config, new: &crate::config::Config) -> Vec<&'static str> {
    let same = |a: Result<Value, _>, b: Result<Value, _>| match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        _ => true,
    };
    let mut out = Vec::new();
    if !same(
        serde_json::to_value(&old.server),
        serde_json::to_value(&new.server),
    ) {
        out.push("server");
    }
    if !same(
        serde_json::to_value(&old.admin),
        serde_json::to_value(&new.admin),
    ) || old.admin.token != new.admin.token
    {
        out.push("admin");
    }
    if !same(
        serde_json::to_value(&old.supervision),
        serde_json::to_value(&new.supervision),
    ) {
        out.push("supervision");
    }
    if !same(
        serde_json::to_value(&old.dashboard),
        serde_json::to_value(&new.dashboard),
    ) {
        out.push("dashboard");
    }
    if !same(
        serde_json::to_value(&old.telemetry),
        serde_json::to_value(&new.telemetry),
    ) {
        out.push("telemetry");
    }
    if old.proxy.inject_stream_usage != new.proxy.inject_stream_usage {
        out.push("proxy.inject_stream_usage");
    }
    out
}
