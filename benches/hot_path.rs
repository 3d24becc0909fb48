//! Criterion benches of the per-request hot path and of table compilation:
//! - `assign/*`: the normative hash alone (2 and 3 variants);
//! - `decide/*`: the full routing decision on a realistic request (service match, key
//!   extraction from a 12-header map, 4 rules evaluated, 3 variants hashed);
//! - `names/*`: the case-insensitive name comparisons of one decision, two ways;
//! - `record/request`: per-request metric recording (status, histogram, reason);
//! - `compile/10x3x10`: parse + validate + compile 10 services × 3 variants × 10 backends;
//! - `decide/services/{1,1000}`: one decision in a table of 1 and of 1,000 services;
//! - `compile/1000x3-1M-keys-*`: parse + validate + compile of the scale bench's big config.
//!
//! Run: `cargo bench --bench hot_path` (see BENCHMARKS.md for recorded results).

use cohort::config::Config;
use cohort::routing::cohort::{assign, variant_seed};
use cohort::routing::compare::eq_lower;
use cohort::routing::{RequestView, RoutingTable};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::Uri;

#[path = "support/decision.rs"]
mod decision;
use decision::{raw_head, realistic_headers, SERVICE};

fn bench_assign(c: &mut Criterion) {
    let seeds2 = [variant_seed("api", "stable"), variant_seed("api", "canary")];
    let seeds3 = [seeds2[0], seeds2[1], variant_seed("api", "beta")];
    c.bench_function("assign/2-variants", |b| {
        b.iter(|| assign(black_box(b"user-123456"), &seeds2, &[95.0, 5.0]))
    });
    c.bench_function("assign/3-variants", |b| {
        b.iter(|| assign(black_box(b"user-123456"), &seeds3, &[80.0, 15.0, 5.0]))
    });
}

fn bench_decide(c: &mut Criterion) {
    let cfg = Config::parse(&format!(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n{SERVICE}"
    ))
    .expect("config");
    let table = RoutingTable::build(cfg).expect("table");
    let headers = realistic_headers("user-123456");
    let uri: Uri = "/v1/orders?page=2".parse().expect("uri");
    let peer = Some("203.0.113.9".parse().expect("ip"));
    c.bench_function("decide/match+key+4rules+3variants", |b| {
        b.iter(|| {
            let view = RequestView::new(black_box(&headers), &uri, peer);
            let svc = table.router.match_service(&view).expect("service");
            black_box(table.router.decide(svc, &view))
        })
    });
    // The same request as the HTTP/1.1 fast path sees it: httparse's header list.
    let raw = raw_head(&headers);
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    req.parse(&raw).expect("parse");
    let (target, list) = (req.path.expect("target"), &*req.headers);
    c.bench_function("decide/raw-headers/match+key+4rules+3variants", |b| {
        b.iter(|| {
            let view = RequestView::raw(black_box(list), target, peer);
            let svc = table.router.match_service(&view).expect("service");
            black_box(table.router.decide(svc, &view))
        })
    });
    c.bench_function("decide/raw-headers/parse+match+key+4rules+3variants", |b| {
        b.iter(|| {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut slots);
            let _ = req.parse(black_box(&raw));
            let view = RequestView::raw(req.headers, req.path.unwrap_or("/"), peer);
            let svc = table.router.match_service(&view).expect("service");
            black_box(table.router.decide(svc, &view))
        })
    });
}

/// `n - 1` services shaped like [`SERVICE`] (hosts `s<i>.example.com`, a 1,000-key
/// `key_in` each), then [`SERVICE`] itself: the request's service comes last, where a
/// scan of the services would find it latest.
fn many_services(n: usize) -> String {
    let mut s = String::from("[server]\nlisten = [\"127.0.0.1:8080\"]\n");
    for i in 1..n {
        let keys: Vec<String> = (0..1000).map(|k| format!("\"s{i}-u{k:06}\"")).collect();
        s += &SERVICE
            .replacen("name = \"api\"", &format!("name = \"svc{i}\""), 1)
            .replacen("api.example.com", &format!("s{i}.example.com"), 1)
            .replacen(
                "[\"partner-acme\", \"partner-globex\"]",
                &format!("[{}]", keys.join(", ")),
                1,
            );
    }
    s + SERVICE
}

/// The same decision (raw headers, as the fast path sees them) in a table of 1 service
/// and of 1,000 services with 1M allow-list keys between them.
fn bench_scale(c: &mut Criterion) {
    let headers = realistic_headers("user-123456");
    let raw = raw_head(&headers);
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    req.parse(&raw).expect("parse");
    let (target, list) = (req.path.expect("target"), &*req.headers);
    let peer = Some("203.0.113.9".parse().expect("ip"));
    let mut group = c.benchmark_group("decide/services");
    for n in [1, 1000] {
        let table =
            RoutingTable::build(Config::parse(&many_services(n)).expect("config")).expect("table");
        assert_eq!(table.router.services.len(), n);
        group.bench_function(format!("{n}"), |b| {
            b.iter(|| {
                let view = RequestView::raw(black_box(list), target, peer);
                let svc = table.router.match_service(&view).expect("service");
                black_box(table.router.decide(svc, &view))
            })
        });
    }
    group.finish();
}

/// Parse + validate + compile of the 1,000-service, 1M-key config (about 12 MB).
fn bench_compile_big(c: &mut Criterion) {
    let text = many_services(1000);
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function(
        format!("1000x3-1M-keys-{}MB", text.len() / 1_000_000),
        |b| {
            b.iter(|| {
                let cfg = Config::parse(black_box(&text)).expect("config");
                black_box(RoutingTable::build(cfg).expect("table"))
            })
        },
    );
    group.finish();
}

/// The header names (as clients case them) and host a decision compares, against the
/// router's lower-case names: word-at-a-time `eq_lower` versus the standard library.
fn bench_names(c: &mut Criterion) {
    let pairs: Vec<(&[u8], &[u8])> = [
        ("Host", "host"),
        ("Cookie", "cookie"),
        ("X-Forwarded-For", "x-forwarded-for"),
        ("CloudFront-Viewer-Country", "cloudfront-viewer-country"),
        ("X-User-Id", "x-user-id"),
        ("Accept-Language", "x-forwarded-for"),
        ("API.example.com", "api.example.com"),
    ]
    .iter()
    .map(|(r, l)| (r.as_bytes(), l.as_bytes()))
    .collect();
    c.bench_function("names/7-compares/eq_lower", |b| {
        b.iter(|| {
            pairs
                .iter()
                .filter(|(r, l)| eq_lower(black_box(r), l))
                .count()
        })
    });
    c.bench_function("names/7-compares/std-eq_ignore_ascii_case", |b| {
        b.iter(|| {
            pairs
                .iter()
                .filter(|(r, l)| black_box(r).eq_ignore_ascii_case(l))
                .count()
        })
    });
}

fn bench_record(c: &mut Criterion) {
    let cfg = Config::parse(&format!(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n{SERVICE}"
    ))
    .expect("config");
    let table = RoutingTable::build(cfg).expect("table");
    let m = &table.metrics.variants[0][0];
    c.bench_function("record/request", |b| {
        b.iter(|| {
            m.record_request(black_box(200), None, black_box(0.0042), Some(1));
            m.record_upstream(black_box(0.0031));
        })
    });
}

fn compile_config() -> String {
    let mut s = String::from("[server]\nlisten = [\"127.0.0.1:8080\"]\n");
    for svc in 0..10 {
        s += &format!("\n[[service]]\nname = \"svc{svc}\"\npath_prefix = \"/s{svc}\"\nkey = [\"header:x-user-id\", \"ip\"]\n");
        for (v, w) in [("stable", 80), ("canary", 15), ("beta", 5)] {
            let backends: Vec<String> = (0..10)
                .map(|b| format!("\"10.{svc}.{}.{b}:8000\"", w % 200))
                .collect();
            s += &format!(
                "\n[[service.variant]]\nname = \"{v}\"\nweight = {w}\nbackends = [{}]\n",
                backends.join(", ")
            );
        }
        s += "\n[[service.rule]]\nname = \"staff\"\nclient_cidr = [\"10.20.0.0/16\"]\nvariant = \"canary\"\n";
    }
    s
}

fn bench_compile(c: &mut Criterion) {
    let text = compile_config();
    c.bench_function("compile/10x3x10", |b| {
        b.iter(|| {
            let cfg = Config::parse(black_box(&text)).expect("config");
            black_box(RoutingTable::build(cfg).expect("table"))
        })
    });
}

criterion_group!(
    benches,
    bench_assign,
    bench_decide,
    bench_names,
    bench_record,
    bench_compile,
    bench_scale,
    bench_compile_big
);
criterion_main!(benches);
