//! Model routes over the published catalog: `GET /olla/models` (formats unified, openai, ollama,
//! lmstudio, vllm; filters endpoint, family, type, capability, available, include_unavailable),
//! `GET /olla/models/{id-or-alias}`, the OpenAI lists of `/olla/proxy/v1/models` and the provider
//! prefixes, the aggregated Ollama/LM Studio lists, and `/internal/status/models`.
//!
//! Every listing is one pass over the catalog with hash lookups (routable backends as a set,
//! families grouped in one pass): the catalog holds up to `max_models_per_endpoint` entries per
//! endpoint, so nothing here may be quadratic in it.

use std::collections::{BTreeMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use olla_actors::catalog::{Catalog, UnifiedModel};
use olla_actors::kind::BackendKind;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::app::App;
use crate::error::ProxyError;
use crate::format;
use crate::http_util::{json_response, Body};
use crate::proxy::select::KindFilter;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Which backends are routable now, by name.
fn routable_names(app: &App) -> HashSet<String> {
    let now = Instant::now();
    app.tree
        .published
        .table()
        .backends
        .iter()
        .filter(|b| b.is_routable(now))
        .map(|b| b.name().to_string())
        .collect()
}

/// Models visible through a filter: in scope, and on a routable backend unless `include_unavailable`.
fn visible<'a>(
    catalog: &'a Catalog,
    filter: KindFilter,
    routable: &HashSet<String>,
    include_unavailable: bool,
) -> Vec<&'a UnifiedModel> {
    catalog
        .models
        .iter()
        .filter(|m| {
            m.availability.iter().any(|a| {
                filter.allows(a.kind) && (include_unavailable || routable.contains(&a.backend))
            })
        })
        .collect()
}

fn native_name(m: &UnifiedModel, kind: BackendKind) -> Option<&str> {
    m.availability
        .iter()
        .find(|a| a.kind == kind)
        .map(|a| a.native_name.as_str())
}

fn ollama_entry(m: &UnifiedModel, name: &str) -> Value {
    json!({
        "details": {
            "family": m.meta.family.clone().unwrap_or_default(),
            "parameter_size": m.meta.parameter_size.clone().unwrap_or_default(),
            "quantization_level": m.meta.quantization.clone().unwrap_or_default(),
        },
        "name": name, "model": name,
        "modified_at": m.meta.modified_at.clone().unwrap_or_else(|| format::rfc3339(m.last_seen)),
        "digest": m.meta.digest.clone().unwrap_or_default(),
        "size": m.meta.size.unwrap_or(0),
    })
}

fn openai_entry(id: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "olla"})
}

/// OpenAI-format list of the models reachable through `filter`.
/// The model ids a route lists (its type's native names under a provider prefix), then the
/// aliases that resolve.
pub fn list_ids(app: &App, filter: KindFilter) -> Vec<String> {
    let catalog = app.tree.published.catalog.load();
    let routable = routable_names(app);
    let mut ids: Vec<String> = visible(&catalog, filter, &routable, false)
        .into_iter()
        .map(|m| {
            let id = match filter {
                KindFilter::Only(k) => native_name(m, k).unwrap_or(&m.id),
                _ => &m.id,
            };
            id.to_string()
        })
        .collect();
    for alias in catalog.aliases.keys() {
        if !catalog.resolve(alias).is_empty() {
            ids.push(alias.clone());
        }
    }
    ids
}

pub fn openai_list(app: &App, filter: KindFilter) -> Response<Body> {
    let created = now_unix();
    let data: Vec<Value> = list_ids(app, filter)
        .iter()
        .map(|id| openai_entry(id, created))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

pub fn ollama_tags(app: &App) -> Response<Body> {
    let catalog = app.tree.published.catalog.load();
    let routable = routable_names(app);
    let models: Vec<Value> = visible(
        &catalog,
        KindFilter::Only(BackendKind::Ollama),
        &routable,
        false,
    )
    .into_iter()
    .filter_map(|m| native_name(m, BackendKind::Ollama).map(|n| ollama_entry(m, n)))
    .collect();
    json_response(StatusCode::OK, &json!({"models": models}))
}

fn lmstudio_entry(m: &UnifiedModel, id: &str) -> Value {
    let kind = if m.meta.capabilities.iter().any(|c| c == "embeddings") {
        "embeddings"
    } else if m.meta.capabilities.iter().any(|c| c == "vision") {
        "vlm"
    } else {
        "llm"
    };
    let mut v = json!({"id": id, "object": "model", "type": kind,
        "state": if m.meta.loaded == Some(true) { "loaded" } else { "not-loaded" }});
    if let Some(obj) = v.as_object_mut() {
        if let Some(c) = m.meta.context_length {
            obj.insert("max_context_length".into(), json!(c));
        }
        if let Some(f) = &m.meta.family {
            obj.insert("arch".into(), json!(f));
        }
        if let Some(q) = &m.meta.quantization {
            obj.insert("quantization".into(), json!(q));
        }
    }
    v
}

/// The LM Studio `/api/v0/models` list aggregated over every LM Studio backend.
pub fn lmstudio_list(app: &App) -> Response<Body> {
    let catalog = app.tree.published.catalog.load();
    let routable = routable_names(app);
    let data: Vec<Value> = visible(
        &catalog,
        KindFilter::Only(BackendKind::LmStudio),
        &routable,
        false,
    )
    .into_iter()
    .filter_map(|m| native_name(m, BackendKind::LmStudio).map(|n| lmstudio_entry(m, n)))
    .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

fn unified_entry(m: &UnifiedModel, routable: &HashSet<String>, created: u64) -> Value {
    let availability: Vec<Value> = m
        .availability
        .iter()
        .map(|a| {
            let state = if !routable.contains(&a.backend) {
                "unavailable"
            } else if m.meta.loaded == Some(true) {
                "loaded"
            } else {
                "available"
            };
            json!({"endpoint": a.backend, "state": state})
        })
        .collect();
    let mut olla = json!({
        "family": m.meta.family.clone().unwrap_or_default(),
        "variant": m.meta.family.clone().unwrap_or_default(),
        "parameter_size": m.meta.parameter_size.clone().unwrap_or_default(),
        "quantization": m.meta.quantization.clone().unwrap_or_default(),
        "aliases": m.aliases,
        "availability": availability,
        "capabilities": m.meta.capabilities,
    });
    if let (Some(c), Some(obj)) = (m.meta.context_length, olla.as_object_mut()) {
        obj.insert("max_context_length".into(), json!(c));
    }
    json!({"olla": olla, "id": m.id, "object": "model", "owned_by": "olla", "created": created})
}

fn capability_matches(m: &UnifiedModel, cap: &str) -> bool {
    let wanted: &[&str] = match cap {
        "vision" | "multimodal" => &["vision"],
        "embedding" | "embeddings" | "vector_search" => &["embeddings"],
        "chat" | "text_generation" | "completion" => &["completion", "chat"],
        other => return m.meta.capabilities.iter().any(|c| c == other),
    };
    m.meta
        .capabilities
        .iter()
        .any(|c| wanted.contains(&c.as_str()))
}

/// `GET /olla/models`.
pub fn list(app: &App, query: Option<&str>) -> Result<Response<Body>, ProxyError> {
    let q: BTreeMap<String, String> = query
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect();
    let format = q.get("format").map(String::as_str).unwrap_or("unified");
    if !["unified", "openai", "ollama", "lmstudio", "vllm"].contains(&format) {
        return Err(ProxyError::BadRequest(format!(
            "invalid query parameter format={format}: unsupported format. Supported formats: unified, openai, ollama, lmstudio, vllm"
        )));
    }
    let available = match q.get("available").map(String::as_str) {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            return Err(ProxyError::BadRequest(
                "invalid value for 'available' parameter. Use 'true' or 'false'".into(),
            ))
        }
    };
    let include_unavailable =
        q.get("include_unavailable").is_some_and(|v| v == "true") || available == Some(false);
    let catalog = app.tree.published.catalog.load();
    let routable = routable_names(app);
    let created = now_unix();
    let models: Vec<&UnifiedModel> =
        visible(&catalog, KindFilter::Any, &routable, include_unavailable)
            .into_iter()
            .filter(|m| {
                q.get("endpoint")
                    .is_none_or(|e| m.availability.iter().any(|a| &a.backend == e))
            })
            .filter(|m| {
                q.get("family").is_none_or(|f| {
                    m.meta
                        .family
                        .as_deref()
                        .is_some_and(|mf| mf.eq_ignore_ascii_case(f))
                })
            })
            .filter(|m| {
                q.get("type").is_none_or(|t| {
                    m.availability
                        .iter()
                        .any(|a| BackendKind::parse(t).is_some_and(|k| k == a.kind))
                })
            })
            .filter(|m| q.get("capability").is_none_or(|c| capability_matches(m, c)))
            .filter(|m| match available {
                None => true,
                Some(want) => m.availability.iter().any(|a| routable.contains(&a.backend)) == want,
            })
            .collect();
    let body = match format {
        "openai" => {
            json!({"object": "list", "data": models.iter().map(|m| openai_entry(&m.id, created)).collect::<Vec<_>>()})
        }
        "ollama" => {
            json!({"models": models.iter().filter_map(|m| native_name(m, BackendKind::Ollama).map(|n| ollama_entry(m, n))).collect::<Vec<_>>()})
        }
        "lmstudio" => {
            json!({"object": "list", "data": models.iter().filter_map(|m| native_name(m, BackendKind::LmStudio).map(|n| lmstudio_entry(m, n))).collect::<Vec<_>>()})
        }
        "vllm" => json!({"object": "list", "data": models.iter().map(|m| {
            let id = native_name(m, BackendKind::Vllm).unwrap_or(&m.id);
            let mut v = json!({"id": id, "object": "model", "created": created,
                "owned_by": id.split_once('/').map(|(o, _)| o).unwrap_or("vllm"), "root": id});
            if let (Some(c), Some(obj)) = (m.meta.context_length, v.as_object_mut()) {
                obj.insert("max_model_len".into(), json!(c));
            }
            v
        }).collect::<Vec<_>>()}),
        _ => {
            json!({"object": "list", "data": models.iter().map(|m| unified_entry(m, &routable, created)).collect::<Vec<_>>()})
        }
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// Olla's unified summary of one model: its id, metadata, native names (`aliases`, plus
/// configured `model_aliases` that point at it), the endpoints (names and URLs) serving it.
fn unified_summary(app: &App, catalog: &Catalog, m: &UnifiedModel) -> Value {
    let table = app.tree.published.table();
    let mut endpoints: Vec<&str> = Vec::new();
    let mut urls: Vec<String> = Vec::new();
    for a in &m.availability {
        if endpoints.contains(&a.backend.as_str()) {
            continue;
        }
        endpoints.push(&a.backend);
        urls.push(
            table
                .get(&a.backend)
                .map(|b| b.spec().configured_url.clone())
                .unwrap_or_default(),
        );
    }
    let loaded: Vec<&str> = if m.meta.loaded == Some(true) {
        endpoints.clone()
    } else {
        Vec::new()
    };
    let mut aliases = m.aliases.clone();
    let mut configured: Vec<&String> = catalog
        .aliases
        .iter()
        .filter(|(_, real)| {
            real.iter()
                .any(|r| m.aliases.iter().any(|a| a.eq_ignore_ascii_case(r)))
        })
        .map(|(alias, _)| alias)
        .collect();
    configured.sort();
    for alias in configured {
        if !aliases.iter().any(|a| a.eq_ignore_ascii_case(alias)) {
            aliases.push(alias.clone());
        }
    }
    let param_size = m.meta.parameter_size.clone().unwrap_or_default();
    let mut v = json!({
        "id": m.id,
        "family": m.meta.family.clone().unwrap_or_default(),
        "variant": m.meta.family.clone().unwrap_or_default(),
        "parameter_size": param_size,
        "parameter_count": format::parameter_count(&param_size),
        "quantization": m.meta.quantization.clone().unwrap_or_default(),
        "format": "",
        "aliases": aliases,
        "endpoints": endpoints,
        "endpoint_urls": urls,
        "loaded_endpoints": loaded,
        "capabilities": m.meta.capabilities,
        "total_disk_size": format::bytes(m.meta.size.unwrap_or(0)),
        "last_seen": format::time_ago(Some(m.last_seen)),
    });
    if let (Some(c), Some(obj)) = (m.meta.context_length, v.as_object_mut()) {
        obj.insert("max_context_length".into(), json!(c));
    }
    v
}

/// `GET /olla/models/{id-or-alias}`: the unified summary, or 404.
pub fn one(app: &App, id: &str) -> Result<Response<Body>, ProxyError> {
    let id = percent_decode(id);
    if id.is_empty() {
        return Err(ProxyError::BadRequest("Model ID or alias required".into()));
    }
    let catalog = app.tree.published.catalog.load();
    let found = catalog.lookup(&id).or_else(|| {
        catalog
            .resolve(&id)
            .first()
            .and_then(|a| catalog.lookup(&a.native_name))
    });
    let Some(m) = found else {
        return Err(ProxyError::ModelNotFound(id));
    };
    Ok(json_response(
        StatusCode::OK,
        &unified_summary(app, &catalog, m),
    ))
}

/// `/internal/status/models` in Olla's shape.
pub fn status_models<B>(app: &App, req: &Request<B>) -> Response<Body> {
    let catalog = app.tree.published.catalog.load();
    let table = app.tree.published.table();
    let ids = crate::api::internal::endpoint_ids(&table);
    // One pass: each family's members (for `model_groups`) and names.
    let mut members_by_family: BTreeMap<&str, Vec<&UnifiedModel>> = BTreeMap::new();
    for m in &catalog.models {
        let fam = m
            .meta
            .family
            .as_deref()
            .filter(|f| !f.is_empty())
            .unwrap_or("unknown");
        members_by_family.entry(fam).or_default().push(m);
    }
    let by_family: BTreeMap<&str, Vec<&str>> = members_by_family
        .iter()
        .map(|(fam, ms)| {
            let mut names: Vec<&str> = ms.iter().map(|m| m.id.as_str()).collect();
            names.sort_unstable();
            (*fam, names)
        })
        .collect();
    let mut recent: Vec<&UnifiedModel> = catalog.models.iter().collect();
    recent.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then_with(|| a.id.cmp(&b.id)));
    let summary = |m: &UnifiedModel| {
        let mut endpoints: Vec<(String, String)> = m
            .availability
            .iter()
            .map(|a| {
                let id = ids.get(&a.backend).cloned().unwrap_or_default();
                (a.backend.clone(), id)
            })
            .collect();
        endpoints.sort();
        endpoints.dedup();
        json!({
            "last_seen_at": format::rfc3339(m.last_seen),
            "name": m.id,
            "type": m.availability.first().map(|a| a.kind.as_str()).unwrap_or(""),
            "family": m.meta.family.clone().unwrap_or_default(),
            "size": m.meta.size.map(format::bytes).unwrap_or_default(),
            "params": m.meta.parameter_size.clone().unwrap_or_default(),
            "quant": m.meta.quantization.clone().unwrap_or_default(),
            "last_seen": format::time_ago(Some(m.last_seen)),
            "endpoints": endpoints.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "endpoint_ids": endpoints.iter().map(|(_, i)| i).collect::<Vec<_>>(),
            "aliases": m.aliases,
            "capabilities": m.meta.capabilities,
        })
    };
    let mut body = json!({
        "timestamp": format::rfc3339(SystemTime::now()),
        "models_by_family": by_family,
        "recent_models": recent.iter().take(10).map(|m| summary(m)).collect::<Vec<_>>(),
        "total_models": catalog.models.len(),
        "total_families": by_family.len(),
        "total_endpoints": catalog.backends.len(),
    });
    let query = req.uri().query().unwrap_or("");
    if query.contains("detailed=true") && query.contains("group=family") {
        let groups: Vec<Value> = members_by_family
            .iter()
            .map(|(fam, members)| {
                let mut eps: Vec<&str> = members
                    .iter()
                    .flat_map(|m| m.availability.iter().map(|a| a.backend.as_str()))
                    .collect::<HashSet<&str>>()
                    .into_iter()
                    .collect();
                eps.sort_unstable();
                json!({"family": fam, "models": members.iter().map(|m| summary(m)).collect::<Vec<_>>(),
                       "endpoints": eps, "model_count": members.len()})
            })
            .collect();
        if let Some(obj) = body.as_object_mut() {
            obj.insert("model_groups".into(), json!(groups));
        }
    }
    crate::api::internal::cached_json(req, &body)
}

/// Decodes `%XX` escapes and `+` in a query value or path segment.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("llama3%3A8b"), "llama3:8b");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
