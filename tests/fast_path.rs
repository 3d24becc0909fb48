#![allow(clippy::unwrap_used)]
//! The HTTP/1.1 fast path on plaintext listeners (`src/fast`): response framing by
//! chunked coding and by close, the per-thread upstream pool and its stale-connection
//! retry, streamed request bodies with a pipelined request behind them, hand-over to
//! Pingora for requests it does not take, and `COHORT_FAST_PATH=0`.
//!
//! Upstreams are raw HTTP/1.1 servers on 127.0.0.1 written here, so each test controls
//! the exact bytes and counts connections. Cohort runs with one worker thread, so every
//! request meets the same upstream pool.

mod common;
use common::*;

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A request as an upstream parsed it (header names lower-cased, body decoded).
#[derive(Debug, Clone)]
struct Req {
    line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.0 == name).map(|h| &*h.1)
    }
}

/// Reads one request (`Content-Length` or chunked body); `None` on EOF or garbage.
fn read_request(r: &mut BufReader<TcpStream>) -> Option<Req> {
    let (mut head, mut buf) = (Vec::new(), String::new());
    while r.read_line(&mut buf).ok()? > 0 && !buf.trim_end().is_empty() {
        head.push(std::mem::take(&mut buf).trim_end().to_string());
    }
    if !buf.ends_with('\n') {
        return None; // EOF inside the head
    }
    let headers = head.get(1..)?.iter().map(|l| {
        let (k, v) = l.split_once(':')?;
        Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
    });
    let headers = headers.collect::<Option<_>>()?;
    let mut req = Req {
        line: head.first()?.clone(),
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding") == Some("chunked") {
        loop {
            buf.clear();
            r.read_line(&mut buf).ok()?;
            let size = usize::from_str_radix(buf.trim().split(';').next()?, 16).ok()?;
            if size == 0 {
                while r.read_line(&mut buf).ok()? > 0 && !buf.ends_with("\r\n\r\n") {}
                break;
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).ok()?;
            req.body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = req.header("content-length").and_then(|v| v.parse().ok()) {
        req.body = vec![0; n];
        r.read_exact(&mut req.body).ok()?;
    }
    Some(req)
}

/// A raw upstream: `serve` runs on its own thread for every accepted connection.
struct Upstream {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Req>>>,
}

impl Upstream {
    fn spawn<F>(serve: F) -> Upstream
    where
        F: Fn(BufReader<TcpStream>, &Mutex<Vec<Req>>) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s, serve) = (conns.clone(), seen.clone(), Arc::new(serve));
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                let (s, serve) = (s.clone(), serve.clone());
                thread::spawn(move || serve(BufReader::new(stream), &s));
            }
        });
        Upstream { addr, conns, seen }
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads and records the next request on an upstream connection.
fn next(r: &mut BufReader<TcpStream>, seen: &Mutex<Vec<Req>>) -> Option<Req> {
    let req = read_request(r)?;
    seen.lock().unwrap().push(req.clone());
    Some(req)
}

/// A keep-alive `200` with a `Content-Length` body.
fn reply(r: &mut BufReader<TcpStream>, body: &[u8]) -> bool {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: keep-alive\r\nkeep-alive: timeout=60\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let s = r.get_mut();
    s.write_all(head.as_bytes()).is_ok() && s.write_all(body).is_ok()
}

/// Service `api` keyed on `x-user-id`, stable/canary with the given weights, one thread.
fn config([stable, canary]: [SocketAddr; 2], [sw, cw]: [u32; 2]) -> String {
    format!(
        r#"
[server]
listen = ["@LISTEN@"]
admin = "@ADMIN@"
threads = 1

[[service]]
name = "api"
key = ["header:x-user-id"]
expose_header = "x-cohort-variant"

[[service.variant]]
name = "stable"
weight = {sw}
backends = ["{stable}"]

[[service.variant]]
name = "canary"
weight = {cw}
backends = ["{canary}"]
"#
    )
}

/// Cohort in front of one upstream (all traffic on `stable`), on the carrier the suite
/// runs on.
fn only(up: &Upstream) -> Cohort {
    Cohort::start(&config([up.addr, closed_addr()], [100, 0]))
}

/// Like [`only`], on the HTTP/1 engine whatever the suite runs on: for tests of the
/// framing the engine itself writes (Pingora's differs, e.g. it relays the upstream's
/// `Connection` field and re-chunks).
fn only_engine(up: &Upstream) -> Cohort {
    Cohort::start_with_env(&config([up.addr, closed_addr()], [100, 0]), ENGINE)
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    BufReader::new(s)
}

fn get(path: &str, user: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nx-user-id: {user}\r\n\r\n")
}

/// Writes `bytes` on `c` and reads one response: (response, connection stays open).
fn send(c: &mut BufReader<TcpStream>, bytes: &[u8]) -> (Response, bool) {
    c.get_mut().write_all(bytes).unwrap();
    read_response(c, false).unwrap()
}

/// Framing headers of a response: `transfer-encoding`, `content-length`, `connection`.
fn framing(r: &Response) -> [Option<&str>; 3] {
    ["transfer-encoding", "content-length", "connection"].map(|h| r.header(h))
}

/// Pingora writes a `Connection` header (title case) on every HTTP/1 response it
/// serves; the fast path writes one only when it closes the connection, in lower case.
/// That tells the two paths apart.
fn by_pingora(r: &Response) -> bool {
    r.headers.iter().any(|(k, _)| k == "Connection")
}

#[test]
fn chunked_upstream_responses_are_relayed_and_the_connection_stays_usable() {
    // Several writes so the end is found across reads; a chunk size line is split from
    // its data, the first chunk has an extension, the body ends with a trailer.
    const PIECES: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5;name=\"v\"\r\nhello\r\n",
        b"7\r\n, world\r\n1A\r\n",
        b"abcdefghijklmnopqrstuvwxyz\r\n",
        b"0\r\nx-sum: 42\r\n\r\n",
    ];
    let up = Upstream::spawn(|mut r, seen| {
        while next(&mut r, seen).is_some() {
            for piece in PIECES {
                if r.get_mut().write_all(piece).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let px = only_engine(&up);
    let mut c = connect(px.addr);
    for path in ["/c1", "/c2"] {
        let (resp, keep) = send(&mut c, get(path, "u1").as_bytes());
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        assert_eq!(resp.text(), "hello, worldabcdefghijklmnopqrstuvwxyz");
        assert_eq!(framing(&resp), [Some("chunked"), None, None], "{path}");
        assert_eq!(resp.header("x-cohort-variant"), Some("stable"), "{path}");
        assert!(!by_pingora(&resp), "{path}: not served by the fast path");
        assert!(keep, "{path}: the client connection was not kept alive");
        // The upstream sent no Date: the proxy adds one (RFC 9110 section 6.6.1).
        let date = resp.header("date").unwrap_or_default();
        assert!(
            httpdate::parse_http_date(date).is_ok(),
            "{path}: date {date:?}"
        );
    }
    let lines: Vec<String> = up.seen().into_iter().map(|r| r.line).collect();
    assert_eq!(lines, ["GET /c1 HTTP/1.1", "GET /c2 HTTP/1.1"]);
    // The end of the chunked body was found exactly, so the upstream connection went
    // back to the pool clean and carried the second request.
    assert_eq!(up.conns(), 1, "upstream connections");
}

#[test]
fn close_delimited_upstream_responses_reach_the_client_and_close_it() {
    let body: Vec<u8> = (0..120 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let expected = body.clone();
    let up = Upstream::spawn(move |mut r, seen| {
        if next(&mut r, seen).is_some() {
            let s = r.get_mut();
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-mode: eof\r\n\r\n");
            for part in body.chunks(40 * 1024) {
                let _ = s.write_all(part);
                thread::sleep(Duration::from_millis(20));
            }
            let _ = s.shutdown(Shutdown::Both);
        }
    });
    let px = only_engine(&up);
    for round in 1..=2 {
        let mut c = connect(px.addr);
        let (resp, keep) = send(&mut c, get("/eof", "u1").as_bytes());
        assert_eq!(resp.status, 200, "round {round}");
        assert_eq!(resp.header("x-mode"), Some("eof"), "round {round}");
        assert_eq!(framing(&resp), [None, None, Some("close")], "round {round}");
        assert!(!by_pingora(&resp) && !keep, "round {round}: {resp:?}");
        let n = resp.body.len();
        assert!(
            resp.body == expected,
            "round {round}: {n} bytes, not the body"
        );
        // `read_response` read to EOF, so the proxy closed; nothing more comes.
        assert_eq!(c.read_to_end(&mut Vec::new()).unwrap(), 0);
        assert_eq!(up.conns(), round, "upstream connections");
    }
}

#[test]
fn a_stale_pooled_connection_is_retried_on_a_fresh_one() {
    let user = [("x-user-id", "u1")];
    // (a) The upstream closes an idle keep-alive connection 100 ms after answering.
    let up = Upstream::spawn(|mut r, seen| {
        if next(&mut r, seen).is_some() && reply(&mut r, b"one") {
            thread::sleep(Duration::from_millis(100));
            let _ = r.get_mut().shutdown(Shutdown::Both);
        }
    });
    let px = only(&up);
    let mut c = px.client();
    assert_eq!(c.get("/a1", &user).text(), "one");
    thread::sleep(Duration::from_millis(300));
    let r = c.get("/a2", &user);
    assert_eq!((r.status, r.text().as_str()), (200, "one"), "{r:?}");
    assert_eq!(up.conns(), 2, "upstream connections");
    drop(px);

    // (b) The upstream reads the next request on a pooled connection and closes it
    // without an answer (the keep-alive race): a GET goes once more on a new connection.
    let up = Upstream::spawn(|mut r, seen| {
        if next(&mut r, seen).is_some() && reply(&mut r, b"two") && next(&mut r, seen).is_some() {
            let _ = r.get_mut().shutdown(Shutdown::Both);
        }
    });
    let px = only(&up);
    let mut c = px.client();
    assert_eq!(c.get("/b1", &user).text(), "two");
    let r = c.get("/b2", &user);
    assert_eq!((r.status, r.text().as_str()), (200, "two"), "{r:?}");
    let lines: Vec<String> = up.seen().into_iter().map(|r| r.line).collect();
    let want = ["GET /b1 HTTP/1.1", "GET /b2 HTTP/1.1", "GET /b2 HTTP/1.1"];
    assert_eq!(lines, want);
    assert_eq!(up.conns(), 2, "upstream connections");
    // Not counted against the backend's health: it keeps being chosen.
    assert_eq!(c.get("/b3", &user).status, 200);
}

#[test]
fn large_request_bodies_are_streamed_to_the_upstream_intact() {
    let up = Upstream::spawn(|mut r, seen| {
        while let Some(req) = next(&mut r, seen) {
            let sum = Sha256::digest(&req.body);
            let text = format!("{} {} {sum:x}\n", req.line, req.body.len());
            if !reply(&mut r, text.as_bytes()) {
                return;
            }
        }
    });
    let px = only_engine(&up);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let body: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    let head =
        "POST /upload HTTP/1.1\r\nHost: x\r\nx-user-id: u1\r\nContent-Length: 1048576\r\n\r\n";
    let mut bytes = head.as_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(get("/after", "u1").as_bytes());
    let mut c = connect(px.addr);
    let (first, keep) = send(&mut c, &bytes);
    let want = format!(
        "POST /upload HTTP/1.1 1048576 {:x}\n",
        Sha256::digest(&body)
    );
    assert_eq!((first.status, first.text()), (200, want));
    assert!(keep && !by_pingora(&first), "{first:?}");
    let (second, _) = read_response(&mut c, false).unwrap();
    let want = format!("GET /after HTTP/1.1 0 {:x}\n", Sha256::digest(b""));
    assert_eq!((second.status, second.text()), (200, want));
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("content-length"), Some("1048576"));
    assert_eq!(seen[0].header("x-cohort-variant"), Some("stable"));
}

/// Two recording upstreams, 50/50: the one that saw a request and the variant headers
/// it carried must match the normative assignment of the key.
#[test]
fn http_1_0_and_chunked_requests_are_handed_to_pingora_and_still_routed() {
    let recorder = || {
        Upstream::spawn(|mut r, seen| while next(&mut r, seen).is_some() && reply(&mut r, b"ok") {})
    };
    let (stable, canary) = (recorder(), recorder());
    let px = Cohort::start(&config([stable.addr, canary.addr], [50, 50]));
    let variants = [("stable", 50.0), ("canary", 50.0)];
    let users: Vec<String> = (0..8).map(|i| format!("user-{i}")).collect();
    let summary = |r: &Response| {
        let v = r.header("x-cohort-variant").map(str::to_string);
        (r.status, r.text(), v, by_pingora(r))
    };
    for user in &users {
        let want = (
            200,
            "ok".to_string(),
            Some(expected_variant("api", &variants, user)),
            true,
        );
        let ten = format!("GET /ten/{user} HTTP/1.0\r\nHost: x\r\nx-user-id: {user}\r\n\r\n");
        let (resp, _) = send(&mut connect(px.addr), ten.as_bytes());
        assert_eq!(summary(&resp), want, "HTTP/1.0 {user}: {resp:?}");

        let chunked = format!(
            "POST /chunked/{user} HTTP/1.1\r\nHost: x\r\nx-user-id: {user}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"
        );
        let mut c = connect(px.addr);
        let (resp, keep) = send(&mut c, chunked.as_bytes());
        assert_eq!(summary(&resp), want, "chunked {user}: {resp:?}");
        assert!(keep, "chunked {user}: connection closed: {resp:?}");
        // The engine takes the connection back for the next request.
        let (resp, _) = send(&mut c, get(&format!("/next/{user}"), user).as_bytes());
        let want_next = (want.0, want.1.clone(), want.2.clone(), !engine_on());
        assert_eq!(summary(&resp), want_next, "after chunked {user}: {resp:?}");
    }
    for (name, up) in [("stable", &stable), ("canary", &canary)] {
        for req in up.seen() {
            let user = req.header("x-user-id").unwrap().to_string();
            assert_eq!(name, expected_variant("api", &variants, &user), "{req:?}");
            assert_eq!(req.header("x-cohort-variant"), Some(name), "{req:?}");
            assert_eq!(req.header("x-cohort-reason"), Some("hash"), "{req:?}");
            if req.line.starts_with("POST") {
                assert_eq!(req.body, b"hello world", "{req:?}");
                assert_eq!(req.header("content-length"), None, "{req:?}");
            }
        }
    }
    let (s, c) = (stable.seen().len(), canary.seen().len());
    assert_eq!(s + c, users.len() * 3, "upstream requests");
    assert!(s > 0 && c > 0, "both variants served: {s} / {c}");
}

#[test]
fn with_cohort_fast_path_0_the_same_requests_are_served_by_pingora() {
    let (s, c) = (backend("stable"), backend("canary"));
    let cfg = config([s.addr, c.addr], [50, 50]);
    let fast = Cohort::start_with_env(&cfg, ENGINE);
    let slow = Cohort::start_with_env(&cfg, PINGORA);
    let (mut fc, mut sc) = (fast.client(), slow.client());
    let mut served = Vec::new();
    for i in 0..20 {
        let user = format!("user-{i}");
        let want = expected_variant("api", &[("stable", 50.0), ("canary", 50.0)], &user);
        for (pingora, cl) in [(false, &mut fc), (true, &mut sc)] {
            let r = cl.get("/v", &[("x-user-id", &user)]);
            let case = format!("{user} pingora={pingora}: {r:?}");
            assert_eq!((r.status, by_pingora(&r)), (200, pingora), "{case}");
            assert_eq!(r.header("x-cohort-variant"), Some(want.as_str()), "{case}");
            assert_eq!(r.backend(), want, "{case}");
            let seen = ["x-cohort-variant", "x-cohort-reason"].map(|h| r.upstream_header(h));
            assert_eq!(seen, [Some(want.clone()), Some("hash".into())], "{case}");
        }
        served.push(want);
    }
    assert!(served.contains(&"stable".to_string()) && served.contains(&"canary".to_string()));
}

/// Reads whatever arrives on `c` until the proxy closes or is silent for `quiet`.
fn read_all_raw(c: &mut BufReader<TcpStream>, quiet: Duration) -> Vec<u8> {
    c.get_ref().set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// An upstream chunked body that breaks the grammar (a 17-digit chunk size) is relayed
/// up to the error and no further, and the client connection closes: bytes past the
/// error never reach the client. Before, the engine relayed them. (Both carriers.)
#[test]
fn bytes_past_a_chunked_grammar_error_never_reach_the_client() {
    let up = Upstream::spawn(|mut r, seen| {
        if next(&mut r, seen).is_some() {
            let _ = r.get_mut().write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n11111111111111111\r\nSECRET-AFTER-THE-ERROR\r\n0\r\n\r\n",
            );
            thread::sleep(Duration::from_millis(300));
        }
    });
    let px = only(&up);
    let mut c = connect(px.addr);
    c.get_mut()
        .write_all(get("/bad-chunk", "u1").as_bytes())
        .unwrap();
    let raw = read_all_raw(&mut c, Duration::from_secs(3));
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.contains("SECRET"),
        "bytes past the error reached the client: {text}"
    );
    assert!(
        !text.contains("\r\n0\r\n\r\n"),
        "the cut body must not look complete: {text}"
    );
}

/// A response with 100 header fields is served (Pingora takes 256 and NGINX limits the
/// head's size, not its fields); the engine used to answer 502 past 64.
#[test]
fn a_response_with_a_hundred_header_fields_is_served() {
    let up = Upstream::spawn(|mut r, seen| {
        while next(&mut r, seen).is_some() {
            let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
            for i in 0..100 {
                head.push_str(&format!("x-field-{i}: {i}\r\n"));
            }
            head.push_str("\r\nok");
            if r.get_mut().write_all(head.as_bytes()).is_err() {
                return;
            }
        }
    });
    let px = only(&up);
    let mut c = connect(px.addr);
    let (resp, _) = send(&mut c, get("/many", "u1").as_bytes());
    assert_eq!(
        (resp.status, resp.text()),
        (200, "ok".to_string()),
        "{resp:?}"
    );
    assert_eq!(resp.header("x-field-99"), Some("99"));
}

/// A request head longer than `server.max_request_head_bytes` (default 32 KiB), or with
/// more than 256 fields, gets 431 at once and the connection closes, even while it is
/// still arriving: the engine no longer hands it to Pingora, which waited for up to
/// 1 MiB at 60 s per read. Engine only: under `COHORT_FAST_PATH=0` Pingora's own limits
/// apply (README).
#[test]
fn a_request_head_over_the_limit_gets_431_at_once() {
    let up = Upstream::spawn(
        |mut r, seen| {
            while next(&mut r, seen).is_some() && reply(&mut r, b"ok") {}
        },
    );
    let px = only_engine(&up);
    let start = b"GET /big HTTP/1.1\r\nHost: x\r\nx-user-id: u1\r\n".to_vec();
    // 5 fields of 8 KB: over 32 KiB, few fields.
    let mut long = start.clone();
    for i in 0..5 {
        long.extend_from_slice(format!("x-long-{i}: {}\r\n", "a".repeat(8000)).as_bytes());
    }
    // 300 short fields: under 32 KiB, too many fields.
    let mut many = start.clone();
    for i in 0..300 {
        many.extend_from_slice(format!("x-f-{i}: v\r\n").as_bytes());
    }
    for (case, head) in [("long", long), ("many", many)] {
        let mut c = connect(px.addr);
        // No blank line: the head is still "arriving".
        c.get_mut().write_all(&head).unwrap();
        c.get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (resp, keep) = read_response(&mut c, false).expect("an answer, not a wait");
        assert_eq!(resp.status, 431, "{case}: {resp:?}");
        assert!(!keep, "{case}: the connection closes after a 431");
    }
    assert!(up.seen().is_empty(), "nothing was forwarded");
    // 100 fields, well under both limits: served by the engine.
    let mut ok = start;
    for i in 0..100 {
        ok.extend_from_slice(format!("x-f-{i}: v\r\n").as_bytes());
    }
    ok.extend_from_slice(b"\r\n");
    let mut c = connect(px.addr);
    let (resp, _) = send(&mut c, &ok);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(!by_pingora(&resp), "{resp:?}");
}

/// A `PUT` whose 20-byte body arrives in two pieces meets a pooled connection that the
/// upstream closes after reading it (the keep-alive race): the retry on a new connection
/// carries the whole body again. Before, the engine sent the head with
/// `Content-Length: 20` but only the first 10 bytes on the retry, and the client got a
/// 504 after `read_timeout_ms`. (Both carriers; bodies up to 64 KiB are replayable.)
#[test]
fn a_retried_request_carries_its_whole_body_again() {
    let conns = Arc::new(AtomicUsize::new(0));
    let up = Upstream::spawn(move |mut r, seen| {
        if conns.fetch_add(1, Ordering::SeqCst) == 0 {
            // The first connection answers once, then reads the next request whole and
            // hangs up without an answer.
            if next(&mut r, seen).is_some() && reply(&mut r, b"first") {
                let _ = next(&mut r, seen);
            }
            let _ = r.get_mut().shutdown(Shutdown::Both);
            return;
        }
        // Later connections answer with the body they got.
        while let Some(req) = next(&mut r, seen) {
            if !reply(&mut r, &req.body) {
                return;
            }
        }
    });
    let px = only(&up);
    let mut c = connect(px.addr);
    let (first, _) = send(&mut c, get("/one", "u1").as_bytes());
    assert_eq!(first.text(), "first");
    let head = "PUT /put HTTP/1.1\r\nHost: x\r\nx-user-id: u1\r\nContent-Length: 20\r\n\r\n";
    c.get_mut()
        .write_all(format!("{head}0123456789").as_bytes())
        .unwrap();
    thread::sleep(Duration::from_millis(150));
    c.get_mut().write_all(b"abcdefghij").unwrap();
    let (resp, _) = read_response(&mut c, false).unwrap();
    assert_eq!(
        (resp.status, resp.text()),
        (200, "0123456789abcdefghij".to_string()),
        "{resp:?}"
    );
    let puts: Vec<Req> = up
        .seen()
        .into_iter()
        .filter(|r| r.line.starts_with("PUT"))
        .collect();
    assert_eq!(puts.len(), 2, "sent, then retried once");
    for p in &puts {
        assert_eq!(
            p.body, b"0123456789abcdefghij",
            "every attempt carries the whole body"
        );
    }
}

/// An upstream that sends a late body after answering `HEAD` (here a whole fake response)
/// cannot poison the next user's request: the engine does not pool a connection after a
/// response that carries no body by rule (HEAD, 204, 304), so the next request goes on a
/// new connection and gets the real answer. Before, the pooled connection was taken
/// before the late bytes arrived and the next user got them (3 runs of 3). Both
/// carriers: the Pingora carrier sends a `HEAD` up with `Connection: close`, so its pool
/// never keeps that connection.
#[test]
fn late_bytes_after_a_head_response_never_reach_the_next_user() {
    let conns = Arc::new(AtomicUsize::new(0));
    let up = Upstream::spawn(move |mut r, seen| {
        let first = conns.fetch_add(1, Ordering::SeqCst) == 0;
        while let Some(req) = next(&mut r, seen) {
            if first && req.line.starts_with("HEAD") {
                let s = r.get_mut();
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n");
                thread::sleep(Duration::from_millis(150));
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON");
                continue;
            }
            if !reply(&mut r, b"real") {
                return;
            }
        }
    });
    let px = only(&up);
    let mut a = connect(px.addr);
    a.get_mut()
        .write_all(b"HEAD /h HTTP/1.1\r\nHost: x\r\nx-user-id: u1\r\n\r\n")
        .unwrap();
    let mut line = String::new();
    a.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    // The next user asks at once, before the late bytes arrive.
    let mut b = connect(px.addr);
    let (resp, _) = send(&mut b, get("/next", "u2").as_bytes());
    assert_eq!(
        (resp.status, resp.text()),
        (200, "real".to_string()),
        "{resp:?}"
    );
    thread::sleep(Duration::from_millis(300));
    let (again, _) = send(&mut b, get("/again", "u2").as_bytes());
    assert_eq!(again.text(), "real", "{again:?}");
}

/// An upstream response with both `Transfer-Encoding: chunked` and `Content-Length`
/// reaches the client with the chunked coding and without the `Content-Length`
/// (RFC 9112 §6.1). (Both carriers.)
#[test]
fn a_response_with_chunked_and_content_length_loses_the_length() {
    let up = Upstream::spawn(|mut r, seen| {
        while next(&mut r, seen).is_some() {
            let resp = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
            if r.get_mut().write_all(resp).is_err() {
                return;
            }
        }
    });
    let px = only(&up);
    let mut c = connect(px.addr);
    let (resp, _) = send(&mut c, get("/te-cl", "u1").as_bytes());
    assert_eq!(
        (resp.status, resp.text()),
        (200, "hello".to_string()),
        "{resp:?}"
    );
    assert_eq!(resp.header("content-length"), None, "{resp:?}");
    assert!(
        resp.header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked")),
        "{resp:?}"
    );
}
