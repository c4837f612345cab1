"""Grafana dashboard JSON built from catalogue queries (for users who run Grafana)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .catalogue import UNITS, get_query

#: Catalogue unit -> Grafana unit id ("suffix:..." is Grafana's custom-unit syntax).
GRAFANA_UNITS: Mapping[str, str] = {
    "seconds": "s",
    "bytes": "bytes",
    "joules": "joule",
    "watts": "watt",
    "ratio": "percentunit",
    "requests/s": "reqps",
    "items/s": "suffix: items/s",
    "requests": "short",
    "items": "short",
    "count": "short",
    "cores": "suffix: cores",
    "hertz": "hertz",
    "celsius": "celsius",
    "joules/request": "suffix: J/req",
}
if set(GRAFANA_UNITS) != set(UNITS):  # pragma: no cover - guards catalogue edits
    raise RuntimeError("every catalogue unit needs a Grafana unit")


def grafana_dashboard(
    query_names: Iterable[str],
    *,
    title: str = "gawm",
    uid: str = "gawm",
    params: Mapping[str, Any] | None = None,
    columns: int = 2,
) -> dict:
    """A Grafana dashboard (JSON-serialisable dict): one time-series panel per catalogue query,
    its expression rendered with default parameters (or ``params``), its unit mapped to Grafana's.
    The Prometheus data source is chosen through the ``DS_PROMETHEUS`` dashboard variable."""
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    width = 24 // columns
    panels = []
    for i, name in enumerate(query_names):
        q = get_query(name)
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": name,
                "description": q.description,
                "datasource": ds,
                "gridPos": {"h": 8, "w": width, "x": (i % columns) * width, "y": (i // columns) * 8},
                "fieldConfig": {"defaults": {"unit": GRAFANA_UNITS[q.unit]}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {
                        "refId": "A",
                        "datasource": ds,
                        "expr": q.render(**dict(params or {})),
                        "legendFormat": "__auto",
                        "range": True,
                    }
                ],
            }
        )
    return {
        "title": title,
        "uid": uid,
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "tags": ["gawm"],
        "templating": {
            "list": [
                {
                    "name": "DS_PROMETHEUS",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "panels": panels,
    }


def shipped_dashboard() -> dict:
    """The dashboard shipped under ``k8s/monitoring/dashboards/``: every catalogue query, in catalogue order."""
    from .catalogue import CATALOGUE

    return grafana_dashboard(list(CATALOGUE), title="gawm: inference workloads", uid="gawm-workloads")


if __name__ == "__main__":  # python -m gawm_lib.prom.grafana PATH: regenerate the shipped dashboard
    import json
    import sys
    from pathlib import Path

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "k8s/monitoring/dashboards/gawm.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(shipped_dashboard(), indent=2) + "\n")
    print(f"wrote {out}")
