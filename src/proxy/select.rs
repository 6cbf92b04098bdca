//! Candidate selection for one request, the thin adapter over [`olla_actors::routing`]: which
//! backends may serve it (route scope, the model's endpoints from the published index,
//! aliases, routability now), the routing decision reported in the `X-Olla-Routing-*` and
//! `X-Olla-Sticky-*` headers, and the order to try them in (priority tiers, then the sticky,
//! cache-aware and warm-first layers over the balancer).

use std::net::IpAddr;
use std::sync::Arc;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use olla_actors::kind::BackendKind;
use olla_actors::published::{Fallback, ModelRouting, RoutingPolicy};
use olla_actors::routing::sticky::{session_key, KeyFacts, KeySource, StickyOutcome};
use olla_actors::routing::{
    self, CacheLayer, Entry, Layers, RouteIndex, Sample, SampleWants, StickyLayer,
};
use tokio::time::Instant;

use crate::app::App;
use crate::error::ProxyError;
use crate::proxy::inspect::{self, BodyFacts};

pub use olla_actors::routing::{Candidate, Candidates};

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

/// `X-Olla-Sticky-Session`, `X-Olla-Sticky-Key-Source`, `X-Olla-Session-ID`.
#[derive(Clone, Debug)]
pub struct StickyHeaders {
    pub outcome: StickyOutcome,
    /// Omitted when the outcome is `disabled`.
    pub source: Option<KeySource>,
    /// Echoed only when the key came from the session header.
    pub session_id: Option<HeaderValue>,
}

/// The routing decision of a request, rendered by [`crate::own_headers`].
#[derive(Clone, Debug, Default)]
pub struct Decision {
    /// `X-Olla-Routing-Strategy`: the model routing strategy (empty: no model in the request).
    pub strategy: &'static str,
    /// `X-Olla-Routing-Decision`: routed / fallback / rejected.
    pub action: &'static str,
    /// `X-Olla-Routing-Reason`: the model routing reason (Olla's values).
    pub reason: &'static str,
    /// `X-Olla-Routing-Balancer`: the configured balancer.
    pub balancer: &'static str,
    /// `X-Olla-Routing-Pick`: why the first backend was chosen (`least_connections`,
    /// `weighted`, `round_robin`, `priority`, `tier_fallback`, `sticky_hit`, `prefix_match`,
    /// `least_loaded`, `load_balance`, `warm`, `warm_saturated`).
    pub pick: &'static str,
    /// Present when sticky sessions are on.
    pub sticky: Option<StickyHeaders>,
}

/// `X-Olla-Routing-Balancer`.
pub const X_OLLA_ROUTING_BALANCER: HeaderName = HeaderName::from_static("x-olla-routing-balancer");
/// `X-Olla-Routing-Pick`.
pub const X_OLLA_ROUTING_PICK: HeaderName = HeaderName::from_static("x-olla-routing-pick");
/// `X-Olla-Sticky-Session`.
pub const X_OLLA_STICKY_SESSION: HeaderName = HeaderName::from_static("x-olla-sticky-session");
/// `X-Olla-Sticky-Key-Source`.
pub const X_OLLA_STICKY_KEY_SOURCE: HeaderName =
    HeaderName::from_static("x-olla-sticky-key-source");
/// `X-Olla-Session-ID` (request and response).
pub const X_OLLA_SESSION_ID: HeaderName = HeaderName::from_static("x-olla-session-id");

/// What a request offers the routing layers: the headers and peer sticky keys come from, and
/// the body (for `prefix_hash` keys and cache-aware routing).
#[derive(Clone, Copy, Default)]
pub struct RouteFacts<'a> {
    pub headers: Option<&'a HeaderMap>,
    pub peer: Option<IpAddr>,
    pub body: &'a [u8],
    pub body_facts: Option<&'a BodyFacts>,
}

fn strategy_name(m: ModelRouting) -> &'static str {
    match m {
        ModelRouting::Strict => "strict",
        ModelRouting::Optimistic => "optimistic",
        ModelRouting::Discovery => "discovery",
    }
}

/// The outcome of selection.
pub struct Selection {
    /// In failover order.
    pub candidates: Candidates,
    pub decision: Option<Decision>,
}

/// Samples the routable entries in scope.
fn sample(
    entries: &[Entry],
    filter: KindFilter,
    now: Instant,
    now_ms: u64,
    wants: SampleWants,
) -> Vec<Sample<'_>> {
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if filter != KindFilter::Any && !filter.allows(e.handle.kind()) {
            continue;
        }
        let Ok(at) = u32::try_from(i) else { break };
        if let Some(s) = e.sample(at, now, now_ms, wants) {
            out.push(s);
        }
    }
    out
}

/// The sticky key of a request, when sticky sessions are on.
fn sticky_key(
    policy: &RoutingPolicy,
    model: Option<&str>,
    req: &RouteFacts,
) -> Option<routing::sticky::SessionKey> {
    if !policy.sticky.enabled {
        return None;
    }
    let header = |name: &HeaderName| {
        req.headers
            .and_then(|h| h.get(name))
            .map(HeaderValue::as_bytes)
    };
    let facts = KeyFacts {
        session_id: header(&X_OLLA_SESSION_ID),
        prefix: req
            .body_facts
            .and_then(|f| inspect::prefix_text(f, req.body)),
        authorization: header(&http::header::AUTHORIZATION),
        peer: req.peer,
        model,
    };
    session_key(&policy.sticky, &facts)
}

/// The sticky headers of a request before (or without) a pick.
fn sticky_headers(
    policy: &RoutingPolicy,
    key: Option<&routing::sticky::SessionKey>,
    outcome: Option<StickyOutcome>,
    req: &RouteFacts,
) -> Option<StickyHeaders> {
    if !policy.sticky.enabled {
        return None;
    }
    let Some(key) = key else {
        return Some(StickyHeaders {
            outcome: StickyOutcome::Disabled,
            source: None,
            session_id: None,
        });
    };
    let session_id = (key.source == KeySource::SessionHeader)
        .then(|| {
            req.headers
                .and_then(|h| h.get(&X_OLLA_SESSION_ID))
                .and_then(crate::proxy::headers::echo_header)
        })
        .flatten();
    Some(StickyHeaders {
        outcome: outcome.unwrap_or(StickyOutcome::Miss),
        source: Some(key.source),
        session_id,
    })
}

/// Picks and orders the candidates. On rejection, the error comes with its decision.
pub async fn select(
    app: &Arc<App>,
    filter: KindFilter,
    model: Option<&str>,
    req: &RouteFacts<'_>,
) -> Result<Selection, (ProxyError, Option<Decision>)> {
    let published = &app.tree.published;
    let mut index = published.route_index();
    let policy = published.policy.load_full();
    let key = sticky_key(&policy, model, req);
    let reject = |e: ProxyError, strategy: &'static str, action: &'static str, reason| {
        (
            e,
            Some(Decision {
                strategy,
                action,
                reason,
                balancer: policy.strategy.as_str(),
                pick: "",
                sticky: sticky_headers(&policy, key.as_ref(), None, req),
            }),
        )
    };
    // No backend of the route's type at all: asked only when the model's entries did not
    // already show one (they are a part of every backend).
    let no_endpoints = |index: &RouteIndex| {
        (!index.all.iter().any(|e| filter.allows(e.handle.kind()))).then(|| {
            match filter.provider_name() {
                Some(p) => ProxyError::NoProviderEndpoints(p.to_string()),
                None => ProxyError::NoHealthyEndpoints,
            }
        })
    };
    let in_scope = |entries: &[Entry]| entries.iter().any(|e| filter.allows(e.handle.kind()));
    let strategy = strategy_name(policy.model_routing);
    let now = Instant::now();
    let now_ms = routing::now_ms_at(now.into_std());
    let warmth = policy.warm_first_on();

    // The entries to sample, whether they are the requested model's, and the decision.
    let (list, found, action, reason): (Arc<[Entry]>, bool, &'static str, &'static str) =
        match model {
            None => (index.all.clone(), false, "", ""),
            Some(requested) => {
                let lookup = |idx: &RouteIndex| {
                    idx.lookup(requested)
                        .filter(|(e, _)| in_scope(e))
                        .map(|(e, alias)| (e.clone(), alias))
                };
                let mut hit = lookup(&index);
                if hit.is_none() {
                    if let Some(e) = no_endpoints(&index) {
                        return Err(reject(e, "", "", ""));
                    }
                    if policy.model_routing == ModelRouting::Discovery {
                        // Discovery on a miss: re-fetch the model lists, then decide; the gate
                        // bounds how often (minimum interval, negative cache, one shared
                        // refresh).
                        let names: Vec<String> = index
                            .all
                            .iter()
                            .filter(|e| filter.allows(e.handle.kind()) && e.handle.is_routable(now))
                            .map(|e| e.handle.name().to_string())
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
                        // Boxed: a rare path whose state would otherwise size every
                        // request's future.
                        if Box::pin(gate.refresh_on_miss(requested, &settings, refresh)).await {
                            index = published.route_index();
                            hit = lookup(&index);
                            if hit.is_none() {
                                gate.remember_missing(requested, Instant::now(), &settings);
                            }
                        }
                    }
                }
                match hit {
                    Some((entries, alias)) => {
                        let reason = if alias {
                            "alias_resolved"
                        } else {
                            "model_found"
                        };
                        (entries, true, "routed", reason)
                    }
                    None => {
                        let catalog = index.catalog();
                        let catalog_covers = index.all.iter().any(|e| {
                            filter.allows(e.handle.kind())
                                && catalog.backends.contains_key(e.handle.name())
                        });
                        if !catalog_covers {
                            // Nothing discovered for these backends (discovery off or not yet
                            // done): the catalog cannot say no, so any compatible backend may
                            // serve.
                            (index.all.clone(), false, "fallback", "no_model_catalog")
                        } else if policy.model_routing == ModelRouting::Optimistic
                            && policy.fallback == Fallback::All
                        {
                            (
                                index.all.clone(),
                                false,
                                "fallback",
                                "model_not_found_fallback",
                            )
                        } else {
                            return Err(reject(
                                ProxyError::ModelNotFound(requested.to_string()),
                                strategy,
                                "rejected",
                                "model_not_found",
                            ));
                        }
                    }
                }
            }
        };
    let strategy = if model.is_some() { strategy } else { "" };
    let wants = SampleWants::of(policy.strategy, found && warmth);
    let samples = sample(&list, filter, now, now_ms, wants);
    if samples.is_empty() {
        return Err(match model {
            Some(requested) if found => reject(
                ProxyError::ModelUnavailable(requested.to_string()),
                strategy,
                "rejected",
                "model_unavailable",
            ),
            Some(_) => reject(ProxyError::NoHealthyEndpoints, strategy, action, reason),
            None => reject(
                no_endpoints(&index).unwrap_or(ProxyError::NoHealthyEndpoints),
                "",
                "",
                "",
            ),
        });
    }
    let state = &published.routing;
    let segments;
    let cache = match (policy.strategy, model, req.body_facts) {
        (olla_actors::balance::Strategy::CacheAware, Some(m), Some(f)) => {
            segments = move || inspect::prompt_segments(f, req.body);
            Some(CacheLayer {
                index: &state.prefix,
                settings: &policy.cache_aware,
                model: m,
                segments: &segments,
            })
        }
        _ => None,
    };
    let layers = Layers {
        sticky: key.map(|key| StickyLayer {
            table: &state.sticky,
            settings: &policy.sticky,
            key,
            now_ms,
        }),
        cache,
        warm: warmth.then_some(&policy.warm_first),
    };
    let mut ordered: Vec<&Sample> = samples.iter().collect();
    let plan = routing::plan(
        &mut ordered,
        policy.strategy,
        &layers,
        &published.cursor,
        fastrand::f64,
    );
    let candidates = Candidates::from_samples(&list, ordered);
    Ok(Selection {
        candidates,
        decision: Some(Decision {
            strategy,
            action,
            reason,
            balancer: policy.strategy.as_str(),
            pick: plan.reason,
            sticky: sticky_headers(&policy, key.as_ref(), plan.sticky.map(|s| s.0), req),
        }),
    })
}
