"""MAPE and the fit/holdout validation table."""

import math

import numpy as np
import pandas as pd
import pytest

from gawm_lib.models import mape, mm1, validate


def test_mape_hand_checked():
    assert mape([100, 200], [110, 180]) == pytest.approx(10.0)
    assert mape(np.array([2.0, 4.0, 8.0]), [2.0, 5.0, 6.0]) == pytest.approx(100 * (0 + 0.25 + 0.25) / 3)
    assert mape([-10.0], [-12.0]) == pytest.approx(20.0)  # relative to |measured|
    assert mape(pd.Series([5.0]), pd.Series([5.0])) == 0.0


@pytest.mark.parametrize(
    "measured, predicted, match",
    [
        ([], [], "empty"),
        ([1.0, 0.0], [1.0, 1.0], "measured value is zero"),
        ([1.0, 2.0], [1.0], "different lengths"),
        ([1.0, math.nan], [1.0, 1.0], "finite"),
    ],
)
def test_mape_errors(measured, predicted, match):
    with pytest.raises(ValueError, match=match):
        mape(measured, predicted)


def measured_frame(rates, service_s):
    # "Measurements" of M/M/1 servers: throughput equals the offered rate, exact p50/p95, slightly perturbed.
    rows = []
    for i, lam in enumerate(rates):
        p = mm1(lam, service_s)
        bump = 1 + 0.02 * (-1) ** i
        rows.append(
            {
                "config": f"rate{lam:g}",
                "arrival_rate": lam,
                "throughput": lam,
                "p50": p.p50_s * bump,
                "p95": p.p95_s * bump,
            }
        )
    return pd.DataFrame(rows)


def mm1_predictor(fit, holdout):
    # Estimate the service time from the fit set's mean p50 inversion: p50 = ln 2 / (1/S - lambda).
    s_hat = np.mean([1 / (math.log(2) / p50 + lam) for lam, p50 in zip(fit["arrival_rate"], fit["p50"])])
    preds = [mm1(lam, s_hat) for lam in holdout["arrival_rate"]]
    return pd.DataFrame(
        {
            "throughput": holdout["arrival_rate"].to_numpy(),
            "p50": [p.p50_s for p in preds],
            "p95": [p.p95_s for p in preds],
        }
    )


def test_validate_builds_tidy_table():
    fit = measured_frame([1.0, 2.0, 3.0, 4.0], 0.1)
    holdout = measured_frame([5.0, 7.0], 0.1)
    report = validate(fit, holdout, mm1_predictor)
    table = report.table
    assert list(table.columns) == ["config", "arrival_rate", "metric", "measured", "predicted", "ape_pct"]
    assert len(table) == 6 and set(table["metric"]) == {"throughput", "p50", "p95"}
    assert report.mape["throughput"] == 0.0
    for metric in ("p50", "p95"):
        rows = table[table["metric"] == metric]
        assert report.mape[metric] == pytest.approx(rows["ape_pct"].mean())
        assert 0 < report.mape[metric] < 5  # 2% measurement bumps, nearly right service time
    assert table.loc[table["metric"] == "p95", "measured"].tolist() == holdout["p95"].tolist()


def test_validate_errors():
    fit = measured_frame([1.0, 2.0], 0.1)
    holdout = measured_frame([5.0, 7.0], 0.1)
    with pytest.raises(ValueError, match="returned 1 rows for 2 holdout rows"):
        validate(fit, holdout, lambda f, h: mm1_predictor(f, h).iloc[:1])
    with pytest.raises(KeyError, match="predictor output lacks"):
        validate(fit, holdout, lambda f, h: mm1_predictor(f, h).drop(columns="p95"))
    with pytest.raises(KeyError, match="holdout_frame lacks"):
        validate(fit, holdout.drop(columns="p50"), mm1_predictor)
    with pytest.raises(ValueError, match="holdout_frame is empty"):
        validate(fit, holdout.iloc[:0], mm1_predictor)
    zero = holdout.assign(throughput=0.0)
    with pytest.raises(ValueError, match="measured value is zero"):
        validate(fit, zero, mm1_predictor)
