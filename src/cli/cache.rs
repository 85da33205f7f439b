//! `lazypull cache ls` and `lazypull cache prune`.

use std::collections::BTreeMap;
use std::path::Path;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::inspect::human_size;
use super::layers::CacheArgs;
use crate::cache::prune::{Scope, prune};
use crate::cache::{LAYOUT, disk_usage};

#[derive(Args)]
#[command(about = "Show or prune what the cache holds (layer indexes and verified layer blobs)")]
pub struct CacheCommand {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// List cached layers and what each directory of the cache takes on disk.
    #[command(
        after_help = "Sizes are what the files take on disk (allocated blocks, as `du` counts them).\n\n\
                      Examples:\n  lazypull cache ls --cache-dir /var/lib/lazypull\n  \
                      lazypull cache ls --json | jq .usage.total"
    )]
    Ls(LsArgs),
    /// Drop layer contents but keep indexes (--blobs), or everything (--all);
    /// what a running mount or command uses is kept, and listed.
    #[command(
        after_help = "Examples:\n  lazypull cache prune --blobs\n  lazypull cache prune --all"
    )]
    Prune(PruneArgs),
}

#[derive(Args)]
struct LsArgs {
    #[command(flatten)]
    cache: CacheArgs,

    /// Print one JSON object, sizes in bytes.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct PruneFlags {
    /// Remove layer blobs, partial downloads and extracted files; keep
    /// indexes, so a mount still knows its tree at once and reads lazily again.
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
        Action::Ls(args) => ls(args),
        Action::Prune(args) => run_prune(args),
    }
}

/// What one layer takes, in bytes on disk.
#[derive(Serialize, Default)]
struct LayerUsage {
    digest: String,
    index: Option<u64>,
    blob: Option<u64>,
    /// Extracted files, for passthrough.
    files: Option<u64>,
    /// A download under way or interrupted (chunk files and journal).
    partial: Option<u64>,
}

#[derive(Serialize)]
struct Listing {
    root: String,
    layers: Vec<LayerUsage>,
    /// Per directory of the layout (`index`, `blobs`, …), and `total`.
    usage: BTreeMap<String, u64>,
}

/// Where a directory's entries count in a [`LayerUsage`].
type Column = fn(&mut LayerUsage) -> &mut Option<u64>;

/// The layer digest (hex) an entry of `dir` belongs to, and its usage.
fn per_layer(dir: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // `<hex>`, `<hex>.journal`, `<hex>.pid<N>`.
        let hex = name.split('.').next().unwrap_or_default().to_string();
        out.push((hex, disk_usage(&entry.path())));
    }
    Ok(out)
}

fn listing(root: &Path) -> anyhow::Result<Listing> {
    let mut layers: BTreeMap<String, LayerUsage> = BTreeMap::new();
    let columns: [(&str, Column); 4] = [
        ("index", |l| &mut l.index),
        ("blobs", |l| &mut l.blob),
        ("files", |l| &mut l.files),
        ("chunks", |l| &mut l.partial),
    ];
    for (sub, column) in columns {
        for (hex, bytes) in per_layer(&root.join(sub).join("sha256"))? {
            let layer = layers.entry(hex.clone()).or_default();
            layer.digest = format!("sha256:{hex}");
            *column(layer).get_or_insert(0) += bytes;
        }
    }
    let mut usage: BTreeMap<String, u64> = LAYOUT
        .iter()
        .filter_map(|sub| sub.split('/').next())
        .map(|top| (top.to_string(), disk_usage(&root.join(top))))
        .collect();
    usage.insert("total".into(), disk_usage(root));
    Ok(Listing {
        root: root.display().to_string(),
        layers: layers.into_values().collect(),
        usage,
    })
}

fn ls(args: &LsArgs) -> anyhow::Result<()> {
    let cache = args.cache.open()?;
    let listing = listing(cache.root())?;
    if args.json {
        println!("{}", serde_json::to_string(&listing)?);
        return Ok(());
    }
    let size = |s: Option<u64>| s.map_or_else(|| "-".to_string(), human_size);
    println!("Cache: {}", listing.root);
    println!(
        "{:<71} {:>10} {:>10} {:>10} {:>10}",
        "LAYER", "INDEX", "BLOB", "FILES", "PARTIAL"
    );
    for l in &listing.layers {
        println!(
            "{:<71} {:>10} {:>10} {:>10} {:>10}",
            l.digest,
            size(l.index),
            size(l.blob),
            size(l.files),
            size(l.partial)
        );
    }
    let count = |f: fn(&LayerUsage) -> Option<u64>| listing.layers.iter().filter_map(f).count();
    println!(
        "{} indexes, {} ready layer blobs, {} layers' files extracted, {} partial downloads",
        count(|l| l.index),
        count(|l| l.blob),
        count(|l| l.files),
        count(|l| l.partial)
    );
    println!("On disk:");
    for (dir, bytes) in listing.usage.iter().filter(|(d, _)| *d != "total") {
        println!("  {:<8} {:>10}", format!("{dir}/"), human_size(*bytes));
    }
    let total = listing.usage.get("total").copied().unwrap_or_default();
    println!("  {:<8} {:>10}", "total", human_size(total));
    Ok(())
}

fn run_prune(args: &PruneArgs) -> anyhow::Result<()> {
    let cache = args.cache.open()?;
    let scope = if args.what.all {
        Scope::All
    } else {
        Scope::Blobs
    };
    let pruned = prune(&cache, scope)?;
    println!(
        "freed {} on disk ({} bytes, {} entries removed)",
        human_size(pruned.freed),
        pruned.freed,
        pruned.removed
    );
    if !pruned.kept.is_empty() {
        println!("kept, in use:");
        for (path, why) in &pruned.kept {
            let shown = path.strip_prefix(cache.root()).unwrap_or(path);
            println!("  {}: {why}", shown.display());
        }
    }
    Ok(())
}
