//! Applying layers one over another (OCI image-spec layer.md), on a flat map of paths.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::layer::tar::{EntryKind, Mtime, TarEntry, show};

use super::{Content, Problem, TreeError};

const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT: &[u8] = b".wh.";

/// What an inode holds: its kind and attributes. Hardlinked paths share one.
#[derive(Debug, Clone)]
pub(super) struct Obj {
    pub kind: ObjKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Mtime,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone)]
pub(super) enum ObjKind {
    File(Content),
    Dir,
    Symlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

impl Obj {
    /// A directory a layer needs but never lists (what `umoci unpack` gives it: 0755 root:root).
    fn implicit_dir() -> Obj {
        Obj {
            kind: ObjKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: Mtime::default(),
            xattrs: BTreeMap::new(),
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, ObjKind::Dir)
    }
}

/// The merged image so far: every path (relative, "" for the root) to its object.
pub(super) struct Merged {
    pub paths: BTreeMap<Vec<u8>, usize>,
    pub objs: Vec<Obj>,
}

/// Where the entries of one layer go, once the layer is sorted out.
enum Role<'a> {
    Whiteout(Vec<u8>),
    Opaque(&'a [u8]),
    Entry,
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

impl Merged {
    pub fn new() -> Merged {
        Merged {
            paths: BTreeMap::from([(Vec::new(), 0)]),
            objs: vec![Obj::implicit_dir()],
        }
    }

    fn obj_at(&self, path: &[u8]) -> Option<&Obj> {
        self.paths.get(path).map(|&i| &self.objs[i])
    }

    /// Removes the children of `dir` (all of them, not `dir` itself).
    fn remove_children(&mut self, dir: &[u8]) {
        let doomed: Vec<Vec<u8>> = if dir.is_empty() {
            self.paths
                .keys()
                .filter(|k| !k.is_empty())
                .cloned()
                .collect()
        } else {
            // Every path below `dir` sorts between "dir/" and "dir0" ('0' follows '/').
            let lo = [dir, b"/"].concat();
            let hi = [dir, b"0"].concat();
            self.paths.range(lo..hi).map(|(k, _)| k.clone()).collect()
        };
        for key in doomed {
            self.paths.remove(&key);
        }
    }

    fn remove_tree(&mut self, path: &[u8]) {
        self.remove_children(path);
        self.paths.remove(path);
    }

    /// Creates the missing parents of `path`, refusing one reached through a symlink or a
    /// non-directory. Every path in the map has its parents there too, as directories (a
    /// non-directory is only ever placed with its subtree removed), so only the nearest
    /// existing ancestor needs a look: checking them all would cost the square of the depth.
    fn make_parents(&mut self, path: &[u8]) -> Result<(), Problem> {
        let mut missing = Vec::new();
        let mut dir = path;
        while let Some(i) = dir.iter().rposition(|&b| b == b'/') {
            dir = &dir[..i];
            match self.obj_at(dir) {
                Some(obj) if obj.is_dir() => break,
                Some(Obj {
                    kind: ObjKind::Symlink(_),
                    ..
                }) => return Err(Problem::BelowSymlink(show(dir))),
                Some(_) => return Err(Problem::BelowNonDir(show(dir))),
                None => missing.push(dir),
            }
        }
        for dir in missing {
            self.objs.push(Obj::implicit_dir());
            self.paths.insert(dir.to_vec(), self.objs.len() - 1);
        }
        Ok(())
    }

    /// Puts `obj` at `path`: a directory over a directory takes its attributes and keeps its
    /// children; anything else replaces the path and whatever was below it.
    fn place(&mut self, path: &[u8], obj: Obj) -> Result<(), Problem> {
        self.make_parents(path)?;
        match self.paths.get(path) {
            // Directories are never hardlinked, so nothing else shares this object.
            Some(&i) if obj.is_dir() && self.objs[i].is_dir() => self.objs[i] = obj,
            _ => {
                self.remove_tree(path);
                self.objs.push(obj);
                self.paths.insert(path.to_vec(), self.objs.len() - 1);
            }
        }
        Ok(())
    }

    /// Applies one layer (`layer` is its index, bottom = 0) over the layers below.
    ///
    /// Entries apply in stream order, as `umoci unpack` and `tar -x` write them: a later entry
    /// of a path replaces an earlier one (a file over a directory takes the directory's
    /// subtree with it), and a hardlink names the inode its target has at that point.
    pub fn apply(&mut self, layer: usize, entries: &[TarEntry]) -> Result<(), TreeError> {
        let fail = |entry: &TarEntry, problem| TreeError {
            layer,
            entry: show(&entry.path),
            problem,
        };
        // Position of the last entry of each path, whiteouts aside.
        let mut last: HashMap<&[u8], usize> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            // Whiteouts act on the layers below only, so they go first, wherever they stand.
            // They are lexical: the map never holds a path below a symlink or a file, so they
            // cannot reach through one (umoci would follow the symlink).
            match role(&entry.path).map_err(|p| fail(entry, p))? {
                Role::Whiteout(target) => self.remove_tree(&target),
                Role::Opaque(dir) => self.remove_children(dir),
                Role::Entry => {
                    last.insert(&entry.path, i);
                }
            }
        }
        // Hardlinks to a path that comes later in the same tar, tried once the layer is in.
        let mut forward = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            if !last.contains_key(entry.path.as_slice()) {
                continue;
            }
            let kind = match &entry.kind {
                EntryKind::Hardlink { target } => {
                    if !self.link(entry, target).map_err(|p| fail(entry, p))? {
                        forward.push((i, entry, target));
                    }
                    continue;
                }
                EntryKind::File { offset, size } => ObjKind::File(Content {
                    layer,
                    offset: *offset,
                    size: *size,
                }),
                EntryKind::Dir => ObjKind::Dir,
                EntryKind::Symlink { target } => ObjKind::Symlink(target.clone()),
                EntryKind::Char { major, minor } => ObjKind::Char(*major, *minor),
                EntryKind::Block { major, minor } => ObjKind::Block(*major, *minor),
                EntryKind::Fifo => ObjKind::Fifo,
            };
            if entry.path.is_empty() && !matches!(kind, ObjKind::Dir) {
                return Err(fail(entry, Problem::RootNotDir));
            }
            let obj = Obj {
                // Symlinks have no mode of their own on Linux.
                mode: if matches!(kind, ObjKind::Symlink(_)) {
                    0o777
                } else {
                    entry.mode
                },
                kind,
                uid: entry.uid,
                gid: entry.gid,
                mtime: entry.mtime,
                xattrs: entry.xattrs.clone(),
            };
            self.place(&entry.path, obj).map_err(|p| fail(entry, p))?;
        }
        // A forward link counts only if no later entry took its name; in tar order, so a link
        // to an earlier forward link works.
        // Names of the forward links, to tell a cycle (a → b → a) from a target never written.
        let pending: HashSet<&[u8]> = forward.iter().map(|(_, e, _)| e.path.as_slice()).collect();
        for (i, entry, target) in forward {
            if last.get(entry.path.as_slice()) != Some(&i) {
                continue;
            }
            if !self.link(entry, target).map_err(|p| fail(entry, p))? {
                let problem = if pending.contains(target.as_slice()) {
                    Problem::LinkToUnresolvedLink(show(target))
                } else {
                    Problem::MissingLinkTarget(show(target))
                };
                return Err(fail(entry, problem));
            }
        }
        Ok(())
    }

    /// Makes `entry.path` another name of `target`'s inode; false if there is no `target` (yet).
    fn link(&mut self, entry: &TarEntry, target: &[u8]) -> Result<bool, Problem> {
        let path = entry.path.as_slice();
        if path.is_empty() {
            return Err(Problem::RootNotDir);
        }
        // The link replaces its own name first, so its target would be gone: umoci fails the
        // same way (`link: no such file or directory`).
        if target == path
            || target
                .strip_prefix(path)
                .is_some_and(|r| r.starts_with(b"/"))
        {
            return Err(Problem::LinkToItself(show(target)));
        }
        let Some(&obj) = self.paths.get(target) else {
            return Ok(false);
        };
        if self.objs[obj].is_dir() {
            return Err(Problem::LinkToDir(show(target)));
        }
        self.remove_tree(path);
        self.make_parents(path)?;
        self.paths.insert(path.to_vec(), obj);
        Ok(true)
    }
}

/// Whether a path is a whiteout, an opaque marker or an ordinary entry.
fn role(path: &[u8]) -> Result<Role<'_>, Problem> {
    let (dir, name) = split(path);
    if name == OPAQUE {
        return Ok(Role::Opaque(dir));
    }
    match name.strip_prefix(WHITEOUT) {
        Some(b"" | b"." | b"..") => Err(Problem::BadWhiteout),
        Some(hidden) => Ok(Role::Whiteout(join(dir, hidden))),
        None => Ok(Role::Entry),
    }
}
