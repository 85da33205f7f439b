//! A cache shared by live processes: `cache prune` during a download or a first mount leaves
//! every mount serving right bytes (it keeps what they hold, says so, and reports what it
//! really freed), and two first passes over one layer share one download.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::cli::du;
use common::image::{self, Compression, ImageSpec, PushedImage};
use common::mount::{FOREVER, Mount, Sandbox, WAIT, hold_background, random, wait_until};
use common::proxy::{Fault, FaultProxy, Rule};
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;

/// An image of one gzip layer per `(name, bytes)`, each holding a file of that name.
fn push(reg: &TestRegistry, repo: &str, files: &[(&str, &[u8])]) -> PushedImage {
    let spec = ImageSpec::new(
        files
            .iter()
            .map(|(name, data)| {
                (
                    TarBuilder::new().file(name, data, 0o644).build(),
                    Compression::Gzip,
                )
            })
            .collect(),
    );
    image::push_image(reg, repo, "v1", &spec)
}

/// The bytes `cache prune` says it freed: "freed X on disk (N bytes, …".
fn freed(out: &str) -> u64 {
    out.split(" bytes,")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no freed bytes in {out:?}"))
}

/// The line of `out` naming `path` (relative to the cache), if any.
fn line_naming<'a>(out: &'a str, path: &str) -> Option<&'a str> {
    out.lines().find(|l| l.trim_start().starts_with(path))
}

fn layer_path(dir: &str, image: &PushedImage, layer: usize) -> String {
    format!("{dir}/sha256/{}", image.layers[layer].digest.hex())
}

/// Runs `cache prune FLAG` while three mounts use the cache: one whose download is held (its
/// chunk files locked), one ready with its files extracted (blob and files held), and the
/// cache holding what nobody uses: a spare image's blob and the sparse chunk file a stopped
/// mount left. Prune removes only the latter, lists the former with why, reports what the
/// disk got back; every mount goes on serving right bytes and the held one ends ready.
fn prune_during_a_download(flag: &str) {
    let reg = TestRegistry::start(Variant::Plain);
    let (a, b) = (random(1_500_000, 1), random(1_200_000, 2));
    let held = push(&reg, "test/held", &[("a", &a), ("b", &b)]);
    let idle_data = random(6_000_000, 3);
    let idle = push(&reg, "test/idle", &[("i", &idle_data)]);
    let spare = push(&reg, "test/spare", &[("s", &random(800_000, 4))]);
    let ready_data = random(900_000, 5);
    let ready = push(&reg, "test/ready", &[("r", &ready_data)]);
    let sandbox = Sandbox::new();
    let cache = sandbox.cache();
    for repo in ["held", "idle"] {
        sandbox.index(&format!("{}/test/{repo}:v1", reg.host()), &[]);
    }
    sandbox.prune_blobs();
    sandbox.index(&format!("{}/test/spare:v1", reg.host()), &[]);

    let proxy = FaultProxy::start(&reg.base_url());
    // A mount that read a little of a big layer and stopped: a sparse chunk file nobody holds.
    hold_background(&proxy, &idle, Fault::Stall(FOREVER));
    let mount = sandbox.mount(&format!("{}/test/idle:v1", proxy.host()), &[]);
    let mut piece = vec![0u8; 10_000];
    fs::File::open(mount.join("i"))
        .unwrap()
        .read_exact(&mut piece)
        .unwrap();
    assert_eq!(piece, idle_data[..10_000]);
    mount.umount();
    let idle_chunks = cache.join(layer_path("chunks", &idle, 0));
    let idle_len = fs::metadata(&idle_chunks).unwrap().len();
    assert!(
        du(&idle_chunks) < idle_len / 2,
        "the chunk file is not sparse"
    );
    let dead_logs: u64 = fs::read_dir(cache.join("logs"))
        .unwrap()
        .map(|e| du(&e.unwrap().path()))
        .sum();

    let ready_mount = sandbox.mount_at(
        &sandbox.mountpoint("ready"),
        &format!("{}/test/ready:v1", reg.host()),
        &[],
    );
    ready_mount.wait_all_ready();
    let ready_files = cache.join(layer_path("files", &ready, 0));
    assert!(
        wait_until(WAIT, || ready_files.is_dir()),
        "no extracted files"
    );
    hold_background(&proxy, &held, Fault::Stall(FOREVER));
    let held_ref = format!("{}/test/held:v1", proxy.host());
    let mount = sandbox.mount(&held_ref, &["--timeout", "2"]);
    assert_eq!(fs::read(mount.join("a")).unwrap(), a);
    assert_eq!(mount.states(), ["fetching", "fetching"]);

    // The live daemons' logs may grow meanwhile: they are measured apart.
    let used = || du(&cache) - du(&cache.join("logs"));
    let before = used();
    let out = sandbox.ok(&["cache", "prune", flag]);
    let after = used();
    let kept = [
        (
            layer_path("chunks", &held, 0),
            "being downloaded by a running mount",
        ),
        (layer_path("blobs", &ready, 0), "served by a running mount"),
        (layer_path("files", &ready, 0), "served by a running mount"),
    ];
    let gone = [
        layer_path("blobs", &spare, 0),
        layer_path("chunks", &idle, 0),
        format!("{}.journal", layer_path("chunks", &idle, 0)),
    ];
    let exists =
        |paths: &[String]| -> Vec<bool> { paths.iter().map(|p| cache.join(p).exists()).collect() };
    let kept_exist = exists(&kept.clone().map(|(p, _)| p));
    let gone_exist = exists(&gone);
    let logs_left = fs::read_dir(cache.join("logs")).map_or(0, |d| d.count());

    // Every mount serves right bytes, and the held download ends ready.
    assert_eq!(fs::read(ready_mount.join("r")).unwrap(), ready_data);
    assert_eq!(fs::read(mount.join("a")).unwrap(), a);
    assert_eq!(fs::read(mount.join("b")).unwrap(), b);
    proxy.clear_rules();
    let status = mount.wait_for("ready or failed", |s| {
        s.iter().all(|s| s == "ready" || s == "failed")
    });
    assert_eq!(
        common::mount::states(&status),
        ["ready", "ready"],
        "{status:#}"
    );
    assert_eq!(fs::read(mount.join("a")).unwrap(), a);
    assert_eq!(fs::read(mount.join("b")).unwrap(), b);
    let logs_freed = if flag == "--all" { dead_logs } else { 0 };
    assert_eq!(
        freed(&out),
        before - after + logs_freed,
        "prune's freed bytes differ from what the disk got back:\n{out}"
    );
    for (path, why) in &kept {
        let line = line_naming(&out, path)
            .unwrap_or_else(|| panic!("prune does not say it kept {path}:\n{out}"));
        assert!(line.contains(why), "{line}");
    }
    assert_eq!(kept_exist, [true; 3], "what prune said it kept: {kept:?}");
    assert_eq!(gone_exist, [false; 3], "what nobody held: {gone:?}\n{out}");
    if flag == "--all" {
        assert!(!cache.join(layer_path("index", &spare, 0)).exists());
        assert_eq!(
            logs_left, 2,
            "the running daemons' logs, and only they, stay"
        );
    }
    mount.umount();
    ready_mount.umount();
}

#[test]
fn prune_blobs_during_a_download_keeps_every_mount_whole() {
    prune_during_a_download("--blobs");
}

#[test]
fn prune_all_during_a_download_keeps_every_mount_whole() {
    prune_during_a_download("--all");
}

/// Entries of `dir`'s `tmp/` that are not a first pass's lock file.
fn temp_files(cache: &Path) -> Vec<PathBuf> {
    fs::read_dir(cache.join("tmp"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| !p.to_string_lossy().ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default()
}

/// `cache prune --all` while a first mount downloads its layer into `tmp/`: the temporary
/// blob is kept (and said so: it is in use, not merely new), and the mount comes up with
/// right bytes.
#[test]
fn prune_all_during_a_first_mount_keeps_its_download() {
    let reg = TestRegistry::start(Variant::Plain);
    let data = random(2_000_000, 6);
    let image = push(&reg, "test/first", &[("f", &data)]);
    let proxy = FaultProxy::start(&reg.base_url());
    let blob = format!("/blobs/{}", image.layers[0].digest);
    // The pass's download stops for a while, then the connection closes and it resumes.
    proxy.add_rule(Rule::new("GET", &blob, Fault::Stall(Duration::from_secs(6))).nth(1));
    let sandbox = Sandbox::new();
    let cache = sandbox.cache();
    let reference = format!("{}/test/first:v1", proxy.host());
    std::thread::scope(|scope| {
        let mounting = scope.spawn(|| sandbox.mount(&reference, &[]));
        assert!(
            wait_until(WAIT, || !temp_files(&cache).is_empty()),
            "the first pass wrote nothing to tmp/"
        );
        let temp = temp_files(&cache).remove(0);
        // Older than what prune spares for being just created: only its lock keeps it.
        let unchanged_for = || {
            fs::metadata(&temp)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok())
                .unwrap_or_default()
        };
        assert!(
            wait_until(WAIT, || unchanged_for() > Duration::from_secs(3)),
            "the temporary blob keeps changing"
        );
        let out = sandbox.ok(&["cache", "prune", "--all"]);
        let name = temp.strip_prefix(&cache).unwrap().display().to_string();
        let line = line_naming(&out, &name)
            .unwrap_or_else(|| panic!("prune does not say it kept {name}:\n{out}"));
        assert!(line.contains("in use by a running lazypull"), "{line}");
        let mount: Mount = mounting.join().unwrap();
        mount.wait_all_ready();
        assert_eq!(fs::read(mount.join("f")).unwrap(), data);
        mount.umount();
    });
}

/// The blob GETs (downloads) of `image`'s layer `layer` the proxy saw.
fn downloads(proxy: &FaultProxy, image: &PushedImage, layer: usize) -> usize {
    proxy
        .requests("GET", &format!("/blobs/{}", image.layers[layer].digest))
        .len()
}

/// `lazypull index REF` started in the background, its output captured.
fn index_in_background(sandbox: &Sandbox, reference: &str) -> std::process::Child {
    let cache = sandbox.cache();
    sandbox
        .command(&["index", "--cache-dir", cache.to_str().unwrap(), reference])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// What a first pass says when another process has the layer's pass.
const WAITS: &str = "another lazypull process is downloading and verifying this layer";

/// Two first mounts of one image at once: every layer is downloaded once; the second daemon
/// says in its log that it waits for the first, then mounts from what the first stored; the
/// two daemons have logs of their own.
#[test]
fn two_first_mounts_share_one_download() {
    let reg = TestRegistry::start(Variant::Plain);
    let (x, y) = (random(1_500_000, 7), random(1_000_000, 8));
    let image = push(&reg, "test/twice", &[("x", &x), ("y", &y)]);
    let proxy = FaultProxy::start(&reg.base_url());
    // Slow enough for the second to start while the first downloads.
    for layer in &image.layers {
        let blob = format!("/blobs/{}", layer.digest);
        proxy.add_rule(
            Rule::new(
                "GET",
                &blob,
                Fault::Drip {
                    bytes_per_sec: 250_000,
                },
            )
            .nth(1),
        );
    }
    let sandbox = Sandbox::new();
    let cache = sandbox.cache();
    let reference = format!("{}/test/twice:v1", proxy.host());
    let (one, two) = (sandbox.mountpoint("one"), sandbox.mountpoint("two"));
    std::thread::scope(|scope| {
        let first = scope.spawn(|| sandbox.mount_at(&one, &reference, &[]));
        // Its temporary blobs: both downloads have begun.
        assert!(
            wait_until(WAIT, || temp_files(&cache).len() == 2),
            "the first mount never started its passes"
        );
        let second = sandbox.mount_at(&two, &reference, &[]);
        let first = first.join().unwrap();
        for layer in 0..2 {
            assert_eq!(
                downloads(&proxy, &image, layer),
                1,
                "layer {layer} was downloaded more than once"
            );
        }
        for mount in [&first, &second] {
            assert_eq!(mount.states(), ["ready", "ready"]);
            assert_eq!(fs::read(mount.join("x")).unwrap(), x);
            assert_eq!(fs::read(mount.join("y")).unwrap(), y);
        }
        let logs: Vec<String> = fs::read_dir(cache.join("logs"))
            .unwrap()
            .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(logs.len(), 2, "the two daemons do not have a log each");
        let waited = logs.iter().filter(|log| log.contains(WAITS)).count();
        assert_eq!(waited, 1, "one daemon says it waits:\n{}", logs.join("\n"));
        first.umount();
        second.umount();
    });
}

/// Reads `from` in the background, a line at a time.
fn lines(from: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line holding `needle`: false if the lines end (or [`WAIT`] passes) first.
fn wait_for_line(lines: &Receiver<String>, needle: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// The first pass dies (`kill -9`) while a second waits for it: the second then does the pass
/// itself, and only then downloads the layer.
#[test]
fn a_waiting_pass_takes_over_from_a_killed_one() {
    let reg = TestRegistry::start(Variant::Plain);
    let data = random(1_000_000, 9);
    let image = push(&reg, "test/dies", &[("d", &data)]);
    let proxy = FaultProxy::start(&reg.base_url());
    let blob = format!("/blobs/{}", image.layers[0].digest);
    proxy.add_rule(Rule::new("GET", &blob, Fault::Stall(FOREVER)).nth(1));
    let sandbox = Sandbox::new();
    let cache = sandbox.cache();
    let reference = format!("{}/test/dies:v1", proxy.host());
    let mut first = index_in_background(&sandbox, &reference);
    // The pass's temporary blob: its download has begun.
    assert!(
        wait_until(WAIT, || !temp_files(&cache).is_empty()),
        "the first index never started its pass"
    );
    let mut second = index_in_background(&sandbox, &reference);
    let said = lines(second.stderr.take().unwrap());
    assert!(
        wait_for_line(&said, WAITS),
        "the second index does not say it waits for the first"
    );
    assert_eq!(
        downloads(&proxy, &image, 0),
        1,
        "the second downloaded the layer while the first was at it"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    let second = second.wait_with_output().unwrap();
    assert!(second.status.success(), "the second index failed");
    assert_eq!(downloads(&proxy, &image, 0), 2);
    assert!(String::from_utf8_lossy(&second.stdout).contains("downloaded"));
    let mount = sandbox.mount(&format!("{}/test/dies:v1", reg.host()), &[]);
    assert_eq!(mount.states(), ["ready"]);
    assert_eq!(fs::read(mount.join("d")).unwrap(), data);
    mount.umount();
}
