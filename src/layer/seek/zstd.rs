//! zstd: seek points at frame starts.
//!
//! Frames decode independently, so a frame start needs nothing but its
//! offsets. Inside a frame there is no place to resume from: a layer written
//! as a single frame (what `zstd` and most image builders produce) gets one
//! point, and a read near its end decompresses the whole layer before it.

use std::io::Read;

use ::zstd::zstd_safe::{self, DCtx, InBuffer, OutBuffer};

use super::{Compression, Fetcher, SeekError, SeekIndex, SeekPoint, read_some};

const INPUT_BUFFER: usize = 128 << 10;
const SCRATCH: usize = 128 << 10;

fn corrupt(offset: u64, code: usize) -> SeekError {
    SeekError::Corrupt {
        compression: Compression::Zstd,
        offset,
        detail: zstd_safe::get_error_name(code).to_string(),
    }
}

fn new_dctx() -> Result<DCtx<'static>, SeekError> {
    DCtx::try_create()
        .ok_or_else(|| SeekError::Codec("cannot create a zstd decompression context".into()))
}

pub(super) struct ZstdDecoder<R> {
    reader: R,
    dctx: DCtx<'static>,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    consumed: u64,
    produced: u64,
    span: u64,
    points: Vec<SeekPoint>,
    in_frame: bool,
    done: bool,
}

impl<R: Read> ZstdDecoder<R> {
    pub fn new(reader: R, span: u64) -> Result<Self, SeekError> {
        Ok(Self {
            reader,
            dctx: new_dctx()?,
            buf: vec![0; INPUT_BUFFER],
            pos: 0,
            len: 0,
            consumed: 0,
            produced: 0,
            span: span.max(1),
            points: Vec::new(),
            in_frame: false,
            done: false,
        })
    }

    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, SeekError> {
        while !self.done && !out.is_empty() {
            if self.pos == self.len {
                self.len = read_some(&mut self.reader, &mut self.buf)?;
                self.pos = 0;
                if self.len == 0 {
                    // An empty stream holds no frame: not a zstd stream either.
                    if self.in_frame || self.points.is_empty() {
                        return Err(SeekError::Truncated {
                            compression: Compression::Zstd,
                            offset: self.consumed,
                        });
                    }
                    self.done = true;
                    break;
                }
            }
            if !self.in_frame {
                self.in_frame = true;
                let due = self
                    .points
                    .last()
                    .is_none_or(|p| self.produced - p.uncompressed_offset >= self.span);
                if due {
                    self.points.push(SeekPoint {
                        compressed_offset: self.consumed,
                        uncompressed_offset: self.produced,
                        bits: 0,
                        window: None,
                    });
                }
            }
            let mut input = InBuffer::around(&self.buf[self.pos..self.len]);
            let mut output = OutBuffer::around(&mut *out);
            let hint = self
                .dctx
                .decompress_stream(&mut output, &mut input)
                .map_err(|code| corrupt(self.consumed, code))?;
            let (consumed, produced) = (input.pos(), output.pos());
            self.pos += consumed;
            self.consumed += consumed as u64;
            self.produced += produced as u64;
            if hint == 0 {
                // The frame is decoded and flushed; a new one may follow.
                self.in_frame = false;
            }
            if produced > 0 {
                return Ok(produced);
            }
            if consumed == 0 {
                return Err(SeekError::Corrupt {
                    compression: Compression::Zstd,
                    offset: self.consumed,
                    detail: "decompression made no progress".into(),
                });
            }
        }
        Ok(0)
    }

    pub fn finish(self) -> SeekIndex {
        SeekIndex {
            compression: Compression::Zstd,
            span: self.span,
            compressed_size: self.consumed,
            uncompressed_size: self.produced,
            points: self.points,
        }
    }
}

/// Decompresses from a frame start, drops `skip` bytes and returns up to
/// `want` bytes: fewer only if the compressed bytes run out.
pub(super) fn read_from(
    fetcher: &mut Fetcher<'_>,
    mut skip: u64,
    want: u64,
) -> Result<Vec<u8>, SeekError> {
    let mut dctx = new_dctx()?;
    let want = usize::try_from(want).unwrap_or(usize::MAX);
    // Capped: `want` comes from the caller and the index, not from memory.
    let mut out = Vec::with_capacity(want.min(16 << 20));
    let mut scratch = vec![0u8; SCRATCH];
    let mut chunk = Vec::new();
    let mut pos = 0;
    while out.len() < want {
        if !fetcher.refill(&mut chunk, &mut pos)? {
            break;
        }
        let at = fetcher.offset_of(&chunk, pos);
        let mut input = InBuffer::around(&chunk[pos..]);
        let mut output = OutBuffer::around(&mut scratch[..]);
        dctx.decompress_stream(&mut output, &mut input)
            .map_err(|code| corrupt(at, code))?;
        let (consumed, produced) = (input.pos(), output.pos());
        pos += consumed;
        if consumed == 0 && produced == 0 {
            return Err(SeekError::Corrupt {
                compression: Compression::Zstd,
                offset: at,
                detail: "decompression made no progress".into(),
            });
        }
        let produced = &scratch[..produced];
        let dropped = usize::try_from(skip)
            .unwrap_or(usize::MAX)
            .min(produced.len());
        skip -= dropped as u64;
        let take = (produced.len() - dropped).min(want - out.len());
        out.extend_from_slice(&produced[dropped..dropped + take]);
    }
    Ok(out)
}
