//! cohort: a sticky canary-release HTTP load balancer on Pingora.
//!
//! Data flows one way:
//!
//! ```text
//! conf/*.toml ──parse──▶ config::file ──validate──▶ Config ──compile──▶ RoutingTable
//!                                                                     │ (immutable)
//!                                               State: ArcSwap<RoutingTable>
//!                                                                     │ one load per request
//! request ─▶ fast (plaintext HTTP/1.1) or proxy hooks (TLS, HTTP/2, the rest):
//!            RequestView ─▶ Router::match_service / decide ─▶ Decision
//!         ─▶ upstream::Pool::select ─▶ upstream connection ─▶ response headers / cookie
//! ```
//!
//! The assignment function ([`routing::cohort`]) is normative: SPEC "Assignment algorithm".

pub mod access_log;
pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod explain;
pub mod fast;
pub mod forward;
pub mod lifecycle;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod simulate;
pub mod source;
pub mod state;
pub mod tls;
pub mod upstream;
