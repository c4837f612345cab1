"""The three workloads behind one interface: build the model, decode a request, run a batch, make sample requests.

Modules: ``base`` (the interface), ``oip`` (Open Inference Protocol v2 tensors), ``device`` (threads, precision,
compile, GPU staging and metrics), ``resnet50``, ``distilbert``, ``whisper``, ``whisper_ct2`` (real Whisper weights
from CTranslate2 files), ``samples`` (payloads from real data).
"""

from __future__ import annotations

from gawm_lib.config import WorkloadConfig
from gawm_lib.workloads.base import Workload
from gawm_lib.workloads.oip import InferenceError


def build_workload(cfg: WorkloadConfig) -> Workload:
    """The workload object for a config (the model is built by ``load()``, not here)."""
    if cfg.name == "resnet50":
        from gawm_lib.workloads.resnet50 import ResNet50
        return ResNet50(cfg)
    if cfg.name == "distilbert":
        from gawm_lib.workloads.distilbert import DistilBert
        return DistilBert(cfg)
    if cfg.name == "whisper":
        from gawm_lib.workloads.whisper import Whisper
        return Whisper(cfg)
    raise ValueError(f"unknown workload {cfg.name!r}")


__all__ = ["InferenceError", "Workload", "build_workload"]
