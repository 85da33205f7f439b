//! Measures the seeking decoder on one compressed layer and prints the
//! numbers: throughput against the system's `gzip -dc` / `zstd -dc`, index
//! size at the default span, and the cost of random reads from the index.
//!
//! `cargo run --release --example seek_bench -- layer.tar.gz` (or `.zst`).

use std::io::{Read, sink};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use lazypull::blob::{BlobReader, FileBlob};
use lazypull::layer::seek::{Compression, DEFAULT_SPAN, SeekingDecoder, read_at};

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: seek_bench LAYER.gz|LAYER.zst"))?;
    let path = Path::new(&path);
    let (compression, tool) = match path.extension().and_then(|e| e.to_str()) {
        Some("zst") => (Compression::Zstd, "zstd"),
        _ => (Compression::Gzip, "gzip"),
    };
    let compressed = std::fs::metadata(path)?.len();

    let start = Instant::now();
    let mut decoder = SeekingDecoder::new(std::fs::File::open(path)?, compression, DEFAULT_SPAN)?;
    let uncompressed = std::io::copy(&mut decoder, &mut sink())?;
    let index = decoder.finish()?;
    let ours = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let status = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "{tool} -dc failed");
    let theirs = start.elapsed().as_secs_f64();

    let json = serde_json::to_vec(&index)?;
    let mb = uncompressed as f64 / 1e6;
    println!("layer: {compressed} bytes {compression}, {uncompressed} bytes uncompressed");
    println!(
        "seeking decoder: {ours:.2} s, {:.0} MB/s of output",
        mb / ours
    );
    println!(
        "{tool} -dc:        {theirs:.2} s, {:.0} MB/s of output",
        mb / theirs
    );
    println!(
        "index at span {} MiB: {} points, {} bytes as JSON ({:.3} % of the layer)",
        DEFAULT_SPAN >> 20,
        index.points.len(),
        json.len(),
        json.len() as f64 * 100.0 / compressed as f64
    );

    let blob = FileBlob::open(path)?;
    let mut rng = fastrand::Rng::with_seed(1);
    let reads = 200;
    let start = Instant::now();
    for _ in 0..reads {
        let offset = rng.u64(..uncompressed.max(1));
        let got = read_at(&blob, &index, offset, 4096)?;
        anyhow::ensure!(
            !got.is_empty() || offset >= uncompressed,
            "empty read at {offset}"
        );
    }
    let per_read = start.elapsed().as_secs_f64() * 1e3 / f64::from(reads);
    println!(
        "random 4 KiB reads from the index: {per_read:.1} ms each (blob size {})",
        blob.size()
    );

    // Sanity: the index's last byte matches a sequential decode of the end.
    let tail = read_at(&blob, &index, uncompressed.saturating_sub(16), 16)?;
    let mut whole = SeekingDecoder::new(std::fs::File::open(path)?, compression, u64::MAX)?;
    let mut skipped = std::io::copy(
        &mut (&mut whole).take(uncompressed.saturating_sub(16)),
        &mut sink(),
    )?;
    let mut last = Vec::new();
    skipped += whole.read_to_end(&mut last)? as u64;
    anyhow::ensure!(
        skipped == uncompressed && last == tail,
        "tail read differs from a full decode"
    );
    Ok(())
}
