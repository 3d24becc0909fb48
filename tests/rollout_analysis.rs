#![allow(clippy::unwrap_used)]
//! The rollout's analysis end to end (SPEC "Progressive rollout with automated
//! analysis"): canaries that behave like stable walk to promoted with the step's share of
//! users; small error and latency regressions roll back and tiny ones do not; low
//! traffic holds until `max_step_secs`; a new id starts over; `cohort rollout report`
//! draws a real rollout as one self-contained page (rendered by headless Chromium when it
//! is installed). The real binary, real backends on 127.0.0.1, second-scale steps; every
//! wait is a bounded poll and no assertion is on time.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A service `name` on `prefix` splitting stable and canary 50/50 under a rollout;
/// `rollout` and `gates` are the lines of `[service.rollout]` and its gates after `id`.
fn service(
    name: &str,
    stable: &EchoBackend,
    canary: &EchoBackend,
    rollout: &str,
    gates: &str,
) -> String {
    format!(
        r#"
[[service]]
name = "{name}"
path_prefix = "/{name}/"
key = ["header:x-user-id"]

[[service.rule]]
name = "staff"
header = {{ name = "x-staff", present = true }}
variant = "canary"

[[service.variant]]
name = "stable"
weight = 50
backends = ["{s}"]

[[service.variant]]
name = "canary"
weight = 50
backends = ["{c}"]

[service.rollout]
canary = "canary"
baseline = "stable"
{rollout}
[service.rollout.gates]
{gates}
"#,
        s = stable.addr,
        c = canary.addr,
    )
}

fn server() -> String {
    "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 2\nrollout_state = \"@DIR@/rollout.json\"\n"
        .to_string()
}

/// Every rollout of `GET /rollout` (with `?checks=1` when `checks`), by service.
fn rollouts(px: &Cohort, checks: bool) -> BTreeMap<String, Value> {
    let path = if checks {
        "/rollout?checks=1"
    } else {
        "/rollout"
    };
    let r = px.admin_client().get(path, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["service"].as_str().unwrap().to_string(), s.clone()))
        .collect()
}

fn post(px: &Cohort, action: &str, service: &str) -> Value {
    let r = px.admin_client().request(
        "POST",
        &format!("/rollout/{action}?service={service}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{action} {service}: {}", r.text());
    r.json()
}

/// Polls `GET /rollout` until `done` holds for the whole answer (at most `secs`).
fn wait_all(
    px: &Cohort,
    secs: u64,
    what: &str,
    done: impl Fn(&BTreeMap<String, Value>) -> bool,
) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let all = rollouts(px, false);
        if done(&all) {
            return all;
        }
        if Instant::now() > deadline {
            panic!(
                "waiting for {what}: {:#}\n{}",
                serde_json::to_value(&all).unwrap(),
                px.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Failed checks of every rollout, from `/metrics`.
fn failed_checks(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("cohort_rollout_checks_total{result=\"fail\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn events(r: &Value) -> Vec<String> {
    r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

/// Requests of distinct users (`{tag}-{i}`) to each path in `paths` in turn, from
/// `threads` threads, until `stop` is set or `max` were sent; returns the count sent.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(px: &Cohort, paths: &[&str], threads: u64, max: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let paths: Arc<Vec<String>> = Arc::new(paths.iter().map(|p| p.to_string()).collect());
        let threads = (0..threads)
            .map(|t| {
                let (stop, sent, paths, addr) =
                    (stop.clone(), sent.clone(), paths.clone(), px.addr);
                std::thread::spawn(move || {
                    let mut cl = Client::new(addr);
                    let mut i = t;
                    while !stop.load(Ordering::SeqCst) && sent.fetch_add(1, Ordering::SeqCst) < max
                    {
                        let path = &paths[(i as usize) % paths.len()];
                        let user = format!("load-{}", i % 100_000);
                        let _ = cl.try_request("GET", path, &[("x-user-id", &user)], b"");
                        i += threads;
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            threads,
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// A canary that behaves like stable

/// Which backend served `user` on `path` (the echo backend's `x-backend` header).
fn served_by(cl: &mut Client, path: &str, user: &str) -> String {
    let r = cl.get(path, &[("x-user-id", user)]);
    assert_eq!(r.status, 200, "{user}: {}", r.text());
    r.header("x-backend").unwrap_or("").to_string()
}

/// Runs at once, one service each (each its own hash salt), in one process.
const RUNS: usize = 10;
/// Users probed at every step of every run: at 10% the share of 5,000 random users has a
/// standard deviation of 0.42 points, so ±1.5 points is 3.5 of them (and the assignment
/// is deterministic: these users give these shares on every run of the test). 100,000
/// probes in all, plus 3,000 once promoted. The probes are also each step's traffic:
/// 250 canary requests at 5%, which the gates below judge.
const USERS: usize = 5_000;
const STEPS: [f64; 2] = [5.0, 10.0];

#[test]
fn canaries_like_stable_walk_every_step_to_promoted_with_the_steps_share() {
    let (s, c) = (backend("stable"), backend("canary"));
    let mut cfg = server();
    for i in 0..RUNS {
        cfg += &service(
            &format!("run{i}"),
            &s,
            &c,
            &format!("id = \"healthy-{i}\"\nsteps = [5, 10]\nstep_secs = 1\ncheck_secs = 1\nmax_step_secs = 3600\nfailure_limit = 2\n"),
            "max_error_increase = 0.02\nconfidence = 0.95\nmin_requests = 150\nlatency_quantile = 0.8\nmax_latency_ratio = 1.5\nlatency_slack_ms = 25\n",
        );
    }
    // Pinned to the HTTP/1 engine: what this test measures (the rollout's weights, its
    // gates, the assignment) is decided in the routing core both carriers share, and its
    // 100,000 probes take minutes on the Pingora carrier's debug build. tests/rollout.rs
    // and the other tests here run a rollout on whichever carrier the suite runs.
    let px = Cohort::start_with_env(&cfg, ENGINE);
    let names: Vec<String> = (0..RUNS).map(|i| format!("run{i}")).collect();
    let users: Arc<Vec<String>> = Arc::new((0..USERS).map(|u| format!("user-{u}")).collect());
    let mut before: Vec<Option<Vec<bool>>> = vec![None; RUNS];
    for (step, percent) in STEPS.iter().copied().enumerate() {
        // Without traffic since the last step began, no rollout can pass it: each waits
        // at the new step until paused here.
        wait_all(&px, 60, &format!("every run at step {step}"), |all| {
            names
                .iter()
                .all(|n| all[n]["step"] == step && all[n]["state"] == "running")
        });
        for n in &names {
            assert_eq!(post(&px, "pause", n)["percent"], percent);
        }
        let want = [("stable", 100.0 - percent), ("canary", percent)];
        for (i, name) in names.iter().enumerate() {
            let (u, p) = (users.clone(), format!("/{name}/"));
            let got = parallel(USERS, 4, move |cl, k| served_by(cl, &p, &u[k]), px.addr);
            let in_canary: Vec<bool> = got.iter().map(|b| b == "canary").collect();
            for (k, b) in got.iter().enumerate() {
                assert_eq!(
                    *b,
                    expected_variant(name, &want, &users[k]),
                    "{name} {} at {percent}%",
                    users[k]
                );
            }
            let share = 100.0 * in_canary.iter().filter(|x| **x).count() as f64 / USERS as f64;
            println!(
                "{name} step {} ({percent}%): observed canary share {share:.2}%",
                step + 1
            );
            assert!(
                (share - percent).abs() <= 1.5,
                "{name}: {share}% of users at step {percent}%"
            );
            if let Some(prev) = &before[i] {
                for (k, (was, is)) in prev.iter().zip(&in_canary).enumerate() {
                    assert!(
                        !was || *is,
                        "{name}: {} left the canary at {percent}%",
                        users[k]
                    );
                }
            }
            before[i] = Some(in_canary);
        }
        for n in &names {
            assert_eq!(post(&px, "resume", n)["state"], "running");
        }
    }
    let all = wait_all(&px, 60, "every run promoted", |all| {
        names
            .iter()
            .all(|n| all[n]["state"].as_str().unwrap() != "running")
    });
    for n in &names {
        let r = &all[n];
        assert_eq!(r["state"], "promoted", "{n}: {r:#}");
        assert_eq!(r["percent"], 100.0);
        let ev = events(r);
        assert_eq!(
            ev.iter().filter(|e| *e == "advanced").count(),
            STEPS.len() - 1,
            "{n}: {ev:?}"
        );
        assert!(!ev.contains(&"rolled_back".to_string()), "{n}: {ev:?}");
    }
    let m = px.metrics();
    assert_eq!(failed_checks(&m), 0.0, "{m}");
    // Promoted: every user on the canary, so none left it.
    for name in &names {
        let (u, p) = (users.clone(), format!("/{name}/"));
        let got = parallel(300, 4, move |cl, k| served_by(cl, &p, &u[k]), px.addr);
        assert!(got.iter().all(|b| b == "canary"), "{name}: {got:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Error regressions

#[test]
fn two_percent_errors_against_half_a_percent_roll_back_with_the_default_gate() {
    let (s, c) = (backend("stable"), backend("canary"));
    s.set_error_rate(0.005);
    c.set_error_rate(0.02);
    let cfg = server()
        + &service(
            "api",
            &s,
            &c,
            "id = \"v2\"\nsteps = [25, 50]\nstep_secs = 30\ncheck_secs = 1\nmax_step_secs = 3600\nfailure_limit = 2\n",
            // SPEC's defaults.
            "max_error_increase = 0.005\nconfidence = 0.99\nmin_requests = 500\nlatency_quantile = 0.99\nmax_latency_ratio = 1.25\nlatency_slack_ms = 5\n",
        );
    let px = Cohort::start(&cfg);
    let started = Instant::now();
    let load = Load::start(&px, &["/api/"], 4, 200_000);
    let all = wait_all(&px, 90, "rollback", |all| all["api"]["state"] != "running");
    let (took, sent) = (started.elapsed(), load.sent());
    drop(load);
    let r = &all["api"];
    assert_eq!(r["state"], "rolled_back", "{r:#}");
    assert_eq!(r["step"], 0, "it never advanced: {r:#}");
    let e = &r["last_check"]["errors"];
    assert_eq!(e["result"], "fail", "{r:#}");
    assert!(e["lower"].as_f64().unwrap() > 0.005, "{r:#}");
    let (cn, ce, bn, be) = (
        e["canary"]["n"].as_u64().unwrap(),
        e["canary"]["e"].as_u64().unwrap(),
        e["baseline"]["n"].as_u64().unwrap(),
        e["baseline"]["e"].as_u64().unwrap(),
    );
    assert!(be > 0, "the baseline has errors too: {r:#}");
    let checks = rollouts(&px, true)["api"]["checks"]
        .as_array()
        .unwrap()
        .clone();
    let fails = checks.iter().filter(|k| k["result"] == "fail").count();
    assert!(fails >= 2, "{checks:#?}");
    // The operator's screen says what happened, with the numbers.
    let (code, status, err) = cohort_cmd(&["rollout", "status", "--admin", &px.admin.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        status.contains("api  rollout v2  rolled_back") && status.contains("errors fail: canary "),
        "{status}"
    );
    println!("$ cohort rollout status\n{status}");
    println!(
        "2% vs 0.5% errors, max_error_increase 0.005, confidence 0.99, step 25%: rolled back after {:.1} s, \
         {sent} requests sent; last window canary {ce}/{cn}, baseline {be}/{bn}; {} checks",
        took.as_secs_f64(),
        checks.len()
    );
}

// ---------------------------------------------------------------------------------------
// Latency regressions

#[test]
fn a_canary_50_ms_slower_at_p99_rolls_back_and_one_1_ms_slower_does_not() {
    let s = backend("stable");
    let (slow, close) = (backend("canary"), backend("canary"));
    slow.set_delay_ms(50);
    close.set_delay_ms(1);
    let rollout = |id: &str| {
        format!("id = \"{id}\"\nsteps = [50]\nstep_secs = 1\ncheck_secs = 1\nmax_step_secs = 3600\nfailure_limit = 2\n")
    };
    // p99 needs 2,000 requests a side; the slack absorbs a millisecond.
    let gates = "max_error_increase = 0.01\nconfidence = 0.99\nmin_requests = 500\nlatency_quantile = 0.99\nmax_latency_ratio = 1.25\nlatency_slack_ms = 10\n";
    let cfg = server()
        + &service("slow", &s, &slow, &rollout("plus-50ms"), gates)
        + &service("close", &s, &close, &rollout("plus-1ms"), gates);
    let px = Cohort::start(&cfg);
    let load = Load::start(&px, &["/slow/", "/close/"], 24, 60_000);
    let all = wait_all(&px, 120, "both decided", |all| {
        ["slow", "close"]
            .iter()
            .all(|n| all[*n]["state"] != "running")
    });
    drop(load);
    let slow = &all["slow"];
    assert_eq!(slow["state"], "rolled_back", "{slow:#}");
    let l = &slow["last_check"]["latency"];
    assert_eq!(l["result"], "fail", "{slow:#}");
    assert!(
        l["canary_s"].as_f64().unwrap() > l["limit_s"].as_f64().unwrap(),
        "{slow:#}"
    );
    let close = &all["close"];
    assert_eq!(close["state"], "promoted", "{close:#}");
    assert!(!events(close).contains(&"rolled_back".to_string()));
    let checks = rollouts(&px, true)["close"]["checks"]
        .as_array()
        .unwrap()
        .clone();
    let last = checks.last().unwrap();
    assert_eq!(last["latency"]["result"], "pass", "{last:#}");
    println!(
        "p99: +50 ms canary {:.1} ms vs limit {:.1} ms (fail); +1 ms canary {:.1} ms vs limit {:.1} ms (pass)",
        l["canary_s"].as_f64().unwrap() * 1e3,
        l["limit_s"].as_f64().unwrap() * 1e3,
        last["latency"]["canary_s"].as_f64().unwrap() * 1e3,
        last["latency"]["limit_s"].as_f64().unwrap() * 1e3,
    );
}

// ---------------------------------------------------------------------------------------
// Low traffic

#[test]
fn low_traffic_is_inconclusive_and_holds_until_max_step_secs_applies_on_inconclusive() {
    let (s, c) = (backend("stable"), backend("canary"));
    let gates = "max_error_increase = 0.01\nconfidence = 0.95\nmin_requests = 500\nlatency_quantile = 0.9\nmax_latency_ratio = 1.5\nlatency_slack_ms = 20\n";
    let mut cfg = server();
    for how in ["rollback", "advance", "hold"] {
        cfg += &service(
            how,
            &s,
            &c,
            &format!("id = \"low-{how}\"\nsteps = [20, 50]\nstep_secs = 1\ncheck_secs = 1\nmax_step_secs = 4\non_inconclusive = \"{how}\"\nfailure_limit = 1\n"),
            gates,
        );
    }
    let px = Cohort::start(&cfg);
    // A trickle: far below min_requests, with errors on the canary's side. Nothing can
    // be concluded, so nothing fails (failure_limit 1 would roll back on one failure).
    c.set_error_rate(0.1);
    let mut cl = px.client();
    for i in 0..40 {
        for how in ["rollback", "advance", "hold"] {
            cl.get(&format!("/{how}/"), &[("x-user-id", &format!("few-{i}"))]);
        }
    }
    let all = wait_all(&px, 60, "max_step_secs applied", |all| {
        all["rollback"]["state"] == "rolled_back"
            && all["advance"]["step"] == 1
            && events(&all["hold"]).contains(&"held".to_string())
    });
    let detail = rollouts(&px, true);
    for how in ["rollback", "advance", "hold"] {
        let r = &all[how];
        let history = r["history"].as_array().unwrap();
        let started = history[0]["at"].as_u64().unwrap();
        let applied = history
            .iter()
            .find(|e| e["event"] != "started")
            .unwrap_or_else(|| panic!("{how}: {r:#}"));
        let at = applied["at"].as_u64().unwrap();
        assert!(
            at - started >= 4,
            "{how} applied after {} s: {r:#}",
            at - started
        );
        let why = applied["why"].as_str().unwrap();
        assert!(
            why.contains("max_step_secs 4") && why.contains(&format!("on_inconclusive = {how}")),
            "{how}: {why}"
        );
        // Every check until then was inconclusive, at the first step: it held.
        let checks: Vec<&Value> = detail[how]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["at"].as_u64().unwrap() <= at)
            .collect();
        // One check a second was due; a loaded machine may run fewer, never none.
        assert!(!checks.is_empty(), "{how}: {checks:#?}");
        for k in &checks {
            assert_eq!(k["result"], "inconclusive", "{how}: {k:#}");
            assert_eq!(k["step"], 0, "{how}: {k:#}");
        }
    }
    assert_eq!(all["rollback"]["percent"], 0.0);
    assert_eq!(all["advance"]["percent"], 50.0);
    assert_eq!(all["advance"]["state"], "running");
    // Held: still at the first step, and it stays there (no rollback, no second event).
    let checks_then = detail["hold"]["checks"].as_array().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    let hold = loop {
        let d = rollouts(&px, true);
        if d["hold"]["checks"].as_array().unwrap().len() >= checks_then + 2 {
            break d["hold"].clone();
        }
        assert!(Instant::now() < deadline, "no more checks: {:#}", d["hold"]);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (
            hold["state"].as_str(),
            hold["step"].as_u64(),
            hold["percent"].as_f64()
        ),
        (Some("running"), Some(0), Some(20.0)),
        "{hold:#}"
    );
    assert_eq!(events(&hold), ["started", "held"], "{hold:#}");
    let m = px.metrics();
    assert_eq!(failed_checks(&m), 0.0, "{m}");
}

// ---------------------------------------------------------------------------------------
// A new id

#[test]
fn a_new_id_starts_over_at_the_first_step() {
    let (s, c) = (backend("stable"), backend("canary"));
    let gates = "max_error_increase = 0.05\nconfidence = 0.9\nmin_requests = 100\nlatency_quantile = 0.5\nmax_latency_ratio = 5\nlatency_slack_ms = 100\n";
    // step_secs 3: the test pauses at step 2 well before it could pass.
    let rollout = |id: &str| {
        format!("id = \"{id}\"\nsteps = [20, 50]\nstep_secs = 3\ncheck_secs = 1\nmax_step_secs = 3600\n")
    };
    let cfg = |id: &str| server() + &service("api", &s, &c, &rollout(id), gates);
    let px = Cohort::start(&cfg("v2"));
    let load = Load::start(&px, &["/api/"], 2, 50_000);
    wait_all(&px, 60, "step 2", |all| all["api"]["step"] == 1);
    post(&px, "pause", "api");
    drop(load);
    px.rewrite(&cfg("v3"));
    let (code, body) = px.post_reload();
    assert_eq!(code, 200, "{body}");
    let r = rollouts(&px, false)["api"].clone();
    assert_eq!(
        (
            r["id"].as_str(),
            r["state"].as_str(),
            r["step"].as_u64(),
            r["percent"].as_f64()
        ),
        (Some("v3"), Some("running"), Some(0), Some(20.0)),
        "{r:#}"
    );
    assert_eq!(events(&r), ["started"], "a new history: {r:#}");
    let why = r["history"][0]["why"].as_str().unwrap();
    assert!(
        why.contains("new id") && why.contains("\"v2\" was paused"),
        "{why}"
    );
    assert!(
        r["last_check"].is_null(),
        "no check of v2 carried over: {r:#}"
    );
    // Routing follows the first step again, and the state file holds the new rollout.
    let mut cl = px.client();
    for i in 0..200 {
        let u = format!("again-{i}");
        assert_eq!(
            cl.get("/api/", &[("x-user-id", &u)]).backend(),
            expected_variant("api", &[("stable", 80.0), ("canary", 20.0)], &u),
            "{u}"
        );
    }
    let file: Value =
        serde_json::from_slice(&std::fs::read(px.dir.path().join("rollout.json")).unwrap())
            .unwrap();
    assert_eq!(file["services"]["api"]["id"], "v3");
    assert_eq!(file["services"]["api"]["step"], 0);
}

// ---------------------------------------------------------------------------------------
// The report

/// A rollout that passes its first step, then fails on errors and rolls back; returns
/// the instance once it has.
fn rolled_back_rollout(s: &EchoBackend, c: &EchoBackend) -> Cohort {
    let gates = "max_error_increase = 0.02\nconfidence = 0.95\nmin_requests = 200\nlatency_quantile = 0.9\nmax_latency_ratio = 3\nlatency_slack_ms = 50\n";
    let cfg = server()
        + &service(
            "api",
            s,
            c,
            // step_secs 2: the canary turns bad well before step 2 could pass.
            "id = \"v2.4.0\"\nsteps = [20, 50]\nstep_secs = 2\ncheck_secs = 1\nmax_step_secs = 3600\nfailure_limit = 2\n",
            gates,
        );
    let px = Cohort::start(&cfg);
    let load = Load::start(&px, &["/api/"], 2, 100_000);
    wait_all(&px, 60, "step 2", |all| all["api"]["step"] == 1);
    c.set_error_rate(0.3);
    wait_all(&px, 60, "rollback", |all| {
        all["api"]["state"] == "rolled_back"
    });
    drop(load);
    px
}

/// `cohort rollout report` of `px` into `dir/name`; returns the page.
fn report(px: &Cohort, path: &std::path::Path) -> String {
    let admin = px.admin.to_string();
    let (code, out, err) = cohort_cmd(&[
        "rollout",
        "report",
        "--admin",
        &admin,
        "--out",
        path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("wrote") && err.contains("1 rollout(s)"),
        "{err}"
    );
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn the_report_draws_a_real_rollout_in_one_self_contained_page() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = rolled_back_rollout(&s, &c);
    let page = report(&px, &px.dir.path().join("report.html"));
    let r = rollouts(&px, true)["api"].clone();
    let checks = r["checks"].as_array().unwrap();
    assert!(checks.len() >= 3, "{r:#}");
    // Without ?checks=1 the answer stays small; the gates in force are in both.
    let plain = rollouts(&px, false)["api"].clone();
    assert!(plain.get("checks").is_none(), "{plain:#}");
    assert_eq!(plain["gates"], r["gates"]);
    assert_eq!(r["gates"]["max_error_increase"], 0.02, "{r:#}");
    assert_eq!(r["last_check"], *checks.last().unwrap());
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(
        page.contains("rollout v2.4.0") && page.contains("rolled back"),
        "{page}"
    );
    // Four charts; every check is a row and a mark.
    assert_eq!(page.matches("<svg class=\"chart\"").count(), 4);
    assert_eq!(
        page.matches("<tr><td>").count(),
        checks.len() + r["history"].as_array().unwrap().len()
    );
    // The last check's numbers are in the page, with its verdicts.
    let last = &r["last_check"];
    let (cn, ce) = (
        last["errors"]["canary"]["n"].as_u64().unwrap(),
        last["errors"]["canary"]["e"].as_u64().unwrap(),
    );
    let rate = format!("{ce}/{cn} = {:.3}%", 100.0 * ce as f64 / cn as f64);
    assert!(page.contains(&rate), "{rate} not in the page");
    let diff = format!(
        "[{:+.3}%, {:+.3}%]",
        last["errors"]["lower"].as_f64().unwrap() * 100.0,
        last["errors"]["upper"].as_f64().unwrap() * 100.0
    );
    assert!(page.contains(&diff), "{diff} not in the page");
    assert!(
        page.contains("<td class=\"fail\">fail</td>")
            && page.contains("<td class=\"pass\">pass</td>")
    );
    assert!(
        page.contains("<circle class=\"fail\""),
        "failed checks are marked"
    );
    assert!(
        page.contains(r#"<polyline class="canary""#)
            && page.contains(r#"<polygon class="baseline""#)
    );
    assert!(page.contains("max_error_increase +2.000%"));
    // Nothing is fetched: no URL, no script, no stylesheet or image reference.
    for banned in [
        "http://", "https://", "<script", "<link", "<img", "<iframe", "@import", "src=", "href=",
    ] {
        assert!(!page.contains(banned), "{banned:?} in the page");
    }
    // --service filters; a dead admin is exit 1.
    let admin = px.admin.to_string();
    let (code, out, _) = cohort_cmd(&["rollout", "report", "--admin", &admin, "--service", "nope"]);
    assert_eq!(code, 0);
    assert!(out.contains("No rollout"), "{out}");
    let dead = closed_addr().to_string();
    let (code, _, err) = cohort_cmd(&["rollout", "report", "--admin", &dead]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    let (code, _, err) = cohort_cmd(&["rollout", "status", "--admin", &admin, "--out", "x.html"]);
    assert_eq!(code, 2, "{err}");
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium with `args` on `page` (at most 90 s); returns stdout.
fn chromium(args: &[&str], page: &std::path::Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_report_renders_in_headless_chromium() {
    if !std::path::Path::new(CHROMIUM).exists() {
        println!("SKIPPED: {CHROMIUM} is not installed (scripts/install-deps.sh installs Debian's chromium)");
        return;
    }
    let (s, c) = (backend("stable"), backend("canary"));
    let px = rolled_back_rollout(&s, &c);
    let path = px.dir.path().join("report.html");
    let page = report(&px, &path);
    let dom = chromium(&["--dump-dom"], &path);
    // Chromium parsed the page into the same charts and marks.
    assert_eq!(dom.matches("<svg class=\"chart\"").count(), 4, "{dom}");
    for mark in ["<polyline", "<polygon", "<circle", "<clippath", "<table"] {
        let want = page.to_lowercase().matches(mark).count();
        assert!(want > 0, "{mark}");
        assert_eq!(dom.to_lowercase().matches(mark).count(), want, "{mark}");
    }
    assert!(dom.contains("rolled back"));
    let png = px.dir.path().join("report.png");
    chromium(
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1100,2000",
        ],
        &path,
    );
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 20_000, "{} bytes: a blank page?", bytes.len());
    if let Ok(keep) = std::env::var("COHORT_REPORT_PNG") {
        std::fs::copy(&png, keep).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// The walkthroughs of docs/rollout.md: SPEC's defaults (steps 1, 5, 25, 50; every gate
// at its default) with step_secs 5 and check_secs 1, under as much hashed traffic as
// four client threads send. Ignored by default (a minute or two each, about 300,000
// requests); run with
// `cargo test --test rollout_analysis -- --ignored --nocapture --test-threads 1`.

/// The walkthrough's service: stable at weight 100, the canary at 0, the rollout on top.
fn walkthrough(stable: &EchoBackend, canary: &EchoBackend) -> String {
    format!(
        r#"{}
[[service]]
name = "api"
key = ["header:x-user-id", "cookie:session"]

[[service.variant]]
name = "stable"
weight = 100
backends = ["{}"]

[[service.variant]]
name = "canary"
weight = 0
backends = ["{}"]

[service.rollout]
id = "v2.4.0"
canary = "canary"
baseline = "stable"
steps = [1, 5, 25, 50]
step_secs = 5
check_secs = 1
max_step_secs = 600
"#,
        server(),
        stable.addr,
        canary.addr
    )
}

fn status_screen(px: &Cohort) -> String {
    let (code, out, err) = cohort_cmd(&["rollout", "status", "--admin", &px.admin.to_string()]);
    assert_eq!(code, 0, "{err}");
    out
}

fn print_history(r: &Value) {
    for e in r["history"].as_array().unwrap() {
        println!(
            "{} {}% {}",
            e["event"],
            e["percent"],
            e["why"].as_str().unwrap()
        );
    }
}

#[test]
#[ignore]
fn walkthrough_a_release_from_1_to_100_percent() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&walkthrough(&s, &c));
    println!("== at start\n{}", status_screen(&px));
    let started = Instant::now();
    let load = Load::start(&px, &["/"], 4, 2_000_000);
    wait_all(&px, 400, "step 2", |all| all["api"]["step"] == 1);
    std::thread::sleep(Duration::from_secs(3));
    println!("== at step 2\n{}", status_screen(&px));
    let all = wait_all(&px, 400, "promotion", |all| {
        all["api"]["state"] != "running"
    });
    let sent = load.sent();
    drop(load);
    assert_eq!(all["api"]["state"], "promoted", "{:#}", all["api"]);
    println!(
        "== promoted after {:.0} s and {sent} requests\n{}",
        started.elapsed().as_secs_f64(),
        status_screen(&px)
    );
    print_history(&all["api"]);
}

#[test]
#[ignore]
fn walkthrough_a_release_that_rolls_back() {
    let (s, c) = (backend("stable"), backend("canary"));
    s.set_error_rate(0.005);
    c.set_error_rate(0.02);
    let px = Cohort::start(&walkthrough(&s, &c));
    let started = Instant::now();
    let load = Load::start(&px, &["/"], 4, 2_000_000);
    let all = wait_all(&px, 400, "rollback", |all| all["api"]["state"] != "running");
    let sent = load.sent();
    drop(load);
    assert_eq!(all["api"]["state"], "rolled_back", "{:#}", all["api"]);
    println!(
        "== rolled back after {:.1} s and {sent} requests\n{}",
        started.elapsed().as_secs_f64(),
        status_screen(&px)
    );
    print_history(&all["api"]);
}
