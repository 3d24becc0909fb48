#![allow(clippy::unwrap_used)]
//! End-to-end progressive rollouts on one instance (SPEC "Progressive rollout with
//! automated analysis"): the real binary, real backends on 127.0.0.1 whose error rate can
//! be set, second-scale steps. Every wait is a bounded poll; nothing asserts on timing.

mod common;
use common::*;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `[service.rollout]` with `rollout` lines added (they may override the defaults here).
fn config(stable: &EchoBackend, canary: &EchoBackend, rollout: &str) -> String {
    format!(
        r#"
[server]
listen = ["@LISTEN@"]
admin = "@ADMIN@"
threads = 2
rollout_state = "@DIR@/rollout.json"

[[service]]
name = "api"
key = ["header:x-user-id"]
force_header = "x-force"
force_from = ["127.0.0.0/8"]

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
id = "v2"
canary = "canary"
baseline = "stable"
{rollout}
[service.rollout.gates]
max_error_increase = 0.05
confidence = 0.9
min_requests = 100
latency_quantile = 0.5
max_latency_ratio = 5
latency_slack_ms = 100
"#,
        s = stable.addr,
        c = canary.addr,
    )
}

const FAST: &str =
    "steps = [20, 50]\nstep_secs = 1\ncheck_secs = 1\nmax_step_secs = 3600\nfailure_limit = 2\n";

/// [`FAST`] with 3-second steps, for a test that pauses the rollout once it sees a step:
/// the step must not end (on the last one: promoted, and `pause` refused) between the
/// poll that saw it and the pause, on a loaded machine.
fn pausable() -> String {
    FAST.replace("step_secs = 1", "step_secs = 3")
}

/// Hashed traffic from many users until dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(px: &Cohort) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|t| {
                let (stop, addr) = (stop.clone(), px.addr);
                std::thread::spawn(move || {
                    let mut cl = Client::new(addr);
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let user = format!("bg-{t}-{}", i % 5000);
                        let _ = cl.try_request("GET", "/", &[("x-user-id", &user)], b"");
                        i += 1;
                    }
                })
            })
            .collect();
        Traffic { stop, threads }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn rollout(px: &Cohort) -> Value {
    let r = px.admin_client().get("/rollout", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["services"][0].clone()
}

fn post(px: &Cohort, action: &str) -> (u16, Value) {
    let r = px
        .admin_client()
        .request("POST", &format!("/rollout/{action}?service=api"), &[], b"");
    (r.status, r.json())
}

/// Polls the rollout until `done` holds (at most 60 s).
fn wait_for(px: &Cohort, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = rollout(px);
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {what}: {r:#}\n{}",
            px.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(px: &Cohort, prefix: &str) -> f64 {
    px.metrics()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `/metrics` until the series `prefix` reaches `want` (a request's metrics may be
/// recorded just after its response is sent); returns its last value (at most 20 s).
fn metric_reaches(px: &Cohort, prefix: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = metric(px, prefix);
        if v >= want || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which variant each of `users` gets now.
fn variants(px: &Cohort, users: &[String]) -> Vec<String> {
    let mut cl = px.client();
    users
        .iter()
        .map(|u| cl.get("/", &[("x-user-id", u)]).backend())
        .collect()
}

#[test]
fn a_healthy_canary_walks_every_step_to_promoted_and_no_user_leaves_it() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(&s, &c, &pausable()));
    let users: Vec<String> = (0..400).map(|i| format!("probe-{i}")).collect();
    let traffic = Traffic::start(&px);
    let mut before: Option<Vec<String>> = None;
    for (step, percent) in [(0, 20.0), (1, 50.0)] {
        wait_for(&px, &format!("step {step}"), |r| r["step"] == step);
        assert_eq!(post(&px, "pause").0, 200);
        let r = rollout(&px);
        assert_eq!(r["percent"], percent, "{r:#}");
        let now = variants(&px, &users);
        for (u, v) in users.iter().zip(&now) {
            let want = expected_variant(
                "api",
                &[("stable", 100.0 - percent), ("canary", percent)],
                u,
            );
            assert_eq!(*v, want, "{u} at {percent}%");
        }
        let share = now.iter().filter(|v| *v == "canary").count() as f64 / users.len() as f64;
        assert!(
            (share * 100.0 - percent).abs() < 10.0,
            "canary share {share} at {percent}%"
        );
        if let Some(b) = &before {
            for ((u, was), is) in users.iter().zip(b).zip(&now) {
                assert!(was != "canary" || is == "canary", "{u} left the canary");
            }
        }
        before = Some(now);
        assert_eq!(post(&px, "resume").0, 200);
    }
    let r = wait_for(&px, "promotion", |r| r["state"] == "promoted");
    drop(traffic);
    assert_eq!(r["percent"], 100.0);
    assert!(variants(&px, &users).iter().all(|v| v == "canary"));
    let events: Vec<&str> = r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        events.contains(&"advanced") && events.contains(&"promoted"),
        "{events:?}"
    );
    assert_eq!(
        metric(&px, "cohort_rollout_percent{service=\"api\"}"),
        100.0
    );
    assert_eq!(
        metric(
            &px,
            "cohort_rollout_state{service=\"api\",state=\"promoted\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &px,
            "cohort_rollout_checks_total{result=\"pass\",service=\"api\"}"
        ) >= 2.0
    );
    // Final: an action is a conflict.
    let (code, body) = post(&px, "abort");
    assert_eq!(code, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("promoted"));
}

#[test]
fn a_canary_with_errors_rolls_back_and_rules_are_suspended_but_force_still_works() {
    let (s, c) = (backend("stable"), backend("canary"));
    c.set_error_rate(0.5);
    let px = Cohort::start(&config(&s, &c, FAST));
    let traffic = Traffic::start(&px);
    let r = wait_for(&px, "rollback", |r| r["state"] == "rolled_back");
    drop(traffic);
    assert_eq!(r["percent"], 0.0, "{r:#}");
    assert_eq!(r["last_check"]["errors"]["result"], "fail", "{r:#}");
    let why = r["history"].as_array().unwrap().last().unwrap()["why"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("failed check"), "{why}");
    let mut cl = px.client();
    let pinned = cl.get("/", &[("x-staff", "1"), ("x-user-id", "u1")]);
    assert_eq!(pinned.backend(), "stable");
    assert_eq!(
        pinned.upstream_header("x-cohort-reason").as_deref(),
        Some("rollback")
    );
    let forced = cl.get("/", &[("x-force", "canary")]);
    assert_eq!(forced.backend(), "canary");
    let users: Vec<String> = (0..200).map(|i| format!("u-{i}")).collect();
    assert!(variants(&px, &users).iter().all(|v| v == "stable"));
    assert!(px.stderr().contains("rolled_back"));
}

#[test]
fn low_traffic_holds_without_a_false_rollback() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(
        &s,
        &c,
        &FAST.replace("failure_limit = 2", "failure_limit = 1"),
    ));
    let mut cl = px.client();
    for i in 0..30 {
        cl.get("/", &[("x-user-id", &format!("few-{i}"))]);
    }
    let inconclusive = "cohort_rollout_checks_total{result=\"inconclusive\",service=\"api\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&px, inconclusive) < 3.0 {
        assert!(Instant::now() < deadline, "{}", px.metrics());
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = rollout(&px);
    assert_eq!(r["state"], "running", "{r:#}");
    assert_eq!(r["step"], 0);
    assert_eq!(r["last_check"]["result"], "inconclusive");
    assert_eq!(
        metric(
            &px,
            "cohort_rollout_checks_total{result=\"fail\",service=\"api\"}"
        ),
        0.0
    );
    // The CLI's screen carries the last check's numbers.
    let admin = px.admin.to_string();
    let (code, out, err) = cohort_cmd(&["rollout", "status", "--admin", &admin]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(": inconclusive") && out.contains("errors inconclusive: canary "),
        "{out}"
    );
}

#[test]
fn operator_actions_pause_resume_promote_abort_with_conflicts() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(&s, &c, FAST));
    let (code, body) = post(&px, "pause");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["state"], "paused");
    assert_eq!(post(&px, "resume").1["state"], "running");
    assert_eq!(post(&px, "bogus").0, 404);
    let r = px
        .admin_client()
        .request("POST", "/rollout/pause?service=nope", &[], b"");
    assert_eq!(r.status, 404);
    let (code, body) = post(&px, "promote");
    assert_eq!(code, 200);
    assert_eq!(body["state"], "promoted");
    assert_eq!(body["percent"], 100.0);
    let (code, body) = post(&px, "abort");
    assert_eq!(code, 409, "{body}");

    // A new id starts again; abort rolls back now.
    px.rewrite(&config(&s, &c, FAST).replace("id = \"v2\"", "id = \"v3\""));
    let (code, _) = px.post_reload();
    assert_eq!(code, 200);
    let r = rollout(&px);
    assert_eq!(
        (r["id"].as_str(), r["state"].as_str()),
        (Some("v3"), Some("running"))
    );
    let (code, body) = post(&px, "abort");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["state"], "rolled_back");
    assert_eq!(
        px.client().get("/", &[("x-staff", "1")]).backend(),
        "stable"
    );
}

#[test]
fn kill_9_and_restart_resumes_the_same_step() {
    let (s, c) = (backend("stable"), backend("canary"));
    let cfg = config(&s, &c, &pausable());
    let mut px = Cohort::start(&cfg);
    let traffic = Traffic::start(&px);
    wait_for(&px, "step 1", |r| r["step"] == 1);
    assert_eq!(post(&px, "pause").0, 200);
    drop(traffic);
    let before = rollout(&px);
    px.signal("KILL");
    px.wait_exit(Duration::from_secs(10));
    px.child = spawn_run(&px.config_path, px.dir.path(), &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(px.admin).is_err()
        || std::net::TcpStream::connect(px.addr).is_err()
    {
        assert!(Instant::now() < deadline, "{}", px.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = rollout(&px);
    for k in ["id", "state", "step", "percent", "step_started_at"] {
        assert_eq!(after[k], before[k], "{k}: {after:#}");
    }
    let users: Vec<String> = (0..100).map(|i| format!("r-{i}")).collect();
    for (u, v) in users.iter().zip(variants(&px, &users)) {
        assert_eq!(
            v,
            expected_variant("api", &[("stable", 50.0), ("canary", 50.0)], u)
        );
    }
}

#[test]
fn rule_pinned_staff_with_errors_do_not_count_in_the_analysis() {
    let (s, c) = (backend("stable"), backend("canary"));
    c.set_error_rate(1.0);
    let px = Cohort::start(&config(&s, &c, FAST));
    let mut cl = px.client();
    for _ in 0..50 {
        assert_eq!(cl.get("/", &[("x-staff", "1")]).status, 500);
    }
    let errors =
        "cohort_analysis_requests_total{outcome=\"error\",service=\"api\",variant=\"canary\"}";
    let pinned_500 = "cohort_requests_total{code=\"500\",service=\"api\",variant=\"canary\"}";
    // Once all 50 are recorded, none of them is in the analysis.
    assert_eq!(metric_reaches(&px, pinned_500, 50.0), 50.0);
    let m = px.metrics();
    assert!(m.contains(errors), "{m}");
    assert_eq!(metric(&px, errors), 0.0);
    // Hashed users are counted, errors included.
    let mut errs = 0;
    for i in 0..200 {
        let r = cl.get("/", &[("x-user-id", &format!("h-{i}"))]);
        if r.backend() == "canary" {
            errs += 1;
        }
    }
    assert!(errs > 0);
    assert_eq!(metric_reaches(&px, errors, errs as f64), errs as f64);
    assert!(
        metric(
            &px,
            "cohort_analysis_duration_seconds_count{service=\"api\",variant=\"canary\"}"
        ) >= errs as f64
    );
}

#[test]
fn the_cli_shows_the_status_and_acts() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(&s, &c, FAST));
    let admin = px.admin.to_string();
    let (code, out, err) = cohort_cmd(&["rollout", "status", "--admin", &admin]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("api  rollout v2  running  step 1"), "{out}");
    assert!(out.contains("canary 20% / baseline stable 80%"), "{out}");
    let (code, out, err) = cohort_cmd(&["rollout", "pause", "--admin", &admin, "--service", "api"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("paused"), "{out}");
    assert_eq!(rollout(&px)["state"], "paused");
    let (code, _, err) = cohort_cmd(&["rollout", "abort", "--admin", &admin]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cohort_cmd(&["rollout", "promote", "--admin", &admin]);
    assert_eq!(code, 1);
    assert!(err.contains("409") && err.contains("rolled_back"), "{err}");
    let (code, out, _) = cohort_cmd(&["rollout", "status", "--admin", &admin]);
    assert_eq!(code, 0);
    assert!(out.contains("rolled_back"), "{out}");
}

#[test]
fn every_transition_is_posted_to_the_webhook_with_a_text() {
    use std::io::{BufRead, BufReader, Read, Write};
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", hook.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for stream in hook.incoming().flatten() {
            let mut r = BufReader::new(stream);
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if let Ok(v) = serde_json::from_slice(&body) {
                let _ = tx.send(v);
            }
        }
    });
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(&s, &c, &format!("{FAST}webhook = \"{url}\"\n")));
    let started = rx.recv_timeout(Duration::from_secs(30)).expect("started");
    assert_eq!(started["event"], "started", "{started}");
    // Each operator action is a transition, posted in order with its text.
    for (action, event) in [("pause", "paused"), ("resume", "resumed")] {
        assert_eq!(post(&px, action).0, 200);
        let v = rx.recv_timeout(Duration::from_secs(30)).expect(event);
        assert_eq!(v["event"], event, "{v}");
        assert_eq!(v["service"], "api");
        assert!(!v["text"].as_str().unwrap().is_empty(), "{v}");
    }
    assert_eq!(post(&px, "abort").0, 200);
    let aborted = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("rolled_back");
    assert_eq!(aborted["event"], "rolled_back", "{aborted}");
    assert_eq!(aborted["service"], "api");
    let text = aborted["text"].as_str().unwrap();
    assert!(
        text.contains("api") && text.contains("rolled back"),
        "{text}"
    );
}

#[test]
fn a_failing_webhook_is_logged_and_the_rollout_goes_on() {
    let (s, c) = (backend("stable"), backend("canary"));
    let dead = closed_addr();
    let px = Cohort::start(&config(
        &s,
        &c,
        &format!("{FAST}webhook = \"http://{dead}/hook\"\n"),
    ));
    assert_eq!(post(&px, "pause").0, 200);
    assert_eq!(post(&px, "promote").1["state"], "promoted");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !px.stderr().contains("rollout webhook") {
        assert!(Instant::now() < deadline, "{}", px.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_reload_with_the_same_id_and_other_steps_keeps_the_share() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(&s, &c, FAST));
    assert_eq!(post(&px, "pause").0, 200);
    let before = rollout(&px);
    px.rewrite(&config(&s, &c, &FAST.replace("[20, 50]", "[10, 20, 30]")));
    assert_eq!(px.post_reload().0, 200);
    let after = rollout(&px);
    assert_eq!(after["percent"], 20.0, "{after:#}");
    // `/status` shows the shares hashing uses now, beside the configured weights.
    let st = px.status();
    let v = &st["services"][0]["variants"];
    assert_eq!(
        (v[0]["weight"].as_f64(), v[0]["share"].as_f64()),
        (Some(50.0), Some(80.0)),
        "{st:#}"
    );
    assert_eq!(v[1]["share"], 20.0);
    assert_eq!(after["step"], 1, "{after:#}");
    assert_eq!(after["state"], "paused");
    assert_eq!(after["step_started_at"], before["step_started_at"]);
    let last = after["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "reconfigured", "{last}");
    let users: Vec<String> = (0..100).map(|i| format!("s-{i}")).collect();
    for (u, v) in users.iter().zip(variants(&px, &users)) {
        assert_eq!(
            v,
            expected_variant("api", &[("stable", 80.0), ("canary", 20.0)], u)
        );
    }
}

#[test]
fn a_slow_canary_rolls_back_on_latency() {
    let (s, c) = (backend("stable"), backend("canary"));
    c.set_delay_ms(300);
    let px = Cohort::start(&config(&s, &c, FAST));
    let traffic = Traffic::start(&px);
    let more = Traffic::start(&px);
    let r = wait_for(&px, "rollback", |r| r["state"] == "rolled_back");
    drop((traffic, more));
    assert_eq!(r["last_check"]["latency"]["result"], "fail", "{r:#}");
    assert_eq!(r["last_check"]["errors"]["result"], "pass", "{r:#}");
}

#[test]
fn a_canary_without_a_healthy_backend_rolls_back_on_availability() {
    let (s, c) = (backend("stable"), backend("canary"));
    c.set_healthy(false);
    let hc = "health_check = { path = \"/healthz\", interval_ms = 200, timeout_ms = 150, unhealthy_after = 1, healthy_after = 1 }";
    let cfg = config(&s, &c, FAST).replace(
        &format!("backends = [\"{}\"]", c.addr),
        &format!("backends = [\"{}\"]\n{hc}", c.addr),
    );
    let px = Cohort::start(&cfg);
    let r = wait_for(&px, "rollback", |r| r["state"] == "rolled_back");
    assert_eq!(r["last_check"]["availability"]["result"], "fail", "{r:#}");
}

#[test]
fn five_percent_errors_against_none_roll_back_with_a_tight_gate() {
    let (s, c) = (backend("stable"), backend("canary"));
    c.set_error_rate(0.05);
    let cfg =
        config(&s, &c, FAST).replace("max_error_increase = 0.05", "max_error_increase = 0.005");
    let px = Cohort::start(&cfg);
    let traffic = Traffic::start(&px);
    let r = wait_for(&px, "rollback", |r| r["state"] == "rolled_back");
    drop(traffic);
    let e = &r["last_check"]["errors"];
    assert_eq!(e["result"], "fail", "{r:#}");
    assert!(e["lower"].as_f64().unwrap() > 0.005, "{r:#}");
    assert_eq!(e["baseline"]["e"], 0, "{r:#}");
}

#[test]
fn failed_checks_while_paused_still_roll_back() {
    let (s, c) = (backend("stable"), backend("canary"));
    let px = Cohort::start(&config(&s, &c, FAST));
    assert_eq!(post(&px, "pause").0, 200);
    c.set_error_rate(0.5);
    let traffic = Traffic::start(&px);
    let r = wait_for(&px, "rollback", |r| r["state"] == "rolled_back");
    drop(traffic);
    assert_eq!(r["step"], 0, "{r:#}");
    assert_eq!(r["last_check"]["errors"]["result"], "fail", "{r:#}");
}
