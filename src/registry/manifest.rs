//! Manifest media types, parsing and platform choice.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Serialize;

use super::error::RegistryError;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Everything we can read, best first; schema 1 is listed so the registry
/// answers with it (and we can say why we refuse) rather than a 404.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json;q=0.9, \
    application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.1, \
    application/vnd.docker.distribution.manifest.v1+json;q=0.1";

/// Largest manifest we read: real ones are a few KiB.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

pub enum Manifest {
    Index(Box<ImageIndex>),
    Image(Box<ImageManifest>),
}

/// Parses a manifest body. The media type comes from the body when it names
/// one, else from the Content-Type header.
pub fn parse(
    reference: &str,
    body: &[u8],
    content_type: &str,
) -> Result<(Manifest, String), RegistryError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let invalid = |detail: String| RegistryError::Invalid {
        reference: reference.to_string(),
        what: "manifest".into(),
        detail,
    };
    let probe: Probe = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    let header_type = content_type.split(';').next().unwrap_or("").trim();
    if is_schema1(body, content_type) {
        return Err(RegistryError::Schema1 {
            reference: reference.to_string(),
        });
    }
    let media_type = probe.media_type.unwrap_or_else(|| {
        // Without a mediaType field, an index is told apart by its manifests.
        if probe.manifests.is_some() && !matches!(header_type, OCI_INDEX | DOCKER_LIST) {
            OCI_INDEX.to_string()
        } else if header_type.is_empty() {
            OCI_MANIFEST.to_string()
        } else {
            header_type.to_string()
        }
    });
    let manifest = match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => Manifest::Index(Box::new(
            serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?,
        )),
        OCI_MANIFEST | DOCKER_MANIFEST => Manifest::Image(Box::new(
            serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?,
        )),
        other => {
            return Err(RegistryError::UnsupportedManifest {
                reference: reference.to_string(),
                media_type: other.to_string(),
            });
        }
    };
    Ok((manifest, media_type))
}

/// Whether a manifest is Docker schema 1, by its Content-Type or its
/// `schemaVersion`.
pub fn is_schema1(body: &[u8], content_type: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Version {
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
    }
    let header_type = content_type.split(';').next().unwrap_or("").trim();
    [DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED].contains(&header_type)
        || serde_json::from_slice::<Version>(body).is_ok_and(|v| v.schema_version == Some(1))
}

/// `os/architecture[/variant]`, as `--platform` takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this machine, in GOARCH names as indexes use them.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Self {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    fn of(descriptor: &Descriptor) -> Option<Self> {
        let p = descriptor.platform().as_ref()?;
        Some(Self {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone().filter(|v| !v.is_empty()),
        })
    }

    /// Whether an index entry for `offered` serves a request for `self`. A
    /// missing variant on either side matches, except that arm64's implicit
    /// variant is v8.
    pub(super) fn accepts(&self, offered: &Platform) -> bool {
        if self.os != offered.os || self.architecture != offered.architecture {
            return false;
        }
        match (&self.variant, &offered.variant) {
            (Some(want), Some(have)) => want == have,
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
            (None, _) => true,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(RegistryError::BadPlatform(s.to_string()));
        }
        Ok(Self {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

/// Picks the manifest for `wanted` from an index. Among several matches the
/// first wins, as docker does; entries without a platform (attestations)
/// are never chosen.
pub fn choose<'a>(
    reference: &str,
    index: &'a ImageIndex,
    wanted: &Platform,
) -> Result<(&'a Descriptor, Platform), RegistryError> {
    let offered: Vec<(&Descriptor, Platform)> = index
        .manifests()
        .iter()
        .filter_map(|d| Platform::of(d).map(|p| (d, p)))
        .filter(|(_, p)| p.os != "unknown")
        .collect();
    // An exact variant match beats a variant-less entry.
    let exact = offered.iter().find(|(_, p)| p == wanted);
    let pick = exact.or_else(|| offered.iter().find(|(_, p)| wanted.accepts(p)));
    match pick {
        Some((d, p)) => Ok((*d, p.clone())),
        None => Err(RegistryError::NoMatchingPlatform {
            reference: reference.to_string(),
            wanted: wanted.to_string(),
            available: offered.iter().map(|(_, p)| p.to_string()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[&str]) -> ImageIndex {
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let parts: Vec<&str> = p.split('/').collect();
                let mut platform = serde_json::json!({"os": parts[0], "architecture": parts[1]});
                if let Some(v) = parts.get(2) {
                    platform["variant"] = (*v).into();
                }
                serde_json::json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": format!("sha256:{:064x}", i),
                    "size": 100,
                    "platform": platform,
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap()
    }

    #[test]
    fn chooses_by_os_architecture_and_variant() {
        let idx = index(&[
            "linux/amd64",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm64/v8",
        ]);
        let pick = |p: &str| choose("r", &idx, &p.parse().unwrap()).map(|(_, p)| p.to_string());
        assert_eq!(pick("linux/amd64").unwrap(), "linux/amd64");
        assert_eq!(pick("linux/arm/v7").unwrap(), "linux/arm/v7");
        assert_eq!(pick("linux/arm64").unwrap(), "linux/arm64/v8");
        let err = pick("linux/s390x").unwrap_err().to_string();
        assert!(err.contains("no image for platform linux/s390x"), "{err}");
        assert!(err.contains("linux/arm/v6, linux/arm/v7"), "{err}");
    }

    #[test]
    fn arm64_without_variant_matches_v8() {
        let idx = index(&["linux/arm64"]);
        let (_, p) = choose("r", &idx, &"linux/arm64/v8".parse().unwrap()).unwrap();
        assert_eq!(p.to_string(), "linux/arm64");
    }

    #[test]
    fn schema1_is_refused_with_advice() {
        let body = br#"{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}"#;
        let err = parse("r", body, DOCKER_SCHEMA1_SIGNED)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("schema 1") && err.contains("re-push"), "{err}");
    }

    #[test]
    fn bad_platform_flag() {
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v1/x".parse::<Platform>().is_err());
        assert_eq!(
            "linux/arm/v7"
                .parse::<Platform>()
                .unwrap()
                .variant
                .as_deref(),
            Some("v7")
        );
    }
}
