//! The per-request proxy pipeline: read the body (bounded), find the model, select and order
//! candidates, then forward with failover. Before the first byte reaches the client, a
//! connection error, a first-byte timeout or a retryable status moves the request to the next
//! candidate (the body is replayed from memory); after it, never. Full backends are skipped,
//! then waited for in their bounded queue, tier by tier (spill-over to lower tiers).
//!
//! Rules kept here for every later feature: the upstream path is built only by [`Forward::new`]
//! (normalised, never leaving the base path, model management refused); an endpoint with
//! `auth` receives only its API surface and `allowed_paths`; the body is inspected, never parsed
//! into a tree, and a rewritten model is spliced into the original bytes; a request-derived
//! value reaches a header only through [`headers::echo_value`].

pub mod body;
pub mod headers;
pub mod inspect;
pub mod json_scan;
pub mod path;
pub mod select;
pub mod surface;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use olla_actors::backend::h1::{H1Pool, RequestHead};
use olla_actors::backend::UpstreamClient;
use olla_actors::discovery::error_chain;
use olla_actors::wait::parse_retry_after;
use olla_actors::{BackendHandle, InFlightGuard, Outcome, SlotAttempt};
use tokio::time::Instant;

use crate::app::App;
use crate::error::ProxyError;
use crate::http_util::{Body, RequestBody};
use crate::own_headers::UpstreamFields;
use crate::telemetry::trace::wire;
use crate::telemetry::{
    AttemptError, AttemptOutcome, EndpointName, RequestContext, UpstreamAttempt,
};
use body::{GuardedBody, Upstream};
use headers::ClientInfo;
use inspect::inspect_body;
pub use inspect::BodyFacts;
use select::{Candidate, Candidates, KindFilter};

/// What a route asks the pipeline to do.
pub struct Forward {
    pub filter: KindFilter,
    /// Path and query sent upstream (the route prefix removed, the path normalised).
    pub upstream_path: String,
    /// The path's rule key ([`path::rule_key`]), matched against endpoints' allowed paths.
    pub path_key: String,
}

impl Forward {
    /// Normalises the path after a route prefix and refuses model management: the path that
    /// would leave the endpoint's base path is a 400, Ollama's model-management API a 501
    /// (`api/show` and `api/list` too when `ollama_prefix`).
    pub fn new(
        filter: KindFilter,
        raw_path: &str,
        query: Option<&str>,
        ollama_prefix: bool,
    ) -> Result<Self, ProxyError> {
        let normalised = path::normalise(raw_path)
            .map_err(|e| ProxyError::BadRequest(format!("invalid request path: {e}")))?;
        let path_key = path::rule_key(&normalised);
        if let Some(message) = surface::ollama_refusal(&path_key, ollama_prefix) {
            return Err(ProxyError::NotImplemented(message.into()));
        }
        let upstream_path = match query {
            Some(q) => format!("{normalised}?{q}"),
            None => normalised,
        };
        Ok(Self {
            filter,
            upstream_path,
            path_key,
        })
    }
}

/// Bodies larger than this are inspected on a blocking thread, not on the serving thread.
const INSPECT_INLINE_MAX: usize = 1 << 20;

/// Inspects the body; a large one off the serving thread.
pub async fn inspect(content_type: Option<&str>, body: &Bytes) -> Result<BodyFacts, ProxyError> {
    if body.len() <= INSPECT_INLINE_MAX {
        return inspect_body(content_type, body);
    }
    let ct = content_type.map(str::to_owned);
    let b = body.clone();
    tokio::task::spawn_blocking(move || inspect_body(ct.as_deref(), &b))
        .await
        .map_err(|e| ProxyError::Internal(format!("body inspection failed: {e}")))?
}

/// Whether an endpoint may receive the path: any path without `auth`; with `auth`, its type's
/// API and its `allowed_paths` only.
fn path_allowed(cand: &Candidate, key: &str) -> bool {
    match &cand.handle.spec().path_allowlist {
        None => true,
        Some(extra) => surface::auth_allows(cand.handle.kind(), extra, key),
    }
}

/// Reads the request body up to `limit` bytes (413 beyond it) within `deadline` (408 beyond
/// it; zero = none). A body already complete arms no timer.
pub async fn read_body(
    parts: &Parts,
    body: RequestBody,
    limit: u64,
    deadline: Duration,
) -> Result<Bytes, ProxyError> {
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
    let collect = Limited::new(body, limit as usize).collect();
    let collected = if deadline.is_zero() {
        collect.await
    } else {
        // `timeout` polls the body first and registers its timer only if that is pending.
        tokio::time::timeout(deadline, collect)
            .await
            .map_err(|_| ProxyError::RequestTimeout(deadline))?
    };
    match collected {
        Ok(c) => Ok(own_small_body(c.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge(limit))
        }
        Err(e) => Err(ProxyError::BadRequest(format!(
            "could not read request body: {e}"
        ))),
    }
}

/// Bodies up to this size are copied out of the connection's read buffer.
const OWN_BODY_MAX: usize = 16 * 1024;

/// A small body arrives as a slice of hyper's per-connection read buffer (8 KiB or more); kept
/// for the whole exchange (failover may resend it), that slice pins the block and makes hyper
/// allocate a second one for its next read, about 24 KiB per open stream. Copying the few
/// bytes into their own allocation releases the block to hyper for reuse.
fn own_small_body(body: Bytes) -> Bytes {
    if body.len() <= OWN_BODY_MAX {
        Bytes::copy_from_slice(&body)
    } else {
        body
    }
}

/// One attempt's request, ready to send.
enum Prepared<'h> {
    /// Over the backend's direct HTTP/1.1 pool: the head already in its wire form.
    Direct {
        pool: &'h H1Pool,
        shard: usize,
        head: RequestHead,
        body: Bytes,
    },
    /// Over hyper's client (TLS, h2c).
    Hyper {
        client: &'h UpstreamClient,
        req: Request<Full<Bytes>>,
    },
}

/// An upstream exchange that produced no response head.
struct SendError {
    /// The backend could not be reached at all.
    connect: bool,
    /// The connection was refused (the port is closed): definitive, see
    /// [`BackendHandle::connection_refused`].
    refused: bool,
    message: String,
}

/// Whether an error (or one of its causes) is a refused TCP connection.
fn is_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

enum Attempt {
    Done(Served),
    /// Try the next candidate; `kept` is a retryable upstream response to return if none is left.
    Next {
        error: ProxyError,
        kept: Option<Served>,
    },
}

/// An upstream response and the fields naming the backend that sent it (rendered with the
/// rest of olla's own headers, [`crate::own_headers`]).
struct Served {
    response: Response<Body>,
    upstream: UpstreamFields,
}

/// A route that adapts its request per backend (a dialect translator): which of the selected
/// candidates to try, and the upstream path and body for each. Failover, breakers, limits and
/// headers stay the pipeline's.
pub trait Adapt: Send + Sync {
    /// Narrows the ordered candidates (called once, after selection).
    fn choose(&self, candidates: &mut Candidates);
    /// The upstream path and body for one candidate (the model is then rewritten to the
    /// backend's own name as for any request).
    fn upstream(&self, cand: &Candidate) -> (String, Bytes);
}

/// Runs the pipeline. `ctx` is the request's context: the pipeline records the model, the
/// routing decision, each upstream attempt and the serving endpoint there; the response headers
/// are rendered from it by the finisher.
pub async fn forward(
    app: &Arc<App>,
    req: Request<RequestBody>,
    client: ClientInfo,
    fwd: Forward,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, ProxyError> {
    let (parts, incoming) = req.into_parts();
    let body = read_body(
        &parts,
        incoming,
        app.settings.max_body_size,
        app.settings.read_timeout,
    )
    .await?;
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let facts = inspect(content_type, &body).await?;
    if app.settings.inject_stream_usage && facts.stream {
        // Boxed: opt-in, and its state (three forward_body awaits) would size every request's
        // future.
        return Box::pin(forward_with_stream_usage(
            app, &parts, body, facts, &client, &fwd, ctx,
        ))
        .await;
    }
    forward_body(app, &parts, &body, &facts, &client, &fwd, None, ctx).await
}

/// `proxy.inject_stream_usage`: a streaming OpenAI request that did not ask for usage is sent
/// asking for it, and the usage chunk is removed from its stream; the usage seen goes to the
/// request's usage tap either way.
async fn forward_with_stream_usage(
    app: &Arc<App>,
    parts: &Parts,
    body: Bytes,
    facts: BodyFacts,
    client: &ClientInfo,
    fwd: &Forward,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, ProxyError> {
    use crate::telemetry::stream_usage::{self, Injection};
    if !stream_usage::applies_to_path(&fwd.path_key) {
        return forward_body(app, parts, &body, &facts, client, fwd, None, ctx).await;
    }
    let tap = ctx.usage_tap();
    let injection = if body.len() <= INSPECT_INLINE_MAX {
        stream_usage::inject_include_usage(&body)
    } else {
        let b = body.clone();
        tokio::task::spawn_blocking(move || stream_usage::inject_include_usage(&b))
            .await
            .unwrap_or(Injection::NotApplicable)
    };
    match injection {
        Injection::Injected(new_body) => {
            // The splice moved the model's bytes: find them again.
            let facts = inspect(Some("application/json"), &new_body).await?;
            let resp = forward_body(app, parts, &new_body, &facts, client, fwd, None, ctx).await?;
            Ok(stream_usage::filter_response(resp, true, tap))
        }
        Injection::ClientAsked => {
            let resp = forward_body(app, parts, &body, &facts, client, fwd, None, ctx).await?;
            Ok(stream_usage::filter_response(resp, false, tap))
        }
        Injection::NotApplicable => {
            forward_body(app, parts, &body, &facts, client, fwd, None, ctx).await
        }
    }
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
    ctx: &mut RequestContext,
) -> Result<Response<Body>, ProxyError> {
    ctx.model.clone_from(&facts.model);
    ctx.stream = facts.stream;
    app.gate
        .check_model(ctx.caller.as_deref(), facts.model.as_deref())?;
    let route_facts = select::RouteFacts {
        headers: Some(&parts.headers),
        peer: Some(client.peer),
        body,
        body_facts: Some(facts),
    };
    let selection =
        match select::select(app, fwd.filter, facts.model.as_deref(), &route_facts).await {
            Ok(s) => s,
            Err((e, decision)) => {
                ctx.decision = decision;
                return Err(e);
            }
        };
    ctx.decision.clone_from(&selection.decision);
    let mut candidates = selection.candidates;
    if let Some(a) = adapt {
        a.choose(&mut candidates);
    }
    let offered = candidates.len();
    candidates.retain(|c| path_allowed(c, &fwd.path_key));
    if offered > 0 && candidates.is_empty() {
        return Err(ProxyError::PathNotAllowed(fwd.path_key.clone()));
    }
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
    run.walk(candidates.iter().collect(), ctx).await
}

/// What the failed attempts of a request left: the last error, and the last retryable upstream
/// response (returned as it is when no candidate succeeds).
#[derive(Default)]
struct Misses {
    last_error: Option<ProxyError>,
    kept: Option<Served>,
}

impl Served {
    /// The response, its backend's fields left in the request's context.
    fn into_response(self, ctx: &mut RequestContext) -> Response<Body> {
        ctx.upstream = Some(self.upstream);
        self.response
    }
}

impl Misses {
    /// Returns the response of a finished attempt, or records why it did not finish.
    fn settle(&mut self, attempt: Attempt) -> Option<Served> {
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
        candidates: Vec<&Candidate>,
        ctx: &mut RequestContext,
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
            for &cand in tier {
                match cand.handle.try_slot() {
                    SlotAttempt::Admitted(guard) => {
                        tried += 1;
                        if let Some(served) =
                            misses.settle(self.attempt(guard, cand, tried < total, ctx).await)
                        {
                            return Ok(served.into_response(ctx));
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
                let queued_at = Instant::now();
                let waited = ticket.wait(wait).await;
                ctx.queue_wait = Some(ctx.queue_wait.unwrap_or_default() + queued_at.elapsed());
                match waited {
                    Some(guard) => {
                        tried += 1;
                        if let Some(served) =
                            misses.settle(self.attempt(guard, cand, tried < total, ctx).await)
                        {
                            return Ok(served.into_response(ctx));
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
        if let Some(served) = misses.kept {
            return Ok(served.into_response(ctx));
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

    /// The upstream path (with query) and body of this request for one candidate, before the
    /// endpoint's base path.
    fn upstream_parts(&self, cand: &Candidate) -> Result<(Cow<'_, str>, Bytes), ProxyError> {
        let (path, body, adapted) = match self.adapt.map(|a| a.upstream(cand)) {
            Some((path, body)) => (Cow::Owned(path), body, true),
            None => (Cow::Borrowed(self.path), self.body.clone(), false),
        };
        let body = match (&cand.native_model, &self.facts.model) {
            (Some(native), Some(requested)) if **native != **requested => {
                // The span was found in the client's body; an adapted body is inspected anew.
                let span = if adapted {
                    inspect::inspect_body(Some("application/json"), &body)
                        .ok()
                        .and_then(|f| f.model_span)
                } else {
                    self.facts.model_span.clone()
                };
                match span {
                    Some(span) => inspect::splice_model(&body, &span, native)
                        .ok_or_else(|| ProxyError::Internal("cannot rewrite the model".into()))?,
                    None => body,
                }
            }
            _ => body,
        };
        Ok((path, body))
    }

    /// The request for one backend, ready to send: its head written straight to bytes for the
    /// backend's direct HTTP/1.1 pool when it has one, else a request for hyper's client (TLS,
    /// h2c).
    fn prepare<'h>(
        &self,
        handle: &'h BackendHandle,
        path: &str,
        body: Bytes,
        outbound: &headers::Outbound<'_>,
    ) -> Result<Prepared<'h>, ProxyError> {
        let cannot = |e: &dyn std::fmt::Display| {
            ProxyError::Internal(format!("cannot build upstream URL: {e}"))
        };
        let clients = handle.sharded_client();
        let inbound = &self.parts.headers;
        if let Some(h1) = clients.h1() {
            let target = handle.spec().join_path(path);
            let host_given = outbound
                .backend_headers
                .iter()
                .any(|(k, _)| k == http::header::HOST);
            let mut head = h1
                .request_head(
                    &self.parts.method,
                    &target,
                    host_given,
                    inbound.len() + 8,
                    body.len(),
                )
                .map_err(|e| cannot(&e))?;
            headers::outbound_into(inbound, outbound, &mut head);
            return Ok(Prepared::Direct {
                pool: h1,
                shard: clients.shard(),
                head,
                body,
            });
        }
        let uri = handle.spec().join(path).map_err(|e| cannot(&e))?;
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers::outbound(inbound, outbound);
        Ok(Prepared::Hyper {
            client: clients.get(),
            req,
        })
    }

    /// Sends a prepared request and waits for the response head.
    async fn send(prepared: Prepared<'_>) -> Result<Response<Upstream>, SendError> {
        match prepared {
            Prepared::Direct {
                pool,
                shard,
                head,
                body,
            } => pool
                .send_head(shard, head, &body)
                .await
                .map(|r| r.map(Upstream::Direct))
                .map_err(|e| SendError {
                    connect: e.is_connect(),
                    refused: e.is_connect() && is_refused(&e),
                    message: error_chain(&e),
                }),
            Prepared::Hyper { client, req } => client
                .request(req)
                .await
                .map(|mut r| {
                    olla_actors::backend::h1::decode::drop_length_beside_coding(r.headers_mut());
                    r.map(Upstream::Hyper)
                })
                .map_err(|e| SendError {
                    connect: e.is_connect(),
                    refused: e.is_connect() && is_refused(&e),
                    message: error_chain(&e),
                }),
        }
    }

    /// One upstream attempt; a client span of the request's trace when it is traced.
    async fn attempt(
        &self,
        mut guard: InFlightGuard,
        cand: &Candidate,
        more: bool,
        ctx: &mut RequestContext,
    ) -> Attempt {
        let handle = cand.handle.clone();
        let spec = handle.spec().clone();
        let started = Instant::now();
        let mut span_id = None;
        let record = |ctx: &mut RequestContext, span_id, outcome: AttemptOutcome| {
            if matches!(outcome, AttemptOutcome::Status(_)) {
                ctx.endpoint = Some(EndpointName(spec.clone()));
            }
            ctx.push_attempt(UpstreamAttempt {
                endpoint: EndpointName(spec.clone()),
                span_id,
                started,
                ended: Instant::now(),
                outcome,
            });
        };
        let client_span = ctx.trace.as_ref().map(wire::client_span);
        let outbound = headers::Outbound {
            client: self.client,
            model: cand.native_model.as_deref().or(self.facts.model.as_deref()),
            backend_headers: &spec.outbound_headers,
            trace: client_span.as_ref().map(wire::ClientSpan::headers),
        };
        let prepared = self
            .upstream_parts(cand)
            .and_then(|(path, body)| self.prepare(&handle, &path, body, &outbound));
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                record(ctx, span_id, AttemptOutcome::Error(AttemptError::Build));
                guard.report(Outcome::Cancelled, None);
                return Attempt::Next {
                    error: e,
                    kept: None,
                };
            }
        };
        span_id = client_span.map(|c| c.span);
        let total_deadline = spec.timeouts.total.map(|d| (d, started + d));
        let first_byte_limit = match spec.timeouts.total {
            Some(t) => spec.timeouts.first_byte.min(t),
            None => spec.timeouts.first_byte,
        };
        let sent = Self::send(prepared);
        let resp = match tokio::time::timeout(first_byte_limit, sent).await {
            Err(_) => {
                record(ctx, span_id, AttemptOutcome::Error(AttemptError::Timeout));
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
                let kind = if e.connect {
                    AttemptError::Connect
                } else {
                    AttemptError::Protocol
                };
                record(ctx, span_id, AttemptOutcome::Error(kind));
                let outcome = if e.connect {
                    Outcome::ConnectFailure
                } else {
                    Outcome::Fault
                };
                if e.refused {
                    // Definitive: out of routing before the outcome asks for a probe.
                    handle.connection_refused(&e.message);
                }
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
        parts.headers =
            headers::inbound_response(std::mem::take(&mut parts.headers), &spec.outbound_headers);
        let upstream = UpstreamFields {
            endpoint: handle.name_value().cloned(),
            kind: handle.kind().as_str(),
            first_byte,
        };
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
            record(
                ctx,
                span_id,
                AttemptOutcome::Error(AttemptError::BodyBeforeData),
            );
            // Headers came but the body broke before its first byte: nothing reached the
            // client yet, so another backend may still serve.
            tracing::warn!(backend = handle.name(), error = %err, "upstream body failed before any data; trying the next backend");
            return Attempt::Next {
                error: ProxyError::Upstream(format!("{}: {err}", handle.name())),
                kept: None,
            };
        }
        let served = Served {
            response: Response::from_parts(parts, BodyExt::boxed(body)),
            upstream,
        };
        record(ctx, span_id, AttemptOutcome::Status(status.as_u16()));
        if retryable && more {
            tracing::info!(
                backend = handle.name(),
                status = status.as_u16(),
                "retryable status; trying the next backend"
            );
            return Attempt::Next {
                error: ProxyError::Upstream(format!("{} answered {}", handle.name(), status)),
                kept: Some(served),
            };
        }
        Attempt::Done(served)
    }
}
