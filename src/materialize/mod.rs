//! The layers of a mount: where each one's bytes come from right now (the
//! registry through the on-disk chunk cache, or the verified local blob),
//! and the background work that completes and verifies every layer before
//! it is marked ready.

mod extract;
mod prefetch;

pub use prefetch::{RECORD_WINDOW, Trace};

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::blob::{BlobReader, FileBlob};
use crate::cache::chunks::{ChunkMismatch, ChunkedBlob};
use crate::cache::space::is_disk_full;
use crate::cache::spans::SpanCache;
use crate::cache::{CacheDir, hold_shared};
use crate::layer::index::LayerIndex;
use crate::layer::{LayerError, verify_layer};
use crate::registry::{HttpBlob, LayerDescriptor, RegistryClient, RegistryError};

/// Waits between download attempts of a layer whose transfer failed (not
/// its content): a registry that is down for a while is waited out, never
/// turned into a failed layer.
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(2);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// The background download starts once reads of layers that are not local
/// have paused this long (or after [`MAX_QUIET_WAIT`]): it would otherwise
/// take most of the link from a container that is starting.
const QUIET: Duration = Duration::from_secs(1);
const MAX_QUIET_WAIT: Duration = Duration::from_secs(5);
/// After the cache ran out of space, cold reads skip the chunk file (whose
/// writes would fail) for this long, then try it again.
const UNCACHED_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Fetching,
    Verifying,
    Ready,
    Failed,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("layer {layer} failed verification: {reason}")]
    Failed { layer: String, reason: String },
    #[error("layer {layer}: {source}")]
    Layer { layer: String, source: io::Error },
}

/// Where a layer's bytes come from.
#[derive(Clone)]
enum Source {
    /// Verified, complete, in `blobs/`.
    Local(Arc<FileBlob>),
    /// Being fetched into `chunks/`; unverified.
    Remote(Arc<ChunkedBlob<HttpBlob>>),
}

struct Layer {
    descriptor: LayerDescriptor,
    index: LayerIndex,
    state: RwLock<(State, Option<String>)>,
    source: RwLock<Option<Source>>,
    /// Compressed bytes fetched by the background download.
    downloaded: AtomicU64,
    /// The layer's regular files, once extracted from the verified blob.
    files: RwLock<Option<extract::Extracted>>,
    /// Uncompressed offsets of the seek points the prefetch list added to
    /// the index.
    learned: HashSet<u64>,
}

/// Per-layer status, as `lazypull status` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerStatus {
    pub digest: String,
    pub diff_id: String,
    pub state: State,
    pub bytes_fetched: u64,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Called with a layer's number when it fails its check: what the kernel
/// cached of it must go too, so that all of its files read as EIO.
pub type FailureHook = Box<dyn Fn(usize) + Send + Sync>;

pub struct Layers {
    layers: Vec<Layer>,
    spans: SpanCache,
    on_failure: std::sync::OnceLock<FailureHook>,
    recorder: prefetch::Recorder,
    created: Instant,
    /// When (ms after `created`) a read last went to a layer that is not local.
    last_remote_read: AtomicU64,
    cache_root: PathBuf,
    /// Set when a write to the cache failed for lack of space: until then,
    /// cold reads go to the registry without being cached.
    cache_full_until: Mutex<Option<Instant>>,
}

fn lock_err<T>(e: std::sync::PoisonError<T>) -> T {
    e.into_inner()
}

impl Layers {
    /// The layers of an image whose indexes are known. A layer whose blob
    /// is in the cache is ready at once (it was verified when stored). The
    /// seek points of `trace` join the indexes.
    pub fn new(
        client: &RegistryClient,
        cache: &CacheDir,
        descriptors: &[LayerDescriptor],
        indexes: Vec<LayerIndex>,
        memory_bytes: u64,
        trace: Option<&Trace>,
    ) -> Result<Self, LayerError> {
        let mut layers = Vec::with_capacity(descriptors.len());
        for (i, (descriptor, mut index)) in descriptors.iter().zip(indexes).enumerate() {
            let learned = trace.map(|t| t.points_of(i)).unwrap_or_default();
            // Merging copies the index (windows and all): only when there
            // is something to merge.
            let merged = (!learned.is_empty()).then(|| index.seek.with_points(&learned));
            let learned = match merged {
                None => HashSet::new(),
                Some(Ok(seek)) => {
                    index.seek = seek;
                    learned.iter().map(|p| p.uncompressed_offset).collect()
                }
                Some(Err(e)) => {
                    tracing::warn!(layer = %descriptor.digest, error = %e,
                        "ignoring the prefetch list's seek points");
                    HashSet::new()
                }
            };
            let d = &descriptor.digest;
            let (state, source) = match local_blob(cache, descriptor) {
                Some(blob) => (State::Ready, Source::Local(Arc::new(blob))),
                None => {
                    let remote = client.blob(d, descriptor.size);
                    let chunks = ChunkedBlob::open(remote, cache, d, index.chunks.clone())
                        .map_err(|source| LayerError::Read {
                            layer: d.clone(),
                            source,
                        })?;
                    (State::Fetching, Source::Remote(Arc::new(chunks)))
                }
            };
            let files = if state == State::Ready {
                extract::extracted(cache, &index)
            } else {
                None
            };
            layers.push(Layer {
                descriptor: descriptor.clone(),
                index,
                state: RwLock::new((state, None)),
                source: RwLock::new(Some(source)),
                downloaded: AtomicU64::new(0),
                files: RwLock::new(files),
                learned,
            });
        }
        Ok(Self {
            layers,
            spans: SpanCache::new(memory_bytes),
            on_failure: std::sync::OnceLock::new(),
            recorder: prefetch::Recorder::new(),
            created: Instant::now(),
            last_remote_read: AtomicU64::new(0),
            cache_root: cache.root().to_path_buf(),
            cache_full_until: Mutex::new(None),
        })
    }

    /// Reads `len` bytes at `offset` of layer `layer`'s uncompressed tar.
    pub fn read(&self, layer: usize, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
        let l = self.layers.get(layer).ok_or_else(|| ReadError::Layer {
            layer: layer.to_string(),
            source: io::Error::other("no such layer"),
        })?;
        let failed = || {
            let state = l.state.read().unwrap_or_else(lock_err);
            (state.0 == State::Failed).then(|| ReadError::Failed {
                layer: l.descriptor.digest.to_string(),
                reason: state.1.clone().unwrap_or_default(),
            })
        };
        if let Some(e) = failed() {
            return Err(e);
        }
        let source = match l.source.read().unwrap_or_else(lock_err).as_ref() {
            Some(Source::Local(file)) => Ok(file.clone()),
            Some(Source::Remote(chunks)) => {
                self.last_remote_read
                    .store(self.millis(), Ordering::Relaxed);
                Err(chunks.clone())
            }
            None => {
                return Err(failed().unwrap_or_else(|| ReadError::Layer {
                    layer: l.descriptor.digest.to_string(),
                    source: io::Error::other("layer has no source"),
                }));
            }
        };
        let started = Instant::now();
        let read = |blob: &dyn BlobReader| self.spans.read(layer, blob, &l.index.seek, offset, len);
        let remote = source.is_err();
        let result = match source {
            Ok(file) => read(file.as_ref()),
            Err(chunks) if self.cache_full() => read(&chunks.uncached()),
            // A full cache must not fail reads: the bytes are served as
            // they come, just not kept.
            Err(chunks) => match read(chunks.as_ref()) {
                Err(e) if is_disk_full(&e) => {
                    self.note_cache_full(&e);
                    read(&chunks.uncached())
                }
                result => result,
            },
        };
        if remote {
            // A read that waited on the registry (retries, a stall) counts
            // until it ends.
            self.last_remote_read
                .store(self.millis(), Ordering::Relaxed);
            tracing::debug!(layer, offset, len, elapsed = ?started.elapsed(), "read of a remote layer");
        }
        result.map_err(|source| ReadError::Layer {
            layer: l.descriptor.digest.to_string(),
            source,
        })
    }

    fn cache_full(&self) -> bool {
        self.cache_full_until
            .lock()
            .unwrap_or_else(lock_err)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Sends cold reads around the chunk file for a while; says so once per
    /// episode.
    fn note_cache_full(&self, e: &dyn std::error::Error) {
        let mut until = self.cache_full_until.lock().unwrap_or_else(lock_err);
        if !until.is_some_and(|t| Instant::now() < t) {
            tracing::warn!(cache = %self.cache_root.display(), error = %e,
                "no space left in the cache directory; reads are served from the registry without being cached");
        }
        *until = Some(Instant::now() + UNCACHED_FOR);
    }

    pub fn status(&self) -> Vec<LayerStatus> {
        self.layers
            .iter()
            .map(|l| {
                let (state, error) = l.state.read().unwrap_or_else(lock_err).clone();
                let fetched = match l.source.read().unwrap_or_else(lock_err).as_ref() {
                    Some(Source::Remote(chunks)) => chunks.fetched(),
                    _ if state == State::Ready => l.descriptor.size,
                    _ => l.downloaded.load(Ordering::Relaxed),
                };
                LayerStatus {
                    digest: l.descriptor.digest.to_string(),
                    diff_id: l.descriptor.diff_id.to_string(),
                    state,
                    bytes_fetched: fetched.min(l.descriptor.size),
                    size: l.descriptor.size,
                    error,
                }
            })
            .collect()
    }

    /// Sets what to do when a layer fails (once; later calls are ignored).
    pub fn on_failure(&self, hook: FailureHook) {
        let _ = self.on_failure.set(hook);
    }

    /// Whether the layer is verified (and served from local bytes).
    pub fn is_ready(&self, layer: usize) -> bool {
        self.layers
            .get(layer)
            .is_some_and(|l| l.state.read().unwrap_or_else(lock_err).0 == State::Ready)
    }

    /// The extracted file holding the data at `offset` of `layer`, once
    /// there is one (reads of it may then bypass the daemon).
    pub fn local_file(&self, layer: usize, offset: u64) -> Option<PathBuf> {
        let l = self.layers.get(layer)?;
        let files = l.files.read().unwrap_or_else(lock_err);
        files.as_ref().map(|f| extract::file_at(&f.dir, offset))
    }

    fn millis(&self) -> u64 {
        self.created.elapsed().as_millis() as u64
    }

    /// Waits until reads of layers that are not local pause for [`QUIET`].
    fn wait_quiet(&self) {
        let deadline = Instant::now() + MAX_QUIET_WAIT;
        while Instant::now() < deadline {
            let since = self
                .millis()
                .saturating_sub(self.last_remote_read.load(Ordering::Relaxed));
            let Some(left) = QUIET.checked_sub(Duration::from_millis(since)) else {
                return;
            };
            std::thread::sleep(left.max(Duration::from_millis(10)));
        }
    }

    /// Fetches ahead what `trace` lists, then completes and verifies, one
    /// after the other, every layer that is not local yet; each becomes
    /// ready (served from the verified local blob) or failed (its reads give
    /// EIO from then on). Then writes out the files of every ready layer,
    /// for passthrough reads.
    pub fn materialize(
        self: &Arc<Self>,
        cache: CacheDir,
        trace: Option<Trace>,
    ) -> io::Result<std::thread::JoinHandle<()>> {
        let layers = Arc::clone(self);
        std::thread::Builder::new()
            .name("materialize".into())
            .spawn(move || {
                if let Some(trace) = trace {
                    layers.prefetch(&trace);
                }
                if layers.status().iter().any(|l| l.state != State::Ready) {
                    layers.wait_quiet();
                }
                for (i, layer) in layers.layers.iter().enumerate() {
                    let chunks = match layer.source.read().unwrap_or_else(lock_err).as_ref() {
                        Some(Source::Remote(chunks)) => chunks.clone(),
                        _ => continue,
                    };
                    let result = layers.complete(layer, &chunks, &cache);
                    layers.finish(i, layer, &chunks, result, &cache);
                }
                for layer in &layers.layers {
                    layers.extract_files(layer, &cache);
                }
            })
    }

    /// Writes out a ready layer's files, unless that was done before.
    fn extract_files(&self, layer: &Layer, cache: &CacheDir) {
        let ready = layer.state.read().unwrap_or_else(lock_err).0 == State::Ready;
        if !ready || layer.files.read().unwrap_or_else(lock_err).is_some() {
            return;
        }
        let d = &layer.descriptor.digest;
        match extract::extract(cache, &layer.index, &cache.blob_path(d)) {
            Ok(files) => {
                tracing::info!(layer = %d, "layer files extracted; reads pass through");
                *layer.files.write().unwrap_or_else(lock_err) = Some(files);
            }
            // Reads keep going through the daemon: slower, still right.
            Err(e) => tracing::warn!(layer = %d, error = %e, "cannot extract the layer's files"),
        }
    }

    /// Fetches what lazy reads left out, then verifies the whole blob. A
    /// transfer failure or a full cache is waited out (with backoff): only
    /// the layer's content can fail it.
    fn complete(
        &self,
        layer: &Layer,
        chunks: &ChunkedBlob<HttpBlob>,
        cache: &CacheDir,
    ) -> Result<(), LayerError> {
        let d = &layer.descriptor;
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let error = match chunks.fill(&|n| layer.downloaded.store(n, Ordering::Relaxed)) {
                Ok(()) => {
                    self.set_state(layer, State::Verifying, None);
                    match self.verify(layer, chunks, cache) {
                        Err(e) if is_disk_full(&e) => e,
                        result => return result,
                    }
                }
                Err(source) if is_transfer_failure(&source) => LayerError::Read {
                    layer: d.digest.clone(),
                    source,
                },
                Err(source) => {
                    return Err(LayerError::Read {
                        layer: d.digest.clone(),
                        source,
                    });
                }
            };
            if is_disk_full(&error) {
                self.note_cache_full(&error);
                let why = format!(
                    "no space left in the cache directory {}; reads are served without caching; \
                     trying again in {}s",
                    self.cache_root.display(),
                    delay.as_secs()
                );
                tracing::warn!(layer = %d.digest, error = %error, "{why}");
                self.set_state(layer, State::Fetching, Some(why));
            } else {
                tracing::warn!(layer = %d.digest, ?delay, error = %error, "layer download failed; trying again");
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// Runs the check over the complete chunk file.
    fn verify(
        &self,
        layer: &Layer,
        chunks: &ChunkedBlob<HttpBlob>,
        cache: &CacheDir,
    ) -> Result<(), LayerError> {
        let d = &layer.descriptor;
        let file = std::fs::File::open(chunks.path()).map_err(|source| LayerError::Read {
            layer: d.digest.clone(),
            source,
        })?;
        verify_layer(
            io::BufReader::with_capacity(1 << 20, file),
            d,
            &layer.index,
            cache,
            &|_| {},
        )
    }

    fn finish(
        &self,
        i: usize,
        layer: &Layer,
        chunks: &ChunkedBlob<HttpBlob>,
        result: Result<(), LayerError>,
        cache: &CacheDir,
    ) {
        let d = &layer.descriptor.digest;
        let blob_path = cache.blob_path(d);
        let adopted = result.and_then(|()| {
            let file = chunks.adopt(cache, &blob_path)?;
            FileBlob::from_file(file).map_err(|source| LayerError::Read {
                layer: d.clone(),
                source,
            })
        });
        // Spans inflated from unverified bytes are dropped either way.
        self.spans.forget_layer(i);
        match adopted {
            Ok(blob) => {
                *layer.source.write().unwrap_or_else(lock_err) =
                    Some(Source::Local(Arc::new(blob)));
                self.set_state(layer, State::Ready, None);
                tracing::info!(layer = %d, "layer verified and ready");
            }
            Err(e) => {
                tracing::error!(layer = %d, error = %e, "layer failed; its files will read as EIO");
                self.set_state(layer, State::Failed, Some(e.to_string()));
                *layer.source.write().unwrap_or_else(lock_err) = None;
                // Pages the kernel cached from this layer must go too.
                if let Some(hook) = self.on_failure.get() {
                    hook(i);
                }
                // Nothing unverified is kept.
                chunks.discard();
            }
        }
    }

    fn set_state(&self, layer: &Layer, state: State, error: Option<String>) {
        *layer.state.write().unwrap_or_else(lock_err) = (state, error);
    }
}

/// The layer's verified blob, if the cache has it, held shared for as long
/// as the mount serves it (so `cache prune` leaves it). Its presence is
/// proof enough (see [`crate::cache`]); a size other than the descriptor's
/// means it was damaged behind the cache's back, and it is fetched again.
fn local_blob(cache: &CacheDir, descriptor: &LayerDescriptor) -> Option<FileBlob> {
    let path = cache.blob_path(&descriptor.digest);
    let blob = FileBlob::from_file(hold_shared(&path).ok().flatten()?).ok()?;
    if blob.size() == descriptor.size {
        return Some(blob);
    }
    tracing::warn!(layer = %descriptor.digest, size = blob.size(), expected = descriptor.size,
        "cached blob has the wrong size; removing it and fetching the layer again");
    let _ = std::fs::remove_file(&path);
    None
}

/// A download that broke off may succeed later; a missing blob or wrong
/// content (a chunk that differs from the verified index, twice) never will. A failure is a transfer failure when a transient
/// registry error caused it, however deep it is wrapped.
fn is_transfer_failure(e: &io::Error) -> bool {
    if ChunkMismatch::find(e).is_some() {
        return false;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let mut inner = err;
        while let Some(next) = inner
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
        {
            inner = next;
        }
        if let Some(registry) = inner.downcast_ref::<RegistryError>() {
            return registry.is_transient();
        }
        cur = err.source();
    }
    // Plain I/O trouble (a reset seen by the reader) is worth another try.
    e.kind() != io::ErrorKind::NotFound
}
