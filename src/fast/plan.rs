//! Parsing and routing one request head on the HTTP/1 engine: the [`Plan`] of what to
//! forward, with the upstream request head written by the forwarding core's
//! [`RequestEdits`].

use super::http1::{self, RequestFraming, MAX_FIELDS, MAX_HEADERS};
use crate::forward::edits::is;
use crate::forward::{self, ClientPeer, RequestEdits, RequestId};
use crate::routing::{Decision, RequestView, RoutingTable};
use crate::state::State;
use std::sync::Arc;

/// A routed request head, ready to forward.
pub(super) struct Plan {
    pub table: Arc<RoutingTable>,
    pub head_len: usize,
    pub framing: RequestFraming,
    pub head_request: bool,
    pub idempotent: bool,
    /// `None`: no service matches (404).
    pub route: Option<(usize, Decision)>,
    /// The upstream request head without cohort's own headers and the final CRLF.
    pub out: Vec<u8>,
    /// Method, path and key for the access log (only when it is on).
    pub log: Option<LogFields>,
    /// The request is refused with this status before routing ([`forward::request`]).
    pub refused: Option<u16>,
    /// The client's `Host`, left out of `out` when a variant of the service replaces it
    /// ([`forward::edits::rehosts`]): each attempt writes the one its variant sends.
    pub host: Option<Vec<u8>>,
}

pub(super) struct LogFields {
    pub method: String,
    pub path: String,
    pub key: Option<String>,
    pub client_ip: Option<std::net::IpAddr>,
    pub host: String,
    pub request_id: String,
}

/// Records a request the engine finished (an HTTP/1 exchange or an HTTP/2 stream):
/// metrics and the access log line, through the core's [`forward::Finished`]. gRPC calls
/// are never the engine's (`forward::carrier`), so there is no `grpc-status` to count.
pub(super) fn record_finished(
    table: &RoutingTable,
    attempt: Option<&forward::Attempt>,
    log: Option<&LogFields>,
    status: u16,
    start: std::time::Instant,
    body_bytes: usize,
    access_log: Option<&crate::access_log::AccessLog>,
) {
    forward::Finished {
        table,
        served: attempt.map(|a| forward::Served {
            service: a.service(),
            variant: a.served(),
            reason: a.reason(),
        }),
        status,
        grpc: None,
        seconds: start.elapsed().as_secs_f64(),
        upstream: attempt.and_then(|a| a.upstream()),
        body_bytes,
        method: log.map_or("", |l| l.method.as_str()),
        path: log.map_or("", |l| l.path.as_str()),
        key: log.and_then(|l| l.key.as_deref()),
        client_ip: log.and_then(|l| l.client_ip),
        host: log.map_or("", |l| l.host.as_str()),
        request_id: log.map_or("", |l| l.request_id.as_str()),
    }
    .record(access_log);
}

pub(super) enum Parsed {
    Partial,
    HandOver,
    Ready(Box<Plan>),
    /// More fields than the slots given (internal to [`plan`]).
    TooManyFields,
}

/// Parses the head in `buf` and routes it. Most heads fit [`MAX_HEADERS`] slots; a
/// longer one is parsed again with [`MAX_FIELDS`] (rare, so the common parse does not
/// pay for the larger array).
pub(super) fn plan(state: &State, buf: &[u8], peer: Option<&ClientPeer>, tls: bool) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match plan_with(state, buf, peer, tls, &mut headers) {
        Parsed::TooManyFields => {
            let mut many = [httparse::EMPTY_HEADER; MAX_FIELDS];
            match plan_with(state, buf, peer, tls, &mut many) {
                Parsed::TooManyFields => {
                    Parsed::Ready(refused(state.table(), buf.len(), 431, None))
                }
                parsed => parsed,
            }
        }
        parsed => parsed,
    }
}

fn plan_with<'b>(
    state: &State,
    buf: &'b [u8],
    peer: Option<&ClientPeer>,
    tls: bool,
    headers: &mut [httparse::Header<'b>],
) -> Parsed {
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::TooManyFields,
        Err(_) => return Parsed::HandOver,
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::HandOver;
    };
    let table = state.table();
    let fields = req.headers.iter().map(|h| (h.name, h.value));
    let server = &table.config.server;
    let refusal = match forward::request::check(
        req.version == Some(1),
        fields,
        server.max_request_body_bytes,
    ) {
        Err(r) => Some(r.status()),
        Ok(()) if head_len > server.max_request_head_bytes => Some(431),
        Ok(()) => None,
    };
    if let Some(code) = refusal {
        let log = state.access_log.as_ref().map(|_| LogFields {
            method: method.to_string(),
            path: forward::finish::log_path(target).to_string(),
            key: None,
            client_ip: peer.map(|p| p.ip),
            host: host_of(req.headers).to_string(),
            request_id: RequestId::of(req.headers.iter().map(|h| (h.name, h.value)))
                .as_str()
                .to_string(),
        });
        return Parsed::Ready(refused(table, head_len, code, log));
    }
    let Some(framing) = http1::request_framing(&req) else {
        return Parsed::HandOver;
    };
    let view = RequestView::raw(req.headers, target, peer.map(|p| p.ip));
    let route = table
        .router
        .match_service(&view)
        .map(|svc| (svc, table.router.decide(svc, &view)));
    if let Some((svc, d)) = &route {
        // gRPC is always a POST: other requests skip the field scan.
        let grpc = method == "POST"
            && req
                .headers
                .iter()
                .any(|h| is(h.name, "content-type") && forward::grpc::is_grpc(h.value));
        if !forward::carrier::engine_carries(&table, *svc, d, grpc) {
            return Parsed::HandOver;
        }
    }
    forward::sample::record(
        state.sample_log.as_ref(),
        &table,
        &view,
        route.as_ref().map(|(svc, d)| (*svc, d)),
    );
    let request_id = RequestId::of(req.headers.iter().map(|h| (h.name, h.value)));
    let log = state.access_log.as_ref().map(|l| LogFields {
        method: method.to_string(),
        path: forward::finish::log_path(target).to_string(),
        key: match (&route, l.include_keys) {
            (Some((svc, d)), true) => forward::finish::log_key(&table, *svc, &view, d),
            _ => None,
        },
        client_ip: table.router.client_ip(&view),
        host: host_of(req.headers).to_string(),
        request_id: request_id.as_str().to_string(),
    });
    let mut out = Vec::new();
    let mut host = None;
    if let Some((svc, _)) = &route {
        if forward::edits::rehosts(&table, *svc) {
            host = Some(
                req.headers
                    .iter()
                    .find(|h| is(h.name, "host"))
                    .map_or(Vec::new(), |h| h.value.to_vec()),
            );
        }
        out.reserve(head_len + 256);
        let edits = RequestEdits::new(
            &table,
            *svc,
            peer,
            req.headers.iter().any(|h| is(h.name, "x-forwarded-proto")),
            tls,
        )
        .with_request_id(&request_id);
        let fields = || req.headers.iter().map(|h| (h.name, h.value));
        upstream_head(&mut out, &edits, method, target, fields, host.is_some());
    }
    Parsed::Ready(Box::new(Plan {
        head_len,
        framing,
        head_request: method == "HEAD",
        idempotent: forward::is_idempotent(method),
        route,
        out,
        log,
        refused: None,
        host,
        table,
    }))
}

/// A request refused with `code` before routing; the connection closes after the answer.
pub(super) fn refused(
    table: Arc<RoutingTable>,
    head_len: usize,
    code: u16,
    log: Option<LogFields>,
) -> Box<Plan> {
    Box::new(Plan {
        head_len,
        framing: RequestFraming {
            content_length: 0,
            close: true,
        },
        head_request: false,
        idempotent: false,
        route: None,
        out: Vec::new(),
        log,
        refused: Some(code),
        host: None,
        table,
    })
}

/// Writes the upstream request head: the client's fields minus connection-level ones
/// and those the edits drop (and `Host` when `rehost`), then the `X-Forwarded-*` fields
/// the edits set. `fields` gives the client's (`name`, `value`), in order (it is walked
/// twice).
pub(super) fn upstream_head<'h, I: Iterator<Item = (&'h str, &'h [u8])>>(
    out: &mut Vec<u8>,
    edits: &RequestEdits<'_>,
    method: &str,
    target: &str,
    fields: impl Fn() -> I,
    rehost: bool,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in fields() {
        if http1::is_connection_field(name) || edits.drops(name) || rehost && is(name, "host") {
            continue;
        }
        header(out, name.as_bytes(), value);
    }
    let mark = out.len();
    out.extend_from_slice(b"x-forwarded-for: ");
    let client_hops = fields()
        .filter(|(name, _)| is(name, "x-forwarded-for"))
        .map(|(_, value)| value);
    if edits.forwarded_for(client_hops, out) {
        out.extend_from_slice(b"\r\n");
    } else {
        out.truncate(mark);
    }
    if let Some(proto) = edits.forwarded_proto() {
        header(out, b"x-forwarded-proto", proto.as_bytes());
    }
    if let Some(id) = edits.request_id() {
        header(out, b"x-request-id", id.as_bytes());
    }
}

/// The request's `Host` value, for the access log (empty if absent or not UTF-8).
fn host_of<'h>(headers: &[httparse::Header<'h>]) -> &'h str {
    headers
        .iter()
        .find(|h| is(h.name, "host"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .unwrap_or_default()
}

pub(super) fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
