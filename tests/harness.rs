//! Proves the test harness against the real registry: every auth variant serves
//! what the harness pushed, tokens expire when they say they do, restarts keep data.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::image::{self, Compression, Format, ImageSpec, PushedImage};
use common::registry::{TestRegistry, Variant};
use common::tarball::TarBuilder;
use common::token::TokenOptions;
use lazypull::digest::Digest;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};

const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

fn two_layer_image() -> ImageSpec {
    let base = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/os-release", "ID=lazypull-test\n", 0o644)
        .dir("bin", 0o755)
        .file("bin/hello", vec![0x7f; 5000], 0o755)
        .build();
    let top = TarBuilder::new()
        .dir("etc", 0o755)
        .file("etc/motd", "hello\n", 0o644)
        .whiteout("bin/hello")
        .build();
    ImageSpec {
        cmd: Some(vec!["/bin/hello".into()]),
        ..ImageSpec::new(vec![(base, Compression::Gzip), (top, Compression::Gzip)])
    }
}

/// GET `path` with `authorization`; returns status, `Docker-Content-Digest`, body.
fn get(
    reg: &TestRegistry,
    path: &str,
    authorization: Option<&str>,
) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut req = reg
        .client()
        .get(format!("{}{path}", reg.base_url()))
        .header(ACCEPT, ACCEPT_ALL);
    if let Some(auth) = authorization {
        req = req.header(AUTHORIZATION, auth);
    }
    let resp = req.send().unwrap();
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status(), digest, resp.bytes().unwrap().to_vec())
}

/// Checks the manifest, config and every layer of `pushed` come back byte-exact.
fn assert_served(
    reg: &TestRegistry,
    repo: &str,
    tag: &str,
    pushed: &PushedImage,
    auth: Option<&str>,
) {
    let (status, digest, body) = get(reg, &format!("/v2/{repo}/manifests/{tag}"), auth);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        digest.as_deref(),
        Some(pushed.manifest_digest.to_string().as_str())
    );
    assert_eq!(body, pushed.manifest);
    let (status, _, config) = get(
        reg,
        &format!("/v2/{repo}/blobs/{}", pushed.config_digest),
        auth,
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(Digest::of(&config), pushed.config_digest);
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    let diff_ids: Vec<String> = pushed
        .layers
        .iter()
        .map(|l| l.diff_id.to_string())
        .collect();
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    for layer in &pushed.layers {
        let (status, _, blob) = get(reg, &format!("/v2/{repo}/blobs/{}", layer.digest), auth);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(Digest::of(&blob), layer.digest);
        assert_eq!(blob.len() as u64, layer.size);
    }
}

/// Parses `Bearer realm="…",service="…",scope="…"` into its parameters.
fn bearer_challenge(header: &str) -> Vec<(String, String)> {
    let rest = header.strip_prefix("Bearer ").expect("a Bearer challenge");
    rest.split("\",")
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

/// Runs the Bearer flow a client does: challenge, token request (with `basic`), token.
fn fetch_token(
    reg: &TestRegistry,
    repo: &str,
    basic: Option<(&str, &str)>,
) -> Result<String, StatusCode> {
    let resp = reg
        .client()
        .get(format!("{}/v2/{repo}/manifests/latest", reg.base_url()))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = bearer_challenge(resp.headers()[WWW_AUTHENTICATE].to_str().unwrap());
    let param = |name: &str| challenge.iter().find(|(k, _)| k == name).unwrap().1.clone();
    assert_eq!(param("scope"), format!("repository:{repo}:pull"));
    let mut req = reg
        .client()
        .get(param("realm"))
        .query(&[("service", param("service")), ("scope", param("scope"))]);
    if let Some((user, password)) = basic {
        req = req.basic_auth(user, Some(password));
    }
    let resp = req.send().unwrap();
    if resp.status() != StatusCode::OK {
        return Err(resp.status());
    }
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["token"], body["access_token"]);
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));
    Ok(body["token"].as_str().unwrap().to_string())
}

#[test]
fn plain_registry_serves_pushed_image_and_ranges() {
    let reg = TestRegistry::start(Variant::Plain);
    let pushed = image::push_image(&reg, "test/plain", "v1", &two_layer_image());
    assert_eq!(pushed.layers.len(), 2);
    assert_eq!(pushed.manifest_media_type, image::OCI_MANIFEST);
    assert_eq!(
        pushed.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_served(&reg, "test/plain", "v1", &pushed, None);

    let layer = &pushed.layers[0];
    let resp = reg
        .client()
        .get(format!(
            "{}/v2/test/plain/blobs/{}",
            reg.base_url(),
            layer.digest
        ))
        .header("Range", "bytes=10-19")
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let on_disk = std::fs::read(reg.blob_path(&layer.digest)).unwrap();
    assert_eq!(resp.bytes().unwrap().as_ref(), &on_disk[10..20]);
    let blob_gets = format!("\"GET /v2/test/plain/blobs/{} HTTP/1.1\" 206", layer.digest);
    assert_eq!(
        reg.requests_matching(&blob_gets),
        1,
        "{:?}",
        reg.access_log()
    );
}

#[test]
fn docker_format_image_and_uncompressed_and_zstd_layers() {
    let reg = TestRegistry::start(Variant::Plain);
    let tar = TarBuilder::new().file("a", "a", 0o644).build();
    let docker = ImageSpec {
        format: Format::Docker,
        ..ImageSpec::new(vec![
            (tar.clone(), Compression::Gzip),
            (tar.clone(), Compression::None),
        ])
    };
    let pushed = image::push_image(&reg, "test/docker", "latest", &docker);
    assert_eq!(pushed.manifest_media_type, image::DOCKER_MANIFEST);
    assert_eq!(
        pushed.layers[1].media_type,
        "application/vnd.docker.image.rootfs.diff.tar"
    );
    assert_eq!(pushed.layers[0].diff_id, pushed.layers[1].diff_id);
    assert_served(&reg, "test/docker", "latest", &pushed, None);

    let zstd = ImageSpec::new(vec![(tar, Compression::Zstd)]);
    let pushed = image::push_image(&reg, "test/zstd", "latest", &zstd);
    assert_eq!(
        pushed.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_served(&reg, "test/zstd", "latest", &pushed, None);
}

#[test]
fn tls_registry_is_trusted_through_its_ca_only() {
    let reg = TestRegistry::start(Variant::Tls);
    assert!(reg.base_url().starts_with("https://127.0.0.1:"));
    let pushed = image::push_image(&reg, "test/tls", "v1", &two_layer_image());
    assert_served(&reg, "test/tls", "v1", &pushed, None);

    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(format!("{}/v2/", reg.base_url()))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let trusted = curl(&["--cacert", reg.ca_pem_path().to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&trusted.stdout), "200");
    let untrusted = curl(&[]);
    assert!(
        !untrusted.status.success(),
        "curl without the CA must fail verification"
    );

    let home = tempfile::tempdir().unwrap();
    let installed = reg.install_ca_in_home(home.path());
    assert_eq!(
        installed,
        home.path()
            .join(format!(".config/containers/certs.d/{}/ca.crt", reg.host()))
    );
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(reg.ca_pem_path()).unwrap()
    );
}

#[test]
fn htpasswd_registry_requires_basic_credentials() {
    let reg = TestRegistry::start(Variant::Htpasswd {
        user: "alice".into(),
        password: "s3cret".into(),
    });
    let pushed = image::push_image(&reg, "test/basic", "v1", &two_layer_image());

    let (status, _, _) = get(&reg, "/v2/test/basic/manifests/v1", None);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let wrong = format!("Basic {}", STANDARD.encode("alice:nope"));
    assert_eq!(
        get(&reg, "/v2/test/basic/manifests/v1", Some(&wrong)).0,
        StatusCode::UNAUTHORIZED
    );
    let right = format!("Basic {}", STANDARD.encode("alice:s3cret"));
    let docker = tempfile::tempdir().unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reg.write_docker_config(docker.path())).unwrap())
            .unwrap();
    assert_eq!(
        config["auths"][reg.host()]["auth"],
        STANDARD.encode("alice:s3cret")
    );
    assert_served(&reg, "test/basic", "v1", &pushed, Some(&right));
}

#[test]
fn token_registry_accepts_tokens_from_the_token_server() {
    let reg = TestRegistry::start(Variant::Token(TokenOptions::default()));
    let pushed = image::push_image(&reg, "test/token", "v1", &two_layer_image());
    let server = reg.token_server().unwrap();
    assert_eq!(
        server.tokens_issued(),
        0,
        "harness push tokens are not counted"
    );

    let token = fetch_token(&reg, "test/token", None).unwrap();
    assert_eq!(server.tokens_issued(), 1);
    let requests = server.requests();
    assert_eq!(
        requests[0].scopes,
        vec!["repository:test/token:pull".to_string()]
    );
    assert_eq!(requests[0].service.as_deref(), Some(common::token::SERVICE));
    assert_served(
        &reg,
        "test/token",
        "v1",
        &pushed,
        Some(&format!("Bearer {token}")),
    );

    // A pull token for one repository opens no other.
    image::push_image(&reg, "test/other", "v1", &two_layer_image());
    let (status, _, _) = get(
        &reg,
        "/v2/test/other/manifests/v1",
        Some(&format!("Bearer {token}")),
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[test]
fn token_server_can_require_basic_credentials() {
    let opts = TokenOptions {
        basic: Some(("bob".into(), "pw".into())),
        ..TokenOptions::default()
    };
    let reg = TestRegistry::start(Variant::Token(opts));
    let pushed = image::push_image(&reg, "test/private", "v1", &two_layer_image());
    assert_eq!(
        fetch_token(&reg, "test/private", None),
        Err(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        fetch_token(&reg, "test/private", Some(("bob", "bad"))),
        Err(StatusCode::UNAUTHORIZED)
    );
    let token = fetch_token(&reg, "test/private", Some(("bob", "pw"))).unwrap();
    assert_eq!(reg.credentials(), Some(("bob", "pw")));
    let server = reg.token_server().unwrap();
    assert_eq!(server.tokens_issued(), 1);
    assert_eq!(server.requests().iter().filter(|r| !r.granted).count(), 2);
    assert_eq!(server.requests()[2].user.as_deref(), Some("bob"));
    assert_served(
        &reg,
        "test/private",
        "v1",
        &pushed,
        Some(&format!("Bearer {token}")),
    );
}

#[test]
fn short_lived_token_expires_at_the_registry() {
    let opts = TokenOptions {
        lifetime: Duration::from_secs(3),
        ..TokenOptions::default()
    };
    let reg = TestRegistry::start(Variant::Token(opts));
    image::push_image(&reg, "test/expiry", "v1", &two_layer_image());
    let token = fetch_token(&reg, "test/expiry", None).unwrap();
    let bearer = format!("Bearer {token}");
    assert_eq!(
        get(&reg, "/v2/test/expiry/manifests/v1", Some(&bearer)).0,
        StatusCode::OK
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        get(&reg, "/v2/test/expiry/manifests/v1", Some(&bearer)).0,
        StatusCode::UNAUTHORIZED
    );
    let fresh = fetch_token(&reg, "test/expiry", None).unwrap();
    assert_eq!(
        get(
            &reg,
            "/v2/test/expiry/manifests/v1",
            Some(&format!("Bearer {fresh}"))
        )
        .0,
        StatusCode::OK
    );
    assert_eq!(reg.token_server().unwrap().tokens_issued(), 2);
}

#[test]
fn multi_platform_index_and_manifest_list() {
    let reg = TestRegistry::start(Variant::Plain);
    let layer = |text: &str| {
        (
            TarBuilder::new().file("arch", text, 0o644).build(),
            Compression::Gzip,
        )
    };
    for (format, media_type, child_type) in [
        (Format::Oci, image::OCI_INDEX, image::OCI_MANIFEST),
        (Format::Docker, image::DOCKER_LIST, image::DOCKER_MANIFEST),
    ] {
        let specs = [
            ImageSpec {
                arch: "amd64".into(),
                format,
                ..ImageSpec::new(vec![layer("amd64")])
            },
            ImageSpec {
                arch: "arm".into(),
                variant: Some("v7".into()),
                format,
                ..ImageSpec::new(vec![layer("arm")])
            },
        ];
        let pushed = image::push_index(&reg, "test/multi", "latest", &specs, format);
        let (status, digest, body) = get(&reg, "/v2/test/multi/manifests/latest", None);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(digest, Some(pushed.digest.to_string()));
        let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(index["mediaType"], media_type);
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1]["platform"]["variant"], "v7");
        for (entry, image) in entries.iter().zip(&pushed.manifests) {
            assert_eq!(entry["mediaType"], child_type);
            assert_eq!(entry["digest"], image.manifest_digest.to_string());
            let reference = image.manifest_digest.to_string();
            assert_served(&reg, "test/multi", &reference, image, None);
        }
    }
}

#[test]
fn restart_keeps_port_and_storage() {
    let mut reg = TestRegistry::start(Variant::Plain);
    let pushed = image::push_image(&reg, "test/restart", "v1", &two_layer_image());
    let url = reg.base_url();
    reg.stop();
    assert!(!reg.is_running());
    assert!(reg.client().get(format!("{url}/v2/")).send().is_err());
    reg.restart();
    assert_eq!(reg.base_url(), url);
    assert_served(&reg, "test/restart", "v1", &pushed, None);
}

#[test]
fn frozen_registry_answers_nothing_until_thawed() {
    let reg = TestRegistry::start(Variant::Plain);
    reg.freeze();
    let quick = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let err = quick
        .get(format!("{}/v2/", reg.base_url()))
        .send()
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    reg.thaw();
    assert_eq!(get(&reg, "/v2/", None).0, StatusCode::OK);
}

#[test]
fn tar_builder_writes_every_entry_kind_and_hostile_names() {
    let tar = TarBuilder::new()
        .dir_owned("d", 0o750, 1000, 1000)
        .xattr("user.note", "hi")
        .file_owned("d/f", "data", 0o640, 1000, 100)
        .hardlink("d/link", "d/f")
        .symlink("d/sym", "/etc/passwd")
        .whiteout("d/gone")
        .opaque("d")
        .char_device("dev/null", 1, 3, 0o666)
        .block_device("dev/sda", 8, 0, 0o660)
        .fifo("run/pipe", 0o600)
        .file(&format!("long/{}", "n".repeat(150)), "x", 0o644)
        .raw(::tar::EntryType::Regular, b"../evil", b"", b"pwned", 0o644)
        .build();
    let mut archive = ::tar::Archive::new(tar.as_slice());
    let mut seen = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let xattrs: Vec<(String, Vec<u8>)> = entry
            .pax_extensions()
            .unwrap()
            .into_iter()
            .flatten()
            .map(|e| e.unwrap())
            .map(|e| (e.key().unwrap().to_string(), e.value_bytes().to_vec()))
            .collect();
        let h = entry.header();
        seen.push((
            path,
            h.entry_type(),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            xattrs,
        ));
    }
    let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        names[..9],
        [
            "d",
            "d/f",
            "d/link",
            "d/sym",
            "d/.wh.gone",
            "d/.wh..wh..opq",
            "dev/null",
            "dev/sda",
            "run/pipe"
        ]
    );
    assert_eq!(names[9], format!("long/{}", "n".repeat(150)));
    assert_eq!(names[10], "../evil");
    assert_eq!(seen[0].3, 1000);
    assert_eq!((seen[1].2, seen[1].4), (0o640, 100));
    assert_eq!(
        seen[1].5,
        vec![("SCHILY.xattr.user.note".to_string(), b"hi".to_vec())]
    );
    assert!(seen[2].1.is_hard_link() && seen[3].1.is_symlink() && seen[6].1.is_character_special());
}

#[test]
fn schema1_needs_the_compatibility_switch() {
    let tars = vec![
        TarBuilder::new().file("a", "a", 0o644).build(),
        TarBuilder::new().file("b", "b", 0o644).build(),
    ];
    let plain = TestRegistry::start(Variant::Plain);
    let layers: Vec<Digest> = tars
        .iter()
        .map(|t| image::push_blob(&plain, "test/s1", &Compression::Gzip.compress(t)))
        .collect();
    let signed = image::schema1_manifest("test/s1", "v1", &layers);
    let (status, _) = image::put_manifest(
        &plain,
        "test/s1",
        "v1",
        image::DOCKER_SCHEMA1_SIGNED,
        &signed,
    );
    assert_ne!(status, 201, "Distribution 2.8 refuses schema 1 by default");

    let reg = TestRegistry::start_schema1(Variant::Plain);
    let pushed = image::push_schema1(&reg, "test/s1", "v1", &tars);
    let (status, digest, body) = get(&reg, "/v2/test/s1/manifests/v1", None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(digest, Some(pushed.digest.to_string()));
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(manifest["schemaVersion"], 1);
    assert_eq!(
        manifest["fsLayers"][0]["blobSum"],
        pushed.layers[1].to_string()
    );
    assert_eq!(
        manifest["fsLayers"][1]["blobSum"],
        pushed.layers[0].to_string()
    );
}
