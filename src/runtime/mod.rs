//! Running an image with a container runtime: an OCI bundle whose rootfs is
//! an overlay over a lazypull mount and whose `config.json` comes from the
//! image config.

mod overlay;
mod spec;
mod user;

use std::path::PathBuf;

pub use overlay::{BundleLayout, is_mount_point, mount_overlay, unmount};
pub use spec::{
    DEFAULT_CAPABILITIES, DEFAULT_PATH, SpecOptions, build_spec, process_args, process_cwd,
    process_env, spec_for_image, spec_json,
};
pub use user::{ExecUser, read_in_root, resolve_user, resolve_user_in};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "the image has no command (neither Entrypoint nor Cmd): give one after the image reference"
    )]
    NoCommand,
    #[error("user {user:?} not found in the image's /etc/passwd{}", if *no_passwd { " (the image has no /etc/passwd)" } else { "" })]
    UserNotFound { user: String, no_passwd: bool },
    #[error("group {group:?} not found in the image's /etc/group{}", if *no_group { " (the image has no /etc/group)" } else { "" })]
    GroupNotFound { group: String, no_group: bool },
    #[error("invalid user {user:?}: {reason}")]
    BadUser { user: String, reason: String },
    #[error("reading {path} in the image: {source}")]
    ReadImageFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot use {path}: {reason}")]
    BadPath { path: PathBuf, reason: &'static str },
    #[error("mounting the overlay on {target}: {source}")]
    Mount {
        target: PathBuf,
        source: std::io::Error,
    },
    #[error("unmounting {target}: {}", if *busy { "it is busy (a process still uses it)".to_string() } else { source.to_string() })]
    Unmount {
        target: PathBuf,
        busy: bool,
        source: std::io::Error,
    },
    #[error("building the runtime spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("writing the runtime spec: {0}")]
    Json(#[from] serde_json::Error),
}
