"""Batch service-time model: fit recovery, derived quantities, degenerate inputs."""

import math

import numpy as np
import pytest

from gawm_lib.models import BatchLatencyModel, fit_batch_latency

TRUE = BatchLatencyModel(alpha=0.001, beta=0.010, floor=0.020)  # knee at b = 10
SIZES = np.repeat([1, 2, 4, 8, 16, 32, 64, 128], 5)


def noisy(model, sizes, rel_noise, seed):
    rng = np.random.default_rng(seed)
    return model.predict(sizes) * (1 + rel_noise * rng.standard_normal(len(sizes)))


def test_model_predict_throughput_and_knee():
    assert TRUE.knee == pytest.approx(10.0)
    assert TRUE.predict(1) == pytest.approx(0.020)
    assert TRUE.predict(10) == pytest.approx(0.020)
    assert TRUE.predict(100) == pytest.approx(0.110)
    np.testing.assert_allclose(TRUE.predict([2, 50]), [0.020, 0.060])
    assert TRUE.throughput(50) == pytest.approx(50 / 0.060)
    assert TRUE.max_throughput == pytest.approx(1000.0)  # beta > 0: asymptote 1/alpha
    peaked = BatchLatencyModel(alpha=0.002, beta=-0.010, floor=0.010)  # knee 10, throughput falls after it
    assert peaked.max_throughput == pytest.approx(10 / 0.010)
    assert peaked.throughput(10) > peaked.throughput(9) and peaked.throughput(10) > peaked.throughput(11)


def test_fit_recovers_hinge_from_noisy_data():
    fit = fit_batch_latency(SIZES, noisy(TRUE, SIZES, 0.03, seed=1))
    assert fit.n_points == SIZES.size
    for name in ("alpha", "beta", "floor"):
        est, se, true = getattr(fit, name), getattr(fit, f"{name}_se"), getattr(TRUE, name)
        assert se > 0
        assert abs(est - true) < 3 * se, name
    assert fit.alpha == pytest.approx(0.001, rel=0.05)
    assert fit.floor == pytest.approx(0.020, rel=0.05)
    assert fit.knee == pytest.approx(10.0, abs=2.0)


def test_fit_exact_data_is_exact():
    fit = fit_batch_latency(SIZES, TRUE.predict(SIZES))
    assert fit.alpha == pytest.approx(0.001, rel=1e-6)
    assert fit.beta == pytest.approx(0.010, rel=1e-5)
    assert fit.floor == pytest.approx(0.020, rel=1e-6)


def test_fit_without_floor_is_a_line():
    line = BatchLatencyModel(alpha=0.002, beta=0.005)
    sizes = np.repeat([1, 2, 4, 8, 16, 32], 4)
    rng = np.random.default_rng(2)
    fit = fit_batch_latency(sizes, line.predict(sizes) + 0.0005 * rng.standard_normal(sizes.size))
    assert fit.alpha == pytest.approx(0.002, rel=0.02)
    assert fit.beta == pytest.approx(0.005, abs=3 * fit.beta_se)
    assert fit.floor == pytest.approx(fit.alpha * 1 + fit.beta)  # floor = fitted latency at the smallest batch
    assert fit.knee_se == 0.0


def test_standard_errors_are_calibrated():
    # Across repeated noisy experiments the true alpha lies within 2 SE about 95% of the time.
    hits = 0
    for seed in range(40):
        fit = fit_batch_latency(SIZES, TRUE.predict(SIZES) + 0.001 * np.random.default_rng(seed).standard_normal(40))
        hits += abs(fit.alpha - TRUE.alpha) < 2 * fit.alpha_se
    assert 32 <= hits <= 40


def test_shifted_brackets_predictions():
    fit = fit_batch_latency(SIZES, noisy(TRUE, SIZES, 0.03, seed=3))
    lo, hi = fit.shifted(-1), fit.shifted(+1)
    for b in (1, 10, 64):
        assert lo.predict(b) < fit.predict(b) < hi.predict(b)


@pytest.mark.parametrize(
    "sizes, lats, match",
    [
        ([1, 2], [0.01, 0.02], "at least 3"),
        ([1, 2, 4], [0.01, 0.02], "different lengths"),
        ([1, 2, 4], [0.01, 0.0, 0.03], "latencies must be positive"),
        ([1, 2, 4], [0.01, -0.02, 0.03], "latencies must be positive"),
        ([0, 2, 4], [0.01, 0.02, 0.03], "batch sizes must be positive"),
        ([4, 4, 4], [0.01, 0.02, 0.03], "2 distinct batch sizes"),
        ([1, 2, 4, 8], [0.04, 0.03, 0.02, 0.01], "does not increase with batch size"),
        ([1, 2, math.nan], [0.01, 0.02, 0.03], "finite"),
    ],
)
def test_fit_rejects_degenerate_inputs(sizes, lats, match):
    with pytest.raises(ValueError, match=match):
        fit_batch_latency(sizes, lats)


def test_model_rejects_invalid_parameters():
    with pytest.raises(ValueError, match="must be >= 0"):
        BatchLatencyModel(alpha=-0.001, beta=0.01)
    with pytest.raises(ValueError, match="batch sizes must be > 0"):
        TRUE.predict(0)


def test_table_predicts_measured_sizes_and_drops_into_the_batching_model():
    from gawm_lib.models import BatchLatencyTable, predict_batching, replay_batching

    sizes = np.repeat([1, 2, 3, 4], 5)
    measured = np.array([0.075, 0.153, 0.210, 0.317])[sizes - 1] * (1 + 0.01 * np.tile([-2, -1, 0, 1, 2], 4))
    table = BatchLatencyTable.from_measurements(sizes, measured, 4)
    np.testing.assert_allclose(table.predict([1, 2, 3, 4]), [0.075, 0.153, 0.210, 0.317])
    assert table.predict(2) == pytest.approx(0.153) and table.max_throughput == pytest.approx(3 / 0.210)
    assert table.scaled(2.0).predict(4) == pytest.approx(0.634)
    # A table of a hinge model's own values predicts exactly what the model does.
    hinge = BatchLatencyModel(alpha=0.08, beta=-0.01, floor=0.075)
    same = BatchLatencyTable(tuple(hinge.predict(np.arange(1, 5))))
    a, b = predict_batching(8.0, hinge, 4, 0.005), predict_batching(8.0, same, 4, 0.005)
    assert a.p95_s == b.p95_s and a.mean_batch_size == b.mean_batch_size
    arrivals = np.cumsum(np.random.default_rng(0).exponential(1 / 8.0, 500))
    np.testing.assert_array_equal(
        replay_batching(arrivals, hinge, 4, 0.005)[0], replay_batching(arrivals, same, 4, 0.005)[0]
    )
    # Unmeasured sizes: the fallback, or a clear error; no extrapolation beyond the table.
    partial = BatchLatencyTable.from_measurements([1, 1, 4], [0.07, 0.08, 0.3], 4, fallback=hinge)
    assert partial.predict(2) == pytest.approx(hinge.predict(2)) and partial.predict(1) == pytest.approx(0.075)
    with pytest.raises(ValueError, match="no measured batch of size 2"):
        BatchLatencyTable.from_measurements([1, 4], [0.07, 0.3], 4)
    with pytest.raises(ValueError, match="whole numbers in 1..4"):
        table.predict(5)
    with pytest.raises(ValueError, match="positive finite"):
        BatchLatencyTable((0.1, -0.2))
