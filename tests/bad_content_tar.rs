//! Layer tars of odd or hostile shape, through the CLI and a real mount: duplicate paths,
//! absurd entry sizes, hardlink cycles, symlink loops, a directory of 100,000 entries and a
//! path deeper than PATH_MAX. Each is served as `umoci unpack` would lay it out, or refused
//! with an error that names the entry; never a panic or a hang.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::{assert_cache_holds_only, ls_entries, refused};
use common::debian::bounded;
use common::image::{Compression, ImageSpec, PushedImage, push_image};
use common::mount::Sandbox;
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;
use common::unpacked::{compare, listing, umoci_reference};

/// Bound on any one command over a big tree: generous, only to turn a hang into a failure.
const NO_HANG: Duration = Duration::from_secs(300);

/// Pushes `tar` (gzip) as the only layer of `repo:1`.
fn push_layer(reg: &TestRegistry, repo: &str, tar: Vec<u8>) -> PushedImage {
    push_image(
        reg,
        repo,
        "1",
        &ImageSpec::new(vec![(tar, Compression::Gzip)]),
    )
}

fn errno(result: std::io::Result<impl std::fmt::Debug>) -> Option<i32> {
    match result {
        Ok(v) => panic!("succeeded with {v:?}"),
        Err(e) => e.raw_os_error(),
    }
}

#[test]
fn duplicate_paths_later_entry_wins_as_umoci_unpacks_them() {
    let tar = TarBuilder::new()
        .file("dup", "first, longer\n", 0o644)
        .file("dup", "second\n", 0o600)
        // A file over a directory takes what came before in it.
        .dir("d", 0o755)
        .file("d/x", "gone\n", 0o644)
        .file("d", "now a file\n", 0o644)
        // A directory over a directory keeps its children and takes the later attributes.
        .dir_owned("m", 0o700, 1, 1)
        .file("m/kept", "kept\n", 0o644)
        .dir_owned("m", 0o750, 2, 2)
        // A hardlink names the inode its target had when the link was written.
        .file("f", "one\n", 0o644)
        .hardlink("l", "f")
        .file("f", "two\n", 0o644)
        .symlink("s", "dup")
        .file("s", "not a link\n", 0o644)
        .build();
    let reg = TestRegistry::start(Variant::Plain);
    push_layer(&reg, "dups", tar);
    let reference = format!("{}/dups:1", reg.host());
    let sandbox = Sandbox::new();
    let listed: Vec<(String, String, u64)> = ls_entries(&sandbox.cache(), &reference, |_| None)
        .into_iter()
        .map(|e| (e.path, e.kind, e.size))
        .collect();
    let file = |path: &str, size: u64| (path.to_string(), "file".to_string(), size);
    assert!(listed.contains(&file("/dup", 7)), "{listed:?}");
    assert!(listed.contains(&file("/d", 11)), "{listed:?}");
    assert!(!listed.iter().any(|e| e.0 == "/d/x"), "{listed:?}");

    let mount = sandbox.mount(&reference, &[]);
    let read = |path: &str| fs::read_to_string(mount.join(path)).unwrap();
    assert_eq!(read("dup"), "second\n");
    assert_eq!(read("d"), "now a file\n");
    assert_eq!(read("m/kept"), "kept\n");
    assert_eq!((read("f"), read("l")), ("two\n".into(), "one\n".into()));
    assert_eq!(read("s"), "not a link\n");
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = umoci_reference(&reg.host(), "dups", "1", tmp.path());
    compare(&listing(mount.path()), &rootfs);
    mount.umount();
}

#[test]
fn absurd_entry_sizes_are_refused_by_entry_name() {
    let gib = 1u64 << 30;
    for (name, declared, needle) in [
        // Larger than the stream, within the octal field.
        ("claims-a-gib", gib, format!("4096 of {gib} bytes")),
        // Larger than the stream, in a base-256 field.
        ("claims-an-exbibyte", 1 << 60, "cut short".to_string()),
        // Past any offset a stream can have.
        ("claims-u64-max", u64::MAX, "absurd size".to_string()),
    ] {
        let tar = TarBuilder::new()
            .file("before", "b", 0o644)
            .file_claiming(name, declared, &[0; 4096])
            .build_unterminated();
        let err = refused(tar.clone(), &[&format!("`{name}`"), &needle]);
        assert!(!err.contains("panicked"), "{err}");

        // A mount indexes the layer the same way and refuses it with the same words.
        let reg = TestRegistry::start(Variant::Plain);
        let image = push_layer(&reg, "huge", tar);
        let sandbox = Sandbox::new();
        let err = sandbox.mount_error(&format!("{}/huge:1", reg.host()));
        for expected in [image.layers[0].digest.to_string(), name.to_string(), needle] {
            assert!(err.contains(&expected), "no {expected:?} in {err}");
        }
        assert_cache_holds_only(&sandbox.cache(), &[]);
    }
}

#[test]
fn hardlink_cycles_and_self_links_are_refused_by_name() {
    refused(
        TarBuilder::new()
            .hardlink("a", "b")
            .hardlink("b", "a")
            .build(),
        &["`a`", "`b`", "cycle"],
    );
    refused(
        TarBuilder::new().hardlink("self", "self").build(),
        &["`self`", "hardlink to itself"],
    );
    // Over a file of the same name, as `tar --hard-dereference` never writes but a hostile
    // layer may: the name is replaced first, so its target is gone (umoci fails the same way).
    refused(
        TarBuilder::new()
            .file("etc/passwd2", "x", 0o644)
            .hardlink("etc/passwd2", "etc/passwd2")
            .build(),
        &["`etc/passwd2`", "hardlink to itself"],
    );

    let reg = TestRegistry::start(Variant::Plain);
    let image = push_layer(
        &reg,
        "cycle",
        TarBuilder::new()
            .file("ok", "ok", 0o644)
            .hardlink("a", "b")
            .hardlink("b", "a")
            .build(),
    );
    let sandbox = Sandbox::new();
    let err = sandbox.mount_error(&format!("{}/cycle:1", reg.host()));
    for expected in [&image.layers[0].digest.to_string(), "`a`", "cycle"] {
        assert!(err.contains(expected), "no {expected:?} in {err}");
    }
}

#[test]
fn symlink_loops_are_served_as_they_are() {
    let tar = TarBuilder::new()
        .symlink("a", "b")
        .symlink("b", "a")
        .symlink("self", "self")
        .symlink("dir/up", "../dir/up")
        .build();
    let reg = TestRegistry::start(Variant::Plain);
    push_layer(&reg, "loops", tar);
    let reference = format!("{}/loops:1", reg.host());
    let sandbox = Sandbox::new();
    let links: Vec<(String, Option<Vec<u8>>)> = ls_entries(&sandbox.cache(), &reference, |_| None)
        .into_iter()
        .filter(|e| e.kind == "symlink")
        .map(|e| (e.path, e.link))
        .collect();
    let link = |path: &str, target: &str| (path.to_string(), Some(target.as_bytes().to_vec()));
    assert_eq!(
        links,
        [
            link("/a", "b"),
            link("/b", "a"),
            link("/dir/up", "../dir/up"),
            link("/self", "self")
        ]
    );

    let mount = sandbox.mount(&reference, &[]);
    for (path, target) in [
        ("a", "b"),
        ("b", "a"),
        ("self", "self"),
        ("dir/up", "../dir/up"),
    ] {
        assert_eq!(
            fs::read_link(mount.join(path))
                .unwrap()
                .as_os_str()
                .as_bytes(),
            target.as_bytes()
        );
        assert!(
            fs::symlink_metadata(mount.join(path))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // The kernel follows the loop and gives up; the daemon is never asked to.
        assert_eq!(
            errno(fs::read(mount.join(path))),
            Some(libc::ELOOP),
            "{path}"
        );
    }
    let cat = Command::new("cat").arg(mount.join("a")).output().unwrap();
    assert!(!cat.status.success());
    assert!(
        String::from_utf8_lossy(&cat.stderr).contains("Too many levels of symbolic links"),
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );
    mount.umount();
}

#[test]
fn a_directory_of_100k_entries_lists_fully_and_looks_up_any_name() {
    const N: usize = 100_000;
    let mut tar = TarBuilder::new().dir("many", 0o755);
    for i in 0..N {
        // A few carry data, so a read at random is a real read.
        let data = if i % 9_973 == 0 {
            format!("entry {i}\n")
        } else {
            String::new()
        };
        tar = tar.file(&format!("many/entry-{i:06}"), data, 0o644);
    }
    let reg = TestRegistry::start(Variant::Plain);
    push_layer(&reg, "wide", tar.build());
    let reference = format!("{}/wide:1", reg.host());
    let sandbox = Sandbox::new();

    let started = Instant::now();
    let mount = sandbox.mount(&reference, &[]);
    let mount_time = started.elapsed();

    let started = Instant::now();
    let ls = bounded(
        Command::new("sh")
            .arg("-c")
            .arg("ls -f \"$1\" | wc -l")
            .arg("sh")
            .arg(mount.join("many")),
        NO_HANG,
    );
    let ls_time = started.elapsed();
    assert_eq!(ls.code, Some(0), "{}", ls.stderr);
    assert_eq!(ls.stdout.trim(), (N + 2).to_string(), ". and .. included");

    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..20 {
        let i = rng.usize(..N);
        let meta = fs::metadata(mount.join(&format!("many/entry-{i:06}"))).unwrap();
        assert!(meta.is_file(), "entry-{i:06}");
    }
    let i = 9_973 * rng.usize(..N / 9_973);
    assert_eq!(
        fs::read_to_string(mount.join(&format!("many/entry-{i:06}"))).unwrap(),
        format!("entry {i}\n")
    );
    assert_eq!(
        errno(fs::metadata(mount.join("many/entry-100000"))),
        Some(libc::ENOENT)
    );
    eprintln!(
        "100k entries: mount (index pass + tree) {mount_time:?}, `ls -f | wc -l` {ls_time:?}"
    );
    mount.umount();
}

/// `openat` one name below `dir`.
fn open_at(dir: &OwnedFd, name: &str, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let name = CString::new(name).unwrap();
    // SAFETY: `dir` is open and `name` is NUL-terminated for the duration of the call.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[test]
fn a_path_deeper_than_path_max_is_indexed_and_served() {
    const DEPTH: usize = 2_100;
    let mut tar = TarBuilder::new();
    let mut path = String::new();
    for _ in 0..DEPTH {
        if !path.is_empty() {
            path.push('/');
        }
        path.push('d');
        tar = tar.dir(&path, 0o755);
    }
    let leaf = format!("{path}/leaf");
    assert!(leaf.len() > libc::PATH_MAX as usize, "{}", leaf.len());
    let tar = tar.file(&leaf, "at the bottom\n", 0o644).build();
    let reg = TestRegistry::start(Variant::Plain);
    push_layer(&reg, "deep", tar);
    let reference = format!("{}/deep:1", reg.host());
    let sandbox = Sandbox::new();

    sandbox.index(&reference, &[]);
    let entries = ls_entries(&sandbox.cache(), &reference, |_| None);
    assert_eq!(
        entries.len(),
        DEPTH + 2,
        "the root, the directories, the leaf"
    );
    let deepest = entries.last().unwrap();
    assert_eq!(
        (deepest.path.as_str(), deepest.size),
        (format!("/{leaf}").as_str(), 14)
    );

    let mount = sandbox.mount(&reference, &[]);
    // One name at a time, as `find` and `rm -r` walk: no path ever exceeds PATH_MAX.
    let mut dir: OwnedFd = fs::File::open(mount.path()).unwrap().into();
    for _ in 0..DEPTH {
        dir = open_at(&dir, "d", libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
    }
    let file = fs::File::from(open_at(&dir, "leaf", libc::O_RDONLY).unwrap());
    drop(dir);
    assert_eq!(std::io::read_to_string(file).unwrap(), "at the bottom\n");
    // The whole path in one call is the kernel's to refuse.
    assert_eq!(errno(fs::read(mount.join(&leaf))), Some(libc::ENAMETOOLONG));
    let find = bounded(
        Command::new("find")
            .arg(mount.path())
            .args(["-name", "leaf"]),
        NO_HANG,
    );
    assert_eq!(find.code, Some(0), "{}", find.stderr);
    assert_eq!(
        find.stdout.trim_end(),
        format!("{}/{leaf}", mount.path().display())
    );
    mount.umount();
}
