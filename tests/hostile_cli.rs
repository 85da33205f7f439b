//! Hostile and broken layers through the CLI: each fails `lazypull ls` with an error that names
//! the layer digest and the entry, without a panic, and nothing is written outside the cache.

mod common;

use std::fs;
use std::process::Command;

use common::cli::lazypull;
use common::image::{Compression, ImageSpec, push_image};
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;
use tar::EntryType;

/// A harmless first layer, so the hostile one is not alone.
fn base() -> Vec<u8> {
    TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644)
        .build()
}

/// Pushes `base()` and `hostile` (gzip) and lists the image; asserts the error names the
/// hostile layer's digest and every one of `needles`, and that the directory holding the cache
/// (the working directory of the run) holds nothing else. Returns stderr.
fn refused(hostile: Vec<u8>, needles: &[&str]) -> String {
    let reg = TestRegistry::start(Variant::Plain);
    let spec = ImageSpec::new(vec![
        (base(), Compression::Gzip),
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
    let beside: Vec<_> = fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(beside, ["cache"], "written next to the cache");
    assert_eq!(
        fs::read_dir(cache.join("tmp")).unwrap().count(),
        0,
        "left in the cache's tmp/"
    );
    err
}

#[test]
fn parent_dir_name() {
    let layer = TarBuilder::new()
        .raw(EntryType::Regular, b"../x", b"", b"escaped", 0o644)
        .build();
    refused(layer, &["`../x`", "climbs out of the root"]);
}

#[test]
fn name_climbing_through_a_directory() {
    let layer = TarBuilder::new()
        .dir("a", 0o755)
        .raw(EntryType::Regular, b"a/../../x", b"", b"escaped", 0o644)
        .build();
    refused(layer, &["`a/../../x`", "climbs out of the root"]);
}

#[test]
fn hardlink_out_of_the_root() {
    let layer = TarBuilder::new()
        .raw(EntryType::Link, b"passwd", b"../../etc/passwd", b"", 0o644)
        .build();
    refused(layer, &["`passwd`", "`../../etc/passwd`"]);
}

#[test]
fn hardlink_to_nothing() {
    let layer = TarBuilder::new()
        .raw(EntryType::Link, b"ghost", b"nowhere/at/all", b"", 0o644)
        .build();
    refused(layer, &["`ghost`", "nowhere/at/all", "exists neither"]);
}

#[test]
fn entry_below_a_symlink() {
    let layer = TarBuilder::new()
        .symlink("link", "/etc")
        .raw(EntryType::Regular, b"link/passwd", b"", b"owned", 0o644)
        .build();
    refused(layer, &["`link/passwd`", "symlink"]);
}

#[test]
fn absurd_size() {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_path("huge").unwrap();
    h.set_mode(0o644);
    h.set_mtime(common::tarball::MTIME);
    // Base-256 size field: far beyond any real layer.
    h.set_size(u64::MAX - 4096);
    h.set_cksum();
    let layer = TarBuilder::new()
        .file("before", "b", 0o644)
        .raw_header(&h, b"")
        .raw_bytes(&[0; 1024])
        .build_unterminated();
    refused(layer, &["huge"]);
}

#[test]
fn gnu_sparse_entries() {
    for format in ["gnu", "posix"] {
        let tmp = tempfile::tempdir().unwrap();
        let status = Command::new("sh")
            .arg("-euc")
            .arg(format!(
                "mkdir src; printf head > src/holes; truncate -s 4M src/holes; \
                 printf tail >> src/holes; tar --sparse --format={format} -C src -cf layer.tar ."
            ))
            .current_dir(tmp.path())
            .status()
            .unwrap();
        assert!(status.success());
        let layer = fs::read(tmp.path().join("layer.tar")).unwrap();
        refused(layer, &["holes", "sparse"]);
    }
}

#[test]
fn truncated_tar() {
    let full = TarBuilder::new()
        .file("small", "s", 0o644)
        .file("big", vec![b'x'; 10_000], 0o644)
        .build_unterminated();
    // Cut inside the data of `big`; the gzip around it is whole, so only the tar is short.
    let cut = full[..full.len() - 4_000].to_vec();
    refused(cut, &["`big`", "cut short"]);
}
