//! File structs → [`Config`]: defaults applied, names resolved to indexes, and *every*
//! problem collected with its field path (never a panic, never only the first error).

use super::error::{ConfigError, Errors};
use super::file::{
    FileConfig, HealthCheckFile, ListenFile, MatcherFile, RuleFile, ServerFile, ServiceFile,
    UpstreamTlsFile, VariantFile,
};
use super::*;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::str::FromStr;

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
const DEFAULT_COOKIE_MAX_AGE: u64 = 2_592_000;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;
const DEFAULT_READ_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_SAMPLE_LOG_RATE: f64 = 0.01;

pub(super) fn validate(
    file: FileConfig,
    version: String,
    fingerprint: super::Fingerprint,
) -> Result<Config, ConfigError> {
    let mut errs = Errors::default();
    let server = server(&file.server, &mut errs);
    if file.services.is_empty() {
        errs.push("service", "at least one [[service]] is required");
    }
    let mut seen = HashMap::new();
    let mut services = Vec::with_capacity(file.services.len());
    for (i, s) in file.services.iter().enumerate() {
        let path = format!("service[{i}]");
        if let Some(first) = seen.insert(s.name.as_str(), i) {
            errs.push(
                format!("{path}.name"),
                format!(
                    "duplicate service name {:?} (also service[{first}])",
                    s.name
                ),
            );
        }
        services.push(service(s, &path, &mut errs));
    }
    if errs.0.is_empty() {
        Ok(Config {
            server,
            services,
            version,
            fingerprint,
        })
    } else {
        Err(ConfigError::Invalid(errs.0))
    }
}

fn server(f: &ServerFile, errs: &mut Errors) -> ServerConfig {
    let default_listen = ListenFile::Addr(DEFAULT_LISTEN.to_string());
    let listen_raw = match &f.listen {
        Some(l) => l.iter().collect(),
        None => vec![&default_listen],
    };
    if listen_raw.is_empty() {
        errs.push("server.listen", "at least one listen address is required");
    }
    let mut listen = Vec::with_capacity(listen_raw.len());
    let mut proxy_protocol = Vec::new();
    for (i, entry) in listen_raw.iter().enumerate() {
        let (addr, path, proxied) = match entry {
            ListenFile::Addr(a) => (a, format!("server.listen[{i}]"), false),
            ListenFile::Table(t) => (
                &t.addr,
                format!("server.listen[{i}].addr"),
                t.proxy_protocol.unwrap_or(false),
            ),
        };
        if let Some(a) = socket_addr(addr, &path, errs) {
            listen.push(a);
            if proxied {
                proxy_protocol.push(a);
            }
        }
    }
    let admin = match f.admin.as_deref().unwrap_or(DEFAULT_ADMIN) {
        "" => None,
        a => socket_addr(a, "server.admin", errs),
    };
    if let Some(name) = &f.admin_token_env {
        if name.is_empty() {
            errs.push(
                "server.admin_token_env",
                "must name an environment variable",
            );
        }
    }
    let trusted_proxies = cidrs(&f.trusted_proxies, "server.trusted_proxies", errs);
    let threads = match f.threads.unwrap_or(0) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let client_write_timeout = seconds(
        f.client_write_timeout_secs,
        (60, 86_400),
        "server.client_write_timeout_secs",
        "how long a client may stop reading a response",
        errs,
    );
    let client_header_timeout = seconds(
        f.client_header_timeout_secs,
        (60, 3_600),
        "server.client_header_timeout_secs",
        "how long a client may take to send a request head",
        errs,
    );
    let keepalive_timeout = seconds(
        f.keepalive_timeout_secs,
        (75, 3_600),
        "server.keepalive_timeout_secs",
        "how long an idle keep-alive connection stays open",
        errs,
    );
    let max_request_body_bytes = f.max_request_body_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BODY);
    if max_request_body_bytes == 0 || max_request_body_bytes > 1 << 50 {
        errs.push(
            "server.max_request_body_bytes",
            "must be 1 to 1125899906842624 (2^50) bytes",
        );
    }
    let max_request_head_bytes = f.max_request_head_bytes.unwrap_or(32 * 1024);
    if !(1024..=1024 * 1024).contains(&max_request_head_bytes) {
        errs.push(
            "server.max_request_head_bytes",
            "must be 1024 to 1048576 bytes",
        );
    }
    ServerConfig {
        listen,
        proxy_protocol,
        threads,
        admin,
        admin_token_env: f.admin_token_env.clone().filter(|s| !s.is_empty()),
        trusted_proxies,
        watch: f.watch.unwrap_or(false),
        drain_delay: Duration::from_secs(f.drain_delay_secs.unwrap_or(5)),
        shutdown_timeout: Duration::from_secs(f.shutdown_timeout_secs.unwrap_or(30)),
        upgrade_sock_set: f.upgrade_sock.clone().filter(|s| !s.is_empty()),
        pid_file_set: f.pid_file.clone().filter(|s| !s.is_empty()),
        rollout_state_set: rollout_state(f, errs),
        fleet: super::fleet::validate(f, errs),
        access_log: crate::access_log::Target::parse(f.access_log.as_deref().unwrap_or("off")),
        access_log_keys: f.access_log_keys.unwrap_or(false),
        sample_log: sample_log(f, errs),
        sample_log_rate: sample_log_rate(f, errs),
        resolve_interval: match f.resolve_interval_secs.unwrap_or(30) {
            0 => None,
            n => Some(Duration::from_secs(n)),
        },
        client_write_timeout,
        client_header_timeout,
        keepalive_timeout,
        max_request_body_bytes,
        max_request_head_bytes: max_request_head_bytes as usize,
        tls: f
            .tls
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let p = format!("server.tls[{i}]");
                for (field, v) in [("cert", &t.cert), ("key", &t.key)] {
                    if v.is_empty() {
                        errs.push(format!("{p}.{field}"), "must name a PEM file");
                    }
                }
                socket_addr(&t.listen, &format!("{p}.listen"), errs).map(|listen| TlsListener {
                    listen,
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                    proxy_protocol: t.proxy_protocol.unwrap_or(false),
                })
            })
            .collect(),
    }
}

/// `server.sample_log`: `"off"`/`""` or a file path. Not `"stdout"`: samples carry
/// cohort keys and cookie values, which do not belong in a log stream.
fn sample_log(f: &ServerFile, errs: &mut Errors) -> Option<String> {
    match f.sample_log.as_deref() {
        None | Some("" | "off") => None,
        Some("stdout" | "stderr") => {
            errs.push(
                "server.sample_log",
                "must be a file path or \"off\": samples hold cohort keys and cookie values, which do not belong in a log stream",
            );
            None
        }
        Some(path) => Some(path.to_string()),
    }
}

/// `server.rollout_state`: the rollout state file, an absolute file path (empty or absent:
/// the per-instance default).
fn rollout_state(f: &ServerFile, errs: &mut Errors) -> Option<String> {
    let path = f.rollout_state.as_deref().filter(|s| !s.is_empty())?;
    if !path.starts_with('/') || path.ends_with('/') {
        errs.push(
            "server.rollout_state",
            format!("{path:?} is not an absolute file path (the rollout state file, such as \"/var/lib/cohort/rollout.json\")"),
        );
        return None;
    }
    Some(path.to_string())
}

/// `server.sample_log_rate`: the fraction of requests sampled, in (0, 1]; default 0.01.
fn sample_log_rate(f: &ServerFile, errs: &mut Errors) -> f64 {
    let rate = f.sample_log_rate.map_or(DEFAULT_SAMPLE_LOG_RATE, |w| w.0);
    if !(rate > 0.0 && rate <= 1.0) {
        errs.push(
            "server.sample_log_rate",
            format!(
                "{rate} is not a fraction of requests in (0, 1] (0.01 samples one request in 100)"
            ),
        );
        return DEFAULT_SAMPLE_LOG_RATE;
    }
    rate
}

fn service(s: &ServiceFile, path: &str, errs: &mut Errors) -> ServiceConfig {
    check_name(&s.name, &format!("{path}.name"), errs);
    let hosts = s
        .hosts
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, h)| host_pattern(h, &format!("{path}.hosts[{i}]"), errs))
        .collect();
    let path_prefix = s.path_prefix.clone().unwrap_or_else(|| "/".to_string());
    if !path_prefix.starts_with('/') {
        errs.push(format!("{path}.path_prefix"), "must start with '/'");
    }
    let keys = key_sources(&s.key, path, errs);
    let assign_cookie = s.assign_cookie.clone();
    if let Some(c) = &assign_cookie {
        if !is_token(c) {
            errs.push(
                format!("{path}.assign_cookie"),
                format!("{c:?} is not a valid cookie name"),
            );
        }
    }
    let force = force_header(s, path, errs);
    let expose_header = match s.expose_header.as_deref() {
        None | Some("") => None,
        Some(h) => header_name(h, &format!("{path}.expose_header"), errs),
    };
    let variants = variants(&s.variants, path, errs);
    let index: HashMap<&str, usize> = s
        .variants
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), i))
        .collect();
    let fallback = s
        .fallback
        .as_deref()
        .and_then(|f| variant_ref(f, &index, &format!("{path}.fallback"), errs));
    let mut rule_names = HashMap::new();
    let rules = s
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let rpath = format!("{path}.rule[{i}]");
            if let Some(first) = rule_names.insert(r.name.as_str(), i) {
                errs.push(
                    format!("{rpath}.name"),
                    format!("duplicate rule name {:?} (also rule[{first}])", r.name),
                );
            }
            rule(r, &index, s.variants.len(), &rpath, errs)
        })
        .collect();
    let weights: Vec<f64> = s.variants.iter().map(|v| v.weight).collect();
    let rollout = s
        .rollout
        .as_ref()
        .and_then(|r| super::rollout::rollout(r, &index, &weights, path, errs));
    ServiceConfig {
        name: s.name.clone(),
        hosts,
        path_prefix,
        keys,
        salt: s.salt.clone().unwrap_or_else(|| s.name.clone()),
        assign_cookie,
        cookie_max_age_secs: s.cookie_max_age_secs.unwrap_or(DEFAULT_COOKIE_MAX_AGE),
        force,
        expose_header,
        fallback,
        variants,
        rules,
        rollout,
    }
}

fn key_sources(raw: &[String], path: &str, errs: &mut Errors) -> Vec<KeySource> {
    let mut out: Vec<KeySource> = Vec::new();
    for (i, k) in raw.iter().enumerate() {
        let p = format!("{path}.key[{i}]");
        let parsed = match k.split_once(':') {
            None if k == "ip" => Some(KeySource::Ip),
            Some(("header", n)) => header_name(n, &p, errs).map(KeySource::Header),
            Some(("cookie", n)) if is_token(n) => Some(KeySource::Cookie(n.to_string())),
            Some(("query", n)) if !n.is_empty() => Some(KeySource::Query(n.to_string())),
            Some(("cookie", _)) | Some(("query", _)) => {
                errs.push(&p, format!("{k:?}: missing or invalid name after ':'"));
                None
            }
            _ => {
                errs.push(
                    &p,
                    format!("{k:?}: expected header:NAME, cookie:NAME, query:NAME or ip"),
                );
                None
            }
        };
        if let Some(ks) = parsed {
            if out.contains(&ks) {
                errs.push(&p, format!("duplicate key source {k:?}"));
            } else {
                out.push(ks);
            }
        }
    }
    out
}

fn force_header(s: &ServiceFile, path: &str, errs: &mut Errors) -> Option<ForceHeader> {
    let from = cidrs(&s.force_from, &format!("{path}.force_from"), errs);
    match s.force_header.as_deref() {
        None | Some("") => {
            if !s.force_from.is_empty() {
                errs.push(
                    format!("{path}.force_from"),
                    "given without force_header (set both, or neither)",
                );
            }
            None
        }
        Some(h) => {
            if s.force_from.is_empty() {
                errs.push(
                    format!("{path}.force_from"),
                    "required with force_header: the client CIDRs allowed to force a variant",
                );
            }
            header_name(h, &format!("{path}.force_header"), errs)
                .map(|name| ForceHeader { name, from })
        }
    }
}

fn variants(vs: &[VariantFile], path: &str, errs: &mut Errors) -> Vec<VariantConfig> {
    if vs.is_empty() {
        errs.push(
            format!("{path}.variant"),
            "at least one [[service.variant]] is required",
        );
    }
    let mut names = HashMap::new();
    let mut sum = 0.0;
    let out: Vec<VariantConfig> = vs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let p = format!("{path}.variant[{i}]");
            check_name(&v.name, &format!("{p}.name"), errs);
            if let Some(first) = names.insert(v.name.as_str(), i) {
                errs.push(
                    format!("{p}.name"),
                    format!(
                        "duplicate variant name {:?} (also variant[{first}])",
                        v.name
                    ),
                );
            }
            if check_weight(v.weight, &format!("{p}.weight"), errs) {
                sum += v.weight;
            }
            if v.backends.is_empty() {
                errs.push(format!("{p}.backends"), "at least one backend is required");
            }
            for (j, b) in v.backends.iter().enumerate() {
                if let Err(m) = split_host_port(b) {
                    errs.push(format!("{p}.backends[{j}]"), m);
                }
            }
            let balance = match v.balance.as_deref().unwrap_or("round_robin") {
                "round_robin" => Balance::RoundRobin,
                "random" => Balance::Random,
                "consistent" => Balance::Consistent,
                other => {
                    errs.push(
                        format!("{p}.balance"),
                        format!("{other:?}: expected round_robin, random or consistent"),
                    );
                    Balance::RoundRobin
                }
            };
            let tls = v
                .tls
                .as_ref()
                .map(|t| upstream_tls(t, &format!("{p}.tls"), errs));
            let host_header = v.host_header.as_ref().map(|h| {
                if !plain_host(h) {
                    errs.push(
                        format!("{p}.host_header"),
                        format!("{h:?}: expected a host name, optionally with :port"),
                    );
                }
                h.clone()
            });
            let protocol = protocol(v, tls.is_some(), &p, errs);
            let grpc_check = v.health_check.as_ref().is_some_and(|h| h.grpc == Some(true));
            if grpc_check && protocol == UpstreamProtocol::H1 {
                errs.push(
                    format!("{p}.health_check.grpc"),
                    "needs protocol = \"h2c\" or \"h2\" (gRPC is HTTP/2)",
                );
            }
            // Pingora verifies nothing without a name to verify: a backend given by IP
            // address needs one from `tls.sni` or `host_header`.
            let needs_name = tls.as_ref().is_some_and(|t| t.verify && t.sni.is_none())
                && host_header.is_none();
            for (j, b) in v.backends.iter().enumerate().filter(|_| needs_name) {
                let ip = split_host_port(b)
                    .is_ok_and(|(h, _)| h.trim_matches(['[', ']']).parse::<IpAddr>().is_ok());
                if ip {
                    errs.push(
                        format!("{p}.backends[{j}]"),
                        format!("{b:?} is an IP address: with tls.verify, set tls.sni (or host_header) to the name its certificate is for"),
                    );
                }
            }
            VariantConfig {
                tls,
                host_header,
                protocol,
                name: v.name.clone(),
                weight: v.weight,
                backends: v.backends.clone(),
                balance,
                connect_timeout: millis(
                    v.connect_timeout_ms,
                    DEFAULT_CONNECT_TIMEOUT_MS,
                    &p,
                    "connect_timeout_ms",
                    errs,
                ),
                read_timeout: millis(
                    v.read_timeout_ms,
                    DEFAULT_READ_TIMEOUT_MS,
                    &p,
                    "read_timeout_ms",
                    errs,
                ),
                passive: passive(v, &p, errs),
                health_check: v
                    .health_check
                    .as_ref()
                    .map(|h| health_check(h, &format!("{p}.health_check"), errs)),
            }
        })
        .collect();
    if !vs.is_empty() && vs.iter().all(|v| v.weight.is_finite() && v.weight >= 0.0) && sum <= 0.0 {
        errs.push(
            format!("{path}.variant"),
            "the sum of the variant weights must be positive",
        );
    }
    out
}

/// A variant's `tls` table.
fn upstream_tls(t: &UpstreamTlsFile, path: &str, errs: &mut Errors) -> UpstreamTls {
    if let Some(sni) = &t.sni {
        if !plain_host(sni) || sni.contains(':') {
            errs.push(
                format!("{path}.sni"),
                format!("{sni:?}: expected a host name"),
            );
        }
    }
    for (field, v) in [
        ("ca", &t.ca),
        ("client_cert", &t.client_cert),
        ("client_key", &t.client_key),
    ] {
        if v.as_deref() == Some("") {
            errs.push(format!("{path}.{field}"), "must name a PEM file");
        }
    }
    match (&t.client_cert, &t.client_key) {
        (Some(_), None) => errs.push(format!("{path}.client_key"), "required with client_cert"),
        (None, Some(_)) => errs.push(format!("{path}.client_cert"), "required with client_key"),
        _ => {}
    }
    UpstreamTls {
        sni: t.sni.clone(),
        verify: t.verify.unwrap_or(true),
        ca: t.ca.clone(),
        client_cert: t.client_cert.clone(),
        client_key: t.client_key.clone(),
    }
}

/// A variant's `protocol`: `h2` needs `tls`, `h2c` is cleartext.
fn protocol(v: &VariantFile, tls: bool, path: &str, errs: &mut Errors) -> UpstreamProtocol {
    let field = format!("{path}.protocol");
    match v.protocol.as_deref().unwrap_or("h1") {
        "h1" => UpstreamProtocol::H1,
        "h2c" if tls => {
            errs.push(field, "\"h2c\" is HTTP/2 in cleartext: use \"h2\" with tls");
            UpstreamProtocol::H2c
        }
        "h2c" => UpstreamProtocol::H2c,
        "h2" if !tls => {
            errs.push(
                field,
                "\"h2\" is HTTP/2 over TLS: add tls = { ... } (tls = {} for the defaults), or use \"h2c\"",
            );
            UpstreamProtocol::H2
        }
        "h2" => UpstreamProtocol::H2,
        other => {
            errs.push(field, format!("{other:?}: expected h1, h2c or h2"));
            UpstreamProtocol::H1
        }
    }
}

/// A host name or address with an optional port, as a `Host` field or SNI carries it.
fn plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
        })
}

fn health_check(h: &HealthCheckFile, path: &str, errs: &mut Errors) -> HealthCheck {
    if let Some(p) = &h.path {
        if !p.starts_with('/') || p.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            errs.push(
                format!("{path}.path"),
                format!("{p:?}: must start with '/' and contain no spaces"),
            );
        }
    }
    let interval = millis(h.interval_ms, 2_000, path, "interval_ms", errs);
    let timeout = millis(h.timeout_ms, 1_000, path, "timeout_ms", errs);
    let threshold = |v: Option<u32>, default: u32, field: &str, errs: &mut Errors| {
        let n = v.unwrap_or(default);
        if n == 0 {
            errs.push(format!("{path}.{field}"), "must be >= 1");
        }
        n.max(1)
    };
    let grpc = match (h.grpc, &h.grpc_service) {
        (Some(true), s) => Some(s.clone().unwrap_or_default()),
        (_, Some(_)) => {
            errs.push(format!("{path}.grpc_service"), "needs grpc = true");
            None
        }
        _ => None,
    };
    if grpc.is_some() && h.path.is_some() {
        errs.push(
            format!("{path}.path"),
            "not with grpc: the gRPC check calls grpc.health.v1.Health/Check",
        );
    }
    HealthCheck {
        grpc,
        path: h.path.clone(),
        interval,
        timeout,
        unhealthy_after: threshold(h.unhealthy_after, 3, "unhealthy_after", errs),
        healthy_after: threshold(h.healthy_after, 2, "healthy_after", errs),
    }
}

/// A timeout in whole seconds, 1 to `max` (`default` when absent); out of range is an
/// error at `path` that says what the value means (`what`).
fn seconds(
    v: Option<u64>,
    (default, max): (u64, u64),
    path: &str,
    what: &str,
    errs: &mut Errors,
) -> Duration {
    match v.unwrap_or(default) {
        n if (1..=max).contains(&n) => Duration::from_secs(n),
        _ => {
            errs.push(path, format!("must be 1 to {max} seconds ({what})"));
            Duration::from_secs(default)
        }
    }
}

/// `max_fails` (1–100, default 3) and `fail_timeout_secs` (1–3600, default 10).
fn passive(v: &VariantFile, path: &str, errs: &mut Errors) -> Passive {
    let d = Passive::default();
    let max_fails = v.max_fails.unwrap_or(d.max_fails);
    if !(1..=100).contains(&max_fails) {
        errs.push(format!("{path}.max_fails"), "must be between 1 and 100");
    }
    let secs = v.fail_timeout_secs.unwrap_or(d.fail_timeout.as_secs());
    if !(1..=3600).contains(&secs) {
        errs.push(
            format!("{path}.fail_timeout_secs"),
            "must be between 1 and 3600",
        );
    }
    Passive {
        max_fails,
        fail_timeout: Duration::from_secs(secs),
    }
}

fn millis(v: Option<u64>, default: u64, path: &str, field: &str, errs: &mut Errors) -> Duration {
    let ms = v.unwrap_or(default);
    if ms == 0 {
        errs.push(format!("{path}.{field}"), "must be > 0");
    }
    Duration::from_millis(ms)
}

fn rule(
    r: &RuleFile,
    index: &HashMap<&str, usize>,
    n_variants: usize,
    path: &str,
    errs: &mut Errors,
) -> Option<RuleConfig> {
    check_name(&r.name, &format!("{path}.name"), errs);
    let client_cidr = r
        .client_cidr
        .as_deref()
        .map(|c| {
            if c.is_empty() {
                errs.push(format!("{path}.client_cidr"), "must not be empty");
            }
            cidrs(c, &format!("{path}.client_cidr"), errs)
        })
        .unwrap_or_default();
    let header = r.header.as_ref().and_then(|m| {
        let p = format!("{path}.header");
        let name = header_name(&m.name, &format!("{p}.name"), errs);
        let op = match_op(m, &p, errs);
        Some(Matcher {
            name: name?,
            op: op?,
        })
    });
    let cookie = r
        .cookie
        .as_ref()
        .and_then(|m| named_matcher(m, &format!("{path}.cookie"), errs));
    let query = r
        .query
        .as_ref()
        .and_then(|m| named_matcher(m, &format!("{path}.query"), errs));
    let key_in = r.key_in.clone();
    if key_in.as_ref().is_some_and(super::KeySet::is_empty) {
        errs.push(format!("{path}.key_in"), "must list at least one key");
    }
    if r.client_cidr.is_none()
        && r.header.is_none()
        && r.cookie.is_none()
        && r.query.is_none()
        && r.key_in.is_none()
    {
        errs.push(
            path,
            "needs at least one condition (client_cidr, header, cookie, query, key_in)",
        );
    }
    let action = match (&r.variant, &r.weights) {
        (Some(v), None) => {
            variant_ref(v, index, &format!("{path}.variant"), errs).map(RuleAction::Variant)
        }
        (None, Some(w)) => {
            let mut weights = vec![0.0; n_variants];
            let mut ok = true;
            for (name, weight) in w {
                let p = format!("{path}.weights.{name}");
                ok &= check_weight(weight.0, &p, errs);
                match variant_ref(name, index, &p, errs) {
                    Some(i) => weights[i] = weight.0,
                    None => ok = false,
                }
            }
            if ok && weights.iter().sum::<f64>() <= 0.0 {
                errs.push(
                    format!("{path}.weights"),
                    "the sum of the weights must be positive",
                );
                ok = false;
            }
            ok.then_some(RuleAction::Weights(weights))
        }
        (Some(_), Some(_)) => {
            errs.push(path, "has both `variant` and `weights`; give exactly one");
            None
        }
        (None, None) => {
            errs.push(path, "needs exactly one of `variant` or `weights`");
            None
        }
    };
    Some(RuleConfig {
        name: r.name.clone(),
        client_cidr,
        header,
        cookie,
        query,
        key_in,
        action: action?,
    })
}

fn named_matcher(m: &MatcherFile, path: &str, errs: &mut Errors) -> Option<Matcher<String>> {
    if m.name.is_empty() {
        errs.push(format!("{path}.name"), "must not be empty");
    }
    let op = match_op(m, path, errs)?;
    Some(Matcher {
        name: m.name.clone(),
        op,
    })
}

fn match_op(m: &MatcherFile, path: &str, errs: &mut Errors) -> Option<MatchOp> {
    let mut ops = Vec::new();
    if let Some(v) = &m.equals {
        ops.push(MatchOp::Equals(v.as_bytes().to_vec()));
    }
    if let Some(v) = &m.in_ {
        if v.is_empty() {
            errs.push(format!("{path}.in"), "must list at least one value");
        }
        ops.push(MatchOp::In(
            v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ));
    }
    if let Some(v) = m.present {
        ops.push(MatchOp::Present(v));
    }
    if let Some(v) = &m.prefix {
        ops.push(MatchOp::Prefix(v.as_bytes().to_vec()));
    }
    if ops.len() != 1 {
        errs.push(
            path,
            "needs exactly one of `equals`, `in`, `present`, `prefix`",
        );
        return None;
    }
    ops.pop()
}

fn variant_ref(
    name: &str,
    index: &HashMap<&str, usize>,
    path: &str,
    errs: &mut Errors,
) -> Option<usize> {
    let found = index.get(name).copied();
    if found.is_none() {
        let declared: BTreeSet<&str> = index.keys().copied().collect();
        errs.push(
            path,
            format!(
                "unknown variant {name:?} (declared: {})",
                join_names(&declared)
            ),
        );
    }
    found
}

fn join_names(names: &BTreeSet<&str>) -> String {
    names.iter().copied().collect::<Vec<_>>().join(", ")
}

fn check_weight(w: f64, path: &str, errs: &mut Errors) -> bool {
    if w.is_finite() && w >= 0.0 {
        true
    } else {
        errs.push(path, format!("must be finite and >= 0 (got {w})"));
        false
    }
}

/// Names become metric label values and header values: keep them to a safe alphabet.
fn check_name(name: &str, path: &str, errs: &mut Errors) {
    if name.is_empty() {
        errs.push(path, "must not be empty");
    } else if name.starts_with('_') {
        errs.push(
            path,
            format!("{name:?}: names starting with '_' are reserved"),
        );
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        errs.push(
            path,
            format!("{name:?}: use only letters, digits, '-', '_' and '.'"),
        );
    }
}

fn socket_addr(a: &str, path: &str, errs: &mut Errors) -> Option<SocketAddr> {
    match SocketAddr::from_str(a) {
        Ok(s) => Some(s),
        Err(_) => {
            errs.push(path, format!("{a:?} is not an IP:port address"));
            None
        }
    }
}

fn header_name(h: &str, path: &str, errs: &mut Errors) -> Option<HeaderName> {
    match HeaderName::from_bytes(h.as_bytes()) {
        Ok(n) => Some(n),
        Err(_) => {
            errs.push(path, format!("{h:?} is not a valid header name"));
            None
        }
    }
}

fn host_pattern(h: &str, path: &str, errs: &mut Errors) -> Option<HostPattern> {
    let h = h.to_ascii_lowercase();
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if let Some(rest) = h.strip_prefix("*.") {
        if valid(rest) {
            return Some(HostPattern::Wildcard(format!(".{rest}")));
        }
    } else if valid(&h) {
        return Some(HostPattern::Exact(h));
    }
    errs.push(
        path,
        format!("{h:?}: expected a host name (no port) or *.domain"),
    );
    None
}

/// Parses CIDRs; a bare address counts as a single-host network. A network with host
/// bits set (`10.20.5.7/16`) is refused: it is a typo as often as not, and the network
/// it would mean is named in the error.
pub(crate) fn cidrs(raw: &[String], path: &str, errs: &mut Errors) -> Vec<IpNet> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, c)| match parse_cidr(c) {
            Ok(n) => Some(n),
            Err(message) => {
                errs.push(format!("{path}[{i}]"), message);
                None
            }
        })
        .collect()
}

fn parse_cidr(c: &str) -> Result<IpNet, String> {
    let t = c.trim();
    if let Ok(n) = IpNet::from_str(t) {
        return if n.trunc() == n {
            Ok(n)
        } else {
            Err(format!(
                "{c:?} has host bits set: the network is {}; write that, or {}/{} for the one address",
                n.trunc(),
                n.addr(),
                n.max_prefix_len()
            ))
        };
    }
    IpAddr::from_str(t)
        .map(IpNet::from)
        .map_err(|_| format!("{c:?} is not a CIDR or IP address"))
}

/// Splits `host:port` (IPv6 in brackets). Used by validation and by DNS resolution.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("{s:?}: expected [ipv6]:port"))?;
        (h, p)
    } else {
        s.rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected host:port"))?
    };
    if host.is_empty() || host.contains(':') && !s.starts_with('[') {
        return Err(format!("{s:?}: expected host:port (IPv6 in brackets)"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: port must be 1-65535"))?;
    Ok((host, port))
}

/// RFC 6265 cookie-name = token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn parse(server: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!(
            "[server]\n{server}\n[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"127.0.0.1:9000\"]\n"
        ))
    }

    fn errors(server: &str) -> Vec<String> {
        parse(server).map_or_else(|e| e.lines(), |_| Vec::new())
    }

    #[test]
    fn listen_entries_are_strings_or_tables_with_proxy_protocol() {
        let c = parse(
            "listen = [\"127.0.0.1:8080\", { addr = \"127.0.0.1:8081\", proxy_protocol = true }, { addr = \"127.0.0.1:8082\" }]",
        )
        .unwrap();
        let addrs: Vec<String> = c.server.listen.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            addrs,
            ["127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.1:8082"]
        );
        assert_eq!(c.server.proxy_protocol, ["127.0.0.1:8081".parse().unwrap()]);
        let c = parse("listen = [\"127.0.0.1:8080\"]").unwrap();
        assert!(c.server.proxy_protocol.is_empty());
    }

    #[test]
    fn tls_listeners_take_proxy_protocol() {
        let c = parse(
            "[[server.tls]]\nlisten = \"127.0.0.1:8443\"\ncert = \"c\"\nkey = \"k\"\nproxy_protocol = true\n[[server.tls]]\nlisten = \"127.0.0.1:8444\"\ncert = \"c\"\nkey = \"k\"",
        )
        .unwrap();
        let on: Vec<bool> = c.server.tls.iter().map(|t| t.proxy_protocol).collect();
        assert_eq!(on, [true, false]);
    }

    #[test]
    fn listen_mistakes_name_their_field() {
        let e =
            errors("listen = [\"127.0.0.1:8080\", { addr = \"nowhere\", proxy_protocol = true }]");
        assert!(
            e.iter().any(|l| l.starts_with("server.listen[1].addr")),
            "{e:?}"
        );
        let e = errors("listen = [{ addr = \"127.0.0.1:8080\", proxy = true }]");
        assert!(
            e.iter()
                .any(|l| l.contains("server.listen[0]") && l.contains("proxy")),
            "{e:?}"
        );
        let e = errors("listen = [{ addr = \"127.0.0.1:8080\", proxy_protocol = \"yes\" }]");
        assert!(
            e.iter()
                .any(|l| l.contains("server.listen[0].proxy_protocol")),
            "{e:?}"
        );
        let e = errors("listen = [8080]");
        assert!(e.iter().any(|l| l.contains("server.listen[0]")), "{e:?}");
    }
}
