//! Arbitrary bytes as a layer tar: `read_entries` must return entries or an error, never panic.
//! Each input is read as it is and again with its header checksums made right.
#![no_main]

use lazypull::layer::tar::{EntryKind, read_entries};
use lazypull_fuzz::fix_tar_checksums;
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8]) {
    let Ok(entries) = read_entries(&mut &data[..]) else {
        return;
    };
    for entry in &entries {
        // A file's data was read from the stream, so its range lies inside the input.
        if let EntryKind::File { offset, size } = entry.kind {
            let end = offset.checked_add(size).expect("file range overflows");
            assert!(
                end <= data.len() as u64,
                "file data past the end of the tar"
            );
        }
        assert!(!entry.path.starts_with(b"/"), "path not normalized");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut fixed = data.to_vec();
    fix_tar_checksums(&mut fixed);
    if fixed != data {
        check(&fixed);
    }
});
