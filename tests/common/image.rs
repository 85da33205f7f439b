//! Images built in memory and pushed through the registry's HTTP API.

use std::io::Write;

use lazypull::digest::Digest;
use reqwest::blocking::RequestBuilder;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use serde_json::{Value, json};

use super::registry::TestRegistry;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// How a layer's tar is stored in its blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(tar).unwrap();
                enc.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
        }
    }

    /// The layer media type in `format`; panics for Docker + zstd, which has none.
    pub fn media_type(self, format: Format) -> &'static str {
        match (format, self) {
            (Format::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
            (Format::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Format::Oci, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Format::Docker, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
            (Format::Docker, Compression::Gzip) => {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            }
            (Format::Docker, Compression::Zstd) => panic!("Docker schema 2 has no zstd layer type"),
        }
    }
}

/// Manifest flavour: OCI image-spec or Docker schema 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

/// Everything an image is made of; `Default` is an empty image for the host platform.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// Uncompressed tar bytes and how to compress them, bottom layer first.
    pub layers: Vec<(Vec<u8>, Compression)>,
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub format: Format,
}

/// The host's architecture in OCI spelling.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            layers: Vec::new(),
            os: "linux".into(),
            arch: host_arch().into(),
            variant: None,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            entrypoint: None,
            cmd: None,
            working_dir: None,
            user: None,
            format: Format::Oci,
        }
    }
}

impl ImageSpec {
    /// An image of `layers`, everything else default.
    pub fn new(layers: Vec<(Vec<u8>, Compression)>) -> Self {
        ImageSpec {
            layers,
            ..Default::default()
        }
    }

    fn manifest_media_type(&self) -> &'static str {
        match self.format {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }

    fn platform(&self) -> Value {
        let mut p = json!({ "architecture": self.arch, "os": self.os });
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }

    /// The config blob for layers with these diff_ids.
    fn config_json(&self, diff_ids: &[Digest]) -> Vec<u8> {
        let mut config = json!({ "Env": self.env });
        let optional = [
            ("Entrypoint", self.entrypoint.as_ref().map(|v| json!(v))),
            ("Cmd", self.cmd.as_ref().map(|v| json!(v))),
            ("WorkingDir", self.working_dir.as_ref().map(|v| json!(v))),
            ("User", self.user.as_ref().map(|v| json!(v))),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                config[key] = value;
            }
        }
        let mut doc = self.platform();
        doc["created"] = json!("2024-01-01T00:00:00Z");
        doc["config"] = config;
        doc["rootfs"] = json!({
            "type": "layers",
            "diff_ids": diff_ids.iter().map(Digest::to_string).collect::<Vec<_>>(),
        });
        doc["history"] = (0..diff_ids.len())
            .map(|i| json!({ "created": "2024-01-01T00:00:00Z", "created_by": format!("lazypull test layer {i}") }))
            .collect();
        serde_json::to_vec_pretty(&doc).unwrap()
    }
}

/// A layer as pushed.
#[derive(Clone, Debug)]
pub struct PushedLayer {
    pub digest: Digest,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the (compressed) blob.
    pub size: u64,
    pub media_type: String,
}

/// An image manifest as pushed.
#[derive(Clone, Debug)]
pub struct PushedImage {
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub manifest: Vec<u8>,
    pub config_digest: Digest,
    pub config_size: u64,
    pub config: Vec<u8>,
    pub layers: Vec<PushedLayer>,
}

/// An index (or Docker manifest list) as pushed, with its images in order.
#[derive(Clone, Debug)]
pub struct PushedIndex {
    pub digest: Digest,
    pub media_type: String,
    pub index: Vec<u8>,
    pub manifests: Vec<PushedImage>,
}

/// Attaches the harness's push-and-pull credentials for `repo`, if the registry needs any.
fn authorized(reg: &TestRegistry, repo: &str, req: RequestBuilder) -> RequestBuilder {
    match reg.admin_authorization(repo) {
        Some(auth) => req.header(AUTHORIZATION, auth),
        None => req,
    }
}

/// Uploads `bytes` as a blob of `repo` (monolithic: POST then PUT) unless it is there already.
pub fn push_blob(reg: &TestRegistry, repo: &str, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    let client = reg.client();
    let head = authorized(
        reg,
        repo,
        client.head(format!("{}/v2/{repo}/blobs/{digest}", reg.base_url())),
    )
    .send()
    .unwrap();
    if head.status().is_success() {
        return digest;
    }
    let start = authorized(
        reg,
        repo,
        client.post(format!("{}/v2/{repo}/blobs/uploads/", reg.base_url())),
    )
    .send()
    .unwrap();
    assert_eq!(
        start.status(),
        202,
        "starting an upload to {repo}: {}",
        start.text().unwrap_or_default()
    );
    let location = start.headers()[LOCATION].to_str().unwrap().to_string();
    let location = if location.starts_with('/') {
        format!("{}{location}", reg.base_url())
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = authorized(
        reg,
        repo,
        client.put(format!("{location}{sep}digest={digest}")),
    )
    .header(CONTENT_TYPE, "application/octet-stream")
    .body(bytes.to_vec())
    .send()
    .unwrap();
    assert_eq!(
        put.status(),
        201,
        "uploading blob {digest} to {repo}: {}",
        put.text().unwrap_or_default()
    );
    digest
}

/// PUTs `body` as manifest `reference` (tag or digest) of `repo` with `media_type`; returns
/// the registry's status and body so tests can also check refusals.
pub fn put_manifest(
    reg: &TestRegistry,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> (u16, String) {
    let url = format!("{}/v2/{repo}/manifests/{reference}", reg.base_url());
    let resp = authorized(reg, repo, reg.client().put(url))
        .header(CONTENT_TYPE, media_type)
        .body(body.to_vec())
        .send()
        .unwrap();
    (resp.status().as_u16(), resp.text().unwrap_or_default())
}

/// Like [`put_manifest`] but panics unless the registry accepts it; returns the body's digest.
pub fn push_manifest(
    reg: &TestRegistry,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> Digest {
    let (status, text) = put_manifest(reg, repo, reference, media_type, body);
    assert_eq!(status, 201, "pushing manifest {repo}:{reference}: {text}");
    Digest::of(body)
}

/// Pushes `blobs` (already compressed, with their media types) as `repo:tag` with a config
/// that claims `diff_ids`, however many: for images whose config and layers disagree.
pub fn push_with_diff_ids(
    reg: &TestRegistry,
    repo: &str,
    tag: &str,
    blobs: &[(Vec<u8>, &str)],
    diff_ids: &[Digest],
) -> PushedImage {
    let config = json!({
        "architecture": host_arch(), "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(Digest::to_string).collect::<Vec<_>>()},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = push_blob(reg, repo, &config);
    let layers: Vec<PushedLayer> = blobs
        .iter()
        .zip(diff_ids.iter().chain(std::iter::repeat(&Digest::of(b""))))
        .map(|((blob, media_type), diff_id)| PushedLayer {
            digest: push_blob(reg, repo, blob),
            diff_id: diff_id.clone(),
            size: blob.len() as u64,
            media_type: media_type.to_string(),
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = push_manifest(reg, repo, tag, OCI_MANIFEST, &manifest);
    PushedImage {
        manifest_digest,
        manifest_media_type: OCI_MANIFEST.to_string(),
        manifest,
        config_digest,
        config_size: config.len() as u64,
        config,
        layers,
    }
}

/// A layer compressed ahead of time (by a tool, or cached), pushed as it is.
pub struct CompressedLayer {
    pub blob: Vec<u8>,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    pub compression: Compression,
}

/// Pushes the layers, config and manifest of `spec` (tagged `tag`; `None` pushes by digest only).
fn push_image_ref(
    reg: &TestRegistry,
    repo: &str,
    tag: Option<&str>,
    spec: &ImageSpec,
) -> PushedImage {
    let layers: Vec<CompressedLayer> = spec
        .layers
        .iter()
        .map(|(tar, compression)| CompressedLayer {
            blob: compression.compress(tar),
            diff_id: Digest::of(tar),
            compression: *compression,
        })
        .collect();
    push_compressed(reg, repo, tag, spec, &layers)
}

/// Pushes `blobs` as the layers of an image configured like `spec` (whose own `layers` are
/// not used), tagged `tag`: for layers too big to compress in a test.
pub fn push_compressed_image(
    reg: &TestRegistry,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
    blobs: &[CompressedLayer],
) -> PushedImage {
    push_compressed(reg, repo, Some(tag), spec, blobs)
}

fn push_compressed(
    reg: &TestRegistry,
    repo: &str,
    tag: Option<&str>,
    spec: &ImageSpec,
    blobs: &[CompressedLayer],
) -> PushedImage {
    let mut layers = Vec::new();
    for layer in blobs {
        let digest = push_blob(reg, repo, &layer.blob);
        layers.push(PushedLayer {
            digest,
            diff_id: layer.diff_id.clone(),
            size: layer.blob.len() as u64,
            media_type: layer.compression.media_type(spec.format).to_string(),
        });
    }
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = spec.config_json(&diff_ids);
    let config_digest = push_blob(reg, repo, &config);
    let config_media_type = match spec.format {
        Format::Oci => OCI_CONFIG,
        Format::Docker => DOCKER_CONFIG,
    };
    let manifest_media_type = spec.manifest_media_type();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_media_type,
        "config": { "mediaType": config_media_type, "digest": config_digest.to_string(), "size": config.len() },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
    let manifest_digest = Digest::of(&manifest);
    let reference = tag.map_or_else(|| manifest_digest.to_string(), str::to_string);
    push_manifest(reg, repo, &reference, manifest_media_type, &manifest);
    PushedImage {
        manifest_digest,
        manifest_media_type: manifest_media_type.to_string(),
        manifest,
        config_digest,
        config_size: config.len() as u64,
        config,
        layers,
    }
}

/// Pushes `spec` as `repo:tag`.
pub fn push_image(reg: &TestRegistry, repo: &str, tag: &str, spec: &ImageSpec) -> PushedImage {
    push_image_ref(reg, repo, Some(tag), spec)
}

/// Pushes each spec by digest, then an index (OCI) or manifest list (Docker) of them as `repo:tag`.
pub fn push_index(
    reg: &TestRegistry,
    repo: &str,
    tag: &str,
    specs: &[ImageSpec],
    format: Format,
) -> PushedIndex {
    let manifests: Vec<PushedImage> = specs
        .iter()
        .map(|s| push_image_ref(reg, repo, None, s))
        .collect();
    let media_type = match format {
        Format::Oci => OCI_INDEX,
        Format::Docker => DOCKER_LIST,
    };
    let entries: Vec<Value> = specs
        .iter()
        .zip(&manifests)
        .map(|(spec, m)| {
            json!({
                "mediaType": m.manifest_media_type,
                "digest": m.manifest_digest.to_string(),
                "size": m.manifest.len(),
                "platform": spec.platform(),
            })
        })
        .collect();
    let index = json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": entries });
    let index = serde_json::to_vec_pretty(&index).unwrap();
    let digest = push_manifest(reg, repo, tag, media_type, &index);
    PushedIndex {
        digest,
        media_type: media_type.to_string(),
        index,
        manifests,
    }
}

pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// A signed schema 1 manifest as pushed.
#[derive(Clone, Debug)]
pub struct PushedSchema1 {
    /// The registry's `Docker-Content-Digest` (over the payload without signatures).
    pub digest: Digest,
    /// The signed body as pushed.
    pub manifest: Vec<u8>,
    /// gzip layer blobs, bottom first.
    pub layers: Vec<Digest>,
}

/// A libtrust-signed schema 1 manifest naming `layers` (blob digests, bottom first).
pub fn schema1_manifest(repo: &str, tag: &str, layers: &[Digest]) -> Vec<u8> {
    // Schema 1 lists layers top first, each with a v1 image JSON chained by `parent`.
    let ids: Vec<String> = layers
        .iter()
        .map(|d| Digest::of(d.to_string().as_bytes()).hex().to_string())
        .collect();
    let history: Vec<Value> = (0..layers.len())
        .rev()
        .map(|i| {
            let mut v1 = json!({ "id": ids[i], "architecture": host_arch(), "os": "linux" });
            if i > 0 {
                v1["parent"] = json!(ids[i - 1]);
            }
            json!({ "v1Compatibility": v1.to_string() })
        })
        .collect();
    let fs_layers: Vec<Value> = layers
        .iter()
        .rev()
        .map(|d| json!({ "blobSum": d.to_string() }))
        .collect();
    let payload = json!({
        "schemaVersion": 1, "name": repo, "tag": tag, "architecture": host_arch(),
        "fsLayers": fs_layers, "history": history,
    });
    sign_schema1(&serde_json::to_vec_pretty(&payload).unwrap())
}

/// Pushes gzip layers of the `tars` (bottom first) and a signed schema 1 manifest for
/// them as `repo:tag`. Needs [`TestRegistry::start_schema1`].
pub fn push_schema1(reg: &TestRegistry, repo: &str, tag: &str, tars: &[Vec<u8>]) -> PushedSchema1 {
    let layers: Vec<Digest> = tars
        .iter()
        .map(|tar| push_blob(reg, repo, &Compression::Gzip.compress(tar)))
        .collect();
    let manifest = schema1_manifest(repo, tag, &layers);
    let url = format!("{}/v2/{repo}/manifests/{tag}", reg.base_url());
    let resp = authorized(reg, repo, reg.client().put(url))
        .header(CONTENT_TYPE, DOCKER_SCHEMA1_SIGNED)
        .body(manifest.clone())
        .send()
        .unwrap();
    let status = resp.status();
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    assert_eq!(
        status,
        201,
        "pushing schema 1 {repo}:{tag}: {}",
        resp.text().unwrap_or_default()
    );
    PushedSchema1 {
        digest: digest.expect("no Docker-Content-Digest"),
        manifest,
        layers,
    }
}

/// libtrust's "pretty" JWS: the payload with a `signatures` member spliced in before
/// its closing brace; the protected header says how to cut it out again.
fn sign_schema1(payload: &[u8]) -> Vec<u8> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    let close = payload.iter().rposition(|b| *b == b'}').unwrap();
    let format_length = payload[..close]
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .unwrap()
        + 1;
    let tail = &payload[format_length..];
    let protected = B64.encode(
        json!({ "formatLength": format_length, "formatTail": B64.encode(tail), "time": "2024-01-01T00:00:00Z" })
            .to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    let key = super::pki::genkey(dir.path(), "schema1", super::pki::KeyKind::Rsa);
    let signature = super::pki::sign_rs256(
        &key,
        format!("{protected}.{}", B64.encode(payload)).as_bytes(),
    );
    let jwk = json!({ "kty": "RSA", "n": B64.encode(super::pki::rsa_modulus(&key)), "e": "AQAB" });
    let signatures = json!([{
        "header": { "jwk": jwk, "alg": "RS256" },
        "signature": B64.encode(signature),
        "protected": protected,
    }]);
    let mut out = payload[..format_length].to_vec();
    out.extend_from_slice(b",\n  \"signatures\": ");
    out.extend_from_slice(signatures.to_string().as_bytes());
    out.extend_from_slice(tail);
    out
}
