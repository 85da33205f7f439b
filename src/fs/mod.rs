//! The FUSE filesystem: the merged tree, read-only, with file contents read
//! through [`ContentReader`] on worker threads so that a read waiting on the
//! network never holds up `lookup`, `stat` or `readdir`.

mod attr;
pub mod mountinfo;
mod passthrough;
mod pool;
pub mod session;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::tree::{Node, NodeKind, Tree};
use passthrough::{BackingCache, Opened};
use pool::Pool;

/// The tree never changes, so the kernel may cache entries and attributes
/// for as long as it likes.
const TTL: Duration = Duration::from_secs(24 * 3600);
/// The name of the root's extended attribute that carries the mount's
/// status (as JSON); it is not listed by `listxattr`.
pub const STATUS_XATTR: &str = "user.lazypull.status";

/// How the filesystem reads file contents: a layer number and a byte range
/// of that layer's uncompressed tar.
pub trait ContentReader: Send + Sync + 'static {
    fn read(&self, layer: usize, offset: u64, len: u64) -> std::io::Result<Vec<u8>>;
    /// Whether the layer passed its full check: only then may the kernel
    /// keep file pages across opens.
    fn verified(&self, layer: usize) -> bool;
    /// A local file holding exactly the data at `offset` of `layer`, once
    /// there is one: opens of it are then passed through to the kernel.
    fn local_file(&self, layer: usize, offset: u64) -> Option<std::path::PathBuf>;
    /// JSON answered for [`STATUS_XATTR`].
    fn status(&self) -> String;
    /// A file whose data is `len` bytes at `offset` of `layer` was opened
    /// and passed through (its reads bypass [`ContentReader::read`]).
    fn opened(&self, layer: usize, offset: u64, len: u64);
}

pub struct LazyFs {
    tree: Arc<Tree>,
    content: Arc<dyn ContentReader>,
    pool: Pool,
    /// Sum of file sizes, for statfs.
    total_bytes: u64,
    /// Whether the kernel agreed to passthrough at init.
    passthrough: bool,
    backing: BackingCache,
}

impl LazyFs {
    pub fn new(tree: Arc<Tree>, content: Arc<dyn ContentReader>, workers: usize) -> Self {
        let total_bytes = tree.walk().map(|(_, n)| n.size()).sum();
        Self {
            tree,
            content,
            pool: Pool::new(workers),
            total_bytes,
            passthrough: false,
            backing: BackingCache::default(),
        }
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.tree.get(ino.0).ok_or(Errno::ENOENT)
    }

    /// A directory's entries as readdir lists them, from position `offset`
    /// on: `.`, `..`, then the children in name order (an entry's position
    /// plus one is the offset that resumes after it). Slicing, not skipping,
    /// keeps listing a huge directory linear.
    fn dir_entries(
        &self,
        ino: INodeNo,
        offset: u64,
    ) -> Result<impl Iterator<Item = (u64, &Node, &[u8])>, Errno> {
        let node = self.node(ino)?;
        let children = node.children().ok_or(Errno::ENOTDIR)?;
        let parent = self.tree.get(node.parent).unwrap_or(node);
        let dots = [(node, &b"."[..]), (parent, &b".."[..])];
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        let rest = children.get(offset.saturating_sub(2)..).unwrap_or_default();
        let dots = dots.into_iter().enumerate().skip(offset);
        let kids = rest.iter().enumerate().filter_map(move |(i, c)| {
            Some((
                offset.max(2) + i,
                (self.tree.get(c.ino)?, c.name.as_slice()),
            ))
        });
        Ok(dots
            .chain(kids)
            .map(|(i, (node, name))| (i as u64 + 1, node, name)))
    }
}

/// Answers an xattr request: the size when asked for it, else the bytes.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

impl Filesystem for LazyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Optional speedups: a kernel without them still works.
        // The tree never changes: symlink targets may stay in the page cache.
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO
                | InitFlags::FUSE_CACHE_SYMLINKS,
        );
        let _ = config.set_max_readahead(1 << 20);
        // Depth 1 leaves room for overlayfs on top (a container's rootfs).
        self.passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        tracing::info!(passthrough = self.passthrough, "FUSE session initialised");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.tree.lookup(parent.0, name.as_bytes()) {
            Some(node) => reply.entry(&TTL, &attr::attr(node), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(node) => reply.attr(&TTL, &attr::attr(node)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).map(Node::link) {
            Ok(Some(target)) => reply.data(target),
            Ok(None) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (local, verified) = match &node.kind {
            NodeKind::File(c) => {
                let local = (self.passthrough && c.size > 0)
                    .then(|| self.content.local_file(c.layer, c.offset))
                    .flatten();
                (local, self.content.verified(c.layer))
            }
            _ => (None, true),
        };
        let replier = &reply;
        let backing = local.map(|path| {
            move || {
                let file = std::fs::File::open(&path)?;
                replier
                    .open_backing(&file)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
            }
        });
        if let Opened::Passthrough(fh, id) = self.backing.open(ino.0, backing) {
            // Its reads will not come here to say which parts were needed.
            if let NodeKind::File(c) = &node.kind {
                self.content.opened(c.layer, c.offset, c.size);
            }
            return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
        }
        let flags = if verified {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(0), flags)
    }

    /// Directories never change, and a directory needs no state per open:
    /// ENOSYS makes the kernel stop sending opendir and releasedir (two
    /// round trips per directory a `find` enters) and open every directory
    /// with FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR, so that it keeps listings in
    /// its page cache across opens and a second `find` sends no readdir.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.backing.release(ino.0, fh.into());
        reply.ok();
    }

    /// Nothing is buffered on a read-only mount; answered rather than left
    /// to fuser's default, which logs a warning at every close.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// No ioctl applies to these files: what a local file answers, say, to
    /// `isatty` (python asks it of every module it opens), without fuser's
    /// warning for each.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let content = match self.node(ino) {
            Ok(node) => match &node.kind {
                NodeKind::File(content) => *content,
                NodeKind::Dir(_) => return reply.error(Errno::EISDIR),
                _ => return reply.error(Errno::EINVAL),
            },
            Err(e) => return reply.error(e),
        };
        if offset >= content.size {
            return reply.data(&[]);
        }
        let len = u64::from(size).min(content.size - offset);
        let reader = Arc::clone(&self.content);
        self.pool.run(
            move || match reader.read(content.layer, content.offset + offset, len) {
                Ok(bytes) if bytes.len() as u64 == len => reply.data(&bytes),
                Ok(bytes) => {
                    tracing::error!(
                        ino = ino.0,
                        offset,
                        want = len,
                        got = bytes.len(),
                        "short read from layer"
                    );
                    reply.error(Errno::EIO);
                }
                Err(e) => {
                    tracing::warn!(ino = ino.0, offset, error = %e, "read failed");
                    reply.error(Errno::EIO);
                }
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.dir_entries(ino, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (next, kid, name) in entries {
            let kind = attr::file_type(&kid.kind);
            if reply.add(INodeNo(kid.ino), next, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.dir_entries(ino, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (next, kid, name) in entries {
            let full = reply.add(
                INodeNo(kid.ino),
                next,
                OsStr::from_bytes(name),
                &TTL,
                &attr::attr(kid),
                Generation(0),
            );
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.tree.len() as u64;
        reply.statfs(
            self.total_bytes.div_ceil(4096),
            0,
            0,
            files,
            0,
            4096,
            255,
            4096,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if ino == INodeNo::ROOT && name.as_bytes() == STATUS_XATTR.as_bytes() {
            return reply_xattr(reply, size, self.content.status().as_bytes());
        }
        match name.to_str().and_then(|n| node.xattrs.get(n)) {
            Some(value) => reply_xattr(reply, size, value),
            None => reply.error(Errno::NO_XATTR),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.node(ino) {
            Ok(node) => {
                let mut names = Vec::new();
                for name in node.xattrs.keys() {
                    names.extend_from_slice(name.as_bytes());
                    names.push(0);
                }
                reply_xattr(reply, size, &names);
            }
            Err(e) => reply.error(e),
        }
    }
}

/// Detaches the filesystem at `mountpoint`, also when its daemon has died
/// (the kernel then answers ENOTCONN for everything below it).
pub fn unmount(mountpoint: &std::path::Path) -> std::io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let status = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(mountpoint)
            .status()?;
        return if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "fusermount3 -u failed ({status})"
            )))
        };
    }
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` is a valid NUL-terminated string for the call's duration.
    if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EBUSY) {
        return Err(std::io::Error::other(
            "the mount is busy (a process has files open or its working directory in it)",
        ));
    }
    Err(err)
}
