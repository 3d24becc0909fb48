#![allow(clippy::unwrap_used)]
//! Peers that stall. A client that stops reading a response is disconnected after
//! `server.client_write_timeout_secs`, and an upstream that stops taking a request body
//! counts as an upstream timeout after the variant's `read_timeout_ms`. An idle
//! keep-alive connection closes after `server.keepalive_timeout_secs`. Each runs on the
//! fast path and, with `COHORT_FAST_PATH=0`, on the Pingora proxy. A client that sends a
//! request head too slowly (a byte at a time, or nothing at all) is disconnected once
//! `server.client_header_timeout_secs` have passed since the head started, however often
//! it sends a byte (plaintext listeners: the fast path). Without these, a peer could hold
//! a connection, its buffers and (for a client that stops reading) an upstream connection
//! for ever.
//!
//! Upstreams are raw servers on 127.0.0.1 written here: one streams a 256 MiB response as
//! fast as its client takes it, one accepts a request and reads nothing for 4 s.

mod common;
use common::*;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Size of the flood upstream's response: far more than any socket buffers hold.
const FLOOD: u64 = 256 << 20;

/// What an upstream connection saw.
#[derive(Debug, Default)]
struct Seen {
    accepted: usize,
    /// Set when the proxy closed the connection: for the flood upstream, when a write of
    /// the response failed; for the sink, when reading found the end.
    closed_after: Option<Duration>,
}

/// An upstream on 127.0.0.1 that runs `serve` on its own thread for each connection;
/// `serve` says whether it saw the proxy close the connection.
fn upstream(serve: fn(&mut TcpStream) -> bool) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let s = s.clone();
            thread::spawn(move || {
                let start = Instant::now();
                s.lock().unwrap().accepted += 1;
                if serve(&mut c) {
                    s.lock().unwrap().closed_after = Some(start.elapsed());
                }
            });
        }
    });
    (addr, seen)
}

/// Answers a request with a `FLOOD`-byte response, written until the proxy stops taking
/// it (then a write fails: the proxy closed the connection).
fn flood(c: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return false,
        }
    }
    let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Length: {FLOOD}\r\n\r\n");
    let piece = vec![b'x'; 64 << 10];
    (0..FLOOD / piece.len() as u64).any(|_| c.write_all(&piece).is_err())
}

/// Reads nothing for 4 s, then reads to the end of the connection to learn whether the
/// proxy closed it.
fn sink(c: &mut TcpStream) -> bool {
    thread::sleep(Duration::from_secs(4));
    ends(c)
}

fn config(upstream: SocketAddr, other: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["@LISTEN@"]
admin = "@ADMIN@"
threads = 1
client_write_timeout_secs = 1
client_header_timeout_secs = 2
keepalive_timeout_secs = 2

[[service]]
name = "api"
path_prefix = "/api"
key = ["header:x-user-id"]

[[service.variant]]
name = "stable"
weight = 1
backends = ["{upstream}"]
read_timeout_ms = 1000

[[service]]
name = "other"
key = ["header:x-user-id"]

[[service.variant]]
name = "stable"
weight = 1
backends = ["{other}"]
"#
    )
}

fn start(upstream: SocketAddr, other: SocketAddr, fast_path: bool) -> Cohort {
    let env = if fast_path { ENGINE } else { PINGORA };
    Cohort::start_with_env(&config(upstream, other), env)
}

/// Waits up to `limit` for `seen` to record the proxy closing the upstream connection.
fn closed_within(seen: &Mutex<Seen>, limit: Duration) -> Option<Duration> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(d) = seen.lock().unwrap().closed_after {
            return Some(d);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Reads what is left on `c` until the proxy's close shows; `false` if the connection was
/// still open after 10 s of silence.
fn ends(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn a_client_that_stops_reading_is_disconnected(fast_path: bool) {
    let (up, seen) = upstream(flood);
    let other = backend("other");
    let cohort = start(up, other.addr, fast_path);
    let mut c = TcpStream::connect(cohort.addr).unwrap();
    c.write_all(b"GET /api/big HTTP/1.1\r\nHost: x\r\nx-user-id: u1\r\n\r\n")
        .unwrap();
    // The client reads nothing. Socket buffers fill within milliseconds; one second later
    // the proxy gives up on the client and drops the upstream connection with it.
    let closed = closed_within(&seen, Duration::from_secs(20));
    assert!(
        closed.is_some(),
        "the upstream connection was still open 20 s after the client stopped reading \
         (fast path: {fast_path})"
    );
    assert_eq!(seen.lock().unwrap().accepted, 1);
    assert!(ends(&mut c), "the client connection was not closed");
    // The process still serves.
    let r = cohort.client().get("/", &[("x-user-id", "u2")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "other");
}

fn an_upstream_that_stops_reading_the_request_times_out(fast_path: bool) {
    let (up, seen) = upstream(sink);
    let other = backend("other");
    let cohort = start(up, other.addr, fast_path);
    let mut c = TcpStream::connect(cohort.addr).unwrap();
    let body_len: usize = 64 << 20;
    c.write_all(
        format!(
            "POST /api/upload HTTP/1.1\r\nHost: x\r\nx-user-id: u1\r\nContent-Length: {body_len}\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut writer = c.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let piece = vec![b'y'; 64 << 10];
        let mut sent = 0;
        while sent < body_len {
            if writer.write_all(&piece).is_err() {
                break;
            }
            sent += piece.len();
        }
        sent
    });
    // The upstream takes nothing for 4 s; after `read_timeout_ms` (1 s) of no progress
    // the proxy gives up, so when the upstream finally reads, it finds the end.
    let closed = closed_within(&seen, Duration::from_secs(20));
    assert!(
        closed.is_some(),
        "the proxy kept writing to an upstream that took nothing (fast path: {fast_path})"
    );
    assert!(ends(&mut c), "the client connection was not closed");
    let sent = sender.join().unwrap();
    assert!(sent < body_len, "the whole body went through: {sent} bytes");
    let metrics = cohort.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cohort_upstream_errors_total")
                && l.contains("service=\"api\"")
                && l.contains("kind=\"timeout\"")
                && !l.ends_with(" 0")),
        "no upstream timeout counted:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("cohort_upstream_errors_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let r = cohort.client().get("/", &[("x-user-id", "u2")]);
    assert_eq!(r.status, 200);
}

#[test]
fn fast_path_disconnects_a_client_that_stops_reading() {
    a_client_that_stops_reading_is_disconnected(true);
}

#[test]
fn pingora_proxy_disconnects_a_client_that_stops_reading() {
    a_client_that_stops_reading_is_disconnected(false);
}

#[test]
fn fast_path_times_out_an_upstream_that_stops_reading() {
    an_upstream_that_stops_reading_the_request_times_out(true);
}

#[test]
fn pingora_proxy_times_out_an_upstream_that_stops_reading() {
    an_upstream_that_stops_reading_the_request_times_out(false);
}

/// Sends `first`, then one byte of a header value every 300 ms for up to 12 s, until the
/// proxy closes the connection. Returns how long after connecting that was, or `None`.
fn dribble(addr: SocketAddr, first: &[u8]) -> Option<Duration> {
    let start = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    if c.write_all(first).is_err() {
        return Some(start.elapsed());
    }
    let mut buf = [0u8; 256];
    while start.elapsed() < Duration::from_secs(12) {
        if c.write_all(b"a").is_err() {
            return Some(start.elapsed());
        }
        match c.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(n) => panic!(
                "an answer to an unfinished head: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Engine only: the Pingora carrier times out each read of a head (60 s), not the whole
/// head, and no Pingora setting reaches the first head before it is read.
#[test]
fn a_request_head_sent_a_byte_at_a_time_is_cut_off_at_the_header_timeout() {
    let other = backend("other");
    let cohort = start(closed_addr(), other.addr, true);
    // Each byte arrives well within 2 s of the one before, so only a deadline for the
    // whole head (2 s from connecting) ends it.
    let ended = dribble(cohort.addr, b"GET / HTTP/1.1\r\nHost: x\r\nx-pad: ");
    let ended = ended.expect("a head sent a byte every 300 ms was still being read after 12 s");
    assert!(
        ended >= Duration::from_millis(1500),
        "closed after {ended:?}, before the 2 s header timeout"
    );
    // The same for the next request on a keep-alive connection: its 2 s start with its
    // first byte.
    let mut c = TcpStream::connect(cohort.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = std::io::BufReader::new(c.try_clone().unwrap());
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nx-user-id: u1\r\n\r\n")
        .unwrap();
    let (resp, _) = read_response(&mut r, false).unwrap();
    assert_eq!(resp.status, 200);
    // Idle between requests (under the 2 s keep-alive timeout): not the head's time.
    thread::sleep(Duration::from_millis(1500));
    let ended = trickle_head(&mut c, b"GET / HTTP/1.1\r\n");
    let ended = ended.expect("the second head was still being read after 12 s");
    assert!(
        ended >= Duration::from_millis(1500),
        "closed after {ended:?}"
    );
    // A client that connects and sends nothing is closed as well.
    let mut quiet = TcpStream::connect(cohort.addr).unwrap();
    quiet
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match quiet.read(&mut [0u8; 16]) {
        Ok(0) => {}
        Ok(n) => panic!("a silent client got {n} bytes"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("a silent client was still connected after 10 s")
        }
        Err(_) => {}
    }
    // A slow head that completes in time is served.
    let mut slow = TcpStream::connect(cohort.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for part in [
        &b"GET / HT"[..],
        b"TP/1.1\r\nHost: x\r\n",
        b"x-user-id: u2\r\n",
        b"\r\n",
    ] {
        slow.write_all(part).unwrap();
        thread::sleep(Duration::from_millis(250));
    }
    let (resp, _) = read_response(&mut std::io::BufReader::new(slow), false).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.backend(), "other");
}

fn an_idle_keep_alive_connection_closes_after_the_keepalive_timeout(fast_path: bool) {
    let other = backend("other");
    let cohort = start(closed_addr(), other.addr, fast_path);
    let c = TcpStream::connect(cohort.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = std::io::BufReader::new(c.try_clone().unwrap());
    let mut ask = |user: &str| {
        (&c).write_all(
            format!("GET / HTTP/1.1\r\nHost: x\r\nx-user-id: {user}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let (resp, _) = read_response(&mut r, false).unwrap();
        assert_eq!(resp.status, 200);
    };
    ask("u1");
    // Idle for less than the 2 s keep-alive timeout: the connection still serves.
    thread::sleep(Duration::from_secs(1));
    ask("u2");
    let idle_from = Instant::now();
    let mut buf = [0u8; 16];
    let end = r.get_mut().read(&mut buf);
    let idle = idle_from.elapsed();
    match end {
        Ok(0) => {}
        other => {
            panic!("an idle connection gave {other:?} after {idle:?} (fast path: {fast_path})")
        }
    }
    assert!(
        idle >= Duration::from_millis(1500),
        "closed after {idle:?} idle, before the 2 s keep-alive timeout (fast path: {fast_path})"
    );
}

#[test]
fn fast_path_closes_idle_keep_alive_connections_after_the_keepalive_timeout() {
    an_idle_keep_alive_connection_closes_after_the_keepalive_timeout(true);
}

#[test]
fn pingora_proxy_closes_idle_keep_alive_connections_after_the_keepalive_timeout() {
    an_idle_keep_alive_connection_closes_after_the_keepalive_timeout(false);
}

/// A request the engine hands to the Pingora carrier (here a chunked body) is the only
/// one Pingora reads: the engine takes the connection back after it, so the next request
/// head on that connection is read under the engine's limits. Before, Pingora served the
/// rest of the connection, waiting 60 s per read for a head of up to 1 MiB. Engine only
/// (the hand-over is the engine's).
#[test]
fn after_a_hand_over_the_engine_reads_the_next_head_under_its_limits() {
    let other = backend("other");
    let cohort = start(closed_addr(), other.addr, true);
    // Pingora writes `Connection: keep-alive` in that spelling; the engine writes none.
    let by_pingora = |r: &Response| r.headers.iter().any(|(k, _)| k == "Connection");
    let chunked = "POST /c HTTP/1.1\r\nHost: x\r\nx-user-id: u1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
    let connect = || {
        let c = TcpStream::connect(cohort.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = std::io::BufReader::new(c.try_clone().unwrap());
        (c, r)
    };

    // A request pipelined behind the handed-over one is answered, in order, by the engine.
    let (mut c, mut r) = connect();
    let get = "GET /after HTTP/1.1\r\nHost: x\r\nx-user-id: u1\r\n\r\n";
    c.write_all(format!("{chunked}{get}").as_bytes()).unwrap();
    let (first, keep) = read_response(&mut r, false).unwrap();
    assert_eq!(first.status, 200, "{first:?}");
    assert!(keep && by_pingora(&first), "handed over: {first:?}");
    let (second, _) = read_response(&mut r, false).unwrap();
    assert_eq!(second.status, 200, "{second:?}");
    assert!(!by_pingora(&second), "the engine again: {second:?}");
    assert_eq!(second.backend(), "other");
    // And the one after that, sent on its own.
    c.write_all(get.as_bytes()).unwrap();
    let (third, _) = read_response(&mut r, false).unwrap();
    assert!(third.status == 200 && !by_pingora(&third), "{third:?}");

    // A head over `max_request_head_bytes` (32 KiB) after a hand-over: 431 at once.
    let (mut c, mut r) = connect();
    c.write_all(chunked.as_bytes()).unwrap();
    let (first, _) = read_response(&mut r, false).unwrap();
    assert!(first.status == 200 && by_pingora(&first), "{first:?}");
    let mut big = b"GET /big HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..5 {
        big.extend_from_slice(format!("x-long-{i}: {}\r\n", "a".repeat(8000)).as_bytes());
    }
    c.write_all(&big).unwrap();
    let (resp, keep) = read_response(&mut r, false).expect("an answer, not a wait");
    assert_eq!(resp.status, 431, "{resp:?}");
    assert!(!keep, "closed after the 431");

    // A head trickled in after a hand-over: cut off at the 2 s header timeout, however
    // often a byte arrives.
    let (mut c, mut r) = connect();
    c.write_all(chunked.as_bytes()).unwrap();
    let (first, _) = read_response(&mut r, false).unwrap();
    assert!(first.status == 200 && by_pingora(&first), "{first:?}");
    let ended = trickle_head(&mut c, b"GET /slow HTTP/1.1\r\nHost: x\r\n");
    let ended = ended.expect("the head after a hand-over was still being read after 12 s");
    assert!(
        ended >= Duration::from_millis(1500),
        "closed after {ended:?}"
    );
}

/// On an open connection, sends `start` of a head, then a header line every 300 ms for up
/// to 12 s, until the proxy closes the connection. Returns how long after `start` that
/// was, or `None`.
fn trickle_head(c: &mut TcpStream, start: &[u8]) -> Option<Duration> {
    c.write_all(start).unwrap();
    let t = Instant::now();
    c.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    while t.elapsed() < Duration::from_secs(12) {
        thread::sleep(Duration::from_millis(300));
        if c.write_all(b"x-pad: a\r\n").is_err() {
            return Some(t.elapsed());
        }
        match c.read(&mut [0u8; 64]) {
            Ok(0) => return Some(t.elapsed()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("unexpected read on an unfinished head: {other:?}"),
        }
    }
    None
}
