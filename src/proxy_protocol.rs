//! PROXY protocol (HAProxy's v1 text and v2 binary headers) on the listeners that ask
//! for it (`proxy_protocol = true`): a load balancer in front (an AWS NLB with the
//! target group attribute `proxy_protocol_v2.enabled`) opens every connection with a
//! header naming the client it relays. That address then *is* the connection's peer:
//! what rules (`client_cidr`), the `ip` key, `force_from`, the `trusted_proxies` check
//! and `X-Forwarded-For` see, on both carriers: the engine's `ClientPeer` and Pingora's
//! `session.client_addr()` both come from here, so anything else that reads the client
//! (an access log's address) does too.
//!
//! Where the header is read:
//! - TLS listeners: by [`PreTls`], Pingora's pre-handshake hook, on the raw TCP stream;
//! - plaintext listeners on the HTTP/1 engine: by the engine ([`crate::fast`]), into the
//!   buffer it reads request heads into;
//! - plaintext listeners on the Pingora carrier: by [`Proxied`], before Pingora's HTTP
//!   session starts.
//!
//! On the raw stream paths the address replaces the peer in the connection's
//! [`SocketDigest`], where Pingora (and a later hand-over) reads it; bytes read past the
//! header are put back in front of the stream. A missing, malformed or unfinished header
//! (not complete within `server.client_header_timeout_secs`) closes the connection
//! without a response, as HAProxy and NGINX do. v2 `LOCAL` and v1 `UNKNOWN` headers (a
//! balancer's own health checks) keep the socket's peer. Listeners without the option
//! never run any of this: they belong to another Pingora service (see `crate::server`).

use crate::fast::HandOver;
use crate::state::State;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora_core::server::ShutdownWatch;
use pingora_core::{Error, ErrorType};
use ppp::{v1, v2, HeaderResult, PartialResult};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Buffer for reading a header off a raw stream: a v1 header is at most 107 bytes, an
/// NLB's v2 header with its TLVs well under this.
const FIRST_READ: usize = 512;

/// How a v1 header starts, and its greatest length (the spec's 107 bytes).
const V1_PREFIX: &[u8] = b"PROXY ";
const V1_MAX: usize = 107;
/// How a v2 header starts.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a connection was closed before its first request.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Connected and closed without a byte: a TCP health check or a port probe.
    #[error("the connection closed without sending anything")]
    Empty,
    #[error("the connection closed before a complete PROXY protocol header")]
    Closed,
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// A complete header at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes (what follows is the client's own data).
    pub len: usize,
    /// The client it names; `None`: keep the socket's peer (v2 `LOCAL`, v1 `UNKNOWN`, or
    /// an address family that is not IP).
    pub client: Option<SocketAddr>,
}

/// Parses the PROXY protocol header at the start of `buf`: `Ok(None)` while it is
/// incomplete (more bytes may finish it), an error as soon as the bytes cannot be one.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, HeaderError> {
    // A v1 line is judged once it ended (or cannot end within the limit): cut after the
    // space before its last field, it would read as an empty (invalid) port.
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        let ended = match memchr::memchr2(b'\r', b'\n', buf) {
            Some(i) => buf[i] == b'\n' || i + 1 < buf.len(),
            None => buf.len() >= V1_MAX,
        };
        if !ended {
            return Ok(None);
        }
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return Ok(None);
    }
    match result {
        HeaderResult::V1(Ok(h)) => Ok(Some(Header {
            len: h.header.len(),
            client: match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            },
        })),
        HeaderResult::V2(Ok(h)) => Ok(Some(Header {
            len: h.len(),
            client: match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            },
        })),
        HeaderResult::V1(Err(e)) => Err(HeaderError::Malformed(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(HeaderError::Malformed(e.to_string())),
    }
}

/// Reads the header off the front of `io` into `buf` (which may already hold bytes) and
/// removes it from `buf`, leaving there whatever the client sent after it. Gives the
/// client address it names (`None`: keep the socket's peer).
pub async fn read<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<Option<SocketAddr>, HeaderError> {
    tokio::time::timeout(limit, read_header(io, buf))
        .await
        .unwrap_or(Err(HeaderError::Timeout(limit)))
}

async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<SocketAddr>, HeaderError> {
    loop {
        if let Some(h) = parse(buf)? {
            buf.drain(..h.len);
            return Ok(h.client);
        }
        if buf.capacity() - buf.len() < FIRST_READ / 4 {
            buf.reserve(FIRST_READ);
        }
        if io.read_buf(buf).await? == 0 {
            return Err(match buf.is_empty() {
                true => HeaderError::Empty,
                false => HeaderError::Closed,
            });
        }
    }
}

/// Reads the header off a raw TCP stream, puts back the bytes read past it, and makes
/// the address it names the stream's peer.
pub async fn accept(l4: &mut L4Stream, limit: Duration) -> Result<(), HeaderError> {
    let mut buf = Vec::with_capacity(FIRST_READ);
    let client = read(l4, &mut buf, limit).await?;
    l4.rewind(&buf);
    if let Some(addr) = client {
        set_peer(l4, addr);
    }
    Ok(())
}

/// Replaces the peer address in `l4`'s socket digest (Pingora fills its cell once, on
/// first use, from the socket; a new digest is the way to set another).
pub fn set_peer(l4: &mut L4Stream, addr: SocketAddr) {
    let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
    let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(addr)));
    l4.set_socket_digest(digest);
}

/// TLS listeners with `proxy_protocol = true`: reads the header before the handshake
/// (an error drops the connection).
pub struct PreTls {
    pub state: Arc<State>,
}

#[async_trait]
impl PreTlsProcess for PreTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora_core::Result<()> {
        let limit = self.state.table().config.server.client_header_timeout;
        accept(stream, limit)
            .await
            .map_err(|e| Error::explain(ErrorType::Custom("PROXY protocol"), e.to_string()))
    }
}

/// The Pingora carrier (`COHORT_FAST_PATH=0`) on listeners with `proxy_protocol = true`:
/// reads the header of a plaintext connection (a TLS connection's was read by [`PreTls`]),
/// then lets the carrier serve the connection to its end.
pub struct Proxied {
    pub state: Arc<State>,
    pub carrier: Arc<dyn HandOver>,
}

#[async_trait]
impl ServerApp for Proxied {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream: Stream = if stream.get_ssl().is_some() {
            stream
        } else {
            let Ok(mut l4) = stream.into_any().downcast::<L4Stream>() else {
                return None;
            };
            let limit = self.state.table().config.server.client_header_timeout;
            if let Err(e) = accept(&mut l4, limit).await {
                closed(&*l4, &e);
                return None;
            }
            l4
        };
        // Served here to its end: given back to Pingora, a kept-alive connection would come
        // back through this function and be asked for a header again.
        let mut next = self.carrier.serve(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.carrier.serve(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.carrier.cleanup().await;
    }
}

/// Whether `buf` (not empty) starts as a PROXY protocol header would.
fn starts_like_header(buf: &[u8]) -> bool {
    let v1 = buf.len().min(V1_PREFIX.len());
    let v2 = buf.len().min(V2_SIGNATURE.len());
    buf[..v1] == V1_PREFIX[..v1] || buf[..v2] == V2_SIGNATURE[..v2]
}

/// Skips a PROXY protocol header if the connection starts with one, and keeps the
/// socket's peer (the header's address is not believed); puts back every other byte.
pub async fn skip(l4: &mut L4Stream, limit: Duration) -> Result<(), HeaderError> {
    let mut buf = Vec::with_capacity(FIRST_READ);
    let skipping = async {
        loop {
            if !buf.is_empty() {
                if !starts_like_header(&buf) {
                    return Ok(());
                }
                if let Some(h) = parse(&buf)? {
                    buf.drain(..h.len);
                    return Ok(());
                }
            }
            if buf.capacity() - buf.len() < FIRST_READ / 4 {
                buf.reserve(FIRST_READ);
            }
            if l4.read_buf(&mut buf).await? == 0 {
                return Err(match buf.is_empty() {
                    true => HeaderError::Empty,
                    false => HeaderError::Closed,
                });
            }
        }
    };
    let skipped: Result<(), HeaderError> = tokio::time::timeout(limit, skipping)
        .await
        .unwrap_or(Err(HeaderError::Timeout(limit)));
    skipped?;
    l4.rewind(&buf);
    Ok(())
}

/// The admin listener when some proxy listener takes PROXY protocol: an NLB with
/// `proxy_protocol_v2.enabled` sends a header on its health checks too, to the health
/// check port (`/readyz` on the admin port). A header there is skipped and its address
/// ignored: the admin API's loopback rule keeps judging the socket's peer, so a header
/// cannot make a remote client local. Connections without one are served as before.
pub struct SkipHeader<A> {
    pub state: Arc<State>,
    pub inner: Arc<A>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for SkipHeader<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Ok(mut l4) = stream.into_any().downcast::<L4Stream>() else {
            return None;
        };
        let limit = self.state.table().config.server.client_header_timeout;
        if let Err(e) = skip(&mut l4, limit).await {
            closed(&*l4, &e);
            return None;
        }
        // Served here to its end, so a kept-alive connection is not read for a header
        // again.
        let stream: Stream = l4;
        let mut next = self.inner.process_new(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Logs a connection closed for its header (a probe that sent nothing only at debug
/// level: an NLB's TCP health checks connect and close without a byte).
pub fn closed(io: &impl GetSocketDigest, e: &HeaderError) {
    let peer = io
        .get_socket_digest()
        .and_then(|d| d.peer_addr().map(|a| a.to_string()));
    log_closed(peer.as_deref().unwrap_or("?"), e);
}

/// Logs a connection from `peer` closed for its header.
pub fn log_closed(peer: &str, e: &HeaderError) {
    match e {
        HeaderError::Empty => log::debug!("closed a connection from {peer}: {e}"),
        _ => log::info!("closed a connection from {peer}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 header: `command` 0 (LOCAL) or 1 (PROXY), TCP over IPv4, and `tlv` bytes.
    fn v2(command: u8, src: [u8; 4], port: u16, tlv: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(0x11);
        h.extend_from_slice(&((12 + tlv.len()) as u16).to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&[10, 0, 0, 1]);
        h.extend_from_slice(&port.to_be_bytes());
        h.extend_from_slice(&8080u16.to_be_bytes());
        h.extend_from_slice(tlv);
        h
    }

    fn client(buf: &[u8]) -> Option<SocketAddr> {
        parse(buf).unwrap().unwrap().client
    }

    #[test]
    fn v1_headers_give_the_source_address_and_their_length() {
        let text = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 8080\r\nGET / HTTP/1.1\r\n";
        let h = parse(text).unwrap().unwrap();
        assert_eq!(h.client, Some("203.0.113.7:56324".parse().unwrap()));
        assert_eq!(&text[h.len..], b"GET / HTTP/1.1\r\n");
        assert_eq!(
            client(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n"),
            Some("[2001:db8::7]:1".parse().unwrap())
        );
        assert_eq!(client(b"PROXY UNKNOWN\r\n"), None);
        assert_eq!(client(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"), None);
    }

    #[test]
    fn v2_headers_give_the_source_address_and_their_length() {
        let mut bytes = v2(1, [198, 51, 100, 9], 40000, &[0xEA, 0, 3, b'v', b'p', b'c']);
        let len = bytes.len();
        bytes.extend_from_slice(b"\x16\x03\x01");
        let h = parse(&bytes).unwrap().unwrap();
        assert_eq!(h.len, len);
        assert_eq!(h.client, Some("198.51.100.9:40000".parse().unwrap()));
        // LOCAL (a balancer's health check): the socket's peer stands.
        assert_eq!(client(&v2(0, [198, 51, 100, 9], 1, &[])), None);
    }

    #[test]
    fn a_header_in_pieces_is_incomplete_until_its_last_byte() {
        for whole in [
            b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 8080\r\n".to_vec(),
            v2(1, [198, 51, 100, 9], 40000, &[]),
        ] {
            for cut in 0..whole.len() {
                assert!(
                    matches!(parse(&whole[..cut]), Ok(None)),
                    "{:?}",
                    &whole[..cut]
                );
            }
            assert!(matches!(parse(&whole), Ok(Some(_))));
        }
    }

    #[test]
    fn anything_else_is_malformed_at_once() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"G",
            b"PRI * HTTP/2.0\r\n",
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 8080\r\r",
            b"PROXY TCP4 not-an-ip 10.0.0.1 56324 8080\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 056324 8080\r\n",
            b"PROXY UDP4 203.0.113.7 10.0.0.1 1 2\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x13\x11\x00\x0c",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04",
        ] {
            assert!(
                matches!(parse(bad), Err(HeaderError::Malformed(_))),
                "{bad:?}"
            );
        }
        // A v1 header that never ends is refused at its maximum length (107 bytes).
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), Err(HeaderError::Malformed(_))));
    }

    #[test]
    fn only_header_starts_look_like_headers() {
        for yes in [
            &b"P"[..],
            b"PROXY",
            b"PROXY TCP4",
            b"\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x20",
        ] {
            assert!(starts_like_header(yes), "{yes:?}");
        }
        for no in [&b"GET /readyz HTTP/1.1\r\n"[..], b"POST", b"PRI *", b"\r\r"] {
            assert!(!starts_like_header(no), "{no:?}");
        }
    }

    #[tokio::test]
    async fn reading_leaves_what_follows_the_header() {
        let mut sent = b"PROXY TCP4 203.0.113.7 10.0.0.1 5 6\r\nGET / HTTP/1.1\r\n\r\n".as_slice();
        let mut buf = Vec::new();
        let client = read(&mut sent, &mut buf, Duration::from_secs(5)).await;
        assert_eq!(client.unwrap(), Some("203.0.113.7:5".parse().unwrap()));
        assert_eq!(buf, b"GET / HTTP/1.1\r\n\r\n");
        let mut short = b"PROXY TCP4 203.0.113.7".as_slice();
        let r = read(&mut short, &mut Vec::new(), Duration::from_secs(5)).await;
        assert!(matches!(r, Err(HeaderError::Closed)), "{r:?}");
        let r = read(&mut b"".as_slice(), &mut Vec::new(), Duration::from_secs(5)).await;
        assert!(matches!(r, Err(HeaderError::Empty)), "{r:?}");
    }

    proptest::proptest! {
        /// Any header followed by anything: the header's own length and address, and
        /// every piece of it incomplete rather than refused.
        #[test]
        fn a_header_is_told_apart_from_what_follows(
            src in proptest::prelude::any::<[u8; 4]>(),
            port in proptest::prelude::any::<u16>(),
            binary in proptest::prelude::any::<bool>(),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let header = if binary {
                v2(1, src, port, &[])
            } else {
                let ip = std::net::Ipv4Addr::from(src);
                format!("PROXY TCP4 {ip} 10.0.0.1 {port} 80\r\n").into_bytes()
            };
            let input = [header.as_slice(), &tail].concat();
            let h = parse(&input).unwrap().unwrap();
            proptest::prop_assert_eq!(h.len, header.len());
            proptest::prop_assert_eq!(h.client, Some(SocketAddr::from((src, port))));
            for cut in 0..header.len() {
                proptest::prop_assert!(matches!(parse(&input[..cut]), Ok(None)));
            }
        }

        /// A header with one byte changed, or plain garbage: never a panic, a header no
        /// longer than the input, and a refusal that more bytes do not undo.
        #[test]
        fn damaged_input_never_panics(
            binary in proptest::prelude::any::<bool>(),
            at in proptest::prelude::any::<usize>(),
            byte in proptest::prelude::any::<u8>(),
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
        ) {
            let mut header = if binary {
                v2(1, [1, 2, 3, 4], 5, &[1, 0, 1, 9])
            } else {
                b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n".to_vec()
            };
            let i = at % header.len();
            header[i] = byte;
            for input in [header, garbage] {
                match parse(&input) {
                    Ok(Some(h)) => proptest::prop_assert!(h.len <= input.len()),
                    Ok(None) => {}
                    Err(_) => {
                        let more = [input.as_slice(), b"\r\n\r\n"].concat();
                        proptest::prop_assert!(parse(&more).is_err());
                    }
                }
            }
        }
    }
}
