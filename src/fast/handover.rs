//! What the engine needs of a client connection ([`ClientIo`]), and the way out of the
//! engine: a [`HandOver`] target that serves a connection from where the engine left it
//! (a [`super::OneRequest`] puts the bytes already read back in front, and gives the
//! connection back after the request).

use crate::forward::ClientPeer;
use async_trait::async_trait;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora_core::server::ShutdownWatch;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Serves connections the engine does not: HTTP/2, and HTTP/1 requests it hands over.
#[async_trait]
pub trait HandOver: Send + Sync {
    /// Serves `stream`. `Some` gives it back to the engine: a [`OneRequest`] whose
    /// request has been answered, the connection still open. Otherwise the target serves
    /// the connection to its end.
    ///
    /// [`OneRequest`]: super::OneRequest
    async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream>;
    /// The service stops: let idle connections go.
    async fn cleanup(&self);
}

/// A client connection the engine can serve.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {
    /// The connection as a Pingora stream, with `peer` as its peer address (the
    /// engine's, which may come from a PROXY protocol header).
    fn into_stream(self, peer: Option<&ClientPeer>) -> Stream;
    /// The connection back from the stream [`ClientIo::into_stream`] made, once Pingora
    /// is done with it; `Err` if it cannot be.
    fn resume(stream: Stream) -> Result<Self, Stream>
    where
        Self: Sized;
}

impl ClientIo for TcpStream {
    fn into_stream(self, peer: Option<&ClientPeer>) -> Stream {
        let fd = self.as_raw_fd();
        let mut io = L4Stream::from(self);
        let digest = SocketDigest::from_raw_fd(fd);
        if let Some(p) = peer {
            let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(p.addr())));
        }
        io.set_socket_digest(digest);
        Box::new(io)
    }

    fn resume(stream: Stream) -> Result<TcpStream, Stream> {
        rehome(stream)
    }
}

impl ClientIo for Stream {
    /// A TLS stream keeps the peer its socket digest already holds (set before the
    /// handshake on a PROXY protocol listener).
    fn into_stream(self, _peer: Option<&ClientPeer>) -> Stream {
        self
    }

    fn resume(stream: Stream) -> Result<Stream, Stream> {
        Ok(stream)
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
