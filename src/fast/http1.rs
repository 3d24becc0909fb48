//! HTTP/1.1 message framing for the fast path: which request heads it takes on, how long
//! a response body is, and a scanner that finds the end of a chunked body. Everything
//! here is pure and allocation-free; anything unusual makes the caller hand the
//! connection to Pingora's full HTTP/1 stack instead of guessing.

/// Most headers a request or response head may carry on the fast path.
pub const MAX_HEADERS: usize = 64;
/// Most fields a request or response head may carry at all (Pingora's limit; NGINX limits
/// the head's size, not its fields). Heads up to [`MAX_HEADERS`] are parsed with that
/// many slots; longer ones again with this many.
pub const MAX_FIELDS: usize = 256;
/// Largest request head the fast path buffers before handing over to Pingora.
pub const MAX_HEAD: usize = 32 * 1024;

/// What the request head says about framing and the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFraming {
    /// Request body length (`Content-Length`, 0 when absent).
    pub content_length: u64,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
}

/// Checks a parsed HTTP/1.1 request head for what the fast path handles: origin-form
/// target, no `Transfer-Encoding`, at most one well-formed `Content-Length`, no
/// `Upgrade`/`Expect`, one `Host`, and only `close`/`keep-alive` connection options.
/// `None` means "leave it to Pingora".
pub fn request_framing(req: &httparse::Request<'_, '_>) -> Option<RequestFraming> {
    if req.version != Some(1) || !req.path?.starts_with('/') || req.method? == "CONNECT" {
        return None;
    }
    // httparse lets raw bytes >= 0x80 through in the target; RFC 9112 does not, and
    // Pingora answers 400 to them. Leave such a request to Pingora.
    if !req.path?.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return None;
    }
    let mut content_length = None;
    let mut close = false;
    let mut hosts = 0;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                if !plain_host(h.value) {
                    return None;
                }
                hosts += 1;
            }
            6 if name.eq_ignore_ascii_case(b"expect") => return None,
            7 if name.eq_ignore_ascii_case(b"upgrade") => return None,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in h.value.split(|&b| b == b',') {
                    let token = crate::routing::request::trim(token);
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                        return None;
                    }
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if content_length.is_some() {
                    return None;
                }
                content_length = Some(parse_length(h.value)?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return None,
            _ => {}
        }
    }
    if hosts != 1 {
        return None;
    }
    Some(RequestFraming {
        content_length: content_length.unwrap_or(0),
        close,
    })
}

/// A `Host` value of the plain `name[:port]` / `[v6]:port` kind; anything else (userinfo,
/// spaces, odd bytes) is left to Pingora's stricter checks.
fn plain_host(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
        })
}

/// A decimal `Content-Length` value (digits only, optional surrounding whitespace).
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = crate::routing::request::trim(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Appends `date: <IMF-fixdate>\r\n` (RFC 9110 §6.6.1: a proxy adds `Date` to a
/// response that lacks one, and cohort's own responses carry one). The text is
/// formatted once per second per thread.
pub fn date_header(out: &mut Vec<u8>) {
    with_date(|date| {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// Calls `f` with the current `Date` value (IMF-fixdate), formatted once per second per
/// thread.
pub fn with_date<R>(f: impl FnOnce(&str) -> R) -> R {
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((0, String::new()))
        };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        f(&c.1)
    })
}

/// Fields about this connection only (RFC 9110 §7.6.1), never relayed: each hop's
/// HTTP/1 codec writes its own.
pub fn is_connection_field(name: &str) -> bool {
    use crate::forward::edits::is;
    is(name, "connection") || is(name, "keep-alive") || is(name, "proxy-connection")
}

/// How the end of a response body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    /// Read until the upstream closes; the client connection closes after it.
    UntilClose,
}

/// What a parsed upstream response head says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFraming {
    pub body: BodyFraming,
    /// The upstream connection may carry another request once this body is read.
    pub reusable: bool,
}

/// Framing of a response to a request with method `HEAD` (`head_request`) or not;
/// `None` for heads no proxy should pass on (conflicting lengths, a bad length).
pub fn response_framing(
    resp: &httparse::Response<'_, '_>,
    head_request: bool,
) -> Option<ResponseFraming> {
    let status = resp.code?;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = resp.version != Some(1);
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value)?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(crate::routing::request::trim(last).eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| crate::routing::request::trim(t).eq_ignore_ascii_case(b"close"));
        }
    }
    let body = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        BodyFraming::None
    } else {
        match (chunked, length) {
            (Some(true), _) => BodyFraming::Chunked,
            (Some(false), _) => BodyFraming::UntilClose,
            (None, Some(n)) => BodyFraming::Length(n),
            (None, None) => BodyFraming::UntilClose,
        }
    };
    Some(ResponseFraming {
        body,
        reusable: !close && body != BodyFraming::UntilClose,
    })
}

/// Finds where a chunked body ends, fed the bytes in order as they arrive.
#[derive(Debug, Clone, Default)]
pub struct ChunkedScanner {
    state: Chunk,
    size: u64,
    digits: u8,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Chunk {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// A chunked body that breaks the grammar; `at` is the offset (in the data fed last) of
/// the first byte that breaks it: the bytes before it were well-formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk {
    pub at: usize,
}

impl ChunkedScanner {
    /// Consumes `data`; `Ok(Some(n))` when the body ends after `n` bytes of it.
    #[inline]
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, BadChunk> {
        self.feed_with(data, |_| {})
    }

    /// As [`ChunkedScanner::feed`], and calls `payload` with each range of `data` that is
    /// chunk payload (the decoded body), in order: what a carrier that re-frames the body
    /// (HTTP/2 DATA frames) relays.
    #[inline]
    pub fn feed_with(
        &mut self,
        data: &[u8],
        mut payload: impl FnMut(std::ops::Range<usize>),
    ) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            if self.state == Chunk::Data {
                let take = self.size.min((data.len() - i) as u64);
                if take > 0 {
                    payload(i..i + take as usize);
                }
                self.size -= take;
                i += take as usize;
                if self.size == 0 {
                    self.state = Chunk::DataCr;
                }
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = match (self.state, b) {
                (Chunk::Size, b) if b.is_ascii_hexdigit() => {
                    self.digits += 1;
                    if self.digits > 15 {
                        return Err(BadChunk { at: i - 1 });
                    }
                    self.size = self.size * 16 + u64::from(hex(b));
                    Chunk::Size
                }
                (Chunk::Size, b';' | b' ' | b'\t') if self.digits > 0 => Chunk::Extension,
                (Chunk::Size, b'\r') if self.digits > 0 => Chunk::SizeLf,
                (Chunk::Extension, b'\r') => Chunk::SizeLf,
                (Chunk::Extension, b'\n') => return Err(BadChunk { at: i - 1 }),
                (Chunk::Extension, _) => Chunk::Extension,
                (Chunk::SizeLf, b'\n') if self.size == 0 => Chunk::TrailerStart,
                (Chunk::SizeLf, b'\n') => Chunk::Data,
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => {
                    self.digits = 0;
                    Chunk::Size
                }
                (Chunk::TrailerStart, b'\r') => Chunk::FinalLf,
                (Chunk::TrailerStart | Chunk::TrailerLine, b'\n') => {
                    return Err(BadChunk { at: i - 1 })
                }
                (Chunk::TrailerLine, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
                (Chunk::FinalLf, b'\n') => {
                    self.state = Chunk::Done;
                    return Ok(Some(i));
                }
                _ => return Err(BadChunk { at: i - 1 }),
            };
        }
        Ok(None)
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_req(raw: &[u8]) -> Option<RequestFraming> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw).unwrap().is_complete());
        request_framing(&req)
    }

    fn parse_resp(raw: &[u8], head: bool) -> Option<ResponseFraming> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        assert!(resp.parse(raw).unwrap().is_complete());
        response_framing(&resp, head)
    }

    #[test]
    fn plain_requests_are_taken_and_unusual_ones_left_to_pingora() {
        let ok = parse_req(b"GET /a?b HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(
            ok,
            Some(RequestFraming {
                content_length: 12,
                close: false
            })
        );
        let close =
            parse_req(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, close\r\n\r\n");
        assert!(close.is_some_and(|f| f.close));
        for raw in [
            &b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"[..],
            b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: x-secret\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@x\r\n\r\n",
        ] {
            assert_eq!(parse_req(raw), None, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112_section_6_3() {
        let f = |raw: &[u8], head| parse_resp(raw, head).map(|f| (f.body, f.reusable));
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            Some((BodyFraming::Length(5), true))
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Some((BodyFraming::None, true))
        );
        assert_eq!(
            f(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            Some((BodyFraming::None, true))
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Some((BodyFraming::Chunked, true))
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            Some((BodyFraming::UntilClose, false))
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\n\r\n", false),
            Some((BodyFraming::UntilClose, false))
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            Some((BodyFraming::Length(1), false))
        );
        assert_eq!(
            f(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            Some((BodyFraming::Length(1), false))
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            None
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false),
            None
        );
    }

    #[test]
    fn date_header_is_an_imf_fixdate() {
        let mut out = Vec::new();
        date_header(&mut out);
        let line = String::from_utf8(out).unwrap();
        let value = line
            .strip_prefix("date: ")
            .and_then(|v| v.strip_suffix("\r\n"))
            .unwrap();
        let parsed = httpdate::parse_http_date(value).unwrap();
        let age = std::time::SystemTime::now()
            .duration_since(parsed)
            .unwrap_or_default();
        assert!(age.as_secs() <= 2, "{value}");
        assert_eq!(value.len(), 29, "{value}");
    }

    #[test]
    fn chunked_end_is_found_across_any_split() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut s = ChunkedScanner::default();
            let (a, b) = body.split_at(split);
            let found = match s.feed(a).unwrap() {
                Some(n) => n,
                None => split + s.feed(b).unwrap().expect("end in second part"),
            };
            assert_eq!(found, end, "split at {split}");
        }
        let mut s = ChunkedScanner::default();
        assert_eq!(s.feed(b"0\r\n\r\n"), Ok(Some(5)));
    }

    /// Each error names the first byte that breaks the grammar, so a relay can stop
    /// right before it.
    #[test]
    fn broken_chunked_bodies_are_errors_at_the_first_bad_byte() {
        for (bad, at) in [
            (&b"x\r\n"[..], 0),
            (b"\r\n", 0),
            (b"5\r\nhelloXX", 8),
            (b"5\nhello", 1),
            (b"ffffffffffffffff0\r\n", 15),
            (b"0\r\nbad\ntrailer", 6),
        ] {
            let mut s = ChunkedScanner::default();
            assert_eq!(
                s.feed(bad),
                Err(BadChunk { at }),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// `feed_with` hands out exactly the decoded payload, however the bytes are split.
    #[test]
    fn chunk_payload_is_decoded_across_any_split() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-t: 1\r\n\r\n";
        for split in 0..=body.len() {
            let mut scanner = ChunkedScanner::default();
            let mut payload = Vec::new();
            let mut end = None;
            for (base, part) in [(0, &body[..split]), (split, &body[split..])] {
                let r = scanner.feed_with(part, |range| payload.extend_from_slice(&part[range]));
                if let Some(n) = r.unwrap() {
                    end = Some(base + n);
                }
            }
            assert_eq!(payload, b"hello0123456789abcdef", "split at {split}");
            assert_eq!(end, Some(body.len()), "split at {split}");
        }
    }
}
