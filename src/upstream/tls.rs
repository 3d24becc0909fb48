//! TLS to backends: a variant's `tls` table ([`UpstreamTls`]) compiled, when a table is
//! built, into what both carriers need: an OpenSSL connector for the HTTP/1 engine and
//! the health checks, and the CA list and client certificate Pingora's `HttpPeer` takes.
//! A failed handshake is a [`TlsFailure`] with OpenSSL's reason (an unknown issuer, a
//! name the certificate does not cover), which the carriers log and count as `tls`.

use crate::config::{FieldError, UpstreamTls};
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509VerifyResult, X509};
use pingora_core::utils::tls::CertKey;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// A variant's compiled TLS client settings (shared by its pool's connections).
pub struct UpstreamTlsClient {
    pub settings: UpstreamTls,
    connector: SslConnector,
    /// `tls.ca`, for Pingora's peers (`None`: the system roots).
    pub ca: Option<Arc<Box<[X509]>>>,
    /// `tls.client_cert` and `tls.client_key`, for Pingora's peers.
    pub client_cert: Option<Arc<CertKey>>,
    /// Tells apart connections made with different settings in the engine's pool.
    pub id: u64,
}

impl std::fmt::Debug for UpstreamTlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.settings.fmt(f)
    }
}

/// Why a TLS handshake with a backend failed, as OpenSSL says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure(pub String);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl UpstreamTlsClient {
    /// Reads the PEM files of `t`; errors name their field under `path` (the variant's
    /// `tls`).
    /// `h2`: the backends speak HTTP/2, offered by ALPN (for the health checks; requests
    /// to them are Pingora's).
    pub fn load(
        t: &UpstreamTls,
        path: &str,
        h2: bool,
    ) -> Result<UpstreamTlsClient, Vec<FieldError>> {
        let mut errs = Vec::new();
        let err = |field: &str, message: String| FieldError {
            path: format!("{path}.{field}"),
            message,
        };
        let read_certs = |field: &str, file: &str| {
            std::fs::read(file)
                .map_err(|e| err(field, format!("{file}: {e}")))
                .and_then(|pem| {
                    X509::stack_from_pem(&pem)
                        .map_err(|e| err(field, format!("{file}: not PEM certificates: {e}")))
                })
                .and_then(|v| match v.is_empty() {
                    true => Err(err(field, format!("{file}: no certificate found"))),
                    false => Ok(v),
                })
        };
        let ca = match t.ca.as_deref().map(|f| read_certs("ca", f)) {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                errs.push(e);
                None
            }
            None => None,
        };
        let client = match (&t.client_cert, &t.client_key) {
            (Some(cert), Some(key)) => {
                let certs = read_certs("client_cert", cert);
                let key = std::fs::read(key)
                    .map_err(|e| err("client_key", format!("{key}: {e}")))
                    .and_then(|pem| {
                        PKey::private_key_from_pem(&pem).map_err(|e| {
                            err("client_key", format!("{key}: not a PEM private key: {e}"))
                        })
                    });
                match (certs, key) {
                    (Ok(certs), Ok(key)) => match matching(&certs, &key) {
                        true => Some((certs, key)),
                        false => {
                            errs.push(err(
                                "client_key",
                                "does not match the first certificate of client_cert".into(),
                            ));
                            None
                        }
                    },
                    (c, k) => {
                        errs.extend(c.err());
                        errs.extend(k.err());
                        None
                    }
                }
            }
            _ => None,
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        let connector = connector(t, ca.as_deref(), client.as_ref(), h2)
            .map_err(|e| vec![err("ca", format!("setting up the TLS client: {e}"))])?;
        let id = xxhash_rust::xxh3::xxh3_64(format!("{t:?} {h2}").as_bytes()) | 1;
        Ok(UpstreamTlsClient {
            settings: t.clone(),
            connector,
            ca: ca.map(|v| Arc::new(v.into_boxed_slice())),
            client_cert: client.map(|(certs, key)| Arc::new(CertKey::new(certs, key))),
            id,
        })
    }

    /// The name sent as SNI and verified for a backend configured as `backend`
    /// (`host:port`): `tls.sni`, else the host of `host_header`, else the backend's own
    /// host unless it is an IP address (validation asks for a name when verifying one).
    pub fn server_name(&self, backend: &str, host_header: Option<&str>) -> Option<String> {
        let host = |hp: &str| -> String {
            crate::config::split_host_port(hp)
                .map(|(h, _)| h.to_string())
                .unwrap_or_else(|_| hp.to_string())
        };
        if let Some(sni) = &self.settings.sni {
            return Some(sni.clone());
        }
        if let Some(h) = host_header {
            return Some(host(h));
        }
        let h = host(backend);
        h.parse::<std::net::IpAddr>().is_err().then_some(h)
    }

    /// TLS over `tcp` to a backend named `name` (`None`: no SNI, nothing to verify the
    /// certificate's name against).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        name: Option<&str>,
    ) -> Result<SslStream<TcpStream>, TlsFailure> {
        let failed = |e: &dyn std::fmt::Display| TlsFailure(e.to_string());
        let mut conf = self.connector.configure().map_err(|e| failed(&e))?;
        conf.set_use_server_name_indication(name.is_some());
        conf.set_verify_hostname(self.settings.verify && name.is_some());
        let ssl = conf.into_ssl(name.unwrap_or("")).map_err(|e| failed(&e))?;
        let mut stream = SslStream::new(ssl, tcp).map_err(|e| failed(&e))?;
        match Pin::new(&mut stream).connect().await {
            Ok(()) => Ok(stream),
            Err(e) => {
                let verify = stream.ssl().verify_result();
                Err(match verify == X509VerifyResult::OK {
                    true => failed(&e),
                    false => TlsFailure(format!(
                        "certificate verify failed: {}",
                        verify.error_string()
                    )),
                })
            }
        }
    }
}

fn matching(certs: &[X509], key: &PKey<Private>) -> bool {
    certs
        .first()
        .and_then(|c| c.public_key().ok())
        .is_some_and(|p| p.public_eq(key))
}

/// The engine's connector: the system roots, or only `ca`; the client certificate when
/// given; no verification when `verify = false`.
fn connector(
    t: &UpstreamTls,
    ca: Option<&[X509]>,
    client: Option<&(Vec<X509>, PKey<Private>)>,
    h2: bool,
) -> Result<SslConnector, openssl::error::ErrorStack> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    if h2 {
        b.set_alpn_protos(b"\x02h2")?;
    }
    if let Some(ca) = ca {
        let mut store = X509StoreBuilder::new()?;
        for c in ca {
            store.add_cert(c.clone())?;
        }
        b.set_cert_store(store.build());
    }
    if let Some((certs, key)) = client {
        if let Some((leaf, chain)) = certs.split_first() {
            b.set_certificate(leaf)?;
            for c in chain {
                b.add_extra_chain_cert(c.clone())?;
            }
        }
        b.set_private_key(key)?;
    }
    if !t.verify {
        b.set_verify(SslVerifyMode::NONE);
    }
    Ok(b.build())
}
