//! A bundle's directories and its writable rootfs: an overlay whose lower
//! layer is the read-only lazypull mount.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::RuntimeError;

/// Where everything of one bundle lives, under one directory.
#[derive(Clone, Debug)]
pub struct BundleLayout {
    pub dir: PathBuf,
}

impl BundleLayout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The lazypull mount of the image (the overlay's lower layer).
    pub fn image(&self) -> PathBuf {
        self.dir.join("image")
    }

    /// The container's changes.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// Overlayfs's scratch directory (same filesystem as `upper`).
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// The overlay: what the container sees as `/`.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
}

fn c_path(path: &Path) -> Result<CString, RuntimeError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| RuntimeError::BadPath {
        path: path.to_path_buf(),
        reason: "it contains a NUL byte",
    })
}

/// Overlayfs splits its options on `,` and its lower directories on `:`,
/// and treats `\` as an escape: refuse those rather than mount the wrong
/// directories.
fn overlay_option_path(path: &Path) -> Result<String, RuntimeError> {
    let bad = |reason| RuntimeError::BadPath {
        path: path.to_path_buf(),
        reason,
    };
    let text = path.to_str().ok_or_else(|| bad("it is not UTF-8"))?;
    if text.contains([',', ':', '\\']) {
        return Err(bad("overlayfs options cannot hold ',', ':' or '\\'"));
    }
    Ok(text.to_string())
}

/// Mounts the overlay `lower` + `upper` (+ `work`) on `target`.
pub fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RuntimeError> {
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        overlay_option_path(lower)?,
        overlay_option_path(upper)?,
        overlay_option_path(work)?
    );
    let options = CString::new(options).map_err(|_| RuntimeError::BadPath {
        path: lower.to_path_buf(),
        reason: "it contains a NUL byte",
    })?;
    let c_target = c_path(target)?;
    // SAFETY: every pointer is a valid NUL-terminated string for the call.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            c_target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(RuntimeError::Mount {
            target: target.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Unmounts whatever is mounted on `target`.
pub fn unmount(target: &Path) -> Result<(), RuntimeError> {
    let c_target = c_path(target)?;
    // SAFETY: `c_target` is a valid NUL-terminated string for the call.
    if unsafe { libc::umount2(c_target.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let source = std::io::Error::last_os_error();
    Err(RuntimeError::Unmount {
        target: target.to_path_buf(),
        busy: source.raw_os_error() == Some(libc::EBUSY),
        source,
    })
}

/// Whether something is mounted on `path`: it sits on another device than
/// its parent. A FUSE mount whose daemon died cannot be stat'ed and counts
/// as mounted (it still has to be unmounted).
pub fn is_mount_point(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (std::fs::symlink_metadata(path), std::fs::metadata(parent)) {
        (Ok(m), Ok(p)) => m.dev() != p.dev(),
        (Err(e), _) => e.raw_os_error() == Some(libc::ENOTCONN),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_refuses_paths_it_would_misread() {
        for bad in ["/tmp/a,b", "/tmp/a:b", "/tmp/a\\b"] {
            let e = mount_overlay(
                Path::new(bad),
                Path::new("/u"),
                Path::new("/w"),
                Path::new("/t"),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(bad) && e.contains("overlayfs"), "{e}");
        }
    }

    #[test]
    fn mount_points_are_told_from_plain_directories() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(!is_mount_point(&sub));
        assert!(is_mount_point(Path::new("/proc")));
    }
}
