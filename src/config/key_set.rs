//! The set behind a rule's `key_in`: looked up once per request with the user's key, so
//! it hashes with one `xxh3` call instead of std's SipHash (a `key_in` list comes from
//! the operator's config, not from clients, so flooding it is not a concern).

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// Keys listed in `key_in`.
pub type KeySet = HashSet<Vec<u8>, BuildHasherDefault<KeyHasher>>;

/// Hashes a byte string as `xxh3_64_with_seed(bytes, len)`: `Hash for [u8]` writes the
/// length first, then the bytes in one call.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_usize(&mut self, n: usize) {
        self.0 ^= n as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_by_slice_find_exactly_the_listed_keys() {
        let set: KeySet = ["partner-acme", "partner-globex", ""]
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect();
        assert!(set.contains(&b"partner-acme"[..]));
        assert!(set.contains(&b"partner-globex"[..]));
        assert!(set.contains(&b""[..]));
        assert!(!set.contains(&b"partner-acm"[..]));
        assert!(!set.contains(&b"partner-acme "[..]));
    }
}
