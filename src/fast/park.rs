//! Idle keep-alive connections parked off their task (issue 18, memory per connection).
//!
//! A plaintext keep-alive connection that stays idle for [`park_after`] leaves its task:
//! its socket, client address and request count go to its thread's *lot* (one task per
//! listener and thread), which waits for the socket to become readable and then spawns
//! the connection's task again. An idle client then costs the socket's registration, a
//! [`Parked`] record and one small future in the lot, instead of a task with its
//! connection state and two timers (BENCHMARKS.md §5, memory).
//!
//! Timeouts stay exact to the second without a timer per connection: a parked
//! connection waits on the *bucket* of the second its keep-alive ends, and the lot's one
//! ticker closes a bucket's connections when that second has passed. On shutdown the lot
//! keeps its connections to the end of the drain window (a request that arrives is
//! served, with `Connection: close`), then closes the rest, as an idle connection on its
//! own task would.
//!
//! TLS connections are not parked (their state cannot leave the engine's task here), and
//! a connection busy with requests never waits long enough to be parked, so the request
//! path is unchanged.

use super::{connection, Conn, FastApp};
use futures::stream::{FuturesUnordered, StreamExt};
use pingora_core::server::ShutdownWatch;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a keep-alive connection waits on its own task before it is parked: long
/// enough that a client sending requests back to back never is. `COHORT_PARK_AFTER_MS`
/// sets it (tests use a short one; `0` turns parking off).
pub(super) fn park_after() -> Option<Duration> {
    static AFTER: LazyLock<Option<Duration>> = LazyLock::new(|| {
        let ms = std::env::var("COHORT_PARK_AFTER_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1000);
        (ms > 0).then(|| Duration::from_millis(ms))
    });
    *AFTER
}

/// Connections parked now, in every lot (`GET /status`, `parked_connections`).
static PARKED: AtomicUsize = AtomicUsize::new(0);

pub fn parked_connections() -> usize {
    PARKED.load(Ordering::Relaxed)
}

/// What a parked connection keeps.
pub(super) struct Parked {
    io: TcpStream,
    /// The client's address (the socket's, or a PROXY protocol header's).
    peer: Option<SocketAddr>,
    served: u32,
    /// When its keep-alive wait ends.
    until: Instant,
}

impl Parked {
    pub(super) fn new(
        io: TcpStream,
        peer: Option<SocketAddr>,
        served: u32,
        until: Instant,
    ) -> Parked {
        Parked {
            io,
            peer,
            served,
            until,
        }
    }
}

thread_local! {
    /// This thread's lots, by listener (the address of its [`FastApp`], which the lot
    /// keeps alive, so no other app can take the address while the entry exists).
    static LOTS: RefCell<Vec<(usize, UnboundedSender<Parked>)>> = const { RefCell::new(Vec::new()) };
}

/// Hands `p` to this thread's lot for `app` (started on first use); `Err` gives it back
/// when no lot can take it (the runtime is shutting down).
pub(super) fn park(app: &Arc<FastApp>, shutdown: &ShutdownWatch, p: Parked) -> Result<(), Parked> {
    LOTS.with(|lots| {
        let mut lots = lots.borrow_mut();
        lots.retain(|(_, tx)| !tx.is_closed());
        let key = Arc::as_ptr(app) as usize;
        if let Some((_, tx)) = lots.iter().find(|(k, _)| *k == key) {
            return tx.send(p).map_err(|e| e.0);
        }
        let (tx, rx) = unbounded_channel();
        let sent = tx.send(p).map_err(|e| e.0);
        tokio::spawn(lot(app.clone(), shutdown.clone(), rx));
        lots.push((key, tx));
        sent
    })
}

/// The connections whose keep-alive ends within one second.
#[derive(Default)]
struct Bucket {
    over: AtomicBool,
    notify: Notify,
}

/// Waits until `p`'s client sends something (`Some`: resume it) or its bucket closes
/// (`None`: the connection is dropped, which closes it).
async fn wait(p: Parked, bucket: Arc<Bucket>) -> Option<Parked> {
    let over = bucket.notify.notified();
    tokio::pin!(over);
    over.as_mut().enable();
    if bucket.over.load(Ordering::Acquire) {
        return None;
    }
    tokio::select! {
        biased;
        r = p.io.readable() => r.ok().map(|()| p),
        _ = over => None,
    }
}

/// One listener's parked connections on one thread.
async fn lot(app: Arc<FastApp>, shutdown: ShutdownWatch, mut rx: UnboundedReceiver<Parked>) {
    let start = Instant::now();
    let second = |t: Instant| t.saturating_duration_since(start).as_secs() + 1;
    let mut waiting = FuturesUnordered::new();
    let mut buckets: BTreeMap<u64, Arc<Bucket>> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let closing = app.wake_idle.notified();
    tokio::pin!(closing);
    closing.as_mut().enable();
    // The end of the drain window, once the listener stopped.
    let mut drain_end: Option<Instant> = None;
    let mut open = true;
    loop {
        if app.closing.load(Ordering::SeqCst) && drain_end.is_none() {
            let end = app.state.drain_window_end().map(Instant::from);
            drain_end = Some(end.unwrap_or_else(Instant::now));
        }
        if drain_end.is_some_and(|end| end <= Instant::now()) || (!open && waiting.is_empty()) {
            break;
        }
        tokio::select! {
            p = rx.recv(), if open => match p {
                Some(p) => {
                    let bucket = buckets.entry(second(p.until)).or_default().clone();
                    PARKED.fetch_add(1, Ordering::Relaxed);
                    waiting.push(wait(p, bucket));
                }
                None => open = false,
            },
            Some(woken) = waiting.next() => {
                PARKED.fetch_sub(1, Ordering::Relaxed);
                if let Some(p) = woken {
                    resume(&app, &shutdown, p);
                }
            }
            _ = tick.tick() => {
                let now = second(Instant::now());
                while let Some(entry) = buckets.first_entry() {
                    if *entry.key() >= now {
                        break;
                    }
                    let bucket = entry.remove();
                    bucket.over.store(true, Ordering::Release);
                    bucket.notify.notify_waiters();
                }
            }
            _ = &mut closing, if drain_end.is_none() => {}
        }
    }
    PARKED.fetch_sub(waiting.len(), Ordering::Relaxed);
}

/// The connection's task again, as it was between requests.
fn resume(app: &Arc<FastApp>, shutdown: &ShutdownWatch, p: Parked) {
    let peer = p.peer.map(crate::forward::ClientPeer::new);
    let mut conn = Conn::new(&app.state, p.io, peer, Vec::new(), false);
    conn.served = p.served;
    tokio::spawn(connection(app.clone(), conn, shutdown.clone()));
}
