use super::*;
use std::fs::OpenOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

/// An in-memory remote that counts what it serves; its streams can be
/// held at an offset until released, and it can damage a byte.
struct Remote {
    data: Vec<u8>,
    reads: AtomicUsize,
    /// The byte served wrong, in this many more answers (reads or streams).
    damage_at: AtomicU64,
    damages_left: AtomicUsize,
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
        let mut bytes = self.data.read_at(offset, len)?;
        self.damage(offset, &mut bytes);
        Ok(bytes)
    }
}

impl Remote {
    /// Serves byte `at` wrong in the next `times` answers that hold it.
    fn damage_next(&self, at: u64, times: usize) {
        self.damage_at.store(at, Ordering::SeqCst);
        self.damages_left.store(times, Ordering::SeqCst);
    }

    /// Flips the damaged byte if `bytes`, from offset `start`, hold it.
    fn damage(&self, start: u64, bytes: &mut [u8]) {
        let at = self.damage_at.load(Ordering::SeqCst);
        if let Some(byte) = at
            .checked_sub(start)
            .and_then(|i| bytes.get_mut(i as usize))
            && self
                .damages_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            *byte ^= 0xff;
        }
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
        r.damage(self.pos, &mut buf[..n]);
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
        damage_at: AtomicU64::new(u64::MAX),
        damages_left: AtomicUsize::new(0),
        streamed: AtomicU64::new(0),
        hold_at: AtomicU64::new(u64::MAX),
        held: AtomicBool::new(false),
        released: AtomicBool::new(false),
    })
}

/// The remote's chunk file in `cache`, checked against its true chunk sums.
fn open(r: &Arc<Remote>, cache: &CacheDir, d: &Digest) -> ChunkedBlob<Arc<Remote>> {
    let sums = r.data.chunks(CHUNK_SIZE as usize).map(chunk_sum).collect();
    ChunkedBlob::open(r.clone(), cache, d, sums).unwrap()
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
    let blob = open(&r, &cache, &d);
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
    let blob = open(&r, &cache, &d);
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

/// `held` serves what the file holds, up to the first missing chunk, and
/// never asks the remote.
#[test]
fn held_reads_stop_at_the_first_missing_chunk() {
    let (_dir, cache, d) = cache();
    let r = remote(4 * CHUNK_SIZE as usize);
    let blob = open(&r, &cache, &d);
    blob.prefetch(CHUNK_SIZE, 3 * CHUNK_SIZE).unwrap();
    let reads = r.reads.load(Ordering::SeqCst);
    let held = blob.held();
    let c = CHUNK_SIZE as usize;
    assert_eq!(held.read_at(0, 10).unwrap(), b"", "chunk 0 is missing");
    let got = held.read_at(CHUNK_SIZE + 3, 4 * CHUNK_SIZE).unwrap();
    assert_eq!(got, r.data[c + 3..3 * c], "chunks 1 and 2, then a gap");
    assert_eq!(
        held.read_at(2 * CHUNK_SIZE, 5).unwrap(),
        r.data[2 * c..2 * c + 5]
    );
    assert_eq!(
        r.reads.load(Ordering::SeqCst),
        reads,
        "the remote was asked"
    );
}

#[test]
fn fill_streams_only_missing_runs_and_the_file_is_the_blob() {
    let (_dir, cache, d) = cache();
    let r = remote(5 * CHUNK_SIZE as usize + 17);
    let blob = open(&r, &cache, &d);
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
    let blob = open(&r, &cache, &d);
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
    let blob = open(&r, &cache, &d);
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
    let blob = open(&r, &cache, &d);
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
    let blob = open(&r2, &cache, &d);
    assert_eq!(blob.path(), cache.chunks_path(&d));
    blob.fill(&|_| {}).unwrap();
    assert_eq!(std::fs::read(blob.path()).unwrap(), r.data);
    assert_eq!(
        r2.streamed.load(Ordering::SeqCst),
        r.data.len() as u64 - 2 * CHUNK_SIZE,
        "chunks 1 and 4 were kept, chunk 2 fetched again"
    );
    assert_eq!(blob.fetched(), r.data.len() as u64);
    blob.adopt(&cache, &cache.blob_path(&d)).unwrap();
    assert_eq!(std::fs::read(cache.blob_path(&d)).unwrap(), r.data);
    assert!(!cache.journal_path(&d).exists());
}

#[test]
fn a_chunk_file_of_another_size_is_started_over() {
    let (_dir, cache, d) = cache();
    let r = remote(3 * CHUNK_SIZE as usize);
    let blob = open(&r, &cache, &d);
    blob.read_at(0, 1).unwrap();
    drop(blob);
    let r2 = remote(2 * CHUNK_SIZE as usize);
    let blob = open(&r2, &cache, &d);
    blob.fill(&|_| {}).unwrap();
    assert_eq!(std::fs::read(blob.path()).unwrap(), r2.data);
    assert_eq!(
        r2.streamed.load(Ordering::SeqCst),
        r2.data.len() as u64,
        "nothing kept"
    );
}

#[test]
fn a_second_daemon_gets_a_private_file() {
    let (_dir, cache, d) = cache();
    let r = remote(2 * CHUNK_SIZE as usize + 5);
    let first = open(&r, &cache, &d);
    let second = open(&r, &cache, &d);
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
    let r3 = remote(r.data.len());
    let third = open(&r3, &cache, &d);
    assert!(!cache.private_chunks_path(&d).exists());
    third.fill(&|_| {}).unwrap();
    assert_eq!(
        r3.streamed.load(Ordering::SeqCst),
        r.data.len() as u64 - CHUNK_SIZE
    );
}

const C: usize = CHUNK_SIZE as usize;

#[test]
fn a_chunk_damaged_once_in_transit_is_fetched_again() {
    let (_dir, cache, d) = cache();
    let r = remote(4 * C + 10);
    let blob = open(&r, &cache, &d);
    // A lazy read.
    r.damage_next(CHUNK_SIZE + 5, 1);
    assert_eq!(blob.read_at(CHUNK_SIZE, 100).unwrap(), r.data[C..C + 100]);
    assert_eq!(r.reads.load(Ordering::SeqCst), 2, "the chunk, then again");
    // A prefetch of chunks 2 and 3 in one request: chunk 3 comes again alone.
    r.damage_next(3 * CHUNK_SIZE + 9, 1);
    blob.prefetch(2 * CHUNK_SIZE, 4 * CHUNK_SIZE).unwrap();
    assert_eq!(r.reads.load(Ordering::SeqCst), 4);
    // The background stream: chunk 0 comes again as a Range read.
    r.damage_next(7, 1);
    blob.fill(&|_| {}).unwrap();
    assert_eq!(r.reads.load(Ordering::SeqCst), 5);
    assert_eq!(std::fs::read(blob.path()).unwrap(), r.data);
    assert_eq!(blob.fetched(), r.data.len() as u64);
}

#[test]
fn a_chunk_damaged_every_time_fails_its_reads_and_is_never_kept() {
    let (_dir, cache, d) = cache();
    let r = remote(3 * C + 10);
    let blob = open(&r, &cache, &d);
    r.damage_next(CHUNK_SIZE + 5, usize::MAX);
    let e = blob.read_at(CHUNK_SIZE, 100).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    let mismatch = ChunkMismatch::find(&e).expect("a mismatch");
    let mut damaged = r.data[C..2 * C].to_vec();
    damaged[5] ^= 0xff;
    assert_eq!(mismatch.chunk, 1);
    assert_eq!(mismatch.expected, Digest::of(&r.data[C..2 * C]));
    assert_eq!(mismatch.actual, Digest::of(&damaged));
    assert_eq!(r.reads.load(Ordering::SeqCst), 2, "fetched twice, no more");

    // A prefetch keeps the good chunks of its run, not the damaged one.
    let e = blob.prefetch(0, 3 * CHUNK_SIZE).unwrap_err();
    assert_eq!(ChunkMismatch::find(&e).map(|m| m.chunk), Some(1));
    let file = std::fs::read(blob.path()).unwrap();
    assert_eq!(file[..C], r.data[..C]);
    assert!(
        file[C..2 * C].iter().all(|&b| b == 0),
        "damaged bytes written"
    );
    assert_eq!(file[2 * C..3 * C], r.data[2 * C..3 * C]);
    assert_eq!(blob.fetched(), 2 * CHUNK_SIZE);
    // The background download gives up on it (no transfer error to retry).
    let e = blob.fill(&|_| {}).unwrap_err();
    assert_eq!(ChunkMismatch::find(&e).map(|m| m.chunk), Some(1));
    let journal = std::fs::read(cache.journal_path(&d)).unwrap();
    assert!(
        !journal.windows(32).any(|w| w == chunk_sum(&damaged)),
        "damaged chunk recorded"
    );

    // Once the remote serves the right bytes, the same reads succeed.
    r.damage_next(u64::MAX, 0);
    assert_eq!(blob.read_at(CHUNK_SIZE, 100).unwrap(), r.data[C..C + 100]);
    blob.fill(&|_| {}).unwrap();
    assert_eq!(std::fs::read(blob.path()).unwrap(), r.data);
}

/// An earlier lazypull recorded the chunks it got without checking them: a
/// damaged one whose record matches its bytes is fetched again all the same.
#[test]
fn a_kept_chunk_must_match_the_index_not_only_its_record() {
    let (_dir, cache, d) = cache();
    let r = remote(3 * C);
    let blob = open(&r, &cache, &d);
    blob.read_at(0, 2 * CHUNK_SIZE).unwrap();
    drop(blob);
    let mut damaged = r.data[C..2 * C].to_vec();
    damaged[5] ^= 0xff;
    let file = OpenOptions::new()
        .write(true)
        .open(cache.chunks_path(&d))
        .unwrap();
    file.write_all_at(&damaged, CHUNK_SIZE).unwrap();
    let (journal, _) = Journal::open(&cache.journal_path(&d), 3).unwrap();
    journal.record(1, &chunk_sum(&damaged)).unwrap();
    drop(journal);

    let r2 = remote(r.data.len());
    let blob = open(&r2, &cache, &d);
    blob.fill(&|_| {}).unwrap();
    assert_eq!(std::fs::read(blob.path()).unwrap(), r.data);
    assert_eq!(
        r2.streamed.load(Ordering::SeqCst),
        2 * CHUNK_SIZE,
        "chunk 0 kept, chunks 1 and 2 fetched"
    );
}

#[test]
fn an_index_of_another_chunk_count_is_refused() {
    let (_dir, cache, d) = cache();
    let r = remote(2 * C + 1);
    let e = ChunkedBlob::open(r.clone(), &cache, &d, vec![[0; 32]; 2])
        .err()
        .expect("refused");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
}

/// With the cache full, reads bypass the file: still checked chunk by chunk.
#[test]
fn uncached_reads_are_checked_and_keep_nothing() {
    let (_dir, cache, d) = cache();
    let r = remote(3 * C + 10);
    let blob = open(&r, &cache, &d);
    let uncached = blob.uncached();
    r.damage_next(CHUNK_SIZE + 5, 1);
    let got = uncached.read_at(C as u64 - 50, 200).unwrap();
    assert_eq!(got, r.data[C - 50..C + 150]);
    assert_eq!(r.reads.load(Ordering::SeqCst), 2, "one read, chunk 1 again");
    r.damage_next(CHUNK_SIZE + 5, usize::MAX);
    let e = uncached.read_at(CHUNK_SIZE, 10).unwrap_err();
    assert_eq!(ChunkMismatch::find(&e).map(|m| m.chunk), Some(1));
    assert_eq!(blob.fetched(), 0, "nothing kept");
}
