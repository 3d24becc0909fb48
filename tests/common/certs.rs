//! Certificates made at test time: a test CA, and leaf certificates it signs (servers
//! and clients), written as PEM files.
#![allow(dead_code, clippy::unwrap_used)]

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static SERIAL: AtomicU32 = AtomicU32::new(1000);

/// A certificate authority made for one test.
pub struct TestCa {
    pub cert: X509,
    key: PKey<Private>,
}

/// A leaf certificate and its key, with the PEM files written.
pub struct Leaf {
    pub cert: X509,
    pub key: PKey<Private>,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

fn key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

fn builder(cn: &str) -> openssl::x509::X509Builder {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = SERIAL.fetch_add(1, Ordering::SeqCst);
    b.set_serial_number(&BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    b
}

impl TestCa {
    /// A new self-signed CA named `cn`.
    pub fn new(cn: &str) -> TestCa {
        let key = key();
        let mut b = builder(cn);
        b.set_issuer_name(&name(cn)).unwrap();
        b.set_pubkey(&key).unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        TestCa {
            cert: b.build(),
            key,
        }
    }

    /// Writes the CA certificate as `dir/name`; returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.cert.to_pem().unwrap()).unwrap();
        p
    }

    /// A server certificate for `dns` names (and 127.0.0.1 when `ip`), written as
    /// `dir/<stem>.crt` and `dir/<stem>.key`.
    pub fn server(&self, dir: &Path, stem: &str, dns: &[&str], ip: bool) -> Leaf {
        let mut san = SubjectAlternativeName::new();
        for d in dns {
            san.dns(d);
        }
        if ip {
            san.ip("127.0.0.1");
        }
        self.leaf(
            dir,
            stem,
            dns.first().copied().unwrap_or("server"),
            Some(san),
            false,
        )
    }

    /// A client certificate named `cn`, written as `dir/<stem>.crt` and `.key`.
    pub fn client(&self, dir: &Path, stem: &str, cn: &str) -> Leaf {
        self.leaf(dir, stem, cn, None, true)
    }

    fn leaf(
        &self,
        dir: &Path,
        stem: &str,
        cn: &str,
        san: Option<SubjectAlternativeName>,
        client: bool,
    ) -> Leaf {
        let key = key();
        let mut b = builder(cn);
        b.set_issuer_name(self.cert.subject_name()).unwrap();
        b.set_pubkey(&key).unwrap();
        if let Some(san) = san {
            let ext = san
                .build(&b.x509v3_context(Some(&self.cert), None))
                .unwrap();
            b.append_extension(ext).unwrap();
        }
        let mut eku = ExtendedKeyUsage::new();
        if client {
            eku.client_auth();
        } else {
            eku.server_auth();
        }
        b.append_extension(eku.build().unwrap()).unwrap();
        b.sign(&self.key, MessageDigest::sha256()).unwrap();
        let cert = b.build();
        let cert_pem = dir.join(format!("{stem}.crt"));
        let key_pem = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_pem, cert.to_pem().unwrap()).unwrap();
        std::fs::write(&key_pem, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        Leaf {
            cert,
            key,
            cert_pem,
            key_pem,
        }
    }
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    name.build()
}
