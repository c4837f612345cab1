"""Import the seed study's Prometheus CSV exports into gawm's tidy metric frame, and draw the seed's figures.

**Folder layout.** One folder (``root``) holds the exports, either flat or one sub-folder per run
(``<workload>_r<replicas>/``)::

    root/resnet50_r1/resnet50_r1_gpu_util_20250612_140300.csv
    root/resnet50_r1/resnet50_r1_latency_p95_ms_20250612_140300.csv
    root/resnet50_r1/resnet50_r1_timestamps.txt
    root/resnet50_r2_gpu_util_20250612_150300.csv          (flat works too)

A run is a workload at a replica count. Each CSV is named ``<workload>_r<N>_<metric>_<YYYYmmdd_HHMMSS>.csv`` (the
stamp is when it was exported, in the exporter's local time) and has the header ``timestamp,value``; further columns
are labels of the series (they go to the ``labels`` JSON). Files other than ``*.csv`` and ``*timestamps*.txt`` are
ignored.

**Times.** ``timestamp`` is one of: Unix epoch seconds or milliseconds (zone-free: ``tz`` does not apply), ISO 8601
with an offset (``2025-06-12T14:00:00+02:00``, ``...Z``: the offset applies), or ISO 8601 without one
(``2025-06-12 14:00:00``): the exporter's local time, read in the zone ``tz`` (an IANA name such as
``"Europe/Berlin"``; daylight saving applies, a local time that does not exist or is ambiguous is an error naming its
line). Without ``tz`` local times are read as UTC, and the import says so (a log warning, ``frame.attrs["tz_note"]``
and the ``time_basis`` of every file in ``frame.attrs["files"]``). Times in the frame are UTC.

**Metric names and units.** A file's ``<metric>`` is either a seed name in :data:`SEED_METRICS` (matched without
regard to case), whose values are converted to the catalogue's base unit (percent -> ratio, MiB -> bytes,
ms -> seconds), or a name of gawm's query catalogue (``gpu_util_dcgm``, ``latency_p95``, ...), whose values must
already be in the catalogue's unit. ``query`` and ``unit`` of the frame are the catalogue's. Any other name is kept as
it is, with unit ``""``. A ratio above 1 is refused (it is a percent under a ratio's name). Two files of one run that
map to the same query are refused (the same metric exported twice).

**Phases: ``<workload>_r<N>_timestamps.txt``** (also ``..._timestamps_<YYYYmmdd_HHMMSS>.txt``, or
``_timestamps.txt`` / ``timestamps.txt`` inside a run's folder): one line per phase of that run,
``<phase>,<start>,<end>``, times in the forms above (local ones in ``tz``); blank lines, lines starting with ``#``
and a header line ``phase,start,end`` are skipped; phases must not overlap and names must differ::

    # phase,start,end (exporter's local time)
    warmup,2025-06-12 14:00:00,2025-06-12 14:00:30
    load,2025-06-12 14:00:30,2025-06-12 14:02:00
    cooldown,2025-06-12 14:02:00,2025-06-12 14:02:30

A sample belongs to the phase with ``start <= time < end`` (a sample at the very end of a phase that no later phase
starts at belongs to it too); samples outside every phase, and every sample of a run without a timestamps file,
get the phase ``phase`` (default ``"seed"``).

**Errors.** :class:`SeedCsvError` names the file and, where there is one, the line: a misnamed file, a line cut
short (fewer fields than the header, or an empty field), a file with only a header (or nothing), the same metric
exported twice, a malformed time, a non-finite value (``NaN``, ``inf``; ``drop_nonfinite=True`` drops such lines
instead and counts them in ``attrs["files"]``), overlapping or reversed phases.

**Output** (:func:`import_seed_csv`): the tidy frame of ``gawm_lib.prom`` (``time``, ``query``, ``value``, ``unit``,
``labels``, ``phase``, as :func:`~gawm_lib.prom.query.load_run_metrics` returns for a run) plus ``workload`` and
``replicas``; ``attrs``: ``tz``, ``tz_note``, ``files`` (one record per file: metric, query, factor, rows, time
basis), ``phases`` (one record per phase: workload, replicas, phase, start and end in UTC ISO 8601).

**Figures and summaries**: :func:`seed_runs` (what was imported, per run), :func:`seed_phases`, :func:`seed_means`
(per run and query, the mean over a phase), :func:`seed_result_table`, :func:`describe_seed` (sentences from the
numbers) and :func:`seed_timeline` (one panel per query, one line per run over the time since the run's start,
shaded by replica count; the plotted points attached for ``plots.save_figure``). :data:`SEED_FIGURES` lists the seed
study's figures. ``notebooks/07_seed_import.ipynb`` does all of it for a folder.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from .catalogue import CATALOGUE
from .query import FRAME_COLUMNS, empty_frame, labels_json

log = logging.getLogger("gawm.prom.seed")

#: Local times are read in this zone when no ``tz`` is given (and the import says so).
DEFAULT_TZ = "UTC"
#: The seed's exports have a 5 s step.
SEED_STEP_S = 5.0

_CSV_NAME = re.compile(
    r"(?P<run>(?P<workload>[A-Za-z0-9][A-Za-z0-9_.-]*?)_r(?P<replicas>\d+))_"
    r"(?P<metric>[A-Za-z0-9][A-Za-z0-9_.:-]*?)_(?P<stamp>\d{8}_\d{6})\.csv\Z"
)
_RUN_DIR = re.compile(r"(?P<workload>[A-Za-z0-9][A-Za-z0-9_.-]*?)_r(?P<replicas>\d+)\Z")
_PHASE_NAME = re.compile(
    r"(?:(?P<run>(?P<workload>[A-Za-z0-9][A-Za-z0-9_.-]*?)_r(?P<replicas>\d+))_|_)?"
    r"timestamps(?:_(?P<stamp>\d{8}_\d{6}))?\.txt\Z"
)
_EXPECT = "<workload>_r<N>_<metric>_<YYYYmmdd_HHMMSS>.csv, in the folder or in a folder <workload>_r<N>/"


class SeedCsvError(ValueError):
    """A seed export file is misnamed or malformed; the message names the file and, where there is one, the line."""


@dataclass(frozen=True)
class SeedMetric:
    """How a seed metric name maps onto the catalogue: ``value * factor`` is in the query's unit."""

    query: str
    factor: float
    seed_unit: str


def _aliases(query: str, factor: float, seed_unit: str, *names: str) -> dict[str, SeedMetric]:
    return {name.lower(): SeedMetric(query, factor, seed_unit) for name in names}


#: Seed metric name (lower case) -> catalogue query, factor to the catalogue's unit, and the seed's unit. Catalogue
#: names themselves are accepted too, in the catalogue's units (factor 1).
SEED_METRICS: Mapping[str, SeedMetric] = MappingProxyType(
    {
        **_aliases(
            "gpu_util_dcgm",
            0.01,
            "percent",
            "gpu_util",
            "gpu_utilization",
            "gpu_utilisation",
            "gpu_util_percent",
            "dcgm_fi_dev_gpu_util",
        ),
        **_aliases(
            "gpu_memory_used_dcgm",
            2.0**20,
            "MiB",
            "gpu_mem",
            "gpu_mem_used",
            "gpu_memory",
            "gpu_memory_used",
            "gpu_memory_used_mib",
            "gpu_fb_used",
            "dcgm_fi_dev_fb_used",
        ),
        **_aliases(
            "gpu_power_dcgm",
            1.0,
            "W",
            "gpu_power",
            "power",
            "gpu_power_usage",
            "gpu_power_watts",
            "dcgm_fi_dev_power_usage",
        ),
        **_aliases("gpu_temp_dcgm", 1.0, "°C", "gpu_temp", "gpu_temperature", "temperature", "dcgm_fi_dev_gpu_temp"),
        **_aliases("container_cpu", 1.0, "cores", "cpu", "cpu_usage", "cpu_cores", "container_cpu_usage"),
        **_aliases("latency_p50", 1e-3, "ms", "latency_p50_ms", "p50_latency_ms", "p50_ms"),
        **_aliases("latency_p95", 1e-3, "ms", "latency_p95_ms", "p95_latency_ms", "p95_ms"),
        **_aliases("latency_p99", 1e-3, "ms", "latency_p99_ms", "p99_latency_ms", "p99_ms"),
        **_aliases("latency_mean", 1e-3, "ms", "latency_mean_ms", "mean_latency_ms", "latency_avg_ms"),
        **_aliases("throughput", 1.0, "req/s", "rps", "requests_per_second", "throughput_rps", "request_rate"),
    }
)

#: The seed study's figures: figure name -> the queries of its panels (top to bottom).
SEED_FIGURES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "gpu_util": ("gpu_util_dcgm",),
        "gpu_memory": ("gpu_memory_used_dcgm",),
        "gpu_power": ("gpu_power_dcgm",),
        "gpu_temp": ("gpu_temp_dcgm",),
        "cpu": ("container_cpu",),
        "latency": ("latency_p50", "latency_p95"),
    }
)


def seed_metric_table() -> pd.DataFrame:
    """The name mapping of :data:`SEED_METRICS` as a table (seed name, seed unit, query, its unit, factor)."""
    rows = [
        {
            "seed name": name,
            "seed unit": m.seed_unit,
            "query": m.query,
            "unit": CATALOGUE[m.query].unit,
            "factor": m.factor,
        }
        for name, m in SEED_METRICS.items()
    ]
    return pd.DataFrame(rows)


def _metric(name: str, metrics: Mapping[str, SeedMetric | tuple] | None) -> SeedMetric | None:
    extra = {k.lower(): v if isinstance(v, SeedMetric) else SeedMetric(*v) for k, v in (metrics or {}).items()}
    found = extra.get(name.lower()) or SEED_METRICS.get(name.lower())
    if found is None and name in CATALOGUE:
        found = SeedMetric(name, 1.0, CATALOGUE[name].unit)
    return found


def check_tz(tz: str | None) -> str:
    """The zone name to read local times in (``DEFAULT_TZ`` for None); a ValueError naming close zones if unknown."""
    import zoneinfo

    name = DEFAULT_TZ if tz is None else str(tz)
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, sorted(zoneinfo.available_timezones()), n=3)
        raise ValueError(
            f"tz={name!r} is not a time zone (an IANA name such as 'Europe/Berlin' or 'UTC')"
            + (f"; did you mean {close}?" if close else "")
        ) from None
    return name


# --- reading ---------------------------------------------------------------------------------------------------------


def _read_rows(path: Path, first: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the data rows of a comma-separated file, each row with its 1-based line number. Rows that are
    blank or start with ``#`` are skipped; ``first`` says what the file should hold (for messages)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SeedCsvError(f"{path}: cannot read: {exc}") from exc
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    rows = []
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
                continue
            fields = [f.strip() for f in fields]
            if header is None:
                header = fields
            else:
                rows.append((line, fields))
    except csv.Error as exc:
        raise SeedCsvError(f"{path}: line {reader.line_num}: {exc}") from exc
    if header is None:
        raise SeedCsvError(f"{path}: line 1: the file is empty (expected {first})")
    return header, rows


def _cut_short(path: Path, line: int, fields: list[str], header: list[str]) -> None:
    if len(fields) > len(header):
        raise SeedCsvError(
            f"{path}: line {line}: {len(fields)} fields, but the header {','.join(header)} has {len(header)}"
        )
    empty = [h for h, f in zip(header, fields) if f == ""]
    if len(fields) < len(header) or empty:
        missing = header[len(fields) :] if len(fields) < len(header) else empty
        raise SeedCsvError(
            f"{path}: line {line}: the line is cut short: {','.join(fields)!r} has no "
            f"{', '.join(missing)} (header {','.join(header)})"
        )


_ISO_HINT = "Unix seconds or milliseconds, or ISO 8601 such as 2025-06-12 14:00:00 or 2025-06-12T12:00:00Z"


def _parse_times(texts: list[str], lines: list[int], path: Path, tz: str) -> tuple[pd.DatetimeIndex, str]:
    """Times of one file (or one column of the phases file) -> UTC, and how they were read (the time basis)."""
    if not texts:
        return pd.DatetimeIndex([], tz="UTC"), ""
    numbers = pd.to_numeric(pd.Series(texts, dtype=object), errors="coerce")
    finite = numbers.notna() & numbers.abs().lt(float("inf"))
    if finite.any():
        if not finite.all():
            i = int((~finite).to_numpy().argmax())
            raise SeedCsvError(
                f"{path}: line {lines[i]}: timestamp {texts[i]!r} is not a time like the other lines "
                f"(Unix {'milliseconds' if numbers.abs().max() > 1e11 else 'seconds'})"
            )
        unit = "ms" if numbers.abs().max() > 1e11 else "s"
        try:
            times = pd.to_datetime(numbers.astype("float64"), unit=unit, utc=True)
        except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime) as exc:
            i = int(numbers.abs().to_numpy().argmax())
            raise SeedCsvError(f"{path}: line {lines[i]}: timestamp {texts[i]!r} is out of range: {exc}") from exc
        words = "milliseconds" if unit == "ms" else "seconds"
        return pd.DatetimeIndex(times), f"Unix epoch {words} (zone-free)"
    parsed = []
    for text, line in zip(texts, lines):
        try:
            if not re.match(r"\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}", text):
                raise ValueError("not ISO 8601 date and time")
            parsed.append(pd.Timestamp(text))
        except (ValueError, TypeError, OverflowError) as exc:
            raise SeedCsvError(f"{path}: line {line}: timestamp {text!r} is not a time ({_ISO_HINT}): {exc}") from None
    aware = [p.tzinfo is not None for p in parsed]
    if any(aware) and not all(aware):
        i = aware.index(not aware[0])
        raise SeedCsvError(
            f"{path}: line {lines[i]}: timestamp {texts[i]!r} "
            f"{'has a UTC offset' if aware[i] else 'has no UTC offset'}, unlike line {lines[0]}"
        )
    if all(aware):
        return pd.DatetimeIndex([p.tz_convert("UTC") for p in parsed]), "ISO 8601 with a UTC offset"
    naive = pd.DatetimeIndex(parsed)
    try:
        local = naive.tz_localize(tz, ambiguous="infer", nonexistent="raise")
    except ValueError:  # a local time that daylight saving skips or repeats (and the order cannot tell): which line
        for i, p in enumerate(parsed):
            try:
                pd.Timestamp(p).tz_localize(tz, ambiguous="raise", nonexistent="raise")
            except ValueError as exc:
                kind = "does not exist" if "nonexistent" in str(exc) else "is ambiguous"
                raise SeedCsvError(
                    f"{path}: line {lines[i]}: local time {texts[i]!r} {kind} in {tz} (daylight "
                    "saving); export Unix times or times with a UTC offset"
                ) from None
        raise
    return local.tz_convert("UTC"), f"local time, {tz}"


def _parse_csv_name(path: Path, root: Path) -> re.Match:
    rel = path.relative_to(root)
    m = _CSV_NAME.match(path.name)
    if not m:
        raise SeedCsvError(f"{path}: file name does not match {_EXPECT}")
    if len(rel.parts) > 2:
        raise SeedCsvError(f"{path}: expected {_EXPECT} under {root} (found it {len(rel.parts) - 1} folders deep)")
    if len(rel.parts) == 2 and rel.parts[0] != m.group("run"):
        raise SeedCsvError(f"{path}: file name does not match its folder {rel.parts[0]!r}: expected {_EXPECT}")
    try:
        datetime.strptime(m.group("stamp"), "%Y%m%d_%H%M%S")
    except ValueError:
        raise SeedCsvError(
            f"{path}: bad export timestamp {m.group('stamp')!r} in the file name (expected YYYYmmdd_HHMMSS)"
        ) from None
    return m


def read_seed_csv(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    tz: str | None = None,
    phase: str = "seed",
    metrics: Mapping[str, Any] | None = None,
    drop_nonfinite: bool = False,
) -> pd.DataFrame:
    """One export file -> tidy frame with ``workload`` and ``replicas`` (all rows in ``phase``). ``attrs["file"]``
    describes the file (metric, query, factor, rows, time basis, dropped lines). ``root`` is the folder of the
    exports (default: the file's folder, or its parent for a file in a ``<workload>_r<N>/`` folder)."""
    path = Path(path)
    if root is None:
        root = (
            path.parent.parent
            if _RUN_DIR.match(path.parent.name)
            and _CSV_NAME.match(path.name)
            and _CSV_NAME.match(path.name).group("run") == path.parent.name
            else path.parent
        )
    root = Path(root)
    tz = check_tz(tz)
    name = _parse_csv_name(path, root)
    workload, replicas, metric = name.group("workload"), int(name.group("replicas")), name.group("metric")
    header, rows = _read_rows(path, "the header timestamp,value and data lines")
    missing = [c for c in ("timestamp", "value") if c not in header]
    if missing:
        raise SeedCsvError(
            f"{path}: line 1: missing column(s) {missing}; found {header} (expected the header timestamp,value)"
        )
    if len(set(header)) != len(header):
        raise SeedCsvError(f"{path}: line 1: a column is named twice in the header {header}")
    if not rows:
        raise SeedCsvError(f"{path}: line 1: the file has only a header, no data lines")
    mapped = _metric(metric, metrics)
    query, factor = (mapped.query, mapped.factor) if mapped else (metric, 1.0)
    unit = CATALOGUE[query].unit if query in CATALOGUE else ""
    it, iv = header.index("timestamp"), header.index("value")
    keep_lines, keep_times, values, label_rows, dropped = [], [], [], [], 0
    label_cols = [(i, h) for i, h in enumerate(header) if h not in ("timestamp", "value")]
    for line, fields in rows:
        _cut_short(path, line, fields, header)
        text = fields[iv]
        try:
            value = float(text)
        except ValueError:
            raise SeedCsvError(f"{path}: line {line}: value {text!r} is not a number") from None
        if not math.isfinite(value):
            if drop_nonfinite:
                dropped += 1
                continue
            raise SeedCsvError(
                f"{path}: line {line}: value {text!r} is not finite (drop_nonfinite=True drops such lines)"
            )
        value *= factor
        if unit == "ratio" and not -1e-9 <= value <= 1.0 + 1e-9:
            hint = "percent exports are named e.g. gpu_util (converted /100)" if factor == 1.0 else "check the unit"
            raise SeedCsvError(
                f"{path}: line {line}: value {text!r} is {value:g} as a ratio of {query}, outside 0..1 ({hint})"
            )
        keep_lines.append(line)
        keep_times.append(fields[it])
        values.append(value)
        label_rows.append(labels_json({h: fields[i] for i, h in label_cols if fields[i] != ""}))
    times, basis = _parse_times(keep_times, keep_lines, path, tz)
    frame = pd.DataFrame(
        {
            "time": pd.Series(times, dtype="datetime64[ns, UTC]"),
            "query": query,
            "value": pd.Series(values, dtype="float64"),
            "unit": unit,
            "labels": label_rows,
            "phase": phase,
            "workload": workload,
            "replicas": replicas,
        },
        index=range(len(values)),
    )
    frame = frame.astype(
        {"query": "str", "unit": "str", "labels": "str", "phase": "str", "workload": "str", "replicas": "int64"}
    )
    frame.attrs["file"] = {
        "file": str(path),
        "workload": workload,
        "replicas": replicas,
        "metric": metric,
        "query": query,
        "seed_unit": mapped.seed_unit if mapped else "",
        "unit": unit,
        "factor": factor,
        "rows": len(frame),
        "dropped_nonfinite": dropped,
        "time_basis": basis,
        "exported": name.group("stamp"),
        "in_catalogue": query in CATALOGUE,
    }
    return frame


def read_seed_phases(path: str | os.PathLike, tz: str | None = None) -> pd.DataFrame:
    """A ``_timestamps.txt`` -> one row per phase: ``phase``, ``start``, ``end`` (UTC), ``line``."""
    path = Path(path)
    tz = check_tz(tz)
    header, rows = _read_rows(path, "lines <phase>,<start>,<end>")
    if [h.lower() for h in header] != ["phase", "start", "end"]:
        rows = [(1, header), *rows]  # no header line: the first line is a phase
    names, starts, ends, lines = [], [], [], []
    for line, fields in rows:
        _cut_short(path, line, fields, ["phase", "start", "end"])
        names.append(fields[0])
        starts.append(fields[1])
        ends.append(fields[2])
        lines.append(line)
    if not names:
        raise SeedCsvError(f"{path}: line 1: no phases (expected lines <phase>,<start>,<end>)")
    start, _ = _parse_times(starts, lines, path, tz)
    end, basis = _parse_times(ends, lines, path, tz)
    table = pd.DataFrame({"phase": names, "start": start, "end": end, "line": lines, "time_basis": basis})
    for row in table.itertuples():
        if row.end < row.start:
            raise SeedCsvError(
                f"{path}: line {row.line}: phase {row.phase!r} ends before it starts "
                f"({row.end.isoformat()} < {row.start.isoformat()} UTC)"
            )
        if (table["phase"].iloc[: row.Index] == row.phase).any():
            raise SeedCsvError(f"{path}: line {row.line}: phase {row.phase!r} is listed twice")
    ordered = table.sort_values("start", kind="stable")
    for prev, nxt in zip(ordered.itertuples(), ordered.iloc[1:].itertuples()):
        if nxt.start < prev.end:
            raise SeedCsvError(
                f"{path}: line {nxt.line}: phase {nxt.phase!r} starts before phase {prev.phase!r} "
                f"(line {prev.line}) ends"
            )
    return table


def _phase_run(path: Path, root: Path) -> tuple[str, int]:
    rel = path.relative_to(root)
    m = _PHASE_NAME.match(path.name)
    folder = _RUN_DIR.match(rel.parts[0]) if len(rel.parts) == 2 else None
    if len(rel.parts) > 2:
        raise SeedCsvError(f"{path}: expected <workload>_r<N>_timestamps.txt in {root} or in a run's folder")
    if m.group("run"):
        if len(rel.parts) == 2 and rel.parts[0] != m.group("run"):
            raise SeedCsvError(f"{path}: file name does not match its folder {rel.parts[0]!r}")
        return m.group("workload"), int(m.group("replicas"))
    if folder:
        return folder.group("workload"), int(folder.group("replicas"))
    raise SeedCsvError(
        f"{path}: which run's phases are these? Name it <workload>_r<N>_timestamps.txt or put it in "
        "the run's folder <workload>_r<N>/"
    )


def _assign_phases(frame: pd.DataFrame, phases: pd.DataFrame, default: str) -> pd.Series:
    out = pd.Series(default, index=frame.index, dtype="str")
    done = pd.Series(False, index=frame.index)
    for row in phases.sort_values("start").itertuples():
        inside = (frame["time"] >= row.start) & (frame["time"] < row.end) & ~done
        out[inside], done = row.phase, done | inside
    for row in phases.sort_values("start").itertuples():
        at_end = (frame["time"] == row.end) & ~done
        out[at_end], done = row.phase, done | at_end
    return out


def import_seed_csv(
    root: str | os.PathLike,
    tz: str | None = None,
    phase: str = "seed",
    metrics: Mapping[str, Any] | None = None,
    drop_nonfinite: bool = False,
) -> pd.DataFrame:
    """Every export under ``root`` (see the module's docstring for the layout, times, names and phases) -> one tidy
    frame: the columns of gawm's run metrics (``time``, ``query``, ``value``, ``unit``, ``labels``, ``phase``) plus
    ``workload`` and ``replicas``, in catalogue units, times in UTC.

    ``tz``: the zone of the exporter's local time (e.g. ``"Europe/Berlin"``); None reads local times as UTC and says
    so. ``phase``: the phase of samples outside every listed phase. ``metrics``: more seed names, ``{name:
    (query, factor, seed_unit)}``. Raises :class:`SeedCsvError` naming the file and line of what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"seed CSV folder {root} is not a directory")
    zone = check_tz(tz)
    visible = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    csvs = [p for p in visible if p.suffix.lower() == ".csv"]
    phase_files = [p for p in visible if p.suffix.lower() == ".txt" and _PHASE_NAME.match(p.name)]
    frames, files, seen = [], [], {}
    for path in csvs:
        frame = read_seed_csv(path, root, zone, phase, metrics, drop_nonfinite)
        info = frame.attrs.pop("file")
        key = (info["workload"], info["replicas"], info["query"])
        if key in seen:
            raise SeedCsvError(
                f"{path}: line 1: the same metric exported twice: {info['metric']!r} and "
                f"{seen[key]['metric']!r} of {info['workload']}_r{info['replicas']} are both "
                f"{info['query']!r}; the other file is {seen[key]['file']}"
            )
        seen[key] = info
        files.append(info)
        frames.append(frame)
    phase_tables, phase_of = [], {}
    for path in phase_files:
        run = _phase_run(path, root)
        if run in phase_of:
            raise SeedCsvError(
                f"{path}: line 1: a second phases file for {run[0]}_r{run[1]}; the other is {phase_of[run]}"
            )
        phase_of[run] = path
        table = read_seed_phases(path, zone).assign(workload=run[0], replicas=run[1], file=str(path))
        phase_tables.append(table)
    phases = (
        pd.concat(phase_tables, ignore_index=True)
        if phase_tables
        else pd.DataFrame(columns=["phase", "start", "end", "line", "time_basis", "workload", "replicas", "file"])
    )
    for frame in frames:
        if not len(frame):
            continue
        run = (frame["workload"].iloc[0], int(frame["replicas"].iloc[0]))
        mine = phases[(phases["workload"] == run[0]) & (phases["replicas"] == run[1])]
        if len(mine):
            frame["phase"] = _assign_phases(frame, mine, phase)
    frames = [f for f in frames if len(f)]
    out = pd.concat(frames, ignore_index=True) if frames else empty_frame({"workload": "str", "replicas": "int64"})
    out = out[[*FRAME_COLUMNS, "workload", "replicas"]]
    local = [f for f in files if f["time_basis"].startswith("local")] + [
        {"file": p}
        for p in phases["file"].unique()
        if phases.loc[phases["file"] == p, "time_basis"].iloc[0].startswith("local")
    ]
    if tz is None:
        note = (
            f"local times read as {DEFAULT_TZ}: no tz was given (the seed's exporter wrote its local time; pass "
            "tz='Europe/Berlin' or its zone)"
        )
        if local:
            log.warning("seed import %s: %d file(s) with local times: %s", root, len(local), note)
    else:
        note = f"local times read in {zone} (tz={tz!r})"
        log.info("seed import %s: %s", root, note)
    if not local:
        note += "; no file has local times (Unix epoch or UTC offset: zone-free)"
    out.attrs.update(
        {
            "tz": zone,
            "tz_given": tz is not None,
            "tz_note": note,
            "root": str(root),
            "files": files,
            "phases": [
                {
                    "workload": r.workload,
                    "replicas": int(r.replicas),
                    "phase": r.phase,
                    "start": r.start.isoformat(),
                    "end": r.end.isoformat(),
                    "file": r.file,
                }
                for r in phases.itertuples()
            ],
        }
    )
    return out


# --- tables and sentences ------------------------------------------------------------------------------------------


def _run_order(frame: pd.DataFrame) -> list[tuple[str, int]]:
    from gawm_lib.plots import WORKLOAD_LABEL

    runs = set(zip(frame["workload"], frame["replicas"].astype(int)))
    rank = {w: i for i, w in enumerate(WORKLOAD_LABEL)}
    return sorted(runs, key=lambda r: (rank.get(r[0], len(rank)), r[0], r[1]))


def seed_phases(frame: pd.DataFrame) -> pd.DataFrame:
    """The phases the import read (``frame.attrs["phases"]``): workload, replicas, phase, start, end (UTC)."""
    rows = frame.attrs.get("phases", [])
    table = pd.DataFrame(rows, columns=["workload", "replicas", "phase", "start", "end", "file"])
    for col in ("start", "end"):
        table[col] = pd.to_datetime(table[col], utc=True)
    return table


def seed_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """What was imported, one row per run: workload, replicas, metrics (catalogue names), rows, first and last
    sample (UTC), time span, phases and how the times were read."""
    files = pd.DataFrame(frame.attrs.get("files", []))
    phases = seed_phases(frame)
    rows = []
    for workload, replicas in _run_order(frame):
        part = frame[(frame["workload"] == workload) & (frame["replicas"] == replicas)]
        mine = files[(files["workload"] == workload) & (files["replicas"] == replicas)] if len(files) else files
        ph = phases[(phases["workload"] == workload) & (phases["replicas"] == replicas)]
        start, end = part["time"].min(), part["time"].max()
        rows.append(
            {
                "workload": workload,
                "replicas": replicas,
                "metrics": ", ".join(sorted(part["query"].unique())),
                "rows": len(part),
                "first (UTC)": start.strftime("%Y-%m-%d %H:%M:%S"),
                "span [s]": round((end - start).total_seconds(), 1),
                "phases": ", ".join(ph.sort_values("start")["phase"]) or "-",
                "times read as": "; ".join(sorted(set(mine["time_basis"]))) if len(mine) else "",
            }
        )
    return pd.DataFrame(rows)


def _longest_phase(phases: pd.DataFrame) -> str | None:
    if not len(phases):
        return None
    return phases.assign(d=phases["end"] - phases["start"]).sort_values("d", ascending=False)["phase"].iloc[0]


def seed_means(frame: pd.DataFrame, phase: str = "") -> pd.DataFrame:
    """Per run and query, the mean (and max) over one phase: ``phase`` where given (a run without it is left out),
    else each run's longest phase (all its samples for a run without phases). Long: workload, replicas, phase,
    query, unit, mean, max, n (samples)."""
    phases = seed_phases(frame)
    rows = []
    for workload, replicas in _run_order(frame):
        part = frame[(frame["workload"] == workload) & (frame["replicas"] == replicas)]
        mine = phases[(phases["workload"] == workload) & (phases["replicas"] == replicas)]
        chosen = phase or _longest_phase(mine)
        if chosen:
            part = part[part["phase"] == chosen]
        for query, group in part.groupby("query", sort=True):
            rows.append(
                {
                    "workload": workload,
                    "replicas": replicas,
                    "phase": chosen or "all samples",
                    "query": query,
                    "unit": group["unit"].iloc[0],
                    "mean": group["value"].mean(),
                    "max": group["value"].max(),
                    "n": len(group),
                }
            )
    return pd.DataFrame(rows, columns=["workload", "replicas", "phase", "query", "unit", "mean", "max", "n"])


def seed_result_table(means: pd.DataFrame, queries: Iterable[str] | None = None) -> pd.DataFrame:
    """:func:`seed_means` as a compact table: one row per run, one column per query in display units (ms, %, GiB);
    the ``phase`` column only where the runs' phases differ."""
    from gawm_lib import plots

    order = [
        q
        for q in (queries or [q for names in SEED_FIGURES.values() for q in names] + ["throughput"])
        if q in set(means["query"])
    ]
    rows = []
    for (workload, replicas, phase), group in means.groupby(["workload", "replicas", "phase"], sort=False):
        row = {"workload": workload, "replicas": replicas, "phase": phase}
        for q in order:
            hit = group[group["query"] == q]
            label, factor = plots.query_axis_label(q, hit["unit"].iloc[0] if len(hit) else CATALOGUE[q].unit)
            row[label] = round(float(hit["mean"].iloc[0]) * factor, 3) if len(hit) else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table) and table["phase"].nunique() == 1:  # said once, in the sentences and the notebook's text
        table = table.drop(columns="phase")
    return table


def _fmt(query: str, unit: str, value: float) -> str:
    from gawm_lib import plots

    label, factor = plots.query_axis_label(query, unit)
    shown = label[label.rfind("[") + 1 : -1]
    number = value * factor
    text = f"{number:.0f}" if abs(number) >= 100 else f"{number:.3g}"
    return f"{text} {shown}" if shown != "%" else f"{text} %"


_WORDS = {
    "gpu_util_dcgm": "GPU utilisation",
    "gpu_power_dcgm": "GPU power",
    "latency_p95": "p95 latency",
    "container_cpu": "CPU use",
    "gpu_memory_used_dcgm": "GPU memory",
    "throughput": "throughput",
}


def describe_seed(means: pd.DataFrame) -> list[str]:
    """Two or three sentences from :func:`seed_means`: per workload, how the means change with the replica count;
    the hottest and most power-hungry GPU reading."""
    from gawm_lib.plots import workload_name

    sentences = []
    for workload, group in means.groupby("workload", sort=False):
        counts = sorted(group["replicas"].unique())
        parts = []
        for query, words in _WORDS.items():
            hit = group[group["query"] == query].sort_values("replicas")
            if len(hit) == 0:
                continue
            values = " and ".join(_fmt(query, r.unit, r.mean) for r in hit.itertuples())
            parts.append(f"{words} {values}")
        if not parts:
            continue
        phases = sorted(set(group["phase"]))
        where = f"in phase {phases[0]!r}" if len(phases) == 1 else f"in phases {', '.join(map(repr, phases))}"
        replicas = " and ".join(str(c) for c in counts)
        noun = "replica" if counts == [1] else "replicas"
        lead = f"{workload_name(workload)} with {replicas} {noun} ({where}, means): "
        sentences.append(lead + "; ".join(parts[:4]) + ".")
    peaks = []
    for query, words in (("gpu_temp_dcgm", "hottest GPU reading"), ("gpu_power_dcgm", "highest GPU power")):
        hit = means[means["query"] == query]
        if len(hit):
            top = hit.loc[hit["max"].idxmax()]
            peaks.append(
                f"the {words} was {_fmt(query, top['unit'], top['max'])} ({workload_name(top['workload'])}, "
                f"{top['replicas']} replica{'s' if top['replicas'] != 1 else ''})"
            )
    if peaks:
        sentence = "; ".join(peaks) + "."
        sentences.append(sentence[0].upper() + sentence[1:])
    return sentences


# --- figures -------------------------------------------------------------------------------------------------------

LINESTYLES = ["-", "--", "-.", ":"]


def _run_starts(frame: pd.DataFrame, phases: pd.DataFrame) -> dict[tuple[str, int], pd.Timestamp]:
    starts = {}
    for run in _run_order(frame):
        ph = phases[(phases["workload"] == run[0]) & (phases["replicas"] == run[1])]
        part = frame[(frame["workload"] == run[0]) & (frame["replicas"] == run[1])]
        starts[run] = ph["start"].min() if len(ph) else part["time"].min()
    return starts


def seed_timeline(frame: pd.DataFrame, queries: Iterable[str], title: str | None = None):
    """The seed's metrics over time: one panel per query (top to bottom), one line per run (workload colour, shaded
    and dashed by replica count) over the time since the run's start (its first phase, else its first sample), the
    phases shaded where every run has the same ones (else a dotted line at each run's phase starts). Axis labels in
    words with units (``plots.query_axis_label``). The plotted points are attached (``plots.attach_data``; extra
    columns ``time_utc``, ``value`` in the catalogue unit, ``unit``, ``phase``) for ``plots.save_figure``."""
    from gawm_lib import plots

    queries = [q for q in queries]
    present = [q for q in queries if (frame["query"] == q).any()]
    if not present:
        raise ValueError(f"no samples of {queries} in the frame; it has {sorted(frame['query'].unique())}")
    phases = seed_phases(frame)
    starts = _run_starts(frame, phases)
    runs = list(starts)
    span = max(
        (frame.loc[(frame["workload"] == w) & (frame["replicas"] == r), "time"].max() - s).total_seconds()
        for (w, r), s in starts.items()
    )
    scale, xunit = (60.0, "min") if span > 900 else (1.0, "s")
    fig, axes = plots.figure(width="single", aspect=0.3 if len(present) > 1 else 0.42, nrows=len(present))
    axes = axes[:, 0]
    for ax in axes[1:]:
        ax.sharex(axes[0])
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    counts = {w: sorted(r for ww, r in runs if ww == w) for w in dict.fromkeys(w for w, _ in runs)}
    rows, handles = [], {}
    for ax, query in zip(axes, present):
        part = frame[frame["query"] == query]
        unit = part["unit"].iloc[0]
        label, factor = plots.query_axis_label(query, unit)
        for run in runs:
            workload, replicas = run
            mine = part[(part["workload"] == workload) & (part["replicas"] == replicas)]
            if not len(mine):
                continue
            i, n = counts[workload].index(replicas), len(counts[workload])
            colour = plots.shade(plots.workload_style(workload)[0], i, n)
            style = LINESTYLES[i % len(LINESTYLES)]
            for labels, group in mine.groupby("labels", sort=True):
                group = group.sort_values("time")
                tags = json.loads(labels) if labels else {}
                series = f"{plots.workload_name(workload)}, {replicas} replica{'s' if replicas != 1 else ''}"
                series += "".join(f" {k}={v}" for k, v in sorted(tags.items()))
                x = (group["time"] - starts[run]).dt.total_seconds() / scale
                y = group["value"] * factor
                (line,) = ax.plot(x, y, color=colour, linestyle=style, linewidth=1.2, label=series)
                handles.setdefault(series, line)
                rows += [
                    {
                        "panel": query,
                        "series": series,
                        "run_id": f"seed:{workload}_r{replicas}",
                        "config": f"replicas={replicas}",
                        "x_name": f"elapsed_{xunit}",
                        "x": xv,
                        "y_name": label,
                        "y": yv,
                        "kind": "measured",
                        "time_utc": t.isoformat(),
                        "value": v,
                        "unit": unit,
                        "phase": p,
                    }
                    for xv, yv, t, v, p in zip(x, y, group["time"], group["value"], group["phase"])
                ]
        ax.set_ylabel(
            label.replace(" [", "\n[") if len(present) > 1 else label, fontsize=7 if len(present) > 1 else None
        )
        if unit != "celsius":
            ax.set_ylim(bottom=0)
    _draw_phases(axes, phases, starts, scale, counts)
    axes[-1].set_xlabel(f"time since the run's start [{xunit}]")
    if title:
        axes[0].set_title(title)
    fig.legend(
        list(handles.values()), list(handles), loc="outside upper center", ncols=min(3, len(handles)), frameon=False
    )
    return plots.attach_data(fig, rows)


def _draw_phases(axes, phases: pd.DataFrame, starts: dict, scale: float, counts: dict) -> None:
    from gawm_lib import plots

    relative = {}
    for run, start in starts.items():
        ph = phases[(phases["workload"] == run[0]) & (phases["replicas"] == run[1])].sort_values("start")
        relative[run] = [
            (r.phase, (r.start - start).total_seconds() / scale, (r.end - start).total_seconds() / scale)
            for r in ph.itertuples()
        ]
    if not any(relative.values()):
        return
    first = next(iter(relative.values()))
    same = all(
        len(v) == len(first)
        and all(
            a[0] == b[0] and abs(a[1] - b[1]) < 1 / scale and abs(a[2] - b[2]) < 1 / scale for a, b in zip(v, first)
        )
        for v in relative.values()
    )
    if same:
        for ax in axes:
            for i, (_, s, e) in enumerate(first):
                ax.axvspan(s, e, color=plots.OKABE_ITO[i % 2 + 5], alpha=0.12, linewidth=0)
        for name, s, e in first:
            axes[0].text(
                (s + e) / 2,
                1.0,
                name,
                transform=axes[0].get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
                color="0.35",
            )
        return
    for run, spans in relative.items():
        i, n = counts[run[0]].index(run[1]), len(counts[run[0]])
        colour = plots.shade(plots.workload_style(run[0])[0], i, n)
        for ax in axes:
            for _, s, _e in spans:
                ax.axvline(s, color=colour, linestyle=":", linewidth=0.8, alpha=0.7)
    axes[0].figure.text(
        0.0,
        0.0,
        "dotted: where each run's phases start (the runs' phases differ)",
        fontsize=7,
        color="0.35",
        ha="left",
        va="top",
    )
