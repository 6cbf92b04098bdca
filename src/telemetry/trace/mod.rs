//! OpenTelemetry traces: W3C trace context in and out, one server span per request with a
//! client span per upstream attempt, exported over OTLP/HTTP protobuf in batches off the
//! request path.
//!
//! - [`context`]: `traceparent`/`tracestate` parsing and formatting, ids, the sampler,
//!   [`TraceIdentity`] of a request.
//! - [`span`]: the plain inputs ([`RequestSpanInput`], [`AttemptSpanInput`]) and
//!   [`build_spans`] (HTTP and GenAI semantic-convention attributes).
//! - [`encode`]: the export body written straight from the span inputs (the bytes prost would
//!   write for [`build_spans`], at a fraction of the cost).
//! - [`export`]: [`TraceExporter`] (bounded queue, `submit_record` never waits, drops counted in
//!   [`ExportStats`], which renders Prometheus text).
//! - [`config`]: `telemetry.otlp` and the `OTEL_*` environment variables → [`OtlpSettings`].
//! - [`proto`]: the OTLP messages (prost).
//! - [`wire`]: how a request is traced: [`wire::begin`] in the request handler (the identity
//!   lives in the request's context), [`wire::client_span`] per upstream attempt, and
//!   [`wire::span_input`], which the exporter's task applies to the finished request's record.
//!
//! The whole flow: on arrival `ctx.trace = wire::begin(...)` ([`TraceIdentity`]); per upstream
//! attempt `wire::client_span(&identity)` (its span id is kept in the attempt's record, its
//! `traceparent` and `tracestate` go on the outbound headers);
//! when the request finishes, a sampled request's `FinishRecord` goes to
//! [`TraceExporter::submit_record`] (never blocks); `exporter.stats().render_prometheus(..)`
//! adds the exporter's counters to `/internal/metrics`.

pub mod config;
pub mod context;
pub mod encode;
pub mod export;
pub mod proto;
pub mod span;
pub mod wire;

pub use config::OtlpSettings;
pub use context::{Sampler, SpanId, TraceId, TraceIdentity};
pub use export::{ExportStats, TraceExporter};
pub use span::{build_spans, gen_ai_system, AttemptSpanInput, RequestSpanInput};
