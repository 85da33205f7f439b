//! The reference result: what `umoci unpack` writes to disk, and the comparison of an expected
//! listing (from lazypull's tree or from `lazypull ls --json`) with it, entry by entry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use lazypull::digest::Digest;

/// One path of an image as the side under test describes it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Absolute, `/` for the root.
    pub path: String,
    /// file, dir, symlink, char, block or fifo.
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Checked for files and symlinks.
    pub size: u64,
    /// Symlink target.
    pub link: Option<Vec<u8>>,
    pub rdev: Option<(u32, u32)>,
    pub nlink: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Seconds, and nanoseconds when the side under test knows them.
    pub mtime: (i64, Option<u32>),
    /// sha256 of a regular file's bytes.
    pub content: Option<Digest>,
    /// Paths with equal numbers must share an inode on disk, and only they.
    pub inode: u64,
}

/// Runs `umoci unpack --image <image> <bundle>` (as root) and returns the bundle's rootfs.
pub fn umoci_unpack(image: &str, bundle: &Path) -> PathBuf {
    // umoci creates missing parents with mkdir 0777 minus the umask: pin the usual one.
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 022 && exec umoci unpack --image \"$1\" \"$2\"")
        .arg("sh")
        .arg(image)
        .arg(bundle)
        .output()
        .expect("umoci runs");
    assert!(
        out.status.success(),
        "umoci unpack {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bundle.join("rootfs")
}

/// Every path under `root` (absolute, `/` first), depth first, names in byte order.
pub fn disk_paths(root: &Path) -> Vec<String> {
    let mut out = vec!["/".to_string()];
    walk(root, "/", &mut out);
    out
}

fn walk(root: &Path, rel: &str, out: &mut Vec<String>) {
    let mut names: Vec<_> = fs::read_dir(on_disk(root, rel))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let path = format!("{}/{}", rel.trim_end_matches('/'), name.to_str().unwrap());
        out.push(path.clone());
        if fs::symlink_metadata(on_disk(root, &path)).unwrap().is_dir() {
            walk(root, &path, out);
        }
    }
}

fn on_disk(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn disk_kind(ft: fs::FileType) -> &'static str {
    match () {
        _ if ft.is_file() => "file",
        _ if ft.is_dir() => "dir",
        _ if ft.is_symlink() => "symlink",
        _ if ft.is_char_device() => "char",
        _ if ft.is_block_device() => "block",
        _ if ft.is_fifo() => "fifo",
        _ => "socket",
    }
}

/// glibc's split of a dev_t.
fn major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    (major as u32, minor as u32)
}

/// The xattrs an image can carry (the host adds trusted.* and SELinux labels of its own).
fn disk_xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    xattr::list(path)
        .unwrap()
        .map(|n| n.to_str().unwrap().to_string())
        .filter(|n| !n.starts_with("trusted.") && n != "security.selinux")
        .map(|n| {
            let v = xattr::get(path, &n).unwrap().unwrap_or_default();
            (n, v)
        })
        .collect()
}

fn parent_of(path: &str) -> Option<&str> {
    match path.rsplit_once('/') {
        _ if path == "/" => None,
        Some(("", _)) => Some("/"),
        Some((parent, _)) => Some(parent),
        None => None,
    }
}

/// Asserts that `expected` (in walk order) is what `rootfs` holds: the same paths in the same
/// order, and for each its type, mode, owner, nlink, xattrs, mtime, size, content, symlink
/// target, rdev; and that paths share inodes exactly as on disk.
pub fn compare(expected: &[Entry], rootfs: &Path) {
    let paths: Vec<&str> = expected.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, disk_paths(rootfs), "paths differ");

    // Parents a layer never lists get the time of the unpack from umoci (0 on our side), and
    // creating them touches their own parent after umoci restored its time.
    let implicit = |e: &Entry| e.kind == "dir" && e.mtime.0 == 0;
    let touched: BTreeSet<&str> = expected
        .iter()
        .filter(|e| implicit(e))
        .filter_map(|e| parent_of(&e.path))
        .collect();

    let mut disk_groups: HashMap<u64, BTreeSet<&str>> = HashMap::new();
    let mut our_groups: HashMap<u64, BTreeSet<&str>> = HashMap::new();
    for e in expected {
        let disk = on_disk(rootfs, &e.path);
        let meta = fs::symlink_metadata(&disk).unwrap();
        let at = |what: &str| format!("{what} of {}", e.path);
        assert_eq!(e.kind, disk_kind(meta.file_type()), "{}", at("type"));
        assert_eq!(e.mode, meta.mode() & 0o7777, "{}", at("mode"));
        assert_eq!((e.uid, e.gid), (meta.uid(), meta.gid()), "{}", at("owner"));
        assert_eq!(e.nlink, meta.nlink(), "{}", at("nlink"));
        assert_eq!(e.xattrs, disk_xattrs(&disk), "{}", at("xattrs"));
        if !implicit(e) && !touched.contains(e.path.as_str()) {
            let nsec = e.mtime.1.map(i64::from);
            let disk_nsec = nsec.map(|_| meta.mtime_nsec());
            assert_eq!(
                (e.mtime.0, nsec),
                (meta.mtime(), disk_nsec),
                "{}",
                at("mtime")
            );
        }
        match e.kind.as_str() {
            "file" => {
                let content = Digest::of(&fs::read(&disk).unwrap());
                assert_eq!(e.content.as_ref(), Some(&content), "{}", at("content"));
                assert_eq!(e.size, meta.len(), "{}", at("size"));
            }
            "symlink" => {
                let target = fs::read_link(&disk).unwrap();
                assert_eq!(
                    e.link.as_deref(),
                    Some(target.as_os_str().as_bytes()),
                    "{}",
                    at("target")
                );
                assert_eq!(e.size, meta.len(), "{}", at("size"));
            }
            "char" | "block" => {
                assert_eq!(e.rdev, Some(major_minor(meta.rdev())), "{}", at("rdev"));
            }
            _ => {}
        }
        disk_groups.entry(meta.ino()).or_default().insert(&e.path);
        our_groups.entry(e.inode).or_default().insert(&e.path);
    }
    let mut disk_sets: Vec<_> = disk_groups.into_values().collect();
    let mut our_sets: Vec<_> = our_groups.into_values().collect();
    disk_sets.sort();
    our_sets.sort();
    assert_eq!(our_sets, disk_sets, "inode sharing differs");
}

/// The reference for an image in a registry: `skopeo copy` it into an OCI layout under `dir`,
/// then `umoci unpack` it there. Returns the rootfs.
pub fn umoci_reference(host: &str, repo: &str, tag: &str, dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    fs::create_dir_all(dir).unwrap();
    let out = Command::new("skopeo")
        .args(["copy", "--insecure-policy", "--src-tls-verify=false"])
        .arg(format!("docker://{host}/{repo}:{tag}"))
        .arg(format!("oci:{}:{tag}", layout.display()))
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "skopeo copy {repo}:{tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    umoci_unpack(
        &format!("{}:{tag}", layout.display()),
        &dir.join(format!("bundle-{tag}")),
    )
}

/// Describes the tree at `root` (a mount) as the side under test: every path in walk order,
/// read through lstat, readlink, the xattr calls and a read of every file.
pub fn listing(root: &Path) -> Vec<Entry> {
    disk_paths(root)
        .into_iter()
        .map(|path| {
            let disk = on_disk(root, &path);
            let meta = fs::symlink_metadata(&disk).unwrap_or_else(|e| panic!("lstat {path}: {e}"));
            let ft = meta.file_type();
            let content = ft.is_file().then(|| {
                Digest::of(&fs::read(&disk).unwrap_or_else(|e| panic!("reading {path}: {e}")))
            });
            let link = ft.is_symlink().then(|| {
                fs::read_link(&disk)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            });
            let device = ft.is_char_device() || ft.is_block_device();
            Entry {
                kind: disk_kind(ft).to_string(),
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: meta.len(),
                link,
                rdev: device.then(|| major_minor(meta.rdev())),
                nlink: meta.nlink(),
                xattrs: disk_xattrs(&disk),
                mtime: (meta.mtime(), Some(meta.mtime_nsec() as u32)),
                content,
                inode: meta.ino(),
                path,
            }
        })
        .collect()
}

/// The entry of `path` in a listing.
pub fn entry<'a>(listing: &'a [Entry], path: &str) -> &'a Entry {
    listing
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} is not in the listing"))
}
