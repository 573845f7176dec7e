//! Private keys at rest: sealed with AES-256-GCM under a master key before they reach
//! the store, opened only when the broker builds a TLS config.
//!
//! The master key comes from `CERTMQ_MASTER_KEY` (64 hex chars) or from
//! `<data-dir>/master.key`, created with mode 0600 on first start, and only then: when
//! the store already holds sealed keys, a missing key file is a lost key, not a first
//! start. A new key would open none of them, and writing it would hide what happened
//! behind a later "cannot open" error, so start-up refuses instead
//! (docs/security.md, "Master key").

use std::fmt;
use std::path::Path;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Errors loading the master key or opening a sealed value.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("sealed value could not be opened (wrong master key or corrupted data)")]
    Open,
}

/// The key that seals private keys at rest. Its bytes never leave this type.
pub struct MasterKey {
    key: LessSafeKey,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Fills a buffer from the system CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The system RNG failing is not something a server can recover from.
    SystemRandom::new()
        .fill(&mut b)
        .expect("system random number generator failed");
    b
}

impl MasterKey {
    /// Builds a key from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> MasterKey {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key");
        MasterKey {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Loads the key from `env_value` (hex) when given, else from `<dir>/master.key`.
    /// When that file does not exist, a fresh random key is written there (0600) only if
    /// `sealed_data_exists` is false; otherwise this refuses, and writes nothing.
    pub fn load_or_create(
        dir: &Path,
        env_value: Option<&str>,
        sealed_data_exists: bool,
    ) -> Result<MasterKey, SealError> {
        if let Some(hex_key) = env_value {
            return Self::from_hex(hex_key.trim(), "CERTMQ_MASTER_KEY");
        }
        let path = dir.join("master.key");
        match std::fs::read_to_string(&path) {
            Ok(s) => Self::from_hex(s.trim(), &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && sealed_data_exists => {
                Err(SealError::MasterKey(format!(
                    "sealed keys exist in {} but master.key is missing: restore it or set \
                     CERTMQ_MASTER_KEY; refusing to create a new one",
                    dir.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes: [u8; 32] = random_bytes();
                // create_new: a key file that appeared meanwhile is never overwritten.
                write_new_private_file(&path, hex::encode(bytes).as_bytes())
                    .map_err(|e| SealError::MasterKey(format!("{}: {e}", path.display())))?;
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) => Err(SealError::MasterKey(format!("{}: {e}", path.display()))),
        }
    }

    /// Parses 64 hex characters; errors name `source` (the variable or the file).
    pub fn from_hex(s: &str, source: &str) -> Result<MasterKey, SealError> {
        let bad = || {
            SealError::MasterKey(format!(
                "{source}: expected 64 hex characters (32 bytes), e.g. from `openssl rand -hex 32`"
            ))
        };
        let v = hex::decode(s).map_err(|_| bad())?;
        let arr: [u8; 32] = v.try_into().map_err(|_| bad())?;
        Ok(Self::from_bytes(&arr))
    }

    /// Seals `plain`; `context` (e.g. the record key) is bound as associated data so a
    /// sealed value cannot be moved to another record.
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes();
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context),
                &mut buf,
            )
            .expect("AES-GCM sealing of an in-memory buffer cannot fail");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    /// Opens a value sealed by [`MasterKey::seal`] with the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN + aead::MAX_TAG_LEN {
            return Err(SealError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut buf = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context), &mut buf)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

/// Writes a file readable by its owner only (mode 0600 on Unix).
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    write_private(opts, path, contents)
}

/// As [`write_private_file`], but fails when `path` exists.
fn write_new_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    write_private(opts, path, contents)
}

fn write_private(
    mut opts: std::fs::OpenOptions,
    path: &Path,
    contents: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_context_binding() {
        let k = MasterKey::from_bytes(&[7; 32]);
        let s = k.seal(b"srv/acme/1", b"secret key");
        assert!(!s.windows(10).any(|w| w == b"secret key"));
        assert_eq!(k.open(b"srv/acme/1", &s).unwrap(), b"secret key");
        assert!(k.open(b"srv/acme/2", &s).is_err());
        assert!(MasterKey::from_bytes(&[8; 32])
            .open(b"srv/acme/1", &s)
            .is_err());
        assert!(k.open(b"x", b"short").is_err());
    }

    #[test]
    fn creates_and_reloads_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = MasterKey::load_or_create(dir.path(), None, false).unwrap();
        let b = MasterKey::load_or_create(dir.path(), None, true).unwrap();
        let s = a.seal(b"c", b"p");
        assert_eq!(b.open(b"c", &s).unwrap(), b"p");
        assert!(MasterKey::load_or_create(dir.path(), Some("zz"), false).is_err());
    }

    #[test]
    fn a_missing_key_is_not_created_over_sealed_data() {
        let dir = tempfile::tempdir().unwrap();
        let e = MasterKey::load_or_create(dir.path(), None, true).unwrap_err();
        assert!(
            e.to_string().contains("refusing to create a new one"),
            "{e}"
        );
        assert!(!dir.path().join("master.key").exists());
        // The environment variable still works.
        let hex = "11".repeat(32);
        MasterKey::load_or_create(dir.path(), Some(&hex), true).unwrap();
        assert!(!dir.path().join("master.key").exists());
    }
}
