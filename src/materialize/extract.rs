//! A ready layer's regular files written out one by one, so that reads of
//! them can go straight to the kernel (FUSE passthrough) instead of through
//! the daemon and the inflater.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::cache::CacheDir;
use crate::layer::LayerError;
use crate::layer::index::LayerIndex;
use crate::layer::seek::SeekingDecoder;
use crate::layer::tar::EntryKind;

/// The extracted files of `index`'s layer, if a previous run completed them.
pub fn extracted(cache: &CacheDir, index: &LayerIndex) -> Option<PathBuf> {
    let dir = cache.files_dir(&index.digest);
    dir.is_dir().then_some(dir)
}

/// The file holding the data at `offset` of an extracted layer.
pub fn file_at(dir: &Path, offset: u64) -> PathBuf {
    dir.join(offset.to_string())
}

/// Writes every regular file of the layer from its verified blob into a
/// temporary directory, then renames the directory into place: a directory
/// under its final name is always complete.
pub fn extract(cache: &CacheDir, index: &LayerIndex, blob: &Path) -> Result<PathBuf, LayerError> {
    let layer = &index.digest;
    let read_err = |source: io::Error| LayerError::Read {
        layer: layer.clone(),
        source,
    };
    // The lock keeps a cleaner away until the directory is in place.
    let (tmp, _lock) = cache.temp_dir()?;
    let mut files: Vec<(u64, u64)> = index
        .entries
        .iter()
        .filter_map(|e| match e.kind {
            EntryKind::File { offset, size } if size > 0 => Some((offset, size)),
            _ => None,
        })
        .collect();
    files.sort_unstable();
    files.dedup_by_key(|f| f.0);
    let source = BufReader::with_capacity(1 << 20, File::open(blob).map_err(read_err)?);
    let mut tar =
        SeekingDecoder::new(source, index.seek.compression, u64::MAX).map_err(|source| {
            LayerError::Seek {
                layer: layer.clone(),
                source,
            }
        })?;
    let mut pos = 0;
    for (offset, size) in files {
        io::copy(&mut (&mut tar).take(offset - pos), &mut io::sink()).map_err(read_err)?;
        let path = file_at(tmp.path(), offset);
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&path).map_err(read_err)?);
        let copied = io::copy(&mut (&mut tar).take(size), &mut out).map_err(read_err)?;
        out.flush().map_err(read_err)?;
        if copied != size {
            return Err(read_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("layer ended inside the file at offset {offset}"),
            )));
        }
        pos = offset + size;
    }
    // One syncfs makes every file durable before the rename publishes them.
    let dir = File::open(tmp.path()).map_err(read_err)?;
    // SAFETY: `dir` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(read_err(io::Error::last_os_error()));
    }
    let dest = cache.files_dir(layer);
    let tmp_path = tmp.keep();
    cache.adopt(&tmp_path, &dest).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp_path);
    })?;
    Ok(dest)
}
