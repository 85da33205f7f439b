//! The eStargz reader against layers `ctr-remote image convert --estargz` made, on a containerd
//! the test starts itself.

mod common;

use std::io::{Read, Write};

use common::foreign::{
    Containerd, Layout, file_contents, listed, oci_layout, sample_layer,
    tar_entries_without_offsets, tar_listing, without_offset,
};
use flate2::Compression;
use flate2::read::{GzDecoder, MultiGzDecoder};
use flate2::write::GzEncoder;
use lazypull::digest::Digest;
use lazypull::foreign::estargz::{
    self, Estargz, EstargzError, FOOTER_SIZE, LEGACY_FOOTER_SIZE, Prefetch, TOC_DIGEST_ANNOTATION,
};
use lazypull::foreign::{ChunkError, ChunkKind};
use lazypull::layer::tar::EntryKind;
use tempfile::TempDir;

const METADATA: [&[u8]; 3] = [
    b"stargz.index.json",
    b".no.prefetch.landmark",
    b".prefetch.landmark",
];

struct Converted {
    _work: TempDir,
    blob: Vec<u8>,
    toc_digest: Digest,
}

/// The sample layer converted to eStargz with `options`; `record` names files to prioritize.
fn convert(options: &[&str], record: &[&str]) -> Converted {
    let work = tempfile::tempdir().unwrap();
    let layout = oci_layout(work.path(), &sample_layer());
    let containerd = Containerd::start();
    let mut options: Vec<String> = options.iter().map(|s| s.to_string()).collect();
    if !record.is_empty() {
        let file = work.path().join("record.json");
        let lines: String = record
            .iter()
            .map(|p| format!("{{\"path\":\"{p}\"}}\n"))
            .collect();
        std::fs::write(&file, lines).unwrap();
        options.push("--estargz-record-in".into());
        options.push(file.display().to_string());
    }
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let converted: Layout = containerd.estargz(work.path(), &layout, "test/sample", &options);
    let (blob, media_type, annotations) = converted.layer();
    assert_eq!(media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
    let toc_digest = annotations[TOC_DIGEST_ANNOTATION].parse().unwrap();
    Converted {
        _work: work,
        blob,
        toc_digest,
    }
}

fn read(blob: &[u8], expected: Option<&Digest>) -> Result<Estargz, EstargzError> {
    let size = blob.len() as u64;
    let tail = &blob[blob.len().saturating_sub(64)..];
    let footer = estargz::footer(tail, size)?;
    let range = footer.toc_range(size);
    estargz::parse_toc(
        &blob[range.start as usize..range.end as usize],
        footer.toc_offset,
        expected,
    )
}

fn uncompressed(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    MultiGzDecoder::new(blob).read_to_end(&mut out).unwrap();
    out
}

#[test]
fn toc_lists_the_layers_entries_and_its_chunks_hold_their_bytes() {
    let layer = convert(&["--estargz-chunk-size", "1000000"], &[]);
    let parsed = read(&layer.blob, Some(&layer.toc_digest)).unwrap();
    assert_eq!(parsed.toc_digest, layer.toc_digest);
    assert_eq!(parsed.prefetch, Prefetch::Nothing);
    let index = &parsed.index;
    let tar = uncompressed(&layer.blob);

    // What GNU tar lists, less the TOC and the landmark.
    let expected: Vec<_> = tar_listing(&tar)
        .into_iter()
        .filter(|l| !METADATA.contains(&l.name.as_bytes()))
        .collect();
    let got: Vec<_> = index.entries.iter().map(listed).collect();
    assert_eq!(got, expected);
    // And all the rest a tar header says (xattrs, devices, times), as our tar reader has it.
    let got: Vec<_> = index.entries.iter().cloned().map(without_offset).collect();
    assert_eq!(got, tar_entries_without_offsets(&tar, &METADATA));
    let caps = index
        .entries
        .iter()
        .find(|e| e.path == b"usr/bin/big")
        .unwrap();
    assert_eq!(
        caps.xattrs["security.capability"],
        [1, 0, 0, 2, 0x20, 0, 0, 0, 0xff, 0xfe]
    );

    // Each chunk's gzip member inflates to bytes that hash to its chunkDigest, and the chunks
    // of each file, in order, are its bytes.
    let contents = file_contents(&tar);
    for chunk in &index.chunks {
        assert_eq!(chunk.kind, ChunkKind::Data);
        assert!(chunk.compressed_offset < chunk.compressed_end);
        assert!(chunk.compressed_end <= index.toc_offset);
        let member = &layer.blob[chunk.compressed_offset as usize..chunk.compressed_end as usize];
        // The range starts with the chunk's member; what follows it up to the next chunk's
        // start are whole members of tar headers (the writer may close one after a file).
        let mut inflated = Vec::new();
        let mut decoder = flate2::bufread::GzDecoder::new(member);
        decoder.read_to_end(&mut inflated).unwrap();
        let rest = decoder.into_inner();
        if !rest.is_empty() {
            let mut headers = Vec::new();
            MultiGzDecoder::new(rest).read_to_end(&mut headers).unwrap();
            assert_eq!(headers.len() % 512, 0, "{chunk:?}");
        }
        let start = chunk.inner_offset as usize;
        let bytes = &inflated[start..start + chunk.size as usize];
        assert_eq!(Digest::of(bytes), chunk.digest);
        assert_eq!(estargz::decode_chunk(chunk, member).unwrap(), bytes);
    }
    let mut chunked = 0;
    for entry in &index.entries {
        let EntryKind::File { offset, size } = entry.kind else {
            continue;
        };
        let chunks = index.chunks_for(offset, size);
        chunked += usize::from(chunks.len() > 1);
        let mut bytes = Vec::new();
        for chunk in chunks {
            let member =
                &layer.blob[chunk.compressed_offset as usize..chunk.compressed_end as usize];
            bytes.extend(estargz::decode_chunk(chunk, member).unwrap());
        }
        assert_eq!(
            bytes,
            contents[&entry.path],
            "{}",
            String::from_utf8_lossy(&entry.path)
        );
    }
    // The 3 MiB file is split at the chunk size the converter was given.
    assert_eq!(chunked, 1);
    assert_eq!(
        index.chunks_for(0, index.content_size()).len(),
        index.chunks.len()
    );
}

#[test]
fn a_flipped_byte_in_a_chunk_is_refused() {
    let layer = convert(&[], &[]);
    let index = read(&layer.blob, None).unwrap().index;
    let chunk = index.chunks.iter().max_by_key(|c| c.size).unwrap();
    let mut member =
        layer.blob[chunk.compressed_offset as usize..chunk.compressed_end as usize].to_vec();
    let middle = member.len() / 2;
    member[middle] ^= 0x40;
    let err = estargz::decode_chunk(chunk, &member).unwrap_err();
    assert!(
        matches!(err, ChunkError::Digest { .. } | ChunkError::Decode { .. }),
        "{err}"
    );
    // A member cut short is refused before it is decoded.
    let err = estargz::decode_chunk(chunk, &member[..middle]).unwrap_err();
    assert!(matches!(err, ChunkError::Length { .. }), "{err}");
}

#[test]
fn the_prefetch_landmark_follows_the_recorded_files() {
    let layer = convert(&[], &["usr/bin/big", "etc/hello"]);
    let parsed = read(&layer.blob, Some(&layer.toc_digest)).unwrap();
    let Prefetch::Landmark { entries, end } = parsed.prefetch else {
        panic!("no prefetch landmark: {:?}", parsed.prefetch);
    };
    let before: Vec<_> = parsed.index.entries[..entries]
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File { .. }))
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect();
    assert_eq!(before, ["usr/bin/big", "etc/hello"]);
    // Their bytes all lie before the landmark, the others' after it.
    let big = &parsed.index.entries[..entries];
    for entry in &parsed.index.entries {
        let EntryKind::File { offset, size } = entry.kind else {
            continue;
        };
        let first = big.iter().any(|e| e.path == entry.path);
        for chunk in parsed.index.chunks_for(offset, size) {
            assert_eq!(chunk.compressed_end <= end, first, "{entry:?}");
        }
    }
}

/// The TOC member of `blob` rewritten with `edit` applied to its JSON (a valid gzip member).
fn with_toc_json(blob: &[u8], edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let footer = estargz::footer(blob, blob.len() as u64).unwrap();
    let range = footer.toc_range(blob.len() as u64);
    let member = &blob[range.start as usize..range.end as usize];
    let mut tar_bytes = Vec::new();
    GzDecoder::new(member).read_to_end(&mut tar_bytes).unwrap();
    let entries = lazypull::layer::tar::read_entries(&mut &tar_bytes[..]).unwrap();
    let EntryKind::File { offset, size } = entries[0].kind else {
        panic!()
    };
    let mut json = tar_bytes[offset as usize..(offset + size) as usize].to_vec();
    edit(&mut json);
    let mut header = tar::Header::new_ustar();
    header.set_path("stargz.index.json").unwrap();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, json.as_slice()).unwrap();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&builder.into_inner().unwrap()).unwrap();
    let mut out = blob[..range.start as usize].to_vec();
    out.extend(gz.finish().unwrap());
    out.extend(&blob[range.end as usize..]);
    out
}

#[test]
fn the_toc_digest_annotation_is_checked() {
    let layer = convert(&[], &[]);
    // The same TOC JSON in another member passes; one byte more fails.
    let same = with_toc_json(&layer.blob, |_| {});
    read(&same, Some(&layer.toc_digest)).unwrap();
    let edited = with_toc_json(&layer.blob, |json| {
        let at = json.windows(3).position(|w| w == b"420").unwrap();
        json[at..at + 3].copy_from_slice(b"511");
    });
    match read(&edited, Some(&layer.toc_digest)) {
        Err(EstargzError::DigestMismatch { expected, .. }) => {
            assert_eq!(expected, layer.toc_digest)
        }
        other => panic!("{other:?}"),
    }
    // Without an annotation, the edited TOC is what the blob says.
    assert!(read(&edited, None).is_ok());
    // A flipped byte in the compressed TOC is refused (by inflate or by the digest).
    let footer = estargz::footer(&layer.blob, layer.blob.len() as u64).unwrap();
    let mut flipped = layer.blob.clone();
    flipped[footer.toc_offset as usize + 40] ^= 1;
    assert!(read(&flipped, Some(&layer.toc_digest)).is_err());
}

#[test]
fn footers_current_legacy_and_broken() {
    let layer = convert(&[], &[]);
    let size = layer.blob.len() as u64;
    let footer = estargz::footer(&layer.blob, size).unwrap();
    assert_eq!(footer.size, FOOTER_SIZE);
    let payload = &layer.blob[..(size - FOOTER_SIZE) as usize];

    // stargz's original footer: the 22-byte extra field without the `SG` subfield header (no
    // tool here writes one, so it is made with flate2 at the same TOC offset).
    let mut legacy = payload.to_vec();
    let extra = format!("{:016x}STARGZ", footer.toc_offset).into_bytes();
    let gz = flate2::GzBuilder::new()
        .extra(extra)
        .write(Vec::new(), Compression::none());
    legacy.extend(gz.finish().unwrap());
    assert_eq!(legacy.len() as u64, size - FOOTER_SIZE + LEGACY_FOOTER_SIZE);
    let found = estargz::footer(&legacy, legacy.len() as u64).unwrap();
    assert_eq!(
        (found.toc_offset, found.size),
        (footer.toc_offset, LEGACY_FOOTER_SIZE)
    );
    assert_eq!(
        read(&legacy, None).unwrap(),
        read(&layer.blob, None).unwrap()
    );

    // Short tails, a plain gzip layer and a TOC offset past the footer are typed errors.
    for n in [0, 10, 46] {
        let tail = &layer.blob[layer.blob.len() - n..];
        assert!(
            matches!(estargz::footer(tail, size), Err(EstargzError::NoFooter(_))),
            "{n}"
        );
    }
    let plain = GzEncoder::new(Vec::new(), Compression::default())
        .finish()
        .unwrap();
    assert!(matches!(
        estargz::footer(&plain, plain.len() as u64),
        Err(EstargzError::NoFooter(_))
    ));
    let mut past = layer.blob.clone();
    let hex = past.len() - FOOTER_SIZE as usize + 16;
    past[hex..hex + 16].copy_from_slice(format!("{:016x}", size).as_bytes());
    assert!(matches!(
        estargz::footer(&past, size),
        Err(EstargzError::TocPastFooter { .. })
    ));
    let mut not_hex = layer.blob.clone();
    not_hex[hex] = b'g';
    assert!(matches!(
        estargz::footer(&not_hex, size),
        Err(EstargzError::NoFooter(_))
    ));
    // A TOC range that misses the member's start is refused, never a panic.
    let range = footer.toc_range(size);
    let cut = &layer.blob[range.start as usize + 3..range.end as usize];
    assert!(estargz::parse_toc(cut, footer.toc_offset, None).is_err());
}
