//! The upstream side of one attempt on the HTTP/1 engine: send the request (head, then
//! the body as it streams in), read the response head, and relay the response to the
//! client with the forwarding core's [`ResponseEdits`]. Interim responses (1xx other
//! than 101) are relayed before the final one, as RFC 9110 §15.2 asks of a proxy.

use super::exchange::{Exchange, Next};
use super::http1::{self, BodyFraming, ChunkedScanner, MAX_HEAD};
use super::plan::header;
use super::upstream_io::{read, send_upstream, UpErr, UpStream, UPSTREAM_CHUNK};
use super::{pool, ClientIo};
use crate::forward::{Attempt, Failure, Phase, ResponseEdits, UpstreamError};
use pingora_timeout::fast_timeout::fast_timeout;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How relaying a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relayed {
    /// The client went away (or stopped reading).
    ClientGone,
    /// The whole response reached the client and the upstream connection ended exactly
    /// at the body's end: it can be pooled.
    Clean,
    /// The response reached the client, but the upstream connection cannot be reused
    /// (it sent more than the body, broke off, or ends by closing).
    Unclean,
}

type Attempted = Result<(u16, Next), (UpErr, Phase)>;

impl<S: ClientIo> Exchange<'_, S> {
    /// Sends the request on `up` and relays the response. `Err` only before any byte of
    /// the final response reached the client.
    pub(super) async fn exchange(
        &mut self,
        attempt: &mut Attempt,
        mut up: UpStream,
        addr: SocketAddr,
        read_timeout: Duration,
    ) -> Attempted {
        let at = |e| (e, Phase::Exchange);
        let sent_at = Instant::now();
        send_upstream(&mut up, &self.plan.out, read_timeout)
            .await
            .map_err(at)?;
        if self.body_left > 0 {
            self.stream_request_body(&mut up, read_timeout)
                .await
                .map_err(at)?;
        }
        let mut rbuf = Vec::with_capacity(UPSTREAM_CHUNK);
        let (head_len, status, framing) = 'head: loop {
            if read(&mut up, &mut rbuf, read_timeout).await.map_err(at)? == 0 {
                return Err(at(UpErr::Upstream(UpstreamError::Closed)));
            }
            while let Some(h) = self.response_head(attempt, &rbuf).map_err(at)? {
                if !is_interim(h.1) {
                    break 'head h;
                }
                // The interim head was written into `plan.out`.
                let interim = std::mem::take(&mut self.plan.out);
                self.write_client(&interim)
                    .await
                    .map_err(|()| at(UpErr::ClientGone))?;
                rbuf.drain(..h.0);
            }
            if rbuf.len() >= MAX_HEAD {
                return Err(at(UpErr::Upstream(UpstreamError::Protocol)));
            }
        };
        if status == 101 {
            return Err(at(UpErr::Upstream(UpstreamError::Protocol)));
        }
        if let Some(m) = attempt.metrics() {
            m.record_upstream(sent_at.elapsed().as_secs_f64());
        }
        self.close |= framing.body == BodyFraming::UntilClose;
        // The client's head was written into `plan.out` by `response_head`.
        let relayed = self
            .relay_body(
                attempt,
                addr,
                &mut up,
                rbuf,
                head_len,
                framing.body,
                read_timeout,
            )
            .await;
        if relayed == Relayed::Clean && poolable(self.plan.head_request, status, framing) {
            pool::put(addr, attempt.pool().conn_key(addr), up);
        }
        let next = match (relayed, self.close) {
            (Relayed::ClientGone, _) => Next::Gone,
            (_, true) => Next::Close,
            (_, false) => Next::KeepAlive,
        };
        Ok((status, next))
    }

    /// Streams the rest of the request body from the client to the upstream.
    async fn stream_request_body(
        &mut self,
        up: &mut UpStream,
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
            self.body_left -= take as u64;
            send_upstream(up, &self.conn.buf[..take], limit).await?;
            self.conn.buf.drain(..take);
        }
        Ok(())
    }

    /// Parses a response head in `rbuf` and writes the head the client gets into
    /// `plan.out`. `Ok(None)`: incomplete.
    fn response_head(
        &mut self,
        attempt: &Attempt,
        rbuf: &[u8],
    ) -> Result<Option<(usize, u16, http1::ResponseFraming)>, UpErr> {
        let protocol = UpErr::Upstream(UpstreamError::Protocol);
        let mut headers = [httparse::EMPTY_HEADER; http1::MAX_FIELDS];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(rbuf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(protocol),
        };
        let framing = http1::response_framing(&resp, self.plan.head_request).ok_or(protocol)?;
        let status = resp.code.unwrap_or(0);
        if is_interim(status) {
            self.plan.out.clear();
            status_line(&mut self.plan.out, status, resp.reason.unwrap_or(""));
            for h in resp.headers.iter() {
                if !http1::is_connection_field(h.name) {
                    header(&mut self.plan.out, h.name.as_bytes(), h.value);
                }
            }
            self.plan.out.extend_from_slice(b"\r\n");
            return Ok(Some((n, status, framing)));
        }
        let close = self.close || framing.body == BodyFraming::UntilClose;
        self.client_head(attempt, &resp, framing.body, close);
        Ok(Some((n, status, framing)))
    }

    /// The response head the client gets: the upstream's, minus connection-level fields,
    /// with the forwarding core's response edits.
    fn client_head(
        &mut self,
        attempt: &Attempt,
        resp: &httparse::Response<'_, '_>,
        body: BodyFraming,
        close: bool,
    ) {
        let Some((_, d)) = &self.plan.route else {
            return;
        };
        let service = &self.plan.table.router.services[attempt.service()];
        let edits = ResponseEdits::new(service, attempt.served(), d, self.conn.tls);
        let out = &mut self.plan.out;
        out.clear();
        status_line(out, resp.code.unwrap_or(0), resp.reason.unwrap_or(""));
        let mut has_date = false;
        for h in resp.headers.iter() {
            let n = h.name;
            has_date |= crate::forward::edits::is(n, "date");
            if !relays_field(&edits, n, body) {
                continue;
            }
            header(out, n.as_bytes(), h.value);
        }
        if !has_date {
            http1::date_header(out);
        }
        if let Some((name, value)) = edits.expose {
            header(out, name.as_bytes(), value.as_bytes());
        }
        if let Some(cookie) = &edits.set_cookie {
            header(out, b"set-cookie", cookie.as_bytes());
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Sends the client head (in `plan.out`) and the body.
    #[allow(clippy::too_many_arguments)]
    async fn relay_body(
        &mut self,
        attempt: &mut Attempt,
        addr: SocketAddr,
        up: &mut UpStream,
        mut rbuf: Vec<u8>,
        head_len: usize,
        body: BodyFraming,
        read_timeout: Duration,
    ) -> Relayed {
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
                Err(bad) => {
                    // Relay what was well-formed, nothing past the error, then close.
                    out.extend_from_slice(&avail[..bad.at]);
                    clean = false;
                    left = 0;
                    self.close = true;
                }
            }
        } else if body == BodyFraming::UntilClose {
            out.extend_from_slice(avail);
        }
        self.sent += out.len() - head_end;
        if self.send_client(&out).await.is_none() {
            return Relayed::ClientGone;
        }
        while left > 0 {
            rbuf.clear();
            let n = match read(up, &mut rbuf, read_timeout).await {
                Ok(n) if n > 0 => n,
                // The upstream closing is the end of an until-close body.
                Ok(_) if body == BodyFraming::UntilClose => {
                    clean = false;
                    break;
                }
                failed => {
                    // The upstream broke mid-body: the client's response ends here, cut
                    // short, so its connection cannot be reused.
                    let error = match failed {
                        Err(UpErr::Upstream(e)) => e,
                        _ => UpstreamError::Closed,
                    };
                    let failure = Failure {
                        error,
                        phase: Phase::Relay,
                        reused: false,
                        idempotent: self.plan.idempotent,
                        body: self.body(),
                    };
                    attempt.failed(addr, failure);
                    self.close = true;
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
                    Err(bad) => {
                        left = 0;
                        clean = false;
                        self.close = true;
                        bad.at
                    }
                },
                _ => n,
            };
            self.sent += forward;
            if self.send_client(&chunk[..forward]).await.is_none() {
                return Relayed::ClientGone;
            }
        }
        match (self.conn.io.flush().await, clean) {
            (Err(_), _) => Relayed::ClientGone,
            (Ok(()), true) => Relayed::Clean,
            (Ok(()), false) => Relayed::Unclean,
        }
    }
}

/// Whether an upstream connection whose response was relayed to its exact end may go
/// back to the pool: the upstream keeps it open, and the core's rule allows it
/// ([`crate::forward::pooling::reusable_after`]: not after a response that carries no
/// body by rule).
#[inline]
pub(super) fn poolable(head_request: bool, status: u16, framing: http1::ResponseFraming) -> bool {
    framing.reusable && crate::forward::pooling::reusable_after(head_request, status)
}

/// Whether the upstream response field `name` reaches the client: not connection-level
/// fields, not those the response edits replace, and no `Content-Length` beside a
/// chunked body (the client's framing is the carrier's).
#[inline]
pub(super) fn relays_field(edits: &ResponseEdits<'_>, name: &str, body: BodyFraming) -> bool {
    !(http1::is_connection_field(name)
        || edits.drops(name)
        || (body == BodyFraming::Chunked && crate::forward::edits::is(name, "content-length")))
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
pub(super) fn is_interim(status: u16) -> bool {
    (100..200).contains(&status) && status != 101
}
