//! Configuration: TOML file → [`file::FileConfig`] (serde, no logic) → [`validate`] →
//! [`Config`] (checked, typed, every reference resolved to an index). Compilation into the
//! runtime routing table happens in [`crate::routing`] and [`crate::upstream`].

pub mod bound;
pub mod error;
pub mod file;
pub mod fleet;
mod key_set;
mod lift;
pub mod rollout;
mod validate;

pub use error::{ConfigError, FieldError};
pub use fleet::FleetConfig;
pub use key_set::KeySet;
pub use rollout::{Gates, OnInconclusive, RolloutConfig, VariantRef};
pub use validate::split_host_port;

use http::HeaderName;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A validated configuration. Every name reference is an index into `variants`.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub services: Vec<ServiceConfig>,
    /// First 12 hex digits of the file's sha256 (`/status` `version`).
    pub version: String,
    /// What a reload compares to tell an unchanged file before parsing it.
    pub fingerprint: Fingerprint,
}

/// `[server]` after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// The plaintext listeners (addresses in `listen`) on which every connection starts
    /// with a PROXY protocol header (`{ addr = "...", proxy_protocol = true }`).
    pub proxy_protocol: Vec<SocketAddr>,
    /// Worker threads; already resolved (0 in the file = one per CPU).
    pub threads: usize,
    pub admin: Option<SocketAddr>,
    pub admin_token_env: Option<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub watch: bool,
    pub drain_delay: Duration,
    pub shutdown_timeout: Duration,
    /// `upgrade_sock` as configured; [`ServerConfig::upgrade_sock`] gives the effective one.
    pub upgrade_sock_set: Option<String>,
    /// `pid_file` as configured; [`ServerConfig::pid_file`] gives the effective one.
    pub pid_file_set: Option<String>,
    /// `rollout_state` as configured; [`ServerConfig::rollout_state`] gives the effective one.
    pub rollout_state_set: Option<String>,
    /// `[server.fleet]`: run rollouts across a fleet (one decider, the rest follow).
    pub fleet: Option<FleetConfig>,
    pub access_log: crate::access_log::Target,
    /// Include the cohort key in access log lines.
    pub access_log_keys: bool,
    /// Where request samples for `cohort simulate --samples` go (`None`: off). They hold
    /// what routing read (keys, cookies), so only a file, created owner-only.
    pub sample_log: Option<String>,
    /// The fraction of requests sampled, in (0, 1].
    pub sample_log_rate: f64,
    /// TLS listeners (HTTP/1.1 and HTTP/2 via ALPN).
    pub tls: Vec<TlsListener>,
    /// Re-resolve backend DNS names this often (`None`: never).
    pub resolve_interval: Option<Duration>,
    /// How long one write to a client may wait before the connection is closed (NGINX's
    /// `send_timeout`): a client that stops reading a response cannot hold its upstream
    /// connection and buffers for ever.
    pub client_write_timeout: Duration,
    /// How long a client may take to send a whole request head, from its first byte (from
    /// connecting, for a connection's first request), on plaintext listeners (NGINX's
    /// `client_header_timeout`): a client cannot hold a connection by sending a head a
    /// byte at a time.
    pub client_header_timeout: Duration,
    /// How long an idle keep-alive client connection stays open between requests. The
    /// default, 75 s (NGINX's), outlasts an AWS ALB's default 60 s idle timeout, so the
    /// ALB closes idle connections first and never sends a request on one cohort is
    /// closing (a 502 at the ALB).
    pub keepalive_timeout: Duration,
    /// Largest request body accepted (`Content-Length`, or streamed); over it the
    /// answer is 413.
    pub max_request_body_bytes: u64,
    /// Largest request head (request line and fields) the HTTP/1 engine reads; a longer
    /// one gets 431 and the connection closes.
    pub max_request_head_bytes: usize,
}

/// Default `server.max_request_body_bytes`: 1 GiB, far above what an API takes, low
/// enough that a 19-digit `Content-Length` is refused at once.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 1 << 30;

impl ServerConfig {
    /// The port that names this instance's files: the first plaintext listener's, else
    /// the first TLS listener's, after `--listen` (two instances sharing one file with
    /// different `--listen` get different files).
    fn instance_port(&self) -> u16 {
        self.listen
            .first()
            .or(self.tls.first().map(|t| &t.listen))
            .map_or(0, |a| a.port())
    }

    /// The upgrade socket: `upgrade_sock`, or `/tmp/cohort-<instance port>.sock`.
    pub fn upgrade_sock(&self) -> String {
        self.upgrade_sock_set
            .clone()
            .unwrap_or_else(|| format!("/tmp/cohort-{}.sock", self.instance_port()))
    }

    /// The pid file: `pid_file`, or `/tmp/cohort-<instance port>.pid`.
    pub fn pid_file(&self) -> String {
        self.pid_file_set
            .clone()
            .unwrap_or_else(|| format!("/tmp/cohort-{}.pid", self.instance_port()))
    }

    /// The rollout state file: `rollout_state`, or `/tmp/cohort-<instance port>.rollout.json`.
    pub fn rollout_state(&self) -> String {
        self.rollout_state_set
            .clone()
            .unwrap_or_else(|| format!("/tmp/cohort-{}.rollout.json", self.instance_port()))
    }

    /// The admin bearer token: the value of the variable `admin_token_env` names, read
    /// now (`Some("")` when it is unset: every POST is then refused).
    pub fn admin_token(&self) -> Option<String> {
        self.admin_token_env
            .as_ref()
            .map(|var| std::env::var(var).unwrap_or_default())
    }

    /// Says so at start and after a reload when `admin_token_env` names a variable that
    /// is unset or empty (every POST admin call is then refused).
    pub fn warn_if_admin_token_unset(&self) {
        if let (Some(var), Some(token)) = (&self.admin_token_env, self.admin_token()) {
            if token.is_empty() {
                log::warn!(
                    "server.admin_token_env names {var}, which is unset or empty: every POST admin call will be refused"
                );
            }
        }
    }
}

/// A `[[server.tls]]` listener; the PEM files are read when the table is compiled (at
/// start and on every reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub cert: String,
    pub key: String,
    /// Every connection starts with a PROXY protocol header, before the TLS handshake.
    pub proxy_protocol: bool,
}

/// One `[[service]]`.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    /// Empty = any host.
    pub hosts: Vec<HostPattern>,
    pub path_prefix: String,
    pub keys: Vec<KeySource>,
    pub salt: String,
    pub assign_cookie: Option<String>,
    pub cookie_max_age_secs: u64,
    pub force: Option<ForceHeader>,
    pub expose_header: Option<HeaderName>,
    pub fallback: Option<usize>,
    pub variants: Vec<VariantConfig>,
    pub rules: Vec<RuleConfig>,
    /// `[service.rollout]`, if any.
    pub rollout: Option<RolloutConfig>,
}

/// A `hosts` entry, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`.
    Wildcard(String),
}

/// A cohort key source: `header:NAME`, `cookie:NAME`, `query:NAME` or `ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    Ip,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Header(h) => write!(f, "header:{h}"),
            KeySource::Cookie(c) => write!(f, "cookie:{c}"),
            KeySource::Query(q) => write!(f, "query:{q}"),
            KeySource::Ip => f.write_str("ip"),
        }
    }
}

/// `force_header` with the CIDRs it is honoured from.
#[derive(Debug, Clone)]
pub struct ForceHeader {
    pub name: HeaderName,
    pub from: Vec<IpNet>,
}

/// How a variant spreads its users over its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    Random,
    /// Consistent hashing (Ketama) on the cohort key inside the pool.
    Consistent,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::Random => "random",
            Balance::Consistent => "consistent",
        }
    }
}

/// One `[[service.variant]]`.
#[derive(Debug, Clone)]
pub struct VariantConfig {
    pub name: String,
    pub weight: f64,
    /// `host:port` as written; resolved when the table is compiled.
    pub backends: Vec<String>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Passive ejection after upstream hang-ups ([`Passive`]).
    pub passive: Passive,
    /// Active health checks (`None`: passive ejection only).
    pub health_check: Option<HealthCheck>,
    /// TLS to the backends (`None`: plaintext).
    pub tls: Option<UpstreamTls>,
    /// The `Host` the backends get instead of the client's (API Gateway and Lambda
    /// function URLs route on it).
    pub host_header: Option<String>,
    /// The HTTP version spoken to the backends.
    pub protocol: UpstreamProtocol,
}

/// How cohort talks to a variant's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (over TLS when the variant has `tls`).
    #[default]
    H1,
    /// HTTP/2 in cleartext, with prior knowledge.
    H2c,
    /// HTTP/2 over TLS, chosen by ALPN.
    H2,
}

impl UpstreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::H1 => "h1",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

/// A variant's `tls` table: how cohort connects to its backends over TLS. The PEM files
/// are read when the table is compiled (at start and on every reload).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// The name sent as SNI and verified against the certificate; `None`: the
    /// variant's `host_header`, else each backend's own host name.
    pub sni: Option<String>,
    /// Verify the certificate chain and name (`false` is allowed; `cohort check` warns).
    pub verify: bool,
    /// PEM file of the CAs to trust instead of the system roots.
    pub ca: Option<String>,
    /// PEM files of a client certificate (chain) and key, for backends that ask for one.
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

/// When requests' failures take a backend out (NGINX's `max_fails`/`fail_timeout`). A
/// hang-up without an answer can be the request's own doing (a request that crashes the
/// backend), so it takes `max_fails` of them within `fail_timeout` to eject a backend
/// for `fail_timeout`, and never the last healthy backend of the variant. A refused or
/// timed-out connect is the backend's alone: it ejects at once (SPEC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Passive {
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

impl Default for Passive {
    fn default() -> Passive {
        Passive {
            max_fails: 3,
            fail_timeout: Duration::from_secs(10),
        }
    }
}

/// Active health check settings of a variant's pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// `GET path` expecting a 2xx; `None` = a TCP connect check (or gRPC's).
    pub path: Option<String>,
    /// `grpc.health.v1.Health/Check` for this service ("" = the server as a whole)
    /// instead of HTTP: SERVING is healthy.
    pub grpc: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that mark a backend down.
    pub unhealthy_after: u32,
    /// Consecutive successes that bring it back.
    pub healthy_after: u32,
}

/// What a rule's matcher tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchOp {
    Equals(Vec<u8>),
    In(Vec<Vec<u8>>),
    Present(bool),
    Prefix(Vec<u8>),
}

/// `{ name = ..., <op> = ... }` on a header, cookie or query parameter.
#[derive(Debug, Clone)]
pub struct Matcher<N> {
    pub name: N,
    pub op: MatchOp,
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleAction {
    /// Pin to one variant (index).
    Variant(usize),
    /// Re-split by hash with these weights (one per variant, in config order).
    Weights(Vec<f64>),
}

/// One `[[service.rule]]`: every condition given must match.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    pub name: String,
    pub client_cidr: Vec<IpNet>,
    pub header: Option<Matcher<HeaderName>>,
    pub cookie: Option<Matcher<String>>,
    pub query: Option<Matcher<String>>,
    pub key_in: Option<KeySet>,
    pub action: RuleAction,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text)
    }

    /// What is valid but unsafe, with field paths: `cohort check` prints these, `run`
    /// logs them at every load.
    pub fn warnings(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        for (si, s) in self.services.iter().enumerate() {
            for (vi, v) in s.variants.iter().enumerate() {
                if v.tls.as_ref().is_some_and(|t| !t.verify) {
                    out.push(FieldError {
                        path: format!("service[{si}].variant[{vi}].tls.verify"),
                        message: "false: the backends' certificates are not checked, so anyone on the path can impersonate them".into(),
                    });
                }
            }
        }
        out
    }

    /// Parses and validates config text. The sha256 behind `version` (about a fifth of
    /// the time on a 12 MB file) runs on a second thread while a large text parses.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let bytes = text.as_bytes();
        let (file, version) = if bytes.len() < PARALLEL_HASH_ABOVE {
            (parse_file(text), version_of(bytes))
        } else {
            std::thread::scope(|s| {
                let version = s.spawn(|| version_of(bytes));
                let file = parse_file(text);
                let version = version.join().unwrap_or_else(|_| version_of(bytes));
                (file, version)
            })
        };
        validate::validate(file?, version, Fingerprint::of(bytes))
    }
}

/// Config texts at least this long are hashed on a second thread while they parse.
const PARALLEL_HASH_ABOVE: usize = 1 << 20;

/// The identity of a config file's bytes: length and 128-bit `xxh3`. A reload compares it
/// with the serving config's to answer `unchanged` before parsing; on a 12 MB file it
/// costs a small fraction of the sha256 behind `version` (no SHA instructions needed),
/// and its 128 bits tell files apart far more surely than the 48 bits `version` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    len: u64,
    hash: u128,
}

impl Fingerprint {
    pub fn of(bytes: &[u8]) -> Fingerprint {
        Fingerprint {
            len: bytes.len() as u64,
            hash: xxhash_rust::xxh3::xxh3_128(bytes),
        }
    }
}

/// First 12 hex digits of the sha256 of the file bytes.
pub fn version_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// TOML → serde structs, with the field path and line:column of the first error. Large
/// `key_in` arrays are read straight into their sets first (`lift`), so `toml` builds
/// no node per key.
pub fn parse_file(text: &str) -> Result<file::FileConfig, ConfigError> {
    parse_file_lifting(text, lift::LIFT_AT_LEAST)
}

/// [`parse_file`], lifting `key_in` arrays of at least `at_least` bytes.
fn parse_file_lifting(text: &str, at_least: usize) -> Result<file::FileConfig, ConfigError> {
    match lift::lift(text, at_least) {
        Some(lifted) => lifted
            .resolving(|| deserialize(&lifted.text, text, |offset| lifted.original_offset(offset))),
        None => deserialize(text, text, |offset| offset),
    }
}

/// `toml` on `parsed`, whose byte offsets map to `original`'s by `to_original`.
fn deserialize(
    parsed: &str,
    original: &str,
    to_original: impl Fn(usize) -> usize,
) -> Result<file::FileConfig, ConfigError> {
    let de = toml::Deserializer::new(parsed);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let (line, column) = inner
            .span()
            .map(|s| line_col(original, to_original(s.start)))
            .unwrap_or((1, 1));
        ConfigError::Syntax {
            line,
            column,
            path,
            // One error per line: fold the parser's multi-line messages.
            message: inner
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        }
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}
