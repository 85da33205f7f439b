//! Times loading one persisted layer index from a cache directory: reading
//! the file, checking its checksum, decoding it and validating its seek
//! points, i.e. what a mount pays per cached layer before it can answer.
//!
//! `cargo run --release --example index_load -- CACHE_DIR sha256:HEX [RUNS]`
//! prints, as `key=value` words for scripts: the index file's size, its
//! entries and seek points, the bytes of its stored windows (the rest is
//! mostly entries), and the median, minimum and maximum load time in
//! milliseconds over RUNS loads (default 21).

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use lazypull::cache::CacheDir;
use lazypull::digest::Digest;
use lazypull::layer::index::LayerIndex;

fn main() -> anyhow::Result<()> {
    let usage = "usage: index_load CACHE_DIR sha256:HEX [RUNS]";
    let mut args = std::env::args().skip(1);
    let root = args.next().context(usage)?;
    let digest: Digest = args.next().context(usage)?.parse()?;
    let runs: usize = match args.next() {
        Some(n) => n.parse().context(usage)?,
        None => 21,
    };
    anyhow::ensure!(runs > 0, "{usage}");
    let cache = CacheDir::open(Path::new(&root))?;
    let bytes = std::fs::metadata(cache.index_path(&digest))?.len();

    let mut times = Vec::with_capacity(runs);
    let mut counts = (0, 0, 0);
    for _ in 0..runs {
        let start = Instant::now();
        let index = LayerIndex::load(&cache, &digest)?
            .with_context(|| format!("no usable index for {digest} in {root}"))?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        let windows = index.seek.points.iter().flat_map(|p| &p.window);
        counts = (
            index.entries.len(),
            index.seek.points.len(),
            windows.map(|w| w.stored_len()).sum::<usize>(),
        );
    }
    times.sort_by(f64::total_cmp);
    println!(
        "bytes={bytes} entries={} points={} windows={} runs={runs} median_ms={:.2} min_ms={:.2} \
         max_ms={:.2}",
        counts.0,
        counts.1,
        counts.2,
        times[runs / 2],
        times[0],
        times[runs - 1]
    );
    Ok(())
}
