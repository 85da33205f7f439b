#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian 12 machine (run as root, no stdin needed),
# then checks formatting and lints and runs every test. Safe to rerun: installing is skipped
# when everything is already there.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Tools the integration tests drive: a real registry (docker-registry, Distribution 2.8) with
# htpasswd auth (apache2-utils) and TLS (openssl), image builders and the reference unpacker
# (skopeo, umoci), FUSE, a container runtime with a static busybox to run in it. gcc and
# libc6-dev link Rust binaries and build zstd's bundled C sources. debootstrap builds the
# Debian image of tests/debian.rs (from the mirror in this machine's apt sources, once: the
# build is kept in /var/tmp/lazypull-test-debian). tests/tar_corpus.rs reads Go's tar test corpus
# (golang-1.19-src, one file of it bzip2ed) with Go's own reader (golang-1.19-go). The foreign
# index tests make eStargz layers with ctr-remote (stargz-snapshotter) against a containerd of
# their own, zstd:chunked ones with skopeo, and encode SOCI zTOCs with flatc.
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_packages docker-registry skopeo umoci fuse3 apache2-utils openssl runc busybox-static jq \
    curl ca-certificates gcc libc6-dev debootstrap golang-1.19-go golang-1.19-src bzip2 \
    containerd stargz-snapshotter flatbuffers-compiler zstd

# The package starts a registry service on :5000. Tests start registries of their own on free
# ports, so it is only in the way: stop it and keep it from starting at boot.
if [ -d /run/systemd/system ]; then
    as_root systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/docker-registry ]; then
    as_root /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
fi

# Note: skopeo keeps a blob cache in /var/lib/containers/cache and silently reuses blobs it has
# seen before, across repositories and compression formats. The tests never rely on what a
# registry already holds: each starts its own registry with fresh storage.

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
    echo "cargo not found: install the Rust toolchain (rustup, Rust 1.95 with rustfmt and clippy) first" >&2
    exit 1
fi

cargo fmt --all --check
cargo clippy --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast
    # nextest does not run doc tests.
    cargo test --doc
else
    cargo test --no-fail-fast
fi

# The fuzz targets (fuzz/), briefly: the seed corpus plus 20 s of fuzzing each, so a parser
# change that panics on hostile input shows up here. Longer hunts: scripts/fuzz.sh SECONDS.
cargo fmt --manifest-path fuzz/Cargo.toml --check
scripts/fuzz.sh 20
