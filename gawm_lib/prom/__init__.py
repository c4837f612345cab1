"""Prometheus for gawm: named queries, tidy metric frames per run phase, a real local Prometheus.

- :mod:`.catalogue`: every named PromQL query (``CATALOGUE``, ``Query.render``), defined once.
- :mod:`.promql`: escaped label matchers (hostile values match literally), durations.
- :mod:`.local`: ``LocalPrometheus`` (a real ``prometheus`` on 127.0.0.1), ``wait_for_targets_up``.
- :mod:`.query`: ``query_phases`` / ``query_run_phases`` -> tidy long DataFrame; ``save_run_metrics``.
- :mod:`.seed`: ``import_seed_csv`` for the seed study's CSV exports (time zone, metric names, phases), and its
  figures (``seed_timeline``; ``notebooks/07_seed_import.ipynb``).
- :mod:`.grafana`: ``grafana_dashboard``.

Names are imported lazily so that ``import gawm_lib.prom`` stays cheap (no pandas).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "catalogue": ("CATALOGUE", "SOURCES", "UNITS", "SOURCE_LABELS", "GAWM_BUCKETS_S", "Query", "get_query"),
    "promql": ("Prefix", "matcher", "quote_string", "quote_regex", "parse_duration", "format_duration"),
    "common": ("PrometheusNotInstalled", "PrometheusStartError", "PrometheusQueryError", "EmptyQueryWarning"),
    "local": ("LocalPrometheus", "Target", "wait_for_targets_up", "find_binary", "prometheus_version"),
    "query": (
        "FRAME_COLUMNS",
        "Phase",
        "query_phases",
        "save_run_metrics",
        "load_run_metrics",
        "fetch_scrape_interval_s",
        "phases_from_now",
        "empty_frame",
        "query_run_phases",
        "RUN_QUERIES",
    ),
    "seed": ("import_seed_csv", "read_seed_csv", "read_seed_phases", "SeedCsvError", "SEED_METRICS"),
    "grafana": ("grafana_dashboard", "GRAFANA_UNITS"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .catalogue import CATALOGUE, GAWM_BUCKETS_S, SOURCE_LABELS, SOURCES, UNITS, Query, get_query
    from .common import EmptyQueryWarning, PrometheusNotInstalled, PrometheusQueryError, PrometheusStartError
    from .grafana import GRAFANA_UNITS, grafana_dashboard
    from .local import LocalPrometheus, Target, find_binary, prometheus_version, wait_for_targets_up
    from .promql import Prefix, format_duration, matcher, parse_duration, quote_regex, quote_string
    from .query import (
        FRAME_COLUMNS,
        RUN_QUERIES,
        Phase,
        empty_frame,
        fetch_scrape_interval_s,
        load_run_metrics,
        phases_from_now,
        query_phases,
        query_run_phases,
        save_run_metrics,
    )
    from .seed import SEED_METRICS, SeedCsvError, import_seed_csv, read_seed_csv, read_seed_phases
