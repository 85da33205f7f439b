//! A daemon's life around the mounts it does not own: one that outlives `lazypull umount`
//! (held by another mount namespace, or busy with a slow registry) must leave a newer mount
//! on the same path alone, and an interrupted `lazypull mount` leaves no daemon and no
//! mount behind. Real registry, real fault proxy, real mounts; needs root.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::image::{self, Compression, ImageSpec, PushedImage};
use common::mount::{
    FOREVER, Sandbox, hold_background, is_mounted, mounts_at, pid_alive, random, wait_until,
};
use common::proxy::{Fault, FaultProxy, Rule};
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;

/// Kills what a test took over from its guards (a lingering daemon, a namespace holder)
/// however the test ends.
#[derive(Default)]
struct Reaper {
    pids: Vec<u32>,
    children: Vec<Child>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.pids.iter().filter(|p| pid_alive(**p)) {
            // SAFETY: kill has no memory preconditions; the pid is a daemon this test started.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Tags `v1` and `v2` of one repository, with different bytes in the same files: their
/// references, and what was pushed as v1.
fn two_versions(reg: &TestRegistry) -> (String, String, PushedImage) {
    let push = |tag: &str, seed| {
        let tar = TarBuilder::new()
            .file("version", tag, 0o644)
            .file("data", random(256 << 10, seed), 0o644)
            .file("later", random(64 << 10, seed + 10), 0o644)
            .build();
        let spec = ImageSpec::new(vec![(tar, Compression::Gzip)]);
        image::push_image(reg, "test/versions", tag, &spec)
    };
    let pushed = push("v1", 1);
    push("v2", 2);
    let at = |tag| format!("{}/test/versions:{tag}", reg.host());
    (at("v1"), at("v2"), pushed)
}

/// The newer mount is the one on `path`, alone, and serves v2's bytes, also from files
/// nobody read before.
fn assert_v2_serves(sandbox: &Sandbox, path: &Path, pid: u32) {
    assert_eq!(
        mounts_at(path).len(),
        1,
        "the newer mount is gone or stacked"
    );
    assert_eq!(fs::read(path.join("version")).unwrap(), b"v2");
    assert_eq!(fs::read(path.join("later")).unwrap(), random(64 << 10, 12));
    let run = sandbox.run(&["status", "--json", path.to_str().unwrap()]);
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(status["pid"].as_u64(), Some(u64::from(pid)));
}

/// How the old daemon of a mount another namespace holds comes to its end.
enum End {
    /// The namespace goes, and with it the old daemon's session.
    NamespaceGoes,
    /// SIGTERM, as `kill` or a service manager sends: the daemon unmounts only its own mount.
    Sigterm,
}

#[test]
fn a_daemon_kept_alive_by_another_mount_namespace_leaves_a_newer_mount_alone() {
    old_daemon_of_another_namespace(End::NamespaceGoes);
}

#[test]
fn a_signalled_daemon_kept_alive_by_another_mount_namespace_leaves_a_newer_mount_alone() {
    old_daemon_of_another_namespace(End::Sigterm);
}

fn old_daemon_of_another_namespace(end: End) {
    let reg = TestRegistry::start(Variant::Plain);
    let (v1, v2, _) = two_versions(&reg);
    let sandbox = Sandbox::new();
    let mountpoint = sandbox.mountpoint("mnt");
    let mut reaper = Reaper::default();
    let old = sandbox.mount_at(&mountpoint, &v1, &[]);
    assert_eq!(fs::read(old.join("version")).unwrap(), b"v1");
    let old_pid = old.release();
    reaper.pids.push(old_pid);

    // A process in a mount namespace of its own holds a copy of the mount.
    let holder = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sleep", "600"])
        .spawn()
        .unwrap();
    let holder_pid = holder.id();
    reaper.children.push(holder);
    let held = || {
        fs::read_to_string(format!("/proc/{holder_pid}/mountinfo"))
            .is_ok_and(|info| info.contains(mountpoint.to_str().unwrap()))
            && fs::read_link(format!("/proc/{holder_pid}/ns/mnt")).ok()
                != fs::read_link("/proc/self/ns/mnt").ok()
    };
    assert!(
        wait_until(Duration::from_secs(10), held),
        "no namespace holds the mount"
    );

    let run = sandbox.run(&["umount", mountpoint.to_str().unwrap()]);
    assert!(run.success, "{}", run.stderr);
    assert!(!is_mounted(&mountpoint));
    assert!(
        pid_alive(old_pid),
        "the old daemon still serves the other namespace"
    );

    let new = sandbox.mount_at(&mountpoint, &v2, &[]);
    assert_v2_serves(&sandbox, &mountpoint, new.pid());
    match end {
        End::NamespaceGoes => {
            for child in reaper.children.iter_mut() {
                child.kill().unwrap();
                child.wait().unwrap();
            }
        }
        End::Sigterm => {
            // SAFETY: kill has no memory preconditions; the pid is the daemon this test started.
            assert_eq!(
                unsafe { libc::kill(old_pid as libc::pid_t, libc::SIGTERM) },
                0
            );
        }
    }
    // Whatever the old daemon does as it ends, the newer mount stays.
    let ended = wait_until(Duration::from_secs(20), || {
        !pid_alive(old_pid) || mounts_at(&mountpoint).len() != 1
    });
    assert_v2_serves(&sandbox, &mountpoint, new.pid());
    assert!(ended && !pid_alive(old_pid), "the old daemon never exited");
    new.umount();
}

#[test]
fn a_daemon_held_up_by_a_slow_registry_leaves_a_newer_mount_alone() {
    let reg = TestRegistry::start(Variant::Plain);
    let (v1, v2, pushed_v1) = two_versions(&reg);
    let sandbox = Sandbox::new();
    sandbox.index(&v1, &[]);
    sandbox.prune_blobs();
    let proxy = FaultProxy::start(&reg.base_url());
    let lazy_v1 = v1.replace(&reg.host(), proxy.host());
    // A registry that sends nothing: to the background download, and to reads.
    hold_background(&proxy, &pushed_v1, Fault::Stall(FOREVER));
    proxy.add_rule(Rule::new("GET", "/blobs/", Fault::Stall(FOREVER)).with_range(true));
    let mountpoint = sandbox.mountpoint("mnt");
    let mut reaper = Reaper::default();
    let old = sandbox.mount_at(&mountpoint, &lazy_v1, &["--timeout", "3"]);
    // A cold read waits on the registry; its reader is killed, the daemon's read
    // goes on until the registry answers.
    let mut reader = Command::new("cat")
        .arg(old.join("data"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let reading = || {
        proxy
            .requests("GET", "/blobs/")
            .iter()
            .any(|e| e.fault.is_some() && e.range.as_deref().is_some_and(|r| !r.ends_with('-')))
    };
    assert!(
        wait_until(Duration::from_secs(20), reading),
        "the read never reached the registry"
    );
    reader.kill().unwrap();
    reader.wait().unwrap();
    let old_pid = old.release();
    reaper.pids.push(old_pid);
    let umount = sandbox.run(&["umount", mountpoint.to_str().unwrap()]);
    assert!(umount.success, "{}", umount.stderr);
    assert!(!is_mounted(&mountpoint));

    let new = sandbox.mount_at(&mountpoint, &v2, &[]);
    assert_v2_serves(&sandbox, &mountpoint, new.pid());
    // The registry answers again: the old daemon's read finishes, and the daemon exits.
    proxy.clear_rules();
    assert!(
        wait_until(Duration::from_secs(60), || !pid_alive(old_pid)),
        "the old daemon never exited"
    );
    assert_v2_serves(&sandbox, &mountpoint, new.pid());
    new.umount();
}

#[test]
fn an_interrupted_mount_leaves_no_daemon_and_no_mount() {
    let reg = TestRegistry::start(Variant::Plain);
    let (v1, _, _) = two_versions(&reg);
    let proxy = FaultProxy::start(&reg.base_url());
    proxy.add_rule(Rule::new("GET", "/manifests/", Fault::Stall(FOREVER)));
    let sandbox = Sandbox::new();
    let mountpoint = sandbox.mountpoint("mnt");
    let cache = sandbox.cache();
    let reference = v1.replace(&reg.host(), proxy.host());
    let mut reaper = Reaper::default();
    let front = sandbox
        .command(&[
            "mount",
            "--cache-dir",
            cache.to_str().unwrap(),
            &reference,
            mountpoint.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let front_pid = front.id();
    reaper.children.push(front);
    assert!(
        wait_until(Duration::from_secs(20), || !proxy
            .requests("GET", "/manifests/")
            .is_empty()),
        "the daemon never asked for the manifest"
    );
    let daemon = children_of(front_pid);
    assert_eq!(daemon.len(), 1, "one daemon: {daemon:?}");
    reaper.pids.extend(&daemon);

    // Ctrl-C: the terminal sends SIGINT to the front process (the daemon has a session of
    // its own).
    // SAFETY: kill has no memory preconditions; the pid is the child this test started.
    assert_eq!(
        unsafe { libc::kill(front_pid as libc::pid_t, libc::SIGINT) },
        0
    );
    let front = reaper.children.pop().unwrap();
    let out = common::mount::within(Duration::from_secs(30), "the interrupted mount", || {
        front.wait_with_output().unwrap()
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGINT while mounting")
            && stderr.contains(&format!("nothing is mounted on {}", mountpoint.display())),
        "{stderr}"
    );
    assert!(!pid_alive(daemon[0]), "the daemon still runs");
    // Were it alive, it would mount now.
    proxy.clear_rules();
    std::thread::sleep(Duration::from_secs(2));
    assert!(!is_mounted(&mountpoint));
}

/// The pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}
