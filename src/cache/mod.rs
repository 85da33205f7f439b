//! The cache directory: persisted layer indexes and verified blobs, keyed by
//! layer digest so layers shared between images are fetched and indexed once.
//!
//! Layout: `index/sha256/<hex>` (layer indexes), `blobs/sha256/<hex>`
//! (verified compressed layers), `chunks/sha256/<hex>` and its
//! `<hex>.journal` (a layer being fetched: the chunks read so far and which
//! of them are complete, kept across restarts, see [`chunks`]),
//! `chunks/sha256/<hex>.pid<N>` (the same for a second daemon fetching a
//! layer another one holds), `files/sha256/<hex>/` (a ready layer's regular
//! files, one per data offset, for passthrough reads), `tmp/` (files being
//! written; renamed into place only when complete, so a crash never leaves a
//! partial file under a final name; each is flocked by its writer, so what a
//! killed process left there can be told from work under way and removed).
//!
//! A file under `blobs/` or `index/` is trusted without re-hashing: it only
//! ever gets there by a rename after its digests were checked and its bytes
//! fsynced (then the directory), so its presence is the proof, also after a
//! kill or a crash. Re-hashing every blob at mount would cost a full read of
//! each layer; the mount only checks a blob's size against its descriptor
//! (free), which catches a file cut short behind the cache's back.

pub mod chunks;
mod journal;
pub mod space;
pub mod spans;

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tempfile::NamedTempFile;

use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no cache directory: set --cache-dir, LAZYPULL_CACHE, XDG_CACHE_HOME or HOME")]
    NoHome,
}

/// An entry of `tmp/` unchanged for this long, and not locked, was left by a
/// process that died: a writer locks its entry right after creating it.
const STALE_TEMP: Duration = Duration::from_secs(60);

/// Takes the exclusive flock on `file` unless another open file holds it.
pub(crate) fn try_flock(file: &File) -> io::Result<bool> {
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

/// Bytes of the files below `path`.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct CacheDir {
    root: PathBuf,
}

impl CacheDir {
    /// `--cache-dir`, else `$LAZYPULL_CACHE`, else `/var/lib/lazypull` for
    /// root and `$XDG_CACHE_HOME/lazypull` (or `~/.cache/lazypull`) otherwise.
    pub fn default_root(flag: Option<&Path>) -> Result<PathBuf, CacheError> {
        if let Some(dir) = flag {
            return Ok(dir.to_path_buf());
        }
        if let Some(dir) = std::env::var_os("LAZYPULL_CACHE").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return Ok(PathBuf::from("/var/lib/lazypull"));
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir).join("lazypull"));
        }
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/lazypull"))
            .ok_or(CacheError::NoHome)
    }

    /// Opens (creating if needed) the cache at `root`.
    pub fn open(root: &Path) -> Result<Self, CacheError> {
        for sub in [
            "index/sha256",
            "blobs/sha256",
            "chunks/sha256",
            "files/sha256",
            "tmp",
        ] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Recreates the layout after parts of it were removed.
    pub fn reopen(&self) -> Result<Self, CacheError> {
        Self::open(&self.root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index_path(&self, layer: &Digest) -> PathBuf {
        self.root.join("index/sha256").join(layer.hex())
    }

    /// The prefetch list recorded for an image (a manifest digest).
    pub fn trace_path(&self, image: &Digest) -> PathBuf {
        self.root.join("traces/sha256").join(image.hex())
    }

    pub fn blob_path(&self, layer: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(layer.hex())
    }

    /// Where a ready layer's regular files are, each named by the offset of
    /// its data in the uncompressed layer.
    pub fn files_dir(&self, layer: &Digest) -> PathBuf {
        self.root.join("files/sha256").join(layer.hex())
    }

    /// A new directory in `tmp/`, to be filled and renamed into place, and
    /// its lock: keep it open until then.
    pub fn temp_dir(&self) -> Result<(tempfile::TempDir, File), CacheError> {
        let dir = self.root.join("tmp");
        let tmp = tempfile::TempDir::new_in(&dir).map_err(io_err(&dir))?;
        let lock = File::open(tmp.path()).map_err(io_err(tmp.path()))?;
        try_flock(&lock).map_err(io_err(tmp.path()))?;
        Ok((tmp, lock))
    }

    /// The chunk file of a layer being fetched, kept across restarts (and
    /// locked by the daemon using it).
    pub fn chunks_path(&self, layer: &Digest) -> PathBuf {
        self.root.join("chunks/sha256").join(layer.hex())
    }

    /// Which chunks of [`CacheDir::chunks_path`] are complete.
    pub fn journal_path(&self, layer: &Digest) -> PathBuf {
        self.root
            .join("chunks/sha256")
            .join(format!("{}.journal", layer.hex()))
    }

    /// This process's own chunk file for a layer whose shared one another
    /// daemon holds: two mounts must not write into each other's file.
    pub fn private_chunks_path(&self, layer: &Digest) -> PathBuf {
        self.root.join("chunks/sha256").join(format!(
            "{}{}",
            private_prefix(layer),
            std::process::id()
        ))
    }

    /// A new file in `tmp/`, to be filled and then [`CacheDir::commit`]ted.
    pub fn temp_file(&self) -> Result<NamedTempFile, CacheError> {
        let dir = self.root.join("tmp");
        let file = NamedTempFile::new_in(&dir).map_err(io_err(&dir))?;
        try_flock(file.as_file()).map_err(io_err(file.path()))?;
        Ok(file)
    }

    /// Removes what killed processes left in `tmp/` (a partial blob or a
    /// layer's files half written): entries that nobody holds locked and
    /// that have not changed for [`STALE_TEMP`]. Returns the bytes freed.
    pub fn remove_stale_temps(&self) -> u64 {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return 0;
        };
        let mut freed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok());
            if age.is_none_or(|a| a < STALE_TEMP) {
                continue;
            }
            let Ok(lock) = File::open(&path) else {
                continue;
            };
            if !matches!(try_flock(&lock), Ok(true)) {
                continue;
            }
            let size = if meta.is_dir() {
                dir_size(&path)
            } else {
                meta.len()
            };
            let removed = if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {
                    tracing::info!(path = %path.display(), bytes = size, "removed what a killed process left in the cache");
                    freed += size;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale temporary file")
                }
            }
        }
        freed
    }

    /// Makes a fully written temp file durable and moves it to `dest`.
    pub fn commit(&self, file: NamedTempFile, dest: &Path) -> Result<(), CacheError> {
        file.as_file().sync_all().map_err(io_err(dest))?;
        file.persist(dest).map_err(|e| CacheError::Io {
            path: dest.to_path_buf(),
            source: e.error,
        })?;
        // The rename is durable only once the directory is synced.
        if let Some(parent) = dest.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err(parent))?;
        }
        Ok(())
    }

    /// Moves a complete, verified file (already synced) from elsewhere in
    /// the cache to `dest`, durably.
    pub fn adopt(&self, from: &Path, dest: &Path) -> Result<(), CacheError> {
        fs::rename(from, dest).map_err(io_err(dest))?;
        if let Some(parent) = dest.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err(parent))?;
        }
        Ok(())
    }

    /// Writes `bytes` to `dest` atomically.
    pub fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), CacheError> {
        let mut file = self.temp_file()?;
        file.write_all(bytes).map_err(io_err(dest))?;
        self.commit(file, dest)
    }
}

/// How the private chunk files of `layer` are named, before the pid.
pub fn private_prefix(layer: &Digest) -> String {
    format!("{}.pid", layer.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        let d = Digest::of(b"x");
        cache.write_atomic(&cache.index_path(&d), b"hello").unwrap();
        assert_eq!(fs::read(cache.index_path(&d)).unwrap(), b"hello");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    /// What a killed process left in `tmp/` goes; what a live one is writing, or what
    /// was just created, stays.
    #[test]
    fn stale_temps_go_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        let tmp = dir.path().join("tmp");
        let old = SystemTime::now() - 2 * STALE_TEMP;
        let age = |path: &Path| {
            File::open(path).unwrap().set_modified(old).unwrap();
        };
        let mut live = cache.temp_file().unwrap();
        live.write_all(b"being written").unwrap();
        age(live.path());
        let (live_dir, _lock) = cache.temp_dir().unwrap();
        age(live_dir.path());
        let left = tmp.join("left-by-a-killed-daemon");
        fs::write(&left, vec![7u8; 1000]).unwrap();
        age(&left);
        let left_dir = tmp.join("half-extracted");
        fs::create_dir(&left_dir).unwrap();
        fs::write(left_dir.join("f"), vec![7u8; 500]).unwrap();
        age(&left_dir);
        let fresh = tmp.join("just-created");
        fs::write(&fresh, b"x").unwrap();

        assert_eq!(cache.remove_stale_temps(), 1500);
        assert!(!left.exists() && !left_dir.exists());
        assert!(live.path().exists() && live_dir.path().exists() && fresh.exists());
        cache
            .commit(live, &cache.index_path(&Digest::of(b"x")))
            .unwrap();
    }

    #[test]
    fn flag_wins_over_environment() {
        let p = CacheDir::default_root(Some(Path::new("/x/y"))).unwrap();
        assert_eq!(p, PathBuf::from("/x/y"));
    }
}
