//! The JSON TOC that eStargz and zstd:chunked share (both descend from CRFS's stargz): entries in
//! tar order, each regular file followed by `chunk` entries when its bytes are split.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Chunk, ChunkKind, ChunkedIndex};
use crate::digest::Digest;
use crate::layer::tar::{EntryKind, Mtime, TarEntry, normalize};

#[derive(Debug, thiserror::Error)]
pub enum TocError {
    #[error("the TOC is not valid JSON of the expected shape: {0}")]
    Json(#[source] serde_json::Error),
    #[error("TOC version {0} is not supported (only version 1 is)")]
    Version(i64),
    #[error("TOC entry {index} (`{entry}`): {reason}")]
    Entry {
        index: usize,
        entry: String,
        reason: String,
    },
    #[error("TOC entry {index} (`{entry}`): its name climbs out of the root")]
    Climbs { index: usize, entry: String },
    #[error("TOC entry {index} is a chunk that follows no regular file")]
    OrphanChunk { index: usize },
    #[error("file `{entry}`: its chunks do not cover its {size} bytes in order ({reason})")]
    Chunks {
        entry: String,
        size: u64,
        reason: String,
    },
    #[error(
        "file `{entry}`: a chunk at blob offset {offset} lies outside the layer's data (which ends \
         at the TOC, offset {toc_offset})"
    )]
    ChunkPastToc {
        entry: String,
        offset: u64,
        toc_offset: u64,
    },
}

/// The TOC as both formats serialize it (fields either may omit default to zero or empty).
#[derive(Debug, Deserialize)]
pub(super) struct Toc {
    pub version: i64,
    #[serde(default)]
    pub entries: Vec<RawEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct RawEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    size: u64,
    modtime: String,
    link_name: String,
    mode: u64,
    uid: u64,
    gid: u64,
    dev_major: u64,
    dev_minor: u64,
    /// Values are base64 in both formats.
    xattrs: BTreeMap<String, String>,
    digest: String,
    offset: u64,
    /// zstd:chunked: where the file's last frame ends.
    end_offset: u64,
    /// eStargz: where the chunk starts in what its member decodes to.
    inner_offset: u64,
    chunk_offset: u64,
    chunk_size: u64,
    chunk_digest: String,
    /// zstd:chunked: empty for data, `zeros` for a run of zeros.
    chunk_type: String,
}

/// What differs between the two formats when their TOCs are read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    /// A chunk's gzip member ends where the next one starts; landmark entries are metadata.
    Estargz,
    /// A chunk's frame ends where the file's next one starts, the last at `endOffset`.
    ZstdChunked,
}

/// Names eStargz gives to its landmark files, which are not part of the layer's tree.
pub(super) const PREFETCH_LANDMARK: &[u8] = b".prefetch.landmark";
pub(super) const NO_PREFETCH_LANDMARK: &[u8] = b".no.prefetch.landmark";

/// The index a TOC describes, and where eStargz's landmarks stood.
pub(super) struct Built {
    pub index: ChunkedIndex,
    /// `.prefetch.landmark`, when there is one: how many entries (of `index.entries`) come
    /// before it, and its blob offset.
    pub prefetch_landmark: Option<(usize, u64)>,
    pub no_prefetch_landmark: bool,
}

pub(super) fn parse_json(json: &[u8]) -> Result<Toc, TocError> {
    let toc: Toc = serde_json::from_slice(json).map_err(TocError::Json)?;
    if toc.version != 1 {
        return Err(TocError::Version(toc.version));
    }
    Ok(toc)
}

/// A regular file whose chunk entries are still being read.
struct OpenFile {
    name: String,
    size: u64,
    content_offset: u64,
    end_offset: u64,
    whole_digest: String,
    /// Dropped from the index once checked (an eStargz landmark).
    keep: bool,
    pieces: Vec<RawEntry>,
}

pub(super) fn build(toc: Toc, flavor: Flavor, toc_offset: u64) -> Result<Built, TocError> {
    // eStargz members end where the next one starts: at the next data offset, or the TOC.
    let mut boundaries: Vec<u64> = toc
        .entries
        .iter()
        .filter(|e| e.kind == "chunk" || (e.kind == "reg" && e.size > 0))
        .map(|e| e.offset)
        .chain([toc_offset])
        .collect();
    boundaries.sort_unstable();
    boundaries.dedup();

    let mut entries = Vec::with_capacity(toc.entries.len());
    let mut chunks = Vec::new();
    let mut open: Option<OpenFile> = None;
    let mut content = 0u64;
    let mut prefetch_landmark = None;
    let mut no_prefetch_landmark = false;
    for (index, raw) in toc.entries.into_iter().enumerate() {
        if raw.kind == "chunk" {
            open.as_mut()
                .ok_or(TocError::OrphanChunk { index })?
                .pieces
                .push(raw);
            continue;
        }
        if let Some(file) = open.take() {
            close(file, flavor, &boundaries, toc_offset, &mut chunks)?;
        }
        let path = entry_path(index, &raw.name)?;
        let landmark = flavor == Flavor::Estargz
            && (path == PREFETCH_LANDMARK || path == NO_PREFETCH_LANDMARK);
        if landmark {
            if path == PREFETCH_LANDMARK {
                prefetch_landmark.get_or_insert((entries.len(), raw.offset));
            } else {
                no_prefetch_landmark = true;
            }
        }
        let entry = convert(index, path, &raw, content)?;
        if let EntryKind::File { size, .. } = entry.kind {
            let content_offset = content;
            if !landmark {
                content = content.checked_add(size).ok_or_else(|| TocError::Entry {
                    index,
                    entry: raw.name.clone(),
                    reason: "file sizes overflow".into(),
                })?;
            }
            if size > 0 {
                open = Some(OpenFile {
                    name: raw.name.clone(),
                    size,
                    content_offset,
                    end_offset: raw.end_offset,
                    whole_digest: raw.digest.clone(),
                    keep: !landmark,
                    pieces: vec![raw],
                });
            }
        }
        if !landmark {
            entries.push(entry);
        }
    }
    if let Some(file) = open.take() {
        close(file, flavor, &boundaries, toc_offset, &mut chunks)?;
    }
    Ok(Built {
        index: ChunkedIndex {
            entries,
            chunks,
            toc_offset,
        },
        prefetch_landmark,
        no_prefetch_landmark,
    })
}

/// Checks that a file's chunk entries cover its bytes in order and adds them to `out`.
fn close(
    file: OpenFile,
    flavor: Flavor,
    boundaries: &[u64],
    toc_offset: u64,
    out: &mut Vec<Chunk>,
) -> Result<(), TocError> {
    let bad = |reason: String| TocError::Chunks {
        entry: file.name.clone(),
        size: file.size,
        reason,
    };
    let count = file.pieces.len();
    let mut covered = 0u64;
    let mut made = Vec::with_capacity(count);
    for (i, piece) in file.pieces.iter().enumerate() {
        if piece.chunk_offset != covered {
            return Err(bad(format!(
                "chunk {i} starts at {}, the chunks before end at {covered}",
                piece.chunk_offset
            )));
        }
        // A chunk size of 0 means "to the end of the file".
        let size = match piece.chunk_size {
            0 => file.size - covered,
            n if n > file.size - covered => {
                return Err(bad(format!("chunk {i} of {n} bytes runs past the end")));
            }
            n => n,
        };
        if size == 0 {
            return Err(bad(format!("chunk {i} is empty")));
        }
        covered += size;
        if piece.offset == 0 || piece.offset >= toc_offset {
            return Err(TocError::ChunkPastToc {
                entry: file.name.clone(),
                offset: piece.offset,
                toc_offset,
            });
        }
        let compressed_end = match flavor {
            Flavor::Estargz => boundaries
                .get(boundaries.partition_point(|&b| b <= piece.offset))
                .copied()
                .unwrap_or(toc_offset),
            Flavor::ZstdChunked => file
                .pieces
                .get(i + 1)
                .map_or(file.end_offset, |next| next.offset),
        };
        if compressed_end <= piece.offset || compressed_end > toc_offset {
            return Err(bad(format!(
                "chunk {i}'s compressed bytes {}..{compressed_end} are not within the data",
                piece.offset
            )));
        }
        let digest_text = match (&*piece.chunk_digest, count) {
            ("", 1) => &file.whole_digest,
            (text, _) => text,
        };
        let digest = digest_text
            .parse::<Digest>()
            .map_err(|e| bad(format!("chunk {i} has no usable digest: {e}")))?;
        let kind = match &*piece.chunk_type {
            "" => ChunkKind::Data,
            "zeros" => ChunkKind::Zeros,
            other => return Err(bad(format!("chunk {i} has unknown chunk type {other:?}"))),
        };
        made.push(Chunk {
            content_offset: file.content_offset + piece.chunk_offset,
            file_offset: piece.chunk_offset,
            size,
            compressed_offset: piece.offset,
            compressed_end,
            inner_offset: piece.inner_offset,
            digest,
            kind,
        });
    }
    if covered != file.size {
        return Err(bad(format!("they end at {covered}")));
    }
    if file.keep {
        out.extend(made);
    }
    Ok(())
}

fn entry_path(index: usize, name: &str) -> Result<Vec<u8>, TocError> {
    if name.is_empty() || name.contains('\0') {
        return Err(TocError::Entry {
            index,
            entry: name.to_string(),
            reason: "empty name or a NUL byte in it".into(),
        });
    }
    normalize(name.as_bytes()).ok_or_else(|| TocError::Climbs {
        index,
        entry: name.to_string(),
    })
}

/// The entry as a tar header would say it; a regular file sits at `content` in content space.
fn convert(
    index: usize,
    path: Vec<u8>,
    raw: &RawEntry,
    content: u64,
) -> Result<TarEntry, TocError> {
    let bad = |reason: String| TocError::Entry {
        index,
        entry: raw.name.clone(),
        reason,
    };
    let small = |what: &str, value: u64| {
        u32::try_from(value).map_err(|_| bad(format!("{what} {value} is out of range")))
    };
    let link = || {
        if raw.link_name.is_empty() || raw.link_name.contains('\0') {
            return Err(bad("empty link target or a NUL byte in it".into()));
        }
        Ok(raw.link_name.as_bytes().to_vec())
    };
    let kind = match &*raw.kind {
        "reg" => EntryKind::File {
            offset: content,
            size: raw.size,
        },
        "dir" => EntryKind::Dir,
        "symlink" => EntryKind::Symlink { target: link()? },
        "hardlink" => EntryKind::Hardlink {
            target: normalize(&link()?)
                .ok_or_else(|| bad("its hardlink target climbs out of the root".into()))?,
        },
        "char" => EntryKind::Char {
            major: small("device major", raw.dev_major)?,
            minor: small("device minor", raw.dev_minor)?,
        },
        "block" => EntryKind::Block {
            major: small("device major", raw.dev_major)?,
            minor: small("device minor", raw.dev_minor)?,
        },
        "fifo" => EntryKind::Fifo,
        other => return Err(bad(format!("unknown entry type {other:?}"))),
    };
    if raw.size != 0 && !matches!(kind, EntryKind::File { .. }) {
        return Err(bad(format!("a {} entry with {} bytes", raw.kind, raw.size)));
    }
    let mut xattrs = BTreeMap::new();
    for (key, value) in &raw.xattrs {
        let bytes = STANDARD
            .decode(value)
            .map_err(|e| bad(format!("xattr {key:?} is not base64: {e}")))?;
        xattrs.insert(key.clone(), bytes);
    }
    Ok(TarEntry {
        path,
        kind,
        mode: (raw.mode & 0o7777) as u32,
        uid: small("uid", raw.uid)?,
        gid: small("gid", raw.gid)?,
        mtime: parse_time(&raw.modtime).map_err(bad)?,
        xattrs,
    })
}

/// An RFC 3339 time as Go writes it; empty means unknown, taken as the epoch.
pub(super) fn parse_time(text: &str) -> Result<Mtime, String> {
    if text.is_empty() {
        return Ok(Mtime::default());
    }
    let time = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("modification time {text:?} is not RFC 3339: {e}"))?;
    Ok(Mtime {
        sec: time.unix_timestamp(),
        nsec: time.nanosecond(),
    })
}

#[cfg(test)]
#[path = "toc_tests.rs"]
mod tests;
