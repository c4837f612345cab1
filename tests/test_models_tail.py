"""The tail curve (Kingman's heavy-traffic form of a configuration's p95 against its open-loop load): the closed
form and its inverse, the fit recovering known parameters with and without noise, bad input, and the analysis that
fits one per (workload, replicas) from request records and predicts another run's steps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gawm_lib import analysis
from gawm_lib.models import TailCurve, fit_tail_curve

CURVE = TailCurve(t0_s=0.012, k_s=0.008, headroom=0.88, capacity_rps=600.0)
RATES = np.array([60.0, 150.0, 250.0, 350.0, 420.0, 470.0])


def test_the_curve_is_t0_at_no_load_grows_as_x_over_1_minus_x_and_is_unbounded_at_its_limit():
    assert CURVE.limit_rps == pytest.approx(528.0)
    assert CURVE.p95_s(0.0) == pytest.approx(0.012)
    assert CURVE.p95_s(264.0) == pytest.approx(0.012 + 0.008 * 0.5 / 0.5)  # x = 1/2
    assert CURVE.p95_s([528.0, 600.0]).tolist() == [np.inf, np.inf]
    with pytest.raises(ValueError, match="rate_rps"):
        CURVE.p95_s(-1.0)


def test_max_rate_inverts_the_curve_and_is_zero_below_the_idle_p95():
    for slo in (0.013, 0.02, 0.5):
        assert CURVE.p95_s(CURVE.max_rate(slo)) == pytest.approx(slo)
    assert CURVE.max_rate(0.02) == pytest.approx(264.0)
    assert CURVE.max_rate(0.012) == 0.0 and CURVE.max_rate(0.001) == 0.0
    with pytest.raises(ValueError, match="slo_p95_s"):
        CURVE.max_rate(0.0)


def test_the_fit_recovers_known_parameters_exactly_without_noise_and_closely_with_it():
    exact = fit_tail_curve(RATES, CURVE.p95_s(RATES), 600.0)
    assert (exact.t0_s, exact.k_s, exact.headroom) == pytest.approx((0.012, 0.008, 0.88), rel=1e-4)
    rng = np.random.default_rng(7)
    errors = []
    for _ in range(20):  # 5 % log-normal noise on each step's p95, as a short step's p95 has
        noisy = fit_tail_curve(RATES, CURVE.p95_s(RATES) * np.exp(rng.normal(0, 0.05, RATES.size)), 600.0)
        errors.append(abs(noisy.limit_rps / CURVE.limit_rps - 1))
        middle = np.array([200.0, 300.0, 400.0])
        assert np.all(np.abs(noisy.p95_s(middle) / CURVE.p95_s(middle) - 1) < 0.12)
    assert np.median(errors) < 0.03  # the runaway rate within a few percent


@pytest.mark.parametrize(
    "rates, p95, capacity, message",
    [
        (RATES[:3], CURVE.p95_s(RATES[:3]), 600.0, "at least 4 steps"),
        (RATES, CURVE.p95_s(RATES)[:5], 600.0, "pair up"),
        (RATES, CURVE.p95_s(RATES), 450.0, "at or past the capacity"),
        ([100.0] * 4, [0.02] * 4, 600.0, "two or more rates"),
        (RATES, -CURVE.p95_s(RATES), 600.0, "finite and > 0"),
        (RATES, CURVE.p95_s(RATES), 0.0, "capacity_rps must be > 0"),
    ],
)
def test_the_fit_refuses_what_it_cannot_fit(rates, p95, capacity, message):
    with pytest.raises(ValueError, match=message):
        fit_tail_curve(rates, p95, capacity)


def test_a_curve_with_impossible_parameters_is_refused():
    with pytest.raises(ValueError, match="headroom and capacity_rps must be > 0"):
        TailCurve(t0_s=0.01, k_s=0.01, headroom=0.0, capacity_rps=100.0)
    with pytest.raises(ValueError, match="k_s"):
        TailCurve(t0_s=0.01, k_s=float("nan"), headroom=1.0, capacity_rps=100.0)


def _step(run_id, scenario, step, rate, latency_s, replicas=1, n=400):
    """One step of request records: ``n`` requests ``1 / rate`` apart, each taking ``latency_s``."""
    sent = (np.arange(n) / rate * 1e9).astype(np.int64)
    return pd.DataFrame(
        {
            "run_id": run_id,
            "workload": "w",
            "phase": "step",
            "step": step,
            "level": float(rate),
            "scenario": scenario,
            "error": "",
            "replicas": replicas,
            "max_batch_size": 8,
            "placement": "shared",
            "payload_audio_s": np.nan,
            "items": 1,
            "batch_size": 1,
            "scheduled_ns": sent,
            "sent_ns": sent,
            "done_ns": sent + int(latency_s * 1e9),
            "server_compute_ns": 1e6,
        }
    )


def test_curves_are_fitted_per_configuration_from_records_and_predict_another_runs_steps():
    closed = _step("closed", "closed_loop", 0, 600.0, 0.005)  # the capacity: about 600 req/s
    sweep = pd.concat([_step("sweep", "poisson", i, r, float(CURVE.p95_s(r))) for i, r in enumerate(RATES)])
    # a step the servers did not keep up with (half the offered rate came through) is not fitted
    behind = _step("sweep", "poisson", 9, 250.0, 5.0).assign(level=500.0)
    other = pd.concat([_step("closed2", "closed_loop", 0, 900.0, 0.05, replicas=2)])  # no sweep: no curve
    curves, not_fitted = analysis.fit_tail_curves(pd.concat([closed, sweep, behind, other], ignore_index=True))
    assert set(curves) == {("w", 1)} and not not_fitted
    curve = curves[("w", 1)]
    assert curve.capacity_rps == pytest.approx(600.0, rel=0.02)
    held = pd.concat(
        [_step("again", "poisson", i, r, float(CURVE.p95_s(r))) for i, r in enumerate([100.0, 300.0, 400.0])]
    )
    predicted = analysis.predict_tail_steps(held, curves)
    assert predicted["level"].tolist() == [100.0, 300.0, 400.0] and set(predicted["run_id"]) == {"again"}
    assert np.allclose(predicted["predicted_p95"], predicted["p95"], rtol=0.02)
    assert predicted["utilisation"].tolist() == pytest.approx([r / curve.capacity_rps for r in (100, 300, 400)])
    curves, not_fitted = analysis.fit_tail_curves(pd.concat([closed, sweep[sweep["step"] < 3]], ignore_index=True))
    assert not curves and "w x1: fit_tail_curve needs at least 4 steps" in not_fitted[("w", 1)]


def test_the_other_sweep_interpolated_at_the_held_out_rates_is_the_floor_under_any_model():
    sweep = pd.concat([_step("sweep", "poisson", 0, 100.0, 0.010), _step("sweep", "poisson", 1, 300.0, 0.040)])
    held = pd.concat(
        [
            _step("again", "poisson", 0, 200.0, 0.025),
            _step("again", "poisson", 1, 50.0, 0.01),
            _step("again2", "poisson", 0, 200.0, 0.025, replicas=2),
        ]
    )  # below the sweep; no sweep of x2
    floor = analysis.interpolate_sweeps(sweep, held)
    assert floor["level"].tolist() == [200.0]
    assert floor["interpolated_p95"].iloc[0] == pytest.approx(0.020, rel=1e-3)  # halfway in log: sqrt(10 x 40) ms
    assert analysis.interpolate_sweeps(sweep, held.iloc[:0]).empty


def test_rates_visited_more_than_once_give_the_spread_of_their_p95_and_the_floor_under_any_model():
    closed = _step("closed", "closed_loop", 0, 600.0, 0.005)  # capacity about 600 req/s
    visits = pd.concat(
        [
            _step("a", "poisson", 0, 100.0, 0.010),
            _step("a", "poisson", 1, 200.0, 0.020),
            _step("a", "poisson", 2, 100.0, 0.012),  # the same rate again, in the same run
            _step("b", "poisson", 0, 100.0, 0.014),
        ],
        ignore_index=True,
    )
    repeats = analysis.tail_repeats(pd.concat([closed, visits], ignore_index=True))
    assert len(repeats) == 1  # 200 req/s was visited once: no spread to tell
    row = repeats.iloc[0]
    assert (row["level"], row["visits"], row["runs"]) == (100.0, 3, 2)
    assert row["utilisation"] == pytest.approx(100.0 / 600.0, rel=0.02)
    assert (row["p95_min_ms"], row["p95_mean_ms"], row["p95_max_ms"]) == pytest.approx((10.0, 12.0, 14.0))
    assert row["p95_cv_pct"] == pytest.approx(100 * 2.0 / 12.0)
    # each visit against the mean of the others: 13 for 10, 12 for 12, 11 for 14
    assert row["loo_mape_pct"] == pytest.approx(100 * (3 / 10 + 0 / 12 + 3 / 14) / 3)
    # run a came back to 100 req/s: 10 against 12 and 12 against 10; run b's one visit has no other of its own
    assert row["within_run_visits"] == 2
    assert row["within_run_loo_mape_pct"] == pytest.approx(100 * (2 / 10 + 2 / 12) / 2)
    assert analysis.tail_repeats(visits)["utilisation"].isna().all()  # no closed-loop run: no capacity
    once = analysis.tail_repeats(pd.concat([visits[visits["run_id"] == "b"], _step("c", "poisson", 0, 100.0, 0.01)]))
    assert once["within_run_visits"].tolist() == [0] and np.isnan(once["within_run_loo_mape_pct"].iloc[0])


def _timed_step(run_id, step, rate, latency_s, seconds=18.0):
    """A Poisson step of ``seconds`` at ``rate`` requests 1 / rate apart, the k-th taking ``latency_s[k]``."""
    n = int(seconds * rate)
    frame = _step(run_id, "poisson", step, rate, 0.0, n=n)
    return frame.assign(done_ns=frame["scheduled_ns"] + (np.resize(latency_s, n) * 1e9).astype(np.int64))


def test_the_window_floor_stays_flat_where_steps_differ_and_falls_where_they_only_sample_noise():
    # two steps whose every request takes 10 and 15 ms: any window says the same as the whole step
    steady = pd.concat([_timed_step("a", 0, 200.0, [0.010]), _timed_step("b", 0, 200.0, [0.015])])
    floors = analysis.tail_window_floor(steady)
    assert floors["window_s"].tolist() == [3.0, 6.0, 9.0, 18.0]  # a sixth, a third, a half of the step, and all
    assert floors["windows"].tolist() == [12, 6, 4, 2] and set(floors["steps"]) == {2}
    assert floors["floor_pct"].to_numpy() == pytest.approx(100 * (5 / 10 + 5 / 15) / 2)  # flat
    # four steps drawing from one log-normal: only the windows' sampling noise, which longer windows average out
    rng = np.random.default_rng(3)
    noisy = pd.concat([_timed_step(f"r{i}", 0, 100.0, rng.lognormal(np.log(0.01), 0.6, 1800)) for i in range(4)])
    floors = analysis.tail_window_floor(noisy, windows_s=[1.0, 18.0]).set_index("window_s")["floor_pct"]
    assert floors[1.0] > 2.5 * floors[18.0]  # sqrt(18) = 4.2 as many requests per window
    # too few ok requests in a window (a rate of 10 req/s: 10 in a second) and rates visited once give no row
    sparse = pd.concat(
        [_timed_step("a", 0, 10.0, [0.01]), _timed_step("b", 0, 10.0, [0.01]), _timed_step("a", 1, 50.0, [0.01])]
    )
    floors = analysis.tail_window_floor(sparse, windows_s=[1.0, 3.0])
    assert floors[["level", "window_s", "windows"]].values.tolist() == [[10.0, 3.0, 12]]
    assert analysis.tail_window_floor(sparse.iloc[:0]).empty
    with pytest.raises(ValueError, match="windows_s must be window lengths > 0 seconds"):
        analysis.tail_window_floor(steady, windows_s=[0.0])


def test_each_run_is_predicted_by_the_tail_curve_of_the_configurations_other_runs_alone():
    closed = _step("closed", "closed_loop", 0, 600.0, 0.005)

    def sweep(run_id, rates, scale=1.0):
        return pd.concat([_step(run_id, "poisson", i, r, scale * float(CURVE.p95_s(r))) for i, r in enumerate(rates)])

    a, b = sweep("a", [60.0, 200.0, 350.0, 450.0]), sweep("b", [100.0, 250.0, 400.0, 470.0])
    slow = sweep("slow", [150.0, 300.0, 420.0, 460.0], scale=1.5)  # a run half as slow again at every rate
    lone = sweep("lone", [100.0, 200.0, 300.0, 400.0]).assign(replicas=2)  # the only run of its configuration
    crossed = analysis.cross_validate_tail_curves(pd.concat([closed, a, b, slow, lone], ignore_index=True))
    assert set(crossed["run_id"]) == {"a", "b", "slow"} and (crossed["replicas"] == 1).all()
    error = (crossed["predicted_p95"] / crossed["p95"] - 1).abs().groupby(crossed["run_id"]).mean()
    assert error["slow"] == pytest.approx(1 - 1 / 1.5, abs=0.05)  # fitted on a and b alone: a third too short
    assert error["a"] < error["slow"] and error["b"] < error["slow"]
    only_two = analysis.cross_validate_tail_curves(pd.concat([closed, a, b], ignore_index=True))
    assert np.allclose(only_two["predicted_p95"], only_two["p95"], rtol=0.03)  # same curve: each predicts the other


def test_the_capacity_is_the_highest_throughput_of_any_step_where_a_closed_loop_run_measured_it():
    # on the H200 a replica's closed-loop throughput fell as users were added, and a Poisson step carried more
    closed = pd.concat(
        [_step("closed", "closed_loop", 0, 554.0, 0.001), _step("closed", "closed_loop", 1, 516.0, 0.001)]
    )
    sweep = pd.concat([_step("sweep", "poisson", 0, 300.0, 0.001), _step("sweep", "poisson", 1, 578.0, 0.001)])
    lonely = _step("lonely", "poisson", 0, 900.0, 0.02, replicas=2)  # a sweep with no closed-loop run: no capacity
    capacity = analysis.measured_capacity(pd.concat([closed, sweep, lonely], ignore_index=True))
    assert capacity.to_dict() == {("w", 1): pytest.approx(578.0, rel=0.01)}
    assert analysis.measured_capacity(closed)[("w", 1)] == pytest.approx(554.0, rel=0.01)
    assert analysis.measured_capacity(sweep).empty


def test_the_held_out_check_told_the_leases_level_by_its_first_step_scores_the_rest():
    from studies.h200.scripts import study_report

    closed = _step("closed", "closed_loop", 0, 600.0, 0.005)
    sweep = pd.concat([_step("sweep", "poisson", i, r, float(CURVE.p95_s(r))) for i, r in enumerate(RATES)])
    # another lease: every step 10 % slower than the curve, the last one 30 % (the level is not all a lease changes)
    slower = [1.1] * (RATES.size - 1) + [1.3]
    held = pd.concat(
        [_step("lease2", "poisson", i, r, float(CURVE.p95_s(r)) * f) for i, (r, f) in enumerate(zip(RATES, slower))],
        ignore_index=True,
    )
    # the last step went over this lease's capacity: its servers refused some requests (not counted in its p95)
    last = held.index[held["step"] == RATES.size - 1][:5]
    held.loc[last, "error"] = "http_5xx"
    validation, info = study_report.tail_validation(pd.concat([closed, sweep], ignore_index=True), held, {})
    entry = info["w"]["replicas_1"]
    assert entry["held_out_steps_with_errors"] == {"lease2": {f"{RATES[-1]:g}": 5}}
    assert validation["errors"].tolist() == [0] * (RATES.size - 1) + [5]
    assert entry["held_out_p95_mape_pct"] == pytest.approx(100 * (5 * (1 - 1 / 1.1) + (1 - 1 / 1.3)) / 6, abs=0.1)
    assert entry["held_out_level_factor_by_run"] == {"lease2": pytest.approx(1.1, abs=1e-3)}
    assert entry["held_out_levelled_p95_mape_pct"] == pytest.approx(100 * (1 - 1.1 / 1.3) / 5, abs=0.1)
    assert entry["held_out_levelled_utilisation"][0] == pytest.approx(RATES[1] / 600.0, rel=0.02)  # not the level step
    assert validation["levelled_ape_pct"].isna().sum() == 1
