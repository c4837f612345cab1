"""Triton's system shared-memory extension of OIP v2: a client on the same host puts input tensors into a POSIX
shared-memory object, registers it with the server once, and then names a region in each request instead of sending
the bytes (``inputs[i].parameters``: ``shared_memory_region``, ``shared_memory_byte_size``, optional
``shared_memory_offset``). What it saves is the HTTP body: for large tensors (a 32-image ResNet50 request is 4.8 MB),
reading it through the ASGI server costs one Python process about a core at a few hundred requests a second.

Routes (``gawm_lib.server``, only with ``WorkloadConfig.allow_client_shm``, as Triton's ``--allow-client-shm``):
``POST /v2/systemsharedmemory/region/{name}/register`` with ``{"key", "offset", "byte_size"}``,
``GET /v2/systemsharedmemory[/region/{name}]/status``, ``POST /v2/systemsharedmemory[/region/{name}]/unregister``;
``tritonclient.http`` and ``tritonclient.utils.shared_memory`` work with them unchanged.

The server maps each object read-only. Keys are names in ``/dev/shm`` (``/name`` or ``name``, no other ``/``), and the
name must be a regular file on that file system itself: it is opened without following a symbolic link
(``O_NOFOLLOW``) and without waiting (``O_NONBLOCK``: a FIFO would otherwise block the event loop until a writer came),
then checked with ``fstat`` before anything is read or mapped, so a client cannot point the server at other files,
FIFOs, devices or directories. Error messages never carry bytes or lengths read from an object (see
:mod:`gawm_lib.workloads.oip`), nor its size. Still, any object in ``/dev/shm`` that the server's user can read may be
registered, so only trusted clients should get ``allow_client_shm`` (as in Triton). Clients are trusted not to shrink
an object while it is in use: each request checks the object's size first, but one truncated between that check and
the batch's copy would fault the server (as it would Triton). Outputs always come back in the response body.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gawm_lib.workloads.oip import InferenceError

KEY = re.compile(r"/?([A-Za-z0-9_.\-]{1,200})")
NAME = re.compile(r"[A-Za-z0-9_.\-]{1,200}")


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    view: memoryview  # the registered bytes, read-only

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


def _int(doc: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 62:
        raise InferenceError(f"{where}.{key}" if where else key, "a non-negative integer", value)
    return value


class SharedMemoryRegistry:
    """The regions registered with one server process (thread-safe: requests are parsed on a thread pool)."""

    def __init__(self, root: Path = Path("/dev/shm")) -> None:
        self.root = root
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, doc: Any) -> None:
        if not NAME.fullmatch(name):
            raise InferenceError("region name", "letters, digits, '_', '.' or '-' (at most 200)", name)
        if not isinstance(doc, dict):
            raise InferenceError("body", 'a JSON object {"key", "offset", "byte_size"}', type(doc).__name__)
        key = doc.get("key")
        match = KEY.fullmatch(key) if isinstance(key, str) else None
        if match is None or match.group(1) in (".", ".."):
            raise InferenceError("key", "the name of a POSIX shared-memory object: '/name' or 'name', without '/'", key)
        offset, byte_size = _int(doc, "offset", "", 0), _int(doc, "byte_size", "")
        path = self.root / match.group(1)
        not_an_object = InferenceError(
            "key", f"an existing shared-memory object in {self.root} the server can read (a regular file, no link)", key
        )
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            raise not_an_object from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_dev != os.stat(self.root).st_dev:
                raise not_an_object
            if byte_size == 0 or offset + byte_size > info.st_size:
                raise InferenceError(
                    "byte_size", "at least 1, with offset + byte_size within the shared-memory object", byte_size
                )
            with self._lock:
                if name in self._regions:
                    raise InferenceError("region name", "a name not registered yet (unregister it first)", name)
                try:
                    mapped = mmap.mmap(fd, offset + byte_size, access=mmap.ACCESS_READ)
                except (OSError, ValueError):
                    raise not_an_object from None
                self._regions[name] = Region(
                    name, key, offset, byte_size, fd, memoryview(mapped)[offset : offset + byte_size]
                )
        except BaseException:
            os.close(fd)
            raise

    def unregister(self, name: str | None = None) -> None:
        """One region, or every one (``None``); unknown names are no error. Requests already parsed keep their views
        of the mapping alive."""
        with self._lock:
            gone = list(self._regions) if name is None else [name] if name in self._regions else []
            for region in map(self._regions.pop, gone):
                os.close(region.fd)

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            if name is not None and name not in self._regions:
                raise InferenceError(
                    "region name", f"a registered region ({', '.join(self._regions) or 'none'})", name, 404
                )
            return [r.status() for r in self._regions.values() if name is None or r.name == name]

    def read(self, params: dict[str, Any], where: str) -> memoryview:
        """The bytes an input's ``parameters`` name: region, byte size and offset (within the region)."""
        name = params.get("shared_memory_region")
        with self._lock:  # held throughout: an unregister closes the region's descriptor
            region = self._regions.get(name) if isinstance(name, str) else None
            if region is None:
                raise InferenceError(
                    f"{where}.shared_memory_region", f"a registered region ({', '.join(self._regions) or 'none'})", name
                )
            if "shared_memory_byte_size" not in params:
                raise InferenceError(f"{where}.shared_memory_byte_size", "the tensor's size in bytes, with the region")
            size = _int(params, "shared_memory_byte_size", where)
            offset = _int(params, "shared_memory_offset", where, 0)
            if offset + size > region.byte_size:
                raise InferenceError(
                    f"{where}.shared_memory_byte_size",
                    f"offset + byte size within the region's {region.byte_size} bytes",
                    offset + size,
                )
            if os.fstat(region.fd).st_size < region.offset + offset + size:
                raise InferenceError(
                    f"{where}.shared_memory_region", "a shared-memory object that was not shrunk", name
                )
            return region.view[offset : offset + size]
