//! The HTTP/1 engine: a lean HTTP/1.1 carrier for plaintext listeners and, after the
//! handshake, for TLS connections whose ALPN is `http/1.1` or absent. Pingora still
//! accepts the connections, terminates TLS (the certificate resolver is
//! [`crate::tls::CertResolver`]), owns the listening sockets (graceful upgrade hands them
//! over), and runs the lifecycle; this [`ServerApp`] serves the plain keep-alive requests
//! an API gets with far less work per request than Pingora's general proxy (no
//! per-request session objects, header maps or pool watcher tasks: see BENCHMARKS.md).
//! HTTP/2 connections, and each request the engine does not take on (HTTP/1.0, chunked
//! or `Expect` request bodies, upgrades, absolute targets, malformed heads), go with
//! every byte already read to a [`HandOver`] target: the Pingora carrier, wired in by
//! `crate::server`. A handed-over request is a [`OneRequest`]: Pingora reads that
//! request and no more, and the engine serves the next one. What is
//! forwarded and how failures are handled is the forwarding core's ([`crate::forward`]).
//!
//! `COHORT_FAST_PATH=0` in the environment turns the engine off.

mod exchange;
pub mod handover;
pub mod http1;
pub mod http2;
mod idle;
mod one_request;
mod plan;
mod pool;
mod relay;
mod upstream_io;

use crate::forward::ClientPeer;
use crate::state::State;
use async_trait::async_trait;
pub use handover::{ClientIo, HandOver};
pub use one_request::OneRequest;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::tls::ALPN;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// How long each read of a request body may wait (NGINX's `client_body_timeout`).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Buffer reserved per connection for reading request heads.
const READ_CHUNK: usize = 4096;

/// Whether the HTTP/1 engine serves HTTP/1.1 connections (on unless `COHORT_FAST_PATH=0`).
pub fn enabled() -> bool {
    std::env::var("COHORT_FAST_PATH").map_or(true, |v| v != "0")
}

/// The listeners' application: the HTTP/1 engine, with the Pingora carrier behind it for
/// HTTP/2 and for what the engine hands over.
pub struct FastApp {
    state: Arc<State>,
    handover: Arc<dyn HandOver>,
    /// Set once the service stopped listening: idle connections close.
    closing: AtomicBool,
    wake_idle: Notify,
    /// Every plaintext connection starts with a PROXY protocol header (the listeners'
    /// `proxy_protocol = true`; a TLS connection's was read before its handshake).
    proxy_protocol: bool,
}

impl FastApp {
    pub fn new(state: Arc<State>, handover: Arc<dyn HandOver>) -> FastApp {
        FastApp {
            state,
            handover,
            closing: AtomicBool::new(false),
            wake_idle: Notify::new(),
            proxy_protocol: false,
        }
    }

    /// The engine for listeners with `proxy_protocol = true` (see [`crate::proxy_protocol`]).
    pub fn with_proxy_protocol(mut self) -> FastApp {
        self.proxy_protocol = true;
        self
    }
}

#[async_trait]
impl ServerApp for FastApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if stream.get_ssl().is_some() {
            // TLS, handshake done: HTTP/2 (ALPN `h2`) goes to the HTTP/2 carrier
            // ([`http2`]; Pingora's with `COHORT_H2_CARRIER=0`, or while a variant speaks
            // HTTP/2 upstream: `forward::carrier`), `http/1.1` or no ALPN
            // to the engine.
            if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
                if !http2::enabled()
                    || !crate::forward::carrier::h2_carrier_carries(&self.state.table())
                {
                    return self.handover.serve(stream, shutdown).await;
                }
                http2::serve(self, stream, shutdown).await;
                return None;
            }
            // The connection gets a task of its own (on this thread), as a plaintext
            // one does, and Pingora's accept task, sized for the TLS handshake, ends.
            let peer = handover::peer_addr(&stream).map(ClientPeer::new);
            let conn = Conn::new(&self.state, stream, peer, Vec::new(), true);
            tokio::spawn(connection(self.clone(), conn, shutdown.clone()));
            return None;
        }
        let io = match handover::rehome(stream) {
            Ok(io) => io,
            Err(stream) => return self.handover.serve(stream, shutdown).await,
        };
        // The connection gets its own small task on this thread; Pingora's accept task
        // (sized for a TLS handshake) ends here instead of living as long as the
        // connection (see BENCHMARKS.md, memory).
        if self.proxy_protocol {
            tokio::spawn(proxied(self.clone(), io, shutdown.clone()));
            return None;
        }
        let peer = io.peer_addr().ok().map(ClientPeer::new);
        let conn = Conn::new(&self.state, io, peer, Vec::new(), false);
        tokio::spawn(connection(self.clone(), conn, shutdown.clone()));
        None
    }

    async fn cleanup(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.wake_idle.notify_waiters();
        idle::services_closing();
        // Pingora's carrier drops its idle connections at cleanup: not before the end
        // of the drain window.
        if let Some(end) = self.state.drain_window_end() {
            tokio::time::sleep_until(end.into()).await;
        }
        self.handover.cleanup().await;
    }
}

/// A plaintext connection on a listener with `proxy_protocol = true`: its header first
/// (the address it names becomes the peer; bytes after it are the first request's), then
/// served as any other. A bad or missing header closes it without a response.
async fn proxied(app: Arc<FastApp>, mut io: TcpStream, shutdown: ShutdownWatch) {
    let limit = app.state.table().config.server.client_header_timeout;
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let peer = match crate::proxy_protocol::read(&mut io, &mut buf, limit).await {
        Ok(Some(client)) => Some(client),
        Ok(None) => io.peer_addr().ok(),
        Err(e) => {
            let peer = io.peer_addr().map_or("?".to_string(), |a| a.to_string());
            crate::proxy_protocol::log_closed(&peer, &e);
            return;
        }
    };
    let conn = Conn::new(&app.state, io, peer.map(ClientPeer::new), buf, false);
    // A task of its own, so that an idle connection does not keep this one's state.
    tokio::spawn(connection(app, conn, shutdown));
}

/// Serves one client connection until it closes. A request the engine does not take is
/// handed to the Pingora carrier as a [`OneRequest`]; once it is answered the engine goes
/// on with the next, so every request head on the connection is read under the engine's
/// limits.
///
/// This future is most of what an idle keep-alive connection costs (BENCHMARKS.md,
/// memory), so everything but the wait for the next request is boxed while it runs: the
/// exchange and the hand-over. It is an `async` block rather than an `async fn`, which
/// would keep its arguments and moved copies of them.
#[allow(clippy::manual_async_fn)]
fn connection<S: ClientIo>(
    app: Arc<FastApp>,
    mut conn: Conn<S>,
    shutdown: ShutdownWatch,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        loop {
            // The first request's head is due `head_timeout` after the connection
            // started; a later one's, after its first bytes arrived (`None`).
            let head_due = if conn.buf.is_empty() {
                let mut wait = Wait::new(&conn);
                match poll_fn(|cx| conn.poll_wait(&app, &mut wait, cx)).await {
                    Ok(n) if n > 0 => wait.head_due(),
                    _ => return,
                }
            } else {
                None
            };
            let next = Box::pin(exchange::serve_one(&mut conn, &app, &shutdown, head_due)).await;
            match next {
                exchange::Next::KeepAlive => {
                    conn.served += 1;
                    // An idle keep-alive connection holds no read buffer: 10,000 idle
                    // clients would otherwise pin 40 MiB (see BENCHMARKS.md, memory).
                    if conn.buf.is_empty() {
                        conn.buf = Vec::new();
                    }
                }
                exchange::Next::Close => {
                    let _ = conn.io.shutdown().await;
                    return;
                }
                exchange::Next::Gone => return,
                exchange::Next::HandOver => {
                    match Box::pin(hand_over(&app, conn, &shutdown)).await {
                        Some(back) => conn = back,
                        None => return,
                    }
                }
            }
        }
    }
}

/// Hands `conn`, whose buffer starts with a request the engine does not take, to the
/// Pingora carrier for that request; the connection back, if it stays open.
async fn hand_over<S: ClientIo>(
    app: &FastApp,
    mut conn: Conn<S>,
    shutdown: &ShutdownWatch,
) -> Option<Conn<S>> {
    let (peer, tls) = (conn.peer.take(), conn.tls);
    let buf = std::mem::take(&mut conn.buf);
    let stream = conn.io.into_stream(peer.as_ref());
    let one = OneRequest::new(stream, buf);
    let back = app.handover.serve(Box::new(one), shutdown).await?;
    let (stream, after) = OneRequest::take_back(back).ok()??;
    let io = S::resume(stream).ok()?;
    let mut conn = Conn::new(&app.state, io, peer, after, tls);
    // Between requests, as after any answered one (keep-alive, not head, timing).
    conn.served = 1;
    Some(conn)
}

/// A connection's wait for the client's next bytes.
struct Wait {
    /// The start of a new request on a keep-alive connection, not a new connection's
    /// first request.
    idle: bool,
    /// How long it may take.
    limit: Millis,
    /// When it gives up, from its first poll.
    until: Option<tokio::time::Instant>,
}

impl Wait {
    fn new<S>(conn: &Conn<S>) -> Wait {
        let idle = conn.served > 0;
        let limit = if idle {
            conn.keepalive
        } else {
            conn.head_timeout
        };
        Wait {
            idle,
            limit,
            until: None,
        }
    }

    /// When a new connection's first request head is due.
    fn head_due(&self) -> Option<tokio::time::Instant> {
        self.until.filter(|_| !self.idle)
    }
}

/// A timeout of a connection, in milliseconds (4 bytes where a `Duration` takes 16;
/// every idle connection holds two).
#[derive(Clone, Copy)]
struct Millis(u32);

impl Millis {
    /// `d`, at most `u32::MAX` ms (49 days).
    fn new(d: Duration) -> Millis {
        Millis(u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
    }

    fn get(self) -> Duration {
        Duration::from_millis(u64::from(self.0))
    }
}

/// One client connection on the engine.
struct Conn<S> {
    io: S,
    /// Bytes read from the client and not yet consumed (a request head, a pipelined
    /// request, body bytes).
    buf: Vec<u8>,
    peer: Option<ClientPeer>,
    /// The connection is TLS (cookies get `Secure`, `X-Forwarded-Proto: https`).
    tls: bool,
    /// Requests answered on this connection so far.
    served: u32,
    /// `server.keepalive_timeout_secs` and `server.client_header_timeout_secs` when the
    /// connection was accepted.
    keepalive: Millis,
    head_timeout: Millis,
    /// `server.max_request_head_bytes` when the connection was accepted.
    max_head: u32,
    /// Wakes the connection when it has waited for a request too long: a slot on its
    /// thread's board, not a timer of its own ([`idle`]).
    ticket: idle::Ticket,
}

impl<S: ClientIo> Conn<S> {
    /// A connection from `peer` (`None`: unknown) whose client already sent `buf`.
    fn new(state: &State, io: S, peer: Option<ClientPeer>, buf: Vec<u8>, tls: bool) -> Conn<S> {
        let server = &state.table().config.server;
        let (keepalive, head_timeout) = (
            Millis::new(server.keepalive_timeout),
            Millis::new(server.client_header_timeout),
        );
        Conn {
            io,
            buf,
            peer,
            tls,
            served: 0,
            keepalive,
            head_timeout,
            max_head: u32::try_from(server.max_request_head_bytes).unwrap_or(u32::MAX),
            ticket: idle::Ticket::new(),
        }
    }

    /// Waits for the client's next bytes (`wait`). `Ok(0)` means the connection is over
    /// (closed, timed out, or, for an idle one, the service is shutting down and its
    /// drain window ended; a request that already arrived is still read).
    fn poll_wait(
        &mut self,
        app: &FastApp,
        wait: &mut Wait,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(read) = poll_read_in(&mut self.io, &mut self.buf, cx) {
            return Poll::Ready(read);
        }
        let mut until = match wait.until {
            Some(u) => u,
            // The first poll: one clock read per wait.
            None => *wait
                .until
                .insert(tokio::time::Instant::now() + wait.limit.get()),
        };
        if wait.idle && app.closing.load(Ordering::SeqCst) {
            // Not listening any more: an idle connection waits to the end of the drain
            // window at most, so a request already on its way is answered.
            if let Some(end) = app.state.drain_window_end() {
                until = until.min(end.into());
            }
        }
        if until <= tokio::time::Instant::now() {
            return Poll::Ready(Ok(0));
        }
        self.ticket.arm(cx.waker(), until);
        Poll::Pending
    }

    /// Reads more of a request head, due by `deadline`. `Ok(0)` means the connection is
    /// over (closed, or the head did not arrive in time).
    async fn read_head(&mut self, deadline: tokio::time::Instant) -> std::io::Result<usize> {
        tokio::select! {
            biased;
            r = poll_fn(|cx| poll_read_in(&mut self.io, &mut self.buf, cx)) => r,
            () = tokio::time::sleep_until(deadline) => Ok(0),
        }
    }
}

/// Reads client bytes into `buf`. When `buf` has little room (between requests it has
/// none), the read goes to the stack first and a buffer of [`READ_CHUNK`] is taken only
/// for bytes that arrived: a connection waiting for its next request holds no read
/// buffer, whichever the stream (a TLS stream cannot say whether bytes are there without
/// reading), and a read that finds nothing allocates nothing (BENCHMARKS.md, memory).
fn poll_read_in<S: ClientIo>(
    io: &mut S,
    buf: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() >= READ_CHUNK / 4 {
        return std::pin::pin!(io.read_buf(buf)).poll(cx);
    }
    let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut read = tokio::io::ReadBuf::uninit(&mut stack);
    match Pin::new(&mut *io).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => {
            let got = read.filled();
            if !got.is_empty() {
                buf.reserve(READ_CHUNK);
                buf.extend_from_slice(got);
            }
            Poll::Ready(Ok(got.len()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-over target for tests that never hand over.
    struct Refuse;

    #[async_trait]
    impl HandOver for Refuse {
        async fn serve(&self, _stream: Stream, _shutdown: &ShutdownWatch) -> Option<Stream> {
            None
        }
        async fn cleanup(&self) {}
    }

    fn app() -> Arc<FastApp> {
        let text = crate::demo::DEMO_CONFIG
            .replace("@LISTEN@", "127.0.0.1:1")
            .replace("@ADMIN@", "127.0.0.1:2")
            .replace("@STABLE@", "127.0.0.1:3")
            .replace("@CANARY@", "127.0.0.1:4");
        let config = crate::config::Config::parse(&text).unwrap();
        let state = Arc::new(State::new(
            crate::routing::RoutingTable::build(config).unwrap(),
        ));
        Arc::new(FastApp::new(state, Arc::new(Refuse)))
    }

    /// A read that finds nothing gives its buffer back (an idle connection holds none);
    /// bytes already in the buffer stay, and the next read takes a buffer again.
    #[tokio::test]
    async fn a_read_that_waits_holds_no_buffer() {
        use futures::FutureExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let read = poll_fn(|cx| poll_read_in(&mut server, &mut buf, cx)).now_or_never();
        assert!(read.is_none());
        assert_eq!(buf.capacity(), 0, "an idle read holds no buffer");
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let n = poll_fn(|cx| poll_read_in(&mut server, &mut buf, cx))
            .await
            .unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
        assert!(buf.capacity() >= READ_CHUNK);
        // A partial head stays across a read that waits.
        let read = poll_fn(|cx| poll_read_in(&mut server, &mut buf, cx)).now_or_never();
        assert!(read.is_none());
        assert_eq!(buf, b"GET / HTTP/1.1\r\n");
        drop(client);
        let end = poll_fn(|cx| poll_read_in(&mut server, &mut buf, cx)).await;
        assert_eq!(end.unwrap(), 0);
    }

    /// Memory per idle keep-alive connection is mostly its task's future: keep the
    /// states a connection waits in between requests small (BENCHMARKS.md, memory).
    /// Sizes are those of a debug build (a release build's are smaller: 304 B before
    /// the wait left its timer and the exchange, 216 B after). With tokio's task header
    /// and trailer the task is then 384 bytes (128-byte aligned), not 512.
    #[tokio::test]
    async fn an_idle_connection_holds_little_memory() {
        let app = app();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let conn = Conn::new(&app.state, server, None, Vec::new(), false);
        let state = std::mem::size_of_val(&conn);
        let task = std::mem::size_of_val(&connection(app, conn, shutdown));
        eprintln!("connection future {task} B, of which the connection {state} B");
        assert!(state <= 160, "the connection's state is {state} bytes");
        assert!(task <= 256, "connection future is {task} bytes");
    }
}
