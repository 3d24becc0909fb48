//! An HTTP/2 backend on 127.0.0.1 (the `h2` crate on its own tokio runtime): h2c with
//! prior knowledge, or h2 over TLS chosen by ALPN. It answers plain requests with JSON
//! of what it saw (`"protocol": "h2"`), and gRPC requests (`content-type:
//! application/grpc`) with a gRPC response whose trailers carry the `grpc-status` set
//! with [`H2Echo::set_grpc_status`] (`/grpc.health.v1.Health/Check` answers SERVING
//! unless [`H2Echo::set_serving`] says otherwise). It counts connections and streams.
#![allow(dead_code, clippy::unwrap_used)]

use super::certs::Leaf;
use bytes::Bytes;
use openssl::ssl::{AlpnError, SslAcceptor, SslMethod};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Shared {
    pub connections: AtomicUsize,
    pub streams: AtomicUsize,
    pub health_checks: AtomicUsize,
    grpc_status: AtomicU32,
    not_serving: AtomicBool,
    stall: AtomicBool,
}

pub struct H2Echo {
    pub name: String,
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
}

impl H2Echo {
    /// h2c: HTTP/2 in cleartext, prior knowledge.
    pub fn spawn(name: &str) -> H2Echo {
        Self::start(name, None)
    }

    /// h2 over TLS with `leaf`, ALPN `h2`.
    pub fn spawn_tls(name: &str, leaf: &Leaf) -> H2Echo {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        b.set_certificate(&leaf.cert).unwrap();
        b.set_private_key(&leaf.key).unwrap();
        b.set_alpn_select_callback(|_, client| {
            openssl::ssl::select_next_proto(b"\x02h2", client).ok_or(AlpnError::NOACK)
        });
        Self::start(name, Some(Arc::new(b.build())))
    }

    /// The `grpc-status` gRPC requests get from now on (0 = OK).
    pub fn set_grpc_status(&self, code: u32) {
        self.shared.grpc_status.store(code, Ordering::SeqCst);
    }

    /// Requests other than health checks get no answer at all from now on.
    pub fn set_stall(&self, stall: bool) {
        self.shared.stall.store(stall, Ordering::SeqCst);
    }

    /// Whether the gRPC health service answers SERVING.
    pub fn set_serving(&self, serving: bool) {
        self.shared.not_serving.store(!serving, Ordering::SeqCst);
    }

    fn start(name: &str, tls: Option<Arc<SslAcceptor>>) -> H2Echo {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let (sh, n) = (shared.clone(), name.to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (sh, n, tls) = (sh.clone(), n.clone(), tls.clone());
                    tokio::spawn(async move {
                        match tls {
                            None => serve(tcp, &n, &sh).await,
                            Some(a) => {
                                let Ok(ssl) = openssl::ssl::Ssl::new(a.context()) else {
                                    return;
                                };
                                let Ok(mut s) = tokio_openssl::SslStream::new(ssl, tcp) else {
                                    return;
                                };
                                if Pin::new(&mut s).accept().await.is_ok() {
                                    serve(s, &n, &sh).await;
                                }
                            }
                        }
                    });
                }
            });
        });
        H2Echo {
            name: name.to_string(),
            addr,
            shared,
        }
    }
}

async fn serve<S>(io: S, name: &str, sh: &Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    sh.connections.fetch_add(1, Ordering::SeqCst);
    while let Some(Ok((req, respond))) = conn.accept().await {
        sh.streams.fetch_add(1, Ordering::SeqCst);
        let (sh, n) = (sh.clone(), name.to_string());
        tokio::spawn(async move {
            let _ = answer(req, respond, &n, &sh).await;
        });
    }
}

async fn answer(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    name: &str,
    sh: &Shared,
) -> Result<(), h2::Error> {
    let (parts, mut body) = req.into_parts();
    let mut received = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
    }
    let grpc = parts
        .headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        let mut headers = serde_json::Map::new();
        for (k, v) in &parts.headers {
            headers.insert(
                k.to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
            );
        }
        let json = serde_json::json!({
            "backend": name,
            "protocol": "h2",
            "method": parts.method.as_str(),
            "target": parts.uri.path_and_query().map(|p| p.as_str()),
            "authority": parts.uri.authority().map(|a| a.as_str()),
            "headers": headers,
            "body_len": received.len(),
        })
        .to_string();
        let resp = http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-length", json.len())
            .body(())
            .unwrap();
        let mut send = respond.send_response(resp, false)?;
        send.send_data(Bytes::from(json), true)?;
        return Ok(());
    }
    // gRPC: one length-prefixed message back, then the status in trailers.
    let health = parts.uri.path() == "/grpc.health.v1.Health/Check";
    if !health && sh.stall.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let (message, status) = if health {
        sh.health_checks.fetch_add(1, Ordering::SeqCst);
        // HealthCheckResponse { status: SERVING (1) or NOT_SERVING (2) }
        let serving = if sh.not_serving.load(Ordering::SeqCst) {
            2
        } else {
            1
        };
        (vec![0x08, serving], 0)
    } else {
        // Echo the request message, prefixed with the backend's name as field 15.
        let mut m = vec![0x7a, name.len() as u8];
        m.extend_from_slice(name.as_bytes());
        m.extend_from_slice(received.get(5..).unwrap_or_default());
        (m, sh.grpc_status.load(Ordering::SeqCst))
    };
    let resp = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("x-backend", name)
        .body(())
        .unwrap();
    let mut send = respond.send_response(resp, false)?;
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    send.send_data(Bytes::from(framed), false)?;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", status.to_string().parse().unwrap());
    if status != 0 {
        trailers.insert("grpc-message", "backend says no".parse().unwrap());
    }
    send.send_trailers(trailers)?;
    Ok(())
}
