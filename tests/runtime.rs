//! `lazypull run`, `bundle` and `unbundle` end to end: a real registry, real FUSE
//! mounts, real overlays and real runc, with a busybox image built here. Needs root.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::image::{self, Compression, ImageSpec, host_arch};
use common::registry::{TestRegistry, Variant};
use common::setuid::{as_nobody, euid_program};
use common::tarball::TarBuilder;
use serde_json::Value;
use tempfile::TempDir;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345:App:/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:2345:\nstaff:x:50:app\n";
/// How long any one command may take before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(120);

/// One test's world: a registry, a scratch directory (cache, bundles, $TMPDIR), and
/// whatever containers it starts. Dropping it deletes the containers and unmounts
/// everything under the scratch directory, whatever the test's outcome.
struct World {
    reg: TestRegistry,
    dir: TempDir,
    containers: Mutex<Vec<String>>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("lazypull-runtime-")
            .tempdir()
            .unwrap();
        for sub in ["cache", "tmp", "docker"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        World {
            reg: TestRegistry::start(Variant::Plain),
            dir,
            containers: Mutex::new(Vec::new()),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Where `lazypull run` makes its temporary bundles.
    fn tmpdir(&self) -> PathBuf {
        self.path("tmp")
    }

    fn push(&self, repo: &str, spec: &ImageSpec) -> String {
        image::push_image(&self.reg, repo, "1", spec);
        format!("{}/{repo}:1", self.reg.host())
    }

    /// `lazypull SUBCOMMAND --cache-dir … ARGS…` in this world's environment.
    fn lazypull(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lazypull"));
        cmd.arg(subcommand);
        if subcommand != "unbundle" {
            cmd.arg("--cache-dir").arg(self.path("cache"));
        }
        cmd.args(args)
            .env("TMPDIR", self.tmpdir())
            .env("DOCKER_CONFIG", self.path("docker"))
            .env("REGISTRY_AUTH_FILE", self.path("auth.json"))
            .stdin(Stdio::null());
        cmd
    }

    /// Remembers a container name so that drop deletes it if the test fails.
    fn container(&self, name: &str) -> String {
        self.containers.lock().unwrap().push(name.to_string());
        name.to_string()
    }

    /// Mount points under the scratch directory, in mount order.
    fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(self.dir.path())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for name in self.containers.lock().unwrap().iter() {
            let _ = Command::new("runc")
                .args(["delete", "--force", name])
                .stderr(Stdio::null())
                .status();
        }
        // Later mounts first: the overlays sit on the lazypull mounts.
        for mount in self.mounts().iter().rev() {
            let path = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path. Detach: a busy mount still goes.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Runs `cmd` (feeding it `stdin`) and waits at most [`DEADLINE`].
fn output(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    wait_output(child)
}

fn wait_output(mut child: Child) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("command still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "lazypull panicked:\n{stderr}");
    out
}

/// The container's status as runc reports it, if runc knows it.
fn runc_state(name: &str) -> Option<String> {
    let out = Command::new("runc").args(["state", name]).output().ok()?;
    let state: Value = serde_json::from_slice(&out.stdout).ok()?;
    state["status"].as_str().map(str::to_string)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A busybox root: the static busybox, a symlink per applet, passwd and group with a
/// user `app`, and the usual top-level directories.
fn busybox_layer() -> Vec<u8> {
    let busybox = fs::read("/usr/bin/busybox").expect("busybox-static is installed");
    let list = Command::new("/usr/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    let mut tar = TarBuilder::new()
        .dir("bin", 0o755)
        .file("bin/busybox", busybox, 0o755);
    for applet in text(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            tar = tar.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    tar.dir("etc", 0o755)
        .file("etc/passwd", PASSWD, 0o644)
        .file("etc/group", GROUP, 0o644)
        .file("etc/motd", "welcome\n", 0o644)
        .dir("root", 0o700)
        .dir("home", 0o755)
        .dir_owned("home/app", 0o755, 1234, 2345)
        .dir("tmp", 0o1777)
        .dir("proc", 0o755)
        .dir("sys", 0o755)
        .dir("dev", 0o755)
        .build()
}

fn busybox_image(cmd: &[&str]) -> ImageSpec {
    let mut spec = ImageSpec::new(vec![(busybox_layer(), Compression::Gzip)]);
    spec.cmd = Some(cmd.iter().map(|s| s.to_string()).collect());
    spec
}

#[test]
fn run_passes_output_stdin_and_exit_status_through() {
    let w = World::new();
    let reference = w.push("test/busybox", &busybox_image(&["sh"]));
    let bundle = w.path("hello");
    let bundle_arg = bundle.to_str().unwrap();

    let out = output(
        w.lazypull(
            "run",
            &[
                "--rm",
                "--bundle",
                bundle_arg,
                &reference,
                "echo",
                "hello",
                "from busybox",
            ],
        ),
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from busybox\n");
    assert!(!bundle.exists(), "--rm deletes the bundle");

    let out = output(
        w.lazypull("run", &["--rm", &reference, "sh", "-c", "exit 3"]),
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");

    let out = output(
        w.lazypull("run", &["--rm", &reference, "cat"]),
        Some(b"piped in\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "piped in\n");

    // A killed container's status is 128 + the signal, as a shell reports it.
    let name = w.container("lazypull-killed");
    let child = w
        .lazypull(
            "run",
            &["--rm", "--name", &name, &reference, "sleep", "600"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while runc_state(&name).as_deref() != Some("running") {
        assert!(start.elapsed() < DEADLINE, "the container never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        Command::new("runc")
            .args(["kill", &name, "KILL"])
            .status()
            .unwrap()
            .success()
    );
    let out = wait_output(child);
    assert_eq!(out.status.code(), Some(128 + 9), "{}", text(&out.stderr));

    assert_eq!(w.mounts(), Vec::<PathBuf>::new(), "--rm leaves no mount");
    assert_eq!(
        fs::read_dir(w.tmpdir()).unwrap().count(),
        0,
        "--rm leaves no bundle"
    );
}

#[test]
fn image_config_is_honoured() {
    let w = World::new();
    let show = "#!/bin/sh\n\
                echo \"args: $*\"\n\
                echo \"cwd: $(pwd)\"\n\
                echo \"ids: $(id -u):$(id -g) groups: $(id -G)\"\n\
                echo \"greeting: $GREETING\"\n\
                echo \"home: $HOME\"\n\
                echo \"path: $PATH\"\n\
                echo \"hostname: $(hostname)\"\n";
    let app = TarBuilder::new()
        .dir("usr", 0o755)
        .dir("usr/local", 0o755)
        .dir("usr/local/bin", 0o755)
        .file("usr/local/bin/show", show, 0o755)
        .dir("srv", 0o755)
        .dir_owned("srv/data", 0o755, 1234, 2345)
        .build();
    let mut spec = busybox_image(&["default", "args"]);
    spec.layers.push((app, Compression::Gzip));
    spec.env = vec![
        "PATH=/usr/local/bin:/bin".into(),
        "GREETING=hello there".into(),
    ];
    spec.entrypoint = Some(vec!["show".into()]);
    spec.working_dir = Some("/srv/data".into());
    spec.user = Some("app".into());
    let reference = w.push("test/app", &spec);

    let out = output(
        w.lazypull("run", &["--rm", "--name", "cfg-test", &reference]),
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "args: default args\n\
         cwd: /srv/data\n\
         ids: 1234:2345 groups: 2345 50\n\
         greeting: hello there\n\
         home: /home/app\n\
         path: /usr/local/bin:/bin\n\
         hostname: cfg-test\n"
    );

    // Arguments replace Cmd; the Entrypoint stays.
    let out = output(w.lazypull("run", &["--rm", &reference, "one", "two"]), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("args: one two\n"),
        "{}",
        text(&out.stdout)
    );

    // A user the image does not know is an error before anything runs.
    spec.user = Some("ghost".into());
    let reference = w.push("test/ghost", &spec);
    let bundle = w.path("ghost");
    let out = output(
        w.lazypull(
            "run",
            &["--rm", "--bundle", bundle.to_str().unwrap(), &reference],
        ),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("user \"ghost\" not found in the image's /etc/passwd"),
        "{stderr}"
    );
    assert!(!bundle.exists(), "a failed run leaves no bundle");
    assert_eq!(
        w.mounts(),
        Vec::<PathBuf>::new(),
        "a failed run leaves no mount"
    );
}

#[test]
fn container_writes_land_in_the_upper_directory_only() {
    let w = World::new();
    let reference = w.push("test/busybox", &busybox_image(&["sh"]));
    let bundle = w.path("bundle");
    let b = bundle.to_str().unwrap();
    let script = "echo new > /tmp/new.txt && rm /etc/motd && echo changed";
    let out = output(
        w.lazypull("bundle", &[&reference, b, "sh", "-c", script]),
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("runc run --bundle {b}")),
        "{}",
        text(&out.stdout)
    );

    let config: Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["process"]["args"],
        serde_json::json!(["sh", "-c", script])
    );
    assert_eq!(config["root"]["path"], "rootfs");
    let image_mount = bundle.join("image");
    let rootfs = bundle.join("rootfs");
    assert_eq!(w.mounts(), vec![image_mount.clone(), rootfs.clone()]);

    // The bundle is a plain OCI bundle: runc runs it as it is.
    let name = w.container("lazypull-upper-test");
    let mut runc = Command::new("runc");
    runc.args(["run", "--bundle", b, &name])
        .stdin(Stdio::null());
    let out = output(runc, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "changed\n");

    let upper = bundle.join("upper");
    assert_eq!(
        fs::read_to_string(upper.join("tmp/new.txt")).unwrap(),
        "new\n"
    );
    assert!(
        !image_mount.join("tmp/new.txt").exists(),
        "the image mount never changes"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("tmp/new.txt")).unwrap(),
        "new\n"
    );
    assert_eq!(
        fs::read_to_string(image_mount.join("etc/motd")).unwrap(),
        "welcome\n"
    );
    assert!(!rootfs.join("etc/motd").exists());
    let whiteout = fs::symlink_metadata(upper.join("etc/motd")).unwrap();
    assert!(whiteout.file_type().is_char_device(), "{whiteout:?}");
    assert_eq!(whiteout.rdev(), 0, "a whiteout is the device 0/0");

    let out = output(w.lazypull("unbundle", &[b]), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(w.mounts(), Vec::<PathBuf>::new());
    assert_eq!(
        fs::read_to_string(upper.join("tmp/new.txt")).unwrap(),
        "new\n",
        "unbundle keeps the container's changes"
    );
    let out = output(w.lazypull("unbundle", &["--remove", b]), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!bundle.exists());
}

#[test]
fn a_bundle_is_out_of_other_users_reach_and_its_container_runs() {
    let w = World::new();
    // Where every user can traverse (the world's directory is private otherwise).
    fs::set_permissions(w.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = busybox_image(&["euid"]);
    let rootsh = TarBuilder::new()
        .dir("usr", 0o755)
        .dir("usr/local", 0o755)
        .dir("usr/local/bin", 0o755)
        .file("usr/local/bin/euid", euid_program(), 0o4755)
        .build();
    spec.layers.push((rootsh, Compression::Gzip));
    let reference = w.push("test/rootsh", &spec);
    let bundle = w.path("bundle");
    let b = bundle.to_str().unwrap();
    let out = output(w.lazypull("bundle", &[&reference, b]), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let meta = fs::metadata(&bundle).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o700, 0));
    // The overlay honours setuid bits (for the container): no host user may reach it.
    for program in ["rootfs", "image"].map(|m| bundle.join(m).join("usr/local/bin/euid")) {
        let out = as_nobody(&program, &[]);
        assert!(
            !out.status.success() && text(&out.stderr).contains("Permission denied"),
            "nobody ran {program:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let name = w.container("lazypull-private-test");
    let mut runc = Command::new("runc");
    runc.args(["run", "--bundle", b, &name])
        .stdin(Stdio::null());
    let out = output(runc, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "0\n");
    let out = output(w.lazypull("unbundle", &["--remove", b]), None);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // An empty directory of another user is refused: its owner could open it to everyone.
    let theirs = w.path("theirs");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let out = output(
        w.lazypull("bundle", &[&reference, theirs.to_str().unwrap()]),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("{} belongs to uid 65534", theirs.display())),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fs::read_dir(&theirs).unwrap().count(), 0);
    assert_eq!(w.mounts(), Vec::<PathBuf>::new());
}

#[test]
fn two_containers_of_one_image_run_at_once() {
    let w = World::new();
    let reference = w.push("test/busybox", &busybox_image(&["sh"]));
    // Each writes its own /tmp/mine, then waits for /tmp/go, which the test creates
    // from outside only once both are running.
    let script = |word: &str| {
        format!(
            "echo {word} > /tmp/mine; while [ ! -e /tmp/go ]; do sleep 0.1; done; cat /tmp/mine"
        )
    };
    let mut children = Vec::new();
    for word in ["one", "two"] {
        let bundle = w.path(word);
        let name = w.container(&format!("lazypull-two-{word}"));
        let mut cmd = w.lazypull(
            "run",
            &[
                "--rm",
                "--name",
                &name,
                "--bundle",
                bundle.to_str().unwrap(),
                &reference,
                "sh",
                "-c",
                &script(word),
            ],
        );
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push((bundle, child));
    }
    for (bundle, child) in &mut children {
        let start = Instant::now();
        while !bundle.join("upper/tmp/mine").exists() {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                panic!("container ended early ({status}): {stderr}");
            }
            assert!(start.elapsed() < DEADLINE, "container never started");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (bundle, _) in &children {
        fs::write(bundle.join("rootfs/tmp/go"), "").unwrap();
    }
    for ((bundle, child), word) in children.into_iter().zip(["one", "two"]) {
        let out = wait_output(child);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            format!("{word}\n"),
            "each container sees its own writes"
        );
        assert!(!bundle.exists());
    }
    assert_eq!(w.mounts(), Vec::<PathBuf>::new());
}

#[test]
fn errors_name_the_problem_and_leave_nothing_behind() {
    let w = World::new();
    let reference = w.push("test/busybox", &busybox_image(&["sh"]));

    // No runtime: said before any registry traffic.
    let manifest_requests = w.reg.requests_matching("/manifests/");
    let out = output(
        w.lazypull(
            "run",
            &["--rm", "--runtime", "/nonexistent/runc", &reference, "true"],
        ),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("apt-get install runc"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(w.reg.requests_matching("/manifests/"), manifest_requests);

    // A non-empty bundle directory is refused and left alone.
    let full = w.path("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("keep"), "mine").unwrap();
    let out = output(
        w.lazypull("bundle", &[&reference, full.to_str().unwrap()]),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("is not empty"), "{stderr}");
    let left: Vec<_> = fs::read_dir(&full)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["keep"]);

    // Another architecture's image cannot run here.
    let other = if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let mut foreign = busybox_image(&["sh"]);
    foreign.arch = other.into();
    let foreign_ref = w.push("test/foreign", &foreign);
    let out = output(w.lazypull("run", &["--rm", &foreign_ref]), None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("is an image for linux/{other}"))
            && stderr.contains(&format!("this machine is linux/{}", host_arch())),
        "{stderr}"
    );

    // An image with neither Entrypoint nor Cmd needs a command.
    let mut bare = busybox_image(&[]);
    bare.cmd = None;
    let bare_ref = w.push("test/bare", &bare);
    let out = output(w.lazypull("run", &["--rm", &bare_ref]), None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no command"),
        "{}",
        text(&out.stderr)
    );

    // Unbundling something that is no bundle says so.
    let out = output(w.lazypull("unbundle", &[full.to_str().unwrap()]), None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not a lazypull bundle"),
        "{}",
        text(&out.stderr)
    );

    assert_eq!(w.mounts(), Vec::<PathBuf>::new());
    assert_eq!(fs::read_dir(w.tmpdir()).unwrap().count(), 0);
}
