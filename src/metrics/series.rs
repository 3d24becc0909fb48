//! One (service, variant)'s metric values as plain atomics in one allocation
//! ([`Series`]), and the process-wide store of them that `/metrics` reads
//! ([`super::export`]).
//!
//! A series created through prometheus' own vectors costs a copy of its family's
//! descriptor (name, help text, label names) and its label pairs, each a few
//! allocations: about 27 KiB per variant for the families below, 81 MB for 1,000
//! services of 3 variants. Here a variant's whole state is about 2 KiB, the exported
//! text is the same (the store is exported as the same families, label for label), and
//! recording is the same atomic increments, without a lock.
//!
//! Kept across reloads: a table build takes the existing series of a (service, variant)
//! from the store, so counters continue; a reload that removes a variant removes its
//! series ([`remove`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError};

/// The duration histograms' upper bounds ([`super::duration_buckets`]), read on every
/// observation.
static BOUNDS: LazyLock<Box<[f64]>> = LazyLock::new(|| super::duration_buckets().into());

/// A histogram over [`super::duration_buckets`]: one count per bound and one above the
/// last, and the sum. The count is the sum of the buckets, so a scrape always sees
/// cumulative buckets that end at `_count`.
pub struct Hist {
    /// `buckets[i]`: observations in `(bound[i-1], bound[i]]`; the last: above every bound.
    buckets: Box<[AtomicU64]>,
    /// `f64` bits.
    sum: AtomicU64,
}

impl Hist {
    fn new() -> Hist {
        Hist {
            buckets: (0..=BOUNDS.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    #[inline]
    pub fn observe(&self, seconds: f64) {
        let i = BOUNDS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BOUNDS.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let mut cur = self.sum.load(Ordering::Relaxed);
        loop {
            let new = (f64::from_bits(cur) + seconds).to_bits();
            match self
                .sum
                .compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
    }

    /// Cumulative count at each bound (in [`super::duration_buckets`] order), the total
    /// count, and the sum.
    pub fn read(&self) -> (Vec<u64>, u64, f64) {
        let mut total = 0;
        let mut cumulative = Vec::with_capacity(BOUNDS.len());
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            if i < BOUNDS.len() {
                cumulative.push(total);
            }
        }
        (
            cumulative,
            total,
            f64::from_bits(self.sum.load(Ordering::Relaxed)),
        )
    }

    pub fn bounds() -> &'static [f64] {
        &BOUNDS
    }
}

/// Status codes seen by one variant, each with its count. The first [`INLINE_CODES`]
/// distinct codes take a slot each (claimed once, never freed: a series, once created,
/// stays until its variant is removed); a variant that sends more distinct codes than
/// that counts the others in a table of every code, allocated then.
pub struct Codes {
    /// 0: free.
    code: [AtomicU16; INLINE_CODES],
    count: [AtomicU64; INLINE_CODES],
    /// Codes 100..=599, by `code - 100`; a code there exists once it is counted.
    more: OnceLock<Box<[AtomicU64]>>,
}

/// Distinct status codes a variant counts without the full table: the five created at
/// 0 and room for as many again.
pub const INLINE_CODES: usize = 12;

/// Codes 100..=599.
const ALL_CODES: usize = 500;

impl Codes {
    fn new() -> Codes {
        Codes {
            code: std::array::from_fn(|_| AtomicU16::new(0)),
            count: std::array::from_fn(|_| AtomicU64::new(0)),
            more: OnceLock::new(),
        }
    }

    /// The counter of `code` (clamped into 100..=599), created at 0 if new.
    #[inline]
    pub fn counter(&self, code: u16) -> &AtomicU64 {
        let code = code.clamp(100, 599);
        for (c, n) in self.code.iter().zip(&self.count) {
            let mut seen = c.load(Ordering::Relaxed);
            if seen == 0 {
                seen = match c.compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => code,
                    Err(other) => other,
                };
            }
            if seen == code {
                return n;
            }
        }
        self.overflow(code)
    }

    #[cold]
    fn overflow(&self, code: u16) -> &AtomicU64 {
        let table = self
            .more
            .get_or_init(|| (0..ALL_CODES).map(|_| AtomicU64::new(0)).collect());
        // `code` is clamped to 100..=599, so the index is in range; the first slot
        // otherwise (never taken).
        let i = usize::from(code - 100);
        &table[i.min(ALL_CODES - 1)]
    }

    /// Every code that exists, with its count, in no particular order.
    pub fn read(&self) -> Vec<(u16, u64)> {
        let mut out: Vec<(u16, u64)> = self
            .code
            .iter()
            .zip(&self.count)
            .map(|(c, n)| (c.load(Ordering::Relaxed), n.load(Ordering::Relaxed)))
            .filter(|(c, _)| *c != 0)
            .collect();
        if let Some(more) = self.more.get() {
            out.extend(
                (100u16..)
                    .zip(more.iter())
                    .map(|(c, n)| (c, n.load(Ordering::Relaxed)))
                    .filter(|(_, n)| *n > 0),
            );
        }
        out
    }
}

/// gRPC calls of one variant by (status code sent, `grpc-status`), allocated on the
/// variant's first gRPC call (a variant that never sees one pays a pointer). A call
/// answered 200 (nearly all of them) counts by its `grpc-status` alone; the few other
/// (code, status) pairs take one of [`GRPC_INLINE`] slots, then a list under a lock
/// (cold: it needs more than that many distinct pairs). 17 statuses at most per code.
pub struct GrpcCodes {
    /// Code 200, by `grpc-status` 0..=16.
    ok: [AtomicU64; GRPC_STATUSES],
    /// `code << 8 | status + 1`; 0: free.
    key: [AtomicU32; GRPC_INLINE],
    count: [AtomicU64; GRPC_INLINE],
    more: Mutex<Vec<(u32, u64)>>,
}

const GRPC_STATUSES: usize = 17;
/// (code, status) pairs other than 200 a variant counts without a lock.
pub const GRPC_INLINE: usize = 8;

impl GrpcCodes {
    fn new() -> GrpcCodes {
        GrpcCodes {
            ok: std::array::from_fn(|_| AtomicU64::new(0)),
            key: std::array::from_fn(|_| AtomicU32::new(0)),
            count: std::array::from_fn(|_| AtomicU64::new(0)),
            more: Mutex::new(Vec::new()),
        }
    }

    /// Counts one call answered with `code` (clamped into 100..=599) and `status`
    /// (clamped into 0..=16).
    #[inline]
    pub fn count(&self, code: u16, status: u8) {
        let status = status.min(16);
        if code == 200 {
            self.ok[usize::from(status)].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let key = u32::from(code.clamp(100, 599)) << 8 | (u32::from(status) + 1);
        for (k, n) in self.key.iter().zip(&self.count) {
            let mut seen = k.load(Ordering::Relaxed);
            if seen == 0 {
                seen = match k.compare_exchange(0, key, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => key,
                    Err(other) => other,
                };
            }
            if seen == key {
                n.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut more = lock(&self.more);
        match more.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => more.push((key, 1)),
        }
    }

    /// Every (code, status) counted, with its count, in (code, status) order.
    pub fn read(&self) -> Vec<(u16, u8, u64)> {
        let mut out: Vec<(u16, u8, u64)> = (0u8..)
            .zip(&self.ok)
            .map(|(g, n)| (200, g, n.load(Ordering::Relaxed)))
            .filter(|(_, _, n)| *n > 0)
            .collect();
        let unkey = |k: u32| ((k >> 8) as u16, ((k & 0xff) - 1) as u8);
        for (k, n) in self.key.iter().zip(&self.count) {
            let k = k.load(Ordering::Relaxed);
            if k != 0 {
                let (code, status) = unkey(k);
                out.push((code, status, n.load(Ordering::Relaxed)));
            }
        }
        for (k, n) in lock(&self.more).iter() {
            let (code, status) = unkey(*k);
            out.push((code, status, *n));
        }
        out.sort_unstable();
        out
    }
}

/// The assignment reasons every variant has, in [`super::reason_slot`] order.
pub const FIXED_REASONS: [&str; 6] = ["forced", "hash", "cookie", "no_key", "fallback", "rollback"];

/// A counter of assignments by one rule (`rule:<name>`).
pub struct RuleCounter {
    pub label: Box<str>,
    pub count: AtomicU64,
}

/// One (service, variant)'s values.
pub struct Series {
    pub service: Box<str>,
    pub variant: Box<str>,
    /// Requests that matched no service: only `requests_total` and the request duration
    /// are exported.
    pub unmatched: bool,
    pub codes: Codes,
    /// gRPC calls (not in `codes`), once the variant has seen one.
    pub grpc: OnceLock<Box<GrpcCodes>>,
    pub duration: Hist,
    pub upstream: Hist,
    /// By [`FIXED_REASONS`].
    pub reasons: [AtomicU64; FIXED_REASONS.len()],
    /// The rules of the service as configured now (replaced on reload).
    rules: Mutex<Vec<Arc<RuleCounter>>>,
    /// By [`super::ErrorKind::index`].
    pub errors: [AtomicU64; super::ErrorKind::ALL.len()],
    /// The configured weight (`f64` bits).
    pub weight: AtomicU64,
    /// The rollout gates' inputs: hash- and cookie-assigned requests.
    pub analysis_ok: AtomicU64,
    pub analysis_error: AtomicU64,
    pub analysis_duration: Hist,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Series {
    pub(super) fn new(service: &str, variant: &str, unmatched: bool) -> Series {
        Series {
            service: service.into(),
            variant: variant.into(),
            unmatched,
            codes: Codes::new(),
            grpc: OnceLock::new(),
            duration: Hist::new(),
            upstream: Hist::new(),
            reasons: std::array::from_fn(|_| AtomicU64::new(0)),
            rules: Mutex::new(Vec::new()),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            weight: AtomicU64::new(0f64.to_bits()),
            analysis_ok: AtomicU64::new(0),
            analysis_error: AtomicU64::new(0),
            analysis_duration: Hist::new(),
        }
    }

    /// The variant's gRPC counters, created on its first gRPC call.
    #[inline]
    pub fn grpc(&self) -> &GrpcCodes {
        self.grpc.get_or_init(|| Box::new(GrpcCodes::new()))
    }

    /// The counter of the rule labelled `label`, created at 0 if new.
    pub fn rule(&self, label: &str) -> Arc<RuleCounter> {
        let mut rules = lock(&self.rules);
        if let Some(r) = rules.iter().find(|r| &*r.label == label) {
            return r.clone();
        }
        let r = Arc::new(RuleCounter {
            label: label.into(),
            count: AtomicU64::new(0),
        });
        rules.push(r.clone());
        r
    }

    /// Deletes the rule counters not in `keep` (rules a reload removed).
    pub fn keep_rules(&self, keep: &[Arc<RuleCounter>]) {
        lock(&self.rules).retain(|r| keep.iter().any(|k| Arc::ptr_eq(k, r)));
    }

    /// The rule counters, as (label, count).
    pub fn rules(&self) -> Vec<(Box<str>, u64)> {
        lock(&self.rules)
            .iter()
            .map(|r| (r.label.clone(), r.count.load(Ordering::Relaxed)))
            .collect()
    }
}

type Store = BTreeMap<(Box<str>, Box<str>), Arc<Series>>;

/// Every exported series, by (service, variant).
static STORE: LazyLock<Mutex<Store>> = LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn get_or_create(service: &str, variant: &str, unmatched: bool) -> Arc<Series> {
    let mut store = lock(&STORE);
    store
        .entry((service.into(), variant.into()))
        .or_insert_with(|| Arc::new(Series::new(service, variant, unmatched)))
        .clone()
}

/// The series of (`service`, `variant`): the one already exported, or a new one at 0.
pub fn variant(service: &str, variant: &str) -> Arc<Series> {
    get_or_create(service, variant, false)
}

/// The series of requests that match no service (`_none`, `_none`).
pub fn unmatched() -> Arc<Series> {
    get_or_create(super::NONE, super::NONE, true)
}

/// Stops exporting `series` (its variant was removed); a later table that has the
/// variant again starts it at 0.
pub fn remove(series: &Arc<Series>) {
    let mut store = lock(&STORE);
    let key = (series.service.clone(), series.variant.clone());
    if store.get(&key).is_some_and(|s| Arc::ptr_eq(s, series)) {
        store.remove(&key);
    }
}

/// Every exported series, in (service, variant) order.
pub fn all() -> Vec<Arc<Series>> {
    lock(&STORE).values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_beyond_the_inline_slots_are_counted_once_each() {
        let c = Codes::new();
        for code in [200, 500, 502, 503, 504] {
            c.counter(code);
        }
        // 100 distinct codes, some twice, plus out-of-range ones clamped.
        for code in 100..200u16 {
            c.counter(code).fetch_add(1, Ordering::Relaxed);
        }
        c.counter(150).fetch_add(1, Ordering::Relaxed);
        c.counter(7).fetch_add(1, Ordering::Relaxed);
        c.counter(999).fetch_add(1, Ordering::Relaxed);
        let mut seen = c.read();
        seen.sort_unstable();
        let mut codes: Vec<u16> = seen.iter().map(|(c, _)| *c).collect();
        codes.dedup();
        assert_eq!(codes.len(), seen.len(), "a code exported twice: {seen:?}");
        let count = |code| seen.iter().find(|(c, _)| *c == code).map(|(_, n)| *n);
        assert_eq!(count(200), Some(0));
        assert_eq!(count(504), Some(0));
        assert_eq!(count(100), Some(2), "7 is clamped to 100");
        assert_eq!(count(150), Some(2));
        assert_eq!(count(199), Some(1));
        assert_eq!(count(599), Some(1), "999 is clamped to 599");
        assert_eq!(count(404), None, "never sent, never created");
        assert_eq!(seen.len(), 5 + 100 + 1);
    }

    #[test]
    fn concurrent_first_uses_of_a_code_share_one_counter() {
        let c = Arc::new(Codes::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u16 {
                        c.counter(200 + i % 20).fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let seen = c.read();
        assert_eq!(seen.len(), 20, "{seen:?}");
        assert!(seen.iter().all(|(_, n)| *n == 200), "{seen:?}");
    }

    #[test]
    fn a_histogram_counts_each_observation_in_its_bucket() {
        let h = Hist::new();
        for v in [0.0001, 0.0005, 0.00051, 1.0, 10.0, 11.0, 1e9] {
            h.observe(v);
        }
        let (cumulative, total, sum) = h.read();
        let bounds = Hist::bounds();
        assert_eq!(cumulative.len(), bounds.len());
        assert_eq!(total, 7);
        assert_eq!(cumulative[0], 2, "0.0001 and 0.0005 are <= 0.0005");
        assert_eq!(cumulative[1], 3);
        assert_eq!(
            *cumulative.last().expect("bounds"),
            5,
            "11 and 1e9 are above 10"
        );
        let at_one = bounds.iter().position(|b| *b >= 1.0).expect("a bound >= 1");
        assert_eq!(cumulative[at_one], 4);
        assert_eq!(cumulative[at_one - 1], 3);
        assert!((sum - (0.0001 + 0.0005 + 0.00051 + 1.0 + 10.0 + 11.0 + 1e9)).abs() < 1e-3);
    }

    #[test]
    fn grpc_calls_count_by_code_and_status_beyond_the_inline_slots() {
        let g = GrpcCodes::new();
        g.count(200, 0);
        g.count(200, 0);
        g.count(200, 14);
        g.count(200, 99); // clamped to 16
                          // 10 distinct non-200 pairs: 8 inline, 2 under the lock.
        for status in 0..10u8 {
            g.count(503, status);
        }
        g.count(503, 9);
        g.count(999, 1); // clamped to 599
        let seen = g.read();
        let count = |c: u16, s: u8| seen.iter().find(|x| x.0 == c && x.1 == s).map(|x| x.2);
        assert_eq!(count(200, 0), Some(2));
        assert_eq!(count(200, 14), Some(1));
        assert_eq!(count(200, 16), Some(1));
        assert_eq!(count(200, 1), None, "never sent, never exported");
        assert_eq!(count(503, 0), Some(1));
        assert_eq!(count(503, 9), Some(2), "a pair past the inline slots");
        assert_eq!(count(599, 1), Some(1));
        assert_eq!(seen.len(), 3 + 10 + 1, "{seen:?}");
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(seen, sorted);
    }

    #[test]
    fn a_variant_is_a_few_kilobytes() {
        // Inline: the atomics; on the heap besides: the three histograms' buckets.
        let heap = 3 * (Hist::bounds().len() + 1) * 8;
        let total = std::mem::size_of::<Series>() + heap;
        assert!(total < 2200, "{total} bytes per variant");
    }
}
