//! The cache directory: persisted layer indexes and verified blobs, keyed by
//! layer digest so layers shared between images are fetched and indexed once.
//!
//! Layout: `index/sha256/<hex>` (layer indexes), `blobs/sha256/<hex>`
//! (verified compressed layers), `chunks/sha256/<hex>` and its
//! `<hex>.journal` (a layer being fetched: the chunks read so far and which
//! of them are complete, kept across restarts, see [`chunks`]),
//! `chunks/sha256/<hex>.pid<N>` (the same for a second daemon fetching a
//! layer another one holds), `files/sha256/<hex>/` (a ready layer's regular
//! files, one per data offset, for passthrough reads), `traces/sha256/`
//! (prefetch lists), `logs/` (mount daemons' logs), `tmp/` (files being
//! written; renamed into place only when complete, so a crash never leaves a
//! partial file under a final name; each is flocked by its writer, so what a
//! killed process left there can be told from work under way and removed).
//! Every directory of the layout is 0700 and every file 0600, whatever the
//! umask: the cache holds image contents that the mount itself shows only
//! to whom the image's permissions allow.
//!
//! Who uses what is told by flocks (see [`lock`]): `cache prune` removes
//! only what no live process holds.
//!
//! A file under `blobs/` or `index/` is trusted without re-hashing: it only
//! ever gets there by a rename after its digests were checked and its bytes
//! fsynced (then the directory), so its presence is the proof, also after a
//! kill or a crash. Re-hashing every blob at mount would cost a full read of
//! each layer; the mount only checks a blob's size against its descriptor
//! (free), which catches a file cut short behind the cache's back.

pub mod chunks;
mod journal;
mod lock;
pub mod prune;
pub mod space;
pub mod spans;
mod usage;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tempfile::NamedTempFile;

use crate::digest::Digest;
pub use lock::PassLock;
pub(crate) use lock::{Hold, flock, hold_shared, lock_new, lock_path, remove_unless_held};
pub use usage::disk_usage;

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

/// Owner only: see the module's doc.
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// The directories of the layout, created by [`CacheDir::open`].
pub const LAYOUT: [&str; 7] = [
    "index/sha256",
    "blobs/sha256",
    "chunks/sha256",
    "files/sha256",
    "traces/sha256",
    "tmp",
    "logs",
];

/// Options that create a file only its owner can read or write.
pub(crate) fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `path` is open to others than its owner.
fn is_loose(path: &Path) -> Result<bool, CacheError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    Ok(meta.permissions().mode() & 0o077 != 0)
}

/// Sets `path` to `mode` unless it has it.
fn restrict(path: &Path, mode: u32) -> Result<(), CacheError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    if meta.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    }
    Ok(())
}

/// Makes everything below `dir` owner-only: a cache written by a version
/// that left image files readable to every user.
fn restrict_tree(dir: &Path) -> Result<(), CacheError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => {
                restrict(&path, DIR_MODE)?;
                restrict_tree(&path)?;
            }
            Ok(t) if t.is_file() => restrict(&path, FILE_MODE)?,
            // Symlinks (none are written) have no mode of their own.
            _ => {}
        }
    }
    Ok(())
}

/// What a sweep of `tmp/` removed, and what it left because it is in use.
#[derive(Debug, Default)]
pub struct Swept {
    /// Bytes on disk freed.
    pub freed: u64,
    pub removed: usize,
    /// Entries left, with why.
    pub kept: Vec<(PathBuf, &'static str)>,
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

    /// Opens (creating if needed) the cache at `root`. The directories of
    /// the layout are made owner-only, and what an older version left
    /// readable in them too. A root that exists is left as it is (it may be
    /// a directory the user shares, such as a home): nothing of the cache
    /// lies outside the layout.
    pub fn open(root: &Path) -> Result<Self, CacheError> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true).mode(DIR_MODE);
        builder.create(root).map_err(io_err(root))?;
        for sub in LAYOUT {
            let dir = root.join(sub);
            builder.create(&dir).map_err(io_err(&dir))?;
            let top = root.join(Path::new(sub).iter().next().unwrap_or_default());
            if is_loose(&top)? {
                restrict(&top, DIR_MODE)?;
                restrict_tree(&top)?;
            }
            // The umask may have taken the owner's own bits.
            restrict(&dir, DIR_MODE)?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Another handle on the same cache (its layout made again if parts of
    /// it were removed behind its back).
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
        let tmp = tempfile::Builder::new()
            .permissions(fs::Permissions::from_mode(DIR_MODE))
            .tempdir_in(&dir)
            .map_err(io_err(&dir))?;
        let lock = File::open(tmp.path()).map_err(io_err(tmp.path()))?;
        lock_new(&lock).map_err(io_err(tmp.path()))?;
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
        lock_new(file.as_file()).map_err(io_err(file.path()))?;
        Ok(file)
    }

    /// Removes what killed processes left in `tmp/` (a partial blob or a
    /// layer's files half written): entries that nobody holds locked and
    /// that have not changed for [`STALE_TEMP`]. Every command that writes
    /// to the cache calls it when it starts.
    pub fn remove_stale_temps(&self) -> Swept {
        let swept = self.sweep_tmp(STALE_TEMP);
        if swept.removed > 0 {
            tracing::info!(
                bytes = swept.freed,
                entries = swept.removed,
                "removed what killed processes left in the cache's tmp/"
            );
        }
        swept
    }

    /// Removes the entries of `tmp/` that nobody holds locked and that have
    /// not changed for `min_age` (a writer locks its entry just after
    /// creating it: a younger one may not be locked yet).
    pub fn sweep_tmp(&self, min_age: Duration) -> Swept {
        let mut swept = Swept::default();
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return swept;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok());
            let lock = match lock::lock_to_remove(&path) {
                Ok(Some(lock)) => lock,
                Ok(None) if path.exists() => {
                    swept.kept.push((path, "in use by a running lazypull"));
                    continue;
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot lock a temporary file");
                    continue;
                }
            };
            if age.is_none_or(|a| a < min_age) {
                swept.kept.push((path, "just created"));
                continue;
            }
            let removed = lock::remove_locked(&path);
            drop(lock);
            match removed {
                Ok(Some(freed)) => {
                    tracing::debug!(path = %path.display(), bytes = freed, "removed a stale temporary file");
                    swept.freed += freed;
                    swept.removed += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale temporary file");
                }
            }
        }
        swept
    }

    /// A new log file in `logs/` for a process of `kind` (`mount`), named by
    /// the time and this process's id, so two never share one. It is locked:
    /// `cache prune` keeps it for as long as a process has it open (a daemon
    /// writing to it as its inherited stdout holds the lock too).
    pub fn new_log(&self, kind: &str) -> Result<(File, PathBuf), CacheError> {
        let millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let name = format!("{kind}-{millis}-{}.log", std::process::id());
        let path = self.root.join("logs").join(name);
        let file = private_file()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        lock_new(&file).map_err(io_err(&path))?;
        Ok((file, path))
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

        let stale = disk_usage(&left) + disk_usage(&left_dir);
        let swept = cache.remove_stale_temps();
        assert_eq!((swept.freed, swept.removed), (stale, 2));
        assert_eq!(swept.kept.len(), 3);
        assert!(!left.exists() && !left_dir.exists());
        assert!(live.path().exists() && live_dir.path().exists() && fresh.exists());
        cache
            .commit(live, &cache.index_path(&Digest::of(b"x")))
            .unwrap();
    }

    /// Whatever the umask, and also in a cache an older version left open to
    /// everyone, nobody but the owner can read or list anything of it.
    #[test]
    fn everything_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let loose = |path: &Path| {
            let mode = fs::symlink_metadata(path).unwrap().permissions().mode();
            mode & 0o077 != 0
        };
        let all_under = |path: &Path| {
            let mut out = vec![];
            let mut todo = vec![path.to_path_buf()];
            while let Some(p) = todo.pop() {
                if p.is_dir() {
                    todo.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                }
                out.push(p);
            }
            out
        };
        // SAFETY: umask has no memory preconditions (nextest runs each test in a
        // process of its own, so no other test sees it).
        let old = unsafe { libc::umask(0) };
        let cache = CacheDir::open(&root).unwrap();
        cache
            .write_atomic(&cache.index_path(&Digest::of(b"x")), b"index")
            .unwrap();
        let (tmp, _lock) = cache.temp_dir().unwrap();
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let open: Vec<_> = all_under(&root).into_iter().filter(|p| loose(p)).collect();
        assert_eq!(open, Vec::<PathBuf>::new());
        drop(tmp);

        // What an older version wrote: 0755 directories, 0644 files.
        let files = root.join("files/sha256/abc");
        fs::create_dir_all(&files).unwrap();
        fs::write(files.join("0"), "SECRET").unwrap();
        for p in all_under(&root) {
            let mode = if p.is_dir() { 0o755 } else { 0o644 };
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        }
        CacheDir::open(&root).unwrap();
        let open: Vec<_> = all_under(&root).into_iter().filter(|p| loose(p)).collect();
        assert_eq!(
            open,
            vec![root.clone()],
            "only the root, which may be shared, is left"
        );
    }

    #[test]
    fn flag_wins_over_environment() {
        let p = CacheDir::default_root(Some(Path::new("/x/y"))).unwrap();
        assert_eq!(p, PathBuf::from("/x/y"));
    }
}
