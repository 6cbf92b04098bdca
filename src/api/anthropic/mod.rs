//! `/olla/anthropic/v1/...`: the Anthropic Messages API in front of any backend.
//!
//! `messages` goes through the ordinary proxy pipeline (selection, failover, breakers, limits,
//! headers) with an [`Adapt`] that decides per request: when passthrough is enabled and some
//! selected backend speaks the Messages API natively (by type, or its endpoint's
//! `anthropic_messages_path`), the body goes unchanged to those backends only (the largest group
//! sharing a path; ties to `/v1/messages`, then the first) and the answer streams back as it is,
//! marked `X-Olla-Mode: passthrough`. Otherwise the request is translated to chat completions
//! ([`crate::dialect::anthropic`]) and the answer translated back: whole, or event by event
//! ([`body::TranslatedStream`]). `count_tokens` asks a llama.cpp backend's tokenizer when one
//! serves the model, else answers the local estimate. `models` lists the catalog in Anthropic's
//! shape. Every error here is Anthropic-shaped and carries a `request-id` header.
//!
//! Counters for `/internal/stats/translators` live in [`TranslatorStats`].

pub mod body;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::http_util::RequestBody;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use olla_actors::kind::BackendKind;
use serde_json::{json, Value};

use crate::api::models;
use crate::app::App;
use crate::config::AnthropicSettings;
use crate::dialect::anthropic::request::{self, ChatRequest, Flavour};
use crate::dialect::anthropic::stream::StreamTranslator;
use crate::dialect::anthropic::{error_body, message_id, response, tokens, upstream_error_message};
use crate::error::ProxyError;
use crate::http_util::{full, json_response, Body};
use crate::proxy::headers::ClientInfo;
use crate::proxy::select::{Candidate, Candidates, KindFilter};
use crate::proxy::{self, read_body, Adapt, Forward};
use crate::telemetry::RequestContext;

/// `X-Olla-Mode`.
pub const X_OLLA_MODE: HeaderName = HeaderName::from_static("x-olla-mode");
/// Anthropic's request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
/// How `count_tokens` counted: `tokenizer` or `estimate`.
pub const X_OLLA_TOKEN_COUNT: HeaderName = HeaderName::from_static("x-olla-token-count");

/// Largest translated (non-streamed) answer or upstream error body read.
const MAX_ANSWER: usize = 32 << 20;
const MAX_ERROR_BODY: usize = 64 << 10;

/// The Messages path a backend serves natively, if any.
pub fn messages_path<'a>(
    settings: &'a AnthropicSettings,
    name: &str,
    kind: BackendKind,
) -> Option<&'a str> {
    if let Some(p) = settings.messages_paths.get(name) {
        return (!p.is_empty()).then_some(p.as_str());
    }
    match kind {
        BackendKind::Ollama
        | BackendKind::LmStudio
        | BackendKind::LlamaCpp
        | BackendKind::Vllm
        | BackendKind::VllmMlx
        | BackendKind::Omlx => Some("/v1/messages"),
        BackendKind::DockerModelRunner => Some("/anthropic/v1/messages"),
        _ => None,
    }
}

/// Where a backend serves chat completions.
fn chat_path(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Lemonade => "/api/v1/chat/completions",
        BackendKind::DockerModelRunner => "/engines/v1/chat/completions",
        _ => "/v1/chat/completions",
    }
}

/// How a backend takes `top_k` and thinking.
fn flavour(kind: BackendKind) -> Flavour {
    match kind {
        BackendKind::OpenAiCompatible
        | BackendKind::LiteLlm
        | BackendKind::Lemonade
        | BackendKind::Auto => Flavour::OpenAi,
        _ => Flavour::Engine,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Passthrough,
    Translate,
}

/// The per-request decision and the translated request.
struct Messages<'a> {
    settings: &'a AnthropicSettings,
    body: &'a Bytes,
    req: &'a Value,
    mode: OnceLock<Mode>,
    chat: OnceLock<ChatRequest>,
}

impl Messages<'_> {
    fn chat(&self) -> Option<&ChatRequest> {
        if let Some(c) = self.chat.get() {
            return Some(c);
        }
        let c = request::translate(self.req).ok()?;
        Some(self.chat.get_or_init(|| c))
    }
}

impl Adapt for Messages<'_> {
    fn choose(&self, candidates: &mut Candidates) {
        if self.settings.passthrough {
            // Group the native backends by path; the largest group wins, ties go to
            // /v1/messages, then to the group met first.
            let mut groups: Vec<(&str, usize)> = Vec::new();
            for c in &*candidates {
                if let Some(p) = messages_path(self.settings, c.handle.name(), c.handle.kind()) {
                    match groups.iter_mut().find(|(g, _)| *g == p) {
                        Some((_, n)) => *n += 1,
                        None => groups.push((p, 1)),
                    }
                }
            }
            let best = groups
                .iter()
                .enumerate()
                .max_by_key(|(i, (p, n))| (*n, *p == "/v1/messages", usize::MAX - i))
                .map(|(_, (p, _))| p.to_string());
            if let Some(path) = best {
                let _ = self.mode.set(Mode::Passthrough);
                candidates.retain(|c| {
                    messages_path(self.settings, c.handle.name(), c.handle.kind())
                        == Some(path.as_str())
                });
                return;
            }
        }
        let _ = self.mode.set(Mode::Translate);
        if self.chat().is_none() {
            candidates.clear();
        }
    }

    fn upstream(&self, cand: &Candidate) -> (String, Bytes) {
        let kind = cand.handle.kind();
        if self.mode.get() == Some(&Mode::Passthrough) {
            if let Some(p) = messages_path(self.settings, cand.handle.name(), kind) {
                return (p.to_string(), self.body.clone());
            }
        }
        let body = self
            .chat()
            .map(|c| Bytes::from(c.render(flavour(kind))))
            .unwrap_or_default();
        (chat_path(kind).to_string(), body)
    }
}

/// `count_tokens` through a llama.cpp backend's `/tokenize`.
struct Tokenize {
    body: Bytes,
}

impl Adapt for Tokenize {
    fn choose(&self, candidates: &mut Candidates) {
        candidates.retain(|c| c.handle.kind() == BackendKind::LlamaCpp);
    }

    fn upstream(&self, _: &Candidate) -> (String, Bytes) {
        ("/tokenize".into(), self.body.clone())
    }
}

/// Counters behind `/internal/stats/translators`.
#[derive(Default, Debug)]
pub struct TranslatorStats {
    requests: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    passthrough: AtomicU64,
    translated: AtomicU64,
    streaming: AtomicU64,
    non_streaming: AtomicU64,
    fallback_no_compatible: AtomicU64,
    fallback_cannot_passthrough: AtomicU64,
    latency_ms_total: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl TranslatorStats {
    /// Olla's `/internal/stats/translators` document.
    pub fn document(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let total = get(&self.requests);
        let ok = get(&self.succeeded);
        let pass = get(&self.passthrough);
        let rate = |n: u64| {
            if total == 0 {
                crate::format::percentage(0.0)
            } else {
                crate::format::percentage(n as f64 * 100.0 / total as f64)
            }
        };
        let avg = get(&self.latency_ms_total).checked_div(total).unwrap_or(0);
        let translators: Vec<Value> = if total == 0 {
            Vec::new()
        } else {
            vec![json!({
                "translator_name": "anthropic",
                "success_rate": rate(ok),
                "passthrough_rate": rate(pass),
                "average_latency": crate::format::latency_ms(avg),
                "total_requests": total,
                "successful_requests": ok,
                "failed_requests": get(&self.failed),
                "passthrough_requests": pass,
                "translation_requests": get(&self.translated),
                "streaming_requests": get(&self.streaming),
                "non_streaming_requests": get(&self.non_streaming),
                "fallback_no_compatible_endpoints": get(&self.fallback_no_compatible),
                "fallback_translator_does_not_support_passthrough": 0,
                "fallback_cannot_passthrough": get(&self.fallback_cannot_passthrough),
            })]
        };
        json!({
            "timestamp": crate::format::rfc3339(SystemTime::now()),
            "translators": translators,
            "summary": {
                "overall_success_rate": rate(ok),
                "overall_passthrough_rate": rate(pass),
                "total_translators": 1,
                "active_translators": usize::from(total > 0),
                "total_requests": total,
                "total_passthrough": pass,
                "total_translations": get(&self.translated),
                "total_streaming": get(&self.streaming),
                "total_non_streaming": get(&self.non_streaming),
            }
        })
    }
}

/// `GET /internal/stats/translators`.
pub fn stats(app: &App) -> Response<Body> {
    json_response(StatusCode::OK, &app.translators.document())
}

/// Serves `/olla/anthropic{tail}`.
pub async fn handle(
    app: &Arc<App>,
    req: Request<RequestBody>,
    client: ClientInfo,
    tail: &str,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, ProxyError> {
    let method = req.method().clone();
    let post = method == Method::POST;
    let get = method == Method::GET || method == Method::HEAD;
    match tail {
        "/v1/messages" if post => messages(app, req, client, ctx).await,
        "/v1/messages/count_tokens" if post => count_tokens(app, req, client, ctx).await,
        "/v1/models" if get => {
            ctx.route = crate::telemetry::Route::Internal;
            Ok(list_models(app))
        }
        "/v1/messages" | "/v1/messages/count_tokens" | "/v1/models" => {
            Err(ProxyError::MethodNotAllowed(method.to_string()))
        }
        _ => Err(ProxyError::RouteNotFound(format!(
            "{method} /olla/anthropic{tail}"
        ))),
    }
}

/// Reads and parses a Messages request body (bounded by `max_message_size`).
async fn read_request(
    app: &App,
    req: Request<RequestBody>,
) -> Result<(http::request::Parts, Bytes, Value), ProxyError> {
    let (parts, incoming) = req.into_parts();
    let body = read_body(
        &parts,
        incoming,
        app.settings.anthropic.max_message_size,
        app.settings.read_timeout,
    )
    .await?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ProxyError::BadRequest(format!("invalid JSON in request body: {e}")))?;
    Ok((parts, body, value))
}

async fn messages(
    app: &Arc<App>,
    req: Request<RequestBody>,
    client: ClientInfo,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, ProxyError> {
    let started = std::time::Instant::now();
    let stats = &app.translators;
    bump(&stats.requests);
    let result = messages_inner(app, req, client, ctx).await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    stats.latency_ms_total.fetch_add(ms, Ordering::Relaxed);
    bump(if result.is_ok() {
        &stats.succeeded
    } else {
        &stats.failed
    });
    result
}

async fn messages_inner(
    app: &Arc<App>,
    req: Request<RequestBody>,
    client: ClientInfo,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, ProxyError> {
    let stats = &app.translators;
    let (parts, body, value) = read_request(app, req).await?;
    let model = request::validate(&value)
        .map_err(ProxyError::BadRequest)?
        .to_string();
    let stream = value
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    bump(if stream {
        &stats.streaming
    } else {
        &stats.non_streaming
    });
    let plan = Messages {
        settings: &app.settings.anthropic,
        body: &body,
        req: &value,
        mode: OnceLock::new(),
        chat: OnceLock::new(),
    };
    // The byte-level inspection refuses an ambiguous `model` key as on every other route.
    let mut facts = proxy::inspect(Some("application/json"), &body).await?;
    facts.model = Some(model.clone());
    facts.stream = stream;
    let fwd = Forward::new(KindFilter::Any, "/v1/messages", None, false)?;
    let result =
        proxy::forward_body(app, &parts, &body, &facts, &client, &fwd, Some(&plan), ctx).await;
    let mode = plan.mode.get().copied();
    match mode {
        None => bump(&stats.fallback_no_compatible),
        Some(Mode::Passthrough) => bump(&stats.passthrough),
        Some(Mode::Translate) => {
            bump(&stats.translated);
            bump(&stats.fallback_cannot_passthrough);
        }
    }
    let mut resp = result?;
    if mode == Some(Mode::Passthrough) {
        resp.headers_mut()
            .insert(X_OLLA_MODE, HeaderValue::from_static("passthrough"));
        return Ok(resp);
    }
    let chat = plan
        .chat()
        .ok_or_else(|| ProxyError::Internal("request could not be translated".into()))?;
    let input_estimate = tokens::estimate(&value);
    Ok(translate_answer(resp, chat, input_estimate, &ctx.request_id).await)
}

/// The upstream chat-completions answer as a Messages answer.
async fn translate_answer(
    resp: Response<Body>,
    chat: &ChatRequest,
    input: u64,
    request_id: &str,
) -> Response<Body> {
    let (mut parts, upstream) = resp.into_parts();
    let request_id = Some(request_id);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.remove(http::header::CONTENT_ENCODING);
    let sse = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if !parts.status.is_success() {
        let bytes = read_limited(upstream, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let msg = upstream_error_message(&bytes);
        let body = error_body(parts.status.as_u16(), &msg, request_id);
        return with_json(parts, body.to_string());
    }
    if sse {
        let translator = StreamTranslator::new(
            &chat.model,
            message_id(),
            input,
            chat.stop_sequences.clone(),
        );
        let body = body::TranslatedStream::new(upstream, translator, body::PING_EVERY);
        parts.headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        return Response::from_parts(parts, BodyExt::boxed(body));
    }
    let answer = match read_limited(upstream, MAX_ANSWER).await {
        Ok(b) => serde_json::from_slice::<Value>(&b).ok(),
        Err(_) => None,
    };
    let Some(answer) = answer else {
        parts.status = StatusCode::BAD_GATEWAY;
        let body = error_body(
            502,
            "the backend's answer is not valid chat-completions JSON",
            request_id,
        );
        return with_json(parts, body.to_string());
    };
    let msg = response::translate(&answer, &chat.model, message_id(), &chat.stop_sequences);
    with_json(parts, msg.to_string())
}

fn with_json(mut parts: http::response::Parts, body: String) -> Response<Body> {
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, full(body))
}

/// Reads a response body whole, up to `limit` bytes (`Err` beyond it or on a broken body).
async fn read_limited(mut body: Body, limit: usize) -> Result<Bytes, ()> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ())?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

async fn count_tokens(
    app: &Arc<App>,
    req: Request<RequestBody>,
    client: ClientInfo,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, ProxyError> {
    let (parts, _, value) = read_request(app, req).await?;
    let model = request::validate(&value)
        .map_err(ProxyError::BadRequest)?
        .to_string();
    ctx.model = Some(model.clone());
    let has_llamacpp = app
        .tree
        .published
        .table()
        .backends
        .iter()
        .any(|b| b.kind() == BackendKind::LlamaCpp);
    let counted = if has_llamacpp {
        tokenizer_count(app, &parts, &value, model, &client).await
    } else {
        None
    };
    let (n, how) = match counted {
        Some(n) => (n, "tokenizer"),
        None => (tokens::estimate(&value), "estimate"),
    };
    let mut r = json_response(StatusCode::OK, &json!({"input_tokens": n}));
    r.headers_mut()
        .insert(X_OLLA_TOKEN_COUNT, HeaderValue::from_static(how));
    Ok(r)
}

/// Asks a llama.cpp backend serving the model to tokenize the request's text.
async fn tokenizer_count(
    app: &Arc<App>,
    parts: &http::request::Parts,
    value: &Value,
    model: String,
    client: &ClientInfo,
) -> Option<u64> {
    let (text, images) = tokens::request_text(value);
    let plan = Tokenize {
        body: Bytes::from(json!({"content": text}).to_string()),
    };
    let facts = proxy::BodyFacts {
        model: Some(model),
        ..Default::default()
    };
    let fwd = Forward::new(
        KindFilter::Only(BackendKind::LlamaCpp),
        "/tokenize",
        None,
        false,
    )
    .ok()?;
    // This side trip's routing and attempts are not the request's (a scratch context, never
    // finished or recorded).
    let mut scratch =
        RequestContext::new(String::new(), Method::POST, "/tokenize".into(), client.peer);
    let resp = proxy::forward_body(
        app,
        parts,
        &plan.body,
        &facts,
        client,
        &fwd,
        Some(&plan),
        &mut scratch,
    )
    .await
    .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let bytes = read_limited(resp.into_body(), MAX_ANSWER).await.ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let n = v.get("tokens")?.as_array()?.len() as u64;
    Some(n + images * tokens::IMAGE_TOKENS)
}

/// `GET /olla/anthropic/v1/models`: the catalog in Anthropic's list shape.
fn list_models(app: &App) -> Response<Body> {
    let created = crate::format::rfc3339(SystemTime::UNIX_EPOCH);
    let data: Vec<Value> = models::list_ids(app, KindFilter::Any)
        .into_iter()
        .map(|id| json!({"type": "model", "id": id, "display_name": id, "created_at": created}))
        .collect();
    let first = data.first().map(|m| m["id"].clone()).unwrap_or(Value::Null);
    let last = data.last().map(|m| m["id"].clone()).unwrap_or(Value::Null);
    json_response(
        StatusCode::OK,
        &json!({"data": data, "has_more": false, "first_id": first, "last_id": last}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_paths_by_type_and_endpoint() {
        let mut s = AnthropicSettings::default();
        assert_eq!(
            messages_path(&s, "a", BackendKind::LlamaCpp),
            Some("/v1/messages")
        );
        assert_eq!(
            messages_path(&s, "a", BackendKind::DockerModelRunner),
            Some("/anthropic/v1/messages")
        );
        assert_eq!(messages_path(&s, "a", BackendKind::OpenAiCompatible), None);
        assert_eq!(messages_path(&s, "a", BackendKind::Sglang), None);
        s.messages_paths.insert("a".into(), String::new());
        s.messages_paths.insert("b".into(), "/x/v1/messages".into());
        assert_eq!(messages_path(&s, "a", BackendKind::LlamaCpp), None);
        assert_eq!(
            messages_path(&s, "b", BackendKind::OpenAiCompatible),
            Some("/x/v1/messages")
        );
        assert_eq!(chat_path(BackendKind::Lemonade), "/api/v1/chat/completions");
        assert_eq!(flavour(BackendKind::Vllm), Flavour::Engine);
        assert_eq!(flavour(BackendKind::LiteLlm), Flavour::OpenAi);
    }

    #[test]
    fn stats_document_shape() {
        let s = TranslatorStats::default();
        let v = s.document();
        assert_eq!(v["translators"], json!([]));
        assert_eq!(v["summary"]["total_translators"], 1);
        bump(&s.requests);
        bump(&s.succeeded);
        bump(&s.passthrough);
        let v = s.document();
        assert_eq!(v["translators"][0]["translator_name"], "anthropic");
        assert_eq!(v["translators"][0]["passthrough_rate"], "100%");
        assert_eq!(v["summary"]["total_passthrough"], 1);
    }
}
