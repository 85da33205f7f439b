//! What can go wrong talking to a registry, each with what to do about it.

use std::time::Duration;

use crate::digest::{Digest, DigestError};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "cannot connect to registry at {host}: {detail}; is the registry running and reachable?"
    )]
    Connect { host: String, detail: String },

    #[error(
        "TLS handshake with {host} failed: {detail}; if the registry uses a private CA, put it in \
         /etc/containers/certs.d/{host}/ca.crt (or /etc/docker/certs.d/{host}/ca.crt), or pass --insecure"
    )]
    Tls { host: String, detail: String },

    #[error(
        "TLS handshake with {host} failed: its certificate is a CA certificate (CA:TRUE, which \
         `openssl req -x509` writes unless told otherwise), and a CA cannot also be the server's \
         own certificate, trusted or not. Make a CA and a server certificate signed by it \
         (CA:FALSE, the registry's name or IP in subjectAltName; README.md, Registries and \
         credentials, shows how), serve the server certificate and put the CA in \
         /etc/containers/certs.d/{host}/ca.crt; or pass --insecure"
    )]
    TlsCaAsServerCert { host: String },

    #[error("registry {host} did not answer within {timeout:?} ({what})")]
    Timeout {
        host: String,
        what: String,
        timeout: Duration,
    },

    #[error(
        "registry {host} did not send the whole {what} within {limit:?} (it stalled or came too \
         slowly): a manifest, config or token must arrive whole within --timeout"
    )]
    TooSlow {
        host: String,
        what: String,
        limit: Duration,
    },

    #[error(
        "authentication required by {host} for {repository}: run `docker login {host}` or set \
         REGISTRY_AUTH_FILE to a containers auth.json with credentials for it"
    )]
    Unauthorized { host: String, repository: String },

    #[error(
        "{host} rejected the credentials for {repository} (401): check them with `docker login {host}`"
    )]
    CredentialsRejected { host: String, repository: String },

    #[error("access to {repository} on {host} is denied (403): the credentials lack pull access")]
    Denied { host: String, repository: String },

    #[error("tag {tag:?} not found in repository {repository} on {host}")]
    TagNotFound {
        host: String,
        repository: String,
        tag: String,
    },

    #[error("manifest {digest} not found in repository {repository} on {host}")]
    ManifestNotFound {
        host: String,
        repository: String,
        digest: String,
    },

    #[error(
        "repository {repository} not found on {host}: check the name, or log in if it is private"
    )]
    RepositoryNotFound { host: String, repository: String },

    #[error("blob {digest} not found in repository {repository} on {host}")]
    BlobNotFound {
        host: String,
        repository: String,
        digest: Digest,
    },

    #[error("{what} {url} answered HTTP {status}{}", detail_suffix(.detail))]
    Http {
        what: String,
        url: String,
        status: u16,
        detail: String,
    },

    #[error("{what} {url} failed: {detail}")]
    Transfer {
        what: String,
        url: String,
        detail: String,
    },

    #[error("{what} has digest {actual}, expected {expected}: the registry served wrong content")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },

    #[error("{what} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    #[error(
        "{reference} is a Docker schema 1 manifest, which is unsupported: re-push the image with a \
         current docker, podman or skopeo (schema 2 or OCI)"
    )]
    Schema1 { reference: String },

    #[error("{reference}: unsupported manifest media type {media_type:?}")]
    UnsupportedManifest {
        reference: String,
        media_type: String,
    },

    #[error("{reference}: invalid {what}: {detail}")]
    Invalid {
        reference: String,
        what: String,
        detail: String,
    },

    #[error("{reference}: {source}")]
    BadDigest {
        reference: String,
        source: DigestError,
    },

    #[error("{reference} has no image for platform {wanted}; it offers: {}", .available.join(", "))]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        available: Vec<String>,
    },

    #[error(
        "{reference} is a single-platform image for {offered}, not {wanted}: drop --platform \
         {wanted} to use it as it is, or name an image (or index) built for {wanted}"
    )]
    SinglePlatformMismatch {
        reference: String,
        wanted: String,
        offered: String,
    },

    #[error("invalid --platform {0:?}: expected OS/ARCH or OS/ARCH/VARIANT, e.g. linux/arm64/v8")]
    BadPlatform(String),

    #[error("reading credentials for {host}: {detail}")]
    Credentials { host: String, detail: String },

    #[error("building the HTTP client for {host}: {detail}")]
    Client { host: String, detail: String },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl RegistryError {
    /// A failed TLS handshake, with its own advice for a CA certificate served as the server's.
    pub(super) fn tls(host: String, detail: String, error: &rustls::Error) -> Self {
        let ca_as_server = matches!(
            error,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))
                if matches!(
                    other.0.downcast_ref::<webpki::Error>(),
                    Some(webpki::Error::CaUsedAsEndEntity)
                )
        );
        if ca_as_server {
            Self::TlsCaAsServerCert { host }
        } else {
            Self::Tls { host, detail }
        }
    }

    /// Whether trying the same request again may succeed (network trouble,
    /// overload), as opposed to an answer that will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. }
            | Self::Timeout { .. }
            | Self::TooSlow { .. }
            | Self::Transfer { .. } => true,
            Self::Http { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}
