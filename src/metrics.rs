//! Metrics in one place (SPEC "Metrics"): names as constants, the metric families in
//! [`Metrics`], registered in prometheus' default registry (served by `GET /metrics`).
//!
//! Hot path: every series a request can touch is resolved to an atomic handle once per
//! table build ([`TableMetrics`]); a request never looks labels up by string and takes no
//! lock. Status-code counters are resolved lazily, once per (variant, code), through a
//! lock-free `OnceLock` slot. Label values come from config names only, never from requests.

use crate::forward::grpc::GrpcStatus;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
};
use std::sync::{LazyLock, OnceLock};

pub const REQUESTS_TOTAL: &str = "cohort_requests_total";
pub const REQUEST_DURATION: &str = "cohort_request_duration_seconds";
pub const UPSTREAM_DURATION: &str = "cohort_upstream_duration_seconds";
pub const ASSIGNMENTS_TOTAL: &str = "cohort_assignments_total";
pub const UPSTREAM_ERRORS_TOTAL: &str = "cohort_upstream_errors_total";
pub const BACKEND_UP: &str = "cohort_backend_up";
pub const VARIANT_WEIGHT: &str = "cohort_variant_weight";
pub const CONFIG_RELOADS_TOTAL: &str = "cohort_config_reloads_total";
pub const CONFIG_INFO: &str = "cohort_config_info";
pub const CONFIG_PENDING_UPGRADE: &str = "cohort_config_pending_upgrade_info";

/// Label value for requests that match no service.
pub const NONE: &str = "_none";

/// The `kind` label of `cohort_upstream_errors_total` (SPEC "Metrics").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Connect,
    Timeout,
    Reset,
    Protocol,
    Other,
    Tls,
}

impl ErrorKind {
    /// Every kind, in the order of [`ErrorKind::index`].
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Protocol,
        ErrorKind::Other,
        ErrorKind::Tls,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Other => "other",
            ErrorKind::Tls => "tls",
        }
    }

    /// Position in [`ErrorKind::ALL`] (the metric handles are kept in that order).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Histogram buckets: 0.5 ms to 10 s, each 20% above the last, so any quantile read by
/// interpolation is within ±10% of the true value.
pub fn duration_buckets() -> Vec<f64> {
    let mut b = Vec::new();
    let mut v = 0.0005f64;
    while v < 10.0 {
        // Rounded to 4 significant digits (readable `le` labels), never more than 20%
        // above the previous bound.
        let digits = 3 - v.log10().floor() as i32;
        let scale = 10f64.powi(digits);
        let rounded = (v * scale).floor() / scale;
        b.push(rounded);
        v = rounded * 1.2;
    }
    b.push(10.0);
    b
}

/// Process-wide metric families.
pub struct Metrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream: HistogramVec,
    pub assignments: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub backend_up: IntGaugeVec,
    pub weight: prometheus::GaugeVec,
    reloads: IntCounterVec,
    config_info: IntGaugeVec,
    config_pending: IntGaugeVec,
}

/// The one instance, registered on first use.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::register);

fn reg<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registration fails only for a duplicate name: a programming error caught by tests.
    if let Err(e) = prometheus::register(Box::new(c.clone())) {
        log::error!("metric registration: {e}");
    }
    c
}

fn counters(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn histograms(name: &str, help: &str) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(duration_buckets());
    reg(HistogramVec::new(opts, &["service", "variant"]).unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn gauges(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg(IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}")))
}

/// Outcome of a reload attempt, as the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Applied,
    Unchanged,
    Error,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Error => "error",
        }
    }
}

impl Metrics {
    fn register() -> Metrics {
        let m = Metrics {
            requests: counters(
                REQUESTS_TOTAL,
                "Requests by service, variant served, status code sent and, for gRPC calls, grpc-status (empty for other requests).",
                &["service", "variant", "code", "grpc_status"],
            ),
            duration: histograms(
                REQUEST_DURATION,
                "Time from request header received to response finished.",
            ),
            upstream: histograms(
                UPSTREAM_DURATION,
                "Time from sending the request upstream to the upstream's response header.",
            ),
            assignments: counters(
                ASSIGNMENTS_TOTAL,
                "Requests by the variant that served them and why it was chosen.",
                &["service", "variant", "reason"],
            ),
            upstream_errors: counters(
                UPSTREAM_ERRORS_TOTAL,
                "Upstream failures by kind.",
                &["service", "variant", "kind"],
            ),
            backend_up: gauges(
                BACKEND_UP,
                "1 if the backend is considered healthy, else 0.",
                &["service", "variant", "backend"],
            ),
            weight: reg(prometheus::GaugeVec::new(
                Opts::new(VARIANT_WEIGHT, "Configured weight of the variant."),
                &["service", "variant"],
            )
            .unwrap_or_else(|e| panic!("{VARIANT_WEIGHT}: {e}"))),
            reloads: counters(
                CONFIG_RELOADS_TOTAL,
                "Config reload attempts by result (applied, unchanged, error).",
                &["result"],
            ),
            config_info: gauges(
                CONFIG_INFO,
                "Always 1; the version label is the config version whose every setting is in effect (see cohort_config_pending_upgrade_info).",
                &["version"],
            ),
            config_pending: gauges(
                CONFIG_PENDING_UPGRADE,
                "1 while a loaded config version waits for a process upgrade to apply some settings (listed in the settings label); absent when converged.",
                &["version", "settings"],
            ),
        };
        for r in [
            ReloadResult::Applied,
            ReloadResult::Unchanged,
            ReloadResult::Error,
        ] {
            m.reloads.with_label_values(&[r.as_str()]);
        }
        m
    }

    pub fn record_reload(&self, result: ReloadResult) {
        self.reloads.with_label_values(&[result.as_str()]).inc();
    }

    /// Points `cohort_config_info` at the serving version, and
    /// `cohort_config_pending_upgrade_info` at the loaded one while it has upgrade-only
    /// changes (previous series are deleted).
    pub fn set_config_versions(&self, v: &crate::state::Versions) {
        self.config_info.reset();
        self.config_info
            .with_label_values(&[v.serving.as_str()])
            .set(1);
        self.config_pending.reset();
        if !v.pending_upgrade.is_empty() {
            let settings = v.pending_upgrade.join(",");
            self.config_pending
                .with_label_values(&[v.loaded.as_str(), settings.as_str()])
                .set(1);
        }
    }
}

/// Status codes created at 0 for every variant when a table is built.
const PRECREATED_CODES: [u16; 5] = [200, 500, 502, 503, 504];

/// Status codes 100..=599 map to one slot each (anything else is clamped into range).
const CODE_SLOTS: usize = 500;
/// gRPC status codes 0..=16.
const GRPC_SLOTS: usize = 17;

/// Handles for one (service, variant), resolved at table build.
pub struct VariantMetrics {
    service: String,
    variant: String,
    codes: Box<[OnceLock<IntCounter>]>,
    /// gRPC calls answered 200, by `grpc-status` (0–16).
    grpc: Box<[OnceLock<IntCounter>]>,
    /// The (code, grpc-status) series of gRPC calls answered with another status.
    grpc_other: std::sync::Mutex<Vec<(u16, u8, IntCounter)>>,
    duration: Histogram,
    upstream: Histogram,
    /// By [`reason_slot`]: forced, hash, cookie, no_key, fallback, rollback, then one per
    /// rule.
    assignments: Vec<IntCounter>,
    reasons: Vec<String>,
    errors: Vec<IntCounter>,
    /// The rollout gates' inputs (hash- and cookie-assigned requests only).
    pub analysis: crate::analysis::Analysis,
}

impl VariantMetrics {
    /// Requests that match no service: only `requests_total` and the request duration
    /// are exported (there is no upstream, assignment or backend).
    fn unmatched() -> VariantMetrics {
        let detached = HistogramOpts::new("unmatched_upstream", "not exported");
        VariantMetrics {
            service: NONE.to_string(),
            variant: NONE.to_string(),
            codes: (0..CODE_SLOTS).map(|_| OnceLock::new()).collect(),
            grpc: (0..GRPC_SLOTS).map(|_| OnceLock::new()).collect(),
            grpc_other: std::sync::Mutex::new(Vec::new()),
            duration: METRICS.duration.with_label_values(&[NONE, NONE]),
            upstream: Histogram::with_opts(detached)
                .unwrap_or_else(|_| METRICS.upstream.with_label_values(&[NONE, NONE])),
            assignments: Vec::new(),
            reasons: Vec::new(),
            errors: Vec::new(),
            analysis: crate::analysis::Analysis::detached(),
        }
    }

    fn new(service: &str, variant: &str, reasons: &[String]) -> VariantMetrics {
        let v = Self::resolve(service, variant, reasons);
        // Create the common codes at 0, so `rate()` sees the first 5xx of a variant.
        for code in PRECREATED_CODES {
            v.code_counter(code);
        }
        v
    }

    fn code_counter(&self, code: u16) -> Option<&IntCounter> {
        let slot = (code.clamp(100, 599) - 100) as usize;
        self.codes.get(slot).map(|cell| {
            cell.get_or_init(|| {
                let c = (slot + 100).to_string();
                METRICS
                    .requests
                    .with_label_values(&[&self.service, &self.variant, &c, ""])
            })
        })
    }

    /// Counts one gRPC call answered with `code` and `grpc`.
    fn record_grpc(&self, code: u16, grpc: GrpcStatus) {
        if code == 200 {
            if let Some(cell) = self.grpc.get(usize::from(grpc.code())) {
                cell.get_or_init(|| {
                    METRICS.requests.with_label_values(&[
                        &self.service,
                        &self.variant,
                        "200",
                        grpc.label(),
                    ])
                })
                .inc();
            }
            return;
        }
        let mut other = match self.grpc_other.lock() {
            Ok(o) => o,
            Err(poisoned) => poisoned.into_inner(),
        };
        match other
            .iter()
            .find(|(c, g, _)| *c == code && *g == grpc.code())
        {
            Some((_, _, counter)) => counter.inc(),
            None => {
                let counter = METRICS.requests.with_label_values(&[
                    &self.service,
                    &self.variant,
                    &code.to_string(),
                    grpc.label(),
                ]);
                counter.inc();
                other.push((code, grpc.code(), counter));
            }
        }
    }

    /// The (code, grpc-status) label values of the gRPC series this variant created.
    fn grpc_series(&self) -> Vec<(String, &'static str)> {
        let mut out: Vec<(String, &'static str)> = self
            .grpc
            .iter()
            .enumerate()
            .filter(|(_, c)| c.get().is_some())
            .map(|(g, _)| {
                (
                    "200".to_string(),
                    GrpcStatus::parse(g.to_string().as_bytes()).label(),
                )
            })
            .collect();
        if let Ok(other) = self.grpc_other.lock() {
            out.extend(other.iter().map(|(c, g, _)| {
                (
                    c.to_string(),
                    GrpcStatus::parse(g.to_string().as_bytes()).label(),
                )
            }));
        }
        out
    }

    fn resolve(service: &str, variant: &str, reasons: &[String]) -> VariantMetrics {
        let m = &*METRICS;
        VariantMetrics {
            service: service.to_string(),
            variant: variant.to_string(),
            codes: (0..CODE_SLOTS).map(|_| OnceLock::new()).collect(),
            grpc: (0..GRPC_SLOTS).map(|_| OnceLock::new()).collect(),
            grpc_other: std::sync::Mutex::new(Vec::new()),
            duration: m.duration.with_label_values(&[service, variant]),
            upstream: m.upstream.with_label_values(&[service, variant]),
            assignments: reasons
                .iter()
                .map(|r| m.assignments.with_label_values(&[service, variant, r]))
                .collect(),
            reasons: reasons.to_vec(),
            errors: ErrorKind::ALL
                .iter()
                .map(|k| {
                    m.upstream_errors
                        .with_label_values(&[service, variant, k.as_str()])
                })
                .collect(),
            analysis: crate::analysis::Analysis::new(service, variant),
        }
    }

    /// Records one finished request: its status (and a gRPC call's `grpc-status`), its
    /// duration, why its variant was chosen (`reason_slot`, see [`reason_slot`]; `None`
    /// for unmatched requests), and whether it is an error for the rollout analysis
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
        match grpc {
            None => self.record_status(code),
            Some(g) => self.record_grpc(code, g),
        }
        self.duration.observe(seconds);
        if let Some(r) = reason_slot {
            self.record_assignment(r);
            if r == HASH_SLOT || r == COOKIE_SLOT {
                let error = crate::forward::grpc::is_error(code, grpc);
                self.analysis.record(error, seconds);
            }
        }
    }

    /// Records the time to the upstream's response header.
    #[inline]
    pub fn record_upstream(&self, seconds: f64) {
        if cfg!(feature = "metrics") {
            self.upstream.observe(seconds);
        }
    }

    /// Counts one response with status `code`.
    #[inline]
    fn record_status(&self, code: u16) {
        if let Some(c) = self.code_counter(code) {
            c.inc();
        }
    }

    #[inline]
    fn record_assignment(&self, reason_slot: usize) {
        if let Some(c) = self.assignments.get(reason_slot) {
            c.inc();
        }
    }

    /// Counts one upstream error of `kind`.
    #[inline]
    pub fn record_upstream_error(&self, kind: ErrorKind) {
        if !cfg!(feature = "metrics") {
            return;
        }
        if let Some(c) = self.errors.get(kind.index()) {
            c.inc();
        }
    }
}

const HASH_SLOT: usize = 1;
const COOKIE_SLOT: usize = 2;

/// Index of a reason in [`VariantMetrics`]'s assignment handles.
pub fn reason_slot(r: crate::routing::Reason) -> usize {
    use crate::routing::Reason;
    match r {
        Reason::Forced => 0,
        Reason::Hash => HASH_SLOT,
        Reason::Cookie => COOKIE_SLOT,
        Reason::NoKey => 3,
        Reason::Fallback => 4,
        Reason::Rollback => 5,
        Reason::Rule(i) => 6 + i,
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
    /// Resolves every series of the table's services and sets the weight gauges.
    /// `backends[service][variant]` lists each pool's addresses.
    pub fn new(router: &crate::routing::Router, backends: &[Vec<Vec<String>>]) -> TableMetrics {
        let mut members = Vec::new();
        let variants = router
            .services
            .iter()
            .enumerate()
            .map(|(si, s)| {
                let mut reasons: Vec<String> =
                    ["forced", "hash", "cookie", "no_key", "fallback", "rollback"]
                        .iter()
                        .map(|r| r.to_string())
                        .collect();
                reasons.extend(s.rule_labels.iter().cloned());
                s.cfg
                    .variants
                    .iter()
                    .enumerate()
                    .map(|(vi, v)| {
                        METRICS
                            .weight
                            .with_label_values(&[&s.cfg.name, &v.name])
                            .set(v.weight);
                        for addr in backends
                            .get(si)
                            .and_then(|b| b.get(vi))
                            .into_iter()
                            .flatten()
                        {
                            members.push([s.cfg.name.clone(), v.name.clone(), addr.clone()]);
                        }
                        VariantMetrics::new(&s.cfg.name, &v.name, &reasons)
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
        let m = &*METRICS;
        let find = |v: &VariantMetrics| {
            new.variants
                .iter()
                .flatten()
                .find(|n| n.service == v.service && n.variant == v.variant)
        };
        for v in self.variants.iter().flatten() {
            let (s, n) = (v.service.as_str(), v.variant.as_str());
            match find(v) {
                Some(kept) => {
                    for r in v.reasons.iter().filter(|r| !kept.reasons.contains(r)) {
                        let _ = m.assignments.remove_label_values(&[s, n, r]);
                    }
                }
                None => {
                    for (slot, cell) in v.codes.iter().enumerate() {
                        if cell.get().is_some() {
                            let code = (slot + 100).to_string();
                            let _ = m.requests.remove_label_values(&[s, n, &code, ""]);
                        }
                    }
                    for (code, grpc) in v.grpc_series() {
                        let _ = m.requests.remove_label_values(&[s, n, &code, grpc]);
                    }
                    for r in &v.reasons {
                        let _ = m.assignments.remove_label_values(&[s, n, r]);
                    }
                    for k in ErrorKind::ALL {
                        let _ = m.upstream_errors.remove_label_values(&[s, n, k.as_str()]);
                    }
                    let _ = m.duration.remove_label_values(&[s, n]);
                    let _ = m.upstream.remove_label_values(&[s, n]);
                    let _ = m.weight.remove_label_values(&[s, n]);
                    crate::analysis::Analysis::remove(s, n);
                }
            }
        }
        for b in self.backends.iter().filter(|b| !new.backends.contains(b)) {
            let _ = m.backend_up.remove_label_values(&[&b[0], &b[1], &b[2]]);
        }
    }
}

/// Prometheus text exposition of the default registry.
pub fn render() -> Vec<u8> {
    use prometheus::Encoder;
    let mut out = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut out) {
        log::error!("encoding metrics: {e}");
    }
    out
}
