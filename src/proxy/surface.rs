//! Which paths may be forwarded, decided on the rule key of a normalised path
//! ([`super::path::rule_key`]: case-folded, `;params` and trailing `/` removed), so spelling
//! tricks cannot dodge a rule:
//!
//! - [`ollama_refusal`]: Ollama's model-management API (pull, push, create, copy, delete,
//!   blobs) is answered 501 on every route that can reach an Ollama backend; `api/show` and
//!   `api/list` are answered 501 on the Ollama prefix, as Olla does.
//! - [`api_surface`]: the paths of a backend type's public API (inference, embeddings,
//!   tokenize, model listing, health, the native routes Olla documents). An endpoint that has
//!   `auth` receives only these and its `allowed_paths`, so its credentials are never attached
//!   to an admin path a client names ([`auth_allows`]).
//!
//! Pure tables and matching; no I/O.

use olla_actors::kind::BackendKind;
use olla_actors::spec::glob_match;

/// Olla's answer to model management through the proxy.
pub const MANAGEMENT_MESSAGE: &str = "model management operations not supported by proxy";
const SHOW_MESSAGE: &str = "model show not supported in multi-instance proxy";
const LIST_MESSAGE: &str = "running models list not supported in multi-instance proxy";

/// The 501 message for a path that must not reach an Ollama backend, if `key` is one.
/// `ollama_prefix` is true on `/olla/ollama/...`, where `api/show` and `api/list` are refused too.
pub fn ollama_refusal(key: &str, ollama_prefix: bool) -> Option<&'static str> {
    match key {
        "/api/pull" | "/api/push" | "/api/create" | "/api/copy" | "/api/delete" | "/api/blobs" => {
            Some(MANAGEMENT_MESSAGE)
        }
        k if k.starts_with("/api/blobs/") => Some(MANAGEMENT_MESSAGE),
        "/api/show" if ollama_prefix => Some(SHOW_MESSAGE),
        "/api/list" if ollama_prefix => Some(LIST_MESSAGE),
        _ => None,
    }
}

/// The OpenAI-style API every OpenAI-compatible type serves (with and without `/v1`).
const OPENAI: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/*",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/rerank",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/audio/speech",
    "/v1/images/generations",
    "/v1/moderations",
];

const OLLAMA: &[&str] = &[
    "/",
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/api/tags",
    "/api/ps",
    "/api/version",
];

const LM_STUDIO: &[&str] = &[
    "/api/v0/models",
    "/api/v0/models/*",
    "/api/v0/chat/completions",
    "/api/v0/completions",
    "/api/v0/embeddings",
    "/api/v1/models",
];

const LLAMA_CPP: &[&str] = &[
    "/health",
    "/completion",
    "/completions",
    "/chat/completions",
    "/embedding",
    "/embeddings",
    "/tokenize",
    "/detokenize",
    "/infill",
    "/rerank",
    "/reranking",
    "/apply-template",
    "/props",
    "/models",
];

/// vLLM, vLLM-MLX, SGLang, LMDeploy, oMLX.
const VLLM_LIKE: &[&str] = &[
    "/health",
    "/version",
    "/tokenize",
    "/detokenize",
    "/v1/tokenize",
    "/v1/detokenize",
    "/rerank",
    "/v2/rerank",
    "/pooling",
    "/score",
    "/v1/score",
    "/classify",
    "/generate",
    "/get_model_info",
    "/health_generate",
];

const LEMONADE: &[&str] = &[
    "/api/v1/health",
    "/api/v1/models",
    "/api/v1/chat/completions",
    "/api/v1/completions",
    "/api/v1/embeddings",
    "/api/v1/responses",
    "/api/v1/reranking",
];

const LITELLM: &[&str] = &[
    "/",
    "/health",
    "/health/liveliness",
    "/health/liveness",
    "/health/readiness",
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/models",
];

const DMR: &[&str] = &["/engines/v1/*", "/engines/*/v1/*"];

/// The paths of a backend type's public API (rule keys; `*` matches any run of characters).
pub fn api_surface(kind: BackendKind) -> [&'static [&'static str]; 2] {
    let native: &'static [&'static str] = match kind {
        BackendKind::Ollama => OLLAMA,
        BackendKind::LmStudio => LM_STUDIO,
        BackendKind::LlamaCpp => LLAMA_CPP,
        BackendKind::Vllm
        | BackendKind::VllmMlx
        | BackendKind::Sglang
        | BackendKind::LmDeploy
        | BackendKind::Omlx => VLLM_LIKE,
        BackendKind::Lemonade => LEMONADE,
        BackendKind::LiteLlm => LITELLM,
        BackendKind::DockerModelRunner => DMR,
        BackendKind::OpenAiCompatible | BackendKind::Auto => &[],
    };
    [OPENAI, native]
}

/// Whether a configured `allowed_paths` entry covers `key`: a glob (`*`, `?`) matches the whole
/// key; a plain entry is a prefix that ends at a segment boundary (`/v1/files` covers
/// `/v1/files` and `/v1/files/abc`, not `/v1/filesystem`).
pub fn allowed_entry_matches(entry: &str, key: &str) -> bool {
    if entry.contains(['*', '?']) {
        return glob_match(entry, key);
    }
    let entry = entry.trim_end_matches('/');
    if entry.is_empty() {
        return true;
    }
    key.len() >= entry.len()
        && key.as_bytes()[..entry.len()].eq_ignore_ascii_case(entry.as_bytes())
        && matches!(key.as_bytes().get(entry.len()), None | Some(b'/'))
}

/// Whether an endpoint with `auth` may receive the path with rule key `key`: it is part of its
/// type's API or covered by its `allowed_paths`.
pub fn auth_allows(kind: BackendKind, extra: &[String], key: &str) -> bool {
    api_surface(kind)
        .iter()
        .flat_map(|list| list.iter())
        .any(|p| glob_match(p, key))
        || extra.iter().any(|e| allowed_entry_matches(e, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_is_refused_and_show_only_on_the_ollama_prefix() {
        for k in [
            "/api/pull",
            "/api/push",
            "/api/create",
            "/api/copy",
            "/api/delete",
            "/api/blobs",
            "/api/blobs/sha256:abc",
        ] {
            assert_eq!(ollama_refusal(k, false), Some(MANAGEMENT_MESSAGE), "{k}");
        }
        assert_eq!(ollama_refusal("/api/show", true), Some(SHOW_MESSAGE));
        assert_eq!(ollama_refusal("/api/list", true), Some(LIST_MESSAGE));
        assert_eq!(ollama_refusal("/api/show", false), None);
        assert_eq!(ollama_refusal("/api/chat", true), None);
        assert_eq!(ollama_refusal("/api/pulls", false), None);
    }

    #[test]
    fn auth_endpoints_get_their_api_and_allowed_paths_only() {
        let none: Vec<String> = Vec::new();
        assert!(auth_allows(
            BackendKind::LiteLlm,
            &none,
            "/v1/chat/completions"
        ));
        assert!(auth_allows(
            BackendKind::LiteLlm,
            &none,
            "/health/liveliness"
        ));
        assert!(!auth_allows(BackendKind::LiteLlm, &none, "/key/generate"));
        assert!(!auth_allows(
            BackendKind::OpenAiCompatible,
            &none,
            "/v1/files"
        ));
        assert!(auth_allows(BackendKind::Ollama, &none, "/api/chat"));
        assert!(!auth_allows(BackendKind::Vllm, &none, "/api/chat"));
        assert!(auth_allows(BackendKind::Vllm, &none, "/tokenize"));
        assert!(auth_allows(
            BackendKind::DockerModelRunner,
            &none,
            "/engines/llama.cpp/v1/chat/completions"
        ));
        let extra = vec!["/v1/files".to_string(), "/key/*/info".to_string()];
        assert!(auth_allows(
            BackendKind::OpenAiCompatible,
            &extra,
            "/v1/files"
        ));
        assert!(auth_allows(
            BackendKind::OpenAiCompatible,
            &extra,
            "/v1/files/f1"
        ));
        assert!(!auth_allows(
            BackendKind::OpenAiCompatible,
            &extra,
            "/v1/filesystem"
        ));
        assert!(auth_allows(BackendKind::LiteLlm, &extra, "/key/abc/info"));
        assert!(!auth_allows(BackendKind::LiteLlm, &extra, "/key/generate"));
    }
}
