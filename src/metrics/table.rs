//! The metric handles of one routing table: each (service, variant)'s [`Series`],
//! resolved once per table build, so a request records into atomics it reaches by
//! index, never by looking labels up, and takes no lock.

use super::series::{self, RuleCounter, Series, FIXED_REASONS};
use super::{ErrorKind, METRICS};
use crate::forward::grpc::GrpcStatus;
use crate::rollout::SideCounters;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Status codes created at 0 for every variant when a table is built, so `rate()` sees
/// the first 5xx of a variant.
const PRECREATED_CODES: [u16; 5] = [200, 500, 502, 503, 504];

/// Handles for one (service, variant).
pub struct VariantMetrics {
    series: Arc<Series>,
    /// The service's rules, in config order (reason slots after [`FIXED_REASONS`]).
    rules: Box<[Arc<RuleCounter>]>,
}

impl VariantMetrics {
    pub(super) fn new(
        service: &str,
        variant: &str,
        weight: f64,
        rule_labels: &[String],
    ) -> VariantMetrics {
        let series = series::variant(service, variant);
        series.weight.store(weight.to_bits(), Ordering::Relaxed);
        for code in PRECREATED_CODES {
            series.codes.counter(code);
        }
        let rules = rule_labels.iter().map(|l| series.rule(l)).collect();
        VariantMetrics { series, rules }
    }

    /// Requests that match no service: only `requests_total` and the request duration
    /// are exported (there is no upstream, assignment or backend).
    fn unmatched() -> VariantMetrics {
        VariantMetrics::without_rules(series::unmatched())
    }

    pub(super) fn without_rules(series: Arc<Series>) -> VariantMetrics {
        VariantMetrics {
            series,
            rules: Box::new([]),
        }
    }

    #[cfg(test)]
    pub(super) fn series(&self) -> &Arc<Series> {
        &self.series
    }

    /// Records one finished request: its status (and a gRPC call's `grpc-status`), its
    /// duration, why its variant was chosen (see [`super::reason_slot`]; `None` for
    /// unmatched requests), and whether the rollout analysis counts it as an error
    /// ([`crate::forward::grpc::is_error`]).
    #[inline]
    pub fn record_request(
        &self,
        code: u16,
        grpc: Option<GrpcStatus>,
        seconds: f64,
        reason_slot: Option<usize>,
    ) {
        if !cfg!(feature = "metrics") {
            return;
        }
        let s = &*self.series;
        match grpc {
            None => {
                s.codes.counter(code).fetch_add(1, Ordering::Relaxed);
            }
            Some(g) => s.grpc().count(code, g.code()),
        }
        s.duration.observe(seconds);
        if let Some(r) = reason_slot {
            self.record_assignment(r);
            if r == super::HASH_SLOT || r == super::COOKIE_SLOT {
                let outcome = if crate::forward::grpc::is_error(code, grpc) {
                    &s.analysis_error
                } else {
                    &s.analysis_ok
                };
                outcome.fetch_add(1, Ordering::Relaxed);
                s.analysis_duration.observe(seconds);
            }
        }
    }

    /// Records the time to the upstream's response header.
    #[inline]
    pub fn record_upstream(&self, seconds: f64) {
        if cfg!(feature = "metrics") {
            self.series.upstream.observe(seconds);
        }
    }

    #[inline]
    fn record_assignment(&self, reason_slot: usize) {
        let counter = match self.series.reasons.get(reason_slot) {
            Some(c) => c,
            None => match self.rules.get(reason_slot - FIXED_REASONS.len()) {
                Some(r) => &r.count,
                None => return,
            },
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one upstream error of `kind`.
    #[inline]
    pub fn record_upstream_error(&self, kind: ErrorKind) {
        if !cfg!(feature = "metrics") {
            return;
        }
        if let Some(c) = self.series.errors.get(kind.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The rollout gates' cumulative inputs (hash- and cookie-assigned requests), as the
    /// engine reads them: requests, errors, and one cumulative count per bound of
    /// [`super::duration_buckets`] then the total.
    pub fn analysis(&self) -> SideCounters {
        let s = &*self.series;
        let (ok, errors) = (
            s.analysis_ok.load(Ordering::Relaxed),
            s.analysis_error.load(Ordering::Relaxed),
        );
        let (mut buckets, total, _) = s.analysis_duration.read();
        buckets.push(total);
        SideCounters {
            requests: ok + errors,
            errors,
            buckets,
        }
    }
}

/// Every handle a table's requests record into.
pub struct TableMetrics {
    /// `[service][variant]`.
    pub variants: Vec<Vec<VariantMetrics>>,
    /// Requests that matched no service.
    pub unmatched: VariantMetrics,
    /// `(service, variant, backend address)` of every pool member.
    backends: Vec<[String; 3]>,
}

impl std::fmt::Debug for TableMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TableMetrics")
    }
}

impl TableMetrics {
    /// Resolves every series of the table's services and sets the weights.
    /// `backends[service][variant]` lists each pool's addresses.
    pub fn new(router: &crate::routing::Router, backends: &[Vec<Vec<String>>]) -> TableMetrics {
        // Registers the families (the store's exporter among them) before any is read.
        std::sync::LazyLock::force(&METRICS);
        let mut members = Vec::new();
        let variants = router
            .services
            .iter()
            .enumerate()
            .map(|(si, s)| {
                s.cfg
                    .variants
                    .iter()
                    .enumerate()
                    .map(|(vi, v)| {
                        let addrs = backends.get(si).and_then(|b| b.get(vi));
                        for addr in addrs.into_iter().flatten() {
                            members.push([s.cfg.name.clone(), v.name.clone(), addr.clone()]);
                        }
                        VariantMetrics::new(&s.cfg.name, &v.name, v.weight, &s.rule_labels)
                    })
                    .collect()
            })
            .collect();
        TableMetrics {
            variants,
            unmatched: VariantMetrics::unmatched(),
            backends: members,
        }
    }

    /// Sets `cohort_backend_up` for every pool member; `healthy[i]` follows the order of
    /// the `backends` given to [`TableMetrics::new`].
    pub fn set_backend_up(&self, healthy: &[bool]) {
        for (b, up) in self.backends.iter().zip(healthy) {
            METRICS
                .backend_up
                .with_label_values(&[&b[0], &b[1], &b[2]])
                .set(i64::from(*up));
        }
    }

    /// After a swap: deletes the series that `self` (the old table) had and `new` has
    /// not (removed variants, rules and backends).
    pub fn retire(&self, new: &TableMetrics) {
        let kept: std::collections::HashMap<*const Series, &VariantMetrics> = new
            .variants
            .iter()
            .flatten()
            .map(|v| (Arc::as_ptr(&v.series), v))
            .collect();
        for v in self.variants.iter().flatten() {
            match kept.get(&Arc::as_ptr(&v.series)) {
                Some(now) => v.series.keep_rules(&now.rules),
                None => series::remove(&v.series),
            }
        }
        let still: HashSet<&[String; 3]> = new.backends.iter().collect();
        for b in self.backends.iter().filter(|b| !still.contains(b)) {
            let _ = METRICS
                .backend_up
                .remove_label_values(&[&b[0], &b[1], &b[2]]);
        }
    }
}
