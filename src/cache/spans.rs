//! Inflated spans of layers in a bounded memory LRU, so that sequential
//! reads of a compressed layer inflate each span once, and concurrent
//! readers of one span wait for a single inflate (and a single fetch).
//! A span is inflated only as far as reads need (plus a little): a cold
//! read then fetches the compressed bytes from the span's seek point to its
//! data, not to the next seek point. Later reads further in extend it.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::blob::BlobReader;
use crate::layer::seek::{Compression, SeekIndex, read_at};

/// Span of an uncompressed layer, which has no seek points of its own.
const PLAIN_SPAN: u64 = 1 << 20;
/// Larger spans (a single-frame zstd layer) are read directly, uncached.
const MAX_CACHED_SPAN: u64 = 64 << 20;
/// Memory per shard of the cache: room for a few spans of up to 4 MiB.
const SHARD_BYTES: u64 = 16 << 20;
/// Inflated past what a read asks for, so that the next reads of a file
/// find it; a span that must grow again at least doubles.
pub const READ_AHEAD: u64 = 128 << 10;
/// Locks that make the inflate of a span single-flight, by key hash.
const LOCKS: usize = 64;

#[derive(Clone)]
struct ByLen;

impl Weighter<(usize, u64), Arc<Vec<u8>>> for ByLen {
    fn weight(&self, _key: &(usize, u64), val: &Arc<Vec<u8>>) -> u64 {
        (val.len() as u64).max(1)
    }
}

pub struct SpanCache {
    /// (layer, span start) → the span's first bytes, inflated.
    cache: Cache<(usize, u64), Arc<Vec<u8>>, ByLen>,
    inflating: Vec<Mutex<()>>,
    /// The last failed inflate of a span, and when it ended: readers that
    /// waited on it get its error rather than each trying again (with all
    /// the retries) one after the other.
    failed: Mutex<HashMap<(usize, u64), Failure>>,
}

/// When an inflate failed, and how.
type Failure = (Instant, Arc<io::Error>);

/// A failure shared by the readers that waited on it; its source is the
/// original error, so what it was (a full disk, say) can still be told.
#[derive(Debug)]
struct Shared(Arc<io::Error>);

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

impl SpanCache {
    pub fn new(memory_bytes: u64) -> Self {
        // The cache is split into shards of equal weight, at least 32 items
        // each, and admits nothing heavier than a shard: sized for 256 items,
        // a 32 MiB cache had 4 MiB shards and kept no 4 MiB span at all. One
        // shard per 16 MiB keeps a few spans in each.
        let shards = (memory_bytes / SHARD_BYTES).max(1);
        Self {
            cache: Cache::with_weighter((32 * shards) as usize, memory_bytes.max(1), ByLen),
            inflating: (0..LOCKS).map(|_| Mutex::new(())).collect(),
            failed: Mutex::default(),
        }
    }

    /// `len` bytes at `offset` of the uncompressed layer, through the cache.
    pub fn read(
        &self,
        layer: usize,
        blob: &dyn BlobReader,
        seek: &SeekIndex,
        offset: u64,
        len: u64,
    ) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(seek.uncompressed_size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let (start, span_end) = span_of(seek, pos);
            if span_end - start > MAX_CACHED_SPAN {
                let bytes = read_at(blob, seek, pos, end - pos).map_err(io::Error::other)?;
                out.extend_from_slice(&bytes);
                break;
            }
            let need = end.min(span_end);
            let span = self.span(layer, blob, seek, (start, span_end), need)?;
            let from = (pos - start) as usize;
            let to = (need - start) as usize;
            if from >= span.len() || to > span.len() {
                return Err(io::Error::other("layer ended before its index said"));
            }
            out.extend_from_slice(&span[from..to]);
            pos = need;
        }
        Ok(out)
    }

    /// The span `[start, end)` of `layer` inflated at least up to `need`.
    fn span(
        &self,
        layer: usize,
        blob: &dyn BlobReader,
        seek: &SeekIndex,
        (start, end): (u64, u64),
        need: u64,
    ) -> io::Result<Arc<Vec<u8>>> {
        let key = (layer, start);
        let covers = |v: &Arc<Vec<u8>>| start + v.len() as u64 >= need;
        if let Some(span) = self.cache.get(&key).filter(covers) {
            return Ok(span);
        }
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let arrived = Instant::now();
        let _inflating = self.inflating[h.finish() as usize % LOCKS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let have = match self.cache.get(&key) {
            Some(span) if covers(&span) => return Ok(span),
            Some(span) => span.len() as u64,
            None => 0,
        };
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((ended, e)) = failed.get(&key)
            && *ended >= arrived
        {
            return Err(io::Error::new(e.kind(), Shared(Arc::clone(e))));
        }
        failed.remove(&key);
        drop(failed);
        let target = end.min((need + READ_AHEAD).max(start + 2 * have));
        let (from, to) = seek.compressed_prefix_for(start, target - start);
        let inflated = blob
            .prefetch(from, to)
            .and_then(|()| read_at(blob, seek, start, target - start).map_err(io::Error::other));
        match inflated {
            Ok(span) => {
                let span = Arc::new(span);
                self.cache.insert(key, Arc::clone(&span));
                Ok(span)
            }
            Err(e) => {
                let e = Arc::new(e);
                let shared = io::Error::new(e.kind(), Shared(Arc::clone(&e)));
                self.failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, (Instant::now(), e));
                Err(shared)
            }
        }
    }

    /// Drops every span of `layer` (its source changed).
    pub fn forget_layer(&self, layer: usize) {
        self.cache.retain(|(l, _), _| *l != layer);
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(l, _), _| *l != layer);
    }
}

/// The compressed bytes a read of `len` bytes at `offset` inflates, as
/// [`SpanCache::read`] reads them: from the seek point of its first span to
/// a little past its end.
pub fn compressed_range(seek: &SeekIndex, offset: u64, len: u64) -> (u64, u64) {
    let end = offset.saturating_add(len).min(seek.uncompressed_size);
    if end <= offset {
        return (0, 0);
    }
    let (start, _) = span_of(seek, offset);
    let (_, span_end) = span_of(seek, end - 1);
    let target = span_end.min(end + READ_AHEAD);
    seek.compressed_prefix_for(start, target - start)
}

/// The uncompressed range `[start, end)` of the span holding `offset`.
pub fn span_of(seek: &SeekIndex, offset: u64) -> (u64, u64) {
    if seek.compression == Compression::None || seek.points.is_empty() {
        let start = offset / PLAIN_SPAN * PLAIN_SPAN;
        return (start, (start + PLAIN_SPAN).min(seek.uncompressed_size));
    }
    let i = seek
        .points
        .partition_point(|p| p.uncompressed_offset <= offset)
        .saturating_sub(1);
    let start = seek.points[i].uncompressed_offset;
    let end = seek
        .points
        .get(i + 1)
        .map_or(seek.uncompressed_size, |p| p.uncompressed_offset);
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        data: Vec<u8>,
        reads: AtomicUsize,
        /// The end of the furthest byte read.
        furthest: std::sync::atomic::AtomicU64,
    }

    impl BlobReader for Counting {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.furthest.fetch_max(offset + len, Ordering::SeqCst);
            self.data.read_at(offset, len)
        }
    }

    /// The index of an uncompressed layer of `size` bytes.
    fn uncompressed(size: u64) -> SeekIndex {
        SeekIndex {
            compression: Compression::None,
            span: PLAIN_SPAN,
            compressed_size: size,
            uncompressed_size: size,
            points: Vec::new(),
        }
    }

    #[test]
    fn a_small_cache_keeps_full_size_spans() {
        let blob = Counting {
            data: (0..2 * PLAIN_SPAN).map(|i| (i % 251) as u8).collect(),
            reads: AtomicUsize::new(0),
            furthest: Default::default(),
        };
        let seek = uncompressed(blob.size());
        let cache = SpanCache::new(32 << 20);
        for _ in 0..3 {
            let got = cache.read(0, &blob, &seek, 10, 2 * PLAIN_SPAN).unwrap();
            assert!(got == blob.data[10..], "wrong bytes");
        }
        assert_eq!(blob.reads.load(Ordering::SeqCst), 2, "one read per span");
    }

    /// Readers that wait on a span whose inflate fails get that failure
    /// instead of each trying again in turn; a reader that comes later tries
    /// again.
    #[test]
    fn readers_waiting_on_a_failed_inflate_share_its_error() {
        struct Failing(AtomicUsize);
        impl BlobReader for Failing {
            fn size(&self) -> u64 {
                4 << 20
            }
            fn read_at(&self, _offset: u64, _len: u64) -> io::Result<Vec<u8>> {
                self.0.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(500));
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            }
        }
        let blob = Failing(AtomicUsize::new(0));
        let seek = uncompressed(blob.size());
        let cache = SpanCache::new(32 << 20);
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            let (cache, blob, seek, start) = (&cache, &blob, &seek, &start);
            let readers: Vec<_> = (0..8u64)
                .map(|i| {
                    s.spawn(move || {
                        start.wait();
                        cache.read(0, blob, seek, 1000 * i, 100)
                    })
                })
                .collect();
            for r in readers {
                let e = r.join().unwrap().expect_err("a failed inflate");
                assert!(
                    crate::cache::space::is_disk_full(&e),
                    "{e}: what it was is lost"
                );
            }
        });
        assert_eq!(blob.0.load(Ordering::SeqCst), 1, "the waiters tried again");
        assert!(cache.read(0, &blob, &seek, 0, 100).is_err());
        assert_eq!(blob.0.load(Ordering::SeqCst), 2, "a later read did not try");
    }

    /// A read at a span's start inflates (and fetches) only its head; reads
    /// further in extend the span, and every byte is right.
    #[test]
    fn a_span_is_inflated_only_as_far_as_reads_need() {
        use std::io::{Read, Write};
        let mut data = vec![0u8; 3 << 20];
        fastrand::Rng::with_seed(5).fill(&mut data);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        gz.write_all(&data).unwrap();
        let compressed = gz.finish().unwrap();
        let mut dec =
            crate::layer::seek::SeekingDecoder::new(&compressed[..], Compression::Gzip, 1 << 20)
                .unwrap();
        std::io::copy(&mut dec.by_ref(), &mut std::io::sink()).unwrap();
        let seek = dec.finish().unwrap();
        let second = seek.points[1].compressed_offset;
        let blob = Counting {
            data: compressed,
            reads: AtomicUsize::new(0),
            furthest: Default::default(),
        };
        let cache = SpanCache::new(64 << 20);
        assert_eq!(cache.read(0, &blob, &seek, 10, 100).unwrap(), data[10..110]);
        let furthest = blob.furthest.load(Ordering::SeqCst);
        assert!(
            furthest < second / 2,
            "fetched up to {furthest} of a span ending at {second}"
        );
        let far = (900 << 10)..(1000 << 10);
        let got = cache.read(0, &blob, &seek, far.start, 100 << 10).unwrap();
        assert!(
            got == data[far.start as usize..far.end as usize],
            "wrong bytes further in the span"
        );
        let mut all = Vec::new();
        for offset in (0..data.len() as u64).step_by(128 << 10) {
            all.extend(cache.read(0, &blob, &seek, offset, 128 << 10).unwrap());
        }
        assert!(all == data, "a sequential read differs");
    }
}
