#![allow(clippy::unwrap_used)]
//! HTTP/2 to backends (a variant's `protocol`), through the real binary on both
//! carriers: an HTTP/1.1 client and an HTTP/2 client (TLS listener, ALPN) both reach an
//! h2c backend and an h2-over-TLS backend; requests are streams multiplexed on pooled
//! connections, with cohort's headers and the client's `Host` as `:authority`.

mod common;
use common::certs::TestCa;
use common::h2_backend::H2Echo;
use common::h2_client::h2_requests;
use common::*;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const CARRIERS: [(&str, &[(&str, &str)]); 2] = [("engine", ENGINE), ("pingora", PINGORA)];

/// A config with a TLS listener (certificate `leaf`) and one variant.
fn cfg(tls_port: u16, leaf: &common::certs::Leaf, backend: SocketAddr, variant: &str) -> String {
    format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 1\n[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"{}\"\nkey = \"{}\"\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\nexpose_header = \"x-variant\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"{backend}\"]\n{variant}\n",
        leaf.cert_pem.display(),
        leaf.key_pem.display()
    )
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} not listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// HTTP/1.1 and HTTP/2 clients through cohort to `b`; every request reaches it as an
/// HTTP/2 stream, all on one connection.
fn both_clients_reach(b: &H2Echo, px: &Cohort, tls_port: u16, carrier: &str) {
    let tls = SocketAddr::from(([127, 0, 0, 1], tls_port));
    wait_listening(tls);
    let mut c = px.client();
    for i in 0..4 {
        let r = c.request(
            "POST",
            &format!("/h1?i={i}"),
            &[("host", "shop.example.com"), ("x-user-id", "u1")],
            b"hello",
        );
        assert_eq!(r.status, 200, "{carrier}: {}", r.text());
        let j = r.json();
        assert_eq!(j["protocol"], "h2", "{carrier}");
        assert_eq!(j["target"], format!("/h1?i={i}"));
        assert_eq!(
            j["authority"], "shop.example.com",
            "{carrier}: Host as :authority"
        );
        assert_eq!(j["headers"]["x-cohort-variant"], "stable");
        assert_eq!(j["headers"]["x-forwarded-proto"], "http");
        assert_eq!(j["body_len"], 5);
        assert_eq!(r.header("x-variant"), Some("stable"));
    }
    let reqs: Vec<_> = (0..4)
        .map(|i| {
            (
                "GET",
                if i % 2 == 0 { "/h2/a" } else { "/h2/b" },
                vec![("x-user-id", "u2")],
                Vec::new(),
            )
        })
        .collect();
    for r in h2_requests(tls, &reqs) {
        assert_eq!(r.status, 200, "{carrier}");
        let j = r.json();
        assert_eq!(j["protocol"], "h2");
        assert_eq!(j["headers"]["x-forwarded-proto"], "https");
        assert_eq!(r.header("x-variant"), Some("stable"));
    }
    assert_eq!(b.shared.streams.load(Ordering::SeqCst), 8, "{carrier}");
    assert_eq!(
        b.shared.connections.load(Ordering::SeqCst),
        1,
        "{carrier}: eight streams on one pooled connection"
    );
}

#[test]
fn http1_and_http2_clients_reach_an_h2c_backend_on_one_pooled_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cohort test CA");
    let leaf = ca.server(dir.path(), "front", &["localhost"], true);
    for (carrier, env) in CARRIERS {
        let b = H2Echo::spawn("stable");
        let tls_port = free_port();
        let config = cfg(tls_port, &leaf, b.addr, "protocol = \"h2c\"");
        let px = Cohort::start_with_env(&config, env);
        both_clients_reach(&b, &px, tls_port, carrier);
    }
}

#[test]
fn http1_and_http2_clients_reach_an_h2_backend_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cohort test CA");
    let ca_pem = ca.write(dir.path(), "ca.pem");
    let leaf = ca.server(dir.path(), "front", &["localhost"], true);
    let backend_leaf = ca.server(dir.path(), "grpc", &["grpc.internal"], false);
    for (carrier, env) in CARRIERS {
        let b = H2Echo::spawn_tls("stable", &backend_leaf);
        let tls_port = free_port();
        let variant = format!(
            "protocol = \"h2\"\ntls = {{ sni = \"grpc.internal\", ca = \"{}\" }}",
            ca_pem.display()
        );
        let px = Cohort::start_with_env(&cfg(tls_port, &leaf, b.addr, &variant), env);
        both_clients_reach(&b, &px, tls_port, carrier);
    }
}

/// Concurrent HTTP/1.1 clients: their requests share the backend connection as streams.
#[test]
fn concurrent_requests_are_multiplexed_on_few_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cohort test CA");
    let leaf = ca.server(dir.path(), "front", &["localhost"], true);
    let b = H2Echo::spawn("stable");
    let config = cfg(free_port(), &leaf, b.addr, "protocol = \"h2c\"");
    let px = Cohort::start(&config);
    // One request first: the connection it opens is pooled, and the concurrent ones
    // below find it there.
    assert_eq!(px.client().get("/warm", &[]).status, 200);
    let statuses = parallel(
        48,
        8,
        |c, i| c.get(&format!("/p/{i}"), &[("x-user-id", "u")]).status,
        px.addr,
    );
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(b.shared.streams.load(Ordering::SeqCst), 49);
    let conns = b.shared.connections.load(Ordering::SeqCst);
    assert!(
        conns <= 2,
        "49 requests from 8 clients took {conns} connections"
    );
}

/// An HTTP/2 client connection opened while every variant speaks HTTP/1.1, then a
/// reload gives the variant an h2c backend. The HTTP/2 carrier (which speaks HTTP/1.1
/// upstream) refuses the next stream with `REFUSED_STREAM` (the client may send it
/// again) instead of answering it wrongly, and goes away; a new connection reaches the
/// h2c backend. On the Pingora carrier the old connection reaches it directly.
#[test]
fn an_http2_connection_opened_before_a_reload_to_h2c_never_gets_a_wrong_answer() {
    use common::h2_client::H2Conn;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cohort test CA");
    let leaf = ca.server(dir.path(), "front", &["localhost"], true);
    for (carrier, env) in CARRIERS {
        let h1 = backend("old");
        let h2c = H2Echo::spawn("new");
        let tls_port = free_port();
        let tls = SocketAddr::from(([127, 0, 0, 1], tls_port));
        let px = Cohort::start_with_env(&cfg(tls_port, &leaf, h1.addr, ""), env);
        wait_listening(tls);
        let get = ("GET", "/x", vec![("x-user-id", "u1")], Vec::new());
        let mut old = H2Conn::open(tls);
        let r = old.request(&get).unwrap();
        assert_eq!(r.status, 200, "{carrier}");
        assert_eq!(r.json()["backend"], "old", "{carrier}");

        px.rewrite(&cfg(tls_port, &leaf, h2c.addr, "protocol = \"h2c\""));
        let (status, body) = px.post_reload();
        assert_eq!(status, 200, "{carrier}: {body}");

        match old.request(&get) {
            Ok(r) => {
                assert_eq!(carrier, "pingora", "the engine answered {r:?}");
                assert_eq!(r.status, 200, "{carrier}");
                assert_eq!(r.json()["protocol"], "h2", "{carrier}");
            }
            Err(e) => {
                assert_eq!(carrier, "engine", "pingora failed the stream: {e}");
                assert_eq!(
                    e.reason(),
                    Some(h2::Reason::REFUSED_STREAM),
                    "refused, not failed: {e}"
                );
            }
        }
        if carrier == "engine" {
            // The connection is going away: another stream is refused again or not
            // opened at all, never answered over HTTP/1.1.
            let again = old.request(&get);
            assert!(again.is_err(), "{carrier}: {again:?}");
        }
        // A new connection reaches the h2c backend.
        let r = H2Conn::open(tls).request(&get).unwrap();
        assert_eq!(r.status, 200, "{carrier}");
        assert_eq!(r.json()["protocol"], "h2", "{carrier}");
        assert_eq!(r.json()["backend"], "new", "{carrier}");
        assert!(h2c.shared.streams.load(Ordering::SeqCst) >= 1, "{carrier}");
    }
}
