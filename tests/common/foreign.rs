//! Layers in the formats other tools publish, made by those tools: eStargz by `ctr-remote`
//! against a containerd of the test's own, zstd:chunked by `skopeo`. Images go in and out as
//! OCI layouts (`skopeo copy tarball:`, `ctr images import/export`): no network at all.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lazypull::layer::tar::{EntryKind, TarEntry, read_entries};
use serde_json::Value;
use tempfile::TempDir;

use super::tarball::TarBuilder;

/// A layer with every entry type, a file big enough to be chunked, a run of zeros, binary and
/// text xattrs, a long name and special mode bits.
pub fn sample_layer() -> Vec<u8> {
    let mut big = vec![0u8; 3 << 20];
    fastrand::Rng::with_seed(14).fill(&mut big);
    let mut zeros = vec![0u8; 300 << 10];
    zeros[1000] = 1;
    let long = format!("usr/share/{}/deep.txt", "n".repeat(120));
    TarBuilder::new()
        .dir("etc", 0o755)
        .xattr("user.comment", "hello")
        .file("etc/hello", "hello\n", 0o644)
        .file("etc/empty", "", 0o600)
        .symlink("etc/link", "hello")
        .hardlink("etc/hard", "etc/hello")
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .xattr(
            "security.capability",
            [1u8, 0, 0, 2, 0x20, 0, 0, 0, 0xff, 0xfe],
        )
        .file("usr/bin/big", &big, 0o4755)
        .file_owned("usr/bin/zeros", &zeros, 0o640, 1000, 1001)
        .dir("usr/share", 0o755)
        .dir(&format!("usr/share/{}", "n".repeat(120)), 0o755)
        .file(&long, "deep\n", 0o644)
        .dir("dev", 0o755)
        .char_device("dev/null", 1, 3, 0o666)
        .block_device("dev/loop0", 7, 0, 0o660)
        .fifo("run.fifo", 0o600)
        .dir("tmp", 0o1777)
        .build()
}

/// An OCI layout at `dir` (tag `v1`) of one image with `layer` as its only layer, by skopeo.
pub fn oci_layout(work: &Path, layer: &[u8]) -> PathBuf {
    let tar = work.join("layer.tar");
    fs::write(&tar, layer).unwrap();
    let dir = work.join("oci");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("tarball:{}", tar.display()))
        .arg(format!("oci:{}:v1", dir.display())));
    dir
}

pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The manifest (as JSON) of the only image of an OCI layout, and a reader of its blobs.
pub struct Layout {
    pub dir: PathBuf,
    pub manifest: Value,
}

impl Layout {
    pub fn open(dir: &Path) -> Layout {
        let index: Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        let digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let manifest = serde_json::from_slice(&Self::blob_at(dir, &digest)).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            manifest,
        }
    }

    fn blob_at(dir: &Path, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").unwrap();
        fs::read(dir.join("blobs/sha256").join(hex)).unwrap()
    }

    /// The only layer's blob, media type and annotations.
    pub fn layer(&self) -> (Vec<u8>, String, HashMap<String, String>) {
        let layers = self.manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{}", self.manifest);
        let d = &layers[0];
        let annotations = d["annotations"]
            .as_object()
            .map(|a| {
                a.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        (
            Self::blob_at(&self.dir, d["digest"].as_str().unwrap()),
            d["mediaType"].as_str().unwrap().to_string(),
            annotations,
        )
    }
}

/// A containerd of the test's own (root, state, sockets, config in a temp dir), killed on drop.
pub struct Containerd {
    pub dir: TempDir,
    child: Child,
}

impl Containerd {
    pub fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("lazypull-containerd-")
            .tempdir()
            .unwrap();
        let d = dir.path().display();
        // Only the content store and image service are used: no CRI, no snapshotters that
        // need a special filesystem, no listeners beyond the socket.
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.internal.v1.opt\", \
             \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.snapshotter.v1.btrfs\", \
             \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.zfs\", \
             \"io.containerd.tracing.processor.v1.otlp\", \"io.containerd.internal.v1.tracing\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n"
        );
        fs::write(dir.path().join("config.toml"), config).unwrap();
        let log = fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start containerd");
        let containerd = Containerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Command::new("ctr")
            .args(["-a", &containerd.socket(), "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| !s.success())
        {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                fs::read_to_string(containerd.dir.path().join("containerd.log")).unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    pub fn socket(&self) -> String {
        format!("{}/c.sock", self.dir.path().display())
    }

    /// Runs `ctr-remote -a SOCKET ARGS...`.
    pub fn ctr(&self, args: &[&str]) -> Vec<u8> {
        run(Command::new("ctr-remote")
            .arg("-a")
            .arg(self.socket())
            .args(args))
    }

    /// Imports the OCI layout `layout` as `name:v1`, converts it to eStargz as `name:esgz` with
    /// the extra `convert` options, and exports the result as an OCI layout under `work`.
    pub fn estargz(&self, work: &Path, layout: &Path, name: &str, convert: &[&str]) -> Layout {
        let archive = work.join("in.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(layout)
            .arg("-cf")
            .arg(&archive)
            .arg("."));
        self.ctr(&[
            "images",
            "import",
            "--no-unpack",
            "--base-name",
            name,
            &archive.to_string_lossy(),
        ]);
        let (src, dst) = (format!("{name}:v1"), format!("{name}:esgz"));
        let mut args = vec!["images", "convert", "--estargz", "--oci"];
        args.extend_from_slice(convert);
        args.extend_from_slice(&[&src, &dst]);
        self.ctr(&args);
        let exported = work.join("esgz.tar");
        self.ctr(&["images", "export", &exported.to_string_lossy(), &dst]);
        let out = work.join("esgz");
        fs::create_dir_all(&out).unwrap();
        run(Command::new("tar")
            .arg("-C")
            .arg(&out)
            .arg("-xf")
            .arg(&exported));
        Layout::open(&out)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One line of `tar -tv --numeric-owner`: what GNU tar says an entry is.
#[derive(Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub kind: char,
    pub mode: u32,
    pub owner: String,
    pub size: String,
    pub link: Option<String>,
}

/// GNU tar's listing of the uncompressed tar `tar_bytes`.
pub fn tar_listing(tar_bytes: &[u8]) -> Vec<Listed> {
    let mut child = Command::new("tar")
        .args(["--numeric-owner", "-tvf", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = tar_bytes.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&input).unwrap();
    });
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    writer.join().unwrap();
    assert!(child.wait().unwrap().success());
    text.lines().map(parse_listed).collect()
}

fn parse_listed(line: &str) -> Listed {
    // Five space-separated fields (padded to columns), then the name to the end of the line.
    let mut rest = line;
    let mut fields = Vec::new();
    for _ in 0..5 {
        let (field, after) = rest.trim_start().split_once(' ').unwrap();
        fields.push(field);
        rest = after;
    }
    let [perms, owner, size, _date, _time] = fields[..] else {
        panic!("unexpected tar listing line {line:?}");
    };
    let (name, link) = match rest
        .split_once(" -> ")
        .or_else(|| rest.split_once(" link to "))
    {
        Some((name, link)) => (name, Some(link.to_string())),
        None => (rest, None),
    };
    let kind = perms.chars().next().unwrap();
    let bit = |i: usize, set: &[char]| set.contains(&perms.chars().nth(i).unwrap());
    let mut mode = 0;
    for (i, value) in [0o400, 0o200, 0o100, 0o40, 0o20, 0o10, 0o4, 0o2, 0o1]
        .iter()
        .enumerate()
    {
        if bit(i + 1, &['r', 'w', 'x', 's', 't']) {
            mode |= value;
        }
    }
    for (i, special) in [(3, 0o4000), (6, 0o2000), (9, 0o1000)] {
        if bit(i, &['s', 'S', 't', 'T']) {
            mode |= special;
        }
    }
    Listed {
        name: name
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string(),
        kind,
        mode,
        owner: owner.to_string(),
        size: size.to_string(),
        link: link.map(|l| l.trim_start_matches("./").to_string()),
    }
}

/// What `tar -tv` would print for `entry` (its path already normalized).
pub fn listed(entry: &TarEntry) -> Listed {
    let (kind, size, link) = match &entry.kind {
        EntryKind::File { size, .. } => ('-', size.to_string(), None),
        EntryKind::Dir => ('d', "0".into(), None),
        EntryKind::Symlink { target } => ('l', "0".into(), Some(show(target))),
        EntryKind::Hardlink { target } => ('h', "0".into(), Some(show(target))),
        EntryKind::Char { major, minor } => ('c', format!("{major},{minor}"), None),
        EntryKind::Block { major, minor } => ('b', format!("{major},{minor}"), None),
        EntryKind::Fifo => ('p', "0".into(), None),
    };
    Listed {
        name: show(&entry.path),
        kind,
        mode: entry.mode,
        owner: format!("{}/{}", entry.uid, entry.gid),
        size,
        link,
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The entries our own tar reader sees in the uncompressed tar, without `skip`ped names, with
/// every regular file's offset set to 0 (foreign indexes are compared without offsets).
pub fn tar_entries_without_offsets(tar_bytes: &[u8], skip: &[&[u8]]) -> Vec<TarEntry> {
    read_entries(&mut &tar_bytes[..])
        .unwrap()
        .into_iter()
        .filter(|e| !skip.contains(&e.path.as_slice()))
        .map(without_offset)
        .collect()
}

pub fn without_offset(mut entry: TarEntry) -> TarEntry {
    if let EntryKind::File { size, .. } = entry.kind {
        entry.kind = EntryKind::File { offset: 0, size };
    }
    entry
}

/// The bytes of every regular file of an uncompressed tar, by path.
pub fn file_contents(tar_bytes: &[u8]) -> HashMap<Vec<u8>, Vec<u8>> {
    read_entries(&mut &tar_bytes[..])
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            EntryKind::File { offset, size } => Some((
                e.path,
                tar_bytes[offset as usize..(offset + size) as usize].to_vec(),
            )),
            _ => None,
        })
        .collect()
}
