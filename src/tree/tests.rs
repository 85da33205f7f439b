use super::*;
use crate::layer::tar::EntryKind;

fn entry(path: &str, kind: EntryKind, mode: u32) -> TarEntry {
    TarEntry {
        path: path.as_bytes().to_vec(),
        kind,
        mode,
        uid: 1000,
        gid: 1000,
        mtime: Mtime { sec: 5, nsec: 0 },
        xattrs: BTreeMap::new(),
    }
}
fn file(path: &str, offset: u64) -> TarEntry {
    entry(path, EntryKind::File { offset, size: 3 }, 0o644)
}
fn dir(path: &str, mode: u32) -> TarEntry {
    entry(path, EntryKind::Dir, mode)
}
fn symlink(path: &str, target: &str) -> TarEntry {
    let target = target.as_bytes().to_vec();
    entry(path, EntryKind::Symlink { target }, 0o644)
}
fn hardlink(path: &str, target: &str) -> TarEntry {
    let target = target.as_bytes().to_vec();
    entry(path, EntryKind::Hardlink { target }, 0)
}

fn build(layers: &[Vec<TarEntry>]) -> Result<Tree, TreeError> {
    Tree::build(layers.iter().map(Vec::as_slice))
}

fn paths(tree: &Tree) -> Vec<String> {
    tree.walk()
        .map(|(p, _)| String::from_utf8(p).unwrap())
        .collect()
}

fn node<'a>(tree: &'a Tree, path: &str) -> &'a Node {
    let (p, n) = tree
        .walk()
        .find(|(p, _)| p == path.as_bytes())
        .unwrap_or_else(|| panic!("{path} missing"));
    assert_eq!(p, path.as_bytes());
    n
}

#[test]
fn whiteout_deletes_lower_path_and_its_subtree() {
    let tree = build(&[
        vec![dir("a", 0o755), file("a/x", 0), file("b", 0)],
        vec![file("a/.wh.x", 0), file(".wh.b", 0)],
    ])
    .unwrap();
    assert_eq!(paths(&tree), ["/", "/a"]);
}

#[test]
fn whiteout_spares_its_own_layer_wherever_it_stands() {
    let tree = build(&[
        vec![file("x", 0), file("y", 0)],
        vec![
            file("x", 512),
            file(".wh.x", 0),
            file(".wh.y", 0),
            file("y", 1024),
        ],
    ])
    .unwrap();
    assert_eq!(paths(&tree), ["/", "/x", "/y"]);
    assert_eq!(node(&tree, "/x").content().unwrap().layer, 1);
    assert_eq!(node(&tree, "/y").content().unwrap().offset, 1024);
}

#[test]
fn opaque_hides_lower_children_only() {
    for order in [true, false] {
        let mut upper = vec![file("d/new", 0)];
        let marker = file("d/.wh..wh..opq", 0);
        if order {
            upper.insert(0, marker);
        } else {
            upper.push(marker);
        }
        let tree = build(&[
            vec![dir("d", 0o700), file("d/old", 0), file("keep", 0)],
            upper,
        ])
        .unwrap();
        assert_eq!(paths(&tree), ["/", "/d", "/d/new", "/keep"]);
        assert_eq!(node(&tree, "/d").mode, 0o700, "lower attributes stay");
    }
}

#[test]
fn opaque_marker_under_a_replaced_symlink_is_harmless() {
    let tree = build(&[
        vec![symlink("d", "/elsewhere")],
        vec![file("d/.wh..wh..opq", 0), dir("d", 0o755), file("d/x", 0)],
    ])
    .unwrap();
    assert_eq!(paths(&tree), ["/", "/d", "/d/x"]);
}

#[test]
fn dir_over_dir_takes_attributes_and_merges_children() {
    let mut upper = dir("d", 0o1777);
    upper.xattrs.insert("user.k".into(), b"v".to_vec());
    let tree = build(&[
        vec![dir("d", 0o755), file("d/a", 0)],
        vec![upper, file("d/b", 0)],
    ])
    .unwrap();
    let d = node(&tree, "/d");
    assert_eq!((d.mode, d.xattrs["user.k"].as_slice()), (0o1777, &b"v"[..]));
    assert_eq!(paths(&tree), ["/", "/d", "/d/a", "/d/b"]);
}

#[test]
fn file_over_dir_hides_the_lower_subtree() {
    let tree = build(&[vec![dir("d", 0o755), file("d/a", 0)], vec![file("d", 0)]]).unwrap();
    assert_eq!(paths(&tree), ["/", "/d"]);
    assert!(node(&tree, "/d").content().is_some());
}

#[test]
fn dir_over_file_replaces_it() {
    let tree = build(&[vec![file("d", 0)], vec![dir("d", 0o711), file("d/a", 0)]]).unwrap();
    assert_eq!(node(&tree, "/d").mode, 0o711);
    assert_eq!(paths(&tree), ["/", "/d", "/d/a"]);
}

#[test]
fn missing_parents_are_root_owned_0755() {
    let tree = build(&[vec![file("a/b/c", 0)]]).unwrap();
    for path in ["/a", "/a/b"] {
        let n = node(&tree, path);
        assert_eq!((n.mode, n.uid, n.gid, n.is_dir()), (0o755, 0, 0, true));
    }
}

#[test]
fn child_before_parent_gets_the_parents_attributes() {
    let tree = build(&[vec![file("a/b", 0), dir("a", 0o700)]]).unwrap();
    let a = node(&tree, "/a");
    assert_eq!((a.mode, a.uid), (0o700, 1000));
}

#[test]
fn duplicate_paths_in_a_layer_last_wins() {
    let tree = build(&[vec![file("x", 0), symlink("x", "t"), file("x", 2048)]]).unwrap();
    assert_eq!(node(&tree, "/x").content().unwrap().offset, 2048);
}

#[test]
fn a_later_file_replaces_a_directory_and_what_came_before_in_it() {
    let tree = build(&[vec![dir("d", 0o755), file("d/x", 0), file("d", 512)]]).unwrap();
    assert_eq!(paths(&tree), ["/", "/d"]);
    assert_eq!(node(&tree, "/d").content().unwrap().offset, 512);
}

#[test]
fn a_hardlink_keeps_the_inode_its_target_had_when_it_was_written() {
    // As `umoci unpack` leaves it: `l` still names the first `f`.
    let tree = build(&[vec![file("f", 0), hardlink("l", "f"), file("f", 1024)]]).unwrap();
    assert_eq!(node(&tree, "/l").content().unwrap().offset, 0);
    assert_eq!(node(&tree, "/f").content().unwrap().offset, 1024);
    assert_eq!((node(&tree, "/l").nlink, node(&tree, "/f").nlink), (1, 1));
}

#[test]
fn a_forward_hardlink_replaced_by_a_later_entry_is_dropped() {
    let tree = build(&[vec![hardlink("l", "f"), file("l", 0), file("f", 512)]]).unwrap();
    assert_eq!(node(&tree, "/l").content().unwrap().offset, 0);
    assert_ne!(node(&tree, "/l").ino, node(&tree, "/f").ino);
}

#[test]
fn hardlinks_share_an_inode_in_layer_and_across_layers() {
    let tree = build(&[
        vec![hardlink("early", "f"), file("f", 0)],
        vec![hardlink("up", "f"), hardlink("chain", "up")],
    ])
    .unwrap();
    let f = node(&tree, "/f");
    assert_eq!(f.nlink, 4);
    for name in ["/early", "/up", "/chain"] {
        assert_eq!(node(&tree, name).ino, f.ino);
    }
}

#[test]
fn whiting_out_a_name_lowers_nlink() {
    let tree = build(&[
        vec![file("f", 0), hardlink("g", "f")],
        vec![file(".wh.f", 0)],
    ])
    .unwrap();
    assert_eq!(paths(&tree), ["/", "/g"]);
    assert_eq!(node(&tree, "/g").nlink, 1);
}

#[test]
fn replacing_a_linked_name_splits_the_inode() {
    let tree = build(&[
        vec![file("f", 0), hardlink("g", "f")],
        vec![file("f", 4096)],
    ])
    .unwrap();
    assert_ne!(node(&tree, "/f").ino, node(&tree, "/g").ino);
    assert_eq!(node(&tree, "/g").nlink, 1);
}

#[test]
fn symlinks_are_mode_0777() {
    let tree = build(&[vec![symlink("s", "/etc/passwd")]]).unwrap();
    let s = node(&tree, "/s");
    assert_eq!(
        (s.mode, s.link(), s.size()),
        (0o777, Some(&b"/etc/passwd"[..]), 11)
    );
}

#[test]
fn root_entry_sets_root_attributes() {
    let tree = build(&[vec![dir("", 0o700), file("x", 0)]]).unwrap();
    assert_eq!(
        (tree.root().mode, tree.root().ino, tree.root().uid),
        (0o700, ROOT_INO, 1000)
    );
}

#[test]
fn inodes_are_stable_and_lookups_agree() {
    let layers = [vec![
        file("b/z", 0),
        file("a", 0),
        dir("b", 0o755),
        file("b/y", 0),
    ]];
    let (one, two) = (build(&layers).unwrap(), build(&layers).unwrap());
    assert_eq!(paths(&one), ["/", "/a", "/b", "/b/y", "/b/z"]);
    let inos: Vec<u64> = one.walk().map(|(_, n)| n.ino).collect();
    assert_eq!(inos, [1, 2, 3, 4, 5]);
    assert_eq!(inos, two.walk().map(|(_, n)| n.ino).collect::<Vec<_>>());
    let b = one.lookup(ROOT_INO, b"b").unwrap();
    assert_eq!((b.nlink, b.parent), (2, ROOT_INO));
    assert_eq!(one.lookup(b.ino, b"z").unwrap().parent, b.ino);
    assert!(one.lookup(b.ino, b"nope").is_none());
    assert_eq!(one.root().nlink, 3);
}

fn refused(layers: &[Vec<TarEntry>]) -> String {
    build(layers)
        .expect_err("hostile layers accepted")
        .to_string()
}

#[test]
fn hardlink_to_nothing_names_layer_and_entry() {
    let msg = refused(&[vec![file("a", 0)], vec![hardlink("l", "ghost")]]);
    assert!(
        msg.contains("layer 1") && msg.contains("`l`") && msg.contains("ghost"),
        "{msg}"
    );
}

#[test]
fn hardlink_to_itself_is_refused() {
    for layers in [
        vec![vec![hardlink("a", "a")]],
        vec![vec![file("a", 0)], vec![hardlink("a", "a")]],
        vec![vec![dir("d", 0o755), file("d/x", 0), hardlink("d", "d/x")]],
    ] {
        let msg = refused(&layers);
        assert!(msg.contains("hardlink to itself"), "{msg}");
    }
}

#[test]
fn hardlink_cycle_is_refused() {
    let msg = refused(&[vec![hardlink("a", "b"), hardlink("b", "a")]]);
    assert!(
        msg.contains("`a`") && msg.contains("`b`") && msg.contains("cycle"),
        "{msg}"
    );
}

#[test]
fn hardlink_to_a_directory_is_refused() {
    let msg = refused(&[vec![dir("d", 0o755), hardlink("l", "d")]]);
    assert!(
        msg.contains("layer 0") && msg.contains("`l`") && msg.contains("directory"),
        "{msg}"
    );
}

#[test]
fn entry_below_a_symlink_is_refused() {
    let msg = refused(&[vec![symlink("etc", "/tmp")], vec![file("etc/passwd", 0)]]);
    assert!(
        msg.contains("layer 1") && msg.contains("etc/passwd") && msg.contains("symlink"),
        "{msg}"
    );
}

#[test]
fn entry_below_a_file_is_refused() {
    let msg = refused(&[vec![file("f", 0), file("f/x", 0)]]);
    assert!(
        msg.contains("`f/x`") && msg.contains("not a directory"),
        "{msg}"
    );
}

#[test]
fn root_replaced_by_a_file_is_refused() {
    let msg = refused(&[vec![file("", 0)]]);
    assert!(msg.contains("root"), "{msg}");
}

#[test]
fn empty_whiteout_is_refused() {
    let msg = refused(&[vec![file("d/.wh.", 0)]]);
    assert!(msg.contains("d/.wh."), "{msg}");
}

#[test]
fn ls_record_serializes_as_documented() {
    let mut f = entry("dev/null", EntryKind::Char { major: 1, minor: 3 }, 0o666);
    f.xattrs
        .insert("security.capability".into(), vec![1, 0, 0, 2]);
    let tree = build(&[vec![f]]).unwrap();
    let json = serde_json::to_value(LsRecord::new(b"/dev/null", node(&tree, "/dev/null"))).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"path": "/dev/null", "type": "char", "mode": 0o666, "uid": 1000,
            "gid": 1000, "size": 0, "mtime": 5, "link": null, "rdev": [1, 3], "nlink": 1,
            "inode": 3, "xattrs": {"security.capability": "AQAAAg=="}})
    );
}
