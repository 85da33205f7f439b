//! Arbitrary bytes as a whole eStargz blob: its footer, its TOC (with and without a digest to
//! match), and every chunk the TOC names, as a mount would read them. Errors are fine.
#![no_main]

use lazypull::digest::Digest;
use lazypull::foreign::estargz;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|blob: &[u8]| {
    let size = blob.len() as u64;
    let Ok(footer) = estargz::footer(blob, size) else {
        return;
    };
    let range = footer.toc_range(size);
    let member = &blob[range.start as usize..range.end as usize];
    let _ = estargz::parse_toc(member, footer.toc_offset, Some(&Digest::of(b"")));
    let Ok(parsed) = estargz::parse_toc(member, footer.toc_offset, None) else {
        return;
    };
    let index = &parsed.index;
    let _ = index.chunks_for(0, index.content_size());
    for chunk in &index.chunks {
        let end = chunk.compressed_end.min(size) as usize;
        let start = (chunk.compressed_offset as usize).min(end);
        let _ = estargz::decode_chunk(chunk, &blob[start..end]);
    }
});
