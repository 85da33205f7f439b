use std::io::{self, Read, Write};
use std::sync::{Mutex, OnceLock};

use flate2::write::GzEncoder;
use proptest::prelude::*;

use super::*;

const KIB: u64 = 1024;

/// Text-like data that deflate shrinks about 3x, like a tar of a rootfs.
fn compressible(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let words = [
        "usr/lib/",
        "libc.so.6",
        "\0\0\0\0",
        "0000644",
        "root",
        "ELF",
        "bin/sh",
        "#!/bin/sh\n",
        "share/doc",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        if rng.u8(..) < 40 {
            out.extend((0..rng.usize(1..24)).map(|_| rng.u8(..)));
        } else {
            out.extend_from_slice(words[rng.usize(..words.len())].as_bytes());
        }
    }
    out.truncate(len);
    out
}

fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn gzip_member(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A member whose header carries a name, a comment and an extra field, so
/// that skipping headers is exercised.
fn gzip_member_with_header(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new()
        .filename("layer.tar")
        .comment("made by a test")
        .extra(vec![1, 2, 3, 4])
        .write(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn zstd_frame(data: &[u8]) -> Vec<u8> {
    let mut enc = ::zstd::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_checksum(true).unwrap();
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Decodes `blob` through the seeking decoder with odd-sized reads.
fn decode(
    blob: &[u8],
    compression: Compression,
    span: u64,
) -> Result<(Vec<u8>, SeekIndex), SeekError> {
    let mut dec = SeekingDecoder::new(blob, compression, span)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 7919];
    loop {
        match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {
                return Err(dec
                    .finish()
                    .expect_err("a failed read must fail finish too"));
            }
        }
    }
    Ok((out, dec.finish()?))
}

fn reference_gunzip(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(blob)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn reference_unzstd(blob: &[u8]) -> Vec<u8> {
    ::zstd::decode_all(blob).unwrap()
}

/// Ranges worth checking: random ones, ones straddling each seek point,
/// and ones at and past the end.
fn interesting_ranges(index: &SeekIndex, seed: u64) -> Vec<(u64, u64)> {
    let size = index.uncompressed_size;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut ranges: Vec<(u64, u64)> = (0..40)
        .map(|_| (rng.u64(..=size), rng.u64(0..200 * KIB)))
        .collect();
    for p in index.points.iter().take(50) {
        ranges.push((p.uncompressed_offset.saturating_sub(100), 200));
        ranges.push((p.uncompressed_offset, 1));
    }
    ranges.extend([
        (0, 0),
        (0, 1),
        (0, size),
        (size.saturating_sub(5), 100),
        (size, 10),
        (size + 5, 10),
    ]);
    ranges
}

fn check_reads(blob: &[u8], index: &SeekIndex, plain: &[u8], seed: u64) {
    let blob = blob.to_vec();
    for (offset, len) in interesting_ranges(index, seed) {
        let got = read_at(&blob, index, offset, len).unwrap();
        let start = (offset as usize).min(plain.len());
        let end = (offset.saturating_add(len) as usize).min(plain.len());
        assert_eq!(got.len(), end - start, "length of read {offset}+{len}");
        assert!(got == plain[start..end], "content of read {offset}+{len}");
    }
}

/// Decodes, compares with the reference and checks many reads.
fn roundtrip(blob: &[u8], compression: Compression, span: u64, reference: &[u8]) -> SeekIndex {
    let (out, index) = decode(blob, compression, span).unwrap();
    assert!(
        out == reference,
        "decoder output differs from the reference"
    );
    assert_eq!(index.uncompressed_size, reference.len() as u64);
    assert_eq!(index.compressed_size, blob.len() as u64);
    index.validate().unwrap();
    check_reads(blob, &index, reference, span ^ blob.len() as u64);
    index
}

#[test]
fn media_types_map_to_compression() {
    let cases = [
        (
            "application/vnd.oci.image.layer.v1.tar",
            Some(Compression::None),
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Some(Compression::Gzip),
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+zstd",
            Some(Compression::Zstd),
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            Some(Compression::None),
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            Some(Compression::Gzip),
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
            Some(Compression::Zstd),
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Some(Compression::Gzip),
        ),
        (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            Some(Compression::Gzip),
        ),
        ("application/vnd.oci.image.config.v1+json", None),
        ("application/vnd.oci.image.layer.v1.tar+bzip2", None),
    ];
    for (media_type, want) in cases {
        assert_eq!(
            Compression::from_media_type(media_type),
            want,
            "{media_type}"
        );
    }
}

#[test]
fn gzip_single_member_compressible() {
    let data = compressible(3 << 20, 1);
    let blob = gzip_member(&data, 6);
    let index = roundtrip(&blob, Compression::Gzip, 256 * KIB, &data);
    assert!(index.points.len() >= 8, "{} points", index.points.len());
    // Every point after the first lies inside the member and carries a window.
    assert!(index.points[1..].iter().all(|p| p.window.is_some()));
    for pair in index.points.windows(2) {
        assert!(pair[1].uncompressed_offset - pair[0].uncompressed_offset >= 256 * KIB);
    }
}

#[test]
fn gzip_incompressible_and_stored_blocks() {
    let data = incompressible(1 << 20, 2);
    roundtrip(&gzip_member(&data, 6), Compression::Gzip, 64 * KIB, &data);
    let data = compressible(1 << 20, 3);
    let index = roundtrip(&gzip_member(&data, 0), Compression::Gzip, 64 * KIB, &data);
    assert!(index.points.len() >= 8, "{} points", index.points.len());
}

#[test]
fn gzip_multi_member() {
    let parts = [
        compressible(700_000, 4),
        Vec::new(),
        incompressible(300_000, 5),
        compressible(500_000, 6),
    ];
    let mut blob = gzip_member(&parts[0], 9);
    blob.extend(gzip_member(&parts[1], 6));
    blob.extend(gzip_member_with_header(&parts[2]));
    blob.extend(gzip_member(&parts[3], 1));
    let data = parts.concat();
    assert_eq!(reference_gunzip(&blob), data);
    for span in [KIB, 100 * KIB, 1 << 40] {
        let index = roundtrip(&blob, Compression::Gzip, span, &data);
        // Reads across each member boundary, starting well before it.
        let mut boundary = 0u64;
        for part in &parts {
            boundary += part.len() as u64;
            let offset = boundary.saturating_sub(150_000);
            let got = read_at(&blob, &index, offset, 300_000).unwrap();
            let end = (boundary + 150_000).min(data.len() as u64) as usize;
            assert!(
                got == data[offset as usize..end],
                "read across member end {boundary}, span {span}"
            );
        }
    }
}

/// Members written by the gzip tool (zlib itself), joined like `cat a.gz b.gz`.
#[test]
fn gzip_tool_members() {
    let gzip = |data: &[u8], level: &str| {
        let mut child = std::process::Command::new("gzip")
            .args(["-c", level])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the gzip tool is installed");
        let mut stdin = child.stdin.take().unwrap();
        let input = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success());
        out.stdout
    };
    let (a, b) = (compressible(600_000, 24), compressible(500_000, 25));
    let blob = [gzip(&a, "-1"), gzip(&b, "-9")].concat();
    let data = [a, b].concat();
    let index = roundtrip(&blob, Compression::Gzip, KIB, &data);
    assert!(index.points.len() >= 20, "{} points", index.points.len());
}

#[test]
fn gzip_tiny_and_huge_spans() {
    let data = compressible(1 << 20, 7);
    let blob = gzip_member(&data, 6);
    let tiny = roundtrip(&blob, Compression::Gzip, KIB, &data);
    // flate2 (miniz_oxide) writes blocks of ~150 KB here: a point at each.
    assert!(tiny.points.len() >= 6, "{} points", tiny.points.len());
    assert!(
        tiny.points.iter().any(|p| p.bits > 0),
        "no point with pending bits"
    );
    let huge = roundtrip(&blob, Compression::Gzip, 1 << 40, &data);
    assert_eq!(huge.points.len(), 1);
    assert_eq!(
        (
            huge.points[0].compressed_offset,
            huge.points[0].uncompressed_offset
        ),
        (0, 0)
    );
}

#[test]
fn empty_streams() {
    let (out, index) = decode(&gzip_member(b"", 6), Compression::Gzip, KIB).unwrap();
    assert!(out.is_empty());
    assert_eq!(index.uncompressed_size, 0);
    assert_eq!(read_at(&gzip_member(b"", 6), &index, 0, 10).unwrap(), b"");
    let (out, index) = decode(&zstd_frame(b""), Compression::Zstd, KIB).unwrap();
    assert!(out.is_empty());
    assert_eq!(index.points.len(), 1);
    let (out, index) = decode(b"", Compression::None, KIB).unwrap();
    assert!(out.is_empty());
    assert_eq!(read_at(&Vec::new(), &index, 0, 10).unwrap(), b"");
    // Zero bytes are no gzip or zstd stream.
    for compression in [Compression::Gzip, Compression::Zstd] {
        let err = decode(b"", compression, KIB).unwrap_err();
        assert!(
            matches!(err, SeekError::Truncated { offset: 0, .. }),
            "{compression}: {err}"
        );
    }
}

#[test]
fn zstd_single_and_multi_frame() {
    let data = compressible(1 << 20, 8);
    let index = roundtrip(&zstd_frame(&data), Compression::Zstd, KIB, &data);
    assert_eq!(index.points.len(), 1, "one frame, one point");

    let parts = [
        compressible(300_000, 9),
        incompressible(200_000, 10),
        Vec::new(),
        compressible(400_000, 11),
    ];
    let blob: Vec<u8> = parts.iter().flat_map(|p| zstd_frame(p)).collect();
    let data = parts.concat();
    assert_eq!(reference_unzstd(&blob), data);
    let index = roundtrip(&blob, Compression::Zstd, KIB, &data);
    // The empty frame adds no point: it starts where the next one does.
    assert_eq!(index.points.len(), 3);
    let index = roundtrip(&blob, Compression::Zstd, 1 << 40, &data);
    assert_eq!(index.points.len(), 1);
}

#[test]
fn plain_layers_read_the_blob() {
    let data = compressible(100_000, 12);
    let index = roundtrip(&data, Compression::None, KIB, &data);
    assert!(index.points.is_empty());
    assert_eq!(index.compressed_span_for(10, 20), (10, 30));
}

#[test]
fn finish_drains_what_was_not_read() {
    let data = compressible(500_000, 13);
    let blob = gzip_member(&data, 6);
    let mut dec = SeekingDecoder::new(&blob[..], Compression::Gzip, 64 * KIB).unwrap();
    let mut head = vec![0u8; 1000];
    dec.read_exact(&mut head).unwrap();
    let index = dec.finish().unwrap();
    assert_eq!(index.uncompressed_size, data.len() as u64);
    assert_eq!(index.compressed_size, blob.len() as u64);
}

#[test]
fn truncated_streams_fail() {
    let data = compressible(300_000, 14);
    let gz = gzip_member(&data, 6);
    let zst = zstd_frame(&data);
    for cut in [
        1,
        5,
        9,
        10,
        11,
        100,
        gz.len() / 2,
        gz.len() - 9,
        gz.len() - 4,
        gz.len() - 1,
    ] {
        let err = decode(&gz[..cut], Compression::Gzip, KIB).unwrap_err();
        assert!(
            matches!(err, SeekError::Truncated { .. }),
            "gzip cut at {cut}: {err}"
        );
    }
    for cut in [1, 4, 6, 100, zst.len() / 2, zst.len() - 1] {
        let err = decode(&zst[..cut], Compression::Zstd, KIB).unwrap_err();
        assert!(
            matches!(err, SeekError::Truncated { .. }),
            "zstd cut at {cut}: {err}"
        );
    }
    // A blob shorter than its index says fails the read instead of coming back short.
    let (_, index) = decode(&gz, Compression::Gzip, KIB).unwrap();
    let short = gz[..gz.len() / 2].to_vec();
    let err = read_at(&short, &index, data.len() as u64 - 100, 100).unwrap_err();
    assert!(matches!(err, SeekError::Truncated { .. }), "{err}");
}

#[test]
fn corrupt_streams_fail() {
    let data = compressible(200_000, 15);
    let gz = gzip_member(&data, 6);
    let zst = zstd_frame(&data);
    let mut rng = fastrand::Rng::with_seed(16);
    // Avoid the gzip header's mtime/os fields and the final byte's padding
    // bits: those change nothing that can be checked.
    for _ in 0..40 {
        let mut bad = gz.clone();
        let at = rng.usize(10..gz.len() - 10);
        bad[at] ^= 1 << rng.u8(0..8);
        assert!(
            decode(&bad, Compression::Gzip, KIB).is_err(),
            "gzip flip at {at} went unnoticed"
        );
        let mut bad = zst.clone();
        let at = rng.usize(0..zst.len());
        bad[at] ^= 1 << rng.u8(0..8);
        assert!(
            decode(&bad, Compression::Zstd, KIB).is_err(),
            "zstd flip at {at} went unnoticed"
        );
    }
    // Trailing garbage after the last member is not another member.
    let mut bad = gz.clone();
    bad.extend_from_slice(b"garbage");
    let err = decode(&bad, Compression::Gzip, KIB).unwrap_err();
    assert!(matches!(err, SeekError::Corrupt { .. }), "{err}");
    // A wrong CRC32 in the trailer is caught.
    let mut bad = gz.clone();
    let crc_at = bad.len() - 8;
    bad[crc_at] ^= 0xff;
    let err = decode(&bad, Compression::Gzip, KIB).unwrap_err();
    assert!(err.to_string().contains("check"), "{err}");
}

#[test]
fn reader_errors_surface() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "network went away",
            ))
        }
    }
    let mut dec = SeekingDecoder::new(Failing, Compression::Gzip, KIB).unwrap();
    let err = dec.read(&mut [0u8; 10]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert!(matches!(dec.finish(), Err(SeekError::Read(_))));
}

/// A blob that records which ranges were fetched.
struct Recording {
    bytes: Vec<u8>,
    fetched: Mutex<Vec<(u64, u64)>>,
}

impl BlobReader for Recording {
    fn size(&self) -> u64 {
        self.bytes.size()
    }

    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let got = self.bytes.read_at(offset, len)?;
        self.fetched
            .lock()
            .unwrap()
            .push((offset, got.len() as u64));
        Ok(got)
    }
}

#[test]
fn reads_fetch_only_the_compressed_span() {
    let data = compressible(2 << 20, 17);
    let blob = gzip_member(&data, 6);
    for span in [64 * KIB, 1 << 40] {
        let (_, index) = decode(&blob, Compression::Gzip, span).unwrap();
        let rec = Recording {
            bytes: blob.clone(),
            fetched: Mutex::new(Vec::new()),
        };
        for (offset, len) in [(0, 100), (300_000, 5000), (1_000_000, 200_000)] {
            rec.fetched.lock().unwrap().clear();
            let got = read_at(&rec, &index, offset, len).unwrap();
            assert!(got == data[offset as usize..(offset + len) as usize]);
            let (start, end) = index.compressed_span_for(offset, len);
            let fetched = rec.fetched.lock().unwrap().clone();
            for &(at, n) in &fetched {
                assert!(
                    at >= start && at + n <= end,
                    "fetch {at}+{n} outside {start}..{end}"
                );
                assert!(n <= FETCH_MAX);
            }
            let total: u64 = fetched.iter().map(|f| f.1).sum();
            if offset == 0 {
                // A small read at the start of a long stream fetches one small chunk.
                assert!(total <= FETCH_MIN && fetched.len() == 1, "{fetched:?}");
            }
        }
    }
}

#[test]
fn index_serializes_compactly() {
    let data = [compressible(10 << 20, 18), incompressible(2 << 20, 19)].concat();
    let blob = gzip_member(&data, 6);
    let (_, index) = decode(&blob, Compression::Gzip, DEFAULT_SPAN).unwrap();
    let json = serde_json::to_vec(&index).unwrap();
    assert!(
        json.len() * 20 <= blob.len(),
        "index {} bytes for a {} byte layer",
        json.len(),
        blob.len()
    );
    let back: SeekIndex = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, index);
    check_reads(&blob, &back, &data, 20);
}

fn garbage_index() -> SeekIndex {
    let data = compressible(400_000, 21);
    let (_, index) = decode(&gzip_member(&data, 6), Compression::Gzip, 16 * KIB).unwrap();
    index
}

#[test]
fn bad_points_fail_cleanly() {
    let data = compressible(400_000, 21);
    let blob = gzip_member(&data, 6);
    let good = garbage_index();
    let mid = good.points.len() / 2;
    let offset = good.points[mid].uncompressed_offset + 10;
    let mut cases: Vec<(&str, SeekIndex)> = Vec::new();
    let mut idx = good.clone();
    idx.points[mid].bits = 9;
    cases.push(("bits", idx));
    let mut idx = good.clone();
    idx.points[mid].compressed_offset = blob.len() as u64 + 1000;
    cases.push(("offset past the end", idx));
    let mut idx = good.clone();
    idx.points[mid].window = Some(Window(vec![1, 2, 3]));
    cases.push(("undecodable window", idx));
    let mut idx = good.clone();
    idx.points.swap(mid, mid - 1);
    cases.push(("order", idx));
    let mut idx = good.clone();
    idx.points.clear();
    cases.push(("no points", idx));
    let mut idx = good.clone();
    idx.compression = Compression::Zstd;
    cases.push(("wrong compression", idx));
    for (what, idx) in cases {
        assert!(read_at(&blob, &idx, offset, 100).is_err(), "{what}");
    }
    // Garbage in the middle of deflate data is caught by zlib.
    let mut idx = good.clone();
    idx.points[mid].compressed_offset -= 100;
    assert!(
        read_at(&blob, &idx, offset, 100_000).is_err(),
        "shifted offset"
    );
}

fn garbage_fixture() -> &'static (Vec<u8>, SeekIndex) {
    static FIXTURE: OnceLock<(Vec<u8>, SeekIndex)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let blob = gzip_member(&compressible(400_000, 21), 6);
        (blob, garbage_index())
    })
}

/// A layer blob, what it decompresses to, and its index.
struct Layer {
    blob: Vec<u8>,
    plain: Vec<u8>,
    index: SeekIndex,
}

fn reads_fixture() -> &'static [Layer] {
    static FIXTURE: OnceLock<Vec<Layer>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let a = compressible(400_000, 22);
        let b = incompressible(100_000, 23);
        let ab = [a.clone(), b.clone()].concat();
        let two_members = [gzip_member(&a, 6), gzip_member_with_header(&b)].concat();
        let two_frames = [zstd_frame(&a), zstd_frame(&b)].concat();
        [
            (two_members, Compression::Gzip, 8 * KIB),
            (gzip_member(&ab, 0), Compression::Gzip, 32 * KIB),
            (two_frames, Compression::Zstd, KIB),
            (ab.clone(), Compression::None, 0),
        ]
        .into_iter()
        .map(|(blob, compression, span)| {
            let (_, index) = decode(&blob, compression, span).unwrap();
            Layer {
                blob,
                plain: ab.clone(),
                index,
            }
        })
        .collect()
    })
}

/// A point found before a read's offset lies between the index's point and
/// the offset; an index with it reads the same bytes, and a read at the
/// offset then fetches from the new point on, not from the index's.
#[test]
fn a_point_before_an_offset_starts_reads_there() {
    let data = compressible(3 << 20, 31);
    let blob = gzip_member(&data, 6);
    let (_, index) = decode(&blob, Compression::Gzip, 1 << 20).unwrap();
    for offset in [700_000u64, 1_500_000, 2_900_000] {
        let base = index.point_for(offset).unwrap().clone();
        let p = point_before(&blob, &index, offset).unwrap().unwrap();
        assert!(
            p.uncompressed_offset <= offset && p.uncompressed_offset > base.uncompressed_offset,
            "point at {} for offset {offset}, index point at {}",
            p.uncompressed_offset,
            base.uncompressed_offset
        );
        assert!(
            offset - p.uncompressed_offset < 256 * KIB,
            "a deflate block is shorter"
        );
        let merged = index.with_points(std::slice::from_ref(&p)).unwrap();
        check_reads(&blob, &merged, &data, offset);
        let rec = Recording {
            bytes: blob.clone(),
            fetched: Mutex::new(Vec::new()),
        };
        let got = read_at(&rec, &merged, offset, 1000).unwrap();
        assert!(got == data[offset as usize..offset as usize + 1000]);
        let first = rec.fetched.lock().unwrap()[0].0;
        assert_eq!(first, p.fetch_start());
    }
    // A reader that holds only part of the blob (a chunk cache) yields no
    // point where its bytes end, rather than an error or a wrong point.
    struct Holding<'a>(&'a Vec<u8>, u64);
    impl BlobReader for Holding<'_> {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
            let len = len.min(self.1.saturating_sub(offset));
            self.0.read_at(offset, len)
        }
    }
    let held = index.points[2].compressed_offset + 1000;
    for (holds, offset) in [(held, 2_900_000), (blob.len() as u64 / 3, 2_900_000)] {
        let far = point_before(&Holding(&blob, holds), &index, offset);
        assert!(matches!(far, Ok(None)), "{far:?}");
    }
    // Layers that are not gzip have no such points.
    let (_, plain) = decode(&data, Compression::None, 0).unwrap();
    assert!(point_before(&data, &plain, 5000).unwrap().is_none());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn points_before_offsets_read_right(which in 0usize..2, offset in 0u64..500_000, len in 0u64..50_000) {
        let Layer { blob, plain, index } = &reads_fixture()[which];
        let Some(p) = point_before(blob, index, offset).unwrap() else {
            return Ok(());
        };
        prop_assert!(p.uncompressed_offset <= offset);
        let merged = index.with_points(&[p]).unwrap();
        let got = read_at(blob, &merged, offset, len).unwrap();
        let end = ((offset + len) as usize).min(plain.len());
        prop_assert!(got == plain[offset as usize..end]);
    }

    #[test]
    fn random_reads_match_full_decompression(which in 0usize..4, offset in 0u64..520_000, len in 0u64..120_000) {
        let Layer { blob, plain, index } = &reads_fixture()[which];
        let got = read_at(blob, index, offset, len).unwrap();
        let start = (offset as usize).min(plain.len());
        let end = ((offset + len) as usize).min(plain.len());
        prop_assert!(got == plain[start..end]);
    }

    #[test]
    fn garbage_points_never_panic(
        compressed in any::<u64>(),
        uncompressed in 0u64..400_000,
        bits in any::<u8>(),
        window in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40_000)),
        compress_window in any::<bool>(),
        offset in 0u64..400_000,
    ) {
        let (blob, good) = garbage_fixture();
        let mut index = good.clone();
        let mid = index.points.len() / 2;
        index.points[mid] = SeekPoint {
            compressed_offset: compressed % (blob.len() as u64 + 10),
            uncompressed_offset: uncompressed,
            bits,
            window: window.map(|w| if compress_window { Window::compress(&w).unwrap() } else { Window(w) }),
        };
        if let Ok(got) = read_at(blob, &index, offset, 5000) {
            prop_assert!(got.len() as u64 <= 5000);
        }
    }
}
