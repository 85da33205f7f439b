//! Image references (`[registry/]name[:tag][@digest]`) with docker.io's
//! defaults, parsed and checked before any network traffic.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves the registry API for docker.io.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid reference {reference:?}: {reason}")]
    Invalid { reference: String, reason: String },
    #[error("invalid reference {reference:?}: {source}")]
    Digest {
        reference: String,
        source: DigestError,
    },
}

/// A parsed image reference. `registry` and `repository` are normalised
/// (`alpine` becomes `docker.io` + `library/alpine`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// The host (and port) to send registry API requests to.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the manifests endpoint for: the digest wins over the tag.
    pub fn manifest_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The tag, with the default applied when neither tag nor digest was given.
    pub fn tag_or_default(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t),
            (None, None) => Some(DEFAULT_TAG),
            (None, Some(_)) => None,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = self.tag_or_default() {
            write!(f, ":{tag}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ReferenceError::Invalid {
            reference: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(invalid("empty reference"));
        }
        if let Some((scheme, rest)) = input.split_once("://") {
            let http = if scheme.eq_ignore_ascii_case("http") {
                " (plain http is tried by itself for a registry on loopback, and for any with \
                 --insecure)"
            } else {
                ""
            };
            return Err(invalid(&format!(
                "a reference takes no scheme: use {rest:?}{http}"
            )));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::Digest {
                        reference: input.to_string(),
                        source,
                    })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A tag follows the last ':' only if no '/' comes after it (else the
        // ':' belonged to a registry port).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(|r| invalid(&r))?;
        }
        let (registry, repository) = split_registry(name);
        check_registry(registry).map_err(|r| invalid(&r))?;
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        check_repository(&repository).map_err(|r| invalid(&r))?;
        Ok(Self {
            registry: registry.to_string(),
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }
}

/// Splits off the registry host: the first component is one only if it has
/// a '.' or a ':' or is `localhost`.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            let registry = if first == "index.docker.io" {
                DOCKER_HUB
            } else {
                first
            };
            (registry, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must be 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
        ))
    }
}

fn check_registry(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || host.starts_with('[') => (n, Some(p)),
        _ => (host, None),
    };
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("registry port {port:?} is not a number"));
    }
    let ipv6 = name.starts_with('[') && name.ends_with(']');
    let ok = !name.is_empty()
        && (ipv6
            || name.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    if ok {
        Ok(())
    } else {
        Err(format!("registry host {host:?} is not a valid host name"))
    }
}

fn check_repository(repo: &str) -> Result<(), String> {
    if repo.len() > MAX_NAME_LEN {
        return Err(format!(
            "repository name is longer than {MAX_NAME_LEN} characters"
        ));
    }
    if repo.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("repository name {repo:?} must be lowercase"));
    }
    for component in repo.split('/') {
        if !valid_component(component) {
            return Err(format!(
                "repository component {component:?} must be lowercase letters and digits, \
                 separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_defaults() {
        let r = parse("alpine");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/alpine");
        assert_eq!(r.manifest_key(), "latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        assert_eq!(parse("user/app:1").repository, "user/app");
        assert_eq!(
            parse("index.docker.io/library/alpine").registry,
            "docker.io"
        );
    }

    #[test]
    fn registry_with_port_and_tag() {
        let r = parse("localhost:5000/team/app:1.4");
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("1.4"));
        let r = parse("127.0.0.1:5000/app");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_key(), "latest");
        assert_eq!(parse("localhost/app").registry, "localhost");
        assert_eq!(parse("[::1]:5000/app").registry, "[::1]:5000");
    }

    #[test]
    fn digest_wins_over_tag() {
        let r = parse(&format!("example.com/app:1.0@{D}"));
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert_eq!(r.manifest_key(), D);
        let r = parse(&format!("app@{D}"));
        assert_eq!(r.to_string(), format!("docker.io/library/app@{D}"));
    }

    #[test]
    fn malformed_references_are_refused_with_a_reason() {
        let err = |s: &str| s.parse::<Reference>().unwrap_err().to_string();
        assert!(err("example.com/Team/App").contains("must be lowercase"));
        assert!(err("app@sha256:123").contains("invalid digest"));
        assert!(err("app:-bad").contains("tag"));
        assert!(err("example.com:port/app").contains("port"));
        assert!(err("-example.com/app").contains("not a valid host name"));
        assert!(err("example-.com/app").contains("not a valid host name"));
        assert!(err("a//b").contains("component"));
        assert!(err("").contains("empty"));
        assert!(err("app@md5:abcd").contains("unsupported digest algorithm"));
    }

    #[test]
    fn a_scheme_is_refused_with_the_reference_without_it() {
        let err = |s: &str| s.parse::<Reference>().unwrap_err().to_string();
        let msg = err("http://localhost:5000/team/app:1.4");
        assert!(
            msg.contains(r#"takes no scheme: use "localhost:5000/team/app:1.4""#)
                && msg.contains("--insecure"),
            "{msg}"
        );
        let msg = err("https://registry.example/app");
        assert!(
            msg.contains(r#"use "registry.example/app""#) && !msg.contains("--insecure"),
            "{msg}"
        );
    }
}
