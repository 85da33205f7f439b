//! Tree nodes as the kernel sees them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::tree::{Node, NodeKind};

pub fn file_type(kind: &NodeKind) -> FileType {
    match kind {
        NodeKind::File(_) => FileType::RegularFile,
        NodeKind::Dir(_) => FileType::Directory,
        NodeKind::Symlink(_) => FileType::Symlink,
        NodeKind::Char { .. } => FileType::CharDevice,
        NodeKind::Block { .. } => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
    }
}

/// Linux's `new_encode_dev`.
fn encode_dev(major: u32, minor: u32) -> u32 {
    ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & !0xff) << 12)
}

fn time(sec: i64, nsec: u32) -> SystemTime {
    let nanos = Duration::new(sec.unsigned_abs(), nsec.min(999_999_999));
    if sec >= 0 {
        UNIX_EPOCH + nanos
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(sec.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nsec))))
            .unwrap_or(UNIX_EPOCH)
    }
}

pub fn attr(node: &Node) -> FileAttr {
    let size = node.size();
    let mtime = time(node.mtime.sec, node.mtime.nsec);
    FileAttr {
        ino: INodeNo(node.ino),
        size,
        blocks: size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: file_type(&node.kind),
        perm: (node.mode & 0o7777) as u16,
        nlink: node.nlink,
        uid: node.uid,
        gid: node.gid,
        rdev: node.rdev().map_or(0, |(major, minor)| encode_dev(major, minor)),
        blksize: 4096,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_encode_like_the_kernel() {
        assert_eq!(encode_dev(1, 3), 0x103); // /dev/null
        assert_eq!(encode_dev(8, 1), 0x801); // /dev/sda1
        // Minors above 255 go to the high bits, as new_decode_dev expects.
        assert_eq!(encode_dev(259, 300), (259 << 8) | 44 | (256 << 12));
    }
}
