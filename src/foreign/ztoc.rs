//! SOCI zTOCs: a flatbuffer (schema `ztoc.fbs`, from soci-snapshotter) that indexes an unmodified
//! gzip layer: every tar entry with the uncompressed offset of its data, and the zinfo — gzip
//! checkpoints in zlib's `zran` layout, each with the 32 KiB window a raw inflate needs to start
//! there — plus the sha256 of each span's compressed bytes.
//!
//! zinfo layout (little-endian): `i32 count`, `i64 span_size`, then per checkpoint `i64 in`,
//! `i64 out`, `u8 bits`, 32768 window bytes. zinfo version 1 (the first SOCI releases) leaves
//! out checkpoint 0, which then is `in` 10 (a gzip header without optional fields), `out` 0, no
//! bits, a zero window: the blob's length says which version it is.

use std::collections::BTreeMap;
use std::ops::Range;

use planus::ReadAsRoot;

use super::toc::parse_time;
use super::ztoc_generated::ztoc as fb;
use crate::digest::Digest;
use crate::layer::tar::{EntryKind, TarEntry, normalize};

/// Bytes of history a gzip checkpoint carries.
pub const WINDOW_SIZE: usize = 32 * 1024;
const HEADER_SIZE: u64 = 4 + 8;
const CHECKPOINT_SIZE: u64 = 8 + 8 + 1 + WINDOW_SIZE as u64;
/// Where zinfo version 1's implied first checkpoint starts: after a 10-byte gzip header.
const V1_FIRST_IN: u64 = 10;
const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

#[derive(Debug, thiserror::Error)]
pub enum ZtocError {
    #[error("not a zTOC flatbuffer: {0}")]
    Flatbuffer(String),
    #[error("zTOC field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("zTOC entry {index} (`{entry}`): {reason}")]
    Entry {
        index: usize,
        entry: String,
        reason: String,
    },
    #[error("zTOC checkpoints: {0}")]
    Checkpoints(String),
}

impl From<planus::Error> for ZtocError {
    fn from(e: planus::Error) -> Self {
        ZtocError::Flatbuffer(e.to_string())
    }
}

/// What a zTOC says about one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ztoc {
    /// `major.minor`, e.g. `0.9`.
    pub version: String,
    pub build_tool: String,
    /// Size of the layer blob the zTOC was built from.
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    /// In tar order; a regular file's `offset` is that of its data in the uncompressed tar.
    pub entries: Vec<TarEntry>,
    pub compression: ZtocCompression,
    /// Uncompressed bytes the checkpoints were laid apart by (at least).
    pub span_size: u64,
    /// sha256 of each span's compressed bytes ([`Ztoc::span_range`]).
    pub span_digests: Vec<Digest>,
    /// One per span, sorted; empty for an uncompressed layer.
    pub checkpoints: Vec<Checkpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZtocCompression {
    Gzip,
    Uncompressed,
}

/// A place in the gzip stream where a raw inflate can start: exactly what a gzip
/// [`SeekPoint`](crate::layer::seek::SeekPoint) holds.
#[derive(Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// zran `in`: the first compressed byte wholly after the point.
    pub compressed_offset: u64,
    /// zran `out`: uncompressed bytes before the point.
    pub uncompressed_offset: u64,
    /// Bits of byte `compressed_offset - 1` that belong after the point (0..=7).
    pub bits: u8,
    /// The [`WINDOW_SIZE`] bytes of output before the point, zero-filled before the stream's start.
    pub window: Vec<u8>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("compressed_offset", &self.compressed_offset)
            .field("uncompressed_offset", &self.uncompressed_offset)
            .field("bits", &self.bits)
            .finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// The first compressed byte a decoder starting here reads.
    pub fn fetch_start(&self) -> u64 {
        self.compressed_offset - u64::from(self.bits > 0)
    }
}

impl Ztoc {
    /// The compressed bytes of span `span`, whose sha256 is `span_digests[span]`: from its
    /// checkpoint to the next one (or the blob's end).
    pub fn span_range(&self, span: usize) -> Option<Range<u64>> {
        let start = self.checkpoints.get(span)?.fetch_start();
        let end = self
            .checkpoints
            .get(span + 1)
            .map_or(self.compressed_size, |c| c.compressed_offset);
        Some(start..end)
    }

    /// The span holding uncompressed offset `offset`.
    pub fn span_for(&self, offset: u64) -> Option<usize> {
        self.checkpoints
            .partition_point(|c| c.uncompressed_offset <= offset)
            .checked_sub(1)
    }
}

/// Parses and checks a zTOC blob. Bytes after the flatbuffer (SOCI's prefetch list, behind
/// `---SOCI-PREFETCH---`) are not read.
pub fn parse(bytes: &[u8]) -> Result<Ztoc, ZtocError> {
    let root = fb::ZtocRef::read_as_root(bytes)?;
    let size = |field: &'static str, value: i64| {
        u64::try_from(value).map_err(|_| ZtocError::Field {
            field,
            reason: format!("{value} is negative"),
        })
    };
    let compressed_size = size("compressed_archive_size", root.compressed_archive_size()?)?;
    let uncompressed_size = size(
        "uncompressed_archive_size",
        root.uncompressed_archive_size()?,
    )?;
    let mut entries = Vec::new();
    if let Some(toc) = root.toc()?
        && let Some(metadata) = toc.metadata()?
    {
        for (index, item) in metadata.iter().enumerate() {
            entries.push(convert(index, &item?, uncompressed_size)?);
        }
    }
    let info = root.compression_info()?.ok_or(ZtocError::Field {
        field: "compression_info",
        reason: "missing".into(),
    })?;
    let compression = match info.compression_algorithm()? {
        fb::CompressionAlgorithm::Gzip => ZtocCompression::Gzip,
        fb::CompressionAlgorithm::Uncompressed => ZtocCompression::Uncompressed,
    };
    let mut span_digests = Vec::new();
    for text in info.span_digests()?.into_iter().flatten() {
        let text = text?;
        span_digests.push(text.parse().map_err(|e| ZtocError::Field {
            field: "span_digests",
            reason: format!("{text:?}: {e}"),
        })?);
    }
    let spans = i64::from(info.max_span_id()?) + 1;
    if usize::try_from(spans).ok() != Some(span_digests.len()) {
        return Err(ZtocError::Field {
            field: "span_digests",
            reason: format!("{} digests for {spans} spans", span_digests.len()),
        });
    }
    let (span_size, checkpoints) = match compression {
        ZtocCompression::Gzip => {
            let blob = info.checkpoints()?.unwrap_or_default();
            let (span_size, checkpoints) = parse_zinfo(blob)?;
            check_checkpoints(&checkpoints, compressed_size, uncompressed_size)?;
            if checkpoints.len() != span_digests.len() {
                return Err(ZtocError::Checkpoints(format!(
                    "{} checkpoints for {} spans",
                    checkpoints.len(),
                    span_digests.len()
                )));
            }
            (span_size, checkpoints)
        }
        // Blob offsets are uncompressed offsets: there is nothing to seek with.
        ZtocCompression::Uncompressed => (0, Vec::new()),
    };
    Ok(Ztoc {
        version: root.version()?.unwrap_or_default().to_string(),
        build_tool: root
            .build_tool_identifier()?
            .unwrap_or_default()
            .to_string(),
        compressed_size,
        uncompressed_size,
        entries,
        compression,
        span_size,
        span_digests,
        checkpoints,
    })
}

fn convert(
    index: usize,
    item: &fb::FileMetadataRef<'_>,
    uncompressed_size: u64,
) -> Result<TarEntry, ZtocError> {
    let name = item.name()?.unwrap_or_default();
    let bad = |reason: String| ZtocError::Entry {
        index,
        entry: String::from_utf8_lossy(name).into_owned(),
        reason,
    };
    let small = |what: &str, value: i64| {
        u32::try_from(value).map_err(|_| bad(format!("{what} {value} is out of range")))
    };
    if name.is_empty() || name.contains(&0) {
        return Err(bad("empty name or a NUL byte in it".into()));
    }
    let path = normalize(name).ok_or_else(|| bad("its name climbs out of the root".into()))?;
    let link = || {
        let target = item.linkname()?.unwrap_or_default();
        if target.is_empty() || target.contains(&0) {
            return Err(bad("empty link target or a NUL byte in it".into()));
        }
        Ok(target.to_vec())
    };
    let offset = item.uncompressed_offset()?;
    let size = item.uncompressed_size()?;
    let kind = match item.type_()?.unwrap_or_default() {
        "reg" => {
            let (Ok(offset), Ok(size)) = (u64::try_from(offset), u64::try_from(size)) else {
                return Err(bad(format!("negative offset {offset} or size {size}")));
            };
            if offset
                .checked_add(size)
                .is_none_or(|end| end > uncompressed_size)
            {
                return Err(bad(format!(
                    "its data {offset}+{size} lies past the layer's end {uncompressed_size}"
                )));
            }
            EntryKind::File { offset, size }
        }
        "dir" => EntryKind::Dir,
        "symlink" => EntryKind::Symlink { target: link()? },
        "hardlink" => EntryKind::Hardlink {
            target: normalize(&link()?)
                .ok_or_else(|| bad("its hardlink target climbs out of the root".into()))?,
        },
        "char" => EntryKind::Char {
            major: small("device major", item.devmajor()?)?,
            minor: small("device minor", item.devminor()?)?,
        },
        "block" => EntryKind::Block {
            major: small("device major", item.devmajor()?)?,
            minor: small("device minor", item.devminor()?)?,
        },
        "fifo" => EntryKind::Fifo,
        other => return Err(bad(format!("unknown entry type {other:?}"))),
    };
    if size != 0 && !matches!(kind, EntryKind::File { .. }) {
        return Err(bad(format!("a non-file entry with {size} bytes")));
    }
    // The zTOC keeps every PAX record of the entry; the xattrs are the SCHILY.xattr ones.
    let mut xattrs = BTreeMap::new();
    for record in item.xattrs()?.into_iter().flatten() {
        let record = record?;
        let key = record.key()?.unwrap_or_default();
        if let Some(name) = key.strip_prefix(XATTR_PREFIX) {
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| bad("an xattr name is not UTF-8".into()))?;
            xattrs.insert(name, record.value()?.unwrap_or_default().to_vec());
        }
    }
    let mode = item.mode()?;
    Ok(TarEntry {
        path,
        kind,
        mode: (mode & 0o7777) as u32,
        uid: item.uid()?,
        gid: item.gid()?,
        mtime: parse_time(item.mod_time()?.unwrap_or_default()).map_err(bad)?,
        xattrs,
    })
}

/// The span size and checkpoints of a gzip zinfo blob (either version).
fn parse_zinfo(blob: &[u8]) -> Result<(u64, Vec<Checkpoint>), ZtocError> {
    let bad = |reason: String| ZtocError::Checkpoints(reason);
    let (Some(count), Some(span)) = (blob.get(0..4), blob.get(4..12)) else {
        return Err(bad(format!(
            "{} bytes, shorter than the header",
            blob.len()
        )));
    };
    let count = i32::from_le_bytes(count.try_into().unwrap_or_default());
    let span = i64::from_le_bytes(span.try_into().unwrap_or_default());
    let count = u64::try_from(count)
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| bad(format!("count {count}")))?;
    let span_size = u64::try_from(span).map_err(|_| bad(format!("span size {span}")))?;
    let len = blob.len() as u64;
    // Lengths are checked before anything is allocated: a count cannot make us reserve memory.
    let stored = if len == HEADER_SIZE + count * CHECKPOINT_SIZE {
        count
    } else if len == HEADER_SIZE + (count - 1) * CHECKPOINT_SIZE {
        count - 1
    } else {
        return Err(bad(format!(
            "{len} bytes do not hold {count} checkpoints (version 2) or {} (version 1)",
            count - 1
        )));
    };
    let mut checkpoints = Vec::with_capacity(count as usize);
    if stored < count {
        checkpoints.push(Checkpoint {
            compressed_offset: V1_FIRST_IN,
            uncompressed_offset: 0,
            bits: 0,
            window: vec![0; WINDOW_SIZE],
        });
    }
    for record in blob[HEADER_SIZE as usize..].chunks_exact(CHECKPOINT_SIZE as usize) {
        let number = |at: usize, what: &str| {
            let raw = i64::from_le_bytes(record[at..at + 8].try_into().unwrap_or_default());
            u64::try_from(raw).map_err(|_| bad(format!("negative {what} offset {raw}")))
        };
        checkpoints.push(Checkpoint {
            compressed_offset: number(0, "compressed")?,
            uncompressed_offset: number(8, "uncompressed")?,
            bits: record[16],
            window: record[17..].to_vec(),
        });
    }
    Ok((span_size, checkpoints))
}

fn check_checkpoints(
    checkpoints: &[Checkpoint],
    compressed_size: u64,
    uncompressed_size: u64,
) -> Result<(), ZtocError> {
    let mut previous: Option<&Checkpoint> = None;
    for (i, c) in checkpoints.iter().enumerate() {
        let bad = |reason: String| ZtocError::Checkpoints(format!("checkpoint {i}: {reason}"));
        if i == 0 && c.uncompressed_offset != 0 {
            return Err(bad("the first is not at uncompressed offset 0".into()));
        }
        if c.bits > 7 || (c.bits > 0 && c.compressed_offset == 0) {
            return Err(bad(format!(
                "{} pending bits at offset {}",
                c.bits, c.compressed_offset
            )));
        }
        if c.compressed_offset > compressed_size || c.uncompressed_offset > uncompressed_size {
            return Err(bad(format!(
                "offsets {}/{} lie past the layer's end {compressed_size}/{uncompressed_size}",
                c.compressed_offset, c.uncompressed_offset
            )));
        }
        if let Some(p) = previous
            && (p.compressed_offset >= c.compressed_offset
                || p.uncompressed_offset >= c.uncompressed_offset)
        {
            return Err(bad("out of order".into()));
        }
        previous = Some(c);
    }
    Ok(())
}
