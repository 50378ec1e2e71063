//! TLS with rustls (ring provider): certificates and keys loaded from PEM files, the
//! server configurations of the two listeners, the client configuration of peers and of
//! the `tandem` client commands, and certificate validity.
//!
//! What it owns:
//! - **Loading**: a private key file must be readable by its owner only (mode 0600 or
//!   0400), like the cluster key file; a key others can read is refused, naming the
//!   `chmod`. Certificates and CA bundles are public and may have any mode.
//! - **Validity**: a certificate that is expired or not yet valid is refused at start with
//!   both dates ([`check_validity`]); its `notAfter` feeds the expiry gauge. The dates are
//!   read by [`der::validity`], a small reader of the one DER path they sit on (rustls
//!   checks validity during handshakes but does not expose it).
//! - **Configurations**: the peer listener requires a client certificate signed by the
//!   cluster CA ([`server_config`] with a CA); the client listener takes none. Both
//!   announce `h2` and `http/1.1` by ALPN. A peer client presents its node certificate
//!   and checks the server's against the cluster CA and the peer URL's host name.
//! - **Issuing** ([`issue`]): the local CA and node certificates of `tandem up` and tests.
//!
//! This module uses nothing else of the crate: the layers above hand it paths and time.

pub mod der;
pub mod issue;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocols both listeners offer, preferred first.
pub const ALPN_SERVER: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it and how to fix it.
        message: String,
    },
    /// A certificate is outside its validity period.
    #[error(
        "{path}: certificate is not valid now ({now}): valid from {not_before} until {not_after}; \
         issue a new one (docs/operations.md, \"TLS certificates\")"
    )]
    Validity {
        /// The certificate file.
        path: PathBuf,
        /// Its `notBefore`, RFC 3339.
        not_before: String,
        /// Its `notAfter`, RFC 3339.
        not_after: String,
        /// The time it was checked at, RFC 3339.
        now: String,
    },
    /// rustls refused the material (a key that does not match its certificate, say).
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn file_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// The crypto provider every configuration uses: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Refuses a secret file that its group or others may read (or write).
pub fn check_owner_only(path: &Path) -> Result<(), TlsError> {
    let metadata = std::fs::metadata(path).map_err(|e| file_error(path, e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(file_error(
                path,
                format!(
                    "private key is readable by others (mode {mode:o}); run `chmod 600 {}`",
                    path.display()
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = metadata;
    Ok(())
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key of a PEM file that only its owner may read.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_owner_only(path)?;
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_error(path, format!("no usable PEM private key: {e}")))
}

/// A root store of every certificate in a CA file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Checks that the first certificate of `certs` (from `path`) is valid at `now_secs` (Unix
/// seconds); returns its `notAfter`, Unix seconds.
pub fn check_validity(
    path: &Path,
    certs: &[CertificateDer<'_>],
    now_secs: i64,
) -> Result<i64, TlsError> {
    let first = certs
        .first()
        .ok_or_else(|| file_error(path, "holds no certificate"))?;
    let (not_before, not_after) = der::validity(first)
        .map_err(|e| file_error(path, format!("cannot read the certificate's dates: {e}")))?;
    if now_secs < not_before || now_secs > not_after {
        return Err(TlsError::Validity {
            path: path.to_owned(),
            not_before: der::rfc3339(not_before),
            not_after: der::rfc3339(not_after),
            now: der::rfc3339(now_secs),
        });
    }
    Ok(not_after)
}

/// A certificate chain and its key, loaded and checked.
pub struct Identity {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// The leaf's `notAfter`, Unix seconds.
    pub not_after: i64,
}

impl Identity {
    /// Loads `cert` and `key` and checks the certificate is valid at `now_secs`.
    pub fn load(cert: &Path, key: &Path, now_secs: i64) -> Result<Identity, TlsError> {
        let certs = load_certs(cert)?;
        let not_after = check_validity(cert, &certs, now_secs)?;
        let key = load_key(key)?;
        Ok(Identity {
            certs,
            key,
            not_after,
        })
    }
}

/// A server configuration presenting `identity`; with `client_ca`, every client must
/// present a certificate signed by it (mutual TLS).
pub fn server_config(
    identity: &Identity,
    client_ca: Option<RootCertStore>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let rustls_error = |e: rustls::Error| TlsError::Rustls(e.to_string());
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?;
    let builder = match client_ca {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())
        .map_err(rustls_error)?;
    config.alpn_protocols = ALPN_SERVER.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration trusting `roots`, presenting `identity` if given, offering
/// `alpn` (e.g. `["h2"]` for peers, which speak HTTP/2 only).
pub fn client_config(
    roots: RootCertStore,
    identity: Option<&Identity>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let rustls_error = |e: rustls::Error| TlsError::Rustls(e.to_string());
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.certs.clone(), identity.key.clone_key())
            .map_err(rustls_error)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A `reqwest` client for the `tandem` commands that trusts the CA in `ca_file` (plain
/// HTTP URLs keep working); without a file, a client without TLS roots.
pub fn http_client_builder(ca_file: Option<&Path>) -> Result<reqwest::ClientBuilder, TlsError> {
    let builder = reqwest::Client::builder();
    let roots = match ca_file {
        Some(path) => load_roots(path)?,
        None => RootCertStore::empty(),
    };
    let config = client_config(roots, None, &[b"h2", b"http/1.1"])?;
    Ok(builder.tls_backend_preconfigured(config))
}

/// A `reqwest` client for plain `http://` URLs (no roots: any `https://` URL fails). Its
/// TLS configuration names ring, so it needs no process-wide default provider.
pub fn plain_http_client() -> reqwest::Client {
    match http_client_builder(None).map(reqwest::ClientBuilder::build) {
        Ok(Ok(client)) => client,
        // Building a client without roots, identity or options has nothing that can fail;
        // if it ever did, a default client (ring is installed as the process default by
        // `main`) is the closest equivalent.
        _ => reqwest::Client::new(),
    }
}
