//! A real distribution: Debian bookworm (minbase and python3, built with debootstrap and
//! cached, see `common/debian.rs`) mounted and run. Package files must verify, programs
//! must run, from a fresh mount, a lazy one, and a container. Needs root and the Debian
//! mirror named by this machine's apt sources (for the first build only).

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::debian::{self, DELETED, Debian, Finished, bounded};
use common::mount::{Mount, Sandbox, hold_background};
use common::proxy::{Fault, FaultProxy};
use common::registry::{TestRegistry, Variant};

/// How long one command in the image may take. `dpkg --verify` reads every packaged
/// file, which on a lazy mount means fetching most of the image.
const LIMIT: Duration = Duration::from_secs(240);
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `chroot MNT ARGS…` with a clean environment, bounded by [`LIMIT`].
fn in_chroot(mount: &Mount, args: &[&str]) -> Finished {
    let started = Instant::now();
    let out = bounded(
        Command::new("chroot")
            .arg(mount.path())
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("LC_ALL", "C.UTF-8"),
        LIMIT,
    );
    eprintln!("chroot {args:?}: {:?}", started.elapsed());
    out
}

/// [`in_chroot`], which must exit 0; its stdout.
fn chroot(mount: &Mount, args: &[&str]) -> String {
    let out = in_chroot(mount, args);
    assert_eq!(out.code, Some(0), "chroot {args:?}: {out:#?}");
    out.stdout
}

/// What a user checks on a Debian root: its version, that every installed file is what
/// its package shipped, that python runs, and that the top layer's whiteout took.
fn check_debian(mount: &Mount, debian: &Debian) {
    assert_eq!(
        chroot(mount, &["/bin/sh", "-c", "cat /etc/debian_version"]),
        debian.version
    );
    assert!(
        debian.version.starts_with("12."),
        "bookworm is Debian 12: {}",
        debian.version
    );

    // dpkg --verify exits 0 whatever it finds; silence is the only pass. So that silence
    // means something, the package database must be there and list what was installed.
    let packages = chroot(mount, &["dpkg-query", "-W", "-f", "${Package}\\n"]);
    for package in ["libc6", "coreutils", "dpkg", "python3", "python3.11"] {
        assert!(
            packages.lines().any(|p| p == package),
            "{package} is not installed: {packages}"
        );
    }
    let out = in_chroot(mount, &["dpkg", "--verify"]);
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (Some(0), "", ""),
        "dpkg --verify found differences"
    );

    assert_eq!(
        chroot(
            mount,
            &["python3", "-c", "import json; print(json.dumps({\"a\":1}))"]
        ),
        "{\"a\": 1}\n"
    );

    assert!(!mount.join(DELETED).exists(), "the whiteout did not take");
    assert!(mount.join("var/log/dpkg.log").is_file());
}

#[test]
fn debian_verifies_and_runs_from_a_fresh_and_a_lazy_mount() {
    let debian = Debian::get();
    let reg = TestRegistry::start(Variant::Plain);
    let image = debian.push(&reg, "test/debian", debian::SUITE);
    let sandbox = Sandbox::new();

    // Empty cache: the mount downloads and verifies every layer before it returns.
    let started = Instant::now();
    let mount = sandbox.mount(
        &format!("{}/test/debian:{}", reg.host(), debian::SUITE),
        &[],
    );
    eprintln!("fresh mount: {:?}", started.elapsed());
    assert!(
        mount.states().iter().all(|s| s == "ready"),
        "{:#}",
        mount.status()
    );
    check_debian(&mount, &debian);
    mount.umount();

    // Lazy: only the indexes stay, and the background download is held, so every file
    // read below is a Range read of unverified bytes.
    sandbox.prune_blobs();
    let proxy = FaultProxy::start(&reg.base_url());
    hold_background(&proxy, &image, Fault::Stall(Duration::from_secs(900)));
    let started = Instant::now();
    let mount = sandbox.mount(
        &format!("{}/test/debian:{}", proxy.host(), debian::SUITE),
        &[],
    );
    eprintln!("lazy mount: {:?}", started.elapsed());
    check_debian(&mount, &debian);
    let states = mount.states();
    assert!(
        states.iter().all(|s| s == "fetching"),
        "a layer became ready, so not every read was lazy: {states:?}"
    );
    let usr = &image.layers[1].digest.to_string();
    let reads = proxy
        .log()
        .iter()
        .filter(|e| e.path.ends_with(usr.as_str()) && e.range.is_some())
        .count();
    assert!(reads > 0, "no Range reads of the /usr layer");
    eprintln!("Range reads of the /usr layer: {reads}");
    mount.umount();
}

/// A scratch directory (cache, $TMPDIR, bundle) for `lazypull run`; on drop it deletes
/// the named containers and detaches every mount inside, whatever the test's outcome.
struct Scratch {
    dir: tempfile::TempDir,
    containers: Vec<String>,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("lazypull-debian-")
            .tempdir()
            .unwrap();
        for sub in ["cache", "tmp", "docker"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        Scratch {
            dir,
            containers: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn lazypull(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lazypull"));
        cmd.arg(args[0])
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .args(&args[1..])
            .env("TMPDIR", self.path("tmp"))
            .env("DOCKER_CONFIG", self.path("docker"))
            .env("REGISTRY_AUTH_FILE", self.path("auth.json"))
            .stdin(Stdio::null());
        cmd
    }

    fn mounts(&self) -> Vec<PathBuf> {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        info.lines()
            .filter_map(|line| line.split(' ').nth(4))
            .map(PathBuf::from)
            .filter(|p| p.starts_with(self.dir.path()))
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = Command::new("runc")
                .args(["delete", "--force", name])
                .stderr(Stdio::null())
                .status();
        }
        // Later mounts first: the overlay sits on the image mount.
        for mount in self.mounts().iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
    }
}

/// Collects a child's output in threads while the test works beside it.
fn spawn_collecting(cmd: &mut Command) -> (Child, Arc<Mutex<Vec<u8>>>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
    }
    (child, log)
}

fn wait_for_file(path: &Path, child: &mut Child, log: &Mutex<Vec<u8>>) {
    let start = Instant::now();
    while !path.exists() {
        let output = || String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the container ended ({status}) before writing {path:?}:\n{}",
                output()
            );
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("no {path:?} after {LIMIT:?}:\n{}", output());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn debian_container_runs_python_and_leaves_the_image_alone() {
    let debian = Debian::get();
    let reg = TestRegistry::start(Variant::Plain);
    debian.push(&reg, "test/debian", debian::SUITE);
    let reference = format!("{}/test/debian:{}", reg.host(), debian::SUITE);
    let mut scratch = Scratch::new();

    let started = Instant::now();
    let out = bounded(
        &mut scratch.lazypull(&[
            "run",
            "--rm",
            &reference,
            "python3",
            "-c",
            "import sys; print(sys.version_info[0])",
        ]),
        LIMIT,
    );
    eprintln!("first run: {:?}", started.elapsed());
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "3\n");

    // A container that writes a new file, changes one and deletes another, then waits
    // so that the test can look at its image mount while it runs.
    let bundle = scratch.path("bundle");
    let name = "lazypull-debian-writer".to_string();
    scratch.containers.push(name.clone());
    let script = "python3 -c \"open('/etc/written', 'w').write('by the container')\" \
                  && echo changed >> /etc/debian_version && rm /etc/issue \
                  && while [ ! -e /tmp/go ]; do sleep 0.1; done; echo done";
    let (mut child, log) = spawn_collecting(&mut scratch.lazypull(&[
        "run",
        "--rm",
        "--name",
        &name,
        "--bundle",
        bundle.to_str().unwrap(),
        &reference,
        "sh",
        "-c",
        script,
    ]));
    wait_for_file(&bundle.join("upper/etc/issue"), &mut child, &log);
    let image = bundle.join("image");
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/written")).unwrap(),
        "by the container"
    );
    assert!(!image.join("etc/written").exists(), "the mount changed");
    assert_eq!(
        fs::read_to_string(image.join("etc/debian_version")).unwrap(),
        debian.version
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/debian_version")).unwrap(),
        format!("{}changed\n", debian.version)
    );
    assert!(image.join("etc/issue").is_file());
    assert!(!rootfs.join("etc/issue").exists());
    fs::write(rootfs.join("tmp/go"), "").unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("the container never ended");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert!(status.success(), "{output}");
    assert_eq!(output, "done\n");
    assert!(!bundle.exists(), "--rm removes the bundle");

    // The next container starts from the image as it was.
    let out = bounded(
        &mut scratch.lazypull(&[
            "run",
            "--rm",
            &reference,
            "sh",
            "-c",
            "cat /etc/debian_version; test -f /etc/issue && test ! -e /etc/written && echo clean",
        ]),
        LIMIT,
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, format!("{}clean\n", debian.version));
    assert_eq!(
        scratch.mounts(),
        Vec::<PathBuf>::new(),
        "--rm leaves no mount"
    );
    assert_eq!(fs::read_dir(scratch.path("tmp")).unwrap().count(), 0);
}

#[test]
fn the_mirror_comes_from_apt_sources_in_either_format() {
    let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
                  URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                  Components: main\n\nTypes: deb-src\nURIs: http://src.example/debian\n\
                  Suites: bookworm\n\nEnabled: no\nTypes: deb\nURIs: http://off.example/debian\n\
                  Suites: bookworm\n";
    assert_eq!(
        debian::deb822_entries(deb822),
        [(
            "http://deb.debian.org/debian".to_string(),
            vec!["bookworm".to_string(), "bookworm-updates".to_string()]
        )]
    );
    let list = "# deb http://old/debian bookworm main\n\
                deb [arch=amd64 signed-by=/k.gpg] https://m.example/debian/ bookworm main\n\
                deb-src http://src.example/debian bookworm main\n";
    assert_eq!(
        debian::one_line_entries(list),
        [(
            "https://m.example/debian/".to_string(),
            vec!["bookworm".to_string()]
        )]
    );
}
