//! `cache prune`: removes what the cache holds, except what a live process
//! holds (see [`super::lock`]): a running mount keeps serving the blobs and
//! files it uses and finishes the downloads it has under way, and a first
//! pass keeps its temporary blob. What was left, and why, is reported.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::lock::remove_unless_held;
use super::{CacheDir, CacheError, io_err};

/// An unlocked entry of `tmp/` younger than this may be one its writer has
/// just created and not locked yet.
const FRESH_TEMP: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Layer contents (blobs, partial downloads, extracted files,
    /// temporary files); indexes stay, so mounts still know their trees.
    Blobs,
    /// Everything.
    All,
}

/// What a prune removed and what it left.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Bytes on disk freed (allocated blocks, not file lengths).
    pub freed: u64,
    pub removed: usize,
    /// What was left because a live process uses it, with why.
    pub kept: Vec<(PathBuf, &'static str)>,
}

impl Pruned {
    fn remove(&mut self, path: &Path, why_kept: &'static str) -> Result<(), CacheError> {
        match remove_unless_held(path).map_err(io_err(path))? {
            Some(freed) => {
                self.freed += freed;
                self.removed += 1;
            }
            None if path.exists() => self.kept.push((path.to_path_buf(), why_kept)),
            None => {}
        }
        Ok(())
    }
}

/// The entries of `dir`, sorted (none if it is missing).
fn entries(dir: &Path) -> Result<Vec<PathBuf>, CacheError> {
    let mut out: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(dir)(e)),
    };
    out.sort();
    Ok(out)
}

/// Removes what `scope` names from `cache`, leaving the layout in place.
pub fn prune(cache: &CacheDir, scope: Scope) -> Result<Pruned, CacheError> {
    let root = cache.root();
    let mut pruned = Pruned::default();
    for blob in entries(&root.join("blobs/sha256"))? {
        pruned.remove(&blob, "served by a running mount")?;
    }
    for files in entries(&root.join("files/sha256"))? {
        pruned.remove(&files, "served by a running mount (passthrough)")?;
    }
    // A journal goes with its chunk file, once that is gone.
    let (journals, chunk_files): (Vec<_>, Vec<_>) = entries(&root.join("chunks/sha256"))?
        .into_iter()
        .partition(|p| p.extension().is_some_and(|e| e == "journal"));
    for chunks in chunk_files {
        pruned.remove(&chunks, "being downloaded by a running mount")?;
    }
    for journal in journals {
        if !journal.with_extension("").exists() {
            pruned.remove(&journal, "being written by a running mount")?;
        }
    }
    let swept = cache.sweep_tmp(FRESH_TEMP);
    pruned.freed += swept.freed;
    pruned.removed += swept.removed;
    pruned.kept.extend(swept.kept);
    if scope == Scope::All {
        for sub in ["index/sha256", "traces/sha256"] {
            for entry in entries(&root.join(sub))? {
                // Nobody locks these: a mount keeps what it needs in memory.
                pruned.remove(&entry, "in use")?;
            }
        }
        for log in entries(&root.join("logs"))? {
            pruned.remove(&log, "the log of a running mount daemon")?;
        }
    }
    Ok(pruned)
}
