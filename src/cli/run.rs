//! `lazypull run`: bundle an image and run it with an OCI runtime.

use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use clap::Args;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::RegistryArgs;
use super::bundle::{create, require_root, teardown};
use super::layers::CacheArgs;
use crate::runtime::SpecOptions;

/// Where runc and crun live when a user's PATH lacks the sbin directories.
const SBIN_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

#[derive(Args)]
#[command(
    about = "Run an image straight from the registry with runc (or another OCI runtime); its exit status is lazypull's",
    after_help = "Examples:\n  lazypull run --rm localhost:5000/team/app:1.4\n  lazypull run --rm alpine sh -c 'cat /etc/os-release'\n  \
                  lazypull run --name web --bundle /run/web localhost:5000/web:2\n  lazypull unbundle --remove /run/web"
)]
pub struct RunArgs {
    #[command(flatten)]
    registry: RegistryArgs,

    #[command(flatten)]
    cache: CacheArgs,

    /// When the container exits, take down its overlay and mount and delete
    /// the bundle (the container's changes with it).
    #[arg(long)]
    rm: bool,

    /// OCI runtime: a name looked up in PATH and the sbin directories, or a path.
    #[arg(long, value_name = "runc|crun|PATH", default_value = "runc")]
    runtime: String,

    /// Container name (default: lazypull-<random>); also its host name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Bundle directory, new or empty (default: a new one in $TMPDIR).
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,

    /// Image reference: [REGISTRY/]NAME[:TAG][@DIGEST]
    reference: String,

    /// Command and arguments: replace the image's Cmd (its Entrypoint stays).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let runtime = find_runtime(&args.runtime)?;
    require_root("lazypull run")?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("lazypull-{:08x}", fastrand::u32(..)));
    let (dir, temporary) = match &args.bundle {
        Some(dir) => (dir.clone(), false),
        None => (
            tempfile::Builder::new()
                .prefix("lazypull-run-")
                .tempdir()
                .context("creating a bundle directory")?
                .keep(),
            true,
        ),
    };
    let opts = SpecOptions {
        args: args.command.clone(),
        hostname: name.clone(),
        terminal: std::io::stdin().is_terminal(),
    };
    let layout = match create(&args.registry, &args.cache, &args.reference, &dir, &opts) {
        Ok(layout) => layout,
        Err(e) => {
            if temporary {
                let _ = std::fs::remove_dir(&dir);
            }
            return Err(e);
        }
    };
    let status = run_container(&runtime, &layout.dir, &name);
    if args.rm {
        // `runc run` deletes a container that ran; one that failed to
        // start may be left behind.
        let _ = Command::new(&runtime)
            .args(["delete", "--force", &name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        teardown(&layout.dir, true)?;
    } else {
        let dir = layout.dir.display();
        eprintln!(
            "lazypull: the bundle stays in {dir} (the container's changes are in {dir}/upper); \
             `lazypull unbundle --remove {dir}` takes it down"
        );
    }
    let code = status?;
    Ok(ExitCode::from(code))
}

/// Runs the container with stdio passed through; its exit status (128 +
/// signal when killed, as shells report it) is ours.
fn run_container(runtime: &Path, bundle: &Path, name: &str) -> anyhow::Result<u8> {
    // Stay alive until the container ends so that --rm can clean up: a
    // terminal's Ctrl-C reaches the runtime through the process group; a
    // TERM or HUP sent to us alone is passed on.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    let mut child = Command::new(runtime)
        .arg("run")
        .arg("--bundle")
        .arg(bundle)
        .arg(name)
        .spawn()
        .with_context(|| format!("starting {}", runtime.display()))?;
    let pid = child.id() as libc::pid_t;
    let handle = signals.handle();
    let forwarder = std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal != SIGINT {
                // SAFETY: kill has no memory preconditions; the child is
                // not reaped before the handle closes, so the pid is ours.
                unsafe { libc::kill(pid, signal) };
            }
        }
    });
    let status = child.wait();
    handle.close();
    let _ = forwarder.join();
    let status = status.with_context(|| format!("waiting for {}", runtime.display()))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => (128 + signal) as u8,
        (None, None) => 1,
    })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The runtime's path: `name` as a path when it has a `/`, else looked up
/// in PATH and then in the sbin directories.
fn find_runtime(name: &str) -> anyhow::Result<PathBuf> {
    const INSTALL: &str =
        "install runc (`apt-get install runc`) or give a runtime's path with --runtime PATH";
    if name.contains('/') {
        let path = PathBuf::from(name);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!("container runtime {name} is not an executable file: {INSTALL}");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .with_context(|| {
            format!(
                "no container runtime `{name}` found in PATH or {}: {INSTALL}",
                SBIN_DIRS.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_lookup_says_how_to_get_one() {
        let e = find_runtime("no-such-runtime-here")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no-such-runtime-here") && e.contains("apt-get install runc"),
            "{e}"
        );
        let e = find_runtime("/nonexistent/runc").unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/runc") && e.contains("apt-get install runc"),
            "{e}"
        );
        assert_eq!(find_runtime("/bin/sh").unwrap(), PathBuf::from("/bin/sh"));
        assert!(find_runtime("sh").unwrap().ends_with("sh"));
    }
}
