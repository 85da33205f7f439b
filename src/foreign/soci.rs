//! SOCI index manifests: an OCI image manifest whose config media type (or `artifactType`) marks
//! it as a SOCI index and whose layers are zTOC blobs, each annotated with the digest of the
//! image layer it indexes. Version 1 points at its image through `subject` (found through the
//! referrers API); version 2 is named by the image manifest's [`INDEX_DIGEST_ANNOTATION`].
//! Layers SOCI did not index (it skips small ones) have no zTOC.

use std::collections::HashMap;

use oci_spec::image::{Descriptor, ImageManifest};

use crate::digest::Digest;

pub const INDEX_V1: &str = "application/vnd.amazon.soci.index.v1+json";
pub const INDEX_V2: &str = "application/vnd.amazon.soci.index.v2+json";
/// On a zTOC descriptor: the digest of the image layer it indexes.
pub const LAYER_DIGEST_ANNOTATION: &str = "com.amazon.soci.image-layer-digest";
/// On a zTOC descriptor: the image layer's media type.
pub const LAYER_MEDIA_TYPE_ANNOTATION: &str = "com.amazon.soci.image-layer-mediaType";
/// On a zTOC descriptor: `true` when the layer has no xattrs (and no opaque directories).
pub const DISABLE_XATTRS_ANNOTATION: &str = "com.amazon.soci.disable-xattrs";
/// On an image manifest (version 2): the digest of its SOCI index.
pub const INDEX_DIGEST_ANNOTATION: &str = "com.amazon.soci.index-digest";

#[derive(Debug, thiserror::Error)]
pub enum SociError {
    #[error("the SOCI index is not an OCI image manifest: {0}")]
    Manifest(String),
    #[error(
        "not a SOCI index: its config media type is {config:?} and its artifactType {artifact:?}"
    )]
    NotSoci {
        config: String,
        artifact: Option<String>,
    },
    #[error("SOCI index layer {index}: {reason}")]
    Ztoc { index: usize, reason: String },
    #[error("image manifest annotation {INDEX_DIGEST_ANNOTATION}: {0}")]
    IndexDigest(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SociVersion {
    V1,
    V2,
}

/// What a SOCI index says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SociIndex {
    pub version: SociVersion,
    /// The image manifest a version 1 index names as its subject.
    pub subject: Option<Digest>,
    pub ztocs: Vec<ZtocDescriptor>,
}

/// One zTOC blob of a SOCI index and the image layer it indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZtocDescriptor {
    pub digest: Digest,
    pub size: u64,
    pub layer: Digest,
    pub layer_media_type: Option<String>,
    pub disable_xattrs: bool,
}

impl SociIndex {
    /// The zTOC of image layer `layer`, if the index has one.
    pub fn ztoc_for(&self, layer: &Digest) -> Option<&ZtocDescriptor> {
        self.ztocs.iter().find(|z| z.layer == *layer)
    }
}

/// Parses a SOCI index manifest (either version).
pub fn parse_index(bytes: &[u8]) -> Result<SociIndex, SociError> {
    let manifest: ImageManifest =
        serde_json::from_slice(bytes).map_err(|e| SociError::Manifest(e.to_string()))?;
    let config = manifest.config().media_type().to_string();
    let artifact = manifest.artifact_type().as_ref().map(ToString::to_string);
    let version = [Some(config.as_str()), artifact.as_deref()]
        .into_iter()
        .flatten()
        .find_map(|t| match t {
            INDEX_V1 => Some(SociVersion::V1),
            INDEX_V2 => Some(SociVersion::V2),
            _ => None,
        })
        .ok_or_else(|| SociError::NotSoci {
            config: config.clone(),
            artifact: artifact.clone(),
        })?;
    let subject = manifest
        .subject()
        .as_ref()
        .map(|s| digest_of(s).map_err(SociError::Manifest))
        .transpose()?;
    let ztocs = manifest
        .layers()
        .iter()
        .enumerate()
        .map(|(index, layer)| {
            ztoc_descriptor(layer).map_err(|reason| SociError::Ztoc { index, reason })
        })
        .collect::<Result<_, _>>()?;
    Ok(SociIndex {
        version,
        subject,
        ztocs,
    })
}

fn digest_of(descriptor: &Descriptor) -> Result<Digest, String> {
    let text = descriptor.digest().to_string();
    text.parse().map_err(|e| format!("digest {text:?}: {e}"))
}

fn ztoc_descriptor(layer: &Descriptor) -> Result<ZtocDescriptor, String> {
    let empty = HashMap::new();
    let annotations = layer.annotations().as_ref().unwrap_or(&empty);
    let image_layer = annotations
        .get(LAYER_DIGEST_ANNOTATION)
        .ok_or_else(|| format!("no {LAYER_DIGEST_ANNOTATION} annotation"))?;
    Ok(ZtocDescriptor {
        digest: digest_of(layer)?,
        size: layer.size(),
        layer: image_layer
            .parse()
            .map_err(|e| format!("{LAYER_DIGEST_ANNOTATION} {image_layer:?}: {e}"))?,
        layer_media_type: annotations.get(LAYER_MEDIA_TYPE_ANNOTATION).cloned(),
        disable_xattrs: annotations
            .get(DISABLE_XATTRS_ANNOTATION)
            .is_some_and(|v| v == "true"),
    })
}

/// The SOCI index (version 2) an image manifest's annotations name, if any.
pub fn index_digest(
    manifest_annotations: Option<&HashMap<String, String>>,
) -> Result<Option<Digest>, SociError> {
    manifest_annotations
        .and_then(|a| a.get(INDEX_DIGEST_ANNOTATION))
        .map(|text| {
            text.parse()
                .map_err(|e| SociError::IndexDigest(format!("{text:?}: {e}")))
        })
        .transpose()
}

#[cfg(test)]
#[path = "soci_tests.rs"]
mod tests;
