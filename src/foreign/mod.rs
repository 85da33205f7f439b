//! Readers of the layer indexes other tools publish, so a layer that carries one can be mounted
//! without a pass of our own: the eStargz TOC ([`estargz`]), the zstd:chunked TOC
//! ([`zstd_chunked`]) and SOCI's zTOC ([`ztoc`], found through a SOCI index manifest, [`soci`]).
//!
//! Each reader turns bytes it is handed into typed values and checks them; none fetches
//! anything. Whatever a reader returns still describes a layer that is only trusted as far as
//! the digest that pinned the index (a manifest annotation, the SOCI index's digest): the
//! verifying download of the layer has the last word.
//!
//! Two shapes come out. A zTOC describes the uncompressed tar, like our own index: its
//! entries are [`TarEntry`] values with real tar offsets, and its checkpoints are gzip seek
//! points. The eStargz and zstd:chunked TOCs describe files by the compressed pieces (gzip
//! members, zstd frames) that hold their bytes and say nothing of tar offsets: they give a
//! [`ChunkedIndex`], whose file offsets are in the layer's *content space* (see there).

pub mod estargz;
pub mod soci;
mod toc;
pub mod zstd_chunked;
pub mod ztoc;
#[allow(clippy::all, clippy::pedantic, dead_code, unused_imports, unsafe_code)]
#[rustfmt::skip]
mod ztoc_generated;

use std::io::{self, Read};

use crate::digest::{Digest, HashingReader};
use crate::layer::tar::TarEntry;

pub use toc::TocError;

/// Why a chunk's compressed bytes were not served.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error(
        "chunk at blob offset {offset}: {got} compressed bytes given, its member or frame has {want}"
    )]
    Length { offset: u64, got: u64, want: u64 },
    #[error("chunk at blob offset {offset} does not decode: {source}")]
    Decode {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("chunk at blob offset {offset} decodes to {got} bytes, it should hold {want}")]
    Short { offset: u64, got: u64, want: u64 },
    #[error(
        "chunk at blob offset {offset} decodes to bytes with digest {actual}, the TOC says \
         {expected}: the blob is corrupt or not the one the TOC describes"
    )]
    Digest {
        offset: u64,
        expected: Digest,
        actual: Digest,
    },
}

/// The files of a chunk-indexed layer (eStargz, zstd:chunked) and where their bytes lie.
///
/// Entries keep the TOC's order (the tar's), without the format's own metadata entries. The
/// TOC gives no tar offsets, so a regular file's [`EntryKind::File`] `offset` is its place in
/// the layer's *content space*: every regular file's bytes laid end to end in entry order
/// (hardlinks have none of their own). [`ChunkedIndex::chunks_for`] maps a range of that space
/// to the chunks that hold it, so a tree built from these entries reads through the chunks
/// exactly as it reads other layers through seek points. The verifying pass over the whole
/// layer yields the real tar offsets; its entries equal these but for `offset`.
///
/// [`EntryKind::File`]: crate::layer::tar::EntryKind::File
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedIndex {
    pub entries: Vec<TarEntry>,
    /// Sorted by `content_offset`, contiguous: each regular file's chunks cover its bytes in order.
    pub chunks: Vec<Chunk>,
    /// Where the TOC starts in the blob; every chunk ends at or before it.
    pub toc_offset: u64,
}

/// One independently decodable piece of a file: a gzip member or zstd frame (or a part of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where the chunk's bytes start in the content space (its file's offset + `file_offset`).
    pub content_offset: u64,
    /// Where the chunk starts in its file.
    pub file_offset: u64,
    /// Uncompressed bytes of the chunk.
    pub size: u64,
    /// Where its gzip member or zstd frame starts in the blob.
    pub compressed_offset: u64,
    /// Where the compressed bytes to fetch end: `compressed_offset..compressed_end` holds the
    /// member or frame. Neither format stores it. zstd:chunked: the file's next frame starts
    /// there (or its `endOffset` is there), so the frame ends exactly there. eStargz: the next
    /// chunk starts there (or the TOC), and the member may end earlier: the writer may start
    /// another member for the tar headers in between, which decoding the chunk never reads.
    pub compressed_end: u64,
    /// Uncompressed bytes to skip after decoding from `compressed_offset` (eStargz
    /// `innerOffset`: several small files may share one member); 0 elsewhere.
    pub inner_offset: u64,
    /// sha256 of the chunk's `size` uncompressed bytes: serve them only once they match.
    pub digest: Digest,
    pub kind: ChunkKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    Data,
    /// zstd:chunked `chunkType: zeros`: `size` zero bytes (still stored as a frame).
    Zeros,
}

impl Chunk {
    pub fn content_end(&self) -> u64 {
        self.content_offset + self.size
    }

    /// The compressed bytes to fetch, `compressed_offset..compressed_end`.
    pub fn compressed_len(&self) -> u64 {
        self.compressed_end - self.compressed_offset
    }

    /// The chunk's bytes out of `decoded`, a stream of its decoded member or frame, checked
    /// against its digest.
    fn take_verified(&self, decoded: impl Read, compressed: &[u8]) -> Result<Vec<u8>, ChunkError> {
        let offset = self.compressed_offset;
        let got = compressed.len() as u64;
        if got != self.compressed_len() {
            return Err(ChunkError::Length {
                offset,
                got,
                want: self.compressed_len(),
            });
        }
        let mut decoded = decoded;
        io::copy(&mut (&mut decoded).take(self.inner_offset), &mut io::sink())
            .map_err(|source| ChunkError::Decode { offset, source })?;
        let mut hashing = HashingReader::new(decoded.take(self.size));
        // Capped: `size` comes from the TOC, the bytes from the blob.
        let mut out = Vec::with_capacity(self.size.min(16 << 20) as usize);
        hashing
            .read_to_end(&mut out)
            .map_err(|source| ChunkError::Decode { offset, source })?;
        if (out.len() as u64) < self.size {
            return Err(ChunkError::Short {
                offset,
                got: out.len() as u64,
                want: self.size,
            });
        }
        let (actual, _) = hashing.finish();
        if actual != self.digest {
            return Err(ChunkError::Digest {
                offset,
                expected: self.digest.clone(),
                actual,
            });
        }
        Ok(out)
    }
}

impl ChunkedIndex {
    /// Total size of the content space.
    pub fn content_size(&self) -> u64 {
        self.chunks.last().map_or(0, Chunk::content_end)
    }

    /// The chunks holding content bytes `offset..offset + len`, in order (empty when the
    /// range is).
    pub fn chunks_for(&self, offset: u64, len: u64) -> &[Chunk] {
        let end = offset.saturating_add(len);
        let first = self.chunks.partition_point(|c| c.content_end() <= offset);
        let last = self.chunks.partition_point(|c| c.content_offset < end);
        if len == 0 || first >= last {
            return &[];
        }
        &self.chunks[first..last]
    }
}
