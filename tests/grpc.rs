#![allow(clippy::unwrap_used)]
//! gRPC through the real binary, on both carriers: HTTP/2 clients on a TLS listener, an
//! h2c gRPC backend. Trailers pass end to end; the variant's outcome is its
//! `grpc-status` (server faults are errors in `cohort_requests_total` and in the rollout
//! analysis, other codes are not); cohort's own failures reach the client as gRPC errors
//! (14 UNAVAILABLE, 4 DEADLINE_EXCEEDED); `grpc.health.v1.Health/Check` health checks.

mod common;
use common::certs::TestCa;
use common::h2_backend::H2Echo;
use common::h2_client::{grpc_frame, h2_requests, H2Response};
use common::*;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const CARRIERS: [(&str, &[(&str, &str)]); 2] = [("engine", ENGINE), ("pingora", PINGORA)];

struct Front {
    px: Cohort,
    tls: SocketAddr,
    _dir: tempfile::TempDir,
}

/// cohort with a TLS listener in front of `backends` (one variant), `variant` lines added.
fn start(backends: &[SocketAddr], variant: &str, env: &[(&str, &str)]) -> Front {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cohort test CA");
    let leaf = ca.server(dir.path(), "front", &["localhost"], true);
    let tls_port = free_port();
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    let config = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\n[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"{}\"\nkey = \"{}\"\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [{}]\nprotocol = \"h2c\"\n{variant}\n",
        leaf.cert_pem.display(),
        leaf.key_pem.display(),
        list.join(", ")
    );
    let px = Cohort::start_with_env(&config, env);
    let tls = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(tls).is_err() {
        assert!(Instant::now() < deadline, "TLS listener not up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Front { px, tls, _dir: dir }
}

fn call(tls: SocketAddr, n: usize) -> Vec<H2Response> {
    let reqs: Vec<_> = (0..n)
        .map(|_| {
            (
                "POST",
                "/echo.v1.Echo/Say",
                vec![
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                    ("x-user-id", "user-1"),
                ],
                grpc_frame(b"\x0a\x02hi"),
            )
        })
        .collect();
    h2_requests(tls, &reqs)
}

fn series(px: &Cohort, prefix: &str) -> f64 {
    px.metrics()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn wait_for(px: &Cohort, prefix: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = series(px, prefix);
        if v >= want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn trailers_pass_end_to_end_and_grpc_status_decides_the_outcome() {
    for (carrier, env) in CARRIERS {
        let b = H2Echo::spawn("stable");
        let f = start(&[b.addr], "", env);
        for (code, n) in [(0u32, 3usize), (14, 2), (5, 1)] {
            b.set_grpc_status(code);
            for r in call(f.tls, n) {
                assert_eq!(r.status, 200, "{carrier}");
                assert_eq!(r.header("content-type"), Some("application/grpc"));
                assert_eq!(r.header("x-backend"), Some("stable"));
                let trailers = r.trailers.as_ref().expect("trailers end to end");
                assert_eq!(
                    trailers["grpc-status"],
                    code.to_string().as_str(),
                    "{carrier}"
                );
                assert!(r.body.windows(6).any(|w| w == b"stable"), "{carrier}");
                assert!(r.body.ends_with(b"\x0a\x02hi"), "the message relayed");
            }
        }
        let m = |s: &str| {
            format!("cohort_requests_total{{code=\"200\",grpc_status=\"{s}\",service=\"api\",variant=\"stable\"}}")
        };
        assert_eq!(wait_for(&f.px, &m("5"), 1.0), 1.0, "{carrier}");
        assert_eq!(series(&f.px, &m("0")), 3.0, "{carrier}");
        assert_eq!(series(&f.px, &m("14")), 2.0, "{carrier}");
        let a = |o: &str| {
            format!("cohort_analysis_requests_total{{outcome=\"{o}\",service=\"api\",variant=\"stable\"}}")
        };
        assert_eq!(
            series(&f.px, &a("error")),
            2.0,
            "{carrier}: UNAVAILABLE is the server's fault"
        );
        assert_eq!(
            series(&f.px, &a("ok")),
            4.0,
            "{carrier}: OK and NOT_FOUND are not"
        );
    }
}

#[test]
fn cohorts_own_failures_reach_grpc_clients_as_grpc_errors() {
    for (carrier, env) in CARRIERS {
        // No backend answers: 14 UNAVAILABLE (a failed connect, then none left to try).
        let f = start(&[closed_addr()], "", env);
        for r in call(f.tls, 2) {
            assert_eq!(r.status, 200, "{carrier}: a gRPC error, not an HTTP one");
            assert_eq!(
                r.header("grpc-status"),
                Some("14"),
                "{carrier}: a trailers-only response: {r:?}"
            );
            assert_eq!(r.header("content-type"), Some("application/grpc"));
            assert!(r.grpc("grpc-message").is_some_and(|m| !m.is_empty()));
        }
        let unavailable =
            "cohort_requests_total{code=\"200\",grpc_status=\"14\",service=\"api\",variant=\"stable\"}";
        assert_eq!(wait_for(&f.px, unavailable, 2.0), 2.0, "{carrier}");
        drop(f);
        // A backend that never answers: 4 DEADLINE_EXCEEDED after read_timeout_ms.
        let b = H2Echo::spawn("stable");
        b.set_stall(true);
        let f = start(&[b.addr], "read_timeout_ms = 300", env);
        let r = &call(f.tls, 1)[0];
        assert_eq!(r.status, 200, "{carrier}");
        assert_eq!(r.grpc("grpc-status"), Some("4"), "{carrier}: {r:?}");
    }
}

#[test]
fn grpc_health_checks_take_not_serving_backends_out() {
    let (good, bad) = (H2Echo::spawn("good"), H2Echo::spawn("bad"));
    bad.set_serving(false);
    let hc = "health_check = { grpc = true, interval_ms = 100, timeout_ms = 1000, unhealthy_after = 2, healthy_after = 1 }";
    let f = start(&[good.addr, bad.addr], hc, &[]);
    let healthy = |addr: SocketAddr| {
        let s = f.px.status();
        s["services"][0]["variants"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["addr"] == addr.to_string())
            .map(|b| b["healthy"].as_bool().unwrap())
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while healthy(bad.addr) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!healthy(bad.addr), "NOT_SERVING is down: {}", f.px.status());
    assert!(healthy(good.addr));
    assert!(good.shared.health_checks.load(Ordering::SeqCst) >= 2);
    for r in call(f.tls, 4) {
        assert_eq!(r.header("x-backend"), Some("good"));
    }
    bad.set_serving(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy(bad.addr) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(healthy(bad.addr), "SERVING again: back");
}

#[test]
fn grpc_health_check_mistakes_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (variant, want) in [
        (
            "health_check = { grpc = true }",
            "service[0].variant[0].health_check.grpc: needs protocol = \"h2c\" or \"h2\"",
        ),
        (
            "protocol = \"h2c\"\nhealth_check = { grpc = true, path = \"/healthz\" }",
            "service[0].variant[0].health_check.path: not with grpc",
        ),
    ] {
        let config = format!(
            "[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"127.0.0.1:9\"]\n{variant}\n"
        );
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, config).unwrap();
        let (code, out, err) = cohort_cmd(&["check", "-c", file.to_str().unwrap()]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(err.contains(want), "want {want:?} in {err}");
    }
}
