//! The merged, immutable file tree of an image: layers applied bottom to top, with inodes.
//!
//! Inode numbers are stable for a given image: the root is 1; the children of a directory get
//! consecutive numbers in byte order of their names, and directories are numbered depth first.

mod json;
mod merge;

use std::collections::{BTreeMap, HashMap};

pub use crate::layer::tar::Mtime;
use crate::layer::tar::TarEntry;
pub use json::LsRecord;

/// Where the bytes of a regular file are: `size` bytes at `offset` of uncompressed layer `layer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Content {
    pub layer: usize,
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    File(Content),
    /// Children sorted by name.
    Dir(Vec<DirEntry>),
    Symlink(Vec<u8>),
    Char {
        major: u32,
        minor: u32,
    },
    Block {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// One inode of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub ino: u64,
    /// The directory holding this node (for a hardlinked node, the one first walked); the root's
    /// parent is the root.
    pub parent: u64,
    pub kind: NodeKind,
    /// Permission bits with setuid/setgid/sticky (0o777 for symlinks).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Mtime,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Names of this inode; for a directory 2 + its subdirectories, as Linux counts.
    pub nlink: u32,
}

impl Node {
    /// Size as `lstat` reports it for files and symlinks (0 for the others).
    pub fn size(&self) -> u64 {
        match &self.kind {
            NodeKind::File(c) => c.size,
            NodeKind::Symlink(target) => target.len() as u64,
            _ => 0,
        }
    }

    pub fn content(&self) -> Option<Content> {
        match self.kind {
            NodeKind::File(c) => Some(c),
            _ => None,
        }
    }

    pub fn link(&self) -> Option<&[u8]> {
        match &self.kind {
            NodeKind::Symlink(target) => Some(target),
            _ => None,
        }
    }

    /// (major, minor) of a device.
    pub fn rdev(&self) -> Option<(u32, u32)> {
        match self.kind {
            NodeKind::Char { major, minor } | NodeKind::Block { major, minor } => {
                Some((major, minor))
            }
            _ => None,
        }
    }

    pub fn children(&self) -> Option<&[DirEntry]> {
        match &self.kind {
            NodeKind::Dir(children) => Some(children),
            _ => None,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir(_))
    }
}

/// A layer that cannot be applied; `layer` counts from the bottom (0).
#[derive(Debug, thiserror::Error)]
#[error("layer {layer}, entry `{entry}`: {problem}")]
pub struct TreeError {
    pub layer: usize,
    pub entry: String,
    pub problem: Problem,
}

#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("hardlink target `{0}` exists neither in this layer nor below")]
    MissingLinkTarget(String),
    #[error("hardlink to itself (target `{0}`): the name it replaces is its own target")]
    LinkToItself(String),
    #[error(
        "hardlink target `{0}` is a hardlink whose own target never appears (a cycle or a chain \
         of links to nothing)"
    )]
    LinkToUnresolvedLink(String),
    #[error("hardlink to directory `{0}`")]
    LinkToDir(String),
    #[error("lies below `{0}`, a symlink")]
    BelowSymlink(String),
    #[error("lies below `{0}`, which is not a directory")]
    BelowNonDir(String),
    #[error("the root can only be a directory")]
    RootNotDir,
    #[error("whiteout names nothing")]
    BadWhiteout,
}

/// The merged tree; nodes are indexed by inode number.
#[derive(Debug)]
pub struct Tree {
    /// `nodes[ino - 1]`.
    nodes: Vec<Node>,
}

pub const ROOT_INO: u64 = 1;

impl Tree {
    /// Merges layers given bottom first; a layer's position is its number in `Content::layer`
    /// and in errors.
    pub fn build<'a>(layers: impl IntoIterator<Item = &'a [TarEntry]>) -> Result<Tree, TreeError> {
        let mut merged = merge::Merged::new();
        for (layer, entries) in layers.into_iter().enumerate() {
            merged.apply(layer, entries)?;
        }
        Ok(Tree::number(merged))
    }

    /// Gives inodes in walk order and turns the path map into nodes.
    fn number(merged: merge::Merged) -> Tree {
        let merge::Merged { paths, objs } = merged;
        let mut names: HashMap<&[u8], Vec<(&[u8], usize)>> = HashMap::new();
        let mut links: HashMap<usize, u32> = HashMap::new();
        for (path, &obj) in &paths {
            *links.entry(obj).or_default() += 1;
            if let Some(i) = path.iter().rposition(|&b| b == b'/') {
                names
                    .entry(&path[..i])
                    .or_default()
                    .push((&path[i + 1..], obj));
            } else if !path.is_empty() {
                names.entry(b"").or_default().push((path, obj));
            }
        }
        let mut ino_of: HashMap<usize, u64> = HashMap::new();
        let mut nodes: Vec<Node> = Vec::new();
        let mut new_node = |obj: usize, parent: u64, nodes: &mut Vec<Node>| -> (u64, bool) {
            if let Some(&ino) = ino_of.get(&obj) {
                return (ino, false);
            }
            let ino = nodes.len() as u64 + 1;
            ino_of.insert(obj, ino);
            let o = &objs[obj];
            let kind = match &o.kind {
                merge::ObjKind::File(c) => NodeKind::File(*c),
                merge::ObjKind::Dir => NodeKind::Dir(Vec::new()),
                merge::ObjKind::Symlink(t) => NodeKind::Symlink(t.clone()),
                merge::ObjKind::Char(major, minor) => NodeKind::Char {
                    major: *major,
                    minor: *minor,
                },
                merge::ObjKind::Block(major, minor) => NodeKind::Block {
                    major: *major,
                    minor: *minor,
                },
                merge::ObjKind::Fifo => NodeKind::Fifo,
            };
            nodes.push(Node {
                ino,
                parent,
                kind,
                mode: o.mode,
                uid: o.uid,
                gid: o.gid,
                mtime: o.mtime,
                xattrs: o.xattrs.clone(),
                nlink: links.get(&obj).copied().unwrap_or(1),
            });
            (ino, true)
        };
        let root_obj = paths.get(b"".as_slice()).copied().unwrap_or(0);
        new_node(root_obj, ROOT_INO, &mut nodes);
        // Explicit stack: a hostile layer may nest directories deeper than the call stack.
        let mut stack: Vec<(Vec<u8>, u64)> = vec![(Vec::new(), ROOT_INO)];
        while let Some((dir, dir_ino)) = stack.pop() {
            let mut kids = names.remove(dir.as_slice()).unwrap_or_default();
            kids.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let mut entries = Vec::with_capacity(kids.len());
            let mut subdirs = Vec::new();
            for (name, obj) in kids {
                let (ino, fresh) = new_node(obj, dir_ino, &mut nodes);
                entries.push(DirEntry {
                    name: name.to_vec(),
                    ino,
                });
                if fresh && objs[obj].is_dir() {
                    let path = if dir.is_empty() {
                        name.to_vec()
                    } else {
                        [dir.as_slice(), b"/", name].concat()
                    };
                    subdirs.push((path, ino));
                }
            }
            let dir_node = &mut nodes[(dir_ino - 1) as usize];
            dir_node.nlink = 2 + subdirs.len() as u32;
            dir_node.kind = NodeKind::Dir(entries);
            // Reversed so the directories are visited in name order.
            stack.extend(subdirs.into_iter().rev());
        }
        Tree { nodes }
    }

    pub fn root(&self) -> &Node {
        &self.nodes[0]
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<&Node> {
        let children = self.get(parent)?.children()?;
        let i = children
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()?;
        self.get(children[i].ino)
    }

    /// Number of inodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every path (absolute, "/" for the root) with its node, parents before children, siblings
    /// in byte order of their names. A hardlinked node comes once per name.
    pub fn walk(&self) -> Walk<'_> {
        self.walk_node(b"/".to_vec(), self.root())
    }

    /// Inode numbers of the regular files whose data is in `layer`.
    pub fn files_of_layer(&self, layer: usize) -> impl Iterator<Item = u64> + '_ {
        self.nodes.iter().filter_map(move |n| match &n.kind {
            NodeKind::File(c) if c.layer == layer => Some(n.ino),
            _ => None,
        })
    }

    /// The node at an absolute or relative `path` (symlinks are not followed).
    pub fn resolve(&self, path: &[u8]) -> Option<&Node> {
        path.split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .try_fold(self.root(), |node, name| self.lookup(node.ino, name))
    }

    /// Like [`Tree::walk`], for the subtree at `path`.
    pub fn walk_from(&self, path: &[u8]) -> Option<Walk<'_>> {
        let node = self.resolve(path)?;
        let mut clean = Vec::new();
        for c in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            clean.push(b'/');
            clean.extend_from_slice(c);
        }
        if clean.is_empty() {
            clean.push(b'/');
        }
        Some(self.walk_node(clean, node))
    }

    fn walk_node<'a>(&'a self, path: Vec<u8>, node: &'a Node) -> Walk<'a> {
        Walk {
            tree: self,
            start: Some((path, node)),
            stack: Vec::new(),
        }
    }
}

pub struct Walk<'a> {
    tree: &'a Tree,
    /// The node the walk starts at, until it is handed out.
    start: Option<(Vec<u8>, &'a Node)>,
    /// Open directories: their path, their children, and the next child to visit.
    stack: Vec<(Vec<u8>, &'a [DirEntry], usize)>,
}

impl<'a> Iterator for Walk<'a> {
    type Item = (Vec<u8>, &'a Node);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((path, node)) = self.start.take() {
            let prefix = if path == b"/" {
                Vec::new()
            } else {
                path.clone()
            };
            self.stack
                .push((prefix, node.children().unwrap_or_default(), 0));
            return Some((path, node));
        }
        loop {
            let (dir, children, next) = self.stack.last_mut()?;
            let Some(entry) = children.get(*next) else {
                self.stack.pop();
                continue;
            };
            *next += 1;
            let path = [dir.as_slice(), b"/", &entry.name].concat();
            let node = self.tree.get(entry.ino)?;
            if let Some(kids) = node.children() {
                self.stack.push((path.clone(), kids, 0));
            }
            return Some((path, node));
        }
    }
}

#[cfg(test)]
mod tests;
