//! Inbound API keys: the key ring (published behind an `ArcSwap`, read lock-free per request),
//! how a request presents a key (`Authorization: Bearer`, `x-api-key`, `api-key`), SHA-256
//! digests compared in constant time (a key proved once is then matched by a keyed-hash tag,
//! [`Proven`]), model globs, expiry, and each key's request and token budgets (a small mutex
//! per key, never held across an await). Keys are stored only as digests and tags; the key
//! itself is never kept, logged or shown.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderMap;
use parking_lot::{Mutex, RwLock};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128 as _, SipHasher13};
use subtle::ConstantTimeEq;

use super::prehashed::PrehashedMap;
use crate::config::schema::ApiKeyConfig;

/// Longest key name.
pub const MAX_NAME_LEN: usize = 64;
/// Most keys the ring holds (config and admin together).
pub const MAX_KEYS: usize = 10_000;
/// Longest key a request may present (longer ones are refused without hashing).
const MAX_PRESENTED_LEN: usize = 512;

/// A key as resolved from config or the admin API: its digest, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub name: Arc<str>,
    pub digest: [u8; 32],
    /// Model globs; `None` = every model.
    pub models: Option<Vec<String>>,
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
    pub expires: Option<SystemTime>,
    /// `expires` as configured (shown by `GET /admin/keys`).
    pub expires_text: Option<String>,
    /// The file the key was read from, if any (shown; the key is not).
    pub key_file: Option<String>,
}

impl std::fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySpec")
            .field("name", &self.name)
            .field("models", &self.models)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .field("expires", &self.expires_text)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a key.
pub fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

fn parse_hex_digest(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

/// Validates one `auth.keys` entry (or an admin `POST /admin/keys` body) into a [`KeySpec`],
/// reading `key_file` if given. Errors never contain the key.
pub fn key_spec(entry: &ApiKeyConfig) -> Result<KeySpec, String> {
    let name = entry.name.trim();
    if name.is_empty() {
        return Err("name: required".into());
    }
    if name.len() > MAX_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c))
    {
        return Err(format!(
            "name: {name:?} must be 1-{MAX_NAME_LEN} characters of letters, digits and - _ . @ :"
        ));
    }
    let given = [
        entry.key.is_some(),
        entry.key_hash.is_some(),
        entry.key_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err("exactly one of `key`, `key_hash` or `key_file` is required".into());
    }
    let digest = if let Some(k) = &entry.key {
        let k = k.trim();
        if k.len() < 8 || k.len() > MAX_PRESENTED_LEN {
            return Err(format!(
                "key: must be 8 to {MAX_PRESENTED_LEN} characters long"
            ));
        }
        digest(k.as_bytes())
    } else if let Some(h) = &entry.key_hash {
        parse_hex_digest(h).ok_or("key_hash: must be a SHA-256 digest, 64 hex characters")?
    } else {
        let f = entry.key_file.as_deref().unwrap_or_default();
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read key_file {f:?}: {e}"))?;
        let k = text.lines().next().unwrap_or_default().trim();
        if k.len() < 8 || k.len() > MAX_PRESENTED_LEN {
            return Err(format!(
                "key_file {f:?}: the first line must hold a key of 8 to {MAX_PRESENTED_LEN} characters"
            ));
        }
        digest(k.as_bytes())
    };
    if let Some(models) = &entry.models {
        if models.iter().any(|m| m.trim().is_empty()) {
            return Err("models: an entry is empty".into());
        }
    }
    let expires = match &entry.expires {
        Some(t) => Some(crate::gate::time::parse_rfc3339(t).ok_or_else(|| {
            format!("expires: {t:?} is not an RFC 3339 time (e.g. 2027-01-31T00:00:00Z)")
        })?),
        None => None,
    };
    Ok(KeySpec {
        name: Arc::from(name),
        digest,
        models: entry.models.clone(),
        requests_per_minute: entry.requests_per_minute,
        tokens_per_minute: entry.tokens_per_minute,
        expires,
        expires_text: entry.expires.clone(),
        key_file: entry.key_file.clone(),
    })
}

/// Key model globs: `*` matches any run of characters, `?` one; everything else literally
/// (case-sensitive).
pub use olla_actors::spec::glob_match_exact as glob_match;

/// A refilling budget: `capacity` units, `capacity` per minute back. The level may go below
/// zero (tokens charged after the fact); spending needs a positive level.
#[derive(Debug)]
pub struct Budget {
    capacity: f64,
    per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl Budget {
    pub fn per_minute(capacity: u64, now: Instant) -> Self {
        Self {
            capacity: capacity as f64,
            per_sec: capacity as f64 / 60.0,
            state: Mutex::new((capacity as f64, now)),
        }
    }

    fn refill(&self, s: &mut (f64, Instant), now: Instant) {
        let dt = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + dt * self.per_sec).min(self.capacity);
        s.1 = now;
    }

    /// Time until the level is positive (`None`: it is now).
    fn wait_for_positive(&self, level: f64) -> Option<Duration> {
        (level < 1.0).then(|| Duration::from_secs_f64((1.0 - level) / self.per_sec.max(1e-9)))
    }

    /// Takes `n` units if the level allows; else how long until it does.
    pub fn take(&self, n: f64, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        if s.0 >= n {
            s.0 -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - s.0) / self.per_sec.max(1e-9)))
        }
    }

    /// Whether anything is left (without spending); else how long until it is.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        self.wait_for_positive(s.0).map_or(Ok(()), Err)
    }

    /// Spends `n` units after the fact (the level may go negative).
    pub fn charge(&self, n: f64, now: Instant) {
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        // Bounded debt: at most one hour's worth.
        s.0 = (s.0 - n).max(-60.0 * self.capacity);
    }

    pub fn level(&self, now: Instant) -> f64 {
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        s.0
    }
}

/// A key's live budgets; kept across reloads while its limits stay the same.
#[derive(Debug)]
pub struct KeyLimits {
    pub requests: Option<Budget>,
    pub tokens: Option<Budget>,
}

impl KeyLimits {
    /// The key has a requests or tokens budget.
    pub fn any(&self) -> bool {
        self.requests.is_some() || self.tokens.is_some()
    }
}

/// One key in the ring.
#[derive(Debug)]
pub struct ApiKey {
    pub spec: KeySpec,
    pub limits: Arc<KeyLimits>,
}

impl ApiKey {
    /// Charges `tokens` to this key's tokens/min budget (none: ignored).
    pub fn charge_tokens(&self, tokens: u64) {
        if tokens == 0 {
            return;
        }
        if let Some(b) = &self.limits.tokens {
            b.charge(tokens as f64, Instant::now());
        }
    }

    /// Charges a finished request's usage (prompt plus completion tokens) to the key that
    /// admitted it, whose budget it is even if the ring changed since; what a request
    /// finisher calls.
    pub fn charge_usage(&self, tokens_in: Option<u64>, tokens_out: Option<u64>) {
        let total = tokens_in
            .unwrap_or(0)
            .saturating_add(tokens_out.unwrap_or(0));
        self.charge_tokens(total);
    }

    /// The key may use `model` (`None`: the request names none).
    pub fn allows_model(&self, model: Option<&str>) -> bool {
        match (&self.spec.models, model) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(globs), Some(m)) => globs.iter().any(|g| glob_match(g, m)),
        }
    }

    /// Settings as `GET /admin/keys` shows them (never the key or its digest).
    pub fn describe(&self) -> Value {
        let now = Instant::now();
        json!({
            "name": &*self.spec.name,
            "models": self.spec.models,
            "requests_per_minute": self.spec.requests_per_minute,
            "tokens_per_minute": self.spec.tokens_per_minute,
            "expires": self.spec.expires_text,
            "expired": self.spec.expires.is_some_and(|e| SystemTime::now() >= e),
            "key_file": self.spec.key_file,
            "tokens_left": self.limits.tokens.as_ref().map(|b| b.level(now).floor() as i64),
        })
    }
}

/// Why a request was refused a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Missing,
    Invalid,
    Expired,
}

impl KeyRefusal {
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => {
                "missing API key (send Authorization: Bearer <key>, x-api-key or api-key)"
            }
            Self::Invalid => "invalid API key",
            Self::Expired => "API key expired",
        }
    }
}

/// Which budget refused a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLimitKind {
    Requests,
    Tokens,
}

#[derive(Default)]
struct KeySet {
    /// `auth.keys` is configured: requests need a key.
    enabled: bool,
    by_digest: HashMap<[u8; 32], Arc<ApiKey>>,
    by_name: BTreeMap<Arc<str>, Arc<ApiKey>>,
    proven: Proven,
}

/// Keys a request has already proved against their SHA-256 digest, remembered by a 128-bit
/// tag: SipHash-1-3 (128-bit output) of the presented key under a secret per-set key. A client
/// presenting the same key again is matched by its tag (one SipHash pass over a short key, a
/// tenth of a SHA-256), and the key itself is still never kept. Matching a tag without the key means
/// guessing a 128-bit keyed hash online. It lives in the key set, so any change to the ring (a
/// key removed, replaced or expired by config) starts it empty; it holds at most one tag per key.
struct Proven {
    /// The secret SipHash key of this set's tags.
    secret: [u8; 16],
    tags: RwLock<PrehashedMap<u128, Arc<ApiKey>>>,
}

impl Default for Proven {
    fn default() -> Self {
        // `RandomState` is seeded from the OS once per thread; SipHash of constants under it
        // gives an unpredictable 128-bit key.
        let seed = RandomState::new();
        let mut secret = [0u8; 16];
        secret[..8].copy_from_slice(&seed.hash_one(1u8).to_le_bytes());
        secret[8..].copy_from_slice(&seed.hash_one(2u8).to_le_bytes());
        Self {
            secret,
            tags: RwLock::default(),
        }
    }
}

impl Proven {
    /// SipHash-1-3 with a 128-bit output: one pass over the key.
    fn tag(&self, key: &[u8]) -> u128 {
        let mut h = SipHasher13::new_with_key(&self.secret);
        h.write(key);
        h.finish128().as_u128()
    }

    fn get(&self, tag: u128) -> Option<Arc<ApiKey>> {
        self.tags.read().get(&tag).cloned()
    }

    fn remember(&self, tag: u128, key: &Arc<ApiKey>, most: usize) {
        let mut tags = self.tags.write();
        if tags.len() < most {
            tags.insert(tag, key.clone());
        }
    }
}

/// The inbound key ring.
pub struct KeyRing {
    set: ArcSwap<KeySet>,
    /// Serialises writers (admin add/remove, reload); readers never take it.
    write: Mutex<()>,
}

impl Default for KeyRing {
    fn default() -> Self {
        Self {
            set: ArcSwap::from_pointee(KeySet::default()),
            write: Mutex::new(()),
        }
    }
}

/// The key a request presents, if any.
pub fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let b = v.as_bytes();
        if b.len() > 7 && b[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(b[7..].trim_ascii());
        }
    }
    headers
        .get("x-api-key")
        .or_else(|| headers.get("api-key"))
        .map(|v| v.as_bytes().trim_ascii())
}

impl KeyRing {
    /// A ring with `specs` (`None` = keys off).
    pub fn new(specs: Option<&[KeySpec]>) -> Self {
        let ring = Self::default();
        ring.replace(specs);
        ring
    }

    /// Keys are required.
    pub fn enabled(&self) -> bool {
        self.set.load().enabled
    }

    fn build(enabled: bool, keys: Vec<Arc<ApiKey>>) -> KeySet {
        let mut set = KeySet {
            enabled,
            ..Default::default()
        };
        for k in keys {
            set.by_digest.insert(k.spec.digest, k.clone());
            set.by_name.insert(k.spec.name.clone(), k);
        }
        set
    }

    fn limits_for(old: &KeySet, spec: &KeySpec) -> Arc<KeyLimits> {
        if let Some(prev) = old.by_name.get(&spec.name) {
            if prev.spec.requests_per_minute == spec.requests_per_minute
                && prev.spec.tokens_per_minute == spec.tokens_per_minute
            {
                return prev.limits.clone();
            }
        }
        let now = Instant::now();
        let budget = |n: u64| (n > 0).then(|| Budget::per_minute(n, now));
        Arc::new(KeyLimits {
            requests: budget(spec.requests_per_minute),
            tokens: budget(spec.tokens_per_minute),
        })
    }

    /// Replaces every key (config load and reload); budgets of unchanged keys carry over.
    pub fn replace(&self, specs: Option<&[KeySpec]>) {
        let _w = self.write.lock();
        let old = self.set.load_full();
        let keys = specs
            .unwrap_or_default()
            .iter()
            .map(|s| {
                Arc::new(ApiKey {
                    spec: s.clone(),
                    limits: Self::limits_for(&old, s),
                })
            })
            .collect();
        self.set.store(Arc::new(Self::build(specs.is_some(), keys)));
    }

    /// Adds a key at run time. Errors: keys off, the name or the key already present, full.
    pub fn add(&self, spec: KeySpec) -> Result<(), String> {
        let _w = self.write.lock();
        let old = self.set.load_full();
        if !old.enabled {
            return Err("inbound API keys are off: set `auth.keys` (it may be an empty list) in the config to use them".into());
        }
        if old.by_name.contains_key(&spec.name) {
            return Err(format!("a key named {:?} exists", &*spec.name));
        }
        if old.by_digest.contains_key(&spec.digest) {
            return Err("this key is already in use under another name".into());
        }
        if old.by_name.len() >= MAX_KEYS {
            return Err(format!("the key ring is full ({MAX_KEYS} keys)"));
        }
        let mut keys: Vec<_> = old.by_name.values().cloned().collect();
        keys.push(Arc::new(ApiKey {
            limits: Self::limits_for(&old, &spec),
            spec,
        }));
        self.set.store(Arc::new(Self::build(true, keys)));
        Ok(())
    }

    /// Revokes a key at once; `false` if there is none by that name.
    pub fn remove(&self, name: &str) -> bool {
        let _w = self.write.lock();
        let old = self.set.load_full();
        if !old.by_name.contains_key(name) {
            return false;
        }
        let keys = old
            .by_name
            .values()
            .filter(|k| &*k.spec.name != name)
            .cloned()
            .collect();
        self.set.store(Arc::new(Self::build(old.enabled, keys)));
        true
    }

    /// Every key's settings, by name.
    pub fn list(&self) -> Vec<Value> {
        self.set
            .load()
            .by_name
            .values()
            .map(|k| k.describe())
            .collect()
    }

    /// The key named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<ApiKey>> {
        self.set.load().by_name.get(name).cloned()
    }

    /// The key `headers` present. `Ok(None)`: keys are off.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Arc<ApiKey>>, KeyRefusal> {
        let set = self.set.load();
        if !set.enabled {
            return Ok(None);
        }
        let given = presented(headers).filter(|k| !k.is_empty());
        let Some(given) = given else {
            return Err(KeyRefusal::Missing);
        };
        if given.len() > MAX_PRESENTED_LEN {
            return Err(KeyRefusal::Invalid);
        }
        let tag = set.proven.tag(given);
        let key = match set.proven.get(tag) {
            Some(key) => key,
            None => {
                let d = digest(given);
                let Some(key) = set.by_digest.get(&d) else {
                    return Err(KeyRefusal::Invalid);
                };
                if !bool::from(key.spec.digest.ct_eq(&d)) {
                    return Err(KeyRefusal::Invalid);
                }
                set.proven.remember(tag, key, set.by_digest.len());
                key.clone()
            }
        };
        if key.spec.expires.is_some_and(|e| SystemTime::now() >= e) {
            return Err(KeyRefusal::Expired);
        }
        Ok(Some(key))
    }
}

/// Admits one request against a key's budgets: one request from the requests/min budget, and
/// a positive tokens/min balance. `Err` says which refused and how long to wait.
pub fn admit(key: &ApiKey, now: Instant) -> Result<(), (KeyLimitKind, Duration)> {
    if let Some(t) = &key.limits.tokens {
        t.check(now).map_err(|w| (KeyLimitKind::Tokens, w))?;
    }
    if let Some(r) = &key.limits.requests {
        r.take(1.0, now).map_err(|w| (KeyLimitKind::Requests, w))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn entry(name: &str, key: &str) -> ApiKeyConfig {
        ApiKeyConfig {
            name: name.into(),
            key: Some(key.into()),
            ..Default::default()
        }
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::try_from(value).unwrap());
        h
    }

    #[test]
    fn globs_match_like_shell_patterns() {
        assert!(glob_match("llama*", "llama3:8b"));
        assert!(glob_match("*:8b", "llama3:8b"));
        assert!(glob_match("qwen?-*", "qwen2-7b"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(!glob_match("llama", "llama3"));
        assert!(!glob_match("?", ""));
    }

    #[test]
    fn specs_validate_and_never_echo_the_key() {
        assert!(key_spec(&entry("alice", "sk-alice-123")).is_ok());
        let e = key_spec(&entry("", "sk-alice-123")).unwrap_err();
        assert!(e.contains("name"));
        let e = key_spec(&entry("alice", "short")).unwrap_err();
        assert!(!e.contains("short"));
        let mut both = entry("a", "sk-alice-123");
        both.key_hash = Some("00".repeat(32));
        assert!(key_spec(&both).unwrap_err().contains("exactly one"));
        let hashed = ApiKeyConfig {
            name: "h".into(),
            key_hash: Some(format!("{:x}", Sha256::digest(b"sk-hashed-1"))),
            ..Default::default()
        };
        assert_eq!(key_spec(&hashed).unwrap().digest, digest(b"sk-hashed-1"));
        let bad = ApiKeyConfig {
            key_hash: Some("xyz".into()),
            ..hashed.clone()
        };
        assert!(key_spec(&bad).is_err());
        let mut exp = entry("e", "sk-alice-123");
        exp.expires = Some("tomorrow".into());
        assert!(key_spec(&exp).unwrap_err().contains("RFC 3339"));
        let mut bad_name = entry("a b", "sk-alice-123");
        assert!(key_spec(&bad_name).is_err());
        bad_name.name = "x".repeat(65);
        assert!(key_spec(&bad_name).is_err());
    }

    #[test]
    fn a_proven_key_is_matched_by_its_tag_until_the_ring_changes() {
        let specs = vec![
            key_spec(&entry("alice", "sk-alice-123")).unwrap(),
            key_spec(&entry("bob", "sk-bob-45678")).unwrap(),
        ];
        let ring = KeyRing::new(Some(&specs));
        let alice = headers("authorization", "Bearer sk-alice-123");
        for _ in 0..3 {
            let k = ring.authenticate(&alice).unwrap().unwrap();
            assert_eq!(&*k.spec.name, "alice");
        }
        let bob = ring.authenticate(&headers("x-api-key", "sk-bob-45678"));
        assert_eq!(&*bob.unwrap().unwrap().spec.name, "bob");
        let set = ring.set.load();
        assert_eq!(
            set.proven.tags.read().len(),
            2,
            "one tag per key, however presented"
        );
        assert_ne!(
            set.proven.tag(b"sk-alice-123"),
            set.proven.tag(b"sk-bob-45678")
        );
        drop(set);
        // Wrong keys are refused and never remembered.
        for _ in 0..10 {
            let wrong = headers("authorization", "Bearer sk-alice-124");
            assert_eq!(ring.authenticate(&wrong).unwrap_err(), KeyRefusal::Invalid);
        }
        assert_eq!(ring.set.load().proven.tags.read().len(), 2);
        // Removing a proven key refuses it at once.
        assert!(ring.remove("alice"));
        assert_eq!(ring.authenticate(&alice).unwrap_err(), KeyRefusal::Invalid);
        assert!(ring
            .authenticate(&headers("x-api-key", "sk-bob-45678"))
            .is_ok());
    }

    #[test]
    fn the_three_headers_are_accepted_and_wrong_or_expired_keys_refused() {
        let mut expired = entry("old", "sk-old-000000");
        expired.expires = Some("2001-01-01T00:00:00Z".into());
        let specs = vec![
            key_spec(&entry("alice", "sk-alice-123")).unwrap(),
            key_spec(&expired).unwrap(),
        ];
        let ring = KeyRing::new(Some(&specs));
        for (h, v) in [
            ("authorization", "Bearer sk-alice-123"),
            ("authorization", "bearer  sk-alice-123 "),
            ("x-api-key", "sk-alice-123"),
            ("api-key", "sk-alice-123"),
        ] {
            let k = ring.authenticate(&headers(h, v)).unwrap().unwrap();
            assert_eq!(&*k.spec.name, "alice", "{h}: {v}");
        }
        assert_eq!(
            ring.authenticate(&HeaderMap::new()).unwrap_err(),
            KeyRefusal::Missing
        );
        assert_eq!(
            ring.authenticate(&headers("authorization", "Basic abc"))
                .unwrap_err(),
            KeyRefusal::Missing
        );
        assert_eq!(
            ring.authenticate(&headers("x-api-key", "sk-alice-124"))
                .unwrap_err(),
            KeyRefusal::Invalid
        );
        assert_eq!(
            ring.authenticate(&headers("x-api-key", "sk-old-000000"))
                .unwrap_err(),
            KeyRefusal::Expired
        );
        let off = KeyRing::new(None);
        assert!(off.authenticate(&HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn admin_add_and_remove_take_effect_at_once_and_reload_keeps_budgets() {
        let ring = KeyRing::new(Some(&[]));
        let h = headers("x-api-key", "sk-bob-4567");
        assert!(ring.authenticate(&h).is_err());
        let mut e = entry("bob", "sk-bob-4567");
        e.requests_per_minute = 2;
        ring.add(key_spec(&e).unwrap()).unwrap();
        assert!(ring.add(key_spec(&e).unwrap()).is_err(), "duplicate name");
        let k = ring.authenticate(&h).unwrap().unwrap();
        let now = Instant::now();
        assert!(admit(&k, now).is_ok() && admit(&k, now).is_ok());
        assert_eq!(admit(&k, now).unwrap_err().0, KeyLimitKind::Requests);
        // A reload with the same limits keeps the spent budget.
        ring.replace(Some(&[key_spec(&e).unwrap()]));
        let k = ring.authenticate(&h).unwrap().unwrap();
        assert!(admit(&k, now).is_err());
        assert!(ring.remove("bob"));
        assert!(!ring.remove("bob"));
        assert_eq!(ring.authenticate(&h).unwrap_err(), KeyRefusal::Invalid);
        assert!(KeyRing::new(None).add(key_spec(&e).unwrap()).is_err());
    }

    #[test]
    fn token_budget_refuses_after_charges_until_it_refills() {
        let mut e = entry("t", "sk-tokens-1");
        e.tokens_per_minute = 600; // 10 per second back
        let ring = KeyRing::new(Some(&[key_spec(&e).unwrap()]));
        let k = ring.get("t").unwrap();
        let t0 = Instant::now();
        assert!(admit(&k, t0).is_ok());
        k.charge_usage(Some(50), Some(600));
        let (kind, wait) = admit(&k, t0).unwrap_err();
        assert_eq!(kind, KeyLimitKind::Tokens);
        assert!(wait >= Duration::from_secs(5), "{wait:?}");
        // After the wait the balance is positive again.
        assert!(admit(&k, t0 + wait + Duration::from_millis(200)).is_ok());
    }

    #[test]
    fn models_restrict_by_glob_and_a_restricted_key_needs_a_model() {
        let mut e = entry("m", "sk-models-1");
        e.models = Some(vec!["llama*".into(), "qwen2-7b".into()]);
        let k = ApiKey {
            spec: key_spec(&e).unwrap(),
            limits: Arc::new(KeyLimits {
                requests: None,
                tokens: None,
            }),
        };
        assert!(k.allows_model(Some("llama3:8b")));
        assert!(k.allows_model(Some("qwen2-7b")));
        assert!(!k.allows_model(Some("qwen2-72b")));
        assert!(!k.allows_model(None));
        let d = k.describe();
        assert!(!d.to_string().contains("sk-models-1"));
        assert!(d.get("digest").is_none());
    }
}
