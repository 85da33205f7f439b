//! The record `lazypull ls --json` prints, one per line.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use super::{Node, NodeKind};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LsRecord {
    /// Absolute ("/" for the root); bytes that are not UTF-8 are replaced.
    pub path: String,
    /// file, dir, symlink, char, block or fifo (tar layers cannot hold sockets).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Whole seconds since the epoch.
    pub mtime: i64,
    pub link: Option<String>,
    pub rdev: Option<[u32; 2]>,
    pub nlink: u32,
    pub inode: u64,
    /// Values in standard base64.
    pub xattrs: BTreeMap<String, String>,
}

impl LsRecord {
    /// The record of `node`, reached at `path` (as `Tree::walk` gives it).
    pub fn new(path: &[u8], node: &Node) -> LsRecord {
        let kind = match node.kind {
            NodeKind::File(_) => "file",
            NodeKind::Dir(_) => "dir",
            NodeKind::Symlink(_) => "symlink",
            NodeKind::Char { .. } => "char",
            NodeKind::Block { .. } => "block",
            NodeKind::Fifo => "fifo",
        };
        LsRecord {
            path: String::from_utf8_lossy(path).into_owned(),
            kind,
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            size: node.size(),
            mtime: node.mtime.sec,
            link: node.link().map(|l| String::from_utf8_lossy(l).into_owned()),
            rdev: node.rdev().map(|(major, minor)| [major, minor]),
            nlink: node.nlink,
            inode: node.ino,
            xattrs: node
                .xattrs
                .iter()
                .map(|(name, value)| (name.clone(), STANDARD.encode(value)))
                .collect(),
        }
    }
}
