//! Backend types and their profiles: the health path, model-list path, route prefixes and
//! OpenAI compatibility of each engine olla can front. Pure data; no I/O.

use std::fmt;

/// The engine behind a backend. `Auto` is resolved to a concrete kind by probing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    Ollama,
    LmStudio,
    LlamaCpp,
    Vllm,
    VllmMlx,
    Sglang,
    Lemonade,
    LiteLlm,
    LmDeploy,
    DockerModelRunner,
    Omlx,
    OpenAiCompatible,
    Auto,
}

/// What olla knows about one engine's API.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    /// Default health path, relative to the backend URL.
    pub health_path: &'static str,
    /// Default model-list path, relative to the backend URL.
    pub models_path: &'static str,
    /// Provider route prefixes (`/olla/<prefix>/...`) that reach this kind.
    pub prefixes: &'static [&'static str],
    /// Whether the engine speaks the OpenAI API (`/v1/...`).
    pub openai_compatible: bool,
}

/// Every concrete kind, in the order `type: auto` probes them.
pub const AUTO_DETECT_ORDER: &[BackendKind] = &[
    BackendKind::Ollama,
    BackendKind::LlamaCpp,
    BackendKind::LmStudio,
    BackendKind::Vllm,
    BackendKind::Omlx,
    BackendKind::OpenAiCompatible,
];

/// All kinds a config may name (aliases included in [`BackendKind::parse`]).
pub const ALL_KINDS: &[BackendKind] = &[
    BackendKind::Ollama,
    BackendKind::LmStudio,
    BackendKind::LlamaCpp,
    BackendKind::Vllm,
    BackendKind::VllmMlx,
    BackendKind::Sglang,
    BackendKind::Lemonade,
    BackendKind::LiteLlm,
    BackendKind::LmDeploy,
    BackendKind::DockerModelRunner,
    BackendKind::Omlx,
    BackendKind::OpenAiCompatible,
    BackendKind::Auto,
];

impl BackendKind {
    /// Parses a config `type` value (Olla's names and aliases).
    pub fn parse(s: &str) -> Option<Self> {
        let k = match s.trim().to_ascii_lowercase().as_str() {
            "ollama" => Self::Ollama,
            "lm-studio" | "lmstudio" | "lm_studio" => Self::LmStudio,
            "llamacpp" | "llama.cpp" | "llama-cpp" | "llama_cpp" => Self::LlamaCpp,
            "vllm" => Self::Vllm,
            "vllm-mlx" | "vllm_mlx" => Self::VllmMlx,
            "sglang" => Self::Sglang,
            "lemonade" => Self::Lemonade,
            "litellm" => Self::LiteLlm,
            "lmdeploy" => Self::LmDeploy,
            "docker-model-runner" | "dmr" => Self::DockerModelRunner,
            "omlx" => Self::Omlx,
            "openai-compatible" | "openai" | "openai_compatible" => Self::OpenAiCompatible,
            "auto" => Self::Auto,
            _ => return None,
        };
        Some(k)
    }

    /// The canonical name, as Olla reports it (`X-Olla-Backend-Type`, status endpoints).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ollama => "ollama",
            Self::LmStudio => "lm-studio",
            Self::LlamaCpp => "llamacpp",
            Self::Vllm => "vllm",
            Self::VllmMlx => "vllm-mlx",
            Self::Sglang => "sglang",
            Self::Lemonade => "lemonade",
            Self::LiteLlm => "litellm",
            Self::LmDeploy => "lmdeploy",
            Self::DockerModelRunner => "docker-model-runner",
            Self::Omlx => "omlx",
            Self::OpenAiCompatible => "openai-compatible",
            Self::Auto => "auto",
        }
    }

    /// The profile of this kind. `Auto` uses the OpenAI-compatible profile until resolved.
    pub fn profile(self) -> Profile {
        const fn p(
            health_path: &'static str,
            models_path: &'static str,
            prefixes: &'static [&'static str],
            openai_compatible: bool,
        ) -> Profile {
            Profile {
                health_path,
                models_path,
                prefixes,
                openai_compatible,
            }
        }
        match self {
            Self::Ollama => p("/", "/api/tags", &["ollama"], true),
            Self::LmStudio => p(
                "/v1/models",
                "/api/v0/models",
                &["lmstudio", "lm-studio", "lm_studio"],
                true,
            ),
            Self::LlamaCpp => p("/health", "/v1/models", &["llamacpp"], true),
            Self::Vllm => p("/health", "/v1/models", &["vllm"], true),
            Self::VllmMlx => p("/health", "/v1/models", &["vllm-mlx"], true),
            Self::Sglang => p("/health", "/v1/models", &["sglang"], true),
            Self::Lemonade => p("/api/v1/health", "/api/v1/models", &["lemonade"], true),
            Self::LiteLlm => p("/health/liveliness", "/v1/models", &["litellm"], true),
            Self::LmDeploy => p("/health", "/v1/models", &["lmdeploy"], true),
            Self::DockerModelRunner => {
                p("/engines/v1/models", "/engines/v1/models", &["dmr"], true)
            }
            Self::Omlx => p("/health", "/v1/models", &["omlx"], true),
            Self::OpenAiCompatible | Self::Auto => p(
                "/v1/models",
                "/v1/models",
                &["openai", "openai-compatible"],
                true,
            ),
        }
    }

    /// The kind a provider route prefix selects (`/olla/<prefix>/...`), if any.
    pub fn from_prefix(prefix: &str) -> Option<Self> {
        ALL_KINDS
            .iter()
            .copied()
            .find(|k| *k != Self::Auto && k.profile().prefixes.contains(&prefix))
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_olla_names_and_aliases() {
        assert_eq!(BackendKind::parse("lm-studio"), Some(BackendKind::LmStudio));
        assert_eq!(
            BackendKind::parse("openai"),
            Some(BackendKind::OpenAiCompatible)
        );
        assert_eq!(BackendKind::parse("LLAMACPP"), Some(BackendKind::LlamaCpp));
        assert_eq!(BackendKind::parse("nope"), None);
    }

    #[test]
    fn every_kind_round_trips_through_its_name() {
        for k in ALL_KINDS {
            assert_eq!(BackendKind::parse(k.as_str()), Some(*k));
        }
    }

    #[test]
    fn prefixes_map_to_kinds() {
        assert_eq!(
            BackendKind::from_prefix("lm_studio"),
            Some(BackendKind::LmStudio)
        );
        assert_eq!(
            BackendKind::from_prefix("openai"),
            Some(BackendKind::OpenAiCompatible)
        );
        assert_eq!(
            BackendKind::from_prefix("ollama"),
            Some(BackendKind::Ollama)
        );
        assert_eq!(BackendKind::from_prefix("x"), None);
    }
}
