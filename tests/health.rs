#![allow(clippy::unwrap_used)]
//! Health and failover through the real binary: active checks with thresholds, fallback
//! by variant and return, passive ejection, 503/504/502, health across reloads.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

const HC: &str = "health_check = { path = \"/healthz\", interval_ms = 200, timeout_ms = 150, unhealthy_after = 2, healthy_after = 2 }";

fn cfg(stable: &[&EchoBackend], canary: &[&EchoBackend], fallback: bool, hc: &str) -> String {
    let list = |bs: &[&EchoBackend]| {
        bs.iter()
            .map(|b| format!("\"{}\"", b.addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 2\n\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n{}\n\n[[service.variant]]\nname = \"stable\"\nweight = 50\nbackends = [{}]\n{hc}\n\n[[service.variant]]\nname = \"canary\"\nweight = 50\nbackends = [{}]\n{hc}\n",
        if fallback { "fallback = \"stable\"" } else { "" },
        list(stable),
        list(canary)
    )
}

/// Users (keys) assigned to `variant` at 50/50.
fn users_of(variant: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("user-{i}"))
        .filter(|k| expected_variant("api", &[("stable", 50.0), ("canary", 50.0)], k) == variant)
        .take(n)
        .collect()
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

#[test]
fn a_killed_canary_backend_is_skipped_and_its_users_stay_on_canary() {
    let s = backend("stable");
    let (c1, c2) = (backend("canary-1"), backend("canary-2"));
    let px = Cohort::start(&cfg(&[&s], &[&c1, &c2], true, HC));
    let users = users_of("canary", 20);
    c1.stop();
    // after the first failed checks (2 × 200 ms) no request may fail
    std::thread::sleep(Duration::from_millis(2 * 200 + 300));
    let mut cl = px.client();
    for round in 0..3 {
        for u in &users {
            let r = cl.get("/", &[("x-user-id", u)]);
            assert_eq!(r.status, 200, "{u} round {round}: {}", r.text());
            assert_eq!(
                r.backend(),
                "canary-2",
                "still on canary, on the live backend"
            );
        }
    }
    let st = px.status();
    let backends = &st["services"][0]["variants"][1]["backends"];
    assert_eq!(backends[0]["healthy"], false);
    assert_eq!(backends[1]["healthy"], true);
    let m = px.metrics();
    assert!(
        m.contains(&format!(
            "cohort_backend_up{{backend=\"{}\",service=\"api\",variant=\"canary\"}} 0",
            c1.addr
        )),
        "{m}"
    );
}

#[test]
fn unhealthy_canary_falls_back_to_stable_and_users_return_after_recovery() {
    let s = backend("stable");
    let c = backend("canary");
    let px = Cohort::start(&cfg(&[&s], &[&c], true, HC));
    let users = users_of("canary", 10);
    let mut cl = px.client();
    let on = |cl: &mut Client, want: &str, reason: &str| {
        users.iter().all(|u| {
            let r = cl.get("/", &[("x-user-id", u)]);
            r.status == 200
                && r.backend() == want
                && r.upstream_header("x-cohort-reason").as_deref() == Some(reason)
        })
    };
    assert!(on(&mut cl, "canary", "hash"));
    c.set_healthy(false);
    let took =
        wait_for(Duration::from_secs(3), || on(&mut cl, "stable", "fallback")).expect("fell back");
    // interval × unhealthy_after + 1 s
    assert!(
        took <= Duration::from_millis(200 * 2 + 1000),
        "fallback took {took:?}"
    );
    let r = cl.get("/", &[("x-user-id", &users[0])]);
    assert_eq!(
        r.header("x-cohort-variant"),
        None,
        "no expose_header configured"
    );
    c.set_healthy(true);
    let took =
        wait_for(Duration::from_secs(3), || on(&mut cl, "canary", "hash")).expect("returned");
    assert!(
        took <= Duration::from_millis(200 * 2 + 1000),
        "return took {took:?}"
    );
    let m = px.metrics();
    assert!(m.contains(
        "cohort_assignments_total{reason=\"fallback\",service=\"api\",variant=\"stable\"}"
    ));
}

#[test]
fn no_healthy_backend_and_no_fallback_gives_503_with_retry_after() {
    let s = backend("stable");
    let c = backend("canary");
    let px = Cohort::start(&cfg(&[&s], &[&c], false, HC));
    let u = &users_of("canary", 1)[0];
    c.set_healthy(false);
    let mut cl = px.client();
    let got = wait_for(Duration::from_secs(3), || {
        cl.get("/", &[("x-user-id", u)]).status == 503
    });
    assert!(got.is_some());
    let r = cl.get("/", &[("x-user-id", u)]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.text().len() < 100 && r.text().contains("no healthy backend"));
    assert_eq!(
        cl.get("/", &[("x-user-id", &users_of("stable", 1)[0])])
            .status,
        200,
        "stable unaffected"
    );
}

#[test]
fn tcp_checks_mark_a_closed_port_down() {
    let s = backend("stable");
    let (c1, c2) = (backend("canary-1"), backend("canary-2"));
    let tcp = "health_check = { interval_ms = 200, timeout_ms = 150, unhealthy_after = 1, healthy_after = 1 }";
    let px = Cohort::start(&cfg(&[&s], &[&c1, &c2], true, tcp));
    c2.stop();
    let down = wait_for(Duration::from_secs(3), || {
        px.status()["services"][0]["variants"][1]["backends"][1]["healthy"] == false
    });
    assert!(down.is_some(), "TCP check saw the closed port");
    assert_eq!(
        px.status()["services"][0]["variants"][1]["backends"][0]["healthy"],
        true
    );
}

#[test]
fn without_checks_a_connect_failure_ejects_the_backend_passively() {
    let s = backend("stable");
    let c1 = backend("canary-1");
    let c2 = backend("canary-2");
    let px = Cohort::start(&cfg(&[&s], &[&c1, &c2], true, ""));
    c1.stop();
    let mut cl = px.client();
    for u in users_of("canary", 30) {
        let r = cl.get("/", &[("x-user-id", &u)]);
        assert_eq!(r.status, 200, "retried on the other canary backend");
        assert_eq!(r.backend(), "canary-2");
    }
    let m = px.metrics();
    // only the first request tried the dead backend; it is then ejected for 10 s
    assert!(
        m.contains(
            "cohort_upstream_errors_total{kind=\"connect\",service=\"api\",variant=\"canary\"} 1"
        ),
        "{m}"
    );
    assert_eq!(
        px.status()["services"][0]["variants"][1]["backends"][0]["healthy"],
        false
    );
}

#[test]
fn slow_upstream_gives_504() {
    let s = backend("stable");
    let cfg = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 1\n[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nread_timeout_ms = 300\nbackends = [\"{}\"]\n",
        s.addr
    );
    let px = Cohort::start(&cfg);
    let r = px.client().get("/?sleep_ms=1500", &[]);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("timeout"));
    assert_eq!(px.client().get("/", &[]).status, 200);
    assert!(px.metrics().contains(
        "cohort_upstream_errors_total{kind=\"timeout\",service=\"api\",variant=\"stable\"} 1"
    ));
}

#[test]
fn broken_upstream_response_gives_502() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 abc nonsense\r\n\x00\x01garbage\r\n\r\n");
        }
    });
    let cfg = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 1\n[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"{addr}\"]\n"
    );
    let px = Cohort::start(&cfg);
    let r = px.client().get("/", &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("bad gateway"));
}

#[test]
fn health_state_carries_over_a_reload() {
    let s = backend("stable");
    let (c1, c2) = (backend("canary-1"), backend("canary-2"));
    let slow_hc = "health_check = { path = \"/healthz\", interval_ms = 200, timeout_ms = 150, unhealthy_after = 1, healthy_after = 50 }";
    let px = Cohort::start(&cfg(&[&s], &[&c1, &c2], true, HC));
    c1.set_healthy(false);
    let down = wait_for(Duration::from_secs(3), || {
        px.status()["services"][0]["variants"][1]["backends"][0]["healthy"] == false
    });
    assert!(down.is_some());
    c1.set_healthy(true);
    // canary-1 answers its checks again, but the reloaded config needs 50 successes
    // (10 s) to bring it back: only carried-over state keeps it down. A fresh start
    // would call it healthy.
    px.rewrite(
        &cfg(&[&s], &[&c1, &c2], true, slow_hc)
            .replace("weight = 50\nbackends = [\"", "weight = 49\nbackends = [\""),
    );
    assert_eq!(px.post_reload().1["result"], "applied");
    let st = px.status();
    let b = &st["services"][0]["variants"][1]["backends"];
    assert_eq!(
        b[0]["healthy"], false,
        "known-down backend stays down across the reload"
    );
    assert_eq!(b[1]["healthy"], true, "healthy backend stays healthy");
    let mut cl = px.client();
    for u in users_of("canary", 10) {
        let r = cl.get("/", &[("x-user-id", &u)]);
        if r.upstream_header("x-cohort-variant").as_deref() == Some("canary") {
            assert_eq!(
                r.backend(),
                "canary-2",
                "no traffic to the known-down backend"
            );
        }
    }
}

/// A raw upstream that answers `200 <name>` on keep-alive connections and closes the
/// connection without answering any request whose path starts with `/noanswer`: a
/// request a client can send to crash the backend. Returns its address and a count of
/// the requests it saw.
fn hang_up_backend(
    name: &'static str,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    counter.fetch_add(1, Ordering::SeqCst);
                    if head
                        .split(' ')
                        .nth(1)
                        .is_some_and(|p| p.starts_with("/noanswer"))
                    {
                        return; // closes without a byte of response
                    }
                    let body = format!("{name}\n");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn one_variant(backends: &[std::net::SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 1\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [{}]\n",
        list.join(", ")
    )
}

/// One request that makes the only backend hang up gets 502 and takes nothing down:
/// every user is served right after it. (Before: that backend was ejected for 10 s and
/// every user got 503; NGINX keeps answering 200.)
#[test]
fn a_request_that_makes_the_only_backend_hang_up_does_not_take_the_variant_down() {
    let (b, seen) = hang_up_backend("b1");
    let px = Cohort::start(&one_variant(&[b]));
    let mut cl = px.client();
    for round in 0..5 {
        let r = cl.get("/noanswer", &[("x-user-id", "attacker")]);
        assert_eq!(r.status, 502, "round {round}: {}", r.text());
        let mut cl = px.client();
        for i in 0..5 {
            let r = cl.get("/", &[("x-user-id", &format!("u{i}"))]);
            assert_eq!(
                (r.status, r.text()),
                (200, "b1\n".to_string()),
                "round {round}"
            );
        }
    }
    assert_eq!(
        px.status()["services"][0]["variants"][0]["backends"][0]["healthy"],
        true
    );
    // A hang-up on a fresh connection is not retried onto the same backend; one on a
    // pooled connection is tried once more on a fresh one (it may have been the
    // keep-alive race): at most twice per round.
    let n = seen.load(std::sync::atomic::Ordering::SeqCst);
    assert!((30..=35).contains(&n), "{n} requests seen");
}

/// With two backends, a hanging-up request is retried once on the other (it is an
/// idempotent GET) and then answered 502; each backend counts it once. Repeated, it may
/// eject one backend (`max_fails` = 3 within 10 s) but never the last healthy one, so
/// the variant keeps serving everyone else.
#[test]
fn repeated_hang_ups_never_eject_the_last_healthy_backend() {
    let (b1, seen1) = hang_up_backend("b1");
    let (b2, seen2) = hang_up_backend("b2");
    let px = Cohort::start(&one_variant(&[b1, b2]));
    for round in 0..6 {
        let r = px.client().get("/noanswer", &[("x-user-id", "attacker")]);
        assert_eq!(r.status, 502, "round {round}: {}", r.text());
    }
    use std::sync::atomic::Ordering::SeqCst;
    let (n1, n2) = (seen1.load(SeqCst), seen2.load(SeqCst));
    assert!(
        n1 + n2 <= 12 && n1 + n2 >= 6,
        "tried at most twice each: {n1} + {n2}"
    );
    let backends = px.status()["services"][0]["variants"][0]["backends"].clone();
    let healthy = backends
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["healthy"] == true)
        .count();
    assert!(healthy >= 1, "one backend stays in: {backends}");
    let mut cl = px.client();
    for i in 0..10 {
        let r = cl.get("/", &[("x-user-id", &format!("u{i}"))]);
        assert_eq!(r.status, 200, "user u{i} still served: {}", r.text());
    }
}

/// The canary's only backend is dead and there are no health checks: a canary user's
/// request goes to `fallback` at once (nothing was sent upstream), not 502.
#[test]
fn a_connect_failure_with_no_other_backend_goes_to_fallback_at_once() {
    let s = backend("stable");
    let dead = closed_addr();
    let cfg = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 1\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\nfallback = \"stable\"\nexpose_header = \"x-cohort-variant\"\n[[service.variant]]\nname = \"stable\"\nweight = 50\nbackends = [\"{}\"]\n[[service.variant]]\nname = \"canary\"\nweight = 50\nbackends = [\"{dead}\"]\n",
        s.addr
    );
    let px = Cohort::start(&cfg);
    let mut cl = px.client();
    let users = users_of("canary", 5);
    for u in &users {
        let r = cl.get("/", &[("x-user-id", u)]);
        assert_eq!(r.status, 200, "{u}: {}", r.text());
        assert_eq!(r.backend(), "stable");
        assert_eq!(
            r.upstream_header("x-cohort-reason").as_deref(),
            Some("fallback")
        );
        assert_eq!(r.header("x-cohort-variant"), Some("stable"));
    }
    // A request is counted just after its response is written: wait for the last one.
    let all = format!(
        "cohort_assignments_total{{reason=\"fallback\",service=\"api\",variant=\"stable\"}} {}",
        users.len()
    );
    wait_for(Duration::from_secs(3), || px.metrics().contains(&all));
    let m = px.metrics();
    assert!(m.contains(&all), "{m}");
    assert!(
        m.contains(
            "cohort_upstream_errors_total{kind=\"connect\",service=\"api\",variant=\"canary\"} 1"
        ),
        "the first request's connect failure is counted against the canary: {m}"
    );
}

/// cohort's own 502 and 503 name the variant they were for in `expose_header`.
#[test]
fn generated_errors_name_the_variant() {
    let s = backend("stable");
    let dead = closed_addr();
    let cfg = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 1\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\nexpose_header = \"x-cohort-variant\"\n[[service.variant]]\nname = \"stable\"\nweight = 50\nbackends = [\"{}\"]\n[[service.variant]]\nname = \"canary\"\nweight = 50\nbackends = [\"{dead}\"]\n",
        s.addr
    );
    let px = Cohort::start(&cfg);
    let u = &users_of("canary", 1)[0];
    let r = px.client().get("/", &[("x-user-id", u)]);
    assert_eq!(r.status, 502, "no fallback configured: {}", r.text());
    assert_eq!(r.header("x-cohort-variant"), Some("canary"));
    let r = px.client().get("/", &[("x-user-id", u)]);
    assert_eq!(r.status, 503, "ejected: {}", r.text());
    assert_eq!(r.header("x-cohort-variant"), Some("canary"));
    // A backend too slow for read_timeout_ms: cohort's 504 names the variant too.
    let slow = backend("canary");
    slow.set_delay_ms(2000);
    let cfg = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 1\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\nexpose_header = \"x-cohort-variant\"\n[[service.variant]]\nname = \"stable\"\nweight = 50\nbackends = [\"{}\"]\n[[service.variant]]\nname = \"canary\"\nweight = 50\nread_timeout_ms = 200\nbackends = [\"{}\"]\n",
        s.addr, slow.addr
    );
    let px = Cohort::start(&cfg);
    let r = px.client().get("/", &[("x-user-id", u)]);
    assert_eq!(r.status, 504, "timed out: {}", r.text());
    assert_eq!(r.header("x-cohort-variant"), Some("canary"));
}
