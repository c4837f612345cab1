"""Typed experiment settings, loaded from ``params/*.yaml`` with ``-p key=value`` overrides.

Precedence is defaults < params file < overrides. Validation happens before anything starts: an unknown key, a wrong type
or an out-of-range value raises :class:`ConfigError`, whose message names the file (or the override), the key path and what
was expected. Units are in the field names (``_s``, ``_ms``).
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

WorkloadName = Literal["resnet50", "distilbert", "whisper"]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkloadConfig(_Settings):
    """One served model and how the server runs it."""

    name: WorkloadName
    weights: str = Field("random", description="'random' (same compute, recorded as such), 'pretrained', or a local path")
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    threads: int = Field(1, ge=1, le=256, description="torch intra-op threads per replica")
    max_batch_size: int = Field(8, ge=1, le=4096, description="dynamic batching: most items in one forward pass")
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000, description="dynamic batching: longest wait for a batch to fill")
    max_seq_len: int = Field(128, ge=8, le=512, description="DistilBERT: tokens after truncation")
    model_size: Literal["tiny", "tiny.en", "base", "base.en", "small", "medium", "large-v3"] = Field(
        "tiny", description="Whisper model size"
    )
    decode_tokens: int = Field(8, ge=1, le=448, description="Whisper: tokens decoded per clip (fixed for benchmarks)")
    warmup_batches: int = Field(1, ge=0, le=100, description="forward passes before the server reports ready")

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str) -> str:
        if value in ("random", "pretrained") or Path(value).expanduser().exists():
            return value
        raise ValueError(f"expected 'random', 'pretrained' or an existing path, got {value!r}")


class BackendConfig(_Settings):
    """Where replicas run: ``local`` child processes (default) or ``kubernetes``."""

    kind: Literal["local", "kubernetes"] = "local"
    replicas: int = Field(1, ge=1, le=64)
    host: str = Field("127.0.0.1", description="local backend: loopback address the replicas listen on")
    startup_timeout_s: float = Field(180.0, gt=0, le=3600)

    @field_validator("host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        try:
            is_loopback = ipaddress.ip_address(value).is_loopback
        except ValueError:
            is_loopback = False
        if not is_loopback:
            raise ValueError(f"expected a loopback address such as 127.0.0.1, got {value!r}")
        return value


class LoadConfig(_Settings):
    """A load sweep: one step per level, each at least ``step_duration_s`` long and ``min_requests_per_step`` big."""

    scenario: Literal["closed_loop", "poisson"] = Field(
        "closed_loop", description="closed_loop: levels are concurrent users; poisson: levels are arrival rates [req/s]"
    )
    levels: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [1.0, 2.0], min_length=1)
    step_duration_s: float = Field(3.0, gt=0, le=86_400)
    min_requests_per_step: int = Field(1, ge=1)
    max_step_duration_s: float = Field(120.0, gt=0, le=86_400)
    warmup_s: float = Field(1.0, ge=0, le=3600, description="load before the first step, recorded as phase 'warmup'")
    request_timeout_s: float = Field(60.0, gt=0, le=3600)
    arrival_seed: int = 1
    payload_seed: int = 2
    payload_count: int = Field(16, ge=1, le=100_000, description="distinct sample payloads drawn from real data")

    @model_validator(mode="after")
    def _durations(self) -> "LoadConfig":
        if self.max_step_duration_s < self.step_duration_s:
            raise ValueError("max_step_duration_s must be >= step_duration_s")
        if self.scenario == "closed_loop" and any(level != int(level) for level in self.levels):
            raise ValueError("closed_loop levels are numbers of concurrent users: whole numbers")
        return self


class PrometheusConfig(_Settings):
    enabled: bool = True
    binary: str = "prometheus"
    scrape_interval_s: float = Field(1.0, ge=0.1, le=300)


class ExperimentConfig(_Settings):
    """Everything one run needs. The defaults are a cheap offline configuration."""

    name: str = Field("quick", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="experiment name, part of the run id")
    description: str = ""
    notebook: str = Field("notebooks/01_measure_load_sweep.ipynb", description="measurement notebook, from the project root")
    figures_notebook: str | None = Field("notebooks/02_figures_load_sweep.ipynb", description="run after, on this run")
    workloads: list[WorkloadConfig] = Field(default_factory=lambda: [WorkloadConfig(name="resnet50")], min_length=1)
    backend: BackendConfig = BackendConfig()
    load: LoadConfig = LoadConfig()
    prometheus: PrometheusConfig = PrometheusConfig()

    @field_validator("workloads", mode="before")
    @classmethod
    def _names_as_workloads(cls, value: Any) -> Any:
        # `workloads: [resnet50, whisper]` is shorthand for default settings of each.
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _unique_workloads(self) -> "ExperimentConfig":
        names = [w.name for w in self.workloads]
        if len(names) != len(set(names)):
            raise ValueError(f"each workload may appear once, got {names}")
        return self


class ConfigError(ValueError):
    """Invalid settings; the message lists every problem as ``source: key.path: what was expected``."""


def apply_override(tree: dict, assignment: str) -> dict:
    """Return a copy of ``tree`` with ``a.b.0.c=value`` applied; the value is parsed as a YAML scalar or list."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"-p {assignment}: expected key=value, e.g. -p load.step_duration_s=5")
    tree = copy.deepcopy(tree)
    value = yaml.safe_load(raw) if raw.strip() else ""
    parts = key.strip().split(".")
    node: Any = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"-p {assignment}: {'.'.join(parts[:depth + 1])}: expected an index below {len(node)}")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
        else:
            raise ConfigError(f"-p {assignment}: {'.'.join(parts[:depth])} is a value, not a section")
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
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the params file ({exc.strerror})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(loaded).__name__}")
        requested.update(loaded)
    for assignment in overrides:
        requested = apply_override(requested, assignment)
    return validate_params(requested, source=source, overrides=overrides), requested


def validate_params(tree: dict, source: str = "<params>", overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, overrides)) from None


def _describe(exc: ValidationError, source: str, overrides: list[str] | tuple[str, ...]) -> str:
    override_keys = {o.partition("=")[0].strip(): o for o in overrides}
    lines = [f"invalid settings ({exc.error_count()} problem{'s' if exc.error_count() > 1 else ''}):"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        key = ".".join(loc) or "<top level>"
        origin = next((f"-p {o}" for k, o in override_keys.items() if key == k or key.startswith(k + ".")), source)
        if err["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            allowed = sorted(model.model_fields) if model else []
            hint = difflib.get_close_matches(loc[-1], allowed, n=1)
            what = f"unknown key {loc[-1]!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            what += f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        else:
            what = f"{err['msg']} (got {err['input']!r})" if "input" in err and err["type"] != "missing" else err["msg"]
        lines.append(f"  {origin}: {key}: {what}")
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
