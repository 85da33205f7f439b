//! Arbitrary bytes decoded as a gzip, zstd or plain layer with a small span; when the pass
//! succeeds, reads at seek points of the index it built must return exactly what the pass
//! produced.
//!
//! Input: byte 0 picks the compression, byte 1 the span, bytes 2..10 seed the read offsets,
//! the rest is the compressed stream.
#![no_main]

use std::io::Read;

use lazypull::layer::seek::{Compression, SeekingDecoder, read_at};
use libfuzzer_sys::fuzz_target;

/// Output beyond this is not kept (a few KiB of zstd can expand to gigabytes).
const MAX_OUTPUT: u64 = 32 << 20;
const READS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Some((&[pick, span, s0, s1, s2, s3, s4, s5, s6, s7], stream)) = data.split_first_chunk()
    else {
        return;
    };
    let compression = match pick % 3 {
        0 => Compression::Gzip,
        1 => Compression::Zstd,
        _ => Compression::None,
    };
    // 0 records a point at every possible place; otherwise a few hundred bytes to 64 KiB.
    let span = u64::from(span) * 256;
    let Ok(mut decoder) = SeekingDecoder::new(stream, compression, span) else {
        return;
    };
    let mut out = Vec::new();
    match (&mut decoder).take(MAX_OUTPUT + 1).read_to_end(&mut out) {
        Ok(_) if out.len() as u64 <= MAX_OUTPUT => {}
        _ => return,
    }
    let Ok(index) = decoder.finish() else {
        return;
    };
    assert!(
        index.validate().is_ok(),
        "a pass built an invalid index: {index:?}"
    );
    assert_eq!(index.uncompressed_size, out.len() as u64);
    assert_eq!(index.compressed_size, stream.len() as u64);

    let blob = stream.to_vec();
    let size = out.len() as u64;
    let mut seed = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    let mut next = || {
        // xorshift64*: cheap, deterministic read positions from the input.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..READS {
        let offset = next() % (size + 16);
        let len = next() % 70_000;
        let got = read_at(&blob, &index, offset, len)
            .unwrap_or_else(|e| panic!("read_at({offset}, {len}) of a verified layer: {e}"));
        let start = offset.min(size) as usize;
        let end = offset.saturating_add(len).min(size) as usize;
        assert!(
            got == out[start..end.max(start)],
            "read_at({offset}, {len}) returned other bytes"
        );
    }
    // Every seek point itself: reads starting exactly there.
    for p in index.points.iter().take(READS) {
        let got = read_at(&blob, &index, p.uncompressed_offset, 100).unwrap();
        let start = p.uncompressed_offset as usize;
        let end = (start + 100).min(out.len());
        assert!(
            got == out[start..end.max(start)],
            "read at a seek point returned other bytes"
        );
    }
});
