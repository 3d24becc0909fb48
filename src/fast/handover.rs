//! What the engine needs of a client connection ([`ClientIo`]), and the way out of the
//! engine: a [`HandOver`] target that serves a connection from where the engine left it,
//! with the bytes already read put back in front.

use crate::forward::ClientPeer;
use async_trait::async_trait;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Serves connections the engine does not: HTTP/2, and HTTP/1 requests it hands over.
#[async_trait]
pub trait HandOver: Send + Sync {
    /// Serves `stream`; `Some` gives it back for another request (as [`ServerApp`] does).
    ///
    /// [`ServerApp`]: pingora_core::apps::ServerApp
    async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream>;
    /// The service stops: let idle connections go.
    async fn cleanup(&self);
}

/// A client connection the engine can serve.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {
    /// The connection as a Pingora stream that yields `buffered` before anything else,
    /// with `peer` as its peer address (the engine's, which may come from a PROXY
    /// protocol header).
    fn into_stream(self, buffered: &[u8], peer: Option<&ClientPeer>) -> Stream;
}

impl ClientIo for TcpStream {
    fn into_stream(self, buffered: &[u8], peer: Option<&ClientPeer>) -> Stream {
        let fd = self.as_raw_fd();
        let mut io = L4Stream::from(self);
        let digest = SocketDigest::from_raw_fd(fd);
        if let Some(p) = peer {
            let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(p.addr())));
        }
        io.set_socket_digest(digest);
        io.rewind(buffered);
        Box::new(io)
    }
}

impl ClientIo for Stream {
    /// A TLS stream keeps the peer its socket digest already holds (set before the
    /// handshake on a PROXY protocol listener).
    fn into_stream(self, buffered: &[u8], _peer: Option<&ClientPeer>) -> Stream {
        if buffered.is_empty() {
            return self;
        }
        Box::new(Rewound {
            front: buffered.to_vec(),
            at: 0,
            inner: self,
        })
    }
}

/// The client's address, as the stream's socket digest holds it (the socket's peer, or
/// what a PROXY protocol header named).
pub fn peer_addr(stream: &Stream) -> Option<SocketAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().copied()
}

/// Moves an accepted TCP connection onto this thread's reactor. Pingora accepts on one
/// thread and runs the connection's task on a randomly chosen one, so without this every
/// readiness event for the client socket would be picked up by the accepting thread and
/// passed across with a wake-up (an `eventfd` write and a context switch per event; see
/// BENCHMARKS.md). `Err` gives back streams that are not plain TCP, or if `dup` failed.
pub(super) fn rehome(stream: Stream) -> Result<TcpStream, Stream> {
    let Some(l4) = stream.as_any().downcast_ref::<L4Stream>() else {
        return Err(stream);
    };
    let fd = l4.as_raw_fd();
    // SAFETY: `fd` is the open socket owned by `stream`, which outlives this borrow; the
    // borrow is only used to duplicate it.
    #[allow(unsafe_code)]
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let Ok(owned) = borrowed.try_clone_to_owned() else {
        return Err(stream);
    };
    let std_stream = std::net::TcpStream::from(owned);
    match std_stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(std_stream))
    {
        // Dropping `stream` deregisters the original descriptor and closes it; the
        // socket lives on in the duplicate.
        Ok(tcp) => Ok(tcp),
        Err(_) => Err(stream),
    }
}

/// A Pingora stream with bytes already read from it put back in front (a TLS stream has
/// no `rewind` of its own).
#[derive(Debug)]
struct Rewound {
    front: Vec<u8>,
    at: usize,
    inner: Stream,
}

impl AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.front.len() {
            let n = (self.front.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.front[at..at + n]);
            self.at += n;
            if self.at == self.front.len() {
                self.front = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
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
impl Shutdown for Rewound {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Rewound {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Rewound {
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

impl GetTimingDigest for Rewound {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for Rewound {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Rewound {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

/// Peeking would skip the bytes put back: not offered (Pingora then does not peek).
impl Peek for Rewound {}
