//! A real Debian image: `debootstrap --variant=minbase --include=python3` of bookworm from
//! the mirror this machine's apt uses, cut into gzip layers and kept under
//! [`CACHE_DIR`] so that later runs (and parallel tests) build it once.

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lazypull::digest::Digest;
use serde_json::{Value, json};

use super::image::{self, CompressedLayer, Compression, ImageSpec, PushedImage};
use super::registry::TestRegistry;
use super::tarball::TarBuilder;

pub const SUITE: &str = "bookworm";
/// Where built images are kept between runs: /var/tmp survives reboots, and its cleaner
/// (systemd-tmpfiles, 30 days on Debian) takes away builds no test has read for long.
pub const CACHE_DIR: &str = "/var/tmp/lazypull-test-debian";
/// Names the recipe below: change it when the recipe changes, so no old build is reused.
const RECIPE: &str = "r1";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// debootstrap takes 30 s to a few minutes, depending on the mirror and the machine.
const DEBOOTSTRAP_LIMIT: Duration = Duration::from_secs(20 * 60);
const TOOL_LIMIT: Duration = Duration::from_secs(5 * 60);
/// A file debootstrap leaves that no package owns: the top layer deletes it.
pub const DELETED: &str = "var/log/bootstrap.log";

/// The cached build: gzip layers (bottom first) and what `/etc/debian_version` says.
pub struct Debian {
    pub layers: Vec<CompressedLayer>,
    pub version: String,
}

impl Debian {
    /// The image, built first if no earlier run left it in [`CACHE_DIR`].
    pub fn get() -> Debian {
        fs::create_dir_all(CACHE_DIR).unwrap();
        let key = format!("{SUITE}-minbase-python3-{}-{RECIPE}", image::host_arch());
        let dir = Path::new(CACHE_DIR).join(&key);
        // Tests run in parallel processes: one builds, the others wait for it here.
        let lock = fs::File::create(Path::new(CACHE_DIR).join(format!("{key}.lock"))).unwrap();
        // SAFETY: flock on a descriptor we own; it is released when `lock` is dropped.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(locked, 0, "flock: {}", std::io::Error::last_os_error());
        let (mut layers, version) = match load(&dir) {
            Some(cached) => cached,
            None => {
                build(&key, &dir);
                load(&dir).expect("the image just built is complete")
            }
        };
        drop(lock);
        // What an image build's `RUN rm /var/log/bootstrap.log` leaves: a whiteout.
        let top = TarBuilder::new().whiteout(DELETED).build();
        layers.push(CompressedLayer {
            blob: Compression::Gzip.compress(&top),
            diff_id: Digest::of(&top),
            compression: Compression::Gzip,
        });
        Debian { layers, version }
    }

    /// Pushes the image as `repo:tag`, with `bash` as its command.
    pub fn push(&self, reg: &TestRegistry, repo: &str, tag: &str) -> PushedImage {
        let spec = ImageSpec {
            cmd: Some(vec!["bash".into()]),
            ..Default::default()
        };
        image::push_compressed_image(reg, repo, tag, &spec, &self.layers)
    }
}

/// The cached layers, if a build left all of them (a cleaner of /var/tmp may have taken
/// some away).
fn load(dir: &Path) -> Option<(Vec<CompressedLayer>, String)> {
    let meta: Value = serde_json::from_slice(&fs::read(dir.join("image.json")).ok()?).ok()?;
    let version = fs::read_to_string(dir.join("debian_version")).ok()?;
    let layers = meta["layers"]
        .as_array()?
        .iter()
        .map(|l| {
            Some(CompressedLayer {
                blob: fs::read(dir.join(l["file"].as_str()?)).ok()?,
                diff_id: l["diff_id"].as_str()?.parse().ok()?,
                compression: Compression::Gzip,
            })
        })
        .collect::<Option<_>>()?;
    Some((layers, version))
}

/// A scratch directory in the cache, removed on drop unless it became the build.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        remove_staging(&self.0);
    }
}

/// Removes a build's scratch directory, detaching first whatever a failed debootstrap
/// left mounted inside (its /proc and /sys).
fn remove_staging(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    mounts.reverse();
    for mount in mounts {
        let _ = Command::new("umount").args(["-l", mount]).status();
    }
    let _ = fs::remove_dir_all(dir);
}

/// Builds the image into `dir`, holding the lock of `key`.
fn build(key: &str, dir: &Path) {
    // Only a builder holding the lock writes `.build-KEY-*`: any found now were left by
    // one that was killed.
    let prefix = format!(".build-{key}-");
    for entry in fs::read_dir(CACHE_DIR).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            remove_staging(&entry.path());
        }
    }
    let staging = Staging(
        tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(CACHE_DIR)
            .unwrap()
            .keep(),
    );
    let rootfs = staging.0.join("rootfs");
    let mirror = mirror();
    check_mirror(&mirror);
    let log_path = staging.0.join("debootstrap.log");
    let log = fs::File::create(&log_path).unwrap();
    let started = Instant::now();
    let child = Command::new("debootstrap")
        .args(["--variant=minbase", "--include=python3", SUITE])
        .arg(&rootfs)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run debootstrap ({e}): scripts/test.sh installs it (apt-get install debootstrap)")
        });
    let status = wait_bounded(child, DEBOOTSTRAP_LIMIT);
    if !status.is_some_and(|s| s.success()) {
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "debootstrap of Debian {SUITE} from {mirror} {} after {:?}; the end of its log:\n{}",
            status.map_or("timed out".to_string(), |s| format!("failed ({s})")),
            started.elapsed(),
            tail.join("\n")
        );
    }
    eprintln!("debootstrap took {:?}", started.elapsed());

    // What `apt-get clean && rm -rf /var/lib/apt/lists/*` would leave, as image builds do:
    // debootstrap keeps every .deb it installed and the whole package list.
    for sub in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        for entry in fs::read_dir(rootfs.join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                fs::remove_file(entry.path()).unwrap();
            }
        }
    }
    assert!(
        rootfs.join(DELETED).is_file(),
        "debootstrap no longer writes /{DELETED}: the whiteout layer would delete nothing"
    );
    let version = fs::read_to_string(rootfs.join("etc/debian_version")).unwrap();

    // Two layers, as a base image might be cut: everything but /usr, then /usr (which
    // holds two hardlinked pairs, perl and gunzip).
    let layers = [
        ("rest", vec!["--anchored", "--exclude=./usr", "."]),
        ("usr", vec!["./usr"]),
    ];
    let mut meta = Vec::new();
    for (name, what) in layers {
        let tar = staging.0.join(format!("{name}.tar"));
        tool(
            Command::new("tar")
                .args(["--numeric-owner", "--xattrs", "--xattrs-include=*"])
                .args(["--sort=name", "--format=pax", "-C"])
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tar)
                .args(what),
        );
        let sum = tool(Command::new("sha256sum").arg(&tar));
        let hex = sum.split_whitespace().next().unwrap();
        let diff_id: Digest = format!("sha256:{hex}").parse().unwrap();
        tool(Command::new("gzip").arg("-n").arg(&tar));
        meta.push(json!({ "file": format!("{name}.tar.gz"), "diff_id": diff_id.to_string() }));
    }
    fs::remove_dir_all(&rootfs).unwrap();
    fs::remove_file(&log_path).unwrap();
    fs::write(staging.0.join("debian_version"), version).unwrap();
    let meta = json!({ "layers": meta, "mirror": mirror });
    fs::write(
        staging.0.join("image.json"),
        serde_json::to_vec_pretty(&meta).unwrap(),
    )
    .unwrap();
    // The whole build appears at once, or not at all.
    let _ = fs::remove_dir_all(dir);
    fs::rename(&staging.0, dir).unwrap();
}

/// Runs a local tool that must succeed within [`TOOL_LIMIT`]; its stdout.
fn tool(cmd: &mut Command) -> String {
    let out = bounded(cmd, TOOL_LIMIT);
    assert_eq!(out.code, Some(0), "{cmd:?} failed: {}", out.stderr);
    out.stdout
}

/// The Debian mirror this machine's apt uses, so that CI fetches from where its own
/// packages come from: the first `deb` source for the suite, else the first Debian archive.
pub fn mirror() -> String {
    let mut sources = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        sources.extend(more);
    }
    let mut entries = Vec::new();
    for path in sources {
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        match path.extension().and_then(|e| e.to_str()) {
            Some("sources") => entries.extend(deb822_entries(&text)),
            _ if path.ends_with("sources.list") || path.extension() == Some("list".as_ref()) => {
                entries.extend(one_line_entries(&text))
            }
            _ => {}
        }
    }
    let pick = entries
        .iter()
        .find(|(_, suites)| suites.iter().any(|s| s == SUITE))
        .or_else(|| {
            entries
                .iter()
                .find(|(uri, _)| uri.trim_end_matches('/').ends_with("/debian"))
        });
    pick.map_or(DEFAULT_MIRROR.to_string(), |(uri, _)| {
        uri.trim_end_matches('/').to_string()
    })
}

/// `(uri, suites)` of each `deb` stanza of a deb822 `.sources` file.
pub fn deb822_entries(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| -> Vec<String> {
            stanza
                .lines()
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let enabled = field("Enabled").first().is_none_or(|v| v != "no");
        if enabled && field("Types").iter().any(|t| t == "deb") {
            for uri in field("URIs") {
                out.push((uri, field("Suites")));
            }
        }
    }
    out
}

/// `(uri, [suite])` of each `deb [options] URI SUITE COMPONENTS…` line.
pub fn one_line_entries(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(opts) => opts.split_once(']').map_or("", |(_, r)| r),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push((uri.to_string(), vec![suite.to_string()]));
        }
    }
    out
}

/// Fails with a clear message when the mirror cannot be reached, instead of letting
/// debootstrap fail somewhere in its log.
fn check_mirror(mirror: &str) {
    let url = format!("{mirror}/dists/{SUITE}/Release");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    match client.get(&url).send() {
        Ok(resp) if resp.status().is_success() => {}
        Ok(resp) => panic!(
            "the Debian mirror {mirror} (from this machine's apt sources) answers {} for {url}: \
             these tests build a Debian image from it",
            resp.status()
        ),
        Err(e) => panic!(
            "cannot reach the Debian mirror {mirror} (from this machine's apt sources) at {url}: \
             {e}; these tests build a Debian image from it"
        ),
    }
}

/// How a bounded command ended.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with no stdin, collecting its output; kills it and panics (with what it has
/// printed so far) if it runs longer than `limit`.
pub fn bounded(cmd: &mut Command, limit: Duration) -> Finished {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Read in threads, so a chatty child never blocks on a full pipe.
    let collect = |mut pipe: Box<dyn Read + Send>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        (buf, reader)
    };
    let (out, out_reader) = collect(Box::new(child.stdout.take().unwrap()));
    let (err, err_reader) = collect(Box::new(child.stderr.take().unwrap()));
    let text =
        |buf: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    let Some(status) = wait_bounded(child, limit) else {
        // Grandchildren may still hold the pipes: report what came, without waiting.
        panic!(
            "{cmd:?} still ran after {limit:?} and was killed\nstdout:\n{}\nstderr:\n{}",
            text(&out),
            text(&err)
        );
    };
    let _ = out_reader.join();
    let _ = err_reader.join();
    Finished {
        code: status.code(),
        stdout: text(&out),
        stderr: text(&err),
    }
}

/// Waits for `child` at most `limit`; kills it and answers `None` if it runs longer.
fn wait_bounded(mut child: Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
