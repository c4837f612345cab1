"""Container metrics of a Kubernetes run: the run's own Prometheus (``gawm_lib.prom.local``) discovers the cluster's
nodes with ``kubernetes_sd_configs`` and scrapes each kubelet's cAdvisor (``/metrics/cadvisor``: container CPU,
memory, CPU throttling, pressure) through the API server's node proxy, with the credentials of the run's kubeconfig;
after the load, :func:`query_container_phases` asks it for the catalogue's cAdvisor queries per model-server pod.

Going through the API server needs no route to the kubelets' port 10250 and no kubelet credentials, only the
``nodes/proxy`` permission (a cluster admin's kubeconfig has it; the workbench's namespaced Role does not, and then
the container queries come back empty and the manifest says so). Kubernetes service discovery needs Prometheus built
with it: Prometheus 3 (``k8s/testenv/fetch-prometheus3.sh``), not Debian 12's 2.42.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from gawm_lib.cluster.connect import ClusterError, connect
from gawm_lib.cluster.manifests import deployment_name
from gawm_lib.config import BackendConfig

log = logging.getLogger("gawm.cluster.monitoring")
JOB = "cadvisor"
#: cAdvisor queries of the catalogue saved for a Kubernetes run, per pod and container.
CONTAINER_QUERIES = (
    "container_cpu",
    "container_cpu_step",
    "container_cpu_throttled_ratio_step",
    "container_memory_working_set",
    "container_cpu_throttled_ratio",
    "container_cpu_pressure",
    "container_memory_pressure",
)
#: Rate window of the container queries [s]: the kubelet's cAdvisor refreshes container statistics every 10-15 s
#: (its housekeeping interval) and stamps them, so a rate needs a window of a few of those, whatever the scrape
#: interval.
WINDOW_S = 30.0
SCRAPE_INTERVAL_S = 5.0
_SECRETS: list[str] = []


def _private_file(text: str) -> str:
    """``text`` in a file only this user can read, removed when this process exits (a token must not land in the run
    directory, which people share)."""
    folder = tempfile.mkdtemp(prefix="gawm-prometheus-credentials-")
    if not _SECRETS:
        atexit.register(lambda: [shutil.rmtree(f, ignore_errors=True) for f in _SECRETS])
    _SECRETS.append(folder)
    path = os.path.join(folder, "token")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(text)
    return path


def _access(configuration: Any) -> dict[str, Any]:
    """The API server's address and the Prometheus ``tls_config`` / ``authorization`` of a kubeconfig."""
    tls: dict[str, Any] = {}
    if configuration.ssl_ca_cert:
        tls["ca_file"] = configuration.ssl_ca_cert
    if not configuration.verify_ssl:
        tls["insecure_skip_verify"] = True
    if configuration.cert_file and configuration.key_file:
        tls["cert_file"], tls["key_file"] = configuration.cert_file, configuration.key_file
    access: dict[str, Any] = {"api_server": configuration.host.rstrip("/"), "tls_config": tls}
    bearer = (configuration.api_key or {}).get("authorization") or (configuration.api_key or {}).get("BearerToken")
    if bearer:
        token = bearer.split(" ", 1)[1] if bearer.lower().startswith("bearer ") else bearer
        access["authorization"] = {"credentials_file": _private_file(token)}
    return access


def cadvisor_scrape_config(backend: BackendConfig, api_client: Any = None) -> dict[str, Any]:
    """The scrape config of job ``cadvisor``: every node found by ``kubernetes_sd_configs`` (role node), scraped at
    ``/api/v1/nodes/NODE/proxy/metrics/cadvisor`` on the API server, keeping the series of ``backend.namespace`` only.
    Series keep cAdvisor's ``namespace``, ``pod``, ``container`` and ``image`` labels and get ``node``."""
    api = api_client or connect(backend.kubeconfig, backend.context)
    access = _access(api.configuration)
    server = urlsplit(access["api_server"])
    sd = {"role": "node", **{k: v for k, v in access.items() if k != "api_server"}, "api_server": access["api_server"]}
    scrape: dict[str, Any] = {
        "job_name": JOB,
        # cAdvisor refreshes every 10-15 s, so more frequent scrapes (through the API server, on the measured
        # machine's cores) would only add load
        "scrape_interval": f"{SCRAPE_INTERVAL_S:g}s",
        "scrape_timeout": f"{SCRAPE_INTERVAL_S:g}s",
        "scheme": server.scheme or "https",
        "tls_config": dict(access["tls_config"]),
        "kubernetes_sd_configs": [sd],
        "relabel_configs": [
            {"source_labels": ["__meta_kubernetes_node_name"], "target_label": "node"},
            {"target_label": "__address__", "replacement": server.netloc},
            {
                "source_labels": ["__meta_kubernetes_node_name"],
                "regex": "(.+)",
                "target_label": "__metrics_path__",
                "replacement": "/api/v1/nodes/$1/proxy/metrics/cadvisor",
            },
        ],
        "metric_relabel_configs": [
            {"source_labels": ["namespace"], "regex": backend.namespace, "action": "keep"},
        ],
    }
    if "authorization" in access:
        scrape["authorization"] = dict(access["authorization"])
    return scrape


@functools.cache
def supports_kubernetes_sd(binary: str = "prometheus", timeout_s: float = 10.0) -> bool:
    """Whether this Prometheus binary has Kubernetes service discovery (Debian 12's 2.42 is built without it; its
    version string cannot tell): it is started on a config with one such job and a free port, and stopped as soon as
    it has loaded the config or refused it."""
    from gawm_lib.prom.local import find_binary

    path = find_binary(binary)
    with tempfile.TemporaryDirectory(prefix="gawm-prometheus-probe-") as folder:
        config = Path(folder) / "prometheus.yml"
        job = {"job_name": "probe", "kubernetes_sd_configs": [{"role": "node", "api_server": "https://127.0.0.1:1"}]}
        config.write_text(json.dumps({"scrape_configs": [job]}))  # JSON is YAML
        args = [
            path,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder}/data",
            "--web.listen-address=127.0.0.1:0",
        ]
        with subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
            deadline = time.monotonic() + timeout_s
            try:
                for line in proc.stderr:
                    if "Completed loading of configuration file" in line:
                        return True
                    if "Error loading config" in line or "field kubernetes_sd_configs not found" in line:
                        return False
                    if time.monotonic() > deadline:
                        break
                return False
            finally:
                proc.kill()


def run_scrape_configs(backend: BackendConfig, binary: str = "prometheus") -> list[dict[str, Any]]:
    """Extra scrape configs of the run's Prometheus for ``backend``: the cAdvisor job on ``kubernetes``, nothing on
    ``local``. None (logged) where the kubeconfig cannot be read (the backend will say what is wrong) or where the
    Prometheus ``binary`` lacks Kubernetes service discovery (the container queries then come back empty)."""
    if backend.kind != "kubernetes":
        return []
    try:
        if not supports_kubernetes_sd(binary):
            log.warning(
                "no container metrics: Prometheus %r lacks Kubernetes service discovery (Debian 12's 2.42 does); "
                "set prometheus.binary to a Prometheus 3 (k8s/testenv/fetch-prometheus3.sh)",
                binary,
            )
            return []
        return [cadvisor_scrape_config(backend)]
    except (ClusterError, OSError) as exc:
        log.warning("no container metrics: %s", exc)
        return []


def query_container_phases(
    url: str,
    results: Iterable[Mapping[str, Any]],
    namespace: str,
    step_s: float | None = None,
    query_names: Iterable[str] = CONTAINER_QUERIES,
    window: str | float = WINDOW_S,
    **kwargs: Any,
) -> pd.DataFrame:
    """:func:`gawm_lib.prom.query_run_phases` for the cAdvisor queries: each load result's phases, filtered to the
    pods of that workload's Deployment (``namespace``, pod names ``gawm-WORKLOAD-*``), one series per pod and
    container. Same columns (``workload``, ``step``, ``level`` added)."""
    from gawm_lib.prom.promql import Prefix
    from gawm_lib.prom.query import Phase, empty_frame, query_phases

    extra = {"workload": "str", "step": "int64", "level": "float64"}
    names = list(query_names)
    frames = []
    for result in results:
        workload, raw = str(result["workload"]), list(result.get("phases") or [])
        if not raw:
            continue
        params = {"namespace": namespace, "pod": Prefix(deployment_name(workload) + "-")}
        for p in raw:  # one phase at a time: phase names repeat ("step"), the row's phase is this one
            phase = Phase(
                str(p["phase"]),
                datetime.fromtimestamp(p["start_unix_ns"] / 1e9, UTC),
                datetime.fromtimestamp(p["end_unix_ns"] / 1e9, UTC),
            )
            frame = query_phases(url, names, [phase], step_s=step_s, params=params, window=window, **kwargs)
            frame["workload"] = workload
            frame["step"] = int(p.get("step", -1))
            frame["level"] = float(p.get("level", float("nan")))
            frames.append(frame.astype(extra))
    if not frames:
        return empty_frame(extra)
    return pd.concat(frames, ignore_index=True)


#: Columns of the usage table -> the container queries that give them, in order of preference, and how a step's
#: points are reduced. A step's CPU is the ``*_step`` query (the counters' increase over the whole step); runs recorded
#: before it existed fall back to the mean of the 30 s rate, which reads low for a step after idle time.
USAGE = {
    "cpu_cores": (("container_cpu_step", "mean"), ("container_cpu", "mean")),
    "memory_bytes": (("container_memory_working_set", "max"),),
    "throttled_ratio": (("container_cpu_throttled_ratio_step", "mean"), ("container_cpu_throttled_ratio", "mean")),
}
#: The same from the server processes' own counters (prometheus_client's process collector), for runs without
#: container metrics (local runs, external servers that export them): no throttling, the RSS for memory.
PROCESS_USAGE = {
    "cpu_cores": (("process_cpu_step", "mean"), ("process_cpu", "mean")),
    "memory_bytes": (("process_resident_memory", "max"),),
}
#: The rate-window queries that stand in for a step mean (runs recorded before the ``*_step`` queries).
WINDOWED_CPU = ("container_cpu", "process_cpu")


def _usage_column(metrics: pd.DataFrame, column: str, spec: dict, keys: list[str]) -> pd.DataFrame | None:
    """``column`` of the usage table of ``spec`` from one run's step metrics: per key, the first of its queries that
    has points; with ``cpu_source`` (the query used) for the CPU column."""
    found = None
    for query, how in spec[column]:
        part = metrics[metrics["query"] == query]
        if part.empty:
            continue
        part = part.groupby(keys, as_index=False)["value"].agg(how).rename(columns={"value": column})
        if column == "cpu_cores":
            part["cpu_source"] = query
        if found is None:
            found = part
        else:  # keys the preferred query lacks
            have = found.set_index(keys).index
            found = pd.concat([found, part[~part.set_index(keys).index.isin(have)]], ignore_index=True)
    return found


def _usage(loaded_runs: Iterable[Any], table: pd.DataFrame | None, spec: dict, label: str) -> pd.DataFrame:
    """The usage table of ``spec`` (column -> queries), one row per (run, workload, step, ``label``)."""
    keys = ["run_id", "workload", "step", "level", label]
    columns = [*keys, "cpu_cores", "cpu_source", *(c for c in spec if c != "cpu_cores")]
    queries = {query for choices in spec.values() for query, _ in choices}
    parts: dict[str, list[pd.DataFrame]] = {column: [] for column in spec}
    for run in loaded_runs:
        path = run.path / "metrics" / "metrics.parquet"
        if not path.exists():
            continue
        metrics = pd.read_parquet(path)
        metrics = metrics[metrics["query"].isin(queries) & (metrics["phase"] == "step")]
        if metrics.empty or "step" not in metrics:
            continue
        metrics = metrics.assign(
            run_id=run.id, **{label: [str(json.loads(labels).get(label, "")) for labels in metrics["labels"]]}
        )
        for column in spec:
            part = _usage_column(metrics, column, spec, keys)
            if part is not None:
                parts[column].append(part)
    frames = [pd.concat(found, ignore_index=True) for found in parts.values() if found]  # one per column, all runs
    if not frames:
        text = ("run_id", "workload", label, "cpu_source")
        return pd.DataFrame({c: pd.Series(dtype="str" if c in text else "float64") for c in columns})
    usage = frames[0]
    for frame in frames[1:]:
        usage = usage.merge(frame, on=keys, how="outer")
    for column in columns:
        if column not in usage:
            usage[column] = float("nan")
    usage = usage[columns]
    if table is not None and len(table):
        latency = table[["run_id", "workload", "step", "throughput_rps", "p50_ms", "p95_ms"]]
        usage = usage.merge(latency, on=["run_id", "workload", "step"], how="left")
    return usage.sort_values(["workload", "run_id", label, "step"], ignore_index=True)


def container_usage(loaded_runs: Iterable[Any], table: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (run, workload, step, pod) of the runs whose metrics hold container series (Kubernetes runs):
    mean CPU use over the step [cores] (``cpu_source`` names the query it came from), largest memory working set
    [bytes] and share of throttled CFS periods over the step, with the step's level, and its throughput and p50/p95
    latency from ``table`` (``analysis.summarise_runs``) when given. Empty (with these columns) when no run has
    container metrics, such as local runs: :func:`process_usage` serves those."""
    return _usage(loaded_runs, table, USAGE, "pod")


def process_usage(loaded_runs: Iterable[Any], table: pd.DataFrame | None = None) -> pd.DataFrame:
    """As :func:`container_usage`, from each replica's server process (``process_cpu_step``, falling back to the mean
    of ``process_cpu`` for runs recorded before it; the largest RSS), one row per (run, workload, step, replica):
    what local runs have. The process's own counters leave out its children and the container's other processes."""
    return _usage(loaded_runs, table, PROCESS_USAGE, "replica")


def plot_usage(usage: pd.DataFrame):
    """CPU [cores] and memory [MiB] of each replica against the step's throughput, next to the step's p50 and p95
    latency, one row of panels per workload, from :func:`container_usage` (a ``pod`` column: the container's, from
    the kubelet's cAdvisor) or :func:`process_usage` (a ``replica`` column: the server process's own). Returns the
    figure (the usage table is its data)."""
    import matplotlib.pyplot as plt

    container = "pod" in usage
    who = "pod" if container else "replica"
    workloads = sorted(usage["workload"].unique())
    fig, axes = plt.subplots(len(workloads), 3, figsize=(12, 3.2 * len(workloads)), squeeze=False)
    x = "throughput_rps" if "throughput_rps" in usage and usage["throughput_rps"].notna().any() else "level"
    for row, workload in zip(axes, workloads):
        data = usage[usage["workload"] == workload]
        for (run_id, name), series in data.groupby(["run_id", who]):
            series = series.sort_values("step")  # in the order of the load sweep: past saturation it bends back
            name = name if container else f"{workload}-{name}"
            label = name if data["run_id"].nunique() == 1 else f"{run_id}: {name}"
            row[0].plot(series[x], series["cpu_cores"], marker="o", label=label)
            row[1].plot(series[x], series["memory_bytes"] / 2**20, marker="o", label=label)
        if {"p50_ms", "p95_ms"} <= set(data):
            steps = data.drop_duplicates(["run_id", "step"]).sort_values("step")
            for run_id, series in steps.groupby("run_id"):
                row[2].plot(series[x], series["p95_ms"], marker="o", label=f"p95 {run_id}")
                row[2].plot(series[x], series["p50_ms"], marker="o", linestyle="--", label=f"p50 {run_id}")
        row[0].set_ylabel(f"{workload}\n{'container' if container else 'server process'} CPU [cores]")
        row[1].set_ylabel("memory working set [MiB]" if container else "resident memory (RSS) [MiB]")
        row[2].set_ylabel("latency [ms]")
        for axis in row:
            axis.set_xlabel("throughput [req/s]" if x == "throughput_rps" else "level")
            axis.grid(alpha=0.3)
            # from zero: a saturated replica's steps differ by a fraction of a req/s, which autoscaling would spread
            # over the whole axis; a margin on the right keeps the last point whole
            axis.set_xlim(0, 1.08 * (data[x].max() if data[x].max() > 0 else 1.0))
        for axis, column, scale in ((row[0], "cpu_cores", 1.0), (row[1], "memory_bytes", 2**-20)):
            top = data[column].max() * scale
            axis.set_ylim(0, 1.1 * top if top > 0 else None)  # NaN (not recorded): matplotlib's own
        row[0].legend(fontsize=7, loc="best")
        if row[2].lines:
            highest = data["p95_ms"].max()
            row[2].set_ylim(0, 1.4 * highest if highest > 0 else None)  # room above the points for the legend
            row[2].legend(fontsize=7, loc="upper left")
    windowed = "cpu_source" in usage and usage["cpu_source"].isin(WINDOWED_CPU).any()
    fig.suptitle(
        (
            "Container CPU and memory per replica (kubelet cAdvisor) next to latency\n"
            if container
            else "Server process CPU and memory per replica (the process's own counters) next to latency\n"
        )
        + (
            "CPU: the mean over each step of a rate over a short window (runs recorded before the step-mean "
            "query), so a step after idle time reads low"
            if windowed
            else "CPU: each step's mean (the usage counter's increase over the step)"
        )
    )
    fig.tight_layout()
    return fig
