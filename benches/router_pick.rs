//! Criterion benches of the request hot path:
//! - `pick/<policy>/N`: the whole candidate selection for one request (index lookup of the
//!   model, routability of each backend, tiers, the balancer and its layers, the decision) over
//!   a published snapshot of N backends in one tier (1, 10, 100), per balancer, and with sticky
//!   sessions, warm-first and cache-aware layered on;
//! - `prompt/*`: the part of a cache-aware pick that does not depend on N, alone: cutting the
//!   chat body's `messages` into segments, hashing them into the tree's walk, and the tree's
//!   lookup and insert;
//! - `accounting/*`: taking a slot on a backend and reporting the outcome (breaker, in-flight
//!   counter, stats), with the breaker on and off, against a bare atomic counter as baseline.

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc as StdArc;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};
use olla::app::App;
use olla::config::ServerSettings;
use olla::proxy::inspect::{inspect_body, prompt_segments};
use olla::proxy::select::{select, KindFilter, RouteFacts};
use olla_actors::balance::Strategy;
use olla_actors::discovery::DiscoveredModel;
use olla_actors::kind::BackendKind;
use olla_actors::registry::RegistryMsg;
use olla_actors::routing::loaded::Loaded;
use olla_actors::routing::prefix::{backend_key, CacheSettings, PrefixIndex};
use olla_actors::spec::BackendSpec;
use olla_actors::{EndpointStatus, Outcome, RoutingPolicy, SlotAttempt, Tree, TreeConfig};

fn settings() -> ServerSettings {
    ServerSettings {
        host: "127.0.0.1".into(),
        port: 0,
        threads: 0,
        read_header_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(30),
        write_timeout: Duration::ZERO,
        idle_timeout: Duration::from_secs(30),
        max_connections: 10_000,
        shutdown_timeout: Duration::from_secs(1),
        max_body_size: 1 << 20,
        max_header_size: 1 << 20,
        request_logging: false,
        metrics_enabled: true,
        proxy_engine: "olla".into(),
        proxy_profile: "auto".into(),
        trusted_proxies: Vec::new(),
        anthropic: Default::default(),
        gate: Default::default(),
        otlp: None,
        inject_stream_usage: false,
    }
}

/// A tree of `n` backends (unreachable URLs, probes far apart), all forced healthy, with a
/// catalog where every backend serves `shared` and one model of its own.
async fn app_with(n: usize, breaker: bool) -> Arc<App> {
    let specs = (0..n)
        .map(|i| {
            let mut s = BackendSpec::new(
                format!("b{i}"),
                format!("http://127.0.0.1:{}", 1 + i).parse().unwrap(),
                BackendKind::Ollama,
            );
            s.priority = 100;
            s.check_interval = Duration::from_secs(3600);
            s.check_timeout = Duration::from_millis(1);
            s.discovery.enabled = false;
            s.breaker.enabled = breaker;
            Arc::new(s)
        })
        .collect();
    let tree = Tree::start(TreeConfig {
        specs,
        policy: RoutingPolicy {
            strategy: Strategy::LeastConnections,
            ..RoutingPolicy::default()
        },
        model_aliases: Default::default(),
        stale_threshold: Duration::from_secs(86400),
        supervision: Default::default(),
    })
    .await
    .unwrap();
    // Wait for every handle, let the first probe fail, then force them healthy.
    while tree.published.table().backends.len() < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for b in &tree.published.table().backends {
        b.set_status(EndpointStatus::Healthy);
    }
    let updates = (0..n)
        .map(|i| {
            let models = vec![
                DiscoveredModel {
                    name: "shared:8b".into(),
                    ..Default::default()
                },
                DiscoveredModel {
                    name: format!("own-{i}"),
                    ..Default::default()
                },
            ];
            (format!("b{i}"), BackendKind::Ollama, models)
        })
        .collect();
    let registry = tree.published.registry().unwrap();
    ractor::call!(registry, RegistryMsg::UpdateMany, updates).unwrap();
    Arc::new(App::new(settings(), tree, "least-connections".into()))
}

/// The balancer configurations benched: `(label, strategy, sticky, warm_first)`.
const POLICIES: &[(&str, Strategy, bool, bool)] = &[
    ("priority", Strategy::Priority, false, false),
    ("round-robin", Strategy::RoundRobin, false, false),
    (
        "least-connections",
        Strategy::LeastConnections,
        false,
        false,
    ),
    ("weighted", Strategy::Weighted, false, false),
    ("warm-first", Strategy::WarmFirst, false, false),
    ("cache-aware", Strategy::CacheAware, false, false),
    (
        "least-connections+sticky",
        Strategy::LeastConnections,
        true,
        false,
    ),
    ("warm-first+sticky", Strategy::WarmFirst, true, true),
    ("cache-aware+sticky+warm", Strategy::CacheAware, true, true),
];

/// A chat request: a system prompt and three turns.
fn chat_body() -> bytes::Bytes {
    bytes::Bytes::from(
        serde_json::json!({
            "model": "shared:8b",
            "stream": true,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant. ".repeat(20)},
                {"role": "user", "content": "What is a radix tree?"},
                {"role": "assistant", "content": "A compressed trie. ".repeat(10)},
                {"role": "user", "content": "And a prefix cache?"},
            ]
        })
        .to_string(),
    )
}

fn bench_pick(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("pick");
    let body = chat_body();
    let facts = inspect_body(Some("application/json"), &body).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-olla-session-id",
        HeaderValue::from_static("session-1234"),
    );
    for n in [1usize, 10, 100] {
        let app = rt.block_on(app_with(n, true));
        // Half of the backends report the model loaded.
        for (i, b) in app.tree.published.table().backends.iter().enumerate() {
            let loaded = if i % 2 == 0 {
                Loaded::Models(vec!["shared:8b".to_string()].into())
            } else {
                Loaded::Models(Vec::new().into())
            };
            b.slot().balance.set_loaded(StdArc::new(loaded));
        }
        for &(label, strategy, sticky, warm) in POLICIES {
            let mut policy = (**app.tree.published.policy.load()).clone();
            policy.strategy = strategy;
            policy.sticky.enabled = sticky;
            policy.warm_first.enabled = warm;
            app.tree.published.policy.store(StdArc::new(policy));
            let req = RouteFacts {
                headers: Some(&headers),
                peer: Some("127.0.0.1".parse().unwrap()),
                body: &body,
                body_facts: Some(&facts),
            };
            group.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                b.to_async(&rt).iter(|| async {
                    let s = select(&app, KindFilter::Any, Some(black_box("shared:8b")), &req).await;
                    black_box(s.map(|s| s.candidates.len()).unwrap_or(0))
                })
            });
        }
    }
    group.finish();
}

fn bench_prompt(c: &mut Criterion) {
    let mut group = c.benchmark_group("prompt");
    let body = chat_body();
    let facts = inspect_body(Some("application/json"), &body).unwrap();
    let index = PrefixIndex::default();
    let max = CacheSettings::default().max_tree_bytes;
    group.bench_function("segments", |b| {
        b.iter(|| black_box(prompt_segments(&facts, black_box(&body)).len()))
    });
    group.bench_function("segments+hash", |b| {
        b.iter(|| {
            let segments = prompt_segments(&facts, black_box(&body));
            black_box(index.prompt("shared:8b", &segments).is_empty())
        })
    });
    group.bench_function("segments+hash+lookup+insert", |b| {
        b.iter(|| {
            let segments = prompt_segments(&facts, black_box(&body));
            let prompt = index.prompt("shared:8b", &segments);
            let m = index.lookup_prompt(&prompt);
            index.insert_prompt(&prompt, backend_key("b0"), max);
            black_box(m.backend)
        })
    });
    group.finish();
}

fn bench_accounting(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("accounting");
    let counter = AtomicUsize::new(0);
    group.bench_function("baseline_atomic_inc_dec", |b| {
        b.iter(|| {
            counter.fetch_add(1, Ordering::Relaxed);
            black_box(counter.load(Ordering::Relaxed));
            counter.fetch_sub(1, Ordering::Relaxed);
        })
    });
    for breaker in [true, false] {
        let app = rt.block_on(app_with(1, breaker));
        let handle = app.tree.published.table().backends[0].clone();
        let name = if breaker {
            "slot_and_report_breaker_on"
        } else {
            "slot_and_report_breaker_off"
        };
        group.bench_function(name, |b| {
            let _guard = rt.enter();
            b.iter(|| {
                if let SlotAttempt::Admitted(mut g) = handle.try_slot() {
                    g.report(Outcome::Success, Some(Duration::from_millis(3)));
                    g.add_bytes(100);
                }
            })
        });
        group.bench_function(
            format!(
                "is_routable_{}",
                if breaker { "breaker_on" } else { "breaker_off" }
            ),
            |b| b.iter(|| black_box(handle.is_routable(tokio::time::Instant::now()))),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_pick, bench_prompt, bench_accounting);
criterion_main!(benches);
