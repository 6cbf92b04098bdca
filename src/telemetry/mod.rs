//! Request telemetry.
//!
//! - [`trace`]: W3C trace context, OTLP span building and the OTLP/HTTP exporter.
//! - [`stream_usage`]: `proxy.inject_stream_usage` (ask OpenAI-style backends for the final
//!   usage chunk and hide it from clients that did not ask for it).

pub mod stream_usage;
pub mod trace;
