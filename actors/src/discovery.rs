//! Model discovery: fetching a backend's model list through its engine's native API and parsing
//! each dialect into [`DiscoveredModel`]s, with metadata (family, size, quantization, context,
//! capabilities) where the engine reports it or the name reveals it. Also `type: auto` detection.
//! The fetches run in tasks spawned by the backend actor (or by a request on a routing miss).

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

/// Fetches and parses a backend's model list (filter applied).
pub async fn fetch_models(
    client: &UpstreamClient,
    spec: &BackendSpec,
    kind: BackendKind,
    timeout: Duration,
) -> Result<Vec<DiscoveredModel>, DiscoveryError> {
    let uri = spec
        .models_uri(kind)
        .map_err(|e| DiscoveryError::Url(e.to_string()))?;
    let (status, _, body) = get(client, spec, uri, timeout).await?;
    if !status.is_success() {
        return Err(DiscoveryError::Status(status.as_u16()));
    }
    let mut models = parse_models(kind, &body)?;
    models.retain(|m| spec.model_filter.allows(&m.name));
    Ok(models)
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

/// Parses a model list in a backend kind's dialect.
pub fn parse_models(
    kind: BackendKind,
    body: &[u8],
) -> Result<Vec<DiscoveredModel>, DiscoveryError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| DiscoveryError::Malformed(e.to_string()))?;
    let models = match kind {
        BackendKind::Ollama => parse_ollama(&v)?,
        BackendKind::LmStudio => parse_openai_like(&v, true)?,
        _ => parse_openai_like(&v, false)?,
    };
    Ok(models)
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(|x| x.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn parse_ollama(v: &Value) -> Result<Vec<DiscoveredModel>, DiscoveryError> {
    let list = v
        .get("models")
        .and_then(|m| m.as_array())
        .ok_or_else(|| DiscoveryError::Malformed("no `models` array".into()))?;
    let mut out = Vec::with_capacity(list.len());
    for m in list {
        let Some(name) = str_of(m, "name").or_else(|| str_of(m, "model")) else {
            continue;
        };
        let details = m.get("details").cloned().unwrap_or(Value::Null);
        let mut model = DiscoveredModel {
            digest: str_of(m, "digest"),
            family: str_of(&details, "family"),
            parameter_size: str_of(&details, "parameter_size"),
            quantization: str_of(&details, "quantization_level"),
            size: m.get("size").and_then(|s| s.as_u64()),
            modified_at: str_of(m, "modified_at"),
            ..DiscoveredModel::default()
        };
        model.capabilities = m
            .get("capabilities")
            .and_then(|c| c.as_array())
            .map(|c| {
                c.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        model.name = name;
        enrich_from_name(&mut model);
        out.push(model);
    }
    Ok(out)
}

fn parse_openai_like(v: &Value, lmstudio: bool) -> Result<Vec<DiscoveredModel>, DiscoveryError> {
    let list = v
        .get("data")
        .and_then(|m| m.as_array())
        .ok_or_else(|| DiscoveryError::Malformed("no `data` array".into()))?;
    let mut out = Vec::with_capacity(list.len());
    for m in list {
        let Some(name) = str_of(m, "id") else {
            continue;
        };
        let mut model = DiscoveredModel {
            name,
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
        enrich_from_name(&mut model);
        out.push(model);
    }
    Ok(out)
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
