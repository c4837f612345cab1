"""The catalogue of named PromQL queries: each query is defined once, here.

Templates are PromQL with placeholders, filled by :meth:`Query.render`:

- ``$sel``: label matchers built from the caller's parameters that apply to the query's
  source (see :data:`SOURCE_LABELS`); ``$sel_dcgm`` / ``$sel_gawm`` use another source's
  labels (for derived queries that mix sources). A leading ``,`` vanishes when empty.
- ``$by``: the grouping labels (``Query.by`` unless overridden).
- ``$window``: the rate window (default ``1m``).
- ``$range``: the whole range a derived query covers (the phase length in ``query_phases``).

Values are converted to base units (seconds, bytes, joules, watts, ratio 0..1, hertz).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .promql import LabelValue, check_label_name, format_duration, matcher

SOURCES = ("gawm", "process", "dcgm", "nvml", "cadvisor", "kube-state-metrics", "node-exporter")
UNITS = (
    "seconds",
    "bytes",
    "joules",
    "watts",
    "ratio",
    "requests/s",
    "items/s",
    "requests",
    "items",
    "count",
    "cores",
    "hertz",
    "celsius",
    "joules/request",
)
#: Which caller parameters (label names) filter the series of each source.
SOURCE_LABELS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "gawm": ("workload", "replica", "model", "instance", "job", "namespace", "pod"),
        # any server's prometheus_client process collector (gawm's, KServe's, MLServer's): no model label; workload
        # and replica are the scrape target's labels (gawm_lib.experiment, gawm_lib.backends.external)
        "process": ("workload", "replica", "instance", "job", "namespace", "pod"),
        "nvml": ("workload", "replica", "gpu", "instance", "job", "namespace", "pod"),
        "dcgm": ("gpu", "UUID", "Hostname", "namespace", "pod", "container", "instance"),
        "cadvisor": ("namespace", "pod", "container", "node"),
        "kube-state-metrics": ("namespace", "pod", "container", "deployment"),
        "node-exporter": ("instance",),
    }
)
ALL_LABELS = frozenset(label for labels in SOURCE_LABELS.values() for label in labels)
#: Histogram buckets (seconds) of the gawm model server's duration histograms, defined here (the metrics contract)
#: and used by gawm_lib.server: 1-1.5-2-3-5-7 per decade from 0.5 ms to 60 s, so a histogram p99 is within about
#: 50 % anywhere from 1 ms to a minute.
GAWM_BUCKETS_S = (
    0.0005,
    0.0007,
    *(round(m * 10.0**e, 6) for e in range(-3, 1) for m in (1, 1.5, 2, 3, 5, 7)),
    10,
    15,
    20,
    30,
    50,
    60,
)
DEFAULT_WINDOW = "1m"
DEFAULT_RANGE = "5m"

_PLACEHOLDER = re.compile(r"(\{)?(,?)\$(sel(?:_([a-z_]+))?|by|window|range)\b(\})?")
_SOURCE_KEY = {s.replace("-", "_"): s for s in SOURCES}


@dataclass(frozen=True)
class Query:
    """One named query. ``lower_is_better`` is None where no direction is preferable (usage)."""

    name: str
    template: str
    unit: str
    description: str
    source: str
    lower_is_better: bool | None
    by: tuple[str, ...] = ()
    #: If set, only these parameters filter ``$sel`` (instead of all of the source's labels).
    filter_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"invalid query name {self.name!r}")
        if self.source not in SOURCES:
            raise ValueError(f"{self.name}: source {self.source!r} not in {SOURCES}")
        if self.unit not in UNITS:
            raise ValueError(f"{self.name}: unit {self.unit!r} not in {UNITS}")
        for m in _PLACEHOLDER.finditer(self.template):
            if m.group(4) and m.group(4) not in _SOURCE_KEY:
                raise ValueError(f"{self.name}: unknown placeholder {m.group(0)!r}")
        for label in self.by + self.filter_labels:
            check_label_name(label)

    @property
    def over_range(self) -> bool:
        """True for derived queries over a whole range (``$range``): one value per phase."""
        return "$range" in self.template

    @property
    def labels(self) -> tuple[str, ...]:
        """Parameters (label names) that filter this query."""
        found = {
            label
            for m in _PLACEHOLDER.finditer(self.template)
            if m.group(3).startswith("sel")
            for label in self._allowed(m.group(4))
        }
        return tuple(sorted(found))

    def _allowed(self, suffix: str | None) -> tuple[str, ...]:
        if suffix:
            return SOURCE_LABELS[_SOURCE_KEY[suffix]]
        return self.filter_labels or SOURCE_LABELS[self.source]

    def render(
        self,
        *,
        window: str | float | None = None,
        by: tuple[str, ...] | None = None,
        range: str | float | None = None,
        **labels: LabelValue | None,
    ) -> str:
        """Return the PromQL. ``labels`` are label matchers (str: exact; list: any of; Prefix);
        None values are skipped; a parameter that no source knows is a ValueError; one that
        this query's source lacks is ignored (e.g. ``workload`` for node-exporter queries)."""
        unknown = sorted(set(labels) - ALL_LABELS)
        if unknown:
            raise ValueError(f"unknown query parameter(s) {unknown}; known: {sorted(ALL_LABELS)}")
        groups = tuple(self.by if by is None else by)
        for label in groups:
            check_label_name(label)
        window_s = format_duration(DEFAULT_WINDOW if window is None else window)
        range_s = format_duration(DEFAULT_RANGE if range is None else range)

        def fill(m: re.Match) -> str:
            brace, comma, key, suffix, close = m.group(1) or "", m.group(2), m.group(3), m.group(4), m.group(5) or ""
            if key == "window":
                return brace + comma + window_s + close
            if key == "range":
                return brace + comma + range_s + close
            if key == "by":
                items = list(groups)
            else:
                allowed = self._allowed(suffix)
                items = [matcher(k, v) for k, v in sorted(labels.items()) if v is not None and k in allowed]
                if brace and close and not comma and not items:
                    return ""  # metric{$sel} with no matchers -> metric
            return brace + (comma + ",".join(items) if items else "") + close

        # One pass over the template: substituted values are never scanned again.
        return _PLACEHOLDER.sub(fill, self.template)


_CONTAINER = 'container!="",container!="POD"'
_Q = Query


def _hist(name: str, metric: str, q: float, what: str) -> Query:
    return _Q(
        name,
        f"histogram_quantile({q}, sum by (le,$by) (rate({metric}_bucket{{$sel}}[$window])))",
        "seconds",
        f"p{round(q * 100)} of {what} (histogram_quantile over {metric}).",
        "gawm",
        True,
        ("workload",),
    )


def _mean(name: str, metric: str, unit: str, what: str, lower: bool | None) -> Query:
    return _Q(
        name,
        f"sum by ($by) (rate({metric}_sum{{$sel}}[$window])) / sum by ($by) (rate({metric}_count{{$sel}}[$window]))",
        unit,
        f"Mean {what} ({metric} sum/count).",
        "gawm",
        lower,
        ("workload",),
    )


_ENTRIES = [
    # --- our model server (gawm_*) ---
    _Q(
        "throughput",
        'sum by ($by) (rate(gawm_requests_total{status="ok",$sel}[$window]))',
        "requests/s",
        "Successful requests per second.",
        "gawm",
        False,
        ("workload",),
    ),
    _Q(
        "requests_total",
        'sum by ($by) (gawm_requests_total{status="ok",$sel})',
        "requests",
        "Successful requests counted so far (the counter as scraped; resets when a replica restarts).",
        "gawm",
        None,
        ("workload",),
    ),
    _Q(
        "error_rate",
        'sum by ($by) (rate(gawm_requests_total{status="error",$sel}[$window])) '
        "/ sum by ($by) (rate(gawm_requests_total{$sel}[$window]))",
        "ratio",
        "Share of requests that failed.",
        "gawm",
        True,
        ("workload",),
    ),
    _mean("latency_mean", "gawm_request_duration_seconds", "seconds", "server-side request latency", True),
    _hist("latency_p50", "gawm_request_duration_seconds", 0.5, "server-side request latency"),
    _hist("latency_p95", "gawm_request_duration_seconds", 0.95, "server-side request latency"),
    _hist("latency_p99", "gawm_request_duration_seconds", 0.99, "server-side request latency"),
    _hist("queue_wait_p95", "gawm_queue_duration_seconds", 0.95, "time a request waits for a batch"),
    _mean("queue_wait_mean", "gawm_queue_duration_seconds", "seconds", "time a request waits for a batch", True),
    _mean("compute_time_mean", "gawm_compute_duration_seconds", "seconds", "forward-pass time per batch", True),
    _mean("batch_size_mean", "gawm_batch_size", "items", "items per executed batch", None),
    _Q(
        "inflight",
        "sum by ($by) (gawm_inflight_requests{$sel})",
        "requests",
        "Requests in flight (accepted, not yet answered).",
        "gawm",
        None,
        ("workload",),
    ),
    _Q(
        "items_per_second",
        "sum by ($by) (rate(gawm_items_total{$sel}[$window]))",
        "items/s",
        "Items (images, sequences, clips) processed per second.",
        "gawm",
        False,
        ("workload",),
    ),
    _Q(
        "gc_pause_ratio",
        "max by ($by) (sum by (replica, $by) (rate(gawm_gc_pause_seconds_sum{$sel}[$window])))",
        "ratio",
        "Share of time the busiest replica's process stood still in Python garbage collections.",
        "gawm",
        True,
        ("workload",),
    ),
    # --- the server process (prometheus_client's process collector: gawm's server, KServe, MLServer with
    # parallel_workers 0; not MLServer's multiprocess mode). The series have no labels of their own: workload and
    # replica come from the scrape target, for gawm's replicas and external endpoints alike ---
    _Q(
        "process_cpu",
        "sum by ($by) (rate(process_cpu_seconds_total{$sel}[$window]))",
        "cores",
        "CPU used by each replica's server process (rate of process_cpu_seconds_total: user + system), in cores; "
        "the process that serves /metrics only, not its children.",
        "process",
        None,
        ("workload", "replica"),
    ),
    _Q(
        "process_cpu_step",
        "sum by ($by) (rate(process_cpu_seconds_total{$sel}[$range]))",
        "cores",
        "CPU used by each replica's server process over the whole range (a step): the counter's slope between its "
        "first and last samples in it, one value per phase, where process_cpu's short rate window would mix in the "
        "time before.",
        "process",
        None,
        ("workload", "replica"),
    ),
    _Q(
        "process_resident_memory",
        "sum by ($by) (process_resident_memory_bytes{$sel})",
        "bytes",
        "Resident memory (RSS) of each replica's server process (process_resident_memory_bytes).",
        "process",
        None,
        ("workload", "replica"),
    ),
    # --- NVML, exported by our server (each replica's view of the devices it sees; replicas on one host that share a
    # GPU all report it, so the gauges are taken once per gpu index: one host, i.e. local runs; DCGM for clusters) ---
    _Q(
        "gpu_util_nvml",
        "max by (gpu, $by) (gawm_gpu_utilization_ratio{$sel})",
        "ratio",
        "GPU utilisation (NVML), per gpu index.",
        "nvml",
        None,
        ("workload",),
    ),
    _Q(
        "gpu_memory_used_nvml",
        "max by (gpu, $by) (gawm_gpu_memory_used_bytes{$sel})",
        "bytes",
        "GPU memory used by all processes (NVML), per gpu index.",
        "nvml",
        None,
        ("workload",),
    ),
    _Q(
        "gpu_power_nvml",
        "max by (gpu, $by) (gawm_gpu_power_watts{$sel})",
        "watts",
        "GPU power draw (NVML), per gpu index.",
        "nvml",
        None,
        ("workload",),
    ),
    _Q(
        "gpu_energy_nvml",
        "increase(gawm_gpu_energy_joules_total{$sel}[$range])",
        "joules",
        "GPU energy used over the range (NVML counter).",
        "nvml",
        True,
    ),
    _Q(
        "energy_per_request_nvml",
        "sum(max by (gpu) (increase(gawm_gpu_energy_joules_total{$sel}[$range]))) "
        '/ sum(increase(gawm_requests_total{status="ok",$sel_gawm}[$range]))',
        "joules/request",
        "GPU energy per successful request over the range: increase of the NVML energy counter "
        "(deduplicated by gpu index: one host, i.e. local runs) / increase of ok requests.",
        "nvml",
        True,
    ),
    # --- DCGM exporter ---
    _Q(
        "gpu_util_dcgm",
        "DCGM_FI_DEV_GPU_UTIL{$sel} / 100",
        "ratio",
        "GPU utilisation (DCGM, percent / 100).",
        "dcgm",
        None,
    ),
    _Q(
        "gpu_engine_active_dcgm",
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE{$sel}",
        "ratio",
        "Graphics engine active ratio (DCGM).",
        "dcgm",
        None,
    ),
    _Q("gpu_sm_active_dcgm", "DCGM_FI_PROF_SM_ACTIVE{$sel}", "ratio", "SM active ratio (DCGM).", "dcgm", None),
    _Q(
        "gpu_memory_used_dcgm",
        "DCGM_FI_DEV_FB_USED{$sel} * 1048576",
        "bytes",
        "Framebuffer memory used (DCGM MiB -> bytes).",
        "dcgm",
        None,
    ),
    _Q("gpu_power_dcgm", "DCGM_FI_DEV_POWER_USAGE{$sel}", "watts", "GPU power draw (DCGM).", "dcgm", None),
    _Q(
        "gpu_energy_dcgm",
        "increase(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{$sel}[$range]) / 1000",
        "joules",
        "GPU energy used over the range (DCGM mJ counter -> J).",
        "dcgm",
        True,
    ),
    _Q(
        "gpu_sm_clock_dcgm", "DCGM_FI_DEV_SM_CLOCK{$sel} * 1000000", "hertz", "SM clock (DCGM MHz -> Hz).", "dcgm", None
    ),
    _Q("gpu_temp_dcgm", "DCGM_FI_DEV_GPU_TEMP{$sel}", "celsius", "GPU temperature (DCGM).", "dcgm", None),
    _Q(
        "energy_per_request_dcgm",
        "sum(increase(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{$sel}[$range])) / 1000 "
        '/ sum(increase(gawm_requests_total{status="ok",$sel_gawm}[$range]))',
        "joules/request",
        "GPU energy per successful request over the range: increase of the DCGM energy counter / "
        "increase of ok requests. Filter GPUs with gpu/pod/namespace and requests with workload.",
        "dcgm",
        True,
    ),
    # --- cAdvisor (kubelet) ---
    _Q(
        "container_cpu",
        f"sum by ($by) (rate(container_cpu_usage_seconds_total{{{_CONTAINER},$sel}}[$window]))",
        "cores",
        "Container CPU usage (cores).",
        "cadvisor",
        None,
        ("namespace", "pod", "container"),
    ),
    _Q(
        "container_cpu_step",
        f"sum by ($by) (rate(container_cpu_usage_seconds_total{{{_CONTAINER},$sel}}[$range]))",
        "cores",
        "Container CPU usage over the whole range (a step): the counter's slope between its first and last samples "
        "in it, one value per phase, where container_cpu's short rate window would mix in the idle time before.",
        "cadvisor",
        None,
        ("namespace", "pod", "container"),
    ),
    _Q(
        "container_cpu_throttled_ratio_step",
        f"sum by ($by) (increase(container_cpu_cfs_throttled_periods_total{{{_CONTAINER},$sel}}[$range])) / "
        f"sum by ($by) (increase(container_cpu_cfs_periods_total{{{_CONTAINER},$sel}}[$range]))",
        "ratio",
        "Share of CFS periods in which the container was throttled, over the whole range (a step).",
        "cadvisor",
        True,
        ("namespace", "pod", "container"),
    ),
    _Q(
        "container_memory_working_set",
        f"sum by ($by) (container_memory_working_set_bytes{{{_CONTAINER},$sel}})",
        "bytes",
        "Container memory working set.",
        "cadvisor",
        None,
        ("namespace", "pod", "container"),
    ),
    _Q(
        "container_cpu_throttled_ratio",
        f"sum by ($by) (rate(container_cpu_cfs_throttled_periods_total{{{_CONTAINER},$sel}}[$window])) / "
        f"sum by ($by) (rate(container_cpu_cfs_periods_total{{{_CONTAINER},$sel}}[$window]))",
        "ratio",
        "Share of CFS periods in which the container was throttled.",
        "cadvisor",
        True,
        ("namespace", "pod", "container"),
    ),
    _Q(
        "container_cpu_pressure",
        f"sum by ($by) (rate(container_pressure_cpu_waiting_seconds_total{{{_CONTAINER},$sel}}[$window]))",
        "ratio",
        "Share of time the container waited for CPU (PSI).",
        "cadvisor",
        True,
        ("namespace", "pod", "container"),
    ),
    _Q(
        "container_memory_pressure",
        f"sum by ($by) (rate(container_pressure_memory_waiting_seconds_total{{{_CONTAINER},$sel}}[$window]))",
        "ratio",
        "Share of time the container stalled on memory (PSI).",
        "cadvisor",
        True,
        ("namespace", "pod", "container"),
    ),
    # --- kube-state-metrics ---
    _Q(
        "pod_restarts",
        "sum by ($by) (kube_pod_container_status_restarts_total{$sel})",
        "count",
        "Container restarts (cumulative).",
        "kube-state-metrics",
        True,
        ("namespace", "pod"),
        ("namespace", "pod", "container"),
    ),
    _Q(
        "pod_phase",
        "sum by ($by) (kube_pod_status_phase{$sel})",
        "count",
        "Pods per phase (Pending, Running, ...).",
        "kube-state-metrics",
        None,
        ("namespace", "phase"),
        ("namespace", "pod", "container"),
    ),
    _Q(
        "oom_killed",
        'sum by ($by) (kube_pod_container_status_last_terminated_reason{reason="OOMKilled",$sel})',
        "count",
        "Containers whose last termination was OOMKilled.",
        "kube-state-metrics",
        True,
        ("namespace", "pod", "container"),
        ("namespace", "pod", "container"),
    ),
    _Q(
        "available_replicas",
        "sum by ($by) (kube_deployment_status_replicas_available{$sel})",
        "count",
        "Available replicas per Deployment.",
        "kube-state-metrics",
        None,
        ("namespace", "deployment"),
        ("namespace", "deployment"),
    ),
    # --- node-exporter ---
    _Q(
        "node_cpu_busy",
        'avg by ($by) (1 - rate(node_cpu_seconds_total{mode="idle",$sel}[$window]))',
        "ratio",
        "Share of node CPU time not idle.",
        "node-exporter",
        None,
        ("instance",),
    ),
    _Q(
        "node_memory_available",
        "node_memory_MemAvailable_bytes{$sel}",
        "bytes",
        "Node memory available.",
        "node-exporter",
        None,
    ),
    _Q(
        "node_cpu_pressure",
        "rate(node_pressure_cpu_waiting_seconds_total{$sel}[$window])",
        "ratio",
        "Share of time some task waited for CPU (node PSI).",
        "node-exporter",
        True,
    ),
    _Q(
        "node_memory_pressure",
        "rate(node_pressure_memory_waiting_seconds_total{$sel}[$window])",
        "ratio",
        "Share of time some task stalled on memory (node PSI).",
        "node-exporter",
        True,
    ),
    _Q(
        "node_io_pressure",
        "rate(node_pressure_io_waiting_seconds_total{$sel}[$window])",
        "ratio",
        "Share of time some task waited for I/O (node PSI).",
        "node-exporter",
        True,
    ),
]


def _build(entries: list[Query]) -> Mapping[str, Query]:
    table: dict[str, Query] = {}
    for q in entries:
        if q.name in table:
            raise ValueError(f"query {q.name!r} defined twice")
        table[q.name] = q
    return MappingProxyType(table)


#: Every named query, by name (read-only).
CATALOGUE: Mapping[str, Query] = _build(_ENTRIES)


def get_query(name: str) -> Query:
    """Catalogue entry ``name``; KeyError with close matches otherwise."""
    try:
        return CATALOGUE[name]
    except KeyError:
        close = difflib.get_close_matches(name, CATALOGUE, n=3)
        hint = f"; did you mean {close}?" if close else f"; known: {sorted(CATALOGUE)}"
        raise KeyError(f"no query named {name!r} in the catalogue{hint}") from None
