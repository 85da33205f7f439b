//! Arbitrary seek indexes over small real gzip, zstd and plain layers: random seek points must
//! fail cleanly, never panic.
//!
//! Byte 0 picks the mode. Even: the rest is a postcard-encoded `SeekIndex` (as an index file
//! holds it), followed by bytes that pick the reads. Odd: a real index (the blob picked by byte 0)
//! is damaged by edits that the rest spells out, 8 bytes each, so the points stay plausible.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use lazypull::layer::seek::{Compression, SeekIndex, SeekingDecoder, Window, read_at};
use libfuzzer_sys::fuzz_target;

struct Layer {
    blob: Vec<u8>,
    index: SeekIndex,
}

/// Half text that deflate squeezes into long blocks, half noise that it cannot.
fn content() -> Vec<u8> {
    let mut out = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..3000 {
        if i % 3 == 0 {
            for _ in 0..40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.push(x as u8);
            }
        } else {
            out.extend_from_slice(format!("line {i}: the quick brown fox {}\n", i % 17).as_bytes());
        }
    }
    out
}

fn index_of(blob: &[u8], compression: Compression) -> SeekIndex {
    let mut decoder = SeekingDecoder::new(blob, compression, 0).unwrap();
    std::io::copy(&mut decoder, &mut std::io::sink()).unwrap();
    decoder.finish().unwrap()
}

/// A two-member gzip, a two-frame zstd and a plain blob, with their real indexes.
fn layers() -> &'static [Layer; 3] {
    static LAYERS: OnceLock<[Layer; 3]> = OnceLock::new();
    LAYERS.get_or_init(|| {
        let data = content();
        let (a, b) = data.split_at(data.len() / 3);
        let mut gzip = Vec::new();
        for part in [a, b] {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(part).unwrap();
            gzip.extend(enc.finish().unwrap());
        }
        let mut zstd = Vec::new();
        for part in [a, b] {
            zstd.extend(zstd::bulk::compress(part, 3).unwrap());
        }
        [Compression::Gzip, Compression::Zstd, Compression::None].map(|c| {
            let blob = match c {
                Compression::Gzip => gzip.clone(),
                Compression::Zstd => zstd.clone(),
                Compression::None => data.clone(),
            };
            Layer {
                index: index_of(&blob, c),
                blob,
            }
        })
    })
}

fn layer_for(compression: Compression) -> &'static Layer {
    let [gzip, zstd, plain] = layers();
    match compression {
        Compression::Gzip => gzip,
        Compression::Zstd => zstd,
        Compression::None => plain,
    }
}

fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
    u64::from_le_bytes(w)
}

/// Applies one 8-byte edit: [what, point, value (6 bytes)].
fn edit(index: &mut SeekIndex, op: &[u8]) {
    let value = word(&op[2..]);
    let small = value as i64 as i16 as i64;
    let n = index.points.len();
    let p = if n == 0 {
        None
    } else {
        Some(usize::from(op[1]) % n)
    };
    let shift = |x: u64| x.saturating_add_signed(small);
    match (op[0] % 12, p) {
        (0, Some(p)) => {
            index.points[p].compressed_offset = shift(index.points[p].compressed_offset)
        }
        (1, Some(p)) => {
            index.points[p].uncompressed_offset = shift(index.points[p].uncompressed_offset)
        }
        (2, Some(p)) => index.points[p].compressed_offset = value,
        (3, Some(p)) => index.points[p].uncompressed_offset = value,
        (4, Some(p)) => index.points[p].bits = op[2],
        (5, Some(p)) => index.points[p].window = None,
        (6, Some(p)) => {
            // A window from another point, or garbage bytes as a window.
            let other = usize::from(op[2]) % n;
            index.points[p].window = if op[3] % 2 == 0 {
                index.points[other].window.clone()
            } else {
                let raw: Vec<u8> = op[4..]
                    .iter()
                    .copied()
                    .cycle()
                    .take(usize::from(op[3]))
                    .collect();
                postcard::to_stdvec(&raw)
                    .ok()
                    .and_then(|b| postcard::from_bytes::<Window>(&b).ok())
            };
        }
        (7, Some(p)) => {
            index.points.remove(p);
        }
        (8, Some(p)) => {
            let dup = index.points[p].clone();
            index.points.insert(p, dup);
        }
        (9, _) => index.compressed_size = shift(index.compressed_size),
        (10, _) => index.uncompressed_size = shift(index.uncompressed_size),
        (11, _) => {
            index.compression = match op[2] % 3 {
                0 => Compression::Gzip,
                1 => Compression::Zstd,
                _ => Compression::None,
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (index, reads) = if mode % 2 == 0 {
        match postcard::take_from_bytes::<SeekIndex>(rest) {
            Ok(decoded) => decoded,
            Err(_) => return,
        }
    } else {
        let base =
            [Compression::Gzip, Compression::Zstd, Compression::None][usize::from(mode / 2) % 3];
        let mut index = layer_for(base).index.clone();
        let ops = rest.len().min(16 * 8) / 8 * 8;
        for op in rest[..ops].chunks_exact(8) {
            edit(&mut index, op);
        }
        (index, &rest[ops..])
    };
    let _ = index.validate();
    let blob = &layer_for(index.compression).blob;
    let size = index.uncompressed_size;
    let mut words: Vec<u64> = reads.chunks(8).map(word).take(16).collect();
    if words.len() < 2 {
        words = vec![0, 4096];
    }
    for pair in words.chunks_exact(2) {
        let offset = pair[0];
        // FUSE asks for at most about a MiB at a time.
        let len = pair[1] % (1 << 20);
        // Offsets near the layer's size and anywhere at all.
        let offset = if offset % 2 == 0 {
            offset % size.saturating_add(1)
        } else {
            offset
        };
        let _ = index.compressed_span_for(offset, len);
        let _ = read_at(blob, &index, offset, len);
    }
});
