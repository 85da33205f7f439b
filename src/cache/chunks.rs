//! A remote blob kept on disk as it is read: fixed-size chunks fetched once
//! (concurrent readers of a chunk wait for one fetch) and written into a
//! sparse file, so lazy reads and the background download share every byte
//! and a layer is never fetched twice. Once every chunk is there and the
//! whole blob verified, the file becomes the layer's blob.
//!
//! Every chunk is checked against the sha256 the layer's index holds for it
//! (recorded by the pass that verified the whole layer) before it is written
//! or served: a chunk that differs is fetched once more (a flip in transit),
//! and if it differs again the read fails with [`ChunkMismatch`]. So a lazy
//! read never returns bytes the registry got wrong, even before the layer is
//! verified as a whole.
//!
//! The file outlives the daemon: a journal records each complete chunk with
//! its sha256, and the next daemon keeps the chunks whose bytes still match
//! the index (see [`super::journal`]), so a layer half-fetched when the daemon was
//! killed or stopped is resumed, not fetched again. The whole-blob digest
//! check before the layer is ready stays the final word. A daemon holds an
//! flock on the file; a second daemon fetching the same layer meanwhile
//! gets a private file, and forgets it when it is done.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use super::journal::Journal;
use super::{CacheDir, Hold, flock, lock_new, lock_path, private_prefix, remove_unless_held};
use crate::blob::{BlobReader, CHUNK_SIZE, ChunkSum, RangeSource, chunk_sum, clamp_len};
use crate::digest::Digest;

/// A chunk the remote served, twice, with other bytes than the verified
/// index says it holds. Reads of it fail (EIO at the FUSE edge); the
/// background download fails the layer on it.
#[derive(Debug, thiserror::Error)]
#[error(
    "chunk {chunk}: the registry served bytes that differ from the verified index \
     (expected {expected}, got {actual})"
)]
pub struct ChunkMismatch {
    pub chunk: usize,
    pub expected: Digest,
    pub actual: Digest,
}

impl ChunkMismatch {
    /// The mismatch `e` reports, if that is what it is.
    pub fn find(e: &io::Error) -> Option<&ChunkMismatch> {
        e.get_ref()?.downcast_ref()
    }
}

/// What the file holds of one chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Missing,
    /// Written by an earlier daemon, whose journal recorded the index's
    /// hash for it: kept once the bytes on disk are checked.
    Unchecked,
    Present,
}

pub struct ChunkedBlob<S> {
    remote: S,
    layer: Digest,
    path: PathBuf,
    file: File,
    size: u64,
    /// The index's sha256 of each chunk.
    sums: Vec<ChunkSum>,
    /// Per chunk. The lock is held while the chunk is fetched, which makes
    /// the fetch single-flight.
    chunks: Vec<Mutex<Chunk>>,
    /// None for a private file, which dies with its daemon.
    journal: Option<Journal>,
    /// Bytes of the blob in the file: fetched, or kept from an earlier run.
    fetched: AtomicU64,
}

fn lock(m: &Mutex<Chunk>) -> MutexGuard<'_, Chunk> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The chunk's lock if nobody holds it (a holder is fetching it).
fn try_lock(m: &Mutex<Chunk>) -> Option<MutexGuard<'_, Chunk>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// A new private chunk file, locked before it appears under its name so
/// [`remove_stale_private`] never takes a live one.
fn create_private(cache: &CacheDir, layer: &Digest) -> io::Result<(File, PathBuf)> {
    let tmp = tempfile::NamedTempFile::new_in(cache.root().join("tmp"))?;
    lock_new(tmp.as_file())?;
    let path = cache.private_chunks_path(layer);
    let file = tmp.persist(&path).map_err(|e| e.error)?;
    Ok((file, path))
}

/// Removes private chunk files of `layer` whose daemon is gone (unlocked).
fn remove_stale_private(cache: &CacheDir, layer: &Digest) {
    let dir = cache.chunks_path(layer);
    let Some(dir) = dir.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = private_prefix(layer);
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        if let Ok(Some(_)) = remove_unless_held(&entry.path()) {
            tracing::debug!(path = %entry.path().display(), "removed a dead daemon's chunk file");
        }
    }
}

impl<S: RangeSource> ChunkedBlob<S> {
    /// Opens the chunk file of `layer` in `cache`, keeping what an earlier
    /// daemon fetched of it; a private file if another daemon holds it.
    /// `sums` are the sha256 of its chunks, from the layer's index.
    pub fn open(
        remote: S,
        cache: &CacheDir,
        layer: &Digest,
        sums: Vec<ChunkSum>,
    ) -> io::Result<Self> {
        let size = remote.size();
        let count = size.div_ceil(CHUNK_SIZE) as usize;
        if sums.len() != count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the index has {} chunk digests for a blob of {count} chunks",
                    sums.len()
                ),
            ));
        }
        let path = cache.chunks_path(layer);
        let mut chunks = vec![Chunk::Missing; count];
        let mut options = super::private_file();
        options.read(true).write(true).create(true).truncate(false);
        let shared = lock_path(&path, &options, Hold::Exclusive, false)?;
        let (file, path, journal) = match shared {
            Some(file) => {
                remove_stale_private(cache, layer);
                let (journal, recorded) = Journal::open(&cache.journal_path(layer), count)?;
                if file.metadata()?.len() == size {
                    // A record of other bytes than the index's (an earlier
                    // lazypull's, say) is no candidate.
                    for ((chunk, hash), sum) in chunks.iter_mut().zip(recorded).zip(&sums) {
                        if hash.as_ref() == Some(sum) {
                            *chunk = Chunk::Unchecked;
                        }
                    }
                } else {
                    // Not this blob's file (or a torn one): start over.
                    journal.clear()?;
                    file.set_len(0)?;
                }
                (file, path, Some(journal))
            }
            None => {
                tracing::info!(%layer, "another daemon is fetching this layer; using a file of our own");
                let (file, path) = create_private(cache, layer)?;
                (file, path, None)
            }
        };
        file.set_len(size)?;
        if chunks.iter().any(|c| *c != Chunk::Missing) {
            tracing::info!(%layer, "resuming an interrupted download");
        }
        Ok(Self {
            remote,
            layer: layer.clone(),
            path,
            file,
            size,
            sums,
            chunks: chunks.into_iter().map(Mutex::new).collect(),
            journal,
            fetched: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The blob read straight from the remote, each chunk checked against
    /// the index but not kept: for reads when the cache is full.
    pub fn uncached(&self) -> Uncached<'_, S> {
        Uncached(self)
    }

    /// Bytes of the blob in the file so far: fetched from the remote, or
    /// kept from an earlier daemon's download.
    /// The blob as far as this file holds it: reads stop short at the first
    /// chunk not here, and never go to the remote.
    pub fn held(&self) -> Held<'_, S> {
        Held(self)
    }

    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    fn chunk_range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * CHUNK_SIZE;
        (start, (start + CHUNK_SIZE).min(self.size))
    }

    /// Settles an unchecked chunk: present if its bytes on disk hash to
    /// the index's sha256, else missing.
    fn check(&self, i: usize, chunk: &mut Chunk) -> io::Result<()> {
        if *chunk == Chunk::Unchecked {
            let (start, end) = self.chunk_range(i);
            let mut buf = vec![0u8; (end - start) as usize];
            self.file.read_exact_at(&mut buf, start)?;
            *chunk = if chunk_sum(&buf) == self.sums[i] {
                self.fetched.fetch_add(end - start, Ordering::Relaxed);
                Chunk::Present
            } else {
                tracing::debug!(
                    chunk = i,
                    "a kept chunk does not match the index; fetching it again"
                );
                Chunk::Missing
            };
        }
        Ok(())
    }

    /// Chunk `i` from the remote, whole.
    fn fetch(&self, i: usize) -> io::Result<Vec<u8>> {
        let (start, end) = self.chunk_range(i);
        let bytes = self.remote.read_at(start, end - start)?;
        if bytes.len() as u64 != end - start {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob ended inside chunk {i}"),
            ));
        }
        Ok(bytes)
    }

    /// Stores chunk `i`'s `bytes` from the remote if they match the index;
    /// else fetches the chunk once more on its own (the bytes may have been
    /// damaged in transit), and fails if those differ too. Bytes that
    /// differ are never written.
    fn store_checked(&self, i: usize, bytes: &[u8], chunk: &mut Chunk) -> io::Result<()> {
        if chunk_sum(bytes) == self.sums[i] {
            return self.store(i, bytes, chunk);
        }
        let again = self.refetch_checked(i, bytes)?;
        self.store(i, &again, chunk)
    }

    /// Chunk `i` fetched once more after `bytes` did not match the index;
    /// an error when the new bytes do not match either.
    fn refetch_checked(&self, i: usize, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let expected = &self.sums[i];
        let actual = chunk_sum(bytes);
        tracing::warn!(layer = %self.layer, chunk = i,
            expected = %Digest::from_sha256(*expected), actual = %Digest::from_sha256(actual),
            "a chunk differs from the verified index; fetching it again");
        let again = self.fetch(i)?;
        let actual = chunk_sum(&again);
        if actual == *expected {
            return Ok(again);
        }
        let mismatch = ChunkMismatch {
            chunk: i,
            expected: Digest::from_sha256(*expected),
            actual: Digest::from_sha256(actual),
        };
        tracing::error!(layer = %self.layer, chunk = i, expected = %mismatch.expected,
            actual = %mismatch.actual,
            "the registry served bytes that differ from the verified index");
        Err(io::Error::new(io::ErrorKind::InvalidData, mismatch))
    }

    /// Writes chunk `i`'s bytes (checked), then records them in the journal.
    fn store(&self, i: usize, bytes: &[u8], chunk: &mut Chunk) -> io::Result<()> {
        let (start, _) = self.chunk_range(i);
        self.file.write_all_at(bytes, start)?;
        if let Some(journal) = &self.journal
            && let Err(e) = journal.record(i, &self.sums[i])
        {
            // Only a later resume misses the chunk; the bytes are good.
            tracing::warn!(chunk = i, error = %e, "cannot record a chunk in the journal");
        }
        self.fetched
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        *chunk = Chunk::Present;
        Ok(())
    }

    /// Makes sure chunk `i` is in the file, fetching it if needed.
    fn ensure(&self, i: usize) -> io::Result<()> {
        let mut chunk = lock(&self.chunks[i]);
        self.check(i, &mut chunk)?;
        if *chunk == Chunk::Present {
            return Ok(());
        }
        let bytes = self.fetch(i)?;
        self.store_checked(i, &bytes, &mut chunk)
    }

    /// Whether chunk `i` is missing and nobody is fetching it (checking a
    /// kept one first).
    fn is_free_and_missing(&self, i: usize) -> io::Result<bool> {
        let Some(mut chunk) = try_lock(&self.chunks[i]) else {
            return Ok(false);
        };
        self.check(i, &mut chunk)?;
        Ok(*chunk == Chunk::Missing)
    }

    /// Fetches every missing chunk among `first..last`, each run of missing
    /// chunks with one streamed request. A chunk that a reader fetched or
    /// is fetching while the stream runs ends the stream before its bytes
    /// are read, and a new one starts past it, so a byte comes twice only
    /// when a reader asks for the very chunk the stream is delivering (and
    /// what the connection had buffered when it is dropped).
    /// `progress` gets the end offset of each chunk as it is done.
    fn fetch_runs(&self, first: usize, last: usize, progress: &dyn Fn(u64)) -> io::Result<()> {
        let mut i = first;
        let mut buf = vec![0u8; CHUNK_SIZE as usize];
        while i < last {
            {
                // Waits for a reader fetching chunk i.
                let mut chunk = lock(&self.chunks[i]);
                self.check(i, &mut chunk)?;
                if *chunk == Chunk::Present {
                    drop(chunk);
                    progress(self.chunk_range(i).1);
                    i += 1;
                    continue;
                }
            }
            let mut j = i + 1;
            while j < last && self.is_free_and_missing(j)? {
                j += 1;
            }
            // Up to the next chunk a reader got, or the rest of the blob
            // (`bytes=N-`: a request one can tell from a read's).
            let (start, _) = self.chunk_range(i);
            let end = if j == self.chunks.len() {
                self.size
            } else {
                self.chunk_range(j - 1).1
            };
            let mut stream = self.remote.stream(start, end)?;
            let mut k = i;
            while k < j {
                // A chunk a reader got (or is getting) meanwhile: drop the
                // stream rather than fetch it twice.
                if !self.is_free_and_missing(k)? {
                    break;
                }
                let (cs, ce) = self.chunk_range(k);
                let bytes = &mut buf[..(ce - cs) as usize];
                // Read without the chunk's lock: a reader must not wait on a
                // slow or stalled background download.
                stream.read_exact(bytes)?;
                let mut chunk = lock(&self.chunks[k]);
                if *chunk != Chunk::Missing {
                    // A reader fetched it while it streamed in: the one
                    // chunk that can come twice.
                    break;
                }
                // A refetch is a Range read of this chunk alone; the stream
                // then goes on with the next.
                self.store_checked(k, bytes, &mut chunk)?;
                drop(chunk);
                progress(ce);
                k += 1;
            }
            i = k;
        }
        Ok(())
    }

    /// Fetches every missing chunk (the background download), then makes
    /// the file durable.
    pub fn fill(&self, progress: &dyn Fn(u64)) -> io::Result<()> {
        self.fetch_runs(0, self.chunks.len(), progress)?;
        self.file.sync_all()
    }

    /// Moves the complete, verified file to `dest` in `cache`, and returns
    /// it open, its lock now shared: the lock of a mount serving the blob,
    /// which `cache prune` leaves alone.
    pub fn adopt(&self, cache: &CacheDir, dest: &Path) -> Result<File, super::CacheError> {
        cache.adopt(&self.path, dest)?;
        // After the rename: a crash in between costs a stale journal, not
        // the download.
        if let Some(journal) = &self.journal {
            journal.remove();
        }
        let io_err = |source| super::CacheError::Io {
            path: dest.to_path_buf(),
            source,
        };
        // A duplicate shares the lock of the file it duplicates.
        let file = self.file.try_clone().map_err(io_err)?;
        flock(&file, Hold::Shared, true).map_err(io_err)?;
        Ok(file)
    }

    /// Deletes the file and its journal (the blob failed its check).
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(journal) = &self.journal {
            journal.remove();
        }
    }
}

/// See [`ChunkedBlob::uncached`].
pub struct Uncached<'a, S>(&'a ChunkedBlob<S>);

impl<S: RangeSource> BlobReader for Uncached<'_, S> {
    fn size(&self) -> u64 {
        self.0.size
    }

    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let blob = self.0;
        let len = clamp_len(blob.size, offset, len) as u64;
        if len == 0 {
            return Ok(Vec::new());
        }
        let first = (offset / CHUNK_SIZE) as usize;
        let last = ((offset + len - 1) / CHUNK_SIZE) as usize;
        let (start, _) = blob.chunk_range(first);
        let (_, end) = blob.chunk_range(last);
        let mut bytes = blob.remote.read_at(start, end - start)?;
        if bytes.len() as u64 != end - start {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob ended before byte {end}"),
            ));
        }
        for i in first..=last {
            let (cs, ce) = blob.chunk_range(i);
            let piece = &mut bytes[(cs - start) as usize..(ce - start) as usize];
            if chunk_sum(piece) != blob.sums[i] {
                let again = blob.refetch_checked(i, piece)?;
                piece.copy_from_slice(&again);
            }
        }
        let from = (offset - start) as usize;
        Ok(bytes[from..from + len as usize].to_vec())
    }
}

/// See [`ChunkedBlob::held`].
pub struct Held<'a, S>(&'a ChunkedBlob<S>);

impl<S: RangeSource> BlobReader for Held<'_, S> {
    fn size(&self) -> u64 {
        self.0.size
    }

    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let blob = self.0;
        let len = clamp_len(blob.size, offset, len) as u64;
        let mut end = offset;
        while end < offset + len {
            let i = (end / CHUNK_SIZE) as usize;
            let mut chunk = lock(&blob.chunks[i]);
            blob.check(i, &mut chunk)?;
            if *chunk != Chunk::Present {
                break;
            }
            end = blob.chunk_range(i).1.min(offset + len);
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        blob.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

impl<S: RangeSource> BlobReader for ChunkedBlob<S> {
    fn size(&self) -> u64 {
        self.size
    }

    /// A cold span's compressed bytes come in one request, not one per
    /// chunk: on a link with a round trip of tens of milliseconds that is
    /// most of a cold read's time. The chunks' locks are held (taken in
    /// ascending order, as everywhere) while they are fetched, so readers
    /// of neighbouring spans never fetch a shared chunk twice.
    fn prefetch(&self, start: u64, end: u64) -> io::Result<()> {
        let end = end.min(self.size);
        if start >= end {
            return Ok(());
        }
        let first = (start / CHUNK_SIZE) as usize;
        let last = end.div_ceil(CHUNK_SIZE) as usize;
        let mut guards: Vec<_> = self.chunks[first..last].iter().map(lock).collect();
        for (n, guard) in guards.iter_mut().enumerate() {
            self.check(first + n, guard)?;
        }
        let mut failure = None;
        let mut i = 0;
        while i < guards.len() {
            if *guards[i] == Chunk::Present {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < guards.len() && *guards[j] != Chunk::Present {
                j += 1;
            }
            let (run_start, _) = self.chunk_range(first + i);
            let (_, run_end) = self.chunk_range(first + j - 1);
            // One ranged read: unlike the background download's stream,
            // it is always a Range request, with the reader's retries.
            let bytes = self.remote.read_at(run_start, run_end - run_start)?;
            if bytes.len() as u64 != run_end - run_start {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("blob ended before byte {run_end}"),
                ));
            }
            for (n, guard) in guards[i..j].iter_mut().enumerate() {
                let (cs, ce) = self.chunk_range(first + i + n);
                let piece = &bytes[(cs - run_start) as usize..(ce - run_start) as usize];
                // The run's good chunks are kept even if one of them is bad.
                if let Err(e) = self.store_checked(first + i + n, piece, guard) {
                    failure.get_or_insert(e);
                }
            }
            i = j;
        }
        failure.map_or(Ok(()), Err)
    }

    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let len = clamp_len(self.size, offset, len);
        if len == 0 {
            return Ok(Vec::new());
        }
        let first = (offset / CHUNK_SIZE) as usize;
        let last = ((offset + len as u64 - 1) / CHUNK_SIZE) as usize;
        for i in first..=last {
            self.ensure(i)?;
        }
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

#[cfg(test)]
#[path = "chunks_tests.rs"]
mod tests;
