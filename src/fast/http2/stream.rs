//! One HTTP/2 stream: checked, routed and planned from its `http::HeaderMap` with the
//! routing view for header maps (the one the Pingora carrier uses), its upstream
//! HTTP/1.1 head written by the engine's [`upstream_head`] with the forwarding core's
//! [`RequestEdits`], the core's [`Attempt`] driven over the engine's upstream pool, and
//! the finished request recorded with [`forward::Finished`].

use super::super::plan::{header, record_finished, upstream_head, LogFields};
use super::super::pool;
use super::super::upstream_io::{connect, UpErr};
use super::body::RequestBody;
use super::send;
use crate::forward::edits::is;
use crate::forward::{self, Attempt, ClientPeer, Failure, Phase, RequestEdits, RequestId, Retry};
use crate::routing::{Decision, RequestView, RoutingTable};
use crate::state::State;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What every stream of a connection shares.
pub(super) struct ConnCtx<'a> {
    pub state: &'a Arc<State>,
    pub peer: Option<ClientPeer>,
    /// Set when a stream was refused because this carrier cannot take it any more
    /// ([`refuses`]): the connection then goes away (GOAWAY) so the client reconnects.
    pub refused: AtomicBool,
}

/// What [`Exchange::run`] returns for a stream refused with `REFUSED_STREAM`: no
/// response, nothing recorded (the client retries it on a new connection).
const REFUSED: u16 = 0;

/// Serves one stream to its end.
pub(super) async fn serve(
    ctx: &ConnCtx<'_>,
    req: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    let _in_flight = ctx.state.request_started();
    let start = Instant::now();
    let (parts, recv) = req.into_parts();
    let table = ctx.state.table();
    let max_body = table.config.server.max_request_body_bytes;
    let client_length = parts.headers.contains_key(http::header::CONTENT_LENGTH);
    let mut s = Exchange {
        ctx,
        table,
        respond,
        body: RequestBody::new(recv, max_body, client_length),
        route: None,
        attempt: None,
        out: Vec::new(),
        log: None,
        sent: 0,
        idempotent: forward::is_idempotent(parts.method.as_str()),
        head_request: parts.method == http::Method::HEAD,
        host: None,
    };
    let status = s.run(&parts).await;
    if status == REFUSED {
        return;
    }
    s.finish(status, start);
    if status != 499 {
        s.body.drain().await;
    }
}

/// One stream's exchange in progress.
pub(super) struct Exchange<'c> {
    ctx: &'c ConnCtx<'c>,
    pub table: Arc<RoutingTable>,
    pub respond: SendResponse<Bytes>,
    pub body: RequestBody,
    pub route: Option<(usize, Decision)>,
    /// The routed request's attempts (`None`: unmatched, or while [`Exchange::proxy`]
    /// holds it).
    attempt: Option<Attempt>,
    /// The upstream request head without cohort's own fields and the final CRLF; the
    /// current attempt's whole head (and held body) once [`Exchange::finish_head`] ran.
    pub out: Vec<u8>,
    log: Option<LogFields>,
    /// Response body bytes sent to the client.
    pub sent: usize,
    pub idempotent: bool,
    pub head_request: bool,
    /// The client's host, left out of `out` when a variant of the service replaces it
    /// ([`forward::edits::rehosts`]): each attempt writes the one its variant sends.
    host: Option<Vec<u8>>,
}

impl Exchange<'_> {
    /// Checks, routes and forwards the request; returns the status the client got (499:
    /// it went away first).
    async fn run(&mut self, parts: &http::request::Parts) -> u16 {
        let state = self.ctx.state;
        let table = self.table.clone();
        let fields = || {
            parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes()))
        };
        let request_id = RequestId::of(fields());
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let method = parts.method.as_str();
        let authority = parts.uri.authority().map_or("", |a| a.as_str());
        let host = match parts.headers.get(http::header::HOST) {
            Some(h) => h.to_str().unwrap_or_default(),
            None => authority,
        };
        let peer = self.ctx.peer.as_ref();
        let max_body = table.config.server.max_request_body_bytes;
        let refused = match forward::request::check(false, fields(), max_body) {
            Err(r) => Some(r.status()),
            // CONNECT (a tunnel, not a request to forward) is not served here.
            Ok(()) if parts.method == http::Method::CONNECT => Some(501),
            Ok(()) => None,
        };
        let view = RequestView::new(&parts.headers, &parts.uri, peer.map(|p| p.ip));
        let route = match refused {
            Some(_) => None,
            None => table
                .router
                .match_service(&view)
                .map(|svc| (svc, table.router.decide(svc, &view))),
        };
        if let Some((svc, d)) = &route {
            if refuses(&table, *svc, d, &parts.headers) {
                // Nothing was processed: REFUSED_STREAM tells the client to send the
                // request again (RFC 9113 §8.7), on the new connection the GOAWAY that
                // follows makes it open (the Pingora carrier's).
                self.respond.send_reset(h2::Reason::REFUSED_STREAM);
                self.ctx.refused.store(true, Ordering::Relaxed);
                return REFUSED;
            }
        }
        if refused.is_none() {
            forward::sample::record(
                state.sample_log.as_ref(),
                &table,
                &view,
                route.as_ref().map(|(svc, d)| (*svc, d)),
            );
        }
        self.log = state.access_log.as_ref().map(|l| LogFields {
            method: method.to_string(),
            path: forward::finish::log_path(target).to_string(),
            key: match (&route, l.include_keys) {
                (Some((svc, d)), true) => forward::finish::log_key(&table, *svc, &view, d),
                _ => None,
            },
            client_ip: match refused {
                Some(_) => peer.map(|p| p.ip),
                None => table.router.client_ip(&view),
            },
            host: host.to_string(),
            request_id: request_id.as_str().to_string(),
        });
        let limit = table.config.server.client_write_timeout;
        if let Some(code) = refused {
            return send::plain(&mut self.respond, code, None, limit).await;
        }
        let Some((svc, decision)) = route else {
            return send::plain(&mut self.respond, 404, None, limit).await;
        };
        let edits = RequestEdits::new(
            &table,
            svc,
            peer,
            parts.headers.contains_key("x-forwarded-proto"),
            true,
        )
        .with_request_id(&request_id);
        // HTTP/2 carries the host as `:authority` and may split `Cookie` into crumbs
        // (RFC 9113 §8.3.1, §8.2.3): HTTP/1.1 wants one `Host` and one `Cookie`. `TE`
        // (only `trailers` in HTTP/2) is hop-by-hop and stays on this hop.
        let rehost = forward::edits::rehosts(&table, svc);
        if rehost {
            self.host = Some(host.as_bytes().to_vec());
        }
        let host_field = (!rehost && !parts.headers.contains_key(http::header::HOST))
            .then_some(("host", authority.as_bytes()));
        let cookie = joined_cookie(&parts.headers);
        let upstream_fields = || {
            host_field
                .into_iter()
                .chain(
                    fields()
                        .filter(|(n, _)| !is(n, "te") && (cookie.is_none() || !is(n, "cookie"))),
                )
                .chain(cookie.as_deref().map(|c| ("cookie", c)))
        };
        self.out.reserve(512);
        upstream_head(
            &mut self.out,
            &edits,
            method,
            target,
            upstream_fields,
            rehost,
        );
        let mut attempt = Attempt::new(table.clone(), svc, &decision);
        self.route = Some((svc, decision));
        let status = self.proxy(&mut attempt).await;
        self.attempt = Some(attempt);
        status
    }

    /// Drives `attempt` until a response was relayed or cohort gives up (the same loop
    /// as the engine's HTTP/1 exchange; every verdict is the core's).
    async fn proxy(&mut self, attempt: &mut Attempt) -> u16 {
        let limit = self.table.config.server.client_write_timeout;
        if self.body.hold().await.is_err() {
            return self.client_failed(limit).await;
        }
        self.body.head_fields(&mut self.out);
        let mark = self.out.len();
        loop {
            let addr = match attempt.next_backend() {
                Ok(a) => a,
                Err(code) => {
                    let variant = forward::variant_field(attempt);
                    return send::plain(&mut self.respond, code, variant, limit).await;
                }
            };
            self.finish_head(attempt, mark);
            let pooled = if attempt.fresh_only() {
                None
            } else {
                pool::take(addr, attempt.pool().conn_key(addr))
            };
            let reused = pooled.is_some();
            let read_timeout = attempt.pool().read_timeout();
            let result = match pooled {
                Some(up) => self.exchange(attempt, up, addr, read_timeout).await,
                None => match connect(attempt.pool(), addr).await {
                    Ok(up) => self.exchange(attempt, up, addr, read_timeout).await,
                    Err(error) => Err((UpErr::Upstream(error), Phase::Connect)),
                },
            };
            let (error, phase) = match result {
                Ok(status) => return status,
                Err((UpErr::ClientGone, _)) => return self.client_failed(limit).await,
                Err((UpErr::Upstream(e), phase)) => (e, phase),
            };
            let failure = Failure {
                error,
                phase,
                reused,
                idempotent: self.idempotent,
                body: self.body.replay(),
            };
            if let Retry::GiveUp(code) = attempt.failed(addr, failure) {
                let variant = forward::variant_field(attempt);
                return send::plain(&mut self.respond, code, variant, limit).await;
            }
        }
    }

    /// The request body failed on the client's side: 413 when it went over
    /// `server.max_request_body_bytes`, else the client is gone (499).
    async fn client_failed(&mut self, limit: std::time::Duration) -> u16 {
        if self.body.too_large {
            return send::plain(&mut self.respond, 413, None, limit).await;
        }
        499
    }

    /// Appends cohort's fields for the variant now serving, the end of the head and the
    /// held request body.
    fn finish_head(&mut self, attempt: &Attempt, mark: usize) {
        let service = &self.table.router.services[attempt.service()];
        let out = &mut self.out;
        out.truncate(mark);
        if let Some(client_host) = &self.host {
            let host =
                forward::edits::upstream_host(attempt).map_or(&client_host[..], str::as_bytes);
            header(out, b"host", host);
        }
        for (name, value) in
            forward::edits::cohort_fields(service, attempt.served(), attempt.reason())
        {
            header(out, name.as_bytes(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        self.body.put_held(out);
    }

    /// Metrics and the access log line for the finished stream. (gRPC needs a variant
    /// that speaks HTTP/2 upstream: this carrier takes no connection while one exists,
    /// and refuses the streams of one it took before a reload added one.)
    fn finish(&self, status: u16, start: Instant) {
        record_finished(
            &self.table,
            self.attempt.as_ref(),
            self.log.as_ref(),
            status,
            start,
            self.sent,
            self.ctx.state.access_log.as_ref(),
        );
    }
}

/// Whether this carrier must refuse a stream routed to `d` of service `svc`. It speaks
/// HTTP/1.1 to backends, and it took the connection when no variant spoke HTTP/2
/// ([`forward::carrier::h2_carrier_carries`]); a reload since then may have added one.
/// Such a stream (a variant or its fallback on `h2c`/`h2`, or gRPC once any variant
/// is) is refused, and the connection goes away; new connections go to the Pingora
/// carrier. While every variant speaks HTTP/1.1 the carrier keeps what it took (a gRPC
/// request as well: refusing it would only bring it back here).
fn refuses(table: &RoutingTable, svc: usize, d: &Decision, headers: &http::HeaderMap) -> bool {
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| forward::grpc::is_grpc(v.as_bytes()));
    !forward::carrier::engine_carries(table, svc, d, grpc)
        && !forward::carrier::h2_carrier_carries(table)
}

/// The `Cookie` crumbs of an HTTP/2 request joined with `; `, when there are several.
fn joined_cookie(headers: &http::HeaderMap) -> Option<Vec<u8>> {
    let mut crumbs = headers.get_all(http::header::COOKIE).iter();
    let first = crumbs.next()?;
    let mut rest = crumbs.peekable();
    rest.peek()?;
    let mut joined = first.as_bytes().to_vec();
    for c in rest {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(c.as_bytes());
    }
    Some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_crumbs_are_joined_for_http_1_1() {
        let mut h = http::HeaderMap::new();
        assert_eq!(joined_cookie(&h), None);
        h.append(http::header::COOKIE, "a=1".parse().unwrap());
        assert_eq!(joined_cookie(&h), None, "one field passes as it is");
        h.append(http::header::COOKIE, "cid=x".parse().unwrap());
        h.append(http::header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(joined_cookie(&h).as_deref(), Some(&b"a=1; cid=x; b=2"[..]));
    }
}
