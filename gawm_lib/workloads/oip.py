"""Open Inference Protocol v2 (KServe / Triton REST) tensors: parse a request, encode a response.

Both JSON tensors and Triton's binary tensor data extension are understood. With the extension, the HTTP body is the
JSON header (``Inference-Header-Content-Length`` bytes) followed by the raw data of each input whose
``parameters.binary_data_size`` is set, in input order; BYTES elements are each a 4-byte little-endian length and the
bytes. An output is sent binary when the request asks for it (``outputs[i].parameters.binary_data`` or the request's
``parameters.binary_data_output``), which is what stock clients such as ``tritonclient.http`` do by default.

Inputs may also come from shared memory registered with the server (Triton's system shared-memory extension, see
:mod:`gawm_lib.workloads.shm`): ``parameters.shared_memory_region`` and ``shared_memory_byte_size`` instead of data.

Every problem raises :class:`InferenceError` naming the field (``inputs[0].shape``) and what was expected, so that the
server can answer a 4xx with that JSON and never a 500. An error echoes at most what the JSON header declared (names,
shapes, sizes), never a value read from tensor data: that data may come from a shared-memory object, and a length
prefix echoed back would read it out a few bytes at a time. The declared tensors are checked first (``check``: the
server's limits, such as ``max_batch_size``), so that no data is decoded for a request that would be refused anyway.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from gawm_lib.workloads.shm import SharedMemoryRegistry

HEADER_LENGTH = "inference-header-content-length"
# BF16 has no numpy type: it travels as uint16 bit patterns and is widened to float32 on arrival.
NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BF16": np.uint16,
}
DATATYPES = (*NUMPY_TYPES, "BYTES")
MAX_RANK = 8
MAX_NESTING = 16


class InferenceError(ValueError):
    """A request the server cannot serve. ``field`` names where (``inputs[0].datatype``), ``expected`` what would do,
    ``status`` the HTTP status to answer with (400 unless said otherwise)."""

    def __init__(self, field: str, expected: str, got: Any = None, status: int = 400):
        self.field, self.expected, self.status = field, expected, status
        text = f"{field}: expected {expected}"
        if got is not None:
            shown = repr(got)
            text += f", got {shown[:120] + '...' if len(shown) > 120 else shown}"
        super().__init__(text)

    def as_json(self) -> dict[str, str]:
        return {"error": str(self), "field": self.field, "expected": self.expected}


@dataclass
class Tensor:
    """One input tensor. ``data`` is a numpy array of ``shape`` for numeric types (BF16 widened to float32) or a
    flat list of ``bytes`` (binary extension) / ``str`` (JSON) elements for BYTES; ``None`` while only declared."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any
    field: str  # where it sits in the request, for error messages: "inputs[0]"

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=object)) if self.shape else 1


@dataclass
class InferRequest:
    inputs: list[Tensor]
    id: str | None = None
    outputs: list[str] | None = None  # names asked for, in order; None: all
    binary_outputs: set[str] = field(default_factory=set)
    binary_all: bool = False


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in value)
    ):
        raise InferenceError(where, f"a list of at most {MAX_RANK} non-negative integers", value)
    return tuple(value)


def _nodes(shape: tuple[int, ...]) -> int:
    """The most lists and elements a (flat or regularly nested) tensor of ``shape`` has in JSON."""
    nested = 1 + sum(math.prod(shape[: k + 1]) for k in range(len(shape)))
    return max(nested, 1 + math.prod(shape))


def _flatten_strings(data: Any, shape: tuple[int, ...], where: str) -> list[str]:
    count, budget = math.prod(shape), _nodes(shape)  # work bounded by the declared shape, not by the body
    wrong_count = InferenceError(where, f"{count} elements (the product of the shape)")
    out: list[str] = []
    stack = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if isinstance(node, str):
            out.append(node)
            if len(out) > count:
                raise wrong_count
        elif isinstance(node, list) and depth < MAX_NESTING:
            if len(node) > budget:
                raise wrong_count
            stack.extend((child, depth + 1) for child in reversed(node))
        else:
            raise InferenceError(where, "a (nested) list of strings for datatype BYTES", type(node).__name__)
    if len(out) != count:
        raise wrong_count
    return out


def _json_numbers(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    count = math.prod(shape)
    if shape and isinstance(data, list) and len(data) not in (count, shape[0]):  # flat, or nested along the shape
        raise InferenceError(where, f"{count} elements (the product of the shape), flat or nested along the shape")
    try:
        array = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InferenceError(where, f"a flat or regularly nested list of {count} numbers") from None
    kind = array.dtype.kind
    allowed = "b" if datatype == "BOOL" else "iu" if datatype[0] in "IU" else "iuf"
    if array.size and kind not in allowed:
        what = {"b": "true/false", "iu": "integers"}.get(allowed, "numbers")
        raise InferenceError(where, f"{what} for datatype {datatype}", f"values of numpy kind {kind!r}")
    if array.size != count:
        raise InferenceError(where, f"{count} elements (the product of the shape)")
    if datatype[0] in "IU" and array.size:
        info = np.iinfo(NUMPY_TYPES[datatype])
        if array.min() < info.min or array.max() > info.max:
            raise InferenceError(where, f"integers in [{info.min}, {info.max}] for {datatype}")
    target = np.float32 if datatype == "BF16" else NUMPY_TYPES[datatype]
    return array.reshape(-1).astype(target)


def _binary_bytes(raw: memoryview, count: int, where: str) -> list[bytes]:
    # One answer for every way the elements fail to add up, naming no length read from the data (see the module's
    # docstring); at most ``count`` elements are read, however many the data holds.
    expected = (
        f"{count} length-prefixed BYTES elements (the product of the shape; each a 4-byte little-endian length and "
        f"that many bytes) filling the {len(raw)} bytes exactly"
    )
    if count > len(raw) // 4:
        raise InferenceError(where, expected)
    out, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise InferenceError(where, expected)
        size = int.from_bytes(raw[offset : offset + 4], "little")
        offset += 4
        if size > len(raw) - offset:
            raise InferenceError(where, expected)
        out.append(bytes(raw[offset : offset + size]))
        offset += size
    if offset != len(raw):
        raise InferenceError(where, expected)
    return out


def _binary_numbers(raw: memoryview, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    dtype = np.dtype(NUMPY_TYPES[datatype]).newbyteorder("<")
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if count * dtype.itemsize != len(raw):
        raise InferenceError(where, f"{count * dtype.itemsize} bytes ({count} x {datatype})", f"{len(raw)} bytes")
    array = np.frombuffer(raw, dtype=dtype)
    if datatype == "BF16":  # widen bit patterns: bf16 is the top half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    elif datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise InferenceError(where, "BOOL bytes of 0 or 1")
    return array


SHM_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


def parse_request(
    body: bytes,
    header_length: str | None,
    output_names: tuple[str, ...],
    shared_memory: SharedMemoryRegistry | None = None,
    check: Callable[[list[Tensor]], None] | None = None,
) -> InferRequest:
    """An :class:`InferRequest` from an HTTP body (and its ``Inference-Header-Content-Length`` header, if any);
    ``shared_memory``: the server's registered regions, ``None`` where clients may not use shared memory; ``check``:
    called with the declared tensors (``data`` None) before any data is read, raising :class:`InferenceError` for a
    request the caller would refuse (names, datatypes, shapes over its limits)."""
    json_end = len(body)
    if header_length is not None:
        text = header_length.strip(" \t")
        if not re.fullmatch(r"[0-9]{1,18}", text) or int(text) > len(body):
            raise InferenceError(
                "Inference-Header-Content-Length", f"an integer in [0, {len(body)}] (the body size)", header_length
            )
        json_end = int(text)
    try:
        doc = json.loads(bytes(memoryview(body)[:json_end]))
    except (ValueError, RecursionError) as exc:  # ValueError covers bad UTF-8 and over-long integers too
        raise InferenceError("body", "a JSON object (OIP v2 inference request)", f"not JSON: {exc}"[:160]) from None
    if not isinstance(doc, dict):
        raise InferenceError("body", "a JSON object (OIP v2 inference request)", type(doc).__name__)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InferenceError("id", "a string", request_id)
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise InferenceError("parameters", "an object", params)
    binary_all = params.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise InferenceError("parameters.binary_data_output", "true or false", binary_all)
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InferenceError("inputs", "a non-empty list of input tensors", inputs)
    declared, seen = [], set()
    for index, spec in enumerate(inputs):
        where = f"inputs[{index}]"
        if not isinstance(spec, dict):
            raise InferenceError(where, "an object with name, datatype, shape and data", spec)
        name, datatype = spec.get("name"), spec.get("datatype")
        if not isinstance(name, str) or not name:
            raise InferenceError(f"{where}.name", "a non-empty string", name)
        if name in seen:
            raise InferenceError(f"{where}.name", "each input once", name)
        seen.add(name)
        if datatype not in DATATYPES:
            raise InferenceError(f"{where}.datatype", f"one of {', '.join(DATATYPES)}", datatype)
        shape = _shape(spec.get("shape"), f"{where}.shape")
        tparams = spec.get("parameters", {})
        if not isinstance(tparams, dict):
            raise InferenceError(f"{where}.parameters", "an object", tparams)
        declared.append(Tensor(name, datatype, shape, None, where))
    if check is not None:
        check(declared)
    binary = memoryview(body)[json_end:]
    offset, tensors = 0, []
    for spec, tensor in zip(inputs, declared):
        where, datatype, shape, tparams = tensor.field, tensor.datatype, tensor.shape, spec.get("parameters", {})
        count = math.prod(shape)
        size = tparams.get("binary_data_size")
        if any(key in tparams for key in SHM_PARAMETERS):
            if shared_memory is None:
                raise InferenceError(
                    f"{where}.parameters.shared_memory_region",
                    "data in the body: this server does not take shared memory (allow_client_shm)",
                )
            if size is not None or "data" in spec:
                raise InferenceError(f"{where}.parameters", "one of data, binary_data_size or shared_memory_region")
            raw = shared_memory.read(tparams, f"{where}.parameters")
            data = (
                _binary_bytes(raw, count, f"{where}.parameters.shared_memory_region")
                if datatype == "BYTES"
                else _binary_numbers(raw, datatype, shape, f"{where}.parameters.shared_memory_byte_size")
            )
        elif size is not None:
            if header_length is None:
                raise InferenceError(
                    f"{where}.parameters.binary_data_size",
                    "an Inference-Header-Content-Length header with binary tensor data",
                )
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary) - offset:
                raise InferenceError(
                    f"{where}.parameters.binary_data_size",
                    f"an integer in [0, {len(binary) - offset}] (binary data left)",
                    size,
                )
            if "data" in spec:
                raise InferenceError(f"{where}.data", "no 'data' when binary_data_size is given")
            raw = binary[offset : offset + size]
            offset += size
            data = (
                _binary_bytes(raw, count, f"{where}.data")
                if datatype == "BYTES"
                else _binary_numbers(raw, datatype, shape, f"{where}.data")
            )
        else:
            if "data" not in spec:
                raise InferenceError(f"{where}.data", "the tensor's elements (or parameters.binary_data_size)")
            if datatype == "BYTES":
                data = _flatten_strings(spec["data"], shape, f"{where}.data")
            else:
                data = _json_numbers(spec["data"], datatype, shape, f"{where}.data")
        if not isinstance(data, list):
            data = data.reshape(shape)
        tensors.append(Tensor(tensor.name, datatype, shape, data, where))
    if offset != len(binary):
        raise InferenceError(
            "body", f"{offset} bytes of binary tensor data after the JSON header", f"{len(binary)} bytes"
        )
    return InferRequest(tensors, request_id, *_requested_outputs(doc.get("outputs"), output_names), binary_all)


def _requested_outputs(outputs: Any, known: tuple[str, ...]) -> tuple[list[str] | None, set[str]]:
    if outputs is None:
        return None, set()
    if not isinstance(outputs, list):
        raise InferenceError("outputs", "a list of requested outputs", outputs)
    names, binary = [], set()
    for index, spec in enumerate(outputs):
        where = f"outputs[{index}]"
        if not isinstance(spec, dict) or spec.get("name") not in known:
            got = spec.get("name") if isinstance(spec, dict) else spec
            raise InferenceError(f"{where}.name", f"one of {', '.join(known)}", got)
        params = spec.get("parameters", {})
        if isinstance(params, dict) and any(key in params for key in SHM_PARAMETERS):
            raise InferenceError(
                f"{where}.parameters.shared_memory_region",
                "outputs in the response body (this server writes none to shared memory)",
            )
        flag = params.get("binary_data", False) if isinstance(params, dict) else None
        if not isinstance(flag, bool):
            raise InferenceError(f"{where}.parameters.binary_data", "true or false", flag)
        names.append(spec["name"])
        if flag:
            binary.add(spec["name"])
    return names, binary


@dataclass
class Output:
    """One output tensor: numeric ``values`` (anything numpy takes) or a list of ``str`` for BYTES."""

    name: str
    datatype: str
    shape: list[int]
    values: Any


def encode_response(
    model: str, request: InferRequest, outputs: list[Output], parameters: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """The HTTP body and headers answering ``request``: JSON, or a JSON header plus binary outputs."""
    by_name = {o.name: o for o in outputs}
    chosen = [by_name[n] for n in request.outputs] if request.outputs is not None else outputs
    doc: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": [], "parameters": parameters}
    if request.id is not None:
        doc["id"] = request.id
    blobs = []
    for out in chosen:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        binary = request.binary_all or out.name in request.binary_outputs
        if out.datatype == "BYTES":
            values: Any = out.values
            if not binary:
                entry["data"] = [
                    (v.encode() if isinstance(v, str) else bytes(v)).decode("utf-8", errors="replace") for v in values
                ]
        else:
            # Finite values only: JSON has no NaN, and a NaN score is no answer.
            values = np.nan_to_num(np.asarray(out.values, dtype=NUMPY_TYPES[out.datatype]).reshape(-1))
            if not binary:
                entry["data"] = values.tolist()
        blob = tensor_bytes(out.datatype, values) if binary else None
        if blob is not None:
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        doc["outputs"].append(entry)
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def tensor_bytes(datatype: str, values: Any) -> bytes:
    """A tensor's raw data as the binary extension and shared memory carry it: little-endian numbers, or each BYTES
    element as a 4-byte little-endian length and the bytes."""
    if datatype == "BYTES":
        items = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
        return b"".join(len(i).to_bytes(4, "little") + i for i in items)
    array = np.ascontiguousarray(values, dtype=NUMPY_TYPES[datatype])
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def encode_request(
    inputs: list[tuple[str, str, list[int], Any]],
    binary: bool = True,
    outputs: list[str] | None = None,
    binary_outputs: bool = False,
    shared_memory: tuple[str, int] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """An inference request body and headers (for tests, samples and benchmarks): inputs as (name, datatype, shape,
    values) with values a numpy array or a list of bytes/str; ``binary`` uses the binary tensor data extension.
    ``shared_memory=(region, offset)``: the inputs' data is not sent but named in that registered region, back to back
    from ``offset`` (the caller writes ``tensor_bytes`` of each input there)."""
    doc: dict[str, Any] = {"inputs": []}
    if binary_outputs:
        doc["parameters"] = {"binary_data_output": True}
    if outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": binary_outputs}} for n in outputs]
    blobs = []
    for name, datatype, shape, values in inputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(shape)}
        if shared_memory is not None:
            region, offset = shared_memory
            size = len(tensor_bytes(datatype, values))
            entry["parameters"] = {
                "shared_memory_region": region,
                "shared_memory_byte_size": size,
                "shared_memory_offset": offset,
            }
            shared_memory = (region, offset + size)
        elif binary:
            blob = tensor_bytes(datatype, values)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            entry["data"] = [v if isinstance(v, str) else bytes(v).decode() for v in values]
        else:
            entry["data"] = np.asarray(values, dtype=NUMPY_TYPES[datatype]).reshape(-1).tolist()
        doc["inputs"].append(entry)
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
