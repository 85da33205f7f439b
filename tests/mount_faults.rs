//! `lazypull mount` when things go wrong: a corrupt blob in the registry, a registry that
//! dies during a cold read, a daemon killed or signalled; and 32 concurrent cold readers,
//! each compressed range fetched once.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::image::{self, Compression, ImageSpec};
use common::mount::{
    FOREVER, Sandbox, assert_eio, hold_background, is_mounted, pid_alive, random, wait_until,
};
use common::proxy::{Fault, FaultProxy, Rule};
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;
use lazypull::blob::CHUNK_SIZE;
use lazypull::digest::Digest;

#[test]
fn corrupt_blob_fails_its_layer_only() {
    let reg = TestRegistry::start(Variant::Plain);
    let spec = ImageSpec::new(vec![
        (
            TarBuilder::new().file("low", "low layer\n", 0o644).build(),
            Compression::Gzip,
        ),
        (
            TarBuilder::new()
                .file("mid", random(48 << 10, 3), 0o644)
                .build(),
            Compression::Gzip,
        ),
        (
            TarBuilder::new().file("top", "top layer\n", 0o644).build(),
            Compression::Gzip,
        ),
    ]);
    let image = image::push_image(&reg, "test/corrupt", "v1", &spec);
    let reference = format!("{}/test/corrupt:v1", reg.host());
    let sandbox = Sandbox::new();
    // The indexes come from a verified pass; only then does the registry's copy rot.
    sandbox.index(&reference, &[]);
    sandbox.prune_blobs();
    let bad = &image.layers[1];
    let path = reg.blob_path(&bad.digest);
    let mut blob = fs::read(&path).unwrap();
    assert!(blob.len() as u64 <= CHUNK_SIZE, "the layer is one chunk");
    let middle = blob.len() / 2;
    blob[middle] ^= 0x01;
    fs::write(&path, &blob).unwrap();
    let actual = Digest::of(&blob);

    let mount = sandbox.mount(&reference, &[]);
    let status = mount.wait_for("settled", |s| {
        s.iter().all(|s| s == "ready" || s == "failed")
    });
    let layers = status["layers"].as_array().unwrap();
    let states: Vec<&str> = layers
        .iter()
        .map(|l| l["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ready", "failed", "ready"], "{status:#}");
    let error = layers[1]["error"]
        .as_str()
        .expect("a failed layer says why");
    // The blob is one chunk: the chunk the background download got differs from the index's
    // sha256 of it (the layer digest) and hashes to the served blob's digest.
    assert!(
        error.contains(&bad.digest.to_string())
            && error.contains(&actual.to_string())
            && error.contains("differ from the verified index"),
        "the error names neither the expected {} nor the served {actual}: {error}",
        bad.digest
    );
    let text = mount.status_text();
    assert!(
        text.contains("failed") && text.contains(&actual.to_string()),
        "{text}"
    );
    assert!(text.contains(&bad.digest.to_string()), "{text}");

    assert_eio(fs::read(mount.join("mid")), "a file of the failed layer");
    // Failed for good: a second read fails the same way.
    assert_eio(
        fs::read(mount.join("mid")),
        "a file of the failed layer, again",
    );
    assert_eq!(fs::read(mount.join("low")).unwrap(), b"low layer\n");
    assert_eq!(fs::read(mount.join("top")).unwrap(), b"top layer\n");
    assert_eq!(mount.states(), ["ready", "failed", "ready"]);
    mount.umount();
}

#[test]
fn pages_cached_before_a_layer_fails_are_not_served_after() {
    let reg = TestRegistry::start(Variant::Plain);
    let (a, b) = (random(3 << 19, 7), random(3 << 19, 8));
    let spec = ImageSpec::new(vec![(
        TarBuilder::new()
            .file("a", &a, 0o644)
            .file("b", &b, 0o644)
            .build(),
        Compression::Gzip,
    )]);
    let image = image::push_image(&reg, "test/cached", "v1", &spec);
    let sandbox = Sandbox::new();
    // 1 MiB spans: reading `a` never touches the end of the blob.
    sandbox.index(
        &format!("{}/test/cached:v1", reg.host()),
        &["--span", "1048576"],
    );
    sandbox.prune_blobs();
    let path = reg.blob_path(&image.layers[0].digest);
    let mut blob = fs::read(&path).unwrap();
    let near_end = blob.len() - 1000;
    blob[near_end] ^= 0x01;
    fs::write(&path, &blob).unwrap();

    let proxy = FaultProxy::start(&reg.base_url());
    // The background download waits a little (its first request stalls, its resume
    // goes through), so the read comes first.
    proxy.add_rule(
        Rule::new(
            "GET",
            &format!("/blobs/{}", image.layers[0].digest),
            Fault::Stall(Duration::from_secs(2)),
        )
        .rest_of_blob()
        .times(1),
    );
    let mount = sandbox.mount(&format!("{}/test/cached:v1", proxy.host()), &[]);
    let file = fs::File::open(mount.join("a")).unwrap();
    let mut before = vec![0u8; a.len()];
    file.read_exact_at(&mut before, 0)
        .expect("a lazy read of the layer's intact part");
    assert!(before == a, "the lazy read returned other bytes");

    mount.wait_for("failed", |s| s.iter().all(|s| s == "failed"));
    let mut after = vec![0u8; a.len()];
    let err = file
        .read_exact_at(&mut after, 0)
        .expect_err("pages cached before the failure are dropped");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eio(
        fs::read(mount.join("a")),
        "a new open of a failed layer's file",
    );
    drop(file);
    mount.umount();
}

#[test]
fn dead_registry_gives_eio_then_recovers() {
    let mut reg = TestRegistry::start(Variant::Plain);
    let cold = random(200_000, 4);
    let spec = ImageSpec::new(vec![(
        TarBuilder::new().file("cold", &cold, 0o644).build(),
        Compression::Gzip,
    )]);
    let image = image::push_image(&reg, "test/dies", "v1", &spec);
    let sandbox = Sandbox::new();
    sandbox.index(&format!("{}/test/dies:v1", reg.host()), &[]);
    sandbox.prune_blobs();
    let proxy = FaultProxy::start(&reg.base_url());
    hold_background(&proxy, &image, Fault::Stall(FOREVER));
    let reference = format!("{}/test/dies:v1", proxy.host());
    let mount = sandbox.mount(&reference, &["--retries", "1", "--timeout", "2"]);
    assert_eq!(mount.states(), ["fetching"]);

    reg.stop();
    let start = Instant::now();
    assert_eio(
        fs::read(mount.join("cold")),
        "a cold read with the registry down",
    );
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "the failing read took {took:?}"
    );
    // The daemon lives on.
    let status = mount.status();
    assert_eq!(status["pid"], mount.pid());
    assert_eq!(mount.states(), ["fetching"]);

    reg.restart();
    assert_eq!(fs::read(mount.join("cold")).unwrap(), cold);
    mount.umount();
}

#[test]
fn concurrent_cold_readers_fetch_each_range_once() {
    const FILES: usize = 5;
    const FILE_SIZE: usize = 2 << 20;
    const READERS: usize = 32;
    let contents: Vec<Vec<u8>> = (0..FILES)
        .map(|i| random(FILE_SIZE, 100 + i as u64))
        .collect();
    let mut tar = TarBuilder::new().dir("big", 0o755);
    for (i, data) in contents.iter().enumerate() {
        tar = tar.file(&format!("big/{i}"), data, 0o644);
    }
    let spec = ImageSpec::new(vec![(tar.build(), Compression::Gzip)]);
    let reg = TestRegistry::start(Variant::Plain);
    let image = image::push_image(&reg, "test/many", "v1", &spec);
    let sandbox = Sandbox::new();
    // 1 MiB spans: each file spans several, and readers of neighbouring files share some.
    sandbox.index(
        &format!("{}/test/many:v1", reg.host()),
        &["--span", "1048576"],
    );
    sandbox.prune_blobs();
    let proxy = FaultProxy::start(&reg.base_url());
    hold_background(&proxy, &image, Fault::Stall(FOREVER));
    let mount = sandbox.mount(&format!("{}/test/many:v1", proxy.host()), &[]);

    std::thread::scope(|scope| {
        for reader in 0..READERS {
            let (mount, contents) = (&mount, &contents);
            scope.spawn(move || {
                let file = reader % FILES;
                // Odd readers go backwards in 256 KiB pieces, even ones read it whole.
                let expected = &contents[file];
                if reader % 2 == 0 {
                    let got = fs::read(mount.join(&format!("big/{file}"))).unwrap();
                    assert!(got == *expected, "reader {reader}: big/{file} differs");
                } else {
                    let f = fs::File::open(mount.join(&format!("big/{file}"))).unwrap();
                    let piece = 256 << 10;
                    let mut buf = vec![0u8; piece];
                    for at in (0..FILE_SIZE).step_by(piece).rev() {
                        let n = piece.min(FILE_SIZE - at);
                        f.read_exact_at(&mut buf[..n], at as u64).unwrap();
                        assert!(
                            buf[..n] == expected[at..at + n],
                            "reader {reader}: big/{file} at {at}"
                        );
                    }
                }
            });
        }
    });

    let layer = &image.layers[0];
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for e in proxy.log() {
        if e.path.ends_with(&layer.digest.to_string())
            && let Some(range) = e.range
        {
            assert_eq!(e.status, 206, "{range}");
            let (a, b) = range
                .strip_prefix("bytes=")
                .and_then(|r| r.split_once('-'))
                .unwrap_or_else(|| panic!("a read asked for an open range: {range}"));
            ranges.push((a.parse().unwrap(), b.parse().unwrap()));
        }
    }
    ranges.sort();
    assert!(
        ranges.len() > FILES,
        "too few ranges for {FILES} files of 2 MiB: {ranges:?}"
    );
    for pair in ranges.windows(2) {
        assert!(
            pair[0].1 < pair[1].0,
            "bytes fetched more than once: {pair:?} in {ranges:?}"
        );
    }
    // Every file was read, so nearly all of the blob came, each byte once.
    let fetched: u64 = ranges.iter().map(|(a, b)| b - a + 1).sum();
    assert!(
        fetched >= (FILES * FILE_SIZE) as u64 && fetched <= layer.size,
        "{fetched} bytes fetched of a {}-byte blob",
        layer.size
    );
    assert_eq!(
        mount.states(),
        ["fetching"],
        "the background download was not held back"
    );
    mount.umount();
}

#[test]
fn umount_after_the_daemon_was_killed() {
    let reg = TestRegistry::start(Variant::Plain);
    let spec = ImageSpec::new(vec![(
        TarBuilder::new().file("f", "still here\n", 0o644).build(),
        Compression::Gzip,
    )]);
    image::push_image(&reg, "test/kill", "v1", &spec);
    let reference = format!("{}/test/kill:v1", reg.host());
    let sandbox = Sandbox::new();
    let mount = sandbox.mount(&reference, &[]);
    let pid = mount.status()["pid"].as_u64().unwrap() as u32;
    // SAFETY: kill has no memory preconditions; the pid is this test's daemon.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(pid)));
    // The kernel says ENOTCONN, or ECONNABORTED when it aborted the connection itself.
    let err = fs::read(mount.join("f")).unwrap_err();
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED)
        ),
        "{err}"
    );
    let status = sandbox.run(&["status", mount.path().to_str().unwrap()]);
    assert!(
        !status.success && status.stderr.contains("not running any more"),
        "status of a dead mount: {}",
        status.stderr
    );

    let run = sandbox.run(&["umount", mount.path().to_str().unwrap()]);
    assert!(run.success, "umount of a dead mount failed: {}", run.stderr);
    assert!(!is_mounted(mount.path()), "still in /proc/self/mountinfo");
    let mountpoint = mount.path().to_path_buf();
    mount.forget();

    let again = sandbox.mount_at(&mountpoint, &reference, &[]);
    assert_eq!(fs::read(again.join("f")).unwrap(), b"still here\n");
    again.umount();
}

#[test]
fn sigterm_unmounts() {
    let reg = TestRegistry::start(Variant::Plain);
    let spec = ImageSpec::new(vec![(
        TarBuilder::new().file("f", "x", 0o644).build(),
        Compression::Gzip,
    )]);
    image::push_image(&reg, "test/term", "v1", &spec);
    let sandbox = Sandbox::new();
    let mount = sandbox.mount(&format!("{}/test/term:v1", reg.host()), &[]);
    assert_eq!(fs::read(mount.join("f")).unwrap(), b"x");
    let pid = mount.pid();
    // SAFETY: kill has no memory preconditions; the pid is this test's daemon.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    assert!(
        wait_until(Duration::from_secs(10), || !is_mounted(mount.path())),
        "still mounted after SIGTERM"
    );
    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(pid)),
        "the daemon did not exit after SIGTERM"
    );
    // The mount point is an empty directory again.
    assert_eq!(fs::read_dir(mount.path()).unwrap().count(), 0);
    let log = sandbox.daemon_log();
    assert!(log.contains("unmounting on signal"), "{log}");
    mount.forget();
}
