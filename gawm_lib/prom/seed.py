"""Import the seed study's Prometheus CSV exports into the tidy metrics frame.

Layout: ``<root>/<workload>_r<replicas>/<workload>_r<replicas>_<metric>_<YYYYmmdd_HHMMSS>.csv``,
columns ``timestamp`` (Unix seconds or milliseconds, or ISO 8601; naive = UTC) and ``value``,
plus optional label columns (they go to the ``labels`` JSON). The exports have a 5 s step.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from .catalogue import CATALOGUE
from .query import empty_frame, labels_json

_DIR = re.compile(r"(?P<workload>[A-Za-z0-9][A-Za-z0-9_.-]*)_r(?P<replicas>\d+)\Z")
_STAMP = re.compile(r"_(?P<stamp>\d{8}_\d{6})\.csv\Z")
SEED_STEP_S = 5.0


class SeedCsvError(ValueError):
    """A seed CSV file is misnamed or malformed (the message names the file)."""


def _parse_name(path: Path, root: Path) -> tuple[str, int, str, pd.Timestamp]:
    rel = path.relative_to(root)
    expect = "<workload>_r<replicas>/<workload>_r<replicas>_<metric>_<YYYYmmdd_HHMMSS>.csv"
    if len(rel.parts) != 2 or not (d := _DIR.match(rel.parts[0])):
        raise SeedCsvError(f"{path}: expected {expect} under {root}")
    prefix = rel.parts[0] + "_"
    stamp = _STAMP.search(path.name)
    metric = path.name[len(prefix):stamp.start()] if stamp and path.name.startswith(prefix) else ""
    if not metric or not re.fullmatch(r"[A-Za-z0-9_.:-]+", metric):
        raise SeedCsvError(f"{path}: file name does not match {expect} (directory {rel.parts[0]!r})")
    try:
        exported = pd.Timestamp(pd.to_datetime(stamp.group("stamp"), format="%Y%m%d_%H%M%S", utc=True))
    except ValueError as exc:
        raise SeedCsvError(f"{path}: bad export timestamp {stamp.group('stamp')!r}: {exc}") from exc
    return d.group("workload"), int(d.group("replicas")), metric, exported


def _times(col: pd.Series, path: Path) -> pd.Series:
    numeric = pd.to_numeric(col, errors="coerce")
    try:
        if numeric.notna().all():
            unit = "ms" if len(numeric) and numeric.abs().max() > 1e11 else "s"
            return pd.to_datetime(numeric.astype("float64"), unit=unit, utc=True)
        return pd.to_datetime(col.astype(str), utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError) as exc:
        raise SeedCsvError(f"{path}: column 'timestamp' has values that are not times: {exc}") from exc


def read_seed_csv(path: str | os.PathLike, root: str | os.PathLike, phase: str = "seed") -> pd.DataFrame:
    """One export file -> tidy frame with ``workload`` and ``replicas`` columns."""
    path, root = Path(path), Path(root)
    workload, replicas, metric, _exported = _parse_name(path, root)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise SeedCsvError(f"{path}: cannot read CSV: {exc}") from exc
    raw.columns = [c.strip() for c in raw.columns]
    missing = [c for c in ("timestamp", "value") if c not in raw.columns]
    if missing:
        raise SeedCsvError(f"{path}: missing column(s) {missing}; found {list(raw.columns)}")
    values = pd.to_numeric(raw["value"].str.strip(), errors="coerce")
    bad = values.isna() & ~raw["value"].str.strip().str.lower().isin(["nan", "+nan", "-nan"])
    if bad.any():
        row = int(bad.idxmax()) + 2  # 1-based, after the header line
        raise SeedCsvError(f"{path}: line {row}: value {raw['value'][bad.idxmax()]!r} is not a number")
    label_cols = [c for c in raw.columns if c not in ("timestamp", "value")]
    labels = [labels_json({c: r[c] for c in label_cols if r[c] != ""}) for r in raw[label_cols].to_dict("records")] \
        if label_cols else [labels_json({})] * len(raw)
    query = CATALOGUE.get(metric)
    frame = pd.DataFrame({
        "time": _times(raw["timestamp"].str.strip(), path).astype("datetime64[ns, UTC]"),
        "query": metric, "value": values.astype("float64"), "unit": query.unit if query else "",
        "labels": labels, "phase": phase, "workload": workload, "replicas": replicas,
    })
    return frame.astype({"query": "str", "unit": "str", "labels": "str", "phase": "str", "workload": "str",
                         "replicas": "int64"})


def import_seed_csv(root: str | os.PathLike, phase: str = "seed") -> pd.DataFrame:
    """Every ``*.csv`` under ``root`` -> one tidy frame (columns of ``query_phases`` plus
    ``workload`` and ``replicas``). ``unit`` is the catalogue's when the metric name is a catalogue
    query name, else "". Raises SeedCsvError naming the file for a misnamed or malformed file."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"seed CSV root {root} is not a directory")
    files = sorted(root.rglob("*.csv"))
    frames = [read_seed_csv(f, root, phase) for f in files]
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_frame({"workload": "str", "replicas": "int64"})
    return pd.concat(frames, ignore_index=True)
