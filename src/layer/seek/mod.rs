//! Random access into compressed layers.
//!
//! A layer is decompressed once, in order, through [`SeekingDecoder`], which
//! hands out the uncompressed bytes (so the caller hashes them and parses the
//! tar on the same pass) and records seek points along the way. The resulting
//! [`SeekIndex`] lets [`read_at`] serve any uncompressed range later by
//! fetching compressed bytes from the nearest seek point only.
//!
//! - gzip: a point every `span` uncompressed bytes at a deflate block
//!   boundary, holding the 32 KiB window (zstd-compressed) that a raw inflate
//!   needs to resume there, or the start of a gzip member (no window).
//! - zstd: a point at a frame start (frames are independent). A layer written
//!   as one frame has a single point, so every read decompresses from the start
//!   of the layer up to the wanted offset: such layers are cheap to index but
//!   slow to read lazily near their end.
//! - uncompressed: the blob offset is the uncompressed offset; no points.

mod gzip;
mod plain;
#[cfg(test)]
mod tests;
mod window;
mod zlib;
mod zstd;

use std::fmt;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use crate::blob::BlobReader;

pub use window::Window;

/// Default distance between seek points, in uncompressed bytes.
///
/// A cold read fetches and inflates its whole span, and a container's start
/// reads a few dozen files scattered over a layer: with 1 MiB spans, a
/// Debian + python3 layer's start fetches 17 MiB instead of 28 MiB with
/// 4 MiB spans (SOCI's default), for an index of 3.4 % of the layer instead
/// of 0.9 % (see BENCHMARKS.md).
pub const DEFAULT_SPAN: u64 = 1 << 20;

/// Margin on an interpolated compressed offset: compression ratios vary
/// within a span.
const ESTIMATE_SLACK: u64 = 64 << 10;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer with this OCI or Docker media type, or
    /// `None` when the media type is not a layer type we can read.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Self::Zstd),
            _ => None,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "uncompressed",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeekError {
    #[error("corrupt {compression} stream near compressed offset {offset}: {detail}")]
    Corrupt {
        compression: Compression,
        offset: u64,
        detail: String,
    },
    #[error(
        "truncated {compression} stream: it ends at compressed offset {offset}, inside the data"
    )]
    Truncated {
        compression: Compression,
        offset: u64,
    },
    #[error("reading the compressed stream failed: {0}")]
    Read(#[source] io::Error),
    #[error("reading {len} bytes at offset {offset} of the blob failed: {source}")]
    Blob {
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    #[error("seek point {point} is unusable: {reason}")]
    BadSeekPoint { point: usize, reason: String },
    #[error("inconsistent seek index: {0}")]
    BadIndex(String),
    #[error("compression library failed: {0}")]
    Codec(String),
}

impl SeekError {
    fn to_io(&self) -> io::Error {
        let kind = match self {
            Self::Read(e) => e.kind(),
            Self::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self.to_string())
    }
}

/// A place where decompression can start without what came before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeekPoint {
    /// Compressed bytes before the point. With `bits > 0`, the last of them
    /// also holds the first `bits` bits of what follows.
    pub compressed_offset: u64,
    /// Uncompressed bytes before the point.
    pub uncompressed_offset: u64,
    /// gzip inside a member only: bits of byte `compressed_offset - 1` that
    /// belong to the next deflate block (0..=7).
    pub bits: u8,
    /// gzip inside a member: the last (up to) 32 KiB of output before the
    /// point, which back-references may reach into. `None` at the start of a
    /// gzip member or zstd frame, where decoding begins with a header.
    pub window: Option<Window>,
}

impl SeekPoint {
    /// The first compressed byte a decoder starting here reads.
    pub fn fetch_start(&self) -> u64 {
        self.compressed_offset
            .saturating_sub(u64::from(self.bits > 0))
    }
}

/// Where decompression of one layer can start, recorded on a full pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeekIndex {
    pub compression: Compression,
    /// The span the points were recorded with (uncompressed bytes).
    pub span: u64,
    /// Size of the compressed blob (all of it was consumed).
    pub compressed_size: u64,
    /// Size of the uncompressed stream.
    pub uncompressed_size: u64,
    /// Sorted by offset; the first is at uncompressed offset 0. Empty for
    /// uncompressed layers.
    pub points: Vec<SeekPoint>,
}

impl SeekIndex {
    /// The compressed byte range `[start, end)` that [`read_at`] needs for
    /// the uncompressed range `offset..offset + len`: from the seek point at
    /// or before `offset` to the next point at or after the range's end (the
    /// end of the compressed layer when there is none). Empty when the range
    /// is.
    pub fn compressed_span_for(&self, offset: u64, len: u64) -> (u64, u64) {
        let end = offset.saturating_add(len).min(self.uncompressed_size);
        if self.compression == Compression::None {
            return (offset.min(end), end);
        }
        let Some(point) = self.point_at_or_before(offset) else {
            return (0, 0);
        };
        let start = self.points[point].fetch_start();
        if offset >= end {
            return (start, start);
        }
        (start, self.end_hint(end).max(start))
    }

    /// The compressed bytes a read of the uncompressed range `offset..offset
    /// + len` most likely needs: from the seek point at or before `offset` to
    /// an estimate (with some slack) of where the range's end is produced,
    /// within [`SeekIndex::compressed_span_for`]. A short guess costs
    /// [`read_at`] another fetch, never wrong bytes.
    pub fn compressed_prefix_for(&self, offset: u64, len: u64) -> (u64, u64) {
        let (start, end) = self.compressed_span_for(offset, len);
        if self.compression == Compression::None {
            return (start, end);
        }
        let want = offset.saturating_add(len).min(self.uncompressed_size);
        let guess = self.end_estimate(want).saturating_add(ESTIMATE_SLACK);
        (start, guess.clamp(start, end))
    }

    /// This index with `extra` points added (points found by [`point_before`]
    /// on this layer), checked as [`SeekIndex::validate`] checks an index.
    pub fn with_points(&self, extra: &[SeekPoint]) -> Result<SeekIndex, SeekError> {
        let mut merged = self.clone();
        merged.points.extend_from_slice(extra);
        merged.points.sort_by_key(|p| p.uncompressed_offset);
        merged.points.dedup_by_key(|p| p.uncompressed_offset);
        merged.validate()?;
        Ok(merged)
    }

    /// The point a read at `offset` starts from.
    pub fn point_for(&self, offset: u64) -> Option<&SeekPoint> {
        self.point_at_or_before(offset).map(|i| &self.points[i])
    }

    /// Checks the structure of every point (order, ranges, bits). Windows are
    /// checked when a read uses them. An index loaded from outside should
    /// pass this before it is used; [`read_at`] checks the points it uses.
    pub fn validate(&self) -> Result<(), SeekError> {
        match self.compression {
            Compression::None => {
                if !self.points.is_empty() {
                    return Err(SeekError::BadIndex(
                        "an uncompressed layer has seek points".into(),
                    ));
                }
                if self.compressed_size != self.uncompressed_size {
                    return Err(SeekError::BadIndex(format!(
                        "an uncompressed layer of {} bytes claims {} uncompressed bytes",
                        self.compressed_size, self.uncompressed_size
                    )));
                }
                Ok(())
            }
            Compression::Gzip | Compression::Zstd => {
                if self.points.is_empty() {
                    return Err(SeekError::BadIndex("no seek points".into()));
                }
                (0..self.points.len()).try_for_each(|i| self.check_point(i))
            }
        }
    }

    /// Index of the last point at or before `offset`.
    fn point_at_or_before(&self, offset: u64) -> Option<usize> {
        let after = self
            .points
            .partition_point(|p| p.uncompressed_offset <= offset);
        after.checked_sub(1)
    }

    /// The compressed offset by which output `end` has surely been produced.
    fn end_hint(&self, end: u64) -> u64 {
        let next = self.points.partition_point(|p| p.uncompressed_offset < end);
        match self.points.get(next) {
            Some(p) => p.compressed_offset.min(self.compressed_size),
            None => self.compressed_size,
        }
    }

    /// A guess of the compressed offset where output `end` is produced,
    /// interpolated between the points around it, so the first fetch of a
    /// read is about the right size.
    fn end_estimate(&self, end: u64) -> u64 {
        let next = self.points.partition_point(|p| p.uncompressed_offset < end);
        let (c1, u1) = match self.points.get(next) {
            Some(p) => (p.compressed_offset, p.uncompressed_offset),
            None => (self.compressed_size, self.uncompressed_size),
        };
        let Some(before) = next.checked_sub(1).and_then(|i| self.points.get(i)) else {
            return c1;
        };
        let (c0, u0) = (before.compressed_offset, before.uncompressed_offset);
        if u1 <= u0 || c1 <= c0 {
            return c1;
        }
        let part = u128::from(end.saturating_sub(u0)) * u128::from(c1 - c0) / u128::from(u1 - u0);
        c0.saturating_add(u64::try_from(part).unwrap_or(u64::MAX))
            .min(c1)
    }

    fn check_point(&self, i: usize) -> Result<(), SeekError> {
        let bad = |reason: String| Err(SeekError::BadSeekPoint { point: i, reason });
        let p = &self.points[i];
        if i == 0 && p.uncompressed_offset != 0 {
            return bad(format!(
                "the first point is at uncompressed offset {}, not 0",
                p.uncompressed_offset
            ));
        }
        if p.bits > 7 {
            return bad(format!("{} pending bits (at most 7)", p.bits));
        }
        if p.bits > 0 && (p.compressed_offset == 0 || p.window.is_none()) {
            return bad("pending bits without a preceding byte or window".into());
        }
        if self.compression == Compression::Zstd && p.window.is_some() {
            return bad("a zstd point carries a window".into());
        }
        if p.compressed_offset > self.compressed_size
            || p.uncompressed_offset > self.uncompressed_size
        {
            return bad(format!(
                "offsets {}/{} lie past the layer's end {}/{}",
                p.compressed_offset,
                p.uncompressed_offset,
                self.compressed_size,
                self.uncompressed_size
            ));
        }
        if let Some(prev) = i.checked_sub(1).map(|j| &self.points[j])
            && (prev.compressed_offset > p.compressed_offset
                || prev.uncompressed_offset > p.uncompressed_offset)
        {
            return bad("points are out of order".into());
        }
        Ok(())
    }
}

/// Reads `len` uncompressed bytes at `offset` of the layer that `index`
/// describes, fetching compressed bytes from `blob` starting at the nearest
/// seek point. Returns fewer bytes only at the end of the uncompressed
/// stream (none at or past it).
pub fn read_at(
    blob: &dyn BlobReader,
    index: &SeekIndex,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, SeekError> {
    let end = offset.saturating_add(len).min(index.uncompressed_size);
    if offset >= end {
        return Ok(Vec::new());
    }
    let want = end - offset;
    match index.compression {
        Compression::None => plain::read_at(blob, index, offset, want),
        Compression::Gzip | Compression::Zstd => read_compressed(blob, index, offset, want),
    }
}

fn read_compressed(
    blob: &dyn BlobReader,
    index: &SeekIndex,
    offset: u64,
    want: u64,
) -> Result<Vec<u8>, SeekError> {
    let i = index.point_at_or_before(offset).ok_or_else(|| {
        SeekError::BadIndex(format!("no seek point at or before offset {offset}"))
    })?;
    index.check_point(i)?;
    if i + 1 < index.points.len() {
        index.check_point(i + 1)?;
    }
    let point = &index.points[i];
    // Output up to `offset + want` is complete by the next point's offset,
    // so a read never fetches past it.
    let mut fetcher = Fetcher {
        blob,
        cursor: point.fetch_start(),
        end: index.end_hint(offset + want).min(blob.size()),
        next_len: index
            .end_estimate(offset + want)
            .saturating_sub(point.fetch_start())
            + FETCH_SLACK,
    };
    let skip = offset
        .checked_sub(point.uncompressed_offset)
        .ok_or_else(|| SeekError::BadSeekPoint {
            point: i,
            reason: format!("it lies after offset {offset}, which it was chosen for"),
        })?;
    let out = if index.compression == Compression::Gzip {
        gzip::read_from(i, point, &mut fetcher, skip, want)?
    } else {
        zstd::read_from(&mut fetcher, skip, want)?
    };
    if (out.len() as u64) < want {
        return Err(SeekError::Truncated {
            compression: index.compression,
            offset: fetcher.cursor,
        });
    }
    Ok(out)
}

/// A seek point at the last deflate block boundary at or before `offset`,
/// past the index's point before it, found by inflating from that point:
/// a point of one's own for a place that is read often, so its reads need
/// not fetch and inflate the span before it. `None` for layers that are not
/// gzip, or when there is no such boundary or the blob's bytes run out
/// first (a reader may serve only what it holds).
pub fn point_before(
    blob: &dyn BlobReader,
    index: &SeekIndex,
    offset: u64,
) -> Result<Option<SeekPoint>, SeekError> {
    if index.compression != Compression::Gzip || offset >= index.uncompressed_size {
        return Ok(None);
    }
    let Some(i) = index.point_at_or_before(offset) else {
        return Ok(None);
    };
    index.check_point(i)?;
    let point = &index.points[i];
    let mut fetcher = Fetcher {
        blob,
        cursor: point.fetch_start(),
        end: index.end_hint(offset + 1).min(blob.size()),
        next_len: index
            .end_estimate(offset + 1)
            .saturating_sub(point.fetch_start())
            + FETCH_SLACK,
    };
    gzip::point_before(i, point, &mut fetcher, offset)
}

/// Bounds of one blob fetch: big enough to spare round trips, small enough
/// that a short read does not pull a whole span it does not need.
const FETCH_MIN: u64 = 64 << 10;
const FETCH_MAX: u64 = 1 << 20;
/// Fetched past the estimated end, since the estimate is only a guess.
const FETCH_SLACK: u64 = 32 << 10;
/// Fetch size once the first estimate turned out short.
const FETCH_NEXT: u64 = 256 << 10;

/// Reads a blob forward in modest chunks.
struct Fetcher<'a> {
    blob: &'a dyn BlobReader,
    cursor: u64,
    end: u64,
    next_len: u64,
}

impl Fetcher<'_> {
    /// Makes sure `chunk[pos..]` holds input, fetching the next chunk once
    /// it is used up; false at the end of the blob.
    fn refill(&mut self, chunk: &mut Vec<u8>, pos: &mut usize) -> Result<bool, SeekError> {
        if *pos == chunk.len() {
            *chunk = self.next()?;
            *pos = 0;
        }
        Ok(*pos < chunk.len())
    }

    /// The blob offset of `chunk[pos]`, `chunk` being the last one fetched.
    fn offset_of(&self, chunk: &[u8], pos: usize) -> u64 {
        self.cursor - (chunk.len() - pos) as u64
    }

    /// The next chunk, empty at the end of the blob.
    fn next(&mut self) -> Result<Vec<u8>, SeekError> {
        if self.cursor >= self.end {
            return Ok(Vec::new());
        }
        let len = self
            .next_len
            .clamp(FETCH_MIN, FETCH_MAX)
            .min(self.end - self.cursor);
        self.next_len = FETCH_NEXT;
        let mut bytes = self
            .blob
            .read_at(self.cursor, len)
            .map_err(|source| SeekError::Blob {
                offset: self.cursor,
                len,
                source,
            })?;
        bytes.truncate(len as usize);
        self.cursor += bytes.len() as u64;
        Ok(bytes)
    }
}

/// Decompresses a layer in one pass, handing out the uncompressed bytes
/// through [`Read`] and recording seek points, then [`finish`](Self::finish)
/// returns the [`SeekIndex`].
///
/// A decoding error is returned by `read` as an `io::Error` and again, as the
/// original [`SeekError`], by `finish`. Each `read` is one inflate call, so
/// reads of a few KiB or more (or a `BufReader` around it) keep it fast.
pub struct SeekingDecoder<R: Read> {
    codec: Codec<R>,
    failed: Option<SeekError>,
}

enum Codec<R: Read> {
    Plain(plain::PlainDecoder<R>),
    Gzip(gzip::GzipDecoder<R>),
    Zstd(zstd::ZstdDecoder<R>),
}

impl<R: Read> SeekingDecoder<R> {
    /// Decodes `reader` as `compression`, recording a seek point about every
    /// `span` uncompressed bytes ([`DEFAULT_SPAN`] is a good value; 0 means
    /// at every possible place).
    pub fn new(reader: R, compression: Compression, span: u64) -> Result<Self, SeekError> {
        let codec = match compression {
            Compression::None => Codec::Plain(plain::PlainDecoder::new(reader)),
            Compression::Gzip => Codec::Gzip(gzip::GzipDecoder::new(reader, span)?),
            Compression::Zstd => Codec::Zstd(zstd::ZstdDecoder::new(reader, span)?),
        };
        Ok(Self {
            codec,
            failed: None,
        })
    }

    /// Decodes whatever the caller did not read (so that trailers are checked
    /// and the index covers the whole layer) and returns the index. A caller
    /// that hashes the output must read to the end first: bytes drained here
    /// are discarded.
    pub fn finish(mut self) -> Result<SeekIndex, SeekError> {
        let mut scratch = vec![0u8; 64 << 10];
        loop {
            match self.read_codec(&mut scratch) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        match self.codec {
            Codec::Plain(d) => Ok(d.finish()),
            Codec::Gzip(d) => Ok(d.finish()),
            Codec::Zstd(d) => Ok(d.finish()),
        }
    }

    fn read_codec(&mut self, buf: &mut [u8]) -> Result<usize, SeekError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        match &mut self.codec {
            Codec::Plain(d) => d.read(buf),
            Codec::Gzip(d) => d.read(buf),
            Codec::Zstd(d) => d.read(buf),
        }
    }
}

impl<R: Read> Read for SeekingDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(e.to_io());
        }
        self.read_codec(buf).map_err(|e| {
            let io = e.to_io();
            self.failed = Some(e);
            io
        })
    }
}

/// Reads from `reader` into `buf`, retrying interrupted reads; 0 at the end.
fn read_some<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, SeekError> {
    loop {
        match reader.read(buf) {
            Ok(n) => return Ok(n.min(buf.len())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SeekError::Read(e)),
        }
    }
}
