//! TLS termination for `[[server.tls]]` listeners: certificates are read (PEM) when a
//! table is compiled, i.e. at start and on every reload, and served per handshake from
//! the current table, so a reload rotates certificates without a restart. HTTP/2 and
//! HTTP/1.1 are offered via ALPN.

use crate::config::{FieldError, TlsListener};
use crate::state::State;
use async_trait::async_trait;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::tls::ext::{ssl_add_chain_cert, ssl_use_certificate, ssl_use_private_key};
use pingora_core::tls::pkey::{PKey, Private};
use pingora_core::tls::x509::X509;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A certificate chain and its private key.
pub struct CertifiedKey {
    leaf: X509,
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertifiedKey")
    }
}

/// Loaded certificates of every TLS listener, plus a digest of the files' bytes.
#[derive(Debug, Default)]
pub struct Certificates {
    pub keys: Vec<CertifiedKey>,
    /// sha256 over every cert and key file, in order: a reload of an unchanged config
    /// file still applies when only the certificates changed.
    pub digest: String,
}

/// sha256 over the PEM files of `listeners` (unreadable files hash as empty).
pub fn files_digest(listeners: &[TlsListener]) -> String {
    let mut h = Sha256::new();
    for l in listeners {
        for p in [&l.cert, &l.key] {
            h.update(std::fs::read(p).unwrap_or_default());
            h.update([0]);
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads and checks every listener's PEM files; errors name `server.tls[i].cert|key`.
pub fn load(listeners: &[TlsListener]) -> Result<Certificates, Vec<FieldError>> {
    let mut keys = Vec::new();
    let mut errs = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        let err = |field: &str, message: String| FieldError {
            path: format!("server.tls[{i}].{field}"),
            message,
        };
        let certs = std::fs::read(&l.cert)
            .map_err(|e| err("cert", format!("{}: {e}", l.cert)))
            .and_then(|pem| {
                X509::stack_from_pem(&pem)
                    .map_err(|e| err("cert", format!("{}: not PEM certificates: {e}", l.cert)))
            })
            .and_then(|v| {
                if v.is_empty() {
                    Err(err("cert", format!("{}: no certificate found", l.cert)))
                } else {
                    Ok(v)
                }
            });
        let key = std::fs::read(&l.key)
            .map_err(|e| err("key", format!("{}: {e}", l.key)))
            .and_then(|pem| {
                PKey::private_key_from_pem(&pem)
                    .map_err(|e| err("key", format!("{}: not a PEM private key: {e}", l.key)))
            });
        match (certs, key) {
            (Ok(mut certs), Ok(key)) => {
                let leaf = certs.remove(0);
                let matches = leaf
                    .public_key()
                    .map(|p| p.public_eq(&key))
                    .unwrap_or(false);
                if matches {
                    keys.push(CertifiedKey {
                        leaf,
                        chain: certs,
                        key,
                    });
                } else {
                    errs.push(err(
                        "key",
                        format!("{} does not match the certificate in {}", l.key, l.cert),
                    ));
                }
            }
            (c, k) => {
                errs.extend(c.err());
                errs.extend(k.err());
            }
        }
    }
    if errs.is_empty() {
        Ok(Certificates {
            keys,
            digest: files_digest(listeners),
        })
    } else {
        Err(errs)
    }
}

/// Serves the current table's certificate for the TLS listener on `listen` on each
/// handshake.
pub struct CertResolver {
    pub state: Arc<State>,
    pub listen: std::net::SocketAddr,
}

#[async_trait]
impl TlsAccept for CertResolver {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let table = self.state.table();
        let index = table
            .config
            .server
            .tls
            .iter()
            .position(|t| t.listen == self.listen);
        let Some(ck) = index.and_then(|i| table.certs.keys.get(i)) else {
            log::error!(
                "no certificate configured for the TLS listener {}",
                self.listen
            );
            return;
        };
        let result = ssl_use_certificate(ssl, &ck.leaf)
            .and_then(|_| ck.chain.iter().try_for_each(|c| ssl_add_chain_cert(ssl, c)))
            .and_then(|_| ssl_use_private_key(ssl, &ck.key));
        if let Err(e) = result {
            log::error!(
                "TLS listener {}: cannot use the certificate: {e}",
                self.listen
            );
        }
    }
}
