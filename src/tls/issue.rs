//! Issuing certificates with rcgen: a cluster CA and node certificates signed by it, for
//! `tandem up` and tests. A real deployment issues its own (docs/operations.md).
//!
//! Files under one directory: `ca.pem` (public), `ca.key` (0600), and per node
//! `node-N.pem` (its certificate, then the CA's) and `node-N.key` (0600). Every key file is
//! created with mode 0600 before a byte is written, so it is never readable by others.
//! Node certificates name `127.0.0.1` and `localhost` and serve as server and client
//! certificates (both extended key usages), as mutual TLS between nodes needs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// How long `tandem up`'s certificates are valid, days.
pub const LOCAL_VALID_DAYS: i64 = 365;
/// A local set with less than this left is issued afresh, days.
pub const LOCAL_RENEW_DAYS: i64 = 30;

/// The files of one node's identity.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    /// Certificate chain (node, then CA), PEM.
    pub cert: PathBuf,
    /// Private key, PEM, mode 0600.
    pub key: PathBuf,
}

/// What one node of a local cluster is given: its identity and the CA.
#[derive(Debug, Clone)]
pub struct NodeTlsFiles {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM, mode 0600.
    pub key: PathBuf,
    /// The cluster CA, PEM.
    pub ca: PathBuf,
}

/// A CA and node identities under one directory.
#[derive(Debug, Clone)]
pub struct LocalPki {
    /// The CA certificate (the peers' trust root; clients' too for HTTPS).
    pub ca_cert: PathBuf,
    /// The CA's private key, mode 0600.
    pub ca_key: PathBuf,
    /// Node 1, 2, … in order.
    pub nodes: Vec<NodeFiles>,
}

impl LocalPki {
    /// Node `id`'s files (ids start at 1); `None` past the set.
    pub fn node(&self, id: u64) -> Option<NodeTlsFiles> {
        let files = self.nodes.get((id as usize).checked_sub(1)?)?;
        Some(NodeTlsFiles {
            cert: files.cert.clone(),
            key: files.key.clone(),
            ca: self.ca_cert.clone(),
        })
    }

    /// The paths of a set for `nodes` nodes under `dir`.
    pub fn paths(dir: &Path, nodes: usize) -> LocalPki {
        LocalPki {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            nodes: (1..=nodes)
                .map(|n| NodeFiles {
                    cert: dir.join(format!("node-{n}.pem")),
                    key: dir.join(format!("node-{n}.key")),
                })
                .collect(),
        }
    }
}

/// Why certificates could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// rcgen failed.
    #[error("issuing a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Parameters of a certificate valid from `not_before` to `not_after` (Unix seconds).
fn params(
    names: &[&str],
    common_name: &str,
    not_before: i64,
    not_after: i64,
) -> Result<CertificateParams, IssueError> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tandem");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let time = |secs: i64| rcgen::date_time_ymd(1970, 1, 1) + time::Duration::seconds(secs);
    params.not_before = time(not_before);
    params.not_after = time(not_after);
    Ok(params)
}

/// A fresh CA (its certificate and key, PEM) named `name`.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

impl Ca {
    /// A new CA valid from `not_before` to `not_after` (Unix seconds).
    pub fn new(name: &str, not_before: i64, not_after: i64) -> Result<Ca, IssueError> {
        let mut params = params(&[], name, not_before, not_after)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Ca {
            params,
            key,
            cert_pem,
        })
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A node certificate for `names` (host names or IP addresses), server and client
    /// usage: `(chain PEM — node then CA, key PEM)`.
    pub fn issue(
        &self,
        common_name: &str,
        names: &[&str],
        not_before: i64,
        not_after: i64,
    ) -> Result<(String, String), IssueError> {
        let mut params = params(names, common_name, not_before, not_after)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        ))
    }
}

/// Writes `text` to `path`; with `secret`, the file is created with mode 0600 (and an
/// existing one tightened) before anything is written.
pub fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), IssueError> {
    let io = |source| IssueError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
    }
    let mut file = options.open(path).map_err(io)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Ensures `dir` holds a CA and `nodes` node identities valid for at least
/// [`LOCAL_RENEW_DAYS`] more days at `now_secs`; otherwise issues a whole new set (a new CA
/// and every node certificate: the nodes of a local cluster restart together).
pub fn ensure_local(dir: &Path, nodes: usize, now_secs: i64) -> Result<LocalPki, IssueError> {
    let pki = LocalPki::paths(dir, nodes);
    if local_set_usable(&pki, now_secs) {
        return Ok(pki);
    }
    std::fs::create_dir_all(dir).map_err(|source| IssueError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let not_before = now_secs - 3_600;
    let not_after = now_secs + LOCAL_VALID_DAYS * 86_400;
    let ca = Ca::new("Tandem local CA", not_before, not_after)?;
    write_file(&pki.ca_key, &ca.key_pem(), true)?;
    write_file(&pki.ca_cert, &ca.cert_pem, false)?;
    for (i, files) in pki.nodes.iter().enumerate() {
        let name = format!("tandem node {}", i + 1);
        let (chain, key) = ca.issue(&name, &["127.0.0.1", "localhost"], not_before, not_after)?;
        write_file(&files.key, &key, true)?;
        write_file(&files.cert, &chain, false)?;
    }
    Ok(pki)
}

fn local_set_usable(pki: &LocalPki, now_secs: i64) -> bool {
    let renew_at = now_secs + LOCAL_RENEW_DAYS * 86_400;
    let valid = |path: &Path| {
        super::load_certs(path).is_ok_and(|certs| {
            certs.iter().all(|cert| {
                super::der::validity(cert)
                    .is_ok_and(|(before, after)| before <= now_secs && after > renew_at)
            })
        })
    };
    valid(&pki.ca_cert)
        && super::load_key(&pki.ca_key).is_ok()
        && pki
            .nodes
            .iter()
            .all(|n| valid(&n.cert) && super::load_key(&n.key).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_local_set_is_kept_while_valid_and_issued_afresh_near_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ensure_local(dir.path(), 3, NOW).unwrap();
        for key in [&pki.ca_key, &pki.nodes[0].key, &pki.nodes[2].key] {
            assert_eq!(mode(key), 0o600, "{}", key.display());
        }
        let ca = std::fs::read_to_string(&pki.ca_cert).unwrap();
        // Node certificates chain to the CA: the CA is the second PEM of each chain.
        let chain = std::fs::read_to_string(&pki.nodes[1].cert).unwrap();
        assert!(chain.ends_with(&ca), "the chain ends with the CA");
        let node = &super::super::load_certs(&pki.nodes[1].cert).unwrap()[0];
        let (before, after) = super::super::der::validity(node).unwrap();
        assert!(before <= NOW && after == NOW + LOCAL_VALID_DAYS * 86_400);

        // A day later: kept as is.
        ensure_local(dir.path(), 3, NOW + 86_400).unwrap();
        assert_eq!(std::fs::read_to_string(&pki.ca_cert).unwrap(), ca);
        // Within LOCAL_RENEW_DAYS of expiry: a new CA and new node certificates.
        let late = NOW + (LOCAL_VALID_DAYS - LOCAL_RENEW_DAYS + 1) * 86_400;
        ensure_local(dir.path(), 3, late).unwrap();
        assert_ne!(std::fs::read_to_string(&pki.ca_cert).unwrap(), ca);
        // More nodes than the set has: issued afresh too.
        let grown = ensure_local(dir.path(), 4, late).unwrap();
        assert!(grown.nodes[3].cert.exists());
    }

    #[test]
    fn a_key_file_others_can_read_is_tightened_when_rewritten_and_refused_when_loaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(super::super::check_owner_only(&path).is_err());
        write_file(&path, "new", true).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(super::super::check_owner_only(&path).is_ok());
    }
}
