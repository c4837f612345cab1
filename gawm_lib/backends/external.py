"""Servers gawm did not start (``backend.kind: external``): any Open Inference Protocol v2 server, measured as it is.

Nothing is started or stopped. On enter, for each endpoint of the workload (``backend.endpoints``): the headers are
expanded (``${NAME}`` from the environment, never written anywhere), the server must answer ``GET /v2/health/ready``
and ``GET /v2/models/<model>[/versions/<v>]/ready`` with 200 (else :class:`BackendError` naming the URL and what it
answered), and the model's metadata (``GET /v2/models/<model>``) says which input to fill and in which datatype and
shape: gawm's own payloads (JPEG photos, sentences, WAV speech) as BYTES, or pre-processed tensors: for ResNet50 pixels
as UINT8 (0..255) or floats (normalised with the ImageNet mean and std) in NCHW or NHWC, for Whisper 16 kHz PCM floats
[n, samples] (padded or cut where the metadata fixes the length); DistilBERT's token ids are not made (text as BYTES
only). One request is sent before the load (the probe): what it answered (status, output names, datatypes and shapes,
whether it reports gawm's per-request timings) is recorded in the manifest, so that an answer gawm does not expect (a
4xx, other outputs) is on record and not a crash, and the load then records each request's status as it does for
gawm's server. Fields only gawm's server returns (queue and compute time, batch size) stay unknown (-1 in the records,
as for any server that does not report them).

Prometheus scrapes an endpoint's ``metrics_url`` when one is given (``http://HOST:PORT/metrics``); a target that does
not come up is recorded in the manifest (``workloads.<name>.scrape``), and the run goes on.
"""

from __future__ import annotations

import base64
import io
import logging
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from gawm_lib.backends import Backend, BackendError, Replica
from gawm_lib.config import BackendConfig, ExternalEndpoint, WorkloadConfig

log = logging.getLogger("gawm.backends.external")
TIMEOUT_S = 10.0
GAWM_PARAMETERS = ("batch_size", "queue_ns", "compute_ns")  # answer parameters only gawm's server reports
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
FLOATS = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
INTEGERS = {"UINT8": np.uint8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64}


@dataclass(frozen=True)
class ExternalReplica(Replica):
    """An endpoint as a replica: ``url`` is its base URL as given (scheme, host, port and any path prefix)."""

    base_url: str = ""
    label: str = ""
    model: str = ""
    infer_path: str = ""
    headers: tuple[tuple[str, str], ...] = ()  # the templates, as in the params (${NAME} not expanded)

    @property
    def address(self) -> str:
        return self.label

    @property
    def url(self) -> str:
        return self.base_url


def model_path(endpoint: ExternalEndpoint, model: str) -> str:
    return f"/v2/models/{model}" + (f"/versions/{endpoint.version}" if endpoint.version else "")


def expand(endpoint: ExternalEndpoint, index: int) -> dict[str, str]:
    from gawm_lib.loadgen.spec import expand_headers

    try:
        return expand_headers(endpoint.headers)
    except ValueError as exc:
        raise BackendError(f"backend.endpoints.{index} ({endpoint.url}): {exc}") from None


class ExternalBackend(Backend):
    """The endpoints of one workload as replicas; ``.placement`` is empty (where they run is theirs), ``.facts`` holds
    per endpoint what the server says of itself (``GET /v2``) and the model's metadata."""

    def __init__(self, workload: WorkloadConfig, backend: BackendConfig, logs_dir: Path):
        self.workload = workload
        self.backend = backend
        self.logs_dir = Path(logs_dir)
        names = {e.workload for e in backend.endpoints} - {None}
        self.endpoints = [
            (i, e)
            for i, e in enumerate(backend.endpoints)
            if e.workload == workload.name or (e.workload is None and not names - {workload.name})
        ]
        self.replicas: list[Replica] = []
        self.metadata: list[dict[str, Any]] = []
        self.servers: list[dict[str, Any]] = []
        self.placement: list[Any] = []

    def start(self) -> list[Replica]:
        if not self.endpoints:
            raise BackendError(f"{self.workload.name}: no endpoint in backend.endpoints serves this workload")
        for replica_index, (index, endpoint) in enumerate(self.endpoints):
            model = endpoint.model or self.workload.name
            headers = expand(endpoint, index)
            base = endpoint.url.rstrip("/")
            path = model_path(endpoint, model)
            with httpx.Client(timeout=TIMEOUT_S, headers=headers, trust_env=False) as client:
                for check in ("/v2/health/ready", f"{path}/ready"):
                    try:
                        answer = client.get(base + check)
                    except httpx.HTTPError as exc:
                        raise BackendError(
                            f"backend.endpoints.{index}: {base + check} is not reachable: {type(exc).__name__}: {exc}"
                        ) from None
                    if answer.status_code != 200:
                        raise BackendError(
                            f"backend.endpoints.{index}: {base + check} is not ready: HTTP {answer.status_code} "
                            f"{answer.text[:300]!r}"
                        )
                self.metadata.append(_json(client, base + path, index))
                try:
                    self.servers.append(_json(client, base + "/v2", index))
                except BackendError as exc:  # optional: what the server says of itself
                    self.servers.append({"error": str(exc)})
            parts = urlsplit(base)
            self.replicas.append(
                ExternalReplica(
                    workload=self.workload.name,
                    index=replica_index,
                    host=parts.hostname or "",
                    port=parts.port or (443 if parts.scheme == "https" else 80),
                    base_url=base,
                    label=endpoint.replica or (parts.netloc + parts.path.rstrip("/")),
                    model=model,
                    infer_path=f"{path}/infer",
                    headers=tuple(endpoint.headers.items()),
                )
            )
        return self.replicas

    def stop(self) -> None:  # nothing was started
        return None

    # -- what the experiment asks of it --------------------------------------------------------------------------
    def request_bodies(self, workload: Any, items: list[bytes | str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """OIP v2 request bodies for ``items`` in the form the first endpoint's metadata asks for (every endpoint of a
        workload gets the same bodies: their inputs must agree), and what was chosen."""
        index, endpoint = self.endpoints[0]
        spec = choose_input(self.workload.name, self.metadata[0], endpoint.input, f"backend.endpoints.{index}")
        for (other_index, other), meta in zip(self.endpoints[1:], self.metadata[1:]):
            theirs = choose_input(self.workload.name, meta, other.input, f"backend.endpoints.{other_index}")
            if (theirs["name"], theirs["datatype"]) != (spec["name"], spec["datatype"]):
                raise BackendError(
                    f"backend.endpoints.{other_index}: input {theirs['name']}/{theirs['datatype']} differs from "
                    f"backend.endpoints.{index}'s {spec['name']}/{spec['datatype']}: one workload, one request form"
                )
        bodies = [encode(workload, item, spec) for item in items]
        for number, body in enumerate(bodies):
            body["id"] = f"gawm-{number}"  # some servers (KServe) answer 500 to a request without an id
        return bodies, spec

    def probe(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Send ``body`` once to each endpoint; what each answered, for the manifest. Never raises for an answer."""
        out = []
        for (index, endpoint), replica in zip(self.endpoints, self.replicas):
            assert isinstance(replica, ExternalReplica)
            url = replica.base_url + replica.infer_path
            try:
                with httpx.Client(timeout=60.0, headers=expand(endpoint, index), trust_env=False) as client:
                    answer = client.post(url, json=body)
            except httpx.HTTPError as exc:
                out.append({"replica": replica.label, "url": url, "error": f"{type(exc).__name__}: {exc}"})
                continue
            out.append({"replica": replica.label, "url": url, **describe_answer(answer)})
            if answer.status_code != 200:
                log.warning(
                    "%s answered the probe request with HTTP %s: %s", url, answer.status_code, answer.text[:200]
                )
        return out

    def load_spec_fields(self) -> dict[str, Any]:
        """The LoadSpec fields of these endpoints: per target, its infer path, header templates and replica label."""
        replicas = [r for r in self.replicas if isinstance(r, ExternalReplica)]
        return {
            "paths": [r.infer_path for r in replicas],
            "headers": [dict(r.headers) for r in replicas],
            "labels": [r.label for r in replicas],
        }

    def record(self, spec: dict[str, Any], probe: list[dict[str, Any]]) -> dict[str, Any]:
        """The manifest's ``workloads.<name>`` entry: endpoints (header names only, never values), the model's
        metadata, the input chosen and the probe's answers."""
        endpoints = []
        for (index, endpoint), replica, meta, server in zip(self.endpoints, self.replicas, self.metadata, self.servers):
            assert isinstance(replica, ExternalReplica)
            endpoints.append(
                {
                    "endpoint": index,
                    "url": replica.base_url,
                    "model": replica.model,
                    "version": endpoint.version,
                    "replica": replica.label,
                    "metrics_url": endpoint.metrics_url,
                    "header_names": sorted(endpoint.headers),
                    "server": server,
                    "metadata": meta,
                }
            )
        reports = any(p.get("gawm_timings") for p in probe)
        return {
            "replicas": [r.address for r in self.replicas],
            "weights": "unknown (external server)",
            "external": True,
            "endpoints": endpoints,
            "input": spec,
            "probe": probe,
            "server_timings": "reported" if reports else "unknown (queue, compute time and batch size: -1 in records)",
        }

    def scrape_targets(self) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
        """(Prometheus targets, notes on endpoints not scraped): targets from ``metrics_url``s at ``/metrics``."""
        targets, notes = [], []
        for (index, endpoint), replica in zip(self.endpoints, self.replicas):
            if not endpoint.metrics_url:
                notes.append(f"backend.endpoints.{index}: no metrics_url, not scraped")
                continue
            parts = urlsplit(endpoint.metrics_url)
            if parts.scheme != "http" or parts.path.rstrip("/") not in ("", "/metrics") or not parts.port:
                notes.append(
                    f"backend.endpoints.{index}: {endpoint.metrics_url}: only http://HOST:PORT/metrics is scraped"
                )
                continue
            targets.append((parts.netloc, {"workload": self.workload.name, "replica": str(replica.index)}))
        return targets, notes

    def watch(self, prometheus: Any, timeout_s: float = 20.0) -> dict[str, Any]:
        """Point ``prometheus`` at the endpoints' metrics and wait for them; what happened, for the manifest."""
        targets, notes = self.scrape_targets()
        prometheus.set_targets(targets)
        if targets:
            try:
                prometheus.wait_for_targets(len(targets), timeout_s=timeout_s)
            except TimeoutError as exc:
                notes.append(f"metrics targets not all up after {timeout_s:g} s: {str(exc)[:400]}")
                log.warning("external metrics: %s", notes[-1])
        return {"targets": [t for t, _ in targets], "notes": notes}


def prepare(
    backend: ExternalBackend, workload: Any, items: list[bytes | str], load_dir: Path
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """What :func:`gawm_lib.experiment.measure` needs of external endpoints once they are ready: the request bodies
    (written to ``<load_dir>/<workload>-bodies.jsonl``, in the form the model asks for), the extra LoadSpec fields, and
    the manifest's record (with the probe's answers)."""
    from gawm_lib.loadgen import write_bodies

    bodies, spec = backend.request_bodies(workload, items)
    probe = backend.probe(bodies[0])
    path = write_bodies(Path(load_dir) / f"{workload.name}-bodies.jsonl", bodies)
    return path, backend.load_spec_fields(), backend.record(spec, probe)


def _json(client: httpx.Client, url: str, index: int) -> dict[str, Any]:
    try:
        answer = client.get(url)
        answer.raise_for_status()
        doc = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise BackendError(f"backend.endpoints.{index}: {url}: {type(exc).__name__}: {exc}") from None
    if not isinstance(doc, dict):
        raise BackendError(f"backend.endpoints.{index}: {url}: expected a JSON object, got {type(doc).__name__}")
    return doc


# -- requests in the form a model asks for ---------------------------------------------------------------------------
def choose_input(workload: str, metadata: dict[str, Any], wanted: str | None, where: str) -> dict[str, Any]:
    """The input to fill: ``wanted`` (a name from the metadata), else the first input gawm can make for ``workload``.
    A model whose metadata lists no inputs gets gawm's own form (BYTES, the workload's input name)."""
    inputs = [i for i in metadata.get("inputs") or [] if isinstance(i, dict) and "name" in i]
    if not inputs:
        default = {"resnet50": "image", "distilbert": "text", "whisper": "audio"}[workload]
        return {"name": wanted or default, "datatype": "BYTES", "shape": [-1], "layout": "", "from_metadata": False}
    if wanted is not None:
        chosen = [i for i in inputs if i["name"] == wanted]
        if not chosen:
            raise BackendError(f"{where}.input: expected one of {[i['name'] for i in inputs]}, got {wanted!r}")
        candidates = chosen
    else:
        candidates = inputs
    problems = []
    for spec in candidates:
        why = _cannot_make(workload, spec)
        if why is None:
            shape = [int(d) for d in spec.get("shape") or [-1]]
            layout = ""
            if spec["datatype"] != "BYTES":
                layout = "PCM" if workload == "whisper" else "NHWC" if shape[-1] == 3 else "NCHW"
            return {
                "name": spec["name"],
                "datatype": spec["datatype"],
                "shape": shape,
                "layout": layout,
                "from_metadata": True,
            }
        problems.append(f"{spec['name']} ({spec.get('datatype')} {spec.get('shape')}): {why}")
    raise BackendError(f"{where}: gawm cannot make any input this model asks for: " + "; ".join(problems))


def _cannot_make(workload: str, spec: dict[str, Any]) -> str | None:
    datatype = spec.get("datatype")
    shape = spec.get("shape") or [-1]
    if datatype == "BYTES":
        return None if len(shape) <= 2 else "a BYTES input of rank 1 or 2 ([n] or [n, 1]) was expected"
    if workload == "whisper":
        if datatype in FLOATS and len(shape) == 2:
            return None
        return "speech as PCM: FP16/32/64 [n, samples] (16 kHz, -1..1)"
    if workload != "resnet50":
        return f"gawm sends {workload} payloads as BYTES only (pre-processed tensors: ResNet50 pixels, Whisper PCM)"
    if datatype not in FLOATS and datatype not in INTEGERS:
        return f"pixels as UINT8, INT16/32/64 or FP16/32/64, got {datatype}"
    if len(shape) != 4 or sorted(int(d) for d in shape[1:]) not in ([3, 224, 224], [-1, -1, 3], [-1, -1, -1]):
        return "a shape [n, 3, 224, 224] (NCHW) or [n, 224, 224, 3] (NHWC)"
    return None


def encode(workload: Any, item: bytes | str, spec: dict[str, Any]) -> dict[str, Any]:
    """One OIP v2 JSON request of one item in the form of ``spec`` (from :func:`choose_input`)."""
    name, datatype, shape = spec["name"], spec["datatype"], spec["shape"]
    if datatype == "BYTES":
        data = base64.b64encode(item).decode() if isinstance(item, bytes) else item
        return {"inputs": [{"name": name, "shape": [1] * max(1, len(shape)), "datatype": "BYTES", "data": [data]}]}
    if spec["layout"] == "PCM":  # a WAV clip as 16 kHz samples in -1..1, padded or cut to a fixed length if asked
        with wave.open(io.BytesIO(item)) as clip:
            pcm = np.frombuffer(clip.readframes(clip.getnframes()), dtype="<i2").astype(np.float32) / 32768
        if shape[1] > 0:
            pcm = np.pad(pcm[: shape[1]], (0, max(0, shape[1] - len(pcm))))
        values = [round(float(v), 6) for v in pcm.astype(FLOATS[datatype])]
        return {"inputs": [{"name": name, "shape": [1, len(pcm)], "datatype": datatype, "data": values}]}
    pixels = workload.decode_item(item)  # uint8 [3, 224, 224], as gawm's server pre-processes it
    if spec["layout"] == "NHWC":
        pixels = pixels.transpose(1, 2, 0)
    if datatype in FLOATS:
        mean = np.array(IMAGE_MEAN, dtype=np.float32) * 255
        std = np.array(IMAGE_STD, dtype=np.float32) * 255
        if spec["layout"] == "NHWC":
            array = (pixels.astype(np.float32) - mean) / std
        else:
            array = (pixels.astype(np.float32) - mean[:, None, None]) / std[:, None, None]
        array = array.astype(FLOATS[datatype])
        values = [round(float(v), 5) for v in array.reshape(-1)]
    else:
        values = pixels.astype(INTEGERS[datatype]).reshape(-1).tolist()
    return {"inputs": [{"name": name, "shape": [1, *pixels.shape], "datatype": datatype, "data": values}]}


def describe_answer(answer: httpx.Response) -> dict[str, Any]:
    """Status, outputs (name, datatype, shape) and whether gawm's per-request timings came back."""
    out: dict[str, Any] = {"status": answer.status_code}
    try:
        doc = answer.json()
    except ValueError:
        return {**out, "body": answer.text[:300], "json": False}
    if not isinstance(doc, dict):
        return {**out, "body": answer.text[:300], "json": True}
    if answer.status_code != 200:
        return {**out, "error": str(doc.get("error", doc))[:300]}
    outputs = doc.get("outputs") if isinstance(doc.get("outputs"), list) else []
    params = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
    return {
        **out,
        "outputs": [{k: o.get(k) for k in ("name", "datatype", "shape")} for o in outputs if isinstance(o, dict)],
        "gawm_timings": all(k in params for k in GAWM_PARAMETERS),
    }
