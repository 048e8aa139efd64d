#!/usr/bin/env python3
"""Build a tiny busybox container image without any container tooling.

The image holds a static busybox at /bin/busybox, applet symlinks in /bin,
/etc/passwd and /etc/group, and an image config with Env PATH=/bin and
Cmd ["/bin/sh"]. Output formats:

  oci     an OCI image layout in a tar file (skopeo "oci-archive:",
          `ctr image import`, shoal's "oci-archive:/path")
  docker  a `docker save` style archive (`docker load`, skopeo
          "docker-archive:", shoal's "docker-archive:/path")
  rootfs  the plain root filesystem as a tar file (`docker import`)

The output is reproducible: every timestamp is SOURCE_DATE_EPOCH (default 0),
every owner is root, entries are sorted, so the same busybox gives the same
digests. Only the Python standard library is used.

Example:
  python3 scripts/mkimage.py --format oci --name docker.io/library/busybox:latest \
      -o /var/lib/shoal/images/busybox.tar
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import sys
import tarfile
import tempfile

APPLETS = [
    "sh", "sleep", "httpd", "echo", "cat", "mkdir", "hostname", "wget", "ls",
    "kill", "env", "id", "true", "false", "nc",
]

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\n"
INDEX_HTML = "<html><body><h1>hello from shoal</h1></body></html>\n"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class ImageError(Exception):
    pass


def go_arch():
    machine = platform.machine().lower()
    return {
        "x86_64": "amd64",
        "amd64": "amd64",
        "aarch64": "arm64",
        "arm64": "arm64",
        "armv7l": "arm",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(machine, machine)


def split_name(name):
    """Return (repository, tag) for NAME[:TAG]; a port colon is not a tag."""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, "latest"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def dumps(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class TarWriter:
    """Deterministic tar writer over an in-memory buffer."""

    def __init__(self, mtime):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.mtime = mtime

    def _info(self, name, kind, mode):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.mtime = self.mtime
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def dir(self, name, mode=0o755):
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode))

    def file(self, name, data, mode=0o644):
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, name, target):
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)

    def finish(self):
        self.tar.close()
        return self.buf.getvalue()


def build_rootfs(busybox, mtime):
    try:
        with open(busybox, "rb") as f:
            binary = f.read()
    except OSError as e:
        raise ImageError(f"failed to read busybox at {busybox}: {e.strerror}; "
                         "install busybox-static or pass --busybox PATH") from e
    if binary[:4] != b"\x7fELF":
        raise ImageError(f"{busybox} is not an ELF binary; pass a static busybox with --busybox")
    t = TarWriter(mtime)
    for d, mode in [("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o755),
                    ("root", 0o700), ("sys", 0o755), ("tmp", 0o1777), ("var", 0o755),
                    ("var/www", 0o755)]:
        t.dir(d, mode)
    t.file("bin/busybox", binary, 0o755)
    for applet in sorted(APPLETS):
        t.symlink(f"bin/{applet}", "busybox")
    t.file("etc/group", GROUP.encode())
    t.file("etc/passwd", PASSWD.encode())
    t.file("var/www/index.html", INDEX_HTML.encode())
    return t.finish()


def image_config(diff_id, mtime, arch):
    created = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": created, "created_by": "shoal scripts/mkimage.py"}],
    }


def gzip_bytes(data, mtime):
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=mtime, compresslevel=9) as gz:
        gz.write(data)
    return out.getvalue()


def oci_archive(rootfs, name, mtime, arch):
    layer = gzip_bytes(rootfs, mtime)
    config = dumps(image_config(sha256(rootfs), mtime, arch))
    manifest = dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": f"sha256:{sha256(config)}",
                   "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": f"sha256:{sha256(layer)}",
                    "size": len(layer)}],
    })
    _, tag = split_name(name)
    index = dumps({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": f"sha256:{sha256(manifest)}",
            "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    })
    t = TarWriter(mtime)
    t.dir("blobs")
    t.dir("blobs/sha256")
    for blob in sorted([config, layer, manifest], key=sha256):
        t.file(f"blobs/sha256/{sha256(blob)}", blob)
    t.file("index.json", index)
    t.file("oci-layout", dumps({"imageLayoutVersion": "1.0.0"}))
    return t.finish()


def docker_archive(rootfs, name, mtime, arch):
    diff_id = sha256(rootfs)
    config = dumps(image_config(diff_id, mtime, arch))
    config_id = sha256(config)
    repo, tag = split_name(name)
    manifest = json.dumps([{
        "Config": f"{config_id}.json",
        "RepoTags": [f"{repo}:{tag}"],
        "Layers": [f"{diff_id}/layer.tar"],
    }]).encode()
    t = TarWriter(mtime)
    t.dir(diff_id)
    t.file(f"{diff_id}/VERSION", b"1.0")
    t.file(f"{diff_id}/json", dumps({"id": diff_id, "created": "1970-01-01T00:00:00Z"}))
    t.file(f"{diff_id}/layer.tar", rootfs)
    t.file(f"{config_id}.json", config)
    t.file("manifest.json", manifest)
    t.file("repositories", dumps({repo: {tag: diff_id}}))
    return t.finish()


def write_atomically(path, data):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".mkimage-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", choices=["oci", "docker", "rootfs"], default="oci",
                   help="archive format (default: oci)")
    p.add_argument("--name", default="docker.io/library/busybox:latest",
                   help="image name stored in the archive (default: %(default)s)")
    p.add_argument("--busybox", default="/bin/busybox",
                   help="static busybox binary to package (default: %(default)s)")
    p.add_argument("--arch", default=go_arch(),
                   help="image architecture (default: this machine, %(default)s)")
    p.add_argument("-o", "--output", required=True, help="archive to write ('-' for stdout)")
    args = p.parse_args(argv)

    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    try:
        rootfs = build_rootfs(args.busybox, mtime)
        if args.format == "oci":
            data = oci_archive(rootfs, args.name, mtime, args.arch)
        elif args.format == "docker":
            data = docker_archive(rootfs, args.name, mtime, args.arch)
        else:
            data = rootfs
        if args.output == "-":
            sys.stdout.buffer.write(data)
        else:
            write_atomically(args.output, data)
    except ImageError as e:
        print(f"mkimage: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mkimage: failed to write {args.output}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
