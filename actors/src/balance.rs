//! Pure selection policies: order the routable candidates of a request by priority tier (highest
//! first, in every strategy), then inside each tier by the configured balancer. The request walks
//! the resulting order on failover.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How candidates inside one priority tier are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Weighted random by `weight` × status factor (healthy 1.0, busy 0.3, warming 0.1).
    #[default]
    Priority,
    /// Rotate through the tier.
    RoundRobin,
    /// Fewest in-flight requests per unit of weight; ties rotate.
    LeastConnections,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "priority" => Some(Self::Priority),
            "round-robin" | "round_robin" | "roundrobin" => Some(Self::RoundRobin),
            "least-connections" | "least_connections" | "least-conn" => {
                Some(Self::LeastConnections)
            }
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Priority => "priority",
            Self::RoundRobin => "round-robin",
            Self::LeastConnections => "least-connections",
        }
    }
}

/// What the balancer needs to know of a candidate.
pub trait Weighed {
    fn priority(&self) -> i64;
    fn weight(&self) -> u32;
    fn in_flight(&self) -> usize;
    /// 1.0 healthy, less for busy/warming.
    fn traffic_factor(&self) -> f64;
}

/// Orders `cands` in place: tiers by priority descending, each tier by `strategy`.
/// `cursor` is a shared counter that rotates ties and round-robin; `rand01` yields uniform
/// numbers in (0, 1] for the weighted random pick.
pub fn order<T: Weighed>(
    cands: &mut [T],
    strategy: Strategy,
    cursor: &AtomicUsize,
    mut rand01: impl FnMut() -> f64,
) {
    cands.sort_by_key(|c| std::cmp::Reverse(c.priority()));
    let turn = cursor.fetch_add(1, Ordering::Relaxed);
    let mut start = 0;
    while start < cands.len() {
        let p = cands[start].priority();
        let end = start
            + cands[start..]
                .iter()
                .take_while(|c| c.priority() == p)
                .count();
        let tier = &mut cands[start..end];
        if tier.len() > 1 {
            match strategy {
                Strategy::RoundRobin => tier.rotate_left(turn % tier.len()),
                Strategy::LeastConnections => {
                    tier.rotate_left(turn % tier.len());
                    tier.sort_by(|a, b| {
                        let la = a.in_flight() as f64
                            / f64::from(a.weight().max(1))
                            / a.traffic_factor().max(0.01);
                        let lb = b.in_flight() as f64
                            / f64::from(b.weight().max(1))
                            / b.traffic_factor().max(0.01);
                        la.total_cmp(&lb)
                    });
                }
                Strategy::Priority => {
                    // Efraimidis–Spirakis: key = u^(1/w); sorting by key descending gives a
                    // weighted random permutation.
                    let mut keyed: Vec<(f64, usize)> = tier
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let w = (f64::from(c.weight().max(1)) * c.traffic_factor()).max(1e-6);
                            (rand01().max(f64::MIN_POSITIVE).powf(1.0 / w), i)
                        })
                        .collect();
                    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
                    apply_permutation(tier, keyed.into_iter().map(|(_, i)| i).collect());
                }
            }
        }
        start = end;
    }
}

fn apply_permutation<T>(slice: &mut [T], perm: Vec<usize>) {
    // perm[k] = index (in the original) of the element that goes to position k.
    let mut pos: Vec<usize> = (0..slice.len()).collect(); // where original i currently sits
    let mut at: Vec<usize> = (0..slice.len()).collect(); // which original sits at position j
    for (k, &orig) in perm.iter().enumerate() {
        let j = pos[orig];
        if j != k {
            slice.swap(k, j);
            let other = at[k];
            at.swap(k, j);
            pos[orig] = k;
            pos[other] = j;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct C {
        name: &'static str,
        prio: i64,
        weight: u32,
        load: usize,
        factor: f64,
    }
    impl Weighed for C {
        fn priority(&self) -> i64 {
            self.prio
        }
        fn weight(&self) -> u32 {
            self.weight
        }
        fn in_flight(&self) -> usize {
            self.load
        }
        fn traffic_factor(&self) -> f64 {
            self.factor
        }
    }
    fn c(name: &'static str, prio: i64, weight: u32, load: usize) -> C {
        C {
            name,
            prio,
            weight,
            load,
            factor: 1.0,
        }
    }
    fn names(v: &[C]) -> Vec<&'static str> {
        v.iter().map(|c| c.name).collect()
    }

    #[test]
    fn tiers_come_first_in_every_strategy() {
        for s in [
            Strategy::Priority,
            Strategy::RoundRobin,
            Strategy::LeastConnections,
        ] {
            let mut v = vec![c("low", 50, 1, 0), c("high", 100, 1, 99)];
            order(&mut v, s, &AtomicUsize::new(0), fastrand::f64);
            assert_eq!(names(&v), vec!["high", "low"], "{s:?}");
        }
    }

    #[test]
    fn round_robin_rotates_inside_a_tier() {
        let cursor = AtomicUsize::new(0);
        let mut firsts = Vec::new();
        for _ in 0..4 {
            let mut v = vec![c("a", 1, 1, 0), c("b", 1, 1, 0)];
            order(&mut v, Strategy::RoundRobin, &cursor, fastrand::f64);
            firsts.push(v[0].name);
        }
        assert_eq!(firsts, vec!["a", "b", "a", "b"]);
    }

    #[test]
    fn least_connections_prefers_idle_per_weight() {
        let mut v = vec![c("busy", 1, 1, 5), c("idle", 1, 1, 1), c("big", 1, 10, 9)];
        order(
            &mut v,
            Strategy::LeastConnections,
            &AtomicUsize::new(0),
            fastrand::f64,
        );
        assert_eq!(names(&v), vec!["big", "idle", "busy"]);
    }

    #[test]
    fn weighted_random_follows_weights() {
        let cursor = AtomicUsize::new(0);
        let mut heavy_first = 0;
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..4000 {
            let mut v = vec![c("light", 1, 1, 0), c("heavy", 1, 3, 0)];
            order(&mut v, Strategy::Priority, &cursor, || rng.f64());
            if v[0].name == "heavy" {
                heavy_first += 1;
            }
        }
        // Expected 3/4 of the picks.
        assert!((2800..3200).contains(&heavy_first), "{heavy_first}");
    }

    #[test]
    fn busy_backends_get_a_reduced_share() {
        let cursor = AtomicUsize::new(0);
        let mut rng = fastrand::Rng::with_seed(11);
        let mut busy_first = 0;
        for _ in 0..2000 {
            let mut v = vec![
                C {
                    factor: 0.3,
                    ..c("busy", 1, 1, 0)
                },
                c("ok", 1, 1, 0),
            ];
            order(&mut v, Strategy::Priority, &cursor, || rng.f64());
            if v[0].name == "busy" {
                busy_first += 1;
            }
        }
        assert!(busy_first < 700, "{busy_first}");
    }

    #[test]
    fn permutation_is_applied_exactly() {
        let mut v = vec!['a', 'b', 'c', 'd'];
        apply_permutation(&mut v, vec![2, 0, 3, 1]);
        assert_eq!(v, vec!['c', 'a', 'd', 'b']);
    }
}
