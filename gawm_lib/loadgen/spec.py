"""What the caller hands a load process: written as JSON, read back by the process."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LoadSpec:
    """Everything one load process needs. ``load`` holds :class:`gawm_lib.config.LoadConfig` fields (validated by the
    process); ``process_index``/``process_count`` say which share of the load it sends; ``start_file``, when set, is
    where the caller writes the common start time of several processes."""

    workload: str
    model: str
    targets: list[str]  # base URLs of replicas, e.g. http://127.0.0.1:8000
    bodies_path: str  # JSON lines, one OIP v2 request body each: the payloads sampled from
    out_dir: str  # requests.parquet folder
    load: dict[str, Any] = field(default_factory=dict)
    process_index: int = 0
    process_count: int = 1
    start_file: str = ""
    # Servers gawm did not start (backend.kind external): per target, the infer path (empty: the model's default) and
    # extra headers, one dict per target. Header values may name environment variables as ${NAME}: the load process
    # expands them from its own environment, so a token never lands in this spec's file or the run directory.
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # per target, its ``replica`` in the records (empty: host:port)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: Path) -> LoadSpec:
        return cls(**json.loads(Path(path).read_text()))


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_headers(templates: dict[str, str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """``templates`` with each ``${NAME}`` replaced by the environment variable NAME; ValueError naming the header and
    the variable when it is not set."""
    env = os.environ if environ is None else environ
    out = {}
    for name, template in templates.items():
        missing = [v for v in _ENV_REFERENCE.findall(template) if v not in env]
        if missing:
            raise ValueError(f"header {name}: environment variable {missing[0]} is not set")
        out[name] = _ENV_REFERENCE.sub(lambda m: env[m.group(1)], template)
    return out
