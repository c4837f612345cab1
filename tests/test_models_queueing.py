"""Open-loop queue formulas against closed forms and hand-checked values."""

import math

import numpy as np
import pytest
from scipy import optimize

from gawm_lib.models import UnstableSystemError, erlang_c, md1, mg1, mgc, mm1, mmc, sweep


def test_mm1_closed_forms():
    lam, mu = 3.0, 5.0
    p = mm1(lam, 1 / mu)
    assert p.utilisation == pytest.approx(0.6)
    assert p.mean_response_s == pytest.approx(1 / (mu - lam), rel=1e-12)
    assert p.mean_wait_s == pytest.approx(lam / (mu * (mu - lam)), rel=1e-12)
    assert p.mean_in_system == pytest.approx(0.6 / 0.4)  # L = rho / (1 - rho)
    assert p.exact_quantiles
    # Sojourn is Exp(mu - lambda): quantile = -ln(1 - q) / (mu - lambda).
    assert p.p50_s == pytest.approx(math.log(2) / 2.0, rel=1e-7)
    assert p.p95_s == pytest.approx(math.log(20) / 2.0, rel=1e-7)
    assert p.response_quantile(0.99) == pytest.approx(math.log(100) / 2.0, rel=1e-7)


def test_md1_pollaczek_khinchine():
    lam, mu = 0.8, 1.0
    p = md1(lam, 1 / mu)
    rho = lam / mu
    assert p.mean_wait_s == pytest.approx(rho / (2 * mu * (1 - rho)), rel=1e-12)
    assert p.mean_response_s == pytest.approx(1 + 2.0)
    assert not p.exact_quantiles
    # Deterministic service: the sojourn is never below the service time.
    assert p.response_quantile(0.1) == pytest.approx(1.0)


def test_mg1_interpolates_md1_and_mm1():
    assert mg1(0.5, 1.0, 0.0).mean_wait_s == pytest.approx(md1(0.5, 1.0).mean_wait_s)
    assert mg1(0.5, 1.0, 1.0).mean_wait_s == pytest.approx(mm1(0.5, 1.0).mean_wait_s)
    assert mg1(0.5, 1.0, 3.0).mean_wait_s == pytest.approx(0.5 * 4 / (2 * 0.5))
    # The waiting-time model with exponential service reproduces the exact M/M/1 quantile.
    assert mg1(0.5, 1.0, 1.0).p95_s == pytest.approx(mm1(0.5, 1.0).p95_s, rel=1e-6)


def test_erlang_c_hand_checked():
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3, rel=1e-12)
    assert erlang_c(1, 0.7) == pytest.approx(0.7)  # M/M/1: P(wait) = rho
    # c=3, a=2: B = (8/6) / (1 + 2 + 2 + 8/6) = 4/19; C = B / (1 - (2/3)(1 - B)) = 4/9.
    assert erlang_c(3, 2.0) == pytest.approx(4 / 9, rel=1e-12)


def test_erlang_c_stable_for_many_servers():
    c, a = 800, 780.0
    # Independent log-space evaluation of the textbook formula.
    k = np.arange(c)
    log_terms = k * math.log(a) - np.array([math.lgamma(i + 1) for i in k])
    log_last = c * math.log(a) - math.lgamma(c + 1) - math.log(1 - a / c)
    top = math.exp(log_last - np.logaddexp.reduce(np.append(log_terms, log_last)))
    assert erlang_c(c, a) == pytest.approx(top, rel=1e-9)
    assert 0 < erlang_c(c, a) < 1


def test_mmc_closed_forms():
    p = mmc(1.0, 1.0, 2)
    assert p.prob_wait == pytest.approx(1 / 3)
    assert p.mean_wait_s == pytest.approx(1 / 3)  # C / (c mu - lambda) = (1/3) / 1
    assert p.mean_response_s == pytest.approx(4 / 3)
    assert p.utilisation == pytest.approx(0.5)
    one = mmc(0.6, 1.0, 1)
    assert one.mean_response_s == pytest.approx(mm1(0.6, 1.0).mean_response_s)


def test_mmc_quantiles_exact():
    lam, mu, c = 2.4, 1.0, 3
    p = mmc(lam, 1 / mu, c)
    C, theta = p.prob_wait, c * mu - lam

    def sojourn_sf(t):  # wait = atom + Exp(theta) w.p. C, plus independent Exp(mu) service
        both = (mu * math.exp(-theta * t) - theta * math.exp(-mu * t)) / (mu - theta)
        return (1 - C) * math.exp(-mu * t) + C * both

    for q in (0.5, 0.95, 0.99):
        exact = optimize.brentq(lambda t, q=q: sojourn_sf(t) - (1 - q), 0, 100)
        assert p.response_quantile(q) == pytest.approx(exact, rel=1e-6)
    assert p.wait_quantile(0.95) == pytest.approx(math.log(C / 0.05) / theta)
    assert p.wait_quantile(0.1) == 0.0  # inside the no-wait atom


def test_mgc_allen_cunneen():
    base = mmc(3.0, 1.0, 4)
    assert mgc(3.0, 1.0, 1.0, 4).mean_wait_s == pytest.approx(base.mean_wait_s)
    assert mgc(3.0, 1.0, 0.0, 4).mean_wait_s == pytest.approx(0.5 * base.mean_wait_s)
    assert mgc(3.0, 1.0, 2.0, 4).mean_wait_s == pytest.approx(1.5 * base.mean_wait_s)
    assert mgc(3.0, 1.0, 0.5, 4).model == "M/G/4" and not mgc(3.0, 1.0, 0.5, 4).exact_quantiles


@pytest.mark.parametrize(
    "call, shown",
    [
        (lambda: mm1(5.0, 0.25), "1.25"),
        (lambda: md1(1.0, 1.0), "1 "),
        (lambda: mg1(2.0, 0.6, 0.5), "1.2"),
        (lambda: mmc(5.0, 1.0, 4), "1.25"),
        (lambda: mgc(9.0, 1.0, 0.3, 8), "1.125"),
        (lambda: erlang_c(2, 2.0), "1 "),
    ],
)
def test_unstable_raises_with_utilisation(call, shown):
    with pytest.raises(UnstableSystemError, match=f"utilisation {shown}") as info:
        call()
    assert isinstance(info.value, ValueError)
    assert info.value.utilisation >= 1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: mm1(-1.0, 1.0), "arrival_rate must be a positive"),
        (lambda: mm1(1.0, 0.0), "service_time_s must be a positive"),
        (lambda: mg1(0.5, 1.0, -1.0), "service_scv must be >= 0"),
        (lambda: mmc(0.5, 1.0, 0), "servers must be a positive integer"),
        (lambda: mmc(0.5, 1.0, 2.5), "servers must be a positive integer"),
        (lambda: mm1(0.5, 1.0).response_quantile(1.0), "quantile must be in"),
    ],
)
def test_invalid_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_sweep_is_monotone_in_load():
    frame = sweep(mgc, [1.0, 2.0, 3.0, 3.6], service_time_s=1.0, service_scv=0.5, servers=4)
    assert list(frame.columns) == ["arrival_rate", "utilisation", "mean_s", "p50_s", "p95_s"]
    assert frame["p95_s"].is_monotonic_increasing and frame["mean_s"].is_monotonic_increasing
    assert (frame["p50_s"] <= frame["p95_s"]).all()
