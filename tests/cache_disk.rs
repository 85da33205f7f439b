//! What the cache puts on disk: nothing another local user can read, whatever the umask; no
//! disk filled by a layer of zeros; `cache ls` telling what each directory really takes; and
//! no partial blob of a killed `index` left in `tmp/`.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::cli::du;
use common::image::{self, CompressedLayer, Compression, ImageSpec};
use common::mount::{FOREVER, Sandbox, WAIT, hold_background, random, wait_until};
use common::proxy::{Fault, FaultProxy, Rule};
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;
use lazypull::digest::Digest;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const SECRET: &str = "root:SECRET-only-root-may-read-this:19000:0:99999:7:::";

/// Runs `args` as the user `nobody`; its stdout, stderr and whether it succeeded.
fn as_nobody(args: &[&str]) -> (String, String, bool) {
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args(args)
        .output()
        .expect("run setpriv");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// Every path below `dir`.
fn all_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            out.extend(all_under(&path));
        }
        out.push(path);
    }
    out
}

/// Asserts that `nobody` can read nothing of the cache and that everything in it is the
/// owner's only.
fn assert_private(cache: &Path, when: &str) {
    let c = cache.to_str().unwrap();
    let (found, _, _) = as_nobody(&["grep", "-r", "-l", "SECRET", c]);
    assert_eq!(
        found, "",
        "{when}: another user reads the image's /etc/shadow"
    );
    let (listed, _, _) = as_nobody(&["find", c, "-mindepth", "2"]);
    assert_eq!(listed, "", "{when}: another user lists the cache");
    let open: Vec<String> = all_under(cache)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o077 != 0)
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        open,
        Vec::<String>::new(),
        "{when}: open to group or others"
    );
}

/// An image file of mode 0600 whose bytes reach every part of the cache (the layer is
/// uncompressed, so blob and chunk file hold them as they are): the mount shows it to root
/// only, and so must the cache, even for a cache made with umask 000 in a directory
/// everyone may enter, and for one an older version left open.
#[test]
fn another_user_reads_nothing_of_the_cache_whatever_the_umask() {
    // SAFETY: umask has no memory preconditions; nextest runs this test in a process of its
    // own, and every process it starts (lazypull, its daemon) inherits it.
    unsafe { libc::umask(0) };
    let reg = TestRegistry::start(Variant::Plain);
    let big = random(300_000, 7);
    let spec = ImageSpec::new(vec![(
        TarBuilder::new()
            .dir("etc", 0o755)
            .file("etc/shadow", SECRET, 0o600)
            .file("etc/big", &big, 0o644)
            .build(),
        Compression::None,
    )]);
    let image = image::push_image(&reg, "test/secret", "v1", &spec);
    let sandbox = Sandbox::new();
    let cache = sandbox.cache();
    for dir in [cache.parent().unwrap(), &cache] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
    }
    sandbox.index(&format!("{}/test/secret:v1", reg.host()), &[]);
    assert_private(&cache, "after index");

    // Lazily: the secret's bytes are in the chunk file of a download under way.
    sandbox.prune_blobs();
    let proxy = FaultProxy::start(&reg.base_url());
    hold_background(&proxy, &image, Fault::Stall(FOREVER));
    let reference = format!("{}/test/secret:v1", proxy.host());
    let mount = sandbox.mount(&reference, &["--timeout", "2"]);
    assert_eq!(
        fs::read_to_string(mount.join("etc/shadow")).unwrap(),
        SECRET
    );
    let (_, denied, ok) = as_nobody(&["cat", mount.join("etc/shadow").to_str().unwrap()]);
    assert!(!ok, "the mount let nobody read /etc/shadow: {denied}");
    assert_private(&cache, "during a lazy download");

    // Ready, and the layer's files extracted for passthrough.
    proxy.clear_rules();
    mount.wait_all_ready();
    let files = cache
        .join("files/sha256")
        .join(image.layers[0].digest.hex());
    assert!(
        wait_until(WAIT, || files.is_dir()),
        "the layer's files were not extracted"
    );
    assert_eq!(fs::read(mount.join("etc/big")).unwrap(), big);
    assert_private(&cache, "with the mount ready");
    mount.umount();
    assert_private(&cache, "after umount");

    // A cache an older version left open (0755 directories, 0644 files) is closed again by
    // the next command that opens it.
    for path in all_under(&cache) {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    let (found, _, _) = as_nobody(&["grep", "-r", "-l", "SECRET", cache.to_str().unwrap()]);
    assert_ne!(found, "", "nobody cannot read even an open cache");
    sandbox.ok(&["cache", "ls"]);
    assert_private(&cache, "after an older version's cache was opened");
}

/// The bytes of a file of `size` zeros with a few marks in it (one across a block
/// boundary, one at the very end of a block), then zeros to the end.
fn zeros_with_marks(size: u64) -> impl Read {
    let mark = |at: u64, len: u64| (at, vec![0xa5u8; len as usize]);
    let marks = [mark(300 << 20, 1), mark((700 << 20) + 4090, 20)];
    let mut parts: Vec<Box<dyn Read>> = Vec::new();
    let mut pos = 0;
    for (at, bytes) in marks {
        parts.push(Box::new(std::io::repeat(0).take(at - pos)));
        pos = at + bytes.len() as u64;
        parts.push(Box::new(std::io::Cursor::new(bytes)));
    }
    parts.push(Box::new(std::io::repeat(0).take(size - pos)));
    parts
        .into_iter()
        .reduce(|a, b| Box::new(a.chain(b)))
        .unwrap()
}

/// A writer that hashes what goes through it into the next one.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A gzip layer (about a megabyte) holding one file of `size` mostly zeros: a bomb.
fn bomb_layer(size: u64) -> CompressedLayer {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(Hashing {
        inner: gz,
        hash: Sha256::new(),
    });
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(common::tarball::MTIME);
    tar.append_data(&mut header, "zeros", zeros_with_marks(size))
        .unwrap();
    let hashing = tar.into_inner().unwrap();
    CompressedLayer {
        blob: hashing.inner.finish().unwrap(),
        diff_id: Digest::from_sha256(hashing.hash.finalize().into()),
        compression: Compression::Gzip,
    }
}

/// The sha256 of everything `r` gives.
fn sha256_of(mut r: impl Read) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            return hash.finalize().into();
        }
        hash.update(&buf[..n]);
    }
}

/// `cache ls --json`'s usage per directory equals `du` of each, and the total that of the
/// whole cache.
fn assert_ls_is_du(sandbox: &Sandbox) -> Value {
    let listing: Value = serde_json::from_str(&sandbox.ok(&["cache", "ls", "--json"])).unwrap();
    let cache = sandbox.cache();
    for dir in ["index", "blobs", "chunks", "files", "traces", "tmp", "logs"] {
        assert_eq!(
            listing["usage"][dir].as_u64(),
            Some(du(&cache.join(dir))),
            "cache ls for {dir}/: {listing}"
        );
    }
    assert_eq!(listing["usage"]["total"].as_u64(), Some(du(&cache)));
    listing
}

/// A layer of a megabyte that inflates to a GiB of zeros: once it is ready, its extracted
/// file takes hardly any disk, reads back right through the mount, and `cache ls` says what
/// each directory takes, as `du` does.
#[test]
fn a_gzip_bomb_fills_no_disk_and_reads_back_right() {
    const SIZE: u64 = 1 << 30;
    let reg = TestRegistry::start(Variant::Plain);
    let layer = bomb_layer(SIZE);
    assert!(layer.blob.len() < 4 << 20, "{} bytes", layer.blob.len());
    let spec = ImageSpec::new(vec![]);
    let image = image::push_compressed_image(&reg, "test/bomb", "v1", &spec, &[layer]);
    let sandbox = Sandbox::new();
    let mount = sandbox.mount(&format!("{}/test/bomb:v1", reg.host()), &[]);
    mount.wait_all_ready();
    let files = sandbox
        .cache()
        .join("files/sha256")
        .join(image.layers[0].digest.hex());
    assert!(
        wait_until(WAIT, || files.is_dir()),
        "the layer's files were not extracted"
    );
    let used = du(&files);
    assert!(
        used < 1 << 20,
        "the extracted file of zeros takes {used} bytes on disk"
    );
    assert_eq!(fs::metadata(mount.join("zeros")).unwrap().len(), SIZE);
    assert_eq!(
        sha256_of(fs::File::open(mount.join("zeros")).unwrap()),
        sha256_of(zeros_with_marks(SIZE)),
        "the file read through the mount differs"
    );
    let listing = assert_ls_is_du(&sandbox);
    let row = &listing["layers"][0];
    assert_eq!(row["files"].as_u64(), Some(used), "{listing}");
    assert!(row["blob"].as_u64().unwrap() > 0 && row["index"].as_u64().unwrap() > 0);
    mount.umount();
}

/// `kill -9` of `lazypull index` in the middle of a download leaves its partial blob in
/// `tmp/`; `cache ls` shows it; the next `index` (a minute later: the partial blob's mtime is
/// set back) removes it.
#[test]
fn a_killed_index_leaves_no_partial_blob_behind() {
    let reg = TestRegistry::start(Variant::Plain);
    let data = random(8 << 20, 3);
    let spec = ImageSpec::new(vec![(
        TarBuilder::new().file("data", &data, 0o644).build(),
        Compression::Gzip,
    )]);
    let image = image::push_image(&reg, "test/killed", "v1", &spec);
    let proxy = FaultProxy::start(&reg.base_url());
    let blob = format!("/blobs/{}", image.layers[0].digest);
    proxy.add_rule(Rule::new(
        "GET",
        &blob,
        Fault::Drip {
            bytes_per_sec: 1 << 20,
        },
    ));
    let sandbox = Sandbox::new();
    let cache = sandbox.cache();
    let reference = format!("{}/test/killed:v1", proxy.host());
    let mut index = sandbox
        .command(&["index", "--cache-dir", cache.to_str().unwrap(), &reference])
        .spawn()
        .unwrap();
    let tmp = cache.join("tmp");
    let partial = || {
        fs::read_dir(&tmp).ok().and_then(|entries| {
            entries
                .flatten()
                .find(|e| e.metadata().is_ok_and(|m| m.len() >= 2 << 20))
                .map(|e| e.path())
        })
    };
    assert!(
        wait_until(WAIT, || partial().is_some()),
        "no partial blob in tmp/"
    );
    index.kill().unwrap();
    index.wait().unwrap();
    let partial = partial().unwrap();
    let listing = assert_ls_is_du(&sandbox);
    assert!(
        listing["usage"]["tmp"].as_u64().unwrap() >= 2 << 20,
        "{listing}"
    );

    let a_minute_ago = SystemTime::now() - Duration::from_secs(120);
    fs::File::open(&partial)
        .unwrap()
        .set_modified(a_minute_ago)
        .unwrap();
    proxy.clear_rules();
    sandbox.index(&reference, &[]);
    assert!(
        !partial.exists(),
        "the killed index's partial blob is still in tmp/"
    );
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
}
