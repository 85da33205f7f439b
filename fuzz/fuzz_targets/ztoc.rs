//! Arbitrary bytes as a zTOC blob (flatbuffer, zinfo checkpoints inside).
#![no_main]

use lazypull::foreign::ztoc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = ztoc::parse(data) else {
        return;
    };
    for span in 0..parsed.span_digests.len() {
        let _ = parsed.span_range(span);
    }
    let _ = parsed.span_for(parsed.uncompressed_size / 2);
});
