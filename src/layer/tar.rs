//! Tar entries of one layer: every header of an uncompressed tar stream, read in a single pass.
//!
//! The stream is walked here block by block, as the reference readers walk it (GNU tar, and Go's
//! archive/tar that umoci unpacks with): any run of extension headers (GNU long names and links,
//! PAX) before an entry, the last of each kind winning. The `tar` crate's own walk refuses two
//! long names before one entry, which both readers accept, so it only lays out a header's fields;
//! `fields` decodes the numbers and the PAX records as Go does. PAX records are parsed by their
//! length prefix, so binary xattr values (`security.capability`) stay whole and no record hides
//! inside another's value.

use std::collections::BTreeMap;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use fields::{
    checksum_ok, header_name, parse_decimal, parse_numeric, parse_pax, parse_pax_time, until_nul,
};

mod fields;

/// Largest GNU long name or PAX header accepted (less than this), as in Go's archive/tar.
const MAX_SPECIAL: u64 = 1 << 20;
const BLOCK: u64 = 512;

/// One entry of a layer tar, as the layer says it (whiteouts included; the tree interprets them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TarEntry {
    /// Normalized path relative to the root, without leading or trailing `/`; empty for the root.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Mtime,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// Regular file; its data is `size` bytes at `offset` in the uncompressed layer.
    File {
        offset: u64,
        size: u64,
    },
    Dir,
    /// Target exactly as written in the tar (never resolved).
    Symlink {
        target: Vec<u8>,
    },
    /// Another path of the image (normalized like `TarEntry::path`).
    Hardlink {
        target: Vec<u8>,
    },
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

/// Modification time; PAX records may carry a fraction of a second or a negative time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mtime {
    pub sec: i64,
    pub nsec: u32,
}

impl TarEntry {
    /// Size of the file data (0 for everything but regular files).
    pub fn size(&self) -> u64 {
        match self.kind {
            EntryKind::File { size, .. } => size,
            _ => 0,
        }
    }

    /// Symlink or hardlink target.
    pub fn link(&self) -> Option<&[u8]> {
        match &self.kind {
            EntryKind::Symlink { target } | EntryKind::Hardlink { target } => Some(target),
            _ => None,
        }
    }

    /// Device numbers (major, minor) of a char or block device.
    pub fn rdev(&self) -> Option<(u32, u32)> {
        match self.kind {
            EntryKind::Char { major, minor } | EntryKind::Block { major, minor } => {
                Some((major, minor))
            }
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("tar stream unreadable {where_}: {source}")]
    Stream {
        where_: Where,
        #[source]
        source: io::Error,
    },
    #[error("tar stream: header checksum mismatch {where_} (not a tar stream, or a corrupt one)")]
    Checksum { where_: Where },
    #[error("tar stream: bad extension header {where_}: {reason}")]
    BadExtension { where_: Where, reason: String },
    #[error("tar entry `{entry}`: reading its data: {source}")]
    Data {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("tar entry `{entry}`: data cut short ({got} of {expected} bytes)")]
    Truncated {
        entry: String,
        expected: u64,
        got: u64,
    },
    #[error("tar entry `{entry}`: name climbs out of the root")]
    Climbs { entry: String },
    #[error("tar entry `{entry}`: hardlink target `{target}` climbs out of the root")]
    HardlinkClimbs { entry: String, target: String },
    #[error("tar entry `{entry}`: sparse files are not supported")]
    Sparse { entry: String },
    #[error("tar entry `{entry}`: absurd size {size}")]
    AbsurdSize { entry: String, size: i128 },
    #[error("tar entry `{entry}`: unsupported type flag {typeflag:?}")]
    Unsupported { entry: String, typeflag: char },
    #[error("tar entry `{entry}`: {reason}")]
    Malformed { entry: String, reason: String },
}

/// Where in the stream an error happened that no entry's name can be given for.
#[derive(Debug, Clone)]
pub struct Where(Option<String>);

impl std::fmt::Display for Where {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(name) => write!(f, "after entry `{name}`"),
            None => f.write_str("before the first entry"),
        }
    }
}

/// Lossy, printable form of a raw tar name, for messages.
pub(crate) fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Reads every header of the tar stream, up to and including the first end-of-archive block.
///
/// Offsets are counted from the reader's position on entry. The reader is left just after the
/// first zero block; whatever follows (the second zero block, padding) is the caller's to drain.
pub fn read_entries<R: Read>(reader: &mut R) -> Result<Vec<TarEntry>, TarError> {
    let mut blocks = Blocks {
        reader,
        pos: 0,
        last: None,
    };
    let mut out = Vec::new();
    let mut ext = Extensions::default();
    while let Some(header) = blocks.header()? {
        let flag = header.as_old().linkflag[0];
        if matches!(flag, b'L' | b'K' | b'x' | b'g') {
            let data = blocks.special(&header)?;
            let bad_pax = |reason| TarError::BadExtension {
                where_: blocks.where_(),
                reason,
            };
            match flag {
                b'L' => ext.long_name = Some(until_nul(&data).to_vec()),
                b'K' => ext.long_link = Some(until_nul(&data).to_vec()),
                b'x' => ext.pax = parse_pax(&data).map_err(bad_pax)?,
                _ => {
                    // A PAX global header carries defaults that OCI unpackers ignore; like Go's
                    // reader, it also ends the extension headers that came before it.
                    parse_pax(&data).map_err(bad_pax)?;
                    ext = Extensions::default();
                }
            }
            continue;
        }
        let ext = std::mem::take(&mut ext);
        let name = ext
            .name()
            .map_or_else(|| header_name(&header), <[u8]>::to_vec);
        let offset = blocks.pos;
        let (entry, size) = convert(&header, &ext, &name, offset)?;
        blocks.skip_data(&name, size)?;
        blocks.last = Some(name);
        out.push(entry);
    }
    Ok(out)
}

/// The stream block by block; `pos` counts from where the caller's reader was.
struct Blocks<'a, R> {
    reader: &'a mut R,
    pos: u64,
    /// Name of the last entry read, for messages.
    last: Option<Vec<u8>>,
}

impl<R: Read> Blocks<'_, R> {
    fn where_(&self) -> Where {
        Where(self.last.as_deref().map(show))
    }

    fn stream(&self, source: io::Error) -> TarError {
        TarError::Stream {
            where_: self.where_(),
            source,
        }
    }

    /// Fills `buf` as far as the stream goes; how much it filled.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.reader.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += got as u64;
        Ok(got)
    }

    /// The next header block; `None` at the end of the stream or at the first zero block
    /// (extension headers with no entry after them then describe nothing, as in Go's reader).
    fn header(&mut self) -> Result<Option<tar::Header>, TarError> {
        let mut header = tar::Header::new_old();
        let got = self
            .fill(header.as_mut_bytes())
            .map_err(|e| self.stream(e))?;
        if got == 0 {
            return Ok(None);
        }
        if got < BLOCK as usize {
            return Err(self.stream(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the stream ends inside a header ({got} of {BLOCK} bytes)"),
            )));
        }
        if header.as_bytes().iter().all(|&b| b == 0) {
            return Ok(None);
        }
        if !checksum_ok(&header) {
            return Err(TarError::Checksum {
                where_: self.where_(),
            });
        }
        Ok(Some(header))
    }

    /// The data of an extension header (GNU long name or link, PAX), padding skipped.
    fn special(&mut self, header: &tar::Header) -> Result<Vec<u8>, TarError> {
        let where_ = self.where_();
        let broken = |reason: String| TarError::BadExtension {
            where_: where_.clone(),
            reason,
        };
        let raw = &header.as_old().size;
        let size = parse_numeric(raw)
            .and_then(|size| u64::try_from(size).ok())
            .ok_or_else(|| broken(format!("bad size field `{}`", raw.escape_ascii())))?;
        if size >= MAX_SPECIAL {
            return Err(broken("extension header of 1 MiB or more".into()));
        }
        let mut data = vec![0; size.div_ceil(BLOCK) as usize * BLOCK as usize];
        let got = self.fill(&mut data).map_err(|e| self.stream(e))?;
        if got < data.len() {
            return Err(broken("extension header data cut short".into()));
        }
        data.truncate(size as usize);
        Ok(data)
    }

    /// Steps over an entry's `size` bytes of data and their padding.
    fn skip_data(&mut self, name: &[u8], size: u64) -> Result<(), TarError> {
        let padded = size.div_ceil(BLOCK) * BLOCK;
        let got =
            io::copy(&mut (&mut *self.reader).take(padded), &mut io::sink()).map_err(|source| {
                TarError::Data {
                    entry: show(name),
                    source,
                }
            })?;
        self.pos += got;
        if got < size {
            return Err(TarError::Truncated {
                entry: show(name),
                expected: size,
                got,
            });
        }
        if got < padded {
            return Err(self.stream(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the stream ends inside the padding of entry `{}`",
                    show(name)
                ),
            )));
        }
        Ok(())
    }
}

/// What the extension headers before one entry say. Of several headers of one kind the last
/// counts, as both GNU tar and Go's reader have it: a later PAX header replaces an earlier one
/// whole, a later long name an earlier one.
#[derive(Default)]
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: PaxRecords,
}

/// (key, value) in the order written.
type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

impl Extensions {
    /// Go's reader (and so umoci) lets a GNU long name win over a PAX path; an empty long name
    /// names nothing.
    fn name(&self) -> Option<&[u8]> {
        nonempty(self.long_name.as_deref()).or_else(|| self.pax_value(b"path"))
    }

    fn link(&self) -> Option<&[u8]> {
        nonempty(self.long_link.as_deref()).or_else(|| self.pax_value(b"linkpath"))
    }

    /// The last record with this key (later records override earlier ones); an empty value
    /// keeps the header's field, as in Go's reader.
    fn pax_value(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
            .filter(|v| !v.is_empty())
    }
}

fn nonempty(value: Option<&[u8]>) -> Option<&[u8]> {
    value.filter(|v| !v.is_empty())
}

/// Normalizes a tar name: strips `/` and `./`, resolves `.` and `..` lexically.
/// `None` when the name climbs out of the root.
pub(crate) fn normalize(name: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            _ => parts.push(part),
        }
    }
    Some(parts.join(&b'/'))
}

/// The entry one header (and the extension headers before it) describes, whose data starts at
/// `offset`, and how many bytes of data follow the header.
fn convert(
    header: &tar::Header,
    ext: &Extensions,
    raw_name: &[u8],
    offset: u64,
) -> Result<(TarEntry, u64), TarError> {
    let entry_name = show(raw_name);
    let malformed = |reason: String| TarError::Malformed {
        entry: entry_name.clone(),
        reason,
    };
    let old = header.as_old();
    let field = |what: &str, raw: &[u8]| {
        parse_numeric(raw)
            .ok_or_else(|| malformed(format!("bad {what} field `{}`", raw.escape_ascii())))
    };
    let typeflag = header.as_old().linkflag[0];

    if ext.pax.iter().any(|(k, _)| k.starts_with(b"GNU.sparse.")) || typeflag == b'S' {
        // A PAX sparse file's header holds a made-up name; its own is in a record.
        let name = ext.pax_value(b"GNU.sparse.name").map_or(entry_name, show);
        return Err(TarError::Sparse { entry: name });
    }
    if raw_name.is_empty() {
        return Err(malformed("empty name".into()));
    }
    let path = normalize(raw_name).ok_or_else(|| TarError::Climbs {
        entry: entry_name.clone(),
    })?;

    let size = match ext.pax_value(b"size") {
        Some(v) => parse_decimal(v)
            .ok_or_else(|| malformed("bad PAX size".into()))?
            .into(),
        None => field("size", &old.size)?,
    };
    if size < 0 {
        return Err(malformed(format!("negative size {size}")));
    }
    let size = match u64::try_from(size) {
        Ok(size) if size <= i64::MAX as u64 && offset.checked_add(size).is_some() => size,
        _ => {
            return Err(TarError::AbsurdSize {
                entry: entry_name,
                size,
            });
        }
    };

    let id = |key: &[u8], what: &str, raw: &[u8]| -> Result<u32, TarError> {
        let value = match ext.pax_value(key) {
            Some(v) => parse_decimal(v)
                .ok_or_else(|| malformed(format!("bad PAX {what}")))?
                .into(),
            None => field(what, raw)?,
        };
        u32::try_from(value).map_err(|_| malformed(format!("{what} {value} out of range")))
    };
    let uid = id(b"uid", "uid", &old.uid)?;
    let gid = id(b"gid", "gid", &old.gid)?;
    let mtime = match ext.pax_value(b"mtime") {
        Some(v) => parse_pax_time(v).ok_or_else(|| malformed("bad PAX mtime".into()))?,
        None => Mtime {
            sec: i64::try_from(field("mtime", &old.mtime)?)
                .map_err(|_| malformed("mtime out of range".into()))?,
            nsec: 0,
        },
    };
    let mode = (field("mode", &old.mode)? & 0o7777) as u32;

    let link = || -> Result<Vec<u8>, TarError> {
        let target = ext
            .link()
            .map(<[u8]>::to_vec)
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()))
            .unwrap_or_default();
        if target.is_empty() {
            return Err(malformed("empty link target".into()));
        }
        Ok(target)
    };
    let device = || -> Result<(u32, u32), TarError> {
        let (Some(major), Some(minor)) = (
            header
                .as_ustar()
                .map(|u| &u.dev_major)
                .or(header.as_gnu().map(|g| &g.dev_major)),
            header
                .as_ustar()
                .map(|u| &u.dev_minor)
                .or(header.as_gnu().map(|g| &g.dev_minor)),
        ) else {
            return Ok((0, 0));
        };
        let num = |raw: &[u8]| {
            let value = field("device", raw)?;
            u32::try_from(value).map_err(|_| malformed(format!("device {value} out of range")))
        };
        Ok((num(major)?, num(minor)?))
    };
    let kind = match typeflag {
        // Old tars mark directories by a trailing slash on a regular entry (as Go reads them).
        b'\0' if raw_name.ends_with(b"/") => EntryKind::Dir,
        b'0' | b'\0' => EntryKind::File { offset, size },
        // A GNU dumpdir (`tar --listed-incremental`) is a directory whose data lists what the
        // directory held; both reference readers step over that data.
        b'5' | b'D' => EntryKind::Dir,
        b'2' => EntryKind::Symlink { target: link()? },
        b'1' => {
            let raw = link()?;
            let target = normalize(&raw).ok_or_else(|| TarError::HardlinkClimbs {
                entry: entry_name.clone(),
                target: show(&raw),
            })?;
            EntryKind::Hardlink { target }
        }
        b'3' => {
            let (major, minor) = device()?;
            EntryKind::Char { major, minor }
        }
        b'4' => {
            let (major, minor) = device()?;
            EntryKind::Block { major, minor }
        }
        b'6' => EntryKind::Fifo,
        other => {
            return Err(TarError::Unsupported {
                entry: entry_name,
                typeflag: char::from(other),
            });
        }
    };
    // Go's reader skips no data after header-only entries while GNU tar skips `size` bytes: such
    // an entry would mean two different layers, so refuse it.
    if size != 0 && !matches!(kind, EntryKind::File { .. }) && typeflag != b'D' {
        return Err(malformed(format!(
            "non-file entry carries {size} bytes of data"
        )));
    }

    let mut xattrs = BTreeMap::new();
    for (key, value) in &ext.pax {
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| malformed("xattr name is not UTF-8".into()))?;
            xattrs.insert(name, value.clone());
        }
    }
    let entry = TarEntry {
        path,
        kind,
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    };
    Ok((entry, size))
}

#[cfg(test)]
#[path = "tar_tests.rs"]
mod tests;
