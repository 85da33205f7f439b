//! Inflated spans of layers in a bounded memory LRU, so that sequential
//! reads of a compressed layer inflate each span once, and concurrent
//! readers of one span wait for a single inflate (and a single fetch).

use std::io;
use std::sync::Arc;

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

#[derive(Clone)]
struct ByLen;

impl Weighter<(usize, u64), Arc<Vec<u8>>> for ByLen {
    fn weight(&self, _key: &(usize, u64), val: &Arc<Vec<u8>>) -> u64 {
        (val.len() as u64).max(1)
    }
}

pub struct SpanCache {
    cache: Cache<(usize, u64), Arc<Vec<u8>>, ByLen>,
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
            let span = self.cache.get_or_insert_with(&(layer, start), || {
                let (from, to) = seek.compressed_span_for(start, span_end - start);
                blob.prefetch(from, to)?;
                read_at(blob, seek, start, span_end - start)
                    .map(Arc::new)
                    .map_err(io::Error::other)
            })?;
            let from = (pos - start) as usize;
            let to = (end.min(span_end) - start) as usize;
            if from >= span.len() || to > span.len() {
                return Err(io::Error::other("layer ended before its index said"));
            }
            out.extend_from_slice(&span[from..to]);
            pos = start + to as u64;
        }
        Ok(out)
    }

    /// Drops every span of `layer` (its source changed).
    pub fn forget_layer(&self, layer: usize) {
        self.cache.retain(|(l, _), _| *l != layer);
    }
}

/// The compressed bytes a read of `len` bytes at `offset` inflates: whole
/// spans, as [`SpanCache::read`] reads them.
pub fn compressed_range(seek: &SeekIndex, offset: u64, len: u64) -> (u64, u64) {
    let end = offset.saturating_add(len).min(seek.uncompressed_size);
    if end <= offset {
        return (0, 0);
    }
    let (start, _) = span_of(seek, offset);
    let (_, span_end) = span_of(seek, end - 1);
    seek.compressed_span_for(start, span_end - start)
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
    }

    impl BlobReader for Counting {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.data.read_at(offset, len)
        }
    }

    #[test]
    fn a_small_cache_keeps_full_size_spans() {
        let blob = Counting {
            data: (0..2 * PLAIN_SPAN).map(|i| (i % 251) as u8).collect(),
            reads: AtomicUsize::new(0),
        };
        let seek = SeekIndex {
            compression: Compression::None,
            span: PLAIN_SPAN,
            compressed_size: blob.size(),
            uncompressed_size: blob.size(),
            points: Vec::new(),
        };
        let cache = SpanCache::new(32 << 20);
        for _ in 0..3 {
            let got = cache.read(0, &blob, &seek, 10, 2 * PLAIN_SPAN).unwrap();
            assert!(got == blob.data[10..], "wrong bytes");
        }
        assert_eq!(blob.reads.load(Ordering::SeqCst), 2, "one read per span");
    }
}
