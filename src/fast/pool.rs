//! Idle upstream connections for the fast path, kept per worker thread (a connection is
//! only ever used by the thread whose runtime owns its socket, so no lock is taken).
//! No task watches an idle connection: one that the upstream closed is noticed when it
//! is taken (its socket reads as closed) and dropped then. Connections are kept by
//! backend address and [`crate::upstream::Pool::conn_key`] (0 for plaintext; TLS
//! connections by settings and server name).

use super::upstream_io::UpStream;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Idle connections are not reused after this long (backends commonly close at 60 s+).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// Idle connections kept per backend per thread.
const MAX_IDLE_PER_BACKEND: usize = 128;
/// Every this many returns, idle connections past [`IDLE_TIMEOUT`] are closed.
const SWEEP_EVERY: u32 = 4096;

/// Idle connections per backend address. A short list searched linearly: a thread
/// talks to few backends, and hashing a `SocketAddr` per request costs more.
#[derive(Default)]
struct Idle {
    by_addr: Vec<(Key, Vec<(UpStream, Instant)>)>,
    puts: u32,
}

/// A backend address and the connection key.
type Key = (SocketAddr, u64);

impl Idle {
    fn list(&mut self, key: Key) -> Option<&mut Vec<(UpStream, Instant)>> {
        self.by_addr
            .iter_mut()
            .find(|(k, _)| *k == key)
            .map(|(_, list)| list)
    }
}

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle::default());
}

/// A live idle connection to `addr` with connection key `key`, most recently used first.
pub(super) fn take(addr: SocketAddr, key: u64) -> Option<UpStream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.list((addr, key))?;
        while let Some((stream, since)) = list.pop() {
            if since.elapsed() < IDLE_TIMEOUT && stream.is_open() {
                return Some(stream);
            }
        }
        None
    })
}

/// Returns a connection whose last response was read completely.
pub(super) fn put(addr: SocketAddr, key: u64, stream: UpStream) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        idle.puts = idle.puts.wrapping_add(1);
        if idle.puts % SWEEP_EVERY == 0 {
            for (_, list) in idle.by_addr.iter_mut() {
                list.retain(|(_, since)| since.elapsed() < IDLE_TIMEOUT);
            }
            idle.by_addr.retain(|(_, list)| !list.is_empty());
        }
        if idle.list((addr, key)).is_none() {
            idle.by_addr.push(((addr, key), Vec::new()));
        }
        let Some(list) = idle.list((addr, key)) else {
            return;
        };
        if list.len() >= MAX_IDLE_PER_BACKEND {
            list.remove(0);
        }
        list.push((stream, Instant::now()));
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn closed_idle_connections_are_never_handed_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server_side, _) = listener.accept().await.unwrap();
        put(addr, 0, UpStream::plain(client));
        assert!(
            take(addr, 7).is_none(),
            "another key's connection is not handed out"
        );
        let again = take(addr, 0).expect("open connection comes back");
        put(addr, 0, again);
        server_side.shutdown().await.unwrap();
        drop(server_side);
        // Let the reactor observe the FIN.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(take(addr, 0).is_none(), "a closed connection was reused");
        assert!(take(addr, 0).is_none());
    }
}
