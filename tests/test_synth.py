"""Generative workload models (gawm_lib.synth): fidelity metrics on known cases, generators recovering the processes
that made their data, the model file and CLI, and a fit-sample-replay round trip against a real local server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gawm_lib.synth import fidelity
from gawm_lib.synth.arrivals import ARRIVALS, EmpiricalArrivals, MMPPArrivals, PoissonArrivals
from gawm_lib.synth.condition import Condition
from gawm_lib.synth.demands import DEMANDS, EmpiricalDemands, ParametricDemands, fit_distribution
from gawm_lib.synth.model import WorkloadModel
from gawm_lib.synth.resources import RESOURCES, ARResources, LSTMResources
from gawm_lib.synth.traces import Traces

ROOT = Path(__file__).resolve().parent.parent


def ar1(n: int, phi: float, rng, mean: float = 10.0, sd: float = 1.0) -> np.ndarray:
    x = np.empty(n)
    x[0] = mean
    for t in range(1, n):
        x[t] = mean + phi * (x[t - 1] - mean) + rng.normal(0, sd)
    return x


# --- fidelity metrics: identical traces score perfectly, shuffled or shifted ones worse ---------------------------


@pytest.fixture(scope="module")
def series():
    rng = np.random.default_rng(0)
    return [ar1(400, 0.9, rng) for _ in range(3)]


def test_distribution_distances_are_zero_for_identical_traces_and_grow_with_a_shift(series):
    assert fidelity.ks_distance(series, series) == 0.0
    assert fidelity.wasserstein(series, series) == 0.0
    shifted = [s + 2.0 for s in series]
    assert fidelity.wasserstein(series, shifted) == pytest.approx(2.0)  # W1 of a shift is the shift
    assert fidelity.ks_distance(series, shifted) > 0.3
    assert fidelity.ks_distance(series, [s + 0.5 for s in series]) < fidelity.ks_distance(series, shifted)


def test_shuffling_keeps_the_distribution_but_not_the_autocorrelation(series):
    rng = np.random.default_rng(1)
    shuffled = [rng.permutation(s) for s in series]
    assert fidelity.ks_distance(series, shuffled) == 0.0 and fidelity.wasserstein(series, shuffled) == pytest.approx(0)
    assert fidelity.acf_error(series, series, max_lag=5) == 0.0
    assert fidelity.acf_error(series, shuffled, max_lag=5) > 0.5  # rho(k) = 0.9^k against ~0


def test_pooled_autocorrelation_of_one_segment_is_the_plain_one(series):
    from gawm_lib.models import autocorrelation

    np.testing.assert_allclose(fidelity.pooled_acf([series[0]], 4), autocorrelation(series[0], 4))
    assert np.isnan(fidelity.pooled_acf([np.ones(5)], 2)).all()  # a constant series has none


def test_discriminative_score_is_chance_for_identical_and_high_for_shifted(series):
    same = fidelity.discriminative_accuracy(series, series, window=5)
    assert same <= 0.6 and fidelity.discriminative_score(series, series) == 0.0
    slightly = fidelity.discriminative_accuracy(series, [s + 3.0 for s in series], window=5)  # ~1.3 sd
    far = fidelity.discriminative_accuracy(series, [s + 10.0 for s in series], window=5)
    assert 0.65 < slightly < far and far > 0.95
    assert np.isnan(fidelity.discriminative_accuracy([np.arange(6.0)], [np.arange(6.0)], window=5))  # too few windows


def test_predictive_score_is_one_when_synthetic_is_the_real_training_data_and_worse_when_shuffled(series):
    train, test = series[:2], series[2:]
    assert fidelity.predictive_score(train, train, test) == pytest.approx(1.0)
    rng = np.random.default_rng(2)
    shuffled = [rng.permutation(s) for s in train]  # same values, no dynamics left to learn
    assert fidelity.predictive_score(shuffled, train, test) > 1.3


def test_score_all_reports_every_metric(series):
    scores = fidelity.score_all(series[2:], series[2:], series[:2])
    assert set(fidelity.METRICS) <= set(scores)
    for name, metric in fidelity.METRICS.items():
        assert scores[name] == pytest.approx(metric.perfect, abs=0.1), name


# --- generators recover the processes that made their data ----------------------------------------------------------


def make_traces(steps, payload_sizes=None, resources=None, workload="w", replicas=1) -> Traces:
    """Traces of one workload from ``steps``: [(run_id, level, arrival times [s])]; demands with payload sizes drawn
    from ``payload_sizes`` (a callable n -> sizes) over a catalogue of 32 payloads; ``resources`` as given."""
    rng = np.random.default_rng(5)
    catalogue = np.sort(payload_sizes(32)) if payload_sizes else np.arange(1.0, 33.0)
    arrivals, demands, conditions = [], [], []
    offset = {}
    for step, (run_id, level, t) in enumerate(steps):
        t = np.sort(np.asarray(t, dtype=float))
        start = offset.get(run_id, 0.0)
        offset[run_id] = start + float(t.max()) + 1.0
        arrivals.append(
            pd.DataFrame(
                {
                    "run_id": run_id,
                    "workload": workload,
                    "step": step,
                    "level": level,
                    "arrival_s": start + t,
                    "step_s": t - t[0],
                    "interarrival_s": np.r_[np.nan, np.diff(t)],
                }
            )
        )
        ids = rng.integers(32, size=len(t))
        demands.append(
            pd.DataFrame(
                {
                    "run_id": run_id,
                    "workload": workload,
                    "step": step,
                    "level": level,
                    "arrival_s": start + t,
                    "bytes_out": (catalogue[ids] * 10).astype(int),
                    "items": 1,
                    "batch_size": rng.integers(1, 5, size=len(t)).astype(float),
                    "compute_s": rng.gamma(4.0, 0.01 * (1 + level), size=len(t)),
                    "latency_s": 0.1,
                    "ok": True,
                    "payload_id": ids,
                    "payload_size": catalogue[ids],
                }
            )
        )
    for run_id in dict.fromkeys(s[0] for s in steps):
        conditions.append(
            {
                "run_id": run_id,
                "workload": workload,
                "replicas": replicas,
                "max_batch_size": 4,
                "max_queue_delay_ms": np.nan,
                "scenario": "poisson",
                "levels": [],
                "payload_count": 32,
                "payload_seed": 2,
                "scrape_interval_s": 1.0,
            }
        )
    payloads = pd.DataFrame(
        {
            "run_id": steps[0][0],
            "workload": workload,
            "payload_id": np.arange(32),
            "bytes_out": (catalogue * 10).astype(int),
            "payload_size": catalogue,
            "payload_unit": "bytes",
        }
    )
    empty = pd.DataFrame(columns=["run_id", "workload", "step", "level", "t_s"])
    return Traces(
        list(dict.fromkeys(s[0] for s in steps)),
        pd.concat(arrivals, ignore_index=True),
        pd.concat(demands, ignore_index=True),
        resources if resources is not None else empty,
        pd.DataFrame(conditions),
        payloads,
    )


def poisson_times(rate: float, duration_s: float, rng) -> np.ndarray:
    return np.sort(rng.uniform(0, duration_s, rng.poisson(rate * duration_s)))


def test_poisson_arrivals_recover_the_rate_per_level_and_scale_to_an_unfitted_one():
    rng = np.random.default_rng(3)
    traces = make_traces([("a", 2.0, poisson_times(2, 600, rng)), ("a", 8.0, poisson_times(8, 300, rng))])
    model = PoissonArrivals.fit(traces, Condition("w"))
    assert model.table.rates[2.0] == pytest.approx(2.0, rel=0.08)
    assert model.table.rates[8.0] == pytest.approx(8.0, rel=0.08)
    drawn = model.sample(Condition("w", 5.0), 400, seed=1)["arrival_s"]
    assert len(drawn) / 400 == pytest.approx(5.0, rel=0.1)  # an unfitted level: level x (fitted rate / level)
    assert drawn.is_monotonic_increasing and drawn.max() < 400
    again = model.sample(Condition("w", 5.0), 400, seed=1)["arrival_s"]
    assert drawn.equals(again)  # a seed gives the same trace


def test_empirical_arrivals_keep_a_non_exponential_gap_distribution():
    gaps = np.full(500, 0.25)  # evenly spaced: gaps far from exponential
    traces = make_traces([("a", 4.0, np.cumsum(gaps))])
    model = EmpiricalArrivals.fit(traces, Condition("w"))
    drawn = np.diff(model.sample(Condition("w", 4.0), 50, seed=0)["arrival_s"])
    assert np.allclose(drawn, 0.25)
    poisson = np.diff(PoissonArrivals.fit(traces, Condition("w")).sample(Condition("w", 4.0), 50, 0)["arrival_s"])
    assert fidelity.ks_distance(gaps, drawn) < fidelity.ks_distance(gaps, poisson)


def test_mmpp_finds_the_two_rates_of_a_switching_process():
    rng = np.random.default_rng(4)
    pieces, t = [], 0.0
    for k in range(16):  # 30 s at 1 req/s, 30 s at 10 req/s, ...
        rate = 1.0 if k % 2 == 0 else 10.0
        pieces.append(t + poisson_times(rate, 30, rng))
        t += 30
    traces = make_traces([("a", 5.5, np.concatenate(pieces))])
    model = MMPPArrivals.fit(traces, Condition("w"))
    rates = model.lambdas / model.bin_s
    assert rates[0] == pytest.approx(1.0, rel=0.35) and rates[1] == pytest.approx(10.0, rel=0.15)
    assert model.transmat[0, 0] > 0.9 and model.transmat[1, 1] > 0.9  # states last ~30 bins
    counts = np.bincount(model.sample(Condition("w"), 600, seed=2)["arrival_s"].astype(int), minlength=600)
    assert fidelity.acf_error([counts], [np.bincount(np.concatenate(pieces).astype(int))], max_lag=5) < 0.25
    scaled = model.sample(Condition("w", 5.5), 600, seed=3)  # the level's rate as a stationary mean
    assert len(scaled) / 600 == pytest.approx(PoissonArrivals.fit(traces, Condition("w")).table.rate(5.5), rel=0.25)


def test_parametric_demands_pick_the_family_that_made_the_data_and_draw_real_payloads():
    traces = make_traces(
        [("a", 2.0, np.arange(0, 400, 0.5))], payload_sizes=lambda n: np.random.default_rng(0).lognormal(3, 0.5, n)
    )
    rng = np.random.default_rng(6)
    traces.demands["payload_size"] = rng.lognormal(3.0, 0.5, len(traces.demands))
    fits = fit_distribution(traces.demands["payload_size"])
    assert fits[0]["distribution"] == "lognorm" and fits[0]["ks"] < 0.05
    model = ParametricDemands.fit(traces, Condition("w"))
    gof = model.goodness_of_fit()
    assert {"distribution", "aic", "ks", "ks_p", "best"} <= set(gof.columns)
    assert gof[gof["best"] & (gof["column"] == "payload_size")]["distribution"].item() == "lognorm"
    drawn = model.sample(Condition("w", 2.0), 10, seed=0)
    assert len(drawn) == 20
    assert set(drawn["payload_id"]) <= set(traces.payloads["payload_id"])  # only payloads that exist
    by_id = traces.payloads.set_index("payload_id")
    assert (by_id.loc[drawn["payload_id"], "bytes_out"].to_numpy() == drawn["bytes_out"].to_numpy()).all()


def test_empirical_demands_resample_rows_of_the_nearest_level():
    rng = np.random.default_rng(7)
    traces = make_traces([("a", 1.0, poisson_times(1, 200, rng)), ("a", 9.0, poisson_times(9, 50, rng))])
    model = EmpiricalDemands.fit(traces, Condition("w"))
    drawn = model.sample(Condition("w", 8.0), 0, seed=0, count=300)
    fast = traces.demands[traces.demands["level"] == 9.0]["compute_s"]
    assert set(drawn["compute_s"]) <= set(fast)  # level 8 is nearest to the fitted 9


def resource_traces(phi: float = 0.8, runs_=2, n=120) -> Traces:
    rng = np.random.default_rng(8)
    rows = []
    for r in range(runs_):
        for step, level in enumerate((1.0, 3.0)):
            rows.append(
                pd.DataFrame(
                    {
                        "run_id": f"r{r}",
                        "workload": "w",
                        "step": step,
                        "level": level,
                        "t_s": np.arange(n, dtype=float),
                        "cpu": ar1(n, phi, rng, mean=2.0 * level, sd=0.2),
                        "gpu_util_nvml": np.clip(ar1(n, phi, rng, mean=0.3 * level, sd=0.05), 0, 1),
                    }
                )
            )
    resources = pd.concat(rows, ignore_index=True)
    steps = [(f"r{r}", level, np.arange(0, 20, 1 / level)) for r in range(runs_) for level in (1.0, 3.0)]
    return make_traces(steps, resources=resources)


def test_ar_resources_recover_the_autoregression_and_follow_the_level():
    traces = resource_traces()
    model = ARResources.fit(traces, Condition("w"), lags=1)
    assert model.coefs["cpu"][1] == pytest.approx(0.8, abs=0.1)
    low = model.sample(Condition("w", 1.0), 300, seed=0)
    high = model.sample(Condition("w", 3.0), 300, seed=0)
    assert low["cpu"].mean() == pytest.approx(2.0, abs=0.3) and high["cpu"].mean() == pytest.approx(6.0, abs=0.4)
    assert high["gpu_util_nvml"].between(0, 1).all() and (low["cpu"] >= 0).all()
    assert fidelity.acf_error([low["cpu"].to_numpy()], [traces.resources["cpu"].to_numpy()[:120]], 3) < 0.2


def test_lstm_resources_learn_the_level_and_sample_in_bounds():
    import torch

    torch.set_num_threads(1)
    traces = resource_traces()
    model = LSTMResources.fit(traces, Condition("w"), epochs=150, max_train_s=60)
    assert model.config["losses"][-1] < model.config["losses"][0]
    low = model.sample(Condition("w", 1.0), 100, seed=0)
    high = model.sample(Condition("w", 3.0), 100, seed=0)
    assert list(low.columns) == ["t_s", "cpu", "gpu_util_nvml"] and len(low) == 100
    assert high["cpu"].mean() > low["cpu"].mean() + 2  # the condition matters: 6 against 2
    assert high["gpu_util_nvml"].between(0, 1).all()


def test_registries_match_the_cli_choices():
    from gawm_lib.synth import cli

    assert tuple(sorted(ARRIVALS)) == cli.ARRIVAL_KINDS
    assert tuple(sorted(DEMANDS)) == cli.DEMAND_KINDS
    assert tuple(sorted(RESOURCES)) == cli.RESOURCE_KINDS


def test_model_file_round_trip_and_trace_file_the_trace_scenario_reads(tmp_path):
    from gawm_lib.loadgen.schedule import read_trace

    traces = resource_traces()
    model = WorkloadModel.fit(traces, arrivals="poisson", demands="parametric", resources="ar")
    path = model.save(tmp_path / "model.pkl")
    with pytest.raises(FileExistsError):
        model.save(path)
    loaded = WorkloadModel.load(path)
    trace = loaded.sample(Condition("w", 3.0), 20, seed=4)
    again = model.sample(Condition("w", 3.0), 20, seed=4)
    pd.testing.assert_frame_equal(trace.requests, again.requests)
    written = trace.write(tmp_path / "trace.csv")
    arrivals, ids = read_trace(written, payload_count=32)
    assert np.allclose(arrivals, trace.requests["arrival_s"]) and (ids == trace.requests["payload_id"]).all()
    assert trace.resources is not None and {"cpu", "gpu_util_nvml"} <= set(trace.resources.columns)


# --- a fit-sample-replay round trip on a small real run ---------------------------------------------------------------


@pytest.mark.integration
def test_fit_sample_replay_round_trip_against_the_real_local_server(tmp_path, monkeypatch):
    """A short DistilBERT run (Poisson arrivals, local server), a model fitted on it with ``gawm synth fit``, a trace
    sampled with ``gawm synth sample``, replayed with the ``trace`` scenario: every synthetic request is sent at its
    time with the payload it names."""
    from gawm_lib import cli, config, experiment, summary
    from gawm_lib.synth import replay

    monkeypatch.setenv("GAWM_RAW_DIR", str(tmp_path / "raw"))
    params = {
        "name": "synth-source",
        "workloads": [{"name": "distilbert", "max_batch_size": 4}],
        "load": {
            "scenario": "poisson",
            "levels": [4],
            "step_duration_s": 4,
            "warmup_s": 0.5,
            "payload_count": 8,
            "payload_seed": 5,
        },
        "prometheus": {"enabled": False},
    }
    source, _ = experiment.run_experiment(config.validate_params(params), requested=params, progress=False)
    model_path, trace_path = tmp_path / "model.pkl", tmp_path / "trace.csv"
    assert cli.main(["synth", "fit", source.id, "--out", str(model_path), "--arrivals", "poisson",
                     "--resources", "none"]) == 0  # fmt: skip
    assert cli.main(["synth", "sample", str(model_path), "--duration", "3", "--out", str(trace_path)]) == 0
    trace = pd.read_csv(trace_path)
    assert len(trace) > 3 and trace["payload_id"].between(0, 7).all()
    replayed = replay.replay(source, "distilbert", trace_path)
    rows = summary.read_requests(replayed.requests_path).sort_values("scheduled_ns")
    assert len(rows) == len(trace) and (rows["error"] == "").all()
    offsets = (rows["scheduled_ns"] - rows["scheduled_ns"].iloc[0]) / 1e9
    assert np.allclose(offsets, trace["arrival_s"] - trace["arrival_s"].iloc[0], atol=1e-6)
    assert list(rows["bytes_out"]) == list(trace["bytes_out"])  # the payload the trace named, byte for byte
    table = replay.latency_table({source.id: "source", replayed.id: "replay"}, "distilbert")
    assert list(table["role"]) == ["source", "replay"] and table["p95_ms"].gt(0).all()
    assert table.loc[0, "p50_vs_source_pct"] == 0.0


def test_cli_says_what_is_wrong_and_exits_2(tmp_path, capsys):
    from gawm_lib import cli

    assert cli.main(["synth", "sample", str(tmp_path / "none.pkl"), "--duration", "5", "--out", "t.csv"]) == 2
    assert "none.pkl" in capsys.readouterr().err
    assert cli.main(["synth", "fit", str(tmp_path / "norun"), "--out", str(tmp_path / "m.pkl")]) == 2
    assert "not a gawm run directory" in capsys.readouterr().err
    model = WorkloadModel.fit(resource_traces(), arrivals="poisson", resources=None)
    path = model.save(tmp_path / "m.pkl")
    assert cli.main(["synth", "sample", str(path), "--duration", "0", "--out", str(tmp_path / "t.csv")]) == 2
    assert cli.main(["synth", "fit", str(tmp_path / "norun"), "--out", str(path)]) == 2  # never replaced
    assert "exists" in capsys.readouterr().err


def test_a_repeat_identical_to_the_held_out_run_is_the_perfect_yardstick():
    from gawm_lib.synth import evaluation

    traces = resource_traces()
    table = evaluation.repeat_baseline(traces, traces, traces, "w")
    assert set(table["family"]) == {"arrivals", "demands", "resources"} and set(table["generator"]) == {"real repeat"}
    assert (table["ks"] == 0).all() and (table["wasserstein"] == 0).all()
    assert (table["acf_error"].fillna(0) == 0).all() and (table["discriminative"].fillna(0) == 0).all()


def test_seed_exports_are_resource_traces_and_the_ar_baseline_follows_the_replica_count():
    from gawm_lib.prom import import_seed_csv
    from gawm_lib.synth.traces import traces_from_seed

    traces = traces_from_seed(import_seed_csv(ROOT / "tests" / "fixtures" / "seed_csv", tz="Europe/Berlin"))
    assert traces.run_ids == ["seed:distilbert_r1", "seed:resnet50_r1", "seed:resnet50_r2"]
    assert {"container_cpu", "gpu_util_dcgm", "gpu_power_dcgm", "gpu_memory_used_dcgm"} <= set(traces.resources)
    model = ARResources.fit(traces, Condition("resnet50"), lags=1)
    assert model.exog == ["replicas"]  # the seed's runs differ in replicas; their load level is unknown
    measured = traces.resources.groupby("run_id")["gpu_util_dcgm"].mean()
    for replicas in (1, 2):
        drawn = model.sample(Condition("resnet50", replicas=replicas), 300, seed=0)["gpu_util_dcgm"].mean()
        assert drawn == pytest.approx(measured[f"seed:resnet50_r{replicas}"], abs=0.05)


def test_fidelity_table_and_figure_name_the_held_out_runs(tmp_path):
    from gawm_lib import plots
    from gawm_lib.synth import evaluation, figures

    traces = resource_traces(runs_=3)
    train, heldout = traces.select(["r0", "r1"]), traces.select(["r2"])
    table, series, _ = evaluation.fidelity_study(
        train, heldout, arrivals=["poisson"], demands=["empirical"], resources=["ar"], workloads=["w"]
    )
    assert set(table["family"]) == {"arrivals", "demands", "resources"}
    assert (table["heldout_runs"] == "r2").all() and (table["train_runs"] == "r0,r1").all()
    with pytest.raises(ValueError, match="held-out runs must be unseen"):
        evaluation.fidelity_study(traces, heldout, ["poisson"], [], [])
    fig = figures.fidelity_figure(series["ar", "w", "cpu"], "cpu", "w", "ar", "r2")
    written = plots.save_figure(fig, "synth_cpu", ["r2"], "test", out_dir=tmp_path, quiet=True)
    data = pd.read_csv(written["csv"])
    assert set(data["panel"]) == {"cdf", "acf", "first step"} and set(data["run_id"]) == {"r2"}
    real_cdf = data[(data["panel"] == "cdf") & (data["series"] == "real")]
    assert real_cdf["x"].max() == pytest.approx(np.concatenate(series["ar", "w", "cpu"]["real"]).max())


def test_fidelity_overview_draws_every_score_of_the_table_with_the_yardstick(tmp_path):
    from gawm_lib import plots
    from gawm_lib.synth import evaluation, figures

    traces = resource_traces(runs_=3)
    train, heldout = traces.select(["r0", "r1"]), traces.select(["r2"])
    table, _, _ = evaluation.fidelity_study(
        train, heldout, arrivals=["poisson"], demands=["empirical"], resources=["ar"], workloads=["w"]
    )
    table = pd.concat([table, evaluation.repeat_baseline(train, heldout, train, "w")], ignore_index=True)
    assert "real repeat" in set(table["generator"])
    fig = figures.fidelity_overview(table)
    assert "r2" in fig.get_suptitle()
    written = plots.save_figure(fig, "synth_overview", ["r0", "r1", "r2"], "test", out_dir=tmp_path, quiet=True)
    data = pd.read_csv(written["csv"], keep_default_na=False, na_values=[""])
    scores = [score for score, _, _ in figures.OVERVIEW_SCORES]
    assert len(data) == len(table) * len(scores) and set(data["run_id"]) == {"r2"}
    expected = table.melt(
        id_vars=["family", "generator", "workload", "series"], value_vars=scores, var_name="score", value_name="value"
    )
    keys = ["family", "generator", "workload", "series", "score"]
    merged = expected.merge(data[keys + ["value", "x"]], on=keys, how="outer", suffixes=("", "_csv"), indicator=True)
    assert (merged["_merge"] == "both").all()
    assert np.allclose(merged["value"], merged["value_csv"], equal_nan=True, rtol=1e-12, atol=0)
    assert np.allclose(merged["value"], merged["x"], equal_nan=True, rtol=1e-12, atol=0)


def test_a_schedule_of_steps_is_sampled_step_by_step_at_each_level():
    rng = np.random.default_rng(9)
    traces = make_traces([("a", 1.0, poisson_times(1, 300, rng)), ("a", 6.0, poisson_times(6, 300, rng))])
    model = WorkloadModel.fit(traces, arrivals="poisson", demands="empirical", resources=None)
    trace = model.sample_schedule(Condition("w"), [(1.0, 100.0), (6.0, 50.0)], seed=1)
    rows = trace.requests
    assert trace.duration_s == 150.0 and rows["arrival_s"].is_monotonic_increasing
    first, second = rows[rows["step"] == 0], rows[rows["step"] == 1]
    assert first["arrival_s"].max() < 100 <= second["arrival_s"].min() and second["arrival_s"].max() < 150
    assert len(first) == pytest.approx(100, rel=0.25) and len(second) == pytest.approx(300, rel=0.15)
