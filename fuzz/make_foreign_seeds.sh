#!/usr/bin/env bash
# Writes the seed corpus of the foreign-index fuzz targets (fuzz/corpus/{estargz,zstd_chunked,
# ztoc,soci_index}/) with the real tools: a small layer made by GNU tar, made eStargz by
# ctr-remote (on a containerd of this script's own) and zstd:chunked by skopeo; zTOCs encoded by
# flatc from JSON. Needs containerd, stargz-snapshotter, skopeo, flatbuffers-compiler, python3.
set -euo pipefail

fuzz="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
corpus="$fuzz/corpus"
work=$(mktemp -d)
containerd_pid=
cleanup() {
    [ -z "$containerd_pid" ] || kill "$containerd_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$corpus"/{estargz,zstd_chunked,ztoc,soci_index}

# The layer: every entry type, a file big enough to be chunked, an xattr-free PAX name.
root="$work/root"
mkdir -p "$root/etc" "$root/usr/bin"
echo hello >"$root/etc/hello"
ln -s hello "$root/etc/link"
ln "$root/etc/hello" "$root/etc/hard"
head -c 20000 /dev/urandom >"$root/usr/bin/tool"
: >"$root/etc/empty"
mkfifo "$root/fifo"
tar -C "$root" --owner=0 --group=0 --mtime=@1700000000 --format=pax -cf "$work/layer.tar" .
skopeo copy -q "tarball:$work/layer.tar" "oci:$work/oci:v1"

# eStargz, whole and with the file cut in 8000-byte chunks.
cat >"$work/containerd.toml" <<TOML
version = 2
root = "$work/ctd/root"
state = "$work/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$work/c.sock"
[ttrpc]
  address = "$work/c.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
TOML
containerd --config "$work/containerd.toml" >"$work/containerd.log" 2>&1 &
containerd_pid=$!
ctr() { ctr-remote -a "$work/c.sock" "$@"; }
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
tar -C "$work/oci" -cf "$work/oci.tar" .
ctr images import --no-unpack --base-name seed/layer "$work/oci.tar" >/dev/null
# layer_blob LAYOUT: the path of the only layer blob of an OCI layout.
layer_blob() {
    python3 - "$1" <<'PY'
import json, sys
d = sys.argv[1]
m = json.load(open(f"{d}/index.json"))["manifests"][0]["digest"].split(":")[1]
l = json.load(open(f"{d}/blobs/sha256/{m}"))["layers"][0]["digest"].split(":")[1]
print(f"{d}/blobs/sha256/{l}")
PY
}
for variant in whole:0 chunked:8000; do
    name=${variant%%:*}
    ctr images convert --estargz --oci --estargz-chunk-size "${variant#*:}" seed/layer:v1 "seed/layer:$name" >/dev/null
    ctr images export "$work/$name.tar" "seed/layer:$name"
    mkdir -p "$work/$name" && tar -C "$work/$name" -xf "$work/$name.tar"
    cp "$(layer_blob "$work/$name")" "$corpus/estargz/ctr-remote-$name"
done

skopeo copy -q --dest-compress-format zstd:chunked "oci:$work/oci:v1" "oci:$work/zstd:v1"
cp "$(layer_blob "$work/zstd")" "$corpus/zstd_chunked/skopeo"

# zTOCs: the gzip layer skopeo wrote, one checkpoint after its 10-byte header (zinfo v2 and v1).
gzip_layer=$(layer_blob "$work/oci")
for version in 2 1; do
    python3 - "$gzip_layer" "$work/layer.tar" "$version" >"$work/ztoc.json" <<'PY'
import hashlib, json, struct, sys
blob = open(sys.argv[1], "rb").read()
tar = open(sys.argv[2], "rb").read()
zinfo = struct.pack("<iq", 1, 1 << 22)
if sys.argv[3] == "2":
    zinfo += struct.pack("<qqB", 10, 0, 0) + bytes(32768)
print(json.dumps({
    "version": "0.9", "build_tool_identifier": "AWS SOCI CLI v0.2",
    "compressed_archive_size": len(blob), "uncompressed_archive_size": len(tar),
    "toc": {"metadata": [
        {"name": "etc/", "type": "dir", "mode": 493, "mod_time": "2023-11-14T22:13:20Z"},
        {"name": "etc/hello", "type": "reg", "uncompressed_offset": 1536, "uncompressed_size": 6,
         "mode": 420, "mod_time": "2023-11-14T22:13:20Z",
         "xattrs": [{"key": "SCHILY.xattr.user.x", "value": "y"}]},
        {"name": "etc/link", "type": "symlink", "linkname": "hello", "mode": 511},
        {"name": "dev/null", "type": "char", "devmajor": 1, "devminor": 3, "mode": 438}]},
    "compression_info": {"max_span_id": 0,
        "span_digests": ["sha256:" + hashlib.sha256(blob[10:]).hexdigest()],
        "checkpoints": list(zinfo)}}))
PY
    flatc -b -o "$work" "$fuzz/../src/foreign/ztoc.fbs" "$work/ztoc.json"
    cp "$work/ztoc.bin" "$corpus/ztoc/flatc-zinfo-v$version"
done

empty=sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a
ztoc_digest=sha256:$(sha256sum "$corpus/ztoc/flatc-zinfo-v2" | cut -d' ' -f1)
layer_digest=sha256:$(sha256sum "$gzip_layer" | cut -d' ' -f1)
for version in 1 2; do
    subject=
    [ "$version" = 2 ] || subject=",\"subject\":{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"$layer_digest\",\"size\":500}"
    printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.amazon.soci.index.v$version+json\",\"digest\":\"$empty\",\"size\":2},\"layers\":[{\"mediaType\":\"application/octet-stream\",\"digest\":\"$ztoc_digest\",\"size\":$(stat -c %s "$corpus/ztoc/flatc-zinfo-v2"),\"annotations\":{\"com.amazon.soci.image-layer-digest\":\"$layer_digest\",\"com.amazon.soci.image-layer-mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\"}}]$subject,\"annotations\":{\"com.amazon.soci.build-tool-identifier\":\"AWS SOCI CLI v0.2\"}}" >"$corpus/soci_index/v$version"
done
echo "wrote the seeds of estargz, zstd_chunked, ztoc and soci_index under $corpus"
