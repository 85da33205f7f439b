//! `lazypull mount` end to end against a real registry and real FUSE: the mounted tree
//! against `umoci unpack` of the same image, lazily and once verified; programs run from
//! a chroot into the mount; what a remount fetches; writes refused.
//!
//! Faults (corruption, a dead registry, a dead daemon, signals) and concurrent cold
//! reads are in `mount_faults.rs`; the prefetch list in `prefetch.rs`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::image::{self, Compression, ImageSpec, PushedImage};
use common::mount::{Sandbox, hold_background, random, states};
use common::proxy::{Fault, FaultProxy, LogEntry};
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;
use common::unpacked::{compare, entry, listing, umoci_reference};
use lazypull::digest::Digest;

/// A file capability (VFS_CAP_REVISION_2, cap_net_raw permitted+effective).
const CAPABILITY: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Three layers that exercise every overlay rule: whiteouts, opaque directories,
/// replacements both ways, hardlinks within and across layers (and a whited-out
/// name), symlinks, devices, a fifo, setuid/setgid/sticky modes, owners and xattrs.
/// The bottom layer holds 256 KiB of random bytes so its download can be slowed down.
fn overlay_image() -> ImageSpec {
    let bottom = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .dir("data", 0o755)
        .file("data/random", random(256 << 10, 1), 0o644)
        .file("base", "base file\n", 0o755)
        .hardlink("base2", "base")
        .file("doomed", "doomed\n", 0o644)
        .hardlink("survivor", "doomed")
        .dir("gone", 0o755)
        .file("gone/a", "a", 0o644)
        .dir("gone/sub", 0o700)
        .file("gone/sub/b", "b", 0o644)
        .file("f", "f", 0o644)
        .dir("opq", 0o755)
        .file("opq/old1", "old1", 0o644)
        .file("opq/old2", "old2", 0o644)
        .dir("fd", 0o755)
        .file("fd/child", "child", 0o644)
        .file("df", "a file first", 0o644)
        .dir("symdir", 0o755)
        .file("symdir/x", "x", 0o644)
        .dir("kept", 0o755)
        .file("kept/x", "x", 0o644)
        .file("kept/y", "y", 0o644)
        .symlink("rel", "etc/passwd")
        .symlink("abs", "/etc/passwd")
        .symlink("dangling", "/nowhere/at/all")
        .dir("dev", 0o755)
        .char_device("dev/null", 1, 3, 0o666)
        .block_device("dev/loop9", 7, 9, 0o660)
        .fifo("dev/fifo", 0o600)
        .file("suid", "s", 0o4755)
        .file("sgid", "g", 0o2711)
        .dir("sticky", 0o1777)
        .xattr("security.capability", CAPABILITY)
        .xattr("user.note", "hello")
        .file("capped", "ping", 0o755)
        .xattr("user.dir", "yes")
        .dir("xd", 0o750)
        .dir("home", 0o755)
        .dir_owned("home/user", 0o750, 1000, 1000)
        .file_owned("home/user/file", "mine\n", 0o640, 1000, 1000)
        .build();
    let middle = TarBuilder::new()
        .whiteout("gone")
        .whiteout("f")
        .opaque("opq")
        .file("opq/new", "new", 0o644)
        .dir("up", 0o755)
        .hardlink("up/alias", "base")
        .file("fd", "now a file", 0o644)
        .dir("df", 0o711)
        .file("df/inside", "inside", 0o644)
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/ash\n", 0o600)
        .symlink("symdir", "etc")
        .whiteout("kept/x")
        .build();
    let top = TarBuilder::new()
        .whiteout("doomed")
        .hardlink("new2", "up/alias")
        .pax("path", format!("long/{}", "n".repeat(150)))
        .file("long/short-name", "pax name", 0o644)
        .file("sticky/inside", "in", 0o644)
        .build();
    ImageSpec::new(vec![
        (bottom, Compression::Gzip),
        (middle, Compression::Gzip),
        (top, Compression::None),
    ])
}

fn is_layer(e: &LogEntry, image: &PushedImage) -> bool {
    image
        .layers
        .iter()
        .any(|l| e.path.ends_with(&l.digest.to_string()))
}

/// Requests other than the API check, manifests and the config blob.
fn beyond_manifest_and_config<'a>(log: &'a [LogEntry], image: &PushedImage) -> Vec<&'a LogEntry> {
    let config = format!("/blobs/{}", image.config_digest);
    log.iter()
        .filter(|e| {
            e.path != "/v2/" && !e.path.contains("/manifests/") && !e.path.ends_with(&config)
        })
        .collect()
}

#[test]
fn mounted_tree_matches_umoci_fresh_lazy_and_verified() {
    let reg = TestRegistry::start(Variant::Plain);
    let image = image::push_image(&reg, "test/overlay", "v1", &overlay_image());
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = umoci_reference(&reg.host(), "test/overlay", "v1", tmp.path());

    let sandbox = Sandbox::new();
    let direct = format!("{}/test/overlay:v1", reg.host());
    let mount = sandbox.mount(&direct, &[]);
    // A fresh mount downloads and verifies every layer before it returns.
    assert!(
        mount.states().iter().all(|s| s == "ready"),
        "{:#}",
        mount.status()
    );
    let fresh = listing(mount.path());
    // The rules must show, or this test checks less than it says.
    assert_eq!(
        entry(&fresh, "/base").nlink,
        4,
        "base, base2, up/alias, new2"
    );
    assert_eq!(entry(&fresh, "/survivor").nlink, 1);
    assert!(
        entry(&fresh, "/capped")
            .xattrs
            .contains_key("security.capability")
    );
    assert!(
        !fresh
            .iter()
            .any(|e| e.path == "/gone" || e.path == "/opq/old1")
    );
    compare(&fresh, &rootfs);
    mount.umount();

    // Lazy: only indexes are local; the background download crawls, so every read
    // below is a Range request for unverified bytes.
    sandbox.prune_blobs();
    let proxy = FaultProxy::start(&reg.base_url());
    hold_background(
        &proxy,
        &image,
        Fault::Drip {
            bytes_per_sec: 16_000,
        },
    );
    let lazy = format!("{}/test/overlay:v1", proxy.host());
    let mount = sandbox.mount(&lazy, &[]);
    assert!(
        mount.states().iter().all(|s| s == "fetching"),
        "{:#}",
        mount.status()
    );
    compare(&listing(mount.path()), &rootfs);
    let status = mount.status();
    assert!(
        states(&status).iter().all(|s| s != "ready"),
        "a layer was ready before the lazy comparison ended, so it did not test lazy reads: {status:#}"
    );
    let log = proxy.log();
    assert!(
        log.iter().any(|e| is_layer(e, &image) && e.range.is_some()),
        "no Range reads: {log:#?}"
    );

    let status = mount.wait_all_ready();
    for (layer, pushed) in status["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&image.layers)
    {
        assert_eq!(layer["digest"], pushed.digest.to_string());
        assert_eq!(layer["bytes_fetched"], pushed.size, "{status:#}");
    }
    compare(&listing(mount.path()), &rootfs);
    mount.umount();
}

#[test]
fn busybox_runs_in_a_chroot() {
    let busybox = fs::read("/bin/busybox").expect("busybox-static is installed");
    let applets = ["sh", "echo", "cat", "ls", "wc", "sha256sum", "id"];
    let mut layer = TarBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", &busybox, 0o755);
    for applet in applets {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    let greeting = "hello from a lazy mount\n";
    let etc = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/greeting", greeting, 0o644)
        .build();
    let spec = ImageSpec::new(vec![
        (layer.build(), Compression::Gzip),
        (etc, Compression::Gzip),
    ]);
    let reg = TestRegistry::start(Variant::Plain);
    image::push_image(&reg, "test/busybox", "1", &spec);
    let reference = format!("{}/test/busybox:1", reg.host());
    let sandbox = Sandbox::new();
    sandbox.index(&reference, &[]);
    sandbox.prune_blobs();
    let mount = sandbox.mount(&reference, &[]);

    let out = Command::new("chroot")
        .arg(mount.path())
        .args([
            "/bin/sh",
            "-c",
            "echo \"$0 runs\"; cat /etc/greeting; ls /bin | wc -l; id -u; sha256sum /etc/greeting",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = format!(
        "/bin/sh runs\n{greeting}{}\n0\n{}  /etc/greeting\n",
        applets.len() + 1,
        Digest::of(greeting.as_bytes()).hex()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    mount.umount();
}

#[test]
fn remount_fetches_only_manifest_and_config() {
    let reg = TestRegistry::start(Variant::Plain);
    let spec = ImageSpec::new(vec![
        (
            TarBuilder::new().file("a", "layer a\n", 0o644).build(),
            Compression::Gzip,
        ),
        (
            TarBuilder::new()
                .file("b", random(100_000, 2), 0o644)
                .build(),
            Compression::Gzip,
        ),
    ]);
    let image = image::push_image(&reg, "test/remount", "v1", &spec);
    let sandbox = Sandbox::new();
    let mount = sandbox.mount(&format!("{}/test/remount:v1", reg.host()), &[]);
    mount.umount();

    // Warm: every blob is local and verified.
    let proxy = FaultProxy::start(&reg.base_url());
    let reference = format!("{}/test/remount:v1", proxy.host());
    let mount = sandbox.mount(&reference, &[]);
    assert!(
        mount.states().iter().all(|s| s == "ready"),
        "{:#}",
        mount.status()
    );
    assert_eq!(fs::read(mount.join("a")).unwrap(), b"layer a\n");
    assert_eq!(fs::read(mount.join("b")).unwrap(), random(100_000, 2));
    let log = proxy.log();
    assert!(
        beyond_manifest_and_config(&log, &image).is_empty(),
        "warm remount fetched {log:#?}"
    );
    assert!(
        log.iter()
            .any(|e| e.path.ends_with(&image.config_digest.to_string()))
    );
    mount.umount();

    // Cold contents, known indexes: mount needs manifest and config only. The background
    // download is stalled so that whatever it sends is recognisable: a whole-blob GET
    // (no Range) that delivered nothing.
    sandbox.prune_blobs();
    proxy.clear_log();
    hold_background(
        &proxy,
        &image,
        Fault::Stall(std::time::Duration::from_secs(300)),
    );
    // Without the prefetch list the reads of the warm mount left, which would send
    // Range requests of its own (see `prefetch.rs`).
    let mount = sandbox.mount(&reference, &["--no-prefetch"]);
    let log = proxy.log();
    for e in beyond_manifest_and_config(&log, &image) {
        let background = is_layer(e, &image) && e.range.is_none() && e.body_bytes == 0;
        assert!(background, "mount fetched {e:#?}");
    }
    assert!(
        mount.states().iter().all(|s| s == "fetching"),
        "{:#}",
        mount.status()
    );
    // A read is a Range request.
    assert_eq!(fs::read(mount.join("b")).unwrap(), random(100_000, 2));
    let reads: Vec<_> = proxy
        .log()
        .into_iter()
        .filter(|e| e.path.ends_with(&image.layers[1].digest.to_string()) && e.range.is_some())
        .collect();
    assert!(!reads.is_empty(), "the cold read sent no Range request");
    mount.umount();
}

/// Puts `/sbin/mount.fuse.lazypull` (where mount(8) looks for the helper of type
/// `fuse.lazypull`) in place for a test, and puts back what was there after.
struct Helper {
    previous: Option<std::path::PathBuf>,
}

const HELPER: &str = "/sbin/mount.fuse.lazypull";

impl Helper {
    fn install() -> Helper {
        let previous = fs::read_link(HELPER).ok();
        let _ = fs::remove_file(HELPER);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_lazypull"), HELPER).unwrap();
        Helper { previous }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = fs::remove_file(HELPER);
        if let Some(p) = &self.previous {
            let _ = std::os::unix::fs::symlink(p, HELPER);
        }
    }
}

/// `mount -t fuse.lazypull REF DIR -o OPTIONS`, as an fstab line of that type does, mounts
/// the image through the helper; options lazypull does not know are refused by name.
#[test]
fn mount_8_mounts_through_the_helper() {
    let reg = TestRegistry::start(Variant::Plain);
    let spec = ImageSpec::new(vec![(
        TarBuilder::new()
            .file("hello", "from fstab\n", 0o644)
            .build(),
        Compression::Gzip,
    )]);
    image::push_image(&reg, "test/helper", "v1", &spec);
    let reference = format!("{}/test/helper:v1", reg.host());
    let sandbox = Sandbox::new();
    let mnt = sandbox.mountpoint("mnt");
    let _helper = Helper::install();
    let mount = |options: &str| {
        Command::new("mount")
            .args(["-t", "fuse.lazypull", "-o", options, &reference])
            .arg(&mnt)
            .env("HOME", sandbox.cache())
            .output()
            .unwrap()
    };
    let cache = sandbox.cache();
    let out = mount(&format!(
        "ro,nosuid,nodev,_netdev,cache-dir={}",
        cache.display()
    ));
    assert!(
        out.status.success(),
        "mount(8) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(mnt.join("hello")).unwrap(),
        "from fstab\n"
    );
    let lazypull = |args: &[&str]| {
        let out = sandbox.command(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = lazypull(&["status", mnt.to_str().unwrap()]);
    assert!(status.contains(&reference), "{status}");
    lazypull(&["umount", mnt.to_str().unwrap()]);
    assert!(!common::mount::is_mounted(&mnt));

    let out = mount("ro,colour=blue");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown mount option `colour=blue`"),
        "{stderr}"
    );
    assert!(!common::mount::is_mounted(&mnt));
}

/// Every write fails with EROFS; an ioctl (python's `isatty` of each module it opens)
/// fails with ENOTTY, as on a local file; neither leaves a warning in the daemon's log.
#[test]
fn writes_fail_with_erofs_and_ioctls_with_enotty() {
    let reg = TestRegistry::start(Variant::Plain);
    let layer = TarBuilder::new()
        .dir("d", 0o777)
        .file("d/f", "data", 0o666)
        .build();
    image::push_image(
        &reg,
        "test/ro",
        "v1",
        &ImageSpec::new(vec![(layer, Compression::Gzip)]),
    );
    let sandbox = Sandbox::new();
    let mount = sandbox.mount(&format!("{}/test/ro:v1", reg.host()), &[]);
    let erofs = |what: &str, result: std::io::Result<()>| {
        let err = result.expect_err(what);
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{what}: {err}");
    };
    erofs("create", fs::File::create(mount.join("d/new")).map(drop));
    erofs(
        "open for writing",
        fs::OpenOptions::new()
            .write(true)
            .open(mount.join("d/f"))
            .map(drop),
    );
    erofs("mkdir", fs::create_dir(mount.join("d/sub")));
    erofs(
        "chmod",
        fs::set_permissions(mount.join("d/f"), fs::Permissions::from_mode(0o600)),
    );
    erofs("unlink", fs::remove_file(mount.join("d/f")));
    erofs("rename", fs::rename(mount.join("d/f"), mount.join("d/g")));
    erofs(
        "symlink",
        std::os::unix::fs::symlink("f", mount.join("d/l")),
    );
    assert_eq!(fs::read(mount.join("d/f")).unwrap(), b"data");
    assert_eq!(
        fs::metadata(mount.join("d/f"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o666
    );
    let file = fs::File::open(mount.join("d/f")).unwrap();
    // SAFETY: isatty only reads the descriptor, which `file` keeps open.
    assert_eq!(
        unsafe { libc::isatty(std::os::fd::AsRawFd::as_raw_fd(&file)) },
        0
    );
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTTY)
    );
    drop(file);
    let log = sandbox.daemon_log();
    assert!(!log.contains("Not Implemented"), "{log}");
    mount.umount();
}

#[test]
fn a_file_held_open_while_its_layer_becomes_local_opens_again() {
    let data = random(256 << 10, 3);
    let layer = TarBuilder::new().file("lib.so", &data, 0o755).build();
    let reg = TestRegistry::start(Variant::Plain);
    let image = image::push_image(
        &reg,
        "test/held",
        "v1",
        &ImageSpec::new(vec![(layer, Compression::Gzip)]),
    );
    let sandbox = Sandbox::new();
    sandbox.index(&format!("{}/test/held:v1", reg.host()), &[]);
    sandbox.prune_blobs();
    let proxy = FaultProxy::start(&reg.base_url());
    hold_background(
        &proxy,
        &image,
        Fault::Drip {
            bytes_per_sec: 64_000,
        },
    );
    let mount = sandbox.mount(&format!("{}/test/held:v1", proxy.host()), &[]);
    assert_eq!(mount.states(), ["fetching"]);
    // As a running program holds its libraries: opened while the layer is remote,
    // still open once its files are extracted and new opens could pass through.
    let held = fs::File::open(mount.join("lib.so")).unwrap();
    mount.wait_all_ready();
    assert!(
        common::mount::wait_until(common::mount::WAIT, || sandbox
            .daemon_log()
            .contains("reads pass through")),
        "the layer's files were never extracted:\n{}",
        sandbox.daemon_log()
    );
    assert_eq!(fs::read(mount.join("lib.so")).unwrap(), data);
    drop(held);
    assert_eq!(fs::read(mount.join("lib.so")).unwrap(), data);
    mount.umount();
}
