#!/usr/bin/env python3
"""Builds mube's test images as OCI archives, with no network, and imports
them into containerd's k8s.io namespace.

- mube.local/busybox:latest: the distribution's static busybox (Debian
  package busybox-static) with a link for each of its applets, so that
  `sh`, `echo`, `sleep`, `nc`, `wget`... are on PATH.
- mube.local/pause:3.9: the sandbox image. Its one process is busybox's
  sleep, which holds the pod's namespaces; containerd kills it with SIGKILL
  when the sandbox stops, so it needs no signal handling of its own.

Usage: scripts/images.py [--out DIR] [--address SOCKET] [--no-import]

The archives are reproducible (fixed timestamps), so the image IDs stay the
same from one build to the next and a second import is a no-op.
Written by hand because no packaged tool builds an OCI image from local
files without a registry or a daemon (buildah/skopeo need a container
storage and are not on these machines).
"""
import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

EPOCH = 0
BUSYBOX_CANDIDATES = ["/bin/busybox", "/usr/bin/busybox"]
IMAGES = {
    "busybox": ("mube.local/busybox:latest", ["sh"]),
    "pause": ("mube.local/pause:3.9", ["/bin/busybox", "sleep", "2147483647"]),
}


def find_busybox():
    for path in BUSYBOX_CANDIDATES:
        if os.path.isfile(path):
            with open(path, "rb") as f:
                head = f.read(4096)
            # A dynamically linked busybox would need its libraries in the
            # image: insist on the static one.
            if b"/lib64/ld-linux" in head or b"/lib/ld-linux" in head:
                continue
            return path
    sys.exit("images.py: no static busybox found; install Debian's busybox-static")


def applets(busybox):
    out = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True)
    return sorted(a for a in out.stdout.split() if a and a != "busybox")


def tar_info(name, kind, size=0, mode=0o755, link=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.linkname = link
    return info


def layer(busybox, with_applets):
    """An uncompressed layer tar: /bin/busybox, applet links, /tmp, /etc."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"]:
            mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(tar_info(d + "/", tarfile.DIRTYPE, mode=mode))
        data = open(busybox, "rb").read()
        tar.addfile(tar_info("bin/busybox", tarfile.REGTYPE, size=len(data)), io.BytesIO(data))
        if with_applets:
            for applet in applets(busybox):
                tar.addfile(tar_info("bin/" + applet, tarfile.SYMTYPE, link="busybox", mode=0o777))
        for name, text in [
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ]:
            raw = text.encode()
            tar.addfile(tar_info(name, tarfile.REGTYPE, size=len(raw), mode=0o644), io.BytesIO(raw))
    return buf.getvalue()


def blob(blobs, data):
    digest = hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return "sha256:" + digest, len(data)


def build(name, ref, cmd, busybox, out_dir):
    blobs = {}
    layer_bytes = layer(busybox, with_applets=(name == "busybox"))
    layer_digest, layer_size = blob(blobs, layer_bytes)
    config = {
        "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "mube scripts/images.py"}],
    }
    config_digest, config_size = blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size = blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {
                "io.containerd.image.name": ref,
                "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
            },
        }],
    }
    path = os.path.join(out_dir, name + ".tar")
    with tarfile.open(path + ".tmp", mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(entry, data):
            tar.addfile(tar_info(entry, tarfile.REGTYPE, size=len(data), mode=0o644), io.BytesIO(data))
        add("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add("index.json", json.dumps(index, sort_keys=True).encode())
        tar.addfile(tar_info("blobs/", tarfile.DIRTYPE))
        tar.addfile(tar_info("blobs/sha256/", tarfile.DIRTYPE))
        for digest, data in sorted(blobs.items()):
            add("blobs/sha256/" + digest, data)
    os.replace(path + ".tmp", path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="target/images", help="where the archives go")
    parser.add_argument("--address", default=os.environ.get("CONTAINERD_ADDRESS", "/run/containerd/containerd.sock"),
                        help="containerd's socket")
    parser.add_argument("--no-import", action="store_true", help="only build the archives")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    busybox = find_busybox()
    for name, (ref, cmd) in IMAGES.items():
        path = build(name, ref, cmd, busybox, args.out)
        print(f"built {ref} -> {path}")
        if not args.no_import:
            ctr = shutil.which("ctr") or sys.exit("images.py: ctr not found (Debian package containerd)")
            subprocess.run([ctr, "--address", args.address, "-n", "k8s.io", "images", "import", path],
                           check=True, stdout=subprocess.DEVNULL)
            print(f"imported {ref} into containerd ({args.address}, namespace k8s.io)")


if __name__ == "__main__":
    main()
