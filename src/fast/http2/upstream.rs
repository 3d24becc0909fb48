//! The upstream side of one attempt for an HTTP/2 stream: the request goes as HTTP/1.1
//! on an engine upstream connection (the engine's reads, writes and framing rules), and
//! the response comes back to the client as HEADERS and DATA with the forwarding core's
//! [`ResponseEdits`]. A chunked upstream body is decoded into DATA (its trailers are not
//! relayed); an until-close body ends the stream when the upstream closes. A response
//! cut short upstream resets the stream, so the client cannot take it for complete.

use super::super::http1::{self, BodyFraming, ChunkedScanner, MAX_HEAD};
use super::super::pool;
use super::super::relay::{is_interim, poolable, relays_field};
use super::super::upstream_io::{read, send_upstream, UpErr, UpStream, UPSTREAM_CHUNK};
use super::send;
use super::stream::Exchange;
use crate::forward::{Attempt, Failure, Phase, ResponseEdits, UpstreamError};
use bytes::Bytes;
use h2::SendStream;
use http::header::{HeaderName, HeaderValue};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A parsed upstream response head: its length in the buffer, status and framing.
struct Head {
    len: usize,
    status: u16,
    framing: http1::ResponseFraming,
    /// The response head the client gets (`None` for an interim response).
    client: Option<http::Response<()>>,
}

type Attempted = Result<u16, (UpErr, Phase)>;

impl Exchange<'_> {
    /// Sends the request on `up` and relays the response. `Err` only before the
    /// response's head went to the client.
    pub(super) async fn exchange(
        &mut self,
        attempt: &mut Attempt,
        mut up: UpStream,
        addr: SocketAddr,
        read_timeout: Duration,
    ) -> Attempted {
        let at = |e| (e, Phase::Exchange);
        let sent_at = Instant::now();
        send_upstream(&mut up, &self.out, read_timeout)
            .await
            .map_err(at)?;
        if self.body.more() {
            self.body.stream(&mut up, read_timeout).await.map_err(at)?;
        }
        let mut rbuf = Vec::with_capacity(UPSTREAM_CHUNK);
        let head = 'head: loop {
            if read(&mut up, &mut rbuf, read_timeout).await.map_err(at)? == 0 {
                return Err(at(UpErr::Upstream(UpstreamError::Closed)));
            }
            while let Some(h) = self.response_head(attempt, &rbuf).map_err(at)? {
                if h.client.is_some() {
                    break 'head h;
                }
                // Interim responses (100, 103) are read past, not relayed.
                rbuf.drain(..h.len);
            }
            if rbuf.len() >= MAX_HEAD {
                return Err(at(UpErr::Upstream(UpstreamError::Protocol)));
            }
        };
        if let Some(m) = attempt.metrics() {
            m.record_upstream(sent_at.elapsed().as_secs_f64());
        }
        let Head {
            len,
            status,
            framing,
            client,
        } = head;
        let client = client.unwrap_or_default();
        let end = framing.body == BodyFraming::None;
        let Ok(mut tx) = self.respond.send_response(client, end) else {
            return Err(at(UpErr::ClientGone));
        };
        let relayed = if end {
            Relayed::Clean(rbuf.len() == len)
        } else {
            self.relay_body(attempt, addr, &mut up, &mut tx, rbuf, len, framing.body)
                .await
        };
        match relayed {
            Relayed::Clean(true) if poolable(self.head_request, status, framing) => {
                pool::put(addr, attempt.pool().conn_key(addr), up)
            }
            Relayed::ClientGone => return Ok(499),
            _ => {}
        }
        Ok(status)
    }

    /// Parses a response head in `rbuf`. `Ok(None)`: incomplete.
    fn response_head(&self, attempt: &Attempt, rbuf: &[u8]) -> Result<Option<Head>, UpErr> {
        let protocol = UpErr::Upstream(UpstreamError::Protocol);
        let mut fields = [httparse::EMPTY_HEADER; http1::MAX_FIELDS];
        let mut resp = httparse::Response::new(&mut fields);
        let len = match resp.parse(rbuf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(protocol),
        };
        let framing = http1::response_framing(&resp, self.head_request).ok_or(protocol)?;
        let status = resp.code.unwrap_or(0);
        if is_interim(status) {
            return Ok(Some(Head {
                len,
                status,
                framing,
                client: None,
            }));
        }
        let code = http::StatusCode::from_u16(status).map_err(|_| protocol)?;
        if status == 101 {
            return Err(protocol);
        }
        let Some((_, d)) = &self.route else {
            return Err(protocol);
        };
        let service = &self.table.router.services[attempt.service()];
        let edits = ResponseEdits::new(service, attempt.served(), d, true);
        let mut client = http::Response::new(());
        *client.status_mut() = code;
        let out = client.headers_mut();
        out.reserve(resp.headers.len() + 3);
        let mut has_date = false;
        for h in resp.headers.iter() {
            if !relays_field(&edits, h.name, framing.body) || !h2_field(h.name) {
                continue;
            }
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_bytes(h.value),
            ) else {
                return Err(protocol);
            };
            has_date |= name == http::header::DATE;
            out.append(name, value);
        }
        if !has_date {
            out.insert(http::header::DATE, send::date());
        }
        if let Some((name, value)) = edits.expose {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                out.insert(n, v);
            }
        }
        if let Some(cookie) = edits.set_cookie {
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                out.append(http::header::SET_COOKIE, v);
            }
        }
        Ok(Some(Head {
            len,
            status,
            framing,
            client: Some(client),
        }))
    }

    /// Relays the response body after its head.
    #[allow(clippy::too_many_arguments)]
    async fn relay_body(
        &mut self,
        attempt: &mut Attempt,
        addr: SocketAddr,
        up: &mut UpStream,
        tx: &mut SendStream<Bytes>,
        mut rbuf: Vec<u8>,
        head_len: usize,
        body: BodyFraming,
    ) -> Relayed {
        let limit = self.table.config.server.client_write_timeout;
        let read_timeout = attempt.pool().read_timeout();
        let mut left = match body {
            BodyFraming::Length(n) => n,
            _ => 1,
        };
        let mut scanner = ChunkedScanner::default();
        let mut payload = Vec::new();
        let mut clean = true;
        let mut from = head_len;
        loop {
            let got = &rbuf[from..];
            let (piece, end) = match body {
                BodyFraming::Length(_) => {
                    let take = (left.min(got.len() as u64)) as usize;
                    left -= take as u64;
                    clean = take == got.len();
                    (Bytes::copy_from_slice(&got[..take]), left == 0)
                }
                BodyFraming::Chunked => {
                    payload.clear();
                    let fed = scanner.feed_with(got, |r| payload.extend_from_slice(&got[r]));
                    match fed {
                        Ok(Some(n)) => {
                            clean = n == got.len();
                            (Bytes::copy_from_slice(&payload), true)
                        }
                        Ok(None) => (Bytes::copy_from_slice(&payload), false),
                        Err(_) => {
                            // Relay what was well-formed, then cut the stream short.
                            let _ = send::data(tx, Bytes::copy_from_slice(&payload), false, limit)
                                .await;
                            tx.send_reset(h2::Reason::INTERNAL_ERROR);
                            return Relayed::Cut;
                        }
                    }
                }
                _ => (Bytes::copy_from_slice(got), false),
            };
            self.sent += piece.len();
            if send::data(tx, piece, end, limit).await.is_err() {
                return Relayed::ClientGone;
            }
            if end {
                return Relayed::Clean(clean);
            }
            rbuf.clear();
            from = 0;
            match read(up, &mut rbuf, read_timeout).await {
                Ok(n) if n > 0 => {}
                // The upstream closing is the end of an until-close body.
                Ok(_) if body == BodyFraming::UntilClose => {
                    return match send::data(tx, Bytes::new(), true, limit).await {
                        Ok(()) => Relayed::Clean(false),
                        Err(()) => Relayed::ClientGone,
                    };
                }
                failed => {
                    let error = match failed {
                        Err(UpErr::Upstream(e)) => e,
                        _ => UpstreamError::Closed,
                    };
                    let failure = Failure {
                        error,
                        phase: Phase::Relay,
                        reused: false,
                        idempotent: self.idempotent,
                        body: self.body.replay(),
                    };
                    attempt.failed(addr, failure);
                    tx.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Relayed::Cut;
                }
            }
        }
    }
}

/// How relaying a response body ended.
enum Relayed {
    /// The body reached the client; `true`: the upstream connection ended exactly at
    /// its end.
    Clean(bool),
    /// The upstream broke off or sent a bad chunk: the stream was reset.
    Cut,
    ClientGone,
}

/// Whether a field may appear in an HTTP/2 response (RFC 9113 §8.2.2: no
/// connection-specific fields; [`relays_field`] already left out `Connection` and
/// `Keep-Alive`).
fn h2_field(name: &str) -> bool {
    use crate::forward::edits::is;
    !(is(name, "transfer-encoding") || is(name, "upgrade") || is(name, "te"))
}
