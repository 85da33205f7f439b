//! Layers: their tar entries, seek points into their compressed bytes, and
//! the persisted index that holds both, built on one verified pass.

pub mod index;
mod pass;
pub mod seek;
pub mod tar;

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cache::{CacheDir, CacheError};
use crate::digest::Digest;
use crate::registry::{LayerDescriptor, RegistryClient, RegistryError};
use index::{IndexFileError, LayerIndex};
use pass::{Expected, index_stream};
use seek::{Compression, SeekError};
use tar::TarError;

/// Layers indexed at once: enough to overlap network and inflate on two
/// cores without one image hogging the registry.
const PARALLEL_LAYERS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {layer}: {source}")]
    Tar { layer: Digest, source: TarError },
    #[error("layer {layer}: {source}")]
    Seek { layer: Digest, source: SeekError },
    #[error("layer {layer}: reading it failed: {source}")]
    Read {
        layer: Digest,
        source: std::io::Error,
    },
    #[error(
        "layer {layer}: digest mismatch: its {size} bytes hash to {actual}, the blob is corrupt \
         (nothing of it was kept)"
    )]
    DigestMismatch {
        layer: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("layer {layer}: {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        layer: Digest,
        expected: u64,
        actual: u64,
    },
    #[error(
        "layer {layer}: uncompressed content has digest {actual}, the image config's diff_id is \
         {expected} (nothing of it was kept)"
    )]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {layer}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { layer: Digest, media_type: String },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Index(#[from] IndexFileError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Where a layer's index came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The persisted index: no layer bytes read.
    Cached,
    /// Rebuilt from the layer blob already in the cache.
    LocalBlob,
    /// Downloaded (and kept) on this pass.
    Registry,
}

/// The index of `layer`: from the cache, else from a pass over the local
/// blob, else from a pass over the registry's blob (which is also its one
/// download).
pub fn ensure_index(
    client: &RegistryClient,
    cache: &CacheDir,
    layer: &LayerDescriptor,
    span: u64,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(LayerIndex, Origin), LayerError> {
    let cached = |first_look: bool| -> Result<Option<LayerIndex>, LayerError> {
        match LayerIndex::load(cache, &layer.digest)? {
            Some(index) if index.diff_id == layer.diff_id => Ok(Some(index)),
            Some(_) if first_look => {
                tracing::warn!(layer = %layer.digest, "cached index has another diff_id; rebuilding it");
                Ok(None)
            }
            _ => Ok(None),
        }
    };
    if let Some(index) = cached(true)? {
        return Ok((index, Origin::Cached));
    }
    // One pass per layer in a cache at a time: a second process (a second
    // first mount of the image) waits, then takes the index the first one
    // stored, or does the pass itself if the first one failed or died.
    let _pass = cache.lock_pass(&layer.digest, || {
        tracing::warn!(layer = %layer.digest,
            "another lazypull process is downloading and verifying this layer; waiting for it");
    })?;
    // It may also have finished between the look above and the lock.
    if let Some(index) = cached(false)? {
        tracing::info!(layer = %layer.digest, "using the index another process stored");
        return Ok((index, Origin::Cached));
    }
    let compression = Compression::from_media_type(&layer.media_type).ok_or_else(|| {
        LayerError::UnsupportedMediaType {
            layer: layer.digest.clone(),
            media_type: layer.media_type.clone(),
        }
    })?;
    let expected = Expected {
        digest: &layer.digest,
        diff_id: &layer.diff_id,
        size: layer.size,
        compression,
    };
    let blob_path = cache.blob_path(&layer.digest);
    if let Ok(file) = File::open(&blob_path) {
        match index_stream(file, &expected, cache, span, false, progress) {
            Ok(index) => return Ok((index, Origin::LocalBlob)),
            // The cache's copy went bad on disk: drop it and fetch the layer again.
            Err(LayerError::DigestMismatch { actual, .. }) => {
                tracing::warn!(layer = %layer.digest, %actual,
                    "cached blob is corrupt; removing it and downloading the layer again");
                std::fs::remove_file(&blob_path).map_err(|source| CacheError::Io {
                    path: blob_path.clone(),
                    source,
                })?;
            }
            Err(e) => return Err(e),
        }
    }
    let stream = client.open_blob(&layer.digest, layer.size)?;
    let index = index_stream(stream, &expected, cache, span, true, progress)?;
    Ok((index, Origin::Registry))
}

/// Verifies a layer whose index is already known (the lazy path's
/// background fetch) with the same pass; keeps nothing but the index.
pub fn verify_layer(
    source: impl std::io::Read,
    layer: &LayerDescriptor,
    index: &LayerIndex,
    cache: &CacheDir,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), LayerError> {
    let expected = Expected {
        digest: &layer.digest,
        diff_id: &layer.diff_id,
        size: layer.size,
        compression: index.seek.compression,
    };
    index_stream(source, &expected, cache, index.seek.span, false, progress).map(|_| ())
}

/// The indexes of every layer of an image, bottom first, built in parallel
/// where needed. `progress(layer, bytes)` reports bytes read per layer.
pub fn ensure_indexes(
    client: &RegistryClient,
    cache: &CacheDir,
    layers: &[LayerDescriptor],
    span: u64,
    progress: &(dyn Fn(usize, u64) + Sync),
) -> Result<Vec<(LayerIndex, Origin)>, LayerError> {
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<Result<(LayerIndex, Origin), LayerError>>> =
        (0..layers.len()).map(|_| None).collect();
    let done = std::sync::Mutex::new(&mut results);
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_LAYERS.min(layers.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(layer) = layers.get(i) else { break };
                    let result = ensure_index(client, cache, layer, span, &|n| progress(i, n));
                    let failed = result.is_err();
                    done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(result);
                    if failed {
                        // Stop handing out work; layers under way finish.
                        next.store(layers.len(), Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let mut out = Vec::with_capacity(layers.len());
    for result in results {
        match result {
            Some(r) => out.push(r?),
            None => continue,
        }
    }
    Ok(out)
}
