//! Runs the `lazypull` binary the way a user does, and reads what it prints.

use std::path::Path;
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::image::{Compression, ImageSpec, push_image};
use super::registry::{TestRegistry, Variant};
use super::tarball::TarBuilder;
use super::unpacked::Entry;

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `lazypull <args>` with the cache at `cache` and no cache from the environment, in the
/// directory that holds the cache (so a test can check nothing lands next to it).
pub fn lazypull(cache: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_lazypull"))
        .current_dir(cache.parent().expect("the cache has a parent"))
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .env_remove("LAZYPULL_CACHE")
        .env_remove("RUST_LOG")
        .output()
        .expect("lazypull runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Run {
    /// Stdout of a run that must have succeeded.
    pub fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "lazypull failed: {}", self.stderr);
        self.stdout
    }

    /// Stderr of a run that must have failed the way every error should: a non-zero exit,
    /// `lazypull: error:` first, no panic.
    pub fn error(self) -> String {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "lazypull should have failed (exit {:?}); stdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.starts_with("lazypull: error:"),
            "stderr: {}",
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "stderr: {}", self.stderr);
        self.stderr
    }
}

/// `lazypull ls -R --json REF` as entries; file contents come from `content(path)`, since
/// `ls` prints none.
pub fn ls_entries(
    cache: &Path,
    reference: &str,
    content: impl Fn(&str) -> Option<lazypull::digest::Digest>,
) -> Vec<Entry> {
    let out = lazypull(cache, &["ls", "-R", "--json", reference]).ok();
    out.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let path = v["path"].as_str().unwrap().to_string();
            let kind = v["type"].as_str().unwrap().to_string();
            let num = |key: &str| v[key].as_u64().unwrap_or_else(|| panic!("{key} in {line}"));
            Entry {
                content: (kind == "file").then(|| content(&path)).flatten(),
                mode: num("mode") as u32,
                uid: num("uid") as u32,
                gid: num("gid") as u32,
                size: num("size"),
                link: v["link"].as_str().map(|l| l.as_bytes().to_vec()),
                rdev: v["rdev"]
                    .as_array()
                    .map(|r| (r[0].as_u64().unwrap() as u32, r[1].as_u64().unwrap() as u32)),
                nlink: num("nlink"),
                xattrs: v["xattrs"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, b64)| (k.clone(), STANDARD.decode(b64.as_str().unwrap()).unwrap()))
                    .collect(),
                mtime: (v["mtime"].as_i64().unwrap(), None),
                inode: num("inode"),
                path,
                kind,
            }
        })
        .collect()
}

/// Files under `dir` (recursively), as full paths; the daemon logs under `logs/` left out.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "logs" {
                out.extend(files_under(&entry.path()));
            }
        } else {
            out.push(entry.path().display().to_string());
        }
    }
    out
}

/// Nothing but the index and blob of `kept` layers is in the cache (no chunks, no extracted
/// files, nothing in `tmp/`), logs aside.
pub fn assert_cache_holds_only(cache: &Path, kept: &[&lazypull::digest::Digest]) {
    let mut expected: Vec<String> = kept
        .iter()
        .flat_map(|d| {
            ["blobs", "index"].map(|sub| {
                cache
                    .join(sub)
                    .join("sha256")
                    .join(d.hex())
                    .display()
                    .to_string()
            })
        })
        .collect();
    expected.sort();
    let mut found = files_under(cache);
    found.sort();
    assert_eq!(found, expected, "cache contents");
}

/// Pushes a harmless layer and `hostile` (gzip) over it and lists the image with `ls -R`;
/// asserts the error names the hostile layer's digest and every one of `needles`, and that the
/// directory holding the cache (the working directory of the run) holds nothing else and the
/// cache's `tmp/` is empty. Returns stderr.
pub fn refused(hostile: Vec<u8>, needles: &[&str]) -> String {
    let reg = TestRegistry::start(Variant::Plain);
    let base = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644)
        .build();
    let spec = ImageSpec::new(vec![
        (base, Compression::Gzip),
        (hostile, Compression::Gzip),
    ]);
    let image = push_image(&reg, "evil", "1", &spec);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let reference = format!("{}/evil:1", reg.host());
    let err = lazypull(&cache, &["ls", "-R", &reference]).error();
    let layer = image.layers[1].digest.to_string();
    assert!(err.contains(&layer), "no layer digest {layer} in: {err}");
    for needle in needles {
        assert!(err.contains(needle), "no {needle:?} in: {err}");
    }
    let beside: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(beside, ["cache"], "written next to the cache");
    assert_eq!(
        std::fs::read_dir(cache.join("tmp")).unwrap().count(),
        0,
        "left in the cache's tmp/"
    );
    err
}

/// `du -sB1 PATH`: the bytes allocated on disk below `path`; 0 if it is missing.
pub fn du(path: &Path) -> u64 {
    if !path.exists() {
        return 0;
    }
    let out = Command::new("du").arg("-sB1").arg(path).output().unwrap();
    assert!(out.status.success(), "du {path:?} failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
