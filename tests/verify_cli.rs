//! Verification through the CLI: a layer whose bytes do not hash to its digest, or whose
//! uncompressed bytes do not hash to the config's diff_id, or whose stream is cut short, fails
//! the command with a message that names the layer, and leaves nothing of it in the cache.

mod common;

use std::fs;

use common::cli::{assert_cache_holds_only, lazypull};
use common::image::{Compression, Format, ImageSpec, push_image, push_with_diff_ids};
use common::proxy::FaultProxy;
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;
use lazypull::digest::Digest;

fn layer_tar(seed: u8) -> Vec<u8> {
    // Incompressible data, so a flipped byte in the middle of the blob lands in file data.
    let mut rng = fastrand::Rng::with_seed(u64::from(seed));
    let data: Vec<u8> = (0..300_000).map(|_| rng.u8(..)).collect();
    TarBuilder::new()
        .dir("data", 0o755)
        .file(&format!("data/{seed}"), data, 0o644)
        .build()
}

#[test]
fn corrupt_blob_in_registry_storage_fails_and_keeps_nothing() {
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let reg = TestRegistry::start(Variant::Plain);
        let cache = tempfile::tempdir().unwrap();
        let spec = ImageSpec::new(vec![
            (layer_tar(1), compression),
            (layer_tar(2), compression),
        ]);
        let image = push_image(&reg, "app", "1", &spec);
        let bad = &image.layers[1];
        let path = reg.blob_path(&bad.digest);
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        fs::write(&path, &bytes).unwrap();

        let reference = format!("{}/app:1", reg.host());
        let err = lazypull(cache.path(), &["ls", "-R", &reference]).error();
        assert!(
            err.contains(&bad.digest.to_string()),
            "{compression:?}: {err}"
        );
        assert!(
            err.contains("digest mismatch") && err.contains(&Digest::of(&bytes).to_string()),
            "{compression:?}: the message says what the registry's bytes hash to: {err}"
        );
        // The good layer may have been indexed alongside; the corrupt one left no trace.
        let good = &image.layers[0].digest;
        let kept: Vec<&Digest> = [good]
            .into_iter()
            .filter(|d| cache.path().join("index/sha256").join(d.hex()).exists())
            .collect();
        assert_cache_holds_only(cache.path(), &kept);
    }
}

#[test]
fn wrong_diff_id_in_config_fails_and_keeps_nothing() {
    let reg = TestRegistry::start(Variant::Plain);
    let cache = tempfile::tempdir().unwrap();
    let tar = layer_tar(3);
    let wrong = Digest::of(b"not this layer");
    for (tag, compression) in [("gzip", Compression::Gzip), ("none", Compression::None)] {
        let blob = compression.compress(&tar);
        let media_type = compression.media_type(Format::Oci);
        push_with_diff_ids(
            &reg,
            "app",
            tag,
            &[(blob.clone(), media_type)],
            std::slice::from_ref(&wrong),
        );
        let reference = format!("{}/app:{tag}", reg.host());
        let err = lazypull(cache.path(), &["ls", &reference]).error();
        for needle in [
            Digest::of(&blob).to_string(),
            Digest::of(&tar).to_string(),
            wrong.to_string(),
            "diff_id".to_string(),
        ] {
            assert!(err.contains(&needle), "{tag}: no {needle} in {err}");
        }
        assert_cache_holds_only(cache.path(), &[]);
    }
}

#[test]
fn truncated_compressed_stream_is_a_clear_error() {
    let reg = TestRegistry::start(Variant::Plain);
    let cache = tempfile::tempdir().unwrap();
    let tar = layer_tar(4);
    for (tag, compression) in [("gzip", Compression::Gzip), ("zstd", Compression::Zstd)] {
        let full = compression.compress(&tar);
        // The registry holds the short blob under its own digest: only the stream is wrong.
        let short = full[..full.len() * 2 / 3].to_vec();
        let media_type = compression.media_type(Format::Oci);
        push_with_diff_ids(
            &reg,
            "app",
            tag,
            &[(short.clone(), media_type)],
            &[Digest::of(&tar)],
        );
        let reference = format!("{}/app:{tag}", reg.host());
        let err = lazypull(cache.path(), &["ls", &reference]).error();
        assert!(
            err.contains(&Digest::of(&short).to_string()),
            "{tag}: names the layer: {err}"
        );
        assert!(
            ["unexpected end", "truncated", "cut short", "ends early"]
                .iter()
                .any(|s| err.to_lowercase().contains(s)),
            "{tag}: says the stream ends too early: {err}"
        );
        assert_cache_holds_only(cache.path(), &[]);
    }
}

#[test]
fn corrupt_blob_in_the_cache_is_downloaded_again() {
    let reg = TestRegistry::start(Variant::Plain);
    let proxy = FaultProxy::start(&reg.base_url());
    let cache = tempfile::tempdir().unwrap();
    let spec = ImageSpec::new(vec![(layer_tar(5), Compression::Gzip)]);
    let image = push_image(&reg, "app", "1", &spec);
    let layer = &image.layers[0].digest;
    let reference = format!("{}/app:1", proxy.host());
    let listing = lazypull(cache.path(), &["ls", "-R", &reference]).ok();

    // The index is gone and the blob kept in the cache has rotted on disk.
    fs::remove_file(cache.path().join("index/sha256").join(layer.hex())).unwrap();
    let blob = cache.path().join("blobs/sha256").join(layer.hex());
    let mut bytes = fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&blob, &bytes).unwrap();
    proxy.clear_log();

    let run = lazypull(cache.path(), &["ls", "-R", &reference]);
    assert!(
        run.stderr.contains("corrupt") && run.stderr.contains(&layer.to_string()),
        "warns about the cached blob: {}",
        run.stderr
    );
    assert_eq!(run.ok(), listing);
    assert_eq!(
        proxy.requests("GET", &format!("/blobs/{layer}")).len(),
        1,
        "the layer is downloaded again"
    );
    assert_eq!(&Digest::of(&fs::read(&blob).unwrap()), layer);
    assert_cache_holds_only(cache.path(), &[layer]);
}
