//! Mounting a FUSE filesystem on a descriptor of our own, and taking down
//! only that mount.
//!
//! fuser's own mount unmounts by path when its session ends. A mount point
//! may carry a newer mount by then (a mount namespace kept the old mount
//! alive after `umount`, or the daemon took a while to exit), and that newer
//! mount would go. So the daemon opens `/dev/fuse` and mounts with it itself
//! (mount(2) as root, `fusermount3` otherwise), never unmounts when its
//! session ends (the kernel ended it), and on a signal unmounts the path
//! only while the path still shows its own device.

use std::io::{IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::MsFlags;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use super::mountinfo::{MountEntry, canonical, top_mount};

pub const FUSE_DEVICE: &str = "/dev/fuse";
/// The type our mounts have (`fuse` with the subtype `lazypull`).
pub const FSTYPE: &str = "fuse.lazypull";

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(
        "there is no FUSE device {FUSE_DEVICE}: load the kernel module (`modprobe fuse`); in a \
         container, give it the device (`--device /dev/fuse`)"
    )]
    NoDevice,
    #[error(
        "cannot open the FUSE device {FUSE_DEVICE}: {detail}; mount as root, or let this user \
         read and write {FUSE_DEVICE}"
    )]
    DeviceDenied { detail: String },
    #[error("{FUSE_DEVICE} is not the FUSE device (it is not the character device 10:229)")]
    NotFuseDevice,
    #[error("{} is already a lazypull mount (of {image}): run `lazypull umount {}` first", .mountpoint.display(), .mountpoint.display())]
    AlreadyMounted { mountpoint: PathBuf, image: String },
    #[error("{what} needs root (fusermount3 mounts for other users only with nosuid and nodev)")]
    NeedsRoot { what: &'static str },
    #[error("mounting on {}: {source}", .mountpoint.display())]
    Mount {
        mountpoint: PathBuf,
        source: std::io::Error,
    },
    #[error("fusermount3 could not mount on {}: {detail}", .mountpoint.display())]
    Fusermount { mountpoint: PathBuf, detail: String },
    #[error("unmounting {}: {source}", .mountpoint.display())]
    Unmount {
        mountpoint: PathBuf,
        source: std::io::Error,
    },
}

/// How to mount.
pub struct MountSpec<'a> {
    /// What mountinfo shows as the source: the image reference.
    pub source: &'a str,
    pub allow_other: bool,
    /// Honour setuid and setgid bits.
    pub suid: bool,
    /// Honour device files.
    pub dev: bool,
}

/// The mount a session made: where, and the device that tells it from any
/// other mount on the same path.
#[derive(Clone, Debug)]
pub struct OwnMount {
    mountpoint: PathBuf,
    device: (u32, u32),
}

impl OwnMount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts this mount if its mount point still shows it; returns
    /// whether it did. A mount point that shows another mount, or none, is
    /// left alone (this mount is gone from here, or was covered).
    pub fn unmount(&self) -> Result<bool, MountError> {
        let unmount_error = |source| MountError::Unmount {
            mountpoint: self.mountpoint.clone(),
            source,
        };
        let top = top_mount(&self.mountpoint).map_err(unmount_error)?;
        if top.is_none_or(|t| t.device != self.device) {
            return Ok(false);
        }
        super::unmount(&self.mountpoint).map_err(unmount_error)?;
        Ok(true)
    }
}

/// The lazypull mount `mountpoint` shows, if it shows one (also one whose
/// daemon died).
pub fn lazypull_mount_at(mountpoint: &Path) -> std::io::Result<Option<MountEntry>> {
    let path = canonical(mountpoint)?;
    Ok(top_mount(&path)?.filter(|m| m.fstype == FSTYPE))
}

/// Refuses a mount point that already shows a lazypull mount: a second one
/// would silently cover the first.
pub fn refuse_stacking(mountpoint: &Path) -> Result<(), MountError> {
    let mount_error = |source| MountError::Mount {
        mountpoint: mountpoint.to_path_buf(),
        source,
    };
    match lazypull_mount_at(mountpoint).map_err(mount_error)? {
        Some(existing) => Err(MountError::AlreadyMounted {
            mountpoint: mountpoint.to_path_buf(),
            image: existing.source,
        }),
        None => Ok(()),
    }
}

/// Mounts a FUSE filesystem on `mountpoint`; returns the session's
/// `/dev/fuse` descriptor (for `fuser::Session::from_fd`) and the mount.
pub fn mount(mountpoint: &Path, spec: &MountSpec) -> Result<(OwnedFd, OwnMount), MountError> {
    let mount_error = |source| MountError::Mount {
        mountpoint: mountpoint.to_path_buf(),
        source,
    };
    let path = mountpoint.canonicalize().map_err(mount_error)?;
    refuse_stacking(&path)?;
    let fd = if nix::unistd::geteuid().is_root() {
        mount_as_root(&path, spec)?
    } else {
        mount_with_fusermount(&path, spec)?
    };
    // Nothing can have covered it yet: the top mount is the one just made.
    let device = match top_mount(&path).map_err(mount_error)? {
        Some(top) if top.fstype == FSTYPE => top.device,
        _ => {
            return Err(mount_error(std::io::Error::other(
                "the new mount is missing from /proc/self/mountinfo",
            )));
        }
    };
    tracing::debug!(mountpoint = %path.display(), ?device, "mounted");
    Ok((
        fd,
        OwnMount {
            mountpoint: path,
            device,
        },
    ))
}

/// Opens `/dev/fuse`, saying which of the usual reasons keeps it from us.
fn open_device() -> Result<OwnedFd, MountError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(FUSE_DEVICE)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => MountError::NoDevice,
            _ => MountError::DeviceDenied {
                detail: e.to_string(),
            },
        })?;
    let meta = file.metadata().map_err(|e| MountError::DeviceDenied {
        detail: e.to_string(),
    })?;
    let fuse = libc::makedev(10, 229);
    if !meta.file_type().is_char_device() || meta.rdev() != fuse {
        return Err(MountError::NotFuseDevice);
    }
    Ok(file.into())
}

fn mount_as_root(path: &Path, spec: &MountSpec) -> Result<OwnedFd, MountError> {
    let fd = open_device()?;
    let mut data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions",
        fd.as_raw_fd()
    );
    if spec.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = MsFlags::MS_RDONLY;
    if !spec.suid {
        flags |= MsFlags::MS_NOSUID;
    }
    if !spec.dev {
        flags |= MsFlags::MS_NODEV;
    }
    nix::mount::mount(
        Some(spec.source),
        path,
        Some(FSTYPE),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| MountError::Mount {
        mountpoint: path.to_path_buf(),
        source: e.into(),
    })?;
    Ok(fd)
}

/// fusermount3 (setuid root) opens `/dev/fuse` as the user, mounts, and
/// hands the descriptor back over a socket (`_FUSE_COMMFD`).
fn mount_with_fusermount(path: &Path, spec: &MountSpec) -> Result<OwnedFd, MountError> {
    if spec.suid || spec.dev {
        return Err(MountError::NeedsRoot {
            what: if spec.suid { "--suid" } else { "--dev" },
        });
    }
    if !Path::new(FUSE_DEVICE).exists() {
        return Err(MountError::NoDevice);
    }
    let failed = |detail: String| MountError::Fusermount {
        mountpoint: path.to_path_buf(),
        detail,
    };
    let mut options = format!(
        "ro,nosuid,nodev,default_permissions,fsname={},subtype=lazypull",
        spec.source
    );
    if spec.allow_other {
        options.push_str(",allow_other");
    }
    let (ours, theirs) = UnixStream::pair().map_err(|e| failed(e.to_string()))?;
    let their_fd = theirs.as_raw_fd();
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-o")
        .arg(&options)
        .arg("--")
        .arg(path)
        .env("_FUSE_COMMFD", their_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only fcntl, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The socket must survive exec (std made it CLOEXEC).
            if libc::fcntl(their_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        failed(if e.kind() == std::io::ErrorKind::NotFound {
            "fusermount3 is not installed (package fuse3): install it, or mount as root".into()
        } else {
            format!("starting fusermount3: {e}")
        })
    })?;
    drop(theirs);
    let fd = receive_fd(&ours);
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let status = child.wait().map_err(|e| failed(e.to_string()))?;
    match fd {
        Some(fd) if status.success() => Ok(fd),
        _ => Err(fusermount_error(path, stderr.trim())),
    }
}

/// fusermount3 opens the device as the calling user: its reasons for not
/// opening it are ours to explain.
fn fusermount_error(path: &Path, stderr: &str) -> MountError {
    if stderr.contains("not found") && stderr.contains(FUSE_DEVICE) {
        MountError::NoDevice
    } else if let Some(detail) = stderr
        .split_once(&format!("failed to open {FUSE_DEVICE}: "))
        .map(|(_, why)| why.lines().next().unwrap_or(why).to_string())
    {
        MountError::DeviceDenied { detail }
    } else {
        MountError::Fusermount {
            mountpoint: path.to_path_buf(),
            detail: if stderr.is_empty() {
                "it failed without saying why".into()
            } else {
                stderr.to_string()
            },
        }
    }
}

/// The descriptor sent with SCM_RIGHTS on `socket`, if one comes.
fn receive_fd(socket: &UnixStream) -> Option<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.ok()?,
        }
    };
    let mut fds = msg.cmsgs().ok()?.filter_map(|c| match c {
        ControlMessageOwned::ScmRights(fds) => Some(fds),
        _ => None,
    });
    let mut fds = fds.next()?.into_iter();
    // SAFETY: the kernel just gave us these descriptors; nothing else owns them.
    let fd = fds.next().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    for extra in fds {
        // SAFETY: as above; extra descriptors are closed.
        drop(unsafe { OwnedFd::from_raw_fd(extra) });
    }
    fd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusermount_failures_are_explained() {
        let p = Path::new("/mnt");
        assert!(matches!(
            fusermount_error(
                p,
                "fusermount3: fuse device /dev/fuse not found. Kernel module not loaded?"
            ),
            MountError::NoDevice
        ));
        let e = fusermount_error(
            p,
            "fusermount3: failed to open /dev/fuse: Permission denied",
        );
        assert!(
            e.to_string()
                .starts_with("cannot open the FUSE device /dev/fuse: Permission denied;"),
            "{e}"
        );
        let e = fusermount_error(p, "fusermount3: bad mount point /mnt: No such file");
        assert!(e.to_string().contains("bad mount point /mnt"), "{e}");
    }
}
