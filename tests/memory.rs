#![allow(clippy::unwrap_used)]
//! Memory per idle keep-alive connection, counted on the real binary: N clients each send
//! one request and stay open; the process's `VmRSS` growth divided by N has an upper
//! bound, plaintext and TLS. The bounds carry a wide margin for allocator noise and for
//! the debug build these tests run (BENCHMARKS.md "Memory" has the release figures and
//! NGINX's). They catch a per-connection buffer coming back: Pingora's 64 KiB socket
//! read buffer on TLS listeners was 100 KiB per idle TLS connection, and the engine's
//! 4 KiB read buffer, held by every idle connection until issue 18, 5.2 KiB per idle
//! plaintext connection.

mod common;
use common::*;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::{X509NameBuilder, X509};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// Idle connections opened per measurement (more connections, less RSS noise per one).
const N: usize = 1000;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A self-signed ECDSA P-256 certificate, as the peer benchmarks use.
fn write_cert(dir: &Path) {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    std::fs::write(dir.join("tls.crt"), b.build().to_pem().unwrap()).unwrap();
    std::fs::write(dir.join("tls.key"), key.private_key_to_pem_pkcs8().unwrap()).unwrap();
}

/// Sends one request on `s` and reads its response head and `Content-Length` body.
fn one_request<S: Read + Write>(s: S) -> BufReader<S> {
    let mut r = BufReader::new(s);
    r.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nx-user-id: u1\r\n\r\n")
        .unwrap();
    let mut len = 0;
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    r
}

fn start() -> (Cohort, u16, EchoBackend) {
    let s = backend("stable");
    let tls_port = free_port();
    let cfg = format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 2\n[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"@DIR@/tls.crt\"\nkey = \"@DIR@/tls.key\"\n\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"{}\"]\n",
        s.addr
    );
    let px = Cohort::start_prepared(&cfg, write_cert);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "TLS listener not up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (px, tls_port, s)
}

/// RSS growth per connection while `open` holds idle connections, after a warm-up batch
/// (so thread caches and the upstream pool are in place before counting): two batches of
/// `N / 2`, opened one after the other and both held, and the smaller growth of the two.
/// The allocator now and then maps a new segment of several MiB at once, which lands in
/// one batch only; memory held per connection shows in both.
fn per_connection<T>(px: &Cohort, open: impl Fn() -> T) -> u64 {
    let warm: Vec<T> = (0..50).map(|_| open()).collect();
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let mut held = Vec::new();
    let mut growth = Vec::new();
    for _ in 0..2 {
        let before = rss_kib(px.pid());
        held.extend((0..N / 2).map(|_| open()));
        std::thread::sleep(Duration::from_millis(300));
        growth.push(rss_kib(px.pid()).saturating_sub(before));
    }
    drop(held);
    let least = growth.iter().copied().min().unwrap_or(0);
    least * 1024 / (N / 2) as u64
}

#[test]
fn an_idle_plaintext_connection_costs_under_4_kib() {
    let (px, _, _s) = start();
    let bytes = per_connection(&px, || one_request(TcpStream::connect(px.addr).unwrap()));
    eprintln!(
        "plaintext: {bytes} B per idle connection (engine on: {})",
        engine_on()
    );
    // Release build: about 1.4 KiB on the engine (BENCHMARKS.md, memory); here 0 to
    // 2 KiB (mimalloc returns freed pages while the connections open, which offsets some
    // growth). The bound fails with a 4 KiB buffer held per idle connection (5.2 KiB
    // before issue 18). Pingora's carrier holds its 4 KiB read buffer and session too.
    let bound = if engine_on() { 4 * 1024 } else { 48 * 1024 };
    assert!(bytes < bound, "{bytes} B per idle plaintext connection");
}

#[test]
fn an_idle_tls_connection_costs_under_40_kib() {
    let (px, tls_port, _s) = start();
    let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
    c.set_verify(SslVerifyMode::NONE);
    c.set_alpn_protos(b"\x08http/1.1").unwrap();
    let c = c.build();
    let bytes = per_connection(&px, || {
        let tcp = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
        one_request(c.connect("localhost", tcp).unwrap())
    });
    eprintln!(
        "TLS: {bytes} B per idle connection (engine on: {})",
        engine_on()
    );
    // Release build: about 23 KiB (NGINX 14 KiB, BENCHMARKS.md); 100 KiB before the
    // socket read buffer and OpenSSL's buffers were released while idle.
    let bound = if engine_on() { 40 * 1024 } else { 96 * 1024 };
    assert!(bytes < bound, "{bytes} B per idle TLS connection");
}
