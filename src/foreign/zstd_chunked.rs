//! zstd:chunked (containers/storage, written by podman, buildah and skopeo): a zstd layer in which
//! every regular file's bytes start zstd frames of their own — split further at content-defined
//! boundaries, runs of zeros apart — followed by skippable frames that a plain zstd decoder
//! steps over: the TOC (zstd-compressed JSON), the tar-split data, and a footer.
//!
//! The TOC's position and the sha256 of its compressed bytes come from layer annotations
//! ([`position_from_annotations`]; both the current and the older spelling of the keys), or,
//! without a checksum, from the footer ([`footer`]). [`parse_toc`] checks and reads the TOC,
//! [`decode_chunk`] one chunk's frame.

use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;

use super::toc::{self, Flavor, TocError};
use super::{Chunk, ChunkError, ChunkedIndex};
use crate::digest::{Digest, DigestError};

/// `offset:length:uncompressedLength:type` of the TOC, written by current containers/storage.
pub const POSITION_ANNOTATION: &str = "io.github.containers.zstd-chunked.manifest-position";
/// sha256 of the TOC's compressed bytes.
pub const CHECKSUM_ANNOTATION: &str = "io.github.containers.zstd-chunked.manifest-checksum";
/// The keys older writers use (the skopeo of Debian 12, among others).
pub const LEGACY_POSITION_ANNOTATION: &str = "io.containers.zstd-chunked.manifest-position";
pub const LEGACY_CHECKSUM_ANNOTATION: &str = "io.containers.zstd-chunked.manifest-checksum";

/// Header of a zstd skippable frame: magic, then the frame's size (little-endian u32).
const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
const SKIPPABLE_HEADER: u64 = 8;
/// Footer data of current writers (64 bytes, with the tar-split position) and older ones (40).
const FOOTER_MAGIC: &[u8; 8] = b"GNUlInUx";
const FOOTER_DATA: u64 = 64;
const LEGACY_FOOTER_MAGIC: &[u8; 8] = b"GnUlInUx";
const LEGACY_FOOTER_DATA: u64 = 40;
/// The only TOC type: a CRFS-style JSON TOC.
const MANIFEST_TYPE_CRFS: u64 = 1;
/// Largest TOC JSON accepted (the position claims a length before anything is allocated).
const MAX_TOC: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ZstdChunkedError {
    #[error("layer annotation {key}: {reason}")]
    Annotation { key: &'static str, reason: String },
    #[error("not a zstd:chunked layer: no zstd:chunked footer at its end ({0})")]
    NoFooter(String),
    #[error(
        "the zstd:chunked TOC position {offset}+{length} does not fit a layer of {blob_size} bytes"
    )]
    OutOfRange {
        offset: u64,
        length: u64,
        blob_size: u64,
    },
    #[error("the zstd:chunked TOC is of type {0}, only type 1 (JSON) is known")]
    ManifestType(u64),
    #[error("the zstd:chunked TOC frame: {0}")]
    Frame(String),
    #[error(
        "the zstd:chunked TOC has checksum {actual}, the layer's annotation says {expected}: the \
         blob is not the layer the manifest names"
    )]
    ChecksumMismatch { expected: Digest, actual: Digest },
    #[error("the zstd:chunked TOC does not decompress: {0}")]
    Decompress(#[source] std::io::Error),
    #[error("the zstd:chunked TOC decompresses to {got} bytes, its position says {want}")]
    UncompressedLength { got: u64, want: u64 },
    #[error("the zstd:chunked TOC: {0}")]
    Toc(#[from] TocError),
}

/// Where the TOC's compressed bytes are, and what they hash to when a trusted source says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocPosition {
    /// Blob offset of the compressed TOC (just after its skippable frame's header).
    pub offset: u64,
    pub length: u64,
    pub uncompressed_length: u64,
    /// From the layer annotations; `None` when the position came from the footer, which the
    /// blob itself holds and so cannot vouch for the TOC.
    pub checksum: Option<Digest>,
}

impl TocPosition {
    /// The TOC's skippable frame (header included): the bytes [`parse_toc`] takes.
    pub fn frame_range(&self) -> Range<u64> {
        self.offset - SKIPPABLE_HEADER..self.offset + self.length
    }

    fn check(&self, blob_size: u64) -> Result<(), ZstdChunkedError> {
        let fits = self.offset >= SKIPPABLE_HEADER
            && self
                .offset
                .checked_add(self.length)
                .is_some_and(|end| end <= blob_size);
        if !fits {
            return Err(ZstdChunkedError::OutOfRange {
                offset: self.offset,
                length: self.length,
                blob_size,
            });
        }
        Ok(())
    }
}

/// What a layer's zstd:chunked TOC says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZstdChunked {
    pub index: ChunkedIndex,
    /// sha256 of the compressed TOC, what the checksum annotation pins.
    pub toc_digest: Digest,
}

/// The TOC's position from a layer descriptor's annotations (current keys first, then the older
/// ones); `None` when neither is there. A layer of `blob_size` bytes must hold it.
pub fn position_from_annotations(
    annotations: &HashMap<String, String>,
    blob_size: u64,
) -> Result<Option<TocPosition>, ZstdChunkedError> {
    let (position_key, checksum_key) = if annotations.contains_key(POSITION_ANNOTATION) {
        (POSITION_ANNOTATION, CHECKSUM_ANNOTATION)
    } else if annotations.contains_key(LEGACY_POSITION_ANNOTATION) {
        (LEGACY_POSITION_ANNOTATION, LEGACY_CHECKSUM_ANNOTATION)
    } else {
        return Ok(None);
    };
    let bad = |key, reason: String| ZstdChunkedError::Annotation { key, reason };
    let text = &annotations[position_key];
    let fields: Vec<u64> = text
        .split(':')
        .map(|f| f.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(position_key, format!("{text:?}: {e}")))?;
    let &[offset, length, uncompressed_length, kind] = fields.as_slice() else {
        return Err(bad(
            position_key,
            format!("{text:?} is not offset:length:uncompressedLength:type"),
        ));
    };
    if kind != MANIFEST_TYPE_CRFS {
        return Err(ZstdChunkedError::ManifestType(kind));
    }
    let checksum = annotations
        .get(checksum_key)
        .ok_or_else(|| bad(checksum_key, "missing beside the position".into()))?
        .parse()
        .map_err(|e: DigestError| bad(checksum_key, e.to_string()))?;
    let position = TocPosition {
        offset,
        length,
        uncompressed_length,
        checksum: Some(checksum),
    };
    position.check(blob_size)?;
    Ok(Some(position))
}

/// The TOC's position from the footer, in `tail`: the last bytes of a blob of `blob_size`
/// bytes (at least 72, or 48 for older writers).
pub fn footer(tail: &[u8], blob_size: u64) -> Result<TocPosition, ZstdChunkedError> {
    let no = |reason: &str| ZstdChunkedError::NoFooter(reason.into());
    let magic = tail
        .len()
        .checked_sub(8)
        .map(|at| &tail[at..])
        .ok_or_else(|| no("the blob is shorter than a footer"))?;
    let data_len = if magic == FOOTER_MAGIC {
        FOOTER_DATA
    } else if magic == LEGACY_FOOTER_MAGIC {
        LEGACY_FOOTER_DATA
    } else {
        return Err(no("no GNUlInUx magic in the last 8 bytes"));
    };
    let frame_len = SKIPPABLE_HEADER + data_len;
    let frame = tail
        .len()
        .checked_sub(frame_len as usize)
        .map(|at| &tail[at..])
        .ok_or_else(|| no("the blob is shorter than its footer"))?;
    let data = skippable_data(frame).map_err(|e| no(&e))?;
    if data.len() as u64 != data_len {
        return Err(no("the footer frame has the wrong size"));
    }
    let word = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    let (offset, length, uncompressed_length, kind) = (word(0), word(1), word(2), word(3));
    if kind != MANIFEST_TYPE_CRFS {
        return Err(ZstdChunkedError::ManifestType(kind));
    }
    let position = TocPosition {
        offset,
        length,
        uncompressed_length,
        checksum: None,
    };
    position.check(blob_size.saturating_sub(frame_len))?;
    Ok(position)
}

/// The data of the skippable frame that is all of `frame`.
fn skippable_data(frame: &[u8]) -> Result<&[u8], String> {
    let (Some(magic), Some(size), Some(data)) = (frame.get(..4), frame.get(4..8), frame.get(8..))
    else {
        return Err("shorter than a skippable frame header".into());
    };
    if magic != SKIPPABLE_MAGIC {
        return Err("not a zstd skippable frame".into());
    }
    let size = u32::from_le_bytes(size.try_into().unwrap_or_default());
    if u64::from(size) != data.len() as u64 {
        return Err(format!("it says {size} bytes, {} follow", data.len()));
    }
    Ok(data)
}

/// Checks and parses the TOC from its skippable frame (the bytes [`TocPosition::frame_range`]
/// names).
pub fn parse_toc(frame: &[u8], position: &TocPosition) -> Result<ZstdChunked, ZstdChunkedError> {
    let data = skippable_data(frame).map_err(ZstdChunkedError::Frame)?;
    if data.len() as u64 != position.length {
        return Err(ZstdChunkedError::Frame(format!(
            "{} bytes, the position says {}",
            data.len(),
            position.length
        )));
    }
    let toc_digest = Digest::of(data);
    if let Some(expected) = &position.checksum
        && *expected != toc_digest
    {
        return Err(ZstdChunkedError::ChecksumMismatch {
            expected: expected.clone(),
            actual: toc_digest,
        });
    }
    let want = position.uncompressed_length;
    if want > MAX_TOC {
        return Err(ZstdChunkedError::UncompressedLength { got: 0, want });
    }
    let mut json = Vec::new();
    zstd::stream::read::Decoder::new(data)
        .map_err(ZstdChunkedError::Decompress)?
        .take(want + 1)
        .read_to_end(&mut json)
        .map_err(ZstdChunkedError::Decompress)?;
    if json.len() as u64 != want {
        return Err(ZstdChunkedError::UncompressedLength {
            got: json.len() as u64,
            want,
        });
    }
    let toc_offset = position.offset - SKIPPABLE_HEADER;
    let built = toc::build(toc::parse_json(&json)?, Flavor::ZstdChunked, toc_offset)?;
    Ok(ZstdChunked {
        index: built.index,
        toc_digest,
    })
}

/// The bytes of `chunk` from its zstd frame (`compressed`: the blob's bytes
/// `chunk.compressed_offset..chunk.compressed_end`), checked against its digest.
pub fn decode_chunk(chunk: &Chunk, compressed: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let decoder =
        zstd::stream::read::Decoder::new(compressed).map_err(|source| ChunkError::Decode {
            offset: chunk.compressed_offset,
            source,
        })?;
    chunk.take_verified(decoder, compressed)
}
