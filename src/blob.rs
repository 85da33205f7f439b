//! The blob reader seam: everything above the registry reads layer bytes
//! through this trait, so the index, the tree and the tests never see HTTP.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// The piece of a compressed blob that is fetched, kept on disk and checked
/// as a unit: the verifying pass records each piece's sha256 in the layer
/// index, and the chunk cache checks every piece it gets against it.
/// Neighbouring missing chunks are fetched with one request, so a small
/// chunk costs no round trips on a prefetch; it keeps what a read fetches
/// close to what its span needs (python's start in BENCHMARKS.md fetched
/// 15.3 MiB with 256 KiB chunks, 11.8 MiB with 64 KiB; 16 KiB saved 0.9 MiB
/// more but made reads without a prefetch list slower: each growth of a
/// span became a round trip). The index grows by 512 bytes per MiB of layer.
pub const CHUNK_SIZE: u64 = 64 << 10;

/// The sha256 of one chunk.
pub type ChunkSum = [u8; 32];

pub fn chunk_sum(bytes: &[u8]) -> ChunkSum {
    Sha256::digest(bytes).into()
}

/// Random access to one blob (a compressed layer, a config, ...).
///
/// Errors are `io::Error` so that every implementation (HTTP, local file,
/// cache) maps to an errno at the FUSE edge the same way; implementations
/// wrap their own `thiserror` errors with `io::Error::other`.
pub trait BlobReader: Send + Sync {
    /// Total size of the blob in bytes.
    fn size(&self) -> u64;

    /// Reads up to `len` bytes at `offset`. Returns fewer bytes only at the
    /// end of the blob, and an empty vector at or past the end.
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>>;

    /// A hint that bytes `start..end` are about to be read: a remote blob
    /// may fetch them with one request rather than piece by piece.
    fn prefetch(&self, _start: u64, _end: u64) -> io::Result<()> {
        Ok(())
    }
}

/// A blob whose byte ranges can also be streamed, so that a long run of
/// them costs one request rather than one per piece.
pub trait RangeSource: BlobReader {
    /// Bytes `start..end`, in order.
    fn stream(&self, start: u64, end: u64) -> io::Result<Box<dyn io::Read + Send>>;
}

/// A blob held in a local file.
pub struct FileBlob {
    file: File,
    size: u64,
}

impl FileBlob {
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::from_file(File::open(path)?)
    }

    pub fn from_file(file: File) -> io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(Self { file, size })
    }
}

impl BlobReader for FileBlob {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let len = clamp_len(self.size, offset, len);
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

/// A blob held in memory (tests, small configs).
impl BlobReader for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let len = clamp_len(self.len() as u64, offset, len);
        let start = offset.min(self.len() as u64) as usize;
        Ok(self[start..start + len].to_vec())
    }
}

/// The number of bytes a read of `len` at `offset` may return from a blob of `size`.
pub fn clamp_len(size: u64, offset: u64, len: u64) -> usize {
    size.saturating_sub(offset).min(len) as usize
}
