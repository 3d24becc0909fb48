#![allow(clippy::unwrap_used)]
//! gRPC with a real gRPC server and client (Python `grpcio`: tests/grpc_py/) through the
//! real binary, on both carriers: HTTP/2 clients on cohort's TLS listener, backends on
//! h2c and on h2 over TLS (health-checked with `grpc.health.v1.Health/Check` over TLS).
//! Unary and server-streaming calls split 90/10 by a metadata key, each user always on
//! its variant; trailers intact; a canary's INTERNAL counted as its errors; a dead
//! backend is UNAVAILABLE to the client. Without a Python that imports `grpc` the tests
//! skip (and fail when `CI=true`).

mod common;
use common::certs::TestCa;
use common::grpc_py::{calls, python, GrpcServer};
use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CARRIERS: [(&str, &[(&str, &str)]); 2] = [("engine", ENGINE), ("pingora", PINGORA)];
const WEIGHTS: [(&str, f64); 2] = [("stable", 90.0), ("canary", 10.0)];

/// How cohort reaches the backends.
#[derive(Clone, Copy, Debug)]
enum Upstream {
    H2c,
    H2Tls,
}

struct Front {
    px: Cohort,
    tls: SocketAddr,
    ca_pem: PathBuf,
    _servers: Vec<GrpcServer>,
    _dir: tempfile::TempDir,
}

/// Two gRPC servers (`stable`, `canary`; the canary fails unary calls with INTERNAL
/// when `canary_fails`) behind cohort, 90/10 by `x-user-id`; `stable_addr` replaces the
/// stable server's address (a dead backend).
fn start(
    py: &str,
    up: Upstream,
    canary_fails: bool,
    stable_addr: Option<SocketAddr>,
    env: &[(&str, &str)],
) -> Front {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cohort test CA");
    let ca_pem = ca.write(dir.path(), "ca.pem");
    let front = ca.server(dir.path(), "front", &["localhost"], true);
    let backend_leaf = ca.server(dir.path(), "grpc", &["grpc.internal"], false);
    let tls_leaf = matches!(up, Upstream::H2Tls).then_some(&backend_leaf);
    let stable = GrpcServer::spawn(py, "stable", tls_leaf, false);
    let canary = GrpcServer::spawn(py, "canary", tls_leaf, canary_fails);
    let upstream = match up {
        Upstream::H2c => "protocol = \"h2c\"".to_string(),
        Upstream::H2Tls => format!(
            "protocol = \"h2\"\ntls = {{ sni = \"grpc.internal\", ca = \"{}\" }}\nhealth_check = {{ grpc = true, interval_ms = 200, timeout_ms = 2000, unhealthy_after = 2, healthy_after = 1 }}",
            ca_pem.display()
        ),
    };
    let tls_port = free_port();
    let stable_addr = stable_addr.unwrap_or(stable.addr);
    let config = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\n[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"{}\"\nkey = \"{}\"\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n[[service.variant]]\nname = \"stable\"\nweight = 90\nbackends = [\"{stable_addr}\"]\n{upstream}\n[[service.variant]]\nname = \"canary\"\nweight = 10\nbackends = [\"{}\"]\n{upstream}\n",
        front.cert_pem.display(),
        front.key_pem.display(),
        canary.addr,
    );
    let px = Cohort::start_with_env(&config, env);
    let tls = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(tls).is_err() {
        assert!(Instant::now() < deadline, "TLS listener not up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Front {
        px,
        tls,
        ca_pem,
        _servers: vec![stable, canary],
        _dir: dir,
    }
}

fn series(px: &Cohort, name: &str) -> f64 {
    px.metrics()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Each call's user is on the variant the assignment gives it, every time (the backend
/// that answered names itself in the message and in the trailers); returns the share
/// of users on the canary.
fn check_split(calls: &[serde_json::Value], what: &str) -> f64 {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for c in calls {
        assert_eq!(c["code"], 0, "{what}: {c}");
        let user = c["user"].as_str().unwrap();
        let served = c["trailers"]["x-served-by"].as_str().unwrap();
        let want = expected_variant("api", &WEIGHTS, user);
        assert_eq!(served, want, "{what}: {user} on its variant: {c}");
        for m in c["messages"].as_array().unwrap() {
            assert!(m.as_str().unwrap().starts_with(served), "{what}: {c}");
        }
        assert_eq!(
            *seen.entry(user).or_insert(served),
            served,
            "{what}: sticky"
        );
    }
    let canary = seen.values().filter(|v| **v == "canary").count();
    canary as f64 / seen.len() as f64
}

#[test]
fn unary_and_streaming_calls_split_90_10_by_metadata_on_h2c_and_h2_over_tls() {
    let Some(py) = python() else { return };
    for up in [Upstream::H2c, Upstream::H2Tls] {
        for (carrier, env) in CARRIERS {
            let what = format!("{carrier}, {up:?}");
            let f = start(py, up, false, None, env);
            // 300 users, 2 unary calls each.
            let unary = calls(py, f.tls, &f.ca_pem, "Say", 300, 2);
            for c in &unary {
                assert_eq!(
                    c["messages"][0].as_str().unwrap(),
                    format!("{}:hi", c["trailers"]["x-served-by"].as_str().unwrap()),
                    "{what}: the request message relayed"
                );
            }
            let share = check_split(&unary, &what);
            assert!(
                (0.05..=0.16).contains(&share),
                "{what}: canary share {share}"
            );
            // Server-streaming: three messages in order, then the trailers.
            let streaming = calls(py, f.tls, &f.ca_pem, "Count", 100, 1);
            for c in &streaming {
                let who = c["trailers"]["x-served-by"].as_str().unwrap();
                let want: Vec<String> = (0..3).map(|i| format!("{who}:{i}")).collect();
                assert_eq!(c["messages"], serde_json::json!(want), "{what}: {c}");
            }
            check_split(&streaming, &what);
            let ok = series(
                &f.px,
                "cohort_requests_total{code=\"200\",grpc_status=\"0\",service=\"api\"",
            );
            assert_eq!(ok, 700.0, "{what}: every call counted once, as OK");
            if let Upstream::H2Tls = up {
                // The gRPC health checks over TLS pass (two failures would take a
                // backend out, and the calls above would have failed).
                let s = f.px.status();
                for v in s["services"][0]["variants"].as_array().unwrap() {
                    assert_eq!(v["backends"][0]["healthy"], true, "{what}: {s}");
                }
            }
        }
    }
}

#[test]
fn a_canary_returning_internal_counts_as_errors_for_that_variant() {
    let Some(py) = python() else { return };
    for (carrier, env) in CARRIERS {
        let f = start(py, Upstream::H2c, true, None, env);
        let results = calls(py, f.tls, &f.ca_pem, "Say", 200, 1);
        let mut on_canary = 0.0;
        for c in &results {
            let user = c["user"].as_str().unwrap();
            if expected_variant("api", &WEIGHTS, user) == "canary" {
                on_canary += 1.0;
                assert_eq!(c["code"], 13, "{carrier}: INTERNAL reaches the client: {c}");
                assert_eq!(
                    c["details"], "canary broke",
                    "{carrier}: grpc-message intact"
                );
            } else {
                assert_eq!(c["code"], 0, "{carrier}: {c}");
                assert_eq!(c["trailers"]["x-served-by"], "stable", "{carrier}");
            }
        }
        assert!(
            on_canary >= 5.0,
            "{carrier}: {on_canary} calls on the canary"
        );
        let m = |v: &str, s: &str| {
            series(
                &f.px,
                &format!("cohort_requests_total{{code=\"200\",grpc_status=\"{s}\",service=\"api\",variant=\"{v}\"}}"),
            )
        };
        let a = |v: &str, o: &str| {
            series(
                &f.px,
                &format!("cohort_analysis_requests_total{{outcome=\"{o}\",service=\"api\",variant=\"{v}\"}}"),
            )
        };
        assert_eq!(m("canary", "13"), on_canary, "{carrier}");
        assert_eq!(a("canary", "error"), on_canary, "{carrier}");
        assert_eq!(a("stable", "error"), 0.0, "{carrier}");
        assert_eq!(a("stable", "ok"), 200.0 - on_canary, "{carrier}");
    }
}

#[test]
fn a_dead_backend_is_unavailable_to_the_grpc_client() {
    let Some(py) = python() else { return };
    for (carrier, env) in CARRIERS {
        let f = start(py, Upstream::H2c, false, Some(closed_addr()), env);
        for c in calls(py, f.tls, &f.ca_pem, "Say", 40, 1) {
            let user = c["user"].as_str().unwrap();
            let want = if expected_variant("api", &WEIGHTS, user) == "stable" {
                14 // UNAVAILABLE
            } else {
                0
            };
            assert_eq!(c["code"], want, "{carrier}: {c}");
        }
    }
}
