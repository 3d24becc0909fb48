//! The set behind a rule's `key_in`: one byte arena per rule, so a 100,000-key partner
//! list costs about its bytes, not 100,000 allocations.
//!
//! Layout: the keys are grouped by bucket (`xxh3_64` of the key, mapped onto about one
//! bucket per two keys) and written one after another, each as a LEB128 length and its
//! bytes; `starts[b]..starts[b + 1]` is bucket `b`'s run of the arena. A lookup hashes
//! once and compares the key with the few keys of one run, so membership is exact (no
//! false positives: a partner list must not admit strangers) and costs the same for 10
//! keys or 10 million. The set is immutable and shared: cloning it (the router keeps a
//! copy of each service's config) only bumps a reference count.

use std::sync::Arc;

/// Keys listed in `key_in`.
#[derive(Clone)]
pub struct KeySet(Arc<Arena>);

struct Arena {
    /// Every distinct key, grouped by bucket, each as LEB128 length + bytes.
    bytes: Box<[u8]>,
    /// `starts[b]` is where bucket `b` begins in `bytes`; one more entry closes the last.
    starts: Box<[u32]>,
    /// Distinct keys.
    len: usize,
}

/// The keys do not fit a 4 GiB arena (offsets are 32-bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// Keys per bucket on average: a lookup compares the key with about this many others.
const LOAD: usize = 2;

impl KeySet {
    /// The set of `keys` (duplicates count once).
    pub fn new<K: AsRef<[u8]>>(keys: &[K]) -> Result<KeySet, TooLarge> {
        KeySet::build(keys.len(), |i| keys[i].as_ref())
    }

    /// The set of the keys packed one after another in `bytes`, key `i` ending at
    /// `ends[i]`.
    pub(super) fn from_packed(bytes: &[u8], ends: &[usize]) -> Result<KeySet, TooLarge> {
        KeySet::build(ends.len(), |i| {
            let start = if i == 0 { 0 } else { ends[i - 1] };
            &bytes[start..ends[i]]
        })
    }

    /// The set of `n` keys, `key(i)` the `i`th.
    fn build<'k>(n: usize, key: impl Fn(usize) -> &'k [u8]) -> Result<KeySet, TooLarge> {
        let n_buckets = n.div_ceil(LOAD).max(1);
        // Counting sort of the key indices by bucket.
        let bucket_of: Vec<u32> = (0..n).map(|i| bucket(key(i), n_buckets) as u32).collect();
        let mut first = vec![0u32; n_buckets + 1];
        for &b in &bucket_of {
            first[b as usize + 1] += 1;
        }
        for b in 0..n_buckets {
            first[b + 1] += first[b];
        }
        let mut next = first.clone();
        let mut order = vec![0u32; n];
        for (i, &b) in bucket_of.iter().enumerate() {
            order[next[b as usize] as usize] = i as u32;
            next[b as usize] += 1;
        }
        drop(bucket_of);
        let total: usize = (0..n).map(|i| key(i).len() + 5).sum();
        let mut bytes = Vec::with_capacity(total.min(u32::MAX as usize));
        let mut starts = Vec::with_capacity(n_buckets + 1);
        let mut len = 0;
        for b in 0..n_buckets {
            let start = bytes.len();
            starts.push(u32::try_from(start).map_err(|_| TooLarge)?);
            for &i in &order[first[b] as usize..first[b + 1] as usize] {
                let key = key(i as usize);
                if run_contains(&bytes[start..], key) {
                    continue;
                }
                push_len(&mut bytes, key.len());
                bytes.extend_from_slice(key);
                len += 1;
            }
        }
        starts.push(u32::try_from(bytes.len()).map_err(|_| TooLarge)?);
        Ok(KeySet(Arc::new(Arena {
            bytes: bytes.into_boxed_slice(),
            starts: starts.into_boxed_slice(),
            len,
        })))
    }

    /// Whether `key` is one of the listed keys (byte for byte).
    #[inline]
    pub fn contains(&self, key: &[u8]) -> bool {
        let a = &*self.0;
        let b = bucket(key, a.starts.len() - 1);
        match (a.starts.get(b), a.starts.get(b + 1)) {
            (Some(&s), Some(&e)) => a
                .bytes
                .get(s as usize..e as usize)
                .is_some_and(|run| run_contains(run, key)),
            _ => false,
        }
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.0.len
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// Every key, in arena order (by bucket, not as listed).
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut run: &[u8] = &self.0.bytes;
        std::iter::from_fn(move || {
            let (len, rest) = read_len(run)?;
            let (key, tail) = rest.split_at_checked(len)?;
            run = tail;
            Some(key)
        })
    }

    /// Heap bytes the set holds (arena and bucket starts), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.0.bytes.len() + self.0.starts.len() * std::mem::size_of::<u32>()
    }
}

/// Two sets are equal when they hold the same keys, however they were listed.
impl PartialEq for KeySet {
    fn eq(&self, other: &KeySet) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.len() == other.len() && self.iter().all(|k| other.contains(k)))
    }
}

impl Eq for KeySet {}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySet({} keys)", self.0.len)
    }
}

/// `key_in = [...]` straight into a set: the listed keys are gathered in one buffer as
/// the parser hands them over (no `String` per key), then arranged into the arena. A
/// large array never reaches the parser: `super::lift` reads it and leaves a marker.
impl<'de> serde::Deserialize<'de> for KeySet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeySet, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = KeySet;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of keys")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> Result<KeySet, S::Error> {
                let mut bytes = Vec::new();
                let mut ends: Vec<usize> = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(key) = seq.next_element::<Key<'de>>()? {
                    bytes.extend_from_slice(key.0.as_bytes());
                    ends.push(bytes.len());
                }
                KeySet::from_packed(&bytes, &ends)
                    .map_err(|_| serde::de::Error::custom("more than 4 GiB of keys"))
            }
            /// The marker of an array the config loader read itself (`super::lift`);
            /// any other string is the type error it always was.
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeySet, E> {
                super::lift::claim(v)
                    .ok_or_else(|| E::invalid_type(serde::de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_seq(Keys)
    }
}

/// One listed key, borrowed from the parser where it can be.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(v.to_string().into()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }
        }
        d.deserialize_str(V)
    }
}

/// Bucket of `key` among `n` (`n` > 0): the hash's high bits scaled onto `0..n`.
#[inline]
fn bucket(key: &[u8], n: usize) -> usize {
    let h = xxhash_rust::xxh3::xxh3_64(key);
    ((u128::from(h) * n as u128) >> 64) as usize
}

/// Whether the run of length-prefixed keys holds `key`.
#[inline]
fn run_contains(mut run: &[u8], key: &[u8]) -> bool {
    while let Some((len, rest)) = read_len(run) {
        let Some((k, tail)) = rest.split_at_checked(len) else {
            return false;
        };
        if k == key {
            return true;
        }
        run = tail;
    }
    false
}

fn push_len(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A LEB128 length and the bytes after it; `None` at the end of the run (or on a
/// truncated length, which the builder never writes).
#[inline]
fn read_len(run: &[u8]) -> Option<(usize, &[u8])> {
    let mut n = 0usize;
    for (i, &b) in run.iter().enumerate().take(10) {
        n |= usize::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some((n, &run[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iteration_gives_every_key_once_and_equality_ignores_order() {
        let a = KeySet::new(&["b", "a", "c", "a"]).unwrap();
        let mut keys: Vec<&[u8]> = a.iter().collect();
        keys.sort_unstable();
        assert_eq!(keys, [b"a".as_slice(), b"b", b"c"]);
        assert_eq!(a, KeySet::new(&["c", "b", "a"]).unwrap());
        assert_ne!(a, KeySet::new(&["c", "b"]).unwrap());
        assert_ne!(a, KeySet::new(&["c", "b", "d"]).unwrap());
    }

    #[test]
    fn lookups_find_exactly_the_listed_keys() {
        let set = KeySet::new(&["partner-acme", "partner-globex", ""]).expect("set");
        assert!(set.contains(b"partner-acme"));
        assert!(set.contains(b"partner-globex"));
        assert!(set.contains(b""));
        assert!(!set.contains(b"partner-acm"));
        assert!(!set.contains(b"partner-acme "));
        assert!(!set.contains(b"PARTNER-ACME"));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn duplicates_count_once() {
        let set = KeySet::new(&["a", "b", "a", "a"]).expect("set");
        assert_eq!(set.len(), 2);
        assert!(set.contains(b"a") && set.contains(b"b") && !set.contains(b"c"));
    }

    #[test]
    fn keys_of_every_length_class_round_trip() {
        // Lengths around the one- and two-byte LEB128 boundaries.
        let keys: Vec<Vec<u8>> = [0, 1, 126, 127, 128, 129, 300, 16_383, 16_384, 70_000]
            .iter()
            .map(|&n| vec![b'k'; n])
            .collect();
        let set = KeySet::new(&keys).expect("set");
        for k in &keys {
            assert!(set.contains(k), "length {}", k.len());
        }
        assert!(!set.contains(&[b'k'; 2]));
        assert!(!set.contains(&vec![b'k'; 16_385]));
    }

    #[test]
    fn a_large_set_has_no_false_positives_or_negatives() {
        let keys: Vec<String> = (0..100_000).map(|i| format!("user-{i}")).collect();
        let set = KeySet::new(&keys).expect("set");
        assert_eq!(set.len(), keys.len());
        assert!(keys.iter().all(|k| set.contains(k.as_bytes())));
        // Near misses: other numbers, prefixes and extensions of listed keys.
        assert!((100_000..200_000).all(|i| !set.contains(format!("user-{i}").as_bytes())));
        assert!((0..10_000).all(|i| !set.contains(format!("user-{i}x").as_bytes())));
        assert!(!set.contains(b"user-") && !set.contains(b"user"));
    }

    #[test]
    fn a_key_costs_its_length_and_a_few_bytes() {
        // 1,000 keys like the scale bench's (`s17-u000123`, 11 bytes).
        let keys: Vec<String> = (0..1000).map(|i| format!("s17-u{i:06}")).collect();
        let set = KeySet::new(&keys).expect("set");
        let key_bytes: usize = keys.iter().map(String::len).sum();
        let overhead = (set.heap_bytes() - key_bytes) as f64 / keys.len() as f64;
        // One length byte, plus a 4-byte bucket start per two keys.
        assert!(overhead <= 3.01, "{overhead} bytes per key beyond the key");
        assert!(overhead >= 1.0, "{overhead}: the lengths must be stored");
    }

    #[test]
    fn clones_share_the_arena() {
        let set = KeySet::new(&["a"]).expect("set");
        let copy = set.clone();
        assert!(Arc::ptr_eq(&set.0, &copy.0));
    }
}
