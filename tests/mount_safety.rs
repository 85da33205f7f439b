//! What a mount must refuse or contain: an image's setuid programs and device files (no
//! local root from a registry), a second mount on the same directory, a cache directory
//! inside the mount point; and the messages for a FUSE device that is missing or cannot
//! be opened and for unmounting what is not a lazypull mount. Real mounts, needs root.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::image::{self, Compression, ImageSpec};
use common::mount::{Run, Sandbox, is_mounted, mounts_at};
use common::registry::{TestRegistry, Variant};
use common::setuid::{NOBODY, as_nobody, euid_program, public_dir};
use common::tarball::TarBuilder;

/// An image holding `bin/euid`, setuid root, and `dev/zero`, a device node.
fn hostile_image(reg: &TestRegistry) -> String {
    let tar = TarBuilder::new()
        .dir("bin", 0o755)
        .file("bin/euid", euid_program(), 0o4755)
        .dir("dev", 0o755)
        .char_device("dev/zero", 1, 5, 0o666)
        .file("hello", "hello\n", 0o644)
        .build();
    image::push_image(
        reg,
        "test/rootsh",
        "v1",
        &ImageSpec::new(vec![(tar, Compression::Gzip)]),
    );
    format!("{}/test/rootsh:v1", reg.host())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

/// Runs `cmd`, killing it (and failing the test) if it takes longer than a minute: a mount
/// that deadlocks must fail the test, not hang it.
fn run_within_a_minute(mut cmd: Command) -> Run {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{cmd:?} still runs after a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Run {
        success: out.status.success(),
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
    }
}

#[test]
fn setuid_programs_and_devices_of_an_image_work_only_with_suid_and_dev() {
    let reg = TestRegistry::start(Variant::Plain);
    let reference = hostile_image(&reg);
    let sandbox = Sandbox::new();
    let public = public_dir();
    let mountpoint = public.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();

    // The README's fstab line: allow_other, so every local user reaches the mount.
    let mount = sandbox.mount_at(&mountpoint, &reference, &["--allow-other"]);
    let options = mounts_at(&mountpoint);
    assert_eq!(options.len(), 1, "{options:?}");
    for option in ["ro", "nosuid", "nodev"] {
        assert!(options[0].split(',').any(|o| o == option), "{options:?}");
    }
    let out = as_nobody(&mount.join("bin/euid"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        NOBODY.to_string(),
        "the image's setuid-root program gave nobody root"
    );
    let err = fs::read(mount.join("dev/zero")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    assert_eq!(fs::read(mount.join("hello")).unwrap(), b"hello\n");
    mount.umount();

    // Asked for, for a trusted image: both work.
    let mount = sandbox.mount_at(
        &mountpoint,
        &reference,
        &["--allow-other", "--suid", "--dev"],
    );
    let options = mounts_at(&mountpoint);
    assert!(
        !options[0].contains("nosuid") && !options[0].contains("nodev"),
        "{options:?}"
    );
    let out = as_nobody(&mount.join("bin/euid"), &[]);
    assert_eq!(text(&out.stdout), "0", "{}", text(&out.stderr));
    let mut zeros = [1u8; 16];
    use std::io::Read;
    fs::File::open(mount.join("dev/zero"))
        .unwrap()
        .read_exact(&mut zeros)
        .unwrap();
    assert_eq!(zeros, [0u8; 16]);
    mount.umount();
}

#[test]
fn a_second_mount_on_the_same_directory_is_refused() {
    let reg = TestRegistry::start(Variant::Plain);
    let reference = hostile_image(&reg);
    let sandbox = Sandbox::new();
    let mount = sandbox.mount(&reference, &[]);
    let path = mount.path().to_str().unwrap().to_string();
    let cache = sandbox.cache();
    let run = sandbox.run(&[
        "mount",
        "--cache-dir",
        cache.to_str().unwrap(),
        &reference,
        &path,
    ]);
    let stacked = mounts_at(mount.path()).len();
    assert!(!run.success, "the second mount succeeded: {}", run.stdout);
    assert!(
        run.stderr.contains(&format!(
            "{path} is already a lazypull mount (of {reference})"
        )) && run.stderr.contains(&format!("lazypull umount {path}")),
        "{}",
        run.stderr
    );
    assert_eq!(stacked, 1, "two mounts stacked on {path}");
    assert_eq!(fs::read(mount.join("hello")).unwrap(), b"hello\n");

    mount.umount();

    // Also when its daemon died: a mount point nothing stat'ed while the daemon lived
    // cannot be stat'ed at all.
    let dead = sandbox.mount_at(&sandbox.mountpoint("dead"), &reference, &[]);
    dead.kill();
    let dead_path = dead.path().to_str().unwrap();
    let run = sandbox.run(&[
        "mount",
        "--cache-dir",
        cache.to_str().unwrap(),
        &reference,
        dead_path,
    ]);
    assert!(!run.success, "mounted over a dead mount: {}", run.stdout);
    assert!(
        run.stderr.contains(&format!(
            "{dead_path} is already a lazypull mount (of {reference}): run `lazypull umount \
             {dead_path}`"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(mounts_at(dead.path()).len(), 1);
    dead.umount();
}

#[test]
fn a_cache_directory_inside_the_mount_point_is_refused_before_mounting() {
    let reg = TestRegistry::start(Variant::Plain);
    let reference = hostile_image(&reg);
    let sandbox = Sandbox::new();
    let mountpoint = sandbox.mountpoint("mnt");
    let link = mountpoint.parent().unwrap().join("link");
    std::os::unix::fs::symlink(&mountpoint, &link).unwrap();
    let mnt = mountpoint.to_str().unwrap();

    // Inside, not there yet; then through a symlink to the mount point, two levels deep.
    for cache in [mountpoint.join("cache"), link.join("new/cache")] {
        let mut cmd = sandbox.command(&["mount", "--cache-dir", cache.to_str().unwrap()]);
        cmd.args([&reference, mnt]);
        let run = run_within_a_minute(cmd);
        let mounted = is_mounted(&mountpoint);
        assert!(
            !run.success && !mounted,
            "mounted with the cache at {cache:?}"
        );
        let named = if cache.starts_with(&link) {
            format!("{} (that is {mnt}/new/cache)", cache.display())
        } else {
            cache.display().to_string()
        };
        assert!(
            run.stderr.contains(&format!(
                "the cache directory {named} is inside the mount point {mnt}"
            )),
            "{}",
            run.stderr
        );
        assert_eq!(
            fs::read_dir(&mountpoint).unwrap().count(),
            0,
            "nothing is created"
        );
    }

    // The default cache directory, as when mounting on /var with /var/lib/lazypull.
    let mut cmd = sandbox.command(&["mount", &reference, mnt]);
    cmd.env("LAZYPULL_CACHE", mountpoint.join("lib/lazypull"));
    let run = run_within_a_minute(cmd);
    assert!(!run.success && !is_mounted(&mountpoint));
    assert!(
        run.stderr.contains(&format!(
            "the default cache directory {mnt}/lib/lazypull is inside the mount point {mnt}"
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn umount_says_when_there_is_no_lazypull_mount() {
    let sandbox = Sandbox::new();
    let dir = sandbox.mountpoint("plain");
    let run = sandbox.run(&["umount", dir.to_str().unwrap()]);
    assert!(!run.success);
    assert_eq!(
        run.stderr.trim(),
        format!(
            "lazypull: error: {} is not mounted: nothing to unmount",
            dir.display()
        )
    );

    // Someone else's mount is left alone (a namespace of its own drops it afterwards).
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs lazypull-test "$1" && exec "$2" umount "$1""#)
        .args(["sh", dir.to_str().unwrap(), env!("CARGO_BIN_EXE_lazypull")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!(
            "{} is a tmpfs mount, not a lazypull mount: unmount it with umount(8)",
            dir.display()
        )),
        "{}",
        text(&out.stderr)
    );
}

/// `lazypull mount` in a mount namespace of its own where `setup` (a shell script, given
/// the scratch directory as $1) first changes /dev.
fn mount_with_dev(setup: &str, sandbox: &Sandbox, reference: &str, mountpoint: &Path) -> Run {
    let scratch = tempfile::tempdir().unwrap();
    let cache = sandbox.cache();
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-ec"])
        .arg(format!("{setup}\nshift; exec \"$@\""))
        .arg("sh")
        .arg(scratch.path())
        .arg(env!("CARGO_BIN_EXE_lazypull"))
        .args(["mount", "--cache-dir", cache.to_str().unwrap(), reference])
        .arg(mountpoint);
    let run = run_within_a_minute(cmd);
    assert!(!is_mounted(mountpoint));
    run
}

#[test]
fn a_missing_or_unusable_fuse_device_is_named() {
    let reg = TestRegistry::start(Variant::Plain);
    let reference = hostile_image(&reg);
    let sandbox = Sandbox::new();
    let mountpoint = sandbox.mountpoint("mnt");

    // A /dev with nothing but /dev/null, as in a container not given /dev/fuse.
    let hide = r#"mkdir "$1/dev"; touch "$1/dev/null"; mount --bind /dev/null "$1/dev/null"
                  mount --rbind "$1/dev" /dev"#;
    let run = mount_with_dev(hide, &sandbox, &reference, &mountpoint);
    assert!(!run.success);
    assert!(
        run.stderr.starts_with(
            "lazypull: error: there is no FUSE device /dev/fuse: load the kernel module"
        ),
        "{}",
        run.stderr
    );

    // The device on a nodev filesystem: opening it is denied, even to root.
    let deny = r#"mkdir "$1/nodev"; mount -t tmpfs -o nodev lazypull-test "$1/nodev"
                  mknod -m 666 "$1/nodev/fuse" c 10 229; mount --bind "$1/nodev/fuse" /dev/fuse"#;
    let run = mount_with_dev(deny, &sandbox, &reference, &mountpoint);
    assert!(!run.success);
    assert!(
        run.stderr.starts_with(
            "lazypull: error: cannot open the FUSE device /dev/fuse: Permission denied"
        ),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr
            .contains(&format!("mounting on {}", mountpoint.display())),
        "the mount point is not to blame: {}",
        run.stderr
    );
}

#[test]
fn a_user_mounts_reads_and_unmounts_through_fusermount3() {
    let reg = TestRegistry::start(Variant::Plain);
    let reference = hostile_image(&reg);
    let public = public_dir();
    let [mnt, cache, home, dev] = ["mnt", "cache", "home", "dev"].map(|d| public.path().join(d));
    for dir in [&mnt, &cache, &home] {
        fs::create_dir(dir).unwrap();
        std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    fs::create_dir(&dev).unwrap();
    // This machine's /dev/fuse may be root's only: in a mount namespace of its own, nobody
    // gets one it may open, as a stock Debian has it (0666).
    let script = r#"
        mount -t tmpfs -o mode=755 lazypull-dev "$DEV"
        mknod -m 666 "$DEV/fuse" c 10 229
        mount --bind "$DEV/fuse" /dev/fuse
        user() { setpriv --reuid=65534 --regid=65534 --clear-groups env HOME="$HOME_DIR" "$@"; }
        if user "$LP" mount --suid --cache-dir "$CACHE" "$REF" "$MNT" 2>&1; then echo "suid: mounted"; fi
        user "$LP" mount --cache-dir "$CACHE" "$REF" "$MNT"
        echo "hello: $(user cat "$MNT/hello")"
        echo "euid: $(user "$MNT/bin/euid")"
        echo "options: $(awk -v m="$MNT" '$5 == m {print $6}' /proc/self/mountinfo)"
        user "$LP" status "$MNT" >/dev/null && echo "status: ok"
        user "$LP" umount "$MNT"
        echo "mounts after umount: $(awk -v m="$MNT" '$5 == m' /proc/self/mountinfo | wc -l)"
    "#;
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-ec", script])
        .env("LP", env!("CARGO_BIN_EXE_lazypull"))
        .env("REF", &reference)
        .env("MNT", &mnt)
        .env("CACHE", &cache)
        .env("HOME_DIR", &home)
        .env("DEV", &dev);
    let run = run_within_a_minute(cmd);
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| !l.starts_with("mounted "))
        .collect();
    assert_eq!(
        lines,
        [
            "lazypull: error: --suid needs root (fusermount3 mounts for other users only with \
             nosuid and nodev)",
            "hello: hello",
            &format!("euid: {NOBODY}"),
            "options: ro,nosuid,nodev,relatime",
            "status: ok",
            "mounts after umount: 0",
        ],
        "{}",
        run.stderr
    );
}
