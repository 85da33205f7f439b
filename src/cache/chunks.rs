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

    /// Fetches every missing chunk, each run of missing chunks with one
    /// streamed request. `progress` gets the bytes present so far.
    pub fn fill(&self, progress: &dyn Fn(u64)) -> io::Result<()> {
        let mut i = 0;
        while i < self.present.len() {
            if *self.present[i].lock().unwrap_or_else(|e| e.into_inner()) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < self.present.len()
                && !*self.present[j].lock().unwrap_or_else(|e| e.into_inner())
            {
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
                // A lazy read may have fetched this chunk meanwhile.
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
        self.file.sync_all()
    }
}

impl<S: RangeSource> BlobReader for ChunkedBlob<S> {
    fn size(&self) -> u64 {
        self.size
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
