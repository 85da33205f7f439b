//! What the cache takes on disk: allocated blocks (`st_blocks`), as `du`
//! counts them, not file lengths. A chunk file is sparse until its layer is
//! fetched, and an extracted file has holes where its data is zeros, so
//! their lengths say little about the space they use.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes allocated to `path` and everything below it (symlinks are not
/// followed; a file with several links is counted once), like `du -sB1`.
/// 0 for what does not exist.
pub fn disk_usage(path: &Path) -> u64 {
    let mut seen = HashSet::new();
    usage(path, &mut seen)
}

fn usage(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
        return 0;
    }
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let Ok(entries) = fs::read_dir(path) else {
        return own;
    };
    own + entries
        .flatten()
        .map(|e| usage(&e.path(), seen))
        .sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn counts_allocated_blocks_not_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let mut sparse = fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.seek(SeekFrom::Start(1 << 30)).unwrap();
        sparse.write_all(b"end").unwrap();
        sparse.sync_all().unwrap();
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("full"), vec![1u8; 1 << 20]).unwrap();
        fs::hard_link(sub.join("full"), sub.join("again")).unwrap();

        let used = disk_usage(dir.path());
        assert!(used >= 1 << 20, "{used}");
        assert!(
            used < 2 << 20,
            "the sparse file's length was counted: {used}"
        );
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
    }
}
