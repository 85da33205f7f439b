//! The startup prefetch list. A container reads the same files each time it
//! starts, one after another, and each cold one costs a round trip and a
//! span's transfer. So a mount records which file ranges were opened first
//! (in order), keeps that list in the cache beside the indexes, and the next
//! mount of the image whose layers are not local fetches those spans ahead,
//! in the same order, several requests at a time: the reads then find their
//! chunks on disk, or already on the way.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Layers, Source, lock_err};
use crate::blob::BlobReader;
use crate::cache::spans::{compressed_range, span_of};
use crate::cache::{CacheDir, CacheError};
use crate::digest::Digest;

/// Opens after this long are not part of starting up.
pub const RECORD_WINDOW: Duration = Duration::from_secs(60);
/// Bounds the list (and its file) whatever the workload.
const MAX_ACCESSES: usize = 16_384;
/// Of a large file only the head is fetched ahead: startup rarely reads
/// more, and the background download brings the rest.
const MAX_BYTES_PER_FILE: u64 = 8 << 20;
/// Requests in flight at once: enough to keep a link with tens of
/// milliseconds of round trip busy.
const WORKERS: usize = 4;
const MAX_JOB_BYTES: u64 = 32 << 20;
const FORMAT_VERSION: u32 = 1;

/// One file's range of a layer's uncompressed tar, as it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    pub layer: usize,
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Trace {
    version: u32,
    pub accesses: Vec<Access>,
}

impl Trace {
    /// The list recorded for `image` (a manifest digest), if any. A missing
    /// or unreadable list only costs speed, so it is never an error.
    pub fn load(cache: &CacheDir, image: &Digest) -> Option<Trace> {
        let path = cache.trace_path(image);
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice::<Trace>(&bytes) {
            Ok(t) if t.version == FORMAT_VERSION => Some(t),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable prefetch list");
                None
            }
        }
    }

    fn store(&self, cache: &CacheDir, image: &Digest) -> Result<(), CacheError> {
        let path = cache.trace_path(image);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| CacheError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        cache.write_atomic(&path, &bytes)
    }
}

#[derive(Default)]
struct Recorded {
    /// Opens by (layer, offset), reads by (layer, span start): where in
    /// `events` they are.
    seen: HashMap<(Event, usize, u64), usize>,
    events: Vec<(Event, Access)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Event {
    Open,
    Read,
}

/// Collects the file opens and reads of the first [`RECORD_WINDOW`] of a
/// mount. Reads say which parts of a file were needed; a file opened but
/// never read through the daemon (passed through to a local copy) counts
/// whole.
pub struct Recorder {
    started: Instant,
    recorded: Mutex<Recorded>,
    /// Whether anything was recorded since the list was last stored.
    dirty: AtomicBool,
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            recorded: Mutex::default(),
            dirty: AtomicBool::new(false),
        }
    }

    /// Whether opens and reads are still recorded (startup is not over).
    fn recording(&self) -> bool {
        self.started.elapsed() <= RECORD_WINDOW
    }

    fn record(&self, event: Event, key: u64, access: Access) {
        if !self.recording() {
            return;
        }
        let mut r = self.recorded.lock().unwrap_or_else(lock_err);
        let next = r.events.len();
        match r.seen.get(&(event, access.layer, key)).copied() {
            // A later read further into a span makes its entry longer.
            Some(i) if r.events[i].1.len < access.len => r.events[i].1.len = access.len,
            Some(_) => return,
            None if next < MAX_ACCESSES => {
                r.seen.insert((event, access.layer, key), next);
                r.events.push((event, access));
            }
            None => return,
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// The list: reads and opens in the order they came, without the opens
    /// of files whose reads are listed.
    fn trace(&self) -> Trace {
        let r = self.recorded.lock().unwrap_or_else(lock_err);
        let mut reads: HashMap<usize, BTreeSet<u64>> = HashMap::new();
        for (_, a) in r.events.iter().filter(|(e, _)| *e == Event::Read) {
            reads.entry(a.layer).or_default().insert(a.offset);
        }
        let read_in = |a: &Access| {
            reads.get(&a.layer).is_some_and(|offsets| {
                offsets
                    .range(a.offset..a.offset.saturating_add(a.len))
                    .next()
                    .is_some()
            })
        };
        let accesses = r
            .events
            .iter()
            .filter(|(e, a)| *e == Event::Read || !read_in(a))
            .map(|(_, a)| *a)
            .collect();
        Trace {
            version: FORMAT_VERSION,
            accesses,
        }
    }

    /// Stores what was recorded as `image`'s list, unless nothing new was.
    pub fn store(&self, cache: &CacheDir, image: &Digest) -> Result<(), CacheError> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        self.trace().store(cache, image)
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// A compressed range of a layer still to fetch, and the uncompressed
/// offset whose span it holds.
struct Job {
    layer: usize,
    from: u64,
    to: u64,
    offset: u64,
    len: u64,
}

impl Layers {
    /// Fetches, in the list's order and [`WORKERS`] requests at a time, the
    /// spans the listed opens read, for layers that are not local; then
    /// inflates them, so that the reader finds them ready.
    /// Failures are left to the reads themselves.
    pub(super) fn prefetch(&self, trace: &Trace) {
        let jobs = self.plan(trace);
        if jobs.is_empty() {
            return;
        }
        let started = Instant::now();
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..WORKERS {
                s.spawn(|| {
                    while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        self.run(job);
                    }
                });
            }
        });
        let bytes: u64 = jobs.iter().map(|j| j.to - j.from).sum();
        tracing::info!(
            requests = jobs.len(),
            bytes,
            elapsed = ?started.elapsed(),
            "prefetched the spans a previous mount read first"
        );
    }

    fn plan(&self, trace: &Trace) -> Vec<Job> {
        let mut jobs = Vec::new();
        let mut planned = HashSet::new();
        for a in &trace.accesses {
            let Some(l) = self.layers.get(a.layer) else {
                continue;
            };
            let remote = matches!(
                l.source.read().unwrap_or_else(lock_err).as_ref(),
                Some(Source::Remote(_))
            );
            let seek = &l.index.seek;
            if !remote || a.offset >= seek.uncompressed_size {
                continue;
            }
            let len = a.len.clamp(1, MAX_BYTES_PER_FILE);
            let (from, to) = compressed_range(seek, a.offset, len);
            // A span this large (a single-frame zstd layer) is read
            // directly by the reads, never whole.
            if to - from > MAX_JOB_BYTES {
                continue;
            }
            if to > from && planned.insert((a.layer, from, to)) {
                jobs.push(Job {
                    layer: a.layer,
                    from,
                    to,
                    offset: a.offset,
                    len,
                });
            }
        }
        jobs
    }

    fn run(&self, job: &Job) {
        let chunks = match self.layers[job.layer]
            .source
            .read()
            .unwrap_or_else(lock_err)
            .as_ref()
        {
            Some(Source::Remote(chunks)) => chunks.clone(),
            _ => return,
        };
        if let Err(e) = chunks.prefetch(job.from, job.to) {
            tracing::debug!(layer = job.layer, error = %e, "prefetch failed; the read will fetch");
            return;
        }
        let _ = self.read(job.layer, job.offset, job.len);
    }

    /// Records that a file's range was opened and passed through to a local
    /// copy (for the next mount's list).
    pub fn opened(&self, layer: usize, offset: u64, len: u64) {
        let access = Access { layer, offset, len };
        self.recorder.record(Event::Open, offset, access);
    }

    /// Records a read that a program made (for the next mount's list): the
    /// spans it touched, each once.
    pub fn was_read(&self, layer: usize, offset: u64, len: u64) {
        let Some(l) = self.layers.get(layer).filter(|_| self.recorder.recording()) else {
            return;
        };
        let seek = &l.index.seek;
        let end = offset.saturating_add(len).min(seek.uncompressed_size);
        let mut pos = offset;
        while pos < end {
            let (start, span_end) = span_of(seek, pos);
            let access = Access {
                layer,
                offset: start,
                len: end.min(span_end) - start,
            };
            self.recorder.record(Event::Read, start, access);
            pos = span_end.max(pos + 1);
        }
    }

    /// Stores the opens recorded so far as `image`'s prefetch list.
    pub fn store_trace(&self, cache: &CacheDir, image: &Digest) {
        if let Err(e) = self.recorder.store(cache, image) {
            tracing::warn!(error = %e, "cannot store the prefetch list");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(layer: usize, offset: u64, len: u64) -> Access {
        Access { layer, offset, len }
    }

    #[test]
    fn reads_stand_for_their_file_and_order_is_kept() {
        let r = Recorder::new();
        // A file read through the daemon: its reads are listed, its open is not.
        r.record(Event::Open, 0, access(0, 0, 10 << 20));
        r.record(Event::Read, 0, access(0, 0, 1));
        r.record(Event::Read, 5 << 20, access(0, 5 << 20, 1));
        // Another read of the same span adds nothing, unless it goes further.
        r.record(Event::Read, 5 << 20, access(0, 5 << 20, 1));
        r.record(Event::Read, 5 << 20, access(0, 5 << 20, 9000));
        // A file passed through to a local copy: never read here, listed whole.
        r.record(Event::Open, 20 << 20, access(0, 20 << 20, 300));
        // The same offset in another layer is another file.
        r.record(Event::Open, 0, access(1, 0, 50));
        assert_eq!(
            r.trace().accesses,
            [
                access(0, 0, 1),
                access(0, 5 << 20, 9000),
                access(0, 20 << 20, 300),
                access(1, 0, 50),
            ]
        );
    }

    #[test]
    fn a_list_is_stored_once_per_change_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        let image = Digest::of(b"manifest");
        let r = Recorder::new();
        r.store(&cache, &image).unwrap();
        assert!(Trace::load(&cache, &image).is_none(), "nothing recorded");
        r.record(Event::Open, 7, access(0, 7, 3));
        r.store(&cache, &image).unwrap();
        assert_eq!(
            Trace::load(&cache, &image).unwrap().accesses,
            [access(0, 7, 3)]
        );
        std::fs::write(cache.trace_path(&image), b"{not json").unwrap();
        assert!(
            Trace::load(&cache, &image).is_none(),
            "a bad list is ignored"
        );
    }
}
