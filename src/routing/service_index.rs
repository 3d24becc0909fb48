//! [`ServiceIndex`]: which service a request belongs to (SPEC "Service matching") without
//! looking at unrelated services, as NGINX finds a `server_name` (exact names in a hash,
//! then wildcard suffixes) and Envoy a virtual host.
//!
//! Three kinds of candidates can match a request: the services naming its host exactly
//! (a table keyed by the lower-cased host), the services with a wildcard suffix of it
//! (a table keyed by suffix, looked up once per distinct configured suffix length), and
//! the services without `hosts`. Each list is sorted longest `path_prefix` first, then by
//! config order, so its first prefix that matches is its best; the three bests are
//! compared by (prefix length, exact > wildcard > any host, config order). The cost
//! depends on the request's own host and on the services that share it, not on how many
//! services the table holds.

use super::compare::{eq_lower, hash_lower};
use crate::config::{HostPattern, ServiceConfig};
use std::collections::BTreeMap;

/// The compiled matcher; built once per routing table.
#[derive(Debug, Default)]
pub struct ServiceIndex {
    exact: HostTable,
    wildcard: HostTable,
    /// Distinct lengths of the wildcard suffixes (`.example.com`), longest first.
    suffix_lens: Box<[usize]>,
    any_host: Candidates,
}

/// Services sharing one host key: `(service index, path_prefix)`, longest prefix first,
/// then config order.
#[derive(Debug, Default)]
struct Candidates(Box<[(usize, Box<[u8]>)]>);

/// How a service's `hosts` matched: the SPEC tie order, exact > wildcard > any host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HostRank {
    Any,
    Wildcard,
    Exact,
}

/// The best match so far.
#[derive(Debug, Clone, Copy)]
struct Best {
    service: usize,
    prefix_len: usize,
    rank: HostRank,
}

impl Best {
    fn beats(&self, other: &Best) -> bool {
        (self.prefix_len, self.rank) > (other.prefix_len, other.rank)
            || (self.prefix_len, self.rank) == (other.prefix_len, other.rank)
                && self.service < other.service
    }
}

impl ServiceIndex {
    /// Indexes `services` (in config order).
    pub fn new(services: &[ServiceConfig]) -> ServiceIndex {
        let mut exact: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
        let mut wildcard: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
        let mut any_host = Vec::new();
        for (i, s) in services.iter().enumerate() {
            if s.hosts.is_empty() {
                any_host.push(i);
            }
            for h in &s.hosts {
                let (map, key) = match h {
                    HostPattern::Exact(h) => (&mut exact, h),
                    HostPattern::Wildcard(suffix) => (&mut wildcard, suffix),
                };
                let list = map.entry(key.as_bytes()).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        let mut suffix_lens: Vec<usize> = wildcard.keys().map(|k| k.len()).collect();
        suffix_lens.sort_unstable_by(|a, b| b.cmp(a));
        suffix_lens.dedup();
        ServiceIndex {
            exact: HostTable::new(exact, services),
            wildcard: HostTable::new(wildcard, services),
            suffix_lens: suffix_lens.into_boxed_slice(),
            any_host: Candidates::new(any_host, services),
        }
    }

    /// The service for a request to `host` (port already stripped, any ASCII case) and
    /// `path`; `None`: no service matches (404).
    #[inline]
    pub fn find(&self, host: &[u8], path: &[u8]) -> Option<usize> {
        let mut best = None;
        if let Some(c) = self.exact.get(host) {
            c.best(path, HostRank::Exact, &mut best);
        }
        for &len in self.suffix_lens.iter() {
            // A wildcard needs at least one byte before its suffix.
            let Some(start) = host.len().checked_sub(len).filter(|&s| s > 0) else {
                continue;
            };
            let suffix = &host[start..];
            if suffix.first() != Some(&b'.') {
                continue;
            }
            if let Some(c) = self.wildcard.get(suffix) {
                c.best(path, HostRank::Wildcard, &mut best);
            }
        }
        self.any_host.best(path, HostRank::Any, &mut best);
        best.map(|b| b.service)
    }
}

impl Candidates {
    fn new(mut services: Vec<usize>, all: &[ServiceConfig]) -> Candidates {
        let prefix = |i: usize| all.get(i).map_or("", |s| s.path_prefix.as_str());
        services.sort_by(|&a, &b| prefix(b).len().cmp(&prefix(a).len()).then(a.cmp(&b)));
        Candidates(
            services
                .into_iter()
                .map(|i| (i, prefix(i).as_bytes().into()))
                .collect(),
        )
    }

    /// Updates `best` with this list's best match for `path`, if it beats it.
    #[inline]
    fn best(&self, path: &[u8], rank: HostRank, best: &mut Option<Best>) {
        for (service, prefix) in self.0.iter() {
            if best.is_some_and(|b| prefix.len() < b.prefix_len) {
                // Shorter prefixes follow: none of them can win.
                return;
            }
            if path.starts_with(prefix) {
                let here = Best {
                    service: *service,
                    prefix_len: prefix.len(),
                    rank,
                };
                if best.is_none_or(|b| here.beats(&b)) {
                    *best = Some(here);
                }
                return;
            }
        }
    }
}

/// An immutable hash table from lower-case host names (or suffixes) to candidates,
/// looked up ignoring ASCII case: the entries are grouped by bucket, and
/// `starts[b]..starts[b + 1]` are bucket `b`'s.
#[derive(Debug, Default)]
struct HostTable {
    entries: Box<[(Box<[u8]>, Candidates)]>,
    starts: Box<[usize]>,
}

impl HostTable {
    fn new(map: BTreeMap<&[u8], Vec<usize>>, all: &[ServiceConfig]) -> HostTable {
        let n_buckets = map.len().max(1);
        let mut entries: Vec<(usize, Box<[u8]>, Candidates)> = map
            .into_iter()
            .map(|(host, list)| {
                (
                    bucket(host, n_buckets),
                    host.into(),
                    Candidates::new(list, all),
                )
            })
            .collect();
        entries.sort_by_key(|e| e.0);
        let mut starts = Vec::with_capacity(n_buckets + 1);
        let mut next = 0;
        for b in 0..=n_buckets {
            while entries.get(next).is_some_and(|e| e.0 < b) {
                next += 1;
            }
            starts.push(next);
        }
        HostTable {
            entries: entries.into_iter().map(|(_, h, c)| (h, c)).collect(),
            starts: starts.into_boxed_slice(),
        }
    }

    /// The candidates of `host` (any ASCII case).
    #[inline]
    fn get(&self, host: &[u8]) -> Option<&Candidates> {
        if self.entries.is_empty() {
            return None;
        }
        let b = bucket(host, self.starts.len() - 1);
        let (&s, &e) = (self.starts.get(b)?, self.starts.get(b + 1)?);
        self.entries
            .get(s..e)?
            .iter()
            .find(|(h, _)| eq_lower(host, h))
            .map(|(_, c)| c)
    }
}

/// Bucket of `host` among `n` (`n` > 0).
#[inline]
fn bucket(host: &[u8], n: usize) -> usize {
    ((u128::from(hash_lower(host)) * n as u128) >> 64) as usize
}
