//! A borrowed view of the parts of a request that routing reads: headers, URI and the TCP
//! peer. The live proxy builds it from Pingora's request header; `cohort explain` and
//! `GET /explain` build it from their flags, so all three share one decision path.
//! Everything here is allocation-free except percent-decoding a query value with `%`.

use super::compare::eq_lower;
use http::{header, HeaderMap, HeaderName, Uri};
use std::borrow::Cow;
use std::net::IpAddr;

/// Where a request's headers live: Pingora's parsed map, or the raw list the HTTP/1 fast
/// path parsed (names in their original case, looked up case-insensitively).
#[derive(Debug, Clone, Copy)]
enum Headers<'a> {
    Map(&'a HeaderMap),
    Raw(&'a [httparse::Header<'a>]),
}

/// What routing may look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    headers: Headers<'a>,
    path: &'a str,
    query: Option<&'a str>,
    /// The URI authority (absolute-form and HTTP/2 requests).
    authority: Option<&'a str>,
    /// TCP peer address (before `X-Forwarded-For` processing).
    pub peer: Option<IpAddr>,
}

/// Every value of one header, in order.
pub enum Values<'a, 'n> {
    Map(http::header::ValueIter<'a, http::HeaderValue>),
    Raw(&'a [httparse::Header<'a>], &'n str),
}

impl<'a> Iterator for Values<'a, '_> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            Values::Map(it) => it.next().map(|v| v.as_bytes()),
            Values::Raw(rest, name) => {
                // Search a local copy of the slice and store the rest once.
                let list: &'a [httparse::Header<'a>] = rest;
                let name = name.as_bytes();
                match list.iter().position(|h| eq_lower(h.name.as_bytes(), name)) {
                    Some(i) => {
                        *rest = list.get(i + 1..).unwrap_or_default();
                        list.get(i).map(|h| h.value)
                    }
                    None => {
                        *rest = &[];
                        None
                    }
                }
            }
        }
    }
}

impl<'a> DoubleEndedIterator for Values<'a, '_> {
    #[inline]
    fn next_back(&mut self) -> Option<&'a [u8]> {
        match self {
            Values::Map(it) => it.next_back().map(|v| v.as_bytes()),
            Values::Raw(rest, name) => {
                while let [head @ .., h] = *rest {
                    *rest = head;
                    if eq_lower(h.name.as_bytes(), name.as_bytes()) {
                        return Some(h.value);
                    }
                }
                None
            }
        }
    }
}

impl<'a> RequestView<'a> {
    /// A view over a parsed Pingora request (or one built by `explain`).
    pub fn new(headers: &'a HeaderMap, uri: &'a Uri, peer: Option<IpAddr>) -> RequestView<'a> {
        RequestView {
            headers: Headers::Map(headers),
            path: uri.path(),
            query: uri.query(),
            authority: uri.authority().map(|a| a.as_str()),
            peer,
        }
    }

    /// A view over a raw origin-form request: `target` is `/path?query`.
    pub fn raw(
        headers: &'a [httparse::Header<'a>],
        target: &'a str,
        peer: Option<IpAddr>,
    ) -> RequestView<'a> {
        let (path, query) = match memchr::memchr(b'?', target.as_bytes()) {
            // `?` is ASCII, so both sides are on character boundaries.
            Some(i) => (target.get(..i).unwrap_or(target), target.get(i + 1..)),
            None => (target, None),
        };
        RequestView {
            headers: Headers::Raw(headers),
            path,
            query,
            authority: None,
            peer,
        }
    }

    /// Every value of a header (untrimmed), in order. `name` is lower-case, as a
    /// `HeaderName`'s text always is.
    #[inline]
    pub fn values<'n>(&self, name: &'n str) -> Values<'a, 'n> {
        debug_assert!(
            !name.bytes().any(|b| b.is_ascii_uppercase()),
            "header names are looked up in lower case: {name}"
        );
        match self.headers {
            Headers::Map(m) => Values::Map(m.get_all(name).iter()),
            Headers::Raw(list) => Values::Raw(list, name),
        }
    }

    /// First value of a header, trimmed; `None` if absent or empty after trimming.
    #[inline]
    pub fn header(&self, name: &HeaderName) -> Option<&'a [u8]> {
        let first = match self.headers {
            Headers::Map(m) => m.get(name).map(|v| v.as_bytes()),
            Headers::Raw(_) => self.values(name.as_str()).next(),
        };
        first.map(trim).filter(|v| !v.is_empty())
    }

    /// Every value of a header, trimmed (empty ones included).
    pub fn header_all<'n>(&self, name: &'n HeaderName) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        self.values(name.as_str()).map(trim)
    }

    /// Value of the first cookie called `name` across all `Cookie` headers, trimmed and
    /// unquoted; `None` if absent or empty.
    pub fn cookie(&self, name: &str) -> Option<&'a [u8]> {
        let name = name.as_bytes();
        for value in self.values(header::COOKIE.as_str()) {
            // Fast path: most requests do not carry the cookie a matcher looks for.
            if !contains(value, name) {
                continue;
            }
            for pair in value.split(|&b| b == b';') {
                let pair = trim(pair);
                let (k, v) = match pair.iter().position(|&b| b == b'=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => continue,
                };
                if trim(k) == name {
                    let v = unquote(trim(v));
                    return (!v.is_empty()).then_some(v);
                }
            }
        }
        None
    }

    /// Percent-decoded value of the first query parameter called `name`; `None` if absent
    /// or empty. `+` is kept as is (only `%XX` is decoded).
    pub fn query(&self, name: &str) -> Option<Cow<'a, [u8]>> {
        let q = self.query?;
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == name {
                if v.is_empty() {
                    return None;
                }
                return Some(percent_encoding::percent_decode(v.as_bytes()).into());
            }
        }
        None
    }

    /// The request's host without port: the `Host` header, else the URI authority (HTTP/2).
    #[inline]
    pub fn host(&self) -> Option<&'a [u8]> {
        let raw = match self.values(header::HOST.as_str()).next() {
            Some(h) => h,
            None => self.authority?.as_bytes(),
        };
        Some(strip_port(trim(raw)))
    }

    /// The URI path (`/` when the URI has none).
    #[inline]
    pub fn path(&self) -> &'a [u8] {
        if self.path.is_empty() {
            b"/"
        } else {
            self.path.as_bytes()
        }
    }
}

/// Trims ASCII spaces and tabs (HTTP optional whitespace) at both ends.
#[inline]
pub fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Whether `needle` occurs in `hay`. Cookie headers are short, so candidates found with
/// `memchr` on the first byte are cheaper to check than building a `memmem` searcher per
/// lookup; the work is bounded by `hay.len() * needle.len()` on hostile input.
#[inline]
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    memchr::memchr_iter(first, hay).any(|i| hay.get(i + 1..i + 1 + rest.len()) == Some(rest))
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`. A port is the digits after
/// the last `:` (RFC 9110 §7.2: `uri-host [ ":" port ]`), so only the end is scanned.
#[inline]
fn strip_port(h: &[u8]) -> &[u8] {
    let mut end = h.len();
    while let Some(b'0'..=b'9') = h.get(end.wrapping_sub(1)) {
        end -= 1;
    }
    match end.checked_sub(1).and_then(|i| h.get(..i).zip(h.get(i))) {
        Some((host, b':')) => host,
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn view<'a>(h: &'a HeaderMap, u: &'a Uri) -> RequestView<'a> {
        RequestView::new(h, u, None)
    }

    #[test]
    fn cookie_lookup_across_headers_trims_and_unquotes() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; session= \"abc\" "),
        );
        h.append(header::COOKIE, HeaderValue::from_static("beta=1;empty="));
        let u = Uri::from_static("/");
        let v = view(&h, &u);
        assert_eq!(v.cookie("session"), Some(&b"abc"[..]));
        assert_eq!(v.cookie("beta"), Some(&b"1"[..]));
        assert_eq!(v.cookie("empty"), None);
        assert_eq!(v.cookie("missing"), None);
    }

    #[test]
    fn query_values_are_percent_decoded_and_empty_is_absent() {
        let h = HeaderMap::new();
        let u: Uri = "/p?x=1&uid=a%20b%2Bc&e=&flag".parse().unwrap();
        let v = view(&h, &u);
        assert_eq!(v.query("uid").as_deref(), Some(&b"a b+c"[..]));
        assert_eq!(v.query("x").as_deref(), Some(&b"1"[..]));
        assert_eq!(v.query("e"), None);
        assert_eq!(v.query("flag"), None);
        assert_eq!(v.query("nope"), None);
    }

    #[test]
    fn host_strips_port_and_falls_back_to_authority() {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("API.example.com:8080"),
        );
        let u = Uri::from_static("/");
        assert_eq!(view(&h, &u).host(), Some(&b"API.example.com"[..]));
        let h2 = HeaderMap::new();
        let u2: Uri = "https://[::1]:8443/x".parse().unwrap();
        assert_eq!(view(&h2, &u2).host(), Some(&b"[::1]"[..]));
        for (raw, host) in [
            (&b"example.com"[..], &b"example.com"[..]),
            (b"example.com:", b"example.com"),
            (b"example.com:8080", b"example.com"),
            (b"[::1]", b"[::1]"),
            (b"[2001:db8::1]:443", b"[2001:db8::1]"),
            (b"10.0.0.1:80", b"10.0.0.1"),
            (b"8080", b"8080"),
            (b":8080", b""),
            (b"", b""),
        ] {
            assert_eq!(strip_port(raw), host, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn raw_views_answer_like_header_map_views() {
        let raw = [
            httparse::Header {
                name: "Host",
                value: b"API.example.com:8080",
            },
            httparse::Header {
                name: "X-Forwarded-For",
                value: b"1.1.1.1, 2.2.2.2",
            },
            httparse::Header {
                name: "cookie",
                value: b"a=1; session=\"abc\"",
            },
            httparse::Header {
                name: "x-forwarded-for",
                value: b"3.3.3.3",
            },
            httparse::Header {
                name: "X-USER-ID",
                value: b"  u1 ",
            },
        ];
        let mut map = HeaderMap::new();
        for h in &raw {
            map.append(
                HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(h.value).unwrap(),
            );
        }
        let uri: Uri = "/p/q?uid=a%20b&x=1".parse().unwrap();
        let views = [
            RequestView::raw(&raw, "/p/q?uid=a%20b&x=1", None),
            RequestView::new(&map, &uri, None),
        ];
        for v in views {
            assert_eq!(v.host(), Some(&b"API.example.com"[..]));
            assert_eq!(v.path(), b"/p/q");
            assert_eq!(v.query("uid").as_deref(), Some(&b"a b"[..]));
            assert_eq!(v.cookie("session"), Some(&b"abc"[..]));
            assert_eq!(
                v.header(&HeaderName::from_static("x-user-id")),
                Some(&b"u1"[..])
            );
            let xff: Vec<&[u8]> = v.values("x-forwarded-for").collect();
            assert_eq!(xff, [&b"1.1.1.1, 2.2.2.2"[..], b"3.3.3.3"]);
            let back: Vec<&[u8]> = v.values("x-forwarded-for").rev().collect();
            assert_eq!(back, [&b"3.3.3.3"[..], b"1.1.1.1, 2.2.2.2"]);
            assert_eq!(v.values("absent").next(), None);
        }
    }

    #[test]
    fn substring_search_finds_every_position() {
        assert!(contains(b"a=1; beta=1", b"beta"));
        assert!(contains(b"beta", b"beta"));
        assert!(contains(b"xbetbeta", b"beta"));
        assert!(!contains(b"a=1; bet", b"beta"));
        assert!(!contains(b"", b"beta"));
        assert!(contains(b"abc", b""));
    }

    #[test]
    fn header_values_are_trimmed_and_blank_is_absent() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static("  u1\t"));
        h.insert("x-blank", HeaderValue::from_static("   "));
        let u = Uri::from_static("/");
        let v = view(&h, &u);
        assert_eq!(
            v.header(&HeaderName::from_static("x-user-id")),
            Some(&b"u1"[..])
        );
        assert_eq!(v.header(&HeaderName::from_static("x-blank")), None);
    }
}
