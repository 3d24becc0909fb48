//! Idle upstream connections for the fast path, kept per worker thread (a connection is
//! only ever used by the thread whose runtime owns its socket, so no lock is taken).
//! No task watches an idle connection: one that the upstream closed is noticed when it
//! is taken (its socket reads as closed) and dropped then.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

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
    by_addr: Vec<(SocketAddr, Vec<(TcpStream, Instant)>)>,
    puts: u32,
}

impl Idle {
    fn list(&mut self, addr: SocketAddr) -> Option<&mut Vec<(TcpStream, Instant)>> {
        self.by_addr
            .iter_mut()
            .find(|(a, _)| *a == addr)
            .map(|(_, list)| list)
    }
}

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle::default());
}

/// A live idle connection to `addr`, most recently used first.
pub fn take(addr: SocketAddr) -> Option<TcpStream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.list(addr)?;
        while let Some((stream, since)) = list.pop() {
            if since.elapsed() < IDLE_TIMEOUT && is_open(&stream) {
                return Some(stream);
            }
        }
        None
    })
}

/// Returns a connection whose last response was read completely.
pub fn put(addr: SocketAddr, stream: TcpStream) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        idle.puts = idle.puts.wrapping_add(1);
        if idle.puts % SWEEP_EVERY == 0 {
            for (_, list) in idle.by_addr.iter_mut() {
                list.retain(|(_, since)| since.elapsed() < IDLE_TIMEOUT);
            }
            idle.by_addr.retain(|(_, list)| !list.is_empty());
        }
        if idle.list(addr).is_none() {
            idle.by_addr.push((addr, Vec::new()));
        }
        let Some(list) = idle.list(addr) else {
            return;
        };
        if list.len() >= MAX_IDLE_PER_BACKEND {
            list.remove(0);
        }
        list.push((stream, Instant::now()));
    })
}

/// Whether an idle socket is still open. Costs no system call unless the reactor has
/// seen it become readable (an idle HTTP connection only does when it closes).
fn is_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn closed_idle_connections_are_never_handed_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server_side, _) = listener.accept().await.unwrap();
        put(addr, client);
        let again = take(addr).expect("open connection comes back");
        put(addr, again);
        server_side.shutdown().await.unwrap();
        drop(server_side);
        // Let the reactor observe the FIN.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(take(addr).is_none(), "a closed connection was reused");
        assert!(take(addr).is_none());
    }
}
