//! Criterion benches of what finishing one request costs:
//! - `metrics/record`: recording a finished streamed request in the metrics registry (series
//!   found in published maps, histograms and counters as atomics); must stay well under 1 µs;
//! - `metrics/record_unknown_model`: the same for a model not in the catalog (folded into
//!   `other` after a catalog lookup);
//! - `telemetry/finish`: the whole finish without the access log: metrics, the recent-requests
//!   ring (one entry built and stored) and the observers.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Method, Uri};
use olla::telemetry::hist::{LocalHist, GAP_BUCKETS};
use olla::telemetry::{
    AttemptOutcome, EndReason, EndpointName, FinishRecord, Metrics, Route, Telemetry,
    TelemetrySettings, UpstreamAttempt,
};
use olla_actors::catalog::{BackendModels, Catalog};
use olla_actors::discovery::DiscoveredModel;
use olla_actors::kind::BackendKind;
use olla_actors::spec::BackendSpec;
use tokio::time::Instant;

fn record(model: &str) -> FinishRecord {
    let spec = Arc::new(BackendSpec::new(
        "gpu1",
        Uri::from_static("http://127.0.0.1:11434"),
        BackendKind::Ollama,
    ));
    let now = Instant::now();
    FinishRecord {
        request_id: "alpaca_grazing_0f3a".into(),
        method: Method::POST,
        path: "/olla/proxy/v1/chat/completions".into(),
        route: Route::OpenAi,
        model: Some(model.into()),
        endpoint: Some(EndpointName(spec.clone())),
        status: 200,
        stream: true,
        end: EndReason::Complete,
        ttfb: Some(Duration::from_millis(120)),
        duration: Duration::from_millis(2400),
        queue_wait: None,
        bytes_out: 18_000,
        tokens_in: Some(42),
        tokens_out: Some(256),
        failovers: 0,
        retries: 0,
        attempts: vec![UpstreamAttempt {
            span_id: None,
            endpoint: EndpointName(spec),
            started: now,
            ended: now,
            outcome: AttemptOutcome::Status(200),
        }],
        client_ip: IpAddr::from([127, 0, 0, 1]),
        caller: None,
        decision: None,
        received_at: SystemTime::now(),
        received: now,
        trace: None,
    }
}

fn catalog_with(model: &str) -> Catalog {
    let list = BackendModels {
        kind: BackendKind::Ollama,
        models: vec![DiscoveredModel {
            name: model.into(),
            ..Default::default()
        }],
        updated_at: SystemTime::now(),
    };
    Catalog::build(BTreeMap::from([("gpu1".to_string(), list)]), HashMap::new())
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let catalog = catalog_with("llama3");
    let mut gaps = LocalHist::default();
    for _ in 0..64 {
        gaps.observe(GAP_BUCKETS, 0.03);
    }

    let metrics = Metrics::new(true);
    let rec = record("llama3");
    metrics.record(&rec, &gaps, &catalog);
    c.bench_function("metrics/record", |b| {
        b.iter(|| metrics.record(black_box(&rec), black_box(&gaps), &catalog))
    });

    let unknown = record("not-in-catalog");
    c.bench_function("metrics/record_unknown_model", |b| {
        b.iter(|| metrics.record(black_box(&unknown), black_box(&gaps), &catalog))
    });

    let telemetry = Telemetry::new(TelemetrySettings {
        metrics: true,
        access_log: false,
    });
    c.bench_function("telemetry/finish", |b| {
        b.iter(|| telemetry.finish(black_box(&rec), black_box(&gaps), &catalog))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
