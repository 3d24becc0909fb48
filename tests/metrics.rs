#![allow(clippy::unwrap_used)]
//! Metrics, admin API and access log through the real binary: exact counter values,
//! histogram consistency, reasons, gauges across reloads, no user key in /metrics,
//! GET /explain, and every access log field.

mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

/// Parses Prometheus text into `name{labels}` → value (labels sorted as exported).
fn scrape(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Scrapes once `cohort_requests_total` adds up to `total`: the proxy counts a request in
/// its logging phase, just after the client has the response.
fn settled(px: &Cohort, total: f64) -> HashMap<String, f64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let m = scrape(&px.metrics());
        let sum: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("cohort_requests_total{"))
            .map(|(_, v)| v)
            .sum();
        if sum >= total || std::time::Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn val(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("missing series {key}"))
}

fn config(s: &EchoBackend, c: &EchoBackend, extra_server: &str) -> String {
    format!(
        r#"[server]
listen = ["@LISTEN@"]
admin = "@ADMIN@"
threads = 2
{extra_server}

[[service]]
name = "api"
path_prefix = "/api"
key = ["header:x-user-id"]
assign_cookie = "cid"

[[service.variant]]
name = "stable"
weight = 70
backends = ["{s}"]

[[service.variant]]
name = "canary"
weight = 30
backends = ["{c}"]

[[service.rule]]
name = "staff"
header = {{ name = "x-staff", equals = "1" }}
variant = "canary"
"#,
        s = s.addr,
        c = c.addr
    )
}

#[test]
fn counters_count_exactly_what_was_sent_per_variant_code_and_reason() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(&s, &c, ""));
    let mut cl = px.client();
    let w = [("stable", 70.0), ("canary", 30.0)];
    let mut hashed: HashMap<String, u32> = HashMap::new();
    for i in 0..200 {
        let key = format!("metric-user-{i}");
        let r = cl.get("/api/x", &[("x-user-id", &key)]);
        assert_eq!(r.status, 200);
        *hashed.entry(expected_variant("api", &w, &key)).or_default() += 1;
    }
    for _ in 0..7 {
        assert_eq!(
            cl.get("/api/x", &[("x-staff", "1"), ("x-user-id", "u")])
                .backend(),
            "canary"
        );
    }
    let mut minted = HashMap::<String, u32>::new();
    for _ in 0..11 {
        let r = cl.get("/api/anon", &[]);
        *minted.entry(r.backend()).or_default() += 1;
    }
    for _ in 0..5 {
        assert_eq!(cl.get("/elsewhere", &[]).status, 404);
    }
    let m = settled(&px, 200.0 + 7.0 + 11.0 + 5.0);
    let h = |v: &str| f64::from(*hashed.get(v).unwrap_or(&0));
    let n = |v: &str| f64::from(*minted.get(v).unwrap_or(&0));
    assert_eq!(
        val(
            &m,
            r#"cohort_assignments_total{reason="hash",service="api",variant="stable"}"#
        ),
        h("stable")
    );
    assert_eq!(
        val(
            &m,
            r#"cohort_assignments_total{reason="hash",service="api",variant="canary"}"#
        ),
        h("canary")
    );
    assert_eq!(
        val(
            &m,
            r#"cohort_assignments_total{reason="rule:staff",service="api",variant="canary"}"#
        ),
        7.0
    );
    assert_eq!(
        val(
            &m,
            r#"cohort_assignments_total{reason="rule:staff",service="api",variant="stable"}"#
        ),
        0.0
    );
    assert_eq!(
        val(
            &m,
            r#"cohort_assignments_total{reason="cookie",service="api",variant="stable"}"#
        ),
        n("stable")
    );
    assert_eq!(
        val(
            &m,
            r#"cohort_assignments_total{reason="cookie",service="api",variant="canary"}"#
        ),
        n("canary")
    );
    let stable_total = h("stable") + n("stable");
    let canary_total = h("canary") + 7.0 + n("canary");
    assert_eq!(
        val(
            &m,
            r#"cohort_requests_total{code="200",grpc_status="",service="api",variant="stable"}"#
        ),
        stable_total
    );
    assert_eq!(
        val(
            &m,
            r#"cohort_requests_total{code="200",grpc_status="",service="api",variant="canary"}"#
        ),
        canary_total
    );
    assert_eq!(
        val(
            &m,
            r#"cohort_requests_total{code="404",grpc_status="",service="_none",variant="_none"}"#
        ),
        5.0
    );
    // histograms: _count equals the requests, _sum is positive and bounded, buckets cumulative
    for (v, total) in [("stable", stable_total), ("canary", canary_total)] {
        let l = format!(r#"service="api",variant="{v}""#);
        assert_eq!(
            val(&m, &format!("cohort_request_duration_seconds_count{{{l}}}")),
            total
        );
        assert_eq!(
            val(
                &m,
                &format!("cohort_upstream_duration_seconds_count{{{l}}}")
            ),
            total
        );
        let sum = val(&m, &format!("cohort_request_duration_seconds_sum{{{l}}}"));
        let up = val(&m, &format!("cohort_upstream_duration_seconds_sum{{{l}}}"));
        assert!(sum > 0.0 && sum < total * 1.0, "sum {sum}");
        assert!(up > 0.0 && up <= sum, "upstream {up} within request {sum}");
        assert_eq!(
            val(
                &m,
                &format!(r#"cohort_request_duration_seconds_bucket{{{l},le="+Inf"}}"#)
            ),
            total
        );
        assert_eq!(
            val(
                &m,
                &format!(r#"cohort_request_duration_seconds_bucket{{{l},le="10"}}"#)
            ),
            total
        );
        assert_eq!(
            val(
                &m,
                &format!(r#"cohort_request_duration_seconds_bucket{{{l},le="0.0005"}}"#)
            )
            .min(total),
            val(
                &m,
                &format!(r#"cohort_request_duration_seconds_bucket{{{l},le="0.0005"}}"#)
            )
        );
    }
    assert_eq!(
        val(
            &m,
            r#"cohort_request_duration_seconds_count{service="_none",variant="_none"}"#
        ),
        5.0
    );
    assert_eq!(
        val(
            &m,
            r#"cohort_variant_weight{service="api",variant="stable"}"#
        ),
        70.0
    );
    assert_eq!(
        val(
            &m,
            &format!(
                r#"cohort_backend_up{{backend="{}",service="api",variant="canary"}}"#,
                c.addr
            )
        ),
        1.0
    );
    let version = px.status()["version"].as_str().unwrap().to_string();
    assert_eq!(
        val(&m, &format!(r#"cohort_config_info{{version="{version}"}}"#)),
        1.0
    );
}

#[test]
fn histogram_buckets_are_dense_from_half_a_millisecond_to_ten_seconds() {
    let b = cohort::metrics::duration_buckets();
    assert_eq!(b.first(), Some(&0.0005));
    assert_eq!(b.last(), Some(&10.0));
    for w in b.windows(2) {
        assert!(
            w[1] > w[0] && w[1] / w[0] <= 1.2 + 1e-6,
            "{w:?}: at most 20% apart"
        );
    }
}

#[test]
fn upstream_errors_are_counted_by_kind() {
    let dead = closed_addr();
    let cfg = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 1\n[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"{dead}\"]\n"
    );
    let px = Cohort::start(&cfg);
    assert_eq!(px.client().get("/", &[]).status, 502);
    // the failed connect ejected the only backend: later requests get 503 without trying
    for _ in 0..2 {
        assert_eq!(px.client().get("/", &[]).status, 503);
    }
    let m = settled(&px, 3.0);
    let v = |k: &str| val(&m, k);
    assert_eq!(
        v(r#"cohort_upstream_errors_total{kind="connect",service="api",variant="stable"}"#),
        1.0
    );
    assert_eq!(
        v(r#"cohort_requests_total{code="502",grpc_status="",service="api",variant="stable"}"#),
        1.0
    );
    assert_eq!(
        v(r#"cohort_requests_total{code="503",grpc_status="",service="api",variant="stable"}"#),
        2.0
    );
    assert_eq!(
        v(r#"cohort_requests_total{code="504",grpc_status="",service="api",variant="stable"}"#),
        0.0,
        "pre-created"
    );
    assert_eq!(
        v(&format!(
            r#"cohort_backend_up{{backend="{dead}",service="api",variant="stable"}}"#
        )),
        0.0
    );
}

#[test]
fn reload_updates_weights_and_deletes_series_of_removed_variants() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(&s, &c, ""));
    let mut cl = px.client();
    for i in 0..50 {
        cl.get("/api/", &[("x-user-id", &format!("k{i}"))]);
    }
    settled(&px, 50.0);
    let before = px.metrics();
    assert!(before.contains(r#"variant="canary""#));
    let only_stable = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 2\n[[service]]\nname = \"api\"\npath_prefix = \"/api\"\nkey = [\"header:x-user-id\"]\n[[service.variant]]\nname = \"stable\"\nweight = 42\nbackends = [\"{}\"]\n",
        s.addr
    );
    px.rewrite(&only_stable);
    assert_eq!(px.post_reload().1["result"], "applied");
    let text = px.metrics();
    let m = scrape(&text);
    assert_eq!(
        val(
            &m,
            r#"cohort_variant_weight{service="api",variant="stable"}"#
        ),
        42.0
    );
    assert!(
        !text.contains(r#"variant="canary""#),
        "canary series must be gone:\n{text}"
    );
    assert!(
        !text.contains("rule:staff"),
        "removed rule's reason series must be gone"
    );
    assert!(
        !text.contains(&c.addr.to_string()),
        "removed backend's backend_up must be gone"
    );
    // stable's counters carry over across the reload
    let kept = val(
        &scrape(&before),
        r#"cohort_requests_total{code="200",grpc_status="",service="api",variant="stable"}"#,
    );
    assert_eq!(
        val(
            &m,
            r#"cohort_requests_total{code="200",grpc_status="",service="api",variant="stable"}"#
        ),
        kept
    );
}

#[test]
fn no_user_key_ever_appears_in_metrics() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(&s, &c, ""));
    let mut cl = px.client();
    let marker = "zq-secret-user";
    for i in 0..30 {
        cl.get(
            "/api/",
            &[("x-user-id", &format!("{marker}-{i}")), ("x-staff", marker)],
        );
        cl.get(&format!("/{marker}"), &[("host", marker)]);
    }
    let anon = cl.get("/api/", &[]);
    let id = anon
        .header("set-cookie")
        .unwrap()
        .split(['=', ';'])
        .nth(1)
        .unwrap()
        .to_string();
    let text = px.metrics();
    assert!(
        !text.contains(marker),
        "a request value leaked into /metrics"
    );
    assert!(
        !text.contains(&id),
        "a minted cookie id leaked into /metrics"
    );
}

#[test]
fn admin_explain_matches_the_live_proxy_and_the_cli() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(&s, &c, ""));
    let mut a = px.admin_client();
    let mut cl = px.client();
    for i in 0..40 {
        let key = format!("ex-{i}");
        let live = cl.get("/api/", &[("x-user-id", &key)]).backend();
        let e = a
            .get(&format!("/explain?service=api&key={key}"), &[])
            .json();
        assert_eq!(e["variant"], live.as_str(), "{key}");
        assert_eq!(e["reason"], "hash");
        assert_eq!(e["key_source"], "header:x-user-id");
        let (code, out, _) = cohort_cmd(&[
            "explain",
            "-c",
            px.config_path.to_str().unwrap(),
            "--service",
            "api",
            "--key",
            &key,
            "--json",
        ]);
        assert_eq!(code, 0);
        let cli: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(cli, e, "CLI and admin API give the same JSON");
    }
    let e = a
        .get("/explain?service=api&key=x&header=x-staff%3A%201", &[])
        .json();
    assert_eq!(
        (
            e["variant"].as_str(),
            e["reason"].as_str(),
            e["rule"].as_str()
        ),
        (Some("canary"), Some("rule:staff"), Some("staff"))
    );
    assert_eq!(a.get("/explain?service=nope", &[]).status, 400);
    assert_eq!(a.get("/explain?bogus=1", &[]).status, 400);
}

fn read_log(path: &std::path::Path, want: usize) -> Vec<serde_json::Value> {
    for _ in 0..50 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= want {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("access log did not reach {want} lines");
}

#[test]
fn access_log_writes_every_field_and_no_key_by_default() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(&s, &c, "access_log = \"@DIR@/access.log\""));
    let mut cl = px.client();
    let r = cl.get(
        "/api/items?uid=secret-key-1",
        &[("x-user-id", "secret-key-1")],
    );
    let variant = r.backend();
    cl.get("/nowhere", &[]);
    let lines = read_log(&px.dir.path().join("access.log"), 2);
    let l = &lines[0];
    assert_eq!(l["service"], "api");
    assert_eq!(l["variant"], variant.as_str());
    assert_eq!(l["reason"], "hash");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/api/items", "path without the query string");
    assert_eq!(l["status"], 200);
    assert!(l["duration_ms"].as_f64().unwrap() > 0.0);
    let upstream = if variant == "stable" { s.addr } else { c.addr };
    assert_eq!(l["upstream"], upstream.to_string().as_str());
    assert_eq!(l["bytes"].as_u64().unwrap() as usize, r.body.len());
    assert!(l["time"].as_str().unwrap().ends_with('Z'));
    assert!(l.get("key").is_none());
    assert_eq!(l["client_ip"], "127.0.0.1");
    assert_eq!(l["host"], px.addr.to_string(), "the Host the client sent");
    let id = r
        .upstream_header("x-request-id")
        .expect("the backend got an id");
    assert_eq!(l["request_id"], id.as_str(), "the id the backend got");
    assert_eq!(lines[1]["request_id"].as_str().unwrap().len(), 32);
    let text = std::fs::read_to_string(px.dir.path().join("access.log")).unwrap();
    assert!(!text.contains("secret-key-1"), "no key by default");
    assert_eq!(lines[1]["status"], 404);
    assert_eq!(lines[1]["service"], "_none");
    assert!(lines[1]["upstream"].is_null());
}

#[test]
fn access_log_keys_adds_the_cohort_key() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(
        &s,
        &c,
        "access_log = \"@DIR@/access.log\"\naccess_log_keys = true",
    ));
    let mut cl = px.client();
    cl.get("/api/", &[("x-user-id", "visible-key")]);
    let minted = cl.get("/api/", &[]);
    let id = minted
        .header("set-cookie")
        .unwrap()
        .split(['=', ';'])
        .nth(1)
        .unwrap()
        .to_string();
    let lines = read_log(&px.dir.path().join("access.log"), 2);
    assert_eq!(lines[0]["key"], "visible-key");
    assert_eq!(lines[1]["key"], id.as_str());
}
