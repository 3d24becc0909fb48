//! Reads and writes on an upstream connection for the HTTP/1 engine, each bounded by the
//! variant's timeouts, with failures as the forwarding core's [`UpstreamError`].

use crate::forward::UpstreamError;
use pingora_timeout::fast_timeout::fast_timeout;
use pingora_timeout::tokio_timeout;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Response bytes read from the upstream per read.
pub(super) const UPSTREAM_CHUNK: usize = 16 * 1024;

/// Why an attempt stopped before the response reached the client.
#[derive(Debug, Clone, Copy)]
pub(super) enum UpErr {
    Upstream(UpstreamError),
    /// The client went away (or stalled) while sending the request body.
    ClientGone,
}

/// Reads from the upstream into `buf` within `limit`.
pub(super) async fn read(
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
        r = up.read_buf(buf) => r.map_err(|_| UpErr::Upstream(UpstreamError::Closed)),
        _ = timer => Err(UpErr::Upstream(UpstreamError::Timeout)),
    }
}

/// Writes request bytes to the upstream; an upstream that does not take them within
/// `limit` (the variant's `read_timeout_ms`) is a timeout.
pub(super) async fn send_upstream(
    up: &mut TcpStream,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), UpErr> {
    match tokio_timeout(limit, up.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(UpErr::Upstream(UpstreamError::Closed)),
        Err(_) => Err(UpErr::Upstream(UpstreamError::Timeout)),
    }
}

/// A new upstream connection.
pub(super) async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, UpstreamError> {
    match fast_timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(_)) => Err(UpstreamError::Connect),
        Err(_) => Err(UpstreamError::ConnectTimeout),
    }
}
