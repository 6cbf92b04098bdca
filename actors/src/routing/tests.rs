//! Unit tests of [`super::plan`]: the layers over the base balancer, with plain candidates.

use std::sync::atomic::{AtomicI64, AtomicUsize};
use std::time::Duration;

use super::*;

struct C {
    name: &'static str,
    prio: i64,
    load: usize,
    full: bool,
    warm: Option<bool>,
    swrr: AtomicI64,
}

impl Weighed for &C {
    fn priority(&self) -> i64 {
        self.prio
    }
    fn in_flight(&self) -> usize {
        self.load
    }
    fn share(&self) -> f64 {
        1.0
    }
    fn load(&self) -> f64 {
        self.load as f64
    }
    fn swrr(&self) -> Option<&AtomicI64> {
        Some(&self.swrr)
    }
    fn has_capacity(&self) -> bool {
        !self.full
    }
}

impl Routable for &C {
    fn backend_name(&self) -> &str {
        self.name
    }
    fn backend_key(&self) -> u64 {
        prefix::backend_key(self.name)
    }
    fn warm(&self) -> Option<bool> {
        self.warm
    }
}

fn c(name: &'static str, prio: i64, load: usize) -> C {
    C {
        name,
        prio,
        load,
        full: false,
        warm: None,
        swrr: AtomicI64::new(0),
    }
}

fn first(
    pool: &[C],
    strategy: Strategy,
    layers: &Layers,
    cursor: &AtomicUsize,
) -> (&'static str, Plan) {
    let mut v: Vec<&C> = pool.iter().collect();
    let p = plan(&mut v, strategy, layers, cursor, fastrand::f64);
    (v[0].name, p)
}

fn sticky_settings() -> StickySettings {
    StickySettings {
        enabled: true,
        ..StickySettings::default()
    }
}

#[test]
fn tiers_are_never_crossed_while_the_top_tier_has_capacity() {
    let cursor = AtomicUsize::new(0);
    for s in [
        Strategy::Priority,
        Strategy::RoundRobin,
        Strategy::LeastConnections,
        Strategy::Weighted,
        Strategy::WarmFirst,
    ] {
        let mut busy = c("top", 100, 50);
        busy.warm = Some(false);
        let mut low = c("low", 10, 0);
        low.warm = Some(true);
        let pool = [low, busy];
        let w = WarmSettings::default();
        let layers = Layers {
            warm: Some(&w),
            ..Layers::default()
        };
        for _ in 0..20 {
            assert_eq!(first(&pool, s, &layers, &cursor).0, "top", "{s:?}");
        }
    }
    // The top tier full: the lower tier serves, and says so.
    let mut full = c("top", 100, 1);
    full.full = true;
    let pool = [full, c("low", 10, 0)];
    let mut v: Vec<&C> = pool.iter().collect();
    let p = plan(
        &mut v,
        Strategy::LeastConnections,
        &Layers::default(),
        &cursor,
        fastrand::f64,
    );
    assert_eq!(p.reason, "tier_fallback");
    assert_eq!(v[0].name, "top", "the walk still visits tiers in order");
}

#[test]
fn sticky_hit_miss_repin() {
    let table = StickyTable::default();
    let settings = sticky_settings();
    let key = SessionKey {
        hash: 42,
        source: KeySource::SessionHeader,
    };
    let cursor = AtomicUsize::new(0);
    let layers = |now_ms| Layers {
        sticky: Some(StickyLayer {
            table: &table,
            settings: &settings,
            key,
            now_ms,
        }),
        ..Layers::default()
    };
    let pool = [c("a", 1, 0), c("b", 1, 0), c("c", 1, 0)];
    let (pinned, p) = first(&pool, Strategy::RoundRobin, &layers(0), &cursor);
    assert_eq!(
        p.sticky,
        Some((StickyOutcome::Miss, KeySource::SessionHeader))
    );
    for i in 0..100 {
        let (got, p) = first(&pool, Strategy::RoundRobin, &layers(i), &cursor);
        assert_eq!(got, pinned);
        assert_eq!(
            (p.reason, p.sticky.map(|s| s.0)),
            ("sticky_hit", Some(StickyOutcome::Hit))
        );
    }
    // The pinned backend is gone from the candidates: repinned elsewhere, then a hit there.
    let rest: Vec<C> = ["a", "b", "c"]
        .into_iter()
        .filter(|n| *n != pinned)
        .map(|n| c(n, 1, 0))
        .collect();
    let (moved, p) = first(&rest, Strategy::RoundRobin, &layers(200), &cursor);
    assert_ne!(moved, pinned);
    assert_eq!(p.sticky.map(|s| s.0), Some(StickyOutcome::Repin));
    assert_eq!(
        first(&rest, Strategy::RoundRobin, &layers(201), &cursor).0,
        moved
    );
    assert!(table.lookup(42, Duration::ZERO, 300).is_some());
}

#[test]
fn warm_first_prefers_warm_then_overflows_then_spreads() {
    let w = WarmSettings::default();
    let layers = Layers {
        warm: Some(&w),
        ..Layers::default()
    };
    let cursor = AtomicUsize::new(0);
    let mut warm = c("warm", 1, 3);
    warm.warm = Some(true);
    let mut cold = c("cold", 1, 0);
    cold.warm = Some(false);
    let (got, p) = first(&[warm, cold], Strategy::WarmFirst, &layers, &cursor);
    assert_eq!((got, p.reason), ("warm", "warm"));
    // Saturated (no free slot): the cold one takes the overflow.
    let mut warm = c("warm", 1, 3);
    warm.warm = Some(true);
    warm.full = true;
    let mut cold = c("cold", 1, 0);
    cold.warm = Some(false);
    assert_eq!(
        first(&[warm, cold], Strategy::WarmFirst, &layers, &cursor).0,
        "cold"
    );
    // Busier than max_wait_ratio allows: the cold one wins.
    let mut warm = c("warm", 1, 9);
    warm.warm = Some(true);
    let mut cold = c("cold", 1, 1);
    cold.warm = Some(false);
    let (got, p) = first(&[warm, cold], Strategy::WarmFirst, &layers, &cursor);
    assert_eq!((got, p.reason), ("cold", "warm_saturated"));
    // Nobody warm: least-connections rotates ties.
    let pool = [c("a", 1, 0), c("b", 1, 0)];
    let picks: Vec<_> = (0..4)
        .map(|_| first(&pool, Strategy::WarmFirst, &layers, &cursor).0)
        .collect();
    assert!(picks.contains(&"a") && picks.contains(&"b"), "{picks:?}");
}

#[test]
fn cache_aware_keeps_conversations_and_spreads_new_ones() {
    let index = PrefixIndex::default();
    let settings = CacheSettings::default();
    let cursor = AtomicUsize::new(0);
    let pool = [c("a", 1, 0), c("b", 1, 0)];
    let sys = "You are a helpful assistant. ".repeat(40);
    let mut convs: Vec<Vec<String>> = (0..6)
        .map(|i| vec![sys.clone(), format!("conversation {i} asks something")])
        .collect();
    let mut home: Vec<Option<&'static str>> = vec![None; convs.len()];
    for turn in 0..4 {
        for (i, conv) in convs.iter_mut().enumerate() {
            let segs: Vec<&[u8]> = conv.iter().map(|s| s.as_bytes()).collect();
            let segments = || segs.clone();
            let layers = Layers {
                cache: Some(CacheLayer {
                    index: &index,
                    settings: &settings,
                    model: "m",
                    segments: &segments,
                }),
                ..Layers::default()
            };
            let (got, p) = first(&pool, Strategy::CacheAware, &layers, &cursor);
            match home[i] {
                None => home[i] = Some(got),
                Some(h) => {
                    assert_eq!(got, h, "conversation {i} turn {turn}");
                    assert_eq!(p.reason, "prefix_match");
                }
            }
            conv.push(format!("answer {turn} of {i}"));
            conv.push(format!("follow-up {turn} of {i}"));
        }
    }
    let on_a = home.iter().filter(|h| **h == Some("a")).count();
    assert!(
        (1..6).contains(&on_a),
        "the shared system prompt collapsed traffic: {home:?}"
    );
}

#[test]
fn cache_aware_balances_a_skewed_load() {
    let index = PrefixIndex::default();
    let settings = CacheSettings {
        balance_abs_threshold: 2,
        ..CacheSettings::default()
    };
    let segs: Vec<&[u8]> = vec![b"a long conversation"];
    index.insert("m", &segs, prefix::backend_key("busy"), 1 << 20);
    let segments = || segs.clone();
    let layers = Layers {
        cache: Some(CacheLayer {
            index: &index,
            settings: &settings,
            model: "m",
            segments: &segments,
        }),
        ..Layers::default()
    };
    // A small difference in load: the cache decides.
    let pool = [c("busy", 1, 2), c("idle", 1, 0)];
    let (got, p) = first(&pool, Strategy::CacheAware, &layers, &AtomicUsize::new(0));
    assert_eq!((got, p.reason), ("busy", "prefix_match"));
    // Skewed beyond both thresholds: the least-loaded wins, and the prefix now lives there.
    let pool = [c("busy", 1, 10), c("idle", 1, 0)];
    let (got, p) = first(&pool, Strategy::CacheAware, &layers, &AtomicUsize::new(0));
    assert_eq!((got, p.reason), ("idle", "load_balance"));
    assert_eq!(
        index.lookup("m", &segs).backend,
        prefix::backend_key("idle")
    );
}

#[test]
fn failure_score_decays() {
    let f = FailureScore::default();
    assert_eq!(f.penalty(0), 0.0);
    for _ in 0..8 {
        f.on_failure(1_000);
    }
    assert_eq!(f.penalty(1_000), 8.0);
    assert_eq!(f.penalty(1_000 + FAILURE_HALF_LIFE_MS), 4.0);
    f.on_success();
    assert_eq!(f.penalty(1_000), 4.0);
}

/// Real entries over handles whose actor ignores its mail: sampling, the compact order and
/// what the proxy walks.
mod entries {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Duration;

    use ractor::{Actor, ActorProcessingErr, ActorRef};

    use crate::backend::client::ShardedClient;
    use crate::backend::{BackendHandle, BackendMsg, Outcome, SlotAttempt};
    use crate::balance::Strategy;
    use crate::health::EndpointStatus;
    use crate::kind::BackendKind;
    use crate::routing::loaded::Loaded;
    use crate::routing::{plan, prefix, Candidates, Entry, Layers, Sample, SampleWants};
    use crate::spec::BackendSpec;

    struct Mute;

    impl Actor for Mute {
        type Msg = BackendMsg;
        type State = ();
        type Arguments = ();
        async fn pre_start(
            &self,
            _: ActorRef<BackendMsg>,
            _: (),
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    async fn handles(n: usize, edit: impl Fn(usize, &mut BackendSpec)) -> Vec<BackendHandle> {
        let (actor, _) = Actor::spawn(None, Mute, ()).await.unwrap();
        (0..n)
            .map(|i| {
                let mut spec = BackendSpec::new(
                    format!("b{i}"),
                    format!("http://127.0.0.1:{}", 1 + i).parse().unwrap(),
                    BackendKind::Ollama,
                );
                edit(i, &mut spec);
                let spec = Arc::new(spec);
                let client = ShardedClient::build(&spec);
                BackendHandle::new(
                    spec,
                    client,
                    actor.clone(),
                    BackendKind::Ollama,
                    EndpointStatus::Healthy,
                )
            })
            .collect()
    }

    fn entries(handles: &[BackendHandle]) -> Arc<[Entry]> {
        handles
            .iter()
            .map(|h| {
                Entry::new(
                    h.clone(),
                    Some(Arc::from("m:latest")),
                    prefix::backend_key(h.name()),
                )
            })
            .collect()
    }

    fn sample(list: &[Entry], warmth: bool) -> Vec<Sample<'_>> {
        let now = tokio::time::Instant::now();
        let wants = SampleWants::of(Strategy::LeastConnections, warmth);
        list.iter()
            .enumerate()
            .filter_map(|(i, e)| e.sample(i as u32, now, 0, wants))
            .collect()
    }

    fn names(c: &Candidates) -> Vec<String> {
        c.iter().map(|e| e.handle.name().to_string()).collect()
    }

    #[tokio::test]
    async fn candidates_keep_the_plan_order_and_narrow_in_order() {
        // Two tiers; b1 busy with two requests.
        let hs = handles(4, |i, s| s.priority = if i < 3 { 100 } else { 50 }).await;
        let list = entries(&hs);
        let guards: Vec<_> = (0..2)
            .map(|_| match hs[1].try_slot() {
                SlotAttempt::Admitted(g) => g,
                _ => panic!("a slot"),
            })
            .collect();
        let samples = sample(&list, false);
        let mut ordered: Vec<&Sample> = samples.iter().collect();
        let cursor = AtomicUsize::new(0);
        plan(
            &mut ordered,
            Strategy::LeastConnections,
            &Layers::default(),
            &cursor,
            fastrand::f64,
        );
        let mut c = Candidates::from_samples(&list, ordered);
        let order = names(&c);
        assert_eq!(order.len(), 4);
        assert_eq!(
            &order[2..],
            ["b1", "b3"],
            "busy last in its tier, then the low tier"
        );
        assert_eq!(
            c.first().map(|e| e.native_model.as_deref()),
            Some(Some("m:latest"))
        );
        c.retain(|e| e.handle.name() != order[0]);
        assert_eq!(names(&c), order[1..].to_vec());
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(2).map(|e| e.handle.name()), Some("b3"));
        assert!(c.get(3).is_none());
        c.clear();
        assert!(c.is_empty() && c.iter().next().is_none());
        // Positions out of range are dropped, never indexed.
        let odd = Candidates::new(list.clone(), vec![9, 2, 0]);
        assert_eq!(names(&odd), ["b2", "b0"]);
        drop(guards);
    }

    #[tokio::test]
    async fn sampling_sees_routing_and_breaker_changes_at_once() {
        let hs = handles(2, |_, s| {
            s.breaker.enabled = true;
            s.breaker.failure_threshold = 2;
            s.breaker.open_for = Duration::from_secs(60);
            s.weight = 3;
        })
        .await;
        let list = entries(&hs);
        let now = tokio::time::Instant::now();
        let s = list[0]
            .sample(0, now, 0, SampleWants::default())
            .map(|s| (s.priority, s.share));
        assert_eq!(s, Some((100, 3.0)));
        // Disabled, reprioritised, re-weighted: the next sample says so.
        hs[0].slot().update(|r| r.enabled = false);
        assert!(list[0].sample(0, now, 0, SampleWants::default()).is_none());
        assert!(!hs[0].is_routable(now));
        hs[0].slot().update(|r| {
            r.enabled = true;
            r.priority = 7;
            r.weight = 9;
        });
        let s = list[0]
            .sample(0, now, 0, SampleWants::default())
            .map(|s| (s.priority, s.share));
        assert_eq!(s, Some((7, 9.0)));
        assert_eq!((hs[0].priority(), hs[0].weight()), (7, 9));
        // Two faults open the breaker: not routable, without waiting for anything.
        for _ in 0..2 {
            if let SlotAttempt::Admitted(mut g) = hs[1].try_slot() {
                g.report(Outcome::Fault, None);
            }
        }
        assert_eq!(hs[1].breaker_state(), "open");
        assert!(list[1].sample(1, now, 0, SampleWants::default()).is_none());
        assert!(matches!(hs[1].try_slot(), SlotAttempt::Unavailable));
        hs[1].reset_breaker();
        assert!(list[1].sample(1, now, 0, SampleWants::default()).is_some());
        // Status is read in the same sample.
        hs[1].set_status(EndpointStatus::Busy);
        let f = list[1]
            .sample(1, now, 0, SampleWants::default())
            .map(|s| s.share);
        assert_eq!(f, Some(crate::balance::share_of(3, 0.3)));
    }

    #[tokio::test]
    async fn residency_follows_each_published_change() {
        let hs = handles(1, |_, _| {}).await;
        let list = entries(&hs);
        let warm = |list: &[Entry]| sample(list, true)[0].warm;
        assert_eq!(warm(&list), None, "not asked yet");
        let balance = &hs[0].slot().balance;
        balance.set_loaded(Arc::new(Loaded::Models(vec!["M".to_string()].into())));
        assert_eq!(
            warm(&list),
            Some(true),
            ":latest and case are the same model"
        );
        assert_eq!(warm(&list), Some(true), "cached");
        balance.set_loaded(Arc::new(Loaded::Models(Vec::new().into())));
        assert_eq!(warm(&list), Some(false));
        balance.set_loaded(Arc::new(Loaded::Unknown));
        assert_eq!(warm(&list), None);
        assert_eq!(sample(&list, false)[0].warm, None, "not asked for");
        balance.set_loaded(Arc::new(Loaded::Always));
        assert_eq!(warm(&list), Some(true));
        let before = balance.loaded_generation();
        balance.set_loaded(Arc::new(Loaded::Always));
        assert_eq!(balance.loaded_generation(), before + 1);
    }
}
