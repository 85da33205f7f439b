//! The zstd:chunked reader against layers `skopeo copy --dest-compress-format zstd:chunked` made.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::foreign::{
    Layout, file_contents, listed, oci_layout, run, sample_layer, tar_entries_without_offsets,
    tar_listing, without_offset,
};
use lazypull::digest::Digest;
use lazypull::foreign::zstd_chunked::{
    self, CHECKSUM_ANNOTATION, LEGACY_CHECKSUM_ANNOTATION, LEGACY_POSITION_ANNOTATION,
    POSITION_ANNOTATION, TocPosition, ZstdChunked, ZstdChunkedError,
};
use lazypull::foreign::{ChunkError, ChunkKind};
use lazypull::layer::tar::EntryKind;
use tempfile::TempDir;

struct Copied {
    _work: TempDir,
    blob: Vec<u8>,
    annotations: HashMap<String, String>,
}

fn copy() -> Copied {
    let work = tempfile::tempdir().unwrap();
    let layout = oci_layout(work.path(), &sample_layer());
    let out = work.path().join("zstd");
    run(Command::new("skopeo")
        .args(["copy", "--dest-compress-format", "zstd:chunked"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("oci:{}:v1", out.display())));
    let (blob, media_type, annotations) = Layout::open(&out).layer();
    assert_eq!(media_type, "application/vnd.oci.image.layer.v1.tar+zstd");
    Copied {
        _work: work,
        blob,
        annotations,
    }
}

fn read(blob: &[u8], position: &TocPosition) -> Result<ZstdChunked, ZstdChunkedError> {
    let range = position.frame_range();
    zstd_chunked::parse_toc(&blob[range.start as usize..range.end as usize], position)
}

fn from_annotations(layer: &Copied, annotations: &HashMap<String, String>) -> TocPosition {
    zstd_chunked::position_from_annotations(annotations, layer.blob.len() as u64)
        .unwrap()
        .expect("no TOC position in the annotations")
}

#[test]
fn toc_lists_the_layers_entries_and_its_frames_hold_their_bytes() {
    let layer = copy();
    let position = from_annotations(&layer, &layer.annotations);
    let parsed = read(&layer.blob, &position).unwrap();
    assert_eq!(Some(&parsed.toc_digest), position.checksum.as_ref());
    let index = &parsed.index;
    let tar = zstd::stream::decode_all(&layer.blob[..]).unwrap();

    let got: Vec<_> = index.entries.iter().map(listed).collect();
    assert_eq!(got, tar_listing(&tar));
    let got: Vec<_> = index.entries.iter().cloned().map(without_offset).collect();
    assert_eq!(got, tar_entries_without_offsets(&tar, &[]));

    // Each chunk is a frame of its own that decodes to bytes with its digest; a file's chunks
    // in order are its bytes.
    let contents = file_contents(&tar);
    let mut chunked = 0;
    for entry in &index.entries {
        let EntryKind::File { offset, size } = entry.kind else {
            continue;
        };
        let chunks = index.chunks_for(offset, size);
        chunked += usize::from(chunks.len() > 1);
        let mut bytes = Vec::new();
        for chunk in chunks {
            assert!(chunk.compressed_end <= index.toc_offset);
            let frame =
                &layer.blob[chunk.compressed_offset as usize..chunk.compressed_end as usize];
            let decoded = zstd::stream::decode_all(frame).unwrap();
            assert_eq!(decoded.len() as u64, chunk.size);
            assert_eq!(Digest::of(&decoded), chunk.digest);
            if chunk.kind == ChunkKind::Zeros {
                assert!(decoded.iter().all(|&b| b == 0));
            }
            assert_eq!(zstd_chunked::decode_chunk(chunk, frame).unwrap(), decoded);
            bytes.extend(decoded);
        }
        assert_eq!(
            bytes,
            contents[&entry.path],
            "{}",
            String::from_utf8_lossy(&entry.path)
        );
    }
    // The random 3 MiB file is cut at content-defined boundaries.
    assert!(chunked >= 1);

    // A flipped byte in a frame is never served.
    let chunk = index.chunks.iter().max_by_key(|c| c.size).unwrap();
    let mut frame =
        layer.blob[chunk.compressed_offset as usize..chunk.compressed_end as usize].to_vec();
    let middle = frame.len() / 2;
    frame[middle] ^= 0x10;
    let err = zstd_chunked::decode_chunk(chunk, &frame).unwrap_err();
    assert!(
        matches!(err, ChunkError::Digest { .. } | ChunkError::Decode { .. }),
        "{err}"
    );
}

#[test]
fn both_annotation_spellings_and_the_footer_find_the_same_toc() {
    let layer = copy();
    // Debian 12's skopeo writes the older keys.
    assert!(layer.annotations.contains_key(LEGACY_POSITION_ANNOTATION));
    let legacy = from_annotations(&layer, &layer.annotations);
    let expected = read(&layer.blob, &legacy).unwrap();

    let current: HashMap<_, _> = [
        (POSITION_ANNOTATION, LEGACY_POSITION_ANNOTATION),
        (CHECKSUM_ANNOTATION, LEGACY_CHECKSUM_ANNOTATION),
    ]
    .into_iter()
    .map(|(new, old)| (new.to_string(), layer.annotations[old].clone()))
    .collect();
    assert_eq!(from_annotations(&layer, &current), legacy);
    assert!(
        zstd_chunked::position_from_annotations(&HashMap::new(), 1 << 30)
            .unwrap()
            .is_none()
    );

    // Without annotations the footer says where the TOC is, but cannot vouch for it.
    let tail = &layer.blob[layer.blob.len() - 100..];
    let found = zstd_chunked::footer(tail, layer.blob.len() as u64).unwrap();
    assert_eq!(found.checksum, None);
    assert_eq!(
        (found.offset, found.length, found.uncompressed_length),
        (legacy.offset, legacy.length, legacy.uncompressed_length)
    );
    assert_eq!(read(&layer.blob, &found).unwrap(), expected);
}

#[test]
fn the_toc_checksum_is_checked() {
    let layer = copy();
    let position = from_annotations(&layer, &layer.annotations);
    let mut flipped = layer.blob.clone();
    flipped[position.offset as usize + position.length as usize / 2] ^= 1;
    assert!(matches!(
        read(&flipped, &position),
        Err(ZstdChunkedError::ChecksumMismatch { .. })
    ));
    let mut wrong = layer.annotations.clone();
    wrong.insert(
        LEGACY_CHECKSUM_ANNOTATION.into(),
        Digest::of(b"other").to_string(),
    );
    assert!(matches!(
        read(&layer.blob, &from_annotations(&layer, &wrong)),
        Err(ZstdChunkedError::ChecksumMismatch { .. })
    ));
    // Without a checksum a flipped byte is still caught when the TOC no longer decodes, and
    // a decoded TOC is checked for its length.
    let unchecked = TocPosition {
        checksum: None,
        ..position.clone()
    };
    assert!(read(&flipped, &unchecked).is_err());
    let longer = TocPosition {
        uncompressed_length: position.uncompressed_length + 1,
        ..unchecked
    };
    assert!(matches!(
        read(&layer.blob, &longer),
        Err(ZstdChunkedError::UncompressedLength { .. })
    ));
}

#[test]
fn bad_positions_and_footers_are_typed_errors() {
    let layer = copy();
    let size = layer.blob.len() as u64;
    let with_position = |text: &str| {
        let mut a = layer.annotations.clone();
        a.insert(LEGACY_POSITION_ANNOTATION.into(), text.into());
        zstd_chunked::position_from_annotations(&a, size)
    };
    for text in ["1:2:3", "a:b:c:1", "-8:1:1:1", "8:1:1:1:1", ""] {
        assert!(
            matches!(
                with_position(text),
                Err(ZstdChunkedError::Annotation { .. })
            ),
            "{text}"
        );
    }
    assert!(matches!(
        with_position("100:10:10:2"),
        Err(ZstdChunkedError::ManifestType(2))
    ));
    for text in [
        format!("{size}:10:10:1"),
        "4:10:10:1".into(),
        format!("100:{}:1:1", u64::MAX),
    ] {
        assert!(
            matches!(
                with_position(&text),
                Err(ZstdChunkedError::OutOfRange { .. })
            ),
            "{text}"
        );
    }
    let mut no_checksum = layer.annotations.clone();
    no_checksum.remove(LEGACY_CHECKSUM_ANNOTATION);
    assert!(zstd_chunked::position_from_annotations(&no_checksum, size).is_err());

    // A position claiming a huge TOC is refused before anything is allocated for it.
    let position = from_annotations(&layer, &layer.annotations);
    let huge = TocPosition {
        uncompressed_length: u64::MAX,
        ..position.clone()
    };
    assert!(matches!(
        read(&layer.blob, &huge),
        Err(ZstdChunkedError::UncompressedLength { .. })
    ));
    // A frame range that misses the skippable header.
    let range = position.frame_range();
    let cut = &layer.blob[range.start as usize + 1..range.end as usize];
    assert!(matches!(
        zstd_chunked::parse_toc(cut, &position),
        Err(ZstdChunkedError::Frame(_))
    ));

    // Footers: short, not zstd:chunked, pointing past the end.
    for n in [0, 7, 20] {
        let tail = &layer.blob[layer.blob.len() - n..];
        assert!(matches!(
            zstd_chunked::footer(tail, size),
            Err(ZstdChunkedError::NoFooter(_))
        ));
    }
    let plain = zstd::encode_all(&b"plain layer"[..], 3).unwrap();
    assert!(zstd_chunked::footer(&plain, plain.len() as u64).is_err());
    let mut past = layer.blob.clone();
    let footer_start = past.len() - 40;
    past[footer_start..footer_start + 8].copy_from_slice(&size.to_le_bytes());
    assert!(matches!(
        zstd_chunked::footer(&past, size),
        Err(ZstdChunkedError::OutOfRange { .. })
    ));
}
