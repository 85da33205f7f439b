//! The one pass over a layer: its download, its verification and its index
//! at once. On the same stream of compressed bytes it hashes them (the
//! layer digest), keeps them (the local blob), inflates them while recording
//! seek points, hashes the tar (the diff_id) and parses every tar header.
//! It also hashes each [`CHUNK_SIZE`] piece of the compressed bytes, so the
//! index can vouch for pieces fetched on their own later.

use std::io::{self, BufReader, BufWriter, Read, Write};

use sha2::{Digest as _, Sha256};

use super::LayerError;
use super::index::LayerIndex;
use super::seek::{Compression, SeekIndex, SeekingDecoder};
use super::tar::{TarEntry, read_entries};
use crate::blob::{CHUNK_SIZE, ChunkSum};
use crate::cache::{CacheDir, CacheError};
use crate::digest::{Digest, HashingReader};

/// Uncompressed bytes inflated at once.
const TAR_BUFFER: usize = 256 << 10;

/// What the pass must verify the layer against.
pub struct Expected<'a> {
    pub digest: &'a Digest,
    pub diff_id: &'a Digest,
    pub size: u64,
    pub compression: Compression,
}

/// The sha256 of each [`CHUNK_SIZE`] piece of a stream.
#[derive(Default)]
struct ChunkHasher {
    sums: Vec<ChunkSum>,
    current: Sha256,
    /// Bytes in `current`.
    filled: u64,
}

impl ChunkHasher {
    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = bytes.len().min((CHUNK_SIZE - self.filled) as usize);
            self.current.update(&bytes[..take]);
            self.filled += take as u64;
            bytes = &bytes[take..];
            if self.filled == CHUNK_SIZE {
                self.sums
                    .push(std::mem::take(&mut self.current).finalize().into());
                self.filled = 0;
            }
        }
    }

    fn finish(mut self) -> Vec<ChunkSum> {
        if self.filled > 0 {
            self.sums.push(self.current.finalize().into());
        }
        self.sums
    }
}

/// Copies every byte read through it into a writer, hashes it chunk by
/// chunk, and reports progress.
struct Tee<'a, R, W> {
    inner: R,
    copy: Option<W>,
    chunks: ChunkHasher,
    progress: &'a (dyn Fn(u64) + Sync),
    total: u64,
    /// Why the copy failed (a full disk). From then on every read fails:
    /// bytes read but not copied must not reach the digest either.
    write_error: Option<io::Error>,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.write_error.is_some() {
            return Err(io::Error::other(
                "the layer's copy in the cache could not be written",
            ));
        }
        let n = self.inner.read(buf)?;
        if let Some(copy) = self.copy.as_mut()
            && let Err(e) = copy.write_all(&buf[..n])
        {
            let kind = e.kind();
            self.write_error = Some(e);
            return Err(io::Error::new(
                kind,
                "writing the layer's copy to the cache failed",
            ));
        }
        self.chunks.update(&buf[..n]);
        self.total += n as u64;
        (self.progress)(self.total);
        Ok(n)
    }
}

/// Runs the pass over `source` (the compressed blob from its start). When
/// `keep` is set, the blob is stored in the cache too. The index is stored
/// only if both digests match.
pub fn index_stream(
    source: impl Read,
    expected: &Expected,
    cache: &CacheDir,
    span: u64,
    keep: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<LayerIndex, LayerError> {
    let layer = expected.digest;
    let blob_file = if keep { Some(cache.temp_file()?) } else { None };
    let mut compressed = HashingReader::new(Tee {
        inner: source,
        copy: blob_file
            .as_ref()
            .map(|f| BufWriter::with_capacity(1 << 20, f.as_file())),
        chunks: ChunkHasher::default(),
        progress,
        total: 0,
        write_error: None,
    });
    let decoded = decode(&mut compressed, expected, span);
    // Read what the decoder left (trailing bytes, or the rest of a stream it gave up on) so
    // the digest covers the whole blob.
    let drained = io::copy(&mut compressed, &mut io::sink());
    let copy_failed = |source| {
        let path = blob_file
            .as_ref()
            .map_or_else(|| cache.root().join("tmp"), |f| f.path().to_path_buf());
        LayerError::Cache(CacheError::Io { path, source })
    };
    // Not the layer's fault (it was not all read): say what failed.
    if let Some(source) = compressed.get_mut().write_error.take() {
        return Err(copy_failed(source));
    }
    let decoded = match (decoded, drained) {
        (Ok(decoded), Ok(_)) => decoded,
        (Ok(_), Err(source)) => {
            return Err(LayerError::Read {
                layer: layer.clone(),
                source,
            });
        }
        (Err(e), drained) => {
            // A corrupt blob mostly breaks the inflate or the tar before its end: if the whole
            // blob could be read, say it is corrupt rather than how it failed to decode.
            let (digest, size) = compressed.finish();
            if drained.is_ok() && digest != *layer {
                return Err(LayerError::DigestMismatch {
                    layer: layer.clone(),
                    actual: digest,
                    size,
                });
            }
            return Err(e);
        }
    };
    let (entries, diff_id, seek) = decoded;
    if let Some(copy) = compressed.get_mut().copy.as_mut() {
        copy.flush().map_err(copy_failed)?;
    }
    let chunks = std::mem::take(&mut compressed.get_mut().chunks).finish();
    let (digest, size) = compressed.finish();
    verify(expected, &digest, size, &diff_id)?;
    if let Some(file) = blob_file {
        cache.commit(file, &cache.blob_path(layer))?;
    }
    let index = LayerIndex {
        digest: layer.clone(),
        diff_id,
        entries,
        seek,
        chunks,
    };
    index.store(cache)?;
    Ok(index)
}

/// Inflates `compressed`, recording seek points, and parses the tar; returns its entries, the
/// diff_id and the seek index.
fn decode(
    compressed: &mut impl Read,
    expected: &Expected,
    span: u64,
) -> Result<(Vec<TarEntry>, Digest, SeekIndex), LayerError> {
    let layer = expected.digest;
    let seek_error = |source| LayerError::Seek {
        layer: layer.clone(),
        source,
    };
    let mut decoder =
        SeekingDecoder::new(compressed, expected.compression, span).map_err(seek_error)?;
    // The tar reader asks for 512-byte headers and small data chunks; one
    // inflate call per such read is slow, so the decoder fills a large buffer.
    let mut tar = HashingReader::new(BufReader::with_capacity(TAR_BUFFER, &mut decoder));
    let entries = read_entries(&mut tar).map_err(|source| LayerError::Tar {
        layer: layer.clone(),
        source,
    })?;
    // What follows the end-of-archive blocks is part of the diff_id too.
    io::copy(&mut tar, &mut io::sink()).map_err(|source| LayerError::Read {
        layer: layer.clone(),
        source,
    })?;
    let (diff_id, _) = tar.finish();
    let seek = decoder.finish().map_err(seek_error)?;
    Ok((entries, diff_id, seek))
}

fn verify(
    expected: &Expected,
    digest: &Digest,
    size: u64,
    diff_id: &Digest,
) -> Result<(), LayerError> {
    if digest != expected.digest {
        return Err(LayerError::DigestMismatch {
            layer: expected.digest.clone(),
            actual: digest.clone(),
            size,
        });
    }
    if size != expected.size {
        return Err(LayerError::SizeMismatch {
            layer: expected.digest.clone(),
            expected: expected.size,
            actual: size,
        });
    }
    if diff_id != expected.diff_id {
        return Err(LayerError::DiffIdMismatch {
            layer: expected.digest.clone(),
            expected: expected.diff_id.clone(),
            actual: diff_id.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::chunk_sum;

    #[test]
    fn chunk_sums_do_not_depend_on_how_the_stream_is_cut() {
        let data: Vec<u8> = (0..(3 * CHUNK_SIZE + 1000))
            .map(|i| (i % 253) as u8)
            .collect();
        let want: Vec<ChunkSum> = data.chunks(CHUNK_SIZE as usize).map(chunk_sum).collect();
        for cut in [1usize, 4096, 333_333, CHUNK_SIZE as usize, 3 << 20] {
            let mut hasher = ChunkHasher::default();
            data.chunks(cut).for_each(|piece| hasher.update(piece));
            assert_eq!(hasher.finish(), want, "pieces of {cut} bytes");
        }
        assert!(ChunkHasher::default().finish().is_empty());
    }
}
