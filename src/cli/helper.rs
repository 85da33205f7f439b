//! `mount -t fuse.lazypull REF DIR -o OPTIONS`, and /etc/fstab lines of that
//! type: mount(8) runs `mount.fuse.lazypull REF DIR [-sfnv] [-o OPTIONS]`.
//! Installed as a link of that name to lazypull, the arguments become those
//! of `lazypull mount`.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use anyhow::bail;

/// The name mount(8) looks for (in /sbin) for the type `fuse.lazypull`.
pub const HELPER_NAME: &str = "mount.fuse.lazypull";

/// Whether this process was started as the mount helper.
pub fn invoked_as_helper(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name() == Some(OsStr::new(HELPER_NAME))
}

/// mount(8)'s options that mean nothing to a read-only FUSE image (or that
/// mount(8) itself acts on), accepted and dropped.
const IGNORED: &[&str] = &[
    "ro",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "exec",
    "noexec",
    // The defaults: `suid` and `dev` are lazypull's own options.
    "nosuid",
    "nodev",
    "async",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "diratime",
    "nodiratime",
    "lazytime",
    "silent",
    "loud",
];

/// The `lazypull` argument vector (program name first) for the helper's
/// `SOURCE DIR [-sfnv] [-o OPTIONS] [-t TYPE]`; `None` when `-f` asks to
/// do nothing.
pub fn translate(args: &[OsString]) -> anyhow::Result<Option<Vec<OsString>>> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let (mut sloppy, mut fake, mut verbose) = (false, false, false);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.to_str() {
            Some("-o") => match it.next().and_then(|o| o.to_str()) {
                Some(o) => options.extend(o.split(',').filter(|o| !o.is_empty())),
                None => bail!("-o needs a list of options"),
            },
            // The type is ours by definition of this program's name.
            Some("-t") => {
                it.next();
            }
            Some(flags) if flags.starts_with('-') && flags.len() > 1 => {
                for flag in flags[1..].chars() {
                    match flag {
                        's' => sloppy = true,
                        'f' => fake = true,
                        'v' => verbose = true,
                        // No /etc/mtab to skip writing.
                        'n' => {}
                        other => bail!("{HELPER_NAME}: unknown flag -{other}"),
                    }
                }
            }
            _ => positional.push(arg.clone()),
        }
    }
    let [source, dir] = <[OsString; 2]>::try_from(positional)
        .map_err(|_| anyhow::anyhow!("usage: {HELPER_NAME} REFERENCE MOUNTPOINT [-o OPTIONS]"))?;
    if fake {
        return Ok(None);
    }
    let mut argv: Vec<OsString> = vec!["lazypull".into(), "mount".into()];
    if verbose {
        argv.push("-v".into());
    }
    for option in options {
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option, None),
        };
        match (key.replace('_', "-").as_str(), value) {
            ("rw", _) => bail!("lazypull mounts are read-only: drop `rw` from the options"),
            ("cache-dir" | "platform" | "timeout" | "retries" | "memory-cache", Some(v)) => {
                argv.push(format!("--{}={v}", key.replace('_', "-")).into());
            }
            ("insecure" | "allow-other" | "no-prefetch" | "suid" | "dev", None) => {
                argv.push(format!("--{}", key.replace('_', "-")).into());
            }
            _ if IGNORED.contains(&key) || key.starts_with("x-") || key == "comment" => {}
            _ if sloppy => {}
            _ => bail!(
                "unknown mount option `{option}` (lazypull takes cache-dir=DIR, platform=P, \
                 timeout=S, retries=N, memory-cache=MIB, insecure, allow_other, no-prefetch, \
                 suid, dev)"
            ),
        }
    }
    argv.push("--".into());
    argv.push(source);
    argv.push(dir);
    Ok(Some(argv))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split(' ').map(OsString::from).collect()
    }

    fn translated(s: &str) -> Vec<String> {
        translate(&args(s))
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn fstab_options_become_mount_flags() {
        assert_eq!(
            translated(
                "reg:5000/app:1.4 /mnt -o ro,nosuid,_netdev,cache-dir=/var/cache/lp,allow_other,x-systemd.automount,platform=linux/arm64"
            ),
            [
                "lazypull",
                "mount",
                "--cache-dir=/var/cache/lp",
                "--allow-other",
                "--platform=linux/arm64",
                "--",
                "reg:5000/app:1.4",
                "/mnt"
            ]
        );
        assert_eq!(
            translated("-nv app /mnt"),
            ["lazypull", "mount", "-v", "--", "app", "/mnt"]
        );
        // Setuid programs and device files only when asked for.
        assert_eq!(
            translated("app /mnt -o suid,dev"),
            ["lazypull", "mount", "--suid", "--dev", "--", "app", "/mnt"]
        );
    }

    #[test]
    fn rw_unknown_options_and_missing_arguments_are_refused() {
        let err = |s: &str| translate(&args(s)).unwrap_err().to_string();
        assert!(err("app /mnt -o rw").contains("read-only"));
        assert!(err("app /mnt -o color=blue").contains("unknown mount option `color=blue`"));
        assert!(err("app").contains("usage"));
        assert!(translate(&args("-s app /mnt -o color=blue")).is_ok());
        assert!(translate(&args("-f app /mnt")).unwrap().is_none());
    }
}
