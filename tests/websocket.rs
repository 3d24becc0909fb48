#![allow(clippy::unwrap_used)]
//! WebSockets (HTTP/1.1 `Upgrade`) through the real binary, on both carriers: the
//! upgraded connection is held open both ways, sticky to the user's variant like any
//! request, over plaintext and TLS listeners and to TLS backends; the request is counted
//! with status 101 and its duration ends at the 101, not when the socket closes.

mod common;
use common::certs::TestCa;
use common::ws_backend::{accept_key, WsClient, WsEcho};
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const CARRIERS: [(&str, &[(&str, &str)]); 2] = [("engine", ENGINE), ("pingora", PINGORA)];
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn cfg(stable: SocketAddr, canary: SocketAddr, extra_server: &str, extra_variant: &str) -> String {
    format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\n{extra_server}\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\nexpose_header = \"x-variant\"\n[[service.variant]]\nname = \"stable\"\nweight = 50\nbackends = [\"{stable}\"]\n{extra_variant}\n[[service.variant]]\nname = \"canary\"\nweight = 50\nbackends = [\"{canary}\"]\n{extra_variant}\n"
    )
}

fn sticky_sessions(connect: impl Fn(&str) -> WsClient, carrier: &str) {
    for i in 0..6 {
        let user = format!("user-{i}");
        let want = expected_variant("api", &[("stable", 50.0), ("canary", 50.0)], &user);
        let mut ws = connect(&user);
        assert_eq!(ws.status, 101, "{carrier} {user}");
        assert_eq!(ws.header("sec-websocket-accept"), Some(&*accept_key(KEY)));
        assert_eq!(ws.header("x-backend"), Some(&*want), "{carrier} {user}");
        assert_eq!(ws.header("x-variant"), Some(&*want), "{carrier} {user}");
        assert_eq!(ws.header("x-upstream-variant"), Some(&*want), "{carrier}");
        for m in 0..3 {
            assert_eq!(
                ws.echo(&format!("m{m}")),
                format!("{want}: m{m}"),
                "{carrier}"
            );
        }
        assert_eq!(ws.close(), 8, "{carrier}: the close frame comes back");
    }
}

#[test]
fn websockets_are_held_open_both_ways_and_sticky_to_the_users_variant() {
    let (s, c) = (WsEcho::spawn("stable"), WsEcho::spawn("canary"));
    let config = cfg(s.addr, c.addr, "", "");
    for (carrier, env) in CARRIERS {
        let px = Cohort::start_with_env(&config, env);
        sticky_sessions(
            |user| WsClient::connect(px.addr, "/chat", &[("x-user-id", user)]),
            carrier,
        );
        // One connection quiet for a second: held open, and its request's duration ends
        // at the 101.
        let mut ws = WsClient::connect(px.addr, "/chat", &[("x-user-id", "user-0")]);
        assert_eq!(ws.status, 101);
        let opened = Instant::now();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(ws.echo("still there").ends_with(": still there"));
        assert_eq!(ws.close(), 8);
        assert!(opened.elapsed() >= Duration::from_secs(1));
        let counted = |px: &Cohort| {
            let text = px.metrics();
            let sum = |prefix: &str| -> f64 {
                text.lines()
                    .filter(|l| l.starts_with(prefix))
                    .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                    .sum()
            };
            (
                sum("cohort_requests_total{code=\"101\""),
                sum("cohort_request_duration_seconds_sum{"),
            )
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while counted(&px).0 < 7.0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(25));
        }
        let (n, seconds) = counted(&px);
        assert_eq!(n, 7.0, "{carrier}: {}", px.metrics());
        assert!(
            seconds < 1.0,
            "{carrier}: upgraded requests count until their 101 ({seconds} s in all)"
        );
    }
}

#[test]
fn websockets_over_tls_listeners_to_tls_backends() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cohort test CA");
    let ca_pem = ca.write(dir.path(), "ca.pem");
    let leaf = ca.server(dir.path(), "ws", &["ws.internal", "localhost"], true);
    let (s, c) = (
        WsEcho::spawn_tls("stable", &leaf),
        WsEcho::spawn_tls("canary", &leaf),
    );
    let tls_port = free_port();
    let server = format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        leaf.cert_pem.display(),
        leaf.key_pem.display()
    );
    let variant = format!(
        "tls = {{ sni = \"ws.internal\", ca = \"{}\" }}",
        ca_pem.display()
    );
    let config = cfg(s.addr, c.addr, &server, &variant);
    for (carrier, env) in CARRIERS {
        let px = Cohort::start_with_env(&config, env);
        let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(tls_addr).is_err() {
            assert!(Instant::now() < deadline, "TLS listener not up");
            std::thread::sleep(Duration::from_millis(20));
        }
        sticky_sessions(
            |user| WsClient::connect_tls(tls_addr, "/chat", &[("x-user-id", user)]),
            carrier,
        );
        sticky_sessions(
            |user| WsClient::connect(px.addr, "/chat", &[("x-user-id", user)]),
            carrier,
        );
    }
}

/// A cookie-keyed service: browsers cannot set custom headers on the handshake, so the
/// key is the `assign_cookie` cohort mints on the 101. A browser that sends it back
/// stays on its variant on every new WebSocket.
#[test]
fn websockets_are_sticky_by_the_cookie_cohort_mints_on_the_101() {
    let (s, c) = (WsEcho::spawn("stable"), WsEcho::spawn("canary"));
    let config = cfg(s.addr, c.addr, "", "").replace(
        "key = [\"header:x-user-id\"]",
        "key = [\"cookie:cid\"]\nassign_cookie = \"cid\"",
    );
    let weights = [("stable", 50.0), ("canary", 50.0)];
    for (carrier, env) in CARRIERS {
        let px = Cohort::start_with_env(&config, env);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..8 {
            // A first visit: no cookie; cohort mints one on the 101.
            let mut ws = WsClient::connect(px.addr, "/chat", &[]);
            assert_eq!(ws.status, 101, "{carrier}");
            let set = ws
                .header("set-cookie")
                .expect("a minted cookie")
                .to_string();
            let id = set
                .strip_prefix("cid=")
                .and_then(|v| v.split(';').next())
                .unwrap()
                .to_string();
            assert_eq!(id.len(), 32, "{carrier}: {set}");
            let want = expected_variant("api", &weights, &id);
            assert_eq!(ws.header("x-backend"), Some(&*want), "{carrier}");
            assert_eq!(ws.echo("hi"), format!("{want}: hi"), "{carrier}");
            ws.close();
            seen.insert(want.clone());
            // Later WebSockets with the cookie: the same variant, nothing minted.
            let cookie = format!("theme=dark; cid={id}");
            for _ in 0..3 {
                let mut ws = WsClient::connect(px.addr, "/chat", &[("cookie", &cookie)]);
                assert_eq!(ws.status, 101, "{carrier}");
                assert_eq!(ws.header("set-cookie"), None, "{carrier}");
                assert_eq!(ws.header("x-backend"), Some(&*want), "{carrier}: sticky");
                assert_eq!(ws.echo("again"), format!("{want}: again"));
                ws.close();
            }
        }
        assert!(!seen.is_empty());
    }
}

/// 1,000 messages each way over about a minute, with a reload half-way that moves the
/// user to the other variant: no message is lost or reordered, and the open connection
/// stays on the variant it started on (a new one follows the new weights). Both
/// carriers run at once.
#[test]
fn a_websocket_keeps_every_message_and_its_variant_across_a_reload() {
    let runs: Vec<_> = CARRIERS
        .iter()
        .map(|(carrier, env)| {
            let (carrier, env) = (carrier.to_string(), env.to_vec());
            std::thread::spawn(move || long_session_across_a_reload(&carrier, &env))
        })
        .collect();
    for r in runs {
        r.join().unwrap();
    }
}

fn long_session_across_a_reload(carrier: &str, env: &[(&str, &str)]) {
    let (s, c) = (WsEcho::spawn("stable"), WsEcho::spawn("canary"));
    let weighted = |stable: u32, canary: u32| {
        cfg(s.addr, c.addr, "", "")
            .replace("weight = 50\nbackends", "weight = W\nbackends")
            .replacen("weight = W", &format!("weight = {stable}"), 1)
            .replacen("weight = W", &format!("weight = {canary}"), 1)
    };
    let px = Cohort::start_with_env(&weighted(100, 0), env);
    let user = [("x-user-id", "user-7")];
    let mut ws = WsClient::connect(px.addr, "/chat", &user);
    assert_eq!(ws.status, 101, "{carrier}");
    assert_eq!(ws.header("x-backend"), Some("stable"), "{carrier}");
    for i in 0..1000 {
        if i == 500 {
            px.rewrite(&weighted(0, 100));
            let (status, body) = px.post_reload();
            assert_eq!(status, 200, "{carrier}: {body}");
            let mut fresh = WsClient::connect(px.addr, "/chat", &user);
            assert_eq!(
                fresh.header("x-backend"),
                Some("canary"),
                "{carrier}: the reload applies to new connections"
            );
            assert_eq!(fresh.echo("new"), "canary: new");
            fresh.close();
        }
        assert_eq!(
            ws.echo(&format!("message {i}")),
            format!("stable: message {i}"),
            "{carrier}: every message, in order, on the variant it started on"
        );
        std::thread::sleep(Duration::from_millis(60));
    }
    assert_eq!(ws.close(), 8, "{carrier}");
}

/// SIGTERM with a WebSocket open: the connection keeps working through the drain and
/// `shutdown_timeout_secs`, then it is closed and cohort exits.
#[test]
fn on_sigterm_an_open_websocket_is_closed_after_the_shutdown_timeout() {
    let (s, c) = (WsEcho::spawn("stable"), WsEcho::spawn("canary"));
    let config = cfg(
        s.addr,
        c.addr,
        "drain_delay_secs = 1\nshutdown_timeout_secs = 2",
        "",
    );
    for (carrier, env) in CARRIERS {
        let mut px = Cohort::start_with_env(&config, env);
        let mut ws = WsClient::connect(px.addr, "/chat", &[("x-user-id", "user-1")]);
        assert_eq!(ws.status, 101, "{carrier}");
        assert!(ws.echo("before").ends_with(": before"));
        let signalled = Instant::now();
        px.signal("TERM");
        // Through the drain and into the shutdown timeout, the relay goes on.
        let mut last = String::new();
        while signalled.elapsed() < Duration::from_millis(1500) {
            last = ws.echo("during");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(last.ends_with(": during"), "{carrier}: {last}");
        // Then cohort closes it (the client reads the end of the stream, not its own
        // 20 s read timeout), once drain_delay_secs and shutdown_timeout_secs are over.
        assert!(ws.wait_closed(), "{carrier}: left open");
        assert!(
            signalled.elapsed() >= Duration::from_millis(2500),
            "{carrier}: closed after {:?}, before the shutdown timeout",
            signalled.elapsed()
        );
        assert_eq!(px.wait_exit(Duration::from_secs(15)), Some(0), "{carrier}");
    }
}
