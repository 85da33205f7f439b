//! `lazypull mount`, `umount` and `status`.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use fuser::{Config, SessionACL};
use serde::{Deserialize, Serialize};

use super::RegistryArgs;
use super::daemon::{Lifecycle, preflight, wait_for_answer};
use super::layers::{CacheArgs, IndexedImage};
use crate::fs::session::{FSTYPE, MountSpec};
use crate::fs::{ContentReader, LazyFs, STATUS_XATTR, unmount};
use crate::layer::seek::DEFAULT_SPAN;
use crate::materialize::{LayerStatus, Layers, RECORD_WINDOW, Trace};

/// Set in the daemon's environment: the pipe on which it reports that the
/// mount is up (or why it is not).
const READY_FD_ENV: &str = "LAZYPULL_READY_FD";
const READ_WORKERS: usize = 16;
const FUSE_THREADS: usize = 4;

#[derive(Args)]
#[command(
    about = "Mount an image read-only, fetching file contents on first read and verifying every layer in the background",
    after_help = "Examples:\n  lazypull mount localhost:5000/team/app:1.4 /mnt\n  chroot /mnt /bin/sh -c 'cat /etc/os-release'\n  \
                  lazypull status /mnt\n  lazypull umount /mnt"
)]
pub struct MountArgs {
    #[command(flatten)]
    registry: RegistryArgs,

    #[command(flatten)]
    cache: CacheArgs,

    /// Stay attached (logs on stderr) instead of going to the background.
    #[arg(long)]
    foreground: bool,

    /// Let other users (and container runtimes) use the mount.
    #[arg(long)]
    allow_other: bool,

    /// Honour the setuid and setgid bits of the image's files (root only).
    /// Only for an image trusted like the host's own programs: any user who
    /// reaches the mount (all of them with --allow-other) runs its setuid
    /// programs as their owner, root included.
    #[arg(long)]
    suid: bool,

    /// Honour the image's device files (root only): a device node in an
    /// image can open the host's disks or memory to whoever reaches it.
    #[arg(long)]
    dev: bool,

    /// Do not fetch ahead the files a previous mount of the image read
    /// first (the list is kept in the cache beside the indexes).
    #[arg(long)]
    no_prefetch: bool,

    /// Memory for inflated layer spans, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    memory_cache: u64,

    /// Image reference: [REGISTRY/]NAME[:TAG][@DIGEST]
    reference: String,

    /// An existing directory to mount the image on.
    mountpoint: PathBuf,
}

/// What `status` reads from the mount.
#[derive(Serialize, Deserialize)]
struct MountStatus {
    reference: String,
    digest: String,
    pid: u32,
    layers: Vec<LayerStatus>,
}

struct MountContent {
    layers: Arc<Layers>,
    reference: String,
    digest: String,
}

impl ContentReader for MountContent {
    fn read(&self, layer: usize, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        self.layers.was_read(layer, offset, len);
        self.layers
            .read(layer, offset, len)
            .map_err(std::io::Error::other)
    }

    fn verified(&self, layer: usize) -> bool {
        self.layers.is_ready(layer)
    }

    fn local_file(&self, layer: usize, offset: u64) -> Option<PathBuf> {
        self.layers.local_file(layer, offset)
    }

    fn opened(&self, layer: usize, offset: u64, len: u64) {
        self.layers.opened(layer, offset, len);
    }

    fn status(&self) -> String {
        let status = MountStatus {
            reference: self.reference.clone(),
            digest: self.digest.clone(),
            pid: std::process::id(),
            layers: self.layers.status(),
        };
        serde_json::to_string(&status).unwrap_or_default()
    }
}

/// `argv` is the command line (without the program name) the daemon is
/// started with.
pub fn run(args: &MountArgs, argv: Vec<OsString>) -> anyhow::Result<()> {
    preflight(&args.mountpoint, args.cache.cache_dir.as_deref())?;
    let ready = ready_pipe();
    if args.foreground || ready.is_some() {
        let result = serve(args, ready);
        return result;
    }
    let (pid, log_path) = spawn_daemon(&args.cache, argv, &args.mountpoint)?;
    println!(
        "mounted {} at {} (daemon pid {pid}, log {})",
        args.reference,
        args.mountpoint.display(),
        log_path.display()
    );
    Ok(())
}

/// Mounts `reference` on `mountpoint` with a daemon in the background, for
/// other users too (a container runs as any user), and returns when the
/// mount is up.
pub(super) fn mount_in_background(
    registry: &RegistryArgs,
    cache: &CacheArgs,
    reference: &str,
    mountpoint: &Path,
) -> anyhow::Result<()> {
    let mut argv: Vec<OsString> = vec!["mount".into(), "--allow-other".into()];
    argv.extend(registry.to_argv().into_iter().map(OsString::from));
    if let Some(dir) = &cache.cache_dir {
        argv.push("--cache-dir".into());
        argv.push(dir.into());
    }
    argv.push("--".into());
    argv.push(reference.into());
    argv.push(mountpoint.into());
    spawn_daemon(cache, argv, mountpoint).map(|_| ())
}

/// The write end of the readiness pipe, when we are the daemon.
fn ready_pipe() -> Option<File> {
    let fd: i32 = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
    // Programs the daemon starts (fusermount3) must not hold it open.
    // SAFETY: fcntl on a descriptor number has no memory preconditions.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the parent passed us this descriptor and nothing else owns it.
    Some(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Starts `lazypull ARGV` (a mount) detached, with its output in a log
/// file, and waits until it says the mount is up or why it is not. Returns
/// the daemon's pid and log file.
fn spawn_daemon(
    cache: &CacheArgs,
    argv: Vec<OsString>,
    mountpoint: &Path,
) -> anyhow::Result<(u32, PathBuf)> {
    let (log, log_path) = cache.open()?.new_log("mount")?;
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating a pipe");
    }
    // SAFETY: pipe2 just created these and nothing else owns them.
    let (read_end, write_end) =
        unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let write_fd = fds[1];
    let mut cmd = Command::new(std::env::current_exe().context("finding the lazypull binary")?);
    cmd.args(argv)
        .env(READY_FD_ENV, write_fd.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            // Keep the write end open across exec (it was made CLOEXEC).
            if libc::fcntl(write_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    drop(write_end);
    let answer = wait_for_answer(&mut child, read_end, mountpoint)?;
    match answer.strip_prefix("ok") {
        Some(_) => Ok((child.id(), log_path)),
        None => {
            let _ = child.wait();
            let reason = answer
                .trim()
                .strip_prefix("error: ")
                .unwrap_or(answer.trim());
            if reason.is_empty() {
                bail!(
                    "the mount daemon exited without mounting; see {}",
                    log_path.display()
                );
            }
            bail!("{reason}")
        }
    }
}

/// Mounts and serves until unmounted or signalled.
fn serve(args: &MountArgs, mut ready: Option<File>) -> anyhow::Result<()> {
    let lifecycle = Lifecycle::watch_signals()?;
    let result = start(args, &lifecycle);
    let session = match result {
        Ok(s) => s,
        Err(e) => {
            if let Some(pipe) = ready.as_mut() {
                let _ = write!(pipe, "error: {}", super::error_message(&e));
            }
            return Err(e);
        }
    };
    if let Some(mut pipe) = ready.take() {
        let _ = pipe.write_all(b"ok");
    } else {
        eprintln!(
            "mounted {} at {}",
            args.reference,
            args.mountpoint.display()
        );
    }
    // The session ends when the kernel ends it (the mount is gone from
    // every mount namespace); nothing is unmounted by path after that.
    let served = session.run().context("serving the mount");
    lifecycle.finish();
    served?;
    tracing::info!("unmounted");
    Ok(())
}

/// Mounts and returns the session; the lifecycle then knows the mount and
/// what stores the prefetch list it records.
fn start(args: &MountArgs, lifecycle: &Arc<Lifecycle>) -> anyhow::Result<fuser::Session<LazyFs>> {
    limit_heap_growth();
    let image = IndexedImage::load(&args.registry, &args.cache, &args.reference, DEFAULT_SPAN)?;
    let tree = Arc::new(image.tree()?);
    let indexes = image.layers.into_iter().map(|(index, _)| index).collect();
    let trace = (!args.no_prefetch)
        .then(|| Trace::load(&image.cache, &image.image.digest))
        .flatten();
    let layers = Arc::new(Layers::new(
        &image.client,
        &image.cache,
        &image.image.layers,
        indexes,
        args.memory_cache << 20,
        trace.as_ref(),
    )?);
    let content = MountContent {
        layers: Arc::clone(&layers),
        reference: image.image.reference.clone(),
        digest: image.image.digest.to_string(),
    };
    let fs = LazyFs::new(Arc::clone(&tree), Arc::new(content), READ_WORKERS);
    let store_trace = {
        let (cache, digest, layers) = (
            image.cache.reopen()?,
            image.image.digest.clone(),
            Arc::clone(&layers),
        );
        Arc::new(move || layers.store_trace(&cache, &digest))
    };
    let mut config = Config::default();
    let acl = if args.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.acl = acl;
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
    let spec = MountSpec {
        source: &image.image.reference,
        allow_other: args.allow_other,
        suid: args.suid,
        dev: args.dev,
    };
    let (fd, mounted) = lifecycle.mount(&args.mountpoint, &spec)?;
    let session = fuser::Session::from_fd(fs, fd, acl, config)
        .with_context(|| format!("starting the FUSE session on {}", args.mountpoint.display()))?;
    // Pages the kernel cached from a layer that then fails its check must
    // not be served any more.
    let notifier = session.notifier();
    layers.on_failure(Box::new(move |layer| {
        for ino in tree.files_of_layer(layer) {
            if let Err(e) = notifier.inval_inode(fuser::INodeNo(ino), 0, 0) {
                tracing::warn!(ino, error = %e, "cannot drop the kernel's cached pages");
            }
        }
    }));
    layers
        .materialize(image.cache, trace)
        .context("starting the background download")?;
    mounted.keep();
    // A long-lived mount stores its list once startup is over; a short one
    // when it is unmounted.
    let early = Arc::clone(&store_trace);
    std::thread::spawn(move || {
        std::thread::sleep(RECORD_WINDOW);
        early();
    });
    lifecycle.on_finish(Box::new(move || store_trace()));
    Ok(session)
}

/// How often freed heap memory is given back to the system.
#[cfg(target_env = "gnu")]
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How many malloc arenas the daemon's threads share.
#[cfg(target_env = "gnu")]
const MALLOC_ARENAS: libc::c_int = 2;

/// glibc gives each busy thread its own heap (up to 8 per core) and keeps what
/// it frees there: the inflated spans and compressed bytes the read workers
/// allocate and drop made the daemon's RSS under load several times the span
/// cache. Two shared arenas reuse that memory across threads (tests/load.rs:
/// peak 96 MiB instead of 156, same throughput), and a thread gives free memory
/// back every few seconds. (A fixed mmap threshold also bounded it, but made
/// every FUSE request slower: a cold `find` over a mount took three times as long.)
/// Called early, before the read workers and FUSE threads start.
fn limit_heap_growth() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes allocator tuning, and glibc makes it thread-safe.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
        let _ = std::thread::Builder::new().name("trim".into()).spawn(|| {
            loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: malloc_trim only returns free memory to the system.
                unsafe { libc::malloc_trim(0) };
            }
        });
    }
}

#[derive(Args)]
#[command(
    about = "Unmount a lazypull mount (also when its daemon has died)",
    after_help = "Example:\n  lazypull umount /mnt"
)]
pub struct UmountArgs {
    mountpoint: PathBuf,
}

pub fn umount(args: &UmountArgs) -> anyhow::Result<()> {
    unmount_and_wait(&args.mountpoint)
}

/// Unmounts a lazypull mount and waits for its daemon to exit.
pub(super) fn unmount_and_wait(mountpoint: &Path) -> anyhow::Result<()> {
    let shown = crate::fs::mountinfo::canonical(mountpoint)
        .and_then(|path| crate::fs::mountinfo::top_mount(&path))
        .with_context(|| format!("unmounting {}", mountpoint.display()))?;
    match shown {
        Some(m) if m.fstype == FSTYPE => {}
        Some(m) => bail!(
            "{} is a {} mount, not a lazypull mount: unmount it with umount(8)",
            mountpoint.display(),
            m.fstype
        ),
        None => bail!(
            "{} is not mounted: nothing to unmount",
            mountpoint.display()
        ),
    }
    let pid = read_status(mountpoint).ok().map(|s| s.pid);
    unmount(mountpoint).with_context(|| format!("unmounting {}", mountpoint.display()))?;
    if let Some(pid) = pid {
        wait_for_exit(pid);
    }
    Ok(())
}

/// Whether `path` is a lazypull mount (answering or with a dead daemon).
pub(super) fn is_lazypull_mount(path: &Path) -> bool {
    match xattr::get(path, STATUS_XATTR) {
        Ok(v) => v.is_some(),
        Err(e) => e.raw_os_error() == Some(libc::ENOTCONN),
    }
}

/// Waits (a few seconds at most) for the daemon to finish and exit.
fn wait_for_exit(pid: u32) {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    for _ in 0..100 {
        // A daemon this process started (bundle, run) stays a zombie until
        // reaped; for anyone else's, waitpid just fails.
        // SAFETY: waitpid with a null status pointer has no preconditions.
        unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
        if !proc.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // It never unmounts anything by path: a new mount here is safe from it.
    tracing::warn!(
        pid,
        "the mount daemon still runs after the unmount (another mount namespace may still hold \
         the mount, or it is finishing a request); it exits by itself when that ends"
    );
}

#[derive(Args)]
#[command(
    about = "Show the image and the state of each layer of a mount",
    after_help = "Examples:\n  lazypull status /mnt\n  lazypull status --json /mnt | jq '.layers[].state'"
)]
pub struct StatusArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,

    mountpoint: PathBuf,
}

fn read_status(mountpoint: &Path) -> anyhow::Result<MountStatus> {
    let value = match xattr::get(mountpoint, STATUS_XATTR) {
        Ok(Some(v)) => v,
        Ok(None) => bail!("{} is not a lazypull mount", mountpoint.display()),
        // ECONNABORTED when the kernel aborted the connection as the daemon died.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => bail!(
            "the lazypull daemon of {} is not running any more: run `lazypull umount {}`",
            mountpoint.display(),
            mountpoint.display()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the status of {}", mountpoint.display()));
        }
    };
    serde_json::from_slice(&value)
        .with_context(|| format!("{} answered an unreadable status", mountpoint.display()))
}

pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let status = read_status(&args.mountpoint)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("Reference: {}", status.reference);
    println!("Digest:    {}", status.digest);
    println!("Daemon:    pid {}", status.pid);
    println!("{:<19} {:>10} {:>21}  ERROR", "LAYER", "STATE", "FETCHED");
    for layer in &status.layers {
        println!(
            "{:<19} {:>10} {:>21}  {}",
            &layer.digest[..layer.digest.len().min(19)],
            format!("{:?}", layer.state).to_lowercase(),
            format!("{}/{}", layer.bytes_fetched, layer.size),
            layer.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
