//! The layers of a mount: where each one's bytes come from right now
//! (the registry, lazily, or the verified local blob), and the background
//! work that downloads and verifies every layer before it is marked ready.

mod spans;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;

use crate::blob::{BlobReader, FileBlob};
use crate::cache::CacheDir;
use crate::layer::index::LayerIndex;
use crate::layer::{LayerError, download_layer};
use crate::registry::{HttpBlob, LayerDescriptor, RegistryClient};
use spans::SpanCache;

/// Waits between download attempts of a layer whose transfer failed (not
/// its content): a registry that is down for a while is waited out, never
/// turned into a failed layer.
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(2);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

struct Layer {
    descriptor: LayerDescriptor,
    index: LayerIndex,
    state: RwLock<(State, Option<String>)>,
    local: RwLock<Option<Arc<FileBlob>>>,
    remote: HttpBlob,
    fetched: AtomicU64,
}

/// Per-layer status, as `lazypull status` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct LayerStatus {
    pub digest: String,
    pub diff_id: String,
    pub state: State,
    pub bytes_fetched: u64,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counts the compressed bytes fetched through a blob reader.
struct Counting<'a> {
    inner: &'a dyn BlobReader,
    count: &'a AtomicU64,
}

impl BlobReader for Counting<'_> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let bytes = self.inner.read_at(offset, len)?;
        self.count.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }
}

pub struct Layers {
    layers: Vec<Layer>,
    spans: SpanCache,
}

impl Layers {
    /// The layers of an image whose indexes are known. A layer whose blob
    /// is in the cache is ready at once (it was verified when stored).
    pub fn new(
        client: &RegistryClient,
        cache: &CacheDir,
        descriptors: &[LayerDescriptor],
        indexes: Vec<LayerIndex>,
        memory_bytes: u64,
    ) -> Self {
        let layers = descriptors
            .iter()
            .zip(indexes)
            .map(|(descriptor, index)| {
                let local = FileBlob::open(&cache.blob_path(&descriptor.digest)).ok().map(Arc::new);
                let state = if local.is_some() {
                    State::Ready
                } else {
                    State::Fetching
                };
                let fetched = if local.is_some() { descriptor.size } else { 0 };
                Layer {
                    remote: client.blob(&descriptor.digest, descriptor.size),
                    descriptor: descriptor.clone(),
                    index,
                    state: RwLock::new((state, None)),
                    local: RwLock::new(local),
                    fetched: AtomicU64::new(fetched),
                }
            })
            .collect();
        Self {
            layers,
            spans: SpanCache::new(memory_bytes),
        }
    }

    /// Reads `len` bytes at `offset` of layer `layer`'s uncompressed tar.
    pub fn read(&self, layer: usize, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
        let l = self.layers.get(layer).ok_or_else(|| ReadError::Layer {
            layer: layer.to_string(),
            source: io::Error::other("no such layer"),
        })?;
        {
            let state = l.state.read().unwrap_or_else(|e| e.into_inner());
            if state.0 == State::Failed {
                return Err(ReadError::Failed {
                    layer: l.descriptor.digest.to_string(),
                    reason: state.1.clone().unwrap_or_default(),
                });
            }
        }
        let local = l.local.read().unwrap_or_else(|e| e.into_inner()).clone();
        let counting;
        let blob: &dyn BlobReader = match &local {
            Some(file) => file.as_ref(),
            None => {
                counting = Counting {
                    inner: &l.remote,
                    count: &l.fetched,
                };
                &counting
            }
        };
        self.spans
            .read(layer, blob, &l.index.seek, offset, len)
            .map_err(|source| ReadError::Layer {
                layer: l.descriptor.digest.to_string(),
                source,
            })
    }

    pub fn status(&self) -> Vec<LayerStatus> {
        self.layers
            .iter()
            .map(|l| {
                let state = l.state.read().unwrap_or_else(|e| e.into_inner()).clone();
                LayerStatus {
                    digest: l.descriptor.digest.to_string(),
                    diff_id: l.descriptor.diff_id.to_string(),
                    state: state.0,
                    bytes_fetched: l.fetched.load(Ordering::Relaxed).min(l.descriptor.size),
                    size: l.descriptor.size,
                    error: state.1,
                }
            })
            .collect()
    }

    /// Downloads and verifies, one after the other, every layer that is not
    /// local yet; each becomes ready (served from the verified local blob)
    /// or failed (its reads give EIO from then on).
    pub fn materialize(self: &Arc<Self>, client: RegistryClient, cache: CacheDir) -> std::thread::JoinHandle<()> {
        let layers = Arc::clone(self);
        std::thread::Builder::new()
            .name("materialize".into())
            .spawn(move || {
                for (i, layer) in layers.layers.iter().enumerate() {
                    if layer.state.read().unwrap_or_else(|e| e.into_inner()).0 != State::Fetching {
                        continue;
                    }
                    let result = layers.fetch(layer, &client, &cache);
                    layers.finish(i, layer, result, &cache);
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the materializer thread: {e}"))
    }

    fn fetch(&self, layer: &Layer, client: &RegistryClient, cache: &CacheDir) -> Result<(), LayerError> {
        let d = &layer.descriptor;
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let progress = |n: u64| {
                layer.fetched.fetch_max(n, Ordering::Relaxed);
                if n >= d.size {
                    self.set_state(layer, State::Verifying, None);
                }
            };
            let result = client
                .open_blob(&d.digest, d.size)
                .map_err(LayerError::from)
                .and_then(|stream| download_layer(stream, d, &layer.index, cache, &progress));
            match result {
                Err(e) if is_transfer_failure(&e) => {
                    tracing::warn!(layer = %d.digest, ?delay, error = %e, "layer download failed; trying again");
                    self.set_state(layer, State::Fetching, None);
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                other => return other,
            }
        }
    }

    fn finish(&self, i: usize, layer: &Layer, result: Result<(), LayerError>, cache: &CacheDir) {
        let d = &layer.descriptor;
        let opened = result.and_then(|()| {
            FileBlob::open(&cache.blob_path(&d.digest)).map_err(|source| LayerError::Read {
                layer: d.digest.clone(),
                source,
            })
        });
        match opened {
            Ok(blob) => {
                *layer.local.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(blob));
                // Spans inflated from unverified bytes are dropped; from now
                // on reads come from the verified blob.
                self.spans.forget_layer(i);
                self.set_state(layer, State::Ready, None);
                tracing::info!(layer = %d.digest, "layer verified and ready");
            }
            Err(e) => {
                tracing::error!(layer = %d.digest, error = %e, "layer failed; its files will read as EIO");
                self.spans.forget_layer(i);
                self.set_state(layer, State::Failed, Some(e.to_string()));
            }
        }
    }

    fn set_state(&self, layer: &Layer, state: State, error: Option<String>) {
        *layer.state.write().unwrap_or_else(|e| e.into_inner()) = (state, error);
    }
}

/// A download that broke off may succeed later; wrong content never will.
/// A failure is a transfer failure when a registry error caused it, however
/// deep (the stream's error surfaces through the inflater or the tar reader).
fn is_transfer_failure(e: &LayerError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let mut inner = err;
        while let Some(next) = inner.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            inner = next;
        }
        if let Some(registry) = inner.downcast_ref::<crate::registry::RegistryError>() {
            return registry.is_transient();
        }
        cur = err.source();
    }
    false
}
