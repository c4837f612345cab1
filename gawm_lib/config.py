"""Typed experiment settings, loaded from ``params/*.yaml`` with ``-p key=value`` overrides.

Precedence is defaults < params file < overrides. Validation happens before anything starts: an unknown key, a wrong
type or an out-of-range value raises :class:`ConfigError`, whose message names the file (or the override), the key path
and what was expected. Units are in the field names (``_s``, ``_ms``).

A params file is read strictly (:func:`read_params_file`): UTF-8, at most ``MAX_PARAMS_BYTES``, YAML without aliases or
a key given twice, not empty. Values are bounded by what one run can do (``MAX_USERS``, ``MAX_RATE_RPS`` and the other
``MAX_*`` constants), and a message quotes at most ``MAX_QUOTE_CHARS`` of any value and lists ``MAX_PROBLEMS`` problems.

Validation is pure: it checks types, ranges, names and the consistency of the settings with one another, never this
machine, so a params file for a cluster or a GPU machine validates anywhere. What the settings need of the machine that
runs them (local weights paths, the kubeconfig file, the trace file, CPU cores and GPUs for placement, the Prometheus
binary) is checked by :func:`preflight` at the start of a run, before anything starts, with messages of the same form.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

WorkloadName = Literal["resnet50", "distilbert", "whisper"]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# What one run can do. A value past these is a typo, not an experiment (`levels: [1000000000]` passed validation and
# the load process grew by 80 MB/s creating users, sending nothing); each is far above what the studies use (at most
# 512 users, 3,830 req/s, 8 replicas, 12 steps of 30 s, 64 payloads). Validation names the bound it applies.
MAX_USERS = 10_000  # closed loop: concurrent users, all load processes together (a task and a row buffer each)
MAX_RATE_RPS = 100_000  # open loop: arrivals [req/s], all load processes together (one holds ~7,000 req/s)
MAX_QUEUED = 100_000  # offline: requests queued at once
MAX_STEPS = 1_000  # steps of a sweep (levels), stages of a profile
MAX_STEP_S = 86_400  # one step, stage or trace replay [s]: 24 h
MAX_RUN_S = 7 * 86_400  # every step of a load at its shortest, one after another [s]: a week
MAX_REPLICAS = 64  # replicas of each workload; load processes
MAX_PAYLOADS = 10_000  # distinct sample payloads, held in memory by every load process
MAX_PAYLOAD_INPUTS = 65_536  # payload_count x payloads_per_request: the inputs each load process holds
MAX_TRACE_ROWS = 10_000_000  # arrivals in a trace file, read whole by every load process
MAX_PARAMS_BYTES = 1 << 20  # a params or suite file
MAX_QUOTE_CHARS = 200  # a value quoted in an error message is cut to this many characters
MAX_PROBLEMS = 20  # problems listed in one error message; the rest are counted


class WorkloadConfig(_Settings):
    """One served model and how the server runs it (units in the field names; sizes in bytes)."""

    name: WorkloadName
    weights: str = Field(
        "random",
        description="'random' (same compute, recorded as such), 'pretrained', or a local "
        "path (checked at the start of a local run: preflight)",
    )
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    threads: int = Field(1, ge=1, le=256, description="torch intra-op threads per replica")
    channels_last: bool = Field(False, description="ResNet50: NHWC memory format (faster convolutions on GPUs)")
    compile: bool = Field(
        False,
        description="torch.compile the model (Whisper: its encoder); batches are padded to "
        "powers of two so that warm-up compiles every shape before ready",
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    cuda_graphs: bool = Field(
        False,
        description="GPU: capture the model's forward pass once per padded batch size as a "
        "CUDA graph and replay it (one launch instead of hundreds, and far "
        "less time holding Python's GIL); ResNet50 and DistilBERT",
    )
    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="padded batch sizes on a GPU or with compile (each is warmed up, compiled and captured before "
        "ready); unset: powers of two up to max_batch_size, which is always added",
    )
    max_batch_size: int = Field(8, ge=1, le=4096, description="dynamic batching: most items in one forward pass")
    max_queue_delay_ms: float = Field(
        2.0, ge=0, le=10_000, description="dynamic batching: longest wait for a batch to fill"
    )
    max_queue_size: int = Field(
        256,
        ge=1,
        le=1_000_000,
        description="backpressure: requests admitted and not yet in a batch; one more is answered 503",
    )
    max_body_bytes: int = Field(64 << 20, ge=1024, le=2 << 30, description="largest request body; larger ones get 413")
    max_body_buffer_bytes: int = Field(
        256 << 20,
        ge=1024,
        le=64 << 30,
        description="most bytes of request bodies being read at once, over all connections (a body reserves its "
        "Content-Length when it starts); one that does not fit gets 503 with Retry-After; at least max_body_bytes",
    )
    max_header_bytes: int = Field(
        64 << 10,
        ge=1024,
        le=16 << 20,
        description="largest request line and headers together; larger ones get 431 and the connection is closed",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="a request's headers must arrive within this many seconds of its first byte, and its body within "
        "this many seconds of its headers; a slower one gets 408 and its connection is closed (it never holds a "
        "queue slot: a request is admitted once its body is in)",
    )
    keepalive_timeout_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="an idle connection (before its first request or between two) is closed after this long "
        "(uvicorn's timeout_keep_alive)",
    )
    shutdown_grace_s: float = Field(
        20.0,
        ge=0,
        le=3600,
        description="on SIGTERM: the server stops accepting connections and answers the requests in flight for at "
        "most this long, then exits 0 (keep it below the pod's terminationGracePeriodSeconds)",
    )
    api_docs: bool = Field(False, description="serve FastAPI's /docs, /redoc and /openapi.json (off: less to attack)")
    decode_workers: int = Field(
        4,
        ge=0,
        le=256,
        description="threads that parse and decode requests (JPEG, audio, text); 0: on the event loop "
        "itself, for decoding that is quick and holds the GIL (tokenising), where threads "
        "only add GIL hand-offs",
    )
    allow_client_shm: bool = Field(
        False,
        description="Triton's system shared-memory extension: clients on this host "
        "may register POSIX shared-memory objects and name them instead of "
        "sending input tensors in the body (trusted clients only, as "
        "Triton's --allow-client-shm)",
    )
    top_k: int = Field(5, ge=1, le=1000, description="ResNet50: classes returned per image")
    max_seq_len: int = Field(128, ge=8, le=512, description="DistilBERT: tokens after truncation")
    max_text_chars: int = Field(20_000, ge=1, le=10_000_000, description="DistilBERT: longer texts are refused (400)")
    model_size: Literal["tiny", "tiny.en", "base", "base.en", "small", "medium", "large-v3"] = Field(
        "tiny", description="Whisper model size"
    )
    decode_tokens: int | None = Field(
        None,
        ge=1,
        le=224,
        description="Whisper: most tokens decoded per clip; unset: 224 (the full window: a 30 s clip's transcript "
        "fits) with real weights, 8 with random weights (which never emit end-of-text, so this fixes the "
        "decode length); the effective value is recorded with the run's weights. A clip cut at this "
        "limit is counted as truncated",
    )
    temperatures: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.0],
        min_length=1,
        max_length=10,
        description="Whisper: decoding temperatures; more than one turns on openai-whisper's fallback (retry a clip at "
        "the next temperature when its text is too repetitive or too unlikely)",
    )
    timestamps: bool = Field(False, description="Whisper: predict timestamp tokens and return timed segments")
    max_audio_s: float = Field(30.0, gt=0, le=30, description="Whisper: longest clip accepted (one 30 s window)")
    warmup_batches: int = Field(1, ge=0, le=100, description="forward passes before the server reports ready")
    gc_freeze: bool = Field(
        True,
        description="server process: once the model is loaded, move every object then alive out of the garbage "
        "collector's reach (gc.freeze), so a full collection scans what requests create, not the "
        "framework's hundreds of thousands of objects (the DistilBERT server's full collection took "
        "114 ms on the build machine, a stall of every request in the process; see "
        "gawm_gc_pause_seconds)",
    )
    gc_thresholds: tuple[PositiveInt, PositiveInt, PositiveInt] | None = Field(
        (10_000, 10, 10),
        description="server process: gc.set_threshold (allocations between young collections, young collections per "
        "middle one, middle ones per full one); None: Python's (700, 10, 10). Under a backlog the pending "
        "requests' objects outlive young collections and every middle and full one scans them again, so "
        "with Python's thresholds the collector's share of time grew with the backlog (DistilBERT on an "
        "H200: 16 % at 1,150 req/s, p95 0.8-1.3 s); with these it stayed under 0.2 % and p95 at 44-90 ms "
        "(suite h200-tail-goal-distilbert-gc)",
    )
    gil_switch_interval_ms: float | None = Field(
        None,
        gt=0,
        le=100,
        description="server process: Python's thread switch interval; unset: 0.5 on a GPU (where the compute thread "
        "issues thousands of short kernel launches, each giving up the GIL and waiting up to the interval to "
        "get it back from the request threads), Python's 5 on a CPU",
    )

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str) -> str:
        # Whether a path exists is the machine's business: preflight checks it where the replicas run.
        if value in ("random", "pretrained") or (value.strip() and value == value.strip()):
            return value
        raise ValueError(f"expected 'random', 'pretrained' or a path, got {_quote(value)}")

    @field_validator("batch_sizes")
    @classmethod
    def _increasing(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError(f"expected strictly increasing batch sizes, got {value}")
        return value

    @model_validator(mode="after")
    def _batch_sizes_fit(self) -> WorkloadConfig:
        if self.batch_sizes and self.batch_sizes[-1] > self.max_batch_size:
            raise ValueError(
                f"batch_sizes: expected sizes up to max_batch_size ({self.max_batch_size}), got {self.batch_sizes[-1]}"
            )
        if self.max_body_buffer_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_body_buffer_bytes: expected at least max_body_bytes ({self.max_body_bytes}: one body must fit), "
                f"got {self.max_body_buffer_bytes}"
            )
        if self.cuda_graphs and self.device != "cuda":
            raise ValueError("cuda_graphs: expected device 'cuda' (CUDA graphs need a GPU)")
        if self.cuda_graphs and self.name == "whisper":
            raise ValueError(
                "cuda_graphs: expected workload resnet50 or distilbert (Whisper's decode loop is no fixed graph)"
            )
        return self

    @field_validator("temperatures")
    @classmethod
    def _ascending(cls, value: list[float]) -> list[float]:
        if value != sorted(value):
            raise ValueError(f"expected temperatures in ascending order (the fallback ladder), got {value}")
        return value


class ExternalEndpoint(_Settings):
    """One OIP v2 server gawm did not start (``backend.kind: external``): measured as it is, never started or stopped.
    ``headers`` are sent with every request (``Host`` for an ingress that routes by host name); a value may name
    environment variables as ``${NAME}``, read when the run starts and never written to the run directory, which is how
    a token must be given (an ``Authorization`` header without ``${...}`` is refused)."""

    url: str = Field(description="base URL of the server, e.g. http://127.0.0.1:8080 or http://ingress.example/prefix")
    model: str | None = Field(None, description="model name in /v2/models/<model>; unset: the workload's name")
    version: str | None = Field(None, description="model version (/v2/models/<model>/versions/<version>); unset: none")
    workload: WorkloadName | None = Field(
        None, description="gawm workload whose payloads this server gets; unset: the experiment's only workload"
    )
    replica: str | None = Field(None, description="label of this endpoint in the records; unset: its host:port")
    metrics_url: str | None = Field(
        None, description="Prometheus metrics of this server (http://HOST:PORT/metrics), scraped when given"
    )
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers; ${NAME}: from the env")
    input: str | None = Field(
        None, description="the model input to fill (a name from its metadata); unset: the first one gawm can make"
    )

    @field_validator("url", "metrics_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", value):
            raise ValueError(f"expected an http:// or https:// URL such as http://127.0.0.1:8080, got {value!r}")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name) or any(c in text for c in "\r\n"):
                raise ValueError(f"header {clip(repr(name))}: expected an HTTP header name and a one-line value")
            if name.lower() in ("authorization", "proxy-authorization", "x-api-key") and "${" not in text:
                raise ValueError(
                    f"header {name}: give the secret as ${{ENV_VAR}} (read at the start of the run, never written "
                    "to the run directory), e.g. 'Bearer ${KSERVE_TOKEN}'"
                )
        return value


class BackendConfig(_Settings):
    """Where replicas run: ``local`` child processes (default) or ``kubernetes`` (a Deployment + Service per workload).

    ``placement``, ``cpus`` and ``gpus`` place local replicas (``gawm_lib.backends.placement``): ``exclusive`` gives
    replica i its own cores (``threads`` of them) or its own GPU, ``shared`` puts every replica on the same ones (time-
    slicing them, like replicas on one time-sliced GPU), ``none`` leaves it to the OS. Fields after
    ``startup_timeout_s`` are read by the ``kubernetes`` backend only, where the device plugin places replicas
    (``k8s/overlays/gpu`` vs ``gpu-time-slicing``). ``cpu`` and ``memory`` are Kubernetes quantities ("500m", "2",
    "3Gi"); requests equal limits, so replicas get the Guaranteed QoS class and steady timings.
    """

    kind: Literal["local", "kubernetes", "external"] = "local"
    endpoints: list[ExternalEndpoint] = Field(
        default_factory=list,
        max_length=64,
        description="external: the servers to measure (gawm starts and stops nothing); one replica each",
    )
    replicas: int = Field(1, ge=1, le=MAX_REPLICAS)
    host: str = Field("127.0.0.1", description="local backend: loopback address the replicas listen on")
    placement: Literal["none", "shared", "exclusive"] = Field(
        "none",
        description="local: 'exclusive' (each replica alone on its own cores or GPU), 'shared' (all replicas on "
        "the same ones) or 'none' (not pinned)",
    )
    cpus: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list,
        description="local placement: CPU cores replicas are placed on; empty: every core this process may use",
    )
    gpus: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list,
        description="local placement, device cuda: GPUs (indices of the visible ones) replicas "
        "are placed on; empty: every visible GPU",
    )
    startup_timeout_s: float = Field(180.0, gt=0, le=3600, description="until every replica is ready (rollout) [s]")
    namespace: str = Field(
        "gawm", description="kubernetes: namespace of the replicas; it must exist (k8s/base makes it)"
    )
    kubeconfig: str | None = Field(
        None,
        description="kubernetes: kubeconfig file (on the machine that runs gawm: "
        "checked by the preflight); unset: $KUBECONFIG or ~/.kube/config, "
        "else the in-cluster service account",
    )
    context: str | None = Field(None, description="kubernetes: kubeconfig context; unset: its current context")
    image: str = Field("gawm-model-server:0.1.0", description="kubernetes: model-server image (k8s/Dockerfile)")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_mode: Literal["image", "host-python"] = Field(
        "image",
        description="kubernetes: 'image' (the default, for real clusters) runs the model-server image of "
        "k8s/Dockerfile, with Python, gawm and the weights inside; 'host-python' is for a local test node or a CI "
        "node that shares this machine's files: backend.image is then a tiny image (no Python in it) and the pod "
        "mounts /usr, this Python installation and this project directory with its virtual environment "
        "read-only from the node (hostPath), and runs the server with this venv's python",
    )
    service_account: str = Field("gawm", description="kubernetes: ServiceAccount of the pods (no API token is mounted)")
    gpu: int = Field(0, ge=0, le=16, description="kubernetes: nvidia.com/gpu per replica; 0 runs on CPU")
    runtime_class: str | None = Field(
        "nvidia",
        description="kubernetes: RuntimeClass of GPU pods; null where the default runtime already exposes GPUs",
    )
    cpu: str | None = Field(
        None, description="kubernetes: CPU request = limit per replica; unset: the workload's threads"
    )
    memory: str = Field("3Gi", description="kubernetes: memory request = limit per replica")
    node_selector: dict[str, str] = Field(default_factory=dict, description="kubernetes: node labels replicas need")
    tolerations: list[dict[str, str | int]] = Field(
        default_factory=list, description="kubernetes: extra pod tolerations (GPU replicas tolerate nvidia.com/gpu)"
    )
    port: int = Field(8000, ge=1, le=65535, description="kubernetes: container and Service port of the model server")
    teardown_timeout_s: float = Field(120.0, gt=0, le=3600, description="kubernetes: until the pods are gone [s]")

    @field_validator("host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        try:
            is_loopback = ipaddress.ip_address(value).is_loopback
        except ValueError:
            is_loopback = False
        if not is_loopback:
            raise ValueError(f"expected a loopback address such as 127.0.0.1, got {_quote(value)}")
        return value

    @field_validator("namespace", "service_account")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
            raise ValueError(
                f"expected a DNS-1123 label (lower-case letters, digits, '-'; at most 63), got {_quote(value)}"
            )
        return value

    @field_validator("runtime_class")
    @classmethod
    def _dns_subdomain(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", value):
            raise ValueError(f"expected a RuntimeClass name (DNS-1123 subdomain), got {_quote(value)}")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not value or value != value.strip() or any(c.isspace() or c.isupper() for c in value.split(":")[0]):
            raise ValueError(
                f"expected an image reference such as registry.example/gawm/model-server:0.1.0, got {_quote(value)}"
            )
        return value

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str | None, info) -> str | None:
        # Kubernetes resource.Quantity: a positive decimal with an optional SI, binary or exponent suffix.
        pattern = r"\+?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+|[mkMGTPE]|[KMGTPE]i)?"
        if value is not None and (not re.fullmatch(pattern, value) or not float(re.sub(r"[^\d.]", "", value) or 0)):
            example = "'500m' or '2'" if info.field_name == "cpu" else "'512Mi' or '3Gi'"
            raise ValueError(f"expected a positive Kubernetes quantity such as {example}, got {_quote(value)}")
        return value

    @field_validator("kubeconfig")
    @classmethod
    def _kubeconfig(cls, value: str | None) -> str | None:
        # Whether the file exists is the machine's business (preflight): a cluster's params file validates anywhere.
        if value is not None and not value.strip():
            raise ValueError("expected a kubeconfig file path, or leave it out ($KUBECONFIG or ~/.kube/config)")
        return value

    @field_validator("tolerations")
    @classmethod
    def _tolerations(cls, value: list[dict[str, str | int]]) -> list[dict[str, str | int]]:
        allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
        for toleration in value:
            if not set(toleration) <= allowed:
                raise ValueError(f"toleration keys are {sorted(allowed)}, got {sorted(toleration)}")
        return value

    @field_validator("cpus", "gpus")
    @classmethod
    def _unique_devices(cls, value: list[int], info: ValidationInfo) -> list[int]:
        # Whether this machine has them is the preflight's question.
        if len(set(value)) != len(value):
            raise ValueError(
                f"expected each {'core' if info.field_name == 'cpus' else 'GPU'} once, got {_quote(value)}"
            )
        return value

    @model_validator(mode="after")
    def _external(self) -> BackendConfig:
        if self.kind == "external" and not self.endpoints:
            raise ValueError("backend.kind external needs endpoints: [{url: http://HOST:PORT, model: NAME}, ...]")
        if self.kind != "external" and self.endpoints:
            raise ValueError(f"endpoints are for backend.kind external (kind is {self.kind})")
        if self.kind == "external" and (self.replicas != 1 or self.placement != "none" or self.cpus or self.gpus):
            raise ValueError("external: replicas are the endpoints; replicas, placement, cpus and gpus do not apply")
        return self

    @model_validator(mode="after")
    def _local_placement(self) -> BackendConfig:
        if self.kind == "kubernetes" and (self.placement != "none" or self.cpus or self.gpus):
            raise ValueError(
                "placement, cpus and gpus place local replicas; on kubernetes the device plugin places "
                "them: gpu: 1 per replica, whole GPUs (k8s/overlays/gpu) or time-sliced ones "
                "(k8s/overlays/gpu-time-slicing)"
            )
        return self


class LoadStage(_Settings):
    """One stage of a ``stages`` load: ``users`` (closed loop) or ``rate_rps`` (open loop) for ``duration_s``, ramping
    linearly to ``end_users`` / ``end_rate_rps`` when given (a step when not)."""

    duration_s: float = Field(gt=0, le=MAX_STEP_S)
    users: int | None = Field(
        None, ge=1, le=MAX_USERS, description="closed loop: concurrent users at the stage's start"
    )
    end_users: int | None = Field(None, ge=0, le=MAX_USERS, description="closed loop: users at the end (a linear ramp)")
    rate_rps: float | None = Field(
        None, gt=0, le=MAX_RATE_RPS, description="open loop: arrival rate at the start [req/s]"
    )
    end_rate_rps: float | None = Field(
        None, ge=0, le=MAX_RATE_RPS, description="open loop: rate at the end (a linear ramp) [req/s]"
    )
    arrival: Literal["poisson", "constant"] = Field(
        "poisson", description="open loop: Poisson or evenly spaced arrivals"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> LoadStage:
        if (self.users is None) == (self.rate_rps is None):
            raise ValueError("give either users (closed loop) or rate_rps (open loop)")
        if self.end_users is not None and self.users is None:
            raise ValueError("end_users ramps users: give users too (or use end_rate_rps with rate_rps)")
        if self.end_rate_rps is not None and self.rate_rps is None:
            raise ValueError("end_rate_rps ramps rate_rps: give rate_rps too (or use end_users with users)")
        return self


_TRACE_SUFFIXES = (".csv", ".parquet", ".pq")  # what gawm_lib.loadgen.schedule.read_trace reads
LoadScenario = Literal["single_stream", "closed_loop", "poisson", "constant_rate", "offline", "stages", "trace"]
_OPEN_LOOP = ("poisson", "constant_rate", "offline", "trace")
_LEVEL_BOUNDS = {  # scenario -> (largest level, what a level is)
    "closed_loop": (MAX_USERS, "concurrent users"),
    "poisson": (MAX_RATE_RPS, "arrival rates [req/s]"),
    "constant_rate": (MAX_RATE_RPS, "arrival rates [req/s]"),
    "offline": (MAX_QUEUED, "requests queued at once"),
}


class LoadConfig(_Settings):
    """How the load generator drives the servers (``gawm_lib.loadgen``); units are in the field names.

    Scenarios: ``single_stream`` (one request outstanding, the next sent when the last is answered: MLPerf
    SingleStream); ``closed_loop`` (``levels`` are numbers of concurrent users, each pausing ``think_time_s`` between an
    answer and its next request); ``poisson`` and ``constant_rate`` (open loop: ``levels`` are arrival rates [req/s],
    independent of the answers); ``offline`` (``levels`` requests queued at once, each of ``payloads_per_request``
    inputs, queued again until the step is long enough: MLPerf Offline); ``stages`` (the ``stages`` list: steps and
    ramps of users or rates, one continuous load); ``trace`` (arrival times and payload ids replayed from
    ``trace_path``). A sweep (``levels``) runs one step per level; each step lasts at least ``step_duration_s`` AND
    ``min_requests_per_step`` requests, at most ``max_step_duration_s``. A ``warmup_s`` phase at the first level comes
    first, recorded with phase ``warmup`` (for a trace: its first ``warmup_s`` seconds).
    """

    scenario: LoadScenario = Field("closed_loop", description="see the class docstring")
    levels: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [1.0, 2.0],
        min_length=1,
        max_length=MAX_STEPS,
        description="one step each: users (closed_loop), arrival rates [req/s] (poisson, constant_rate) or requests "
        "queued at once (offline)",
    )
    step_duration_s: float = Field(3.0, gt=0, le=MAX_STEP_S, description="shortest step [s]")
    min_requests_per_step: int = Field(1, ge=1, le=100_000_000, description="fewest requests a step sends")
    max_step_duration_s: float = Field(
        120.0, gt=0, le=MAX_STEP_S, description="a step ends here whatever its count [s]"
    )
    warmup_s: float = Field(1.0, ge=0, le=3600, description="load before the first step, recorded as phase 'warmup'")
    stages: list[LoadStage] = Field(
        default_factory=list,
        max_length=MAX_STEPS,
        validate_default=True,
        description="scenario stages: the load profile, in order",
    )
    think_time_s: float = Field(
        0.0, ge=0, le=3600, description="closed loop: mean pause between an answer and the user's next request [s]"
    )
    think_time_distribution: Literal["exponential", "constant"] = "exponential"
    request_timeout_s: float = Field(60.0, gt=0, le=3600, description="a request unanswered this long is a 'timeout'")
    max_connections: int = Field(
        512,
        ge=1,
        le=16_384,
        description="most requests in flight per load process; more wait in the generator, which shows as schedule lag",
    )
    transport: Literal["http1", "aiohttp"] = Field(
        "http1", description="HTTP client: gawm's lean HTTP/1.1 client (fastest) or aiohttp (a general client)"
    )
    wake_early_ms: float = Field(
        1.1,
        ge=0,
        le=10,
        description="open loop: stop sleeping this long before a due time "
        "and poll the loop until it comes (timers wake up to 1 ms late); this keeps the core "
        "busy between close arrivals, so set 0 where the generator shares a core with a "
        "server, at the cost of sends up to ~1 ms late",
    )
    arrival_seed: int = Field(1, ge=0, lt=2**63, description="seed of the arrival schedule (and think times)")
    payload_seed: int = Field(
        2, ge=0, lt=2**63, description="seed of the payload sampling, independent of the arrivals"
    )
    payload_count: int = Field(16, ge=1, le=MAX_PAYLOADS, description="distinct sample payloads drawn from real data")
    payloads_per_request: int = Field(
        1,
        ge=1,
        le=4096,
        description="inputs per request: sampled payloads joined along the first dimension (offline batches)",
    )
    payload_audio_s: float | None = Field(
        None,
        gt=0,
        le=30,
        description="Whisper payloads: speech clips of exactly "
        "this length [s] (real sentences spoken by espeak-ng, joined and cut); "
        "unset: whole utterances of about 2-15 s",
    )
    trace_path: str = Field(
        "",
        validate_default=True,
        description="scenario trace: CSV or parquet with arrival_s [s from the trace's start] and optional payload_id",
    )
    trace_time_scale: float = Field(1.0, gt=0, le=1e6, description="multiplies trace times (0.5 replays twice as fast)")
    slo_ms: float | None = Field(None, gt=0, le=3_600_000, description="latency objective for goodput [ms]")
    max_error_share: float = Field(
        0.01, ge=0, le=1, description="a step with a larger share of failed requests is INVALID (cancelled not counted)"
    )
    processes: int = Field(1, ge=1, le=MAX_REPLICAS, description="load processes sharing the load (more cores)")
    process_cpus: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list,
        description="CPU cores for the load processes (process i on process_cpus[i % n]); empty: not pinned",
    )

    @field_validator("levels")
    @classmethod
    def _levels(cls, value: list[float], info: ValidationInfo) -> list[float]:
        scenario = info.data.get("scenario")
        bound, what = _LEVEL_BOUNDS.get(scenario, (None, ""))
        if bound is not None and not all(level <= bound for level in value):  # `not <=`: inf and NaN too
            raise ValueError(f"{scenario} levels are {what}: expected each <= {bound:,}")
        if scenario in ("closed_loop", "offline") and any(level != int(level) for level in value):
            what = "concurrent users" if scenario == "closed_loop" else "requests queued at once"
            raise ValueError(f"{scenario} levels are numbers of {what}: whole numbers")
        if scenario in ("single_stream", "stages", "trace") and value not in ([1.0, 2.0], [1.0]):
            raise ValueError(f"scenario {scenario} does not use levels; leave them out")
        return value

    @field_validator("step_duration_s")
    @classmethod
    def _sweep_length(cls, value: float, info: ValidationInfo) -> float:
        steps = len(info.data.get("levels") or [])
        if steps * value > MAX_RUN_S:
            raise ValueError(
                f"{steps} levels x {value:g} s is {steps * value:,.0f} s: expected the steps at their shortest to "
                f"take <= {MAX_RUN_S:,} s (a week)"
            )
        return value

    @field_validator("max_step_duration_s")
    @classmethod
    def _longest(cls, value: float, info: ValidationInfo) -> float:
        if value < info.data.get("step_duration_s", 0):
            raise ValueError("max_step_duration_s must be >= step_duration_s")
        return value

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: list[LoadStage], info: ValidationInfo) -> list[LoadStage]:
        scenario = info.data.get("scenario")
        if scenario == "stages" and not value:
            raise ValueError("scenario stages needs at least one stage, e.g. [{duration_s: 10, rate_rps: 5}]")
        if scenario != "stages" and value:
            raise ValueError(f"stages are used by scenario stages only (scenario is {scenario})")
        total = sum(stage.duration_s for stage in value)
        if total > MAX_RUN_S:
            raise ValueError(f"expected stages that take <= {MAX_RUN_S:,} s (a week) in all, got {total:,.0f} s")
        return value

    @field_validator("think_time_s")
    @classmethod
    def _think(cls, value: float, info: ValidationInfo) -> float:
        scenario = info.data.get("scenario")
        if value > 0 and scenario in _OPEN_LOOP + ("single_stream",):
            raise ValueError(f"think time is for closed loops (closed_loop, or stages with users), not {scenario}")
        return value

    @field_validator("trace_path")
    @classmethod
    def _trace(cls, value: str, info: ValidationInfo) -> str:
        scenario = info.data.get("scenario")
        if scenario != "trace":
            if value:
                raise ValueError(f"trace_path is used by scenario trace only (scenario is {scenario})")
            return value
        if not value:
            raise ValueError("scenario trace needs trace_path: a CSV or parquet file with a column arrival_s")
        if Path(value).suffix.lower() not in _TRACE_SUFFIXES:
            raise ValueError(f"expected a .csv or .parquet trace file, got {_quote(value)}")
        return value  # its contents are read at the start of a run (preflight), by the load process's own reader

    @field_validator("payloads_per_request")
    @classmethod
    def _inputs_held(cls, value: int, info: ValidationInfo) -> int:
        count = info.data.get("payload_count")
        if count is not None and count * value > MAX_PAYLOAD_INPUTS:
            raise ValueError(
                f"each load process holds payload_count x payloads_per_request inputs ({count} x {value}): "
                f"expected <= {MAX_PAYLOAD_INPUTS:,}"
            )
        return value

    @field_validator("processes")
    @classmethod
    def _processes(cls, value: int, info: ValidationInfo) -> int:
        if value > 1 and info.data.get("scenario") == "single_stream":
            raise ValueError("single_stream keeps one request outstanding: one process")
        return value


class PrometheusConfig(_Settings):
    enabled: bool = True
    binary: str = "prometheus"
    scrape_interval_s: float = Field(1.0, ge=0.1, le=300)


class ExperimentConfig(_Settings):
    """Everything one run needs. The defaults are a cheap offline configuration."""

    name: str = Field("quick", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="experiment name, part of the run id")
    description: str = ""
    notebook: str = Field(
        "notebooks/01_measure_load_sweep.ipynb", description="measurement notebook, from the project root"
    )
    figures_notebook: str | None = Field("notebooks/02_figures_load_sweep.ipynb", description="run after, on this run")
    workloads: list[WorkloadConfig] = Field(default_factory=lambda: [WorkloadConfig(name="resnet50")], min_length=1)
    backend: BackendConfig = BackendConfig()
    load: LoadConfig = LoadConfig()
    prometheus: PrometheusConfig = PrometheusConfig()

    @field_validator("notebook", "figures_notebook")
    @classmethod
    def _notebook(cls, value: str | None) -> str | None:
        # Whether it exists is checked at the start of a run (preflight); that it is a notebook of the project, here.
        if value is not None and (
            not value.endswith(".ipynb") or Path(value).is_absolute() or ".." in Path(value).parts
        ):
            raise ValueError("expected a notebook (.ipynb) path from the project root")
        return value

    @field_validator("workloads", mode="before")
    @classmethod
    def _names_as_workloads(cls, value: Any) -> Any:
        # `workloads: [resnet50, whisper]` is shorthand for default settings of each.
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _unique_workloads(self) -> ExperimentConfig:
        names = [w.name for w in self.workloads]
        if len(names) != len(set(names)):
            raise ValueError(f"each workload may appear once, got {names}")
        return self

    @model_validator(mode="after")
    def _external_workloads(self) -> ExperimentConfig:
        names = [w.name for w in self.workloads]
        if self.backend.kind == "external":
            for index, endpoint in enumerate(self.backend.endpoints):
                if endpoint.workload is None and len(names) > 1:
                    raise ValueError(f"backend.endpoints.{index}.workload: expected one of {names} (several workloads)")
                if endpoint.workload is not None and endpoint.workload not in names:
                    raise ValueError(
                        f"backend.endpoints.{index}.workload: expected one of {names}, got {endpoint.workload!r}"
                    )
            served = {e.workload or names[0] for e in self.backend.endpoints}
            if set(names) - served:
                raise ValueError(f"backend.endpoints: no endpoint for workload(s) {sorted(set(names) - served)}")
        return self

    @model_validator(mode="after")
    def _audio_payloads(self) -> ExperimentConfig:
        seconds = self.load.payload_audio_s
        if seconds is not None:
            whisper = next((w for w in self.workloads if w.name == "whisper"), None)
            if whisper is None:
                raise ValueError(
                    "load.payload_audio_s sets the length of Whisper's clips: add the whisper workload or leave it out"
                )
            if seconds > whisper.max_audio_s:
                raise ValueError(
                    f"load.payload_audio_s: {seconds:g} s is longer than the whisper workload's "
                    f"max_audio_s ({whisper.max_audio_s:g} s), which the server would refuse"
                )
        return self


class ConfigError(ValueError):
    """Invalid settings; the message lists every problem as ``source: key.path: what was expected``."""


def clip(text: str, limit: int = MAX_QUOTE_CHARS) -> str:
    """``text``, cut to ``limit`` characters where longer (saying how long it was)."""
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text):,} characters)"


def _quote(value: Any, limit: int = MAX_QUOTE_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message quotes what was given, never all of a huge value."""
    if isinstance(value, (list, tuple, dict)) and len(value) > limit:  # its whole repr would be built only to be cut
        head = dict(list(value.items())[:limit]) if isinstance(value, dict) else value[:limit]
        return f"{repr(head)[: limit - 1]}… ({len(value):,} items)"
    return clip(repr(value), limit)


class _Refused(yaml.YAMLError):
    """YAML that params files do not accept; the message says where and why."""


class _ParamsLoader(yaml.SafeLoader):
    """YAML as params files use it: no aliases (``*name``: a 471-byte file of nested aliases expanded to 2.2 GB, and
    no params file needs them) and no key twice in one mapping (the later block silently replaced the earlier)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            line = self.peek_event().start_mark.line + 1
            raise _Refused(f"line {line}: aliases (*name) are not accepted in params files: write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _Refused(
                    f"line {line}: key {_quote(key)} again (first on line {seen[key]}): the later value would "
                    f"silently replace the first; give each key once"
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: where and what (PyYAML's own message spans lines and quotes the text)."""
    if isinstance(exc, _Refused):
        return str(exc)
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + clip(str(getattr(exc, "problem", None) or str(exc).splitlines()[0]))


def _parse_yaml(text: str) -> Any:
    """``text`` as YAML read by :class:`_ParamsLoader`; ValueError saying where and what is wrong."""
    try:
        return yaml.load(text, Loader=_ParamsLoader)  # noqa: S506 - a SafeLoader, stricter
    except yaml.YAMLError as exc:
        raise ValueError(_yaml_problem(exc)) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_params_file(path: str | Path, what: str = "params file") -> dict:
    """The mapping of settings in a params (or suite) file, read strictly: at most ``MAX_PARAMS_BYTES``, UTF-8,
    YAML without aliases or repeated keys, a non-empty mapping at the top. Raises :class:`ConfigError` naming the file
    and, where it can, the line."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PARAMS_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ConfigError(f"{path}: expected a {what} of at most {MAX_PARAMS_BYTES:,} bytes, got a larger file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8"
        ) from None
    try:
        loaded = _parse_yaml(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if loaded is None:
        raise ConfigError(
            f"{path}: the {what} is empty: expected a mapping of settings (at least `name: <experiment>`)"
        )
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(loaded).__name__}")
    return loaded


def apply_override(tree: dict, assignment: str) -> dict:
    """Return a copy of ``tree`` with ``a.b.0.c=value`` applied; the value is parsed as a YAML scalar or list."""
    key, sep, raw = assignment.partition("=")
    shown = clip(assignment)
    if not sep or not key.strip():
        raise ConfigError(f"-p {shown}: expected key=value, e.g. -p load.step_duration_s=5")
    try:
        value = _parse_yaml(raw) if raw.strip() else ""
    except ValueError as exc:
        raise ConfigError(f"-p {shown}: {clip(key.strip())}: not a valid YAML value: {exc}") from None
    tree = copy.deepcopy(tree)
    parts = key.strip().split(".")
    node: Any = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"-p {shown}: {clip('.'.join(parts[: depth + 1]))}: expected an index below {len(node)}"
                )
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
        else:
            raise ConfigError(f"-p {shown}: {clip('.'.join(parts[:depth]))} is a value, not a section")
        if last:
            node[index] = value
        else:
            if isinstance(node, list) and isinstance(node[index], str) and parts[depth - 1] == "workloads":
                node[index] = {"name": node[index]}  # `workloads: [resnet50]` shorthand, opened for a setting
            if isinstance(node, dict) and not isinstance(node.get(index), (dict, list)):
                node[index] = {}
            node = node[index]
    return tree


def load_params(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> tuple[ExperimentConfig, dict]:
    """Read a params file and overrides; return the validated settings and the requested tree (as given).

    Raises :class:`ConfigError` naming the file or override, the key path and the expectation.
    """
    requested: dict = copy.deepcopy(base) if base else {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        requested.update(read_params_file(path))
    given = requested
    for assignment in overrides:
        requested = apply_override(requested, assignment)
    return validate_params(requested, source=source, overrides=overrides, given=given), requested


def validate_params(
    tree: dict, source: str = "<params>", overrides: list[str] | tuple[str, ...] = (), given: dict | None = None
) -> ExperimentConfig:
    """``tree`` as settings; ConfigError naming for each problem the file or override that set the key.

    ``given``: what ``source`` held before ``overrides`` were applied, so that a problem that only the overrides bring
    (a check of several keys: ``-p load.scenario=trace`` needs ``trace_path``) is not blamed on the file alone."""
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        alone = None
        if overrides and given is not None:
            try:
                ExperimentConfig.model_validate(given)
                alone = set()
            except ValidationError as without:
                alone = {(err["loc"], err["msg"]) for err in without.errors()}
        raise ConfigError(_describe(exc, source, overrides, alone=alone, given=given)) from None


def validate_load(tree: dict, source: str = "<load>") -> LoadConfig:
    """The load section on its own (what a load process is given), with problems named ``load.<key>``; the checks
    that need the rest of an experiment (its workloads) are the experiment's."""
    try:
        return LoadConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, (), prefix=("load",))) from None


def preflight(cfg: ExperimentConfig, source: str = "<settings>", overrides: list[str] | tuple[str, ...] = ()) -> None:
    """Check what valid settings need of this machine, at the start of a run and before anything starts.

    Only what the chosen backend uses: on ``local``, the weights paths, the CPU cores of ``backend.cpus`` and of the
    placement, and a GPU for ``device: cuda``; on ``kubernetes``, the kubeconfig file (the replicas' cores, GPUs and
    weights are the cluster's). On this machine for either backend (gawm's side of the run): the trace file (read by
    the load process's own reader), the cores of ``load.process_cpus`` and the Prometheus binary. Raises
    :class:`ConfigError` listing every problem as ``source: key.path: what was expected`` (``-p key=value`` where an
    override set the key)."""
    problems = machine_problems(cfg)
    if problems:
        raise ConfigError(_describe_problems(problems, source, overrides))


def preflight_load(load: LoadConfig, source: str = "<load>") -> None:
    """:func:`preflight` of the load section on its own (what a load process is given), named ``load.<key>``."""
    problems = _load_problems(load)
    if problems:
        raise ConfigError(_describe_problems(problems, source, ()))


def machine_problems(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """What the settings need and this machine lacks, as (key path, what was expected); empty: runnable here."""
    problems: list[tuple[str, str]] = []
    backend = cfg.backend
    if backend.kind == "kubernetes":
        problems += _kubeconfig_problems(backend)
    elif (
        backend.kind == "external"
    ):  # only the environment variables its headers name: the servers are checked at start
        problems += _external_problems(backend)
    else:
        problems += _local_problems(cfg)
    problems += _load_problems(cfg.load)
    problems += _notebook_problems(cfg)
    if cfg.prometheus.enabled:
        from gawm_lib.prom.local import PrometheusNotInstalled, find_binary

        try:
            find_binary(cfg.prometheus.binary)
        except PrometheusNotInstalled:
            problems.append(
                (
                    "prometheus.binary",
                    f"expected the Prometheus binary on this machine, got "
                    f"{_quote(cfg.prometheus.binary)}: not found or not executable (install it "
                    f"with `apt-get install prometheus`, point prometheus.binary at one, "
                    f"or set prometheus.enabled: false)",
                )
            )
    return problems


def _kubeconfig_problems(backend: BackendConfig) -> list[tuple[str, str]]:
    import os

    if backend.kubeconfig is not None:
        if not Path(backend.kubeconfig).expanduser().is_file():
            return [
                (
                    "backend.kubeconfig",
                    f"expected an existing kubeconfig file on this machine, got {_quote(backend.kubeconfig)}: "
                    "no such file",
                )
            ]
        return []
    # As gawm_lib.cluster.connect: $KUBECONFIG (a list of files) or ~/.kube/config, else the pod's service account.
    default = os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())
    if any(Path(p).expanduser().is_file() for p in default.split(os.pathsep) if p) or os.environ.get(
        "KUBERNETES_SERVICE_HOST"
    ):
        return []
    return [
        (
            "backend.kubeconfig",
            f"expected a kubeconfig file: unset, and {default} does not exist and this is not "
            f"a pod (set backend.kubeconfig or KUBECONFIG)",
        )
    ]


def _external_problems(backend: BackendConfig) -> list[tuple[str, str]]:
    import os

    problems = []
    for index, endpoint in enumerate(backend.endpoints):
        for name, text in endpoint.headers.items():
            for variable in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text):
                if variable not in os.environ:
                    problems.append(
                        (
                            f"backend.endpoints.{index}.headers.{name}",
                            f"expected environment variable {variable}: not set",
                        )
                    )
    return problems


def _local_problems(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    from gawm_lib.backends.placement import PlacementError, available_cpus, plan_for, visible_gpus

    problems: list[tuple[str, str]] = []
    backend = cfg.backend
    for index, workload in enumerate(cfg.workloads):
        if workload.weights not in ("random", "pretrained") and not Path(workload.weights).expanduser().exists():
            problems.append(
                (
                    f"workloads.{index}.weights",
                    f"expected 'random', 'pretrained' or an existing path on "
                    f"this machine, got {_quote(workload.weights)}: no such file or "
                    f"directory",
                )
            )
    available = available_cpus()
    missing = [cpu for cpu in backend.cpus if cpu not in available]
    if missing:
        problems.append(("backend.cpus", f"CPU cores {missing} are not available here (available: {available})"))
    gpus = None
    for index, workload in enumerate(cfg.workloads):
        if workload.device == "cuda" and backend.placement == "none":
            gpus = visible_gpus() if gpus is None else gpus
            if not gpus:
                problems.append(
                    (
                        f"workloads.{index}.device",
                        "expected a GPU on this machine for device 'cuda', none is visible here "
                        "(CUDA_VISIBLE_DEVICES, NVML, nvidia-smi)",
                    )
                )
        elif backend.placement != "none" and not (missing and workload.device == "cpu"):  # missing cores: said once
            try:
                plan_for(workload, backend)
            except PlacementError as exc:
                key, _, what = str(exc).partition(": ")
                problems.append((key, f"{what} (workload {workload.name})"))
    return problems


def _load_problems(load: LoadConfig) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if load.scenario == "trace" and load.trace_path:
        from gawm_lib.loadgen.schedule import read_trace  # the one reader, also used by the load process

        try:
            arrivals, _ = read_trace(load.trace_path, load.payload_count)
        except ValueError as exc:
            problems.append(("load.trace_path", str(exc)))
        else:
            span_s = float(arrivals[-1]) * load.trace_time_scale
            rate = (len(arrivals) - 1) / span_s if span_s > 0 else math.inf if len(arrivals) > 1 else 0.0
            if span_s > MAX_STEP_S:
                problems.append(
                    ("load.trace_time_scale", f"the trace replays over {span_s:,.0f} s: expected <= {MAX_STEP_S:,} s")
                )
            if rate > MAX_RATE_RPS:
                problems.append(
                    (
                        "load.trace_time_scale",
                        f"the trace replays at {rate:,.0f} req/s on average: expected <= {MAX_RATE_RPS:,} req/s",
                    )
                )
    if load.process_cpus:
        from gawm_lib.backends.placement import available_cpus

        available = available_cpus()
        missing = [cpu for cpu in load.process_cpus if cpu not in available]
        if missing:
            problems.append(
                ("load.process_cpus", f"CPU cores {missing} are not available here (available: {available})")
            )
    return problems


def _notebook_problems(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    from gawm_lib import paths

    root = paths.project_root()
    return [
        (key, f"expected a notebook of this project, got {_quote(value)}: no such file in {root}")
        for key, value in (("notebook", cfg.notebook), ("figures_notebook", cfg.figures_notebook))
        if value is not None and not (root / value).is_file()
    ]


def _describe_problems(problems: list[tuple[str, str]], source: str, overrides: list[str] | tuple[str, ...]) -> str:
    override_keys = {o.partition("=")[0].strip(): o for o in overrides}
    count = len(problems)
    lines = [
        f"this machine cannot run these settings ({count} problem{'s' if count > 1 else ''}; they are valid, "
        f"checked at the start of the run):"
    ]
    for key, what in problems:
        path = key.split(" ")[0]  # "backend.placement exclusive": the key and its value
        origin = next(
            (f"-p {clip(o)}" for k, o in override_keys.items() if path == k or path.startswith(k + ".")), source
        )
        lines.append(f"  {origin}: {key}: {clip(what, 4 * MAX_QUOTE_CHARS)}")
    return "\n".join(lines)


def _origin(
    key: str,
    loc: tuple,
    msg: str,
    source: str,
    overrides: list[str] | tuple[str, ...],
    alone: set | None,
    given: dict | None,
) -> str:
    """Who is to blame for a problem at ``key``: the last override that set it or a section above it; an override
    that made the key (``-p lod.levels=[1]``); the file, where it has the problem on its own; else the overrides of
    the key's section (``-p load.scenario=trace`` for ``load.trace_path``), with the file where it sets the key."""
    keys = [(o.partition("=")[0].strip(), o) for o in overrides]
    covering = [o for k, o in keys if key == k or key.startswith(k + ".")]
    if covering:
        return f"-p {clip(covering[-1])}"
    below = [o for k, o in keys if k.startswith(key + ".")]
    if below and given is not None and not _has(given, loc):
        return ", ".join(f"-p {clip(o)}" for o in below)
    if alone is None or (loc, msg) in alone:
        return source
    section = key.split(".")[0] + "."
    related = [o for k, o in keys if k.startswith(section) or not loc] or [o for _, o in keys]
    blamed = ", ".join(f"-p {clip(o)}" for o in related)
    return blamed if loc and given is not None and not _has(given, loc) else f"{source} with {blamed}"


def _has(tree: Any, loc: tuple) -> bool:
    """Whether ``tree`` sets the key path ``loc``."""
    for part in loc:
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and isinstance(part, int) and part < len(tree):
            tree = tree[part]
        else:
            return False
    return True


def _describe(
    exc: ValidationError,
    source: str,
    overrides: list[str] | tuple[str, ...],
    prefix: tuple[str, ...] = (),
    alone: set | None = None,
    given: dict | None = None,
) -> str:
    count = exc.error_count()
    lines = [f"invalid settings ({count} problem{'s' if count > 1 else ''}):"]
    for err in exc.errors()[:MAX_PROBLEMS]:
        loc = [*prefix, *(str(p) for p in err["loc"] if not str(p).startswith("function-"))]
        key = clip(".".join(loc) or "<top level>")
        origin = _origin(key, err["loc"], err["msg"], source, overrides, alone, given)
        if err["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            allowed = sorted(model.model_fields) if model else []
            hint = difflib.get_close_matches(loc[-1], allowed, n=1)
            what = f"unknown key {_quote(loc[-1])}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            what += f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        elif "headers" in loc:  # header values may hold secrets: never echo them
            what = clip(err["msg"], 4 * MAX_QUOTE_CHARS)
        elif "input" in err and err["type"] != "missing":
            what = f"{clip(err['msg'], 4 * MAX_QUOTE_CHARS)} (got {_quote(err['input'])})"
        else:
            what = clip(err["msg"], 4 * MAX_QUOTE_CHARS)
        lines.append(f"  {origin}: {key}: {what}")
    if count > MAX_PROBLEMS:
        lines.append(f"  ... and {count - MAX_PROBLEMS} more")
    return "\n".join(lines)


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    """The settings model that a key path points into, for listing allowed keys."""
    model: Any = ExperimentConfig
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model
