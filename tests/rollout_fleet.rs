#![allow(clippy::unwrap_used)]
//! Progressive rollouts across a fleet (SPEC "Progressive rollout", **Fleet**;
//! `docs/rollout.md` "Fleet"): three real instances fed by one `--config-url` source,
//! instance 0 the decider (`[server.fleet] decider` is its admin address), real backends
//! on 127.0.0.1, second-scale steps. They serve the same steps, roll back together,
//! judge their summed traffic, and a `kill -9` of the decider neither loses nor repeats
//! a step. Only the decider writes a state file. Every wait is a bounded poll.

mod common;
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The fleet's one config; `listen`/`admin` are given per instance on the command line.
fn config(
    stable: &EchoBackend,
    canary: &EchoBackend,
    decider: SocketAddr,
    rollout: &str,
) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:1"]
admin = "127.0.0.1:2"
threads = 2

[server.fleet]
decider = "{decider}"

[[service]]
name = "api"
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

/// Three instances on one config source; `nodes[0]` is the decider. Each instance's
/// state file is the default one, `/tmp/cohort-<listen port>.rollout.json`; the
/// followers' hold a stale state (the same rollout, rolled back) before they start.
struct Fleet {
    nodes: Vec<Cohort>,
    files: Vec<PathBuf>,
    stale: Vec<u8>,
    _src: ConfigServer,
}

impl Fleet {
    fn start(config: impl Fn(SocketAddr) -> String) -> Fleet {
        let ports: Vec<(SocketAddr, SocketAddr)> = (0..3)
            .map(|_| {
                let at = |p| SocketAddr::from(([127, 0, 0, 1], p));
                (at(free_port()), at(free_port()))
            })
            .collect();
        let text = config(ports[0].1);
        let src = ConfigServer::start(&text);
        let files: Vec<PathBuf> = ports
            .iter()
            .map(|(a, _)| PathBuf::from(format!("/tmp/cohort-{}.rollout.json", a.port())))
            .collect();
        let stale = stale_state(&text);
        let _ = std::fs::remove_file(&files[0]);
        for f in &files {
            let _ = std::fs::remove_file(copy_of(f));
        }
        for f in &files[1..] {
            std::fs::write(f, &stale).unwrap();
        }
        let nodes = ports
            .iter()
            .map(|(addr, admin)| Cohort::start_url(&src.url(), *addr, *admin, &[]))
            .collect();
        Fleet {
            nodes,
            files,
            stale,
            _src: src,
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- instance {i}:\n{}", n.stderr()))
            .collect()
    }

    /// The followers' state files are untouched; the decider's holds the rollout.
    fn assert_only_the_decider_writes_state(&self) {
        for f in &self.files[1..] {
            assert_eq!(std::fs::read(f).unwrap(), self.stale, "{f:?} changed");
        }
        let written: Value =
            serde_json::from_slice(&std::fs::read(&self.files[0]).unwrap()).unwrap();
        assert_eq!(written["services"]["api"]["id"], "v2", "{written}");
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
            let _ = std::fs::remove_file(copy_of(f));
        }
    }
}

/// Where a follower keeps its copy of the decider's states (beside its state file).
fn copy_of(state_file: &std::path::Path) -> PathBuf {
    PathBuf::from(format!("{}.fleet-copy", state_file.display()))
}

/// A valid state file for `config`'s rollout, rolled back: what a follower must not
/// resume from.
fn stale_state(config: &str) -> Vec<u8> {
    let cfg = cohort::config::Config::parse(config).unwrap().services[0]
        .rollout
        .clone()
        .unwrap();
    let e = cohort::rollout::Engine::new(cfg);
    let started = e.resume(None, 1, &Default::default()).state;
    let aborted = e
        .act(&started, cohort::rollout::Action::Abort, 2)
        .unwrap()
        .state;
    let file = cohort::rollout::store::StateFile::new([("api".to_string(), aborted)].into());
    serde_json::to_vec(&file).unwrap()
}

/// `GET /rollout` of an instance.
fn get(node: &Cohort) -> Value {
    let r = node.admin_client().get("/rollout", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn post(node: &Cohort, action: &str) -> (u16, Value) {
    let r =
        node.admin_client()
            .request("POST", &format!("/rollout/{action}?service=api"), &[], b"");
    (r.status, r.json())
}

/// What every instance must agree on at once: the step and its history (`last_check`
/// differs for up to one poll interval after each check).
fn step_of(r: &Value) -> Value {
    let s = &r["services"][0];
    let mut v = serde_json::Map::new();
    for k in [
        "id",
        "state",
        "step",
        "percent",
        "step_started_at",
        "canary",
        "baseline",
        "history",
    ] {
        v.insert(k.to_string(), s[k].clone());
    }
    Value::Object(v)
}

/// Waits until every instance serves the step `done` accepts, the same on all; returns
/// it.
fn all_agree(fleet: &Fleet, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_until(
        60,
        what,
        || {
            let steps: Vec<Value> = fleet.nodes.iter().map(|n| step_of(&get(n))).collect();
            (done(&steps[0]) && steps.iter().all(|s| *s == steps[0])).then(|| steps[0].clone())
        },
        || {
            let all: Vec<Value> = fleet.nodes.iter().map(|n| step_of(&get(n))).collect();
            format!("{all:#?}\n{}", fleet.logs())
        },
    )
}

/// Which variant each of `users` gets from `node`.
fn variants(node: &Cohort, users: &[String]) -> Vec<String> {
    let mut cl = node.client();
    users
        .iter()
        .map(|u| cl.get("/", &[("x-user-id", u)]).backend())
        .collect()
}

/// A series of `/metrics` (0 when absent).
fn metric(node: &Cohort, series: &str) -> u64 {
    node.metrics()
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn analysis(node: &Cohort, variant: &str) -> u64 {
    ["error", "ok"]
        .iter()
        .map(|o| {
            metric(
                node,
                &format!("cohort_analysis_requests_total{{outcome=\"{o}\",service=\"api\",variant=\"{variant}\"}}"),
            )
        })
        .sum()
}

#[test]
fn three_instances_serve_the_same_steps_and_only_the_decider_writes_state() {
    let (s, c) = (backend("stable"), backend("canary"));
    // Steps of 3 s: the decider is paused within its step, before it can move on. The
    // followers' copy lags by up to a poll, so waiting for all three first could see
    // the last step end (promoted, and `pause` refused) on a loaded machine.
    let fleet =
        Fleet::start(|d| config(&s, &c, d, &FAST.replace("step_secs = 1", "step_secs = 3")));
    let decider = fleet.nodes[0].admin.to_string();
    let traffic = UserTraffic::start("bg", &fleet.addrs(), 1, 5000);
    let users: Vec<String> = (0..300).map(|i| format!("probe-{i}")).collect();
    let mut before: Option<Vec<String>> = None;
    for (step, percent) in [(0, 20.0), (1, 50.0)] {
        wait_until(
            60,
            &format!("the decider at step {step}"),
            || {
                let r = step_of(&get(&fleet.nodes[0]));
                (r["step"] == step && r["state"] == "running").then_some(())
            },
            || format!("{:#}\n{}", get(&fleet.nodes[0]), fleet.logs()),
        );
        let (code, body) = post(&fleet.nodes[0], "pause");
        assert_eq!(code, 200, "{body}");
        let r = all_agree(&fleet, "paused", |r| r["state"] == "paused");
        assert_eq!(r["percent"], percent, "{r:#}");
        let want: Vec<String> = users
            .iter()
            .map(|u| {
                expected_variant(
                    "api",
                    &[("stable", 100.0 - percent), ("canary", percent)],
                    u,
                )
            })
            .collect();
        for (i, node) in fleet.nodes.iter().enumerate() {
            assert_eq!(variants(node, &users), want, "instance {i} at {percent}%");
        }
        let share = want.iter().filter(|v| *v == "canary").count() as f64 / users.len() as f64;
        assert!(
            (share * 100.0 - percent).abs() < 10.0,
            "{share} at {percent}%"
        );
        if let Some(b) = &before {
            for ((u, was), is) in users.iter().zip(b).zip(&want) {
                assert!(was != "canary" || is == "canary", "{u} left the canary");
            }
        }
        before = Some(want);
        // Only the decider takes actions; a follower says where to send them.
        let (code, body) = post(&fleet.nodes[1], "resume");
        assert_eq!(code, 409, "{body}");
        assert!(body["error"].as_str().unwrap().contains(&decider), "{body}");
        assert_eq!(post(&fleet.nodes[0], "resume").0, 200);
    }
    all_agree(&fleet, "promotion", |r| r["state"] == "promoted");
    drop(traffic);
    // Final: no more checks, so the whole answers are equal, the last check included.
    let answers: Vec<Value> = fleet
        .nodes
        .iter()
        .map(|n| get(n)["services"].clone())
        .collect();
    assert_eq!(answers[1], answers[0]);
    assert_eq!(answers[2], answers[0]);
    assert!(fleet
        .nodes
        .iter()
        .all(|n| variants(n, &users).iter().all(|v| v == "canary")));

    let d = get(&fleet.nodes[0])["fleet"].clone();
    assert_eq!(d["role"], "decider", "{d}");
    let mut reporting: Vec<&str> = d["followers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["instance"].as_str().unwrap())
        .collect();
    reporting.sort();
    let mut followers = [
        fleet.nodes[1].admin.to_string(),
        fleet.nodes[2].admin.to_string(),
    ];
    followers.sort();
    assert_eq!(reporting, followers);
    for n in &fleet.nodes[1..] {
        let f = get(n)["fleet"].clone();
        assert_eq!(
            (f["role"].as_str(), f["decider"].as_str(), &f["error"]),
            (Some("follower"), Some(decider.as_str()), &Value::Null),
            "{f}"
        );
        // Followers run no check: the counter stays at 0.
        assert_eq!(
            metric(
                n,
                "cohort_rollout_checks_total{result=\"pass\",service=\"api\"}"
            ),
            0
        );
        assert_eq!(metric(n, "cohort_rollout_percent{service=\"api\"}"), 100);
        let (code, out, err) = cohort_cmd(&["rollout", "status", "--admin", &n.admin.to_string()]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.starts_with(&format!("fleet: follower of {decider}, last synced at ")),
            "{out}"
        );
        assert!(out.contains("api  rollout v2  promoted"), "{out}");
    }
    fleet.assert_only_the_decider_writes_state();
}

#[test]
fn the_fleet_rolls_back_together_when_the_canary_errs() {
    let (s, c) = (backend("stable"), backend("canary"));
    c.set_error_rate(0.5);
    let fleet = Fleet::start(|d| config(&s, &c, d, FAST));
    let traffic = UserTraffic::start("err", &fleet.addrs(), 1, 5000);
    let r = all_agree(&fleet, "rollback", |r| r["state"] == "rolled_back");
    drop(traffic);
    assert_eq!(r["percent"], 0.0, "{r:#}");
    let answers: Vec<Value> = fleet
        .nodes
        .iter()
        .map(|n| get(n)["services"].clone())
        .collect();
    assert_eq!(answers[0][0]["last_check"]["errors"]["result"], "fail");
    assert_eq!(answers[1], answers[0]);
    assert_eq!(answers[2], answers[0]);
    let users: Vec<String> = (0..200).map(|i| format!("u-{i}")).collect();
    for (i, node) in fleet.nodes.iter().enumerate() {
        assert!(
            variants(node, &users).iter().all(|v| v == "stable"),
            "instance {i}"
        );
        let pinned = node
            .client()
            .get("/", &[("x-staff", "1"), ("x-user-id", "u1")]);
        assert_eq!(pinned.backend(), "stable", "instance {i}");
        assert_eq!(
            pinned.upstream_header("x-cohort-reason").as_deref(),
            Some("rollback"),
            "instance {i}"
        );
    }
    fleet.assert_only_the_decider_writes_state();
}

/// SPEC: no instance's restart changes the step. A follower that restarts while the
/// decider is down starts from its copy of the decider's last answer: a rolled-back
/// canary stays without users (and rules pinned to it stay suspended).
#[test]
fn a_follower_restarted_while_the_decider_is_down_keeps_the_rollback() {
    let (s, c) = (backend("stable"), backend("canary"));
    c.set_error_rate(0.5);
    let mut fleet = Fleet::start(|d| config(&s, &c, d, FAST));
    let traffic = UserTraffic::start("down", &fleet.addrs(), 1, 5000);
    all_agree(&fleet, "rollback", |r| r["state"] == "rolled_back");
    drop(traffic);
    assert!(
        copy_of(&fleet.files[1]).exists(),
        "the follower keeps a copy"
    );
    fleet.nodes[0].signal("KILL");
    fleet.nodes[0].wait_exit(std::time::Duration::from_secs(10));
    fleet.nodes[1].restart();
    let r = get(&fleet.nodes[1]);
    assert_eq!(
        r["services"][0]["state"],
        "rolled_back",
        "{r:#}\n{}",
        fleet.logs()
    );
    assert_eq!(r["services"][0]["percent"], 0.0, "{r:#}");
    let users: Vec<String> = (0..200).map(|i| format!("u-{i}")).collect();
    assert!(variants(&fleet.nodes[1], &users)
        .iter()
        .all(|v| v == "stable"));
    let pinned = fleet.nodes[1]
        .client()
        .get("/", &[("x-staff", "1"), ("x-user-id", "u1")]);
    assert_eq!(pinned.backend(), "stable");
    // Its state file (stale, from before the fleet) is still neither read nor written.
    assert_eq!(std::fs::read(&fleet.files[1]).unwrap(), fleet.stale);
}

#[test]
fn the_decider_judges_the_summed_traffic_of_the_fleet() {
    let (s, c) = (backend("stable"), backend("canary"));
    // One long step at 50%; 200 requests a side are needed, each follower alone serves
    // fewer than that, together they serve more.
    let rollout = "steps = [50]\nstep_secs = 3600\ncheck_secs = 1\nmax_step_secs = 3600\n";
    let fleet = Fleet::start(|d| {
        config(&s, &c, d, rollout).replace("min_requests = 100", "min_requests = 200")
    });
    let mut sent = 0;
    for (f, node) in fleet.nodes.iter().enumerate().skip(1) {
        let mut cl = node.client();
        for k in 0..300 {
            assert_eq!(
                cl.get("/", &[("x-user-id", &format!("sum-{f}-{k}"))])
                    .status,
                200
            );
            sent += 1;
        }
    }
    // Every request is recorded once its metrics are (just after its answer).
    let counted = |node: &Cohort| analysis(node, "canary") + analysis(node, "stable");
    wait_until(
        20,
        "the followers' analysis counters",
        || (counted(&fleet.nodes[1]) + counted(&fleet.nodes[2]) == sent).then_some(()),
        || fleet.logs(),
    );
    let per_follower: Vec<(u64, u64)> = fleet.nodes[1..]
        .iter()
        .map(|n| (analysis(n, "canary"), analysis(n, "stable")))
        .collect();
    for (cn, bn) in &per_follower {
        assert!(
            *cn < 200 && *bn < 200,
            "one follower alone is inconclusive: {per_follower:?}"
        );
    }
    let canary: u64 = per_follower.iter().map(|p| p.0).sum();
    let baseline: u64 = per_follower.iter().map(|p| p.1).sum();
    assert!(canary >= 200 && baseline >= 200, "{per_follower:?}");
    let check = wait_until(
        30,
        "a check on the fleet's sum",
        || {
            let c = get(&fleet.nodes[0])["services"][0]["last_check"].clone();
            let n = |side: &str| c["errors"][side]["n"].as_u64().unwrap_or(0);
            (n("canary") == canary && n("baseline") == baseline).then_some(c)
        },
        || format!("{:#}\n{}", get(&fleet.nodes[0]), fleet.logs()),
    );
    assert_eq!(check["result"], "pass", "{check:#}");
    assert_eq!(check["errors"]["result"], "pass", "{check:#}");
    assert_eq!(check["latency"]["result"], "pass", "{check:#}");
    // None of it went through the decider itself.
    assert_eq!(counted(&fleet.nodes[0]), 0);
}

#[test]
fn killing_the_decider_mid_rollout_loses_and_repeats_no_step() {
    let (s, c) = (backend("stable"), backend("canary"));
    let rollout =
        "steps = [10, 30, 60]\nstep_secs = 2\ncheck_secs = 1\nmax_step_secs = 3600\nfailure_limit = 2\n";
    let mut fleet = Fleet::start(|d| config(&s, &c, d, rollout));
    let traffic = UserTraffic::start("k", &fleet.addrs(), 1, 5000);
    // Every percent each follower serves, as it changes.
    let seen: Arc<Mutex<Vec<Vec<f64>>>> = Arc::new(Mutex::new(vec![Vec::new(); 2]));
    let stop = Arc::new(AtomicBool::new(false));
    let admins: Vec<SocketAddr> = fleet.nodes[1..].iter().map(|n| n.admin).collect();
    let watcher = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for (i, admin) in admins.iter().enumerate() {
                    let r = Client::new(*admin).get("/rollout", &[]).json();
                    let p = r["services"][0]["percent"].as_f64().unwrap();
                    let mut seen = seen.lock().unwrap();
                    if seen[i].last() != Some(&p) {
                        seen[i].push(p);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
    };
    all_agree(&fleet, "step 1", |r| r["step"] == 1);
    fleet.nodes[0].signal("KILL");
    fleet.nodes[0].wait_exit(std::time::Duration::from_secs(10));
    // What the decider had written when it died.
    let at_kill: Value = serde_json::from_slice(&std::fs::read(&fleet.files[0]).unwrap()).unwrap();
    let at_kill = at_kill["services"]["api"].clone();
    // The followers notice, and keep the last step they got.
    for n in &fleet.nodes[1..] {
        let f = wait_until(
            20,
            "a follower to miss the decider",
            || {
                let r = get(n);
                (!r["fleet"]["error"].is_null()).then_some(r)
            },
            || fleet.logs(),
        );
        // The last step it got: the decider's at the kill, or the one before when the
        // decider advanced just before it died, unseen.
        let served = f["services"][0]["percent"].as_f64().unwrap();
        assert!(
            served <= at_kill["percent"].as_f64().unwrap() && served >= 10.0,
            "{f:#}"
        );
        assert_eq!(f["services"][0]["state"], "running", "{f:#}");
    }
    fleet.nodes[0].restart();
    let r = all_agree(&fleet, "promotion", |r| r["state"] == "promoted");
    drop(traffic);
    // The watcher samples every 50 ms: let it record the promotion on every follower
    // before it stops.
    wait_until(
        10,
        "the watcher to see every follower promoted",
        || {
            let seen = seen.lock().unwrap();
            seen.iter().all(|p| p.last() == Some(&100.0)).then_some(())
        },
        || format!("{:?}", seen.lock().unwrap()),
    );
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();

    // The history the decider had at the kill goes on, unchanged and not repeated.
    let history = r["history"].as_array().unwrap();
    let before = at_kill["history"].as_array().unwrap();
    assert_eq!(&history[..before.len()], &before[..], "{r:#}");
    let events: Vec<(String, u64)> = history
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["step"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("started".to_string(), 0),
            ("advanced".to_string(), 1),
            ("advanced".to_string(), 2),
            ("promoted".to_string(), 2),
        ],
        "{r:#}"
    );
    // Each follower served the steps in order, none twice, none skipped.
    for (i, percents) in seen.lock().unwrap().iter().enumerate() {
        let from = percents.first().copied().unwrap_or(10.0);
        let full = [10.0, 30.0, 60.0, 100.0];
        let want: Vec<f64> = full.iter().copied().filter(|p| *p >= from).collect();
        assert_eq!(*percents, want, "follower {}", i + 1);
    }
    fleet.assert_only_the_decider_writes_state();
}
