//! `lazypull mount` from tests: a sandbox (cache, HOME, mount points) per test, and a
//! mount guard that always takes the mount and its daemon down, also when the test panics.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::image::PushedImage;
use super::proxy::{Fault, FaultProxy, Rule};

/// How long a mount may take to come up or a layer to reach a state.
pub const WAIT: Duration = Duration::from_secs(90);

/// Long enough to outlast any test: a fault (a stall of the background download) that
/// lasts until the test clears it.
pub const FOREVER: Duration = Duration::from_secs(600);

/// `len` pseudo-random bytes: incompressible, so a gzip layer of them is as large as they are.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut data);
    data
}

/// Asserts that a read failed with EIO.
pub fn assert_eio(result: std::io::Result<Vec<u8>>, what: &str) {
    match result {
        Ok(bytes) => panic!("{what}: read {} bytes instead of failing", bytes.len()),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}"),
    }
}

/// Runs `f` (a read of the mount, say) on a thread of its own and returns its result,
/// failing the test if it takes longer than `limit`: a hung FUSE read fails the test
/// instead of blocking it, and the test thread keeps the mount guard, whose drop takes
/// the mount down and so ends the stuck read.
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish within {limit:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// What one run of the binary printed and how it ended.
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A cache directory, a HOME and room for mount points, all in one temp dir.
pub struct Sandbox {
    dir: TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("lazypull-mount-")
            .tempdir()
            .unwrap();
        for sub in ["home", "docker", "cache"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        Sandbox { dir }
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The binary with this sandbox's HOME and docker config, so no test reads the
    /// machine's credentials.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lazypull"));
        cmd.args(args)
            .stdin(Stdio::null())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path().join("home"))
            .env("DOCKER_CONFIG", self.dir.path().join("docker"))
            .env("REGISTRY_AUTH_FILE", self.dir.path().join("auth.json"))
            .env("XDG_RUNTIME_DIR", self.dir.path().join("home"));
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("run lazypull");
        let run = Run {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(
            !run.stderr.contains("panicked"),
            "lazypull {args:?} panicked:\n{}",
            run.stderr
        );
        run
    }

    /// Runs `lazypull ARGS… --cache-dir CACHE`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let cache = self.cache();
        let mut all = args.to_vec();
        all.extend(["--cache-dir", cache.to_str().unwrap()]);
        let run = self.run(&all);
        assert!(
            run.success,
            "lazypull {all:?} failed:\n{}{}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    /// Builds and caches every layer's index (downloading and verifying each layer).
    pub fn index(&self, reference: &str, extra: &[&str]) {
        let mut args = vec!["index"];
        args.extend(extra);
        args.push(reference);
        self.ok(&args);
    }

    /// Stores credentials for `hosts` where lazypull looks for them (`REGISTRY_AUTH_FILE`).
    pub fn login(&self, hosts: &[&str], user: &str, password: &str) {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let auths: serde_json::Map<String, Value> = hosts
            .iter()
            .map(|h| (h.to_string(), serde_json::json!({ "auth": auth })))
            .collect();
        let config = serde_json::json!({ "auths": auths });
        fs::write(
            self.dir.path().join("auth.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
    }

    /// Drops the cached layer blobs, keeping the indexes: the next mount reads lazily.
    pub fn prune_blobs(&self) {
        self.ok(&["cache", "prune", "--blobs"]);
        let blobs = self.cache().join("blobs/sha256");
        assert_eq!(fs::read_dir(&blobs).unwrap().count(), 0, "blobs left");
    }

    /// A fresh directory to mount on.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::create_dir_all(&path).unwrap();
        path.canonicalize().unwrap()
    }

    /// `lazypull mount EXTRA… --cache-dir CACHE REF <sandbox>/mnt`, which must succeed.
    pub fn mount(&self, reference: &str, extra: &[&str]) -> Mount<'_> {
        let mountpoint = self.mountpoint("mnt");
        self.mount_at(&mountpoint, reference, extra)
    }

    pub fn mount_at(&self, mountpoint: &Path, reference: &str, extra: &[&str]) -> Mount<'_> {
        let cache = self.cache();
        let mut args = vec!["-v", "mount", "--cache-dir", cache.to_str().unwrap()];
        args.extend(extra);
        args.extend([reference, mountpoint.to_str().unwrap()]);
        let run = self.run(&args);
        // "mounted REF at DIR (daemon pid N, log FILE)"
        let pid = run
            .stdout
            .split("daemon pid ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok());
        let mount = Mount {
            sandbox: self,
            path: mountpoint.to_path_buf(),
            pid,
            down: false,
        };
        assert!(
            run.success,
            "mount failed:\n{}{}\ndaemon log:\n{}",
            run.stdout,
            run.stderr,
            self.daemon_log()
        );
        assert!(
            is_mounted(mountpoint),
            "mount returned but {mountpoint:?} is not mounted"
        );
        assert!(pid.is_some(), "no daemon pid in {:?}", run.stdout);
        let reported = mount.status()["pid"].as_u64();
        assert_eq!(
            reported,
            pid.map(u64::from),
            "the status names another daemon"
        );
        mount
    }

    /// `lazypull mount --cache-dir CACHE REF <sandbox>/mnt`, which must fail the way every
    /// error should (`lazypull: error:` first) and leave nothing mounted; its stderr.
    pub fn mount_error(&self, reference: &str) -> String {
        let mountpoint = self.mountpoint("mnt");
        let cache = self.cache();
        let run = self.run(&[
            "mount",
            "--cache-dir",
            cache.to_str().unwrap(),
            reference,
            mountpoint.to_str().unwrap(),
        ]);
        let mounted = is_mounted(&mountpoint);
        if mounted {
            let _ = Command::new("umount").arg("-l").arg(&mountpoint).status();
        }
        assert!(
            !run.success,
            "mount of {reference} succeeded:\n{}",
            run.stdout
        );
        assert!(!mounted, "a failed mount left {mountpoint:?} mounted");
        assert!(
            run.stderr.starts_with("lazypull: error:"),
            "stderr: {}",
            run.stderr
        );
        run.stderr
    }

    /// Every daemon log in the cache, oldest first.
    pub fn daemon_log(&self) -> String {
        let Ok(dir) = fs::read_dir(self.cache().join("logs")) else {
            return String::new();
        };
        let mut files: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        files
            .iter()
            .map(|f| fs::read_to_string(f).unwrap_or_default())
            .collect()
    }
}

/// A live mount; dropping it unmounts and stops the daemon.
pub struct Mount<'a> {
    sandbox: &'a Sandbox,
    path: PathBuf,
    pid: Option<u32>,
    down: bool,
}

impl Mount<'_> {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path` inside the mount (leading `/` allowed).
    pub fn join(&self, path: &str) -> PathBuf {
        self.path.join(path.trim_start_matches('/'))
    }

    /// The daemon's pid, as its status reported at mount time.
    pub fn pid(&self) -> u32 {
        self.pid.unwrap()
    }

    /// `lazypull status --json`.
    pub fn status(&self) -> Value {
        let run = self
            .sandbox
            .run(&["status", "--json", self.path.to_str().unwrap()]);
        assert!(run.success, "status failed: {}", run.stderr);
        serde_json::from_str(&run.stdout).unwrap()
    }

    /// `lazypull status` (text).
    pub fn status_text(&self) -> String {
        let run = self.sandbox.run(&["status", self.path.to_str().unwrap()]);
        assert!(run.success, "status failed: {}", run.stderr);
        run.stdout
    }

    /// The state of each layer, bottom first.
    pub fn states(&self) -> Vec<String> {
        states(&self.status())
    }

    /// Polls the status until `done` holds for the layer states; returns that status.
    pub fn wait_for(&self, what: &str, done: impl Fn(&[String]) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status();
            if done(&states(&status)) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "layers never became {what}: {status:#}\ndaemon log:\n{}",
                self.sandbox.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_all_ready(&self) -> Value {
        self.wait_for("ready", |s| s.iter().all(|s| s == "ready"))
    }

    /// `lazypull umount`, which must detach the mount and see the daemon exit.
    /// If a check fails, dropping the guard still takes everything down.
    pub fn umount(mut self) {
        let run = self.sandbox.run(&["umount", self.path.to_str().unwrap()]);
        assert!(run.success, "umount failed: {}", run.stderr);
        assert!(!is_mounted(&self.path), "still mounted after umount");
        let pid = self.pid();
        assert!(
            wait_until(Duration::from_secs(10), || !pid_alive(pid)),
            "daemon {pid} still runs after umount"
        );
        self.down = true;
    }

    /// SIGKILLs the daemon and waits until it is gone; the dead mount stays until `umount`.
    pub fn kill(&self) {
        let pid = self.pid();
        // SAFETY: kill has no memory preconditions; the pid is this test's daemon.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
        assert!(
            wait_until(Duration::from_secs(10), || !pid_alive(pid)),
            "daemon {pid} outlived SIGKILL"
        );
    }

    /// Ends the guard without touching the mount or its daemon, whose pid it returns: the
    /// test takes both over.
    pub fn release(mut self) -> u32 {
        self.down = true;
        self.pid()
    }

    /// Ends the guard of a mount the test took down some other way (making sure it is).
    pub fn forget(mut self) {
        teardown(self.sandbox, &self.path, self.pid);
        self.down = true;
    }
}

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        if !self.down {
            teardown(self.sandbox, &self.path, self.pid);
        }
    }
}

/// Unmounts however it can and kills the daemon; never panics (it runs while unwinding).
fn teardown(sandbox: &Sandbox, path: &Path, pid: Option<u32>) {
    if is_mounted(path)
        && let Ok(mut child) = sandbox
            .command(&["umount", path.to_str().unwrap_or_default()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    {
        // A daemon stuck in a handler must not hang the test: give up after a while.
        if !wait_until(Duration::from_secs(15), || {
            matches!(child.try_wait(), Ok(Some(_)) | Err(_))
        }) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
    if is_mounted(path) {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
    if let Some(pid) = pid.filter(|p| pid_alive(*p)) {
        // SAFETY: kill has no memory preconditions; the pid is the daemon this test started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

pub fn states(status: &Value) -> Vec<String> {
    status["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["state"].as_str().unwrap().to_string())
        .collect()
}

/// Whether `path` is a mount point in this process's mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    !mounts_at(path).is_empty()
}

/// The per-mount options (`ro,nosuid,nodev,relatime`) of each mount on `path`, in the
/// order of /proc/self/mountinfo (several when mounts are stacked).
pub fn mounts_at(path: &Path) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let path = path.to_str().unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.get(4) == Some(&path)).then(|| fields.get(5).unwrap_or(&"").to_string())
        })
        .collect()
}

/// Whether `pid` runs (a zombie does not count).
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Applies `fault` to the downloads of whole layers or of their rest (GETs without Range
/// or with `Range: bytes=N-`) of every layer of `image`, which only the background
/// materializer sends; reads (Range GETs of `bytes=A-B`) and the config pass untouched.
pub fn hold_background(proxy: &FaultProxy, image: &PushedImage, fault: Fault) {
    for rule in background_rules(image, fault) {
        proxy.add_rule(rule);
    }
}

/// The rules [`hold_background`] adds.
pub fn background_rules(image: &PushedImage, fault: Fault) -> Vec<Rule> {
    image
        .layers
        .iter()
        .map(|layer| {
            let path = format!("/blobs/{}", layer.digest);
            Rule::new("GET", &path, fault.clone()).rest_of_blob()
        })
        .collect()
}
