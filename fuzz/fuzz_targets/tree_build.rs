//! Arbitrary bytes as 1 to 3 layer tars laid end to end (header checksums made right), merged
//! into a tree and walked.
#![no_main]

use lazypull::layer::tar::{TarEntry, read_entries};
use lazypull::tree::{LsRecord, Tree};
use lazypull_fuzz::fix_tar_checksums;
use libfuzzer_sys::fuzz_target;

const BLOCK: usize = 512;

fuzz_target!(|data: &[u8]| {
    let mut data = data.to_vec();
    fix_tar_checksums(&mut data);
    let mut rest = data.as_slice();
    let mut layers: Vec<Vec<TarEntry>> = Vec::new();
    while layers.len() < 3 && !rest.is_empty() {
        match read_entries(&mut rest) {
            Ok(entries) => layers.push(entries),
            Err(_) => break,
        }
        // A tar ends with zero blocks (and record padding): skip them to reach the next layer.
        while rest.len() >= BLOCK && rest[..BLOCK].iter().all(|&b| b == 0) {
            rest = &rest[BLOCK..];
        }
    }
    if layers.is_empty() {
        return;
    }
    let Ok(tree) = Tree::build(layers.iter().map(Vec::as_slice)) else {
        return;
    };
    let mut seen = 0usize;
    for (path, node) in tree.walk() {
        seen += 1;
        // Every walked path leads back to the node it was walked to.
        let found = tree.resolve(&path).map(|n| n.ino);
        assert_eq!(
            found,
            Some(node.ino),
            "path {:?}",
            String::from_utf8_lossy(&path)
        );
        assert!(
            tree.get(node.parent).is_some_and(|p| p.is_dir()),
            "parent is no directory"
        );
        let record = LsRecord::new(&path, node);
        assert!(serde_json::to_string(&record).is_ok());
        if node.is_dir() {
            assert!(tree.walk_from(&path).is_some());
        }
    }
    assert!(seen >= tree.len(), "walk missed inodes");
});
