//! `lazypull ls -R --json` of images in a real registry against what `umoci unpack` writes for
//! the same images (fetched with `skopeo copy`): every overlay rule, in every layer
//! compression and manifest format, and layers written by tools. Compared entry by entry:
//! path, type, mode, owner, size, content, link target, rdev, xattrs, nlink, mtime (seconds)
//! and which paths share an inode.

mod common;

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;
use std::process::Command;

use common::cli::ls_entries;
use common::image::{Compression, Format, ImageSpec, push_image};
use common::registry::{TestRegistry, Variant};
use common::tarball::{TarBuilder, tool_layer};
use common::unpacked::{self, umoci_reference};
use lazypull::digest::Digest;
use tar::EntryType;

/// `/a/b` for a tar name `./a/b/`, `a/b` or `/a/b`.
fn absolute(name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    let parts: Vec<&str> = name
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// What each path holds after the layers are applied, read straight from the tars with the
/// `tar` crate: the last regular file written at a path, or for a hardlink the content its
/// target had when it was linked. Only paths that exist after the merge are ever looked up.
fn source_contents(tars: &[Vec<u8>]) -> HashMap<String, Digest> {
    let mut contents = HashMap::new();
    for tar in tars {
        let mut archive = tar::Archive::new(Cursor::new(tar));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = absolute(&entry.path_bytes());
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data).unwrap();
                    contents.insert(path, Digest::of(&data));
                }
                tar::EntryType::Link => {
                    let target = absolute(&entry.link_name_bytes().unwrap());
                    // A hardlink to a symlink or device holds no content.
                    match contents.get(&target).cloned() {
                        Some(content) => contents.insert(path, content),
                        None => contents.remove(&path),
                    };
                }
                _ => {
                    contents.remove(&path);
                }
            }
        }
    }
    contents
}

/// The forms every image is pushed in, by tag. gzip comes before zstd: umoci 0.4.7 (Debian's)
/// refuses `tar+zstd` layers ("blob is not correct mediatype"), so the zstd image is compared
/// with umoci's unpack of the same tars pushed as gzip.
const FORMS: [(&str, Compression, Format); 4] = [
    ("gzip", Compression::Gzip, Format::Oci),
    ("none", Compression::None, Format::Oci),
    ("docker", Compression::Gzip, Format::Docker),
    ("zstd", Compression::Zstd, Format::Oci),
];

/// Pushes `tars` in every form of [`FORMS`], lists each with lazypull and compares it with
/// umoci's unpack. Returns the paths lazypull listed.
fn conform(repo: &str, tars: &[Vec<u8>]) -> Vec<String> {
    conform_with(repo, tars, source_contents(tars))
}

/// [`conform`] for tars the `tar` crate cannot walk, with what each file holds given.
fn conform_with(repo: &str, tars: &[Vec<u8>], contents: HashMap<String, Digest>) -> Vec<String> {
    let reg = TestRegistry::start(Variant::Plain);
    let tmp = tempfile::tempdir().unwrap();
    let mut gzip_rootfs = None;
    let mut listed = Vec::new();
    for (tag, compression, format) in FORMS {
        let spec = ImageSpec {
            format,
            ..ImageSpec::new(tars.iter().map(|t| (t.clone(), compression)).collect())
        };
        push_image(&reg, repo, tag, &spec);
        let rootfs = match compression {
            Compression::Zstd => gzip_rootfs.clone().expect("gzip form compared first"),
            _ => umoci_reference(&reg.host(), repo, tag, tmp.path()),
        };
        if (compression, format) == (Compression::Gzip, Format::Oci) {
            gzip_rootfs = Some(rootfs.clone());
        }
        // A fresh cache per form: each is indexed from its own blobs.
        let cache = tmp.path().join(format!("cache-{tag}"));
        let reference = format!("{}/{repo}:{tag}", reg.host());
        let entries = ls_entries(&cache, &reference, |p| contents.get(p).cloned());
        unpacked::compare(&entries, &rootfs);
        listed = entries.into_iter().map(|e| e.path).collect();
    }
    listed
}

#[test]
fn whiteouts_and_opaque_whiteouts() {
    let lower = TarBuilder::new()
        .dir("gone", 0o755)
        .file("gone/a", "a", 0o644)
        .file("f", "f", 0o644)
        .dir("before", 0o755)
        .file("before/old", "o", 0o644)
        .dir("after", 0o755)
        .file("after/old", "o", 0o644)
        .dir("kept", 0o755)
        .file("kept/x", "x", 0o644)
        .file("kept/y", "y", 0o644)
        .symlink("was_link", "nowhere")
        .build();
    let upper = TarBuilder::new()
        .whiteout("gone")
        .whiteout("f")
        // Opaque marker before its siblings of the same layer, and after them.
        .opaque("before")
        .file("before/new", "n", 0o644)
        .file("after/new", "n", 0o644)
        .opaque("after")
        // A whiteout never hides an entry of its own layer.
        .file("kept/x", "new x", 0o600)
        .whiteout("kept/x")
        .whiteout("kept/y")
        // A symlink turned into a directory, marked opaque as overlayfs-based builders do.
        .opaque("was_link")
        .dir("was_link", 0o755)
        .file("was_link/x", "x", 0o644)
        .build();
    let paths = conform("whiteouts", &[lower, upper]);
    assert_eq!(
        paths,
        [
            "/",
            "/after",
            "/after/new",
            "/before",
            "/before/new",
            "/kept",
            "/kept/x",
            "/was_link",
            "/was_link/x",
        ]
    );
}

#[test]
fn replacements_attributes_and_missing_parents() {
    let lower = TarBuilder::new()
        .dir("d", 0o755)
        .file("d/lower", "l", 0o644)
        .dir("fd", 0o755)
        .file("fd/child", "c", 0o644)
        .file("df", "file", 0o644)
        .build();
    let upper = TarBuilder::new()
        .xattr("user.dir", "yes")
        .dir_owned("./", 0o711, 5, 6)
        // Directory over directory: new attributes, children merged.
        .dir_owned("d", 0o2750, 1000, 1001)
        .file_owned("d/upper", "u", 0o640, 1000, 1001)
        // File over directory hides the subtree; directory over file.
        .file("fd", "now a file", 0o644)
        .dir("df", 0o755)
        .file("df/inside", "i", 0o644)
        // Child before its parent; parents that never appear.
        .file("late/inside", "i", 0o644)
        .dir_owned("late", 0o700, 42, 43)
        .file("deep/er/est", "e", 0o644)
        .build();
    let paths = conform("replace", &[lower, upper]);
    for path in [
        "/d/lower",
        "/d/upper",
        "/deep/er/est",
        "/df/inside",
        "/late/inside",
    ] {
        assert!(paths.contains(&path.to_string()), "{path} in {paths:?}");
    }
    assert!(!paths.contains(&"/fd/child".to_string()));
}

#[test]
fn hardlinks_in_layer_across_layers_and_whited_out() {
    let lower = TarBuilder::new()
        .file("base", "base", 0o755)
        .hardlink("base2", "base")
        .file("doomed", "doomed", 0o644)
        .hardlink("survivor", "doomed")
        .symlink("sym", "base")
        .hardlink("sym_hard", "sym")
        .build();
    let upper = TarBuilder::new()
        .hardlink("up/alias", "base")
        .file("new", "new", 0o644)
        .hardlink("new2", "new")
        .whiteout("doomed")
        .build();
    let paths = conform("hardlinks", &[lower, upper]);
    assert!(paths.contains(&"/up/alias".to_string()) && !paths.contains(&"/doomed".to_string()));
}

#[test]
fn special_files_modes_xattrs_and_long_names() {
    let cap = [
        1u8, 0, 0, 2, 0x0a, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let pax_long = format!("pax/{}", "p".repeat(150));
    let gnu_long = format!("gnu/{}", "g".repeat(150));
    let long_target = format!("/{}", "t".repeat(200));
    let layer = TarBuilder::new()
        .symlink("sym", "/etc/passwd")
        .symlink("rel", "../up/there")
        .symlink("longsym", &long_target)
        .char_device("dev/null", 1, 3, 0o666)
        .block_device("dev/loop9", 7, 9, 0o660)
        .fifo("fifo", 0o600)
        .file("suid", "s", 0o4755)
        .file("sgid", "g", 0o2711)
        .file_owned("owned", "o", 0o640, 1000, 1000)
        .dir("sticky", 0o1777)
        .xattr("security.capability", cap)
        .xattr("user.note", "hello")
        .file("capped", "ping", 0o755)
        .pax("path", &pax_long)
        .pax("mtime", "1600000000.123456789")
        .file("pax/short", "pax name", 0o644)
        // The builder writes a GNU long-name record for names over 100 bytes.
        .file(&gnu_long, "gnu name", 0o644)
        .build();
    let paths = conform("special", &[layer]);
    assert!(paths.contains(&format!("/{pax_long}")) && paths.contains(&format!("/{gnu_long}")));
}

#[test]
fn repeated_extension_headers_the_last_wins_and_a_pax_header_alone_is_empty() {
    let first = format!("long/{}", "f".repeat(120));
    let second = format!("long/{}", "s".repeat(120));
    let target = format!("/{}", "t".repeat(120));
    let layer = TarBuilder::new()
        .dir("long", 0o755)
        .gnu_long(EntryType::GNULongName, &first)
        .gnu_long(EntryType::GNULongName, &second)
        .file("short", "the second name's", 0o644)
        .gnu_long(EntryType::GNULongLink, "/first/target")
        .gnu_long(EntryType::GNULongLink, &target)
        .symlink("link", "header-target")
        // A later PAX header replaces an earlier one whole: no `path`, no xattr from the first.
        .pax("path", "first/pax/path")
        .xattr("user.first", "1")
        .pax_header()
        .pax("mtime", "1600000000.5")
        .xattr("user.second", "2")
        .file("kept", "kept", 0o644)
        .build();
    // A layer of one PAX header and no entry.
    let alone = TarBuilder::new()
        .pax("path", "nothing")
        .pax_header()
        .build();
    let contents = HashMap::from([
        (format!("/{second}"), Digest::of(b"the second name's")),
        ("/kept".to_string(), Digest::of(b"kept")),
    ]);
    let paths = conform_with("headers", &[layer, alone], contents);
    assert_eq!(
        paths,
        ["/", "/kept", "/link", "/long", &format!("/{second}")]
    );
}

/// umoci refuses a GNU dumpdir (type `D`, what `tar --listed-incremental` writes for a
/// directory) as an unknown type; GNU tar and Go's reader read it as a directory, and so does
/// lazypull: its tree is compared with what GNU tar extracts.
#[test]
fn gnu_dumpdirs_are_directories_as_gnu_tar_extracts_them() {
    let layer = TarBuilder::new()
        .raw(EntryType::new(b'D'), b"dd/", b"", b"Ysub\0Ngone\0\0", 0o750)
        .file("dd/sub", "in", 0o644)
        .build();
    let reg = TestRegistry::start(Variant::Plain);
    push_image(
        &reg,
        "dumpdir",
        "1",
        &ImageSpec::new(vec![(layer.clone(), Compression::Gzip)]),
    );
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    std::fs::write(tmp.path().join("layer.tar"), &layer).unwrap();
    sh(
        "chmod 0755 rootfs && tar --numeric-owner -xpf layer.tar -C rootfs",
        tmp.path(),
    );
    let contents = HashMap::from([("/dd/sub".to_string(), Digest::of(b"in"))]);
    let entries = ls_entries(
        &tmp.path().join("cache"),
        &format!("{}/dumpdir:1", reg.host()),
        |p| contents.get(p).cloned(),
    );
    unpacked::compare(&entries, &rootfs);
    assert_eq!(unpacked::entry(&entries, "/dd").kind, "dir");
}

#[test]
fn layers_written_by_gnu_tar_and_python_tarfile() {
    let python = |format: &str| {
        format!(
            "python3 -c 'import os,tarfile; t=tarfile.open(os.environ[\"OUT\"],\"w\",format=tarfile.{format}); \
             [t.add(n) for n in sorted(os.listdir(\".\"))]; t.close()'"
        )
    };
    let layers = [
        tool_layer("tar --format=gnu -cf \"$OUT\" ."),
        tool_layer("tar --format=posix --xattrs -cf \"$OUT\" ."),
        tool_layer(&python("PAX_FORMAT")),
        tool_layer(&python("GNU_FORMAT")),
    ];
    let paths = conform("tools", &layers);
    assert!(paths.contains(&"/dir/file".to_string()) && paths.contains(&"/hard".to_string()));
}

fn sh(script: &str, dir: &Path) {
    let out = Command::new("sh")
        .args(["-euc", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The uncompressed layers of image `tag` in the OCI layout at `layout`.
fn layout_tars(layout: &Path, tag: &str) -> Vec<Vec<u8>> {
    let read_json = |path: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let blob = |digest: &serde_json::Value| {
        let digest: Digest = digest.as_str().unwrap().parse().unwrap();
        layout.join("blobs/sha256").join(digest.hex())
    };
    let index = read_json(&layout.join("index.json"));
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let manifest = read_json(&blob(&desc["digest"]));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| {
            assert!(layer["mediaType"].as_str().unwrap().ends_with("+gzip"));
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(std::fs::File::open(blob(&layer["digest"])).unwrap())
                .read_to_end(&mut tar)
                .unwrap();
            tar
        })
        .collect()
}

#[test]
fn layers_written_by_umoci_repack() {
    let reg = TestRegistry::start(Variant::Plain);
    let tmp = tempfile::tempdir().unwrap();
    let cap = [
        1u8, 0, 0, 2, 0x0a, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    sh(
        "umask 022; umoci init --layout L; umoci new --image L:t; umoci unpack --image L:t B",
        tmp.path(),
    );
    let rootfs = tmp.path().join("B/rootfs");
    sh(
        "mkdir -p etc usr/bin home/user dev tmp lib; echo hello > etc/motd; \
         printf tool > usr/bin/tool; chmod 4755 usr/bin/tool; ln usr/bin/tool usr/bin/tool2; \
         ln -s ../etc/motd home/motd; printf mine > home/user/file; chown -R 1000:1000 home/user; \
         mkfifo run.fifo; mknod dev/null c 1 3; mknod dev/loop9 b 7 9; chmod 1777 tmp; \
         printf lib > lib/libx.so; touch -d @1600000000 etc/motd",
        &rootfs,
    );
    xattr::set(rootfs.join("etc/motd"), "user.note", b"hi").unwrap();
    xattr::set(rootfs.join("usr/bin/tool"), "security.capability", &cap).unwrap();
    sh(
        "umask 022; umoci repack --refresh-bundle --image L:t B",
        tmp.path(),
    );
    // The second layer: whiteouts, a directory's new attributes, a file turned into a
    // directory and back, a new hardlink to a lower file, a new long name.
    sh(
        &format!(
            "rm etc/motd; rm -r home/user; chmod 0700 etc; chown 5:6 etc; \
             rm usr/bin/tool2; mkdir usr/bin/tool2; printf inner > usr/bin/tool2/inner; \
             rm lib/libx.so; mkdir lib/libx.so; ln usr/bin/tool lib/tool-link; \
             printf long > etc/{}",
            "n".repeat(120)
        ),
        &rootfs,
    );
    sh("umask 022; umoci repack --image L:t B", tmp.path());
    sh(
        &format!(
            "skopeo copy --insecure-policy --dest-tls-verify=false oci:L:t docker://{}/repack:t",
            reg.host()
        ),
        tmp.path(),
    );
    let tars = layout_tars(&tmp.path().join("L"), "t");
    assert_eq!(tars.len(), 2, "umoci repack wrote one layer per repack");
    let contents = source_contents(&tars);
    let reference = umoci_reference(&reg.host(), "repack", "t", &tmp.path().join("ref"));
    let entries = ls_entries(
        &tmp.path().join("cache"),
        &format!("{}/repack:t", reg.host()),
        |p| contents.get(p).cloned(),
    );
    unpacked::compare(&entries, &reference);
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert!(!paths.contains(&"/etc/motd") && !paths.contains(&"/home/user"));
    assert!(paths.contains(&"/lib/tool-link") && paths.contains(&"/usr/bin/tool2/inner"));
}
