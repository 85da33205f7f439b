#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/) from scratch.

Tars come from Python's tarfile and GNU tar (ustar, GNU long names, PAX records, hardlinks,
whiteouts, devices); compressed seeds from gzip and the zstd CLI. The seek_index and
index_file seeds hold indexes the library made: see corpus/README.md. Run from anywhere;
needs python3, GNU tar and zstd.
"""

import gzip
import io
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
CORPUS = FUZZ / "corpus"
BLOCK = 512


def trim(tar: bytes) -> bytes:
    """Drops record padding: keeps the data and exactly two zero blocks."""
    end = len(tar)
    while end >= BLOCK and tar[end - BLOCK:end] == bytes(BLOCK):
        end -= BLOCK
    return tar[:end] + bytes(2 * BLOCK)


def build(entries, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return trim(buf.getvalue())


def entry(name, kind=tarfile.REGTYPE, data=None, mode=0o644, **kw):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = kw.pop("mtime", 1_700_000_000)
    for k, v in kw.items():
        setattr(info, k, v)
    if data is not None:
        info.size = len(data)
    return info, data


def base_layer(fmt):
    return build([
        entry("./", tarfile.DIRTYPE, mode=0o755),
        entry("etc/", tarfile.DIRTYPE, mode=0o755),
        entry("etc/hostname", data=b"lazypull\n"),
        entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n", uid=0, gid=0),
        entry("bin/", tarfile.DIRTYPE, mode=0o755),
        entry("bin/busybox", data=b"\x7fELF" + bytes(600), mode=0o755),
        entry("bin/sh", tarfile.SYMTYPE, linkname="busybox", mode=0o777),
        entry("bin/ls", tarfile.LNKTYPE, linkname="bin/busybox", mode=0o755),
        entry("dev/", tarfile.DIRTYPE, mode=0o755),
        entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
        entry("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660),
        entry("run/fifo", tarfile.FIFOTYPE, mode=0o600),
        entry("tmp/", tarfile.DIRTYPE, mode=0o1777),
        entry("usr/bin/passwd", data=b"#!/bin/sh\n", mode=0o4755),
        entry("opaque/keep", data=b"lower\n"),
        entry("opaque/gone", data=b"lower\n"),
    ], fmt)


def upper_layer():
    long = "usr/share/" + "/".join(["a-rather-long-directory-name"] * 5) + "/file.txt"
    return build([
        entry("etc/.wh.hostname", data=b""),
        entry("opaque/.wh..wh..opq", data=b""),
        entry("opaque/new", data=b"upper\n"),
        entry("bin/ls2", tarfile.LNKTYPE, linkname="bin/busybox"),
        entry("bin/.wh.ls", data=b""),
        entry(long, data=b"deep\n", mtime=1_700_000_000.25),
        entry("usr/bin/ping", data=b"\x7fELF", mode=0o755,
              pax_headers={"SCHILY.xattr.security.capability":
                           "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
                           "SCHILY.xattr.user.note": "caf\u00e9"}),
        entry("etc/hostname/child-of-a-file", data=b"x"),
    ])


def gnu_tar(tmp: Path) -> bytes:
    root = tmp / "root"
    (root / "d" / ("n" * 120)).mkdir(parents=True)
    (root / "d" / ("n" * 120) / ("f" * 110)).write_bytes(b"long name\n")
    (root / "d" / "file").write_bytes(b"x" * 700)
    os.link(root / "d" / "file", root / "d" / "hard")
    os.symlink("../" + "t" * 150, root / "d" / "longlink")
    out = subprocess.run(["tar", "--format=gnu", "--sort=name", "--owner=0", "--group=0",
                          "--mtime=@1700000000", "-C", str(root), "-cf", "-", "."],
                         check=True, capture_output=True).stdout
    return trim(out)


def gnu_pax_tar(tmp: Path) -> bytes:
    root = tmp / "root"
    out = subprocess.run(["tar", "--format=pax", "--sort=name", "--owner=0", "--group=0",
                          "--mtime=@1700000000.5", "-C", str(root), "-cf", "-", "d"],
                         check=True, capture_output=True).stdout
    return trim(out)


def zstd(data: bytes, *args) -> bytes:
    return subprocess.run(["zstd", "-q", "-c", *args], input=data, check=True,
                          capture_output=True).stdout


def write(target: str, name: str, data: bytes):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main():
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        tars = {
            "pax": base_layer(tarfile.PAX_FORMAT),
            "gnu": base_layer(tarfile.GNU_FORMAT),
            "ustar": base_layer(tarfile.USTAR_FORMAT),
            "whiteouts-xattrs": upper_layer(),
            "gnutar-longnames": gnu_tar(tmp),
            "gnutar-pax": gnu_pax_tar(tmp),
        }
    for target in ("tar_entries", "tree_build", "gzip_seek"):
        shutil.rmtree(CORPUS / target, ignore_errors=True)
    for name, tar in tars.items():
        write("tar_entries", name + ".tar", tar)
    # Layers laid end to end, bottom first.
    write("tree_build", "base.tar", tars["pax"])
    write("tree_build", "base+upper.tar", tars["pax"] + tars["whiteouts-xattrs"])
    write("tree_build", "gnu+upper+longnames.tar",
          tars["gnu"] + tars["whiteouts-xattrs"] + tars["gnutar-longnames"])
    write("tree_build", "ustar+gnutar-pax.tar", tars["ustar"] + tars["gnutar-pax"])

    # gzip_seek: [compression, span, 8 seed bytes] + stream; compression 0 gzip, 1 zstd, 2 none.
    def seek_seed(kind: int, span: int, stream: bytes) -> bytes:
        return bytes([kind, span]) + struct.pack("<Q", 0x243F6A8885A308D3) + stream

    layer = tars["pax"] + tars["whiteouts-xattrs"]
    members = gzip.compress(tars["pax"], mtime=0) + gzip.compress(tars["gnu"], mtime=0)
    write("gzip_seek", "gzip.bin", seek_seed(0, 4, gzip.compress(layer, mtime=0)))
    write("gzip_seek", "gzip-multimember.bin", seek_seed(0, 0, members))
    write("gzip_seek", "gzip-empty-member.bin",
          seek_seed(0, 1, gzip.compress(b"", mtime=0) + gzip.compress(tars["gnu"], mtime=0)))
    write("gzip_seek", "gzip-stored.bin", seek_seed(0, 2, gzip.compress(layer, 0, mtime=0)))
    write("gzip_seek", "zstd.bin", seek_seed(1, 4, zstd(layer)))
    write("gzip_seek", "zstd-frames.bin",
          seek_seed(1, 0, zstd(tars["pax"]) + zstd(tars["gnu"], "--no-check")))
    write("gzip_seek", "plain.bin", seek_seed(2, 4, tars["gnu"]))

    # Registry answers: manifests, indexes and configs as registries serve them.
    man = CORPUS / "manifest"
    for f in man.glob("*"):
        if f.name.startswith("gen-"):
            f.unlink()
    oci_index, docker_list, oci_manifest, docker_manifest = 0, 1, 2, 3
    digest = "sha256:" + "ab" * 32
    write("manifest", "gen-docker-list.json", bytes([docker_list]) + b"""{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
   "manifests": [
      {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 528,
       "digest": "%s", "platform": {"architecture": "amd64", "os": "linux"}},
      {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 528,
       "digest": "%s", "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}},
      {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 528,
       "digest": "%s", "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}}
   ]
}""" % (digest.encode(), digest.encode(), digest.encode()))
    write("manifest", "gen-docker-manifest.json", bytes([docker_manifest]) + b"""{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
   "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1472,
              "digest": "%s"},
   "layers": [
      {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 3623807,
       "digest": "%s"},
      {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "size": 10,
       "digest": "%s", "urls": ["https://example.invalid/layer"]}
   ]
}""" % (digest.encode(), digest.encode(), digest.encode()))
    write("manifest", "gen-oci-index-attestation.json", bytes([oci_index]) + b"""{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "%s", "size": 1,
     "platform": {"architecture": "amd64", "os": "linux"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "%s", "size": 1,
     "platform": {"architecture": "unknown", "os": "unknown"},
     "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}
  ]
}""" % (digest.encode(), digest.encode()))
    write("manifest", "gen-schema1.json", bytes([4]) + b"""{"schemaVersion": 1, "name": "library/x",
 "tag": "latest", "architecture": "amd64", "fsLayers": [{"blobSum": "%s"}], "history": []}""" %
          digest.encode())
    write("manifest", "gen-zstd-manifest-no-media-type.json", bytes([6]) + b"""{
  "schemaVersion": 2,
  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "%s", "size": 2},
  "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": "%s",
              "size": 7}]
}""" % (digest.encode(), digest.encode()))
    write("manifest", "gen-platform.txt", bytes([oci_manifest]) + b"linux/arm64/v8")

    ref = CORPUS / "reference"
    shutil.rmtree(ref, ignore_errors=True)
    for i, r in enumerate([
        "alpine", "alpine:3.20", "library/alpine@" + digest,
        "docker.io/library/busybox:1.36@" + digest, "index.docker.io/user/app",
        "localhost:5000/team/app:v1.2.3", "127.0.0.1:5000/a/b/c", "registry.example.com/x",
        "[::1]:5000/img:tag", "ghcr.io/owner/repo:sha-abc_DEF.1", digest, "sha512:" + "0" * 128,
    ]):
        write("reference", f"ref{i:02}.txt", r.encode())


if __name__ == "__main__":
    main()
