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
