//! The server's secret key, and encryption at rest of the provider tokens sessions keep.
//!
//! The key comes from `ATELIER_SECRET_KEY`; when it is unset, one is generated into the data
//! directory on first start (with a warning: several processes on one PostgreSQL must share
//! one key, so production sets it). Tokens are sealed with XChaCha20-Poly1305 (random 192-bit
//! nonces cannot collide in practice), bound to the row they belong to by associated data, so
//! a ciphertext copied into another session does not open.

use std::path::Path;

use base64::Engine;
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use sha2::{Digest, Sha256};

use crate::error::{AppError, AppResult};

/// The file a generated key is kept in, inside the data directory.
pub const KEY_FILE: &str = "secret.key";
/// Sealed values start with this, so a future format can be told apart.
const PREFIX: &str = "v1.";
const NONCE_LEN: usize = 24;

#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// The key from `configured` (the setting), or else from the data directory's key file,
    /// created on first use. Racing first starts agree: the file is created exclusively and
    /// a loser reads the winner's key.
    pub fn load(configured: Option<&str>, data_dir: &Path) -> AppResult<SecretBox> {
        if let Some(secret) = configured.filter(|s| !s.trim().is_empty()) {
            return Ok(SecretBox::from_secret(secret.trim()));
        }
        let path = data_dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) => return Ok(SecretBox::from_secret(s.trim())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(AppError::internal(format!("{}: {e}", path.display()))),
        }
        std::fs::create_dir_all(data_dir).map_err(AppError::internal)?;
        let mut raw = [0u8; 32];
        rand::fill(&mut raw);
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        let created = {
            use std::{io::Write, os::unix::fs::OpenOptionsExt};
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| {
                    f.write_all(encoded.as_bytes())?;
                    f.sync_all()
                })
        };
        match created {
            Ok(()) => {
                tracing::warn!(
                    path = %path.display(),
                    "ATELIER_SECRET_KEY is not set: generated a secret key into the data \
                     directory. Set ATELIER_SECRET_KEY (the same value in every process that \
                     shares the database) in production, and back it up: sessions' provider \
                     tokens cannot be read without it"
                );
                Ok(SecretBox::from_secret(&encoded))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Another process won the race; its file may still be being written.
                for _ in 0..50 {
                    let s = std::fs::read_to_string(&path).map_err(AppError::internal)?;
                    if !s.trim().is_empty() {
                        return Ok(SecretBox::from_secret(s.trim()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(AppError::internal(format!("{} is empty", path.display())))
            }
            Err(e) => Err(AppError::internal(format!("{}: {e}", path.display()))),
        }
    }

    /// A key of exactly 32 bytes in base64 is used as it is; any other secret (a passphrase)
    /// is hashed into one.
    pub fn from_secret(secret: &str) -> SecretBox {
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE,
        ];
        let raw = engines
            .iter()
            .find_map(|e| e.decode(secret).ok().filter(|k| k.len() == 32))
            .unwrap_or_else(|| {
                Sha256::new()
                    .chain_update(b"atelier secret key v1\0")
                    .chain_update(secret.as_bytes())
                    .finalize()
                    .to_vec()
            });
        let cipher = XChaCha20Poly1305::new_from_slice(&raw).expect("a 32-byte key");
        SecretBox { cipher }
    }

    /// Seals `plaintext`, bound to `context` (what it belongs to).
    pub fn seal(&self, plaintext: &str, context: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption does not fail for in-memory input");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        )
    }

    /// Opens a value [`SecretBox::seal`] made with the same key and `context`. Anything else
    /// (another key, another context, tampering) is an error, never a wrong plaintext.
    pub fn open(&self, sealed: &str, context: &str) -> AppResult<String> {
        let bad = || {
            AppError::internal(
                "a stored secret does not open with this server's key (was ATELIER_SECRET_KEY \
                 changed, or do processes sharing the database use different keys?)",
            )
        };
        let raw = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(b)
                    .ok()
            })
            .filter(|r| r.len() > NONCE_LEN)
            .ok_or_else(bad)?;
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(
                &XNonce::from(<[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| bad())?),
                Payload {
                    msg: body,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| bad())?;
        String::from_utf8(plain).map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::SecretBox;

    #[test]
    fn seals_and_opens_only_in_its_context() {
        let b = SecretBox::from_secret("correct horse battery staple");
        let sealed = b.seal("refresh-token-1", "session:abc");
        assert!(!sealed.contains("refresh-token-1"));
        assert_eq!(b.open(&sealed, "session:abc").unwrap(), "refresh-token-1");
        assert!(b.open(&sealed, "session:other").is_err());
        assert!(
            SecretBox::from_secret("another key")
                .open(&sealed, "session:abc")
                .is_err()
        );
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(b.open(&tampered, "session:abc").is_err());
        // Two seals of one value differ (random nonces).
        assert_ne!(b.seal("x", "c"), b.seal("x", "c"));
    }

    #[test]
    fn generated_key_is_shared_by_every_loader_of_a_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let a = SecretBox::load(None, dir.path()).unwrap();
        let b = SecretBox::load(None, dir.path()).unwrap();
        assert_eq!(b.open(&a.seal("t", "c"), "c").unwrap(), "t");
        let configured = SecretBox::load(Some("from the environment"), dir.path()).unwrap();
        assert!(configured.open(&a.seal("t", "c"), "c").is_err());
    }
}
