//! The mount daemon's life: the checks before anything is mounted, the
//! front process's wait (which takes the daemon down when it is
//! interrupted), and the daemon's own signals, which end only its own mount.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::cache::CacheDir;
use crate::fs::session::{self, MountError, MountSpec, OwnMount};

/// How long an interrupted front process waits for the daemon to stop
/// before killing it.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// How long a signalled daemon lets its session end by itself (it has
/// unmounted its mount) before it exits, which ends the session wherever
/// else the mount lives on (another mount namespace).
const END_GRACE: Duration = Duration::from_secs(3);

/// What to refuse before mounting: a mount point that is already a
/// lazypull mount (a second would cover it) and a cache directory inside
/// the mount point (the daemon would wait on its own mount).
pub(super) fn preflight(mountpoint: &Path, cache_flag: Option<&Path>) -> anyhow::Result<()> {
    if !mountpoint.is_dir() {
        // A lazypull mount whose daemon died cannot be stat'ed: name it as
        // what it is.
        if let Err(e @ MountError::AlreadyMounted { .. }) = session::refuse_stacking(mountpoint) {
            return Err(e.into());
        }
        bail!(
            "mount point {} is not an existing directory",
            mountpoint.display()
        );
    }
    session::refuse_stacking(mountpoint)?;
    let cache = CacheDir::default_root(cache_flag)?;
    let mount = mountpoint
        .canonicalize()
        .with_context(|| format!("resolving {}", mountpoint.display()))?;
    let resolved = resolve_as_far_as_it_exists(&cache)
        .with_context(|| format!("resolving the cache directory {}", cache.display()))?;
    if resolved.starts_with(&mount) {
        let which = if cache_flag.is_some() {
            "the cache directory"
        } else {
            "the default cache directory"
        };
        bail!(
            "{which} {} is inside the mount point {}: the daemon would wait on its own mount; \
             give a --cache-dir outside {}",
            as_given_and_resolved(&cache, &resolved),
            as_given_and_resolved(mountpoint, &mount),
            mount.display()
        );
    }
    Ok(())
}

/// `path`, and what it resolves to when that reads differently.
fn as_given_and_resolved(path: &Path, resolved: &Path) -> String {
    if path == resolved {
        path.display().to_string()
    } else {
        format!("{} (that is {})", path.display(), resolved.display())
    }
}

/// `path` with symlinks resolved as far as it exists; a directory that does
/// not exist yet lies where its nearest existing ancestor resolves to.
fn resolve_as_far_as_it_exists(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    let base = loop {
        match existing.canonicalize() {
            Ok(base) => break base,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match (existing.parent(), existing.components().next_back()) {
                    (Some(parent), Some(last)) => {
                        missing.push(last);
                        existing = parent;
                    }
                    _ => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    };
    // What does not exist yet holds no symlinks: `..` there just goes up.
    let mut resolved = base;
    for part in missing.into_iter().rev() {
        match part {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => resolved.push(name),
            _ => {}
        }
    }
    Ok(resolved)
}

enum Event {
    Answer(std::io::Result<String>),
    Signal(i32),
}

/// The front process's wait for the daemon's answer on the readiness pipe.
/// SIGINT, SIGTERM or SIGHUP meanwhile stop the daemon (and what it may
/// have mounted) and end the wait with an error saying so.
pub(super) fn wait_for_answer(
    child: &mut Child,
    mut pipe: File,
    mountpoint: &Path,
) -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    let handle = signals.handle();
    let signal_tx = tx.clone();
    let watcher = std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let _ = signal_tx.send(Event::Signal(signal));
        }
    });
    std::thread::spawn(move || {
        let mut answer = String::new();
        let read = pipe.read_to_string(&mut answer).map(|_| answer);
        let _ = tx.send(Event::Answer(read));
    });
    let event = rx.recv();
    // signal-hook cannot give a signal its default action back: a signal
    // that comes later is ignored, which the short rest of every caller
    // (print, or mount an overlay and write a file) can bear.
    handle.close();
    let _ = watcher.join();
    match event {
        Ok(Event::Answer(answer)) => answer.context("waiting for the mount daemon"),
        Ok(Event::Signal(signal)) => Err(stop(child, signal, mountpoint)),
        Err(_) => bail!("waiting for the mount daemon: the pipe reader is gone"),
    }
}

/// Stops an interrupted mount: the daemon (which unmounts what it mounted
/// on SIGTERM), then, should it have to be killed, the dead mount it left.
fn stop(child: &mut Child, signal: i32, mountpoint: &Path) -> anyhow::Error {
    let name = signal_hook::low_level::signal_name(signal).unwrap_or("a signal");
    let pid = child.id();
    // SAFETY: kill has no memory preconditions; the child is not reaped yet,
    // so the pid is still our daemon's.
    unsafe { libc::kill(pid as libc::pid_t, SIGTERM) };
    let deadline = Instant::now() + STOP_WAIT;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if matches!(child.try_wait(), Ok(None)) {
        tracing::warn!(pid, "the mount daemon did not stop on SIGTERM: killing it");
        let _ = child.kill();
        let _ = child.wait();
        let dead = std::fs::metadata(mountpoint)
            .is_err_and(|e| matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)));
        if dead && matches!(session::lazypull_mount_at(mountpoint), Ok(Some(_))) {
            let _ = crate::fs::unmount(mountpoint);
        }
    }
    match session::lazypull_mount_at(mountpoint) {
        Ok(None) => anyhow!(
            "interrupted by {name} while mounting: stopped the mount daemon (pid {pid}); nothing \
             is mounted on {}",
            mountpoint.display()
        ),
        _ => anyhow!(
            "interrupted by {name} while mounting: stopped the mount daemon (pid {pid}), but {} \
             is still mounted: run `lazypull umount {}`",
            mountpoint.display(),
            mountpoint.display()
        ),
    }
}

enum Phase {
    Starting,
    Mounted(OwnMount),
}

/// The daemon's side: what a SIGINT or SIGTERM does depends on how far it
/// got. Before the mount is made it exits at once; after, it unmounts its
/// own mount (if the mount point still shows it) and exits once its session
/// has ended.
pub(super) struct Lifecycle {
    phase: Mutex<Phase>,
    /// What must happen before the daemon exits (storing the prefetch list).
    finish: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Lifecycle {
    /// Starts the signal watcher: call first thing in the daemon.
    pub(super) fn watch_signals() -> anyhow::Result<Arc<Self>> {
        let lifecycle = Arc::new(Self {
            phase: Mutex::new(Phase::Starting),
            finish: Mutex::new(None),
        });
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
            .context("installing signal handlers")?;
        let this = Arc::clone(&lifecycle);
        std::thread::spawn(move || {
            for signal in signals.forever() {
                this.on_signal(signal);
            }
        });
        Ok(lifecycle)
    }

    fn on_signal(&self, signal: i32) {
        let phase = lock(&self.phase);
        let own = match &*phase {
            Phase::Starting => {
                // The lock stays held: no mount can start any more.
                tracing::warn!(signal, "stopped on signal before mounting");
                std::process::exit(1);
            }
            Phase::Mounted(own) => own.clone(),
        };
        drop(phase);
        tracing::info!(signal, "unmounting on signal");
        match own.unmount() {
            Ok(unmounted) => {
                tracing::info!(unmounted, "ending the session");
                if unmounted {
                    // The session usually ends by itself now; it does not
                    // while another mount namespace still holds the mount.
                    std::thread::sleep(END_GRACE);
                }
                self.finish();
                std::process::exit(0);
            }
            Err(e) => tracing::error!(error = %e, "cannot unmount on signal; still serving"),
        }
    }

    /// Mounts, unless a signal came first (then the daemon is exiting and
    /// this never returns). The mount is undone when the guard drops before
    /// [`MountGuard::keep`].
    pub(super) fn mount(
        self: &Arc<Self>,
        mountpoint: &Path,
        spec: &MountSpec,
    ) -> Result<(OwnedFd, MountGuard), MountError> {
        let mut phase = lock(&self.phase);
        let (fd, own) = session::mount(mountpoint, spec)?;
        *phase = Phase::Mounted(own.clone());
        Ok((fd, MountGuard { own: Some(own) }))
    }

    /// Sets what [`Lifecycle::finish`] runs.
    pub(super) fn on_finish(&self, f: Box<dyn FnOnce() + Send>) {
        *lock(&self.finish) = Some(f);
    }

    /// Runs what must happen before exit, once (a second caller waits for
    /// the first to be done).
    pub(super) fn finish(&self) {
        let mut slot = lock(&self.finish);
        if let Some(f) = slot.take() {
            f();
        }
    }
}

/// A mount that is undone if the daemon fails before serving it.
pub(super) struct MountGuard {
    own: Option<OwnMount>,
}

impl MountGuard {
    pub(super) fn keep(mut self) {
        self.own = None;
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(own) = self.own.take()
            && let Err(e) = own.unmount()
        {
            tracing::error!(error = %e, "cannot undo the mount");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_resolves_through_its_existing_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(&real, real.join("link")).unwrap();
        assert_eq!(
            resolve_as_far_as_it_exists(&real.join("link/new/deeper")).unwrap(),
            real.join("new/deeper")
        );
        assert_eq!(
            resolve_as_far_as_it_exists(&real.join("link/new/../other")).unwrap(),
            real.join("other")
        );
        assert_eq!(resolve_as_far_as_it_exists(&real).unwrap(), real);
    }
}
