//! The node's TLS material, loaded once at start from `[tls]`: the client listener's
//! server configuration (HTTPS, optional), the peer listener's (mutual TLS, unless
//! `tls.peer_plaintext`), and the client configuration this node's peer calls present.
//!
//! Start is refused — with the file and the fix — when a key file can be read by others,
//! a file does not parse, a key does not match its certificate, or a certificate (the
//! node's or the cluster CA's) is expired or not yet valid. The expiry of each listener's
//! certificate is exported as `tandem_tls_certificate_expiry_timestamp_seconds` for an
//! alert rule to fire before it passes (docs/monitoring.md).

use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig};

use crate::config::TlsConfig;
use crate::tls::{self, Identity, TlsError};

/// Loaded TLS material of one node.
#[derive(Clone, Default)]
pub struct NodeTls {
    /// The client listener's configuration; `None` = plain HTTP.
    pub client_server: Option<Arc<ServerConfig>>,
    /// The peer listener's configuration (client certificates required); `None` =
    /// plaintext peers (`tls.peer_plaintext`).
    pub peer_server: Option<Arc<ServerConfig>>,
    /// What this node's peer calls present and trust; `None` = plaintext peers.
    pub peer_client: Option<ClientConfig>,
    /// When the client listener's certificate expires, Unix seconds.
    pub client_not_after: Option<i64>,
    /// When the peer identity stops being usable (the earlier of the node certificate's
    /// and the cluster CA's expiry), Unix seconds.
    pub peer_not_after: Option<i64>,
}

impl NodeTls {
    /// Loads and checks everything `config` names, at `now_secs` (Unix seconds).
    pub fn load(config: &TlsConfig, now_secs: i64) -> Result<NodeTls, TlsError> {
        let mut loaded = NodeTls::default();
        if config.client_https() {
            let identity =
                Identity::load(&config.client_cert_file, &config.client_key_file, now_secs)?;
            loaded.client_server = Some(tls::server_config(&identity, None)?);
            loaded.client_not_after = Some(identity.not_after);
        }
        if !config.peer_plaintext {
            let identity = Identity::load(&config.peer_cert_file, &config.peer_key_file, now_secs)?;
            let ca_certs = tls::load_certs(&config.peer_ca_file)?;
            let ca_not_after = tls::check_validity(&config.peer_ca_file, &ca_certs, now_secs)?;
            let roots = tls::load_roots(&config.peer_ca_file)?;
            loaded.peer_server = Some(tls::server_config(&identity, Some(roots.clone()))?);
            // Peers speak HTTP/2 only (one multiplexed connection per peer).
            loaded.peer_client = Some(tls::client_config(roots, Some(&identity), &[b"h2"])?);
            loaded.peer_not_after = Some(identity.not_after.min(ca_not_after));
        }
        Ok(loaded)
    }

    /// The scheme of the peer listener: `https` or, in plaintext mode, `http`.
    pub fn peer_scheme(&self) -> &'static str {
        if self.peer_server.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The scheme of the client listener.
    pub fn client_scheme(&self) -> &'static str {
        if self.client_server.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// A client builder for peer calls: mutual TLS with the node's identity, or plain.
    pub fn peer_http(&self) -> Result<reqwest::ClientBuilder, TlsError> {
        let config = match &self.peer_client {
            Some(config) => config.clone(),
            // No TLS roots: a plaintext cluster calls http:// URLs only.
            None => tls::client_config(rustls::RootCertStore::empty(), None, &[b"h2"])?,
        };
        Ok(reqwest::Client::builder().tls_backend_preconfigured(config))
    }
}
