//! Encrypted model files at rest, shared by `tern-node` (which decrypts in memory) and the
//! `tern crypt` commands (which encrypt, decrypt and make keys).
//!
//! The file format (`model.onnx.enc`), version 1, all offsets in bytes:
//!
//! | offset | length | content |
//! |---|---|---|
//! | 0  | 8  | magic `TERNENC1` (ASCII) |
//! | 8  | 12 | nonce: random, fresh for every encryption |
//! | 20 | n  | AES-256-GCM ciphertext of the n-byte model file |
//! | 20 + n | 16 | GCM authentication tag |
//!
//! The magic is the GCM associated data, so a file cannot be relabelled as another format
//! version without failing authentication. The key is 32 bytes, written as 64 hex digits or as
//! base64; [`ModelKey`] reads it from text, a file (a Kubernetes Secret mount) or the
//! `TERN_MODEL_KEY` environment variable, never prints it, and clears it from memory when
//! dropped. Decrypted bytes come back in a [`Zeroizing`] buffer, cleared when dropped.
//!
//! Owns nothing else: which file of a model directory is encrypted is the repository's
//! business, and loading the bytes into ONNX Runtime the backend's.

use std::path::{Path, PathBuf};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
pub use zeroize::Zeroizing;

/// The first 8 bytes of every encrypted model file (format version 1).
pub const MAGIC: &[u8; 8] = b"TERNENC1";
/// Bytes of the random nonce after the magic.
pub const NONCE_LEN: usize = 12;
/// Bytes of the GCM authentication tag at the end.
pub const TAG_LEN: usize = 16;
/// Magic and nonce: where the ciphertext starts.
pub const HEADER_LEN: usize = MAGIC.len() + NONCE_LEN;
/// Bytes in a key.
pub const KEY_LEN: usize = 32;
/// The environment variable holding the key as text (hex or base64).
pub const KEY_ENV: &str = "TERN_MODEL_KEY";
/// The largest plaintext AES-GCM allows under one nonce (2^36 - 32 bytes).
pub const MAX_PLAINTEXT: u64 = (1 << 36) - 32;

/// Why a key could not be read or a file could not be encrypted or decrypted. Messages never
/// contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("invalid model key: {0}")]
    KeyFormat(String),
    #[error("cannot read the model key file {path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error("not a Tern encrypted model file (it does not start with \"TERNENC1\")")]
    NotEncrypted,
    #[error("truncated encrypted model file: {len} bytes, shorter than the {min}-byte header and tag")]
    Truncated { len: usize, min: usize },
    #[error("decryption failed: wrong key, or the file was modified or truncated (authentication failed)")]
    Authentication,
    #[error("the file is {len} bytes, more than AES-GCM can encrypt under one nonce ({MAX_PLAINTEXT})")]
    TooLarge { len: u64 },
    #[error("cannot get random bytes from the operating system: {0}")]
    Random(String),
}

/// A 32-byte AES-256 key. `Debug` shows no key bytes; the bytes are zeroed on drop.
#[derive(Clone)]
pub struct ModelKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelKey(<redacted>)")
    }
}

impl ModelKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> ModelKey {
        ModelKey(Zeroizing::new(bytes))
    }

    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<ModelKey, CryptoError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(key.as_mut_slice()).map_err(|e| CryptoError::Random(e.to_string()))?;
        Ok(ModelKey(key))
    }

    /// Parses a key written as 64 hex digits or as base64 (standard or URL-safe alphabet,
    /// padded or not) of 32 bytes. Surrounding whitespace (a trailing newline) is ignored.
    pub fn from_text(text: &str) -> Result<ModelKey, CryptoError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CryptoError::KeyFormat("the key is empty".into()));
        }
        if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut key = Zeroizing::new([0u8; KEY_LEN]);
            for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
                key[i] = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
            }
            return Ok(ModelKey(key));
        }
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
        let decoded = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())
            .map(Zeroizing::new);
        match decoded {
            Some(bytes) if bytes.len() == KEY_LEN => {
                let mut key = Zeroizing::new([0u8; KEY_LEN]);
                key.copy_from_slice(&bytes);
                Ok(ModelKey(key))
            }
            Some(bytes) => Err(CryptoError::KeyFormat(format!(
                "it decodes to {} bytes as base64; AES-256 needs {KEY_LEN}",
                bytes.len()
            ))),
            None => Err(CryptoError::KeyFormat(format!(
                "expected {KEY_LEN} bytes written as {} hex digits or as base64 ({} characters given)",
                2 * KEY_LEN,
                text.len()
            ))),
        }
    }

    /// Reads a key file (hex or base64 text, as `tern crypt keygen` writes it).
    pub fn from_file(path: &Path) -> Result<ModelKey, CryptoError> {
        let bytes = std::fs::read(path)
            .map(Zeroizing::new)
            .map_err(|e| CryptoError::KeyFile { path: path.to_path_buf(), message: e.to_string() })?;
        let text = std::str::from_utf8(&bytes).map_err(|_| CryptoError::KeyFile {
            path: path.to_path_buf(),
            message: "the file is not text (expected hex or base64)".into(),
        })?;
        ModelKey::from_text(text)
            .map_err(|e| CryptoError::KeyFile { path: path.to_path_buf(), message: e.to_string() })
    }

    /// The key in [`KEY_ENV`], if that variable is set.
    pub fn from_env() -> Result<Option<ModelKey>, CryptoError> {
        match std::env::var(KEY_ENV) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                ModelKey::from_text(&text)
                    .map(Some)
                    .map_err(|e| CryptoError::KeyFormat(format!("{KEY_ENV}: {e}")))
            }
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(CryptoError::KeyFormat(format!("{KEY_ENV} is not valid UTF-8")))
            }
        }
    }

    /// The key file given, else [`KEY_ENV`], else none.
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Option<ModelKey>, CryptoError> {
        match file {
            Some(path) => ModelKey::from_file(path).map(Some),
            None => ModelKey::from_env(),
        }
    }

    /// The key as 64 lowercase hex digits (what `tern crypt keygen` writes).
    pub fn to_hex(&self) -> Zeroizing<String> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = Zeroizing::new(String::with_capacity(2 * KEY_LEN));
        for &b in self.0.iter() {
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        out
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&(*self.0).into())
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// Whether `data` starts with the encrypted-file magic.
pub fn is_encrypted(data: &[u8]) -> bool {
    data.starts_with(MAGIC)
}

/// Encrypts `plaintext` into the file format above, with a fresh random nonce.
pub fn encrypt(key: &ModelKey, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if plaintext.len() as u64 > MAX_PLAINTEXT {
        return Err(CryptoError::TooLarge { len: plaintext.len() as u64 });
    }
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| CryptoError::Random(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .cipher()
        .encrypt_inout_detached(&Nonce::from(nonce), MAGIC, out[HEADER_LEN..].as_mut().into())
        .map_err(|_| CryptoError::TooLarge { len: plaintext.len() as u64 })?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts and authenticates a file in the format above. Any change to the file, or the
/// wrong key, is [`CryptoError::Authentication`]; nothing unauthenticated is returned.
pub fn decrypt(key: &ModelKey, data: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if !is_encrypted(data) {
        return Err(CryptoError::NotEncrypted);
    }
    if data.len() < HEADER_LEN + TAG_LEN {
        return Err(CryptoError::Truncated { len: data.len(), min: HEADER_LEN + TAG_LEN });
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&data[MAGIC.len()..HEADER_LEN]);
    let (body, tag) = data[HEADER_LEN..].split_at(data.len() - HEADER_LEN - TAG_LEN);
    let mut tag_bytes = [0u8; TAG_LEN];
    tag_bytes.copy_from_slice(tag);
    let mut plain = Zeroizing::new(body.to_vec());
    key.cipher()
        .decrypt_inout_detached(
            &Nonce::from(nonce),
            MAGIC,
            plain.as_mut_slice().into(),
            &aes_gcm::Tag::from(tag_bytes),
        )
        .map_err(|_| CryptoError::Authentication)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ModelKey {
        ModelKey::from_bytes([byte; KEY_LEN])
    }

    #[test]
    fn round_trip_and_format() -> Result<(), CryptoError> {
        let k = key(7);
        let plain = b"onnx model bytes".repeat(100);
        let file = encrypt(&k, &plain)?;
        assert!(file.starts_with(MAGIC));
        assert_eq!(file.len(), HEADER_LEN + plain.len() + TAG_LEN);
        assert_ne!(&file[HEADER_LEN..HEADER_LEN + plain.len()], plain.as_slice());
        assert_eq!(decrypt(&k, &file)?.as_slice(), plain.as_slice());
        // A fresh nonce each time: two encryptions differ.
        assert_ne!(encrypt(&k, &plain)?, file);
        // Empty plaintext is allowed.
        assert!(decrypt(&k, &encrypt(&k, b"")?)?.is_empty());
        Ok(())
    }

    #[test]
    fn wrong_key_and_tampering_fail_authentication() -> Result<(), CryptoError> {
        let file = encrypt(&key(1), b"secret weights")?;
        assert_eq!(decrypt(&key(2), &file), Err(CryptoError::Authentication));
        for i in [MAGIC.len(), HEADER_LEN, file.len() - 1] {
            let mut bad = file.clone();
            bad[i] ^= 1;
            assert_eq!(decrypt(&key(1), &bad), Err(CryptoError::Authentication), "byte {i} flipped");
        }
        let mut cut = file.clone();
        cut.truncate(file.len() - 1);
        assert_eq!(decrypt(&key(1), &cut), Err(CryptoError::Authentication));
        let mut magic = file.clone();
        magic[7] = b'2';
        assert_eq!(decrypt(&key(1), &magic), Err(CryptoError::NotEncrypted));
        assert!(matches!(decrypt(&key(1), &file[..HEADER_LEN + 3]), Err(CryptoError::Truncated { .. })));
        assert_eq!(decrypt(&key(1), b"\x08\x07onnx"), Err(CryptoError::NotEncrypted));
        Ok(())
    }

    #[test]
    fn keys_parse_from_hex_and_base64() -> Result<(), CryptoError> {
        let k = ModelKey::generate()?;
        let hex = k.to_hex();
        assert_eq!(hex.len(), 64);
        let again = ModelKey::from_text(&format!("  {}\n", hex.as_str()))?;
        assert_eq!(again.to_hex(), hex);
        assert_eq!(ModelKey::from_text(&hex.to_uppercase())?.to_hex(), hex);
        let b64 = base64::engine::general_purpose::STANDARD.encode([9u8; KEY_LEN]);
        assert_eq!(ModelKey::from_text(&b64)?.to_hex().as_str(), "09".repeat(32));
        let b64_nopad = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xfbu8; KEY_LEN]);
        assert_eq!(ModelKey::from_text(&b64_nopad)?.to_hex().as_str(), "fb".repeat(32));
        Ok(())
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        for bad in ["", "abc", &"0".repeat(63), &"g".repeat(64), "AAAA", "not base64 at all!"] {
            let err = ModelKey::from_text(bad).err();
            assert!(matches!(err, Some(CryptoError::KeyFormat(_))), "{bad:?}: {err:?}");
        }
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        let err = ModelKey::from_text(&short).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("16 bytes"), "{err}");
        assert!(!err.contains(&short), "{err}");
        assert_eq!(format!("{:?}", key(3)), "ModelKey(<redacted>)");
    }

    #[test]
    fn key_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{}\n", key(5).to_hex().as_str()))?;
        assert_eq!(ModelKey::from_file(&path)?.to_hex(), key(5).to_hex());
        let missing = ModelKey::from_file(&dir.path().join("nope")).err().map(|e| e.to_string());
        assert!(missing.is_some_and(|m| m.contains("nope")));
        std::fs::write(&path, "short")?;
        assert!(matches!(ModelKey::from_file(&path), Err(CryptoError::KeyFile { .. })));
        Ok(())
    }
}
