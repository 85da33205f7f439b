//! A ready layer's regular files written out one by one, so that reads of
//! them can go straight to the kernel (FUSE passthrough) instead of through
//! the daemon and the inflater.
//!
//! The files are written sparse: a block of zeros becomes a hole, so a layer
//! that inflates to gigabytes of zeros (a gzip bomb, or a preallocated image
//! file) takes no more disk than what its files really hold.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::cache::{CacheDir, Hold, flock, hold_shared, private_file};
use crate::layer::LayerError;
use crate::layer::index::LayerIndex;
use crate::layer::seek::SeekingDecoder;
use crate::layer::tar::EntryKind;

/// Zeros are left as a hole in pieces of this size (at offsets that are
/// multiples of it): a filesystem block.
const HOLE_GRAIN: usize = 4096;
/// Bytes of a file copied at once.
const COPY_BUFFER: usize = 1 << 20;

/// A layer's extracted files, and the shared lock that tells `cache prune`
/// a mount uses them.
pub struct Extracted {
    pub dir: PathBuf,
    _lock: File,
}

/// The extracted files of `index`'s layer, if a previous run completed them.
pub fn extracted(cache: &CacheDir, index: &LayerIndex) -> Option<Extracted> {
    let dir = cache.files_dir(&index.digest);
    let lock = hold_shared(&dir).ok().flatten()?;
    Some(Extracted { dir, _lock: lock })
}

/// The file holding the data at `offset` of an extracted layer.
pub fn file_at(dir: &Path, offset: u64) -> PathBuf {
    dir.join(offset.to_string())
}

/// Writes every regular file of the layer from its verified blob into a
/// temporary directory, then renames the directory into place: a directory
/// under its final name is always complete.
pub fn extract(cache: &CacheDir, index: &LayerIndex, blob: &Path) -> Result<Extracted, LayerError> {
    let layer = &index.digest;
    let read_err = |source: io::Error| LayerError::Read {
        layer: layer.clone(),
        source,
    };
    // The lock keeps a cleaner away until the directory is in place.
    let (tmp, lock) = cache.temp_dir()?;
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
    let mut buf = vec![0u8; COPY_BUFFER];
    for (offset, size) in files {
        io::copy(&mut (&mut tar).take(offset - pos), &mut io::sink()).map_err(read_err)?;
        let path = file_at(tmp.path(), offset);
        let out = private_file()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(read_err)?;
        let copied = copy_sparse(&mut (&mut tar).take(size), &out, &mut buf).map_err(read_err)?;
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
    // The writer's lock becomes the mount's (it is on the directory, which
    // the rename moved).
    flock(&lock, Hold::Shared, true).map_err(read_err)?;
    Ok(Extracted {
        dir: dest,
        _lock: lock,
    })
}

/// Copies `src` to the start of `out` (an empty file), leaving a hole where
/// an aligned block holds only zeros; returns the bytes copied.
fn copy_sparse(src: &mut impl Read, out: &File, buf: &mut [u8]) -> io::Result<u64> {
    let mut at = 0u64;
    loop {
        let n = read_full(src, buf)?;
        if n == 0 {
            break;
        }
        // Runs of blocks that are not all zeros, written at once.
        let mut run: Option<usize> = None;
        for start in (0..n).step_by(HOLE_GRAIN) {
            let block = &buf[start..(start + HOLE_GRAIN).min(n)];
            match (is_zeros(block), run) {
                (false, None) => run = Some(start),
                (true, Some(from)) => {
                    out.write_all_at(&buf[from..start], at + from as u64)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(from) = run {
            out.write_all_at(&buf[from..n], at + from as u64)?;
        }
        at += n as u64;
    }
    // A file that ends in zeros ends in a hole: the length sets it.
    out.set_len(at)?;
    Ok(at)
}

/// Fills `buf` unless `src` ends first; the bytes read. Full buffers keep
/// the blocks aligned to the file's offsets.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn is_zeros(block: &[u8]) -> bool {
    // No early exit: the compiler vectorises the fold.
    block.iter().fold(0u8, |acc, b| acc | b) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zeros_become_holes_and_the_bytes_stay_right() {
        let mut data = vec![0u8; 40 << 20];
        // Data at an unaligned offset across a block boundary, and in the
        // last partial block; the file ends in zeros.
        data[(7 << 20) + 4090..(7 << 20) + 4110].fill(0xab);
        data[(30 << 20) + 1] = 1;
        data.truncate(data.len() - 123);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let out = File::create(&path).unwrap();
        let mut buf = vec![0u8; COPY_BUFFER];
        // Small reads: the copy must not depend on how the source cuts its bytes.
        let mut src = io::BufReader::with_capacity(1000, &data[..]);
        assert_eq!(
            copy_sparse(&mut src, &out, &mut buf).unwrap(),
            data.len() as u64
        );
        out.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated <= 64 << 10, "{allocated} bytes allocated");

        let ones = vec![1u8; 3 * HOLE_GRAIN + 5];
        let path = dir.path().join("g");
        let out = File::create(&path).unwrap();
        copy_sparse(&mut &ones[..], &out, &mut buf).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), ones);
    }
}
