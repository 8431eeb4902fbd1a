"""Confidence intervals, the paired t-test, Holm's correction and the seeds-needed power figure, checked against
scipy.stats (a test dependency only: ptuning computes them itself at run time) and against their definitions."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import scipy.stats

from ptuning.report import stats


def samples(rng: random.Random, n: int, mean: float, sd: float) -> list[float]:
    return [rng.gauss(mean, sd) for _ in range(n)]


def test_t_quantile_matches_scipy():
    for q, df in itertools.product((0.5, 0.6, 0.9, 0.975, 0.995, 0.025, 1e-4), (1, 1.7, 2, 3, 4.5, 9, 30, 500)):
        assert stats.t_quantile(q, df) == pytest.approx(scipy.stats.t.ppf(q, df), rel=1e-9, abs=1e-9), (q, df)
    for q in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            stats.t_quantile(q, 3)


def test_confidence_intervals_match_scipy_on_random_samples():
    rng = random.Random(1)
    for _ in range(300):
        values = samples(rng, rng.randint(2, 12), rng.uniform(50, 95), rng.uniform(0.01, 5))
        level = rng.choice((0.9, 0.95, 0.99))
        got = stats.confidence_interval(values, level)
        low, high = scipy.stats.t.interval(level, len(values) - 1, loc=sum(values) / len(values), scale=scipy.stats.sem(values))
        assert (got.low, got.high) == (pytest.approx(low, rel=1e-10), pytest.approx(high, rel=1e-10))
        assert got.level == level
    assert stats.confidence_interval([88.0]) is None and stats.confidence_interval([]) is None
    flat = stats.confidence_interval([85.0, 85.0, 85.0])
    assert (flat.low, flat.high) == (85.0, 85.0)
    assert stats.confidence_interval([1.0, 3.0]).text() == "[-10.7, 14.7]"  # 2 ± 12.706


def test_paired_t_test_matches_scipy_on_random_pairs():
    rng = random.Random(2)
    for _ in range(500):
        n = rng.randint(2, 10)
        a = samples(rng, n, rng.uniform(80, 90), rng.uniform(0.1, 3))
        b = [x + rng.gauss(rng.uniform(-2, 2), rng.uniform(0.05, 2)) for x in a]
        got = stats.paired(a, b)
        want = scipy.stats.ttest_rel(a, b)
        assert got.p == pytest.approx(want.pvalue, rel=1e-8, abs=1e-14)
        assert got.df == n - 1 and got.test == "paired"
        assert got.difference == pytest.approx(sum(a) / n - sum(b) / n, abs=1e-9)
        assert got.verdict == (stats.DIFFERS if want.pvalue < 0.05 else stats.WITHIN_NOISE)
    assert stats.paired([88.0], [90.0]).verdict == stats.TOO_SMALL
    assert stats.paired([1.0, 2.0], [0.0, 1.0]).verdict == stats.DIFFERS  # the same shift every seed: p 0
    assert stats.paired([1.0, 2.0], [1.0, 2.0]).verdict == stats.WITHIN_NOISE
    with pytest.raises(ValueError, match="different lengths"):
        stats.paired([1.0, 2.0], [1.0])


def holm_by_definition(pvalues: list[float]) -> list[float]:
    """Holm (1979): order the m p-values; the adjusted p of the one at rank i is the largest (m - j + 1)·p_(j) over
    ranks j <= i, capped at 1 — the smallest level at which the step-down procedure rejects it."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    for rank, i in enumerate(order, start=1):
        adjusted[i] = min(1.0, max((m - j + 1) * pvalues[order[j - 1]] for j in range(1, rank + 1)))
    return adjusted


def test_holm_matches_its_definition_and_keeps_uncompared_rows_out():
    rng = random.Random(3)
    for _ in range(500):
        ps = [rng.random() ** rng.choice((1, 3, 6)) for _ in range(rng.randint(1, 12))]
        assert stats.holm(ps) == pytest.approx(holm_by_definition(ps), rel=1e-12)
    assert stats.holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])
    assert stats.holm([]) == [] and stats.holm([None]) == [None]
    # the step-down decision itself: reject while p_(i) <= alpha / (m - i + 1)
    ps = [0.011, 0.016, 0.04, 0.3]  # 0.011 <= 0.05/4 and 0.016 <= 0.05/3, but 0.04 > 0.05/2
    assert [p < 0.05 for p in stats.holm(ps)] == [True, True, False, False]
    assert [p < 0.05 for p in stats.holm([0.011, 0.02, 0.04, 0.3])] == [True, False, False, False]  # 0.02 > 0.05/3: stop


def nct_cdf_reference(t: float, df: float, nc: float) -> float:
    """scipy's noncentral t CDF; where its cdf gives nan (far tails at large df), 1 - its survival function."""
    value = scipy.stats.nct.cdf(t, df, nc)
    if math.isnan(value):
        value = 1.0 - scipy.stats.nct.sf(t, df, nc)
    assert math.isfinite(value)
    return value


def scipy_power(n: int, diff: float, sd_a: float, sd_b: float | None, alpha: float = 0.05) -> float:
    if sd_b is None:
        se, df = sd_a / math.sqrt(n), n - 1
    else:
        va, vb = sd_a**2 / n, sd_b**2 / n
        se, df = math.sqrt(va + vb), (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (n - 1))
    crit = scipy.stats.t.ppf(1 - alpha / 2, df)
    nc = diff / se
    return (1.0 - nct_cdf_reference(crit, df, nc)) + nct_cdf_reference(-crit, df, nc)


def test_noncentral_t_matches_scipy():
    rng = random.Random(4)
    for _ in range(400):
        df = rng.choice((1, 1.3, 2, 2.5, 3, 5, 8, 20, 60, 200, 900))
        nc, t = rng.uniform(-6, 6), rng.uniform(-8, 8)
        assert stats.nct_cdf(t, df, nc) == pytest.approx(nct_cdf_reference(t, df, nc), abs=1e-8), (t, df, nc)


def test_power_and_seeds_needed_match_scipys_noncentral_t():
    rng = random.Random(5)
    for _ in range(40):
        diff, sd_a = rng.uniform(-3, 3), rng.uniform(0.1, 2)
        sd_b = rng.choice((None, rng.uniform(0.1, 2)))
        for n in (2, 3, 5, 10, 40):
            assert stats.power(n, diff, sd_a, sd_b) == pytest.approx(scipy_power(n, diff, sd_a, sd_b), abs=1e-7)
        needed = stats.seeds_needed(diff, sd_a, sd_b)
        if needed is None:
            assert scipy_power(stats.MAX_SEEDS, diff, sd_a, sd_b) < 0.8
            continue
        assert scipy_power(needed, diff, sd_a, sd_b) >= 0.8
        assert needed == 2 or scipy_power(needed - 1, diff, sd_a, sd_b) < 0.8  # the fewest
    assert stats.seeds_needed(0.0, 1.0, 1.0) is None  # nothing observed, nothing to resolve
    assert stats.seeds_needed(2.0, 0.0) == 2  # no spread: any two seeds show it
    assert stats.seeds_needed(0.01, 5.0, 5.0) is None  # more than MAX_SEEDS


def test_welch_keeps_its_results_and_names_its_test():
    c = stats.welch([1.0, 3.0], [0.0, 0.0])
    assert c.test == "welch" and c.df == pytest.approx(1.0)
