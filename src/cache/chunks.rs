//! A remote blob kept on disk as it is read: fixed-size chunks fetched once
//! (concurrent readers of a chunk wait for one fetch) and written into a
//! sparse file, so lazy reads and the background download share every byte
//! and a layer is never fetched twice. Once every chunk is there and the
//! whole blob verified, the file becomes the layer's blob.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::blob::{BlobReader, RangeSource, clamp_len};

/// Fetch unit: large enough that a request's round trip is small next to
/// its transfer, small enough that a cold read fetches little it does not need.
pub const CHUNK_SIZE: u64 = 1 << 20;

pub struct ChunkedBlob<S> {
    remote: S,
    path: PathBuf,
    file: File,
    size: u64,
    /// Per chunk: whether its bytes are in the file. The lock is held while
    /// the chunk is fetched, which makes the fetch single-flight.
    present: Vec<Mutex<bool>>,
    fetched: AtomicU64,
}

impl<S: RangeSource> ChunkedBlob<S> {
    /// Opens (creating, sparse) the chunk file at `path`. Chunks a previous
    /// process wrote are not trusted: no record says which are complete.
    pub fn create(remote: S, path: &Path) -> io::Result<Self> {
        let size = remote.size();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(size)?;
        let chunks = size.div_ceil(CHUNK_SIZE) as usize;
        Ok(Self {
            remote,
            path: path.to_path_buf(),
            file,
            size,
            present: (0..chunks).map(|_| Mutex::new(false)).collect(),
            fetched: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The remote itself, for reads that cannot be cached (a full disk).
    pub fn remote(&self) -> &S {
        &self.remote
    }

    /// Compressed bytes fetched from the remote so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    fn chunk_range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * CHUNK_SIZE;
        (start, (start + CHUNK_SIZE).min(self.size))
    }

    /// Makes sure chunk `i` is in the file, fetching it if needed.
    fn ensure(&self, i: usize) -> io::Result<()> {
        let mut present = self.present[i].lock().unwrap_or_else(|e| e.into_inner());
        if *present {
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
        self.file.write_all_at(&bytes, start)?;
        self.fetched
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        *present = true;
        Ok(())
    }

    fn is_present(&self, i: usize) -> bool {
        *self.present[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches every missing chunk among `first..last`, each run of missing
    /// chunks with one streamed request. `progress` gets the end offset of
    /// each chunk as it is done.
    fn fetch_runs(&self, first: usize, last: usize, progress: &dyn Fn(u64)) -> io::Result<()> {
        let mut i = first;
        while i < last {
            if self.is_present(i) {
                progress(self.chunk_range(i).1);
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < last && !self.is_present(j) {
                j += 1;
            }
            let (start, _) = self.chunk_range(i);
            let (_, end) = self.chunk_range(j - 1);
            let mut stream = self.remote.stream(start, end)?;
            let mut buf = vec![0u8; CHUNK_SIZE as usize];
            for k in i..j {
                let (cs, ce) = self.chunk_range(k);
                let chunk = &mut buf[..(ce - cs) as usize];
                stream.read_exact(chunk)?;
                let mut present = self.present[k].lock().unwrap_or_else(|e| e.into_inner());
                // Another reader may have fetched this chunk meanwhile.
                if !*present {
                    self.file.write_all_at(chunk, cs)?;
                    self.fetched
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    *present = true;
                }
                drop(present);
                progress(ce);
            }
            i = j;
        }
        Ok(())
    }

    /// Fetches every missing chunk (the background download), then makes
    /// the file durable.
    pub fn fill(&self, progress: &dyn Fn(u64)) -> io::Result<()> {
        self.fetch_runs(0, self.present.len(), progress)?;
        self.file.sync_all()
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
        let mut guards: Vec<_> = self.present[first..last]
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let mut i = 0;
        while i < guards.len() {
            if *guards[i] {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < guards.len() && !*guards[j] {
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
            self.file.write_all_at(&bytes, run_start)?;
            self.fetched
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            for guard in &mut guards[i..j] {
                **guard = true;
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

    /// An in-memory remote that counts what it serves.
    struct Remote {
        data: Vec<u8>,
        reads: AtomicUsize,
        streamed: AtomicU64,
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

    impl RangeSource for Arc<Remote> {
        fn stream(&self, start: u64, end: u64) -> io::Result<Box<dyn io::Read + Send>> {
            self.streamed.fetch_add(end - start, Ordering::SeqCst);
            Ok(Box::new(io::Cursor::new(
                self.data[start as usize..end as usize].to_vec(),
            )))
        }
    }

    fn remote(len: usize) -> Arc<Remote> {
        Arc::new(Remote {
            data: (0..len).map(|i| (i * 7 % 251) as u8).collect(),
            reads: AtomicUsize::new(0),
            streamed: AtomicU64::new(0),
        })
    }

    #[test]
    fn concurrent_readers_fetch_each_chunk_once() {
        let dir = tempfile::tempdir().unwrap();
        let r = remote(3 * CHUNK_SIZE as usize + 100);
        let blob = ChunkedBlob::create(r.clone(), &dir.path().join("c")).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let r = remote(4 * CHUNK_SIZE as usize);
        let blob = ChunkedBlob::create(r.clone(), &dir.path().join("c")).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let r = remote(5 * CHUNK_SIZE as usize + 17);
        let blob = ChunkedBlob::create(r.clone(), &dir.path().join("c")).unwrap();
        blob.read_at(2 * CHUNK_SIZE + 5, 10).unwrap();
        blob.fill(&|_| {}).unwrap();
        assert_eq!(
            r.streamed.load(Ordering::SeqCst),
            r.data.len() as u64 - CHUNK_SIZE
        );
        assert_eq!(std::fs::read(blob.path()).unwrap(), r.data);
        assert_eq!(blob.fetched(), r.data.len() as u64);
    }
}
