//! One request/response exchange on the HTTP/1 engine: wait for a request head, route it
//! ([`super::plan`]), drive the forwarding core's [`Attempt`] (select, fall back, retry,
//! give up) over upstream connections, relay the response ([`super::relay`]), and
//! record the finished request with [`forward::Finished`].

use super::plan::{plan, Parsed, Plan};
use super::upstream_io::{connect, UpErr};
use super::{http1, pool, ClientIo, Conn, FastApp};
use crate::forward::plain::{error_body, plain_fields};
use crate::forward::{self, Attempt, Body, Failure, Phase, Retry};
use pingora_core::server::ShutdownWatch;
use pingora_timeout::tokio_timeout;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Request bodies up to this size are read whole before they go upstream, so that a
/// retry resends exactly what was sent; larger ones stream, and are never retried once
/// part of them went upstream.
pub(super) const REPLAY_BODY: usize = 64 * 1024;

/// What the connection does after an exchange.
pub enum Next {
    KeepAlive,
    /// Close after what was written (error response, `Connection: close`, shutdown).
    Close,
    /// The client is gone (or went quiet): drop the connection.
    Gone,
    /// Not a request for the engine: Pingora serves the connection from here.
    HandOver,
}

/// Serves the next request on `conn`, whose head is due by `head_due` if given (else
/// `server.client_header_timeout_secs` after it started arriving). The caller boxes
/// this future: it lives on the heap only while a request is in flight, so an idle
/// keep-alive connection's task stays small (see BENCHMARKS.md, memory).
pub async fn serve_one<S: ClientIo>(
    conn: &mut Conn<S>,
    app: &FastApp,
    shutdown: &ShutdownWatch,
    head_due: Option<tokio::time::Instant>,
) -> Next {
    match next_head(conn, app, head_due).await {
        Ok(plan) => serve_plan(conn, app, shutdown, plan).await,
        Err(next) => next,
    }
}

/// Waits until `conn.buf` holds a complete request head the engine takes.
async fn next_head<S: ClientIo>(
    conn: &mut Conn<S>,
    app: &FastApp,
    mut deadline: Option<tokio::time::Instant>,
) -> Result<Box<Plan>, Next> {
    loop {
        match plan(&app.state, &conn.buf, conn.peer.as_ref(), conn.tls) {
            Parsed::Ready(p) => return Ok(p),
            Parsed::HandOver => return Err(Next::HandOver),
            Parsed::Partial if conn.buf.len() >= conn.max_head as usize => {
                let table = app.state.table();
                return Ok(super::plan::refused(table, conn.buf.len(), 431, None));
            }
            Parsed::Partial | Parsed::TooManyFields => {}
        }
        // When the head must be complete: fixed once, so a client sending a byte at a
        // time cannot stretch it.
        let due =
            *deadline.get_or_insert_with(|| tokio::time::Instant::now() + conn.head_timeout.get());
        match conn.read_head(due).await {
            Ok(0) | Err(_) => return Err(Next::Gone),
            Ok(_) => {}
        }
    }
}

async fn serve_plan<S: ClientIo>(
    conn: &mut Conn<S>,
    app: &FastApp,
    shutdown: &ShutdownWatch,
    plan: Box<Plan>,
) -> Next {
    let _in_flight = app.state.request_started();
    let start = Instant::now();
    let mut ex = Exchange::new(*plan, conn);
    let closing =
        *shutdown.borrow() || app.closing.load(Ordering::Relaxed) || app.state.is_draining();
    ex.close = ex.plan.framing.close || closing;
    let (code, next) = match (ex.plan.refused, ex.attempt.take()) {
        (Some(code), _) => ex.error(code, None).await,
        (None, None) => ex.not_found().await,
        (None, Some(mut attempt)) => {
            let done = ex.proxy(&mut attempt).await;
            ex.attempt = Some(attempt);
            done
        }
    };
    ex.finish(app, code, start);
    next
}

/// One exchange in progress.
pub(super) struct Exchange<'c, S> {
    pub plan: Plan,
    pub conn: &'c mut Conn<S>,
    /// The routed request's attempts (`None`: unmatched, or while [`Exchange::proxy`]
    /// holds it).
    attempt: Option<Attempt>,
    /// Request body bytes that arrived with the head.
    body_prefix: Vec<u8>,
    /// Request body bytes still to read from the client.
    pub body_left: u64,
    /// Of the request body, the part that did not arrive with the head.
    body_rest: u64,
    pub close: bool,
    /// Response body bytes sent to the client.
    pub sent: usize,
}

impl<'c, S: ClientIo> Exchange<'c, S> {
    fn new(plan: Plan, conn: &'c mut Conn<S>) -> Exchange<'c, S> {
        let avail = conn.buf.len() - plan.head_len;
        let take = (plan.framing.content_length.min(avail as u64)) as usize;
        let body_prefix = conn.buf[plan.head_len..plan.head_len + take].to_vec();
        conn.buf.drain(..plan.head_len + take);
        let attempt = plan
            .route
            .as_ref()
            .map(|(svc, d)| Attempt::new(plan.table.clone(), *svc, d));
        let body_left = plan.framing.content_length - take as u64;
        Exchange {
            body_left,
            body_rest: body_left,
            plan,
            conn,
            attempt,
            body_prefix,
            close: false,
            sent: 0,
        }
    }

    /// Whether the request could be sent again: none of its body was streamed yet.
    pub fn body(&self) -> Body {
        if self.body_left == self.body_rest {
            Body::Replayable
        } else {
            Body::Consumed
        }
    }

    /// 404: no service matches. The connection stays open unless a request body is
    /// still unread.
    async fn not_found(&mut self) -> (u16, Next) {
        self.close |= self.body_left > 0;
        let code = self.plain(404, None).await;
        (code, self.after_write(code))
    }

    /// An error response, naming the variant that failed (`expose_header`); the
    /// connection closes after it.
    async fn error(&mut self, code: u16, variant: Option<(&str, &str)>) -> (u16, Next) {
        self.close = true;
        let code = self.plain(code, variant).await;
        (code, if code == 499 { Next::Gone } else { Next::Close })
    }

    /// Writes cohort's own response, with the variant's field when given; returns its
    /// status, or 499 if the client is gone.
    async fn plain(&mut self, code: u16, variant: Option<(&str, &str)>) -> u16 {
        let body = error_body(code);
        let mut out = Vec::with_capacity(256);
        let reason = http::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let _ = write!(out, "HTTP/1.1 {code} {reason}\r\n");
        for (name, value) in plain_fields(code, body) {
            super::plan::header(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
        if let Some((name, value)) = variant {
            super::plan::header(&mut out, name.as_bytes(), value.as_bytes());
        }
        http1::date_header(&mut out);
        if self.close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body.as_bytes());
        self.sent = body.len();
        match self.write_client(&out).await {
            Ok(()) => code,
            Err(()) => 499,
        }
    }

    pub async fn write_client(&mut self, bytes: &[u8]) -> Result<(), ()> {
        self.send_client(bytes).await.ok_or(())?;
        self.conn.io.flush().await.map_err(|_| ())
    }

    /// Writes to the client; `None` if it is gone, or if the write could not finish within
    /// `server.client_write_timeout_secs` (the client stopped reading). Each write is one
    /// piece of the response as it came from the upstream (the head with the body bytes
    /// read with it, then reads of at most 16 KiB), so the limit applies to each piece, as
    /// NGINX's `send_timeout` does, not to the whole response.
    /// `tokio_timeout` creates its timer only if the write has to wait (almost never), and
    /// unlike `fast_timeout` reads no clock when it is set up (see BENCHMARKS.md).
    pub async fn send_client(&mut self, bytes: &[u8]) -> Option<()> {
        let limit = self.plan.table.config.server.client_write_timeout;
        match tokio_timeout(limit, self.conn.io.write_all(bytes)).await {
            Ok(Ok(())) => Some(()),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    fn after_write(&self, code: u16) -> Next {
        match (code, self.close) {
            (499, _) => Next::Gone,
            (_, true) => Next::Close,
            _ => Next::KeepAlive,
        }
    }

    /// Drives `attempt` until a response was relayed or cohort gives up.
    async fn proxy(&mut self, attempt: &mut Attempt) -> (u16, Next) {
        if self.body_left > 0 && self.plan.framing.content_length <= REPLAY_BODY as u64 {
            // A small body is read whole before the first attempt, so a retry can send
            // it again exactly (Envoy's retry buffer; NGINX buffers every body).
            if self.buffer_body().await.is_err() {
                return (499, Next::Gone);
            }
        }
        let mark = self.plan.out.len();
        loop {
            let addr = match attempt.next_backend() {
                Ok(a) => a,
                Err(code) => return self.error(code, forward::variant_field(attempt)).await,
            };
            self.finish_head(attempt, mark);
            let key = attempt.pool().conn_key(addr);
            let pooled = if attempt.fresh_only() {
                None
            } else {
                pool::take(addr, key)
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
                Ok(done) => return done,
                Err((UpErr::ClientGone, _)) => return (499, Next::Gone),
                Err((UpErr::Upstream(e), phase)) => (e, phase),
            };
            let failure = Failure {
                error,
                phase,
                reused,
                idempotent: self.plan.idempotent,
                body: self.body(),
            };
            if let Retry::GiveUp(code) = attempt.failed(addr, failure) {
                return self.error(code, forward::variant_field(attempt)).await;
            }
        }
    }

    /// Reads the rest of the request body into `body_prefix`.
    async fn buffer_body(&mut self) -> Result<(), ()> {
        use tokio::io::AsyncReadExt;
        while self.body_left > 0 {
            if self.conn.buf.is_empty() {
                let read = self.conn.io.read_buf(&mut self.conn.buf);
                match pingora_timeout::fast_timeout::fast_timeout(super::BODY_READ_TIMEOUT, read)
                    .await
                {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return Err(()),
                }
            }
            let take = (self.body_left.min(self.conn.buf.len() as u64)) as usize;
            self.body_prefix.extend_from_slice(&self.conn.buf[..take]);
            self.conn.buf.drain(..take);
            self.body_left -= take as u64;
        }
        self.body_rest = 0;
        Ok(())
    }

    /// Appends cohort's fields for the variant now serving, the end of the head and the
    /// request body bytes that came with it.
    fn finish_head(&mut self, attempt: &Attempt, mark: usize) {
        let service = &self.plan.table.router.services[attempt.service()];
        let out = &mut self.plan.out;
        out.truncate(mark);
        if let Some(client_host) = &self.plan.host {
            let host =
                forward::edits::upstream_host(attempt).map_or(&client_host[..], str::as_bytes);
            super::plan::header(out, b"host", host);
        }
        for (name, value) in
            forward::edits::cohort_fields(service, attempt.served(), attempt.reason())
        {
            super::plan::header(out, name.as_bytes(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body_prefix);
    }

    /// Metrics and the access log line for the finished exchange.
    fn finish(&self, app: &FastApp, status: u16, start: Instant) {
        super::plan::record_finished(
            &self.plan.table,
            self.attempt.as_ref(),
            self.plan.log.as_ref(),
            status,
            start,
            self.sent,
            app.state.access_log.as_ref(),
        );
    }
}
