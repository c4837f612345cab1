"""Universal Scalability Law fit and Mean Value Analysis against hand-computed cases."""

import math

import numpy as np
import pytest

from gawm_lib.models import USLModel, fit_usl, mva
from gawm_lib.models.scaling import _mva_single, _product_form


def test_mva_single_server_hand_computed():
    # S = 1, Z = 1: R1 = 1, X1 = 1/2, Q1 = 1/2; R2 = 1.5, X2 = 2/2.5 = 0.8, Q2 = 1.2; R3 = 2.2, X3 = 3/3.2.
    r = mva(1.0, 3, think_time_s=1.0)
    np.testing.assert_allclose(r.response_time, [1.0, 1.5, 2.2])
    np.testing.assert_allclose(r.throughput, [0.5, 0.8, 0.9375])
    np.testing.assert_allclose(r.queue_length, [0.5, 1.2, 2.0625])
    np.testing.assert_allclose(r.utilisation, r.throughput * 1.0)
    assert list(r.population) == [1, 2, 3]


def test_mva_no_think_time_is_n_times_s():
    r = mva(0.25, 6)
    np.testing.assert_allclose(r.response_time, 0.25 * np.arange(1, 7))
    np.testing.assert_allclose(r.throughput, 4.0)


def test_mva_multi_server_hand_computed():
    # c = 2, S = 1, Z = 1, N = 3: weights z^(3-j)/(3-j)! * s^j / beta(j) = 1/6, 1/2, 1/2, 1/4.
    # X = (1/2*1 + 1/2*2 + 1/4*2) / (17/12) = 24/17; E[j] = (1/2 + 1 + 3/4) / (17/12) = 27/17; R = 27/24.
    r = mva(1.0, 3, think_time_s=1.0, servers=2)
    assert r.throughput[2] == pytest.approx(24 / 17)
    assert r.response_time[2] == pytest.approx(1.125)
    assert r.response_time[1] == pytest.approx(1.0)  # two users, two servers: nobody queues
    zero = mva(1.0, 5, servers=2)  # no think time: R = S until the servers are full, then N S / c
    np.testing.assert_allclose(zero.response_time, [1.0, 1.0, 1.5, 2.0, 2.5])
    np.testing.assert_allclose(zero.throughput, [1.0, 2.0, 2.0, 2.0, 2.0])


def test_product_form_agrees_with_recursion_for_one_server():
    x1, r1 = _mva_single(0.3, 40, 2.0)
    x2, r2 = _product_form(0.3, 40, 2.0, 1)
    np.testing.assert_allclose(x1, x2, rtol=1e-10)
    np.testing.assert_allclose(r1, r2, rtol=1e-10)


def test_mva_bounds_and_seidmann():
    exact = mva(0.05, 400, think_time_s=1.0, servers=8)
    n = exact.population
    # Asymptotic bounds: X <= min(c/S, N/(S+Z)); R >= S.
    assert np.all(exact.throughput <= np.minimum(8 / 0.05, n / 1.05) * (1 + 1e-9))
    assert np.all(exact.response_time >= 0.05 * (1 - 1e-9))
    assert exact.throughput[-1] == pytest.approx(160.0, rel=1e-6)
    approx = mva(0.05, 400, think_time_s=1.0, servers=8, method="seidmann")
    assert approx.response_time[0] == pytest.approx(0.05)  # exact at N = 1
    np.testing.assert_allclose(approx.throughput, exact.throughput, rtol=0.15)
    assert approx.method == "seidmann" and exact.method == "exact"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(service_time_s=0.0, n_users=3), "service_time_s must be a positive"),
        (dict(service_time_s=1.0, n_users=0), "n_users must be a positive integer"),
        (dict(service_time_s=1.0, n_users=3, think_time_s=-1.0), "think_time_s must be >= 0"),
        (dict(service_time_s=1.0, n_users=3, servers=0), "servers must be a positive integer"),
        (dict(service_time_s=1.0, n_users=3, servers=2, method="magic"), "method must be"),
    ],
)
def test_mva_rejects_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mva(**kwargs)


def test_usl_model_peak():
    m = USLModel(lam=100.0, sigma=0.05, kappa=0.002)
    assert m.predict(1) == pytest.approx(100.0)
    assert m.n_peak == pytest.approx(math.sqrt(0.95 / 0.002))
    grid = np.linspace(1, 100, 2000)
    assert m.peak_throughput == pytest.approx(m.predict(grid).max(), rel=1e-5)
    amdahl = USLModel(lam=10.0, sigma=0.1, kappa=0.0)
    assert amdahl.n_peak == math.inf and amdahl.peak_throughput == pytest.approx(100.0)


def test_usl_fit_recovers_parameters():
    true = USLModel(lam=100.0, sigma=0.05, kappa=0.002)
    n = np.repeat([1, 2, 4, 8, 16, 24, 32, 48, 64], 3)
    rng = np.random.default_rng(4)
    fit = fit_usl(n, true.predict(n) * (1 + 0.02 * rng.standard_normal(n.size)))
    for name in ("lam", "sigma", "kappa"):
        assert abs(getattr(fit, name) - getattr(true, name)) < 3 * getattr(fit, f"{name}_se"), name
    assert fit.n_peak == pytest.approx(true.n_peak, rel=0.1)
    assert fit.sigma >= 0 and fit.kappa >= 0


def test_usl_fit_respects_bounds_on_linear_data():
    n = np.array([1, 2, 4, 8, 16])
    fit = fit_usl(n, 10.0 * n)  # perfectly linear: no contention, no coherency
    assert fit.sigma == pytest.approx(0.0, abs=1e-6) and fit.kappa == pytest.approx(0.0, abs=1e-8)
    assert fit.lam == pytest.approx(10.0, rel=1e-6)


@pytest.mark.parametrize(
    "n, x, match",
    [
        ([1, 2], [1.0, 2.0], "at least 3"),
        ([1, 2, 3], [1.0, 2.0], "different lengths"),
        ([1, 2, 3], [1.0, 0.0, 2.0], "positive finite"),
        ([1, 1, 2], [1.0, 1.1, 2.0], "3 distinct"),
    ],
)
def test_usl_fit_rejects_bad_inputs(n, x, match):
    with pytest.raises(ValueError, match=match):
        fit_usl(n, x)
