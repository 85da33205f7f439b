//! A small tmpfs mounted on a directory (a cache that runs out of space), unmounted
//! when the guard drops, also when the test panics.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::mount::is_mounted;

pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes on the existing directory `path`.
    pub fn mount(path: &Path, size: u64) -> Tmpfs {
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "lazypull-test",
            ])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs on {path:?} failed");
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Changes the size (`mount -o remount`), e.g. to make room again.
    pub fn resize(&self, size: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "resizing the tmpfs on {:?} failed",
            self.path
        );
    }

    /// Bytes still free.
    pub fn free(&self) -> u64 {
        let path = std::ffi::CString::new(self.path.to_str().unwrap()).unwrap();
        // SAFETY: an all-zero statvfs is a valid value for the call to overwrite.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is NUL-terminated and `st` is a valid, writable statvfs.
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
        st.f_bavail * st.f_frsize
    }

    /// Writes a file `name` that takes all but `leave` bytes of the free space.
    pub fn fill(&self, name: &str, leave: u64) -> PathBuf {
        let file = self.path.join(name);
        let take = self.free().saturating_sub(leave);
        fs::write(&file, vec![0x5a; take as usize]).unwrap();
        file
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if !is_mounted(&self.path) {
            return;
        }
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // A daemon that still holds its log open: detach anyway.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
