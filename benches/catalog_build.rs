//! Criterion bench of building the unified model catalog from backend listings, to show it is
//! linear in the number of entries (compare the 10k and 100k points: ~10x, not ~100x):
//! - `catalog/distinct/N`: N models spread over 10 backends, every name distinct;
//! - `catalog/shared/N`: N entries over 10 backends that all carry one digest, so they merge
//!   into a single model with N aliases and endpoints (the shape a hostile list can force).

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use olla_actors::catalog::{BackendModels, Catalog};
use olla_actors::discovery::DiscoveredModel;
use olla_actors::kind::BackendKind;

fn listings(n: usize, shared_digest: bool) -> BTreeMap<String, BackendModels> {
    let backends = 10;
    (0..backends)
        .map(|b| {
            let models = (0..n / backends)
                .map(|i| DiscoveredModel {
                    name: format!("model-{b}-{i}"),
                    digest: shared_digest.then(|| "sha256:same".to_string()),
                    capabilities: vec!["completion".into()],
                    ..DiscoveredModel::default()
                })
                .collect();
            (
                format!("backend-{b}"),
                BackendModels {
                    kind: BackendKind::OpenAiCompatible,
                    models,
                    updated_at: SystemTime::UNIX_EPOCH,
                },
            )
        })
        .collect()
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("catalog");
    g.sample_size(10);
    for (label, shared) in [("distinct", false), ("shared", true)] {
        for n in [10_000usize, 100_000] {
            let input = listings(n, shared);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(label, n), &input, |b, input| {
                b.iter_batched(
                    || input.clone(),
                    |input| black_box(Catalog::build(input, HashMap::new())),
                    BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, build);
criterion_main!(benches);
