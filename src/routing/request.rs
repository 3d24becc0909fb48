//! A borrowed view of the parts of a request that routing reads: headers, URI and the TCP
//! peer. The live proxy builds it from Pingora's request header; `cohort explain` and
//! `GET /explain` build it from their flags, so all three share one decision path.
//! Everything here is allocation-free except percent-decoding a query value with `%`.

use http::{header, HeaderMap, HeaderName, Uri};
use std::borrow::Cow;
use std::net::IpAddr;

/// What routing may look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub headers: &'a HeaderMap,
    pub uri: &'a Uri,
    /// TCP peer address (before `X-Forwarded-For` processing).
    pub peer: Option<IpAddr>,
}

impl<'a> RequestView<'a> {
    /// First value of a header, trimmed; `None` if absent or empty after trimming.
    pub fn header(&self, name: &HeaderName) -> Option<&'a [u8]> {
        self.headers
            .get(name)
            .map(|v| trim(v.as_bytes()))
            .filter(|v| !v.is_empty())
    }

    /// Every value of a header, trimmed (empty ones included).
    pub fn header_all(&self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| trim(v.as_bytes()))
    }

    /// Value of the first cookie called `name` across all `Cookie` headers, trimmed and
    /// unquoted; `None` if absent or empty.
    pub fn cookie(&self, name: &str) -> Option<&'a [u8]> {
        let name = name.as_bytes();
        for value in self.headers.get_all(header::COOKIE) {
            // Fast path: most requests do not carry the cookie a matcher looks for.
            if memchr::memmem::find(value.as_bytes(), name).is_none() {
                continue;
            }
            for pair in value.as_bytes().split(|&b| b == b';') {
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
        let q = self.uri.query()?;
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
    pub fn host(&self) -> Option<&'a [u8]> {
        let raw = match self.headers.get(header::HOST) {
            Some(h) => h.as_bytes(),
            None => self.uri.authority()?.as_str().as_bytes(),
        };
        Some(strip_port(trim(raw)))
    }

    /// The URI path (`/` when the URI has none).
    pub fn path(&self) -> &'a [u8] {
        let p = self.uri.path();
        if p.is_empty() {
            b"/"
        } else {
            p.as_bytes()
        }
    }
}

/// Trims ASCII spaces and tabs (HTTP optional whitespace) at both ends.
pub fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
fn strip_port(h: &[u8]) -> &[u8] {
    if h.first() == Some(&b'[') {
        return match h.iter().position(|&b| b == b']') {
            Some(i) => &h[..=i],
            None => h,
        };
    }
    match h.iter().rposition(|&b| b == b':') {
        Some(i) => &h[..i],
        None => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn view<'a>(h: &'a HeaderMap, u: &'a Uri) -> RequestView<'a> {
        RequestView {
            headers: h,
            uri: u,
            peer: None,
        }
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
