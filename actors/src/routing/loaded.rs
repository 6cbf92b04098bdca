//! Which models a backend holds in memory now (warm-first routing), and the rule that trades
//! residency against occupancy.
//!
//! Each BackendActor asks its backend on its own timer (and soon after requests): Ollama
//! `GET /api/ps`, LM Studio `GET /api/v0/models` (`state`) or `/api/v1/models`
//! (`loaded_instances`), llama.cpp `GET /models` (router mode reports a `status` per model; a
//! single-model server has its model loaded whenever it is up). vLLM, SGLang, LiteLLM, OpenAI
//! and cloud backends always serve what they list. The parsers here are pure and bounded.
//!
//! **Residency is not occupancy.** A warm backend (model loaded) avoids a load that costs
//! seconds, but a warm backend that is busy makes requests queue behind others. The rule:
//! inside a tier, the least-loaded warm backend with a free slot goes first while its
//! in-flight count is at most `max_wait_ratio` × (one more than the in-flight count of the
//! least-loaded cold backend); beyond that the cold backend takes the overflow. With no warm
//! backend the base balancer decides, so traffic spreads again when a model is unloaded.

use std::sync::Arc;
use std::time::Duration;

use crate::kind::BackendKind;

/// Warm-first settings (`proxy.warm_first`).
#[derive(Clone, Debug, PartialEq)]
pub struct WarmSettings {
    /// Layered over any balancer (the `warm-first` balancer turns it on as well).
    pub enabled: bool,
    /// How much busier (in-flight) than an idle cold backend a warm one may be and still win.
    pub max_wait_ratio: f64,
    /// How often each backend is asked what it has loaded.
    pub check_interval: Duration,
}

impl Default for WarmSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            max_wait_ratio: 4.0,
            check_interval: Duration::from_secs(5),
        }
    }
}

/// Loaded models reported per backend (a bound against hostile answers).
pub const MAX_LOADED: usize = 256;

/// What a backend has loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Loaded {
    /// Not asked yet, or the last answer failed.
    #[default]
    Unknown,
    /// Serves every listed model without loading (vLLM, SGLang, cloud, single-model llama.cpp).
    Always,
    /// These models (names as the backend reports them).
    Models(Arc<[String]>),
}

impl Loaded {
    /// Whether `model` (the backend's own name) is resident; `None` when unknown.
    pub fn has(&self, model: &str) -> Option<bool> {
        match self {
            Self::Unknown => None,
            Self::Always => Some(true),
            Self::Models(list) => Some(list.iter().any(|m| same_model(m, model))),
        }
    }

    /// The list shown in `/internal/status/endpoints` (`None` when unknown; `["*"]` never: an
    /// always-loaded backend shows `null` with `loaded_models_always: true`).
    pub fn names(&self) -> Option<&[String]> {
        match self {
            Self::Models(list) => Some(list),
            _ => None,
        }
    }
}

/// Ollama treats `name` and `name:latest` as one model (ASCII case ignored; no allocation).
fn same_model(a: &str, b: &str) -> bool {
    fn strip(s: &str) -> &str {
        s.strip_suffix(":latest").unwrap_or(s)
    }
    a.eq_ignore_ascii_case(b) || strip(a).eq_ignore_ascii_case(strip(b))
}

/// The path that reports loaded models for a backend type; `None` = always loaded.
pub fn loaded_path(kind: BackendKind) -> Option<&'static str> {
    match kind {
        BackendKind::Ollama => Some("/api/ps"),
        BackendKind::LmStudio => Some("/api/v0/models"),
        BackendKind::LlamaCpp => Some("/models"),
        _ => None,
    }
}

/// Parses a backend's answer at [`loaded_path`].
pub fn parse_loaded(kind: BackendKind, body: &[u8]) -> Result<Loaded, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let mut out: Vec<String> = Vec::new();
    let mut push = |name: Option<&str>| {
        if let Some(n) = name.filter(|n| !n.is_empty() && n.len() <= 512) {
            if out.len() < MAX_LOADED && !out.iter().any(|o| o == n) {
                out.push(n.to_string());
            }
        }
    };
    match kind {
        BackendKind::Ollama => {
            let models = v
                .get("models")
                .and_then(|m| m.as_array())
                .ok_or("no \"models\" list")?;
            for m in models {
                push(m.get("name").and_then(|n| n.as_str()));
                push(m.get("model").and_then(|n| n.as_str()));
            }
        }
        BackendKind::LmStudio => {
            // v0: {"data":[{"id","state":"loaded"}]}; v1: {"models":[{"key","loaded_instances":[…]}]}.
            if let Some(data) = v.get("data").and_then(|d| d.as_array()) {
                for m in data {
                    if m.get("state").and_then(|s| s.as_str()) == Some("loaded") {
                        push(m.get("id").and_then(|n| n.as_str()));
                    }
                }
            } else if let Some(models) = v.get("models").and_then(|d| d.as_array()) {
                for m in models {
                    let loaded = m
                        .get("loaded_instances")
                        .and_then(|l| l.as_array())
                        .is_some_and(|l| !l.is_empty());
                    if loaded {
                        push(m.get("key").and_then(|n| n.as_str()));
                    }
                }
            } else {
                return Err("no \"data\" or \"models\" list".into());
            }
        }
        BackendKind::LlamaCpp => {
            // Router mode lists models with a status; a single-model server has no status.
            let data = v
                .get("data")
                .and_then(|d| d.as_array())
                .ok_or("no \"data\" list")?;
            let routed = data.iter().any(|m| m.get("status").is_some());
            if !routed {
                return Ok(Loaded::Always);
            }
            for m in data {
                let status = m.get("status").and_then(|s| {
                    s.as_str()
                        .or_else(|| s.get("value").and_then(|v| v.as_str()))
                });
                if status == Some("loaded") {
                    push(m.get("id").and_then(|n| n.as_str()));
                }
            }
        }
        _ => return Ok(Loaded::Always),
    }
    Ok(Loaded::Models(out.into()))
}

/// Whether the least-loaded warm backend (in-flight `warm`) still beats the least-loaded cold
/// one (in-flight `cold`, `None` = no cold backend with a free slot).
pub fn warm_wins(settings: &WarmSettings, warm: usize, cold: Option<usize>) -> bool {
    match cold {
        None => true,
        Some(c) => warm as f64 <= settings.max_wait_ratio.max(0.0) * (c as f64 + 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_ps() {
        let l = parse_loaded(
            BackendKind::Ollama,
            br#"{"models":[{"name":"llama3:latest","model":"llama3:latest","size":1}]}"#,
        )
        .unwrap();
        assert_eq!(l.has("llama3"), Some(true));
        assert_eq!(l.has("LLAMA3:latest"), Some(true));
        assert_eq!(l.has("qwen"), Some(false));
        let empty = parse_loaded(BackendKind::Ollama, br#"{"models":[]}"#).unwrap();
        assert_eq!(empty.has("llama3"), Some(false));
        assert!(parse_loaded(BackendKind::Ollama, b"{}").is_err());
        assert!(parse_loaded(BackendKind::Ollama, b"<html>").is_err());
    }

    #[test]
    fn lm_studio_both_apis() {
        let v0 = br#"{"data":[{"id":"a","state":"loaded"},{"id":"b","state":"not-loaded"}]}"#;
        let l = parse_loaded(BackendKind::LmStudio, v0).unwrap();
        assert_eq!((l.has("a"), l.has("b")), (Some(true), Some(false)));
        let v1 = br#"{"models":[{"key":"a","loaded_instances":[{"id":"a"}]},{"key":"b","loaded_instances":[]}]}"#;
        let l = parse_loaded(BackendKind::LmStudio, v1).unwrap();
        assert_eq!((l.has("a"), l.has("b")), (Some(true), Some(false)));
    }

    #[test]
    fn llamacpp_router_and_single() {
        let single = br#"{"object":"list","data":[{"id":"m.gguf"}]}"#;
        assert_eq!(
            parse_loaded(BackendKind::LlamaCpp, single).unwrap(),
            Loaded::Always
        );
        let router = br#"{"data":[{"id":"a","status":{"value":"loaded"}},{"id":"b","status":{"value":"unloaded"}}]}"#;
        let l = parse_loaded(BackendKind::LlamaCpp, router).unwrap();
        assert_eq!((l.has("a"), l.has("b")), (Some(true), Some(false)));
        assert_eq!(
            parse_loaded(BackendKind::Vllm, b"{}").unwrap(),
            Loaded::Always
        );
    }

    #[test]
    fn hostile_lists_are_bounded() {
        let many: Vec<String> = (0..1000).map(|i| format!(r#"{{"name":"m{i}"}}"#)).collect();
        let body = format!(r#"{{"models":[{}]}}"#, many.join(","));
        let l = parse_loaded(BackendKind::Ollama, body.as_bytes()).unwrap();
        assert_eq!(l.names().unwrap().len(), MAX_LOADED);
    }

    #[test]
    fn residency_is_not_occupancy() {
        let s = WarmSettings::default();
        assert!(warm_wins(&s, 4, Some(0)));
        assert!(
            !warm_wins(&s, 5, Some(0)),
            "an idle cold backend takes the overflow"
        );
        assert!(warm_wins(&s, 50, None));
        let strict = WarmSettings {
            max_wait_ratio: 0.0,
            ..s
        };
        assert!(warm_wins(&strict, 0, Some(3)));
        assert!(!warm_wins(&strict, 1, Some(3)));
    }
}
