//! Crash safety: a daemon killed with SIGKILL while it downloads or verifies a layer leaves a
//! cache the next daemon can trust. `lazypull umount` detaches the dead mount, a layer that
//! was ready stays ready without a download, a half-fetched layer resumes where it stopped,
//! and no partial file sits under a final name.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::image::{self, Compression, ImageSpec, PushedImage, PushedLayer};
use common::mount::{Mount, Sandbox, WAIT, hold_background, is_mounted, states, wait_until};
use common::proxy::{Fault, FaultProxy, Rule};
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;
use lazypull::blob::CHUNK_SIZE;
use lazypull::digest::Digest;
use serde_json::Value;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut data);
    data
}

/// A small layer under a big random one (`big` bytes, hardly compressible), pushed as
/// `repo:v1`, indexed and pruned: a mount from the sandbox's cache fetches both lazily.
struct Setup {
    image: PushedImage,
    sandbox: Sandbox,
    small: Vec<u8>,
    big: Vec<u8>,
}

fn setup(reg: &TestRegistry, repo: &str, big: usize) -> Setup {
    let small = b"ready before the kill\n".to_vec();
    let big = random(big, 42);
    let spec = ImageSpec::new(vec![
        (
            TarBuilder::new().file("small", &small, 0o644).build(),
            Compression::Gzip,
        ),
        (
            TarBuilder::new().file("big", &big, 0o644).build(),
            Compression::Gzip,
        ),
    ]);
    let image = image::push_image(reg, repo, "v1", &spec);
    let sandbox = Sandbox::new();
    sandbox.index(&format!("{}/{repo}:v1", reg.host()), &[]);
    sandbox.prune_blobs();
    Setup {
        image,
        sandbox,
        small,
        big,
    }
}

/// The daemon's status straight from the root xattr: cheap enough to poll every few ms.
fn quick_status(mount: &Mount) -> Value {
    let raw = xattr::get(mount.path(), "user.lazypull.status")
        .expect("read the status xattr")
        .expect("the mount has a status");
    serde_json::from_slice(&raw).unwrap()
}

/// Polls the status until `done` holds for it; returns that status.
fn poll(mount: &Mount, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = quick_status(mount);
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "never {what}: {status:#}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGKILLs the daemon, then `lazypull umount` must detach the dead mount.
fn kill_and_umount(sandbox: &Sandbox, mount: Mount) {
    mount.kill();
    let run = sandbox.run(&["umount", mount.path().to_str().unwrap()]);
    assert!(
        run.success,
        "umount of a killed mount failed: {}",
        run.stderr
    );
    assert!(!is_mounted(mount.path()), "still mounted after umount");
    mount.forget();
}

/// Bytes of `layer` the registry was asked for: a Range's length, all of it without one.
fn requested(proxy: &FaultProxy, layer: &PushedLayer) -> u64 {
    proxy
        .requests("GET", &format!("/blobs/{}", layer.digest))
        .iter()
        .map(|e| match &e.range {
            None => layer.size,
            Some(range) => {
                let (a, b) = range
                    .strip_prefix("bytes=")
                    .and_then(|r| r.split_once('-'))
                    .unwrap_or_else(|| panic!("odd range {range}"));
                let a: u64 = a.parse().unwrap();
                let end = if b.is_empty() {
                    layer.size
                } else {
                    b.parse::<u64>().unwrap() + 1
                };
                end - a
            }
        })
        .sum()
}

/// Whatever sits under a final name in `blobs/` is complete: it hashes to its name; and
/// every index is there and non-empty.
fn assert_final_files_whole(sandbox: &Sandbox, image: &PushedImage) {
    let blobs = sandbox.cache().join("blobs/sha256");
    for entry in fs::read_dir(&blobs).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let actual = Digest::of(&fs::read(&path).unwrap());
        assert_eq!(actual.hex(), name, "blobs/sha256/{name} holds other bytes");
    }
    for layer in &image.layers {
        let index = sandbox
            .cache()
            .join("index/sha256")
            .join(layer.digest.hex());
        let len = fs::metadata(&index).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "index of {} missing or empty", layer.digest);
    }
}

fn layer(status: &Value, i: usize) -> &Value {
    &status["layers"][i]
}

#[test]
fn a_layer_killed_mid_download_resumes_and_a_ready_one_stays_ready() {
    const BIG: usize = 24 << 20;
    let reg = TestRegistry::start(Variant::Plain);
    let s = setup(&reg, "test/resume", BIG);
    let (small_layer, big_layer) = (&s.image.layers[0], &s.image.layers[1]);
    let proxy = FaultProxy::start(&reg.base_url());
    // Slow enough for the kill to land with a good part of the layer fetched, not all.
    proxy.add_rule(Rule::new(
        "GET",
        &format!("/blobs/{}", big_layer.digest),
        Fault::Drip {
            bytes_per_sec: 3 << 20,
        },
    ));
    let reference = format!("{}/test/resume:v1", proxy.host());
    let mountpoint = s.sandbox.mountpoint("mnt");

    let mount = s.sandbox.mount_at(&mountpoint, &reference, &[]);
    let third = big_layer.size / 3;
    let status = poll(&mount, "a third of the big layer fetched", |st| {
        layer(st, 0)["state"] == "ready" && layer(st, 1)["bytes_fetched"].as_u64().unwrap() >= third
    });
    let kept = layer(&status, 1)["bytes_fetched"].as_u64().unwrap();
    kill_and_umount(&s.sandbox, mount);
    assert!(
        !s.sandbox
            .cache()
            .join("blobs/sha256")
            .join(big_layer.digest.hex())
            .exists(),
        "a half-fetched layer sits in blobs/"
    );
    assert_final_files_whole(&s.sandbox, &s.image);
    // What a daemon killed during a first mount's download leaves: part of a blob under a
    // temporary name, unchanged since. The next mount removes it.
    let leftover = s.sandbox.cache().join("tmp/.tmpLeftByAKilledDaemon");
    fs::write(&leftover, vec![0u8; 1 << 20]).unwrap();
    let minutes_ago = std::time::SystemTime::now() - Duration::from_secs(300);
    fs::File::open(&leftover)
        .unwrap()
        .set_modified(minutes_ago)
        .unwrap();

    proxy.clear_rules();
    proxy.clear_log();
    let again = s.sandbox.mount_at(&mountpoint, &reference, &[]);
    assert!(
        wait_until(Duration::from_secs(30), || !leftover.exists()),
        "the next mount left the killed daemon's temporary file in place"
    );
    again.wait_all_ready();
    assert_eq!(fs::read(again.join("small")).unwrap(), s.small);
    assert!(fs::read(again.join("big")).unwrap() == s.big, "big differs");
    assert_eq!(
        requested(&proxy, small_layer),
        0,
        "the layer ready before the kill was downloaded again"
    );
    let second = requested(&proxy, big_layer);
    eprintln!(
        "layer {} bytes; {kept} on disk at the kill; the next daemon asked for {second}",
        big_layer.size
    );
    assert!(
        second <= big_layer.size - kept,
        "the next daemon asked for {second} bytes of a {}-byte layer, {kept} of which it had",
        big_layer.size
    );
    again.umount();
    assert_final_files_whole(&s.sandbox, &s.image);
}

#[test]
fn a_layer_killed_while_verifying_is_not_downloaded_again() {
    const BIG: usize = 48 << 20;
    let reg = TestRegistry::start(Variant::Plain);
    let s = setup(&reg, "test/verify", BIG);
    let proxy = FaultProxy::start(&reg.base_url());
    let reference = format!("{}/test/verify:v1", proxy.host());
    let mountpoint = s.sandbox.mountpoint("mnt");

    let mount = s.sandbox.mount_at(&mountpoint, &reference, &[]);
    let status = poll(&mount, "verifying the big layer", |st| {
        let state = &layer(st, 1)["state"];
        assert_ne!(
            state, "ready",
            "the layer was verified before the test could kill the daemon"
        );
        state == "verifying"
    });
    assert_eq!(layer(&status, 1)["bytes_fetched"], s.image.layers[1].size);
    kill_and_umount(&s.sandbox, mount);
    assert_final_files_whole(&s.sandbox, &s.image);

    proxy.clear_log();
    let again = s.sandbox.mount_at(&mountpoint, &reference, &[]);
    again.wait_all_ready();
    for layer in &s.image.layers {
        assert_eq!(
            requested(&proxy, layer),
            0,
            "layer {} was downloaded again",
            layer.digest
        );
    }
    assert_eq!(fs::read(again.join("small")).unwrap(), s.small);
    assert!(fs::read(again.join("big")).unwrap() == s.big, "big differs");
    again.umount();
    assert_final_files_whole(&s.sandbox, &s.image);
}

/// A registry that garbles every lazy read of a layer: the chunks that differ from the index
/// are never written, those of the same answers that match are; the next daemon resumes
/// from the good ones and fetches each of the others once, and the layer verifies.
#[test]
fn a_garbled_lazy_read_is_never_kept_for_the_next_daemon() {
    const BIG: usize = 8 << 20;
    let reg = TestRegistry::start(Variant::Plain);
    let s = setup(&reg, "test/stale", BIG);
    let big_layer = &s.image.layers[1];
    let proxy = FaultProxy::start(&reg.base_url());
    hold_background(&proxy, &s.image, Fault::Stall(Duration::from_secs(600)));
    proxy.add_rule(
        Rule::new(
            "GET",
            &format!("/blobs/{}", big_layer.digest),
            Fault::FlipByte(1000),
        )
        .with_range(true),
    );
    let reference = format!("{}/test/stale:v1", proxy.host());
    let mountpoint = s.sandbox.mountpoint("mnt");
    let mount = s.sandbox.mount_at(&mountpoint, &reference, &[]);
    let file = fs::File::open(mount.join("big")).unwrap();
    // One FUSE read's worth: its answer spans more chunks than the garbled one.
    let mut buf = vec![0u8; 128 << 10];
    let read = file.read_exact_at(&mut buf, 0);
    assert_eq!(
        read.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO)),
        "the garbled chunk reads as EIO"
    );
    drop(file);
    let status = quick_status(&mount);
    let kept = layer(&status, 1)["bytes_fetched"].as_u64().unwrap();
    // The span's other chunks came in the same answer, right.
    assert!(
        kept > 0 && kept.is_multiple_of(CHUNK_SIZE),
        "the good chunks of the answer: {status:#}"
    );
    assert!(
        proxy
            .log()
            .iter()
            .any(|e| e.fault == Some(Fault::FlipByte(1000))),
        "the read was not garbled"
    );
    kill_and_umount(&s.sandbox, mount);

    proxy.clear_rules();
    proxy.clear_log();
    let again = s.sandbox.mount_at(&mountpoint, &reference, &[]);
    let status = again.wait_for("settled", |st| {
        st.iter().all(|s| s == "ready" || s == "failed")
    });
    assert_eq!(states(&status), ["ready", "ready"], "{status:#}");
    assert!(fs::read(again.join("big")).unwrap() == s.big, "big differs");
    assert_eq!(
        requested(&proxy, big_layer),
        big_layer.size - kept,
        "the rest of the layer, once"
    );
    again.umount();
    assert_final_files_whole(&s.sandbox, &s.image);
}
