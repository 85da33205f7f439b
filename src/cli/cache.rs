//! `lazypull cache ls` and `lazypull cache prune`.

use std::path::Path;

use clap::{Args, Subcommand};

use super::inspect::human_size;
use super::layers::CacheArgs;
use crate::cache::dir_size;

#[derive(Args)]
#[command(about = "Show or prune what the cache holds (layer indexes and verified layer blobs)")]
pub struct CacheCommand {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// List cached layer indexes and blobs with their sizes.
    #[command(after_help = "Example:\n  lazypull cache ls --cache-dir /var/lib/lazypull")]
    Ls(CacheArgs),
    /// Drop layer contents but keep indexes (--blobs), or everything (--all).
    #[command(
        after_help = "Examples:\n  lazypull cache prune --blobs\n  lazypull cache prune --all"
    )]
    Prune(PruneArgs),
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct PruneFlags {
    /// Remove layer blobs; keep indexes, so a mount still knows its tree at
    /// once and reads lazily again.
    #[arg(long)]
    blobs: bool,

    /// Remove everything the cache holds.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
struct PruneArgs {
    #[command(flatten)]
    cache: CacheArgs,

    #[command(flatten)]
    what: PruneFlags,
}

pub fn run(command: &CacheCommand) -> anyhow::Result<()> {
    match &command.action {
        Action::Ls(cache) => ls(cache),
        Action::Prune(args) => prune(args),
    }
}

/// (name, bytes) of the files in `dir`, sorted.
fn files(dir: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.metadata()?.len(),
        ));
    }
    out.sort();
    Ok(out)
}

fn ls(args: &CacheArgs) -> anyhow::Result<()> {
    let cache = args.open()?;
    let indexes = files(&cache.root().join("index/sha256"))?;
    let blobs = files(&cache.root().join("blobs/sha256"))?;
    println!("Cache: {}", cache.root().display());
    println!("{:<71} {:>10} {:>10}", "LAYER", "INDEX", "BLOB");
    let mut names: Vec<&String> = indexes.iter().chain(&blobs).map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    let size_of = |list: &[(String, u64)], name: &str| {
        list.iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| "-".to_string(), |(_, s)| human_size(*s))
    };
    for name in names {
        println!(
            "sha256:{name:<64} {:>10} {:>10}",
            size_of(&indexes, name),
            size_of(&blobs, name)
        );
    }
    let total = |list: &[(String, u64)]| list.iter().map(|(_, s)| s).sum::<u64>();
    println!(
        "{} indexes ({}), {} ready layer blobs ({})",
        indexes.len(),
        human_size(total(&indexes)),
        blobs.len(),
        human_size(total(&blobs))
    );
    Ok(())
}

fn prune(args: &PruneArgs) -> anyhow::Result<()> {
    let cache = args.cache.open()?;
    let doomed: &[&str] = if args.what.all {
        &["blobs", "chunks", "files", "index", "traces", "tmp", "logs"]
    } else {
        &["blobs", "chunks", "files", "tmp"]
    };
    let mut freed = 0;
    for sub in doomed {
        let dir = cache.root().join(sub);
        freed += dir_size(&dir);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow::Error::from(e).context(format!("removing {}", dir.display())));
            }
        }
    }
    // Recreate the layout so the cache stays usable.
    cache.reopen()?;
    println!("freed {}", human_size(freed));
    Ok(())
}
