//! The config file as serde sees it: plain structs mirroring the TOML, no logic.
//! `deny_unknown_fields` everywhere, so a typo is an error, not a silent default.
//! [`super::validate`] turns these into a [`super::Config`].

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceFile>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<Vec<ListenFile>>,
    pub threads: Option<usize>,
    pub admin: Option<String>,
    pub admin_token_env: Option<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub watch: Option<bool>,
    pub drain_delay_secs: Option<u64>,
    pub shutdown_timeout_secs: Option<u64>,
    pub upgrade_sock: Option<String>,
    pub pid_file: Option<String>,
    pub rollout_state: Option<String>,
    /// `[server.fleet]`: the instances fed by one config source run rollouts together.
    pub fleet: Option<FleetFile>,
    pub access_log: Option<String>,
    pub access_log_keys: Option<bool>,
    pub sample_log: Option<String>,
    pub sample_log_rate: Option<Weight>,
    pub resolve_interval_secs: Option<u64>,
    pub client_write_timeout_secs: Option<u64>,
    pub client_header_timeout_secs: Option<u64>,
    pub keepalive_timeout_secs: Option<u64>,
    pub max_request_body_bytes: Option<u64>,
    pub max_request_head_bytes: Option<u64>,
    #[serde(default)]
    pub tls: Vec<TlsFile>,
}

/// `[server.fleet]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    pub decider: Option<String>,
}

/// `[[server.tls]]`: a TLS listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub listen: String,
    pub cert: String,
    pub key: String,
    pub proxy_protocol: Option<bool>,
}

/// One `server.listen` entry: an address string, or a table that also says whether the
/// listener takes a PROXY protocol header (`{ addr = "...", proxy_protocol = true }`).
#[derive(Debug)]
pub enum ListenFile {
    Addr(String),
    Table(ListenTable),
}

/// The table form of a `server.listen` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTable {
    pub addr: String,
    pub proxy_protocol: Option<bool>,
}

/// By hand rather than `untagged`: a mistake inside the table form is then reported as
/// it is (an unknown field, a wrong type) instead of "matched no variant".
impl<'de> Deserialize<'de> for ListenFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ListenFile, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ListenFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an address string or { addr = \"...\", proxy_protocol = true }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ListenFile, E> {
                Ok(ListenFile::Addr(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ListenFile, A::Error> {
                ListenTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ListenFile::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// `[[service]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub name: String,
    pub hosts: Option<Vec<String>>,
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub key: Vec<String>,
    pub salt: Option<String>,
    pub assign_cookie: Option<String>,
    pub cookie_max_age_secs: Option<u64>,
    pub force_header: Option<String>,
    #[serde(default)]
    pub force_from: Vec<String>,
    pub expose_header: Option<String>,
    pub fallback: Option<String>,
    #[serde(default, rename = "variant")]
    pub variants: Vec<VariantFile>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleFile>,
    /// `[service.rollout]`: at most one per service (TOML itself refuses a second table).
    pub rollout: Option<RolloutFile>,
}

/// `[service.rollout]`: a progressive rollout of one canary against one baseline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    pub id: String,
    pub canary: String,
    pub baseline: String,
    pub steps: Option<Vec<Weight>>,
    pub step_secs: Option<u64>,
    pub check_secs: Option<u64>,
    pub max_step_secs: Option<u64>,
    pub on_inconclusive: Option<String>,
    pub failure_limit: Option<u32>,
    pub webhook: Option<String>,
    #[serde(default)]
    pub gates: GatesFile,
}

/// `[service.rollout.gates]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatesFile {
    pub max_error_increase: Option<Weight>,
    pub confidence: Option<Weight>,
    pub min_requests: Option<u64>,
    pub latency_quantile: Option<Weight>,
    pub max_latency_ratio: Option<Weight>,
    pub latency_slack_ms: Option<Weight>,
}

/// `[[service.variant]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantFile {
    pub name: String,
    #[serde(deserialize_with = "number")]
    pub weight: f64,
    #[serde(default)]
    pub backends: Vec<String>,
    pub balance: Option<String>,
    pub connect_timeout_ms: Option<u64>,
    pub read_timeout_ms: Option<u64>,
    pub max_fails: Option<u32>,
    pub fail_timeout_secs: Option<u64>,
    pub health_check: Option<HealthCheckFile>,
    /// `tls = { sni, verify, ca, client_cert, client_key }`: the backends speak TLS.
    pub tls: Option<UpstreamTlsFile>,
    /// Replaces the request's `Host` on the way to this variant's backends.
    pub host_header: Option<String>,
    /// `h1` (default), `h2c` or `h2`.
    pub protocol: Option<String>,
}

/// `tls = { sni, verify, ca, client_cert, client_key }` on a variant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    pub sni: Option<String>,
    pub verify: Option<bool>,
    pub ca: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

/// `health_check = { path, interval_ms, timeout_ms, unhealthy_after, healthy_after }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    pub path: Option<String>,
    /// `grpc.health.v1.Health/Check` instead of `GET path` (h2c and h2 variants).
    pub grpc: Option<bool>,
    /// The service the gRPC check asks about ("" = the server as a whole).
    pub grpc_service: Option<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub unhealthy_after: Option<u32>,
    pub healthy_after: Option<u32>,
}

/// `[[service.rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub name: String,
    pub client_cidr: Option<Vec<String>>,
    pub header: Option<MatcherFile>,
    pub cookie: Option<MatcherFile>,
    pub query: Option<MatcherFile>,
    /// Read straight into its set (no `String` per key).
    pub key_in: Option<super::KeySet>,
    pub variant: Option<String>,
    pub weights: Option<BTreeMap<String, Weight>>,
}

/// A number that TOML may write as an integer or a float (weights, and the rollout's
/// percentages and gate thresholds).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(transparent)]
pub struct Weight(#[serde(deserialize_with = "number")] pub f64);

/// `{ name = "...", equals | in | present | prefix = ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatcherFile {
    pub name: String,
    pub equals: Option<String>,
    #[serde(rename = "in")]
    pub in_: Option<Vec<String>>,
    pub present: Option<bool>,
    pub prefix: Option<String>,
}

/// Accepts TOML integers and floats (including `nan`/`inf`, which validation rejects
/// with a field path rather than a type error).
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = f64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
    }
    d.deserialize_any(V)
}
