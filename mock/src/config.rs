//! The mock's run-time configuration: [`MockConfig`] and the [`Fault`] modes.
//!
//! Owns the serde shapes (also used by `GET/POST /_mock/config`), the partial JSON merge
//! used by the control route, and the short textual fault syntax of the CLI
//! (`error:500`, `hang`, `drop:3`, `malformed`, `none`). It does not know about HTTP or
//! about how the faults are carried out (that lives in `routes.rs` and `body.rs`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Everything a running mock can be told to do. Every field has a default, so partial
/// JSON (`{"tokens": 3}`) deserializes and `POST /_mock/config` can merge single keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MockConfig {
    /// Backend name, sent as `X-Mock-Name` on every response and as `owned_by` /
    /// `system_fingerprint` in bodies.
    pub name: String,
    /// Model ids served; the first one is used when a request names no model.
    pub models: Vec<String>,
    /// Tokens per completion (capped by the request's `max_tokens` / `num_predict`).
    pub tokens: usize,
    /// Delay before the first byte (headers included) of a generation response.
    pub ttft_ms: u64,
    /// Delay between two streamed tokens.
    pub token_delay_ms: u64,
    /// Fault applied to generation routes (chat, completions, embeddings, generate, messages).
    pub fault: Fault,
    /// Status of the health routes (`/health`, `/`, `/api/version`, `/ping`).
    pub health_status: u16,
    /// Delay of the health routes.
    pub health_delay_ms: u64,
    /// `Retry-After` value sent with fault error statuses and with a health 429.
    pub retry_after: Option<String>,
    /// Fault applied only to the model-list routes (`/v1/models`, `/api/tags`, `/api/v0/models`).
    pub models_fault: Fault,
    /// Models reported loaded (Ollama `/api/ps`, LM Studio `state`); `None` = every served
    /// model.
    pub loaded: Option<Vec<String>>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            name: "olla-mock".to_owned(),
            models: vec!["mock-model".to_owned()],
            tokens: 8,
            ttft_ms: 0,
            token_delay_ms: 0,
            fault: Fault::None,
            health_status: 200,
            health_delay_ms: 0,
            retry_after: None,
            models_fault: Fault::None,
            loaded: None,
        }
    }
}

impl MockConfig {
    /// The models reported loaded now.
    pub fn loaded_models(&self) -> &[String] {
        self.loaded.as_deref().unwrap_or(&self.models)
    }

    /// Applies a partial JSON object on top of `self`: only the keys present change.
    /// Unknown keys are rejected so a typo does not silently do nothing.
    pub fn merged(&self, patch: &[u8]) -> Result<MockConfig, String> {
        let patch: serde_json::Value =
            serde_json::from_slice(patch).map_err(|e| format!("invalid JSON: {e}"))?;
        let serde_json::Value::Object(patch) = patch else {
            return Err("expected a JSON object".to_owned());
        };
        let mut current = serde_json::to_value(self).map_err(|e| e.to_string())?;
        let serde_json::Value::Object(fields) = &mut current else {
            return Err("config did not serialize to an object".to_owned());
        };
        for (key, value) in patch {
            if !fields.contains_key(&key) {
                return Err(format!("unknown config key '{key}'"));
            }
            fields.insert(key, value);
        }
        serde_json::from_value(current).map_err(|e| format!("invalid config: {e}"))
    }
}

/// A fault mode. Serialized as `{"mode":"error","status":500}`, `{"mode":"hang"}`,
/// `{"mode":"drop_mid_stream","after_tokens":3}`, `{"mode":"malformed_json"}`,
/// `{"mode":"none"}`; deserialization also accepts the short CLI strings (`"error:503"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", try_from = "FaultRepr")]
pub enum Fault {
    /// Behave normally.
    #[default]
    None,
    /// Answer with this status and a JSON error body.
    Error {
        /// HTTP status to send.
        status: u16,
    },
    /// Never answer; the handler is dropped (and counted cancelled) when the client leaves.
    Hang,
    /// Send headers and `after_tokens` tokens, then abort the connection.
    DropMidStream {
        /// Tokens sent before the abort.
        after_tokens: usize,
    },
    /// Answer 200 with a body that is not valid JSON.
    MalformedJson,
}

/// Deserialization helper: either the tagged object or the short string form.
#[derive(Deserialize)]
#[serde(untagged)]
enum FaultRepr {
    Short(String),
    Tagged(TaggedFault),
}

#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
enum TaggedFault {
    None,
    Error {
        #[serde(default = "default_error_status")]
        status: u16,
    },
    Hang,
    DropMidStream {
        #[serde(default)]
        after_tokens: usize,
    },
    MalformedJson,
}

fn default_error_status() -> u16 {
    500
}

impl TryFrom<FaultRepr> for Fault {
    type Error = String;

    fn try_from(repr: FaultRepr) -> Result<Self, String> {
        Ok(match repr {
            FaultRepr::Short(s) => s.parse()?,
            FaultRepr::Tagged(TaggedFault::None) => Fault::None,
            FaultRepr::Tagged(TaggedFault::Error { status }) => Fault::Error { status },
            FaultRepr::Tagged(TaggedFault::Hang) => Fault::Hang,
            FaultRepr::Tagged(TaggedFault::DropMidStream { after_tokens }) => {
                Fault::DropMidStream { after_tokens }
            }
            FaultRepr::Tagged(TaggedFault::MalformedJson) => Fault::MalformedJson,
        })
    }
}

impl FromStr for Fault {
    type Err = String;

    /// `none`, `error[:STATUS]`, `hang`, `drop[:AFTER_TOKENS]`, `malformed`
    /// (long names `drop_mid_stream` and `malformed_json` also work).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (mode, arg) = match s.split_once(':') {
            Some((m, a)) => (m.trim(), Some(a.trim())),
            None => (s, None),
        };
        let number = |what: &str| -> Result<Option<u64>, String> {
            arg.map(|a| {
                a.parse::<u64>()
                    .map_err(|_| format!("fault '{s}': {what} must be a number"))
            })
            .transpose()
        };
        match mode.to_ascii_lowercase().as_str() {
            "none" | "" => Ok(Fault::None),
            "error" => {
                let status = number("status")?.unwrap_or(500);
                let status = u16::try_from(status)
                    .ok()
                    .filter(|s| (100..=999).contains(s))
                    .ok_or_else(|| format!("fault '{s}': status out of range"))?;
                Ok(Fault::Error { status })
            }
            "hang" => Ok(Fault::Hang),
            "drop" | "drop_mid_stream" => {
                let after = number("token count")?.unwrap_or(0);
                let after_tokens = usize::try_from(after)
                    .map_err(|_| format!("fault '{s}': token count too large"))?;
                Ok(Fault::DropMidStream { after_tokens })
            }
            "malformed" | "malformed_json" => Ok(Fault::MalformedJson),
            other => Err(format!(
                "unknown fault '{other}' (expected none, error:STATUS, hang, drop:N, malformed)"
            )),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::None => f.write_str("none"),
            Fault::Error { status } => write!(f, "error:{status}"),
            Fault::Hang => f.write_str("hang"),
            Fault::DropMidStream { after_tokens } => write!(f, "drop:{after_tokens}"),
            Fault::MalformedJson => f.write_str("malformed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = MockConfig::default();
        assert_eq!(c.name, "olla-mock");
        assert_eq!(c.models, vec!["mock-model".to_owned()]);
        assert_eq!(c.tokens, 8);
        assert_eq!(c.health_status, 200);
        assert_eq!(c.fault, Fault::None);
        let parsed: MockConfig = serde_json::from_str("{}").expect("empty object");
        assert_eq!(parsed, c);
    }

    #[test]
    fn fault_serde_shape() {
        let json = serde_json::to_string(&Fault::Error { status: 503 }).expect("ser");
        assert_eq!(json, r#"{"mode":"error","status":503}"#);
        let json = serde_json::to_string(&Fault::DropMidStream { after_tokens: 2 }).expect("ser");
        assert_eq!(json, r#"{"mode":"drop_mid_stream","after_tokens":2}"#);
        assert_eq!(
            serde_json::to_string(&Fault::MalformedJson).expect("ser"),
            r#"{"mode":"malformed_json"}"#
        );
        for f in [
            Fault::None,
            Fault::Hang,
            Fault::MalformedJson,
            Fault::Error { status: 429 },
            Fault::DropMidStream { after_tokens: 5 },
        ] {
            let back: Fault =
                serde_json::from_str(&serde_json::to_string(&f).expect("ser")).expect("de");
            assert_eq!(back, f);
        }
    }

    #[test]
    fn fault_short_strings() {
        assert_eq!("error:503".parse(), Ok(Fault::Error { status: 503 }));
        assert_eq!("error".parse(), Ok(Fault::Error { status: 500 }));
        assert_eq!("hang".parse(), Ok(Fault::Hang));
        assert_eq!(
            "drop:3".parse(),
            Ok(Fault::DropMidStream { after_tokens: 3 })
        );
        assert_eq!("malformed".parse(), Ok(Fault::MalformedJson));
        assert_eq!("none".parse(), Ok(Fault::None));
        assert!("error:abc".parse::<Fault>().is_err());
        assert!("error:70000".parse::<Fault>().is_err());
        assert!("explode".parse::<Fault>().is_err());
        let f: Fault = serde_json::from_str(r#""drop:1""#).expect("short form in JSON");
        assert_eq!(f, Fault::DropMidStream { after_tokens: 1 });
        for f in [Fault::Hang, Fault::Error { status: 502 }] {
            assert_eq!(f.to_string().parse(), Ok(f));
        }
    }

    #[test]
    fn merge_changes_only_given_keys() {
        let base = MockConfig::default();
        let merged = base
            .merged(br#"{"tokens": 3, "fault": {"mode": "hang"}}"#)
            .expect("merge");
        assert_eq!(merged.tokens, 3);
        assert_eq!(merged.fault, Fault::Hang);
        assert_eq!(merged.name, base.name);
        assert_eq!(merged.models, base.models);
        assert!(base.merged(br#"{"tokenz": 3}"#).is_err());
        assert!(base.merged(b"[1]").is_err());
        assert!(base.merged(b"{").is_err());
        assert!(base.merged(br#"{"tokens": "many"}"#).is_err());
    }
}
