//! What cohort changes in a request on its way up and in a response on its way down,
//! as data: which client fields are left out, which fields cohort adds and with what
//! values. Each carrier applies the edits in its own medium (Pingora's header maps, or
//! bytes written by the HTTP/1 engine). Connection-level fields (`Connection`,
//! `Keep-Alive`, framing) belong to each carrier's HTTP/1 codec, not to these rules.

use crate::routing::compare::eq_lower;
use crate::routing::{Decision, Reason, RoutingTable, Service};
use std::net::{IpAddr, SocketAddr};

/// The header naming the variant serving, towards the upstream (SPEC "Headers").
pub const VARIANT_HEADER: &str = "x-cohort-variant";
/// The header naming why that variant serves, towards the upstream.
pub const REASON_HEADER: &str = "x-cohort-reason";
const COHORT_PREFIX: &[u8] = b"x-cohort-";

/// The client's TCP peer (the socket's, or the client a PROXY protocol header named on a
/// listener that takes one), with what each request needs from it computed once per
/// connection.
///
/// Every idle keep-alive connection holds one, so it is kept small (40 bytes and the
/// text's allocation).
#[derive(Debug, Clone)]
pub struct ClientPeer {
    /// As the socket (or the PROXY header) reports it (routing sees this).
    pub ip: IpAddr,
    /// The client's port (kept for the socket digest of a stream handed to Pingora).
    pub port: u16,
    /// [`ClientPeer::canonical`] as text, for `X-Forwarded-For`.
    pub text: Box<str>,
}

impl ClientPeer {
    pub fn new(addr: SocketAddr) -> ClientPeer {
        let ip = addr.ip();
        ClientPeer {
            ip,
            port: addr.port(),
            text: ip.to_canonical().to_string().into_boxed_str(),
        }
    }

    /// The address again, as the socket (or the PROXY header) reported it.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// IPv4-mapped addresses as IPv4 (trusted-proxy checks, `X-Forwarded-For`).
    pub fn canonical(&self) -> IpAddr {
        self.ip.to_canonical()
    }
}

/// How one request's fields are rewritten for the upstream.
pub struct RequestEdits<'a> {
    force: Option<&'a str>,
    peer: Option<&'a ClientPeer>,
    /// A trusted proxy in front set `X-Forwarded-Proto`: it is passed on as it is.
    keep_client_proto: bool,
    tls: bool,
    /// The `X-Request-Id` cohort sets (replacing any unusable one the client sent).
    request_id: Option<&'a str>,
}

impl<'a> RequestEdits<'a> {
    /// The edits for a request to service `svc` from `peer`, which arrived over TLS or
    /// not; `client_sent_proto` tells whether it carries `X-Forwarded-Proto`.
    pub fn new(
        table: &'a RoutingTable,
        svc: usize,
        peer: Option<&'a ClientPeer>,
        client_sent_proto: bool,
        tls: bool,
    ) -> RequestEdits<'a> {
        let service = &table.router.services[svc];
        let trusted = peer.is_some_and(|p| {
            table
                .router
                .trusted_proxies
                .iter()
                .any(|n| n.contains(&p.canonical()))
        });
        RequestEdits {
            force: service.cfg.force.as_ref().map(|f| f.name.as_str()),
            peer,
            keep_client_proto: trusted && client_sent_proto,
            tls,
            request_id: None,
        }
    }

    /// The request's id ([`super::RequestId`]): sent upstream unless the client's passes.
    pub fn with_request_id(mut self, id: &'a super::RequestId) -> RequestEdits<'a> {
        self.request_id = id.to_add();
        self
    }

    /// The `X-Request-Id` value cohort sets, if any.
    pub fn request_id(&self) -> Option<&'a str> {
        self.request_id
    }

    /// Whether the client's field `name` is left out: every `x-cohort-*` (cohort sets
    /// its own), the force header, and `X-Forwarded-For`/`-Proto` where cohort sets them.
    pub fn drops(&self, name: &str) -> bool {
        is_cohort_header(name)
            || self.force.is_some_and(|f| is(name, f))
            || (self.peer.is_some() && is(name, "x-forwarded-for"))
            || (!self.keep_client_proto && is(name, "x-forwarded-proto"))
            || (self.request_id.is_some() && is(name, super::request_id::REQUEST_ID))
    }

    /// Writes the `X-Forwarded-For` value into `out`: every hop the client (or proxies
    /// before cohort) listed, in order, then the peer. `false` (nothing written) when the
    /// peer is unknown; the client's field then passes unchanged.
    pub fn forwarded_for<'v>(
        &self,
        client_values: impl Iterator<Item = &'v [u8]>,
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(p) = self.peer else {
            return false;
        };
        for v in client_values {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(p.text.as_bytes());
        true
    }

    /// The `X-Forwarded-Proto` cohort sets, or `None` when the client's is passed on.
    pub fn forwarded_proto(&self) -> Option<&'static str> {
        match (self.keep_client_proto, self.tls) {
            (true, _) => None,
            (false, true) => Some("https"),
            (false, false) => Some("http"),
        }
    }
}

/// cohort's own fields towards the upstream for the variant serving and why.
pub fn cohort_fields(
    service: &Service,
    served: usize,
    reason: Reason,
) -> [(&'static str, &str); 2] {
    [
        (VARIANT_HEADER, service.variant_name(served)),
        (REASON_HEADER, service.reason_str(reason)),
    ]
}

/// The `Host` the upstream gets instead of the client's: the serving variant's
/// `host_header` (API Gateway, Lambda function URLs and virtual hosts route on it).
pub fn upstream_host(attempt: &super::Attempt) -> Option<&str> {
    attempt.pool().host_header()
}

/// Whether some variant of service `svc` replaces `Host`: a carrier that writes the
/// upstream head once per request keeps the client's `Host` aside for the attempts.
pub fn rehosts(table: &RoutingTable, svc: usize) -> bool {
    table.pools[svc].iter().any(|p| p.host_header().is_some())
}

/// What cohort changes in the response the client gets.
pub struct ResponseEdits<'a> {
    /// `expose_header` and the variant serving; the upstream's field of that name is
    /// replaced.
    pub expose: Option<(&'a str, &'a str)>,
    /// A `Set-Cookie` value for a freshly minted cohort id (added; the upstream's
    /// cookies are kept).
    pub set_cookie: Option<String>,
}

impl<'a> ResponseEdits<'a> {
    pub fn new(service: &'a Service, served: usize, d: &Decision, tls: bool) -> ResponseEdits<'a> {
        let expose = service
            .cfg
            .expose_header
            .as_ref()
            .map(|h| (h.as_str(), service.variant_name(served)));
        let set_cookie = match (&d.new_cookie, &service.cfg.assign_cookie) {
            (Some(id), Some(name)) => Some(format!(
                "{name}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
                id.as_str(),
                service.cfg.cookie_max_age_secs,
                if tls { "; Secure" } else { "" }
            )),
            _ => None,
        };
        ResponseEdits { expose, set_cookie }
    }

    /// Whether the upstream's field `name` is left out.
    pub fn drops(&self, name: &str) -> bool {
        self.expose.is_some_and(|(h, _)| is(name, h))
    }
}

/// Whether a header name is `x-cohort-*` in any letter case, also when spelled with `_`
/// (CGI-style servers map `x_cohort_variant` and `x-cohort-variant` to the same name).
pub fn is_cohort_header(name: &str) -> bool {
    let n = name.as_bytes();
    n.len() >= COHORT_PREFIX.len()
        && n.iter()
            .zip(COHORT_PREFIX)
            .all(|(a, b)| a.to_ascii_lowercase() == *b || (*a == b'_' && *b == b'-'))
}

/// Whether header `name` is `lower` (a lower-case name), ignoring case.
pub fn is(name: &str, lower: &str) -> bool {
    eq_lower(name.as_bytes(), lower.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cohort_headers_in_any_spelling() {
        for n in [
            "x-cohort-variant",
            "X-Cohort-Reason",
            "x_cohort_variant",
            "X_COHORT_x",
        ] {
            assert!(is_cohort_header(n), "{n}");
        }
        for n in ["x-cohort", "x-cohorts-a", "cohort-variant", "x-variant"] {
            assert!(!is_cohort_header(n), "{n}");
        }
    }
}
