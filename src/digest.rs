//! Content digests (`sha256:<hex>`), as the OCI image spec defines them.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    Invalid(String),
    #[error("unsupported digest algorithm {0:?}: only sha256 is supported")]
    UnsupportedAlgorithm(String),
}

/// A `sha256:<hex>` digest. Other algorithms are refused when parsed, since
/// every blob lazypull handles must be verifiable.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_sha256(Sha256::digest(bytes).into())
    }

    pub fn from_sha256(raw: [u8; 32]) -> Self {
        Self {
            hex: hex::encode(raw),
        }
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Invalid(s.to_string()))?;
        if algorithm != "sha256" {
            let known = algorithm
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
            return Err(if known && !algorithm.is_empty() {
                DigestError::UnsupportedAlgorithm(algorithm.to_string())
            } else {
                DigestError::Invalid(s.to_string())
            });
        }
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::Invalid(s.to_string()));
        }
        Ok(Self {
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A reader that hashes (and counts) every byte that passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The digest of everything read, and the byte count.
    pub fn finish(self) -> (Digest, u64) {
        (
            Digest::from_sha256(self.hasher.finalize().into()),
            self.count,
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes everything written to it, for streams we produce.
#[derive(Default)]
pub struct HashingWriter {
    hasher: Sha256,
    count: u64,
}

impl HashingWriter {
    pub fn finish(self) -> (Digest, u64) {
        (
            Digest::from_sha256(self.hasher.finalize().into()),
            self.count,
        )
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.count += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_digest_is_the_known_one() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parse_refuses_bad_digests() {
        assert!(matches!(
            "sha256:abc".parse::<Digest>(),
            Err(DigestError::Invalid(_))
        ));
        let upper = format!("sha256:{}", "A".repeat(64));
        assert!(matches!(
            upper.parse::<Digest>(),
            Err(DigestError::Invalid(_))
        ));
        let sha512 = format!("sha512:{}", "a".repeat(128));
        assert_eq!(
            sha512.parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm("sha512".into()))
        );
    }

    #[test]
    fn hashing_reader_matches_of() {
        let mut r = HashingReader::new(&b"hello world"[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let (d, n) = r.finish();
        assert_eq!(n, 11);
        assert_eq!(d, Digest::of(b"hello world"));
    }
}
