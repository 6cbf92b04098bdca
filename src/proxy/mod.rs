//! The per-request proxy pipeline: read the body (bounded), find the model, select and order
//! candidates, then forward with failover. Before the first byte reaches the client, a
//! connection error, a first-byte timeout or a retryable status moves the request to the next
//! candidate (the body is replayed from memory); after it, never. Full backends are skipped,
//! then waited for in their bounded queue, tier by tier (spill-over to lower tiers).

pub mod body;
pub mod headers;
pub mod select;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::HeaderName;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use olla_actors::discovery::error_chain;
use olla_actors::health::parse_retry_after;
use olla_actors::{BackendHandle, InFlightGuard, Outcome, SlotAttempt};
use tokio::time::Instant;

use crate::app::App;
use crate::error::ProxyError;
use crate::http_util::Body;
use body::{GuardedBody, Upstream};
use headers::{names, ClientInfo};
use select::{Candidate, Decision, KindFilter};

/// What a route asks the pipeline to do.
pub struct Forward {
    pub filter: KindFilter,
    /// Path and query sent upstream (the route prefix removed).
    pub upstream_path: String,
}

/// Parsed routing facts of a request body.
#[derive(Debug, Default, PartialEq)]
pub struct BodyFacts {
    pub model: Option<String>,
    pub stream: bool,
}

#[derive(serde::Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
}

/// Reads `model` and `stream` from a JSON body; malformed JSON is a 400.
pub fn inspect_body(content_type: Option<&str>, body: &[u8]) -> Result<BodyFacts, ProxyError> {
    let trimmed = body.trim_ascii_start();
    if trimmed.is_empty() {
        return Ok(BodyFacts::default());
    }
    let declared_json = content_type.is_some_and(|c| c.contains("json"));
    let looks_json = trimmed.starts_with(b"{");
    if !declared_json && !looks_json {
        return Ok(BodyFacts::default());
    }
    match serde_json::from_slice::<Peek>(body) {
        Ok(p) => Ok(BodyFacts {
            model: p.model.map(|m| m.into_owned()).filter(|m| !m.is_empty()),
            stream: p.stream.unwrap_or(false),
        }),
        Err(e) if e.is_data() && !looks_json => Ok(BodyFacts::default()),
        Err(e) => Err(ProxyError::BadRequest(format!(
            "invalid JSON in request body: {e}"
        ))),
    }
}

/// Rewrites the body's `model` for a backend that knows the model by another name.
fn rewrite_model(body: &Bytes, native: &str) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.clone();
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "model".into(),
            serde_json::Value::String(native.to_string()),
        );
    }
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .unwrap_or_else(|_| body.clone())
}

/// Reads the request body up to `limit` bytes (413 beyond it).
pub async fn read_body(parts: &Parts, body: Incoming, limit: u64) -> Result<Bytes, ProxyError> {
    if let Some(len) = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(ProxyError::BodyTooLarge(limit));
        }
    }
    match Limited::new(body, limit as usize).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge(limit))
        }
        Err(e) => Err(ProxyError::BadRequest(format!(
            "could not read request body: {e}"
        ))),
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(name, v);
    }
}

/// Adds the routing decision headers.
pub fn decision_headers(headers: &mut HeaderMap, d: &Decision) {
    set(headers, names::X_OLLA_ROUTING_STRATEGY, d.strategy);
    set(headers, names::X_OLLA_ROUTING_DECISION, d.action);
    set(headers, names::X_OLLA_ROUTING_REASON, d.reason);
}

/// An upstream exchange that produced no response head.
struct SendError {
    /// The backend could not be reached at all.
    connect: bool,
    message: String,
}

enum Attempt {
    Done(Response<Body>),
    /// Try the next candidate; `kept` is a retryable upstream response to return if none is left.
    Next {
        error: ProxyError,
        kept: Option<Response<Body>>,
    },
}

/// A route that adapts its request per backend (a dialect translator): which of the selected
/// candidates to try, and the upstream path and body for each. Failover, breakers, limits and
/// headers stay the pipeline's.
pub trait Adapt: Send + Sync {
    /// Narrows the ordered candidates (called once, after selection).
    fn choose(&self, candidates: Vec<Candidate>) -> Vec<Candidate>;
    /// The upstream path and body for one candidate (the model is then rewritten to the
    /// backend's own name as for any request).
    fn upstream(&self, cand: &Candidate) -> (String, Bytes);
}

/// Runs the pipeline. `ctx` holds headers every response of this request carries (request id,
/// routing headers); they are added by the caller.
pub async fn forward(
    app: &Arc<App>,
    req: Request<Incoming>,
    client: ClientInfo,
    fwd: Forward,
    ctx: &mut HeaderMap,
) -> Result<Response<Body>, ProxyError> {
    let (parts, incoming) = req.into_parts();
    let body = read_body(&parts, incoming, app.settings.max_body_size).await?;
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let facts = inspect_body(content_type, &body)?;
    forward_body(app, &parts, &body, &facts, &client, &fwd, None, ctx).await
}

/// Runs the pipeline for a request whose body is already read and inspected; `adapt` (if any)
/// chooses the candidates and shapes each upstream request.
#[allow(clippy::too_many_arguments)]
pub async fn forward_body(
    app: &Arc<App>,
    parts: &Parts,
    body: &Bytes,
    facts: &BodyFacts,
    client: &ClientInfo,
    fwd: &Forward,
    adapt: Option<&dyn Adapt>,
    ctx: &mut HeaderMap,
) -> Result<Response<Body>, ProxyError> {
    if let Some(m) = &facts.model {
        set(ctx, names::X_OLLA_MODEL, m);
    }
    let selection = match select::select(app, fwd.filter, facts.model.as_deref()).await {
        Ok(s) => s,
        Err((e, decision)) => {
            if let Some(d) = decision {
                decision_headers(ctx, &d);
            }
            return Err(e);
        }
    };
    if let Some(d) = &selection.decision {
        decision_headers(ctx, d);
    }
    let candidates = match adapt {
        Some(a) => a.choose(selection.candidates),
        None => selection.candidates,
    };
    let policy = app.tree.published.policy.load_full();
    let run = Run {
        parts,
        body,
        facts,
        client,
        path: &fwd.upstream_path,
        adapt,
        retry_on: &policy.retry_on_status,
    };
    run.walk(candidates, ctx).await
}

/// What the failed attempts of a request left: the last error, and the last retryable upstream
/// response (returned as it is when no candidate succeeds).
#[derive(Default)]
struct Misses {
    last_error: Option<ProxyError>,
    kept: Option<Response<Body>>,
}

impl Misses {
    /// Returns the response of a finished attempt, or records why it did not finish.
    fn settle(&mut self, attempt: Attempt) -> Option<Response<Body>> {
        match attempt {
            Attempt::Done(r) => Some(r),
            Attempt::Next { error, kept } => {
                self.last_error = Some(error);
                if kept.is_some() {
                    self.kept = kept;
                }
                None
            }
        }
    }
}

struct Run<'a> {
    parts: &'a Parts,
    body: &'a Bytes,
    facts: &'a BodyFacts,
    client: &'a ClientInfo,
    path: &'a str,
    adapt: Option<&'a dyn Adapt>,
    retry_on: &'a [u16],
}

impl Run<'_> {
    /// Walks the candidates tier by tier: free backends first, then the tier's queues, then the
    /// next tier.
    async fn walk(
        &self,
        candidates: Vec<Candidate>,
        ctx: &mut HeaderMap,
    ) -> Result<Response<Body>, ProxyError> {
        let total = candidates.len();
        let mut tried = 0usize;
        let mut misses = Misses::default();
        let mut saw_capacity: Option<Duration> = None;
        let mut start = 0;
        while start < total {
            let prio = candidates[start].handle.spec().priority;
            let end = start
                + candidates[start..]
                    .iter()
                    .take_while(|c| c.handle.spec().priority == prio)
                    .count();
            let tier = &candidates[start..end];
            let mut full: Vec<&Candidate> = Vec::new();
            for cand in tier {
                match cand.handle.try_slot() {
                    SlotAttempt::Admitted(guard) => {
                        tried += 1;
                        if let Some(r) =
                            misses.settle(self.attempt(guard, cand, tried < total, ctx).await)
                        {
                            return Ok(r);
                        }
                    }
                    SlotAttempt::Full => full.push(cand),
                    SlotAttempt::Unavailable => {}
                }
            }
            // Every free backend of the tier failed or none was free: wait in a queue of this
            // tier if one has room, else spill to the next tier.
            full.sort_by_key(|c| c.handle.queued());
            for cand in full {
                let wait = cand.handle.spec().limits.queue_timeout;
                let Some(ticket) = cand.handle.queue_slot() else {
                    saw_capacity = Some(saw_capacity.map_or(wait, |w: Duration| w.min(wait)));
                    continue;
                };
                match ticket.wait(wait).await {
                    Some(guard) => {
                        tried += 1;
                        if let Some(r) =
                            misses.settle(self.attempt(guard, cand, tried < total, ctx).await)
                        {
                            return Ok(r);
                        }
                        break;
                    }
                    None => {
                        saw_capacity = Some(wait);
                        break;
                    }
                }
            }
            start = end;
        }
        if let Some(resp) = misses.kept {
            return Ok(resp);
        }
        if let Some(e) = misses.last_error {
            return Err(e);
        }
        if let Some(wait) = saw_capacity {
            return Err(ProxyError::AtCapacity {
                retry_after: wait.max(Duration::from_secs(1)),
            });
        }
        Err(ProxyError::NoHealthyEndpoints)
    }

    /// The upstream URL, headers and body of this request for one candidate.
    fn upstream_parts(&self, cand: &Candidate) -> Result<(Uri, HeaderMap, Bytes), ProxyError> {
        let spec = cand.handle.spec();
        let adapted = self.adapt.map(|a| a.upstream(cand));
        let (path, body) = match &adapted {
            Some((path, body)) => (path.as_str(), body),
            None => (self.path, self.body),
        };
        let uri = spec
            .join(path)
            .map_err(|e| ProxyError::Internal(format!("cannot build upstream URL: {e}")))?;
        let body = match (&cand.native_model, &self.facts.model) {
            (Some(native), Some(requested)) if native != requested => rewrite_model(body, native),
            _ => body.clone(),
        };
        let model = cand.native_model.as_deref().or(self.facts.model.as_deref());
        let headers = headers::outbound(
            &self.parts.headers,
            self.client,
            model,
            &spec.outbound_headers,
        );
        Ok((uri, headers, body))
    }

    /// Sends the request to one backend and waits for the response head: over the backend's
    /// direct HTTP/1.1 pool when it has one, else over hyper's client (TLS, h2c).
    async fn send(
        &self,
        handle: &BackendHandle,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Upstream>, SendError> {
        let clients = handle.sharded_client();
        if let Some(h1) = clients.h1() {
            return h1
                .send(clients.shard(), &self.parts.method, &uri, &headers, &body)
                .await
                .map(|r| r.map(Upstream::Direct))
                .map_err(|e| SendError {
                    connect: e.is_connect(),
                    message: error_chain(&e),
                });
        }
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        clients
            .get()
            .request(req)
            .await
            .map(|r| r.map(Upstream::Hyper))
            .map_err(|e| SendError {
                connect: e.is_connect(),
                message: error_chain(&e),
            })
    }

    async fn attempt(
        &self,
        mut guard: InFlightGuard,
        cand: &Candidate,
        more: bool,
        ctx: &mut HeaderMap,
    ) -> Attempt {
        let handle = cand.handle.clone();
        let spec = handle.spec().clone();
        let (uri, out_headers, out_body) = match self.upstream_parts(cand) {
            Ok(p) => p,
            Err(e) => {
                guard.report(Outcome::Cancelled, None);
                return Attempt::Next {
                    error: e,
                    kept: None,
                };
            }
        };
        let started = Instant::now();
        let total_deadline = spec.timeouts.total.map(|d| (d, started + d));
        let first_byte_limit = match spec.timeouts.total {
            Some(t) => spec.timeouts.first_byte.min(t),
            None => spec.timeouts.first_byte,
        };
        let sent = self.send(&handle, uri, out_headers, out_body);
        let resp = match tokio::time::timeout(first_byte_limit, sent).await {
            Err(_) => {
                guard.report(Outcome::Fault, None);
                tracing::warn!(
                    backend = handle.name(),
                    timeout_ms = first_byte_limit.as_millis() as u64,
                    "no response headers in time; trying the next backend"
                );
                return Attempt::Next {
                    error: ProxyError::FirstByteTimeout(first_byte_limit),
                    kept: None,
                };
            }
            Ok(Err(e)) => {
                let outcome = if e.connect {
                    Outcome::ConnectFailure
                } else {
                    Outcome::Fault
                };
                guard.report(outcome, None);
                if !e.connect {
                    // Reset or closed mid-request: the backend may have died; check it now.
                    handle.request_probe();
                }
                tracing::warn!(backend = handle.name(), error = %e.message, "upstream request failed; trying the next backend");
                return Attempt::Next {
                    error: ProxyError::Upstream(format!("{}: {}", handle.name(), e.message)),
                    kept: None,
                };
            }
            Ok(Ok(r)) => r,
        };
        let first_byte = started.elapsed();
        let status = resp.status();
        let retryable = self.retry_on.contains(&status.as_u16());
        let (mut parts, incoming) = resp.into_parts();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = parts
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()))
                .unwrap_or(Duration::from_secs(1));
            guard.report(Outcome::RateLimited(wait), Some(first_byte));
        } else if status.is_server_error() {
            guard.report(Outcome::Fault, Some(first_byte));
        } else if status.is_client_error() {
            guard.report(Outcome::ClientError, Some(first_byte));
        }
        let sse = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"));
        let mut headers = headers::inbound_response(&parts.headers, &spec.outbound_headers);
        set(&mut headers, names::X_OLLA_ENDPOINT, handle.name());
        set(
            &mut headers,
            names::X_OLLA_BACKEND_TYPE,
            handle.kind().as_str(),
        );
        set(
            &mut headers,
            names::X_OLLA_RESPONSE_TIME,
            &format!("{}ms", first_byte.as_millis()),
        );
        headers.insert(names::X_SERVED_BY, headers::served_by());
        headers.insert(http::header::VIA, HeaderValue::from_static(headers::via()));
        for (k, v) in ctx.iter() {
            headers.insert(k, v.clone());
        }
        parts.headers = headers;
        let mut body = GuardedBody::new(
            incoming,
            guard,
            first_byte,
            spec.timeouts.idle,
            total_deadline,
            sse,
        );
        body.prefill().await;
        if let Some(err) = body.failed_before_data() {
            // Headers came but the body broke before its first byte: nothing reached the
            // client yet, so another backend may still serve.
            tracing::warn!(backend = handle.name(), error = %err, "upstream body failed before any data; trying the next backend");
            return Attempt::Next {
                error: ProxyError::Upstream(format!("{}: {err}", handle.name())),
                kept: None,
            };
        }
        let response = Response::from_parts(parts, BodyExt::boxed(body));
        if retryable && more {
            tracing::info!(
                backend = handle.name(),
                status = status.as_u16(),
                "retryable status; trying the next backend"
            );
            return Attempt::Next {
                error: ProxyError::Upstream(format!("{} answered {}", handle.name(), status)),
                kept: Some(response),
            };
        }
        Attempt::Done(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspects_model_and_stream() {
        let f = inspect_body(
            Some("application/json"),
            br#"{"model":"m1","stream":true,"messages":[]}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            BodyFacts {
                model: Some("m1".into()),
                stream: true
            }
        );
        assert_eq!(inspect_body(None, b"").unwrap(), BodyFacts::default());
        assert_eq!(
            inspect_body(Some("text/plain"), b"hello").unwrap(),
            BodyFacts::default()
        );
        assert_eq!(
            inspect_body(Some("application/json"), br#"{"model":"a\"b"}"#)
                .unwrap()
                .model
                .as_deref(),
            Some("a\"b")
        );
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        assert!(matches!(
            inspect_body(Some("application/json"), b"{\"model\":"),
            Err(ProxyError::BadRequest(_))
        ));
        assert!(matches!(
            inspect_body(None, b"{oops"),
            Err(ProxyError::BadRequest(_))
        ));
        assert!(matches!(
            inspect_body(Some("application/json"), br#"{"model":5}"#),
            Err(ProxyError::BadRequest(_))
        ));
    }

    #[test]
    fn rewrites_model_only() {
        let b =
            Bytes::from_static(br#"{"model":"alias","messages":[{"role":"user","content":"hi"}]}"#);
        let out = rewrite_model(&b, "real:8b");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "real:8b");
        assert_eq!(v["messages"][0]["content"], "hi");
    }
}
