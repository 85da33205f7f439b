//! flock(2) is how the processes sharing a cache tell what is in use: a
//! writer holds an exclusive lock on what it is writing (a file in `tmp/`, a
//! chunk file), a mount a shared one on what it serves (a verified blob, a
//! layer's extracted files), a mount daemon one on its log, and a layer's
//! first pass one on a lock file of its own. Whoever would remove an entry
//! (`cache prune`, the cleaner of `tmp/`) takes an exclusive lock without
//! waiting first, and leaves the entry alone if that fails. A lock dies with
//! its process, so nothing a killed process held stays "in use".

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{CacheDir, CacheError, io_err};
use crate::digest::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    Shared,
    Exclusive,
}

/// Takes `hold` on `file`, waiting for it or not: false when another open
/// file holds a conflicting lock and `wait` is off. On a file this one
/// already locks, it converts the lock.
pub(crate) fn flock(file: &File, hold: Hold, wait: bool) -> io::Result<bool> {
    let mut op = match hold {
        Hold::Shared => libc::LOCK_SH,
        Hold::Exclusive => libc::LOCK_EX,
    };
    if !wait {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock only reads the descriptor, which `file` keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// Locks a file its writer has just created. A sweep of `tmp/` may hold it
/// for a moment (it removes only entries too old to be new): wait for it.
pub(crate) fn lock_new(file: &File) -> io::Result<()> {
    flock(file, Hold::Exclusive, true).map(drop)
}

/// Opens `path` with `options` and locks it. None when another process
/// holds it and `wait` is off, or when `path` is gone (and `options` do not
/// create it). The lock is on what `path` names once it is taken: a holder
/// waited out may have renamed or removed the file meanwhile.
pub(crate) fn lock_path(
    path: &Path,
    options: &OpenOptions,
    hold: Hold,
    wait: bool,
) -> io::Result<Option<File>> {
    loop {
        let file = match options.open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if !flock(&file, hold, wait)? {
            return Ok(None);
        }
        let ours = file.metadata()?;
        match std::fs::symlink_metadata(path) {
            Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => return Ok(Some(file)),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Opens `path` (a file or a directory) for reading and takes a shared lock
/// on it, waiting out a remover: None when it is gone.
pub(crate) fn hold_shared(path: &Path) -> io::Result<Option<File>> {
    lock_path(path, OpenOptions::new().read(true), Hold::Shared, true)
}

/// Removes `path` (a file or a directory and all below it) unless a live
/// process holds a lock on it: the bytes it freed on disk, or None when it
/// is held (or gone).
pub(crate) fn remove_unless_held(path: &Path) -> io::Result<Option<u64>> {
    match lock_to_remove(path)? {
        Some(_lock) => remove_locked(path),
        None => Ok(None),
    }
}

/// The exclusive lock on `path` that its remover takes, unless a live
/// process holds it (or it is gone).
pub(crate) fn lock_to_remove(path: &Path) -> io::Result<Option<File>> {
    lock_path(path, OpenOptions::new().read(true), Hold::Exclusive, false)
}

/// Removes `path`, whose [`lock_to_remove`] the caller holds: the bytes it
/// freed on disk (None if it was gone).
pub(crate) fn remove_locked(path: &Path) -> io::Result<Option<u64>> {
    let freed = super::disk_usage(path);
    let removed = if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Ok(()) => Ok(Some(freed)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The right to run a layer's first pass (download, verify, index) in this
/// cache: one process at a time per layer digest. Its lock file goes when
/// it is dropped.
pub struct PassLock {
    path: PathBuf,
    _file: File,
}

impl Drop for PassLock {
    fn drop(&mut self) {
        // Removed while still locked: a process waiting on this file sees
        // it gone once it gets the lock, and locks a new one.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl CacheDir {
    /// Takes the first-pass lock of `layer`; if another process holds it,
    /// calls `waiting` and waits for it to finish (or die).
    pub fn lock_pass(
        &self,
        layer: &Digest,
        waiting: impl FnOnce(),
    ) -> Result<PassLock, CacheError> {
        let path = self
            .root()
            .join("tmp")
            .join(format!("pass-{}.lock", layer.hex()));
        let mut options = super::private_file();
        options.read(true).write(true).create(true).truncate(false);
        let take = |wait| lock_path(&path, &options, Hold::Exclusive, wait).map_err(io_err(&path));
        let file = match take(false)? {
            Some(file) => file,
            None => {
                waiting();
                take(true)?.ok_or_else(|| CacheError::Io {
                    path: path.clone(),
                    source: io::Error::other("the lock file cannot be created"),
                })?
            }
        };
        Ok(PassLock { path, _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_pass_waits_for_the_first_and_the_lock_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        let layer = Digest::of(b"layer");
        let first = cache
            .lock_pass(&layer, || panic!("nobody holds it"))
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let root = dir.path().to_path_buf();
        let second = std::thread::spawn(move || {
            let cache = CacheDir::open(&root).unwrap();
            let lock = cache.lock_pass(&layer, || tx.send(()).unwrap()).unwrap();
            drop(lock);
        });
        rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!second.is_finished(), "the second pass did not wait");
        drop(first);
        second.join().unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
