//! The Pingora carrier: a [`ProxyHttp`] impl whose hooks translate Pingora's events for
//! the forwarding core ([`crate::forward`]) and apply what it decides to Pingora's header
//! maps. It serves HTTP/2 on TLS listeners, plaintext listeners when the HTTP/1 engine is
//! off (`COHORT_FAST_PATH=0`), and the connections the engine hands over. One table
//! snapshot per request lives in [`Ctx`], so every hook (and the retry) sees the same
//! config even if a reload lands mid-request.

use crate::forward::grpc::{is_grpc, GrpcStatus};
use crate::forward::plain::{error_body, plain_fields};
use crate::forward::{self, Attempt, Body, ClientPeer, Failure, Phase, Retry, UpstreamError};
use crate::routing::{Decision, RequestView, RoutingTable};
use crate::state::{InFlight, State};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::Instant;

/// The Pingora proxy application.
pub struct CohortProxy {
    pub state: Arc<State>,
}

/// Per-request state.
pub struct Ctx {
    /// Counts this request as in flight (graceful shutdown waits for it).
    _in_flight: InFlight,
    table: Option<Arc<RoutingTable>>,
    /// The routed request's decision and attempts (`None`: unmatched).
    route: Option<(Decision, Attempt)>,
    /// The request came over TLS (cookies get `Secure`, `X-Forwarded-Proto: https`).
    tls: bool,
    /// Request header received (new_ctx runs right after it is read).
    start: Instant,
    /// When the current attempt's request went upstream.
    upstream_start: Option<Instant>,
    /// When the upstream's 101 came: an upgraded request's duration ends there.
    upgraded_at: Option<Instant>,
    /// The cohort key, kept only when the access log includes keys.
    key: Option<String>,
    /// `server.max_request_body_bytes` for a body that streams (chunked).
    body_limit: forward::request::BodyLimit,
    /// The request's id (the same on every attempt).
    request_id: Option<forward::RequestId>,
    /// The client IP as routing saw it, kept only when the access log is on.
    client_ip: Option<std::net::IpAddr>,
    /// The request is a gRPC call (`content-type: application/grpc*`).
    grpc: bool,
    /// Its `grpc-status`: the upstream's (trailers, or a trailers-only response), or
    /// the error cohort answered with.
    grpc_status: Option<GrpcStatus>,
}

/// The client's address: the connection's peer, as its socket digest holds it (the
/// socket's, or what a PROXY protocol header named: see [`crate::proxy_protocol`]).
fn client_addr(session: &Session) -> Option<std::net::SocketAddr> {
    session.client_addr().and_then(|a| a.as_inet()).copied()
}

fn client_peer(session: &Session) -> Option<ClientPeer> {
    client_addr(session).map(ClientPeer::new)
}

/// A short plain-text response header, with the variant's field when given.
fn plain_header(code: u16, body: &str, variant: Option<(&str, &str)>) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(code, Some(5))?;
    for (name, value) in plain_fields(code, body) {
        resp.insert_header(name, value)?;
    }
    if let Some((name, value)) = variant {
        resp.insert_header(name.to_string(), value)?;
    }
    Ok(resp)
}

/// Writes a short plain-text response and keeps the connection usable.
async fn respond(session: &mut Session, code: u16) -> Result<()> {
    let body = error_body(code);
    let resp = plain_header(code, body, None)?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await
}

/// cohort's own failure `code` as a gRPC error (a trailers-only response: HTTP 200,
/// `grpc-status` and `grpc-message` in its head, [`GrpcStatus::for_status`]).
async fn write_grpc_error(
    session: &mut Session,
    code: u16,
    variant: Option<(&str, &str)>,
) -> Result<GrpcStatus> {
    let status = GrpcStatus::for_status(code);
    let mut resp = ResponseHeader::build(200, Some(5))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    resp.insert_header("grpc-status", status.label())?;
    resp.insert_header(
        "grpc-message",
        format!("cohort: {}", error_body(code).trim_end()),
    )?;
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    if let Some((name, value)) = variant {
        resp.insert_header(name.to_string(), value)?;
    }
    match session.as_downstream_mut() {
        // HEADERS with END_STREAM: gRPC's trailers-only response.
        ServerSession::H2(h2) => h2.write_response_header(Box::new(resp), true)?,
        other => other.write_error_response(resp, Bytes::new()).await?,
    }
    Ok(status)
}

/// cohort's own error response: plain text, or a gRPC error to a gRPC call.
async fn answer_error(
    session: &mut Session,
    ctx: &mut Ctx,
    code: u16,
    variant: Option<(&str, &str)>,
) -> Result<()> {
    if ctx.grpc {
        ctx.grpc_status = Some(write_grpc_error(session, code, variant).await?);
        return Ok(());
    }
    write_error(session, code, variant).await
}

/// A short plain-text error response; the connection closes.
async fn write_error(
    session: &mut Session,
    code: u16,
    variant: Option<(&str, &str)>,
) -> Result<()> {
    let body = error_body(code);
    let resp = plain_header(code, body, variant)?;
    session
        .as_downstream_mut()
        .write_error_response(resp, Bytes::from_static(body.as_bytes()))
        .await
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
            route: None,
            tls: false,
            start: Instant::now(),
            upstream_start: None,
            upgraded_at: None,
            key: None,
            body_limit: forward::request::BodyLimit::new(u64::MAX),
            request_id: None,
            client_ip: None,
            grpc: false,
            grpc_status: None,
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
        if self.state.is_draining() {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            session.set_keepalive(Some(table.config.server.keepalive_timeout.as_secs()));
        }
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let max_body = table.config.server.max_request_body_bytes;
        ctx.body_limit = forward::request::BodyLimit::new(max_body);
        let req = session.req_header();
        ctx.grpc = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| is_grpc(v.as_bytes()));
        let fields = || req.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
        ctx.request_id = Some(forward::RequestId::of(fields()));
        let fields = fields();
        let http11 = req.version == http::Version::HTTP_11;
        if let Err(refusal) = forward::request::check(http11, fields, max_body) {
            ctx.table = Some(table);
            answer_error(session, ctx, refusal.status(), None).await?;
            return Ok(true);
        }
        let req = session.req_header();
        let peer_ip = client_addr(session).map(|a| a.ip());
        let view = RequestView::new(&req.headers, &req.uri, peer_ip);
        if self.state.access_log.is_some() {
            ctx.client_ip = table.router.client_ip(&view);
        }
        let Some(svc) = table.router.match_service(&view) else {
            forward::sample::record(self.state.sample_log.as_ref(), &table, &view, None);
            ctx.table = Some(table);
            match ctx.grpc {
                true => answer_error(session, ctx, 404, None).await?,
                false => respond(session, 404).await?,
            }
            return Ok(true);
        };
        let decision = table.router.decide(svc, &view);
        forward::sample::record(
            self.state.sample_log.as_ref(),
            &table,
            &view,
            Some((svc, &decision)),
        );
        if self
            .state
            .access_log
            .as_ref()
            .is_some_and(|l| l.include_keys)
        {
            ctx.key = forward::finish::log_key(&table, svc, &view, &decision);
        }
        let attempt = Attempt::new(table.clone(), svc, &decision);
        ctx.route = Some((decision, attempt));
        ctx.table = Some(table);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some((_, attempt)) = &mut ctx.route else {
            return Error::e_explain(ErrorType::InternalError, "no routing decision");
        };
        match attempt.next_backend() {
            Ok(addr) => Ok(Box::new(attempt.pool().peer(addr))),
            Err(code) => Error::e_explain(ErrorType::HTTPStatus(code), "no backend to try"),
        }
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let (Some((_, attempt)), Some(addr)) = (&mut ctx.route, peer._address.as_inet()) else {
            return e;
        };
        let error = upstream_error(&e);
        if error == UpstreamError::Tls {
            let name = Some(peer.sni.as_str()).filter(|n| !n.is_empty());
            forward::error::log_tls_failure(*addr, name, &e.to_string());
        }
        let failure = Failure {
            error,
            phase: Phase::Connect,
            reused: false,
            idempotent: forward::is_idempotent(session.req_header().method.as_str()),
            body: Body::Replayable,
        };
        e.set_retry(!matches!(attempt.failed(*addr, failure), Retry::GiveUp(_)));
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
        let mut e = e.more_context(format!("Peer: {peer}"));
        let (Some((_, attempt)), Some(addr), true) = (
            &mut ctx.route,
            peer._address.as_inet(),
            e.esource() == &ErrorSource::Upstream,
        ) else {
            e.set_retry(false);
            return e;
        };
        let failure = Failure {
            error: upstream_error(&e),
            phase: if session.response_written().is_some() {
                Phase::Relay
            } else {
                Phase::Exchange
            },
            reused: client_reused,
            idempotent: forward::is_idempotent(session.req_header().method.as_str()),
            body: if session.as_ref().retry_buffer_truncated() {
                Body::Consumed
            } else {
                Body::Replayable
            },
        };
        e.set_retry(!matches!(attempt.failed(*addr, failure), Retry::GiveUp(_)));
        e
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // After a 101 the bytes are the upgraded protocol's (a WebSocket's frames), not
        // a request body.
        if session.was_upgraded() {
            return Ok(());
        }
        match body.as_ref().map(|b| ctx.body_limit.add(b.len())) {
            Some(Err(refusal)) => Error::e_explain(
                ErrorType::HTTPStatus(refusal.status()),
                "request body over server.max_request_body_bytes",
            ),
            _ => Ok(()),
        }
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(v) = trailers.get("grpc-status").filter(|_| ctx.grpc) {
            ctx.grpc_status = Some(GrpcStatus::parse(v.as_bytes()));
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(t), Some((_, a))) = (ctx.upstream_start.take(), &ctx.route) {
            if let Some(m) = a.metrics() {
                m.record_upstream(t.elapsed().as_secs_f64());
            }
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        // 499: the client went away before any response was written (NGINX's convention).
        let status = session
            .response_written()
            .map_or(499, |r| r.status.as_u16());
        let Some(table) = ctx.table.as_deref() else {
            return;
        };
        // A gRPC call answered 200 without a `grpc-status` was cut short: UNKNOWN, as its
        // client reads it.
        let grpc = match (ctx.grpc, ctx.grpc_status) {
            (false, _) => None,
            (true, Some(s)) => Some(s),
            (true, None) => (status == 200).then_some(GrpcStatus::UNKNOWN),
        };
        let req = session.req_header();
        forward::Finished {
            table,
            served: ctx.route.as_ref().map(|(_, a)| forward::Served {
                service: a.service(),
                variant: a.served(),
                reason: a.reason(),
            }),
            status,
            grpc,
            seconds: forward::finish::seconds(ctx.start, ctx.upgraded_at),
            upstream: ctx.route.as_ref().and_then(|(_, a)| a.upstream()),
            body_bytes: session.as_downstream().body_bytes_sent(),
            method: req.method.as_str(),
            path: req.uri.path(),
            key: ctx.key.as_deref(),
            client_ip: ctx.client_ip.or_else(|| {
                session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip())
            }),
            host: req
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| req.uri.host())
                .unwrap_or_default(),
            request_id: ctx.request_id.as_ref().map_or("", |r| r.as_str()),
        }
        .record(self.state.access_log.as_ref());
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some((_, attempt)) = &ctx.route else {
            return Ok(());
        };
        ctx.upstream_start = Some(Instant::now());
        let table = attempt.table();
        let service = &table.router.services[attempt.service()];
        let peer = client_peer(session);
        let edits = forward::RequestEdits::new(
            table,
            attempt.service(),
            peer.as_ref(),
            up.headers.contains_key("x-forwarded-proto"),
            ctx.tls,
        );
        let edits = match &ctx.request_id {
            Some(id) => edits.with_request_id(id),
            None => edits,
        };
        let mut xff = Vec::new();
        let has_xff = edits.forwarded_for(
            up.headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.as_bytes()),
            &mut xff,
        );
        let dropped: Vec<_> = up
            .headers
            .keys()
            .filter(|k| edits.drops(k.as_str()))
            .cloned()
            .collect();
        for name in dropped {
            up.remove_header(&name);
        }
        for (name, value) in
            forward::edits::cohort_fields(service, attempt.served(), attempt.reason())
        {
            up.insert_header(name, value)?;
        }
        if has_xff {
            up.insert_header("x-forwarded-for", xff)?;
        }
        if let Some(proto) = edits.forwarded_proto() {
            up.insert_header("x-forwarded-proto", proto)?;
        }
        if let Some(id) = edits.request_id() {
            up.insert_header(forward::request_id::REQUEST_ID, id)?;
        }
        if !forward::pooling::reusable_before(up.method.as_str()) {
            up.insert_header("connection", "close")?;
        }
        if let Some(host) = forward::edits::upstream_host(attempt) {
            up.insert_header(http::header::HOST, host)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if self.state.is_draining() {
            // Draining: the client reconnects (elsewhere) instead of finding this
            // connection closed under its next request.
            session.set_keepalive(None);
        }
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            ctx.upgraded_at = Some(Instant::now());
        }
        if ctx.grpc {
            // A trailers-only response carries its status in the head.
            if let Some(v) = resp.headers.get("grpc-status") {
                ctx.grpc_status = Some(GrpcStatus::parse(v.as_bytes()));
            }
        }
        let Some((d, attempt)) = &ctx.route else {
            return Ok(());
        };
        let service = &attempt.table().router.services[attempt.service()];
        let edits = forward::ResponseEdits::new(service, attempt.served(), d, ctx.tls);
        if let Some((name, value)) = edits.expose {
            resp.insert_header(name.to_string(), value)?;
        }
        if let Some(cookie) = edits.set_cookie {
            resp.append_header(http::header::SET_COOKIE, cookie)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = status_for(e);
        let variant = ctx
            .route
            .as_ref()
            .and_then(|(_, attempt)| forward::variant_field(attempt))
            .map(|(n, v)| (n.to_string(), v.to_string()));
        let variant = variant.as_ref().map(|(n, v)| (n.as_str(), v.as_str()));
        if code > 0 {
            if let Err(err) = answer_error(session, ctx, code, variant).await {
                log::debug!("could not send the {code} error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

/// A Pingora error on an upstream connection, as the forwarding core sees it.
fn upstream_error(e: &Error) -> UpstreamError {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | TLSHandshakeTimedout => UpstreamError::ConnectTimeout,
        TLSHandshakeFailure | InvalidCert | HandshakeError | TLSWantX509Lookup => {
            UpstreamError::Tls
        }
        ConnectRefused | ConnectNoRoute | ConnectError | BindError | SocketError
        | ConnectProxyFailure => UpstreamError::Connect,
        ReadTimedout | WriteTimedout => UpstreamError::Timeout,
        ConnectionClosed | ReadError | WriteError => UpstreamError::Closed,
        InvalidHTTPHeader | H1Error | H2Error | InvalidH2 | H2Downgrade => UpstreamError::Protocol,
        _ => UpstreamError::Other,
    }
}

/// Status for a failed request: explicit statuses as given, upstream failures as the
/// forwarding core maps them, client-side errors 400 (0 = the client is gone).
fn status_for(e: &Error) -> u16 {
    match (e.etype(), e.esource()) {
        (ErrorType::HTTPStatus(c), _) => *c,
        (_, ErrorSource::Upstream) => upstream_error(e).status(),
        (
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ErrorSource::Downstream,
        ) => 0,
        (_, ErrorSource::Downstream) => 400,
        (_, ErrorSource::Internal | ErrorSource::Unset) => 500,
    }
}
