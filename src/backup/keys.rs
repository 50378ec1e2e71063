//! The repository's keys and what they do: the **repo key** (32 random bytes, hex in a
//! file readable by its owner only) names chunks and authenticates manifests and the
//! repository config; the **age recipients** (public keys, in the authenticated config)
//! encrypt every chunk; the **age identity** (the private key, held by whoever restores,
//! never by nodes) decrypts them. See docs/security.md for who holds what.

use std::io::{Read, Write};
use std::path::Path;

use super::BackupError;

/// The repository key.
#[derive(Clone)]
pub struct RepoKey {
    /// Keyed-blake3 key naming chunks.
    chunk_names: [u8; 32],
    /// Keyed-blake3 key of manifest and config MACs.
    macs: [u8; 32],
}

impl std::fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepoKey(..)")
    }
}

/// Length of a MAC or chunk name, bytes.
pub const DIGEST_BYTES: usize = 32;

impl RepoKey {
    /// The key from its 32 raw bytes; the chunk-naming and MAC keys are derived from it
    /// separately (blake3's key derivation), so one can never stand in for the other.
    pub fn from_bytes(bytes: [u8; 32]) -> RepoKey {
        RepoKey {
            chunk_names: blake3::derive_key("tandem backup v1 chunk names", &bytes),
            macs: blake3::derive_key("tandem backup v1 object macs", &bytes),
        }
    }

    /// Reads the key file (64 hex characters; owner-only permissions required).
    pub fn read(path: &Path) -> Result<RepoKey, BackupError> {
        let text = crate::config::read_secret_file(path).map_err(BackupError::Key)?;
        let bytes = parse_hex32(text.trim()).ok_or_else(|| {
            BackupError::Key(format!(
                "{} must hold 64 hex characters (a repository key from `tandem backup init`)",
                path.display()
            ))
        })?;
        Ok(RepoKey::from_bytes(bytes))
    }

    /// Creates a new random key file at `path` (mode 0600; refused if it exists).
    pub fn create(path: &Path) -> Result<RepoKey, BackupError> {
        // Two v4 UUIDs: 244 bits from the operating system's generator (through getrandom,
        // which uuid already uses), spread over 32 bytes.
        let mut seed = [0_u8; 32];
        seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let bytes = blake3::derive_key("tandem backup v1 repo key", &seed);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_private(path, format!("{hex}\n").as_bytes())?;
        Ok(RepoKey::from_bytes(bytes))
    }

    /// A chunk's name: keyed blake3 of its plaintext, hex. Equal chunks get equal names
    /// (deduplication); without the key a name says nothing about the content.
    pub fn chunk_name(&self, plaintext: &[u8]) -> String {
        blake3::keyed_hash(&self.chunk_names, plaintext)
            .to_hex()
            .to_string()
    }

    /// A keyed hasher over a whole file (recorded per file in the manifest).
    pub fn file_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.chunk_names)
    }

    /// The MAC of an object `name` holding `body`: binds the body to its name, so a
    /// manifest cannot be passed off under another backup's name.
    pub fn mac(&self, name: &str, body: &[u8]) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&self.macs);
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(body);
        hasher.finalize().to_hex().to_string()
    }

    /// Checks `mac` (hex) against `name` and `body` in constant time.
    pub fn check_mac(&self, name: &str, body: &[u8], mac: &str) -> bool {
        let Some(given) = parse_hex32(mac) else {
            return false;
        };
        let mut hasher = blake3::Hasher::new_keyed(&self.macs);
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(body);
        // blake3::Hash's equality is constant-time.
        hasher.finalize() == blake3::Hash::from_bytes(given)
    }
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0_u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Writes `bytes` to a new file at `path` readable by its owner only; refuses to replace
/// an existing file (a key is never overwritten by accident).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| BackupError::Key(format!("{}: {e}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| BackupError::Key(format!("{}: {e}", path.display())))
}

/// Public keys chunks are encrypted to.
pub struct Recipients(Vec<age::x25519::Recipient>);

impl Recipients {
    /// Parses `age1…` public keys.
    pub fn parse(keys: &[String]) -> Result<Recipients, BackupError> {
        if keys.is_empty() {
            return Err(BackupError::Key(
                "the repository lists no recipients".into(),
            ));
        }
        keys.iter()
            .map(|k| {
                k.parse::<age::x25519::Recipient>()
                    .map_err(|e| BackupError::Key(format!("recipient {k:?}: {e}")))
            })
            .collect::<Result<_, _>>()
            .map(Recipients)
    }

    /// Encrypts `plaintext` to every recipient (age format, X25519 + ChaCha20-Poly1305).
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, BackupError> {
        let encryptor =
            age::Encryptor::with_recipients(self.0.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| BackupError::Crypto(format!("encrypting: {e}")))?;
        let mut out = Vec::with_capacity(plaintext.len() + 256);
        let mut writer = encryptor
            .wrap_output(&mut out)
            .map_err(|e| BackupError::Crypto(format!("encrypting: {e}")))?;
        writer
            .write_all(plaintext)
            .and_then(|()| writer.finish().map(drop))
            .map_err(|e| BackupError::Crypto(format!("encrypting: {e}")))?;
        Ok(out)
    }
}

/// Private keys that decrypt chunks (an age identity file).
#[derive(Clone)]
pub struct Identities(Vec<age::x25519::Identity>);

impl Identities {
    /// Reads an age identity file (`AGE-SECRET-KEY-1…` lines; `#` comments).
    pub fn read(path: &Path) -> Result<Identities, BackupError> {
        let text = crate::config::read_secret_file(path).map_err(BackupError::Key)?;
        let identities: Vec<age::x25519::Identity> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                l.parse::<age::x25519::Identity>()
                    .map_err(|e| BackupError::Key(format!("{}: {e}", path.display())))
            })
            .collect::<Result<_, _>>()?;
        if identities.is_empty() {
            return Err(BackupError::Key(format!(
                "{} holds no age identity",
                path.display()
            )));
        }
        Ok(Identities(identities))
    }

    /// Generates a new identity, writes it to `path` (mode 0600; refused if it exists) and
    /// returns its public recipient.
    pub fn create(path: &Path) -> Result<String, BackupError> {
        use age::secrecy::ExposeSecret;
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let text = format!(
            "# tandem backup identity: decrypts backups; keep it offline, away from nodes\n# public key: {recipient}\n{}\n",
            identity.to_string().expose_secret()
        );
        write_private(path, text.as_bytes())?;
        Ok(recipient)
    }

    /// Decrypts an age file; `what` names it in errors.
    pub fn decrypt(&self, ciphertext: &[u8], what: &str) -> Result<Vec<u8>, BackupError> {
        let corrupt = |check: &str, e: String| BackupError::Corrupt {
            object: what.to_owned(),
            check: check.to_owned(),
            detail: e,
        };
        let decryptor =
            age::Decryptor::new(ciphertext).map_err(|e| corrupt("age header", e.to_string()))?;
        let mut reader = decryptor
            .decrypt(self.0.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| {
                corrupt(
                    "age decryption (wrong identity, or damaged header)",
                    e.to_string(),
                )
            })?;
        let mut out = Vec::new();
        reader
            .read_to_end(&mut out)
            .map_err(|e| corrupt("age authentication (ChaCha20-Poly1305)", e.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs_are_keyed_and_bound_to_their_object() {
        let a = RepoKey::from_bytes([1; 32]);
        let b = RepoKey::from_bytes([2; 32]);
        assert_eq!(a.chunk_name(b"x"), a.chunk_name(b"x"));
        assert_ne!(a.chunk_name(b"x"), b.chunk_name(b"x"));
        let mac = a.mac("manifests/1", b"body");
        assert!(a.check_mac("manifests/1", b"body", &mac));
        assert!(!a.check_mac("manifests/2", b"body", &mac));
        assert!(!a.check_mac("manifests/1", b"bodY", &mac));
        assert!(!b.check_mac("manifests/1", b"body", &mac));
        assert!(!a.check_mac("manifests/1", b"body", "zz"));
    }

    #[test]
    fn chunks_decrypt_only_with_the_identity_and_flips_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        let recipient = Identities::create(&path).unwrap();
        assert!(Identities::create(&path).is_err(), "never overwrites a key");
        let identities = Identities::read(&path).unwrap();
        let recipients = Recipients::parse(&[recipient]).unwrap();
        let sealed = recipients.encrypt(b"customer data").unwrap();
        assert!(!sealed.windows(13).any(|w| w == b"customer data"));
        assert_eq!(
            identities.decrypt(&sealed, "chunk").unwrap(),
            b"customer data"
        );
        let mut flipped = sealed.clone();
        let last = flipped.len() - 5;
        flipped[last] ^= 0x40;
        let error = identities
            .decrypt(&flipped, "chunks/ab/cd")
            .unwrap_err()
            .to_string();
        assert!(error.contains("chunks/ab/cd"), "{error}");
    }
}
