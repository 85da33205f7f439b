//! The prefetch list: a mount records what its programs read first, and the next mount
//! of the image, after `cache prune --blobs`, fetches that ahead, starting each read
//! at a seek point of its own rather than at the layer index's.

mod common;

use std::fs;
use std::time::Duration;

use common::image::{self, Compression, ImageSpec, PushedImage};
use common::mount::{Mount, Sandbox, hold_background, random, wait_until};
use common::proxy::{Fault, FaultProxy, LogEntry, Rule};
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;

const STALL: Duration = Duration::from_secs(300);

/// The layer's Range requests in the proxy's log.
fn ranged(log: &[LogEntry], layer: &str) -> Vec<LogEntry> {
    log.iter()
        .filter(|e| e.path.ends_with(layer) && e.range.is_some())
        .cloned()
        .collect()
}

/// Mounts again from the cache the first mount left, its blobs pruned, with the
/// background download held back, and waits until the list's spans are fetched; from
/// then on every Range request of the layer stalls, so a read that needs one hangs.
fn remount_after_prefetch<'a>(
    sandbox: &'a Sandbox,
    proxy: &FaultProxy,
    image: &PushedImage,
    reference: &str,
) -> Mount<'a> {
    sandbox.prune_blobs();
    proxy.clear_rules();
    proxy.clear_log();
    hold_background(proxy, image, Fault::Stall(STALL));
    let mount = sandbox.mount(reference, &[]);
    let prefetched = wait_until(Duration::from_secs(60), || {
        sandbox.daemon_log().contains("prefetched the spans")
    });
    assert!(prefetched, "nothing prefetched: {}", sandbox.daemon_log());
    let layer = image.layers[0].digest.to_string();
    proxy.add_rule(
        Rule::new("GET", &format!("/blobs/{layer}"), Fault::Stall(STALL)).with_range(true),
    );
    mount
}

/// Reads `names` of the mount on another thread; fails if that takes long (a read that
/// went to the registry stalls).
fn read_without_network(mount: &Mount, names: &[&str], sandbox: &Sandbox) -> Vec<Vec<u8>> {
    let paths: Vec<_> = names.iter().map(|n| mount.join(n)).collect();
    let reads = std::thread::spawn(move || {
        paths
            .iter()
            .map(|p| fs::read(p).unwrap())
            .collect::<Vec<_>>()
    });
    assert!(
        wait_until(Duration::from_secs(30), || reads.is_finished()),
        "reads of prefetched files waited on the network; log {}",
        sandbox.daemon_log()
    );
    reads.join().unwrap()
}
/// A mount records which files were opened first; after `cache prune --blobs`, the next
/// mount fetches those files' spans by itself, before anything reads them, and nothing
/// else: the reads then send no request.
#[test]
fn the_list_fetches_what_a_mount_read_first() {
    let reg = TestRegistry::start(Variant::Plain);
    // Ten incompressible files of 2 MiB, each in seek spans of its own.
    let files: Vec<Vec<u8>> = (0..10).map(|i| random(2 << 20, 10 + i)).collect();
    let mut tar = TarBuilder::new();
    for (i, data) in files.iter().enumerate() {
        tar = tar.file(&format!("f{i}"), data.clone(), 0o644);
    }
    let spec = ImageSpec::new(vec![(tar.build(), Compression::Gzip)]);
    let image = image::push_image(&reg, "test/prefetch", "v1", &spec);
    let proxy = FaultProxy::start(&reg.base_url());
    let reference = format!("{}/test/prefetch:v1", proxy.host());
    let sandbox = Sandbox::new();

    let mount = sandbox.mount(&reference, &[]);
    assert_eq!(fs::read(mount.join("f0")).unwrap(), files[0]);
    assert_eq!(fs::read(mount.join("f9")).unwrap(), files[9]);
    mount.umount();
    let list = sandbox
        .cache()
        .join("traces/sha256")
        .join(image.manifest_digest.hex());
    assert!(list.is_file(), "no prefetch list at {}", list.display());

    let mount = remount_after_prefetch(&sandbox, &proxy, &image, &reference);
    let layer = image.layers[0].digest.to_string();
    let bytes: u64 = ranged(&proxy.log(), &layer)
        .iter()
        .map(|e| e.body_bytes)
        .sum();
    assert!(
        bytes >= 4 << 20 && bytes < image.layers[0].size / 2,
        "prefetched {bytes} of {} bytes: not the opened files' spans",
        image.layers[0].size
    );
    let got = read_without_network(&mount, &["f9", "f0"], &sandbox);
    assert!(got[0] == files[9] && got[1] == files[0], "wrong bytes");
    // A file the list does not name is read lazily, as ever.
    proxy.clear_rules();
    assert_eq!(fs::read(mount.join("f5")).unwrap(), files[5]);
    mount.umount();
}

/// A file that starts far into a seek span: the list keeps a seek point just before
/// it, so the next mount fetches from there, not from the span's start, and reads it
/// right without the network. A mount that starts from that point records it again.
#[test]
fn a_listed_read_gets_a_seek_point_of_its_own() {
    let reg = TestRegistry::start(Variant::Plain);
    // Incompressible, so compressed offsets are about the uncompressed ones; `hot`
    // starts 1.5 MiB in, about half-way into the span that starts near 1 MiB.
    let (pad, hot, tail) = (
        random(1536 << 10, 1),
        random(100_000, 2),
        random(600_000, 3),
    );
    let tar = TarBuilder::new()
        .file("pad", pad, 0o644)
        .file("hot", hot.clone(), 0o644)
        .file("tail", tail, 0o644)
        .build();
    let spec = ImageSpec::new(vec![(tar, Compression::Gzip)]);
    let image = image::push_image(&reg, "test/points", "v1", &spec);
    let proxy = FaultProxy::start(&reg.base_url());
    let reference = format!("{}/test/points:v1", proxy.host());
    let sandbox = Sandbox::new();
    let list = sandbox
        .cache()
        .join("traces/sha256")
        .join(image.manifest_digest.hex());
    let points = || -> Vec<serde_json::Value> {
        let list: serde_json::Value = serde_json::from_slice(&fs::read(&list).unwrap()).unwrap();
        list["points"].as_array().cloned().unwrap_or_default()
    };

    let mount = sandbox.mount(&reference, &[]);
    assert!(fs::read(mount.join("hot")).unwrap() == hot);
    mount.umount();
    let first = points();
    assert_eq!(first.len(), 1, "one point, before `hot`: {first:?}");
    let at = first[0]["point"]["uncompressed_offset"].as_u64().unwrap();
    // `hot`'s bytes follow `pad`'s header and bytes and its own header.
    let hot_at = 512 + (1536 << 10) + 512;
    assert!(
        at <= hot_at && at > hot_at - (128 << 10),
        "the point is at {at}, not in the deflate block before `hot` at {hot_at}"
    );

    let layer = image.layers[0].digest.to_string();
    for round in ["from the learned point", "from the point carried over"] {
        let mount = remount_after_prefetch(&sandbox, &proxy, &image, &reference);
        let starts: Vec<u64> = ranged(&proxy.log(), &layer)
            .iter()
            .filter_map(|e| {
                e.range
                    .as_deref()?
                    .strip_prefix("bytes=")?
                    .split('-')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        // The fetch starts at the chunk holding the point, well past the span's start.
        assert!(
            !starts.is_empty() && starts.iter().all(|&s| s >= (1280 << 10)),
            "{round}: Range requests start at {starts:?}"
        );
        let got = read_without_network(&mount, &["hot"], &sandbox);
        assert!(got[0] == hot, "{round}: wrong bytes");
        mount.umount();
        assert_eq!(points(), first, "{round}: the list's point changed");
    }
}
