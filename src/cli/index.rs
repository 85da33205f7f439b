//! `lazypull index`: build and cache every layer's index, and say what it costs.

use clap::Args;

use super::RegistryArgs;
use super::inspect::human_size;
use super::layers::{CacheArgs, IndexedImage};
use crate::layer::Origin;
use crate::layer::seek::DEFAULT_SPAN;

#[derive(Args)]
#[command(
    about = "Build and cache the index of every layer of an image (tar entries and seek points)",
    after_help = "Examples:\n  lazypull index localhost:5000/team/app:1.4\n  \
                  lazypull index --span 1048576 --cache-dir /tmp/cache alpine"
)]
pub struct IndexArgs {
    #[command(flatten)]
    registry: RegistryArgs,

    #[command(flatten)]
    cache: CacheArgs,

    /// Uncompressed bytes between gzip seek points: smaller means cheaper
    /// cold reads and a larger index.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SPAN)]
    span: u64,

    /// Image reference: [REGISTRY/]NAME[:TAG][@DIGEST]
    reference: String,
}

pub fn run(args: &IndexArgs) -> anyhow::Result<()> {
    let image = IndexedImage::load(&args.registry, &args.cache, &args.reference, args.span)?;
    println!("{} ({})", image.image.reference, image.image.digest);
    println!(
        "{:<19} {:>10} {:>12} {:>8} {:>6} {:>10} {:>7}",
        "LAYER", "SIZE", "SOURCE", "ENTRIES", "POINTS", "INDEX", "%"
    );
    for (layer, (index, origin)) in image.image.layers.iter().zip(&image.layers) {
        let index_size = std::fs::metadata(image.cache.index_path(&layer.digest))
            .map(|m| m.len())
            .unwrap_or(0);
        let source = match origin {
            Origin::Cached => "cached",
            Origin::LocalBlob => "local blob",
            Origin::Registry => "downloaded",
        };
        println!(
            "{:<19} {:>10} {:>12} {:>8} {:>6} {:>10} {:>6.2}%",
            &layer.digest.to_string()[..19],
            human_size(layer.size),
            source,
            index.entries.len(),
            index.seek.points.len(),
            human_size(index_size),
            100.0 * index_size as f64 / layer.size.max(1) as f64
        );
    }
    Ok(())
}
