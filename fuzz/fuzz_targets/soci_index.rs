//! Arbitrary bytes as a SOCI index manifest, and as an image manifest's index-digest annotation.
#![no_main]

use std::collections::HashMap;

use lazypull::foreign::soci::{self, INDEX_DIGEST_ANNOTATION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = soci::parse_index(data) {
        for z in &index.ztocs {
            let _ = index.ztoc_for(&z.layer);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let annotations: HashMap<String, String> =
            [(INDEX_DIGEST_ANNOTATION.to_string(), text.to_string())].into();
        let _ = soci::index_digest(Some(&annotations));
    }
});
