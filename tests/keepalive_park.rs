#![allow(clippy::unwrap_used)]
//! Idle keep-alive connections parked off their task (src/fast/park.rs), through the
//! real binary: a parked connection is served again when its client sends, closed when
//! its keep-alive ends, and during a drain answered with `Connection: close` or closed at
//! the window's end. `COHORT_PARK_AFTER_MS` makes parking quick here (default 1 s).
//! Parking is the HTTP/1 engine's, so these tests pin the engine.

mod common;
use common::*;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const PARK_FAST: &[(&str, &str)] = &[("COHORT_FAST_PATH", "1"), ("COHORT_PARK_AFTER_MS", "100")];

fn config(b: &EchoBackend, server_extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"@LISTEN@\"]\nadmin = \"@ADMIN@\"\nthreads = 2\n{server_extra}\n[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"{}\"]\n",
        b.addr
    )
}

fn parked(px: &Cohort) -> u64 {
    px.status()["parked_connections"].as_u64().unwrap()
}

/// Waits until `/status` shows `n` parked connections.
fn wait_parked(px: &Cohort, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while parked(px) != n {
        assert!(
            Instant::now() < deadline,
            "parked_connections stayed {} (waited for {n})",
            parked(px)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the server closes `s` (a read returns end of file).
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    matches!(s.read(&mut byte), Ok(0))
}

#[test]
fn a_parked_connection_is_served_again_on_the_same_socket() {
    let b = backend("stable");
    let px = Cohort::start_with_env(&config(&b, ""), PARK_FAST);
    let mut cl = Client::never_retrying(px.addr);
    assert_eq!(parked(&px), 0);
    let r = cl.get("/one", &[("x-user-id", "u1")]);
    assert_eq!(r.status, 200);
    wait_parked(&px, 1);
    // The same socket, taken out of the lot: a client that never resends would fail if
    // the connection had been closed.
    for i in 0..3 {
        let r = cl
            .try_request("GET", &format!("/again/{i}"), &[("x-user-id", "u1")], b"")
            .expect("a parked connection answers");
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "stable");
        wait_parked(&px, 1);
    }
    // Closing a parked connection empties the lot.
    drop(cl);
    wait_parked(&px, 0);
}

#[test]
fn a_parked_connection_is_closed_when_its_keep_alive_ends() {
    let b = backend("stable");
    let px = Cohort::start_with_env(&config(&b, "keepalive_timeout_secs = 2"), PARK_FAST);
    let mut s = TcpStream::connect(px.addr).unwrap();
    let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
    std::io::Write::write_all(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-User-Id: u2\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut reader, false).unwrap().0.status, 200);
    wait_parked(&px, 1);
    let t0 = Instant::now();
    assert!(
        closed_by_server(&mut s, Duration::from_secs(8)),
        "the parked connection was not closed"
    );
    // Parked at ~0.1 s with 1.9 s of keep-alive left: closed in the bucket of that second.
    let idle = t0.elapsed();
    assert!(
        idle >= Duration::from_millis(500),
        "closed after {idle:?}, before its keep-alive ended"
    );
    wait_parked(&px, 0);
}

#[test]
fn draining_serves_a_parked_connection_with_close_and_closes_the_idle_ones_at_the_end() {
    let b = backend("stable");
    let cfg = config(&b, "drain_delay_secs = 2\nshutdown_timeout_secs = 5");
    let mut px = Cohort::start_with_env(&cfg, PARK_FAST);
    let mut active = Client::never_retrying(px.addr);
    assert_eq!(active.get("/", &[]).status, 200);
    let mut idle = TcpStream::connect(px.addr).unwrap();
    let mut reader = std::io::BufReader::new(idle.try_clone().unwrap());
    std::io::Write::write_all(&mut idle, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut reader, false).unwrap().0.status, 200);
    wait_parked(&px, 2);
    px.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    let r = active
        .try_request("GET", "/", &[], b"")
        .expect("a parked connection is served while draining");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"), "draining: close");
    // The other stays idle: closed by the end of the drain window, before the exit.
    assert!(
        closed_by_server(&mut idle, Duration::from_secs(10)),
        "the idle parked connection was not closed"
    );
    assert_eq!(px.wait_exit(Duration::from_secs(10)), Some(0));
}
