//! OpenTelemetry traces: W3C trace context in and out, one server span per request with a
//! client span per upstream attempt, exported over OTLP/HTTP protobuf in batches off the
//! request path.
//!
//! - [`context`]: `traceparent`/`tracestate` parsing and formatting, ids, the sampler,
//!   [`TraceIdentity`] of a request.
//! - [`span`]: the plain inputs ([`RequestSpanInput`], [`AttemptSpanInput`]) and
//!   [`build_spans`] (HTTP and GenAI semantic-convention attributes).
//! - [`export`]: [`TraceExporter`] (bounded queue, `submit` never waits, drops counted in
//!   [`ExportStats`], which renders Prometheus text).
//! - [`config`]: `telemetry.otlp` and the `OTEL_*` environment variables → [`OtlpSettings`].
//! - [`proto`]: the OTLP messages (prost).
//! - [`wire`]: how a request is traced today: [`wire::begin`] in the request handler, the
//!   attempt hooks in the proxy, [`wire::finish`] wrapping the response body.
//!
//! Interface for a request-context owner (the whole flow in four calls):
//! 1. on arrival: `let id = exporter.begin(req.headers())` ([`TraceIdentity`]);
//! 2. per upstream attempt: `let span = SpanId::random()`, send
//!    `id.traceparent_for(span)` as `traceparent` (and `id.tracestate` as `tracestate`), and
//!    keep an [`AttemptSpanInput`] with its times, status and error;
//! 3. when the response body ends (or errors, or is dropped): if `id.sampled`, fill a
//!    [`RequestSpanInput`] and call `exporter.submit(input)` (never blocks);
//! 4. metrics: `exporter.stats().render_prometheus(&mut out)`.

pub mod config;
pub mod context;
pub mod export;
pub mod proto;
pub mod span;
pub mod wire;

pub use config::OtlpSettings;
pub use context::{Sampler, SpanId, TraceId, TraceIdentity};
pub use export::{ExportStats, TraceExporter};
pub use span::{build_spans, gen_ai_system, AttemptSpanInput, RequestSpanInput};
