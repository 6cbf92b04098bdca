//! Provider prefixes `/olla/<provider>/...`: each forwards the rest of the path to backends of
//! its type only (`openai` reaches every OpenAI-compatible type), serves its native model list
//! and `v1/models` from the catalog, and aggregates `/olla/ollama/api/tags` over every Ollama
//! backend. A prefix with no backend of its type answers 404 `No <type> endpoints available`.
//! The path after the prefix is normalised and checked ([`Forward::new`]) before it is matched,
//! so `/api/./pull`, `/api/PULL/` or `/api/pu%6cl` meet the same rules as `/api/pull`.

use std::sync::Arc;

use crate::http_util::RequestBody;
use http::{Method, Request, Response};
use olla_actors::kind::BackendKind;

use crate::api::models;
use crate::app::App;
use crate::error::ProxyError;
use crate::http_util::Body;
use crate::proxy::headers::ClientInfo;
use crate::proxy::select::KindFilter;
use crate::proxy::{self, Forward};
use crate::telemetry::RequestContext;

/// The backend filter for a route prefix.
pub fn filter_for(prefix: &str) -> Option<KindFilter> {
    match prefix {
        "openai" | "openai-compatible" => Some(KindFilter::OpenAiCompatible),
        "proxy" | "models" | "anthropic" => None,
        p => BackendKind::from_prefix(p).map(KindFilter::Only),
    }
}

fn has_backends(app: &App, filter: KindFilter) -> bool {
    app.tree
        .published
        .table()
        .backends
        .iter()
        .any(|b| filter.allows(b.kind()))
}

pub async fn handle(
    app: &Arc<App>,
    req: Request<RequestBody>,
    client: ClientInfo,
    filter: KindFilter,
    tail: &str,
    query: Option<&str>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, ProxyError> {
    let ollama = filter == KindFilter::Only(BackendKind::Ollama);
    let fwd = Forward::new(filter, tail, query, ollama)?;
    if !has_backends(app, filter) {
        let name = filter.provider_name().unwrap_or("matching");
        return Err(ProxyError::NoProviderEndpoints(name.to_string()));
    }
    let is_get = req.method() == Method::GET;
    // Model lists are answered from the catalog: olla's own routes, not proxied requests.
    let local = matches!(
        (filter, fwd.path_key.as_str()),
        (KindFilter::Only(BackendKind::Ollama), "/api/tags")
            | (
                KindFilter::Only(BackendKind::LmStudio),
                "/api/v0/models" | "/api/v1/models"
            )
            | (_, "/v1/models")
    );
    if local && is_get {
        ctx.route = crate::telemetry::Route::Internal;
    }
    match (filter, fwd.path_key.as_str()) {
        (KindFilter::Only(BackendKind::Ollama), "/api/tags") if is_get => {
            return Ok(models::ollama_tags(app))
        }
        (KindFilter::Only(BackendKind::LmStudio), "/api/v0/models" | "/api/v1/models")
            if is_get =>
        {
            return Ok(models::lmstudio_list(app))
        }
        (_, "/v1/models") if is_get => return Ok(models::openai_list(app, filter)),
        _ => {}
    }
    proxy::forward(app, req, client, fwd, ctx).await
}
