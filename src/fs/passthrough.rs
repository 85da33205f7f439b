//! Backing files for FUSE passthrough: the kernel reads an extracted file
//! directly, with no trip through the daemon. One `BackingId` per inode is
//! shared by all of its opens and dropped with the last of them.
//!
//! The kernel refuses to mix the two ways of reading one inode: while it is
//! open through the page cache, a passthrough open of it fails with EIO, and
//! the other way round. A layer's files are extracted after the layer became
//! ready, so a file opened (or mapped: a running program's libraries) before
//! then keeps its inode in cached mode; later opens of that inode must stay
//! cached until the last of those is released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use fuser::BackingId;

/// How an open reads.
pub enum Opened<Id> {
    /// Through the backing file, with this handle (for release).
    Passthrough(u64, Arc<Id>),
    /// Through the daemon and the page cache.
    Cached,
}

struct Inner<Id> {
    by_handle: HashMap<u64, Arc<Id>>,
    by_inode: HashMap<u64, Weak<Id>>,
    /// Live cached opens per inode.
    cached: HashMap<u64, u64>,
    next_fh: u64,
}

pub struct BackingCache<Id = BackingId> {
    inner: Mutex<Inner<Id>>,
}

impl<Id> Default for BackingCache<Id> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                by_handle: HashMap::new(),
                by_inode: HashMap::new(),
                cached: HashMap::new(),
                next_fh: 0,
            }),
        }
    }
}

impl<Id> BackingCache<Id> {
    /// Decides how an open of `ino` reads: through the inode's backing id if
    /// an open holds one, cached if a cached open lives, else through a
    /// backing id made by `create` (if given and it succeeds), else cached.
    pub fn open(
        &self,
        ino: u64,
        create: Option<impl FnOnce() -> std::io::Result<Id>>,
    ) -> Opened<Id> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let live = inner.by_inode.get(&ino).and_then(Weak::upgrade);
        let id = match (live, create) {
            (Some(id), _) => Some(id),
            (None, Some(create)) if !inner.cached.contains_key(&ino) => match create() {
                Ok(id) => {
                    let id = Arc::new(id);
                    inner.by_inode.insert(ino, Arc::downgrade(&id));
                    Some(id)
                }
                Err(e) => {
                    tracing::warn!(ino, error = %e, "passthrough open failed; reading through the daemon");
                    None
                }
            },
            _ => None,
        };
        match id {
            Some(id) => {
                inner.next_fh += 1;
                let fh = inner.next_fh;
                inner.by_handle.insert(fh, Arc::clone(&id));
                Opened::Passthrough(fh, id)
            }
            None => {
                *inner.cached.entry(ino).or_default() += 1;
                Opened::Cached
            }
        }
    }

    /// Ends an open from [`BackingCache::open`]; `fh` is the handle of a
    /// passthrough open, anything else for a cached one.
    pub fn release(&self, ino: u64, fh: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.by_handle.remove(&fh).is_some() {
            if inner
                .by_inode
                .get(&ino)
                .is_some_and(|w| w.strong_count() == 0)
            {
                inner.by_inode.remove(&ino);
            }
        } else if let Some(n) = inner.cached.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                inner.cached.remove(&ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(opened: Opened<u32>) -> Option<(u64, u32)> {
        match opened {
            Opened::Passthrough(fh, id) => Some((fh, *id)),
            Opened::Cached => None,
        }
    }

    fn make(id: u32) -> Option<impl FnOnce() -> std::io::Result<u32>> {
        Some(move || Ok(id))
    }

    #[test]
    fn opens_of_an_inode_share_one_backing_id() {
        let cache = BackingCache::<u32>::default();
        let (a, id) = handle(cache.open(1, make(10))).unwrap();
        assert_eq!(id, 10);
        let (b, id) = handle(cache.open(1, make(11))).unwrap();
        assert_eq!(id, 10, "a second backing id for a live inode");
        assert_ne!(a, b);
        cache.release(1, a);
        cache.release(1, b);
        let (_, id) = handle(cache.open(1, make(12))).unwrap();
        assert_eq!(id, 12, "the id goes with the last open");
    }

    #[test]
    fn an_inode_open_through_the_cache_stays_cached_until_released() {
        let cache = BackingCache::<u32>::default();
        let none: Option<fn() -> std::io::Result<u32>> = None;
        // Opened before its file was extracted, twice.
        assert!(handle(cache.open(7, none)).is_none());
        assert!(handle(cache.open(7, none)).is_none());
        // Extracted now, but mixing would fail in the kernel.
        assert!(handle(cache.open(7, make(1))).is_none());
        assert!(
            handle(cache.open(8, make(2))).is_some(),
            "other inodes pass through"
        );
        for _ in 0..3 {
            cache.release(7, 0);
        }
        assert_eq!(handle(cache.open(7, make(3))).map(|(_, id)| id), Some(3));
    }

    #[test]
    fn a_failed_backing_open_reads_cached() {
        let cache = BackingCache::<u32>::default();
        let fail = Some(|| Err(std::io::Error::other("no")));
        assert!(handle(cache.open(5, fail)).is_none());
        assert!(
            handle(cache.open(5, make(1))).is_none(),
            "mixed with a cached open"
        );
        cache.release(5, 0);
        cache.release(5, 0);
        assert!(handle(cache.open(5, make(1))).is_some());
    }
}
