//! Bad content from the registry, through the CLI and a real mount: a layer, manifest or
//! config whose bytes are not what their digest or their neighbours say, and compressed
//! streams cut short. Each gives an error that names what failed, and nothing of it reaches
//! the cache (no index, no blob).

mod common;

use std::fs;

use common::cli::assert_cache_holds_only;
use common::image::{Compression, Format, ImageSpec, push_image, push_with_diff_ids};
use common::mount::Sandbox;
use common::proxy::{Fault, FaultProxy, Rule};
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;
use lazypull::digest::Digest;

/// A layer of incompressible data, so a byte flipped in the middle of its blob lands in it.
fn layer_tar(seed: u8) -> Vec<u8> {
    let mut data = vec![0u8; 200_000];
    fastrand::Rng::with_seed(u64::from(seed)).fill(&mut data);
    TarBuilder::new()
        .dir("data", 0o755)
        .file(&format!("data/{seed}"), data, 0o644)
        .build()
}

/// `lazypull COMMAND REFERENCE` (with the sandbox's cache for the commands that read layers),
/// which must fail the way every error should; its stderr.
fn cli_error(sandbox: &Sandbox, command: &str, reference: &str) -> String {
    let cache = sandbox.cache();
    let mut args = vec![command, reference];
    if command != "inspect" {
        args.extend(["--cache-dir", cache.to_str().unwrap()]);
    }
    let run = sandbox.run(&args);
    assert!(!run.success, "{args:?} succeeded:\n{}", run.stdout);
    assert!(
        run.stderr.starts_with("lazypull: error:"),
        "stderr: {}",
        run.stderr
    );
    run.stderr
}

fn assert_names(err: &str, needles: &[&str]) {
    for needle in needles {
        assert!(err.contains(needle), "no {needle:?} in: {err}");
    }
}

#[test]
fn corrupt_blob_fails_a_cold_mount_and_keeps_nothing() {
    let reg = TestRegistry::start(Variant::Plain);
    let spec = ImageSpec::new(vec![
        (layer_tar(1), Compression::Gzip),
        (layer_tar(2), Compression::Gzip),
    ]);
    let image = push_image(&reg, "app", "1", &spec);
    let bad = &image.layers[1].digest;
    let path = reg.blob_path(bad);
    let mut blob = fs::read(&path).unwrap();
    let middle = blob.len() / 2;
    blob[middle] ^= 0x55;
    fs::write(&path, &blob).unwrap();

    // With no index cached, the mount's pass over the layer is its download and its check.
    let sandbox = Sandbox::new();
    let err = sandbox.mount_error(&format!("{}/app:1", reg.host()));
    assert_names(
        &err,
        &[
            &bad.to_string(),
            "digest mismatch",
            &Digest::of(&blob).to_string(),
        ],
    );
    let good = &image.layers[0].digest;
    let kept: Vec<&Digest> = [good]
        .into_iter()
        .filter(|d| sandbox.cache().join("index/sha256").join(d.hex()).exists())
        .collect();
    assert_cache_holds_only(&sandbox.cache(), &kept);
}

#[test]
fn wrong_diff_id_fails_a_mount_even_when_the_blob_is_cached() {
    let reg = TestRegistry::start(Variant::Plain);
    let tar = layer_tar(3);
    let blob = Compression::Gzip.compress(&tar);
    let media_type = Compression::Gzip.media_type(Format::Oci);
    let wrong = Digest::of(b"not this layer");
    let lying = push_with_diff_ids(
        &reg,
        "app",
        "lying",
        &[(blob.clone(), media_type)],
        std::slice::from_ref(&wrong),
    );
    let layer = &lying.layers[0].digest;
    let needles = [
        layer.to_string(),
        wrong.to_string(),
        Digest::of(&tar).to_string(),
        "diff_id".to_string(),
    ];
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();

    let sandbox = Sandbox::new();
    let err = sandbox.mount_error(&format!("{}/app:lying", reg.host()));
    assert_names(&err, &needles);
    assert_cache_holds_only(&sandbox.cache(), &[]);

    // The same blob, indexed and kept for an image that names its diff_id right, does not
    // vouch for a config that names another.
    push_with_diff_ids(
        &reg,
        "app",
        "honest",
        &[(blob, media_type)],
        &[Digest::of(&tar)],
    );
    sandbox.index(&format!("{}/app:honest", reg.host()), &[]);
    let err = sandbox.mount_error(&format!("{}/app:lying", reg.host()));
    assert_names(&err, &needles);
    assert_cache_holds_only(&sandbox.cache(), &[layer]);
}

#[test]
fn truncated_gzip_and_zstd_streams_fail_a_cold_mount() {
    let reg = TestRegistry::start(Variant::Plain);
    let tar = layer_tar(4);
    for (tag, compression) in [("gzip", Compression::Gzip), ("zstd", Compression::Zstd)] {
        let full = compression.compress(&tar);
        // The registry holds the short blob under its own digest: only the stream is wrong.
        let short = full[..full.len() / 2].to_vec();
        let media_type = compression.media_type(Format::Oci);
        push_with_diff_ids(
            &reg,
            "app",
            tag,
            &[(short.clone(), media_type)],
            &[Digest::of(&tar)],
        );
        let sandbox = Sandbox::new();
        let reference = format!("{}/app:{tag}", reg.host());
        for err in [
            cli_error(&sandbox, "index", &reference),
            sandbox.mount_error(&reference),
        ] {
            assert_names(&err, &[&Digest::of(&short).to_string()]);
            assert!(
                ["unexpected end", "truncated", "cut short", "ends early"]
                    .iter()
                    .any(|s| err.to_lowercase().contains(s)),
                "{tag}: says the stream ends too early: {err}"
            );
        }
        assert_cache_holds_only(&sandbox.cache(), &[]);
    }
}

#[test]
fn manifest_bytes_other_than_the_digest_asked_for_are_refused() {
    let reg = TestRegistry::start(Variant::Plain);
    let proxy = FaultProxy::start(&reg.base_url());
    let spec = ImageSpec::new(vec![(layer_tar(5), Compression::Gzip)]);
    let image = push_image(&reg, "app", "1", &spec);
    let asked = &image.manifest_digest;
    proxy.add_rule(Rule::new(
        "GET",
        &format!("/manifests/{asked}"),
        Fault::FlipByte(40),
    ));
    let mut served = image.manifest.clone();
    served[40] ^= 0xff;
    let served = Digest::of(&served);
    let by_digest = format!("{}/app@{asked}", proxy.host());
    let sandbox = Sandbox::new();
    for command in ["inspect", "ls", "index"] {
        let err = cli_error(&sandbox, command, &by_digest);
        assert_names(&err, &[&asked.to_string(), &served.to_string(), "manifest"]);
    }
    let err = sandbox.mount_error(&by_digest);
    assert_names(&err, &[&asked.to_string(), &served.to_string()]);
    assert_eq!(
        proxy.requests("GET", "/blobs/").len(),
        0,
        "nothing fetched for a manifest that failed its check"
    );

    // By tag, the registry's Docker-Content-Digest is what the bytes must hash to. Rewrite the
    // stored manifest to other (still valid) JSON, as a corrupt store would serve it.
    let tagged = push_image(
        &reg,
        "app",
        "2",
        &ImageSpec::new(vec![(layer_tar(6), Compression::Gzip)]),
    );
    let stored = reg.blob_path(&tagged.manifest_digest);
    let value: serde_json::Value = serde_json::from_slice(&fs::read(&stored).unwrap()).unwrap();
    let other = serde_json::to_vec(&value).unwrap();
    assert_ne!(other, tagged.manifest);
    fs::write(&stored, &other).unwrap();
    let err = cli_error(&sandbox, "inspect", &format!("{}/app:2", reg.host()));
    assert_names(
        &err,
        &[
            &tagged.manifest_digest.to_string(),
            &Digest::of(&other).to_string(),
            "app:2",
        ],
    );
    // A tag whose manifest is fine is served as ever.
    let out = sandbox.ok(&["ls", "-R", &format!("{}/app:1", reg.host())]);
    assert!(out.contains("/data/5"), "{out}");
}

#[test]
fn config_with_fewer_or_more_diff_ids_than_layers_is_refused_before_any_layer_traffic() {
    let reg = TestRegistry::start(Variant::Plain);
    let proxy = FaultProxy::start(&reg.base_url());
    let tars = [layer_tar(7), layer_tar(8)];
    let media_type = Compression::Gzip.media_type(Format::Oci);
    let blobs: Vec<(Vec<u8>, &str)> = tars
        .iter()
        .map(|t| (Compression::Gzip.compress(t), media_type))
        .collect();
    let diff_ids: Vec<Digest> = tars.iter().map(|t| Digest::of(t)).collect();
    let extra = Digest::of(b"a third layer nobody pushed");
    for (tag, claimed) in [
        ("fewer", vec![diff_ids[0].clone()]),
        (
            "more",
            vec![diff_ids[0].clone(), diff_ids[1].clone(), extra],
        ),
    ] {
        let image = push_with_diff_ids(&reg, "app", tag, &blobs, &claimed);
        let reference = format!("{}/app:{tag}", proxy.host());
        let count = format!("{} diff_ids for the manifest's 2 layers", claimed.len());
        let needles = [
            count.as_str(),
            &image.config_digest.to_string(),
            "push it again",
        ];
        let sandbox = Sandbox::new();
        proxy.clear_log();
        for command in ["inspect", "ls", "index"] {
            let err = cli_error(&sandbox, command, &reference);
            assert_names(&err, &needles);
        }
        assert_names(&sandbox.mount_error(&reference), &needles);
        for layer in &image.layers {
            assert_eq!(
                proxy
                    .requests("*", &format!("/blobs/{}", layer.digest))
                    .len(),
                0,
                "{tag}: layer {} was fetched",
                layer.digest
            );
        }
        assert_cache_holds_only(&sandbox.cache(), &[]);
    }
}
