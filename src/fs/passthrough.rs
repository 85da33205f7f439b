//! Backing files for FUSE passthrough: the kernel reads an extracted file
//! directly, with no trip through the daemon. One `BackingId` per inode is
//! shared by all of its opens and dropped with the last of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use fuser::BackingId;

#[derive(Default)]
struct Inner {
    by_handle: HashMap<u64, Arc<BackingId>>,
    by_inode: HashMap<u64, Weak<BackingId>>,
    next_fh: u64,
}

#[derive(Default)]
pub struct BackingCache {
    inner: Mutex<Inner>,
}

impl BackingCache {
    /// A new file handle holding the inode's backing id, made by `create`
    /// if no open of the inode holds one.
    pub fn open(
        &self,
        ino: u64,
        create: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> std::io::Result<(u64, Arc<BackingId>)> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let id = match inner.by_inode.get(&ino).and_then(Weak::upgrade) {
            Some(id) => id,
            None => {
                let id = Arc::new(create()?);
                inner.by_inode.insert(ino, Arc::downgrade(&id));
                id
            }
        };
        inner.next_fh += 1;
        let fh = inner.next_fh;
        inner.by_handle.insert(fh, Arc::clone(&id));
        Ok((fh, id))
    }

    /// Drops a handle from [`BackingCache::open`]; unknown handles (opens
    /// that did not pass through) are ignored.
    pub fn release(&self, ino: u64, fh: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_handle.remove(&fh);
        if inner
            .by_inode
            .get(&ino)
            .is_some_and(|w| w.strong_count() == 0)
        {
            inner.by_inode.remove(&ino);
        }
    }
}
