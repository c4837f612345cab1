"""The three workloads behind one interface: build the model, decode a request, run a batch, make sample requests.

Modules: ``base`` (the interface), ``oip`` (Open Inference Protocol v2 tensors), ``device`` (threads, precision,
compile, GPU staging and metrics), ``resnet50``, ``distilbert``, ``whisper``, ``whisper_ct2`` (real Whisper weights
from CTranslate2 files), ``samples`` (payloads from real data).
"""

from __future__ import annotations

from gawm_lib.config import LoadConfig, WorkloadConfig
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


def sample_payloads(workload: Workload, load: LoadConfig) -> list[bytes | str]:
    """The request items a load samples from, as the load settings ask: ``payload_count`` of them, seeded by
    ``payload_seed``; for Whisper, clips of exactly ``payload_audio_s`` seconds where that is set."""
    if load.payload_audio_s is not None and workload.name == "whisper":
        from gawm_lib.workloads import samples

        return samples.speech_clips(load.payload_count, load.payload_seed, load.payload_audio_s)
    return workload.sample_items(load.payload_count, load.payload_seed)


__all__ = ["InferenceError", "Workload", "build_workload", "sample_payloads"]
