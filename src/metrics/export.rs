//! The per-variant families of SPEC "Metrics" (and the rollout's analysis families),
//! exported from the store of [`super::series`] by one prometheus [`Collector`]
//! registered in the default registry: the same names, help, types, labels and buckets
//! as prometheus' own vectors would export (a unit test compares the two texts).

use super::series::{self, Hist, Series, FIXED_REASONS};
use super::ErrorKind;
use crate::analysis::{ANALYSIS_DURATION, ANALYSIS_REQUESTS_TOTAL};
use crate::forward::grpc::GrpcStatus;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One exported family.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const REQUESTS: Family = Family {
    name: super::REQUESTS_TOTAL,
    help:
        "Requests by service, variant served and status code sent (gRPC calls also by grpc_status).",
    kind: MetricType::COUNTER,
    labels: &["service", "variant", "code"],
};
const DURATION: Family = Family {
    name: super::REQUEST_DURATION,
    help: "Time from request header received to response finished.",
    kind: MetricType::HISTOGRAM,
    labels: &["service", "variant"],
};
const UPSTREAM: Family = Family {
    name: super::UPSTREAM_DURATION,
    help: "Time from sending the request upstream to the upstream's response header.",
    kind: MetricType::HISTOGRAM,
    labels: &["service", "variant"],
};
const ASSIGNMENTS: Family = Family {
    name: super::ASSIGNMENTS_TOTAL,
    help: "Requests by the variant that served them and why it was chosen.",
    kind: MetricType::COUNTER,
    labels: &["service", "variant", "reason"],
};
const ERRORS: Family = Family {
    name: super::UPSTREAM_ERRORS_TOTAL,
    help: "Upstream failures by kind.",
    kind: MetricType::COUNTER,
    labels: &["service", "variant", "kind"],
};
const WEIGHT: Family = Family {
    name: super::VARIANT_WEIGHT,
    help: "Configured weight of the variant.",
    kind: MetricType::GAUGE,
    labels: &["service", "variant"],
};
const ANALYSIS_REQUESTS: Family = Family {
    name: ANALYSIS_REQUESTS_TOTAL,
    help: "Hash- and cookie-assigned requests by variant and outcome (error: status >= 500 sent, or a gRPC server fault), the rollout gates' input.",
    kind: MetricType::COUNTER,
    labels: &["service", "variant", "outcome"],
};
const ANALYSIS_DURATIONS: Family = Family {
    name: ANALYSIS_DURATION,
    help: "Duration of hash- and cookie-assigned requests, the rollout latency gate's input.",
    kind: MetricType::HISTOGRAM,
    labels: &["service", "variant"],
};

/// In the order [`Exporter::collect`] fills them.
const FAMILIES: [&Family; 8] = [
    &REQUESTS,
    &DURATION,
    &UPSTREAM,
    &ASSIGNMENTS,
    &ERRORS,
    &WEIGHT,
    &ANALYSIS_REQUESTS,
    &ANALYSIS_DURATIONS,
];

/// The collector of every [`Series`] in the store.
pub struct Exporter {
    descs: Vec<Desc>,
}

impl Exporter {
    pub fn new() -> Exporter {
        let descs = FAMILIES
            .iter()
            .filter_map(|f| {
                let labels = f.labels.iter().map(|l| l.to_string()).collect();
                Desc::new(f.name.into(), f.help.into(), labels, HashMap::new())
                    .map_err(|e| log::error!("{}: {e}", f.name))
                    .ok()
            })
            .collect();
        Exporter { descs }
    }
}

/// Label pairs sorted by name, as prometheus' own metrics carry them.
fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    let mut out: Vec<LabelPair> = pairs
        .iter()
        .map(|(n, v)| {
            let mut l = LabelPair::new();
            l.set_name(n.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect();
    out.sort();
    out
}

fn counter(pairs: &[(&str, &str)], value: u64) -> Metric {
    let mut m = Metric::from_label(labels(pairs));
    let mut c = Counter::new();
    c.set_value(value as f64);
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut m = Metric::from_label(labels(pairs));
    let mut g = Gauge::new();
    g.set_value(value);
    m.set_gauge(g);
    m
}

fn histogram(s: &Series, h: &Hist) -> Metric {
    let (cumulative, total, sum) = h.read();
    let mut m = Metric::from_label(labels(&[("service", &s.service), ("variant", &s.variant)]));
    let mut p = Histogram::new();
    p.set_sample_count(total);
    p.set_sample_sum(sum);
    p.set_bucket(
        cumulative
            .iter()
            .zip(Hist::bounds())
            .map(|(n, bound)| {
                let mut b = Bucket::new();
                b.set_cumulative_count(*n);
                b.set_upper_bound(*bound);
                b
            })
            .collect(),
    );
    m.set_histogram(p);
    m
}

/// The labels of `s` and one more.
fn labelled<'a>(s: &'a Series, name: &'a str, value: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("service", &s.service),
        ("variant", &s.variant),
        (name, value),
    ]
}

/// Appends `s`'s metrics to the families (in [`FAMILIES`] order).
fn export(s: &Series, out: &mut [Vec<Metric>; 8]) {
    let mut codes = s.codes.read();
    codes.sort_unstable();
    for (code, n) in codes {
        out[0].push(counter(&labelled(s, "code", &code.to_string()), n));
    }
    // gRPC calls carry one more label, `grpc_status`; the other series keep three, so
    // queries and dashboards written before gRPC see the same series.
    if let Some(grpc) = s.grpc.get() {
        for (code, status, n) in grpc.read() {
            let (code, status) = (code.to_string(), GrpcStatus::from_code(status).label());
            let [a, b, c] = labelled(s, "code", &code);
            out[0].push(counter(&[a, b, c, ("grpc_status", status)], n));
        }
    }
    out[1].push(histogram(s, &s.duration));
    if s.unmatched {
        return;
    }
    out[2].push(histogram(s, &s.upstream));
    for (reason, n) in FIXED_REASONS.iter().zip(&s.reasons) {
        out[3].push(counter(
            &labelled(s, "reason", reason),
            n.load(Ordering::Relaxed),
        ));
    }
    for (label, n) in s.rules() {
        out[3].push(counter(&labelled(s, "reason", &label), n));
    }
    for (kind, n) in ErrorKind::ALL.iter().zip(&s.errors) {
        out[4].push(counter(
            &labelled(s, "kind", kind.as_str()),
            n.load(Ordering::Relaxed),
        ));
    }
    let weight = f64::from_bits(s.weight.load(Ordering::Relaxed));
    out[5].push(gauge(
        &[("service", &s.service), ("variant", &s.variant)],
        weight,
    ));
    let (ok, error) = (&s.analysis_ok, &s.analysis_error);
    out[6].push(counter(
        &labelled(s, "outcome", "ok"),
        ok.load(Ordering::Relaxed),
    ));
    out[6].push(counter(
        &labelled(s, "outcome", "error"),
        error.load(Ordering::Relaxed),
    ));
    out[7].push(histogram(s, &s.analysis_duration));
}

/// The families of `all`.
fn families(all: &[Arc<Series>]) -> Vec<MetricFamily> {
    let mut metrics: [Vec<Metric>; 8] = Default::default();
    for s in all {
        export(s, &mut metrics);
    }
    FAMILIES
        .iter()
        .zip(metrics)
        .map(|(f, m)| {
            let mut mf = MetricFamily::default();
            mf.set_name(f.name.to_string());
            mf.set_help(f.help.to_string());
            mf.set_field_type(f.kind);
            mf.set_metric(m);
            mf
        })
        .collect()
}

impl Collector for Exporter {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        families(&series::all())
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::VariantMetrics;
    use super::super::{duration_buckets, reason_slot};
    use super::*;
    use crate::routing::Reason;
    use prometheus::{
        Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
    };

    /// What one request did, recorded both ways.
    enum Event {
        Request(u16, f64, Option<Reason>),
        Upstream(f64),
        Error(ErrorKind),
    }

    /// Prometheus' own vectors, as the per-variant families were kept before the store.
    struct Reference {
        requests: IntCounterVec,
        duration: HistogramVec,
        upstream: HistogramVec,
        assignments: IntCounterVec,
        errors: IntCounterVec,
        weight: GaugeVec,
        analysis: IntCounterVec,
        analysis_duration: HistogramVec,
    }

    impl Reference {
        fn new(r: &Registry) -> Reference {
            let counters = |f: &Family| {
                let v = IntCounterVec::new(Opts::new(f.name, f.help), f.labels).expect("vec");
                r.register(Box::new(v.clone())).expect("register");
                v
            };
            let histograms = |f: &Family| {
                let o = HistogramOpts::new(f.name, f.help).buckets(duration_buckets());
                let v = HistogramVec::new(o, f.labels).expect("vec");
                r.register(Box::new(v.clone())).expect("register");
                v
            };
            let weight = GaugeVec::new(Opts::new(WEIGHT.name, WEIGHT.help), WEIGHT.labels);
            let weight = weight.expect("vec");
            r.register(Box::new(weight.clone())).expect("register");
            Reference {
                requests: counters(&REQUESTS),
                duration: histograms(&DURATION),
                upstream: histograms(&UPSTREAM),
                assignments: counters(&ASSIGNMENTS),
                errors: counters(&ERRORS),
                weight,
                analysis: counters(&ANALYSIS_REQUESTS),
                analysis_duration: histograms(&ANALYSIS_DURATIONS),
            }
        }

        /// The series a table build created for a variant.
        fn variant(&self, s: &str, v: &str, weight: f64, rules: &[String]) {
            self.weight.with_label_values(&[s, v]).set(weight);
            for code in ["200", "500", "502", "503", "504"] {
                self.requests.with_label_values(&[s, v, code]);
            }
            self.duration.with_label_values(&[s, v]);
            self.upstream.with_label_values(&[s, v]);
            for r in FIXED_REASONS
                .iter()
                .copied()
                .chain(rules.iter().map(|r| r.as_str()))
            {
                self.assignments.with_label_values(&[s, v, r]);
            }
            for k in ErrorKind::ALL {
                self.errors.with_label_values(&[s, v, k.as_str()]);
            }
            for o in ["ok", "error"] {
                self.analysis.with_label_values(&[s, v, o]);
            }
            self.analysis_duration.with_label_values(&[s, v]);
        }

        fn record(&self, s: &str, v: &str, rules: &[String], e: &Event) {
            match e {
                Event::Request(code, secs, reason) => {
                    let label = code.to_string();
                    self.requests.with_label_values(&[s, v, &label]).inc();
                    self.duration.with_label_values(&[s, v]).observe(*secs);
                    let Some(reason) = reason else { return };
                    let label = match reason {
                        Reason::Rule(i) => rules[*i].clone(),
                        r => FIXED_REASONS[reason_slot(*r)].to_string(),
                    };
                    self.assignments.with_label_values(&[s, v, &label]).inc();
                    if matches!(reason, Reason::Hash | Reason::Cookie) {
                        let outcome = if *code >= 500 { "error" } else { "ok" };
                        self.analysis.with_label_values(&[s, v, outcome]).inc();
                        self.analysis_duration
                            .with_label_values(&[s, v])
                            .observe(*secs);
                    }
                }
                Event::Upstream(secs) => self.upstream.with_label_values(&[s, v]).observe(*secs),
                Event::Error(k) => self.errors.with_label_values(&[s, v, k.as_str()]).inc(),
            }
        }
    }

    fn record(m: &VariantMetrics, e: &Event) {
        match e {
            Event::Request(code, secs, reason) => {
                m.record_request(*code, None, *secs, reason.map(reason_slot))
            }
            Event::Upstream(secs) => m.record_upstream(*secs),
            Event::Error(k) => m.record_upstream_error(*k),
        }
    }

    /// The store's series of this test only (other tests share the process's store).
    struct Only(Vec<Arc<Series>>);

    impl Collector for Only {
        fn desc(&self) -> Vec<&Desc> {
            Vec::new()
        }
        fn collect(&self) -> Vec<MetricFamily> {
            families(&self.0)
        }
    }

    fn text(r: &Registry) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&r.gather(), &mut out)
            .expect("encode");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn the_store_exports_exactly_what_prometheus_vectors_would() {
        let service = "export-equivalence";
        let rules = vec!["rule:staff".to_string(), "rule:partners".to_string()];
        let variants = [("stable", 70.0), ("canary", 29.5), ("zero", 0.0)];
        let events = [
            Event::Request(200, 0.0012, Some(Reason::Hash)),
            Event::Request(200, 0.0005, Some(Reason::Hash)),
            Event::Request(503, 0.25, Some(Reason::Cookie)),
            Event::Request(404, 12.0, Some(Reason::NoKey)),
            Event::Request(201, 0.0007198, Some(Reason::Rule(1))),
            Event::Request(200, 3e-5, Some(Reason::Rule(0))),
            Event::Request(502, 10.0, Some(Reason::Fallback)),
            Event::Request(200, 0.9, Some(Reason::Forced)),
            Event::Request(200, 0.9, Some(Reason::Rollback)),
            Event::Upstream(0.001),
            Event::Upstream(7.5),
            Event::Error(ErrorKind::Connect),
            Event::Error(ErrorKind::Reset),
            Event::Error(ErrorKind::Reset),
        ];
        let reference = Registry::new();
        let r = Reference::new(&reference);
        let mut ours = Vec::new();
        for (i, (v, w)) in variants.iter().enumerate() {
            r.variant(service, v, *w, &rules);
            let m = VariantMetrics::new(service, v, *w, &rules);
            // Each variant gets a different share of the events.
            for e in events.iter().skip(i * 3) {
                r.record(service, v, &rules, e);
                record(&m, e);
            }
            ours.push(m.series().clone());
        }
        // Requests that match no service: codes and request durations only.
        let none = VariantMetrics::without_rules(Arc::new(Series::new("zz-none", "zz-none", true)));
        for e in [
            Event::Request(404, 0.002, None),
            Event::Request(421, 0.02, None),
        ] {
            if let Event::Request(code, secs, _) = e {
                let code = code.to_string();
                r.requests
                    .with_label_values(&["zz-none", "zz-none", &code])
                    .inc();
                r.duration
                    .with_label_values(&["zz-none", "zz-none"])
                    .observe(secs);
            }
            record(&none, &e);
        }
        ours.push(none.series().clone());
        let registry = Registry::new();
        registry.register(Box::new(Only(ours))).expect("register");
        let (want, got) = (text(&reference), text(&registry));
        assert!(want.contains("cohort_requests_total{code=\"404\",service=\"zz-none\""));
        assert!(want.contains("rule:partners"));
        for (n, (w, g)) in want.lines().zip(got.lines()).enumerate() {
            assert_eq!(w, g, "line {}", n + 1);
        }
        assert_eq!(want.lines().count(), got.lines().count());
        assert_eq!(want, got);
    }
}
