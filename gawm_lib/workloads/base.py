"""What every workload provides, in Open Inference Protocol v2 terms.

A request carries exactly one of the workload's inputs (for example ResNet50's ``image``, encoded JPEG/PNG as BYTES,
or ``pixel_values``, a pre-processed tensor). Its first dimension counts items. :meth:`Workload.decode_request` turns
the tensor into per-item model inputs (raising :class:`InferenceError` for anything it cannot serve), the server batches
items across requests, :meth:`Workload.prepare` collates a batch (and copies it to the device), :meth:`Workload.forward`
runs it, and :meth:`Workload.response_outputs` turns each request's answers into output tensors.
"""

from __future__ import annotations

import abc
import base64
import binascii
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gawm_lib.config import WorkloadConfig
from gawm_lib.workloads import device as devices
from gawm_lib.workloads.oip import InferenceError, InferRequest, Output, Tensor


class WeightsError(RuntimeError):
    """Weights that cannot be loaded; the message names the file."""


def load_checkpoint(path: str) -> Any:
    """``torch.load`` of a local weights file, with an error that names the file and says what went wrong."""
    import torch

    try:
        return torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises anything from IndexError to UnpicklingError on a bad file
        raise WeightsError(f"cannot load weights from {path}: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class InputSpec:
    """One accepted input: ``datatypes`` it may arrive as (the first is the one announced in metadata)."""

    name: str
    datatypes: tuple[str, ...]
    shape: tuple[int, ...]  # -1: any size; the first dimension counts items
    description: str


class Workload(abc.ABC):
    name: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...]  # (name, datatype, shape per item)
    pad_on_cuda = True  # pad batches to a few fixed sizes on a GPU (cuDNN autotuning and torch.compile like that)

    def __init__(self, cfg: WorkloadConfig):
        self.cfg = cfg
        self.model: Any = None
        self.weights_info: dict[str, Any] = {}
        self.load_s = 0.0
        self.stager: devices.Stager | None = None

    # -- life cycle ---------------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Build the model with its weights on the configured device, then warm it up (every padded batch size)."""
        started = time.perf_counter()
        devices.setup_torch(self.cfg, fixed_shapes=self.padded)
        self.stager = devices.Stager(self.cfg.device)
        self.model, self.weights_info = self._build()
        self.device_forward = self.compute
        if self.cfg.cuda_graphs:
            self.device_forward = devices.GraphedForward(self.compute)
        self.weights_info.update(build_s=round(time.perf_counter() - started, 3), cuda_graphs=self.cfg.cuda_graphs)
        if self.cfg.warmup_batches:
            item = self.decode_item(self.warmup_item())
            for size in self.batch_buckets() if self.padded else [1]:
                for _ in range(self.cfg.warmup_batches):
                    self.predict([item] * size)
        self.load_s = time.perf_counter() - started

    @property
    def padded(self) -> bool:
        return self.cfg.compile or (self.cfg.device == "cuda" and self.pad_on_cuda)

    def batch_buckets(self) -> list[int]:
        """The batch sizes a padded batch is rounded up to: ``batch_sizes`` or the powers of two below
        ``max_batch_size``, and ``max_batch_size`` itself."""
        if self.cfg.batch_sizes:
            sizes = [b for b in self.cfg.batch_sizes if b < self.cfg.max_batch_size]
        else:
            sizes = [2**i for i in range(self.cfg.max_batch_size.bit_length()) if 2**i < self.cfg.max_batch_size]
        return [*sizes, self.cfg.max_batch_size]

    def padded_size(self, n: int) -> int:
        return next(b for b in self.batch_buckets() if b >= n) if self.padded else n

    # -- per workload -------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _build(self) -> tuple[Any, dict[str, Any]]:
        """Return the model in eval mode and a record of which weights it has (``{"weights": "random", ...}``)."""

    @abc.abstractmethod
    def decode_item(self, raw: bytes | str) -> Any:
        """One encoded item (image file, text, audio file) to the model's input; :class:`InferenceError` if bad."""

    @abc.abstractmethod
    def decode_tensor(self, tensor: Tensor) -> list[Any]:
        """A request's input tensor (already checked against :attr:`inputs`) to per-item model inputs."""

    @abc.abstractmethod
    def prepare(self, items: list[Any]) -> Any:
        """Collate a batch (padded to :meth:`padded_size`) and start its copy to the device."""

    def compute(self, **tensors: Any) -> Any:
        """The batch's device-side computation, from input tensors on the device to output tensors (static shapes:
        captured as a CUDA graph with ``cuda_graphs``). Workloads whose work is no fixed graph (Whisper's decode loop)
        do not have one."""
        raise NotImplementedError(f"{self.name} has no fixed device graph (cuda_graphs is for resnet50, distilbert)")

    @abc.abstractmethod
    def forward(self, batch: Any, count: int) -> list[dict[str, Any]]:
        """Run a prepared batch; one answer dict per real (unpadded) item, ``count`` of them."""

    @abc.abstractmethod
    def sample_items(self, count: int, seed: int) -> list[bytes | str]:
        """``count`` encoded request items made from real data (photos, sentences, speech), seeded."""

    @abc.abstractmethod
    def warmup_item(self) -> bytes | str: ...

    def request_stats(self, answers: list[dict[str, Any]]) -> dict[str, float]:
        """Per-request totals reported in the response's parameters and metrics (tokens, audio seconds)."""
        return {}

    # -- shared -------------------------------------------------------------------------------------------------------
    def predict(self, items: list[Any]) -> list[dict[str, Any]]:
        return self.forward(self.prepare(items), len(items))

    def decode(self, raw: bytes | str) -> Any:
        return self.decode_item(raw)

    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.cfg.precision]

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.outputs)

    def metadata(self) -> dict[str, Any]:
        """The OIP v2 model metadata answer."""
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "pytorch",
            "inputs": [
                {
                    "name": s.name,
                    "datatype": s.datatypes[0],
                    "shape": list(s.shape),
                    "parameters": {"accepts": list(s.datatypes), "description": s.description},
                }
                for s in self.inputs
            ],
            "outputs": [{"name": n, "datatype": d, "shape": [-1, *s]} for n, d, s in self.outputs],
            "parameters": {
                "weights": self.weights_info,
                "settings": self.cfg.model_dump(),
                "load_s": round(self.load_s, 3),
            },
        }

    def decode_request(self, request: InferRequest) -> list[Any]:
        """The model inputs of a parsed request, checked against this workload's inputs and limits."""
        names = [s.name for s in self.inputs]
        if len(request.inputs) != 1:
            raise InferenceError("inputs", f"exactly one input tensor, one of {names}", len(request.inputs))
        tensor = request.inputs[0]
        spec = next((s for s in self.inputs if s.name == tensor.name), None)
        if spec is None:
            raise InferenceError(f"{tensor.field}.name", f"one of {names}", tensor.name)
        if tensor.datatype not in spec.datatypes:
            raise InferenceError(
                f"{tensor.field}.datatype", " or ".join(spec.datatypes) + f" for {spec.name!r}", tensor.datatype
            )
        shape = tensor.shape
        want = spec.shape
        fits = len(shape) == len(want) and all(w in (-1, s) for w, s in zip(want, shape))
        # A single BYTES column also comes as [n, 1] from clients that send one element per row.
        fits = fits or (want == (-1,) and len(shape) == 2 and shape[1] == 1)
        if not fits or not shape:
            raise InferenceError(f"{tensor.field}.shape", f"{list(want)} (-1: any size)", list(shape))
        if not 1 <= shape[0] <= self.cfg.max_batch_size:
            raise InferenceError(
                f"{tensor.field}.shape[0]",
                f"1 to {self.cfg.max_batch_size} items (max_batch_size: a request is never split across batches)",
                shape[0],
            )
        return self.decode_tensor(tensor)

    def bytes_items(self, tensor: Tensor) -> list[bytes]:
        """BYTES elements as bytes: raw from the binary extension, base64 in JSON."""
        out = []
        for index, item in enumerate(tensor.data):
            if isinstance(item, str):
                try:
                    item = base64.b64decode(item, validate=True)
                except (binascii.Error, ValueError):
                    raise InferenceError(
                        f"{tensor.field}.data[{index}]",
                        "base64 (binary items travel as base64 in JSON; or use the binary tensor data extension)",
                    ) from None
            out.append(item)
        return out

    def finite(self, tensor: Tensor, array: np.ndarray) -> np.ndarray:
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InferenceError(f"{tensor.field}.data", "finite numbers (no NaN or infinity)")
        return array

    def request_body(self, items: list[bytes | str]) -> dict[str, Any]:
        """An OIP v2 JSON inference request for encoded ``items`` (base64 for bytes)."""
        data = [base64.b64encode(i).decode() if isinstance(i, bytes) else i for i in items]
        return {"inputs": [{"name": self.inputs[0].name, "shape": [len(data)], "datatype": "BYTES", "data": data}]}

    def response_outputs(self, answers: list[dict[str, Any]]) -> list[Output]:
        """OIP v2 output tensors for a request's answers (first dimension: items)."""
        outputs = []
        for name, datatype, shape in self.outputs:
            values = [answers[i][name] for i in range(len(answers))]
            if datatype == "BYTES":
                values = [v for row in values for v in (row if shape else [row])]
            outputs.append(Output(name, datatype, [len(answers), *shape], values))
        return outputs
