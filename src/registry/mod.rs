//! OCI distribution client: resolves a reference to an image (manifest,
//! config, layer descriptors) and reads blobs, all verified by digest.

mod auth;
mod blob;
mod error;
pub mod manifest;
mod transport;

use std::sync::Arc;

use oci_spec::image::{Descriptor, ImageConfiguration};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Serialize;

pub use blob::{BlobStream, HttpBlob};
pub use error::RegistryError;
pub use manifest::Platform;
use manifest::{MAX_MANIFEST_SIZE, Manifest};
use transport::Transport;
pub use transport::TransportOptions;

use crate::digest::Digest;
use crate::reference::Reference;

/// Largest config blob we read into memory.
const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// A client for the repository one reference names.
#[derive(Clone)]
pub struct RegistryClient {
    reference: Reference,
    transport: Arc<Transport>,
}

/// An image resolved to one platform: what a mount serves.
#[derive(Clone, Debug, Serialize)]
pub struct ResolvedImage {
    pub reference: String,
    /// Digest of the image manifest (the platform's, not the index's).
    pub digest: Digest,
    pub media_type: String,
    /// Digest of the index the manifest was chosen from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    pub platform: Platform,
    pub config: BlobRef,
    pub layers: Vec<LayerDescriptor>,
    /// The image config as the registry served it (verified).
    #[serde(skip)]
    pub config_json: Vec<u8>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerDescriptor {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// sha256 of the uncompressed layer, from the config's rootfs.
    pub diff_id: Digest,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

impl RegistryClient {
    /// Connects to the registry of `reference` (one round trip to learn its
    /// scheme and auth).
    pub fn connect(reference: &Reference, opts: &TransportOptions) -> Result<Self, RegistryError> {
        let transport = Transport::connect(
            &reference.registry,
            reference.api_host(),
            &reference.repository,
            opts,
        )?;
        Ok(Self {
            reference: reference.clone(),
            transport,
        })
    }

    /// Resolves the reference to one image: manifest (via the index when
    /// there is one), config, and layer descriptors, each verified.
    pub fn resolve(&self, platform: Option<&Platform>) -> Result<ResolvedImage, RegistryError> {
        let name = self.reference.to_string();
        let key = self.reference.manifest_key();
        let (manifest, media_type, digest) = self.fetch_manifest(&key)?;
        let (image, media_type, digest, index_digest, mut chosen) = match manifest {
            Manifest::Image(m) => (m, media_type, digest, None, None),
            Manifest::Index(index) => {
                let wanted = platform.cloned().unwrap_or_else(Platform::host);
                let (descriptor, chosen) = manifest::choose(&name, &index, &wanted)?;
                let child = self.descriptor_digest(descriptor)?;
                tracing::debug!(platform = %chosen, manifest = %child, "chose from index");
                match self.fetch_manifest(&child.to_string())? {
                    (Manifest::Image(m), child_type, child_digest) => {
                        (m, child_type, child_digest, Some(digest), Some(chosen))
                    }
                    (Manifest::Index(_), ..) => {
                        return Err(RegistryError::UnsupportedManifest {
                            reference: name,
                            media_type: "an index nested in an index".into(),
                        });
                    }
                }
            }
        };
        let config_ref = BlobRef {
            digest: self.descriptor_digest(image.config())?,
            size: image.config().size(),
        };
        if config_ref.size > MAX_CONFIG_SIZE {
            return Err(self.invalid("config", format!("{} bytes is too large", config_ref.size)));
        }
        let config_json = self.fetch_blob(&config_ref.digest, config_ref.size, "image config")?;
        let config: ImageConfiguration = serde_json::from_slice(&config_json)
            .map_err(|e| self.invalid("image config", e.to_string()))?;
        let diff_ids = config.rootfs().diff_ids();
        // Checked before any layer is read: which diff_id belongs to which layer is unknowable.
        if diff_ids.len() != image.layers().len() {
            return Err(self.invalid(
                &format!("image config {}", config_ref.digest),
                format!(
                    "it lists {} diff_ids for the manifest's {} layers; the image is broken, \
                     rebuild it and push it again",
                    diff_ids.len(),
                    image.layers().len()
                ),
            ));
        }
        let layers = image
            .layers()
            .iter()
            .zip(diff_ids)
            .map(|(d, diff_id)| {
                Ok(LayerDescriptor {
                    digest: self.descriptor_digest(d)?,
                    media_type: d.media_type().to_string(),
                    size: d.size(),
                    diff_id: diff_id.parse().map_err(|source| RegistryError::BadDigest {
                        reference: name.clone(),
                        source,
                    })?,
                    urls: d.urls().clone().unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, RegistryError>>()?;
        let platform = match chosen.take() {
            Some(chosen) => chosen,
            None => {
                let offered = Platform {
                    os: config.os().to_string(),
                    architecture: config.architecture().to_string(),
                    variant: config.variant().clone().filter(|v| !v.is_empty()),
                };
                // Refused rather than warned about: a mount of another platform's binaries
                // fails only later, inside the container, with "exec format error".
                if let Some(wanted) = platform.filter(|w| !w.accepts(&offered)) {
                    return Err(RegistryError::SinglePlatformMismatch {
                        reference: name,
                        wanted: wanted.to_string(),
                        offered: offered.to_string(),
                    });
                }
                offered
            }
        };
        Ok(ResolvedImage {
            reference: name,
            digest,
            media_type,
            index_digest,
            platform,
            config: config_ref,
            layers,
            config_json,
        })
    }

    /// Fetches a manifest by tag or digest; returns it with its media type
    /// and digest (checked against the digest asked for, if any).
    fn fetch_manifest(&self, key: &str) -> Result<(Manifest, String, Digest), RegistryError> {
        let t = &self.transport;
        let url = t.url(&format!("v2/{}/manifests/{key}", t.repository()))?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(manifest::ACCEPT));
        let by_digest = key.parse::<Digest>().ok();
        let (body, content_type, header_digest) = t
            .with_retries("manifest", || {
                let resp = t.get_metadata(&url, headers.clone(), "manifest")?;
                let content_type =
                    header(resp.headers(), CONTENT_TYPE.as_str()).unwrap_or_default();
                let header_digest = header(resp.headers(), "docker-content-digest");
                let body = blob::read_body(resp, MAX_MANIFEST_SIZE, "manifest", &url, t)?;
                Ok((body, content_type, header_digest))
            })
            .map_err(|e| self.not_found(e, key, by_digest.is_some()))?;
        // A signed schema 1 manifest's digest covers its payload without the
        // signatures, so its body never matches: say what it is instead.
        if manifest::is_schema1(&body, &content_type) {
            return Err(RegistryError::Schema1 {
                reference: self.reference.to_string(),
            });
        }
        let actual = Digest::of(&body);
        let expected = match by_digest {
            Some(d) => Some(d),
            None => header_digest.as_deref().and_then(|h| h.parse().ok()),
        };
        if let Some(expected) = expected.filter(|e| *e != actual) {
            return Err(RegistryError::DigestMismatch {
                what: format!("manifest {key} of {}", self.reference),
                expected,
                actual,
            });
        }
        let (manifest, media_type) =
            manifest::parse(&self.reference.to_string(), &body, &content_type)?;
        Ok((manifest, media_type, actual))
    }

    /// Reads a small blob (a config) whole, as metadata (within
    /// `--timeout`), and checks its size and digest.
    pub fn fetch_blob(
        &self,
        digest: &Digest,
        size: u64,
        what: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let t = &self.transport;
        let url = blob::blob_url(t, digest)?;
        let body = t
            .with_retries(what, || {
                let resp = t.get_metadata(&url, HeaderMap::new(), what)?;
                blob::read_body(resp, size, what, &url, t)
            })
            .map_err(|e| blob::map_blob_404(t, digest, e))?;
        let actual = Digest::of(&body);
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                what: format!("{what} {digest}"),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(body)
    }

    /// A sequential reader over a whole blob that resumes after a broken
    /// connection; the caller verifies what it reads.
    pub fn open_blob(&self, digest: &Digest, size: u64) -> Result<BlobStream, RegistryError> {
        BlobStream::open(self.transport.clone(), digest.clone(), size, 0, size)
    }

    /// Like [`RegistryClient::open_blob`], for bytes `start..end` only.
    pub fn open_blob_range(
        &self,
        digest: &Digest,
        size: u64,
        start: u64,
        end: u64,
    ) -> Result<BlobStream, RegistryError> {
        BlobStream::open(self.transport.clone(), digest.clone(), size, start, end)
    }

    /// Random access to a blob by Range requests.
    pub fn blob(&self, digest: &Digest, size: u64) -> HttpBlob {
        HttpBlob::new(self.transport.clone(), digest.clone(), size)
    }

    fn descriptor_digest(&self, d: &Descriptor) -> Result<Digest, RegistryError> {
        d.digest()
            .to_string()
            .parse()
            .map_err(|source| RegistryError::BadDigest {
                reference: self.reference.to_string(),
                source,
            })
    }

    fn invalid(&self, what: &str, detail: String) -> RegistryError {
        RegistryError::Invalid {
            reference: self.reference.to_string(),
            what: what.to_string(),
            detail,
        }
    }

    /// Whether the registry says the repository does not exist. Distribution
    /// answers MANIFEST_UNKNOWN for any manifest of a missing repository;
    /// only its tag list says NAME_UNKNOWN.
    fn repository_unknown(&self) -> bool {
        let t = &self.transport;
        let Ok(url) = t.url(&format!("v2/{}/tags/list", t.repository())) else {
            return false;
        };
        matches!(
            t.get_metadata(&url, HeaderMap::new(), "tag list"),
            Err(RegistryError::Http { status: 404, detail, .. }) if detail.contains("NAME_UNKNOWN")
        )
    }

    /// Turns a 404 for a manifest into the error a user can act on.
    fn not_found(&self, e: RegistryError, key: &str, by_digest: bool) -> RegistryError {
        let RegistryError::Http {
            status: 404,
            detail,
            ..
        } = &e
        else {
            return e;
        };
        let host = self.reference.registry.clone();
        let repository = self.reference.repository.clone();
        if detail.contains("NAME_UNKNOWN") || self.repository_unknown() {
            RegistryError::RepositoryNotFound { host, repository }
        } else if by_digest {
            RegistryError::ManifestNotFound {
                host,
                repository,
                digest: key.to_string(),
            }
        } else {
            RegistryError::TagNotFound {
                host,
                repository,
                tag: key.to_string(),
            }
        }
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
