//! The zTOC reader. No SOCI tool can be installed here, so zTOCs are written as JSON and encoded
//! by Debian's `flatc` against SOCI's published schema (the encoder is not ours); their zinfo is
//! built, in zran's layout, from the seek points our own indexing pass finds in a real gzip
//! layer (skopeo's).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::foreign::{Layout, oci_layout, run, sample_layer};
use lazypull::digest::Digest;
use lazypull::foreign::ztoc::{self, WINDOW_SIZE, Ztoc, ZtocCompression, ZtocError};
use lazypull::layer::seek::{self, Compression, SeekIndex, SeekPoint, SeekingDecoder, Window};
use lazypull::layer::tar::{EntryKind, TarEntry, read_entries};
use serde_json::{Value, json};

const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/foreign/ztoc.fbs");
const SPAN: u64 = 256 << 10;

/// A real gzip layer, what it inflates to, and the checkpoints zran would record for it: one
/// after the gzip header, then one per seek point of our own pass.
struct Layer {
    blob: Vec<u8>,
    tar: Vec<u8>,
    /// (in, out, bits, window)
    checkpoints: Vec<(u64, u64, u8, Vec<u8>)>,
}

fn gzip_layer(work: &Path) -> Layer {
    let (blob, media_type, _) = Layout::open(&oci_layout(work, &sample_layer())).layer();
    assert_eq!(media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
    // A plain 10-byte gzip header (no name, comment or extra field).
    assert_eq!((&blob[..3], blob[3]), (&[0x1f, 0x8b, 8][..], 0));
    let mut decoder = SeekingDecoder::new(&blob[..], Compression::Gzip, SPAN).unwrap();
    let mut tar = Vec::new();
    decoder.read_to_end(&mut tar).unwrap();
    let index = decoder.finish().unwrap();
    let window = |out: u64| {
        let out = out as usize;
        let mut w = vec![0u8; WINDOW_SIZE];
        let have = out.min(WINDOW_SIZE);
        w[WINDOW_SIZE - have..].copy_from_slice(&tar[out - have..out]);
        w
    };
    let mut checkpoints = vec![(10, 0, 0, window(0))];
    for p in index.points.iter().filter(|p| p.window.is_some()) {
        checkpoints.push((
            p.compressed_offset,
            p.uncompressed_offset,
            p.bits,
            window(p.uncompressed_offset),
        ));
    }
    assert!(
        checkpoints.len() >= 4,
        "too few seek points: {}",
        checkpoints.len()
    );
    Layer {
        blob,
        tar,
        checkpoints,
    }
}

/// zinfo version 2 (every checkpoint) or 1 (checkpoint 0 left out).
fn zinfo(checkpoints: &[(u64, u64, u8, Vec<u8>)], version: u8) -> Vec<u8> {
    let mut out = (checkpoints.len() as i32).to_le_bytes().to_vec();
    out.extend((SPAN as i64).to_le_bytes());
    let skip = usize::from(version == 1);
    for (input, output, bits, window) in &checkpoints[skip..] {
        out.extend((*input as i64).to_le_bytes());
        out.extend((*output as i64).to_le_bytes());
        out.push(*bits);
        out.extend(window);
    }
    out
}

/// The sha256 of each span's compressed bytes, as soci's builder computes them.
fn span_digests(layer: &Layer) -> Vec<String> {
    let c = &layer.checkpoints;
    (0..c.len())
        .map(|i| {
            let start = c[i].0 - u64::from(c[i].2 > 0);
            let end = c.get(i + 1).map_or(layer.blob.len() as u64, |n| n.0);
            Digest::of(&layer.blob[start as usize..end as usize]).to_string()
        })
        .collect()
}

fn rfc3339(sec: i64) -> String {
    let (y, mo, d, h, mi, s) = lazypull::time::utc(sec);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// A flatc JSON string holding arbitrary bytes (flatc's `\x` escapes).
fn flatc_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"./_-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

/// The zTOC JSON soci's builder would write for `entries` (our tar reader's, with offsets).
fn ztoc_json(layer: &Layer, entries: &[TarEntry], zinfo: &[u8]) -> String {
    let metadata: Vec<String> = entries
        .iter()
        .map(|e| {
            let (kind, offset, size, link, dev) = match &e.kind {
                EntryKind::File { offset, size } => ("reg", *offset, *size, &[][..], (0, 0)),
                EntryKind::Dir => ("dir", 0, 0, &[][..], (0, 0)),
                EntryKind::Symlink { target } => ("symlink", 0, 0, &target[..], (0, 0)),
                EntryKind::Hardlink { target } => ("hardlink", 0, 0, &target[..], (0, 0)),
                EntryKind::Char { major, minor } => ("char", 0, 0, &[][..], (*major, *minor)),
                EntryKind::Block { major, minor } => ("block", 0, 0, &[][..], (*major, *minor)),
                EntryKind::Fifo => ("fifo", 0, 0, &[][..], (0, 0)),
            };
            // soci keeps every PAX record; a `path` record is not an xattr.
            let mut xattrs = vec![format!(
                "{{\"key\": \"path\", \"value\": \"{}\"}}",
                flatc_string(&e.path)
            )];
            xattrs.extend(e.xattrs.iter().map(|(k, v)| {
                format!(
                    "{{\"key\": \"SCHILY.xattr.{k}\", \"value\": \"{}\"}}",
                    flatc_string(v)
                )
            }));
            format!(
                "{{\"name\": \"{}\", \"type\": \"{kind}\", \"uncompressed_offset\": {offset}, \
                 \"uncompressed_size\": {size}, \"linkname\": \"{}\", \"mode\": {}, \"uid\": {}, \
                 \"gid\": {}, \"uname\": \"root\", \"gname\": \"root\", \"mod_time\": \"{}\", \
                 \"devmajor\": {}, \"devminor\": {}, \"xattrs\": [{}]}}",
                flatc_string(&e.path),
                flatc_string(link),
                e.mode,
                e.uid,
                e.gid,
                rfc3339(e.mtime.sec),
                dev.0,
                dev.1,
                xattrs.join(", ")
            )
        })
        .collect();
    let digests = span_digests(layer);
    let checkpoints: Vec<String> = zinfo.iter().map(u8::to_string).collect();
    format!(
        "{{\"version\": \"0.9\", \"build_tool_identifier\": \"AWS SOCI CLI v0.2\", \
         \"compressed_archive_size\": {}, \"uncompressed_archive_size\": {}, \
         \"toc\": {{\"metadata\": [{}]}}, \"compression_info\": {{\"compression_algorithm\": \
         \"Gzip\", \"max_span_id\": {}, \"span_digests\": {}, \"checkpoints\": [{}]}}}}",
        layer.blob.len(),
        layer.tar.len(),
        metadata.join(", "),
        digests.len() - 1,
        json!(digests),
        checkpoints.join(",")
    )
}

/// `flatc -b` of `json`: the zTOC binary.
fn encode(dir: &Path, json: &str) -> Vec<u8> {
    std::fs::write(dir.join("ztoc.json"), json).unwrap();
    run(Command::new("flatc")
        .args(["-b", "--allow-non-utf8", "-o"])
        .arg(dir)
        .arg(SCHEMA)
        .arg(dir.join("ztoc.json")));
    std::fs::read(dir.join("ztoc.bin")).unwrap()
}

/// `flatc --json` of a zTOC binary, `\x` escapes read as the bytes they stand for (so each
/// string's chars are its bytes: all test strings are ASCII or binary).
fn decode(dir: &Path, binary: &[u8]) -> Value {
    std::fs::write(dir.join("round.bin"), binary).unwrap();
    run(Command::new("flatc")
        .args([
            "--json",
            "--strict-json",
            "--defaults-json",
            "--allow-non-utf8",
            "--raw-binary",
            "-o",
        ])
        .arg(dir)
        .arg(SCHEMA)
        .arg("--")
        .arg(dir.join("round.bin")));
    let text = std::fs::read_to_string(dir.join("round.json")).unwrap();
    serde_json::from_str(&text.replace("\\x", "\\u00")).unwrap()
}

fn bytes_of(value: &Value) -> Vec<u8> {
    value
        .as_str()
        .unwrap()
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap())
        .collect()
}

fn tar_entries(tar: &[u8]) -> Vec<TarEntry> {
    read_entries(&mut &tar[..]).unwrap()
}

#[test]
fn reader_agrees_with_flatc_and_the_layer() {
    let work = tempfile::tempdir().unwrap();
    let layer = gzip_layer(work.path());
    let entries = tar_entries(&layer.tar);
    let blob = zinfo(&layer.checkpoints, 2);
    let binary = encode(work.path(), &ztoc_json(&layer, &entries, &blob));
    let parsed: Ztoc = ztoc::parse(&binary).unwrap();

    // What soci's builder records is what our tar reader saw, offsets included.
    assert_eq!(parsed.entries, entries);
    assert_eq!(parsed.compression, ZtocCompression::Gzip);
    assert_eq!(parsed.span_size, SPAN);
    assert_eq!(
        (parsed.compressed_size, parsed.uncompressed_size),
        (layer.blob.len() as u64, layer.tar.len() as u64)
    );

    // And what flatc reads back from the same binary.
    let round = decode(work.path(), &binary);
    assert_eq!(round["version"], parsed.version.as_str());
    assert_eq!(round["build_tool_identifier"], parsed.build_tool.as_str());
    let metadata = round["toc"]["metadata"].as_array().unwrap();
    assert_eq!(metadata.len(), parsed.entries.len());
    for (m, e) in metadata.iter().zip(&parsed.entries) {
        assert_eq!(bytes_of(&m["name"]), e.path);
        assert_eq!(m["mode"], e.mode);
        assert_eq!(
            (m["uid"].as_u64(), m["gid"].as_u64()),
            (Some(u64::from(e.uid)), Some(u64::from(e.gid)))
        );
        assert_eq!(m["mod_time"], rfc3339(e.mtime.sec).as_str());
        match &e.kind {
            EntryKind::File { offset, size } => {
                assert_eq!(
                    (
                        m["type"].as_str(),
                        m["uncompressed_offset"].as_u64(),
                        m["uncompressed_size"].as_u64()
                    ),
                    (Some("reg"), Some(*offset), Some(*size))
                );
            }
            EntryKind::Symlink { target } | EntryKind::Hardlink { target } => {
                assert_eq!(&bytes_of(&m["linkname"]), target)
            }
            EntryKind::Char { major, minor } | EntryKind::Block { major, minor } => {
                assert_eq!(
                    (m["devmajor"].as_u64(), m["devminor"].as_u64()),
                    (Some(u64::from(*major)), Some(u64::from(*minor)))
                );
            }
            EntryKind::Dir | EntryKind::Fifo => {}
        }
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = m["xattrs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| {
                let key = bytes_of(&x["key"]);
                key.strip_prefix(b"SCHILY.xattr.")
                    .map(|k| (k.to_vec(), bytes_of(&x["value"])))
            })
            .collect();
        let ours: Vec<(Vec<u8>, Vec<u8>)> = e
            .xattrs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
            .collect();
        assert_eq!(xattrs, ours);
    }
    let binary_xattr = parsed
        .entries
        .iter()
        .find(|e| e.path == b"usr/bin/big")
        .unwrap();
    assert_eq!(
        binary_xattr.xattrs["security.capability"],
        [1, 0, 0, 2, 0x20, 0, 0, 0, 0xff, 0xfe]
    );
    let info = &round["compression_info"];
    assert_eq!(
        info["max_span_id"].as_u64(),
        Some(parsed.span_digests.len() as u64 - 1)
    );
    let digests: Vec<String> = parsed
        .span_digests
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(info["span_digests"], json!(digests));
    let zinfo_bytes: Vec<u8> = info["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(zinfo_bytes, blob);
    for (i, c) in parsed.checkpoints.iter().enumerate() {
        let at = 12 + i * (17 + WINDOW_SIZE);
        let record = &zinfo_bytes[at..at + 17 + WINDOW_SIZE];
        assert_eq!(c.compressed_offset.to_le_bytes(), record[..8]);
        assert_eq!(c.uncompressed_offset.to_le_bytes(), record[8..16]);
        assert_eq!(c.bits, record[16]);
        assert_eq!(c.window, record[17..]);
    }
    // Each span's bytes hash to its digest.
    for (i, digest) in parsed.span_digests.iter().enumerate() {
        let range = parsed.span_range(i).unwrap();
        assert_eq!(
            Digest::of(&layer.blob[range.start as usize..range.end as usize]),
            *digest
        );
    }
    assert_eq!(parsed.span_for(0), Some(0));
    assert_eq!(
        parsed.span_for(u64::MAX),
        Some(parsed.checkpoints.len() - 1)
    );
}

/// A zTOC checkpoint as one of our gzip seek points.
fn seek_point(c: &ztoc::Checkpoint) -> SeekPoint {
    let compressed = zstd::bulk::compress(&c.window, 3).unwrap();
    let window: Window = serde_json::from_value(json!(STANDARD.encode(compressed))).unwrap();
    SeekPoint {
        compressed_offset: c.compressed_offset,
        uncompressed_offset: c.uncompressed_offset,
        bits: c.bits,
        window: Some(window),
    }
}

#[test]
fn reading_from_each_checkpoint_gives_the_layers_bytes_in_both_zinfo_versions() {
    let work = tempfile::tempdir().unwrap();
    let layer = gzip_layer(work.path());
    let entries = tar_entries(&layer.tar);
    for version in [2, 1] {
        let binary = encode(
            work.path(),
            &ztoc_json(&layer, &entries, &zinfo(&layer.checkpoints, version)),
        );
        let parsed = ztoc::parse(&binary).unwrap();
        let found: Vec<_> = parsed
            .checkpoints
            .iter()
            .map(|c| {
                (
                    c.compressed_offset,
                    c.uncompressed_offset,
                    c.bits,
                    c.window.clone(),
                )
            })
            .collect();
        assert_eq!(found, layer.checkpoints, "zinfo version {version}");
        let index = SeekIndex {
            compression: Compression::Gzip,
            span: parsed.span_size,
            compressed_size: parsed.compressed_size,
            uncompressed_size: parsed.uncompressed_size,
            points: parsed.checkpoints.iter().map(seek_point).collect(),
        };
        index.validate().unwrap();
        for c in &parsed.checkpoints {
            let at = c.uncompressed_offset;
            let got = seek::read_at(&layer.blob, &index, at, 100_000).unwrap();
            let end = (at as usize + 100_000).min(layer.tar.len());
            assert_eq!(
                got,
                layer.tar[at as usize..end],
                "checkpoint at {at}, version {version}"
            );
        }
    }
}

#[test]
fn hostile_ztocs_are_typed_errors() {
    let work = tempfile::tempdir().unwrap();
    let layer = gzip_layer(work.path());
    let entries = tar_entries(&layer.tar);
    let good = ztoc_json(&layer, &entries, &zinfo(&layer.checkpoints, 2));
    let binary = encode(work.path(), &good);
    // (The last byte is the version string's NUL, which a reader need not see.)
    for n in [0, 3, 16, binary.len() / 2, binary.len() - 4] {
        assert!(ztoc::parse(&binary[..n]).is_err(), "cut at {n}");
    }

    let mut bad_zinfo = Vec::new();
    // A count far beyond the bytes, a negative count, a length that is neither version.
    let mut huge = zinfo(&layer.checkpoints, 2);
    huge[..4].copy_from_slice(&i32::MAX.to_le_bytes());
    bad_zinfo.push(huge);
    let mut negative = zinfo(&layer.checkpoints, 2);
    negative[..4].copy_from_slice(&(-3i32).to_le_bytes());
    bad_zinfo.push(negative);
    let mut odd = zinfo(&layer.checkpoints, 2);
    odd.pop();
    bad_zinfo.push(odd);
    // Checkpoints out of order, past the end, with 8 pending bits.
    let mut swapped = layer.checkpoints.clone();
    swapped.swap(1, 2);
    bad_zinfo.push(zinfo(&swapped, 2));
    let mut past = layer.checkpoints.clone();
    past.last_mut().unwrap().0 = layer.blob.len() as u64 + 1;
    bad_zinfo.push(zinfo(&past, 2));
    let mut bits = layer.checkpoints.clone();
    bits[1].2 = 8;
    bad_zinfo.push(zinfo(&bits, 2));
    for (i, blob) in bad_zinfo.iter().enumerate() {
        let binary = encode(work.path(), &ztoc_json(&layer, &entries, blob));
        assert!(
            matches!(ztoc::parse(&binary), Err(ZtocError::Checkpoints(_))),
            "zinfo case {i}"
        );
    }

    // Edits of the JSON that flatc still encodes.
    let digests = span_digests(&layer);
    let max_span = format!("\"max_span_id\": {}", digests.len() - 1);
    let reg = "\"type\": \"reg\", \"uncompressed_offset\": ";
    let edits: [(&str, String); 7] = [
        (&max_span, "\"max_span_id\": 1000".into()),
        (&digests[0], "sha256:nothex".into()),
        ("\"type\": \"reg\"", "\"type\": \"socket\"".into()),
        (
            "\"name\": \"etc/hello\"",
            "\"name\": \"../../etc/hello\"".into(),
        ),
        (reg, format!("{reg}99999999999")),
        ("\"mod_time\": \"", "\"mod_time\": \"yesterday".into()),
        ("\"devmajor\": 1,", "\"devmajor\": -1,".into()),
    ];
    for (from, to) in &edits {
        assert!(good.contains(from), "{from}");
        let binary = encode(work.path(), &good.replacen(from, to, 1));
        let result = ztoc::parse(&binary);
        assert!(result.is_err(), "{from} -> {to}: {result:?}");
    }
}
