//! The unified model catalog: a pure, immutable value built from every backend's discovered
//! list. Models are merged across backends by digest when known, else by case-insensitive name
//! (unless their digests conflict); each backend's native name is kept as an alias, and
//! availability is recorded per endpoint. Config `model_aliases` map one name to several real
//! names. The RegistryActor rebuilds it on each change and publishes it as a snapshot.
//!
//! Building is O(total entries): every membership test (alias already known, endpoint already
//! listed, capability already merged) is a hash lookup, never a scan of a list a backend can
//! make long. Keep it that way: the lists come from backends and are hostile until bounded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;

use crate::discovery::DiscoveredModel;
use crate::kind::BackendKind;

/// One backend's last good model list.
#[derive(Clone, Debug)]
pub struct BackendModels {
    pub kind: BackendKind,
    pub models: Vec<DiscoveredModel>,
    pub updated_at: SystemTime,
}

/// Where a unified model can be served, under which name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Availability {
    pub backend: String,
    pub kind: BackendKind,
    pub native_name: String,
}

/// A model as clients see it.
#[derive(Clone, Debug)]
pub struct UnifiedModel {
    /// The first backend's own name for it.
    pub id: String,
    /// Every native name (including `id`), deduplicated.
    pub aliases: Vec<String>,
    pub availability: Vec<Availability>,
    /// Merged metadata (first non-empty value wins).
    pub meta: DiscoveredModel,
    pub last_seen: SystemTime,
}

/// The whole catalog.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub backends: BTreeMap<String, BackendModels>,
    pub models: Vec<UnifiedModel>,
    /// Lower-cased id and aliases → index in `models`.
    index: HashMap<String, usize>,
    /// Config `model_aliases`: lower-cased alias → real names.
    pub aliases: HashMap<String, Vec<String>>,
}

impl Catalog {
    /// Unifies the backends' lists.
    pub fn build(
        backends: BTreeMap<String, BackendModels>,
        aliases: HashMap<String, Vec<String>>,
    ) -> Self {
        let mut models: Vec<UnifiedModel> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut by_digest: HashMap<String, usize> = HashMap::new();
        // Membership of each unified model's aliases (ASCII-lowercased), endpoints and
        // capabilities, so merging never scans those lists.
        let mut alias_seen: HashSet<(usize, String)> = HashSet::new();
        let mut avail_seen: HashSet<(usize, &str, &str)> = HashSet::new();
        let mut caps_seen: HashSet<(usize, String)> = HashSet::new();
        for (backend, list) in &backends {
            for m in &list.models {
                let digest = m.digest.as_deref().map(normalize_digest);
                let lname = m.name.to_lowercase();
                let existing = digest
                    .as_ref()
                    .and_then(|d| by_digest.get(d).copied())
                    .or_else(|| {
                        by_name.get(&lname).copied().filter(|&i| {
                            // Same name but a different known digest: a different model.
                            match (
                                &digest,
                                models[i].meta.digest.as_deref().map(normalize_digest),
                            ) {
                                (Some(a), Some(b)) => *a == b,
                                _ => true,
                            }
                        })
                    });
                let avail = Availability {
                    backend: backend.clone(),
                    kind: list.kind,
                    native_name: m.name.clone(),
                };
                let idx = match existing {
                    Some(i) => {
                        let u = &mut models[i];
                        if alias_seen.insert((i, m.name.to_ascii_lowercase())) {
                            u.aliases.push(m.name.clone());
                        }
                        if avail_seen.insert((i, backend.as_str(), m.name.as_str())) {
                            u.availability.push(avail);
                        }
                        merge_meta(&mut u.meta, m, |c| caps_seen.insert((i, c.to_string())));
                        u.last_seen = u.last_seen.max(list.updated_at);
                        i
                    }
                    None => {
                        let i = models.len();
                        alias_seen.insert((i, m.name.to_ascii_lowercase()));
                        avail_seen.insert((i, backend.as_str(), m.name.as_str()));
                        let mut meta = m.clone();
                        meta.capabilities.clear();
                        for c in &m.capabilities {
                            if meta.capabilities.len() < MAX_MERGED_CAPABILITIES
                                && caps_seen.insert((i, c.clone()))
                            {
                                meta.capabilities.push(c.clone());
                            }
                        }
                        models.push(UnifiedModel {
                            id: m.name.clone(),
                            aliases: vec![m.name.clone()],
                            availability: vec![avail],
                            meta,
                            last_seen: list.updated_at,
                        });
                        i
                    }
                };
                by_name.entry(lname).or_insert(idx);
                if let Some(d) = digest {
                    by_digest.entry(d).or_insert(idx);
                }
            }
        }
        let mut index = HashMap::new();
        for (i, m) in models.iter().enumerate() {
            for a in &m.aliases {
                index.entry(a.to_lowercase()).or_insert(i);
            }
        }
        let aliases = aliases
            .into_iter()
            .map(|(k, v)| (k.to_lowercase(), v))
            .collect();
        Self {
            backends,
            models,
            index,
            aliases,
        }
    }

    /// The unified model for a name or alias (case-insensitive).
    pub fn lookup(&self, name: &str) -> Option<&UnifiedModel> {
        self.index
            .get(&name.to_lowercase())
            .and_then(|&i| self.models.get(i))
    }

    /// Every `(backend, native name)` that can serve a requested model, config aliases
    /// included. Empty when nobody has it.
    pub fn resolve(&self, requested: &str) -> Vec<&Availability> {
        let mut names: Vec<&str> = vec![requested];
        if let Some(real) = self.aliases.get(&requested.to_lowercase()) {
            names.extend(real.iter().map(String::as_str));
        }
        let mut out: Vec<&Availability> = Vec::new();
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for m in names.into_iter().filter_map(|n| self.lookup(n)) {
            for a in &m.availability {
                if seen.insert(a.backend.as_str()) {
                    out.push(a);
                }
            }
        }
        out
    }

    /// Whether a name is a configured alias.
    pub fn is_alias(&self, name: &str) -> bool {
        self.aliases.contains_key(&name.to_lowercase())
    }

    /// Models known for one backend.
    pub fn models_of(&self, backend: &str) -> usize {
        self.backends.get(backend).map_or(0, |b| b.models.len())
    }
}

fn normalize_digest(d: &str) -> String {
    d.trim_start_matches("sha256:").to_lowercase()
}

/// Most capabilities a unified model keeps (merging many entries cannot grow it further).
const MAX_MERGED_CAPABILITIES: usize = 64;

/// Fills `into`'s missing metadata from `from`; `new_cap` says whether a capability is new to
/// `into` (a set lookup, so merging stays linear).
fn merge_meta(
    into: &mut DiscoveredModel,
    from: &DiscoveredModel,
    mut new_cap: impl FnMut(&str) -> bool,
) {
    fn fill<T: Clone>(a: &mut Option<T>, b: &Option<T>) {
        if a.is_none() {
            a.clone_from(b);
        }
    }
    fill(&mut into.digest, &from.digest);
    fill(&mut into.family, &from.family);
    fill(&mut into.parameter_size, &from.parameter_size);
    fill(&mut into.quantization, &from.quantization);
    fill(&mut into.context_length, &from.context_length);
    fill(&mut into.size, &from.size);
    for c in &from.capabilities {
        if into.capabilities.len() >= MAX_MERGED_CAPABILITIES {
            break;
        }
        if new_cap(c) {
            into.capabilities.push(c.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(kind: BackendKind, models: &[(&str, Option<&str>)]) -> BackendModels {
        BackendModels {
            kind,
            models: models
                .iter()
                .map(|(n, d)| DiscoveredModel {
                    name: n.to_string(),
                    digest: d.map(str::to_string),
                    ..Default::default()
                })
                .collect(),
            updated_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn merges_by_name_case_insensitively_and_by_digest() {
        let mut b = BTreeMap::new();
        b.insert(
            "a".into(),
            list(
                BackendKind::Ollama,
                &[("Llama3:8b", Some("sha256:abc")), ("only-a", None)],
            ),
        );
        b.insert(
            "b".into(),
            list(
                BackendKind::LmStudio,
                &[("llama3:8B", None), ("other-name", Some("abc"))],
            ),
        );
        let c = Catalog::build(b, HashMap::new());
        let m = c.lookup("LLAMA3:8b").unwrap();
        assert_eq!(m.id, "Llama3:8b");
        let mut backends: Vec<&str> = m.availability.iter().map(|a| a.backend.as_str()).collect();
        backends.dedup();
        assert_eq!(backends, vec!["a", "b"]);
        assert!(
            c.lookup("other-name").is_some_and(|o| o.id == "Llama3:8b"),
            "digest merge"
        );
        assert_eq!(c.resolve("only-a").len(), 1);
        assert!(c.resolve("missing").is_empty());
    }

    #[test]
    fn one_digest_shared_by_many_entries_merges_with_bounded_capabilities() {
        // The shape that made merging quadratic: every entry lands on one unified model.
        let n = 3_000;
        let mut b = BTreeMap::new();
        for backend in ["a", "b"] {
            let mut l = list(BackendKind::Ollama, &[]);
            l.models = (0..n)
                .map(|i| DiscoveredModel {
                    name: format!("M-{i}"),
                    digest: Some("sha256:same".into()),
                    capabilities: vec![format!("cap-{i}"), "completion".into()],
                    ..Default::default()
                })
                .collect();
            b.insert(backend.to_string(), l);
        }
        let c = Catalog::build(b, HashMap::new());
        assert_eq!(c.models.len(), 1);
        let m = &c.models[0];
        assert_eq!(m.aliases.len(), n, "case-insensitive duplicates merged");
        assert_eq!(m.availability.len(), 2 * n);
        assert_eq!(m.meta.capabilities.len(), MAX_MERGED_CAPABILITIES);
        assert!(c.lookup("m-2999").is_some());
    }

    #[test]
    fn conflicting_digests_stay_apart() {
        let mut b = BTreeMap::new();
        b.insert("a".into(), list(BackendKind::Ollama, &[("m", Some("111"))]));
        b.insert("b".into(), list(BackendKind::Ollama, &[("m", Some("222"))]));
        let c = Catalog::build(b, HashMap::new());
        assert_eq!(c.models.len(), 2);
    }

    #[test]
    fn config_aliases_resolve_to_every_real_name() {
        let mut b = BTreeMap::new();
        b.insert(
            "a".into(),
            list(BackendKind::Ollama, &[("llama3.1:8b", None)]),
        );
        b.insert(
            "b".into(),
            list(BackendKind::LmStudio, &[("llama-3.1-8b-instruct", None)]),
        );
        let mut aliases = HashMap::new();
        aliases.insert(
            "My-Llama".to_string(),
            vec![
                "llama3.1:8b".to_string(),
                "llama-3.1-8b-instruct".to_string(),
            ],
        );
        let c = Catalog::build(b, aliases);
        let r = c.resolve("my-llama");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].native_name, "llama3.1:8b");
        assert_eq!(r[1].native_name, "llama-3.1-8b-instruct");
        assert!(c.is_alias("my-llama"));
    }
}
