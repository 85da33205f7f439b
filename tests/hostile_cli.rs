//! Hostile and broken layers through the CLI: each fails `lazypull ls` with an error that names
//! the layer digest and the entry, without a panic, and nothing is written outside the cache.

mod common;

use std::fs;
use std::process::Command;

use common::cli::refused;
use common::tarball::TarBuilder;
use tar::EntryType;

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

#[test]
fn xattr_name_holding_a_nul() {
    // GNU tar and Go's reader both refuse the layer; a reader that cut the name at the NUL
    // would set `user.a` from a record that says something else.
    let layer = TarBuilder::new()
        .xattr("user.a\0hidden", "v")
        .file("victim", "x", 0o644)
        .build();
    refused(
        layer,
        &["PAX record `SCHILY.xattr.user.a\\x00hidden` holds a NUL byte"],
    );
}
