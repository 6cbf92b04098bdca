//! OpenTelemetry traces end to end: a client `traceparent` is continued (the backend receives
//! the same trace id with the attempt's span as parent), the request and attempt spans reach an
//! OTLP/HTTP receiver with the GenAI attributes, a failover shows as two attempts, and a dead
//! collector leaves requests unaffected (spans dropped and counted).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use olla::telemetry::trace::proto::any_value::Value as AnyValue;
use olla::telemetry::trace::proto::{ExportTraceServiceRequest, Span};
use parking_lot::Mutex;
use prost::Message;

type Received = Arc<Mutex<Vec<Span>>>;

/// A tiny OTLP/HTTP receiver on 127.0.0.1:0 that decodes every export.
async fn receiver() -> (String, Received, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Received = Arc::default();
    let g = got.clone();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let g = g.clone();
                        async move {
                            let ok = req.uri().path() == "/v1/traces"
                                && req
                                    .headers()
                                    .get("content-type")
                                    .is_some_and(|v| v == "application/x-protobuf");
                            let body = req.into_body().collect().await?.to_bytes();
                            if let (true, Ok(decoded)) =
                                (ok, ExportTraceServiceRequest::decode(body))
                            {
                                for rs in decoded.resource_spans {
                                    for ss in rs.scope_spans {
                                        g.lock().extend(ss.spans);
                                    }
                                }
                            }
                            let mut resp = http::Response::new(Full::new(Bytes::new()));
                            if !ok {
                                *resp.status_mut() = http::StatusCode::BAD_REQUEST;
                            }
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), got, task)
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a AnyValue> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_attempt_spans_continue_the_clients_trace() {
    let (url, got, rx_task) = receiver().await;
    let a = paced_mock("a", 3, 0).await;
    let b = paced_mock("b", 3, 0).await;
    a.update(|c| c.fault = Fault::Error { status: 503 });
    let otel = format!(
        "telemetry: {{otlp: {{endpoint: \"{url}\", batch_interval: 50ms}}}}\nproxy: {{inject_stream_usage: true}}\n"
    );
    let d = daemon(&config(
        &[
            endpoint("a", &a.url(), "openai", 100, ""),
            endpoint("b", &b.url(), "vllm", 50, ""),
        ],
        &otel,
    ))
    .await;
    wait_routable(&d, &["a", "b"], true).await;
    let c = client();
    let r = c
        .post(format!("http://{}/olla/proxy/v1/chat/completions", d.addr))
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .header("tracestate", "congo=t61rcWkgMzE")
        .body(chat("m", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-olla-endpoint"], "b");
    let body = r.text().await.unwrap();
    assert!(!body.contains("\"usage\""), "usage chunk hidden: {body}");

    // Both backends saw the client's trace with their own attempt span as the parent.
    let parent_of = |m: &MockServer| {
        let req = m.last_work().expect("the backend received the request");
        let tp = req
            .headers
            .iter()
            .find(|(k, _)| k == "traceparent")
            .unwrap()
            .1
            .clone();
        assert!(req
            .headers
            .iter()
            .any(|(k, v)| k == "tracestate" && v == "congo=t61rcWkgMzE"));
        assert_eq!(&tp[3..35], TRACE, "{tp}");
        assert!(tp.ends_with("-01"));
        tp[36..52].to_owned()
    };
    let (pa, pb) = (parent_of(&a), parent_of(&b));
    assert_ne!(pa, pb);

    wait_until(Duration::from_secs(10), "3 spans exported", || {
        let n = got.lock().len();
        async move { n >= 3 }
    })
    .await;
    let spans = got.lock().clone();
    assert_eq!(spans.len(), 3);
    let server = spans.iter().find(|s| s.kind == 2).unwrap();
    assert_eq!(hex(&server.trace_id), TRACE);
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(server.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(server.name, "chat m");
    assert_eq!(
        attr(server, "gen_ai.request.model"),
        Some(&AnyValue::StringValue("m".into()))
    );
    assert_eq!(
        attr(server, "gen_ai.system"),
        Some(&AnyValue::StringValue("vllm".into()))
    );
    assert_eq!(
        attr(server, "gen_ai.operation.name"),
        Some(&AnyValue::StringValue("chat".into()))
    );
    assert_eq!(
        attr(server, "gen_ai.usage.output_tokens"),
        Some(&AnyValue::IntValue(3))
    );
    assert!(
        matches!(attr(server, "gen_ai.usage.input_tokens"), Some(AnyValue::IntValue(n)) if *n > 0)
    );
    assert!(
        matches!(attr(server, "gen_ai.server.time_to_first_token"), Some(AnyValue::DoubleValue(t)) if *t > 0.0)
    );
    assert_eq!(attr(server, "olla.failovers"), Some(&AnyValue::IntValue(1)));
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(&AnyValue::IntValue(200))
    );
    let mut attempts: Vec<&Span> = spans.iter().filter(|s| s.kind == 3).collect();
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(attempts.len(), 2);
    for (s, parent, ep) in [(attempts[0], &pa, "a"), (attempts[1], &pb, "b")] {
        assert_eq!(hex(&s.trace_id), TRACE);
        assert_eq!(s.parent_span_id, server.span_id);
        assert_eq!(
            &hex(&s.span_id),
            parent,
            "the backend's parent is the attempt span"
        );
        assert_eq!(
            attr(s, "olla.endpoint"),
            Some(&AnyValue::StringValue(ep.into()))
        );
    }
    assert_eq!(
        attr(attempts[0], "http.response.status_code"),
        Some(&AnyValue::IntValue(503))
    );
    assert_eq!(attempts[0].status.as_ref().map(|s| s.code), Some(2));
    assert!(attempts[1].status.is_none());
    assert_eq!(
        d.app
            .tracer
            .as_ref()
            .unwrap()
            .stats()
            .dropped
            .load(Ordering::Relaxed),
        0
    );
    d.stop().await;
    a.stop().await;
    b.stop().await;
    rx_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_leaves_requests_unaffected() {
    // A collector that accepts connections and never answers (held, so no other socket of the
    // test can take its port).
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stuck.local_addr().unwrap().port();
    let m = paced_mock("m1", 2, 0).await;
    let otel = format!(
        "telemetry: {{otlp: {{endpoint: \"http://127.0.0.1:{port}\", batch_interval: 20ms, timeout: 500ms, max_queue: 4}}}}\n"
    );
    let d = daemon(&config(
        &[endpoint("m1", &m.url(), "openai", 100, "")],
        &otel,
    ))
    .await;
    wait_routable(&d, &["m1"], true).await;
    let c = client();
    for _ in 0..20 {
        let (status, _, _) = post_chat(&c, &format!("http://{}", d.addr), "m").await;
        assert_eq!(status, 200);
    }
    // Without a client traceparent the backend still gets a fresh one.
    let req = m.last_work().unwrap();
    assert!(req
        .headers
        .iter()
        .any(|(k, v)| k == "traceparent" && v.len() == 55));
    let stats = d.app.tracer.as_ref().unwrap().stats().clone();
    wait_until(Duration::from_secs(10), "40 spans dropped", || {
        let n = stats.dropped.load(Ordering::Relaxed);
        async move { n == 40 }
    })
    .await;
    assert!(stats.export_errors.load(Ordering::Relaxed) >= 1);
    assert_eq!(stats.exported.load(Ordering::Relaxed), 0);
    d.stop().await;
    m.stop().await;
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_still_ends_its_span_once_as_an_error() {
    let (url, got, rx_task) = receiver().await;
    let m = paced_mock("m1", 200, 20).await;
    let otel = format!("telemetry: {{otlp: {{endpoint: \"{url}\", batch_interval: 50ms}}}}\n");
    let d = daemon(&config(
        &[endpoint("m1", &m.url(), "openai", 100, "")],
        &otel,
    ))
    .await;
    wait_routable(&d, &["m1"], true).await;
    let c = client();
    let mut r = c
        .post(format!("http://{}/olla/proxy/v1/chat/completions", d.addr))
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .body(chat("m", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.chunk().await.unwrap().is_some(), "the stream started");
    drop(r);
    wait_until(Duration::from_secs(10), "the request span", || {
        let n = got.lock().iter().filter(|s| s.kind == 2).count();
        async move { n >= 1 }
    })
    .await;
    // Stopping flushes the exporter: a second submission (a bug) would be in by then.
    d.stop().await;
    let spans = got.lock().clone();
    let servers: Vec<&Span> = spans.iter().filter(|s| s.kind == 2).collect();
    assert_eq!(servers.len(), 1, "submitted once");
    let s = servers[0];
    assert_eq!(hex(&s.trace_id), TRACE);
    let status = s.status.as_ref().expect("an error status");
    assert_eq!(status.code, 2);
    assert!(
        status.message.contains("client went away"),
        "{}",
        status.message
    );
    assert!(matches!(
        attr(s, "gen_ai.server.time_to_first_token"),
        Some(AnyValue::DoubleValue(_))
    ));
    m.stop().await;
    rx_task.abort();
}
