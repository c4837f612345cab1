"""What the caller hands a load process: written as JSON, read back by the process."""

from __future__ import annotations

import json
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

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: Path) -> LoadSpec:
        return cls(**json.loads(Path(path).read_text()))
