//! The OTLP/HTTP trace exporter: a bounded queue and one background task that batches
//! finished requests, builds their spans, and POSTs `ExportTraceServiceRequest` protobuf to the
//! collector's `/v1/traces` (`Content-Type: application/x-protobuf`).
//!
//! The queue is a vector behind a short lock, not a channel: a request's record is pushed with
//! no wake-up, and the task is woken only when a batch is full, a flush is asked for or the
//! exporter is dropped; otherwise it wakes once per batch interval. (A channel woke the task,
//! on another thread, once per request.)
//!
//! Drop policy: [`TraceExporter::submit_record`] never waits. When the queue (`max_queue`
//! requests) is full, or the collector fails, times out or answers non-2xx, the spans are
//! dropped and counted (`dropped`; `export_errors` counts failed exports). Nothing is retried
//! and nothing else is buffered, so a dead or slow collector costs a counter increment per
//! request and bounded memory (`max_queue` records plus one batch in flight). After a failed
//! export the task drops batches without encoding them for a pause ([`MIN_BACKOFF`], doubling
//! per failure up to [`MAX_BACKOFF`]), so a dead collector costs no encoding either. Span
//! building and encoding happen in the task, not on the request path.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prost::Message;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::config::OtlpSettings;
use super::context::{Sampler, TraceIdentity, TRACEPARENT, TRACESTATE};
use super::proto::{InstrumentationScope, KeyValue, Resource};
use super::wire::span_input;
use crate::telemetry::FinishRecord;

/// Export counters (spans, not requests).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped: queue full, exporter gone, or their export failed.
    pub dropped: AtomicU64,
    /// Exports that failed (connection, timeout, non-2xx).
    pub export_errors: AtomicU64,
}

impl ExportStats {
    /// Prometheus text 0.0.4 for these counters.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, help, v) in [
            (
                "olla_otlp_spans_exported_total",
                "Spans accepted by the OTLP collector.",
                &self.exported,
            ),
            (
                "olla_otlp_spans_dropped_total",
                "Spans dropped (export queue full or export failed).",
                &self.dropped,
            ),
            (
                "olla_otlp_export_errors_total",
                "OTLP exports that failed (connection, timeout, non-2xx).",
                &self.export_errors,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// Sends one encoded export request; `Err` carries why it failed.
pub type ExportFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// The transport of the exporter (HTTP in the daemon, anything in tests).
pub type ExportSink = Arc<dyn Fn(Bytes) -> ExportFuture + Send + Sync>;

/// What the request path hands to the task.
#[derive(Default)]
struct Pending {
    records: Vec<FinishRecord>,
    /// Flushes waiting for everything queued before them to be exported.
    flushes: Vec<oneshot::Sender<()>>,
    /// The exporter was dropped: export what is queued and stop.
    closed: bool,
}

/// The queue shared by the exporter handle and its task.
struct Queue {
    pending: parking_lot::Mutex<Pending>,
    /// Wakes the task (a batch is full, a flush, closing); a wake before the task waits is kept.
    wake: Notify,
    max_queue: usize,
    max_batch: usize,
}

/// Handle of the running exporter; cheap to share (`Arc`).
pub struct TraceExporter {
    queue: Arc<Queue>,
    stats: Arc<ExportStats>,
    sampler: Sampler,
}

impl TraceExporter {
    /// Starts the exporter over HTTP on the current tokio runtime.
    pub fn start(settings: &OtlpSettings) -> Arc<Self> {
        Self::with_sink(settings, http_sink(settings))
    }

    /// Starts the exporter with a given transport.
    pub fn with_sink(settings: &OtlpSettings, sink: ExportSink) -> Arc<Self> {
        let queue = Arc::new(Queue {
            pending: parking_lot::Mutex::new(Pending::default()),
            wake: Notify::new(),
            max_queue: settings.max_queue,
            max_batch: settings.max_batch,
        });
        let stats = Arc::new(ExportStats::default());
        let batcher = Batcher {
            queue: queue.clone(),
            sink,
            stats: stats.clone(),
            interval: settings.batch_interval,
            timeout: settings.timeout,
            resource: resource(&settings.service_name).encode_to_vec(),
            scope: scope().encode_to_vec(),
            paused_until: None,
            backoff: MIN_BACKOFF,
        };
        tokio::spawn(batcher.run());
        Arc::new(Self {
            queue,
            stats,
            sampler: settings.sampler,
        })
    }

    /// The trace identity of an incoming request (from its `traceparent`/`tracestate`).
    pub fn begin(&self, headers: &HeaderMap) -> TraceIdentity {
        TraceIdentity::from_headers(
            headers.get(TRACEPARENT).map(|v| v.as_bytes()),
            headers.get(TRACESTATE).map(|v| v.as_bytes()),
            &self.sampler,
        )
    }

    /// Queues a finished, sampled request's record without waiting; its spans are built in
    /// the batch task. When the queue is full its spans are dropped and counted.
    pub fn submit_record(&self, rec: FinishRecord) {
        let spans = 1 + rec.attempts.len() as u64;
        let batch_full = {
            let mut pending = self.queue.pending.lock();
            if pending.records.len() >= self.queue.max_queue {
                None
            } else {
                pending.records.push(rec);
                Some(pending.records.len() == self.queue.max_batch)
            }
        };
        match batch_full {
            None => {
                self.stats.dropped.fetch_add(spans, Ordering::Relaxed);
            }
            Some(true) => self.queue.wake.notify_one(),
            Some(false) => {}
        }
    }

    /// Exports what is queued, waiting at most `within` (graceful shutdown).
    pub async fn flush(&self, within: Duration) {
        let (tx, rx) = oneshot::channel();
        self.queue.pending.lock().flushes.push(tx);
        self.queue.wake.notify_one();
        let _ = tokio::time::timeout(within, rx).await;
    }

    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }
}

impl Drop for TraceExporter {
    fn drop(&mut self) {
        self.queue.pending.lock().closed = true;
        self.queue.wake.notify_one();
    }
}

fn resource(service_name: &str) -> Resource {
    Resource {
        attributes: vec![
            KeyValue::string("service.name", service_name),
            KeyValue::string("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::string("telemetry.sdk.name", "olla"),
            KeyValue::string("telemetry.sdk.language", "rust"),
            KeyValue::string("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ],
    }
}

/// The `InstrumentationScope` of olla's spans (encoded once by the exporter).
fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "olla".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

struct Batcher {
    queue: Arc<Queue>,
    sink: ExportSink,
    stats: Arc<ExportStats>,
    interval: Duration,
    timeout: Duration,
    /// The encoded `Resource` and `InstrumentationScope` (the same in every export).
    resource: Vec<u8>,
    scope: Vec<u8>,
    /// After a failed export, batches are dropped unencoded until this time.
    paused_until: Option<Instant>,
    backoff: Duration,
}

/// The pause after a first failed export; it doubles with each failure up to
/// [`MAX_BACKOFF`] and resets on a success.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause between export attempts to a failing collector.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Batcher {
    async fn run(mut self) {
        let mut batch: Vec<FinishRecord> = Vec::new();
        loop {
            // Woken by a full batch, a flush or closing; else once per interval.
            let _ = tokio::time::timeout(self.interval, self.queue.wake.notified()).await;
            // Export full batches, then the rest; a flush waits for all queued before it.
            let (flushes, closed) = loop {
                let (flushes, closed, more) = {
                    let mut pending = self.queue.pending.lock();
                    let max = self.queue.max_batch;
                    if pending.records.len() <= max {
                        std::mem::swap(&mut pending.records, &mut batch);
                    } else {
                        batch.extend(pending.records.drain(..max));
                    }
                    (
                        std::mem::take(&mut pending.flushes),
                        pending.closed,
                        !pending.records.is_empty(),
                    )
                };
                if !batch.is_empty() {
                    self.export(&mut batch).await;
                }
                if !more {
                    break (flushes, closed);
                }
                // Flushes taken in this round are answered after the whole queue is out.
                if !flushes.is_empty() {
                    self.queue.pending.lock().flushes.extend(flushes);
                }
            };
            for done in flushes {
                let _ = done.send(());
            }
            if closed {
                return;
            }
        }
    }

    /// Within the pause after a failed export.
    fn paused(&self) -> bool {
        self.paused_until.is_some_and(|t| Instant::now() < t)
    }

    /// Encodes and sends one batch (or drops it while paused after a failure); empties it.
    async fn export(&mut self, batch: &mut Vec<FinishRecord>) {
        let spans: u64 = batch
            .iter()
            .filter(|r| r.trace.is_some())
            .map(|r| 1 + r.attempts.len() as u64)
            .sum();
        if self.paused() {
            // The collector failed moments ago: do not spend CPU encoding for it.
            batch.clear();
            self.stats.dropped.fetch_add(spans, Ordering::Relaxed);
            return;
        }
        let body = super::encode::export_each(&self.resource, &self.scope, batch.len(), |each| {
            for input in batch.iter().filter_map(span_input) {
                each(&input);
            }
        });
        batch.clear();
        match tokio::time::timeout(self.timeout, (self.sink)(body)).await {
            Ok(Ok(())) => {
                self.stats.exported.fetch_add(spans, Ordering::Relaxed);
                self.paused_until = None;
                self.backoff = MIN_BACKOFF;
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {:?}", self.timeout),
                };
                tracing::debug!(error = %why, spans, pause = ?self.backoff, "OTLP export failed; spans dropped");
                self.stats.export_errors.fetch_add(1, Ordering::Relaxed);
                self.stats.dropped.fetch_add(spans, Ordering::Relaxed);
                self.paused_until = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Largest collector answer read (the answer is only checked for its status).
const MAX_ANSWER: usize = 64 * 1024;

/// POSTs to the collector over HTTP/1.1 (TLS for `https://`).
pub fn http_sink(settings: &OtlpSettings) -> ExportSink {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.timeout));
    let tls = match HttpsConnectorBuilder::new().with_native_roots() {
        Ok(b) => b,
        Err(_) => HttpsConnectorBuilder::new().with_webpki_roots(),
    };
    let connector: HttpsConnector<HttpConnector> =
        tls.https_or_http().enable_http1().wrap_connector(http);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(2)
        .build(connector);
    let url = settings.traces_url.clone();
    let headers = settings.headers.clone();
    Arc::new(move |body: Bytes| {
        let client = client.clone();
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = url.clone();
        for (k, v) in &headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        Box::pin(async move {
            let resp = client
                .request(req)
                .await
                .map_err(|e| format!("cannot reach the collector: {e}"))?;
            let status = resp.status();
            // Read (bounded) so the connection can be reused.
            let _ = Limited::new(resp.into_body(), MAX_ANSWER).collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("collector answered {status}"))
            }
        })
    })
}

impl crate::telemetry::MetricsSource for ExportStats {
    fn render_prometheus(&self, out: &mut String) {
        ExportStats::render_prometheus(self, out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::context::{SpanId, TraceId};
    use super::super::proto::ExportTraceServiceRequest;
    use super::super::wire::tests::{identity, record};
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn settings(url: &str) -> OtlpSettings {
        OtlpSettings {
            traces_url: url.parse().unwrap(),
            headers: vec![(
                http::HeaderName::from_static("x-tenant"),
                http::HeaderValue::from_static("t1"),
            )],
            timeout: Duration::from_secs(2),
            sampler: Sampler::default(),
            max_queue: 4,
            max_batch: 3,
            batch_interval: Duration::from_millis(50),
            service_name: "olla-test".into(),
        }
    }

    /// A finished, traced request of three spans (the request and two attempts).
    fn input(n: u8) -> FinishRecord {
        let mut id = identity();
        id.trace_id = TraceId([n; 16]);
        id.span_id = SpanId([n; 8]);
        record(Some(id))
    }

    async fn wait_for(cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not met in time");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_collector_drops_without_blocking() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let sink: ExportSink = Arc::new(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            })
        });
        let mut s = settings("http://127.0.0.1:1/v1/traces");
        s.max_batch = 1;
        let exp = TraceExporter::with_sink(&s, sink);
        exp.submit_record(input(1));
        // The task takes the first request and hangs in the export.
        wait_for(|| calls.load(Ordering::SeqCst) == 1).await;
        let started = std::time::Instant::now();
        for n in 0..100 {
            exp.submit_record(input(n));
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "submit never waits"
        );
        // 4 fit in the queue, 96 requests of 3 spans each are dropped at once.
        assert_eq!(exp.stats().dropped.load(Ordering::Relaxed), 96 * 3);
        // The export times out (paused time advances): its 3 spans are dropped too.
        wait_for(|| exp.stats().export_errors.load(Ordering::Relaxed) >= 1).await;
        assert!(exp.stats().dropped.load(Ordering::Relaxed) >= 97 * 3);
        let mut text = String::new();
        exp.stats().render_prometheus(&mut text);
        assert!(text.contains("# TYPE olla_otlp_spans_dropped_total counter"));
        assert!(text.contains("\nolla_otlp_export_errors_total "));
    }

    /// A tiny OTLP/HTTP receiver: records each decoded request and its headers.
    async fn receiver() -> (
        String,
        Arc<parking_lot::Mutex<Vec<(HeaderMap, ExportTraceServiceRequest)>>>,
        tokio::task::JoinHandle<()>,
    ) {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let g = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let g = g.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let g = g.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await?.to_bytes();
                            let decoded = ExportTraceServiceRequest::decode(body).unwrap();
                            g.lock().push((headers, decoded));
                            Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        (format!("http://{addr}/v1/traces"), got, task)
    }

    #[tokio::test]
    async fn exports_batches_to_a_collector() {
        let (url, got, task) = receiver().await;
        let mut s = settings(&url);
        s.max_queue = 16;
        let exp = TraceExporter::start(&s);
        for n in 1..=5 {
            exp.submit_record(input(n));
        }
        wait_for(|| exp.stats().exported.load(Ordering::Relaxed) == 15).await;
        let got = got.lock();
        assert_eq!(got.len(), 2, "batches of at most 3 requests");
        let (headers, first) = &got[0];
        assert_eq!(headers["content-type"], "application/x-protobuf");
        assert_eq!(headers["x-tenant"], "t1");
        let rs = &first.resource_spans[0];
        let res = rs.resource.as_ref().unwrap();
        assert!(res.attributes.iter().any(|kv| kv.key == "service.name"
            && kv.value.as_ref().and_then(|v| v.value.as_ref())
                == Some(&super::super::proto::any_value::Value::StringValue(
                    "olla-test".into()
                ))));
        let spans = &rs.scope_spans[0].spans;
        assert_eq!(spans.len(), 9);
        assert_eq!(spans[0].trace_id, vec![1; 16]);
        assert_eq!(spans[1].parent_span_id, vec![1; 8]);
        assert_eq!(exp.stats().dropped.load(Ordering::Relaxed), 0);
        task.abort();
    }

    #[tokio::test]
    async fn flush_exports_without_waiting_for_the_interval() {
        let (url, got, task) = receiver().await;
        let mut s = settings(&url);
        s.batch_interval = Duration::from_secs(3600);
        s.max_batch = 100;
        let exp = TraceExporter::start(&s);
        exp.submit_record(input(1));
        exp.flush(Duration::from_secs(10)).await;
        assert_eq!(exp.stats().exported.load(Ordering::Relaxed), 3);
        assert_eq!(got.lock().len(), 1);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_exports_when_a_batch_fills_or_the_interval_ends() {
        let sent = Arc::new(AtomicUsize::new(0));
        let c = sent.clone();
        let sink: ExportSink = Arc::new(move |body: Bytes| {
            let spans = ExportTraceServiceRequest::decode(body)
                .unwrap()
                .resource_spans[0]
                .scope_spans[0]
                .spans
                .len();
            c.fetch_add(spans, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        });
        let mut s = settings("http://127.0.0.1:1/v1/traces");
        s.max_queue = 16;
        s.batch_interval = Duration::from_secs(60);
        let exp = TraceExporter::with_sink(&s, sink);
        exp.submit_record(input(1));
        exp.submit_record(input(2));
        // Two of a batch of three: nothing is sent before the interval.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(sent.load(Ordering::SeqCst), 0);
        // The third fills the batch: sent at once.
        let filled = Instant::now();
        exp.submit_record(input(3));
        wait_for(|| sent.load(Ordering::SeqCst) == 9).await;
        assert!(
            filled.elapsed() < Duration::from_secs(1),
            "not held for the interval"
        );
        // A lone request goes out when the interval ends.
        exp.submit_record(input(4));
        tokio::time::sleep(Duration::from_secs(61)).await;
        wait_for(|| sent.load(Ordering::SeqCst) == 12).await;
        assert_eq!(exp.stats().exported.load(Ordering::Relaxed), 12);
    }

    #[tokio::test]
    async fn a_closed_port_counts_errors_and_never_blocks() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let exp = TraceExporter::start(&settings(&format!("http://127.0.0.1:{port}/v1/traces")));
        let started = std::time::Instant::now();
        for n in 0..50 {
            exp.submit_record(input(n));
        }
        assert!(started.elapsed() < Duration::from_millis(500));
        wait_for(|| {
            let s = exp.stats();
            s.dropped.load(Ordering::Relaxed) == 150 && s.export_errors.load(Ordering::Relaxed) >= 1
        })
        .await;
        assert_eq!(exp.stats().exported.load(Ordering::Relaxed), 0);
    }
}
