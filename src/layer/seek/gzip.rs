//! gzip: seek points at deflate block boundaries and gzip member starts.
//!
//! The indexing pass inflates in gzip mode (zlib checks every member's
//! header, CRC32 and length) and asks zlib to stop at each block boundary
//! (`Z_BLOCK`). Once `span` bytes have come out since the last point, the
//! next boundary that is not followed by the member's end becomes a point:
//! compressed position, pending bits, uncompressed position and the window.
//! A member start becomes a point the same way, with no window needed.
//!
//! A read resumes at a point with a raw inflate (pending bits primed,
//! window set as dictionary), or in gzip mode at a member start, and
//! crosses later member boundaries by skipping the trailer and reading the
//! next header in gzip mode.

use std::io::Read;

use super::zlib::{Flush, GZIP_WINDOW_BITS, Inflater, RAW_WINDOW_BITS, Status};
use super::{Compression, Fetcher, SeekError, SeekIndex, SeekPoint, Window, read_some};

const INPUT_BUFFER: usize = 128 << 10;
const SCRATCH: usize = 64 << 10;
/// CRC32 and ISIZE after each member's deflate data.
const TRAILER_LEN: usize = 8;

fn corrupt(offset: u64, detail: String) -> SeekError {
    SeekError::Corrupt {
        compression: Compression::Gzip,
        offset,
        detail,
    }
}

pub(super) struct GzipDecoder<R> {
    reader: R,
    z: Inflater,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// Compressed bytes taken by zlib so far.
    consumed: u64,
    /// Uncompressed bytes handed out so far.
    produced: u64,
    span: u64,
    points: Vec<SeekPoint>,
    at_member_start: bool,
    done: bool,
}

impl<R: Read> GzipDecoder<R> {
    pub fn new(reader: R, span: u64) -> Result<Self, SeekError> {
        Ok(Self {
            reader,
            z: Inflater::new(GZIP_WINDOW_BITS).map_err(SeekError::Codec)?,
            buf: vec![0; INPUT_BUFFER],
            pos: 0,
            len: 0,
            consumed: 0,
            produced: 0,
            span: span.max(1),
            points: Vec::new(),
            at_member_start: true,
            done: false,
        })
    }

    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, SeekError> {
        while !self.done && !out.is_empty() {
            if !self.fill()? {
                return Err(SeekError::Truncated {
                    compression: Compression::Gzip,
                    offset: self.consumed,
                });
            }
            if self.at_member_start {
                self.at_member_start = false;
                if self.point_due() {
                    self.points.push(SeekPoint {
                        compressed_offset: self.consumed,
                        uncompressed_offset: self.produced,
                        bits: 0,
                        window: None,
                    });
                }
            }
            let step = self
                .z
                .inflate(&self.buf[self.pos..self.len], out, Flush::Block)
                .map_err(|detail| corrupt(self.consumed, detail))?;
            self.pos += step.consumed;
            self.consumed += step.consumed as u64;
            self.produced += step.produced as u64;
            match step.status {
                Status::StreamEnd => {
                    // zlib has checked the trailer; anything after it must be
                    // another member.
                    if self.fill()? {
                        self.z.reset(GZIP_WINDOW_BITS).map_err(SeekError::Codec)?;
                        self.at_member_start = true;
                    } else {
                        self.done = true;
                    }
                }
                Status::Ok => {
                    if let Some(bits) = step.resumable_boundary()
                        && self.point_due()
                    {
                        self.push_window_point(bits)?;
                    }
                    if step.consumed == 0 && step.produced == 0 {
                        return Err(corrupt(self.consumed, "inflate made no progress".into()));
                    }
                }
            }
            if step.produced > 0 {
                return Ok(step.produced);
            }
        }
        Ok(0)
    }

    pub fn finish(self) -> SeekIndex {
        SeekIndex {
            compression: Compression::Gzip,
            span: self.span,
            compressed_size: self.consumed,
            uncompressed_size: self.produced,
            points: self.points,
        }
    }

    /// Makes sure input is buffered; false at the end of the stream.
    fn fill(&mut self) -> Result<bool, SeekError> {
        if self.pos == self.len {
            self.len = read_some(&mut self.reader, &mut self.buf)?;
            self.pos = 0;
        }
        Ok(self.pos < self.len)
    }

    fn point_due(&self) -> bool {
        self.points
            .last()
            .is_none_or(|p| self.produced - p.uncompressed_offset >= self.span)
    }

    fn push_window_point(&mut self, bits: u8) -> Result<(), SeekError> {
        let window = self.z.dictionary().map_err(SeekError::Codec)?;
        self.points.push(SeekPoint {
            compressed_offset: self.consumed,
            uncompressed_offset: self.produced,
            bits,
            window: Some(Window::compress(&window)?),
        });
        Ok(())
    }
}

/// Where a read is in the stream.
#[derive(Clone, Copy)]
enum Mode {
    /// Raw deflate inside a member, started from a window point.
    Raw,
    /// Skipping what is left of a member trailer after a raw inflate.
    Trailer(usize),
    /// gzip mode: header, deflate data and trailer of one member.
    Member,
}

/// An inflate resumed at a seek point: the stream, its mode, and the input
/// chunk with how much of it is used.
struct Resumed {
    z: Inflater,
    mode: Mode,
    chunk: Vec<u8>,
    pos: usize,
}

/// Starts inflating at seek point `point` (number `index` in its index):
/// raw with the window and pending bits, or in gzip mode at a member start.
fn resume(
    index: usize,
    point: &SeekPoint,
    fetcher: &mut Fetcher<'_>,
) -> Result<Resumed, SeekError> {
    let bad = |reason: String| SeekError::BadSeekPoint {
        point: index,
        reason,
    };
    let chunk = fetcher.next()?;
    let Some(window) = &point.window else {
        let z = Inflater::new(GZIP_WINDOW_BITS).map_err(SeekError::Codec)?;
        return Ok(Resumed {
            z,
            mode: Mode::Member,
            chunk,
            pos: 0,
        });
    };
    let mut z = Inflater::new(RAW_WINDOW_BITS).map_err(SeekError::Codec)?;
    let mut pos = 0;
    if point.bits > 0 {
        // The index checked the offset against the layer size, so a
        // missing byte means the blob is short.
        let Some(&byte) = chunk.first() else {
            return Err(SeekError::Truncated {
                compression: Compression::Gzip,
                offset: fetcher.cursor,
            });
        };
        z.prime(point.bits, byte >> (8 - point.bits)).map_err(bad)?;
        pos = 1;
    }
    let dictionary = window.decompress().map_err(bad)?;
    if !dictionary.is_empty() {
        z.set_dictionary(&dictionary).map_err(bad)?;
    }
    Ok(Resumed {
        z,
        mode: Mode::Raw,
        chunk,
        pos,
    })
}

/// Inflates from seek point `point` (number `index` in its index), drops
/// `skip` bytes and returns up to `want` bytes: fewer only if the
/// compressed bytes run out.
pub(super) fn read_from(
    index: usize,
    point: &SeekPoint,
    fetcher: &mut Fetcher<'_>,
    mut skip: u64,
    want: u64,
) -> Result<Vec<u8>, SeekError> {
    let Resumed {
        mut z,
        mut mode,
        mut chunk,
        mut pos,
    } = resume(index, point, fetcher)?;
    let want = usize::try_from(want).unwrap_or(usize::MAX);
    // Capped: `want` comes from the caller and the index, not from memory.
    let mut out = Vec::with_capacity(want.min(16 << 20));
    let mut scratch = vec![0u8; SCRATCH];
    while out.len() < want {
        if !fetcher.refill(&mut chunk, &mut pos)? {
            break;
        }
        if let Mode::Trailer(left) = mode {
            let n = left.min(chunk.len() - pos);
            pos += n;
            mode = if n == left {
                z.reset(GZIP_WINDOW_BITS).map_err(SeekError::Codec)?;
                Mode::Member
            } else {
                Mode::Trailer(left - n)
            };
            continue;
        }
        let at = fetcher.offset_of(&chunk, pos);
        let step = z
            .inflate(&chunk[pos..], &mut scratch, Flush::None)
            .map_err(|detail| corrupt(at, detail))?;
        pos += step.consumed;
        let produced = &scratch[..step.produced];
        let dropped = usize::try_from(skip)
            .unwrap_or(usize::MAX)
            .min(produced.len());
        skip -= dropped as u64;
        let take = (produced.len() - dropped).min(want - out.len());
        out.extend_from_slice(&produced[dropped..dropped + take]);
        match step.status {
            Status::StreamEnd => {
                mode = match mode {
                    Mode::Raw => Mode::Trailer(TRAILER_LEN),
                    _ => {
                        z.reset(GZIP_WINDOW_BITS).map_err(SeekError::Codec)?;
                        Mode::Member
                    }
                };
            }
            Status::Ok if step.consumed == 0 && step.produced == 0 => {
                return Err(corrupt(at, "inflate made no progress".into()));
            }
            Status::Ok => {}
        }
    }
    Ok(out)
}

/// The last place at or before uncompressed offset `target` where a raw
/// inflate can resume (a deflate block boundary), found by inflating from
/// seek point `point` (number `index`) within its gzip member; `None` when
/// there is none past the point, or the compressed bytes run out first.
pub(super) fn point_before(
    index: usize,
    point: &SeekPoint,
    fetcher: &mut Fetcher<'_>,
    target: u64,
) -> Result<Option<SeekPoint>, SeekError> {
    let Resumed {
        mut z,
        mode: _,
        mut chunk,
        mut pos,
    } = match resume(index, point, fetcher) {
        Err(SeekError::Truncated { .. }) => return Ok(None),
        resumed => resumed?,
    };
    let mut produced = point.uncompressed_offset;
    let mut found: Option<(u64, u64, u8, Vec<u8>)> = None;
    let mut scratch = vec![0u8; SCRATCH];
    while produced <= target {
        if !fetcher.refill(&mut chunk, &mut pos)? {
            break;
        }
        let at = fetcher.offset_of(&chunk, pos);
        let step = z
            .inflate(&chunk[pos..], &mut scratch, Flush::Block)
            .map_err(|detail| corrupt(at, detail))?;
        pos += step.consumed;
        produced += step.produced as u64;
        match step.status {
            // The member ends: what lies beyond starts with a header.
            Status::StreamEnd => break,
            Status::Ok if step.consumed == 0 && step.produced == 0 => {
                return Err(corrupt(at, "inflate made no progress".into()));
            }
            Status::Ok => {}
        }
        if let Some(bits) = step.resumable_boundary()
            && produced <= target
            && produced > point.uncompressed_offset
        {
            let consumed = fetcher.offset_of(&chunk, pos);
            let window = z.dictionary().map_err(SeekError::Codec)?;
            found = Some((consumed, produced, bits, window));
        }
    }
    found
        .map(|(compressed_offset, uncompressed_offset, bits, window)| {
            Ok(SeekPoint {
                compressed_offset,
                uncompressed_offset,
                bits,
                window: Some(Window::compress(&window)?),
            })
        })
        .transpose()
}
