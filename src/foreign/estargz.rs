//! eStargz: a gzip layer in which every regular file's bytes (and each chunk of a big file)
//! start a gzip member of their own, followed by the TOC — a tar entry `stargz.index.json` in
//! its own member — and a footer, an empty gzip member whose extra field holds the TOC's offset.
//! The layer still inflates to an ordinary tar (TOC and landmark entries included).
//!
//! A mount reads the footer ([`footer`]) from the blob's last bytes, then the TOC member
//! ([`Footer::toc_range`]) and checks it ([`parse_toc`]) against the layer descriptor's
//! [`TOC_DIGEST_ANNOTATION`]; each chunk's member is then checked as it is decoded
//! ([`decode_chunk`]).

use std::io::Read;
use std::ops::Range;

use flate2::read::GzDecoder;

use super::toc::{self, Flavor, TocError};
use super::{Chunk, ChunkError, ChunkedIndex};
use crate::digest::Digest;
use crate::layer::tar::{self, EntryKind, TarError};

/// Layer annotation: the sha256 of the TOC JSON (the bytes of `stargz.index.json`).
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The footer eStargz writes: a gzip header with a 26-byte extra field (subfield `SG`).
pub const FOOTER_SIZE: u64 = 51;
/// The footer of the original stargz: the 22-byte extra field without a subfield header.
pub const LEGACY_FOOTER_SIZE: u64 = 47;
const TOC_NAME: &[u8] = b"stargz.index.json";
/// Largest TOC JSON accepted; a layer of a million files has a TOC of a few hundred MiB.
const MAX_TOC: u64 = 1 << 30;
/// `%016x` and the magic after it.
const OFFSET_DIGITS: usize = 16;
const MAGIC: &[u8] = b"STARGZ";

#[derive(Debug, thiserror::Error)]
pub enum EstargzError {
    #[error("not an eStargz layer: no eStargz footer in its last {FOOTER_SIZE} bytes ({0})")]
    NoFooter(String),
    #[error(
        "the eStargz footer puts the TOC at blob offset {toc_offset}, not before the footer \
         (offset {footer_offset})"
    )]
    TocPastFooter { toc_offset: u64, footer_offset: u64 },
    #[error("the eStargz TOC member does not inflate: {0}")]
    Inflate(#[source] std::io::Error),
    #[error("the eStargz TOC inflates to more than {MAX_TOC} bytes")]
    TooLarge,
    #[error("the eStargz TOC member holds no tar entry `stargz.index.json`: {0}")]
    NoTocEntry(String),
    #[error("the eStargz TOC member's tar is unreadable: {0}")]
    Tar(#[source] TarError),
    #[error(
        "the eStargz TOC has digest {actual}, the layer's {TOC_DIGEST_ANNOTATION} annotation says \
         {expected}: the blob is not the layer the manifest names"
    )]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("the eStargz TOC: {0}")]
    Toc(#[from] TocError),
}

/// Where the TOC is, as the footer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Blob offset of the TOC's gzip member.
    pub toc_offset: u64,
    /// [`FOOTER_SIZE`] or [`LEGACY_FOOTER_SIZE`].
    pub size: u64,
}

impl Footer {
    /// The TOC's gzip member in a blob of `blob_size` bytes.
    pub fn toc_range(&self, blob_size: u64) -> Range<u64> {
        self.toc_offset..blob_size.saturating_sub(self.size)
    }
}

/// What a layer's eStargz TOC says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estargz {
    pub index: ChunkedIndex,
    /// sha256 of the TOC JSON, what [`TOC_DIGEST_ANNOTATION`] pins.
    pub toc_digest: Digest,
    pub prefetch: Prefetch,
}

/// What the layer's landmark files say to fetch first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// `.prefetch.landmark`: the first `entries` entries of the index are the files the image's
    /// workload reads first (in that order), and their bytes lie in the blob before `end`.
    Landmark { entries: usize, end: u64 },
    /// `.no.prefetch.landmark`: nothing is marked.
    Nothing,
    /// Neither landmark (layers not written by an eStargz converter).
    Unmarked,
}

/// The TOC's position, from the last bytes of a blob of `blob_size` bytes (`tail`: at least the
/// last [`FOOTER_SIZE`], or [`LEGACY_FOOTER_SIZE`] for a legacy stargz blob).
pub fn footer(tail: &[u8], blob_size: u64) -> Result<Footer, EstargzError> {
    let last = |n: u64| {
        let n = usize::try_from(n).ok()?;
        tail.len().checked_sub(n).map(|start| &tail[start..])
    };
    let (toc_offset, size) = match last(FOOTER_SIZE).map(parse_footer) {
        Some(Ok(offset)) => (offset, FOOTER_SIZE),
        current => match last(LEGACY_FOOTER_SIZE).map(parse_legacy_footer) {
            Some(Ok(offset)) => (offset, LEGACY_FOOTER_SIZE),
            legacy => {
                let why = match (current, legacy) {
                    (Some(Err(e)), _) | (None, Some(Err(e))) => e,
                    _ => format!("only {} bytes", tail.len()),
                };
                return Err(EstargzError::NoFooter(why));
            }
        },
    };
    let footer_offset = blob_size.saturating_sub(size);
    if toc_offset >= footer_offset {
        return Err(EstargzError::TocPastFooter {
            toc_offset,
            footer_offset,
        });
    }
    Ok(Footer { toc_offset, size })
}

/// The extra field of an empty gzip member, or why `bytes` is not one.
fn empty_member_extra(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut decoder = GzDecoder::new(bytes);
    let mut out = Vec::new();
    decoder
        .read_to_end(&mut out)
        .map_err(|e| format!("not a gzip member: {e}"))?;
    if !out.is_empty() {
        return Err("the last gzip member is not empty".into());
    }
    let header = decoder
        .header()
        .ok_or_else(|| "no gzip header".to_string())?;
    header
        .extra()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "the last gzip member has no extra field".into())
}

/// `%016xSTARGZ`: the offset in 16 lowercase or uppercase hex digits, then the magic.
fn offset_field(field: &[u8]) -> Result<u64, String> {
    let (digits, magic) = field
        .split_at_checked(OFFSET_DIGITS)
        .unwrap_or((field, b""));
    if magic != MAGIC || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err("its extra field is not `%016xSTARGZ`".into());
    }
    let text = std::str::from_utf8(digits).map_err(|e| e.to_string())?;
    u64::from_str_radix(text, 16).map_err(|e| e.to_string())
}

fn parse_footer(bytes: &[u8]) -> Result<u64, String> {
    let extra = empty_member_extra(bytes)?;
    // RFC 1952 subfield: SI1 'S', SI2 'G', then its length (little-endian).
    match extra.split_at_checked(4) {
        Some((&[b'S', b'G', len_lo, len_hi], field))
            if usize::from(u16::from_le_bytes([len_lo, len_hi])) == field.len() =>
        {
            offset_field(field)
        }
        _ => Err("its extra field is not an `SG` subfield".into()),
    }
}

fn parse_legacy_footer(bytes: &[u8]) -> Result<u64, String> {
    offset_field(&empty_member_extra(bytes)?)
}

/// Parses the TOC from its gzip member (the bytes [`Footer::toc_range`] names), checked against
/// the layer's [`TOC_DIGEST_ANNOTATION`] value when there is one.
pub fn parse_toc(
    member: &[u8],
    toc_offset: u64,
    expected: Option<&Digest>,
) -> Result<Estargz, EstargzError> {
    // One member: the footer, or whatever follows, is not part of the TOC.
    let mut inflated = Vec::new();
    GzDecoder::new(member)
        .take(MAX_TOC + 4096)
        .read_to_end(&mut inflated)
        .map_err(EstargzError::Inflate)?;
    let json = toc_json(&inflated)?;
    let toc_digest = Digest::of(json);
    if let Some(expected) = expected
        && *expected != toc_digest
    {
        return Err(EstargzError::DigestMismatch {
            expected: expected.clone(),
            actual: toc_digest,
        });
    }
    let built = toc::build(toc::parse_json(json)?, Flavor::Estargz, toc_offset)?;
    let prefetch = match (built.prefetch_landmark, built.no_prefetch_landmark) {
        (Some((entries, end)), _) => Prefetch::Landmark { entries, end },
        (None, true) => Prefetch::Nothing,
        (None, false) => Prefetch::Unmarked,
    };
    Ok(Estargz {
        index: built.index,
        toc_digest,
        prefetch,
    })
}

/// The bytes of the tar entry `stargz.index.json` that the TOC member inflates to.
fn toc_json(tar_bytes: &[u8]) -> Result<&[u8], EstargzError> {
    let entries = tar::read_entries(&mut &tar_bytes[..]).map_err(EstargzError::Tar)?;
    let Some(first) = entries.first() else {
        return Err(EstargzError::NoTocEntry("the tar is empty".into()));
    };
    let (EntryKind::File { offset, size }, true) = (&first.kind, first.path == TOC_NAME) else {
        return Err(EstargzError::NoTocEntry(format!(
            "its first entry is `{}`",
            String::from_utf8_lossy(&first.path)
        )));
    };
    if *size > MAX_TOC {
        return Err(EstargzError::TooLarge);
    }
    // read_entries has read the whole entry, so it lies within the bytes.
    usize::try_from(*offset)
        .ok()
        .zip(usize::try_from(offset + size).ok())
        .and_then(|(start, end)| tar_bytes.get(start..end))
        .ok_or_else(|| EstargzError::NoTocEntry("its data is cut short".into()))
}

/// The bytes of `chunk` from its gzip member (`compressed`: the blob's bytes
/// `chunk.compressed_offset..chunk.compressed_end`), checked against its digest.
pub fn decode_chunk(chunk: &Chunk, compressed: &[u8]) -> Result<Vec<u8>, ChunkError> {
    chunk.take_verified(GzDecoder::new(compressed), compressed)
}
