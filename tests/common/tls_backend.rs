//! A TLS echo backend on 127.0.0.1: HTTP/1.1 with keep-alive over TLS with a
//! certificate from a [`super::certs::TestCa`], answering JSON with what it saw (the
//! request, the SNI the client sent, the client certificate's CN), and counting the
//! handshakes it completed (pooled connections are reused, not made again).
#![allow(dead_code, clippy::unwrap_used)]

use super::certs::{Leaf, TestCa};
use openssl::nid::Nid;
use openssl::ssl::{NameType, SslAcceptor, SslMethod, SslStream, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct TlsEcho {
    pub name: String,
    pub addr: SocketAddr,
    /// Handshakes completed.
    pub handshakes: Arc<AtomicUsize>,
    /// Requests answered (health checks included).
    pub requests: Arc<AtomicUsize>,
}

impl TlsEcho {
    /// Serves with `leaf`; with `client_ca`, asks for a client certificate signed by it
    /// and refuses the handshake without one.
    pub fn spawn(name: &str, leaf: &Leaf, client_ca: Option<&TestCa>) -> TlsEcho {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        b.set_certificate(&leaf.cert).unwrap();
        b.set_private_key(&leaf.key).unwrap();
        if let Some(ca) = client_ca {
            let mut store = X509StoreBuilder::new().unwrap();
            store.add_cert(ca.cert.clone()).unwrap();
            b.set_verify_cert_store(store.build()).unwrap();
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        let acceptor = Arc::new(b.build());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (h, r, n) = (handshakes.clone(), requests.clone(), name.to_string());
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (a, h, r, n) = (acceptor.clone(), h.clone(), r.clone(), n.clone());
                std::thread::spawn(move || {
                    let Ok(s) = a.accept(tcp) else {
                        return;
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    serve(s, &n, &r);
                });
            }
        });
        TlsEcho {
            name: name.to_string(),
            addr,
            handshakes,
            requests,
        }
    }
}

fn serve(s: SslStream<TcpStream>, name: &str, requests: &AtomicUsize) {
    let sni = s.ssl().servername(NameType::HOST_NAME).map(str::to_string);
    let client_cn = s.ssl().peer_certificate().and_then(|c| {
        c.subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
    });
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = serde_json::Map::new();
        let mut len = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                if k == "content-length" {
                    len = v.parse().unwrap_or(0);
                }
                close |= k == "connection" && v.eq_ignore_ascii_case("close");
                headers.insert(k, serde_json::Value::String(v));
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::SeqCst);
        let target = line.split(' ').nth(1).unwrap_or("").to_string();
        let json = serde_json::json!({
            "backend": name,
            "target": target,
            "headers": headers,
            "sni": sni,
            "client_cn": client_cn,
        })
        .to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
            json.len()
        );
        if r.get_mut().write_all(resp.as_bytes()).is_err() || close {
            let _ = r.get_mut().shutdown();
            return;
        }
    }
}
