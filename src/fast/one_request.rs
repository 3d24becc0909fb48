//! One handed-over request, and not a byte more.
//!
//! When the engine hands a request to the Pingora carrier (a chunked body, `Expect`, an
//! HTTP/1.0 client, ...), Pingora reads from the connection itself. Left alone it would
//! read the next request's head too, and then serve the rest of the connection with its
//! own head limits (1 MiB, 60 s per read) instead of the engine's
//! (`server.max_request_head_bytes`, `server.client_header_timeout_secs` for the whole
//! head). [`OneRequest`] wraps the connection so that Pingora's reads end where the
//! handed-over request ends: its head, then its body as `Content-Length` or the chunked
//! coding frames it. Bytes read past that end are kept aside ([`OneRequest::take_back`])
//! and the engine serves the next request with them.
//!
//! A request whose end cannot be told (a broken head, an `Upgrade`, an unknown
//! `Transfer-Encoding`) is not bounded: Pingora serves the connection from there on.

use super::http1::{parse_length, ChunkedScanner};
use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where a request's bytes end on the connection.
#[derive(Debug, Clone)]
pub struct Bound {
    /// Head bytes still to come.
    head_left: usize,
    body: Body,
    ended: bool,
}

#[derive(Debug, Clone)]
enum Body {
    /// This many body bytes still to come.
    Length(u64),
    Chunked(ChunkedScanner),
    /// The end cannot be told: everything belongs to this request.
    Unbounded,
}

impl Bound {
    /// The bound of the request whose head starts `buf` (the engine's buffer at the
    /// hand-over).
    pub fn of(buf: &[u8]) -> Bound {
        let unbounded = Bound {
            head_left: 0,
            body: Body::Unbounded,
            ended: false,
        };
        let mut fields = [httparse::EMPTY_HEADER; super::http1::MAX_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        let Ok(httparse::Status::Complete(head_len)) = req.parse(buf) else {
            return unbounded;
        };
        match body_of(&req) {
            Some(body) => Bound {
                head_left: head_len,
                body,
                ended: false,
            },
            None => unbounded,
        }
    }

    /// The request has ended: every byte after this point is the next request's.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// How many bytes at the start of `data` (the next bytes on the connection) belong to
    /// this request.
    pub fn take(&mut self, data: &[u8]) -> usize {
        if self.ended {
            return 0;
        }
        let mut used = self.head_left.min(data.len());
        self.head_left -= used;
        if self.head_left > 0 {
            return used;
        }
        let rest = &data[used..];
        match &mut self.body {
            Body::Length(left) => {
                let n = (*left).min(rest.len() as u64);
                *left -= n;
                used += n as usize;
                self.ended = *left == 0;
            }
            Body::Chunked(scanner) => match scanner.feed(rest) {
                Ok(Some(n)) => {
                    used += n;
                    self.ended = true;
                }
                Ok(None) => used = data.len(),
                // Pingora answers the broken body and closes: no end to keep.
                Err(_) => {
                    self.body = Body::Unbounded;
                    used = data.len();
                }
            },
            Body::Unbounded => used = data.len(),
        }
        used
    }
}

/// The body framing of a request head the engine handed over, or `None` where the
/// connection's bytes after it may not be HTTP/1 requests (CONNECT, `Upgrade`) or its
/// framing is for Pingora to refuse (RFC 9112 §6.3).
fn body_of(req: &httparse::Request<'_, '_>) -> Option<Body> {
    if req.method? == "CONNECT" {
        return None;
    }
    let (mut length, mut chunked, mut lengths, mut codings) = (0, false, 0, 0);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            return None;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = parse_length(h.value)?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            codings += 1;
            chunked = crate::routing::request::trim(h.value).eq_ignore_ascii_case(b"chunked");
        }
    }
    match (codings, lengths) {
        (0, 0) => Some(Body::Length(0)),
        (0, 1) => Some(Body::Length(length)),
        (1, 0) if chunked => Some(Body::Chunked(ChunkedScanner::default())),
        _ => None,
    }
}

/// A client connection handed to the Pingora carrier for one request (see the module
/// docs). Bytes the engine had read come first.
#[derive(Debug)]
pub struct OneRequest {
    inner: Stream,
    /// Bytes of this request the engine had read, not yet given to Pingora.
    front: Vec<u8>,
    at: usize,
    bound: Bound,
    /// Bytes after the request's end: the next request's.
    after: Vec<u8>,
}

impl OneRequest {
    /// `inner` with `buffered` (read from it by the engine, starting with the request's
    /// head) in front.
    pub fn new(inner: Stream, mut buffered: Vec<u8>) -> OneRequest {
        let mut bound = Bound::of(&buffered);
        let mine = bound.take(&buffered);
        let after = buffered.split_off(mine);
        OneRequest {
            inner,
            front: buffered,
            at: 0,
            bound,
            after,
        }
    }

    /// `stream` is a [`OneRequest`] whose request has been wholly read: the engine can take
    /// the connection back.
    pub fn is_done(stream: &Stream) -> bool {
        stream
            .as_any()
            .downcast_ref::<OneRequest>()
            .is_some_and(|o| o.bound.ended() && o.at == o.front.len())
    }

    /// The connection and the bytes read past the request, if `stream` is a
    /// [`OneRequest`] whose request ended and was wholly read by Pingora; otherwise
    /// `stream` back. (`Ok(None)` cannot happen: the type is checked before it is taken
    /// apart. Were it to, the connection would be closed, not a panic.)
    pub fn take_back(stream: Stream) -> Result<Option<(Stream, Vec<u8>)>, Stream> {
        if !OneRequest::is_done(&stream) {
            return Err(stream);
        }
        Ok(stream
            .into_any()
            .downcast::<OneRequest>()
            .ok()
            .map(|o| (o.inner, o.after)))
    }
}

impl AsyncRead for OneRequest {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.front.len() {
            let n = (this.front.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.front[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        if this.bound.ended() {
            // The request is all read. Pingora may still poll the client while the
            // response is on its way (to notice a disconnect): the next request's bytes
            // are the engine's, so there is nothing to read here.
            return Poll::Pending;
        }
        let start = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            let mine = this.bound.take(&buf.filled()[start..]);
            if start + mine < buf.filled().len() {
                this.after.extend_from_slice(&buf.filled()[start + mine..]);
                buf.set_filled(start + mine);
            }
        }
        read
    }
}

impl AsyncWrite for OneRequest {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for OneRequest {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for OneRequest {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for OneRequest {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for OneRequest {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for OneRequest {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for OneRequest {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

/// Peeking would skip the bytes in front: not offered (Pingora then does not peek).
impl Peek for OneRequest {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `conn` (a request, then whatever follows on the connection) to the bound of
    /// its head in pieces of `step` bytes; returns the request's length as the bound saw
    /// it (`None`: it never ended).
    fn end_of(conn: &[u8], step: usize) -> Option<usize> {
        let mut bound = Bound::of(conn);
        let mut used = 0;
        for piece in conn.chunks(step) {
            used += bound.take(piece);
            if bound.ended() {
                return Some(used);
            }
        }
        None
    }

    const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn the_request_ends_where_its_framing_says_however_the_bytes_arrive() {
        let cases: [(&[u8], &str); 5] = [
            (b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", "no body"),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", "length"),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
                "chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding:  Chunked \r\n\r\n3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n",
                "chunked with a trailer",
            ),
            (
                b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
                "expect",
            ),
        ];
        for (req, case) in cases {
            let conn = [req, NEXT].concat();
            for step in [1, 2, 7, conn.len()] {
                assert_eq!(end_of(&conn, step), Some(req.len()), "{case}, step {step}");
            }
        }
    }

    #[test]
    fn a_request_whose_end_cannot_be_told_is_not_bounded() {
        let cases: [&[u8]; 7] = [
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ];
        for req in cases {
            let conn = [req, NEXT].concat();
            assert_eq!(end_of(&conn, 3), None, "{:?}", String::from_utf8_lossy(req));
        }
    }

    /// What the engine had read (the head and part of the body), then the rest of the
    /// request and the next request in one write from the client: Pingora's reads give exactly the request, and
    /// the next request's bytes come back with the connection.
    #[test]
    fn bytes_read_past_the_end_are_kept_for_the_engine() {
        use std::time::Duration;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789";
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, mut peer) = tokio::net::UnixStream::pair().unwrap();
            let inner: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(client));
            let mut one: Stream = Box::new(OneRequest::new(inner, req[..52].to_vec()));
            peer.write_all(&[&req[52..], NEXT].concat()).await.unwrap();
            let mut got = Vec::new();
            while !OneRequest::is_done(&one) {
                let mut buf = [0u8; 4096];
                let read = tokio::time::timeout(Duration::from_secs(10), one.read(&mut buf));
                let n = read.await.expect("a read waited 10 s").unwrap();
                assert!(n > 0, "the stream ended inside the request");
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, req, "Pingora reads the request and no more");
            let Ok(Some((_, after))) = OneRequest::take_back(one) else {
                panic!("not taken back once the request was read");
            };
            assert_eq!(after, NEXT);
        });
    }
}
