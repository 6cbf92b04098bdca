//! Model discovery: fetching a backend's model list through its engine's native API and parsing
//! each dialect into [`DiscoveredModel`]s, with metadata (family, size, quantization, context,
//! capabilities) where the engine reports it or the name reveals it. Also `type: auto` detection.
//! The fetches run in tasks spawned by the backend actor (or by a request on a routing miss).
//!
//! A model list is backend data, hostile until bounded: the body is capped in bytes
//! (`MAX_LIST_BYTES`), the models kept per listing in count (`max_models_per_endpoint`, the rest
//! dropped with a warning), each name in length and each model's capabilities in count.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;

use crate::backend::client::UpstreamClient;
use crate::kind::{BackendKind, AUTO_DETECT_ORDER};
use crate::spec::BackendSpec;

/// One model as a backend reports it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct DiscoveredModel {
    /// The backend's own name for the model.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Loaded in memory (LM Studio `state`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<String>,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("request failed: {0}")]
    Transport(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("malformed model list: {0}")]
    Malformed(String),
    #[error("bad URL: {0}")]
    Url(String),
}

/// The largest model list accepted (a guard against a broken backend streaming forever).
const MAX_LIST_BYTES: usize = 16 << 20;
/// Longest model name kept; longer entries are skipped.
pub const MAX_MODEL_NAME_LEN: usize = 1024;
/// Most capabilities kept per model.
pub const MAX_CAPABILITIES: usize = 32;

/// One fetched listing: the models kept, and how many were seen when some were dropped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelListing {
    pub models: Vec<DiscoveredModel>,
    /// Usable entries the backend listed (after the model filter) when more than the limit;
    /// `None` when nothing was dropped for the limit.
    pub truncated_from: Option<usize>,
}

impl ModelListing {
    /// The warning shown in status for a truncated listing.
    pub fn warning(&self, limit: usize) -> Option<String> {
        self.truncated_from.map(|total| {
            format!(
                "backend listed {total} models; kept the first {limit} (discovery.max_models_per_endpoint)"
            )
        })
    }
}

/// Delay before retrying a failed discovery: 2 s doubling per consecutive failure, capped at the
/// discovery interval (at least 2 s) and 10 minutes. `failures` counts this failure (>= 1).
pub fn failure_backoff(failures: u32, interval: Duration) -> Duration {
    const FIRST: Duration = Duration::from_secs(2);
    const CAP: Duration = Duration::from_secs(600);
    let doubled = FIRST.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(interval.max(FIRST)).min(CAP)
}

/// GETs a URL with the backend's headers, returning status and body (bounded in size and time).
pub async fn get(
    client: &UpstreamClient,
    spec: &BackendSpec,
    uri: Uri,
    timeout: Duration,
) -> Result<(StatusCode, http::HeaderMap, Bytes), DiscoveryError> {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(
            http::header::USER_AGENT,
            concat!("olla/", env!("CARGO_PKG_VERSION")),
        )
        .header(http::header::ACCEPT, "application/json");
    for (k, v) in &spec.outbound_headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| DiscoveryError::Url(e.to_string()))?;
    let fut = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| DiscoveryError::Transport(error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_LIST_BYTES)
            .collect()
            .await
            .map_err(|e| DiscoveryError::Transport(e.to_string()))?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| DiscoveryError::Timeout(timeout))?
}

/// The full cause chain of an error, for logs and status output.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

/// Fetches and parses a backend's model list (filter applied, at most
/// `spec.discovery.max_models` kept).
pub async fn fetch_models(
    client: &UpstreamClient,
    spec: &BackendSpec,
    kind: BackendKind,
    timeout: Duration,
) -> Result<ModelListing, DiscoveryError> {
    let uri = spec
        .models_uri(kind)
        .map_err(|e| DiscoveryError::Url(e.to_string()))?;
    let (status, _, body) = get(client, spec, uri, timeout).await?;
    if !status.is_success() {
        return Err(DiscoveryError::Status(status.as_u16()));
    }
    parse_models_bounded(
        kind,
        &body,
        &|name| spec.model_filter.allows(name),
        spec.discovery.max_models,
    )
}

/// Detects the kind of an `auto` backend by probing each kind's model path in a fixed order.
pub async fn detect_kind(
    client: &UpstreamClient,
    spec: &BackendSpec,
    timeout: Duration,
) -> Option<BackendKind> {
    for kind in AUTO_DETECT_ORDER {
        let Ok(uri) = spec.models_uri(*kind) else {
            continue;
        };
        let Ok((status, headers, body)) = get(client, spec, uri, timeout).await else {
            continue;
        };
        if !status.is_success() {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            continue;
        };
        let found = match kind {
            BackendKind::Ollama => {
                v.get("models").is_some_and(|m| m.is_array()) && v.get("data").is_none()
            }
            // llama.cpp's /v1/models carries an Ollama-style `models` array beside `data`,
            // or its server header names it.
            BackendKind::LlamaCpp => {
                (v.get("models").is_some() && v.get("data").is_some())
                    || headers
                        .get(http::header::SERVER)
                        .and_then(|s| s.to_str().ok())
                        .is_some_and(|s| s.contains("llama"))
            }
            BackendKind::LmStudio => v.get("data").and_then(|d| d.as_array()).is_some_and(|d| {
                d.iter()
                    .any(|m| m.get("compatibility_type").is_some() || m.get("state").is_some())
            }),
            BackendKind::Vllm => v
                .get("data")
                .and_then(|d| d.as_array())
                .is_some_and(|d| d.iter().any(|m| m.get("max_model_len").is_some())),
            BackendKind::Omlx => false,
            _ => v.get("data").is_some_and(|d| d.is_array()),
        };
        if found {
            return Some(*kind);
        }
    }
    None
}

/// Parses a model list in a backend kind's dialect (no filter, no count limit).
pub fn parse_models(
    kind: BackendKind,
    body: &[u8],
) -> Result<Vec<DiscoveredModel>, DiscoveryError> {
    parse_models_bounded(kind, body, &|_| true, usize::MAX).map(|l| l.models)
}

/// Parses a model list in a backend kind's dialect, keeping the first `max` entries whose name
/// `keep` accepts; only the kept entries are built (a huge list costs one pass over its names).
pub fn parse_models_bounded(
    kind: BackendKind,
    body: &[u8],
    keep: &dyn Fn(&str) -> bool,
    max: usize,
) -> Result<ModelListing, DiscoveryError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| DiscoveryError::Malformed(e.to_string()))?;
    let (key, name_keys): (&str, &[&str]) = match kind {
        BackendKind::Ollama => ("models", &["name", "model"]),
        _ => ("data", &["id"]),
    };
    let list = v
        .get(key)
        .and_then(|m| m.as_array())
        .ok_or_else(|| DiscoveryError::Malformed(format!("no `{key}` array")))?;
    let mut models = Vec::with_capacity(list.len().min(max).min(1024));
    let mut usable = 0usize;
    for m in list {
        let Some(name) = name_keys.iter().find_map(|k| str_of(m, k)) else {
            continue;
        };
        if name.len() > MAX_MODEL_NAME_LEN || !keep(&name) {
            continue;
        }
        usable += 1;
        if models.len() < max {
            let mut model = match kind {
                BackendKind::Ollama => ollama_model(m),
                BackendKind::LmStudio => openai_like_model(m, true),
                _ => openai_like_model(m, false),
            };
            model.name = name;
            enrich_from_name(&mut model);
            model.capabilities.truncate(MAX_CAPABILITIES);
            models.push(model);
        }
    }
    Ok(ModelListing {
        truncated_from: (usable > models.len()).then_some(usable),
        models,
    })
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(|x| x.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// One Ollama `/api/tags` entry's metadata (the name is set by the caller).
fn ollama_model(m: &Value) -> DiscoveredModel {
    let details = m.get("details").unwrap_or(&Value::Null);
    DiscoveredModel {
        digest: str_of(m, "digest"),
        family: str_of(details, "family"),
        parameter_size: str_of(details, "parameter_size"),
        quantization: str_of(details, "quantization_level"),
        size: m.get("size").and_then(|s| s.as_u64()),
        modified_at: str_of(m, "modified_at"),
        capabilities: m
            .get("capabilities")
            .and_then(|c| c.as_array())
            .map(|c| {
                c.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .take(MAX_CAPABILITIES)
                    .collect()
            })
            .unwrap_or_default(),
        ..DiscoveredModel::default()
    }
}

/// One OpenAI-style `data` entry's metadata (LM Studio's extra fields when `lmstudio`).
fn openai_like_model(m: &Value, lmstudio: bool) -> DiscoveredModel {
    let mut model = DiscoveredModel {
        family: str_of(m, "arch"),
        quantization: str_of(m, "quantization"),
        context_length: m
            .get("max_context_length")
            .or_else(|| m.get("max_model_len"))
            .or_else(|| m.get("context_length"))
            .and_then(|x| x.as_u64()),
        ..DiscoveredModel::default()
    };
    if lmstudio {
        model.loaded = str_of(m, "state").map(|s| s == "loaded");
        if let Some(t) = str_of(m, "type") {
            match t.as_str() {
                "embeddings" => model.capabilities.push("embeddings".into()),
                "vlm" => model.capabilities.push("vision".into()),
                _ => {}
            }
        }
    }
    model
}

/// Fills metadata the backend did not report from well-known name patterns.
fn enrich_from_name(m: &mut DiscoveredModel) {
    let lower = m.name.to_lowercase();
    if m.family.is_none() {
        const FAMILIES: &[&str] = &[
            "llama",
            "qwen",
            "mistral",
            "mixtral",
            "gemma",
            "phi",
            "deepseek",
            "smollm",
            "granite",
            "command-r",
            "codellama",
            "starcoder",
            "nomic-bert",
            "bert",
            "llava",
            "gpt-oss",
        ];
        let base = lower.rsplit('/').next().unwrap_or(&lower);
        m.family = FAMILIES
            .iter()
            .find(|f| base.starts_with(*f) || base.contains(*f))
            .map(|f| f.to_string());
    }
    if m.parameter_size.is_none() {
        m.parameter_size = lower
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
            .find(|tok| {
                tok.len() >= 2
                    && (tok.ends_with('b') || tok.ends_with('m'))
                    && tok[..tok.len() - 1].parse::<f64>().is_ok()
            })
            .map(|t| t.to_uppercase());
    }
    if m.quantization.is_none() {
        m.quantization = lower
            .split(['-', ':', '.', '_', '/'])
            .find(|t| {
                (t.starts_with('q') && t.len() >= 2 && t.as_bytes()[1].is_ascii_digit())
                    || *t == "f16"
                    || *t == "bf16"
                    || *t == "fp16"
                    || *t == "fp8"
            })
            .map(|t| t.to_uppercase());
    }
    let mut add = |c: &str| {
        if !m.capabilities.iter().any(|x| x == c) {
            m.capabilities.push(c.to_string());
        }
    };
    if lower.contains("embed") || lower.contains("bge") || lower.contains("minilm") {
        add("embeddings");
    } else {
        add("completion");
    }
    if lower.contains("llava") || lower.contains("vision") || lower.contains("-vl") {
        add("vision");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ollama_tags() {
        let body = br#"{"models":[{"name":"llama3.1:8b","model":"llama3.1:8b","size":4920753328,
            "digest":"46e0c10c039e","details":{"family":"llama","parameter_size":"8.0B","quantization_level":"Q4_K_M"}},
            {"name":"nomic-embed-text:latest","details":{}}]}"#;
        let m = parse_models(BackendKind::Ollama, body).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "llama3.1:8b");
        assert_eq!(m[0].digest.as_deref(), Some("46e0c10c039e"));
        assert_eq!(m[0].parameter_size.as_deref(), Some("8.0B"));
        assert_eq!(m[0].quantization.as_deref(), Some("Q4_K_M"));
        assert!(m[1].capabilities.contains(&"embeddings".to_string()));
    }

    #[test]
    fn parses_openai_lmstudio_and_vllm_lists() {
        let body =
            br#"{"object":"list","data":[{"id":"qwen2.5-7b-instruct-q4_k_m","object":"model"}]}"#;
        let m = parse_models(BackendKind::OpenAiCompatible, body).unwrap();
        assert_eq!(m[0].family.as_deref(), Some("qwen"));
        assert_eq!(m[0].parameter_size.as_deref(), Some("7B"));
        assert_eq!(m[0].quantization.as_deref(), Some("Q4"));
        let lms = br#"{"data":[{"id":"m1","type":"vlm","arch":"gemma3","state":"loaded","max_context_length":8192}]}"#;
        let m = parse_models(BackendKind::LmStudio, lms).unwrap();
        assert_eq!(m[0].loaded, Some(true));
        assert_eq!(m[0].context_length, Some(8192));
        assert!(m[0].capabilities.contains(&"vision".to_string()));
        let vllm = br#"{"data":[{"id":"meta/Llama-3-8B","max_model_len":4096}]}"#;
        assert_eq!(
            parse_models(BackendKind::Vllm, vllm).unwrap()[0].context_length,
            Some(4096)
        );
    }

    #[test]
    fn listings_are_cut_at_the_limit_after_the_filter_with_the_total_reported() {
        let entries: Vec<String> = (0..25)
            .map(|i| format!(r#"{{"id":"m-{i}"}}"#))
            .chain([format!(
                r#"{{"id":"{}"}}"#,
                "x".repeat(MAX_MODEL_NAME_LEN + 1)
            )])
            .collect();
        let body = format!(r#"{{"data":[{}]}}"#, entries.join(","));
        let odd = |n: &str| n.ends_with(['1', '3', '5', '7', '9']);
        let l = parse_models_bounded(BackendKind::Vllm, body.as_bytes(), &odd, 5).unwrap();
        let names: Vec<&str> = l.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["m-1", "m-3", "m-5", "m-7", "m-9"]);
        assert_eq!(
            l.truncated_from,
            Some(12),
            "usable entries, long name skipped"
        );
        assert!(l
            .warning(5)
            .unwrap()
            .contains("listed 12 models; kept the first 5"));
        let all = parse_models_bounded(BackendKind::Vllm, body.as_bytes(), &odd, 12).unwrap();
        assert_eq!((all.models.len(), all.truncated_from), (12, None));
        assert_eq!(all.warning(12), None);
    }

    #[test]
    fn failed_discovery_backs_off_exponentially_to_a_cap() {
        let secs = |n| failure_backoff(n, Duration::from_secs(300)).as_secs();
        let seq: Vec<u64> = (1..=10).map(secs).collect();
        assert_eq!(seq, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(secs(u32::MAX), 300);
        assert_eq!(
            failure_backoff(9, Duration::from_secs(3600)),
            Duration::from_secs(512)
        );
        assert_eq!(
            failure_backoff(30, Duration::from_secs(3600)),
            Duration::from_secs(600)
        );
        assert_eq!(
            failure_backoff(3, Duration::from_secs(1)),
            Duration::from_secs(2),
            "never faster than 2 s"
        );
    }

    #[test]
    fn malformed_lists_are_errors() {
        assert!(matches!(
            parse_models(BackendKind::Ollama, b"{not json"),
            Err(DiscoveryError::Malformed(_))
        ));
        assert!(matches!(
            parse_models(BackendKind::Vllm, br#"{"models":[]}"#),
            Err(DiscoveryError::Malformed(_))
        ));
    }
}
