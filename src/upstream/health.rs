//! Backend health: active checks (HTTP `GET path` expecting 2xx, or TCP connect) with
//! `unhealthy_after` / `healthy_after` thresholds, and passive ejection on connect
//! failures. Health is kept per backend address in one process-wide [`HealthBook`], so a
//! reload that keeps a backend keeps its state (never sending traffic to a backend known
//! to be down, nor marking a healthy one down). The prober ([`HealthService`]) always
//! works from the *current* table: a table's checks start when it is swapped in and stop
//! when it is swapped out.

use super::tls::UpstreamTlsClient;
use crate::config::{HealthCheck, Passive};
use crate::state::State;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Milliseconds since process start (monotonic), for lock-free timestamps.
fn now_ms() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64
}

/// Health of one backend address. All fields are atomics: the request path reads
/// [`BackendHealth::is_up`] without locking.
#[derive(Debug)]
pub struct BackendHealth {
    pub addr: SocketAddr,
    /// Verdict of the active checks (true until proven otherwise).
    up: AtomicBool,
    /// Passive ejection: skip until this time (ms since start; 0 = not ejected).
    ejected_until: AtomicU64,
    successes: AtomicU32,
    failures: AtomicU32,
    /// Hang-ups counted since `window_start` (ms since start; 0 = no window open).
    window_start: AtomicU64,
    window_fails: AtomicU32,
    /// When the next active probe is due (ms since start).
    next_probe: AtomicU64,
    probing: AtomicBool,
}

impl BackendHealth {
    fn new(addr: SocketAddr) -> BackendHealth {
        BackendHealth {
            addr,
            up: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            window_start: AtomicU64::new(0),
            window_fails: AtomicU32::new(0),
            next_probe: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// Whether requests may go to this backend now.
    #[inline]
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) && self.ejected_until.load(Ordering::Relaxed) <= now_ms()
    }

    /// Records one check result against the thresholds of `hc`.
    pub fn record(&self, ok: bool, hc: &HealthCheck) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            let n = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.up.load(Ordering::Relaxed) && n >= hc.healthy_after {
                self.up.store(true, Ordering::Relaxed);
                log::info!("backend {} is healthy again", self.addr);
            }
            self.ejected_until.store(0, Ordering::Relaxed);
        } else {
            self.successes.store(0, Ordering::Relaxed);
            let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if self.up.load(Ordering::Relaxed) && n >= hc.unhealthy_after {
                self.up.store(false, Ordering::Relaxed);
                log::warn!("backend {} is down after {n} failed checks", self.addr);
            }
        }
    }

    /// A request could not connect: the backend's own failure. With active checks it
    /// counts toward `unhealthy_after`; without them the backend is ejected for
    /// `fail_timeout` at once.
    pub fn connect_failed(&self, hc: Option<&HealthCheck>, p: Passive) {
        match hc {
            Some(hc) => self.record(false, hc),
            None => self.eject(p.fail_timeout, "a connect failure"),
        }
    }

    /// A fresh connection closed without answering a request: possibly the request's own
    /// doing. The backend is ejected for `fail_timeout` once `max_fails` such hang-ups
    /// fall within `fail_timeout`, unless `last_healthy` (the variant has no other
    /// healthy backend: ejecting it would turn one client's requests into an outage).
    pub fn hung_up(&self, p: Passive, last_healthy: bool) {
        let now = now_ms();
        let window = p.fail_timeout.as_millis() as u64;
        let start = self.window_start.load(Ordering::Relaxed);
        let n = if start == 0 || now.saturating_sub(start) > window {
            self.window_start.store(now.max(1), Ordering::Relaxed);
            self.window_fails.store(1, Ordering::Relaxed);
            1
        } else {
            self.window_fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if n < p.max_fails {
            return;
        }
        if last_healthy {
            log::warn!(
                "backend {} hung up {n} times within {:?}; not ejected: it is the variant's last healthy backend",
                self.addr,
                p.fail_timeout
            );
            return;
        }
        self.window_start.store(0, Ordering::Relaxed);
        self.eject(p.fail_timeout, "repeated hang-ups");
    }

    fn eject(&self, period: Duration, why: &str) {
        let until = now_ms() + period.as_millis() as u64;
        if self.ejected_until.swap(until, Ordering::Relaxed) <= now_ms() {
            log::warn!("backend {} ejected for {period:?} after {why}", self.addr);
        }
    }
}

/// Process-wide health by backend address (shared across table versions).
#[derive(Default)]
pub struct HealthBook {
    entries: Mutex<HashMap<SocketAddr, Arc<BackendHealth>>>,
}

/// The one book.
pub static HEALTH: LazyLock<HealthBook> = LazyLock::new(HealthBook::default);

impl HealthBook {
    /// The health entry for `addr`, created healthy if new. Entries no table uses any
    /// more are dropped here.
    pub fn entry(&self, addr: SocketAddr) -> Arc<BackendHealth> {
        let mut map = match self.entries.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() > 64 {
            map.retain(|_, h| Arc::strong_count(h) > 1);
        }
        map.entry(addr)
            .or_insert_with(|| Arc::new(BackendHealth::new(addr)))
            .clone()
    }
}

/// The most of a probe response cohort reads (head and body).
const PROBE_MAX: usize = 64 * 1024;

/// How a backend is reached by a probe: its variant's TLS client and server name, and
/// the `Host` to send (the variant's `host_header`, else the server name, else the
/// address).
#[derive(Clone)]
pub struct ProbeTarget {
    pub tls: Option<Arc<UpstreamTlsClient>>,
    pub name: Option<Arc<str>>,
    pub host: String,
}

/// One active probe, over TLS with the variant's settings when it has `tls`. gRPC:
/// `grpc.health.v1.Health/Check` answered SERVING ([`super::grpc_health`]). HTTP:
/// `GET path`, a well-formed HTTP/1.x response with a 2xx status within the timeout,
/// read to its end (so the backend sees a clean close, not a reset). TCP: connect (and
/// the TLS handshake).
pub async fn probe(addr: SocketAddr, hc: &HealthCheck, target: &ProbeTarget) -> bool {
    let attempt = async {
        let s = tokio::net::TcpStream::connect(addr).await?;
        match &target.tls {
            None => check_on(s, hc, &target.host, false).await,
            Some(tls) => match tls.handshake(s, target.name.as_deref()).await {
                Ok(s) => check_on(s, hc, &target.host, true).await,
                Err(e) => {
                    log::debug!("health check of {addr}: TLS handshake failed: {e}");
                    Ok(false)
                }
            },
        }
    };
    matches!(
        tokio::time::timeout(hc.timeout, attempt).await,
        Ok(Ok(true))
    )
}

/// The check on an open connection: gRPC's, HTTP's, or none (a TCP check).
async fn check_on<S>(s: S, hc: &HealthCheck, host: &str, tls: bool) -> std::io::Result<bool>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match &hc.grpc {
        Some(service) => super::grpc_health::check(s, service, host, tls).await,
        None => http_check(s, hc, host).await,
    }
}

/// The HTTP part of a probe on an open connection (`true` at once for a TCP check).
async fn http_check<S>(mut s: S, hc: &HealthCheck, host: &str) -> std::io::Result<bool>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(path) = &hc.path else {
        return Ok(true);
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cohort-health-check\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let status = loop {
        if s.read_buf(&mut buf).await? == 0 || buf.len() > PROBE_MAX {
            return Ok(false);
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => break resp.code.unwrap_or(0),
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Ok(false),
        }
    };
    // `Connection: close` was asked for: the body ends when the backend closes.
    let mut total = buf.len();
    let mut sink = [0u8; 4096];
    loop {
        // A TLS backend may close without a close_notify: the body has ended all the same.
        let n = s.read(&mut sink).await.unwrap_or(0);
        total += n;
        if n == 0 || total > PROBE_MAX {
            break;
        }
    }
    Ok((200..300).contains(&status))
}

/// Runs the active checks of whatever table is current.
pub struct HealthService {
    pub state: Arc<State>,
}

const TICK: Duration = Duration::from_millis(100);

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => self.round(),
            }
        }
    }
}

impl HealthService {
    /// Starts the probes that are due (each backend at most one probe in flight).
    fn round(&self) {
        let table = self.state.table();
        let now = now_ms();
        for pool in table.pools.iter().flatten() {
            let Some(hc) = pool.health_check() else {
                continue;
            };
            for h in pool.backend_health() {
                if h.next_probe.load(Ordering::Relaxed) > now
                    || h.probing.swap(true, Ordering::Relaxed)
                {
                    continue;
                }
                h.next_probe
                    .store(now + hc.interval.as_millis() as u64, Ordering::Relaxed);
                let (h, hc) = (h.clone(), hc.clone());
                let target = pool.probe_target(h.addr);
                tokio::spawn(async move {
                    let ok = probe(h.addr, &hc, &target).await;
                    h.record(ok, &hc);
                    h.probing.store(false, Ordering::Relaxed);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc() -> HealthCheck {
        HealthCheck {
            path: None,
            grpc: None,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
            unhealthy_after: 3,
            healthy_after: 2,
        }
    }

    #[test]
    fn thresholds_flip_state_only_after_consecutive_results() {
        let h = BackendHealth::new("127.0.0.1:1".parse().unwrap());
        let hc = hc();
        h.record(false, &hc);
        h.record(false, &hc);
        assert!(h.is_up(), "2 failures < unhealthy_after");
        h.record(true, &hc);
        h.record(false, &hc);
        h.record(false, &hc);
        assert!(h.is_up(), "a success resets the failure count");
        h.record(false, &hc);
        assert!(!h.is_up(), "3 consecutive failures");
        h.record(true, &hc);
        assert!(!h.is_up(), "1 success < healthy_after");
        h.record(true, &hc);
        assert!(h.is_up(), "2 consecutive successes");
    }

    #[test]
    fn a_connect_failure_without_checks_ejects_for_fail_timeout() {
        let h = BackendHealth::new("127.0.0.1:1".parse().unwrap());
        h.connect_failed(None, Passive::default());
        assert!(!h.is_up());
        let until = h.ejected_until.load(Ordering::Relaxed);
        assert!(until >= now_ms() + 10_000 - 1000);
    }

    #[test]
    fn hang_ups_eject_only_at_max_fails_and_never_the_last_healthy_backend() {
        let p = Passive {
            max_fails: 3,
            fail_timeout: Duration::from_secs(10),
        };
        let h = BackendHealth::new("127.0.0.1:2".parse().unwrap());
        h.hung_up(p, false);
        h.hung_up(p, false);
        assert!(h.is_up(), "2 hang-ups < max_fails");
        h.hung_up(p, false);
        assert!(!h.is_up(), "the third within the window ejects");
        let last = BackendHealth::new("127.0.0.1:3".parse().unwrap());
        for _ in 0..10 {
            last.hung_up(p, true);
        }
        assert!(
            last.is_up(),
            "the last healthy backend is never ejected passively"
        );
    }

    #[test]
    fn hang_ups_outside_the_window_start_a_new_count() {
        let p = Passive {
            max_fails: 2,
            fail_timeout: Duration::from_millis(50),
        };
        let h = BackendHealth::new("127.0.0.1:4".parse().unwrap());
        h.hung_up(p, false);
        std::thread::sleep(Duration::from_millis(120));
        h.hung_up(p, false);
        assert!(
            h.is_up(),
            "the first hang-up's window is over: a new window counts 1"
        );
        h.hung_up(p, false);
        assert!(!h.is_up(), "2 within the window");
    }

    #[test]
    fn the_book_shares_state_per_address() {
        let book = HealthBook::default();
        let a = book.entry("127.0.0.1:7".parse().unwrap());
        a.record(
            false,
            &HealthCheck {
                unhealthy_after: 1,
                ..hc()
            },
        );
        let again = book.entry("127.0.0.1:7".parse().unwrap());
        assert!(!again.is_up(), "state carries over to the next table");
        assert!(book.entry("127.0.0.1:8".parse().unwrap()).is_up());
    }
}
