//! Cohort key extraction and client IP resolution (SPEC "Decision order" steps 3–5 and
//! "Client IP"). Pure functions over a [`RequestView`]; no allocation except a
//! percent-decoded query value that contains `%`.

use super::request::{trim, RequestView};
use crate::config::KeySource;
use ipnet::IpNet;
use std::borrow::Cow;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};

/// The bytes hashed for a user.
#[derive(Debug, Clone)]
pub enum KeyBytes<'a> {
    Borrowed(&'a [u8]),
    Decoded(Cow<'a, [u8]>),
    Ip(IpText),
}

impl KeyBytes<'_> {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            KeyBytes::Borrowed(b) => b,
            KeyBytes::Decoded(c) => c,
            KeyBytes::Ip(t) => t.as_bytes(),
        }
    }
}

/// Where the key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFrom {
    /// `key[i]` of the service.
    Source(usize),
    /// The `assign_cookie` cookie the client sent back.
    AssignedCookie,
}

/// An IP address in canonical text form, on the stack.
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; 48],
    len: u8,
}

impl IpText {
    pub fn new(ip: IpAddr) -> IpText {
        let mut buf = [0u8; 48];
        let mut w = &mut buf[..];
        // 48 bytes hold the longest IPv6 text (45); the write cannot fail.
        let _ = write!(w, "{ip}");
        let len = (48 - w.len()) as u8;
        IpText { buf, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The first present key: non-`ip` sources in order (step 3), then the `assign_cookie`
/// cookie if sent (step 4), then `ip` if listed and no `assign_cookie` (step 5). `None`
/// means no key: the caller mints a new cookie id (with `assign_cookie`) or uses `no_key`.
pub fn find_key<'a>(
    keys: &[KeySource],
    assign_cookie: Option<&str>,
    req: &RequestView<'a>,
    client_ip: Option<IpAddr>,
) -> Option<(KeyBytes<'a>, KeyFrom)> {
    for (i, k) in keys.iter().enumerate() {
        let found = match k {
            KeySource::Header(h) => req.header(h).map(KeyBytes::Borrowed),
            KeySource::Cookie(c) => req.cookie(c).map(KeyBytes::Borrowed),
            KeySource::Query(q) => req
                .query(q)
                .filter(|v| !trim(v).is_empty())
                .map(KeyBytes::Decoded),
            KeySource::Ip => None,
        };
        if let Some(k) = found {
            return Some((k, KeyFrom::Source(i)));
        }
    }
    if let Some(name) = assign_cookie {
        return req
            .cookie(name)
            .map(|v| (KeyBytes::Borrowed(v), KeyFrom::AssignedCookie));
    }
    let ip_pos = keys.iter().position(|k| *k == KeySource::Ip)?;
    client_ip.map(|ip| (KeyBytes::Ip(IpText::new(ip)), KeyFrom::Source(ip_pos)))
}

/// The client address: the TCP peer, unless the peer is a trusted proxy; then the
/// rightmost `X-Forwarded-For` address that is not trusted. If every listed address is
/// trusted, the leftmost one; a malformed entry stops the walk at the hop to its right.
pub fn client_ip(req: &RequestView<'_>, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = req.peer?.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return Some(peer);
    }
    let mut hop = peer;
    for value in req.values("x-forwarded-for").rev() {
        for part in value.rsplit(|&b| b == b',') {
            let part = trim(part);
            if part.is_empty() {
                continue;
            }
            match parse_forwarded(part) {
                Some(ip) if !is_trusted(&ip) => return Some(ip),
                Some(ip) => hop = ip,
                None => return Some(hop),
            }
        }
    }
    Some(hop)
}

/// An `X-Forwarded-For` element: `1.2.3.4`, `1.2.3.4:567`, `2001:db8::1`, `[2001:db8::1]:567`.
fn parse_forwarded(b: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(b).ok()?;
    let ip = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Uri};

    fn req<'a>(h: &'a HeaderMap, u: &'a Uri, peer: &str) -> RequestView<'a> {
        RequestView::new(h, u, Some(peer.parse().unwrap()))
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn xff_ignored_when_peer_untrusted() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        let u = Uri::from_static("/");
        let r = req(&h, &u, "203.0.113.9");
        assert_eq!(
            client_ip(&r, &nets(&["10.0.0.0/8"])),
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(client_ip(&r, &[]), Some("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn rightmost_untrusted_xff_address_wins() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 198.51.100.1"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.7:4431"));
        let u = Uri::from_static("/");
        let r = req(&h, &u, "10.0.0.2");
        assert_eq!(
            client_ip(&r, &nets(&["10.0.0.0/8"])),
            Some("198.51.100.1".parse().unwrap())
        );
    }

    #[test]
    fn all_trusted_gives_leftmost_and_garbage_stops_walk() {
        let u = Uri::from_static("/");
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("10.1.1.1, 10.2.2.2"),
        );
        let r = req(&h, &u, "10.0.0.2");
        assert_eq!(
            client_ip(&r, &nets(&["10.0.0.0/8"])),
            Some("10.1.1.1".parse().unwrap())
        );
        let mut g = HeaderMap::new();
        g.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, nonsense, 10.2.2.2"),
        );
        let r = req(&g, &u, "10.0.0.2");
        assert_eq!(
            client_ip(&r, &nets(&["10.0.0.0/8"])),
            Some("10.2.2.2".parse().unwrap())
        );
    }

    #[test]
    fn ipv4_mapped_peer_is_canonicalised() {
        let h = HeaderMap::new();
        let u = Uri::from_static("/");
        let r = req(&h, &u, "::ffff:192.0.2.1");
        assert_eq!(client_ip(&r, &[]), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(
            IpText::new("2001:db8::1".parse().unwrap()).as_bytes(),
            b"2001:db8::1"
        );
    }
}
