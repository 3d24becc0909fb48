#![allow(clippy::unwrap_used)]
//! The operator tooling around the metrics: `conf/grafana-dashboard.json` (valid, uses a
//! datasource variable, and every metric it queries exists in a live scrape) and
//! `scripts/variant-report` (its numbers equal what was sent through a real proxy; its
//! parser and quantiles checked against a hand-written exposition).

mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/grafana-dashboard.json");
const REPORT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/variant-report");

/// Every metric family cohort exports (SPEC "Metrics").
const FAMILIES: [&str; 9] = [
    "cohort_requests_total",
    "cohort_request_duration_seconds",
    "cohort_upstream_duration_seconds",
    "cohort_assignments_total",
    "cohort_upstream_errors_total",
    "cohort_backend_up",
    "cohort_variant_weight",
    "cohort_config_reloads_total",
    "cohort_config_info",
];

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, rows' nested panels included.
fn all_panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// Every `expr` string anywhere in the dashboard (panel targets and annotations).
fn all_exprs(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => out.extend(all_exprs(x)),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| out.extend(all_exprs(x))),
        _ => {}
    }
    out
}

/// Metric family names in a PromQL expression: identifiers starting with `cohort_`,
/// with the histogram suffixes removed.
fn families_in(expr: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("cohort_") {
        let preceded = rest[..i].chars().next_back().is_some_and(is_ident);
        let tail = &rest[i..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        let name = &tail[..end];
        if !preceded {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(family.to_string());
        }
        rest = &tail[end..];
    }
    out
}

fn ds_is_variable(ds: &Value) -> bool {
    ds["type"] == "prometheus" && ds["uid"] == "${datasource}"
}

#[test]
fn dashboard_json_is_valid_and_uses_a_datasource_variable() {
    let d = dashboard();
    assert_eq!(d["uid"], "cohort-variants");
    assert_eq!(d["title"], "cohort: canary vs stable");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);

    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource template variable");
    assert_eq!(ds["name"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let svc = vars
        .iter()
        .find(|v| v["name"] == "service")
        .expect("a service template variable");
    assert_eq!(svc["type"], "query");
    assert!(ds_is_variable(&svc["datasource"]), "{}", svc["datasource"]);
    let q = svc["query"]
        .as_str()
        .or(svc["query"]["query"].as_str())
        .unwrap();
    assert_eq!(q, "label_values(cohort_requests_total, service)");

    let panels = all_panels(&d);
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("").to_string();
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "panel id {id} used twice ({title})");
        let g = &p["gridPos"];
        let pos = ["x", "y", "w", "h"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        });
        assert!(
            pos[2] > 0 && pos[3] > 0 && pos[0] + pos[2] <= 24,
            "{title}: {g}"
        );
        for (other, o) in &boxes {
            let apart = pos[0] + pos[2] <= o[0]
                || o[0] + o[2] <= pos[0]
                || pos[1] + pos[3] <= o[1]
                || o[1] + o[3] <= pos[1];
            assert!(apart, "panels {title:?} and {other:?} overlap");
        }
        boxes.push((title.clone(), pos));
        let kind = p["type"].as_str().unwrap();
        if kind == "row" {
            continue;
        }
        assert!(
            ["timeseries", "stat", "table"].contains(&kind),
            "{title}: panel type {kind}"
        );
        assert!(
            ds_is_variable(&p["datasource"]),
            "{title}: {}",
            p["datasource"]
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                ds_is_variable(&t["datasource"]),
                "{title}: {}",
                t["datasource"]
            );
            assert!(
                !t["expr"].as_str().unwrap_or("").trim().is_empty(),
                "{title}: empty expr"
            );
            assert!(
                refs.insert(t["refId"].as_str().unwrap()),
                "{title}: refId twice"
            );
        }
    }
    for a in d["annotations"]["list"].as_array().unwrap() {
        if a.get("expr").is_some() {
            assert!(ds_is_variable(&a["datasource"]), "{a}");
        }
    }

    // Every metric family is on the dashboard, and every query of a per-service family is
    // filtered by the service variable.
    let exprs = all_exprs(&d);
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| families_in(e)).collect();
    let all: BTreeSet<String> = FAMILIES.iter().map(|s| s.to_string()).collect();
    assert_eq!(used, all);
    for e in &exprs {
        let global = families_in(e)
            .iter()
            .all(|f| f.starts_with("cohort_config_"));
        assert!(global || e.contains("service=~\"$service\""), "{e}");
    }
    // The queries the brief names, verbatim.
    let has = |needle: &str| exprs.iter().any(|e| e.contains(needle));
    assert!(has(
        "sum by (variant) (rate(cohort_requests_total{service=~\"$service\"}[$__rate_interval]))"
    ));
    assert!(has(
        "histogram_quantile(0.5, sum by (variant, le) (rate(cohort_request_duration_seconds_bucket"
    ));
    assert!(has("histogram_quantile(0.99, sum by (variant, le) (rate(cohort_request_duration_seconds_bucket"));
    assert!(has("histogram_quantile(0.99, sum by (variant, le) (rate(cohort_upstream_duration_seconds_bucket"));
    assert!(has("code=~\"5..\""));
}

#[test]
fn every_metric_in_the_dashboard_exists_in_a_live_scrape() {
    let used: BTreeSet<String> = all_exprs(&dashboard())
        .iter()
        .flat_map(|e| families_in(e))
        .collect();
    assert!(used.len() >= 9, "{used:?}");

    let good = backend("stable");
    let dead = closed_addr();
    let px = Cohort::start(&format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 2\n\n\
         [[service]]\nname = \"api\"\npath_prefix = \"/api\"\nkey = [\"header:x-user-id\"]\n\n\
         [[service.variant]]\nname = \"stable\"\nweight = 50\nbackends = [\"{}\"]\n\n\
         [[service.variant]]\nname = \"canary\"\nweight = 50\nbackends = [\"{dead}\"]\n",
        good.addr
    ));
    let variants = [("stable", 50.0), ("canary", 50.0)];
    let mut cl = px.client();
    // The canary's first request fails to connect (502, counted as an upstream error);
    // later ones may get 503 instead once the failed backend is ejected.
    let mut seen: BTreeMap<(String, u16), u32> = BTreeMap::new();
    for i in 0..40 {
        let key = format!("user-{i}");
        let want = expected_variant("api", &variants, &key);
        let r = cl.get("/api/x", &[("x-user-id", &key)]);
        let first_canary = want == "canary" && !seen.keys().any(|(v, _)| v == "canary");
        let ok = match want.as_str() {
            "stable" => r.status == 200,
            _ if first_canary => r.status == 502,
            _ => r.status == 502 || r.status == 503,
        };
        assert!(ok, "{key} on {want}: {} {}", r.status, r.text());
        *seen.entry((want, r.status)).or_insert(0) += 1;
    }
    assert!(seen.contains_key(&("stable".to_string(), 200)), "{seen:?}");
    assert!(seen.contains_key(&("canary".to_string(), 502)), "{seen:?}");
    assert_eq!(cl.get("/elsewhere", &[]).status, 404);

    // The counters are written after the response: poll until the last one is in.
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let m = px.metrics();
        if m.contains("cohort_requests_total{code=\"404\",grpc_status=\"\",service=\"_none\",variant=\"_none\"} 1")
            || Instant::now() > deadline
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for family in &used {
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "{family} is on the dashboard but not in /metrics:\n{metrics}"
        );
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(family.as_str()) && !l.starts_with('#')),
            "{family} has no sample"
        );
    }
    let canary_errors: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("cohort_upstream_errors_total{") && l.contains("variant=\"canary\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(canary_errors > 0.0, "no upstream error counted:\n{metrics}");
    assert!(
        metrics.contains(&format!(
            "cohort_backend_up{{backend=\"{}\",service=\"api\",variant=\"stable\"}} 1",
            good.addr
        )),
        "{metrics}"
    );
}

/// Runs the report with `args`, waits at most `timeout`; returns its output.
fn run_report(args: &[&str], timeout: Duration) -> Output {
    let child = Command::new(REPORT)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {REPORT}: {e}"));
    wait_output(child, timeout)
}

fn wait_output(mut child: std::process::Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("variant-report did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn report_rows(out: &Output) -> Vec<Value> {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    v.as_array().unwrap().clone()
}

fn row<'a>(rows: &'a [Value], service: &str, variant: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["service"] == service && r["variant"] == variant)
        .unwrap_or_else(|| panic!("no row {service}/{variant} in {rows:?}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn variant_report_numbers_match_the_counters() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 2\n\n\
         [[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n\n\
         [[service.variant]]\nname = \"stable\"\nweight = 50\nbackends = [\"{}\"]\n\n\
         [[service.variant]]\nname = \"canary\"\nweight = 50\nbackends = [\"{}\"]\n",
        s.addr, c.addr
    ));
    let variants = [("stable", 50.0), ("canary", 50.0)];
    let keys: Vec<String> = (0..120).map(|i| format!("user-{i}")).collect();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for k in &keys {
        *want
            .entry(expected_variant("api", &variants, k))
            .or_insert(0) += 1;
    }
    assert!(want.values().all(|n| *n > 20), "{want:?}");

    let admin = px.admin.to_string();
    let spawned = Instant::now();
    let mut child = Command::new(REPORT)
        .args(["--admin", &admin, "--interval", "3", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {REPORT}: {e}"));
    // The report says on stderr when its first scrape is done: send only after that (and
    // not before 0.5 s), so every request falls between the two scrapes.
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            if line.contains("first scrape") {
                let _ = tx.send(());
            }
            all += &line;
            all.push('\n');
        }
        all
    });
    let first_done = rx.recv_timeout(Duration::from_secs(10)).is_ok();
    if !first_done {
        let _ = child.kill();
        panic!("no first scrape: {}", reader.join().unwrap());
    }
    let first_at = Instant::now();
    if let Some(wait) = Duration::from_millis(500).checked_sub(spawned.elapsed()) {
        std::thread::sleep(wait);
    }
    let mut cl = px.client();
    for k in &keys {
        let r = cl.get("/", &[("x-user-id", k)]);
        assert_eq!(r.status, 200);
    }
    let sent_in = first_at.elapsed();
    assert!(
        sent_in < Duration::from_millis(2500),
        "sending took {sent_in:?}: too close to the second scrape to check exact counts"
    );
    let out = wait_output(child, Duration::from_secs(20));
    let ran_for = spawned.elapsed();
    let stderr = reader.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let rows = report_rows(&out);
    assert_eq!(
        rows.len(),
        2,
        "only api's two variants (no _none): {rows:?}"
    );
    for (variant, n) in &want {
        let r = row(&rows, "api", variant);
        let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "service",
                "variant",
                "weight",
                "requests",
                "rps",
                "error_pct",
                "p50_ms",
                "p90_ms",
                "p99_ms"
            ])
        );
        assert_eq!(r["requests"].as_u64(), Some(*n), "{variant}: {r}");
        assert_eq!(f(&r["weight"]), 50.0, "{r}");
        assert_eq!(f(&r["error_pct"]), 0.0, "{r}");
        let (p50, p90, p99) = (f(&r["p50_ms"]), f(&r["p90_ms"]), f(&r["p99_ms"]));
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{r}");
        assert!(p99 <= 10_000.0, "{r}");
        // The report divides by the time between its two answers: at least the 3 s
        // interval, at most the whole run of the report.
        let rps = f(&r["rps"]);
        let (most, least) = (*n as f64 / 3.0, *n as f64 / ran_for.as_secs_f64());
        assert!(
            least * 0.999 <= rps && rps <= most * 1.001,
            "{variant}: rps {rps}, expected between {least} and {most}"
        );
    }

    // A dead admin address: exit 1 and say why.
    let dead = closed_addr().to_string();
    let out = run_report(
        &["--admin", &dead, "--interval", "0.1"],
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains("cannot reach") && err.contains(&dead), "{err}");
    assert!(out.stdout.is_empty());
}

/// An admin endpoint that answers `GET /metrics` with `bodies[0]`, then `bodies[1]`, ...
/// (the last one repeated).
fn fake_admin(bodies: Vec<String>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let body = &bodies[i.min(bodies.len() - 1)];
            let ok = String::from_utf8_lossy(&head).starts_with("GET /metrics ");
            let resp = if ok {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = stream.write_all(resp.as_bytes());
        }
    });
    addr
}

/// An exposition with the awkward parts of the format: HELP text with escapes, labels in
/// any order, escaped quotes in label values, timestamps, `+Inf`.
fn exposition(
    stable: [u64; 4],
    stable_codes: (u64, u64),
    canary: [u64; 4],
    canary_codes: (u64, u64),
    none: u64,
) -> String {
    let mut t = String::new();
    t += "# HELP cohort_requests_total Requests by \"service\", variant \\ code.\n";
    t += "# TYPE cohort_requests_total counter\n";
    t += &format!(
        "cohort_requests_total{{code=\"200\",service=\"api\",variant=\"stable\"}} {}\n",
        stable_codes.0
    );
    if stable_codes.1 > 0 {
        t += &format!("cohort_requests_total{{variant=\"stable\",code=\"503\",service=\"api\"}} {} 1700000000000\n", stable_codes.1);
    }
    t += &format!(
        "cohort_requests_total{{service=\"api\",variant=\"canary\",code=\"200\"}} {}\n",
        canary_codes.0
    );
    if canary_codes.1 > 0 {
        t += &format!(
            "cohort_requests_total{{service=\"api\",code=\"502\",variant=\"canary\"}} {}\n",
            canary_codes.1
        );
    }
    t += &format!(
        "cohort_requests_total{{code=\"404\",service=\"_none\",variant=\"_none\"}} {none}\n"
    );
    t += "# HELP cohort_assignments_total Requests by reason.\n# TYPE cohort_assignments_total counter\n";
    t += "cohort_assignments_total{reason=\"rule:a\\\"b}c,d=\\\"e\\\\\",service=\"api\",variant=\"canary\"} 3\n";
    t += "# TYPE cohort_variant_weight gauge\n";
    t += "cohort_variant_weight{service=\"api\",variant=\"canary\"} 10\n";
    t += "cohort_variant_weight{variant=\"stable\",service=\"api\"} 90\n";
    t += "cohort_variant_weight{service=\"api\",variant=\"dark\"} 0\n";
    t += "# TYPE cohort_request_duration_seconds histogram\n";
    let les = ["0.1", "0.2", "0.5", "+Inf"];
    for (variant, counts) in [("stable", stable), ("canary", canary)] {
        for (le, n) in les.iter().zip(counts) {
            t += &format!("cohort_request_duration_seconds_bucket{{le=\"{le}\",service=\"api\",variant=\"{variant}\"}} {n}\n");
        }
        t += &format!(
            "cohort_request_duration_seconds_sum{{service=\"api\",variant=\"{variant}\"}} 1.5\n"
        );
        t += &format!(
            "cohort_request_duration_seconds_count{{service=\"api\",variant=\"{variant}\"}} {}\n",
            counts[3]
        );
    }
    for le in les {
        t += &format!("cohort_request_duration_seconds_bucket{{service=\"_none\",variant=\"_none\",le=\"{le}\"}} {none}\n");
    }
    t
}

#[test]
fn variant_report_parses_awkward_expositions_and_interpolates_like_prometheus() {
    // Interval: stable +100 requests (10 of them 503, a series that is new at the second
    // scrape), bucket deltas 20/70/90/100; canary +4 (all 502), deltas 1/2/3/4; dark none.
    let first = exposition([50, 80, 100, 100], (100, 0), [10, 10, 10, 10], (10, 0), 5);
    let second = exposition([70, 150, 190, 200], (190, 10), [11, 12, 13, 14], (10, 4), 8);
    let admin = fake_admin(vec![first.clone(), second.clone()]).to_string();
    let out = run_report(
        &["--admin", &admin, "--interval", "0.2", "--json"],
        Duration::from_secs(20),
    );
    let rows = report_rows(&out);
    let names: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["service"].as_str().unwrap(),
                r["variant"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [("api", "canary"), ("api", "dark"), ("api", "stable")]
    );

    let st = row(&rows, "api", "stable");
    assert_eq!(st["requests"], 100);
    assert_eq!(f(&st["weight"]), 90.0);
    assert_eq!(f(&st["error_pct"]), 10.0);
    // p50: rank 50 in (0.1, 0.2] holding 50 with 20 below: 0.1 + 0.1 * 30/50.
    assert!((f(&st["p50_ms"]) - 160.0).abs() < 1e-6, "{st}");
    // p90: rank 90 is the top of (0.2, 0.5].
    assert!((f(&st["p90_ms"]) - 500.0).abs() < 1e-6, "{st}");
    // p99: rank 99 is in +Inf: the highest finite bound.
    assert!((f(&st["p99_ms"]) - 500.0).abs() < 1e-6, "{st}");

    let ca = row(&rows, "api", "canary");
    assert_eq!(ca["requests"], 4);
    assert_eq!(f(&ca["weight"]), 10.0);
    assert_eq!(f(&ca["error_pct"]), 100.0);
    // p50: rank 2 is the top of (0.1, 0.2].
    assert!((f(&ca["p50_ms"]) - 200.0).abs() < 1e-6, "{ca}");
    assert!((f(&ca["p99_ms"]) - 500.0).abs() < 1e-6, "{ca}");

    let dark = row(&rows, "api", "dark");
    assert_eq!(dark["requests"], 0);
    assert_eq!(f(&dark["weight"]), 0.0);
    for k in ["error_pct", "p50_ms", "p90_ms", "p99_ms"] {
        assert!(dark[k].is_null(), "{k}: {dark}");
    }

    // _none only on request, in the text table; '-' where there is nothing to say.
    let admin = fake_admin(vec![first, second]).to_string();
    let out = run_report(
        &["--admin", &admin, "--interval", "0.2", "--service", "_none"],
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|l: &Vec<&str>| l.first() == Some(&"_none"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let cells = &lines[0];
    assert_eq!(&cells[..4], ["_none", "_none", "-", "3"], "{text}");
    assert_eq!(cells[5], "0.00", "{text}");
    assert!(text.contains("SERVICE") && text.contains("P99ms"), "{text}");
    assert!(!text.contains("stable"), "{text}");

    // Something that is not cohort: exit 1.
    let admin = fake_admin(vec!["# nothing here\nup 1\n".to_string()]).to_string();
    let out = run_report(
        &["--admin", &admin, "--interval", "0.1"],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
}
