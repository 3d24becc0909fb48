//! A blocking HTTP/2 client for tests (the `h2` crate over TLS with ALPN `h2`, any
//! certificate accepted): one request per call, response headers, body and trailers.
#![allow(dead_code, clippy::unwrap_used)]

use bytes::Bytes;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use std::net::SocketAddr;
use std::pin::Pin;

#[derive(Debug)]
pub struct H2Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<http::HeaderMap>,
}

impl H2Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A trailer, or (trailers-only responses) a header.
    pub fn grpc(&self, name: &str) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .and_then(|v| v.to_str().ok())
            .or_else(|| self.header(name))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// One request: method, path, headers, body.
pub type H2Request<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>);

/// Sends `requests` over one HTTP/2 connection to `addr` over TLS, one after the other;
/// returns the responses.
pub fn h2_requests(addr: SocketAddr, requests: &[H2Request<'_>]) -> Vec<H2Response> {
    let mut conn = H2Conn::open(addr);
    requests.iter().map(|r| conn.request(r).unwrap()).collect()
}

/// One HTTP/2 connection over TLS (ALPN `h2`) kept open between requests.
pub struct H2Conn {
    rt: tokio::runtime::Runtime,
    send: h2::client::SendRequest<Bytes>,
}

impl H2Conn {
    pub fn open(addr: SocketAddr) -> H2Conn {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let send = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
            c.set_verify(SslVerifyMode::NONE);
            c.set_alpn_protos(b"\x02h2").unwrap();
            let ssl = c
                .build()
                .configure()
                .unwrap()
                .into_ssl("localhost")
                .unwrap();
            let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
            Pin::new(&mut s).connect().await.unwrap();
            assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
            let (send, conn) = h2::client::handshake(s).await.unwrap();
            tokio::spawn(async move {
                let _ = conn.await;
            });
            send
        });
        H2Conn { rt, send }
    }

    /// One request on this connection: the response, or the stream's (or the
    /// connection's) error, e.g. a reset with `REFUSED_STREAM`.
    pub fn request(&mut self, req: &H2Request<'_>) -> Result<H2Response, h2::Error> {
        let (method, path, headers, body) = req;
        let send = self.send.clone();
        self.rt.block_on(async move {
            let mut b = http::Request::builder()
                .method(*method)
                .uri(format!("https://localhost{path}"));
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            let mut send = send.ready().await?;
            let (resp, mut stream) = send.send_request(b.body(()).unwrap(), body.is_empty())?;
            if !body.is_empty() {
                stream.send_data(Bytes::from(body.clone()), true)?;
            }
            let resp = resp.await?;
            let (parts, mut recv) = resp.into_parts();
            let mut data = Vec::new();
            while let Some(chunk) = recv.data().await {
                let chunk = chunk?;
                let _ = recv.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            let trailers = recv.trailers().await?;
            Ok(H2Response {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: data,
                trailers,
            })
        })
    }
}

/// A gRPC request message: the 5-byte frame header and `message`.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8];
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message);
    f
}
