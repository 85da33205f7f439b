//! TOC cases the real writers (tested against in tests/foreign_*.rs) never produce: hostile or
//! broken TOCs, and features they do not use here (innerOffset, zero chunks).

use super::*;

const TOC_AT: u64 = 10_000;

fn digest(n: u8) -> String {
    Digest::of(&[n]).to_string()
}

fn build_json(json: &str, flavor: Flavor) -> Result<Built, TocError> {
    build(parse_json(json.as_bytes())?, flavor, TOC_AT)
}

fn toc(entries: &str) -> String {
    format!("{{\"version\": 1, \"entries\": [{entries}]}}")
}

fn reg(name: &str, size: u64, offset: u64, extra: &str) -> String {
    format!(
        "{{\"name\": \"{name}\", \"type\": \"reg\", \"size\": {size}, \"offset\": {offset}, \
         \"digest\": \"{}\"{extra}}}",
        digest(1)
    )
}

fn chunk(offset: u64, chunk_offset: u64, chunk_size: u64, extra: &str) -> String {
    format!(
        "{{\"type\": \"chunk\", \"offset\": {offset}, \"chunkOffset\": {chunk_offset}, \
         \"chunkSize\": {chunk_size}, \"chunkDigest\": \"{}\"{extra}}}",
        digest(2)
    )
}

#[test]
fn hostile_tocs_are_refused_with_what_is_wrong() {
    type Expect = fn(&TocError) -> bool;
    let cases: Vec<(String, Expect)> = vec![
        ("not json".into(), |e| matches!(e, TocError::Json(_))),
        ("{\"version\": 2, \"entries\": []}".into(), |e| {
            matches!(e, TocError::Version(2))
        }),
        (toc(&chunk(100, 0, 5, "")), |e| {
            matches!(e, TocError::OrphanChunk { index: 0 })
        }),
        (
            toc(&format!(
                "{}, {}",
                reg("f", 10, 100, ", \"chunkSize\": 4"),
                chunk(200, 5, 5, "")
            )),
            |e| matches!(e, TocError::Chunks { .. }),
        ),
        (
            toc(&format!(
                "{}, {}",
                reg("f", 10, 100, ", \"chunkSize\": 4"),
                chunk(200, 4, 7, "")
            )),
            |e| matches!(e, TocError::Chunks { .. }),
        ),
        (toc(&reg("f", 10, 0, "")), |e| {
            matches!(e, TocError::ChunkPastToc { offset: 0, .. })
        }),
        (toc(&reg("f", 10, TOC_AT, "")), |e| {
            matches!(e, TocError::ChunkPastToc { .. })
        }),
        (
            toc(&reg(
                "f",
                1,
                100,
                ", \"xattrs\": {\"user.x\": \"not base64!\"}",
            )),
            |e| matches!(e, TocError::Entry { .. }),
        ),
        (toc(&reg("../../f", 1, 100, "")), |e| {
            matches!(e, TocError::Climbs { .. })
        }),
        (toc(&reg("", 1, 100, "")), |e| {
            matches!(e, TocError::Entry { .. })
        }),
        (
            toc("{\"name\": \"h\", \"type\": \"hardlink\", \"linkName\": \"../../x\"}"),
            |e| matches!(e, TocError::Entry { .. }),
        ),
        (toc("{\"name\": \"s\", \"type\": \"symlink\"}"), |e| {
            matches!(e, TocError::Entry { .. })
        }),
        (toc("{\"name\": \"s\", \"type\": \"socket\"}"), |e| {
            matches!(e, TocError::Entry { .. })
        }),
        (
            toc("{\"name\": \"d\", \"type\": \"dir\", \"uid\": 4294967296}"),
            |e| matches!(e, TocError::Entry { .. }),
        ),
        (
            toc("{\"name\": \"d\", \"type\": \"dir\", \"size\": 5}"),
            |e| matches!(e, TocError::Entry { .. }),
        ),
        (
            toc("{\"name\": \"d\", \"type\": \"dir\", \"size\": -5}"),
            |e| matches!(e, TocError::Json(_)),
        ),
        (
            toc("{\"name\": \"d\", \"type\": \"dir\", \"modtime\": \"noon\"}"),
            |e| matches!(e, TocError::Entry { .. }),
        ),
        (
            toc("{\"name\": \"f\", \"type\": \"reg\", \"size\": 3, \"offset\": 100}"),
            |e| matches!(e, TocError::Chunks { .. }),
        ),
        (
            toc(&reg("f", 3, 100, "").replace(&digest(1), "sha256:beef")),
            |e| matches!(e, TocError::Chunks { .. }),
        ),
        (toc(&reg("f", 3, 100, ", \"chunkType\": \"holes\"")), |e| {
            matches!(e, TocError::Chunks { .. })
        }),
        (
            toc(&format!(
                "{}, {}",
                reg("a", 1 << 63, 100, ""),
                reg("b", 1 << 63, 200, "")
            )),
            |e| matches!(e, TocError::Entry { index: 1, .. }),
        ),
    ];
    for (json, expected) in cases {
        for flavor in [Flavor::Estargz, Flavor::ZstdChunked] {
            match build_json(&json, flavor) {
                Err(e) if expected(&e) => {}
                // zstd:chunked files need an end offset; eStargz members do not.
                Err(TocError::Chunks { .. }) if flavor == Flavor::ZstdChunked => {}
                Err(e) => panic!("{json}: unexpected error {e}"),
                Ok(_) => panic!("{json}: accepted"),
            }
        }
    }
}

#[test]
fn estargz_members_end_at_the_next_distinct_offset() {
    // Two files in one member (innerOffset), then a chunked file, then the TOC.
    let json = toc(&format!(
        "{}, {}, {}, {}",
        reg("a", 3, 100, ", \"chunkDigest\": \"X\"")
            .replace("\"X\"", &format!("\"{}\"", digest(3))),
        reg("b", 2, 100, ", \"innerOffset\": 512"),
        reg("c", 10, 300, ", \"chunkSize\": 6, \"chunkDigest\": \"X\"")
            .replace("\"X\"", &format!("\"{}\"", digest(5))),
        chunk(400, 6, 0, "")
    ));
    let built = build_json(&json, Flavor::Estargz).unwrap();
    let spans: Vec<_> = built
        .index
        .chunks
        .iter()
        .map(|c| {
            (
                c.content_offset,
                c.size,
                c.compressed_offset,
                c.compressed_end,
                c.inner_offset,
            )
        })
        .collect();
    assert_eq!(
        spans,
        [
            (0, 3, 100, 300, 0),
            (3, 2, 100, 300, 512),
            (5, 6, 300, 400, 0),
            (11, 4, 400, TOC_AT, 0)
        ]
    );
    assert_eq!(built.index.chunks[0].digest.to_string(), digest(3));
    assert_eq!(built.index.chunks[1].digest.to_string(), digest(1));
    assert_eq!(built.index.chunks_for(4, 3).len(), 2);
    assert!(built.index.chunks_for(4, 0).is_empty());
    assert_eq!(built.index.content_size(), 15);
}

#[test]
fn zstd_chunked_frames_end_at_the_next_frame_and_zeros_are_marked() {
    let json = toc(&format!(
        "{}, {}",
        reg(
            "f",
            10,
            100,
            ", \"endOffset\": 500, \"chunkSize\": 4, \"chunkDigest\": \"DIGEST\""
        )
        .replace("DIGEST", &digest(4)),
        chunk(150, 4, 6, ", \"chunkType\": \"zeros\"")
    ));
    let built = build_json(&json, Flavor::ZstdChunked).unwrap();
    let chunks = &built.index.chunks;
    assert_eq!(
        (chunks[0].compressed_end, chunks[0].kind),
        (150, ChunkKind::Data)
    );
    assert_eq!(
        (chunks[1].compressed_end, chunks[1].kind),
        (500, ChunkKind::Zeros)
    );
    // An end offset past the TOC is refused.
    let past = json.replace(
        "\"endOffset\": 500",
        &format!("\"endOffset\": {}", TOC_AT + 1),
    );
    assert!(matches!(
        build_json(&past, Flavor::ZstdChunked),
        Err(TocError::Chunks { .. })
    ));
}

#[test]
fn estargz_landmarks_leave_the_tree_and_mark_the_prefetch_end() {
    let landmark = |name: &str, offset: u64| {
        format!(
            "{{\"name\": \"{name}\", \"type\": \"reg\", \"size\": 1, \"offset\": {offset}, \
             \"chunkDigest\": \"{}\"}}",
            digest(0xf)
        )
    };
    let json = toc(&format!(
        "{}, {}, {}",
        reg("first", 1, 100, ""),
        landmark(".prefetch.landmark", 200),
        reg("second", 1, 300, "")
    ));
    let built = build_json(&json, Flavor::Estargz).unwrap();
    let paths: Vec<_> = built.index.entries.iter().map(|e| e.path.clone()).collect();
    assert_eq!(paths, [b"first".to_vec(), b"second".to_vec()]);
    assert_eq!(built.prefetch_landmark, Some((1, 200)));
    // The landmark's member still ends the one before it; its byte is not in the content.
    assert_eq!(built.index.chunks[0].compressed_end, 200);
    assert_eq!(built.index.content_size(), 2);
    // zstd:chunked has no landmarks: a file of that name is a file.
    let zstd = json.replace("\"offset\": 100", "\"offset\": 100, \"endOffset\": 150");
    let zstd = zstd.replace("\"offset\": 200", "\"offset\": 200, \"endOffset\": 250");
    let zstd = zstd.replace("\"offset\": 300", "\"offset\": 300, \"endOffset\": 350");
    let built = build_json(&zstd, Flavor::ZstdChunked).unwrap();
    assert_eq!(built.index.entries.len(), 3);
}
