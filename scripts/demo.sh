#!/usr/bin/env bash
# The main job on a built-in demo: start a local registry, build and push a small busybox
# image to it, then look inside it, mount it and run a program from it with chroot.
# Runs on a fresh Debian 12 machine as root; installs what it needs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_packages docker-registry skopeo umoci busybox-static fuse3 runc gcc libc6-dev ca-certificates
export PATH="$HOME/.cargo/bin:$PATH"

echo "== building lazypull"
cargo build --release --quiet
lazypull="$PWD/target/release/lazypull"

work=$(mktemp -d /tmp/lazypull-demo.XXXXXX)
registry_pid=""
cleanup() {
    if mountpoint -q "$work/mnt" 2>/dev/null; then "$lazypull" umount "$work/mnt" || true; fi
    if [ -n "$registry_pid" ]; then
        kill "$registry_pid" 2>/dev/null || true
        wait "$registry_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== starting a local registry (docker-registry, storage in $work/registry)"
start_registry "$work"
addr=$registry_addr
echo "registry at $addr"

echo "== building the demo image (busybox, two layers) with umoci"
umoci init --layout "$work/layout"
umoci new --image "$work/layout:demo"
umoci unpack --image "$work/layout:demo" "$work/bundle" >/dev/null
mkdir -p "$work/bundle/rootfs/bin"
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
for applet in sh ls cat echo uname wc; do ln -s busybox "$work/bundle/rootfs/bin/$applet"; done
umoci repack --image "$work/layout:demo" "$work/bundle"
umoci unpack --image "$work/layout:demo" "$work/bundle2" >/dev/null
mkdir -p "$work/bundle2/rootfs/etc"
echo "hello from a lazily mounted image" >"$work/bundle2/rootfs/etc/motd"
umoci repack --image "$work/layout:demo" "$work/bundle2"
umoci config --image "$work/layout:demo" --config.cmd /bin/sh --config.env DEMO=1
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:demo" "docker://$addr/demo/busybox:1.0"

echo "== lazypull inspect $addr/demo/busybox:1.0"
"$lazypull" inspect "$addr/demo/busybox:1.0"

echo "== lazypull ls -R $addr/demo/busybox:1.0 /etc (the merged tree, from the layer index)"
"$lazypull" ls -R --cache-dir "$work/cache" "$addr/demo/busybox:1.0" /etc

echo "== lazypull mount, then chroot into it"
mkdir -p "$work/mnt"
"$lazypull" mount --cache-dir "$work/cache" "$addr/demo/busybox:1.0" "$work/mnt"
chroot "$work/mnt" /bin/sh -c 'cat /etc/motd; echo "busybox says: $(uname -s) $(ls /bin | wc -l) programs in /bin"'
"$lazypull" status "$work/mnt"
"$lazypull" umount "$work/mnt"

echo "== the lazy path: drop the layer blobs (indexes stay), mount again, read on demand"
"$lazypull" cache prune --blobs --cache-dir "$work/cache"
"$lazypull" mount --cache-dir "$work/cache" "$addr/demo/busybox:1.0" "$work/mnt"
"$lazypull" status "$work/mnt"
chroot "$work/mnt" /bin/cat /etc/motd
for _ in $(seq 50); do
    "$lazypull" status --json "$work/mnt" | grep -Eq '"state": *"(fetching|verifying)"' || break
    sleep 0.2
done
"$lazypull" status "$work/mnt"
"$lazypull" umount "$work/mnt"

echo "== lazypull run: the image as a container under runc (overlay over the mount)"
"$lazypull" run --rm --cache-dir "$work/cache" "$addr/demo/busybox:1.0" \
    /bin/sh -c 'echo "hello from a container: $(cat /etc/motd)"; echo "a write lands in the container upper dir" >/written; cat /written'
echo "== done"
