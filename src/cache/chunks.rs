//! A remote blob kept on disk as it is read: fixed-size chunks fetched once
//! (concurrent readers of a chunk wait for one fetch) and written into a
//! sparse file, so lazy reads and the background download share every byte
//! and a layer is never fetched twice. Once every chunk is there and the
//! whole blob verified, the file becomes the layer's blob.
//!
//! The file outlives the daemon: a journal records each complete chunk with
//! its sha256, and the next daemon keeps the chunks whose bytes still match
//! (see [`super::journal`]), so a layer half-fetched when the daemon was
//! killed or stopped is resumed, not fetched again. The whole-blob digest
//! check before the layer is ready stays the final word. A daemon holds an
//! flock on the file; a second daemon fetching the same layer meanwhile
//! gets a private file, and forgets it when it is done.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use super::journal::{self, Hash, Journal};
use super::{CacheDir, private_prefix};
use crate::blob::{BlobReader, RangeSource, clamp_len};
use crate::digest::Digest;

/// Fetch, verification and single-flight unit. Neighbouring missing chunks
/// are fetched with one request, so a small chunk costs no round trips; it
/// keeps what a cold read fetches close to what its span needs (a 1 MiB
/// span is about 400 KiB of gzip).
pub const CHUNK_SIZE: u64 = 256 << 10;

/// What the file holds of one chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Missing,
    /// Written by an earlier daemon, whose journal gives the bytes' hash:
    /// kept once the bytes on disk are checked against it.
    Unchecked(Hash),
    Present,
}

pub struct ChunkedBlob<S> {
    remote: S,
    path: PathBuf,
    file: File,
    size: u64,
    /// Per chunk. The lock is held while the chunk is fetched, which makes
    /// the fetch single-flight.
    chunks: Vec<Mutex<Chunk>>,
    /// None for a private file, which dies with its daemon.
    journal: Option<Journal>,
    /// Bytes of the blob in the file: fetched, or kept from an earlier run.
    fetched: AtomicU64,
    /// Whether chunks of an earlier run were kept.
    resumed: AtomicBool,
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

/// Takes the exclusive flock on `file` unless another open file holds it.
fn try_flock(file: &File) -> io::Result<bool> {
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

/// Opens and locks the shared chunk file at `path`, or None if another
/// daemon holds it.
fn open_shared(path: &Path) -> io::Result<Option<File>> {
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if !try_flock(&file)? {
            return Ok(None);
        }
        // The holder we waited out may have renamed the file into blobs/
        // (or removed it) meanwhile: the lock must be on what `path` names.
        let ours = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => return Ok(Some(file)),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A new private chunk file, locked before it appears under its name so
/// [`remove_stale_private`] never takes a live one.
fn create_private(cache: &CacheDir, layer: &Digest) -> io::Result<(File, PathBuf)> {
    let tmp = tempfile::NamedTempFile::new_in(cache.root().join("tmp"))?;
    // Nobody else knows the new file: the lock is free.
    try_flock(tmp.as_file())?;
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
        if let Ok(file) = File::open(entry.path())
            && let Ok(true) = try_flock(&file)
        {
            tracing::debug!(path = %entry.path().display(), "removing a dead daemon's chunk file");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl<S: RangeSource> ChunkedBlob<S> {
    /// Opens the chunk file of `layer` in `cache`, keeping what an earlier
    /// daemon fetched of it; a private file if another daemon holds it.
    pub fn open(remote: S, cache: &CacheDir, layer: &Digest) -> io::Result<Self> {
        let size = remote.size();
        let count = size.div_ceil(CHUNK_SIZE) as usize;
        let path = cache.chunks_path(layer);
        let mut chunks = vec![Chunk::Missing; count];
        let (file, path, journal) = match open_shared(&path)? {
            Some(file) => {
                remove_stale_private(cache, layer);
                let (journal, recorded) = Journal::open(&cache.journal_path(layer), count)?;
                if file.metadata()?.len() == size {
                    for (chunk, hash) in chunks.iter_mut().zip(recorded) {
                        if let Some(hash) = hash {
                            *chunk = Chunk::Unchecked(hash);
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
        let resumed = chunks.iter().any(|c| *c != Chunk::Missing);
        if resumed {
            tracing::info!(%layer, "resuming an interrupted download");
        }
        Ok(Self {
            remote,
            path,
            file,
            size,
            chunks: chunks.into_iter().map(Mutex::new).collect(),
            journal,
            fetched: AtomicU64::new(0),
            resumed: AtomicBool::new(resumed),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The remote itself, for reads that cannot be cached (a full disk).
    pub fn remote(&self) -> &S {
        &self.remote
    }

    /// Bytes of the blob in the file so far: fetched from the remote, or
    /// kept from an earlier daemon's download.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Whether bytes from an earlier daemon's download are in use.
    pub fn resumed(&self) -> bool {
        self.resumed.load(Ordering::Relaxed)
    }

    fn chunk_range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * CHUNK_SIZE;
        (start, (start + CHUNK_SIZE).min(self.size))
    }

    /// Settles an unchecked chunk: present if its bytes on disk still hash
    /// to what the journal recorded, else missing.
    fn check(&self, i: usize, chunk: &mut Chunk) -> io::Result<()> {
        if let Chunk::Unchecked(hash) = *chunk {
            let (start, end) = self.chunk_range(i);
            let mut buf = vec![0u8; (end - start) as usize];
            self.file.read_exact_at(&mut buf, start)?;
            *chunk = if journal::hash(&buf) == hash {
                self.fetched.fetch_add(end - start, Ordering::Relaxed);
                Chunk::Present
            } else {
                tracing::debug!(
                    chunk = i,
                    "a kept chunk does not match its record; fetching it again"
                );
                Chunk::Missing
            };
        }
        Ok(())
    }

    /// Writes chunk `i`'s bytes, then records them in the journal.
    fn store(&self, i: usize, bytes: &[u8], chunk: &mut Chunk) -> io::Result<()> {
        let (start, _) = self.chunk_range(i);
        self.file.write_all_at(bytes, start)?;
        if let Some(journal) = &self.journal
            && let Err(e) = journal.record(i, &journal::hash(bytes))
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
        let (start, end) = self.chunk_range(i);
        let bytes = self.remote.read_at(start, end - start)?;
        if bytes.len() as u64 != end - start {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob ended inside chunk {i}"),
            ));
        }
        self.store(i, &bytes, &mut chunk)
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
            let (start, _) = self.chunk_range(i);
            let (_, end) = self.chunk_range(j - 1);
            let mut stream = self.remote.stream(start, end)?;
            let mut k = i;
            // The stream is read without the chunk's lock: a reader must not
            // wait on a slow or stalled background download.
            while k < j && self.is_free_and_missing(k)? {
                let (cs, ce) = self.chunk_range(k);
                let bytes = &mut buf[..(ce - cs) as usize];
                stream.read_exact(bytes)?;
                let mut chunk = lock(&self.chunks[k]);
                if *chunk != Chunk::Missing {
                    // A reader fetched it while it streamed in: the one
                    // chunk that can come twice.
                    break;
                }
                self.store(k, bytes, &mut chunk)?;
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

    /// Forgets every chunk, kept or fetched: the next fill fetches the
    /// whole blob again.
    pub fn restart(&self) -> io::Result<()> {
        for chunk in &self.chunks {
            *lock(chunk) = Chunk::Missing;
        }
        if let Some(journal) = &self.journal {
            journal.clear()?;
        }
        self.fetched.store(0, Ordering::Relaxed);
        self.resumed.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Moves the complete, verified file to `dest` in `cache`.
    pub fn adopt(&self, cache: &CacheDir, dest: &Path) -> Result<(), super::CacheError> {
        cache.adopt(&self.path, dest)?;
        // After the rename: a crash in between costs a stale journal, not
        // the download.
        if let Some(journal) = &self.journal {
            journal.remove();
        }
        Ok(())
    }

    /// Deletes the file and its journal (the blob failed its check).
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(journal) = &self.journal {
            journal.remove();
        }
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
                self.store(first + i + n, piece, guard)?;
            }
            i = j;
        }
        Ok(())
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
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// An in-memory remote that counts what it serves; its streams can be
    /// held at an offset until released.
    struct Remote {
        data: Vec<u8>,
        reads: AtomicUsize,
        /// Bytes handed out by streams (not merely asked for).
        streamed: AtomicU64,
        hold_at: AtomicU64,
        held: AtomicBool,
        released: AtomicBool,
    }

    impl BlobReader for Arc<Remote> {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.data.read_at(offset, len)
        }
    }

    struct Stream {
        remote: Arc<Remote>,
        pos: u64,
        end: u64,
    }

    impl Read for Stream {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let r = &self.remote;
            let hold = r.hold_at.load(Ordering::SeqCst);
            let mut end = self.end;
            if self.pos < hold {
                end = end.min(hold);
            } else {
                r.held.store(true, Ordering::SeqCst);
                while !r.released.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let n = clamp_len(end, self.pos, buf.len() as u64);
            buf[..n].copy_from_slice(&r.data[self.pos as usize..self.pos as usize + n]);
            self.pos += n as u64;
            r.streamed.fetch_add(n as u64, Ordering::SeqCst);
            Ok(n)
        }
    }

    impl RangeSource for Arc<Remote> {
        fn stream(&self, start: u64, end: u64) -> io::Result<Box<dyn io::Read + Send>> {
            Ok(Box::new(Stream {
                remote: self.clone(),
                pos: start,
                end,
            }))
        }
    }

    fn remote(len: usize) -> Arc<Remote> {
        Arc::new(Remote {
            data: (0..len).map(|i| (i * 7 % 251) as u8).collect(),
            reads: AtomicUsize::new(0),
            streamed: AtomicU64::new(0),
            hold_at: AtomicU64::new(u64::MAX),
            held: AtomicBool::new(false),
            released: AtomicBool::new(false),
        })
    }

    fn cache() -> (tempfile::TempDir, CacheDir, Digest) {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        (dir, cache, Digest::of(b"layer"))
    }

    #[test]
    fn concurrent_readers_fetch_each_chunk_once() {
        let (_dir, cache, d) = cache();
        let r = remote(3 * CHUNK_SIZE as usize + 100);
        let blob = ChunkedBlob::open(r.clone(), &cache, &d).unwrap();
        std::thread::scope(|s| {
            for t in 0..16u64 {
                let blob = &blob;
                let r = &r;
                s.spawn(move || {
                    let offset = t * (CHUNK_SIZE / 8) + t;
                    let got = blob.read_at(offset, CHUNK_SIZE).unwrap();
                    assert_eq!(got, r.data[offset as usize..(offset + CHUNK_SIZE) as usize]);
                });
            }
        });
        assert_eq!(
            r.reads.load(Ordering::SeqCst),
            3,
            "chunks 0, 1 and 2, once each"
        );
    }

    #[test]
    fn prefetch_fetches_a_range_with_one_request() {
        let (_dir, cache, d) = cache();
        let r = remote(4 * CHUNK_SIZE as usize);
        let blob = ChunkedBlob::open(r.clone(), &cache, &d).unwrap();
        blob.read_at(CHUNK_SIZE, 1).unwrap();
        blob.prefetch(10, 3 * CHUNK_SIZE + 5).unwrap();
        // Chunk 1 was there: chunks 0 and 2..4 came as two reads.
        assert_eq!(r.reads.load(Ordering::SeqCst), 3);
        let got = blob.read_at(0, 4 * CHUNK_SIZE).unwrap();
        assert_eq!(got, r.data);
        assert_eq!(
            r.reads.load(Ordering::SeqCst),
            3,
            "no read after the prefetch"
        );
    }

    #[test]
    fn fill_streams_only_missing_runs_and_the_file_is_the_blob() {
        let (_dir, cache, d) = cache();
        let r = remote(5 * CHUNK_SIZE as usize + 17);
        let blob = ChunkedBlob::open(r.clone(), &cache, &d).unwrap();
        blob.read_at(2 * CHUNK_SIZE + 5, 10).unwrap();
        blob.fill(&|_| {}).unwrap();
        assert_eq!(
            r.streamed.load(Ordering::SeqCst),
            r.data.len() as u64 - CHUNK_SIZE
        );
        assert_eq!(std::fs::read(blob.path()).unwrap(), r.data);
        assert_eq!(blob.fetched(), r.data.len() as u64);
    }

    #[test]
    fn fill_skips_a_chunk_a_reader_fetched_while_the_stream_ran() {
        let (_dir, cache, d) = cache();
        let r = remote(6 * CHUNK_SIZE as usize);
        // The stream stops inside chunk 1 until chunk 3 was read.
        r.hold_at.store(CHUNK_SIZE + 100, Ordering::SeqCst);
        let blob = ChunkedBlob::open(r.clone(), &cache, &d).unwrap();
        std::thread::scope(|s| {
            let fill = s.spawn(|| blob.fill(&|_| {}));
            while !r.held.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            blob.read_at(3 * CHUNK_SIZE, 10).unwrap();
            r.released.store(true, Ordering::SeqCst);
            fill.join().unwrap().unwrap();
        });
        assert_eq!(std::fs::read(blob.path()).unwrap(), r.data);
        assert_eq!(
            r.streamed.load(Ordering::SeqCst),
            5 * CHUNK_SIZE,
            "chunk 3 came once, by the read"
        );
    }

    #[test]
    fn a_stalled_download_does_not_hold_up_a_reader() {
        let (_dir, cache, d) = cache();
        let r = remote(3 * CHUNK_SIZE as usize);
        r.hold_at.store(100, Ordering::SeqCst);
        let blob = ChunkedBlob::open(r.clone(), &cache, &d).unwrap();
        std::thread::scope(|s| {
            let fill = s.spawn(|| blob.fill(&|_| {}));
            while !r.held.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            // Chunk 0 is the one streaming in: the reader fetches it itself.
            assert_eq!(blob.read_at(5, 10).unwrap(), r.data[5..15]);
            r.released.store(true, Ordering::SeqCst);
            fill.join().unwrap().unwrap();
        });
        assert_eq!(std::fs::read(blob.path()).unwrap(), r.data);
        assert_eq!(r.reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_new_daemon_keeps_the_chunks_that_still_match() {
        let (_dir, cache, d) = cache();
        let r = remote(6 * CHUNK_SIZE as usize + 300);
        let blob = ChunkedBlob::open(r.clone(), &cache, &d).unwrap();
        assert!(!blob.resumed());
        for chunk in [1, 2, 4] {
            blob.read_at(chunk * CHUNK_SIZE, 1).unwrap();
        }
        drop(blob);
        // A torn write: chunk 2's record survived, its bytes did not.
        let file = OpenOptions::new()
            .write(true)
            .open(cache.chunks_path(&d))
            .unwrap();
        file.write_all_at(&[0; 100], 2 * CHUNK_SIZE + 10).unwrap();

        let r2 = remote(r.data.len());
        let blob = ChunkedBlob::open(r2.clone(), &cache, &d).unwrap();
        assert!(blob.resumed());
        assert_eq!(blob.path(), cache.chunks_path(&d));
        blob.fill(&|_| {}).unwrap();
        assert_eq!(std::fs::read(blob.path()).unwrap(), r.data);
        assert_eq!(
            r2.streamed.load(Ordering::SeqCst),
            r.data.len() as u64 - 2 * CHUNK_SIZE,
            "chunks 1 and 4 were kept, chunk 2 fetched again"
        );
        assert_eq!(blob.fetched(), r.data.len() as u64);

        // Fetched from scratch after all, as after a failed check.
        blob.restart().unwrap();
        assert!(!blob.resumed());
        blob.fill(&|_| {}).unwrap();
        assert_eq!(
            r2.streamed.load(Ordering::SeqCst),
            2 * r.data.len() as u64 - 2 * CHUNK_SIZE
        );
        blob.adopt(&cache, &cache.blob_path(&d)).unwrap();
        assert_eq!(std::fs::read(cache.blob_path(&d)).unwrap(), r.data);
        assert!(!cache.journal_path(&d).exists());
    }

    #[test]
    fn a_chunk_file_of_another_size_is_started_over() {
        let (_dir, cache, d) = cache();
        let r = remote(3 * CHUNK_SIZE as usize);
        let blob = ChunkedBlob::open(r.clone(), &cache, &d).unwrap();
        blob.read_at(0, 1).unwrap();
        drop(blob);
        let r2 = remote(2 * CHUNK_SIZE as usize);
        let blob = ChunkedBlob::open(r2.clone(), &cache, &d).unwrap();
        assert!(!blob.resumed());
        blob.fill(&|_| {}).unwrap();
        assert_eq!(std::fs::read(blob.path()).unwrap(), r2.data);
    }

    #[test]
    fn a_second_daemon_gets_a_private_file() {
        let (_dir, cache, d) = cache();
        let r = remote(2 * CHUNK_SIZE as usize + 5);
        let first = ChunkedBlob::open(r.clone(), &cache, &d).unwrap();
        let second = ChunkedBlob::open(r.clone(), &cache, &d).unwrap();
        assert_eq!(first.path(), cache.chunks_path(&d));
        assert_eq!(second.path(), cache.private_chunks_path(&d));
        first.read_at(0, 1).unwrap();
        second.fill(&|_| {}).unwrap();
        assert_eq!(std::fs::read(second.path()).unwrap(), r.data);
        assert_eq!(
            std::fs::read(first.path()).unwrap()[..CHUNK_SIZE as usize],
            r.data[..CHUNK_SIZE as usize]
        );
        // Both die; the next daemon resumes the shared file and removes
        // the private one.
        drop((first, second));
        let third = ChunkedBlob::open(r.clone(), &cache, &d).unwrap();
        assert!(third.resumed());
        assert!(!cache.private_chunks_path(&d).exists());
    }
}
