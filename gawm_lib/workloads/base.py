"""What every workload provides, in Open Inference Protocol v2 terms.

A request carries one input tensor of ``datatype: BYTES`` and ``shape: [n]``: n items (base64 for images and audio,
plain strings for text). Items are decoded one by one, batched by the server across requests, and answered one by one.
"""

from __future__ import annotations

import abc
import base64
import binascii
import time
from pathlib import Path
from typing import Any

from gawm_lib.config import WorkloadConfig


class InferenceError(ValueError):
    """A request the workload cannot serve (bad payload); the server answers 400 with this message."""


class WeightsError(RuntimeError):
    """Weights that cannot be loaded; the message names the file."""


def load_checkpoint(path: str) -> Any:
    """``torch.load`` of a local weights file, with an error that names the file and says what went wrong."""
    import torch

    try:
        return torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises anything from IndexError to UnpicklingError on a bad file
        raise WeightsError(f"cannot load weights from {path}: {type(exc).__name__}: {exc}") from None


class Workload(abc.ABC):
    name: str
    input_name: str
    binary_input: bool  # items are base64-encoded bytes

    def __init__(self, cfg: WorkloadConfig):
        self.cfg = cfg
        self.model: Any = None
        self.weights_info: dict[str, Any] = {}

    def load(self) -> None:
        """Build the model with its weights on the configured device, then warm it up."""
        import torch

        torch.set_num_threads(self.cfg.threads)
        started = time.perf_counter()
        self.model, self.weights_info = self._build()
        self.weights_info["build_s"] = round(time.perf_counter() - started, 3)
        for _ in range(self.cfg.warmup_batches):
            self.predict([self.decode(self.warmup_item())])

    # -- per workload -------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _build(self) -> tuple[Any, dict[str, Any]]:
        """Return the model in eval mode and a record of which weights it has (``{"weights": "random", ...}``)."""

    @abc.abstractmethod
    def decode(self, raw: bytes | str) -> Any:
        """One request item to the model's input (raise :class:`InferenceError` for a bad one)."""

    @abc.abstractmethod
    def predict(self, items: list[Any]) -> list[dict[str, Any]]:
        """Run one batch; one answer dict per item."""

    @abc.abstractmethod
    def sample_items(self, count: int, seed: int) -> list[bytes | str]:
        """``count`` request items made from real data (photos, sentences, speech), seeded."""

    @abc.abstractmethod
    def warmup_item(self) -> bytes | str:
        ...

    # -- shared -------------------------------------------------------------------------------------------------------
    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.cfg.precision]

    def metadata(self) -> dict[str, Any]:
        """The OIP v2 model metadata answer."""
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "pytorch",
            "inputs": [{"name": self.input_name, "datatype": "BYTES", "shape": [-1],
                        "parameters": {"encoding": "base64" if self.binary_input else "utf-8"}}],
            "outputs": self.output_spec(),
            "parameters": {"weights": self.weights_info, "settings": self.cfg.model_dump()},
        }

    def output_spec(self) -> list[dict[str, Any]]:
        return [{"name": "label", "datatype": "BYTES", "shape": [-1]}, {"name": "score", "datatype": "FP32", "shape": [-1]}]

    def request_body(self, items: list[bytes | str]) -> dict[str, Any]:
        """An OIP v2 inference request for ``items``."""
        data = [base64.b64encode(i).decode() if isinstance(i, bytes) else i for i in items]
        return {"inputs": [{"name": self.input_name, "shape": [len(data)], "datatype": "BYTES", "data": data}]}

    def items_from_request(self, body: dict[str, Any]) -> list[bytes | str]:
        """The raw items of an OIP v2 request, checked against this workload's input."""
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise InferenceError(f"expected 'inputs' to hold exactly one tensor named {self.input_name!r}")
        tensor = inputs[0]
        if tensor.get("name") != self.input_name:
            raise InferenceError(f"expected input {self.input_name!r}, got {tensor.get('name')!r}")
        if tensor.get("datatype") != "BYTES":
            raise InferenceError(f"input {self.input_name!r}: expected datatype BYTES, got {tensor.get('datatype')!r}")
        data = tensor.get("data")
        if not isinstance(data, list) or not data or not all(isinstance(d, str) for d in data):
            raise InferenceError(f"input {self.input_name!r}: expected 'data' to be a non-empty list of strings")
        if tensor.get("shape") != [len(data)]:
            raise InferenceError(f"input {self.input_name!r}: shape {tensor.get('shape')} does not match {len(data)} items")
        if not self.binary_input:
            return list(data)
        try:
            return [base64.b64decode(d, validate=True) for d in data]
        except binascii.Error as exc:
            raise InferenceError(f"input {self.input_name!r}: items must be base64: {exc}") from None

    def response_outputs(self, answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """OIP v2 output tensors for a request's answers (one row per item)."""
        outputs = []
        for spec in self.output_spec():
            values = [a[spec["name"]] for a in answers]
            outputs.append({"name": spec["name"], "datatype": spec["datatype"], "shape": [len(values)], "data": values})
        return outputs
