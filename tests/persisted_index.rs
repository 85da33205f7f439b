//! The persisted layer index through the CLI: once an image is indexed, listing it again asks
//! the registry for the manifest and config only, layers shared with another image are not
//! fetched again, and the index alone (without the blob) is enough to list.

mod common;

use std::fs;
use std::path::Path;

use common::cli::lazypull;
use common::image::{Compression, ImageSpec, PushedImage, push_image};
use common::proxy::FaultProxy;
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;
use lazypull::digest::Digest;

fn base_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/os-release", "ID=test\n", 0o644)
        .file("etc/big", vec![7u8; 200_000], 0o644)
        .build()
}

fn app_layer(name: &str) -> Vec<u8> {
    TarBuilder::new()
        .dir("app", 0o755)
        .file(&format!("app/{name}"), name, 0o755)
        .build()
}

fn push(reg: &TestRegistry, repo: &str, top: &str) -> PushedImage {
    let spec = ImageSpec::new(vec![
        (base_layer(), Compression::Gzip),
        (app_layer(top), Compression::Gzip),
    ]);
    push_image(reg, repo, "1", &spec)
}

/// Paths of every request the proxy saw that fetched or probed a blob other than `config`.
fn layer_requests(proxy: &FaultProxy, config: &Digest) -> Vec<String> {
    proxy
        .log()
        .into_iter()
        .filter(|e| e.path.contains("/blobs/") && !e.path.ends_with(&config.to_string()))
        .map(|e| format!("{} {}", e.method, e.path))
        .collect()
}

/// Asserts the proxy saw only `/v2/`, manifests and the config blob.
fn assert_only_manifest_and_config(proxy: &FaultProxy, image: &PushedImage) {
    assert_eq!(
        layer_requests(proxy, &image.config_digest),
        Vec::<String>::new()
    );
    for e in proxy.log() {
        let known = e.path == "/v2/"
            || e.path.contains("/manifests/")
            || e.path.ends_with(&image.config_digest.to_string());
        assert!(known, "unexpected request {} {}", e.method, e.path);
    }
}

/// The SOURCE column of `lazypull index` for each layer, bottom first.
fn sources(cache: &Path, reference: &str, image: &PushedImage) -> Vec<String> {
    let out = lazypull(cache, &["index", reference]).ok();
    image
        .layers
        .iter()
        .map(|layer| {
            let short = &layer.digest.to_string()[..19];
            let line = out
                .lines()
                .find(|l| l.starts_with(short))
                .unwrap_or_else(|| panic!("no line for {short} in:\n{out}"));
            ["downloaded", "local blob", "cached"]
                .into_iter()
                .find(|s| line.contains(s))
                .unwrap_or_else(|| panic!("no source in {line}"))
                .to_string()
        })
        .collect()
}

fn ls(cache: &Path, reference: &str) -> String {
    lazypull(cache, &["ls", "-R", reference]).ok()
}

#[test]
fn second_listing_fetches_no_layer() {
    let reg = TestRegistry::start(Variant::Plain);
    let proxy = FaultProxy::start(&reg.base_url());
    let cache = tempfile::tempdir().unwrap();
    let image = push(&reg, "app", "one");
    let reference = format!("{}/app:1", proxy.host());

    let first = ls(cache.path(), &reference);
    assert!(first.contains("/app/one") && first.contains("/etc/big"));
    for layer in &image.layers {
        let gets = proxy.requests("GET", &format!("/blobs/{}", layer.digest));
        assert_eq!(
            gets.len(),
            1,
            "the first listing downloads {}",
            layer.digest
        );
    }

    proxy.clear_log();
    assert_eq!(ls(cache.path(), &reference), first);
    assert_only_manifest_and_config(&proxy, &image);

    proxy.clear_log();
    assert_eq!(
        sources(cache.path(), &reference, &image),
        ["cached", "cached"]
    );
    assert_only_manifest_and_config(&proxy, &image);
}

#[test]
fn shared_base_layer_is_not_fetched_again() {
    let reg = TestRegistry::start(Variant::Plain);
    let proxy = FaultProxy::start(&reg.base_url());
    let cache = tempfile::tempdir().unwrap();
    let first = push(&reg, "first", "one");
    let second = push(&reg, "second", "two");
    assert_eq!(first.layers[0].digest, second.layers[0].digest);
    assert_ne!(first.layers[1].digest, second.layers[1].digest);

    let first_ref = format!("{}/first:1", proxy.host());
    assert_eq!(
        sources(cache.path(), &first_ref, &first),
        ["downloaded", "downloaded"]
    );
    proxy.clear_log();
    let second_ref = format!("{}/second:1", proxy.host());
    assert_eq!(
        sources(cache.path(), &second_ref, &second),
        ["cached", "downloaded"]
    );
    let base = &second.layers[0].digest;
    assert_eq!(
        proxy.requests("*", &format!("/blobs/{base}")).len(),
        0,
        "the shared base layer was fetched again"
    );
    assert_eq!(
        proxy
            .requests("GET", &format!("/blobs/{}", second.layers[1].digest))
            .len(),
        1
    );
    assert!(ls(cache.path(), &second_ref).contains("/app/two"));
}

#[test]
fn index_without_blob_still_lists_and_blob_without_index_is_reindexed_locally() {
    let reg = TestRegistry::start(Variant::Plain);
    let proxy = FaultProxy::start(&reg.base_url());
    let cache = tempfile::tempdir().unwrap();
    let image = push(&reg, "app", "one");
    let reference = format!("{}/app:1", proxy.host());
    let listing = ls(cache.path(), &reference);

    // `cache prune --blobs` to come: the index alone is enough to list.
    for layer in &image.layers {
        let blob = cache.path().join("blobs/sha256").join(layer.digest.hex());
        fs::remove_file(&blob).unwrap();
    }
    proxy.clear_log();
    assert_eq!(ls(cache.path(), &reference), listing);
    assert_only_manifest_and_config(&proxy, &image);
    assert_eq!(
        sources(cache.path(), &reference, &image),
        ["cached", "cached"]
    );

    // The other way round: a lost index is rebuilt from the blob kept in the cache.
    let fresh = tempfile::tempdir().unwrap();
    ls(fresh.path(), &reference);
    for layer in &image.layers {
        fs::remove_file(fresh.path().join("index/sha256").join(layer.digest.hex())).unwrap();
    }
    proxy.clear_log();
    assert_eq!(
        sources(fresh.path(), &reference, &image),
        ["local blob", "local blob"]
    );
    assert_only_manifest_and_config(&proxy, &image);
    assert_eq!(ls(fresh.path(), &reference), listing);
}
