//! Arbitrary bytes as a registry's answers: a manifest body (under a Content-Type picked by byte
//! 0), then the same bytes as an image config, as the registry client reads both.
#![no_main]

use lazypull::digest::Digest;
use lazypull::registry::Platform;
use lazypull::registry::manifest::{self, Manifest};
use libfuzzer_sys::fuzz_target;
use oci_spec::image::ImageConfiguration;

const CONTENT_TYPES: [&str; 9] = [
    manifest::OCI_INDEX,
    manifest::DOCKER_LIST,
    manifest::OCI_MANIFEST,
    manifest::DOCKER_MANIFEST,
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
    "",
    "application/json; charset=utf-8",
    "text/plain",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(pick) % CONTENT_TYPES.len()];
    let _ = manifest::is_schema1(body, content_type);
    match manifest::parse("fuzz", body, content_type) {
        Ok((Manifest::Index(index), _)) => {
            for wanted in [
                Platform::host(),
                Platform {
                    os: "linux".into(),
                    architecture: "arm64".into(),
                    variant: None,
                },
                Platform {
                    os: "linux".into(),
                    architecture: "arm".into(),
                    variant: Some("v7".into()),
                },
            ] {
                if let Ok((descriptor, chosen)) = manifest::choose("fuzz", &index, &wanted) {
                    let _ = descriptor.digest().to_string().parse::<Digest>();
                    let _ = chosen.to_string().parse::<Platform>();
                }
            }
        }
        Ok((Manifest::Image(image), _)) => {
            for d in image.layers().iter().chain([image.config()]) {
                let _ = d.digest().to_string().parse::<Digest>();
            }
        }
        Err(_) => {}
    }
    if let Ok(config) = serde_json::from_slice::<ImageConfiguration>(body) {
        for diff_id in config.rootfs().diff_ids() {
            let _ = diff_id.parse::<Digest>();
        }
    }
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(platform) = text.parse::<Platform>() {
            assert_eq!(
                platform.to_string().parse::<Platform>().ok(),
                Some(platform)
            );
        }
    }
});
