//! Differential: arbitrary bytes as the start of a connection, read by cohort's HTTP/1
//! engine (httparse, then `forward::request::check` and `fast::http1::request_framing`,
//! the functions the engine calls) and by an independent, deliberately plain reading of
//! RFC 9112 written here. They must agree on where the request ends (head and body), the
//! engine must never take a request whose framing is ambiguous or chunked, and every
//! refusal must have its reason in the reference reading.
#![no_main]

use cohort::fast::http1::request_framing;
use cohort::forward::request::check;
use libfuzzer_sys::fuzz_target;

const MAX_BODY: u64 = 1 << 30;
const MAX_HEAD: usize = 32 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum Engine {
    Partial,
    HandOver,
    Refuse(u16),
    Take { head_len: usize, body: u64 },
}

fn engine(buf: &[u8]) -> Engine {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Partial) => return Engine::Partial,
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return Engine::Refuse(431),
        Err(_) => return Engine::HandOver,
    };
    if req.method.is_none() || req.path.is_none() {
        return Engine::HandOver;
    }
    let fields = req.headers.iter().map(|h| (h.name, h.value));
    if let Err(r) = check(req.version == Some(1), fields, MAX_BODY) {
        return Engine::Refuse(r.status());
    }
    if head_len > MAX_HEAD {
        return Engine::Refuse(431);
    }
    match request_framing(&req) {
        None => Engine::HandOver,
        Some(f) => Engine::Take {
            head_len,
            body: f.content_length,
        },
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Reference {
    /// No empty line yet.
    Incomplete,
    /// Not an HTTP/1.x request head by RFC 9112's grammar.
    Malformed,
    /// Parsed: where the head ends, the Content-Length values, whether a
    /// Transfer-Encoding is present, the Host values, the version's minor digit.
    Head {
        head_len: usize,
        lengths: Vec<Vec<u8>>,
        transfer_encoding: bool,
        hosts: Vec<Vec<u8>>,
        minor: u8,
    },
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Lines end in CRLF or a bare LF (RFC 9112 §2.2 lets a recipient accept LF).
fn reference(buf: &[u8]) -> Reference {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut head_len = None;
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            let mut line = &buf[start..i];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            if line.is_empty() {
                if lines.is_empty() {
                    // Empty lines before the request line are skipped (§2.2).
                    start = i + 1;
                    i += 1;
                    continue;
                }
                head_len = Some(i + 1);
                break;
            }
            lines.push(line);
            start = i + 1;
        }
        i += 1;
    }
    let Some(head_len) = head_len else {
        return Reference::Incomplete;
    };
    let Some((request_line, fields)) = lines.split_first() else {
        return Reference::Malformed;
    };
    let parts: Vec<&[u8]> = request_line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return Reference::Malformed;
    };
    let minor = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        _ => return Reference::Malformed,
    };
    if method.is_empty()
        || !method.iter().all(|&b| tchar(b))
        || target.is_empty()
        || !target.iter().all(|&b| (0x21..0x7f).contains(&b))
    {
        return Reference::Malformed;
    }
    let (mut lengths, mut hosts, mut transfer_encoding) = (Vec::new(), Vec::new(), false);
    for line in fields {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Reference::Malformed;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
            return Reference::Malformed;
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Reference::Malformed;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths.push(value.to_vec());
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts.push(value.to_vec());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
        }
    }
    Reference::Head {
        head_len,
        lengths,
        transfer_encoding,
        hosts,
        minor,
    }
}

/// The body length the reference reads: one Content-Length of digits only.
fn single_length(lengths: &[Vec<u8>]) -> Option<u64> {
    let [v] = lengths else { return None };
    let v = trim(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

fuzz_target!(|data: &[u8]| {
    let e = engine(data);
    let r = reference(data);
    match (&e, &r) {
        (
            Engine::Take { head_len, body },
            Reference::Head {
                head_len: ref_len,
                lengths,
                transfer_encoding,
                hosts,
                minor,
            },
        ) => {
            // Where the request ends: the head, then exactly the one Content-Length.
            assert_eq!(head_len, ref_len, "head end differs");
            assert!(!transfer_encoding, "took a request with Transfer-Encoding");
            let want = if lengths.is_empty() { Some(0) } else { single_length(lengths) };
            assert_eq!(Some(*body), want, "body length differs");
            if *minor == 1 {
                assert!(hosts.len() == 1 && !trim(&hosts[0]).is_empty(), "took a bad Host");
            }
        }
        (Engine::Take { .. }, Reference::Incomplete) => panic!("took an incomplete head"),
        (Engine::Take { .. }, Reference::Malformed) => {
            panic!("took what the reference reads as malformed")
        }
        (Engine::Refuse(400), Reference::Head { lengths, hosts, minor, .. }) => {
            let ambiguous = !lengths.is_empty() && single_length(lengths).is_none();
            let bad_host = *minor == 1 && (hosts.len() != 1 || trim(&hosts[0]).is_empty());
            assert!(ambiguous || bad_host, "400 without a reason");
        }
        (Engine::Refuse(413), Reference::Head { lengths, .. }) => {
            assert!(single_length(lengths).is_some_and(|n| n > MAX_BODY), "413 without a reason");
        }
        _ => {}
    }
});
