//! The access log: one structured line per request, written through `tracing` under the target
//! `olla::access` (so `logging.format: json` makes it a JSON object, `text` a key=value line).
//! Proxied requests log at info, olla's own routes (status polling) at debug. Off with
//! `server.request_logging: false`. Never logs credentials: only the key's name.

use super::context::FinishRecord;

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// Writes the line for one finished request.
pub fn log(rec: &FinishRecord) {
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(
                target: "olla::access",
                $level,
                request_id = %rec.request_id,
                method = %rec.method,
                path = %rec.path,
                route = rec.route.as_str(),
                model = rec.model.as_deref(),
                endpoint = rec.endpoint_name(),
                status = rec.status,
                end = rec.end.as_str(),
                stream = rec.stream,
                ttfb_ms = rec.ttfb.map(ms),
                duration_ms = ms(rec.duration),
                bytes_out = rec.bytes_out,
                tokens_in = rec.tokens_in,
                tokens_out = rec.tokens_out,
                failovers = rec.failovers,
                client = %rec.client_ip,
                key = rec.key_name(),
                "request"
            )
        };
    }
    if rec.route.is_proxy() {
        line!(tracing::Level::INFO);
    } else {
        line!(tracing::Level::DEBUG);
    }
}
