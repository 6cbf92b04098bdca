//! Prefix-cache affinity (`cache-aware`): a per-model prefix tree over the prompt, mapping each
//! prefix to the backends that served it, so a conversation keeps landing where its KV cache is.
//!
//! The prompt is a sequence of segments: the messages in order (raw JSON text of each one), or
//! fixed-size blocks of a `prompt` string. A conversation only ever appends messages, so a tree
//! whose edges are whole messages matches what a byte-level radix tree would match at message
//! boundaries, at a fraction of the memory. Each node is keyed by the cumulative hash of the
//! segments up to it (seeded by the model), which makes the tree a flat map: lookup and insert
//! walk the prompt once, one hash probe per segment.
//!
//! Shared prefixes: a node that traffic continued from in two different ways (two
//! conversations behind one system prompt) is marked *shared*. A match counts only when it
//! goes beyond the deepest shared node on its path, so a long system prompt common to every
//! session never pins everything to the first backend that saw it.
//!
//! Memory is bounded by `max_tree_bytes` (an estimate per node); beyond it the least recently
//! used nodes are evicted. The map is split in shards by model hash, each behind a short lock
//! held only for the probes of one request (no await inside).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Cache-aware settings (`proxy.cache_aware`).
#[derive(Clone, Debug, PartialEq)]
pub struct CacheSettings {
    /// Minimum share of the prompt (bytes) that must match a backend's cached prefix for the
    /// request to follow it.
    pub cache_threshold: f64,
    /// Load is skewed when max − min in-flight exceeds this …
    pub balance_abs_threshold: usize,
    /// … and max > min × this; then the least-loaded backend wins regardless of the cache.
    pub balance_rel_threshold: f64,
    /// Memory bound of the prefix trees (all models).
    pub max_tree_bytes: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            cache_threshold: 0.3,
            balance_abs_threshold: 32,
            balance_rel_threshold: 1.5,
            max_tree_bytes: 64 << 20,
        }
    }
}

/// Estimated bytes per node (key, node, map overhead).
pub const NODE_BYTES: usize = 96;
/// Most segments of one prompt that are indexed (a longer prompt is matched on its head).
pub const MAX_SEGMENTS: usize = 1024;
/// Block size of a `prompt` string.
pub const PROMPT_BLOCK: usize = 256;
const SHARDS: usize = 16;
/// Backends remembered per node (most recent first).
const BACKENDS_PER_NODE: usize = 3;

#[derive(Clone, Copy, Debug, Default)]
struct Node {
    /// `(backend key, last served tick)`, most recent first; key 0 = empty.
    backends: [(u64, u64); BACKENDS_PER_NODE],
    /// The first continuation seen (cumulative hash of the next segment).
    child: u64,
    /// Traffic continued from here in two different ways.
    shared: bool,
    last_used: u64,
}

impl Node {
    fn note_backend(&mut self, key: u64, tick: u64) {
        let pos = self
            .backends
            .iter()
            .position(|(k, _)| *k == key)
            .unwrap_or(BACKENDS_PER_NODE - 1);
        self.backends[..=pos].rotate_right(1);
        self.backends[0] = (key, tick);
    }

    fn note_child(&mut self, child: u64) {
        if self.child == 0 {
            self.child = child;
        } else if self.child != child {
            self.shared = true;
        }
    }
}

/// What the tree knows of a prompt.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Match {
    /// The backend that most recently served the deepest matched prefix (0 = none).
    pub backend: u64,
    /// Bytes of the prompt matched on that backend.
    pub matched: u64,
    /// Bytes of the prompt up to the deepest shared node on the path.
    pub shared: u64,
    /// Bytes of the prompt (indexed segments).
    pub total: u64,
}

impl Match {
    /// The share of the prompt matched, counted only when the match goes beyond the shared
    /// prefix (else 0).
    pub fn ratio(&self) -> f64 {
        if self.backend == 0 || self.matched <= self.shared || self.total == 0 {
            return 0.0;
        }
        self.matched as f64 / self.total as f64
    }
}

/// A prompt hashed for the tree ([`PrefixIndex::prompt`]).
#[derive(Clone, Debug, Default)]
pub struct Prompt {
    /// The model's seed (picks the shard).
    seed: u64,
    /// `(cumulative hash, cumulative bytes)` of each indexed segment.
    links: Vec<(u64, u64)>,
}

impl Prompt {
    /// Whether there is nothing to match.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }
}

/// One shard of nodes, keyed by cumulative hash.
type Shard = HashMap<u64, Node, foldhash::fast::FixedState>;

/// The prefix trees of every model.
pub struct PrefixIndex {
    shards: Vec<Mutex<Shard>>,
    tick: AtomicU64,
    hasher: foldhash::fast::FixedState,
    pub evicted: AtomicU64,
}

impl Default for PrefixIndex {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(HashMap::with_hasher(foldhash::fast::FixedState::with_seed(
                        7,
                    )))
                })
                .collect(),
            tick: AtomicU64::new(1),
            hasher: foldhash::fast::FixedState::with_seed(0x6f6c_6c61),
            evicted: AtomicU64::new(0),
        }
    }
}

/// A stable key for a backend name (never 0).
pub fn backend_key(name: &str) -> u64 {
    let h = foldhash::fast::FixedState::with_seed(0x6f6c_6c61).hash_one(name);
    h.max(1)
}

impl PrefixIndex {
    fn seed(&self, model: &str) -> u64 {
        self.hasher.hash_one(model)
    }

    /// A prompt of `model` hashed for the tree: one pass over its segments, reused by
    /// [`PrefixIndex::lookup_prompt`] and [`PrefixIndex::insert_prompt`].
    pub fn prompt(&self, model: &str, segments: &[&[u8]]) -> Prompt {
        let seed = self.seed(model);
        let mut h = seed;
        let mut depth = 0u64;
        let links = segments
            .iter()
            .take(MAX_SEGMENTS)
            .map(|seg| {
                let mut st = self.hasher.build_hasher();
                st.write_u64(h);
                st.write(seg);
                h = st.finish().max(1);
                depth += seg.len() as u64;
                (h, depth)
            })
            .collect();
        Prompt { seed, links }
    }

    fn shard(&self, seed: u64) -> &Mutex<Shard> {
        &self.shards[(seed as usize) % SHARDS]
    }

    /// The deepest match of `segments` for `model`.
    pub fn lookup(&self, model: &str, segments: &[&[u8]]) -> Match {
        self.lookup_prompt(&self.prompt(model, segments))
    }

    /// The deepest match of a hashed prompt.
    pub fn lookup_prompt(&self, prompt: &Prompt) -> Match {
        let total = prompt.links.last().map_or(0, |c| c.1);
        let mut m = Match {
            total,
            ..Match::default()
        };
        let tick = self.tick.load(Ordering::Relaxed);
        let mut shard = self.shard(prompt.seed).lock();
        for &(h, depth) in &prompt.links {
            let Some(node) = shard.get_mut(&h) else {
                break;
            };
            node.last_used = tick;
            if node.backends[0].0 != 0 {
                m.backend = node.backends[0].0;
                m.matched = depth;
            }
            if node.shared {
                m.shared = depth;
            }
        }
        m
    }

    /// Records that `backend` serves `segments` of `model`; evicts the least recently used
    /// nodes beyond `max_bytes`.
    pub fn insert(&self, model: &str, segments: &[&[u8]], backend: u64, max_bytes: usize) {
        self.insert_prompt(&self.prompt(model, segments), backend, max_bytes);
    }

    /// [`PrefixIndex::insert`] of a hashed prompt.
    pub fn insert_prompt(&self, prompt: &Prompt, backend: u64, max_bytes: usize) {
        let chain = &prompt.links;
        if chain.is_empty() {
            return;
        }
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let cap = (max_bytes / NODE_BYTES / SHARDS).max(8);
        let mut shard = self.shard(prompt.seed).lock();
        for (i, &(h, _)) in chain.iter().enumerate() {
            let node = shard.entry(h).or_default();
            node.note_backend(backend, tick);
            node.last_used = tick;
            if let Some(&(next, _)) = chain.get(i + 1) {
                node.note_child(next);
            }
        }
        if shard.len() > cap {
            let evicted = evict_lru(&mut shard, cap);
            self.evicted.fetch_add(evicted, Ordering::Relaxed);
        }
    }

    /// Nodes held (all models).
    pub fn nodes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Forgets a backend everywhere (it was removed).
    pub fn forget_backend(&self, backend: u64) {
        for shard in &self.shards {
            for node in shard.lock().values_mut() {
                for slot in node.backends.iter_mut() {
                    if slot.0 == backend {
                        *slot = (0, 0);
                    }
                }
                node.backends.sort_by_key(|b| std::cmp::Reverse(b.1));
            }
        }
    }
}

/// Drops the least recently used nodes down to 7/8 of `cap` (one O(n) pass per cap/8 inserts).
fn evict_lru(map: &mut Shard, cap: usize) -> u64 {
    let keep = cap - cap / 8;
    if map.len() <= keep {
        return 0;
    }
    let mut ages: Vec<u64> = map.values().map(|n| n.last_used).collect();
    let cut = ages.len() - keep;
    let (_, threshold, _) = ages.select_nth_unstable(cut - 1);
    let threshold = *threshold;
    let before = map.len();
    let mut budget = cut;
    map.retain(|_, n| {
        if budget > 0 && n.last_used <= threshold {
            budget -= 1;
            false
        } else {
            true
        }
    });
    (before - map.len()) as u64
}

/// Splits a `prompt` string into fixed blocks (the segments of a completion request).
pub fn prompt_blocks(prompt: &[u8]) -> impl Iterator<Item = &[u8]> {
    prompt.chunks(PROMPT_BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs<'a>(v: &'a [&'a str]) -> Vec<&'a [u8]> {
        v.iter().map(|s| s.as_bytes()).collect()
    }

    #[test]
    fn a_conversation_matches_its_own_history() {
        let idx = PrefixIndex::default();
        let a = backend_key("a");
        let t1 = segs(&["sys", "hello there"]);
        assert_eq!(idx.lookup("m", &t1).backend, 0);
        idx.insert("m", &t1, a, 1 << 20);
        let t2 = segs(&["sys", "hello there", "hi! how can I help", "tell me more"]);
        let m = idx.lookup("m", &t2);
        assert_eq!((m.backend, m.matched, m.shared), (a, 14, 0));
        assert!(m.ratio() > 0.3, "{m:?}");
        assert_eq!(idx.lookup("other-model", &t2).backend, 0, "scoped by model");
    }

    #[test]
    fn a_shared_system_prompt_does_not_count() {
        let idx = PrefixIndex::default();
        let sys = "You are a helpful assistant. ".repeat(50);
        idx.insert(
            "m",
            &segs(&[&sys, "question one"]),
            backend_key("a"),
            1 << 20,
        );
        idx.insert(
            "m",
            &segs(&[&sys, "question two"]),
            backend_key("a"),
            1 << 20,
        );
        // A third conversation matches only the shared system prompt: no affinity.
        let m = idx.lookup("m", &segs(&[&sys, "question three"]));
        assert_eq!(m.backend, backend_key("a"));
        assert_eq!(m.matched, m.shared);
        assert_eq!(m.ratio(), 0.0);
        // The second conversation continuing matches beyond the shared part.
        let m = idx.lookup("m", &segs(&[&sys, "question two", "answer", "more"]));
        assert!(m.ratio() > 0.9, "{m:?}");
    }

    #[test]
    fn the_most_recent_backend_wins_and_memory_is_bounded() {
        let idx = PrefixIndex::default();
        let p = segs(&["x", "y"]);
        idx.insert("m", &p, backend_key("a"), 1 << 20);
        idx.insert("m", &p, backend_key("b"), 1 << 20);
        assert_eq!(idx.lookup("m", &p).backend, backend_key("b"));
        idx.forget_backend(backend_key("b"));
        assert_eq!(idx.lookup("m", &p).backend, backend_key("a"));
        let budget = NODE_BYTES * SHARDS * 64;
        for i in 0..10_000 {
            let s = format!("conversation {i}");
            idx.insert(
                &format!("m{}", i % 7),
                &segs(&[&s]),
                backend_key("a"),
                budget,
            );
        }
        assert!(idx.nodes() <= SHARDS * 64, "{}", idx.nodes());
        assert!(idx.evicted.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn prompt_strings_are_blocked() {
        let p = vec![b'a'; PROMPT_BLOCK * 2 + 1];
        assert_eq!(prompt_blocks(&p).count(), 3);
    }
}
