use super::*;
use std::io::Cursor;

/// A ustar header with the name written raw (the crate's setters refuse `..`).
fn header(name: &[u8], typeflag: u8, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkflag[0] = typeflag;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

fn push(out: &mut Vec<u8>, h: &tar::Header, data: &[u8]) {
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (k, v) in records {
        let rest = 3 + k.len() + v.len();
        let mut len = rest + 1;
        while len.to_string().len() + rest != len {
            len = len.to_string().len() + rest;
        }
        data.extend_from_slice(format!("{len} {k}=").as_bytes());
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    data
}

fn push_pax(out: &mut Vec<u8>, records: &[(&str, &[u8])]) {
    let data = pax(records);
    push(out, &header(b"PaxHeader", b'x', data.len() as u64), &data);
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    out.extend_from_slice(&[0; 1024]);
    out
}

fn read(bytes: &[u8]) -> Result<Vec<TarEntry>, TarError> {
    read_entries(&mut Cursor::new(bytes))
}

fn by_path<'a>(entries: &'a [TarEntry], path: &str) -> &'a TarEntry {
    entries
        .iter()
        .find(|e| e.path == path.as_bytes())
        .unwrap_or_else(|| panic!("no entry {path}"))
}

#[test]
fn every_kind_with_attributes_and_data_offsets() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o1777);
    h.set_uid(7);
    h.set_gid(8);
    h.set_mtime(1234);
    h.set_size(0);
    b.append_data(&mut h, "./tmp/", io::empty()).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o4755);
    h.set_size(5);
    b.append_data(&mut h, "bin/su", &b"hello"[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "bin/sh", "/bin/busybox").unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "bin/su2", "./bin/su").unwrap();
    for (name, kind) in [
        ("dev/null", tar::EntryType::Char),
        ("dev/sda", tar::EntryType::Block),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_device_major(8).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_size(0);
        b.append_data(&mut h, name, io::empty()).unwrap();
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Fifo);
    h.set_size(0);
    b.append_data(&mut h, "run/fifo", io::empty()).unwrap();
    let bytes = b.into_inner().unwrap();

    let entries = read(&bytes).unwrap();
    assert_eq!(entries.len(), 7);
    let tmp = by_path(&entries, "tmp");
    assert_eq!(
        (tmp.kind.clone(), tmp.mode, tmp.uid, tmp.gid),
        (EntryKind::Dir, 0o1777, 7, 8)
    );
    assert_eq!(tmp.mtime, Mtime { sec: 1234, nsec: 0 });
    let su = by_path(&entries, "bin/su");
    assert_eq!(su.mode, 0o4755);
    let EntryKind::File { offset, size } = su.kind else {
        panic!("not a file")
    };
    assert_eq!(&bytes[offset as usize..(offset + size) as usize], b"hello");
    assert_eq!(
        by_path(&entries, "bin/sh").link(),
        Some(&b"/bin/busybox"[..])
    );
    assert_eq!(
        by_path(&entries, "bin/su2").kind,
        EntryKind::Hardlink {
            target: b"bin/su".to_vec()
        }
    );
    assert_eq!(
        by_path(&entries, "dev/null").kind,
        EntryKind::Char { major: 8, minor: 3 }
    );
    assert_eq!(by_path(&entries, "dev/sda").rdev(), Some((8, 3)));
    assert_eq!(by_path(&entries, "run/fifo").kind, EntryKind::Fifo);
}

#[test]
fn stops_after_the_first_end_block() {
    let mut out = Vec::new();
    push(&mut out, &header(b"a", b'0', 3), b"abc");
    let end = out.len() as u64;
    let bytes = finish(out);
    let mut cursor = Cursor::new(&bytes[..]);
    read_entries(&mut cursor).unwrap();
    assert_eq!(cursor.position(), end + 512);
}

#[test]
fn pax_records_override_the_header() {
    let long = format!("{}/file", "d".repeat(150));
    let cap = [
        1u8, 0, 0, 2, 0x0a, b'\n', 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut out = Vec::new();
    push(&mut out, &header(b"g", b'g', 0), b"");
    push_pax(
        &mut out,
        &[
            ("path", long.as_bytes()),
            ("uid", b"4000000"),
            ("gid", b"5"),
            ("mtime", b"1700000000.25"),
            ("SCHILY.xattr.security.capability", &cap),
            ("SCHILY.xattr.user.note", b"hi"),
            ("size", b"4"),
        ],
    );
    push(&mut out, &header(b"short", b'0', 4), b"data");
    push_pax(
        &mut out,
        &[("linkpath", long.as_bytes()), ("mtime", b"-1.25")],
    );
    push(&mut out, &header(b"ln", b'2', 0), b"");
    let entries = read(&finish(out)).unwrap();
    assert_eq!(entries.len(), 2);
    let f = &entries[0];
    assert_eq!(f.path, long.as_bytes());
    assert_eq!((f.uid, f.gid), (4_000_000, 5));
    assert_eq!(
        f.mtime,
        Mtime {
            sec: 1_700_000_000,
            nsec: 250_000_000
        }
    );
    assert_eq!(f.xattrs["security.capability"], cap);
    assert_eq!(f.xattrs["user.note"], b"hi");
    assert_eq!(entries[1].link(), Some(long.as_bytes()));
    assert_eq!(
        entries[1].mtime,
        Mtime {
            sec: -2,
            nsec: 750_000_000
        }
    );
}

#[test]
fn gnu_long_names_and_links() {
    let long = format!("{}/name", "x".repeat(120));
    let target = format!("/{}", "t".repeat(130));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    b.append_data(&mut h, &long, &b"ok"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "s", &target).unwrap();
    let entries = read(&b.into_inner().unwrap()).unwrap();
    assert_eq!(entries[0].path, long.as_bytes());
    assert_eq!(entries[0].size(), 2);
    assert_eq!(entries[1].link(), Some(target.as_bytes()));
}

#[test]
fn names_are_normalized() {
    for (name, want) in [
        (&b"./a/./b/../c"[..], &b"a/c"[..]),
        (b"/abs/x/", b"abs/x"),
        (b"./", b""),
        (b"a//b", b"a/b"),
    ] {
        let mut out = Vec::new();
        push(&mut out, &header(name, b'5', 0), b"");
        assert_eq!(read(&finish(out)).unwrap()[0].path, want);
    }
}

#[test]
fn old_style_directory_by_trailing_slash() {
    let mut out = Vec::new();
    push(&mut out, &header(b"olddir/", 0, 0), b"");
    assert_eq!(read(&finish(out)).unwrap()[0].kind, EntryKind::Dir);
}

#[test]
fn serde_round_trip() {
    let mut out = Vec::new();
    push_pax(&mut out, &[("SCHILY.xattr.user.a", &[0, 10, 255])]);
    push(&mut out, &header(b"f", b'0', 1), b"x");
    let entries = read(&finish(out)).unwrap();
    let json = serde_json::to_string(&entries).unwrap();
    let back: Vec<TarEntry> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, entries);
}

fn refused(bytes: Vec<u8>) -> String {
    read(&bytes).expect_err("hostile tar accepted").to_string()
}

#[test]
fn climbing_names_are_refused() {
    for name in [&b"../x"[..], b"a/../../x", b"/../etc"] {
        let mut out = Vec::new();
        push(&mut out, &header(name, b'0', 0), b"");
        let msg = refused(finish(out));
        assert!(msg.contains(&show(name)) && msg.contains("climbs"), "{msg}");
    }
}

#[test]
fn climbing_hardlink_targets_are_refused() {
    let mut h = header(b"innocent", b'1', 0);
    h.set_link_name("x").unwrap();
    h.as_old_mut().linkname[..16].copy_from_slice(b"../../etc/shadow");
    h.set_cksum();
    let mut out = Vec::new();
    push(&mut out, &h, b"");
    let msg = refused(finish(out));
    assert!(
        msg.contains("innocent") && msg.contains("../../etc/shadow"),
        "{msg}"
    );
}

#[test]
fn truncated_data_names_the_entry() {
    let mut out = Vec::new();
    push(&mut out, &header(b"big", b'0', 4096), &[7; 100]);
    let msg = refused(out);
    assert!(msg.contains("`big`") && msg.contains("cut short"), "{msg}");
}

#[test]
fn truncated_header_names_the_previous_entry() {
    let mut out = Vec::new();
    push(&mut out, &header(b"first", b'0', 1), b"x");
    out.extend_from_slice(&header(b"second", b'0', 0).as_bytes()[..300]);
    let msg = refused(out);
    assert!(msg.contains("after entry `first`"), "{msg}");
}

#[test]
fn sparse_files_are_refused() {
    let mut gnu = tar::Header::new_gnu();
    gnu.set_path("holes").unwrap();
    gnu.set_entry_type(tar::EntryType::GNUSparse);
    gnu.set_size(0);
    gnu.set_cksum();
    let mut out = Vec::new();
    push(&mut out, &gnu, b"");
    let msg = refused(finish(out));
    assert!(msg.contains("holes") && msg.contains("sparse"), "{msg}");

    let mut out = Vec::new();
    push_pax(
        &mut out,
        &[("GNU.sparse.major", b"1"), ("GNU.sparse.name", b"holes2")],
    );
    push(&mut out, &header(b"GNUSparseFile.0/holes2", b'0', 0), b"");
    let msg = refused(finish(out));
    assert!(msg.contains("`holes2`") && msg.contains("sparse"), "{msg}");
}

#[test]
fn absurd_sizes_are_refused() {
    let mut out = Vec::new();
    push_pax(&mut out, &[("size", b"9300000000000000000")]);
    push(&mut out, &header(b"huge", b'0', 0), b"");
    let msg = refused(finish(out));
    assert!(msg.contains("`huge`") && msg.contains("absurd"), "{msg}");
}

#[test]
fn sizes_the_crate_cannot_step_over_name_the_entry() {
    // u64::MAX in a base-256 size field: the crate fails before it hands the entry out.
    let mut gnu = tar::Header::new_gnu();
    gnu.set_path("max").unwrap();
    gnu.set_size(u64::MAX);
    gnu.set_cksum();
    let mut out = Vec::new();
    push(&mut out, &header(b"first", b'0', 1), b"x");
    push_pax(&mut out, &[("path", b"pax/long/name")]);
    push(&mut out, &gnu, b"");
    let msg = refused(finish(out));
    assert!(
        msg.contains("`pax/long/name`") && msg.contains("absurd size"),
        "{msg}"
    );
    // A header whose checksum fails names no entry from its garbage.
    let mut out = Vec::new();
    push(&mut out, &header(b"first", b'0', 1), b"x");
    let mut bad = header(b"garbage", b'0', 0);
    bad.as_old_mut().name[0] = b'G';
    push(&mut out, &bad, b"");
    let msg = refused(finish(out));
    assert!(!msg.contains("arbage`"), "{msg}");
}

#[test]
fn header_only_entries_with_data_are_refused() {
    let mut out = Vec::new();
    push(&mut out, &header(b"dir", b'5', 512), &[0; 512]);
    let msg = refused(finish(out));
    assert!(msg.contains("`dir`") && msg.contains("512 bytes"), "{msg}");
}

#[test]
fn pax_values_holding_newlines_stay_whole() {
    // One xattr value that a newline-splitting reader would take for `size` and `path` records.
    let smuggled = b"x\n12 size=99\n14 path=evil\n";
    let mut out = Vec::new();
    push_pax(&mut out, &[("SCHILY.xattr.user.a", smuggled)]);
    push(&mut out, &header(b"victim", b'0', 0), b"");
    let entries = read(&finish(out)).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].path, b"victim");
    assert_eq!(entries[0].size(), 0);
    assert_eq!(entries[0].xattrs["user.a"], smuggled);
}

#[test]
fn unknown_type_flags_are_refused() {
    let mut out = Vec::new();
    push(&mut out, &header(b"label", b'V', 0), b"");
    let msg = refused(finish(out));
    assert!(msg.contains("`label`") && msg.contains("'V'"), "{msg}");
}

#[test]
fn malformed_pax_records_are_refused() {
    let mut out = Vec::new();
    push(&mut out, &header(b"ok", b'0', 0), b"");
    push(&mut out, &header(b"PaxHeader", b'x', 12), b"99 path=evil");
    push(&mut out, &header(b"next", b'0', 0), b"");
    let msg = refused(finish(out));
    assert!(
        msg.contains("after entry `ok`") && msg.contains("PAX"),
        "{msg}"
    );
}

/// A GNU long name (`L`) or long link (`K`) header holding `name`.
fn push_long(out: &mut Vec<u8>, flag: u8, name: &[u8]) {
    let mut data = name.to_vec();
    data.push(0);
    push(
        out,
        &header(b"././@LongLink", flag, data.len() as u64),
        &data,
    );
}

#[test]
fn gnu_dumpdirs_are_directories_and_their_data_is_stepped_over() {
    // What `tar --listed-incremental` writes for a directory: its listing as the entry's data.
    let listing = b"Ya\0Nold\0\0";
    let mut out = Vec::new();
    let mut dumpdir = header(b"dir/", b'D', listing.len() as u64);
    dumpdir.set_mode(0o750);
    dumpdir.set_cksum();
    push(&mut out, &dumpdir, listing);
    push(&mut out, &header(b"dir/a", b'0', 3), b"abc");
    let bytes = finish(out);
    let entries = read(&bytes).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        (
            entries[0].path.as_slice(),
            &entries[0].kind,
            entries[0].mode
        ),
        (&b"dir"[..], &EntryKind::Dir, 0o750)
    );
    let EntryKind::File { offset, size } = entries[1].kind else {
        panic!("not a file: {:?}", entries[1]);
    };
    assert_eq!(&bytes[offset as usize..(offset + size) as usize], b"abc");
}

#[test]
fn of_two_long_names_before_one_entry_the_last_wins() {
    let first = format!("first/{}", "a".repeat(110));
    let second = format!("second/{}", "b".repeat(110));
    let mut out = Vec::new();
    push_long(&mut out, b'L', first.as_bytes());
    push_long(&mut out, b'L', second.as_bytes());
    push_long(&mut out, b'K', b"/old/target");
    push_long(&mut out, b'K', b"/new/target");
    push(&mut out, &header(b"short", b'2', 0), b"");
    push(&mut out, &header(b"after", b'0', 2), b"ok");
    let entries = read(&finish(out)).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].path, second.as_bytes());
    assert_eq!(entries[0].link(), Some(&b"/new/target"[..]));
    assert_eq!(entries[1].path, b"after");
}

#[test]
fn a_later_pax_header_replaces_an_earlier_one_whole() {
    let mut out = Vec::new();
    push_pax(
        &mut out,
        &[("path", b"from/the/first"), ("SCHILY.xattr.user.a", b"1")],
    );
    push_pax(&mut out, &[("uid", b"7")]);
    push(&mut out, &header(b"hdr", b'0', 0), b"");
    let entries = read(&finish(out)).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].path, b"hdr");
    assert_eq!(entries[0].uid, 7);
    assert!(entries[0].xattrs.is_empty(), "{:?}", entries[0].xattrs);
}

#[test]
fn extension_headers_with_no_entry_after_them_describe_nothing() {
    let mut out = Vec::new();
    push_pax(&mut out, &[("path", b"nothing")]);
    assert_eq!(read(&finish(out.clone())).unwrap(), []);
    // Without the end-of-archive blocks too.
    push_long(&mut out, b'L', b"nothing/either");
    assert_eq!(read(&out).unwrap(), []);
}

#[test]
fn pax_records_with_a_nul_in_the_key_or_an_empty_key_are_refused() {
    for (key, needle) in [
        (
            "SCHILY.xattr.user.a\0b",
            "`SCHILY.xattr.user.a\\x00b` holds a NUL byte",
        ),
        ("", "empty key"),
    ] {
        let mut out = Vec::new();
        push_pax(&mut out, &[(key, b"v")]);
        push(&mut out, &header(b"f", b'0', 0), b"");
        let msg = refused(finish(out));
        assert!(msg.contains(needle), "{msg}");
    }
    let mut out = Vec::new();
    push_pax(&mut out, &[("path", b"a\0b")]);
    push(&mut out, &header(b"f", b'0', 0), b"");
    let msg = refused(finish(out));
    assert!(msg.contains("`path` holds a NUL byte"), "{msg}");
}

#[test]
fn an_empty_pax_value_keeps_the_header_field() {
    let mut out = Vec::new();
    push_pax(&mut out, &[("path", b""), ("size", b""), ("uid", b"")]);
    let mut h = header(b"kept", b'0', 2);
    h.set_uid(9);
    h.set_cksum();
    push(&mut out, &h, b"ok");
    let entries = read(&finish(out)).unwrap();
    assert_eq!(
        (
            entries[0].path.as_slice(),
            entries[0].size(),
            entries[0].uid
        ),
        (&b"kept"[..], 2, 9)
    );
}

#[test]
fn base_256_fields_count_whole() {
    // 2^64 + 5: a reader of the last eight bytes alone sees 5.
    let mut h = header(b"big", b'0', 0);
    let size = &mut h.as_old_mut().size;
    *size = [0; 12];
    size[0] = 0x80;
    size[3] = 1;
    size[11] = 5;
    h.set_cksum();
    let mut out = Vec::new();
    push(&mut out, &h, b"12345");
    let msg = refused(finish(out));
    assert!(
        msg.contains("`big`") && msg.contains("absurd size"),
        "{msg}"
    );
}

#[test]
fn signed_header_checksums_are_accepted() {
    // Old writers summed the header as signed bytes; a name byte >= 0x80 makes it differ.
    let mut h = header("caf\u{e9}".as_bytes(), b'0', 0);
    let sum: i64 = h
        .as_bytes()
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                i64::from(b' ')
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    h.as_old_mut().cksum = *format!("{sum:06o}\0 ").as_bytes().first_chunk().unwrap();
    let mut out = Vec::new();
    push(&mut out, &h, b"");
    assert_eq!(read(&finish(out)).unwrap()[0].path, "caf\u{e9}".as_bytes());
}
