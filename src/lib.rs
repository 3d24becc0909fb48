//! cohort: a sticky canary-release HTTP load balancer on Pingora.
//!
//! Data flows one way:
//!
//! ```text
//! conf/*.toml ──parse──▶ config::file ──validate──▶ Config ──compile──▶ RoutingTable
//!                                                                     │ (immutable)
//!                                               State: ArcSwap<RoutingTable>
//!                                                                     │ one load per request
//! request ─▶ carrier: fast (HTTP/1 engine: HTTP/1.1, plaintext and TLS)
//!                   | proxy (Pingora ProxyHttp: HTTP/2, hand-overs)
//!         ─▶ RequestView ─▶ Router::match_service / decide ─▶ Decision
//!         ─▶ forward (the core): edits, Attempt (select/fallback/retry/give up)
//!         ─▶ upstream ─▶ response edits ─▶ forward::Finished (metrics, access log)
//! ```
//!
//! The carriers move bytes and never import each other; every rule about what is
//! forwarded and how failures are handled is in [`forward`].
//!
//! The assignment function ([`routing::cohort`]) is normative: SPEC "Assignment algorithm".

pub mod access_log;
pub mod admin;
pub mod analysis;
pub mod cli;
pub mod cli_rollout;
pub mod config;
pub mod demo;
pub mod explain;
pub mod fast;
pub mod forward;
pub mod lifecycle;
pub mod listeners;
pub mod metrics;
pub mod options;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod rollout;
pub mod rollout_report;
pub mod rollouts;
pub mod routing;
pub mod sample;
pub mod server;
pub mod simulate;
pub mod source;
pub mod state;
pub mod tls;
pub mod upstream;
