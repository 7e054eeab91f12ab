//! TLS 1.3 for QUIC: the server's certificate and key, self-signed certificates, fingerprints,
//! and the rustls configurations (ring crypto provider, ALPN `pubsub.v1`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker_core::PROTOCOL_V1;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Why a certificate, key or TLS configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// PEM text held no certificate, or no private key.
    #[error("no {what} found in {source_name}")]
    Missing {
        /// `certificate` or `private key`.
        what: &'static str,
        /// Where it was looked for.
        source_name: String,
    },
    /// PEM text could not be parsed.
    #[error("invalid PEM in {source_name}: {error}")]
    Pem {
        /// Where the PEM came from.
        source_name: String,
        /// The parser's complaint.
        error: String,
    },
    /// A self-signed certificate could not be generated.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate, key or settings (for example a key that does not match
    /// the certificate).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The crypto provider has no cipher suite that QUIC can use. Not expected with `ring`.
    #[error("no TLS 1.3 cipher suite usable for QUIC")]
    NoQuicCipherSuite,
}

/// The server's certificate chain and private key.
///
/// `Debug` shows the leaf certificate's fingerprint, never the key.
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    /// From a DER certificate chain (leaf first) and private key.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        if chain.is_empty() {
            return Err(TlsError::Missing {
                what: "certificate",
                source_name: "the chain".into(),
            });
        }
        Ok(Self { chain, key })
    }

    /// From PEM text: every `CERTIFICATE` block of `cert_pem` (leaf first), and the first
    /// private key (PKCS#8, PKCS#1 or SEC1) of `key_pem`.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        Self::new(
            certificates_from_pem(cert_pem, "the certificate PEM")?,
            key_from_pem(key_pem, "the key PEM")?,
        )
    }

    /// From PEM files, as passed to the broker with `--tls-cert` and `--tls-key`.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = certificates_from_pem(&read(cert)?, &cert.display().to_string())?;
        let key_der = key_from_pem(&read(key)?, &key.display().to_string())?;
        Self::new(chain, key_der)
    }

    /// A fresh self-signed certificate (ECDSA P-256) for `names`: DNS names, or IP addresses
    /// written as such. Clients must be told to trust it, for example with the file written by
    /// [`TlsIdentity::certificate_pem`].
    pub fn self_signed(names: &[String]) -> Result<Self, TlsError> {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names.to_vec())?;
        let key = PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        Self::new(vec![cert.der().clone()], key)
    }

    /// The leaf certificate, DER-encoded: what a client adds to its trusted certificates.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        // Invariant: `new` refuses an empty chain.
        &self.chain[0]
    }

    /// The whole chain as PEM text, for clients to trust (`--tls-write-cert`).
    pub fn certificate_pem(&self) -> String {
        let blocks: Vec<_> = self
            .chain
            .iter()
            .map(|c| pem::Pem::new("CERTIFICATE", c.to_vec()))
            .collect();
        pem::encode_many(&blocks)
    }

    /// SHA-256 fingerprint of the leaf certificate, as `openssl x509 -fingerprint -sha256`
    /// prints it: upper-case hex bytes separated by colons.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.certificate())
    }

    /// The rustls server configuration: TLS 1.3 only, ALPN `pubsub.v1`, no client
    /// certificates, no 0-RTT.
    pub(crate) fn server_crypto(&self) -> Result<QuicServerConfig, TlsError> {
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![PROTOCOL_V1.as_bytes().to_vec()];
        QuicServerConfig::try_from(tls).map_err(|_| TlsError::NoQuicCipherSuite)
    }
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("fingerprint", &self.fingerprint())
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// SHA-256 fingerprint of a DER certificate: upper-case hex bytes separated by colons.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// Every `CERTIFICATE` block of a PEM file: what a client trusts (the file written by the
/// broker's `--tls-write-cert`).
pub fn certificates_from_pem_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certificates_from_pem(&read(path)?, &path.display().to_string())
}

/// Every `CERTIFICATE` block of PEM text.
pub fn certificates_from_pem(
    pem: &[u8],
    source_name: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            source_name: source_name.into(),
            error: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            what: "certificate",
            source_name: source_name.into(),
        });
    }
    Ok(certs)
}

fn key_from_pem(pem: &[u8], source_name: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            what: "private key",
            source_name: source_name.into(),
        },
        e => TlsError::Pem {
            source_name: source_name.into(),
            error: e.to_string(),
        },
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The `ring` provider: aws-lc-rs, rustls' default, needs cmake and nasm to build.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration: TLS 1.3 only, ALPN `alpn`, trusting exactly `trusted`.
pub(crate) fn client_crypto(
    trusted: &[CertificateDer<'static>],
    alpn: &[u8],
) -> Result<QuicClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone())?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    QuicClientConfig::try_from(tls).map_err(|_| TlsError::NoQuicCipherSuite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_certificates_round_trip_through_pem() {
        let id = TlsIdentity::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let fp = id.fingerprint();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.chars().all(|c| c == ':' || c.is_ascii_hexdigit()));
        let pem = id.certificate_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let certs = certificates_from_pem(pem.as_bytes(), "test").unwrap();
        assert_eq!(certs, vec![id.certificate().clone()]);
        assert_eq!(fingerprint(&certs[0]), fp);
        assert!(!format!("{id:?}").contains("PRIVATE"));
        id.server_crypto().unwrap();
        client_crypto(&certs, b"pubsub.v1").unwrap();
    }

    #[test]
    fn an_operators_pem_files_are_loaded_and_a_mismatched_key_is_refused() {
        let dir = std::env::temp_dir();
        let tag = std::process::id();
        let (cert_path, key_path, other_key_path) = (
            dir.join(format!("tq-{tag}-cert.pem")),
            dir.join(format!("tq-{tag}-key.pem")),
            dir.join(format!("tq-{tag}-other.pem")),
        );
        let made = rcgen::generate_simple_self_signed(vec!["broker.test".to_owned()]).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&cert_path, made.cert.pem()).unwrap();
        std::fs::write(&key_path, made.signing_key.serialize_pem()).unwrap();
        std::fs::write(&other_key_path, other.serialize_pem()).unwrap();

        let id = TlsIdentity::from_pem_files(&cert_path, &key_path).unwrap();
        assert_eq!(id.certificate(), made.cert.der());
        id.server_crypto().unwrap();
        let mismatched = TlsIdentity::from_pem_files(&cert_path, &other_key_path).unwrap();
        let refused = mismatched.server_crypto();
        for p in [cert_path, key_path, other_key_path] {
            std::fs::remove_file(p).unwrap();
        }
        assert!(
            matches!(refused, Err(TlsError::Rustls(_))),
            "{:?}",
            refused.err()
        );
    }

    #[test]
    fn bad_pem_is_reported_with_its_source() {
        let e = certificates_from_pem(b"nothing here", "cert.pem").unwrap_err();
        assert!(matches!(
            e,
            TlsError::Missing {
                what: "certificate",
                ..
            }
        ));
        assert!(e.to_string().contains("cert.pem"));
        let id = TlsIdentity::self_signed(&["localhost".into()]).unwrap();
        let e = TlsIdentity::from_pem(id.certificate_pem().as_bytes(), b"").unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Missing {
                    what: "private key",
                    ..
                }
            ),
            "{e}"
        );
        let e = TlsIdentity::from_pem_files(Path::new("/nonexistent/c.pem"), Path::new("k"))
            .unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }));
    }
}
