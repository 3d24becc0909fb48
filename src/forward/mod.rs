//! The forwarding core: every rule about *what* is forwarded and *how failures are
//! handled*, once, for both carriers. It knows requests, responses and failures, and
//! nothing of sockets or of Pingora's session:
//!
//! - [`edits`]: the fields cohort removes and adds on the way up and on the way down;
//! - [`attempt`]: select a backend, fall back, retry, give up ([`attempt::judge`]);
//! - [`carrier`]: which carrier can take a request (HTTP/2 backends and gRPC are
//!   Pingora's);
//! - [`error`]: one upstream error type, mapped to a status and a metric kind;
//! - [`finish`]: end-of-request metrics and the access log line;
//! - [`grpc`]: gRPC requests, their outcome (`grpc-status`) and cohort's errors for them;
//! - [`plain`]: cohort's own short responses;
//! - [`pooling`]: when an upstream connection may be used again;
//! - [`request`]: the requests refused before routing (ambiguous framing, `Host`, size);
//! - [`request_id`]: the id a request carries to the backend and the access log.
//! - [`sample`]: the request samples `server.sample_log` writes.
//!
//! The carriers are [`crate::fast`] (the HTTP/1 engine: plaintext and TLS HTTP/1.1) and
//! [`crate::proxy`] (Pingora's `ProxyHttp`: HTTP/2 and what the engine hands over).
//! Neither imports the other.

pub mod attempt;
pub mod carrier;
pub mod edits;
pub mod error;
pub mod finish;
pub mod grpc;
pub mod plain;
pub mod pooling;
pub mod request;
pub mod request_id;
pub mod sample;

pub use attempt::{is_idempotent, Attempt, Body, Failure, Phase, Retry};
pub use edits::{ClientPeer, RequestEdits, ResponseEdits};
pub use error::{ErrorKind, UpstreamError};
pub use finish::{Finished, Served};
pub use plain::variant_field;
pub use request_id::RequestId;
