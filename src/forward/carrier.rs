//! Which carrier can take a routed request. The HTTP/1 engine speaks HTTP/1.1 to
//! backends (plaintext or TLS) and relays bodies byte for byte. A request whose
//! variant, or the `fallback` it may end up on, speaks HTTP/2 to its backends (`h2c`,
//! `h2`), and a gRPC request (whose outcome is in trailers), are the Pingora carrier's:
//! the engine asks before it forwards, and hands the connection over.

use crate::config::UpstreamProtocol;
use crate::routing::{Decision, RoutingTable};

/// Whether the HTTP/1 engine can carry the request `d` decided for service `svc`;
/// `grpc`: its `content-type` is gRPC's ([`super::grpc::is_grpc`]).
pub fn engine_carries(table: &RoutingTable, svc: usize, d: &Decision, grpc: bool) -> bool {
    let pools = &table.pools[svc];
    let h1 = |v: usize| {
        pools
            .get(v)
            .is_none_or(|p| p.protocol() == UpstreamProtocol::H1)
    };
    !grpc && h1(d.variant) && table.router.services[svc].cfg.fallback.is_none_or(h1)
}

/// Whether the HTTP/2 carrier can take a client connection. It serves every stream of
/// the connection itself (a stream cannot be handed over alone), and it speaks HTTP/1.1
/// to backends, so it takes none while a variant of `table` speaks HTTP/2 to its
/// backends (`h2c`, `h2`: gRPC's variants); such connections are the Pingora carrier's.
pub fn h2_carrier_carries(table: &RoutingTable) -> bool {
    table
        .pools
        .iter()
        .flatten()
        .all(|p| p.protocol() == UpstreamProtocol::H1)
}
