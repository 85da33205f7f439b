//! A cache directory that runs out of space (a small tmpfs): reads keep working, served
//! from the registry without being cached; nothing half-written is kept; the layer is
//! not ready until there is room, and a later mount completes it. An index pass that
//! fills the cache fails with an error that says so, and nothing stays mounted.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::image::{self, Compression, ImageSpec};
use common::mount::{Sandbox, WAIT, is_mounted, pid_alive, wait_until};
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;
use common::tmpfs::Tmpfs;
use lazypull::digest::Digest;

const MIB: u64 = 1 << 20;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut data);
    data
}

/// A small bottom layer and a 6 MiB incompressible top layer.
fn image_spec(big: &[u8]) -> ImageSpec {
    ImageSpec::new(vec![
        (
            TarBuilder::new()
                .file("small", "small layer\n", 0o644)
                .build(),
            Compression::Gzip,
        ),
        (
            TarBuilder::new()
                .file("big", big, 0o644)
                .file("note", "top layer\n", 0o644)
                .build(),
            Compression::Gzip,
        ),
    ])
}

/// Every file of `dir` with its contents.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, fs::read(e.path()).unwrap())
        })
        .collect()
}

/// Every blob in the cache is complete: it hashes to its name.
fn assert_blobs_whole(cache: &Path) {
    for (name, bytes) in snapshot(&cache.join("blobs/sha256")) {
        assert_eq!(
            Digest::of(&bytes).hex(),
            name,
            "blobs/sha256/{name} is not the blob it names"
        );
    }
}

fn assert_no_temp_files(cache: &Path) {
    let left: Vec<_> = fs::read_dir(cache.join("tmp")).unwrap().flatten().collect();
    assert!(left.is_empty(), "temp files left in the cache: {left:?}");
}

/// A running process whose command line mentions `needle`.
fn process_mentioning(needle: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        (String::from_utf8_lossy(&cmdline).contains(needle) && pid_alive(pid)).then_some(pid)
    })
}

#[test]
fn reads_are_served_uncached_when_the_cache_is_full() {
    let reg = TestRegistry::start(Variant::Plain);
    let big = random(6 * MIB as usize, 1);
    let image = image::push_image(&reg, "test/full", "v1", &image_spec(&big));
    let reference = format!("{}/test/full:v1", reg.host());
    let sandbox = Sandbox::new();
    let cache = sandbox.cache();
    let tmpfs = Tmpfs::mount(&cache, 24 * MIB);
    // The indexes fit; then the blobs go and the disk fills up, leaving room for the
    // small layer but not for the big one's chunks.
    sandbox.index(&reference, &[]);
    sandbox.prune_blobs();
    let indexes = snapshot(&cache.join("index/sha256"));
    let filler = tmpfs.fill("filler", 256 << 10);

    let mount = sandbox.mount(&reference, &[]);
    let top = image.layers[1].digest.to_string();
    let cache_dir = cache.to_str().unwrap();
    // The background download of the top layer hits the full disk: it says so and
    // keeps the layer fetching, not failed.
    let mut status = mount.status();
    assert!(
        wait_until(WAIT, || {
            status = mount.status();
            status["layers"][1]["error"]
                .as_str()
                .is_some_and(|e| e.contains("no space left") && e.contains(cache_dir))
        }),
        "the status never said the cache is full: {status:#}\ndaemon log:\n{}",
        sandbox.daemon_log()
    );
    assert_eq!(status["layers"][1]["digest"], top);
    assert_eq!(status["layers"][1]["state"], "fetching", "{status:#}");
    mount.wait_for("ready (bottom layer)", |s| s[0] == "ready");

    // Reads are right, served from the registry without being kept.
    assert_eq!(fs::read(mount.join("small")).unwrap(), b"small layer\n");
    assert_eq!(fs::read(mount.join("note")).unwrap(), b"top layer\n");
    assert_eq!(
        fs::metadata(mount.join("big")).unwrap().len(),
        big.len() as u64
    );
    let file = fs::File::open(mount.join("big")).unwrap();
    let mut rng = fastrand::Rng::with_seed(2);
    for _ in 0..20 {
        let offset = rng.u64(0..big.len() as u64);
        let len = rng.usize(1..(256 << 10)).min(big.len() - offset as usize);
        let mut got = vec![0u8; len];
        file.read_exact_at(&mut got, offset).unwrap();
        assert!(
            got == big[offset as usize..offset as usize + len],
            "wrong bytes at {offset}+{len}"
        );
    }
    drop(file);
    assert!(
        fs::read(mount.join("big")).unwrap() == big,
        "a whole read of big returned other bytes"
    );
    assert!(pid_alive(mount.pid()), "the daemon died");
    let states = mount.states();
    assert_eq!(states, ["ready", "fetching"], "{:#}", mount.status());
    assert!(
        !cache
            .join("blobs/sha256")
            .join(image.layers[1].digest.hex())
            .exists()
    );
    mount.umount();

    // Nothing half-written under a final name; the indexes are as they were.
    assert_blobs_whole(&cache);
    assert_no_temp_files(&cache);
    assert_eq!(
        snapshot(&cache.join("index/sha256")),
        indexes,
        "the indexes changed"
    );

    // With room again, a new mount completes and verifies the layer.
    fs::remove_file(&filler).unwrap();
    let mount = sandbox.mount(&reference, &[]);
    let status = mount.wait_all_ready();
    assert!(
        status["layers"][1].get("error").is_none(),
        "a ready layer still reports an error: {status:#}"
    );
    assert!(fs::read(mount.join("big")).unwrap() == big);
    mount.umount();
    let blob = fs::read(
        cache
            .join("blobs/sha256")
            .join(image.layers[1].digest.hex()),
    )
    .unwrap();
    assert_eq!(Digest::of(&blob), image.layers[1].digest);
    assert_blobs_whole(&cache);
    drop(tmpfs);
}

#[test]
fn an_index_pass_that_fills_the_cache_fails_cleanly() {
    let reg = TestRegistry::start(Variant::Plain);
    let big = random(6 * MIB as usize, 3);
    let image = image::push_image(&reg, "test/fill", "v1", &image_spec(&big));
    let reference = format!("{}/test/fill:v1", reg.host());
    let sandbox = Sandbox::new();
    let cache = sandbox.cache();
    let tmpfs = Tmpfs::mount(&cache, 2 * MIB);
    let cache_dir = cache.to_str().unwrap();
    let top = &image.layers[1].digest;
    let assert_nothing_of_top_kept = || {
        assert!(!cache.join("blobs/sha256").join(top.hex()).exists());
        assert!(!cache.join("index/sha256").join(top.hex()).exists());
        assert_blobs_whole(&cache);
        assert_no_temp_files(&cache);
    };

    let run = sandbox.run(&["index", "--cache-dir", cache_dir, &reference]);
    assert!(
        !run.success,
        "index succeeded on a full cache:\n{}",
        run.stdout
    );
    let error = run.stderr.to_lowercase();
    assert!(
        error.contains("no space left") && run.stderr.contains(cache_dir),
        "the error names neither the cause nor the cache: {}",
        run.stderr
    );
    assert!(!error.contains("digest mismatch"), "{}", run.stderr);
    assert_nothing_of_top_kept();

    let mountpoint = sandbox.mountpoint("mnt");
    let mnt = mountpoint.to_str().unwrap();
    let run = sandbox.run(&["mount", "--cache-dir", cache_dir, &reference, mnt]);
    assert!(
        !run.success,
        "mount succeeded on a full cache:\n{}",
        run.stdout
    );
    assert!(
        run.stderr.to_lowercase().contains("no space left") && run.stderr.contains(cache_dir),
        "the error names neither the cause nor the cache: {}",
        run.stderr
    );
    assert!(
        !is_mounted(&mountpoint),
        "a failed mount left {mnt} mounted"
    );
    assert!(
        wait_until(Duration::from_secs(10), || process_mentioning(mnt)
            .is_none()),
        "a daemon of the failed mount still runs: pid {:?}",
        process_mentioning(mnt)
    );
    assert_nothing_of_top_kept();

    // With room, the same cache works: nothing stale is in the way.
    tmpfs.resize(32 * MIB);
    sandbox.index(&reference, &[]);
    let blob = fs::read(cache.join("blobs/sha256").join(top.hex())).unwrap();
    assert_eq!(Digest::of(&blob), *top);
    assert!(cache.join("index/sha256").join(top.hex()).exists());
}
