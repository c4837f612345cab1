"""Dynamic-batching latency model, validated against the discrete-event simulator."""

import pytest

from gawm_lib.models import (BatchLatencyModel, UnstableSystemError, md1, predict_batching, simulate_batching,
                             summarize_latencies)

SERVICE = BatchLatencyModel(alpha=0.002, beta=0.010, floor=0.015)  # s(1) = 15 ms, s(8) = 26 ms, s(16) = 42 ms
FAST = BatchLatencyModel(alpha=0.0005, beta=0.002, floor=0.005)  # s(8) = 6 ms: here D = 20 ms exceeds s(B)


def capacity(service, big):
    return big / service.predict(big)


@pytest.mark.parametrize(
    "service, big, delay, rho",
    [
        (SERVICE, 8, 0.005, 0.30),
        (SERVICE, 16, 0.002, 0.85),
        (SERVICE, 4, 0.030, 0.60),
        (FAST, 8, 0.020, 0.85),
        (FAST, 8, 0.020, 0.40),  # batches mostly fill within D while the server idles
        (SERVICE, 32, 0.001, 0.85),  # backlog: partial batches after a full one
    ],
)
def test_model_matches_simulation(service, big, delay, rho):
    lam = rho * capacity(service, big)
    pred = predict_batching(lam, service, big, delay)
    sim = summarize_latencies(simulate_batching(lam, service, big, delay, n_requests=120_000, seed=7))
    assert pred.utilisation == pytest.approx(rho)
    assert pred.requests_per_cycle == pytest.approx(pred.mean_batch_size, rel=1e-3)  # flow balance
    # Brief asks for ~10%; the model is typically within 1%, so 5% still catches real regressions.
    assert pred.mean_response_s == pytest.approx(sim.mean, rel=0.05)
    assert pred.p50_s == pytest.approx(sim.p50, rel=0.05)
    assert pred.p95_s == pytest.approx(sim.p95, rel=0.05)


def test_batch_of_one_is_md1_exactly():
    # B = 1 dispatches on arrival: an M/D/1 queue with service s(1), for which the model is exact.
    for lam in (10.0, 40.0, 60.0):
        pred = predict_batching(lam, SERVICE, 1, 0.0)
        assert pred.mean_response_s == pytest.approx(md1(lam, 0.015).mean_response_s, rel=2e-3)


def test_flow_balance_and_batch_sizes():
    pred = predict_batching(0.6 * capacity(SERVICE, 16), SERVICE, 16, 0.004)
    # Requests arriving per dispatch cycle must equal requests dispatched per batch.
    assert pred.requests_per_cycle == pytest.approx(pred.mean_batch_size, rel=1e-3)
    assert 1 < pred.mean_batch_size < 16
    assert 0 < pred.busy_fraction < 1


def test_low_load_waits_for_the_timeout():
    pred = predict_batching(0.5, SERVICE, 8, 0.010)
    # Almost always alone: wait the full 10 ms, then a batch of one (15 ms).
    assert pred.p50_s == pytest.approx(0.025, rel=1e-3)
    assert pred.mean_batch_size == pytest.approx(1.0, abs=0.01)


def test_latency_grows_towards_saturation():
    rates = [r * capacity(SERVICE, 8) for r in (0.5, 0.7, 0.9)]
    p95 = [predict_batching(lam, SERVICE, 8, 0.002).p95_s for lam in rates]
    assert p95[0] < p95[1] < p95[2]


def test_unstable_and_invalid_inputs():
    lam = 1.1 * capacity(SERVICE, 8)
    with pytest.raises(UnstableSystemError, match="utilisation 1.1 >= 1"):
        predict_batching(lam, SERVICE, 8, 0.005)
    with pytest.raises(ValueError, match="arrival_rate must be a positive"):
        predict_batching(0.0, SERVICE, 8, 0.005)
    with pytest.raises(ValueError, match="max_batch must be a positive integer"):
        predict_batching(10.0, SERVICE, 0, 0.005)
    with pytest.raises(ValueError, match="max_delay_s must be >= 0"):
        predict_batching(10.0, SERVICE, 8, -1.0)
    with pytest.raises(ValueError, match="quantile must be in"):
        predict_batching(10.0, SERVICE, 8, 0.0).response_quantile(0.0)
