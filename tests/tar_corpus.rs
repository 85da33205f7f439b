//! lazypull's tar reader against the two reference readers, over Go's own tar test corpus
//! (Debian's golang-1.19-src): Go's archive/tar (the reader umoci unpacks with, run for real by
//! tests/go/tar_list.go) and GNU tar (`tar -tvf`). A tar both read must read as Go reads it
//! (names, types, sizes, link targets, modes, owners, mtimes, devices, xattrs); one both refuse
//! must be refused. Where one reads and the other refuses, or where lazypull knowingly refuses
//! what both read (sparse files), the test says what lazypull does and why. Where both read but
//! differently (invalid-go17.tar: Go reads the prefix its old writers put in GNU headers;
//! pax-global-records.tar: GNU tar applies a global `path`), lazypull reads as Go, as umoci does.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use lazypull::layer::tar::{EntryKind, TarEntry, read_entries};
use serde::Deserialize;

const CORPUS: &str = "/usr/share/go-1.19/src/archive/tar/testdata";
const GO: &str = "/usr/lib/go-1.19/bin/go";

/// Corpus files one reference reads and the other refuses, with what lazypull says about each
/// (it refuses all of them).
const SPLIT: &[(&str, &str, &str)] = &[
    (
        "hdr-only.tar",
        "non-file entry carries",
        "a directory, link or device with a size: Go steps over no data after it, GNU tar over \
         `size` bytes, so the two read different entries after it",
    ),
    ("pax-bad-mtime-file.tar", "bad PAX mtime", "Go refuses"),
    ("pax-nul-path.tar", "`path` holds a NUL byte", "Go refuses"),
    (
        "pax-bad-hdr-large.tar",
        "1 MiB or more",
        "Go refuses a PAX header of 1 MiB or more",
    ),
];

/// One entry as tests/go/tar_list.go prints it.
#[derive(Deserialize, Debug)]
struct GoEntry {
    name: String,
    typeflag: u8,
    size: i64,
    link: String,
    mode: i64,
    uid: u32,
    gid: u32,
    mtime: i64,
    nsec: u32,
    devmajor: u32,
    devminor: u32,
    xattrs: BTreeMap<String, String>,
    sparse: bool,
}

#[derive(Deserialize)]
struct GoListing {
    entries: Option<Vec<GoEntry>>,
    error: Option<String>,
}

fn base64(text: &str) -> Vec<u8> {
    STANDARD.decode(text).expect("base64 from tar_list.go")
}

/// A name as lazypull normalizes it: no `.` parts, no leading or trailing `/`.
fn normalized(name: &[u8]) -> Vec<u8> {
    let parts: Vec<&[u8]> = name
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    parts.join(&b'/')
}

/// What Go read, in lazypull's terms; `None` for a PAX global header, which lazypull drops
/// (OCI unpackers ignore its defaults).
fn expected(go: &GoEntry) -> Option<TarEntry> {
    let link = normalized(&base64(&go.link));
    let kind = match go.typeflag {
        b'g' => return None,
        b'0' => EntryKind::File {
            offset: 0,
            size: go.size as u64,
        },
        b'5' | b'D' => EntryKind::Dir,
        b'1' => EntryKind::Hardlink { target: link },
        b'2' => EntryKind::Symlink {
            target: base64(&go.link),
        },
        b'3' => EntryKind::Char {
            major: go.devmajor,
            minor: go.devminor,
        },
        b'4' => EntryKind::Block {
            major: go.devmajor,
            minor: go.devminor,
        },
        b'6' => EntryKind::Fifo,
        other => panic!("Go read type flag {:?}: map it here", char::from(other)),
    };
    Some(TarEntry {
        path: normalized(&base64(&go.name)),
        kind,
        mode: (go.mode & 0o7777) as u32,
        uid: go.uid,
        gid: go.gid,
        mtime: lazypull::layer::tar::Mtime {
            sec: go.mtime,
            nsec: go.nsec,
        },
        xattrs: go
            .xattrs
            .iter()
            .map(|(k, v)| (k.clone(), base64(v)))
            .collect(),
    })
}

/// Builds tests/go/tar_list.go once per run, with Go's build cache under the target directory.
fn go_lister(dir: &Path) -> PathBuf {
    assert!(
        Path::new(GO).exists() && Path::new(CORPUS).is_dir(),
        "{GO} or {CORPUS} missing: install golang-1.19-go and golang-1.19-src (scripts/test.sh does)"
    );
    let bin = dir.join("tar_list");
    let out = Command::new(GO)
        .arg("build")
        .arg("-o")
        .arg(&bin)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/go/tar_list.go"))
        .env(
            "GOCACHE",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("gocache"),
        )
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "off")
        .output()
        .expect("go runs");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// The corpus's tars, the compressed one inflated into `dir`.
fn corpus(dir: &Path) -> Vec<PathBuf> {
    let mut tars = Vec::new();
    for entry in fs::read_dir(CORPUS).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".tar") {
            tars.push(path);
        } else if let Some(tar) = name.strip_suffix(".bz2") {
            let out = Command::new("bzip2")
                .arg("-dc")
                .arg(&path)
                .output()
                .unwrap();
            assert!(out.status.success(), "bzip2 -dc {path:?}");
            fs::write(dir.join(tar), out.stdout).unwrap();
            tars.push(dir.join(tar));
        }
    }
    tars.sort();
    tars
}

#[test]
fn go_corpus_reads_as_both_reference_readers_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let lister = go_lister(tmp.path());
    let tars = corpus(tmp.path());
    assert!(tars.len() > 40, "corpus has {} tars", tars.len());
    let mut failures = Vec::new();
    let mut both_read = 0;
    for tar in &tars {
        let name = tar.file_name().unwrap().to_str().unwrap();
        let out = Command::new(&lister).arg(tar).output().unwrap();
        assert!(out.status.success(), "tar_list {name}");
        let go: GoListing = serde_json::from_slice(&out.stdout).unwrap();
        let gnu_reads = Command::new("tar")
            .arg("-tvf")
            .arg(tar)
            .output()
            .unwrap()
            .status
            .success();
        let ours = read_entries(&mut fs::File::open(tar).unwrap());
        let mut fail = |why: String| failures.push(format!("{name}: {why}"));
        match (go.entries, gnu_reads) {
            (Some(entries), true) => {
                both_read += 1;
                if let Some(sparse) = entries.iter().find(|e| e.sparse) {
                    // The index keeps each file as one range of the layer; a sparse file's data
                    // has holes, so lazypull refuses it by name.
                    let want = format!(
                        "`{}`: sparse files are not supported",
                        String::from_utf8_lossy(&normalized(&base64(&sparse.name)))
                    );
                    match ours {
                        Err(e) if e.to_string().contains(&want) => {}
                        other => fail(format!("sparse: want {want:?}, got {other:?}")),
                    }
                    continue;
                }
                let want: Vec<TarEntry> = entries.iter().filter_map(expected).collect();
                match ours {
                    Ok(got) => {
                        // Offsets are lazypull's own; Go gives none.
                        let got: Vec<TarEntry> = got
                            .into_iter()
                            .map(|mut e| {
                                if let EntryKind::File { offset, .. } = &mut e.kind {
                                    *offset = 0;
                                }
                                e
                            })
                            .collect();
                        if got != want {
                            fail(format!("read\n  {got:?}\nGo read\n  {want:?}"));
                        }
                    }
                    Err(e) => fail(format!("refused ({e}), both references read it")),
                }
            }
            (None, false) => {
                if let Ok(got) = ours {
                    fail(format!(
                        "read {} entries, both references refuse it (Go: {})",
                        got.len(),
                        go.error.unwrap_or_default()
                    ));
                }
            }
            (go_entries, _) => {
                let Some((_, needle, why)) = SPLIT.iter().find(|(file, ..)| *file == name) else {
                    fail(format!(
                        "Go {} it, GNU tar {}: decide what lazypull does and list it in SPLIT",
                        if go_entries.is_some() {
                            "reads"
                        } else {
                            "refuses"
                        },
                        if gnu_reads { "reads" } else { "refuses" }
                    ));
                    continue;
                };
                match ours {
                    Err(e) if e.to_string().contains(needle) => {}
                    other => fail(format!(
                        "want an error with {needle:?} ({why}), got {other:?}"
                    )),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(both_read > 25, "only {both_read} tars both readers read");
}
