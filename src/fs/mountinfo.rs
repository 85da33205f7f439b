//! What is mounted where, from `/proc/self/mountinfo`: the mount a path
//! shows (the top of a stack of mounts on it), with its type and device.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    id: u64,
    parent: u64,
    /// The filesystem's device (`major:minor`): each FUSE session has its own.
    pub device: (u32, u32),
    pub mountpoint: PathBuf,
    /// `fuse.lazypull` for ours.
    pub fstype: String,
    /// What was mounted: the image reference for ours.
    pub source: String,
    /// The per-mount options (`ro,nosuid,nodev,relatime`).
    pub options: String,
}

impl MountEntry {
    pub fn has_option(&self, option: &str) -> bool {
        self.options.split(',').any(|o| o == option)
    }
}

/// The mount `path` (canonical) shows in this mount namespace, if it is a
/// mount point: of several mounts stacked on it, the one on top.
pub fn top_mount(path: &Path) -> io::Result<Option<MountEntry>> {
    let text = std::fs::read("/proc/self/mountinfo")?;
    Ok(top_of(&parse(&text), path).cloned())
}

fn top_of<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    let stack: Vec<&MountEntry> = entries.iter().filter(|e| e.mountpoint == path).collect();
    // The top is the one no other mount on the same path sits on.
    stack
        .iter()
        .find(|e| !stack.iter().any(|other| other.parent == e.id))
        .copied()
}

fn parse(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

/// `36 35 98:0 /root /mnt rw,noatime shared:1 - ext3 /dev/root rw`
fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let text = |b: &[u8]| String::from_utf8_lossy(&unescape(b)).into_owned();
    let separator = fields.iter().position(|f| *f == b"-")?;
    let (major, minor) = std::str::from_utf8(fields.get(2)?).ok()?.split_once(':')?;
    Some(MountEntry {
        id: std::str::from_utf8(fields.first()?).ok()?.parse().ok()?,
        parent: std::str::from_utf8(fields.get(1)?).ok()?.parse().ok()?,
        device: (major.parse().ok()?, minor.parse().ok()?),
        mountpoint: PathBuf::from(OsString::from_vec(unescape(fields.get(4)?))),
        options: text(fields.get(5)?),
        fstype: text(fields.get(separator + 1)?),
        source: text(fields.get(separator + 2)?),
    })
}

/// The kernel writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// `path` made absolute and free of symlinks, also when it is the mount
/// point of a FUSE filesystem whose daemon died (which cannot be stat'ed):
/// then its parent is resolved and its name kept.
pub fn canonical(path: &Path) -> io::Result<PathBuf> {
    match path.canonicalize() {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => {
            let absolute = std::path::absolute(path)?;
            match (absolute.parent(), absolute.file_name()) {
                (Some(parent), Some(name)) => Ok(parent.canonicalize()?.join(name)),
                _ => Err(e),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &[u8] = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
        40 22 0:51 / /mnt/my\\040dir rw,nosuid,nodev,relatime shared:20 - fuse.lazypull reg:5000/app:1 ro,user_id=0\n\
        41 40 0:52 / /mnt/my\\040dir ro,nosuid,nodev,relatime - fuse.lazypull reg:5000/app:2 ro\n\
        42 22 0:53 / /tmp rw master:3 - tmpfs tmpfs rw\n";

    #[test]
    fn the_top_of_a_stack_is_the_mount_nothing_sits_on() {
        let entries = parse(INFO);
        assert_eq!(entries.len(), 4);
        let top = top_of(&entries, Path::new("/mnt/my dir")).unwrap();
        assert_eq!(top.device, (0, 52));
        assert_eq!(top.source, "reg:5000/app:2");
        assert_eq!(top.fstype, "fuse.lazypull");
        assert!(top.has_option("nosuid") && top.has_option("ro") && !top.has_option("rw"));
        let tmp = top_of(&entries, Path::new("/tmp")).unwrap();
        assert_eq!((tmp.fstype.as_str(), tmp.device), ("tmpfs", (0, 53)));
        assert!(top_of(&entries, Path::new("/mnt")).is_none());
    }

    #[test]
    fn escapes_are_undone_and_bad_lines_skipped() {
        assert_eq!(unescape(b"a\\040b\\134c\\011"), b"a b\\c\t");
        assert_eq!(unescape(b"trailing\\04"), b"trailing\\04");
        assert!(parse(b"garbage line\n\n1 2 x:y / / rw - ext4 a b\n").is_empty());
    }

    #[test]
    fn this_process_sees_its_root_and_proc() {
        assert!(top_mount(Path::new("/")).unwrap().is_some());
        let proc = top_mount(Path::new("/proc")).unwrap().unwrap();
        assert_eq!(proc.fstype, "proc");
        assert_eq!(
            canonical(Path::new("/proc/../proc")).unwrap(),
            Path::new("/proc")
        );
    }
}
