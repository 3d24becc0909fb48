#![allow(clippy::unwrap_used)]
//! HTTPS backends (a variant's `tls`) through the real binary, on both carriers: a TLS
//! echo backend on 127.0.0.1 with a certificate from a CA made in the test; SNI and
//! `Host` (kept, or `host_header`), pooled connections, certificates from another CA
//! and names they do not cover (502, `kind="tls"`, logged with the reason), `verify =
//! false` (works, `cohort check` warns), client certificates, health checks over TLS,
//! and config errors with their field paths.

mod common;
use common::certs::TestCa;
use common::tls_backend::TlsEcho;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const CARRIERS: [(&str, &[(&str, &str)]); 2] = [("engine", ENGINE), ("pingora", PINGORA)];

fn cfg(backend: &str, variant_extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 1\n[[service]]\nname = \"api\"\nexpose_header = \"x-variant\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"{backend}\"]\n{variant_extra}\n"
    )
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn metric(px: &Cohort, series: &str) -> f64 {
    let text = px.metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

#[test]
fn an_https_backend_gets_the_sni_and_the_clients_host_over_one_pooled_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cohort test CA");
    let ca_pem = ca.write(dir.path(), "ca.pem");
    let leaf = ca.server(dir.path(), "api", &["api.internal"], false);
    for (carrier, env) in CARRIERS {
        let b = TlsEcho::spawn("stable", &leaf, None);
        let extra = format!(
            "tls = {{ sni = \"api.internal\", ca = \"{}\" }}",
            path(&ca_pem)
        );
        let px = Cohort::start_with_env(&cfg(&b.addr.to_string(), &extra), env);
        let mut c = px.client();
        for i in 0..5 {
            let r = c.get(&format!("/x?i={i}"), &[("host", "shop.example.com")]);
            assert_eq!(r.status, 200, "{carrier}: {}", r.text());
            let j = r.json();
            assert_eq!(j["sni"], "api.internal", "{carrier}");
            assert_eq!(
                j["headers"]["host"], "shop.example.com",
                "{carrier}: Host kept"
            );
            assert_eq!(j["headers"]["x-cohort-variant"], "stable", "{carrier}");
            assert_eq!(j["target"], format!("/x?i={i}"), "{carrier}");
        }
        assert_eq!(
            b.handshakes.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{carrier}: five requests, one pooled TLS connection"
        );
    }
}

#[test]
fn host_header_replaces_host_and_names_the_backend_for_sni() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cohort test CA");
    let ca_pem = ca.write(dir.path(), "ca.pem");
    let leaf = ca.server(dir.path(), "gw", &["abc123.execute-api.test"], false);
    for (carrier, env) in CARRIERS {
        let b = TlsEcho::spawn("stable", &leaf, None);
        let extra = format!(
            "host_header = \"abc123.execute-api.test\"\ntls = {{ ca = \"{}\" }}",
            path(&ca_pem)
        );
        let px = Cohort::start_with_env(&cfg(&b.addr.to_string(), &extra), env);
        let r = px.client().get("/", &[("host", "shop.example.com")]);
        assert_eq!(r.status, 200, "{carrier}: {}", r.text());
        let j = r.json();
        assert_eq!(j["headers"]["host"], "abc123.execute-api.test", "{carrier}");
        assert_eq!(j["sni"], "abc123.execute-api.test", "{carrier}");
    }
}

#[test]
fn a_host_header_on_a_plaintext_variant_replaces_host_only_there() {
    let s = backend("stable");
    let c = backend("canary");
    let config = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\n[[service]]\nname = \"api\"\nforce_header = \"x-force\"\nforce_from = [\"127.0.0.0/8\"]\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"{}\"]\n[[service.variant]]\nname = \"canary\"\nweight = 0\nbackends = [\"{}\"]\nhost_header = \"canary.internal:8080\"\n",
        s.addr, c.addr
    );
    for (carrier, env) in CARRIERS {
        let px = Cohort::start_with_env(&config, env);
        let mut cl = px.client();
        let r = cl.get("/", &[("host", "shop.example.com")]);
        assert_eq!(r.backend(), "stable", "{carrier}");
        assert_eq!(r.upstream_header("host").unwrap(), "shop.example.com");
        let r = cl.get("/", &[("host", "shop.example.com"), ("x-force", "canary")]);
        assert_eq!(r.backend(), "canary", "{carrier}");
        assert_eq!(r.upstream_header("host").unwrap(), "canary.internal:8080");
        let r = cl.get("/", &[("host", "shop.example.com")]);
        assert_eq!(r.upstream_header("host").unwrap(), "shop.example.com");
    }
}

/// A certificate the CA did not sign, and a name the certificate does not cover: each a
/// 502, counted as `kind="tls"`, and logged with OpenSSL's reason.
#[test]
fn untrusted_certificates_and_wrong_names_are_502_counted_as_tls_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cohort test CA");
    let other = TestCa::new("someone else's CA");
    let ca_pem = ca.write(dir.path(), "ca.pem");
    let foreign = other.server(dir.path(), "foreign", &["api.internal"], false);
    let good = ca.server(dir.path(), "good", &["api.internal"], false);
    for (carrier, env) in CARRIERS {
        // The engine logs OpenSSL's verify result; Pingora's error says less.
        let detail = |why| if carrier == "engine" { why } else { "" };
        for (leaf, sni, why) in [
            (
                &foreign,
                "api.internal",
                detail("unable to get local issuer certificate"),
            ),
            (&good, "wrong.internal", detail("hostname mismatch")),
        ] {
            let b = TlsEcho::spawn("stable", leaf, None);
            let extra = format!("tls = {{ sni = \"{sni}\", ca = \"{}\" }}", path(&ca_pem));
            let px = Cohort::start_with_env(&cfg(&b.addr.to_string(), &extra), env);
            let r = px.client().get("/", &[]);
            assert_eq!(r.status, 502, "{carrier} {sni}: {}", r.text());
            assert_eq!(r.header("x-variant"), Some("stable"));
            assert_eq!(b.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
            let series =
                r#"cohort_upstream_errors_total{kind="tls",service="api",variant="stable"}"#;
            assert!(
                wait_until(Duration::from_secs(3), || metric(&px, series) == 1.0),
                "{carrier} {sni}: {}",
                px.metrics()
            );
            assert!(
                wait_until(Duration::from_secs(3), || {
                    let log = px.stderr();
                    log.contains("upstream TLS handshake with")
                        && log.contains("certificate verify failed")
                        && log.contains(why)
                }),
                "{carrier} {sni}: {}",
                px.stderr()
            );
        }
    }
}

#[test]
fn verify_false_accepts_any_certificate_and_check_warns() {
    let dir = tempfile::tempdir().unwrap();
    let other = TestCa::new("unknown CA");
    let leaf = other.server(dir.path(), "any", &["whatever.test"], false);
    let b = TlsEcho::spawn("stable", &leaf, None);
    let config = cfg(&b.addr.to_string(), "tls = { verify = false }");
    for (carrier, env) in CARRIERS {
        let px = Cohort::start_with_env(&config, env);
        let r = px.client().get("/", &[]);
        assert_eq!(r.status, 200, "{carrier}: {}", r.text());
        assert_eq!(r.json()["sni"], serde_json::Value::Null, "no SNI for an IP");
    }
    let file = dir.path().join("cohort.toml");
    std::fs::write(
        &file,
        render(&config, closed_addr(), closed_addr(), dir.path()),
    )
    .unwrap();
    let (code, out, err) = cohort_cmd(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: service[0].variant[0].tls.verify: false"),
        "{err}"
    );
}

#[test]
fn a_client_certificate_is_presented_to_backends_that_ask_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cohort test CA");
    let ca_pem = ca.write(dir.path(), "ca.pem");
    let leaf = ca.server(dir.path(), "api", &["api.internal"], false);
    let client = ca.client(dir.path(), "client", "cohort-proxy");
    for (carrier, env) in CARRIERS {
        let b = TlsEcho::spawn("stable", &leaf, Some(&ca));
        let with = format!(
            "tls = {{ sni = \"api.internal\", ca = \"{}\", client_cert = \"{}\", client_key = \"{}\" }}",
            path(&ca_pem),
            path(&client.cert_pem),
            path(&client.key_pem)
        );
        let px = Cohort::start_with_env(&cfg(&b.addr.to_string(), &with), env);
        let r = px.client().get("/", &[]);
        assert_eq!(r.status, 200, "{carrier}: {}", r.text());
        assert_eq!(r.json()["client_cn"], "cohort-proxy", "{carrier}");
        drop(px);
        let without = format!(
            "tls = {{ sni = \"api.internal\", ca = \"{}\" }}",
            path(&ca_pem)
        );
        let px = Cohort::start_with_env(&cfg(&b.addr.to_string(), &without), env);
        assert_eq!(px.client().get("/", &[]).status, 502, "{carrier}");
    }
}

/// Health checks speak TLS with the variant's settings: a backend whose certificate
/// verifies is probed (and stays up); one whose certificate does not is marked down.
#[test]
fn health_checks_use_the_variants_tls_settings() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cohort test CA");
    let other = TestCa::new("someone else's CA");
    let ca_pem = ca.write(dir.path(), "ca.pem");
    let good = TlsEcho::spawn(
        "good",
        &ca.server(dir.path(), "good", &["api.internal"], false),
        None,
    );
    let bad = TlsEcho::spawn(
        "bad",
        &other.server(dir.path(), "bad", &["api.internal"], false),
        None,
    );
    let config = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\n[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"{}\", \"{}\"]\ntls = {{ sni = \"api.internal\", ca = \"{}\" }}\nhealth_check = {{ path = \"/healthz\", interval_ms = 100, timeout_ms = 1000, unhealthy_after = 2, healthy_after = 1 }}\n",
        good.addr,
        bad.addr,
        path(&ca_pem)
    );
    let px = Cohort::start(&config);
    let health = |addr: std::net::SocketAddr| {
        let s = px.status();
        s["services"][0]["variants"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["addr"] == addr.to_string())
            .map(|b| b["healthy"].as_bool().unwrap())
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(10), || !health(bad.addr)),
        "the backend with an untrusted certificate is marked down: {}",
        px.status()
    );
    assert!(health(good.addr));
    assert!(wait_until(Duration::from_secs(5), || good
        .requests
        .load(std::sync::atomic::Ordering::SeqCst)
        >= 2));
    assert!(health(good.addr), "probed over TLS and healthy");
    for _ in 0..4 {
        let r = px.client().get("/", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["backend"], "good");
    }
}

#[test]
fn tls_and_protocol_mistakes_are_config_errors_with_their_field_paths() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, backend, want) in [
        (
            "tls = { sni = \"a.internal\", ca = \"/nonexistent/ca.pem\" }",
            "127.0.0.1:9",
            "service[0].variant[0].tls.ca: /nonexistent/ca.pem",
        ),
        (
            "tls = { sni = \"a.internal\", client_cert = \"/x.crt\" }",
            "127.0.0.1:9",
            "service[0].variant[0].tls.client_key: required with client_cert",
        ),
        (
            "tls = {}",
            "127.0.0.1:9",
            "service[0].variant[0].backends[0]: \"127.0.0.1:9\" is an IP address",
        ),
        (
            "tls = { verfy = false }",
            "127.0.0.1:9",
            "unknown field `verfy`",
        ),
        (
            "protocol = \"h2\"",
            "127.0.0.1:9",
            "service[0].variant[0].protocol: \"h2\" is HTTP/2 over TLS",
        ),
        (
            "protocol = \"h3\"",
            "127.0.0.1:9",
            "service[0].variant[0].protocol: \"h3\": expected h1, h2c or h2",
        ),
        (
            "host_header = \"a b\"",
            "127.0.0.1:9",
            "service[0].variant[0].host_header",
        ),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(
            &file,
            render(
                &cfg(backend, extra),
                closed_addr(),
                closed_addr(),
                dir.path(),
            ),
        )
        .unwrap();
        let (code, out, err) = cohort_cmd(&["check", "-c", file.to_str().unwrap()]);
        assert_eq!(code, 1, "{extra}: {out}{err}");
        assert!(err.contains(want), "{extra}: want {want:?} in {err}");
    }
}

/// HTTP/2 clients (TLS listener, ALPN `h2`) to an HTTPS HTTP/1.1 backend with
/// `host_header`: on the engine's HTTP/2 carrier and on Pingora's, every stream reaches
/// the backend with the variant's `Host` and SNI, over one pooled TLS connection.
#[test]
fn http2_clients_reach_an_https_backend_with_its_host_over_one_pooled_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cohort test CA");
    let ca_pem = ca.write(dir.path(), "ca.pem");
    let front = ca.server(dir.path(), "front", &["localhost"], true);
    let leaf = ca.server(dir.path(), "gw", &["abc123.execute-api.test"], false);
    let h2_carriers: [(&str, &[(&str, &str)]); 2] = [
        ("engine's HTTP/2 carrier", ENGINE),
        ("pingora", &[("COHORT_H2_CARRIER", "0")]),
    ];
    for (carrier, env) in h2_carriers {
        let b = TlsEcho::spawn("stable", &leaf, None);
        let tls_port = free_port();
        let config = format!(
            "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 1\n[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"{}\"\nkey = \"{}\"\n[[service]]\nname = \"api\"\nexpose_header = \"x-variant\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"{}\"]\nhost_header = \"abc123.execute-api.test\"\ntls = {{ ca = \"{}\" }}\n",
            front.cert_pem.display(),
            front.key_pem.display(),
            b.addr,
            path(&ca_pem)
        );
        let _px = Cohort::start_with_env(&config, env);
        let tls = std::net::SocketAddr::from(([127, 0, 0, 1], tls_port));
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
                tls
            )
            .is_ok()),
            "{carrier}: {tls} not listening"
        );
        let reqs: Vec<_> = (0..4)
            .map(|i| {
                (
                    "GET",
                    if i % 2 == 0 { "/a" } else { "/b" },
                    vec![],
                    Vec::new(),
                )
            })
            .collect();
        for r in common::h2_client::h2_requests(tls, &reqs) {
            assert_eq!(r.status, 200, "{carrier}");
            let j = r.json();
            assert_eq!(j["headers"]["host"], "abc123.execute-api.test", "{carrier}");
            assert_eq!(j["sni"], "abc123.execute-api.test", "{carrier}");
            assert_eq!(j["headers"]["x-forwarded-proto"], "https", "{carrier}");
            assert_eq!(r.header("x-variant"), Some("stable"), "{carrier}");
        }
        assert_eq!(
            b.handshakes.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{carrier}: four streams, one pooled TLS connection"
        );
    }
}
