//! `lazypull inspect`: what a reference resolves to.

use clap::Args;

use super::RegistryArgs;
use crate::registry::ResolvedImage;

#[derive(Args)]
#[command(
    about = "Resolve an image reference and show its manifest, platform, config and layers",
    after_help = "Examples:\n  lazypull inspect alpine\n  lazypull inspect --platform linux/arm64 localhost:5000/team/app:1.4\n  \
                  lazypull inspect --json registry.example/app@sha256:<digest> | jq '.layers[].digest'"
)]
pub struct InspectArgs {
    #[command(flatten)]
    registry: RegistryArgs,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,

    /// Image reference: [REGISTRY/]NAME[:TAG][@DIGEST]
    reference: String,
}

pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let (_, image) = args.registry.resolve(&args.reference)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&image)?);
    } else {
        print_text(&image);
    }
    Ok(())
}

fn print_text(image: &ResolvedImage) {
    println!("Reference:  {}", image.reference);
    println!("Digest:     {}", image.digest);
    println!("Media type: {}", image.media_type);
    if let Some(index) = &image.index_digest {
        println!("Index:      {index}");
    }
    println!("Platform:   {}", image.platform);
    println!(
        "Config:     {} ({} bytes)",
        image.config.digest, image.config.size
    );
    println!("Layers:     {}", image.layers.len());
    for layer in &image.layers {
        println!(
            "  {}  {:>10}  {}\n    diff_id {}",
            layer.digest,
            human_size(layer.size),
            layer.media_type,
            layer.diff_id
        );
    }
}

pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
