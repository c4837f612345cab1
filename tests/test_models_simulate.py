"""Discrete-event simulator: agreement with closed forms, exactness of the recursions, reproducibility."""

import math

import numpy as np
import pytest

from gawm_lib.models import (
    BatchLatencyModel,
    md1,
    mm1,
    mmc,
    replay_batching,
    simulate_batching,
    simulate_queue,
    summarize_latencies,
)


def inside(value, ci):
    return ci[0] <= value <= ci[1]


def test_mm1_simulation_matches_closed_form():
    lat = simulate_queue(0.7, 1.0, service_scv=1.0, n_requests=200_000, seed=11)
    s = summarize_latencies(lat)
    exact = mm1(0.7, 1.0)
    assert inside(exact.mean_response_s, s.mean_ci), (exact.mean_response_s, s.mean_ci)
    assert inside(exact.p50_s, s.p50_ci), (exact.p50_s, s.p50_ci)
    assert inside(exact.p95_s, s.p95_ci), (exact.p95_s, s.p95_ci)
    # The interval is informative, not vacuous.
    assert s.mean_ci[1] - s.mean_ci[0] < 0.1 * exact.mean_response_s


def test_md1_simulation_matches_pollaczek_khinchine():
    lat = simulate_queue(0.8, 1.0, service_scv=0.0, n_requests=200_000, seed=12)
    s = summarize_latencies(lat)
    assert inside(md1(0.8, 1.0).mean_response_s, s.mean_ci), s.mean_ci
    assert lat.min() == pytest.approx(1.0)  # never faster than the deterministic service


def test_mmc_simulation_matches_erlang_c():
    lat = simulate_queue(2.4, 1.0, servers=3, n_requests=100_000, seed=13)
    s = summarize_latencies(lat)
    exact = mmc(2.4, 1.0, 3)
    assert inside(exact.mean_response_s, s.mean_ci), (exact.mean_response_s, s.mean_ci)
    assert inside(exact.p95_s, s.p95_ci), (exact.p95_s, s.p95_ci)


def test_lindley_matches_event_loop():
    # Same draws as the simulator (gaps, then gamma service with shape 1/scv): replay them in a plain event loop.
    rng = np.random.default_rng(5)
    arrivals = np.cumsum(rng.exponential(1 / 0.9, size=10_000))
    service = rng.gamma(1.0, 1.0, size=10_000)
    lat = simulate_queue(0.9, 1.0, n_requests=10_000, seed=5)
    free, expected = 0.0, []
    for a, s in zip(arrivals, service):
        free = max(free, a) + s
        expected.append(free - a)
    np.testing.assert_allclose(lat, expected, rtol=1e-9, atol=1e-9)
    # The heap path with many servers and the Lindley path agree when extra servers are never needed.
    slow = simulate_queue(1e-4, 1.0, n_requests=500, seed=6)
    # (absolute clock ~5e6 s here, so the heap path's differences carry ~1e-9 s of round-off)
    np.testing.assert_allclose(simulate_queue(1e-4, 1.0, servers=4, n_requests=500, seed=6), slow, atol=1e-7)


def test_batching_with_batch_one_is_md1():
    service = BatchLatencyModel(alpha=0.0, beta=0.010, floor=0.010)
    batch = simulate_batching(80.0, service, max_batch=1, max_delay_s=0.0, n_requests=20_000, seed=21)
    queue = simulate_queue(80.0, 0.010, service_scv=0.0, n_requests=20_000, seed=21)
    np.testing.assert_allclose(batch, queue, rtol=1e-9, atol=1e-12)


def test_batching_low_load_waits_for_timeout():
    service = BatchLatencyModel(alpha=0.001, beta=0.010, floor=0.015)
    lat = simulate_batching(0.5, service, max_batch=8, max_delay_s=0.005, n_requests=2_000, seed=3)
    # Alone in the queue, a request waits the full max delay, then is served alone.
    assert np.median(lat) == pytest.approx(0.005 + 0.015)
    assert lat.min() >= 0.015 - 1e-12


def test_batching_respects_max_batch_and_fifo():
    service = BatchLatencyModel(alpha=0.001, beta=0.0, floor=0.0)
    lat = simulate_batching(5000.0, service, max_batch=4, max_delay_s=0.0, n_requests=5_000, seed=4)
    # Overloaded (capacity 1000/s): the batch time is always s(4) = 4 ms and completions are spaced 4 ms apart.
    arrivals = np.cumsum(np.random.default_rng(4).exponential(1 / 5000.0, size=5_000))
    done = np.round((arrivals + lat) / 0.004, 6)
    assert np.all(np.diff(done) >= 0)  # FIFO completions
    assert np.bincount(np.unique(done, return_counts=True)[1]).nonzero()[0].max() <= 4


def test_reproducible_and_seed_dependent():
    a = simulate_queue(0.5, 1.0, n_requests=1000, seed=1)
    assert np.array_equal(a, simulate_queue(0.5, 1.0, n_requests=1000, seed=1))
    assert not np.array_equal(a, simulate_queue(0.5, 1.0, n_requests=1000, seed=2))


def test_summary_and_errors():
    lat = np.arange(1, 1001, dtype=float)
    s = summarize_latencies(lat, warmup_fraction=0.0)
    assert s.n == 1000 and s.mean == pytest.approx(500.5)
    assert s.mean_ci[0] < s.mean < s.mean_ci[1]
    with pytest.raises(ValueError, match="need at least 200 latencies"):
        summarize_latencies(np.ones(100))
    with pytest.raises(ValueError, match="arrival_rate must be > 0"):
        simulate_queue(0.0, 1.0)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        simulate_batching(1.0, BatchLatencyModel(0.001, 0.01), 0, 0.0)
    with pytest.raises(ValueError, match="service_scv must be >= 0"):
        simulate_queue(1.0, 0.5, service_scv=-1)
    assert math.isfinite(simulate_queue(2.0, 1.0, n_requests=100, seed=0).max())  # unstable input just grows


@pytest.mark.parametrize(
    "lam, scv, servers",
    [(0.8, 0.0, 1), (0.7, 2.0, 1), (3.2, 0.25, 4)],
)
def test_quantile_approximations_close_to_simulation(lam, scv, servers):
    # M/D/1, M/G/1 and M/G/c quantiles are documented approximations (exponential waiting tail): within 10%.
    from gawm_lib.models import mgc

    pred = mgc(lam, 1.0, scv, servers)
    n = 400_000 if servers == 1 else 150_000  # heavy-tailed service (SCV 2) needs many samples for a stable p95
    sim = summarize_latencies(simulate_queue(lam, 1.0, service_scv=scv, servers=servers, n_requests=n, seed=9))
    assert pred.p50_s == pytest.approx(sim.p50, rel=0.10)
    assert pred.p95_s == pytest.approx(sim.p95, rel=0.10)
    if servers == 1:  # Pollaczek-Khinchine mean is exact
        assert inside(pred.mean_response_s, sim.mean_ci), (pred.mean_response_s, sim.mean_ci)


def test_replay_of_poisson_arrivals_is_the_simulation():
    service = BatchLatencyModel(alpha=0.004, beta=0.002, floor=0.0)
    arrivals = np.cumsum(np.random.default_rng(9).exponential(1 / 150.0, size=3_000))
    lat, size = replay_batching(arrivals, service, 4, 0.003)
    np.testing.assert_array_equal(lat, simulate_batching(150.0, service, 4, 0.003, n_requests=3_000, seed=9))
    assert size.min() >= 1 and size.max() <= 4


def test_replay_hand_checked():
    service = BatchLatencyModel(alpha=1.0, beta=0.0, floor=0.0)  # s(b) = b seconds
    # 0: alone after the 0.5 s delay, done 1.5. 1.0, 1.2 and 1.3 wait for the busy server and go at 1.5 as one full
    # batch (B = 3): s(3) = 3 s, done 4.5. 10.0: alone again.
    lat, size = replay_batching([0.0, 1.0, 1.2, 1.3, 10.0], service, 3, 0.5)
    np.testing.assert_allclose(lat, [1.5, 3.5, 3.3, 3.2, 1.5])
    np.testing.assert_array_equal(size, [1, 3, 3, 3, 1])


def test_replay_service_factors_scale_batch_times():
    service = BatchLatencyModel(alpha=0.01, beta=0.0, floor=0.0)
    arrivals = np.arange(100) * 1.0  # far apart: every batch is one request, latency = delay + s(1) * factor
    lat, _ = replay_batching(arrivals, service, 4, 0.0, service_factors=[0.5, 2.0], seed=1)
    assert set(np.round(lat, 9)) == {0.005, 0.02}
    again, _ = replay_batching(arrivals, service, 4, 0.0, service_factors=[0.5, 2.0], seed=1)
    np.testing.assert_array_equal(lat, again)
    with pytest.raises(ValueError, match="sorted"):
        replay_batching([1.0, 0.5], service, 4, 0.0)
    with pytest.raises(ValueError, match="positive"):
        replay_batching(arrivals, service, 4, 0.0, service_factors=[0.0])
