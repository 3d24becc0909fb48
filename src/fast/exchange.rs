//! One request/response exchange on the fast path: parse and route the request head
//! ([`plan`]), pick a backend (fallback variant, one retry after a failed connect, a
//! fresh connection when a pooled one turns out stale), forward the request with
//! cohort's headers, stream the response back with the expose header and cookie, then
//! record metrics and the access log line. Behaviour matches [`crate::proxy`] hook for
//! hook; the integration tests run against this path.

use super::http1::{self, BodyFraming, ChunkedScanner, RequestFraming, MAX_HEAD, MAX_HEADERS};
use super::{pool, Conn, FastApp, Peer};
use crate::metrics::VariantMetrics;
use crate::proxy::{self, KIND_CONNECT, KIND_PROTOCOL, KIND_RESET, KIND_TIMEOUT};
use crate::routing::compare::eq_lower;
use crate::routing::{Decision, Reason, RequestView, RoutingTable};
use pingora_core::server::ShutdownWatch;
use pingora_timeout::fast_timeout::fast_timeout;
use pingora_timeout::tokio_timeout;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::time::Sleep;

/// What the connection does after an exchange.
pub enum Next {
    KeepAlive,
    /// Close after what was written (error response, `Connection: close`, shutdown).
    Close,
    /// The client is gone (or went quiet): drop the connection.
    Gone,
    /// Not a request for the fast path: Pingora serves the connection from here.
    HandOver,
}

/// Response bytes read from the upstream per read.
const UPSTREAM_CHUNK: usize = 16 * 1024;

/// A routed request head, ready to forward.
struct Plan {
    table: Arc<RoutingTable>,
    head_len: usize,
    framing: RequestFraming,
    head_request: bool,
    idempotent: bool,
    /// `None`: no service matches (404).
    route: Option<(usize, Decision)>,
    /// The upstream request head without cohort's own headers and the final CRLF.
    out: Vec<u8>,
    /// Method, path and key for the access log (only when it is on).
    log: Option<LogFields>,
}

struct LogFields {
    method: String,
    path: String,
    key: Option<String>,
}

enum Parsed {
    Partial,
    HandOver,
    Ready(Box<Plan>),
}

/// Serves the next request on `conn`. The exchange's (larger) future lives on the heap
/// only while a request is in flight, so an idle keep-alive connection's task stays
/// small (see BENCHMARKS.md, memory).
pub async fn serve_one(
    conn: &mut Conn,
    app: &FastApp,
    shutdown: &ShutdownWatch,
    closing: Pin<&mut Notified<'_>>,
) -> Next {
    match next_head(conn, app, closing).await {
        Ok(plan) => Box::pin(serve_plan(conn, app, shutdown, plan)).await,
        Err(next) => next,
    }
}

/// Waits until `conn.buf` holds a complete request head the fast path takes.
async fn next_head(
    conn: &mut Conn,
    app: &FastApp,
    mut closing: Pin<&mut Notified<'_>>,
) -> Result<Box<Plan>, Next> {
    // When the head must be complete (`server.client_header_timeout_secs` after it
    // started): fixed once, so a client sending a byte at a time cannot stretch it.
    let mut deadline = None;
    loop {
        if !conn.buf.is_empty() {
            match plan(app, &conn.buf, conn.peer.as_ref()) {
                Parsed::Ready(p) => return Ok(p),
                Parsed::HandOver => return Err(Next::HandOver),
                Parsed::Partial if conn.buf.len() >= MAX_HEAD => return Err(Next::HandOver),
                Parsed::Partial => {}
            }
        }
        // Between requests the connection is idle (a shutdown may close it). A new
        // connection is not: its client has just connected to send a request, which is
        // served even if the service started shutting down meanwhile.
        let idle = conn.buf.is_empty() && conn.served > 0;
        let wait = if idle {
            None
        } else {
            Some(*deadline.get_or_insert_with(|| tokio::time::Instant::now() + conn.head_timeout))
        };
        match conn.read_more(app, wait, closing.as_mut()).await {
            Ok(0) | Err(_) => return Err(Next::Gone),
            Ok(_) => {}
        }
    }
}

async fn serve_plan(
    conn: &mut Conn,
    app: &FastApp,
    shutdown: &ShutdownWatch,
    plan: Box<Plan>,
) -> Next {
    let _in_flight = app.state.request_started();
    let start = Instant::now();
    let mut ex = Exchange::new(*plan, conn);
    let closing = *shutdown.borrow() || app.closing.load(Ordering::Relaxed);
    ex.close = ex.plan.framing.close || closing;
    let (code, next) = match ex.plan.route {
        None => ex.not_found().await,
        Some(_) => ex.proxy().await,
    };
    ex.finish(app, code, start);
    next
}

/// Parses the head in `buf` and routes it.
fn plan(app: &FastApp, buf: &[u8], peer: Option<&Peer>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::HandOver,
    };
    let Some(framing) = http1::request_framing(&req) else {
        return Parsed::HandOver;
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::HandOver;
    };
    let table = app.state.table();
    let view = RequestView::raw(req.headers, target, peer.map(|p| p.ip));
    let route = table
        .router
        .match_service(&view)
        .map(|svc| (svc, table.router.decide(svc, &view)));
    let log = app.state.access_log.as_ref().map(|l| LogFields {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or_default().to_string(),
        key: match (&route, l.include_keys) {
            (Some((svc, d)), true) => proxy::access_log_key(&table, *svc, &view, d),
            _ => None,
        },
    });
    let mut out = Vec::new();
    if let Some((svc, _)) = &route {
        out.reserve(head_len + 256);
        upstream_head(&mut out, &table, *svc, method, target, req.headers, peer);
    }
    Parsed::Ready(Box::new(Plan {
        head_len,
        framing,
        head_request: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        route,
        out,
        log,
        table,
    }))
}

/// Writes the upstream request head: the client's headers minus hop-by-hop headers,
/// `x-cohort-*` (any spelling) and the force header, then `X-Forwarded-For` (every
/// client hop, then the peer) and `X-Forwarded-Proto`.
fn upstream_head(
    out: &mut Vec<u8>,
    table: &RoutingTable,
    svc: usize,
    method: &str,
    target: &str,
    headers: &[httparse::Header<'_>],
    peer: Option<&Peer>,
) {
    let service = &table.router.services[svc];
    let force = service.cfg.force.as_ref().map(|f| f.name.as_str());
    let trusted = peer.is_some_and(|p| {
        table
            .router
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&p.canonical))
    });
    let keep_client_proto = trusted && headers.iter().any(|h| is(h.name, "x-forwarded-proto"));
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in headers {
        let n = h.name;
        if is(n, "connection")
            || is(n, "keep-alive")
            || is(n, "proxy-connection")
            || proxy::is_cohort_header(n)
            || force.is_some_and(|f| is(n, f))
            || (peer.is_some() && is(n, "x-forwarded-for"))
            || (!keep_client_proto && is(n, "x-forwarded-proto"))
        {
            continue;
        }
        header(out, n.as_bytes(), h.value);
    }
    if let Some(p) = peer {
        out.extend_from_slice(b"x-forwarded-for: ");
        for h in headers.iter().filter(|h| is(h.name, "x-forwarded-for")) {
            out.extend_from_slice(h.value);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(p.text.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !keep_client_proto {
        out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    }
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether header `name` is `lower` (a lower-case name), ignoring case.
fn is(name: &str, lower: &str) -> bool {
    eq_lower(name.as_bytes(), lower.as_bytes())
}

/// Why an upstream attempt failed.
#[derive(Debug, Clone, Copy)]
enum UpErr {
    /// The connection broke before any response byte arrived.
    NoAnswer,
    Timeout,
    /// The response head was malformed or too large.
    Protocol,
    /// The client went away (or stalled) while sending the request body.
    ClientGone,
}

/// One exchange in progress.
struct Exchange<'c> {
    plan: Plan,
    conn: &'c mut Conn,
    /// Request body bytes that arrived with the head.
    body_prefix: Vec<u8>,
    /// Request body bytes still to read from the client.
    body_left: u64,
    close: bool,
    served: usize,
    reason: Reason,
    upstream: Option<SocketAddr>,
    /// Response body bytes sent to the client.
    sent: usize,
}

impl<'c> Exchange<'c> {
    fn new(plan: Plan, conn: &'c mut Conn) -> Exchange<'c> {
        let avail = conn.buf.len() - plan.head_len;
        let take = (plan.framing.content_length.min(avail as u64)) as usize;
        let body_prefix = conn.buf[plan.head_len..plan.head_len + take].to_vec();
        conn.buf.drain(..plan.head_len + take);
        let (served, reason) = plan
            .route
            .as_ref()
            .map_or((0, Reason::NoKey), |(_, d)| (d.variant, d.reason));
        Exchange {
            body_left: plan.framing.content_length - take as u64,
            plan,
            conn,
            body_prefix,
            close: false,
            served,
            reason,
            upstream: None,
            sent: 0,
        }
    }

    fn metrics(&self) -> Option<&VariantMetrics> {
        let (svc, _) = self.plan.route.as_ref()?;
        self.plan.table.metrics.variants.get(*svc)?.get(self.served)
    }

    /// 404: no service matches. The connection stays open unless a request body is
    /// still unread.
    async fn not_found(&mut self) -> (u16, Next) {
        self.close |= self.body_left > 0;
        let code = self.plain(404, proxy::error_body(404)).await;
        (code, self.after_write(code))
    }

    /// An error response; the connection closes after it.
    async fn error(&mut self, code: u16) -> (u16, Next) {
        self.close = true;
        let code = self.plain(code, proxy::error_body(code)).await;
        (code, if code == 499 { Next::Gone } else { Next::Close })
    }

    /// Writes a plain-text response; returns its status, or 499 if the client is gone.
    async fn plain(&mut self, code: u16, body: &str) -> u16 {
        let mut out = Vec::with_capacity(256);
        let reason = http::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let _ = write!(out, "HTTP/1.1 {code} {reason}\r\n");
        for (name, value) in proxy::plain_fields(code, body) {
            header(&mut out, name.as_str().as_bytes(), value.as_bytes());
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

    async fn write_client(&mut self, bytes: &[u8]) -> Result<(), ()> {
        self.send_client(bytes).await.ok_or(())?;
        self.conn.io.flush().await.map_err(|_| ())
    }

    /// Writes to the client; `None` if it is gone, or if the write could not finish within
    /// `server.client_write_timeout_secs` (the client stopped reading). Each write is one
    /// piece of the response as it came from the upstream (the head with the body bytes
    /// read with it, then reads of at most 16 KiB), so the limit applies to each piece, as
    /// NGINX's `send_timeout` does, not to the whole response.
    /// `tokio_timeout` creates its timer only if the write has to wait (almost never), and
    /// unlike `fast_timeout` reads no clock when it is set up (callgrind: about 130
    /// instructions per request less).
    async fn send_client(&mut self, bytes: &[u8]) -> Option<()> {
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

    /// Picks a backend, forwards the request and streams the response back.
    async fn proxy(&mut self) -> (u16, Next) {
        let Some((svc, d)) = self.plan.route.clone() else {
            return self.error(500).await;
        };
        let table = self.plan.table.clone();
        let pools = &table.pools[svc];
        let mut failed = None;
        let mut retried = false;
        let mut fresh_only = false;
        let mark = self.plan.out.len();
        loop {
            let addr = match pools[self.served].select(d.pool_key, failed) {
                Some(a) => a,
                None if retried => return self.error(502).await,
                None => match table.fallback_backend(svc, self.served, d.pool_key) {
                    Some((f, a)) => {
                        self.served = f;
                        self.reason = Reason::Fallback;
                        a
                    }
                    None => return self.error(503).await,
                },
            };
            self.upstream = Some(addr);
            let pool = &pools[self.served];
            self.finish_head(&table, svc, mark);
            let pooled = if fresh_only { None } else { pool::take(addr) };
            let reused = pooled.is_some();
            let up = match pooled {
                Some(s) => s,
                None => match connect(addr, pool.connect_timeout()).await {
                    Ok(s) => s,
                    Err(timeout) => {
                        let kind = if timeout { KIND_TIMEOUT } else { KIND_CONNECT };
                        if let Some(m) = self.metrics() {
                            m.record_upstream_error(kind);
                        }
                        pool.mark_failed(addr);
                        if !retried {
                            retried = true;
                            failed = Some(addr);
                            continue;
                        }
                        return self.error(if timeout { 504 } else { 502 }).await;
                    }
                },
            };
            match self.exchange(up, addr, pool.read_timeout()).await {
                Ok(done) => return done,
                Err(UpErr::NoAnswer)
                    if reused && self.plan.idempotent && self.body_left == 0 && !fresh_only =>
                {
                    // A pooled connection the upstream had closed: once more on a new one.
                    fresh_only = true;
                }
                Err(UpErr::ClientGone) => return (499, Next::Gone),
                Err(UpErr::NoAnswer)
                    if !reused && !retried && self.plan.idempotent && self.body_left == 0 =>
                {
                    // A fresh connection closed without an answer: the backend is
                    // failing. Count it against its health and try another one.
                    if let Some(m) = self.metrics() {
                        m.record_upstream_error(KIND_RESET);
                    }
                    pool.mark_failed(addr);
                    retried = true;
                    failed = Some(addr);
                }
                Err(e) => {
                    let (kind, code) = match e {
                        UpErr::Timeout => (KIND_TIMEOUT, 504),
                        UpErr::Protocol => (KIND_PROTOCOL, 502),
                        UpErr::NoAnswer | UpErr::ClientGone => (KIND_RESET, 502),
                    };
                    if let Some(m) = self.metrics() {
                        m.record_upstream_error(kind);
                    }
                    if matches!(e, UpErr::NoAnswer) {
                        pool.mark_failed(addr);
                    }
                    return self.error(code).await;
                }
            }
        }
    }

    /// Appends cohort's headers for the variant now serving, the end of the head and the
    /// body bytes already read.
    fn finish_head(&mut self, table: &RoutingTable, svc: usize, mark: usize) {
        let service = &table.router.services[svc];
        let out = &mut self.plan.out;
        out.truncate(mark);
        header(
            out,
            proxy::VARIANT_HEADER.as_bytes(),
            service.variant_name(self.served).as_bytes(),
        );
        header(
            out,
            proxy::REASON_HEADER.as_bytes(),
            service.reason_str(self.reason).as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body_prefix);
    }

    /// Sends the request on `up` and relays the response. `Err` only before any response
    /// byte reached the client.
    async fn exchange(
        &mut self,
        mut up: TcpStream,
        addr: SocketAddr,
        read_timeout: Duration,
    ) -> Result<(u16, Next), UpErr> {
        let sent_at = Instant::now();
        send_upstream(&mut up, &self.plan.out, read_timeout).await?;
        if self.body_left > 0 {
            self.stream_request_body(&mut up, read_timeout).await?;
        }
        let mut rbuf = Vec::with_capacity(UPSTREAM_CHUNK);
        let (head_len, status, framing) = 'head: loop {
            let timer = self.conn.upstream_timer.as_mut();
            if read(&mut up, &mut rbuf, timer, read_timeout).await? == 0 {
                return Err(UpErr::NoAnswer);
            }
            // Interim responses (100, 103) are not passed on; the final one is.
            while let Some(h) = self.response_head(&rbuf)? {
                if !is_interim(h.1) {
                    break 'head h;
                }
                rbuf.drain(..h.0);
            }
            if rbuf.len() >= MAX_HEAD {
                return Err(UpErr::Protocol);
            }
        };
        if status == 101 {
            return Err(UpErr::Protocol);
        }
        if let Some(m) = self.metrics() {
            m.record_upstream(sent_at.elapsed().as_secs_f64());
        }
        self.close |= framing.body == BodyFraming::UntilClose;
        // The downstream head was written into `plan.out` by `response_head`.
        let reusable = self
            .relay_body(&mut up, rbuf, head_len, framing.body, read_timeout)
            .await;
        let client_ok = reusable.is_some();
        if reusable == Some(true) && framing.reusable {
            pool::put(addr, up);
        }
        let next = match (client_ok, self.close) {
            (false, _) => Next::Gone,
            (true, true) => Next::Close,
            (true, false) => Next::KeepAlive,
        };
        Ok((status, next))
    }

    /// Streams the rest of the request body from the client to the upstream.
    async fn stream_request_body(
        &mut self,
        up: &mut TcpStream,
        limit: Duration,
    ) -> Result<(), UpErr> {
        if self.body_left > 16 * 1024 {
            // Large bodies move in 64 KiB reads rather than the head buffer's 4 KiB.
            self.conn.buf.reserve(64 * 1024);
        }
        while self.body_left > 0 {
            if self.conn.buf.is_empty() {
                match fast_timeout(
                    super::BODY_READ_TIMEOUT,
                    self.conn.io.read_buf(&mut self.conn.buf),
                )
                .await
                {
                    Ok(Ok(n)) if n > 0 => {}
                    // The client is gone mid-body: nothing more can be served.
                    _ => return Err(UpErr::ClientGone),
                }
            }
            let take = (self.body_left.min(self.conn.buf.len() as u64)) as usize;
            send_upstream(up, &self.conn.buf[..take], limit).await?;
            self.conn.buf.drain(..take);
            self.body_left -= take as u64;
        }
        Ok(())
    }

    /// Parses a response head in `rbuf`; for a final response also writes the client's
    /// response head into `plan.out`. `Ok(None)`: incomplete.
    fn response_head(
        &mut self,
        rbuf: &[u8],
    ) -> Result<Option<(usize, u16, http1::ResponseFraming)>, UpErr> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(rbuf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(UpErr::Protocol),
        };
        let framing =
            http1::response_framing(&resp, self.plan.head_request).ok_or(UpErr::Protocol)?;
        let status = resp.code.unwrap_or(0);
        if is_interim(status) {
            return Ok(Some((n, status, framing)));
        }
        let close = self.close || framing.body == BodyFraming::UntilClose;
        self.client_head(&resp, framing.body, close);
        Ok(Some((n, status, framing)))
    }

    /// The response head the client gets: the upstream's, minus hop-by-hop headers,
    /// with the expose header and a new cohort cookie.
    fn client_head(&mut self, resp: &httparse::Response<'_, '_>, body: BodyFraming, close: bool) {
        let Some((svc, d)) = &self.plan.route else {
            return;
        };
        let service = &self.plan.table.router.services[*svc];
        let expose = service.cfg.expose_header.as_ref().map(|h| h.as_str());
        let out = &mut self.plan.out;
        out.clear();
        status_line(out, resp.code.unwrap_or(0), resp.reason.unwrap_or(""));
        let mut has_date = false;
        for h in resp.headers.iter() {
            let n = h.name;
            has_date |= is(n, "date");
            if is(n, "connection")
                || is(n, "keep-alive")
                || is(n, "proxy-connection")
                || expose.is_some_and(|e| is(n, e))
                || (body == BodyFraming::Chunked && is(n, "content-length"))
            {
                continue;
            }
            header(out, n.as_bytes(), h.value);
        }
        if !has_date {
            http1::date_header(out);
        }
        if let Some(e) = expose {
            header(
                out,
                e.as_bytes(),
                service.variant_name(self.served).as_bytes(),
            );
        }
        if let (Some(id), Some(name)) = (&d.new_cookie, &service.cfg.assign_cookie) {
            let _ = write!(
                out,
                "set-cookie: {name}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax\r\n",
                id.as_str(),
                service.cfg.cookie_max_age_secs
            );
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Sends the client head (in `plan.out`) and the body. Returns `None` if the client
    /// went away, else whether the upstream connection ended cleanly at the body's end.
    async fn relay_body(
        &mut self,
        up: &mut TcpStream,
        mut rbuf: Vec<u8>,
        head_len: usize,
        body: BodyFraming,
        read_timeout: Duration,
    ) -> Option<bool> {
        let mut out = std::mem::take(&mut self.plan.out);
        let head_end = out.len();
        let avail = &rbuf[head_len..];
        let mut clean = true;
        let mut left = match body {
            BodyFraming::None => {
                clean = avail.is_empty();
                0
            }
            BodyFraming::Length(n) => {
                let take = (n.min(avail.len() as u64)) as usize;
                out.extend_from_slice(&avail[..take]);
                clean = avail.len() as u64 <= n;
                n - take as u64
            }
            BodyFraming::Chunked | BodyFraming::UntilClose => 1,
        };
        let mut scanner = ChunkedScanner::default();
        if body == BodyFraming::Chunked {
            match scanner.feed(avail) {
                Ok(Some(end)) => {
                    out.extend_from_slice(&avail[..end]);
                    clean = end == avail.len();
                    left = 0;
                }
                Ok(None) => out.extend_from_slice(avail),
                Err(_) => {
                    out.extend_from_slice(avail);
                    clean = false;
                    left = 0;
                    self.close = true;
                }
            }
        } else if body == BodyFraming::UntilClose {
            out.extend_from_slice(avail);
        }
        self.sent += out.len() - head_end;
        self.send_client(&out).await?;
        while left > 0 {
            rbuf.clear();
            let timer = self.conn.upstream_timer.as_mut();
            let n = match read(up, &mut rbuf, timer, read_timeout).await {
                Ok(n) if n > 0 => n,
                _ => {
                    // Upstream broke (or, for UntilClose, finished): the client's
                    // response ends here; it cannot be reused if it was cut short.
                    if body != BodyFraming::UntilClose {
                        self.close = true;
                    }
                    clean = false;
                    break;
                }
            };
            let chunk = &rbuf[..n];
            let forward = match body {
                BodyFraming::Length(_) => {
                    let take = (left.min(n as u64)) as usize;
                    left -= take as u64;
                    clean = take == n;
                    take
                }
                BodyFraming::Chunked => match scanner.feed(chunk) {
                    Ok(Some(end)) => {
                        left = 0;
                        clean = end == n;
                        end
                    }
                    Ok(None) => n,
                    Err(_) => {
                        left = 0;
                        clean = false;
                        self.close = true;
                        n
                    }
                },
                _ => n,
            };
            self.sent += forward;
            self.send_client(&chunk[..forward]).await?;
        }
        self.conn.io.flush().await.ok()?;
        Some(clean)
    }

    /// Metrics and the access log line for the finished exchange.
    fn finish(&self, app: &FastApp, code: u16, start: Instant) {
        let elapsed = start.elapsed().as_secs_f64();
        match self.metrics() {
            Some(m) => m.record_request(
                code,
                elapsed,
                Some(crate::metrics::reason_slot(self.reason)),
            ),
            None => self
                .plan
                .table
                .metrics
                .unmatched
                .record_request(code, elapsed, None),
        }
        if let (Some(log), Some(f)) = (&app.state.access_log, &self.plan.log) {
            let svc = self.plan.route.as_ref().map(|(s, _)| *s);
            let reason = svc.map(|_| self.reason);
            let (service, variant, reason) =
                proxy::names(Some(&self.plan.table), svc, self.served, reason);
            log.write(
                crate::access_log::Entry {
                    service,
                    variant,
                    reason,
                    method: &f.method,
                    path: &f.path,
                    status: code,
                    seconds: elapsed,
                    upstream: self.upstream,
                    bytes: self.sent,
                    key: f.key.as_deref(),
                }
                .line(),
            );
        }
    }
}

/// `HTTP/1.1 <code> <reason>\r\n` without going through `fmt`.
fn status_line(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let code = code.min(999);
    out.extend_from_slice(&[
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A 1xx response other than 101 (which cohort never asks for).
fn is_interim(status: u16) -> bool {
    (100..200).contains(&status) && status != 101
}

/// Reads from the upstream into `buf` within `limit`.
async fn read(
    up: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut timer: Pin<&mut Sleep>,
    limit: Duration,
) -> Result<usize, UpErr> {
    if buf.capacity() - buf.len() < UPSTREAM_CHUNK / 4 {
        buf.reserve(UPSTREAM_CHUNK);
    }
    timer.as_mut().reset(tokio::time::Instant::now() + limit);
    tokio::select! {
        biased;
        r = up.read_buf(buf) => r.map_err(|_| UpErr::NoAnswer),
        _ = timer => Err(UpErr::Timeout),
    }
}

/// Writes request bytes to the upstream; an upstream that does not take them within
/// `limit` (the variant's `read_timeout_ms`) is a timeout.
async fn send_upstream(up: &mut TcpStream, bytes: &[u8], limit: Duration) -> Result<(), UpErr> {
    match tokio_timeout(limit, up.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(UpErr::NoAnswer),
        Err(_) => Err(UpErr::Timeout),
    }
}

/// A new upstream connection; `Err(true)` on timeout.
async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, bool> {
    match fast_timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(_)) => Err(false),
        Err(_) => Err(true),
    }
}
