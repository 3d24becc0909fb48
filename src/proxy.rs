//! The Pingora [`ProxyHttp`] impl: thin hooks that delegate to routing and upstream
//! selection. One table snapshot per request lives in [`Ctx`], so every hook (and the
//! retry) sees the same config even if a reload lands mid-request.

use crate::metrics::VariantMetrics;
use crate::routing::{Decision, Reason, RequestView, RoutingTable};
use crate::state::{InFlight, State};
use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora_core::protocols::http::ServerSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// Headers cohort sets towards the upstream (client copies are removed first).
pub const VARIANT_HEADER: &str = "x-cohort-variant";
pub const REASON_HEADER: &str = "x-cohort-reason";
const COHORT_PREFIX: &[u8] = b"x-cohort-";

/// The Pingora proxy: TLS listeners (HTTP/1.1 and HTTP/2), connections the HTTP/1.1 fast
/// path ([`crate::fast`]) hands over, and every plaintext listener when the fast path is
/// off (`COHORT_FAST_PATH=0`).
pub struct CohortProxy {
    pub state: Arc<State>,
}

/// Per-request state.
pub struct Ctx {
    /// Counts this request as in flight (graceful shutdown waits for it).
    _in_flight: InFlight,
    table: Option<Arc<RoutingTable>>,
    service: Option<usize>,
    decision: Option<Decision>,
    /// The variant actually serving (differs from the decision on fallback).
    served: usize,
    reason: Option<Reason>,
    /// Backend whose connect failed (the retry avoids it).
    failed: Option<SocketAddr>,
    retried: bool,
    /// The request came over TLS (cookies get `Secure`, `X-Forwarded-Proto: https`).
    tls: bool,
    /// Request header received (new_ctx runs right after it is read).
    start: Instant,
    /// When the current attempt's request went upstream.
    upstream_start: Option<Instant>,
    upstream_addr: Option<SocketAddr>,
    /// The cohort key, kept only when the access log includes keys.
    key: Option<String>,
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// A short plain-text response header (see [`plain_fields`]).
fn plain_header(code: u16, body: &str) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(code, Some(4))?;
    for (name, value) in plain_fields(code, body) {
        resp.insert_header(name, value)?;
    }
    Ok(resp)
}

/// The header fields of cohort's own plain-text responses (404 and 5xx), on the Pingora
/// path and the HTTP/1.1 fast path alike: content type, length, and `Retry-After: 1` on a
/// 503.
pub(crate) fn plain_fields(
    code: u16,
    body: &str,
) -> impl Iterator<Item = (header::HeaderName, header::HeaderValue)> {
    [
        Some((
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        )),
        Some((
            header::CONTENT_LENGTH,
            header::HeaderValue::from(body.len()),
        )),
        (code == 503).then(|| (header::RETRY_AFTER, header::HeaderValue::from_static("1"))),
    ]
    .into_iter()
    .flatten()
}

/// Writes a short plain-text response and keeps the connection usable.
async fn respond(session: &mut Session, code: u16, body: &'static str) -> Result<()> {
    let resp = plain_header(code, body)?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await
}

/// A short plain-text error response; the connection closes.
async fn write_error(session: &mut Session, code: u16) -> Result<()> {
    let body = error_body(code);
    let resp = plain_header(code, body)?;
    session
        .as_downstream_mut()
        .write_error_response(resp, Bytes::from_static(body.as_bytes()))
        .await
}

pub(crate) fn error_body(code: u16) -> &'static str {
    match code {
        502 => "502 bad gateway: the upstream failed\n",
        503 => "503 service unavailable: no healthy backend for this variant\n",
        504 => "504 gateway timeout: the upstream did not answer in time\n",
        404 => "404 not found: no service matches this host and path\n",
        400 => "400 bad request\n",
        _ => "error\n",
    }
}

#[async_trait]
impl ProxyHttp for CohortProxy {
    type CTX = Ctx;

    /// No downstream modules: Pingora's default adds a (disabled) compression module
    /// that still runs on every request; cohort never compresses.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            _in_flight: self.state.request_started(),
            table: None,
            service: None,
            decision: None,
            served: 0,
            reason: None,
            failed: None,
            retried: false,
            tls: false,
            start: Instant::now(),
            upstream_start: None,
            upstream_addr: None,
            key: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // Serve HTTP/1.1 pipelined requests in order instead of dropping them.
        if let ServerSession::H1(h1) = session.as_downstream_mut() {
            h1.set_pipelining_enabled(true);
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let table = self.state.table();
        // A client that stops reading is disconnected (`server.client_write_timeout_secs`).
        session.set_write_timeout(Some(table.config.server.client_write_timeout));
        // Idle time before the next request (`server.keepalive_timeout_secs`), unless
        // keep-alive is off for this connection (`Connection: close`, shutting down).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(table.config.server.keepalive_timeout.as_secs()));
        }
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let req = session.req_header();
        let view = RequestView::new(&req.headers, &req.uri, peer_ip(session));
        let Some(svc) = table.router.match_service(&view) else {
            ctx.table = Some(table);
            respond(session, 404, error_body(404)).await?;
            return Ok(true);
        };
        let decision = table.router.decide(svc, &view);
        if self
            .state
            .access_log
            .as_ref()
            .is_some_and(|l| l.include_keys)
        {
            ctx.key = access_log_key(&table, svc, &view, &decision);
        }
        ctx.served = decision.variant;
        ctx.reason = Some(decision.reason);
        ctx.service = Some(svc);
        ctx.decision = Some(decision);
        ctx.table = Some(table);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let (Some(table), Some(svc), Some(d)) = (&ctx.table, ctx.service, &ctx.decision) else {
            return Error::e_explain(ErrorType::InternalError, "no routing decision");
        };
        let pools = &table.pools[svc];
        let pool = &pools[ctx.served];
        if let Some(addr) = pool.select(d.pool_key, ctx.failed) {
            ctx.upstream_addr = Some(addr);
            return Ok(Box::new(pool.peer(addr)));
        }
        if ctx.retried {
            // The variant has no other backend to retry on: report the connect failure.
            return Error::e_explain(
                ErrorType::HTTPStatus(502),
                "connect failed; no other backend",
            );
        }
        if let Some((f, addr)) = table.fallback_backend(svc, ctx.served, d.pool_key) {
            ctx.upstream_addr = Some(addr);
            ctx.served = f;
            ctx.reason = Some(Reason::Fallback);
            return Ok(Box::new(pools[f].peer(addr)));
        }
        Error::e_explain(ErrorType::HTTPStatus(503), "no healthy backend")
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let kind = if matches!(e.etype(), ErrorType::ConnectTimedout) {
            KIND_TIMEOUT
        } else {
            KIND_CONNECT
        };
        if let Some(m) = variant_metrics(ctx) {
            m.record_upstream_error(kind);
        }
        let addr = peer._address.as_inet().copied();
        if let (Some(table), Some(svc), Some(addr)) = (&ctx.table, ctx.service, addr) {
            table.pools[svc][ctx.served].mark_failed(addr);
        }
        if !ctx.retried {
            ctx.retried = true;
            ctx.failed = addr;
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if e.esource() == &pingora_core::ErrorSource::Upstream {
            let kind = error_kind(&e);
            if let Some(m) = variant_metrics(ctx) {
                m.record_upstream_error(kind);
            }
            // A connection reset before any answer counts against the backend's health.
            let no_answer = session.response_written().is_none();
            if let (KIND_RESET, true, Some(t), Some(svc), Some(addr)) = (
                kind,
                no_answer,
                &ctx.table,
                ctx.service,
                peer._address.as_inet(),
            ) {
                t.pools[svc][ctx.served].mark_failed(*addr);
            }
        }
        // Pingora's default policy: retry only idempotent requests on reused connections.
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(t), Some(m)) = (ctx.upstream_start.take(), variant_metrics(ctx)) {
            m.record_upstream(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        // 499: the client went away before any response was written (NGINX's convention).
        let code = session
            .response_written()
            .map_or(499, |r| r.status.as_u16());
        let elapsed = ctx.start.elapsed().as_secs_f64();
        let Some(table) = ctx.table.as_ref() else {
            return;
        };
        match variant_metrics(ctx) {
            Some(m) => m.record_request(code, elapsed, ctx.reason.map(crate::metrics::reason_slot)),
            None => table.metrics.unmatched.record_request(code, elapsed, None),
        }
        if let Some(log) = &self.state.access_log {
            log.write(access_line(session, ctx, code, elapsed));
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(table), Some(svc)) = (&ctx.table, ctx.service) else {
            return Ok(());
        };
        let service = &table.router.services[svc];
        ctx.upstream_start = Some(Instant::now());
        strip_cohort_headers(up);
        if let Some(f) = &service.cfg.force {
            up.remove_header(&f.name);
        }
        up.insert_header(VARIANT_HEADER, service.variant_value(ctx.served))?;
        let reason = ctx.reason.unwrap_or(Reason::NoKey);
        up.insert_header(REASON_HEADER, service.reason_value(reason))?;
        let peer = peer_ip(session).map(|ip| ip.to_canonical());
        if let Some(ip) = peer {
            // Every hop the client (or proxies before us) listed, in order, then the peer.
            let mut xff = String::new();
            for v in up.headers.get_all("x-forwarded-for") {
                xff.push_str(&String::from_utf8_lossy(v.as_bytes()));
                xff.push_str(", ");
            }
            xff.push_str(&ip.to_string());
            up.insert_header("x-forwarded-for", xff)?;
        }
        let peer_trusted =
            peer.is_some_and(|ip| table.router.trusted_proxies.iter().any(|n| n.contains(&ip)));
        if !(peer_trusted && up.headers.contains_key("x-forwarded-proto")) {
            up.insert_header("x-forwarded-proto", if ctx.tls { "https" } else { "http" })?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(table), Some(svc), Some(d)) = (&ctx.table, ctx.service, &ctx.decision) else {
            return Ok(());
        };
        let service = &table.router.services[svc];
        if let Some(h) = &service.cfg.expose_header {
            resp.insert_header(h.clone(), service.variant_value(ctx.served))?;
        }
        if let (Some(id), Some(name)) = (&d.new_cookie, &service.cfg.assign_cookie) {
            let secure = if ctx.tls { "; Secure" } else { "" };
            let cookie = format!(
                "{name}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
                id.as_str(),
                service.cfg.cookie_max_age_secs
            );
            resp.append_header(header::SET_COOKIE, cookie)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let code = status_for(e);
        if code > 0 {
            if let Err(err) = write_error(session, code).await {
                log::debug!("could not send the {code} error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

/// One access log line (JSON).
fn access_line(session: &Session, ctx: &Ctx, code: u16, elapsed: f64) -> String {
    let req = session.req_header();
    let (service, variant, reason) =
        names(ctx.table.as_deref(), ctx.service, ctx.served, ctx.reason);
    crate::access_log::Entry {
        service,
        variant,
        reason,
        method: req.method.as_str(),
        path: req.uri.path(),
        status: code,
        seconds: elapsed,
        upstream: ctx.upstream_addr,
        bytes: session.as_downstream().body_bytes_sent(),
        key: ctx.key.as_deref(),
    }
    .line()
}

/// Service, variant and reason names for the access log (`none` when unmatched).
pub(crate) fn names(
    table: Option<&RoutingTable>,
    service: Option<usize>,
    served: usize,
    reason: Option<Reason>,
) -> (&str, &str, &str) {
    match (table, service) {
        (Some(t), Some(svc)) => {
            let s = &t.router.services[svc];
            (
                s.cfg.name.as_str(),
                s.variant_name(served),
                reason.map_or("", |r| s.reason_str(r)),
            )
        }
        _ => (crate::metrics::NONE, crate::metrics::NONE, ""),
    }
}

/// The key the decision hashed (or the minted cookie id), as text, for the access log.
pub(crate) fn access_log_key(
    table: &RoutingTable,
    svc: usize,
    view: &RequestView<'_>,
    d: &Decision,
) -> Option<String> {
    if let Some(id) = &d.new_cookie {
        return Some(id.as_str().to_string());
    }
    let s = &table.router.services[svc];
    let ip = table.router.client_ip(view);
    s.find_key(view, ip)
        .map(|(k, _)| String::from_utf8_lossy(k.as_bytes()).into_owned())
}

pub(crate) const KIND_CONNECT: usize = 0;
pub(crate) const KIND_TIMEOUT: usize = 1;
pub(crate) const KIND_RESET: usize = 2;
/// The upstream sent an unparsable response.
pub(crate) const KIND_PROTOCOL: usize = 3;

/// The metric handles of the variant serving this request.
fn variant_metrics(ctx: &Ctx) -> Option<&VariantMetrics> {
    let table = ctx.table.as_ref()?;
    table.metrics.variants.get(ctx.service?)?.get(ctx.served)
}

/// Index into [`crate::metrics::ERROR_KINDS`] for an upstream error.
fn error_kind(e: &Error) -> usize {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            KIND_TIMEOUT
        }
        ErrorType::ConnectionClosed | ErrorType::ConnectRefused => KIND_RESET,
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error => KIND_PROTOCOL,
        ErrorType::ReadError | ErrorType::WriteError => KIND_RESET,
        _ => 4,
    }
}

/// Status for a failed request: explicit statuses as given, upstream timeouts 504, other
/// upstream failures 502, client-side errors 400 (0 = the client is gone).
fn status_for(e: &Error) -> u16 {
    use pingora_core::ErrorSource;
    match e.etype() {
        ErrorType::HTTPStatus(c) => *c,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// Whether a header name is `x-cohort-*` in any letter case, also when spelled with `_`
/// (CGI-style servers map `x_cohort_variant` and `x-cohort-variant` to the same name).
pub(crate) fn is_cohort_header(name: &str) -> bool {
    let n = name.as_bytes();
    n.len() >= COHORT_PREFIX.len()
        && n.iter()
            .zip(COHORT_PREFIX)
            .all(|(a, b)| a.to_ascii_lowercase() == *b || (*a == b'_' && *b == b'-'))
}

/// Removes every client-sent `x-cohort-*` header (names are lower-case in `HeaderMap`).
fn strip_cohort_headers(up: &mut RequestHeader) {
    loop {
        let found = up
            .headers
            .keys()
            .find(|k| is_cohort_header(k.as_str()))
            .cloned();
        match found {
            Some(name) => {
                up.remove_header(&name);
            }
            None => break,
        }
    }
}
