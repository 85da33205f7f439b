//! `lazypull bundle` and `unbundle`: an OCI runtime bundle whose rootfs is
//! a writable overlay over a lazypull mount.

use std::io::IsTerminal;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use oci_spec::image::ImageConfiguration;

use super::RegistryArgs;
use super::layers::CacheArgs;
use super::mount::{is_lazypull_mount, mount_in_background, unmount_and_wait};
use crate::reference::Reference;
use crate::registry::{Platform, ResolvedImage};
use crate::runtime::{self, BundleLayout, SpecOptions, is_mount_point};

#[derive(Args)]
#[command(
    about = "Make an OCI runtime bundle of an image: DIR/rootfs is a writable overlay over a lazypull mount of it, DIR/config.json comes from its config",
    after_help = "Examples:\n  lazypull bundle localhost:5000/team/app:1.4 /run/app\n  runc run --bundle /run/app app\n  \
                  lazypull unbundle /run/app\n\n  lazypull bundle alpine /run/shell sh -c 'id; ls /'"
)]
pub struct BundleArgs {
    #[command(flatten)]
    registry: RegistryArgs,

    #[command(flatten)]
    cache: CacheArgs,

    /// Host name inside the container.
    #[arg(long, default_value = "lazypull")]
    hostname: String,

    /// Image reference: [REGISTRY/]NAME[:TAG][@DIGEST]
    reference: String,

    /// The bundle directory: new, or an empty one.
    dir: PathBuf,

    /// Command and arguments: replace the image's Cmd (its Entrypoint stays).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(args: &BundleArgs) -> anyhow::Result<()> {
    let opts = SpecOptions {
        args: args.command.clone(),
        hostname: args.hostname.clone(),
        terminal: std::io::stdin().is_terminal(),
    };
    let layout = create(
        &args.registry,
        &args.cache,
        &args.reference,
        &args.dir,
        &opts,
    )?;
    let dir = layout.dir.display();
    println!("bundle of {} ready in {dir}", args.reference);
    println!("  run it:       runc run --bundle {dir} NAME");
    println!("  take it down: lazypull unbundle {dir}");
    Ok(())
}

#[derive(Args)]
#[command(
    about = "Unmount a bundle made by `lazypull bundle`: its overlay, then its lazypull mount",
    after_help = "Examples:\n  lazypull unbundle /run/app\n  lazypull unbundle --remove /run/app   # and delete the directory, changes included"
)]
pub struct UnbundleArgs {
    /// Also delete the bundle directory (the container's changes in DIR/upper included).
    #[arg(long)]
    remove: bool,

    /// A bundle directory made by `lazypull bundle` or `lazypull run`.
    dir: PathBuf,
}

pub fn unbundle(args: &UnbundleArgs) -> anyhow::Result<()> {
    teardown(&args.dir, args.remove)
}

/// Overlays and container runtimes need root; say so before doing anything.
pub(super) fn require_root(command: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("`{command}` needs root: it mounts an overlay and a container runtime runs on it");
    }
    Ok(())
}

/// The image must run on this machine's processor: a bundle of another
/// architecture would only fail later with `exec format error`.
fn check_platform(image: &ResolvedImage) -> anyhow::Result<()> {
    let host = Platform::host();
    if image.platform.os != host.os || image.platform.architecture != host.architecture {
        bail!(
            "{} is an image for {}, and this machine is {}: it cannot run here \
             (for a multi-platform image, --platform chooses another of its platforms)",
            image.reference,
            image.platform,
            host
        );
    }
    Ok(())
}

/// Refuses a non-empty directory; creates a missing one. Returns whether it
/// created it. Either way the directory ends up root's and 0700: the
/// overlay in it is the container's root, where the image's setuid
/// programs and device files work, so no other user may reach it.
fn prepare_dir(dir: &Path) -> anyhow::Result<bool> {
    let created = match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "bundle directory {} is not empty: give a new or an empty directory",
                    dir.display()
                );
            }
            let owner = std::fs::metadata(dir)
                .with_context(|| format!("reading bundle directory {}", dir.display()))?
                .uid();
            if owner != 0 {
                bail!(
                    "bundle directory {} belongs to uid {owner}, who could open it to everyone: \
                     the container's root in it runs the image's setuid programs, so it must be \
                     root's; give a new path or a directory owned by root",
                    dir.display()
                );
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
            true
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading bundle directory {}", dir.display()));
        }
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making bundle directory {} private", dir.display()))?;
    Ok(created)
}

/// What `create` has done so far, to undo on failure.
struct Partial {
    layout: BundleLayout,
    created_dir: bool,
    image_mounted: bool,
    overlay_mounted: bool,
}

impl Partial {
    /// Puts the directory back as it was (best effort: the first error is
    /// what the user needs to see).
    fn rollback(&self) {
        let l = &self.layout;
        if self.overlay_mounted && runtime::unmount(&l.rootfs()).is_err() {
            return;
        }
        if self.image_mounted && unmount_and_wait(&l.image()).is_err() {
            return;
        }
        if self.created_dir {
            let _ = std::fs::remove_dir_all(&l.dir);
        } else {
            for sub in [l.config(), l.rootfs(), l.image(), l.upper(), l.work()] {
                let _ = if sub.is_dir() {
                    std::fs::remove_dir_all(&sub)
                } else {
                    std::fs::remove_file(&sub)
                };
            }
        }
    }
}

/// Makes the bundle in `dir`: mounts the image on DIR/image, the overlay on
/// DIR/rootfs, writes DIR/config.json. On failure `dir` is left as it was.
pub(super) fn create(
    registry: &RegistryArgs,
    cache: &CacheArgs,
    reference: &str,
    dir: &Path,
    opts: &SpecOptions,
) -> anyhow::Result<BundleLayout> {
    require_root("lazypull bundle")?;
    let mut pinned: Reference = reference.parse()?;
    let created_dir = prepare_dir(dir)?;
    let mut partial = Partial {
        layout: BundleLayout::new(
            std::path::absolute(dir).context("finding the bundle directory")?,
        ),
        created_dir,
        image_mounted: false,
        overlay_mounted: false,
    };
    let result = (|| {
        let (_, image) = registry.resolve(reference)?;
        check_platform(&image)?;
        let config: ImageConfiguration =
            serde_json::from_slice(&image.config_json).context("reading the image config")?;
        let l = partial.layout.clone();
        for sub in [l.image(), l.upper(), l.work(), l.rootfs()] {
            std::fs::create_dir(&sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        // Mount exactly what was resolved, even if the tag moves meanwhile.
        pinned.digest = Some(image.digest.clone());
        mount_in_background(registry, cache, &pinned.to_string(), &l.image())?;
        partial.image_mounted = true;
        runtime::mount_overlay(&l.image(), &l.upper(), &l.work(), &l.rootfs())?;
        partial.overlay_mounted = true;
        let spec = runtime::spec_for_image(&config, &l.image(), opts)?;
        std::fs::write(l.config(), runtime::spec_json(&spec)?)
            .with_context(|| format!("writing {}", l.config().display()))?;
        anyhow::Ok(l)
    })();
    if result.is_err() {
        partial.rollback();
    }
    result
}

/// Unmounts a bundle's overlay, then its lazypull mount; with `remove`,
/// deletes the directory too.
pub(super) fn teardown(dir: &Path, remove: bool) -> anyhow::Result<()> {
    let l = BundleLayout::new(dir);
    if !l.image().is_dir() && !is_lazypull_mount(&l.image()) {
        bail!(
            "{} is not a lazypull bundle (it has no image/ directory)",
            dir.display()
        );
    }
    if is_mount_point(&l.rootfs()) {
        runtime::unmount(&l.rootfs()).with_context(|| {
            format!(
                "taking down bundle {} (is a container still running in it? `runc list` shows)",
                dir.display()
            )
        })?;
    }
    if is_lazypull_mount(&l.image()) {
        unmount_and_wait(&l.image())?;
    }
    if remove {
        // Never delete through a mount that is somehow still there.
        if is_mount_point(&l.rootfs()) || is_mount_point(&l.image()) {
            bail!("{} is still mounted: not deleting it", dir.display());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("deleting {}", dir.display()))?;
    }
    Ok(())
}
