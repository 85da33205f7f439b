//! The persisted index of one layer: its tar entries and seek points, keyed
//! by layer digest and written only after a pass that verified the layer.
//! It also holds the sha256 of each [`CHUNK_SIZE`] piece of the compressed
//! blob, recorded by that pass, so bytes fetched piecemeal later (lazy reads)
//! are checked on arrival rather than only once the whole layer is in.
//!
//! File format: a magic line, a little-endian format version, the postcard
//! encoding of [`LayerIndex`] compressed with zstd, and the sha256 of those
//! compressed bytes (so a torn or damaged file is detected, not trusted, and
//! before anything is decompressed).

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::seek::SeekIndex;
use super::tar::TarEntry;
use crate::blob::{CHUNK_SIZE, ChunkSum};
use crate::cache::{CacheDir, CacheError};
use crate::digest::Digest;

const MAGIC: &[u8; 15] = b"lazypull-index\n";
/// Bump on any change to [`LayerIndex`] or what it contains.
pub const FORMAT_VERSION: u32 = 4;
/// Tar paths repeat their directories entry after entry: compressing the
/// encoding shrinks an index of many files about threefold, and costs a
/// few milliseconds per MB at this level.
const BODY_LEVEL: i32 = 3;
/// Largest decoded index accepted: far above any real layer's, it only
/// bounds the memory a damaged file can claim.
const MAX_BODY: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum IndexFileError {
    #[error("index file {path} is not a lazypull layer index")]
    NotAnIndex { path: String },
    #[error("index file {path} has format version {found}, this lazypull reads {FORMAT_VERSION}")]
    Version { path: String, found: u32 },
    #[error("index file {path} is damaged: {detail}")]
    Damaged { path: String, detail: String },
    #[error("index file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Everything known about a layer without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerIndex {
    /// Digest of the compressed blob (verified).
    pub digest: Digest,
    /// sha256 of the uncompressed tar (verified).
    pub diff_id: Digest,
    pub entries: Vec<TarEntry>,
    pub seek: SeekIndex,
    /// sha256 of each [`CHUNK_SIZE`] piece of the compressed blob (the last
    /// one shorter), from the verified pass: 32 bytes per MiB of layer.
    pub chunks: Vec<ChunkSum>,
}

impl LayerIndex {
    pub fn encode(&self) -> Result<Vec<u8>, IndexFileError> {
        let cannot = |detail: String| IndexFileError::Damaged {
            path: self.digest.to_string(),
            detail: format!("cannot encode: {detail}"),
        };
        let plain = postcard::to_stdvec(self).map_err(|e| cannot(e.to_string()))?;
        let body = zstd::bulk::compress(&plain, BODY_LEVEL).map_err(|e| cannot(e.to_string()))?;
        let mut out = Vec::with_capacity(MAGIC.len() + 4 + body.len() + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&Sha256::digest(&body));
        Ok(out)
    }

    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self, IndexFileError> {
        let path = path.display().to_string();
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| IndexFileError::NotAnIndex { path: path.clone() })?;
        let damaged = |detail: String| IndexFileError::Damaged {
            path: path.clone(),
            detail,
        };
        let (version, rest) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| damaged("cut short".into()))?;
        let found = u32::from_le_bytes(*version);
        if found != FORMAT_VERSION {
            return Err(IndexFileError::Version { path, found });
        }
        let (body, sum) = rest
            .split_last_chunk::<32>()
            .ok_or_else(|| damaged("cut short".into()))?;
        if Sha256::digest(body).as_slice() != sum {
            return Err(damaged("checksum mismatch".into()));
        }
        // Decoding straight into a buffer of the declared size is several
        // times faster than streaming; the declared size is bounded first.
        let size = zstd::zstd_safe::get_frame_content_size(body)
            .ok()
            .flatten()
            .filter(|&n| n <= MAX_BODY)
            .ok_or_else(|| damaged("no plausible decoded size".into()))?;
        let plain = zstd::bulk::decompress(body, size as usize)
            .map_err(|e| damaged(format!("undecodable: {e}")))?;
        let index: Self = postcard::from_bytes(&plain).map_err(|e| damaged(e.to_string()))?;
        index.seek.validate().map_err(|e| damaged(e.to_string()))?;
        let want = index.seek.compressed_size.div_ceil(CHUNK_SIZE);
        if index.chunks.len() as u64 != want {
            return Err(damaged(format!(
                "{} chunk digests for a blob of {} chunks",
                index.chunks.len(),
                want
            )));
        }
        Ok(index)
    }

    /// Loads the index of `digest` from the cache; `Ok(None)` if there is
    /// none. A damaged or outdated file counts as none (it is rebuilt).
    pub fn load(cache: &CacheDir, digest: &Digest) -> Result<Option<Self>, IndexFileError> {
        let path = cache.index_path(digest);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(IndexFileError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        match Self::decode(&bytes, &path) {
            Ok(index) if index.digest == *digest => Ok(Some(index)),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "index file is for another layer; rebuilding it");
                Ok(None)
            }
            // Expected once after an upgrade: every layer's index is rebuilt (one
            // download of the layer) when it is next used.
            Err(IndexFileError::Version { found, .. }) => {
                tracing::info!(layer = %digest, path = %path.display(), found,
                    current = FORMAT_VERSION,
                    "cached index has an older or newer format; rebuilding it");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(layer = %digest, error = %e, "ignoring the cached index; rebuilding it");
                Ok(None)
            }
        }
    }

    /// Writes the index atomically under its layer digest.
    pub fn store(&self, cache: &CacheDir) -> Result<u64, IndexFileError> {
        let bytes = self.encode()?;
        cache.write_atomic(&cache.index_path(&self.digest), &bytes)?;
        Ok(bytes.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::seek::{Compression, SeekingDecoder};
    use crate::layer::tar::read_entries;

    /// An index of a layer with `files` small files in one deep directory.
    fn sample_of(files: usize) -> LayerIndex {
        let mut builder = ::tar::Builder::new(Vec::new());
        for i in 0..files {
            let mut header = ::tar::Header::new_gnu();
            header.set_size(5);
            header.set_mode(0o644);
            let name = format!("usr/lib/python3/dist-packages/some_package/module{i}.py");
            builder
                .append_data(&mut header, name, &b"hello"[..])
                .unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let entries = read_entries(&mut tar.as_slice()).unwrap();
        let mut decoder = SeekingDecoder::new(tar.as_slice(), Compression::None, 1 << 20).unwrap();
        std::io::copy(&mut decoder, &mut std::io::sink()).unwrap();
        LayerIndex {
            digest: Digest::of(&tar),
            diff_id: Digest::of(&tar),
            entries,
            seek: decoder.finish().unwrap(),
            chunks: tar
                .chunks(CHUNK_SIZE as usize)
                .map(crate::blob::chunk_sum)
                .collect(),
        }
    }

    fn sample() -> LayerIndex {
        sample_of(1)
    }

    #[test]
    fn round_trips_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        let index = sample();
        index.store(&cache).unwrap();
        assert_eq!(
            LayerIndex::load(&cache, &index.digest).unwrap(),
            Some(index)
        );
    }

    #[test]
    fn damaged_or_foreign_files_are_refused() {
        let index = sample();
        let bytes = index.encode().unwrap();
        let path = Path::new("x");
        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        assert!(matches!(
            LayerIndex::decode(&flipped, path),
            Err(IndexFileError::Damaged { .. })
        ));
        assert!(matches!(
            LayerIndex::decode(&bytes[..bytes.len() - 1], path),
            Err(IndexFileError::Damaged { .. })
        ));
        assert!(matches!(
            LayerIndex::decode(b"garbage", path),
            Err(IndexFileError::NotAnIndex { .. })
        ));
        let mut newer = bytes.clone();
        newer[MAGIC.len()] = 9;
        assert!(matches!(
            LayerIndex::decode(&newer, path),
            Err(IndexFileError::Version { found: 9, .. })
        ));
        // A body that matches its checksum but is not zstd is refused too.
        let mut forged = bytes[..MAGIC.len() + 4].to_vec();
        forged.extend_from_slice(b"not zstd");
        forged.extend_from_slice(&Sha256::digest(b"not zstd"));
        assert!(matches!(
            LayerIndex::decode(&forged, path),
            Err(IndexFileError::Damaged { .. })
        ));
    }

    #[test]
    fn an_index_of_another_format_or_chunk_count_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        let index = sample();
        let mut bytes = index.encode().unwrap();
        // As a lazypull without chunk digests wrote it.
        bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&2u32.to_le_bytes());
        let path = cache.index_path(&index.digest);
        cache.write_atomic(&path, &bytes).unwrap();
        assert_eq!(LayerIndex::load(&cache, &index.digest).unwrap(), None);

        let mut extra = index.clone();
        extra.chunks.push([0; 32]);
        assert!(matches!(
            LayerIndex::decode(&extra.encode().unwrap(), &path),
            Err(IndexFileError::Damaged { detail, .. }) if detail.contains("chunk digests")
        ));
    }

    #[test]
    fn repeated_directories_cost_little() {
        let index = sample_of(1000);
        let plain = postcard::to_stdvec(&index).unwrap().len();
        let stored = index.encode().unwrap().len();
        assert!(
            stored * 4 < plain,
            "{stored} bytes stored for {plain} encoded"
        );
        assert_eq!(
            LayerIndex::decode(&index.encode().unwrap(), Path::new("x")).unwrap(),
            index
        );
    }
}
