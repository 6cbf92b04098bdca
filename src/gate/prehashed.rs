//! Maps whose keys carry a hash already computed under a secret seed (a key tag, a client
//! address hashed once per request): the map's own hasher passes that hash through instead of
//! hashing it again with SipHash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` whose keys hash themselves to a seeded hash (see the module doc).
pub type PrehashedMap<K, V> = HashMap<K, V, BuildHasherDefault<PassThrough>>;

/// Takes the seeded hash a key writes (`u64`, or the low half of a `u128`) as the hash.
#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write(&mut self, bytes: &[u8]) {
        // Only reached by a key that writes raw bytes; still a usable hash.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    fn write_u128(&mut self, hash: u128) {
        self.0 = hash as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn the_written_hash_is_the_hash() {
        let b = BuildHasherDefault::<PassThrough>::default();
        assert_eq!(b.hash_one(0xdead_beef_u64), 0xdead_beef);
        assert_eq!(b.hash_one((7u128 << 64) | 9), 9);
        assert_ne!(b.hash_one([1u8, 2]), 0, "raw bytes still hash");
    }
}
