//! The merged tree against the reference unpacker: each test writes an OCI image layout from
//! tar layers, runs `umoci unpack` (as root), and compares the bundle's rootfs with the tree
//! path by path: type, mode, owner, size, content, link target, rdev, xattrs, nlink, mtime and
//! which paths share an inode.

mod common;

use std::fs;
use std::io::Cursor;
use std::path::Path;

use common::tarball::tool_layer;
use common::unpacked::{self, Entry};

use lazypull::digest::Digest;
use lazypull::layer::tar::read_entries;
use lazypull::tree::{Node, NodeKind, Tree};

/// A layer tar under construction.
struct Layer {
    tar: tar::Builder<Vec<u8>>,
}

impl Layer {
    fn new() -> Layer {
        Layer {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        h
    }

    fn add(&mut self, mut h: tar::Header, path: &str, data: &[u8]) -> &mut Layer {
        h.set_size(data.len() as u64);
        self.tar.append_data(&mut h, path, data).unwrap();
        self
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Layer {
        self.add(Layer::header(tar::EntryType::Regular, mode), path, data)
    }

    fn owned_dir(&mut self, path: &str, mode: u32, uid: u64, mtime: u64) -> &mut Layer {
        let mut h = Layer::header(tar::EntryType::Directory, mode);
        h.set_uid(uid);
        h.set_gid(uid + 1);
        h.set_mtime(mtime);
        self.add(h, path, b"")
    }

    fn dir(&mut self, path: &str) -> &mut Layer {
        self.owned_dir(path, 0o755, 0, 1_600_000_000)
    }

    fn link(&mut self, kind: tar::EntryType, path: &str, target: &str) -> &mut Layer {
        let mut h = Layer::header(kind, 0o644);
        self.tar.append_link(&mut h, path, target).unwrap();
        self
    }

    fn device(&mut self, kind: tar::EntryType, path: &str, major: u32, minor: u32) -> &mut Layer {
        let mut h = Layer::header(kind, 0o660);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.add(h, path, b"")
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Layer {
        self.tar
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }

    fn done(&mut self) -> Vec<u8> {
        let tar = std::mem::replace(&mut self.tar, tar::Builder::new(Vec::new()));
        tar.into_inner().unwrap()
    }
}

fn put_blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let digest = Digest::of(data);
    fs::write(layout.join("blobs/sha256").join(digest.hex()), data).unwrap();
    (digest.to_string(), data.len())
}

/// Writes an OCI layout with uncompressed layers and unpacks it with umoci; returns the rootfs.
fn umoci_unpack_layers(dir: &Path, layers: &[Vec<u8>]) -> std::path::PathBuf {
    let layout = dir.join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let descs: Vec<(String, usize)> = layers.iter().map(|l| put_blob(&layout, l)).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": descs.iter().map(|d| &d.0).collect::<Vec<_>>()},
    });
    let (config_digest, config_size) = put_blob(&layout, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": descs.iter().map(|(digest, size)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size,
        })).collect::<Vec<_>>(),
    });
    let (manifest_digest, manifest_size) = put_blob(&layout, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"org.opencontainers.image.ref.name": "t"}}],
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    unpacked::umoci_unpack(&format!("{}:t", layout.display()), &dir.join("bundle"))
}

fn kind_name(node: &Node) -> &'static str {
    match node.kind {
        NodeKind::File(_) => "file",
        NodeKind::Dir(_) => "dir",
        NodeKind::Symlink(_) => "symlink",
        NodeKind::Char { .. } => "char",
        NodeKind::Block { .. } => "block",
        NodeKind::Fifo => "fifo",
    }
}

/// The tree as the shared comparison takes it; file contents come from the layer bytes.
fn entries_of(tree: &Tree, layers: &[Vec<u8>]) -> Vec<Entry> {
    tree.walk()
        .map(|(path, node)| Entry {
            path: String::from_utf8(path).unwrap(),
            kind: kind_name(node).to_string(),
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            size: node.size(),
            link: node.link().map(<[u8]>::to_vec),
            rdev: node.rdev(),
            nlink: node.nlink.into(),
            xattrs: node.xattrs.clone(),
            mtime: (node.mtime.sec, Some(node.mtime.nsec)),
            content: node.content().map(|c| {
                Digest::of(&layers[c.layer][c.offset as usize..(c.offset + c.size) as usize])
            }),
            inode: node.ino,
        })
        .collect()
}

/// Builds the tree from `layers`, unpacks them with umoci and compares; returns the tree.
fn conform(layers: &[Vec<u8>]) -> Tree {
    let entries: Vec<_> = layers
        .iter()
        .map(|l| read_entries(&mut Cursor::new(l)).unwrap())
        .collect();
    let tree = Tree::build(entries.iter().map(Vec::as_slice)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = umoci_unpack_layers(tmp.path(), layers);
    unpacked::compare(&entries_of(&tree, layers), &rootfs);
    tree
}

fn paths_of(tree: &Tree) -> Vec<String> {
    tree.walk()
        .map(|(p, _)| String::from_utf8(p).unwrap())
        .collect()
}

#[test]
fn whiteouts_and_opaque_whiteouts() {
    let lower = Layer::new()
        .dir("gone")
        .file("gone/a", 0o644, b"a")
        .file("f", 0o644, b"f")
        .dir("before")
        .file("before/old", 0o644, b"o")
        .dir("after")
        .file("after/old", 0o644, b"o")
        .dir("kept")
        .file("kept/x", 0o644, b"x")
        .file("kept/y", 0o644, b"y")
        .link(tar::EntryType::Symlink, "was_link", "nowhere")
        .done();
    let upper = Layer::new()
        .file(".wh.gone", 0o644, b"")
        .file(".wh.f", 0o644, b"")
        .file("before/.wh..wh..opq", 0o644, b"")
        .file("before/new", 0o644, b"n")
        .file("after/new", 0o644, b"n")
        .file("after/.wh..wh..opq", 0o644, b"")
        .file("kept/x", 0o600, b"new x")
        .file("kept/.wh.x", 0o644, b"")
        .file("kept/.wh.y", 0o644, b"")
        // A symlink turned into a directory, marked opaque as overlayfs-based builders do.
        .file("was_link/.wh..wh..opq", 0o644, b"")
        .dir("was_link")
        .file("was_link/x", 0o644, b"x")
        .done();
    let tree = conform(&[lower, upper]);
    assert_eq!(
        paths_of(&tree),
        [
            "/",
            "/after",
            "/after/new",
            "/before",
            "/before/new",
            "/kept",
            "/kept/x",
            "/was_link",
            "/was_link/x",
        ]
    );
}

#[test]
fn replacement_attributes_and_missing_parents() {
    let lower = Layer::new()
        .owned_dir("d", 0o755, 0, 1_500_000_000)
        .file("d/lower", 0o644, b"l")
        .dir("fd")
        .file("fd/child", 0o644, b"c")
        .file("df", 0o644, b"file")
        .done();
    let upper = Layer::new()
        .owned_dir("./", 0o711, 5, 1_650_000_000)
        .pax(&[("SCHILY.xattr.user.dir", b"yes")])
        .owned_dir("d", 0o2750, 1000, 1_700_000_000)
        .file("d/upper", 0o644, b"u")
        .file("fd", 0o644, b"now a file")
        .dir("df")
        .file("df/inside", 0o644, b"i")
        .file("late/inside", 0o644, b"i")
        .owned_dir("late", 0o700, 42, 1_650_000_000)
        .file("deep/er/est", 0o644, b"e")
        .file("dup", 0o644, b"first")
        .file("dup", 0o640, b"second")
        .done();
    let tree = conform(&[lower, upper]);
    assert!(paths_of(&tree).contains(&"/deep/er".to_string()));
    let late = tree.walk().find(|(p, _)| p == b"/late").unwrap().1;
    assert_eq!((late.mode, late.uid), (0o700, 42));
    assert_eq!((tree.root().mode, tree.root().uid), (0o711, 5));
}

#[test]
fn hardlinks_in_layer_across_layers_and_whited_out() {
    let lower = Layer::new()
        .file("base", 0o755, b"base")
        .link(tar::EntryType::Link, "base2", "base")
        .file("doomed", 0o644, b"doomed")
        .link(tar::EntryType::Link, "survivor", "doomed")
        .link(tar::EntryType::Symlink, "sym", "base")
        .link(tar::EntryType::Link, "sym_hard", "sym")
        .done();
    let upper = Layer::new()
        .link(tar::EntryType::Link, "up/alias", "base")
        .file("new", 0o644, b"new")
        .link(tar::EntryType::Link, "new2", "new")
        .file(".wh.doomed", 0o644, b"")
        .done();
    let tree = conform(&[lower, upper]);
    let base = tree.walk().find(|(p, _)| p == b"/base").unwrap().1;
    assert_eq!(base.nlink, 3);
}

#[test]
fn special_files_modes_xattrs_and_long_names() {
    let cap = [
        1u8, 0, 0, 2, 0x0a, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let pax_long = format!("pax/{}", "p".repeat(150));
    let gnu_long = format!("gnu/{}", "g".repeat(150));
    let long_target = format!("/{}", "t".repeat(200));
    let mut layer = Layer::new();
    layer
        .link(tar::EntryType::Symlink, "sym", "/etc/passwd")
        .link(tar::EntryType::Symlink, "longsym", &long_target)
        .device(tar::EntryType::Char, "dev/null", 1, 3)
        .device(tar::EntryType::Block, "dev/loop9", 7, 9)
        .add(Layer::header(tar::EntryType::Fifo, 0o600), "fifo", b"")
        .file("suid", 0o4755, b"s")
        .file("sgid", 0o2711, b"g")
        .owned_dir("sticky", 0o1777, 0, 1_600_000_000)
        .pax(&[
            ("SCHILY.xattr.security.capability", &cap),
            ("SCHILY.xattr.user.note", b"hello"),
        ])
        .file("capped", 0o755, b"ping")
        .pax(&[
            ("path", pax_long.as_bytes()),
            ("mtime", b"1600000000.123456789"),
        ])
        .file("pax/short", 0o644, b"pax name");
    // The builder writes a GNU long-name record for names over 100 bytes.
    layer.file(&gnu_long, 0o644, b"gnu name");
    let tree = conform(&[layer.done()]);
    let names = paths_of(&tree);
    assert!(names.contains(&format!("/{pax_long}")) && names.contains(&format!("/{gnu_long}")));
}

#[test]
fn gnu_tar_layers() {
    let gnu = tool_layer("tar --format=gnu -cf \"$OUT\" .");
    let posix = tool_layer("tar --format=posix --xattrs -cf \"$OUT\" .");
    let tree = conform(&[gnu, posix]);
    let file = tree.walk().find(|(p, _)| p == b"/dir/file").unwrap().1;
    assert_eq!(file.xattrs["user.origin"], b"tool");
    assert_eq!(file.nlink, 2, "dir/file and hard");
}

#[test]
fn python_tarfile_layers() {
    let script = |format: &str| {
        format!(
            "python3 -c 'import os,tarfile; t=tarfile.open(os.environ[\"OUT\"],\"w\",format=tarfile.{format}); \
             [t.add(n) for n in sorted(os.listdir(\".\"))]; t.close()'"
        )
    };
    conform(&[
        tool_layer(&script("PAX_FORMAT")),
        tool_layer(&script("GNU_FORMAT")),
    ]);
}
