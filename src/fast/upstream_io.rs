//! Connections to upstreams for the HTTP/1 engine ([`UpStream`]: plaintext or TLS), and
//! reads and writes on them, each bounded by the variant's timeouts, with failures as
//! the forwarding core's [`UpstreamError`].

use crate::forward::UpstreamError;
use crate::upstream::Pool;
use pingora_timeout::fast_timeout::fast_timeout;
use pingora_timeout::tokio_timeout;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_openssl::SslStream;
use tokio_util::either::Either;

/// A connection to an upstream: plaintext, or TLS (a variant with `tls`), with the timer
/// that bounds its reads. The timer lives with the connection (it goes to the pool and
/// back with it) rather than with the client connection: an idle keep-alive client
/// holds no upstream timer, and a reused connection's timer is only pushed later, which
/// in tokio is a store, not a timer-wheel insertion (see BENCHMARKS.md, memory).
pub(super) struct UpStream {
    io: UpIo,
    timer: Pin<Box<Sleep>>,
}

/// Plaintext (left) or TLS (right); `Either` relays reads and writes to the one it holds.
type UpIo = Either<TcpStream, Box<SslStream<TcpStream>>>;

impl UpStream {
    pub(super) fn plain(tcp: TcpStream) -> UpStream {
        UpStream::new(Either::Left(tcp))
    }

    fn new(io: UpIo) -> UpStream {
        // Registered in the timer wheel at its first read, not here.
        let timer = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
        UpStream { io, timer }
    }

    /// Whether an idle connection is still open. A plaintext one costs no system call
    /// unless the reactor has seen it become readable (an idle HTTP connection only does
    /// when it closes). A TLS one is peeked at, so that no TLS record is consumed; one
    /// with bytes waiting (a close alert) is not reused either.
    pub(super) fn is_open(&self) -> bool {
        use futures::FutureExt;
        let mut probe = [0u8; 1];
        match &self.io {
            Either::Left(s) => {
                matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            Either::Right(s) => s.get_ref().peek(&mut probe).now_or_never().is_none(),
        }
    }
}

impl AsyncRead for UpStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpStream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Response bytes read from the upstream per read.
pub(super) const UPSTREAM_CHUNK: usize = 16 * 1024;

/// Why an attempt stopped before the response reached the client.
#[derive(Debug, Clone, Copy)]
pub(super) enum UpErr {
    Upstream(UpstreamError),
    /// The client went away (or stalled) while sending the request body.
    ClientGone,
}

/// Reads from the upstream into `buf` within `limit` (the connection's timer).
pub(super) async fn read(
    up: &mut UpStream,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<usize, UpErr> {
    if buf.capacity() - buf.len() < UPSTREAM_CHUNK / 4 {
        buf.reserve(UPSTREAM_CHUNK);
    }
    up.timer.as_mut().reset(tokio::time::Instant::now() + limit);
    let UpStream { io, timer } = up;
    tokio::select! {
        biased;
        r = io.read_buf(buf) => r.map_err(|_| UpErr::Upstream(UpstreamError::Closed)),
        _ = timer.as_mut() => Err(UpErr::Upstream(UpstreamError::Timeout)),
    }
}

/// Writes request bytes to the upstream; an upstream that does not take them within
/// `limit` (the variant's `read_timeout_ms`) is a timeout.
pub(super) async fn send_upstream(
    up: &mut UpStream,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), UpErr> {
    match tokio_timeout(limit, up.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(UpErr::Upstream(UpstreamError::Closed)),
        Err(_) => Err(UpErr::Upstream(UpstreamError::Timeout)),
    }
}

/// A new connection to `addr` of `pool`, with its TLS handshake when the variant has
/// `tls`; `connect_timeout_ms` bounds both. A failed handshake is logged with OpenSSL's
/// reason.
pub(super) async fn connect(pool: &Pool, addr: SocketAddr) -> Result<UpStream, UpstreamError> {
    let limit = pool.connect_timeout();
    let Some(tls) = pool.tls() else {
        return match fast_timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(UpStream::plain(s))
            }
            Ok(Err(_)) => Err(UpstreamError::Connect),
            Err(_) => Err(UpstreamError::ConnectTimeout),
        };
    };
    let name = pool.server_name(addr);
    let connect = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|_| UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        tls.handshake(tcp, name.map(|n| &**n)).await.map_err(|e| {
            crate::forward::error::log_tls_failure(addr, name.map(|n| &**n), &e.0);
            UpstreamError::Tls
        })
    };
    match tokio_timeout(limit, connect).await {
        Ok(Ok(s)) => Ok(UpStream::new(Either::Right(Box::new(s)))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(UpstreamError::ConnectTimeout),
    }
}
