//! What a config reload changes: the difference between the running backend specs and the
//! newly resolved ones, as a plan (pure, no I/O, no actors). The admin layer applies it:
//! added backends are spawned, removed ones drained then removed, changed ones updated in place
//! (a priority/weight-only change is a routing change; anything else replaces the actor's
//! spec), unchanged ones keep their run-time state.

use std::collections::BTreeMap;
use std::sync::Arc;

use olla_actors::BackendSpec;

/// How a backend present before and after the reload changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Only `priority` and/or `weight`: a routing change, the actor keeps running.
    Routing,
    /// Anything else (URL, type, timeouts, limits, health, auth...): the actor restarts on the
    /// new spec.
    Spec,
}

/// The reload plan, each list sorted by name.
#[derive(Clone, Debug, Default)]
pub struct BackendDiff {
    pub added: Vec<Arc<BackendSpec>>,
    pub removed: Vec<String>,
    pub changed: Vec<(Arc<BackendSpec>, Change)>,
    pub unchanged: Vec<String>,
}

impl BackendDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compares the running specs with the new ones, by name.
pub fn diff(old: &[Arc<BackendSpec>], new: &[Arc<BackendSpec>]) -> BackendDiff {
    let old: BTreeMap<&str, &Arc<BackendSpec>> = old.iter().map(|s| (s.name.as_str(), s)).collect();
    let new: BTreeMap<&str, &Arc<BackendSpec>> = new.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut d = BackendDiff::default();
    for (name, spec) in &new {
        match old.get(name) {
            None => d.added.push(Arc::clone(spec)),
            Some(before) if ***before == ***spec => d.unchanged.push(name.to_string()),
            Some(before) => {
                let mut same_but_routing = (***before).clone();
                same_but_routing.priority = spec.priority;
                same_but_routing.weight = spec.weight;
                let change = if same_but_routing == ***spec {
                    Change::Routing
                } else {
                    Change::Spec
                };
                d.changed.push((Arc::clone(spec), change));
            }
        }
    }
    d.removed = old
        .keys()
        .filter(|n| !new.contains_key(*n))
        .map(|n| n.to_string())
        .collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, resolve};

    fn specs(endpoints: &str) -> Vec<Arc<BackendSpec>> {
        let yaml = format!("discovery:\n  static:\n    endpoints:\n{endpoints}");
        resolve(&parse(&yaml, &|_| None).expect("parses"))
            .expect("resolves")
            .tree
            .specs
    }

    #[test]
    fn added_removed_changed_and_unchanged_are_told_apart() {
        let old = specs(
            "      - {name: a, url: 'http://h:1', type: ollama}\n      - {name: b, url: 'http://h:2', type: vllm}\n      - {name: c, url: 'http://h:3', type: vllm}\n      - {name: d, url: 'http://h:4', type: vllm}\n",
        );
        let new = specs(
            "      - {name: a, url: 'http://h:1', type: ollama}\n      - {name: c, url: 'http://h:3', type: vllm, priority: 5, weight: 3}\n      - {name: d, url: 'http://h:9', type: vllm}\n      - {name: e, url: 'http://h:5', type: openai}\n",
        );
        let d = diff(&old, &new);
        assert_eq!(d.unchanged, vec!["a"]);
        assert_eq!(d.removed, vec!["b"]);
        assert_eq!(
            d.added.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            vec!["e"]
        );
        let changed: Vec<(&str, Change)> = d
            .changed
            .iter()
            .map(|(s, c)| (s.name.as_str(), c.clone()))
            .collect();
        assert_eq!(changed, vec![("c", Change::Routing), ("d", Change::Spec)]);
        assert!(!d.is_empty());
    }

    #[test]
    fn the_same_config_is_an_empty_diff_and_global_defaults_count() {
        let one = "      - {name: a, url: 'http://h:1', type: ollama}\n";
        assert!(diff(&specs(one), &specs(one)).is_empty());
        let yaml = format!(
            "proxy:\n  timeouts: {{idle: 7s}}\ndiscovery:\n  static:\n    endpoints:\n{one}"
        );
        let tighter = resolve(&parse(&yaml, &|_| None).unwrap())
            .unwrap()
            .tree
            .specs;
        let d = diff(&specs(one), &tighter);
        assert_eq!(d.changed.len(), 1);
        assert_eq!(
            d.changed[0].1,
            Change::Spec,
            "a global timeout change updates the spec"
        );
    }
}
