//! The startup prefetch list. A container reads the same files each time it
//! starts, one after another, and each cold one costs a round trip and a
//! span's transfer. So a mount records which file ranges were opened first
//! (in order), keeps that list in the cache beside the indexes, and the next
//! mount of the image whose layers are not local fetches those spans ahead,
//! in the same order, several requests at a time: the reads then find their
//! chunks on disk, or already on the way.
//!
//! A listed read usually starts far into its seek span, and what lies
//! between the span's seek point and the read would be fetched and
//! inflated for nothing. So the list also keeps, for such reads, a seek
//! point of their own (found by inflating the span once, from bytes that
//! are already here), which the next mount adds to the layer's index.

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
use crate::layer::seek::{SeekPoint, point_before};

/// Opens after this long are not part of starting up.
pub const RECORD_WINDOW: Duration = Duration::from_secs(60);
/// Bounds the list (and its file) whatever the workload.
const MAX_ACCESSES: usize = 16_384;
/// Of a large file only the head is fetched ahead: startup rarely reads
/// more, and the background download brings the rest.
const MAX_BYTES_PER_FILE: u64 = 8 << 20;
/// Requests in flight at once: enough to keep a link with tens of
/// milliseconds of round trip busy.
const WORKERS: usize = 8;
const MAX_JOB_BYTES: u64 = 32 << 20;
/// A listed read this far past its seek point gets a point of its own:
/// closer ones would save less than the point's window costs to keep.
const MIN_GAIN: u64 = 64 << 10;
/// Bounds the points kept (each holds a compressed 32 KiB window).
const MAX_POINTS: usize = 512;
const FORMAT_VERSION: u32 = 2;

/// One file's range of a layer's uncompressed tar, as it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    pub layer: usize,
    pub offset: u64,
    pub len: u64,
}

/// A seek point found in a layer at a listed read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedPoint {
    pub layer: usize,
    pub point: SeekPoint,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Trace {
    version: u32,
    pub accesses: Vec<Access>,
    pub points: Vec<LearnedPoint>,
    /// sha256 of the accesses and points: a damaged point would inflate
    /// wrong bytes, so a list that does not match is not used.
    checksum: String,
}

impl Trace {
    fn new(accesses: Vec<Access>, points: Vec<LearnedPoint>) -> Trace {
        let checksum = Trace::checksum_of(&accesses, &points);
        Trace {
            version: FORMAT_VERSION,
            accesses,
            points,
            checksum,
        }
    }

    fn checksum_of(accesses: &[Access], points: &[LearnedPoint]) -> String {
        let bytes = serde_json::to_vec(&(accesses, points)).unwrap_or_default();
        Digest::of(&bytes).to_string()
    }

    /// The list recorded for `image` (a manifest digest), if any. A missing
    /// or unreadable list only costs speed, so it is never an error.
    pub fn load(cache: &CacheDir, image: &Digest) -> Option<Trace> {
        let path = cache.trace_path(image);
        let bytes = std::fs::read(&path).ok()?;
        let why = match serde_json::from_slice::<Trace>(&bytes) {
            Ok(t) if t.version != FORMAT_VERSION => return None,
            Ok(t) if t.checksum == Trace::checksum_of(&t.accesses, &t.points) => return Some(t),
            Ok(_) => "its checksum does not match".to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(path = %path.display(), error = %why, "ignoring a damaged prefetch list");
        None
    }

    /// The points learned in layer `layer`.
    pub fn points_of(&self, layer: usize) -> Vec<SeekPoint> {
        self.points
            .iter()
            .filter(|p| p.layer == layer)
            .map(|p| p.point.clone())
            .collect()
    }

    fn store(&self, cache: &CacheDir, image: &Digest) -> Result<(), CacheError> {
        let path = cache.trace_path(image);
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
            // Another read of a span widens its entry to cover both.
            Some(i) => {
                let entry = &mut r.events[i].1;
                let start = entry.offset.min(access.offset);
                let end = (entry.offset + entry.len).max(access.offset + access.len);
                if (start, end - start) == (entry.offset, entry.len) {
                    return;
                }
                (entry.offset, entry.len) = (start, end - start);
            }
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
        Trace::new(accesses, Vec::new())
    }

    /// The list, if anything was recorded since it was last taken.
    fn changed(&self) -> Option<Trace> {
        self.dirty
            .swap(false, Ordering::Relaxed)
            .then(|| self.trace())
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
                offset: pos,
                len: end.min(span_end) - pos,
            };
            self.recorder.record(Event::Read, start, access);
            pos = span_end.max(pos + 1);
        }
    }

    /// Stores the opens and reads recorded so far as `image`'s prefetch
    /// list, with the seek points of its reads, unless nothing new came.
    pub fn store_trace(&self, cache: &CacheDir, image: &Digest) {
        let Some(trace) = self.recorder.changed() else {
            return;
        };
        let points = self.learn(&trace.accesses);
        if let Err(e) = Trace::new(trace.accesses, points).store(cache, image) {
            tracing::warn!(error = %e, "cannot store the prefetch list");
        }
    }

    /// A seek point for each listed access that starts far from the point
    /// before it: the one this mount was given, or one found now.
    fn learn(&self, accesses: &[Access]) -> Vec<LearnedPoint> {
        let mut points = Vec::new();
        let mut seen = HashSet::new();
        for a in accesses {
            if points.len() == MAX_POINTS {
                break;
            }
            let Some(l) = self.layers.get(a.layer) else {
                continue;
            };
            let Some(base) = l.index.seek.point_for(a.offset) else {
                continue;
            };
            let point = if a.offset - base.uncompressed_offset < MIN_GAIN {
                l.learned
                    .contains(&base.uncompressed_offset)
                    .then(|| base.clone())
            } else {
                self.point_before(a.layer, a.offset)
            };
            if let Some(point) = point
                && seen.insert((a.layer, point.uncompressed_offset))
            {
                points.push(LearnedPoint {
                    layer: a.layer,
                    point,
                });
            }
        }
        points
    }

    /// A seek point just before `offset` of `layer`, from the bytes this
    /// machine has of it (never from the registry).
    fn point_before(&self, layer: usize, offset: u64) -> Option<SeekPoint> {
        let l = &self.layers[layer];
        let source = l.source.read().unwrap_or_else(lock_err).clone()?;
        let found = match source {
            Source::Local(file) => point_before(file.as_ref(), &l.index.seek, offset),
            Source::Remote(chunks) => point_before(&chunks.held(), &l.index.seek, offset),
        };
        found.unwrap_or_else(|e| {
            tracing::debug!(layer, offset, error = %e, "no seek point for a listed read");
            None
        })
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
        r.record(Event::Read, 5 << 20, access(0, (5 << 20) + 700, 1));
        // Another read of the same span adds nothing, unless it reaches
        // further or starts before.
        r.record(Event::Read, 5 << 20, access(0, (5 << 20) + 700, 1));
        r.record(Event::Read, 5 << 20, access(0, (5 << 20) + 900, 9000));
        r.record(Event::Read, 5 << 20, access(0, (5 << 20) + 500, 10));
        // A file passed through to a local copy: never read here, listed whole.
        r.record(Event::Open, 20 << 20, access(0, 20 << 20, 300));
        // The same offset in another layer is another file.
        r.record(Event::Open, 0, access(1, 0, 50));
        assert_eq!(
            r.trace().accesses,
            [
                access(0, 0, 1),
                access(0, (5 << 20) + 500, 9400),
                access(0, 20 << 20, 300),
                access(1, 0, 50),
            ]
        );
    }

    #[test]
    fn a_list_is_taken_once_per_change_and_loads_back_unless_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::open(dir.path()).unwrap();
        let image = Digest::of(b"manifest");
        let r = Recorder::new();
        assert!(r.changed().is_none(), "nothing recorded");
        r.record(Event::Open, 7, access(0, 7, 3));
        let point = LearnedPoint {
            layer: 0,
            point: SeekPoint {
                compressed_offset: 10,
                uncompressed_offset: 20,
                bits: 3,
                window: None,
            },
        };
        let trace = r.changed().unwrap();
        assert!(r.changed().is_none(), "taken already");
        Trace::new(trace.accesses, vec![point.clone()])
            .store(&cache, &image)
            .unwrap();
        let loaded = Trace::load(&cache, &image).unwrap();
        assert_eq!(loaded.accesses, [access(0, 7, 3)]);
        assert_eq!(loaded.points_of(0), [point.point]);
        assert!(loaded.points_of(1).is_empty());
        // A changed point (here its bit count) is caught by the checksum.
        let path = cache.trace_path(&image);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"bits\":3", "\"bits\":4")).unwrap();
        assert!(
            Trace::load(&cache, &image).is_none(),
            "a damaged list is used"
        );
        std::fs::write(&path, b"{not json").unwrap();
        assert!(
            Trace::load(&cache, &image).is_none(),
            "a bad list is ignored"
        );
    }
}
