//! Candidate selection for one request: which backends may serve it (route scope, model
//! availability in the catalog, aliases, routability now), the routing decision reported in the
//! `X-Olla-Routing-*` headers, and the order to try them in (priority tiers, then the balancer).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use olla_actors::balance::{self, Weighed};
use olla_actors::catalog::{Availability, Catalog};
use olla_actors::kind::BackendKind;
use olla_actors::published::{Fallback, ModelRouting};
use olla_actors::BackendHandle;
use tokio::time::Instant;

use crate::app::App;
use crate::error::ProxyError;

/// Which backend types a route reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindFilter {
    /// `/olla/proxy/...`: every backend.
    Any,
    /// `/olla/openai/...`: every OpenAI-compatible backend.
    OpenAiCompatible,
    /// `/olla/<provider>/...`: that type only.
    Only(BackendKind),
}

impl KindFilter {
    pub fn allows(self, kind: BackendKind) -> bool {
        match self {
            Self::Any => true,
            Self::OpenAiCompatible => kind.profile().openai_compatible,
            Self::Only(k) => kind == k || kind == BackendKind::Auto,
        }
    }

    /// The type named in "No <type> endpoints available".
    pub fn provider_name(self) -> Option<&'static str> {
        match self {
            Self::Any => None,
            Self::OpenAiCompatible => Some("openai-compatible"),
            Self::Only(k) => Some(k.as_str()),
        }
    }
}

/// A backend chosen for a request, with the model name it knows the requested model by.
#[derive(Clone)]
pub struct Candidate {
    pub handle: BackendHandle,
    pub native_model: Option<String>,
}

impl Weighed for Candidate {
    fn priority(&self) -> i64 {
        self.handle.priority()
    }
    fn weight(&self) -> u32 {
        self.handle.weight()
    }
    fn in_flight(&self) -> usize {
        self.handle.in_flight()
    }
    fn traffic_factor(&self) -> f64 {
        self.handle.status().traffic_factor()
    }
}

/// The `X-Olla-Routing-*` values.
#[derive(Clone, Debug)]
pub struct Decision {
    pub strategy: &'static str,
    pub action: &'static str,
    pub reason: &'static str,
}

fn strategy_name(m: ModelRouting) -> &'static str {
    match m {
        ModelRouting::Strict => "strict",
        ModelRouting::Optimistic => "optimistic",
        ModelRouting::Discovery => "discovery",
    }
}

/// The endpoints of a model (aliases included) among the backends in scope.
fn scoped<'c>(
    catalog: &'c Catalog,
    requested: &str,
    scope: &HashSet<&str>,
) -> Vec<&'c Availability> {
    let mut found = catalog.resolve(requested);
    found.retain(|a| scope.contains(a.backend.as_str()));
    found
}

/// The outcome of selection.
pub struct Selection {
    pub candidates: Vec<Candidate>,
    pub decision: Option<Decision>,
}

/// Picks and orders the candidates. On rejection, the error comes with its decision.
pub async fn select(
    app: &Arc<App>,
    filter: KindFilter,
    model: Option<&str>,
) -> Result<Selection, (ProxyError, Option<Decision>)> {
    let published = &app.tree.published;
    let table = published.table();
    let in_scope: Vec<&BackendHandle> = table
        .backends
        .iter()
        .filter(|b| filter.allows(b.kind()))
        .collect();
    if in_scope.is_empty() {
        return Err((
            match filter.provider_name() {
                Some(p) => ProxyError::NoProviderEndpoints(p.to_string()),
                None => ProxyError::NoHealthyEndpoints,
            },
            None,
        ));
    }
    let policy = published.policy.load_full();
    let strategy = strategy_name(policy.model_routing);
    let now = Instant::now();
    let all_routable = || -> Vec<Candidate> {
        in_scope
            .iter()
            .filter(|b| b.is_routable(now))
            .map(|b| Candidate {
                handle: (*b).clone(),
                native_model: None,
            })
            .collect()
    };

    let (mut candidates, decision) = match model {
        None => (all_routable(), None),
        Some(requested) => {
            let scope: HashSet<&str> = in_scope.iter().map(|b| b.name()).collect();
            let first = published.catalog.load_full();
            let refreshed;
            let mut catalog: &Catalog = &first;
            let mut available = scoped(catalog, requested, &scope);
            if available.is_empty() && policy.model_routing == ModelRouting::Discovery {
                // Discovery on a miss: re-fetch the model lists, then decide; the gate bounds
                // how often (minimum interval, negative cache, one shared refresh).
                let names: Vec<String> = in_scope
                    .iter()
                    .filter(|b| b.is_routable(now))
                    .map(|b| b.name().to_string())
                    .collect();
                let settings = policy.miss_settings();
                let refresh_app = app.clone();
                let refresh = async move {
                    refresh_app
                        .tree
                        .refresh_models(&names, settings.timeout)
                        .await;
                };
                let gate = &published.miss_gate;
                if gate.refresh_on_miss(requested, &settings, refresh).await {
                    refreshed = published.catalog.load_full();
                    catalog = &refreshed;
                    available = scoped(catalog, requested, &scope);
                    if available.is_empty() {
                        gate.remember_missing(requested, Instant::now(), &settings);
                    }
                }
            }
            if !available.is_empty() {
                // One pass over the backends, looking each up among the model's endpoints.
                let by_backend: HashMap<&str, &str> = available
                    .iter()
                    .map(|a| (a.backend.as_str(), a.native_name.as_str()))
                    .collect();
                let routable: Vec<Candidate> = in_scope
                    .iter()
                    .filter_map(|b| {
                        let native = by_backend.get(b.name())?;
                        b.is_routable(now).then(|| Candidate {
                            handle: (*b).clone(),
                            native_model: Some(native.to_string()),
                        })
                    })
                    .collect();
                if routable.is_empty() {
                    return Err((
                        ProxyError::ModelUnavailable(requested.to_string()),
                        Some(Decision {
                            strategy,
                            action: "rejected",
                            reason: "model_unavailable",
                        }),
                    ));
                }
                let reason = if catalog.is_alias(requested) {
                    "alias_resolved"
                } else {
                    "model_found"
                };
                (
                    routable,
                    Some(Decision {
                        strategy,
                        action: "routed",
                        reason,
                    }),
                )
            } else {
                let catalog_covers = in_scope
                    .iter()
                    .any(|b| catalog.backends.contains_key(b.name()));
                if !catalog_covers {
                    // Nothing discovered for these backends (discovery off or not yet done):
                    // the catalog cannot say no, so any compatible backend may serve.
                    (
                        all_routable(),
                        Some(Decision {
                            strategy,
                            action: "fallback",
                            reason: "no_model_catalog",
                        }),
                    )
                } else if policy.model_routing == ModelRouting::Optimistic
                    && policy.fallback == Fallback::All
                {
                    (
                        all_routable(),
                        Some(Decision {
                            strategy,
                            action: "fallback",
                            reason: "model_not_found_fallback",
                        }),
                    )
                } else {
                    return Err((
                        ProxyError::ModelNotFound(requested.to_string()),
                        Some(Decision {
                            strategy,
                            action: "rejected",
                            reason: "model_not_found",
                        }),
                    ));
                }
            }
        }
    };
    if candidates.is_empty() {
        return Err((ProxyError::NoHealthyEndpoints, decision));
    }
    balance::order(
        &mut candidates,
        policy.strategy,
        &published.cursor,
        fastrand::f64,
    );
    Ok(Selection {
        candidates,
        decision,
    })
}
