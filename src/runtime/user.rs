//! The image's `User` turned into ids, the way docker does it: a name or a
//! number, optionally `:group`, names looked up in the image's own
//! `/etc/passwd` and `/etc/group` (never the host's).

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use super::RuntimeError;

/// Largest `/etc/passwd` or `/etc/group` we read: a hostile image must not
/// make us load gigabytes.
const MAX_DB_SIZE: u64 = 4 << 20;

/// Who the container's process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the groups of `/etc/group` that list the user.
    pub additional_gids: Vec<u32>,
    /// The user's home from `/etc/passwd`, else `/`.
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// Lines that do not parse are skipped, as libc and docker skip them.
fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0],
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields[5],
            })
        })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: fields[0],
                gid: fields[2].parse().ok()?,
                members: fields[3].split(',').filter(|m| !m.is_empty()).collect(),
            })
        })
}

/// Resolves a `User` value (`""`, `name`, `uid`, `uid:gid`, `name:group`, …)
/// against the image's passwd and group files (`None`: the image has none).
/// A name that is not found is an error; a number that is not found is used
/// as it is, with gid 0 unless a group is given.
pub fn resolve_user(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ExecUser, RuntimeError> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // An empty user is root, as docker has it.
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let uid_number = parse_id(user, user_part)?;
    let found = passwd
        .into_iter()
        .flat_map(passwd_entries)
        .find(|e| e.name == user_part || (uid_number.is_some() && Some(e.uid) == uid_number));
    let mut exec = match (&found, uid_number) {
        (Some(e), _) => ExecUser {
            uid: e.uid,
            gid: e.gid,
            additional_gids: Vec::new(),
            home: e.home.to_string(),
        },
        (None, Some(uid)) => ExecUser {
            uid,
            gid: 0,
            additional_gids: Vec::new(),
            home: "/".to_string(),
        },
        (None, None) => {
            return Err(RuntimeError::UserNotFound {
                user: user_part.to_string(),
                no_passwd: passwd.is_none(),
            });
        }
    };
    if exec.home.is_empty() {
        exec.home = "/".to_string();
    }
    match group_part {
        Some("") => {
            return Err(RuntimeError::BadUser {
                user: user.to_string(),
                reason: "the group after ':' is empty".to_string(),
            });
        }
        Some(g) => {
            let gid_number = parse_id(user, g)?;
            let entry = group
                .into_iter()
                .flat_map(group_entries)
                .find(|e| e.name == g || (gid_number.is_some() && Some(e.gid) == gid_number));
            exec.gid = match (entry, gid_number) {
                (Some(e), _) => e.gid,
                (None, Some(gid)) => gid,
                (None, None) => {
                    return Err(RuntimeError::GroupNotFound {
                        group: g.to_string(),
                        no_group: group.is_none(),
                    });
                }
            };
        }
        // Supplementary groups only for a user known by name and no group
        // given: an explicit group replaces them, as in docker.
        None => {
            if let Some(e) = &found {
                let mut gids: Vec<u32> = group
                    .into_iter()
                    .flat_map(group_entries)
                    .filter(|g| g.members.contains(&e.name))
                    .map(|g| g.gid)
                    .collect();
                gids.sort_unstable();
                gids.dedup();
                exec.additional_gids = gids;
            }
        }
    }
    Ok(exec)
}

/// `Some(n)` for a decimal id, `None` for a name; an id past `u32` (or a
/// negative one) is an error rather than a name.
fn parse_id(user: &str, part: &str) -> Result<Option<u32>, RuntimeError> {
    let digits = part.strip_prefix('-').unwrap_or(part);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match part.parse::<u32>() {
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(RuntimeError::BadUser {
            user: user.to_string(),
            reason: format!("{part} is not a valid id (0 to {})", u32::MAX),
        }),
    }
}

/// Reads the image's `/etc/passwd` and `/etc/group` under `rootfs` and
/// resolves `user` against them.
pub fn resolve_user_in(rootfs: &Path, user: &str) -> Result<ExecUser, RuntimeError> {
    let passwd = read_in_root(rootfs, "etc/passwd")?;
    let group = read_in_root(rootfs, "etc/group")?;
    resolve_user(user, passwd.as_deref(), group.as_deref())
}

/// Reads a file of the image as text, resolving symlinks inside `root`
/// (an image's `/etc/passwd -> /x` must not read the host's `/x`).
/// `None` when it does not exist.
pub fn read_in_root(root: &Path, path: &str) -> Result<Option<String>, RuntimeError> {
    let err = |source: std::io::Error| RuntimeError::ReadImageFile {
        path: format!("/{path}"),
        source,
    };
    let root_file = File::open(root).map_err(err)?;
    let c_path = CString::new(path.as_bytes())
        .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: open_how is plain integers, for which all zeroes is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: the descriptor, the path and `how` are valid for the call;
    // openat2 reads `size_of::<open_how>()` bytes of `how`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&root_file),
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(None),
            _ => Err(err(e)),
        };
    }
    let fd =
        i32::try_from(fd).map_err(|_| err(std::io::Error::other("descriptor out of range")))?;
    // SAFETY: openat2 just returned this descriptor and nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut bytes = Vec::new();
    file.take(MAX_DB_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > MAX_DB_SIZE {
        return Err(err(std::io::Error::other(format!(
            "larger than {MAX_DB_SIZE} bytes"
        ))));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          # a comment\n\
                          broken line\n\
                          app:x:1234:2345:App:/home/app:/bin/sh\n\
                          nohome:x:99:99::::\n";
    const GROUP: &str = "root:x:0:\n\
                         app:x:2345:\n\
                         staff:x:50:app,other\n\
                         wheel:x:10:app\n";

    fn resolve(user: &str) -> Result<ExecUser, RuntimeError> {
        resolve_user(user, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn empty_user_is_root_with_roots_home() {
        let u = resolve("").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn name_takes_ids_home_and_supplementary_groups() {
        let u = resolve("app").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1234, 2345, "/home/app"));
        assert_eq!(u.additional_gids, vec![10, 50]);
    }

    #[test]
    fn numeric_uid_found_or_not() {
        let u = resolve("1234").unwrap();
        assert_eq!((u.uid, u.gid), (1234, 2345));
        let u = resolve("4242").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        assert!(u.additional_gids.is_empty());
    }

    #[test]
    fn explicit_group_by_number_or_name_replaces_supplementary_groups() {
        let u = resolve("app:staff").unwrap();
        assert_eq!((u.uid, u.gid), (1234, 50));
        assert!(u.additional_gids.is_empty());
        let u = resolve("1000:777").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 777));
        let u = resolve("0:wheel").unwrap();
        assert_eq!((u.uid, u.gid), (0, 10));
    }

    #[test]
    fn empty_home_becomes_root_dir() {
        assert_eq!(resolve("nohome").unwrap().home, "/");
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let e = resolve("ghost").unwrap_err().to_string();
        assert!(e.contains("ghost") && e.contains("/etc/passwd"), "{e}");
        let e = resolve("app:ghosts").unwrap_err().to_string();
        assert!(e.contains("ghosts") && e.contains("/etc/group"), "{e}");
        let e = resolve_user("app", None, None).unwrap_err().to_string();
        assert!(e.contains("has no /etc/passwd"), "{e}");
        let e = resolve("app:").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = resolve("99999999999").unwrap_err().to_string();
        assert!(e.contains("not a valid id"), "{e}");
    }

    #[test]
    fn reads_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(dir.path().join("outside"), "host secret").unwrap();
        std::fs::write(root.join("inside"), "image file").unwrap();
        // An absolute link resolves against the image's root, not the host's.
        let outside = dir.path().join("outside");
        std::os::unix::fs::symlink(&outside, root.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("/inside", root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../outside", root.join("etc/climb")).unwrap();
        assert_eq!(
            read_in_root(&root, "etc/passwd").unwrap().as_deref(),
            Some("image file")
        );
        assert_eq!(read_in_root(&root, "etc/abs").unwrap(), None);
        assert_eq!(read_in_root(&root, "etc/climb").unwrap(), None);
        assert_eq!(read_in_root(&root, "etc/group").unwrap(), None);
    }
}
