//! Whether the proxy's listeners are bound *by this process*: readiness means serving.
//! Pingora binds in the background and, when a port is taken, retries for about 30 s
//! while the rest of the process runs, so cohort asks the kernel: a listening TCP socket
//! at each configured address whose inode is one of this process's descriptors
//! (`/proc/net/tcp{,6}` and `/proc/self/fd`). Another process holding the port does not
//! count. Once every listener is bound the answer is latched: listeners are only closed
//! at shutdown.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

/// The proxy listeners a process must hold to be ready.
#[derive(Debug)]
pub struct Listeners {
    /// (address, is TLS)
    expected: Vec<(SocketAddr, bool)>,
    all_bound: AtomicBool,
}

/// One listener's state, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerState {
    pub addr: SocketAddr,
    pub tls: bool,
    pub bound: bool,
}

impl Listeners {
    pub fn new(plaintext: &[SocketAddr], tls: &[SocketAddr]) -> Listeners {
        let expected = plaintext
            .iter()
            .map(|a| (*a, false))
            .chain(tls.iter().map(|a| (*a, true)))
            .collect();
        Listeners {
            expected,
            all_bound: AtomicBool::new(false),
        }
    }

    /// Every listener, and whether this process holds it now.
    pub fn states(&self) -> Vec<ListenerState> {
        let held = if self.all_bound.load(Ordering::Relaxed) {
            None
        } else {
            Some(held_listeners())
        };
        let states: Vec<ListenerState> = self
            .expected
            .iter()
            .map(|&(addr, tls)| ListenerState {
                addr,
                tls,
                bound: match &held {
                    None => true,
                    // No /proc (not Linux): nothing to ask, so no claim either way.
                    Some(None) => true,
                    Some(Some(set)) => set.contains(&addr),
                },
            })
            .collect();
        if states.iter().all(|s| s.bound) {
            self.all_bound.store(true, Ordering::Relaxed);
        }
        states
    }

    /// The listeners this process does not hold (empty when ready).
    pub fn unbound(&self) -> Vec<SocketAddr> {
        if self.all_bound.load(Ordering::Relaxed) {
            return Vec::new();
        }
        self.states()
            .into_iter()
            .filter(|s| !s.bound)
            .map(|s| s.addr)
            .collect()
    }
}

/// Whether this process holds a listening TCP socket at `addr` (true when the system has
/// no `/proc` to tell).
pub fn holds(addr: SocketAddr) -> bool {
    held_listeners().is_none_or(|held| held.contains(&addr))
}

/// The local addresses of the listening TCP sockets this process holds; `None` when the
/// system has no `/proc` to tell.
fn held_listeners() -> Option<HashSet<SocketAddr>> {
    let ours = socket_inodes()?;
    let mut held = HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        held.extend(
            listening(&text)
                .filter(|(_, inode)| ours.contains(inode))
                .map(|(addr, _)| addr),
        );
    }
    Some(held)
}

/// The inodes of this process's sockets.
fn socket_inodes() -> Option<HashSet<u64>> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        dir.flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter_map(|target| {
                let t = target.to_str()?;
                t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
            })
            .collect(),
    )
}

/// `(local address, inode)` of the LISTEN (state `0A`) rows of a `/proc/net/tcp` or
/// `tcp6` table.
fn listening(table: &str) -> impl Iterator<Item = (SocketAddr, u64)> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(3) != Some(&"0A") {
            return None;
        }
        let addr = parse_address(fields.get(1)?)?;
        let inode = fields.get(9)?.parse().ok()?;
        Some((addr, inode))
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:port` (IPv6): the address as the kernel
/// prints it, in host-order 32-bit words.
fn parse_address(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// How long start-up may wait for the listeners (Pingora retries a taken port for about
/// 30 s): then the process exits 1, as NGINX does when it cannot bind. The variable
/// `COHORT_BIND_TIMEOUT_SECS` overrides it.
const BIND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(35);

fn bind_timeout() -> std::time::Duration {
    std::env::var("COHORT_BIND_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(BIND_TIMEOUT, std::time::Duration::from_secs)
}

/// Watches start-up: logs when every listener is bound, and ends the process (exit 1)
/// when one is still not bound after the bind timeout.
pub struct BindWatch {
    pub state: std::sync::Arc<crate::state::State>,
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for BindWatch {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let started = tokio::time::Instant::now();
        let mut warned = false;
        loop {
            let unbound = self.state.listeners.unbound();
            if unbound.is_empty() {
                log::info!("every listener is bound: ready");
                return;
            }
            let waited = started.elapsed();
            if waited >= bind_timeout() {
                log::error!(
                    "not listening on {unbound:?} after {waited:?} (another process holds the port?): exiting"
                );
                std::process::exit(1);
            }
            if !warned && waited >= std::time::Duration::from_secs(1) {
                log::warn!("not yet listening on {unbound:?}: /readyz answers 503 until then");
                warned = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_names_the_listeners_of_this_process_only() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(holds(addr));
        drop(l);
        assert!(
            !holds(addr) || held_listeners().is_none(),
            "a closed listener is not held"
        );
    }

    #[test]
    fn proc_net_addresses_parse() {
        // what a little-endian machine prints (the test machines are x86_64/aarch64)
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_address("0100007F:1F90"),
                Some("127.0.0.1:8080".parse().unwrap())
            );
            assert_eq!(
                parse_address("00000000:0050"),
                Some("0.0.0.0:80".parse().unwrap())
            );
            assert_eq!(
                parse_address("00000000000000000000000001000000:1F90"),
                Some("[::1]:8080".parse().unwrap())
            );
        }
        assert_eq!(parse_address("nonsense"), None);
        assert_eq!(parse_address("0100007F:zz"), None);
    }

    #[test]
    fn a_socket_this_process_listens_on_is_held_and_a_free_port_is_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let w = Listeners::new(&[addr], &[]);
        if held_listeners().is_none() {
            return; // no /proc here: nothing to assert
        }
        assert!(w.unbound().is_empty(), "held");
        let gone = {
            let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            t.local_addr().unwrap()
        };
        let w = Listeners::new(&[addr], &[gone]);
        assert_eq!(w.unbound(), vec![gone]);
        let states = w.states();
        assert_eq!(states.len(), 2);
        assert!(states[0].bound && !states[0].tls);
        assert!(!states[1].bound && states[1].tls);
        drop(l);
    }
}
