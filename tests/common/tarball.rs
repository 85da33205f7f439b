//! Layer tarballs built in memory, including entries a careful writer would refuse.

use std::fs;
use std::process::Command;

use tar::{EntryType, Header};

/// Fixed mtime of every entry, so layers (and their digests) are reproducible.
pub const MTIME: u64 = 1_700_000_000;

/// Builds a tar archive entry by entry. PAX records queued with [`TarBuilder::pax`]
/// or [`TarBuilder::xattr`] apply to the next entry added.
pub struct TarBuilder {
    out: tar::Builder<Vec<u8>>,
    pending_pax: Vec<(String, Vec<u8>)>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_size(size);
    h.set_mtime(MTIME);
    h
}

/// `a/b` → `a/<prefix>b`.
fn with_name_prefix(path: &str, prefix: &str) -> String {
    let path = path.trim_end_matches('/');
    match path.rsplit_once('/') {
        Some((parent, name)) => format!("{parent}/{prefix}{name}"),
        None => format!("{prefix}{path}"),
    }
}

/// One PAX record: `<len> <key>=<value>\n`, where `len` counts itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

impl TarBuilder {
    pub fn new() -> Self {
        TarBuilder {
            out: tar::Builder::new(Vec::new()),
            pending_pax: Vec::new(),
        }
    }

    /// Queues a PAX record (`path`, `linkpath`, `mtime`, `SCHILY.xattr.…`) for the next entry.
    pub fn pax(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.pending_pax
            .push((key.to_string(), value.as_ref().to_vec()));
        self
    }

    /// Queues extended attribute `name` (e.g. `user.foo`, `security.capability`) for the next entry.
    pub fn xattr(self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.pax(&format!("SCHILY.xattr.{name}"), value)
    }

    fn flush_pax(&mut self) {
        if self.pending_pax.is_empty() {
            return;
        }
        let body: Vec<u8> = self
            .pending_pax
            .drain(..)
            .flat_map(|(k, v)| pax_record(&k, &v))
            .collect();
        let mut h = header(EntryType::XHeader, 0o644, 0, 0, body.len() as u64);
        h.set_path("PaxHeaders/entry").unwrap();
        h.set_cksum();
        self.out.append(&h, body.as_slice()).unwrap();
    }

    /// Writes the queued PAX records now as a header of their own, so that another extension
    /// header (or nothing at all) can follow before the entry they describe.
    pub fn pax_header(mut self) -> Self {
        self.flush_pax();
        self
    }

    /// A GNU long-name (`EntryType::GNULongName`) or long-link (`GNULongLink`) header on its
    /// own: it names the next entry, or that entry's link target.
    pub fn gnu_long(mut self, kind: EntryType, name: &str) -> Self {
        self.flush_pax();
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        let mut h = header(kind, 0o644, 0, 0, data.len() as u64);
        h.set_path("././@LongLink").unwrap();
        h.set_cksum();
        self.out.append(&h, data.as_slice()).unwrap();
        self
    }

    /// Appends an entry through the tar crate, which checks the path and writes
    /// GNU long-name records when needed.
    fn entry(mut self, mut h: Header, path: &str, link: Option<&str>, data: &[u8]) -> Self {
        self.flush_pax();
        match link {
            Some(target) => self.out.append_link(&mut h, path, target).unwrap(),
            None => self.out.append_data(&mut h, path, data).unwrap(),
        }
        self
    }

    pub fn dir(self, path: &str, mode: u32) -> Self {
        self.dir_owned(path, mode, 0, 0)
    }

    pub fn dir_owned(self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let h = header(EntryType::Directory, mode, uid, gid, 0);
        self.entry(h, path, None, &[])
    }

    pub fn file(self, path: &str, data: impl AsRef<[u8]>, mode: u32) -> Self {
        self.file_owned(path, data, mode, 0, 0)
    }

    pub fn file_owned(
        self,
        path: &str,
        data: impl AsRef<[u8]>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Self {
        let data = data.as_ref();
        let h = header(EntryType::Regular, mode, uid, gid, data.len() as u64);
        self.entry(h, path, None, data)
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        let h = header(EntryType::Symlink, 0o777, 0, 0, 0);
        self.entry(h, path, Some(target), &[])
    }

    /// A hard link `path` to the earlier (or lower-layer) entry `target`.
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        let h = header(EntryType::Link, 0o644, 0, 0, 0);
        self.entry(h, path, Some(target), &[])
    }

    /// `.wh.<name>` next to `path`: deletes `path` from the layers below.
    pub fn whiteout(self, path: &str) -> Self {
        let h = header(EntryType::Regular, 0o644, 0, 0, 0);
        self.entry(h, &with_name_prefix(path, ".wh."), None, &[])
    }

    /// `<dir>/.wh..wh..opq`: hides every lower child of `dir`.
    pub fn opaque(self, dir: &str) -> Self {
        let h = header(EntryType::Regular, 0o644, 0, 0, 0);
        let path = format!("{}/.wh..wh..opq", dir.trim_end_matches('/'));
        self.entry(h, &path, None, &[])
    }

    fn device(self, kind: EntryType, path: &str, major: u32, minor: u32, mode: u32) -> Self {
        let mut h = header(kind, mode, 0, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.entry(h, path, None, &[])
    }

    pub fn char_device(self, path: &str, major: u32, minor: u32, mode: u32) -> Self {
        self.device(EntryType::Char, path, major, minor, mode)
    }

    pub fn block_device(self, path: &str, major: u32, minor: u32, mode: u32) -> Self {
        self.device(EntryType::Block, path, major, minor, mode)
    }

    pub fn fifo(self, path: &str, mode: u32) -> Self {
        self.device(EntryType::Fifo, path, 0, 0, mode)
    }

    /// Writes a header with the exact `name` and `link` bytes (each at most 100) and
    /// no checks at all: `../evil`, `/abs`, `a/../../b`, NUL-free garbage.
    pub fn raw(
        mut self,
        kind: EntryType,
        name: &[u8],
        link: &[u8],
        data: &[u8],
        mode: u32,
    ) -> Self {
        assert!(
            name.len() <= 100 && link.len() <= 100,
            "raw names are limited to 100 bytes"
        );
        self.flush_pax();
        let mut h = header(kind, mode, 0, 0, data.len() as u64);
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name);
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.out.append(&h, data).unwrap();
        self
    }

    /// Appends `header` and `data` exactly as given (the caller sets the checksum).
    pub fn raw_header(mut self, header: &Header, data: &[u8]) -> Self {
        self.flush_pax();
        self.out.append(header, data).unwrap();
        self
    }

    /// A regular file whose header claims `declared` bytes (in base-256 past the octal range)
    /// while only `data` follows: a size larger than the stream.
    pub fn file_claiming(self, path: &str, declared: u64, data: &[u8]) -> Self {
        let mut h = header(EntryType::Regular, 0o644, 0, 0, declared);
        h.set_path(path).unwrap();
        h.set_cksum();
        self.raw_header(&h, &[]).raw_bytes(data)
    }

    /// Appends raw bytes (e.g. a truncated header) with no padding.
    pub fn raw_bytes(mut self, bytes: &[u8]) -> Self {
        self.out.get_mut().extend_from_slice(bytes);
        self
    }

    /// The archive with its two zero end blocks.
    pub fn build(mut self) -> Vec<u8> {
        assert!(
            self.pending_pax.is_empty(),
            "PAX records queued with no entry after them"
        );
        self.out.finish().unwrap();
        self.out.into_inner().unwrap()
    }

    /// The archive without end blocks (a truncated layer).
    pub fn build_unterminated(self) -> Vec<u8> {
        assert!(
            self.pending_pax.is_empty(),
            "PAX records queued with no entry after them"
        );
        let mut out = self.out;
        std::mem::take(out.get_mut())
    }
}

/// A layer written by a tool: `script` runs in a directory holding a small tree (nested dirs, a
/// hardlink, a symlink, a long name, a setuid file, a sticky dir, a fifo, user xattrs) and must
/// write the tar to `$OUT`.
pub fn tool_layer(script: &str) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("dir/sub")).unwrap();
    fs::write(src.join("dir/file"), b"file data").unwrap();
    fs::write(src.join(format!("dir/{}", "n".repeat(120))), b"long").unwrap();
    fs::hard_link(src.join("dir/file"), src.join("hard")).unwrap();
    std::os::unix::fs::symlink("dir/file", src.join("sym")).unwrap();
    fs::write(src.join("suid"), b"x").unwrap();
    xattr::set(src.join("dir/file"), "user.origin", b"tool").unwrap();
    xattr::set(src.join("dir"), "user.t", b"v").unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "chmod 4755 suid && chmod 1777 dir/sub && mkfifo pipe && {script}"
        ))
        .current_dir(&src)
        .env("OUT", tmp.path().join("layer.tar"))
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
    fs::read(tmp.path().join("layer.tar")).unwrap()
}
