"""Container images without a registry or a Docker engine: docker-archive tars (one layer, a config and a
manifest.json) that ``ctr -n k8s.io images import`` loads into the local node's containerd (k8s/testenv/node.py).
Standard library only; the archives are byte-for-byte reproducible (fixed times, owners and order).

    python3 k8s/testenv/images.py pause --binary _output/bin/pause --tag gawm.local/pause:3.4.1 --output pause.tar
    python3 k8s/testenv/images.py host-python --tag gawm.local/host-python:1 --output host-python.tar

``pause``: the Kubernetes pause binary (static) at /pause, the pod sandbox image.
``host-python``: an almost empty root file system laid out like Debian's merged /usr (/bin -> usr/bin, /lib ->
usr/lib, /lib64 -> usr/lib64, /sbin -> usr/sbin), /etc/passwd, /etc/group, /tmp and empty /usr, /root, /work: a pod
runs the host's programs by mounting the host's /usr, its Python installation and the project (with its .venv)
read-only at the same paths (hostPath volumes); see k8s/README.md, "A local single-node cluster".
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path

EPOCH = 0  # file times in the layers: reproducible archives
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "root", "root"
    return info


def layer_tar(dirs: dict[str, int], links: dict[str, str], files: dict[str, tuple[bytes, int]]) -> bytes:
    """One uncompressed layer: folders (name -> mode), symbolic links (name -> target), files (name -> (data, mode))."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(dirs):
            tar.addfile(_info(name, tarfile.DIRTYPE, dirs[name]))
        for name in sorted(links):
            tar.addfile(_info(name, tarfile.SYMTYPE, 0o777, link=links[name]))
        for name in sorted(files):
            data, mode = files[name]
            tar.addfile(_info(name, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))
    return out.getvalue()


def docker_archive(tag: str, layer: bytes, config: dict) -> bytes:
    """A docker-archive (``docker save`` format) of one layer, named ``tag``."""
    layer_id = hashlib.sha256(layer).hexdigest()
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "gawm k8s/testenv/images.py"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{layer_id}/layer.tar"]}]
    name, _, version = tag.rpartition(":")
    repositories = {name: {version: layer_id}}
    members = {
        f"{layer_id}/layer.tar": layer,
        f"{layer_id}/VERSION": b"1.0",
        config_name: config_bytes,
        "manifest.json": json.dumps(manifest).encode(),
        "repositories": json.dumps(repositories).encode(),
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info(f"{layer_id}", tarfile.DIRTYPE, 0o755))
        for member in sorted(members):
            tar.addfile(_info(member, tarfile.REGTYPE, 0o644, len(members[member])), io.BytesIO(members[member]))
    return out.getvalue()


def pause_image(binary: Path, tag: str) -> bytes:
    layer = layer_tar({}, {}, {"pause": (binary.read_bytes(), 0o755)})
    return docker_archive(tag, layer, {"Entrypoint": ["/pause"], "Env": [f"PATH={PATH}"]})


def host_python_image(tag: str) -> bytes:
    dirs = {name: 0o755 for name in ("etc", "usr", "root", "work", "home", "var", "run", "proc", "sys", "dev")}
    dirs["tmp"] = 0o1777
    links = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}
    files = {"etc/passwd": (PASSWD.encode(), 0o644), "etc/group": (GROUP.encode(), 0o644)}
    config = {"Env": [f"PATH={PATH}", "LANG=C.UTF-8", "HOME=/root"], "Cmd": ["python3"], "WorkingDir": "/"}
    return docker_archive(tag, layer_tar(dirs, links, files), config)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["pause", "host-python"])
    parser.add_argument("--tag", required=True)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--binary", type=Path, help="the static pause binary (kind pause)")
    args = parser.parse_args(argv)
    if args.kind == "pause":
        if args.binary is None:
            parser.error("pause needs --binary")
        data = pause_image(args.binary, args.tag)
    else:
        data = host_python_image(args.tag)
    write_atomic(args.output, data)
    print(f"images.py: {args.tag} -> {args.output} ({len(data)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
