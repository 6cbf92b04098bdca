//! Routing and behaviour of the backend routes (everything except `/_mock/*`).
//!
//! Owns the route table ([`classify`]), the per-config cache of static bodies ([`Live`]),
//! and how the config shapes a response: health status and delay, time to first token,
//! token count, and the fault modes (`fault` on generation routes, `models_fault` on
//! model-list routes). Dialect modules only format bytes; this module decides which bytes,
//! when, and with which status. Request accounting and the listener live in `lib.rs`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Response, StatusCode};

use crate::body::{Encoder, MockBody};
use crate::config::{Fault, MockConfig};
use crate::stats::Counters;
use crate::util::{fnv64, json_str, next_id, prompt_tokens, unix_now, GenRequest};
use crate::{anthropic, ollama, openai};

pub(crate) const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// The config plus everything derived from it, rebuilt on every config change so the hot
/// path only clones an `Arc` and a few `Bytes`.
pub(crate) struct Live {
    pub cfg: MockConfig,
    pub name_header: Option<HeaderValue>,
    name_json: Arc<str>,
    retry_after: Option<HeaderValue>,
    openai_models: Bytes,
    lmstudio_models: Bytes,
    tags: Bytes,
    ps: Bytes,
}

impl Live {
    pub fn new(cfg: MockConfig) -> Live {
        Live {
            name_header: HeaderValue::from_str(&cfg.name).ok(),
            name_json: json_str(&cfg.name).into(),
            retry_after: cfg
                .retry_after
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok()),
            openai_models: openai::models_body(&cfg.name, &cfg.models).into(),
            lmstudio_models: openai::lmstudio_models_body(&cfg.models, cfg.loaded_models()).into(),
            tags: ollama::tags_body(&cfg.models).into(),
            ps: ollama::ps_body(cfg.loaded_models()).into(),
            cfg,
        }
    }

    fn first_model(&self) -> &str {
        self.cfg.models.first().map_or("mock-model", String::as_str)
    }

    fn serves(&self, model: &str) -> bool {
        self.cfg.models.iter().any(|m| m == model)
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Health(Health),
    Models(List),
    /// `GET /v1/models/{id}`: one OpenAI model object.
    Model,
    Gen(Gen),
    CountTokens,
    /// `POST /tokenize` (llama.cpp): one token per whitespace-separated word of `content`.
    Tokenize,
    OllamaShow,
    OllamaPs,
    Props,
    Slots,
    VllmVersion,
    MethodNotAllowed,
    NotFound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    /// `/health`: `{"status":"ok"}`.
    Status,
    /// `/`: `Ollama is running`.
    OllamaRoot,
    /// `/api/version`.
    OllamaVersion,
    /// `/ping`.
    Ping,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum List {
    OpenAi,
    LmStudio,
    OllamaTags,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gen {
    Chat,
    Completion,
    Embeddings,
    OllamaChat,
    OllamaGenerate,
    OllamaEmbed,
    OllamaEmbeddings,
    Messages,
}

impl Route {
    pub fn is_generation(self) -> bool {
        matches!(self, Route::Gen(_))
    }

    /// Not a health check or model list (a request a client sent, not a proxy probe).
    pub fn is_work(self) -> bool {
        !matches!(
            self,
            Route::Health(_)
                | Route::Models(_)
                | Route::Model
                | Route::Props
                | Route::Slots
                | Route::VllmVersion
                | Route::OllamaPs
        )
    }
}

/// Error body shape of a route family.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    OpenAi,
    Ollama,
    Anthropic,
}

impl Gen {
    fn style(self) -> Style {
        match self {
            Gen::Chat | Gen::Completion | Gen::Embeddings => Style::OpenAi,
            Gen::OllamaChat | Gen::OllamaGenerate | Gen::OllamaEmbed | Gen::OllamaEmbeddings => {
                Style::Ollama
            }
            Gen::Messages => Style::Anthropic,
        }
    }
}

/// Path prefixes under which the OpenAI routes are served: OpenAI/vLLM/llama.cpp/SGLang
/// (`/v1`), LM Studio (`/api/v0`), Lemonade (`/api/v1`), Docker Model Runner (`/engines/v1`).
const OPENAI_PREFIXES: [&str; 4] = ["/v1", "/api/v0", "/api/v1", "/engines/v1"];

/// Maps a method and path to a route.
pub(crate) fn classify(method: &Method, path: &str) -> Route {
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let only = |ok: bool, route: Route| if ok { route } else { Route::MethodNotAllowed };
    match path {
        "/health" => return only(get, Route::Health(Health::Status)),
        "/" => return only(get, Route::Health(Health::OllamaRoot)),
        "/api/version" => return only(get, Route::Health(Health::OllamaVersion)),
        "/ping" => return only(get, Route::Health(Health::Ping)),
        "/api/tags" => return only(get, Route::Models(List::OllamaTags)),
        "/api/ps" => return only(get, Route::OllamaPs),
        "/api/show" => return only(post, Route::OllamaShow),
        "/api/chat" => return only(post, Route::Gen(Gen::OllamaChat)),
        "/api/generate" => return only(post, Route::Gen(Gen::OllamaGenerate)),
        "/api/embed" => return only(post, Route::Gen(Gen::OllamaEmbed)),
        "/api/embeddings" => return only(post, Route::Gen(Gen::OllamaEmbeddings)),
        "/props" => return only(get, Route::Props),
        "/slots" => return only(get, Route::Slots),
        "/version" => return only(get, Route::VllmVersion),
        "/v1/messages" => return only(post, Route::Gen(Gen::Messages)),
        "/v1/messages/count_tokens" => return only(post, Route::CountTokens),
        "/tokenize" => return only(post, Route::Tokenize),
        _ => {}
    }
    for prefix in OPENAI_PREFIXES {
        let Some(rest) = path.strip_prefix(prefix) else {
            continue;
        };
        return match rest {
            "/chat/completions" => only(post, Route::Gen(Gen::Chat)),
            "/completions" => only(post, Route::Gen(Gen::Completion)),
            "/embeddings" => only(post, Route::Gen(Gen::Embeddings)),
            "/models" if prefix == "/api/v0" => only(get, Route::Models(List::LmStudio)),
            "/models" => only(get, Route::Models(List::OpenAi)),
            r if r.len() > "/models/".len() && r.starts_with("/models/") => only(get, Route::Model),
            _ => continue,
        };
    }
    Route::NotFound
}

/// A response with a status, content type and body.
pub(crate) fn respond(
    status: StatusCode,
    ctype: &'static str,
    body: MockBody,
) -> Response<MockBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<MockBody> {
    respond(status, JSON, MockBody::full(body))
}

/// An error in the route family's shape.
fn error(
    style: Style,
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
) -> Response<MockBody> {
    let body = match style {
        Style::OpenAi => openai::error_body(message, kind, code),
        Style::Ollama => ollama::error_body(message),
        Style::Anthropic => anthropic::error_body(status.as_u16(), message),
    };
    json(status, body)
}

fn bad_request(style: Style, message: &str) -> Response<MockBody> {
    error(
        style,
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        None,
    )
}

fn model_not_found(style: Style, model: &str) -> Response<MockBody> {
    error(
        style,
        StatusCode::NOT_FOUND,
        &format!("model '{model}' not found"),
        "invalid_request_error",
        Some("model_not_found"),
    )
}

/// The response of `Fault::Error { status }`.
fn fault_error(live: &Live, style: Style, status: u16) -> Response<MockBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = if status.is_server_error() {
        "server_error"
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        "rate_limit_error"
    } else {
        "invalid_request_error"
    };
    let message = format!("olla-mock fault: status {}", status.as_u16());
    let mut r = error(style, status, &message, kind, Some("mock_fault"));
    if let Some(v) = &live.retry_after {
        r.headers_mut().insert(RETRY_AFTER, v.clone());
    }
    r
}

/// Never resolves: the handler waits here until hyper drops it (client gone, server stopped).
async fn hang() -> Response<MockBody> {
    std::future::pending().await
}

async fn sleep_ms(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// The first half of a body: never valid JSON for an object or array.
fn half(body: Bytes) -> Bytes {
    body.slice(..body.len() / 2)
}

/// A whole (non-stream) JSON body, shaped by the fault: cut in half (malformed), or
/// announced in full but aborted halfway (drop).
fn whole_with_fault(fault: &Fault, body: Bytes) -> Response<MockBody> {
    match fault {
        Fault::MalformedJson => json(StatusCode::OK, half(body)),
        Fault::DropMidStream { .. } => respond(StatusCode::OK, JSON, MockBody::truncated(body)),
        _ => json(StatusCode::OK, body),
    }
}

/// Per-request facts every dialect formats.
pub(crate) struct GenInfo {
    pub id: u64,
    pub created: u64,
    /// The model as received, quoted and escaped.
    pub model_json: String,
    /// The backend name, quoted and escaped.
    pub name_json: Arc<str>,
    pub prompt_tokens: usize,
    /// Tokens to generate (config `tokens` capped by the request).
    pub tokens: usize,
    pub include_usage: bool,
    pub ttft_ms: u64,
    pub token_delay_ms: u64,
}

/// A generation dialect: streams through [`Encoder`], or answers whole.
pub(crate) trait Generation: Encoder + Sized {
    const STREAM_CONTENT_TYPE: &'static str;
    /// A stream whose JSON is invalid, properly terminated for the framing.
    const MALFORMED_STREAM: &'static str;
    fn whole(&self) -> String;
}

fn generated<G: Generation>(
    g: G,
    tokens: usize,
    stream: bool,
    cfg: &MockConfig,
) -> Response<MockBody> {
    if !stream {
        return whole_with_fault(&cfg.fault, Bytes::from(g.whole()));
    }
    let drop_after = match cfg.fault {
        Fault::MalformedJson => {
            let body = MockBody::full(G::MALFORMED_STREAM);
            return sse(respond(StatusCode::OK, G::STREAM_CONTENT_TYPE, body));
        }
        Fault::DropMidStream { after_tokens } => Some(after_tokens),
        _ => None,
    };
    let delay = Duration::from_millis(cfg.token_delay_ms);
    let body = MockBody::stream(Box::new(g), tokens, delay, drop_after);
    sse(respond(StatusCode::OK, G::STREAM_CONTENT_TYPE, body))
}

fn sse(mut r: Response<MockBody>) -> Response<MockBody> {
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Handles a backend route. Returns the response whose body still needs the request guard.
pub(crate) async fn handle(
    route: Route,
    path: &str,
    live: &Live,
    counters: &Counters,
    body: &Bytes,
) -> Response<MockBody> {
    match route {
        Route::Health(h) => health(h, live).await,
        Route::Models(list) => model_list(list, live).await,
        Route::Model => single_model(path, live),
        Route::Gen(g) => generation(g, live, body).await,
        Route::CountTokens => count_tokens(live, body),
        Route::Tokenize => tokenize(body),
        Route::OllamaShow => show(live, body),
        Route::OllamaPs => json(StatusCode::OK, live.ps.clone()),
        Route::Props => json(
            StatusCode::OK,
            openai::props_body(&live.cfg.name, live.first_model()),
        ),
        Route::Slots => json(StatusCode::OK, openai::slots_body(counters.generating())),
        Route::VllmVersion => json(StatusCode::OK, openai::VLLM_VERSION_BODY),
        Route::MethodNotAllowed => error(
            Style::OpenAi,
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
            "invalid_request_error",
            None,
        ),
        Route::NotFound => error(
            Style::OpenAi,
            StatusCode::NOT_FOUND,
            "route not found",
            "invalid_request_error",
            Some("not_found"),
        ),
    }
}

/// Health routes: `health_delay_ms`, then `health_status` (with `Retry-After` on 429).
async fn health(kind: Health, live: &Live) -> Response<MockBody> {
    sleep_ms(live.cfg.health_delay_ms).await;
    let status =
        StatusCode::from_u16(live.cfg.health_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let no_body = matches!(
        status,
        StatusCode::NO_CONTENT | StatusCode::RESET_CONTENT | StatusCode::NOT_MODIFIED
    ) || status.is_informational();
    let mut r = if no_body {
        respond(status, JSON, MockBody::empty())
    } else if status.is_success() {
        match kind {
            Health::Status | Health::Ping => json(status, r#"{"status":"ok"}"#),
            Health::OllamaRoot => respond(status, TEXT, MockBody::full("Ollama is running")),
            Health::OllamaVersion => json(status, ollama::VERSION_BODY),
        }
    } else {
        let msg = format!(
            r#"{{"status":"error","message":"olla-mock health status {}"}}"#,
            status.as_u16()
        );
        json(status, msg)
    };
    if status == StatusCode::TOO_MANY_REQUESTS {
        if let Some(v) = &live.retry_after {
            r.headers_mut().insert(RETRY_AFTER, v.clone());
        }
    }
    r
}

/// Model-list routes, shaped by `models_fault`.
async fn model_list(list: List, live: &Live) -> Response<MockBody> {
    let style = if list == List::OllamaTags {
        Style::Ollama
    } else {
        Style::OpenAi
    };
    let body = match list {
        List::OpenAi => live.openai_models.clone(),
        List::LmStudio => live.lmstudio_models.clone(),
        List::OllamaTags => live.tags.clone(),
    };
    match live.cfg.models_fault {
        Fault::Hang => hang().await,
        Fault::Error { status } => fault_error(live, style, status),
        ref f => whole_with_fault(f, body),
    }
}

/// `GET /v1/models/{id}`.
fn single_model(path: &str, live: &Live) -> Response<MockBody> {
    let id = path.rsplit_once("/models/").map_or("", |(_, id)| id);
    if !live.serves(id) {
        return model_not_found(Style::OpenAi, id);
    }
    let body = format!(
        r#"{{"id":{id},"object":"model","created":{created},"owned_by":{owner}}}"#,
        id = json_str(id),
        created = crate::util::MODEL_CREATED,
        owner = live.name_json,
    );
    json(StatusCode::OK, body)
}

/// Chat, completions, embeddings, generate, messages.
async fn generation(g: Gen, live: &Live, body: &Bytes) -> Response<MockBody> {
    let cfg = &live.cfg;
    let style = g.style();
    match cfg.fault {
        Fault::Hang => return hang().await,
        Fault::Error { status } => {
            sleep_ms(cfg.ttft_ms).await;
            return fault_error(live, style, status);
        }
        _ => {}
    }
    let req = match GenRequest::parse(body) {
        Ok(r) => r,
        Err(e) => return bad_request(style, &e),
    };
    let model = match req.model() {
        Some(m) if live.serves(m) => m,
        Some(m) => return model_not_found(style, m),
        None => live.first_model(),
    };
    let tokens = req
        .max_tokens()
        .map_or(cfg.tokens, |max| cfg.tokens.min(max));
    let info = GenInfo {
        id: next_id(),
        created: unix_now(),
        model_json: json_str(model),
        name_json: live.name_json.clone(),
        prompt_tokens: prompt_tokens(body),
        tokens,
        include_usage: req.include_usage(),
        ttft_ms: cfg.ttft_ms,
        token_delay_ms: cfg.token_delay_ms,
    };
    // Ollama streams unless told otherwise; the others only when asked.
    let stream = req
        .stream
        .unwrap_or(matches!(g, Gen::OllamaChat | Gen::OllamaGenerate));
    let embed_inputs = match g {
        Gen::Embeddings | Gen::OllamaEmbed => match req.input {
            Some(i) if !i.0.is_empty() => Some(i.0),
            _ => return bad_request(style, "'input' is required"),
        },
        Gen::OllamaEmbeddings => Some(vec![req
            .prompt
            .map_or(fnv64(0, b""), |p| p.0.first().copied().unwrap_or(0))]),
        _ => None,
    };
    sleep_ms(cfg.ttft_ms).await;
    match (g, embed_inputs) {
        (Gen::Embeddings, Some(inputs)) => {
            whole_with_fault(&cfg.fault, openai::embeddings_body(&info, &inputs).into())
        }
        (Gen::OllamaEmbed, Some(inputs)) => {
            whole_with_fault(&cfg.fault, ollama::embed_body(&info, &inputs).into())
        }
        (Gen::OllamaEmbeddings, Some(inputs)) => whole_with_fault(
            &cfg.fault,
            ollama::legacy_embedding_body(inputs.first().copied().unwrap_or(0)).into(),
        ),
        (Gen::Chat, _) => generated(
            openai::Chat::with_extras(info, openai::ChatExtras::from_body(body)),
            tokens,
            stream,
            cfg,
        ),
        (Gen::Completion, _) => generated(openai::Completion::new(info), tokens, stream, cfg),
        (Gen::OllamaChat, _) => generated(
            ollama::Gen::new(ollama::Kind::Chat, info),
            tokens,
            stream,
            cfg,
        ),
        (Gen::OllamaGenerate, _) => generated(
            ollama::Gen::new(ollama::Kind::Generate, info),
            tokens,
            stream,
            cfg,
        ),
        (Gen::Messages, _) => generated(anthropic::Messages::new(info), tokens, stream, cfg),
        // Embedding routes always have inputs (checked above).
        (Gen::Embeddings | Gen::OllamaEmbed | Gen::OllamaEmbeddings, None) => {
            bad_request(style, "'input' is required")
        }
    }
}

/// `POST /v1/messages/count_tokens`.
fn count_tokens(live: &Live, body: &Bytes) -> Response<MockBody> {
    let req = match GenRequest::parse(body) {
        Ok(r) => r,
        Err(e) => return bad_request(Style::Anthropic, &e),
    };
    if let Some(m) = req.model() {
        if !live.serves(m) {
            return model_not_found(Style::Anthropic, m);
        }
    }
    json(
        StatusCode::OK,
        anthropic::count_tokens_body(prompt_tokens(body)),
    )
}

/// `POST /tokenize`: `{"tokens":[0,1,...]}`, one per word of `content`.
fn tokenize(body: &Bytes) -> Response<MockBody> {
    #[derive(serde::Deserialize)]
    struct Req<'a> {
        #[serde(borrow, default)]
        content: Cow<'a, str>,
    }
    let words = match serde_json::from_slice::<Req>(body) {
        Ok(r) => r.content.split_whitespace().count(),
        Err(e) => return bad_request(Style::OpenAi, &format!("invalid request body: {e}")),
    };
    let ids: Vec<String> = (0..words).map(|i| i.to_string()).collect();
    json(
        StatusCode::OK,
        format!(r#"{{"tokens":[{}]}}"#, ids.join(",")),
    )
}

/// `POST /api/show`.
fn show(live: &Live, body: &Bytes) -> Response<MockBody> {
    let req = match GenRequest::parse(body) {
        Ok(r) => r,
        Err(e) => return bad_request(Style::Ollama, &e),
    };
    let model = match req.model() {
        Some(m) if live.serves(m) => m,
        Some(m) => return model_not_found(Style::Ollama, m),
        None => live.first_model(),
    };
    json(StatusCode::OK, ollama::show_body(model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(classify(&get, "/health"), Route::Health(Health::Status));
        assert_eq!(classify(&get, "/"), Route::Health(Health::OllamaRoot));
        assert_eq!(
            classify(&Method::HEAD, "/"),
            Route::Health(Health::OllamaRoot)
        );
        assert_eq!(
            classify(&get, "/api/version"),
            Route::Health(Health::OllamaVersion)
        );
        assert_eq!(classify(&get, "/ping"), Route::Health(Health::Ping));
        assert_eq!(classify(&get, "/v1/models"), Route::Models(List::OpenAi));
        assert_eq!(
            classify(&get, "/api/v1/models"),
            Route::Models(List::OpenAi)
        );
        assert_eq!(
            classify(&get, "/api/v0/models"),
            Route::Models(List::LmStudio)
        );
        assert_eq!(classify(&get, "/api/tags"), Route::Models(List::OllamaTags));
        assert_eq!(classify(&get, "/v1/models/x"), Route::Model);
        assert_eq!(
            classify(&post, "/v1/chat/completions"),
            Route::Gen(Gen::Chat)
        );
        assert_eq!(
            classify(&post, "/api/v0/chat/completions"),
            Route::Gen(Gen::Chat)
        );
        assert_eq!(
            classify(&post, "/engines/v1/completions"),
            Route::Gen(Gen::Completion)
        );
        assert_eq!(
            classify(&post, "/v1/embeddings"),
            Route::Gen(Gen::Embeddings)
        );
        assert_eq!(classify(&post, "/api/chat"), Route::Gen(Gen::OllamaChat));
        assert_eq!(
            classify(&post, "/api/generate"),
            Route::Gen(Gen::OllamaGenerate)
        );
        assert_eq!(classify(&post, "/api/embed"), Route::Gen(Gen::OllamaEmbed));
        assert_eq!(classify(&post, "/v1/messages"), Route::Gen(Gen::Messages));
        assert_eq!(
            classify(&post, "/v1/messages/count_tokens"),
            Route::CountTokens
        );
        assert_eq!(classify(&post, "/api/show"), Route::OllamaShow);
        assert_eq!(classify(&get, "/api/ps"), Route::OllamaPs);
        assert_eq!(classify(&get, "/props"), Route::Props);
        assert_eq!(classify(&get, "/slots"), Route::Slots);
        assert_eq!(classify(&get, "/version"), Route::VllmVersion);
        assert_eq!(
            classify(&get, "/v1/chat/completions"),
            Route::MethodNotAllowed
        );
        assert_eq!(classify(&post, "/health"), Route::MethodNotAllowed);
        assert_eq!(classify(&get, "/nope"), Route::NotFound);
        assert_eq!(classify(&get, "/v1/modelsx"), Route::NotFound);
        assert_eq!(classify(&get, "/v1/models/"), Route::NotFound);
    }

    async fn run(route: Route, path: &str, cfg: MockConfig, body: &str) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let live = Live::new(cfg);
        let counters = Counters::default();
        let r = handle(route, path, &live, &counters, &Bytes::from(body.to_owned())).await;
        let status = r.status();
        let bytes = r.into_body().collect().await.map(|c| c.to_bytes());
        (
            status,
            String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned(),
        )
    }

    #[tokio::test]
    async fn validation_and_faults() {
        let cfg = MockConfig::default();
        let chat = Route::Gen(Gen::Chat);
        let (s, b) = run(
            chat,
            "/v1/chat/completions",
            cfg.clone(),
            r#"{"model":"x"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(b.contains("model 'x' not found") && b.contains("model_not_found"));
        let (s, b) = run(
            Route::Gen(Gen::OllamaChat),
            "/api/chat",
            cfg.clone(),
            r#"{"model":"x"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(b, r#"{"error":"model 'x' not found"}"#);
        let (s, _) = run(chat, "/v1/chat/completions", cfg.clone(), "{").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, b) = run(
            chat,
            "/v1/chat/completions",
            cfg.clone(),
            r#"{"max_tokens":2}"#,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert!(b.contains(r#""content":"tok0 tok1 ""#) && b.contains(r#""model":"mock-model""#));

        let mut faulty = cfg.clone();
        faulty.fault = Fault::Error { status: 503 };
        let (s, b) = run(chat, "/v1/chat/completions", faulty.clone(), "{}").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(b.contains("server_error"));

        faulty.fault = Fault::MalformedJson;
        let (s, b) = run(chat, "/v1/chat/completions", faulty.clone(), "{}").await;
        assert_eq!(s, StatusCode::OK);
        assert!(serde_json::from_str::<serde_json::Value>(&b).is_err());

        faulty.models_fault = Fault::MalformedJson;
        let (s, b) = run(Route::Models(List::OllamaTags), "/api/tags", faulty, "").await;
        assert_eq!(s, StatusCode::OK);
        assert!(serde_json::from_str::<serde_json::Value>(&b).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn delays_follow_the_config() {
        let cfg = MockConfig {
            health_delay_ms: 300,
            ttft_ms: 700,
            ..MockConfig::default()
        };
        let start = tokio::time::Instant::now();
        let (s, _) = run(Route::Health(Health::Ping), "/ping", cfg.clone(), "").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        let start = tokio::time::Instant::now();
        let (s, _) = run(
            Route::Gen(Gen::Chat),
            "/v1/chat/completions",
            cfg.clone(),
            "{}",
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(start.elapsed(), Duration::from_millis(700));
        // Model lists wait for neither.
        let start = tokio::time::Instant::now();
        run(Route::Models(List::OpenAi), "/v1/models", cfg, "").await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn health_status_and_models() {
        let mut cfg = MockConfig {
            health_status: 429,
            retry_after: Some("7".to_owned()),
            ..MockConfig::default()
        };
        let live = Live::new(cfg.clone());
        let r = health(Health::Status, &live).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            r.headers().get(RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"7"[..])
        );
        cfg.health_status = 204;
        let (s, b) = run(Route::Health(Health::Status), "/health", cfg, "").await;
        assert_eq!((s, b.as_str()), (StatusCode::NO_CONTENT, ""));

        let cfg = MockConfig::default();
        let (s, b) = run(Route::Model, "/v1/models/mock-model", cfg.clone(), "").await;
        assert_eq!(s, StatusCode::OK);
        assert!(b.contains(r#""id":"mock-model""#));
        let (s, _) = run(Route::Model, "/v1/models/other", cfg.clone(), "").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, b) = run(
            Route::OllamaShow,
            "/api/show",
            cfg.clone(),
            r#"{"model":"mock-model"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert!(b.contains("modelfile"));
        let (s, _) = run(
            Route::OllamaShow,
            "/api/show",
            cfg.clone(),
            r#"{"name":"zzz"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, b) = run(
            Route::Gen(Gen::Embeddings),
            "/v1/embeddings",
            cfg.clone(),
            r#"{"input":["a","b"]}"#,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b.matches(r#""object":"embedding""#).count(), 2);
        let (s, _) = run(Route::Gen(Gen::Embeddings), "/v1/embeddings", cfg, "{}").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }
}
