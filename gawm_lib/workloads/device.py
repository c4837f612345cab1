"""Device set-up shared by the workloads: threads and precision, torch.compile, host-to-GPU staging, GPU metrics.

With ``cuda_graphs``, :class:`GraphedForward` captures a workload's device-side computation once per padded batch size
and replays it: one launch per batch instead of hundreds of kernel launches, each of which had to take Python's GIL back
from the threads parsing requests (on a busy server that, not the GPU, set the pace).

The server collates the next batch while the current one runs. On a GPU, :class:`Stager` copies it from pinned memory
on a side CUDA stream, so the copy overlaps the running batch; the forward pass waits for the copy's event only.

:class:`GpuCollector` reads the GPUs this process uses at scrape time: torch's allocated and reserved memory, and from
NVML (``nvidia-ml-py``) utilisation, memory used, power and the energy counter. Without a GPU or NVML it exports
nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from gawm_lib.config import WorkloadConfig

log = logging.getLogger("gawm.device")


def setup_torch(cfg: WorkloadConfig, fixed_shapes: bool) -> None:
    """Intra-op threads and GPU flags before the model is built."""
    import torch

    torch.set_num_threads(cfg.threads)
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA GPU")
        # With a few padded batch sizes, autotuning each convolution shape once pays; with every batch size possible
        # (Whisper is not padded) each new size would stall its batch for the autotuning.
        torch.backends.cudnn.benchmark = fixed_shapes


def maybe_compile(module: Any, cfg: WorkloadConfig) -> Any:
    """``torch.compile`` the module when the settings ask for it (static shapes: batches are padded)."""
    if not cfg.compile:
        return module
    import torch
    import torch._dynamo

    # One graph per padded batch size: more than dynamo's default of 8 recompiles, past which it would silently run
    # the module eagerly.
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, max(64, getattr(torch._dynamo.config, limit)))
    return torch.compile(module, mode=cfg.compile_mode, dynamic=False)


def stack(arrays: list[Any], rows: int, device: str) -> Any:
    """``arrays`` (numpy, one shape and dtype) stacked into a ``rows``-row tensor, the rows past them repeating the
    first (padding). For a GPU the tensor is in pinned memory: one host copy, then the DMA."""
    import numpy as np
    import torch

    first = arrays[0]
    dtype = torch.from_numpy(np.empty(0, first.dtype)).dtype
    out = torch.empty((rows, *first.shape), dtype=dtype, pin_memory=device == "cuda")
    view = out.numpy()
    np.stack(arrays, out=view[: len(arrays)])
    view[len(arrays) :] = first
    return out


class GraphedForward:
    """``fn(**tensors)`` captured as one CUDA graph per input signature (names, shapes, dtypes) and replayed.

    A call copies its inputs into the graph's static inputs, replays, and returns the graph's static outputs: they are
    overwritten by the next replay, so the caller reads them (``.cpu()``) before calling again, as the server's single
    compute thread does. Graphs are captured on first use of a signature (the warm-up visits every padded size), after
    two eager calls on a side stream (``torch.compile`` compiles there), in capture mode ``thread_local`` so that the
    staging thread's copies may go on meanwhile. All graphs share one memory pool: they never run at the same time.
    """

    def __init__(self, fn: Any):
        import torch

        self.fn = fn
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, tuple[Any, dict[str, Any], Any]] = {}

    @staticmethod
    def signature(tensors: dict[str, Any]) -> tuple:
        return tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(tensors.items()))

    def capture(self, tensors: dict[str, Any]) -> tuple[Any, dict[str, Any], Any]:
        import torch

        static = {k: v.clone() for k, v in tensors.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn(**static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            out = self.fn(**static)
        entry = self.graphs[self.signature(tensors)] = (graph, static, out)
        log.info("captured a CUDA graph for %s", {k: tuple(v.shape) for k, v in tensors.items()})
        return entry

    def __call__(self, **tensors: Any) -> Any:
        entry = self.graphs.get(self.signature(tensors)) or self.capture(tensors)
        graph, static, out = entry
        for key, value in tensors.items():
            static[key].copy_(value, non_blocking=True)
        graph.replay()
        return out


class Staged:
    """Tensors on their way to the device; :meth:`get` waits for the copy (on the GPU, not the host)."""

    def __init__(self, tensors: dict[str, Any], event: Any = None):
        self.tensors, self.event = tensors, event

    def get(self) -> dict[str, Any]:
        if self.event is not None:
            import torch

            stream = torch.cuda.current_stream()
            stream.wait_event(self.event)
            for t in self.tensors.values():
                t.record_stream(stream)  # the side stream's memory stays alive until this stream is done with it
        return self.tensors


class Stager:
    """Copies host tensors to the device: directly on the CPU, from pinned memory on a side stream on a GPU."""

    def __init__(self, device: str):
        self.device = device
        self.stream = None
        if device == "cuda":
            import torch

            self.stream = torch.cuda.Stream()

    def __call__(self, tensors: dict[str, Any], dtypes: dict[str, Any] | None = None) -> Staged:
        dtypes = dtypes or {}
        if self.stream is None:
            return Staged({k: v.to(dtypes[k]) if k in dtypes else v for k, v in tensors.items()})
        import torch

        with torch.cuda.stream(self.stream):
            out = {}
            for key, value in tensors.items():
                pinned = value if value.is_pinned() else value.pin_memory()
                moved = pinned.to(self.device, non_blocking=True)
                out[key] = moved.to(dtypes[key]) if key in dtypes else moved  # convert on the GPU: fewer bytes to copy
            event = torch.cuda.Event()
            event.record(self.stream)
        return Staged(out, event)


class GpuCollector:
    """A Prometheus collector of the GPUs this process sees (``gpu`` is NVML's index, as DCGM labels it)."""

    def __init__(self, model: str, replica: str, nvml: Any = None, torch_module: Any = None):
        self.labels = {"model": model, "replica": replica}
        self.nvml = nvml
        self.torch = torch_module
        self.handles: list[tuple[int, str, Any]] = []  # (torch index, NVML index, handle)

    def start(self) -> GpuCollector:
        """Find the GPUs (call once the model is on its device); a machine without them exports nothing."""
        if self.torch is None:
            import torch

            self.torch = torch
        if not self.torch.cuda.is_available():
            return self
        if self.nvml is None:
            try:
                import pynvml

                self.nvml = pynvml
            except ImportError:
                log.warning("nvidia-ml-py is not installed: no NVML GPU metrics (pip install nvidia-ml-py)")
        try:
            if self.nvml is not None:
                self.nvml.nvmlInit()
            for index in range(self.torch.cuda.device_count()):
                handle, nvml_index = None, str(index)
                if self.nvml is not None:
                    handle = self._handle(index)
                    nvml_index = str(self.nvml.nvmlDeviceGetIndex(handle))
                self.handles.append((index, nvml_index, handle))
        except Exception as exc:  # NVML missing from the driver, or no permission: metrics are optional
            log.warning("NVML unavailable (%s): no NVML GPU metrics", exc)
            self.nvml = None
            self.handles = [(i, str(i), None) for i in range(self.torch.cuda.device_count())]
        return self

    def _handle(self, index: int) -> Any:
        # With CUDA_VISIBLE_DEVICES, torch's index is not NVML's: match by UUID where torch reports it.
        uuid = getattr(self.torch.cuda.get_device_properties(index), "uuid", None)
        if uuid is not None:
            text = str(uuid)
            try:
                return self.nvml.nvmlDeviceGetHandleByUUID(text if text.startswith("GPU-") else f"GPU-{text}")
            except Exception as exc:  # an NVML that wants bytes, or a UUID format it does not know
                log.warning("NVML has no GPU with UUID %s (%s): matching by index", text, exc)
        return self.nvml.nvmlDeviceGetHandleByIndex(index)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        names = ["gpu", "model", "replica"]

        def family(kind, name, doc):
            return kind(name, doc, labels=names)

        allocated = family(GaugeMetricFamily, "gawm_gpu_torch_allocated_bytes", "Memory held by tensors (torch)")
        reserved = family(GaugeMetricFamily, "gawm_gpu_torch_reserved_bytes", "Memory reserved by torch's allocator")
        util = family(GaugeMetricFamily, "gawm_gpu_utilization_ratio", "Share of time a kernel ran (NVML), 0..1")
        used = family(GaugeMetricFamily, "gawm_gpu_memory_used_bytes", "Device memory used, all processes (NVML)")
        power = family(GaugeMetricFamily, "gawm_gpu_power_watts", "Power draw (NVML)")
        energy = family(CounterMetricFamily, "gawm_gpu_energy_joules", "Energy since the driver loaded (NVML)")
        for index, nvml_index, handle in self.handles:
            values = [nvml_index, self.labels["model"], self.labels["replica"]]
            allocated.add_metric(values, float(self.torch.cuda.memory_allocated(index)))
            reserved.add_metric(values, float(self.torch.cuda.memory_reserved(index)))
            if handle is None:
                continue
            try:
                util.add_metric(values, self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
                used.add_metric(values, float(self.nvml.nvmlDeviceGetMemoryInfo(handle).used))
                power.add_metric(values, self.nvml.nvmlDeviceGetPowerUsage(handle) / 1000)  # mW -> W
                energy.add_metric(values, self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000)  # mJ -> J
            except Exception as exc:  # a reading that fails must not fail the scrape
                log.debug("NVML reading failed: %s", exc)
        yield from (allocated, reserved, util, used, power, energy)
