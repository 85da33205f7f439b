//! Arbitrary bytes as a whole zstd:chunked blob: the TOC position from its footer, and from the
//! same bytes read as a position annotation; the TOC; every chunk the TOC names.
#![no_main]

use std::collections::HashMap;

use lazypull::foreign::zstd_chunked::{
    self, LEGACY_CHECKSUM_ANNOTATION, LEGACY_POSITION_ANNOTATION,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|blob: &[u8]| {
    let size = blob.len() as u64;
    if let Ok(text) = std::str::from_utf8(blob) {
        let annotations: HashMap<String, String> = [
            (LEGACY_POSITION_ANNOTATION.to_string(), text.to_string()),
            (LEGACY_CHECKSUM_ANNOTATION.to_string(), text.to_string()),
        ]
        .into();
        let _ = zstd_chunked::position_from_annotations(&annotations, size);
    }
    let Ok(position) = zstd_chunked::footer(blob, size) else {
        return;
    };
    let range = position.frame_range();
    let Ok(parsed) =
        zstd_chunked::parse_toc(&blob[range.start as usize..range.end as usize], &position)
    else {
        return;
    };
    let index = &parsed.index;
    let _ = index.chunks_for(0, index.content_size());
    for chunk in &index.chunks {
        let end = chunk.compressed_end.min(size) as usize;
        let start = (chunk.compressed_offset as usize).min(end);
        let _ = zstd_chunked::decode_chunk(chunk, &blob[start..end]);
    }
});
