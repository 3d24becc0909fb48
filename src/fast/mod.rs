//! The HTTP/1.1 fast path for plaintext listeners. Pingora still accepts the
//! connections, owns the listening sockets (graceful upgrade hands them over), and runs
//! the lifecycle; this [`ServerApp`] serves the plain keep-alive requests an API gets
//! with far less work per request than Pingora's general proxy (no per-request session
//! objects, header maps or pool watcher tasks: see BENCHMARKS.md). The first request it
//! does not take on (HTTP/1.0, chunked or `Expect` request bodies, upgrades, absolute
//! targets, malformed or oversized heads) is handed, with every byte already read, to the
//! Pingora proxy ([`crate::proxy::CohortProxy`]), which serves the rest of that
//! connection. Both paths route through the same functions and record the same metrics.
//!
//! `COHORT_FAST_PATH=0` in the environment turns the fast path off.

mod exchange;
pub mod http1;
mod pool;

use crate::proxy::CohortProxy;
use crate::state::State;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Sleep;

/// How long each read of a request body may wait (NGINX's `client_body_timeout`).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Buffer reserved per connection for reading request heads.
const READ_CHUNK: usize = 4096;

/// Whether the fast path serves plaintext listeners (on unless `COHORT_FAST_PATH=0`).
pub fn enabled() -> bool {
    std::env::var("COHORT_FAST_PATH").map_or(true, |v| v != "0")
}

/// The plaintext listeners' application: the fast path, with the Pingora proxy behind it.
pub struct FastApp {
    state: Arc<State>,
    proxy: Arc<HttpProxy<CohortProxy>>,
    /// Set once the service stopped listening: idle connections close.
    closing: AtomicBool,
    wake_idle: Notify,
}

impl FastApp {
    pub fn new(state: Arc<State>, proxy: HttpProxy<CohortProxy>) -> FastApp {
        FastApp {
            state,
            proxy: Arc::new(proxy),
            closing: AtomicBool::new(false),
            wake_idle: Notify::new(),
        }
    }
}

#[async_trait]
impl ServerApp for FastApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let io = match rehome(stream) {
            Ok(io) => io,
            Err(stream) => return self.proxy.process_new(stream, shutdown).await,
        };
        // The connection gets its own small task on this thread; Pingora's accept task
        // (sized for a TLS handshake) ends here instead of living as long as the
        // connection (see BENCHMARKS.md, memory).
        tokio::spawn(connection(self.clone(), io, shutdown.clone()));
        None
    }

    async fn cleanup(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.wake_idle.notify_waiters();
        ServerApp::cleanup(self.proxy.as_ref()).await;
    }
}

/// Serves one client connection until it closes, or hands it to the Pingora proxy.
async fn connection(app: Arc<FastApp>, io: TcpStream, shutdown: ShutdownWatch) {
    let _ = io.set_nodelay(true);
    let peer = io.peer_addr().ok().map(|a| Peer::new(a.ip()));
    let server = &app.state.table().config.server;
    let (keepalive, head_timeout) = (server.keepalive_timeout, server.client_header_timeout);
    let mut conn = Conn {
        io,
        buf: Vec::new(),
        peer,
        served: 0,
        keepalive,
        head_timeout,
        client_timer: Box::pin(tokio::time::sleep(keepalive)),
        upstream_timer: Box::pin(tokio::time::sleep(keepalive)),
    };
    if let Served::HandOver = conn.serve(&app, &shutdown).await {
        let fd = conn.io.as_raw_fd();
        let mut io = L4Stream::from(conn.io);
        io.set_socket_digest(SocketDigest::from_raw_fd(fd));
        io.rewind(&conn.buf);
        let mut next = app.proxy.process_new(Box::new(io), &shutdown).await;
        while let Some(stream) = next {
            next = app.proxy.process_new(stream, &shutdown).await;
        }
    }
}

/// Moves an accepted TCP connection onto this thread's reactor. Pingora accepts on one
/// thread and runs the connection's task on a randomly chosen one, so without this every
/// readiness event for the client socket would be picked up by the accepting thread and
/// passed across with a wake-up (an `eventfd` write and a context switch per event; see
/// BENCHMARKS.md). `Err` gives back streams that are not plain TCP, or if `dup` failed.
fn rehome(stream: Stream) -> Result<TcpStream, Stream> {
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

/// The client's TCP peer, with what each request needs from it precomputed.
pub(crate) struct Peer {
    /// As the socket reports it (routing sees this).
    pub ip: IpAddr,
    /// IPv4-mapped addresses as IPv4 (trusted-proxy checks, `X-Forwarded-For`).
    pub canonical: IpAddr,
    /// `canonical` as text, for `X-Forwarded-For`.
    pub text: String,
}

impl Peer {
    fn new(ip: IpAddr) -> Peer {
        let canonical = ip.to_canonical();
        Peer {
            ip,
            canonical,
            text: canonical.to_string(),
        }
    }
}

/// How a connection's fast-path service ended.
enum Served {
    /// The connection is done (closed by either side, or after an error response).
    Closed,
    /// Pingora takes over from here; `buf` holds the bytes read but not served.
    HandOver,
}

/// One client connection on the fast path.
struct Conn {
    io: TcpStream,
    /// Bytes read from the client and not yet consumed (a request head, a pipelined
    /// request, body bytes).
    buf: Vec<u8>,
    peer: Option<Peer>,
    /// Requests answered on this connection so far.
    served: u32,
    /// `server.keepalive_timeout_secs` and `server.client_header_timeout_secs` when the
    /// connection was accepted.
    keepalive: Duration,
    head_timeout: Duration,
    /// Deadline of the current client read. One timer per connection, pushed later for
    /// each read: extending a registered tokio timer is a store, where a new timer per
    /// read costs a timer-wheel insertion (and often a reactor wake-up).
    client_timer: Pin<Box<Sleep>>,
    /// Deadline of the current upstream read (same reasoning).
    upstream_timer: Pin<Box<Sleep>>,
}

impl Conn {
    async fn serve(&mut self, app: &FastApp, shutdown: &ShutdownWatch) -> Served {
        // Registered once for the connection's life; fires when the service shuts down.
        let closing = app.wake_idle.notified();
        tokio::pin!(closing);
        closing.as_mut().enable();
        loop {
            match exchange::serve_one(self, app, shutdown, closing.as_mut()).await {
                exchange::Next::KeepAlive => {
                    self.served += 1;
                    // An idle keep-alive connection holds no read buffer: 10,000 idle
                    // clients would otherwise pin 40 MiB (see BENCHMARKS.md, memory).
                    if self.buf.is_empty() {
                        self.buf = Vec::new();
                    }
                }
                exchange::Next::Close => {
                    let _ = self.io.shutdown().await;
                    return Served::Closed;
                }
                exchange::Next::Gone => return Served::Closed,
                exchange::Next::HandOver => return Served::HandOver,
            }
        }
    }

    /// Reads more client bytes into `buf`: a request head due by `head_deadline`, or with
    /// `None`, the start of a new request on an idle keep-alive connection (the wait ends
    /// after `keepalive` or when the service shuts down). `Ok(0)` means the
    /// connection is over (closed, timed out, or shutting down).
    async fn read_more(
        &mut self,
        app: &FastApp,
        head_deadline: Option<tokio::time::Instant>,
        closing: Pin<&mut Notified<'_>>,
    ) -> std::io::Result<usize> {
        let idle = head_deadline.is_none();
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        if idle && app.closing.load(Ordering::SeqCst) {
            // Shutting down: serve a request that already arrived, wait for no other.
            return match self.io.try_read_buf(&mut self.buf) {
                Ok(n) => Ok(n),
                Err(_) => Ok(0),
            };
        }
        let until = head_deadline.unwrap_or_else(|| tokio::time::Instant::now() + self.keepalive);
        self.client_timer.as_mut().reset(until);
        tokio::select! {
            biased;
            r = self.io.read_buf(&mut self.buf) => r,
            _ = self.client_timer.as_mut() => Ok(0),
            _ = closing, if idle => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::server::configuration::ServerConf;

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
        let proxy = pingora_proxy::http_proxy(
            &Arc::new(ServerConf::default()),
            CohortProxy {
                state: state.clone(),
            },
        );
        Arc::new(FastApp::new(state, proxy))
    }

    /// Memory per idle keep-alive connection is mostly its task's future: keep the
    /// states a connection waits in between requests small (BENCHMARKS.md, memory).
    #[tokio::test]
    async fn an_idle_connection_holds_little_memory() {
        let app = app();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let task = std::mem::size_of_val(&connection(app, server, shutdown));
        let sleep = std::mem::size_of::<Sleep>();
        eprintln!("connection future {task} B, timer {sleep} B");
        assert!(task <= 1536, "connection future is {task} bytes");
    }
}
