//! Integration-test harness: real HTTP backends and the real `cohort` binary on 127.0.0.1
//! with ephemeral ports, and a small blocking HTTP/1.1 client with keep-alive.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use cohort::demo::EchoBackend;

mod config_server;
#[allow(unused_imports)]
pub use config_server::ConfigServer;
pub mod certs;
pub mod grpc_py;
pub mod h2_backend;
pub mod h2_client;
pub mod tls_backend;
pub mod ws_backend;

/// The `cohort` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cohort")
}

/// A free TCP port on 127.0.0.1 (bound then released).
/// Environment that pins a cohort process to the HTTP/1 engine, whatever carrier the
/// suite runs on (`COHORT_FAST_PATH` in the test's own environment is inherited
/// otherwise: `scripts/test.sh` runs the integration suite once per carrier).
#[allow(dead_code)]
pub const ENGINE: &[(&str, &str)] = &[("COHORT_FAST_PATH", "1")];
/// Environment that pins a cohort process to the Pingora carrier.
#[allow(dead_code)]
pub const PINGORA: &[(&str, &str)] = &[("COHORT_FAST_PATH", "0")];

/// Whether the cohort processes this suite starts use the HTTP/1 engine (the default).
#[allow(dead_code)]
pub fn engine_on() -> bool {
    std::env::var("COHORT_FAST_PATH").map_or(true, |v| v != "0")
}

/// A free port on 127.0.0.1 for a listener that a test starts later (cohort's `listen`,
/// `admin`, TLS listeners).
///
/// Drawn from below the kernel's ephemeral range, so that between this call and the
/// bind no other socket takes it: every client connection of the suite, and every
/// `bind(0)` (the test backends), gets its port from the ephemeral range. A port taken
/// there did happen in CI: cohort retried its TLS listener's bind while the test's
/// readiness probe, and then `curl`, reached another test's backend. Each process walks
/// its own sequence (an offset from its pid), and a port in use is skipped.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = ephemeral_low().unwrap_or(0);
    if high < LOW + 1_000 {
        // An unusual range: fall back to the kernel's choice.
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port");
    }
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {LOW}..{high}");
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// An address on 127.0.0.1 that refuses connections.
pub fn closed_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

pub fn backend(name: &str) -> EchoBackend {
    EchoBackend::spawn(name, "127.0.0.1:0").expect("start echo backend")
}

/// A running `cohort run` process; killed on drop.
pub struct Cohort {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// The `cohort` arguments and extra environment it was started with (for
    /// [`Cohort::restart`]).
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Cohort {
    /// Starts cohort with `config`, in which `@LISTEN@` and `@ADMIN@` are replaced by
    /// fresh ports (and `@DIR@` by a private temp dir). Waits until both listen.
    pub fn start(config: &str) -> Cohort {
        Self::start_with_args(config, &[])
    }

    /// Like [`Cohort::start`], after `prepare` has written files into the instance's dir.
    pub fn start_prepared(config: &str, prepare: impl FnOnce(&Path)) -> Cohort {
        Self::start_full(config, &[], &[], prepare)
    }

    pub fn start_with_args(config: &str, extra: &[&str]) -> Cohort {
        Self::start_full(config, extra, &[], |_| {})
    }

    /// Like [`Cohort::start`], with extra environment variables for the process.
    #[allow(dead_code)]
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Cohort {
        Self::start_full(config, &[], env, |_| {})
    }

    /// [`Cohort::start_prepared`] with extra environment variables for the process.
    #[allow(dead_code)]
    pub fn start_prepared_with_env(
        config: &str,
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Path),
    ) -> Cohort {
        Self::start_full(config, &[], env, prepare)
    }

    fn start_full(
        config: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Path),
    ) -> Cohort {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(dir.path());
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let text = render(config, addr, admin, dir.path());
        let config_path = dir.path().join("cohort.toml");
        std::fs::write(&config_path, text).expect("write config");
        let mut args = vec!["run".to_string(), "-c".to_string()];
        args.push(config_path.display().to_string());
        args.extend(extra.iter().map(|a| a.to_string()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = spawn_cohort(dir.path(), &args, &env);
        let mut c = Cohort {
            child,
            addr,
            admin,
            dir,
            config_path,
            args,
            env,
        };
        c.wait_ready();
        c
    }

    /// Starts `cohort run --config-url URL` (polled every second, cached in its own dir)
    /// with `--listen addr --admin admin` and `extra`; waits until both listen.
    pub fn start_url(url: &str, addr: SocketAddr, admin: SocketAddr, extra: &[&str]) -> Cohort {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("config-cache.toml");
        let mut args: Vec<String> = ["run", "--config-url", url, "--config-poll-secs", "1"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend([
            "--config-cache".to_string(),
            cache.display().to_string(),
            "--listen".to_string(),
            addr.to_string(),
            "--admin".to_string(),
            admin.to_string(),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let child = spawn_cohort(dir.path(), &args, &[]);
        let mut c = Cohort {
            child,
            addr,
            admin,
            dir,
            config_path: cache,
            args,
            env: Vec::new(),
        };
        c.wait_ready();
        c
    }

    /// Kills the process if it still runs (SIGKILL), starts it again with the same
    /// arguments (its log goes on in the same file) and waits until it listens.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_cohort(self.dir.path(), &self.args, &self.env);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cohort exited early with {status}: {}", self.stderr());
            }
            if TcpStream::connect(self.addr).is_ok() && TcpStream::connect(self.admin).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cohort did not start: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the config file (same ports and dir) by writing a temp file and renaming
    /// it into place, as editors and config management do.
    pub fn rewrite(&self, config: &str) {
        let text = render(config, self.addr, self.admin, self.dir.path());
        let tmp = self.dir.path().join(".cohort.toml.tmp");
        std::fs::write(&tmp, text).expect("write temp config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config into place");
    }

    /// `POST /reload` on the admin API; returns (status, JSON body).
    pub fn post_reload(&self) -> (u16, serde_json::Value) {
        let r = self.admin_client().request("POST", "/reload", &[], b"");
        let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
        (r.status, v)
    }

    /// `GET /status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        self.admin_client().get("/status", &[]).json()
    }

    /// `GET /metrics` text.
    pub fn metrics(&self) -> String {
        self.admin_client().get("/metrics", &[]).text()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    pub fn admin_client(&self) -> Client {
        Client::new(self.admin)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Cohort {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn render(config: &str, addr: SocketAddr, admin: SocketAddr, dir: &Path) -> String {
    config
        .replace("@LISTEN@", &addr.to_string())
        .replace("@ADMIN@", &admin.to_string())
        .replace("@DIR@", &dir.display().to_string())
}

/// Spawns `cohort run -c path` with stderr captured in `dir/stderr.log`.
pub fn spawn_run(config_path: &Path, dir: &Path, extra: &[&str]) -> Child {
    let mut args = vec!["run".to_string(), "-c".to_string()];
    args.push(config_path.display().to_string());
    args.extend(extra.iter().map(|a| a.to_string()));
    spawn_cohort(dir, &args, &[])
}

/// Spawns `cohort <args>` with `env`, stderr appended to `dir/stderr.log`.
fn spawn_cohort(dir: &Path, args: &[String], env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stderr.log"))
        .expect("stderr log");
    Command::new(bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn cohort")
}

/// Runs `cohort <args>`; returns (exit code, stdout, stderr).
pub fn cohort_cmd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().expect("run cohort");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo backend's JSON answer.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): status {} {:?}", self.status, self.text()))
    }

    /// Name of the echo backend that answered.
    pub fn backend(&self) -> String {
        self.json()["backend"].as_str().unwrap_or("").to_string()
    }

    /// A request header as the backend received it.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_string)
    }
}

/// A blocking HTTP/1.1 client on one keep-alive connection (reconnects when closed).
pub struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    /// Resend once on a new connection when a kept-alive one closed before any byte of
    /// the answer (what browsers and most HTTP libraries do).
    retry_stale: bool,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            conn: None,
            retry_stale: true,
        }
    }

    /// A client that never resends: a request on a kept-alive connection the server
    /// closed is a failure (Python's `http.client`, many SDKs).
    pub fn never_retrying(addr: SocketAddr) -> Client {
        Client {
            retry_stale: false,
            ..Client::new(addr)
        }
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", path, headers, b"")
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} to {}: {e}", self.addr))
    }

    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req += &format!("Host: {}\r\n", self.addr);
        }
        for (k, v) in headers {
            req += &format!("{k}: {v}\r\n");
        }
        if !body.is_empty() || method == "POST" {
            req += &format!("Content-Length: {}\r\n", body.len());
        }
        req += "\r\n";
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        // A pooled connection may have been closed by the server: retry once on a new one
        // only if nothing of the answer arrived.
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            let conn = match self.conn.as_mut() {
                Some(c) => c,
                None => {
                    let s = TcpStream::connect(self.addr)?;
                    s.set_read_timeout(Some(Duration::from_secs(30)))?;
                    s.set_nodelay(true)?;
                    self.conn.insert(BufReader::new(s))
                }
            };
            let sent = conn
                .get_mut()
                .write_all(&bytes)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => eof(),
                    _ => e,
                });
            let result = sent.and_then(|_| read_response(conn, method == "HEAD"));
            match result {
                Ok((resp, keep)) => {
                    if !keep {
                        self.conn = None;
                    }
                    return Ok(resp);
                }
                Err(e)
                    if self.retry_stale
                        && reused
                        && attempt == 0
                        && e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    self.conn = None;
                }
                Err(e) => {
                    self.conn = None;
                    return Err(e);
                }
            }
        }
        Err(std::io::Error::other("unreachable"))
    }
}

fn eof() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed")
}

/// Reads one response; returns it and whether the connection stays open.
pub fn read_response(
    r: &mut BufReader<TcpStream>,
    head_only: bool,
) -> std::io::Result<(Response, bool)> {
    let mut line = String::new();
    // Closed or reset before any byte of the answer: report as UnexpectedEof, the one
    // case a client may retry on a reused keep-alive connection.
    match r.read_line(&mut line) {
        Ok(0) => return Err(eof()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Err(eof()),
        Err(e) => return Err(e),
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(eof());
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut keep = version == "HTTP/1.1"
        && !find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let mut body = Vec::new();
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
    } else if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
        keep = false;
    }
    Ok((
        Response {
            status,
            headers,
            body,
        },
        keep,
    ))
}

/// The Rust assignment for a two-or-more variant service (salt, [(name, weight)]).
pub fn expected_variant(salt: &str, variants: &[(&str, f64)], key: &str) -> String {
    let seeds: Vec<u64> = variants
        .iter()
        .map(|(n, _)| cohort::routing::cohort::variant_seed(salt, n))
        .collect();
    let weights: Vec<f64> = variants.iter().map(|(_, w)| *w).collect();
    let i = cohort::routing::cohort::assign(key.as_bytes(), &seeds, &weights).expect("a winner");
    variants[i].0.to_string()
}

/// Runs `f` on `threads` threads over disjoint chunks of `0..n`, collecting results in order.
pub fn parallel<T: Send + 'static>(
    n: usize,
    threads: usize,
    f: impl Fn(&mut Client, usize) -> T + Send + Sync + 'static,
    addr: SocketAddr,
) -> Vec<T> {
    let f = std::sync::Arc::new(f);
    let chunk = n.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                (t * chunk..((t + 1) * chunk).min(n))
                    .map(|i| f(&mut c, i))
                    .collect::<Vec<T>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("worker thread"))
        .collect()
}

/// Reads one response (status, fields, `Content-Length` body) from a TLS stream.
pub fn read_tls_response<R: std::io::BufRead>(r: &mut R) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; len];
    std::io::Read::read_exact(r, &mut body).unwrap();
    (status, headers, body)
}

/// Writes a self-signed certificate for 127.0.0.1/localhost; returns its SHA-256.
pub fn write_cert(dir: &Path, serial: u32) -> Vec<u8> {
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", &format!("cohort-test-{serial}"))
        .unwrap();
    let name = name.build();
    let mut b = openssl::x509::X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(
        &openssl::bn::BigNum::from_u32(serial)
            .unwrap()
            .to_asn1_integer()
            .unwrap(),
    )
    .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    let san = openssl::x509::extension::SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    let cert = b.build();
    std::fs::write(dir.join("tls.crt"), cert.to_pem().unwrap()).unwrap();
    std::fs::write(dir.join("tls.key"), key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    cert.digest(openssl::hash::MessageDigest::sha256())
        .unwrap()
        .to_vec()
}

/// Hashed traffic: `threads` clients per address, each sending requests with its own
/// rotating `x-user-id` (user ids `{tag}-{address}-{thread}-{0..users}`), until dropped.
pub struct UserTraffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UserTraffic {
    pub fn start(tag: &str, addrs: &[SocketAddr], threads: usize, users: u64) -> UserTraffic {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for (a, addr) in addrs.iter().enumerate() {
            for t in 0..threads {
                let (stop, addr, tag) = (stop.clone(), *addr, tag.to_string());
                handles.push(std::thread::spawn(move || {
                    let mut cl = Client::new(addr);
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let user = format!("{tag}-{a}-{t}-{}", i % users);
                        let _ = cl.try_request("GET", "/", &[("x-user-id", &user)], b"");
                        i += 1;
                    }
                }));
            }
        }
        UserTraffic {
            stop,
            threads: handles,
        }
    }
}

impl Drop for UserTraffic {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Polls `f` every 100 ms until it returns `Some` (at most `secs` seconds); panics with
/// `what` and the last `context()` otherwise.
pub fn wait_until<T>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {what}:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
