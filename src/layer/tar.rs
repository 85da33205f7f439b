//! Tar entries of one layer: every header of an uncompressed tar stream, read in a single pass.
//!
//! The `tar` crate walks the stream (ustar, GNU long names and links, PAX sizes). PAX records are
//! parsed here by their length prefix, from the raw bytes the crate read, because the crate splits
//! records at newlines and so mangles binary xattr values (`security.capability`) and can be made
//! to see records that a length-prefixed reader (Go's, umoci's) does not.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

/// Largest GNU long name or PAX header accepted, as in Go's archive/tar.
const MAX_SPECIAL: u64 = 1 << 20;
/// Bound on the bytes kept while the crate reads the extension headers before one entry.
const MAX_CAPTURE: usize = 4 << 20;
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
    #[error("tar stream: extension headers {where_} exceed {MAX_CAPTURE} bytes")]
    ExtensionTooLarge { where_: Where },
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
    #[error("tar entry `{entry}` ({where_}): bad header: {source}")]
    Header {
        entry: String,
        where_: Where,
        #[source]
        source: io::Error,
    },
    #[error("tar entry `{entry}`: sparse files are not supported")]
    Sparse { entry: String },
    #[error("tar entry `{entry}`: absurd size {size}")]
    AbsurdSize { entry: String, size: u64 },
    #[error("tar entry `{entry}`: unsupported type flag {typeflag:?}")]
    Unsupported { entry: String, typeflag: char },
    #[error("tar entry `{entry}`: {reason}")]
    Malformed { entry: String, reason: String },
}

/// Where in the stream an error happened that the tar crate met before surfacing an entry.
#[derive(Debug)]
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

#[derive(Default)]
struct Capture {
    on: bool,
    bytes: Vec<u8>,
    overflow: bool,
}

/// Passes reads through, keeping a copy of what the crate reads while `on` (headers, not data).
struct Tap<'a, R> {
    inner: &'a mut R,
    capture: &'a RefCell<Capture>,
}

impl<R: Read> Read for Tap<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut cap = self.capture.borrow_mut();
        if cap.on {
            if cap.bytes.len() + n > MAX_CAPTURE {
                cap.overflow = true;
                return Err(io::Error::other("extension headers too large"));
            }
            cap.bytes.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

/// Reads every header of the tar stream, up to and including the first end-of-archive block.
///
/// Offsets are counted from the reader's position on entry. The reader is left just after the
/// first zero block; whatever follows (the second zero block, padding) is the caller's to drain.
pub fn read_entries<R: Read>(reader: &mut R) -> Result<Vec<TarEntry>, TarError> {
    let capture = RefCell::new(Capture::default());
    let mut archive = tar::Archive::new(Tap {
        inner: reader,
        capture: &capture,
    });
    let stream_err = |last: &Option<Vec<u8>>, source| TarError::Stream {
        where_: Where(last.as_deref().map(show)),
        source,
    };
    let mut out = Vec::new();
    let mut last: Option<Vec<u8>> = None;
    let mut entries = archive.entries().map_err(|e| stream_err(&last, e))?;
    // Stream position where the bytes captured for the next entry start.
    let mut resume = 0u64;
    loop {
        {
            let mut cap = capture.borrow_mut();
            cap.on = true;
            cap.bytes.clear();
        }
        let next = entries.next();
        let captured = {
            let mut cap = capture.borrow_mut();
            cap.on = false;
            if cap.overflow {
                return Err(TarError::ExtensionTooLarge {
                    where_: Where(last.as_deref().map(show)),
                });
            }
            std::mem::take(&mut cap.bytes)
        };
        let mut entry = match next {
            None => break,
            Some(Err(e)) => {
                // The crate checks sizes and parses GNU sparse maps before handing the entry
                // out; name the entry when its header is sound enough to say which it was.
                return Err(match failed_entry(&captured, resume) {
                    Some((entry, b'S', _)) => TarError::Sparse { entry },
                    Some((entry, _, Some(size))) if size > i64::MAX as u64 => {
                        TarError::AbsurdSize { entry, size }
                    }
                    Some((entry, _, _)) => TarError::Header {
                        entry,
                        where_: Where(last.as_deref().map(show)),
                        source: e,
                    },
                    None => stream_err(&last, e),
                });
            }
            Some(Ok(entry)) => entry,
        };
        let ext = Extensions::parse(&captured, resume, entry.raw_header_position(), &last)?;
        let parsed = convert(&entry, &ext)?;
        let size = entry.size();
        let name = ext
            .name
            .clone()
            .unwrap_or_else(|| entry.header().path_bytes().into_owned());
        let got = io::copy(&mut entry, &mut io::sink()).map_err(|source| TarError::Data {
            entry: show(&name),
            source,
        })?;
        if got < size {
            return Err(TarError::Truncated {
                entry: show(&name),
                expected: size,
                got,
            });
        }
        resume = entry.raw_file_position() + size;
        last = Some(name);
        out.extend(parsed);
    }
    Ok(out)
}

/// What the extension headers (GNU `L`/`K`, PAX `x`) before one entry say.
#[derive(Default)]
struct Extensions {
    name: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    pax: PaxRecords,
}

/// (key, value) in the order written.
type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

impl Extensions {
    /// Walks the extension headers the crate read between `start` and the entry's header.
    fn parse(
        captured: &[u8],
        start: u64,
        header_pos: u64,
        last: &Option<Vec<u8>>,
    ) -> Result<Extensions, TarError> {
        let broken = |reason: &str| TarError::BadExtension {
            where_: Where(last.as_deref().map(show)),
            reason: reason.to_string(),
        };
        let mut ext = Extensions::default();
        let mut pos = start.div_ceil(BLOCK) * BLOCK;
        let mut long_name = None;
        let mut long_link = None;
        while pos < header_pos {
            let at = (pos - start) as usize;
            let block = captured
                .get(at..at + BLOCK as usize)
                .ok_or_else(|| broken("extension headers do not line up"))?;
            let mut header = tar::Header::new_old();
            header.as_mut_bytes().copy_from_slice(block);
            let size = header
                .entry_size()
                .map_err(|e| broken(&format!("extension header: {e}")))?;
            if size > MAX_SPECIAL {
                return Err(broken("extension header larger than 1 MiB"));
            }
            let data = captured
                .get(at + BLOCK as usize..at + (BLOCK + size) as usize)
                .ok_or_else(|| broken("extension header data cut short"))?;
            match header.as_old().linkflag[0] {
                b'L' => long_name = Some(until_nul(data).to_vec()),
                b'K' => long_link = Some(until_nul(data).to_vec()),
                b'x' => ext.pax = parse_pax(data).map_err(|r| broken(&r))?,
                _ => return Err(broken("unexpected extension header")),
            }
            pos += BLOCK + size.div_ceil(BLOCK) * BLOCK;
        }
        // Go's reader (and so umoci) lets a GNU long name win over a PAX path.
        ext.name = long_name.or_else(|| ext.pax_value(b"path").map(<[u8]>::to_vec));
        ext.link = long_link.or_else(|| ext.pax_value(b"linkpath").map(<[u8]>::to_vec));
        Ok(ext)
    }

    /// The last record with this key (later records override earlier ones).
    fn pax_value(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

/// Name, type flag and size field of the entry whose headers (extension headers first) were
/// captured before the crate gave up on it; `None` unless its header has a valid checksum.
fn failed_entry(captured: &[u8], start: u64) -> Option<(String, u8, Option<u64>)> {
    let block_len = BLOCK as usize;
    let mut at = (start.div_ceil(BLOCK) * BLOCK - start) as usize;
    let mut long_name = None;
    let mut pax_name = None;
    loop {
        let block = captured.get(at..at + block_len)?;
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(block);
        if !checksum_ok(&header) {
            return None;
        }
        let flag = header.as_old().linkflag[0];
        if !matches!(flag, b'L' | b'K' | b'x') {
            let name = long_name
                .or(pax_name)
                .unwrap_or_else(|| header.path_bytes().into_owned());
            return Some((show(&name), flag, header.entry_size().ok()));
        }
        let size = usize::try_from(header.entry_size().ok()?.min(MAX_SPECIAL)).ok()?;
        let data = captured.get(at + block_len..at + block_len + size)?;
        match flag {
            b'L' => long_name = Some(until_nul(data).to_vec()),
            b'x' => {
                pax_name = parse_pax(data)
                    .ok()?
                    .into_iter()
                    .rev()
                    .find(|(k, _)| k == b"path")
                    .map(|(_, v)| v);
            }
            _ => {}
        }
        at += block_len + size.div_ceil(block_len) * block_len;
    }
}

/// Whether a header block's checksum field matches its bytes (the field counted as spaces).
fn checksum_ok(header: &tar::Header) -> bool {
    let sum: u32 = header
        .as_bytes()
        .iter()
        .enumerate()
        .map(|(i, &b)| u32::from(if (148..156).contains(&i) { b' ' } else { b }))
        .sum();
    header.cksum().is_ok_and(|stored| stored == sum)
}

fn until_nul(data: &[u8]) -> &[u8] {
    data.iter()
        .position(|&b| b == 0)
        .map_or(data, |end| &data[..end])
}

/// PAX records: `<len> <key>=<value>\n`, where `len` counts the whole record.
fn parse_pax(mut data: &[u8]) -> Result<PaxRecords, String> {
    let mut records = Vec::new();
    while !data.is_empty() {
        let bad = || "malformed PAX record".to_string();
        let space = data.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        records.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(records)
}

/// Seconds with an optional fraction, possibly negative (PAX `mtime`).
fn parse_pax_time(value: &[u8]) -> Option<Mtime> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(frac) {
        return None;
    }
    let sec: i64 = whole.parse().ok()?;
    let mut nsec: u32 = 0;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    if !negative {
        return Some(Mtime { sec, nsec });
    }
    // -1.25 is 1.25 s before the epoch: sec -2, nsec 750_000_000.
    Some(if nsec == 0 {
        Mtime { sec: -sec, nsec }
    } else {
        Mtime {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        }
    })
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

fn convert<R: Read>(
    entry: &tar::Entry<'_, R>,
    ext: &Extensions,
) -> Result<Option<TarEntry>, TarError> {
    let header = entry.header();
    let raw_name = ext
        .name
        .clone()
        .unwrap_or_else(|| header.path_bytes().into_owned());
    let entry_name = show(&raw_name);
    let malformed = |reason: String| TarError::Malformed {
        entry: entry_name.clone(),
        reason,
    };
    let field = |what: &str, e: io::Error| malformed(format!("bad {what} field: {e}"));
    let typeflag = header.as_old().linkflag[0];

    if ext.pax.iter().any(|(k, _)| k.starts_with(b"GNU.sparse.")) || typeflag == b'S' {
        return Err(TarError::Sparse { entry: entry_name });
    }
    if typeflag == b'g' {
        // PAX global headers carry defaults that OCI unpackers ignore.
        return Ok(None);
    }
    if raw_name.contains(&0) {
        return Err(malformed("name contains a NUL byte".into()));
    }
    if raw_name.is_empty() {
        return Err(malformed("empty name".into()));
    }
    let path = normalize(&raw_name).ok_or_else(|| TarError::Climbs {
        entry: entry_name.clone(),
    })?;

    // The crate positions the stream by its own reading of the PAX size; it must agree with ours.
    let size = match ext.pax_value(b"size") {
        Some(v) => parse_decimal(v).ok_or_else(|| malformed("bad PAX size".into()))?,
        None => header.entry_size().map_err(|e| field("size", e))?,
    };
    if size != entry.size() {
        return Err(malformed(format!(
            "ambiguous size ({size} or {})",
            entry.size()
        )));
    }
    if size > i64::MAX as u64 || entry.raw_file_position().checked_add(size).is_none() {
        return Err(TarError::AbsurdSize {
            entry: entry_name,
            size,
        });
    }

    let id = |key: &[u8], what: &str, from_header: io::Result<u64>| -> Result<u32, TarError> {
        let value = match ext.pax_value(key) {
            Some(v) => parse_decimal(v).ok_or_else(|| malformed(format!("bad PAX {what}")))?,
            None => from_header.map_err(|e| field(what, e))?,
        };
        u32::try_from(value).map_err(|_| malformed(format!("{what} {value} out of range")))
    };
    let old = header.as_old();
    let uid = id(b"uid", "uid", numeric(&old.uid, || header.uid()))?;
    let gid = id(b"gid", "gid", numeric(&old.gid, || header.gid()))?;
    let mtime = match ext.pax_value(b"mtime") {
        Some(v) => parse_pax_time(v).ok_or_else(|| malformed("bad PAX mtime".into()))?,
        None => {
            let sec = numeric(&old.mtime, || header.mtime()).map_err(|e| field("mtime", e))?;
            Mtime {
                sec: i64::try_from(sec).map_err(|_| malformed("mtime out of range".into()))?,
                nsec: 0,
            }
        }
    };
    let mode = numeric(&old.mode, || header.mode().map(u64::from)).map_err(|e| field("mode", e))?
        as u32
        & 0o7777;

    let link = || -> Result<Vec<u8>, TarError> {
        let target = ext
            .link
            .clone()
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()))
            .unwrap_or_default();
        if target.is_empty() || target.contains(&0) {
            return Err(malformed("empty or NUL-holding link target".into()));
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
        let num = |raw: &[u8; 8], read: fn(&tar::Header) -> io::Result<Option<u32>>| {
            numeric(raw, || read(header).map(|v| u64::from(v.unwrap_or(0))))
                .map_err(|e| field("device", e))
                .map(|v| v as u32)
        };
        Ok((
            num(major, tar::Header::device_major)?,
            num(minor, tar::Header::device_minor)?,
        ))
    };
    let kind = match typeflag {
        b'0' => EntryKind::File {
            offset: entry.raw_file_position(),
            size,
        },
        // Old tars mark directories by a trailing slash on a regular entry (as Go reads them).
        b'\0' if raw_name.ends_with(b"/") => EntryKind::Dir,
        b'\0' => EntryKind::File {
            offset: entry.raw_file_position(),
            size,
        },
        b'5' => EntryKind::Dir,
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
    // Go's reader skips no data after header-only entries while the crate skips `size` bytes:
    // such an entry would mean two different layers, so refuse it.
    if size != 0 && !matches!(kind, EntryKind::File { .. }) {
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
    Ok(Some(TarEntry {
        path,
        kind,
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    }))
}

/// A numeric header field; blank (all NUL or space) reads as 0, as Go's reader has it.
fn numeric(raw: &[u8], parse: impl FnOnce() -> io::Result<u64>) -> io::Result<u64> {
    if raw.iter().all(|&b| b == 0 || b == b' ') {
        Ok(0)
    } else {
        parse()
    }
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
#[path = "tar_tests.rs"]
mod tests;
