//! The HTTP/2 carrier: TLS connections whose ALPN is `h2`, served by the `h2` crate's
//! server on the engine's terms. Each stream is routed and forwarded by the forwarding
//! core exactly as an HTTP/1.1 request on the engine is ([`stream`]), as HTTP/1.1 over
//! the engine's per-thread upstream pool ([`upstream`]); the response goes back as
//! HEADERS and DATA within the client's flow-control windows ([`send`]).
//!
//! All streams of a connection run on the connection's own task (no task per stream),
//! on the thread that accepted it: the TLS state and the upstream pool are that thread's.
//!
//! A stream this carrier cannot take any more (a reload gave its variant HTTP/2
//! upstream) is refused with `REFUSED_STREAM` and the connection goes away with GOAWAY:
//! the client sends it again on a new connection, which the Pingora carrier takes.
//!
//! `COHORT_H2_CARRIER=0` (or `COHORT_FAST_PATH=0`) leaves HTTP/2 to the Pingora carrier.

mod body;
mod send;
mod stream;
mod upstream;

use super::FastApp;
use crate::forward::ClientPeer;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::sync::atomic::Ordering;

/// Streams one connection may have open at once (NGINX's `http2_max_concurrent_streams`
/// default is 128; Pingora's is 100).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// The window each request body stream starts with: a 64 KiB body (the most a retry
/// can resend, [`super::exchange::REPLAY_BODY`]) arrives without waiting for an update.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window, shared by its streams' request bodies.
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Whether the engine serves HTTP/2 itself (on unless `COHORT_H2_CARRIER=0`).
pub fn enabled() -> bool {
    std::env::var("COHORT_H2_CARRIER").map_or(true, |v| v != "0")
}

/// Serves one HTTP/2 connection until it closes.
pub(super) async fn serve(app: &FastApp, io: Stream, shutdown: &ShutdownWatch) {
    let peer = super::handover::peer_addr(&io).map(ClientPeer::new);
    let (keepalive, head_timeout, max_head) = {
        let server = &app.state.table().config.server;
        (
            server.keepalive_timeout,
            server.client_header_timeout,
            server.max_request_head_bytes,
        )
    };
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
        .handshake::<_, Bytes>(io);
    let mut conn = match pingora_timeout::tokio_timeout(head_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(_)) | Err(_) => return,
    };
    let ctx = stream::ConnCtx {
        state: &app.state,
        peer,
        refused: std::sync::atomic::AtomicBool::new(false),
    };
    let mut streams = FuturesUnordered::new();
    let idle = tokio::time::sleep(keepalive);
    tokio::pin!(idle);
    let mut shutdown = shutdown.clone();
    let mut going_away = false;
    loop {
        // Registered before the flags are read, so a stop between the two is not missed.
        let closing = app.wake_idle.notified();
        tokio::pin!(closing);
        closing.as_mut().enable();
        // A refused stream (`stream::refuses`: a reload gave a variant HTTP/2 upstream)
        // sends the client to a new connection too.
        let stopping = *shutdown.borrow()
            || app.closing.load(Ordering::SeqCst)
            || app.state.is_draining()
            || ctx.refused.load(Ordering::Relaxed);
        if stopping && !going_away {
            // GOAWAY: streams already open are served, no new ones are taken.
            conn.graceful_shutdown();
            going_away = true;
        }
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => streams.push(stream::serve(&ctx, req, respond)),
                Some(Err(_)) | None => break,
            },
            Some(()) = streams.next(), if !streams.is_empty() => {
                if streams.is_empty() {
                    idle.as_mut().reset(tokio::time::Instant::now() + keepalive);
                }
            }
            () = &mut idle, if streams.is_empty() && !going_away => {
                // `server.keepalive_timeout_secs` without a stream: the connection ends.
                conn.graceful_shutdown();
                going_away = true;
            }
            changed = shutdown.changed(), if !going_away => {
                if changed.is_err() {
                    // The service is gone: no watch to wait on any more.
                    conn.graceful_shutdown();
                    going_away = true;
                }
            }
            () = closing, if !going_away => {}
        }
    }
}
