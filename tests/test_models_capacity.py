"""Capacity planner: hand-checked replica counts, consistency with the queue models, uncertainty, errors."""

import math

import pytest

from gawm_lib.models import BatchLatencyModel, fit_batch_latency, mgc, plan_capacity, predict_batching

CONSTANT = BatchLatencyModel(alpha=0.0, beta=0.1, floor=0.1)  # 100 ms per request, no batching benefit


def test_mm1_replicas_hand_checked():
    # M/M/1 replicas: p95 = ln(20) / (mu - lambda/c) <= 0.5 s with mu = 10/s  =>  lambda/c <= 4.009  =>  c = 13.
    plan = plan_capacity(50.0, 0.5, CONSTANT, server="mg1", service_scv=1.0)
    assert plan.replicas == 13
    assert plan.p95_s == pytest.approx(math.log(20) / (10 - 50 / 13))
    assert plan.utilisation == pytest.approx(50 / 13 * 0.1)
    assert plan.per_replica_rate == pytest.approx(50 / 13)
    assert math.log(20) / (10 - 50 / 12) > 0.5  # 12 would miss the SLO


def test_utilisation_cap_binds_for_a_loose_slo():
    # Any stable M/M/1 meets 5 s here; the 0.85 cap needs c >= 50 * 0.1 / 0.85 = 5.9 => 6.
    plan = plan_capacity(50.0, 5.0, CONSTANT)
    assert plan.replicas == 6 and plan.utilisation == pytest.approx(5 / 6)
    assert plan_capacity(50.0, 5.0, CONSTANT, utilisation_cap=0.5).replicas == 10


def test_mgc_replicas_are_the_fewest():
    plan = plan_capacity(120.0, 0.25, CONSTANT, server="mgc", servers_per_replica=4, service_scv=0.5)
    c = plan.replicas
    assert mgc(120.0 / c, 0.1, 0.5, 4).p95_s <= 0.25
    assert plan.utilisation <= 0.85
    fewer = 120.0 / (c - 1)
    assert fewer * 0.1 / 4 > 0.85 or mgc(fewer, 0.1, 0.5, 4).p95_s > 0.25


def test_batching_replicas_are_the_fewest():
    service = BatchLatencyModel(alpha=0.001, beta=0.0166, floor=0.020)
    plan = plan_capacity(900.0, 0.045, service, server="batching", max_batch=16, max_delay_s=0.005)
    c = plan.replicas
    assert predict_batching(900.0 / c, service, 16, 0.005).p95_s <= 0.045
    util_fewer = 900.0 / (c - 1) * service.predict(16) / 16
    assert util_fewer > 0.85 or predict_batching(900.0 / (c - 1), service, 16, 0.005).p95_s > 0.045


def test_batch_time_variability_can_take_another_replica():
    # The same plan with batch times varying by a third either way (factors 2/3, 1, 4/3): the p95 the planner checks
    # is predict_batching's with those factors, and the fewest replicas meeting it are more than without them.
    service = BatchLatencyModel(alpha=0.001, beta=0.0166, floor=0.020)
    factors = [2 / 3, 1.0, 4 / 3]
    fixed = plan_capacity(900.0, 0.045, service, server="batching", max_batch=16, max_delay_s=0.005)
    plan = plan_capacity(
        900.0, 0.045, service, server="batching", max_batch=16, max_delay_s=0.005, service_factors=factors
    )
    c = plan.replicas
    assert c > fixed.replicas
    assert plan.p95_s == predict_batching(900.0 / c, service, 16, 0.005, service_factors=factors).p95_s <= 0.045
    assert predict_batching(900.0 / (c - 1), service, 16, 0.005, service_factors=factors).p95_s > 0.045
    assert plan.utilisation == pytest.approx(900.0 / c * service.predict(16) / 16)  # factors of mean 1
    with pytest.raises(ValueError, match="service_factors are for server='batching'; mg1 takes"):
        plan_capacity(10.0, 1.0, CONSTANT, service_factors=factors)


def test_uncertainty_range_from_fit_errors():
    sizes = [1, 2, 4, 8, 16, 32] * 3
    true = BatchLatencyModel(alpha=0.001, beta=0.0166, floor=0.020)
    noise = [0.001, -0.0012, 0.0008, -0.0005, 0.0011, -0.0009] * 2 + [0.0004, -0.0003, 0.0007, -0.001, 0.0002, 0.0]
    fit = fit_batch_latency(sizes, [true.predict(b) + e for b, e in zip(sizes, noise)])
    plan = plan_capacity(400.0, 0.06, fit, server="batching", max_batch=16, max_delay_s=0.005)
    lo, hi = plan.p95_range_s
    assert lo < plan.p95_s < hi
    r_lo, r_hi = plan.replicas_range
    assert r_lo <= plan.replicas <= r_hi
    exact = plan_capacity(40.0, 0.5, CONSTANT)  # hand-made model: zero-width range
    assert exact.p95_range_s[0] == exact.p95_range_s[1] == exact.p95_s


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(arrival_rate=0.0, slo_p95_s=1.0), "positive load"),
        (dict(arrival_rate=-5.0, slo_p95_s=1.0), "positive load"),
        (dict(arrival_rate=10.0, slo_p95_s=0.0), "slo_p95_s must be a positive"),
        (dict(arrival_rate=10.0, slo_p95_s=0.05), "below the service time at batch size 1"),
        (dict(arrival_rate=10.0, slo_p95_s=0.2, service_scv=1.0), "below the p95 of the service time"),
        (dict(arrival_rate=10.0, slo_p95_s=1.0, server="gpu"), "server must be one of"),
        (dict(arrival_rate=10.0, slo_p95_s=1.0, utilisation_cap=1.0), "utilisation_cap must be in"),
    ],
)
def test_planner_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_capacity(service=CONSTANT, **kwargs)


def test_batching_slo_unreachable_because_of_timeout():
    service = BatchLatencyModel(alpha=0.001, beta=0.0166, floor=0.020)
    # Above s(1) = 20 ms, but every lightly loaded replica waits up to 10 ms to fill a batch: p95 stays >= ~30 ms.
    with pytest.raises(ValueError, match="no replica count meets"):
        plan_capacity(100.0, 0.021, service, server="batching", max_batch=16, max_delay_s=0.010)
