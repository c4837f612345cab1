"""Analysis of recorded runs: the service fit from server-reported batches, the closed-loop cycle model, and the
validation table, on hand-made rows whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gawm_lib import analysis
from gawm_lib.models import BatchLatencyModel


def rows(batch_sizes, alpha=0.01, beta=0.005, overhead=0.002, level=1):
    b = np.asarray(batch_sizes)
    compute = ((alpha * b + beta) * 1e9).astype(np.int64)
    sent = np.arange(len(b)) * 10**9
    return pd.DataFrame({"workload": "w", "phase": "step", "step": 0, "level": float(level), "error": "",
                         "batch_size": b, "server_compute_ns": compute, "server_queue_ns": 10**6,
                         "scheduled_ns": sent, "sent_ns": sent, "done_ns": sent + compute + 10**6 + int(overhead * 1e9)})


def test_fit_service_recovers_the_batch_model_and_overhead():
    model, overhead = analysis.fit_service(rows([1, 2, 4, 8, 1, 2, 4, 8]))
    assert model.predict(4) == pytest.approx(0.045, rel=1e-6)
    assert model.predict(8) == pytest.approx(0.085, rel=1e-6)
    assert overhead == pytest.approx(0.002, abs=1e-6)
    with pytest.raises(ValueError, match="no successful requests"):
        analysis.fit_service(rows([1, 2]).assign(error="timeout"))


def test_closed_loop_cycle_model_by_hand():
    service = BatchLatencyModel(alpha=0.01, beta=0.005)
    assert analysis.closed_loop_latency_s(3, service, 4, 0.0) == pytest.approx(0.035)  # one batch of 3
    assert analysis.closed_loop_latency_s(6, service, 4, 0.001) == pytest.approx(0.045 + 0.025 + 0.001)  # 4 then 2


def test_validation_table_has_one_row_per_metric_and_step():
    predicted = pd.DataFrame({"run_id": "r", "workload": "w", "scenario": "closed_loop", "level": [1.0, 2.0],
                              "throughput": [10.0, 20.0], "p50": [0.1, 0.1], "p95": [0.2, 0.2],
                              "predicted_throughput": [11.0, 20.0], "predicted_p50": [0.1, 0.12],
                              "predicted_p95": [0.2, 0.2]})
    table = analysis.validation_table(predicted)
    assert len(table) == 6
    assert table.loc[table["metric"] == "throughput", "ape_pct"].tolist() == pytest.approx([10.0, 0.0])
    assert table.loc[table["metric"] == "p50", "ape_pct"].tolist() == pytest.approx([0.0, 20.0])


def test_one_batch_size_gives_a_stated_no_gain_model():
    with pytest.warns(UserWarning, match="only batch size 1 was observed"):
        model, _ = analysis.fit_service(rows([1, 1, 1]))
    assert model.predict(1) == pytest.approx(0.015) and model.predict(4) == pytest.approx(0.060)
