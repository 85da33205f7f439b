//! Arbitrary bytes as a persisted layer index file. A file whose checksum holds is decoded
//! further, so the input is tried twice: as the whole file, and as the body of a file with a
//! correct magic, version and checksum around it.
#![no_main]

use std::path::Path;

use lazypull::layer::index::{FORMAT_VERSION, LayerIndex};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("x");
    let _ = LayerIndex::decode(data, path);

    let mut file = b"lazypull-index\n".to_vec();
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(data);
    file.extend_from_slice(&Sha256::digest(data));
    let Ok(index) = LayerIndex::decode(&file, path) else {
        return;
    };
    // What decodes re-encodes to a file that decodes to the same index.
    let again = index.encode().expect("a decoded index encodes");
    let back = LayerIndex::decode(&again, path).expect("a re-encoded index decodes");
    assert_eq!(back, index);
});
