"""The report's verdict rules on made-up data: an effect inside the noise is inconclusive, one run decides nothing."""

import numpy as np
import pandas as pd
import pytest

from analysis.verdicts import FAILS, HOLDS, UNSURE, best_in_range, compare


def test_a_clear_difference_holds_and_its_opposite_does_not():
    assert compare([60.1, 61.0, 59.8], [40.2, 41.1, 39.5], "greater").verdict == HOLDS
    assert compare([60.1, 61.0, 59.8], [40.2, 41.1, 39.5], "less").verdict == FAILS


def test_an_effect_inside_the_noise_is_inconclusive():
    rng = np.random.default_rng(0)
    a, b = 50 + 5 * rng.standard_normal(3), 50.5 + 5 * rng.standard_normal(3)
    result = compare(a, b)
    assert result.verdict == UNSURE and result.low < 0 < result.high


def test_one_run_decides_nothing():
    result = compare([70.0], [40.0])
    assert result.verdict == UNSURE and result.effect == pytest.approx(30.0)


def test_the_interval_is_welchs():
    a, b = [1.0, 2.0, 3.0], [0.0, 0.5, 1.0, 1.5]
    result = compare(a, b)
    # by hand: difference 1.25, variances 1/3 and 0.4167/4, Welch dof 3.38, t_0.975 = 2.987
    se = np.sqrt(1.0 / 3 + (5 / 12) / 4)
    assert result.effect == pytest.approx(1.25)
    assert result.high - result.effect == pytest.approx(3.0 * se, rel=0.02)


def curve(means, noise, runs=3, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        [{"p": p, "top1": m + noise * rng.standard_normal()} for p, m in means.items() for _ in range(runs)]
    )


def test_best_in_range_holds_for_a_clear_peak_and_fails_for_a_peak_elsewhere():
    peak = {0.0: 40, 0.2: 60, 0.4: 58, 0.6: 50, 1.0: 35}
    assert best_in_range(curve(peak, 0.5), "p", "top1", 0.2, 0.4).verdict == HOLDS
    rising = {0.0: 40, 0.2: 45, 0.4: 50, 0.6: 55, 1.0: 65}
    assert best_in_range(curve(rising, 0.5), "p", "top1", 0.2, 0.4).verdict == FAILS


def test_best_in_range_is_inconclusive_when_the_points_tie_within_noise_or_run_once():
    flat = {0.0: 50, 0.2: 50, 0.4: 50, 0.6: 50, 1.0: 50}
    assert best_in_range(curve(flat, 3.0), "p", "top1", 0.2, 0.4).verdict == UNSURE
    peak = {0.0: 40, 0.2: 60, 0.4: 58, 0.6: 50, 1.0: 35}
    assert best_in_range(curve(peak, 0.5, runs=1), "p", "top1", 0.2, 0.4).verdict == UNSURE


def test_paired_runs_use_the_differences():
    """Two models whose attention shares differ a lot between models but always exceed their FFN share by about 10
    points: unpaired, the spread between models hides it; paired, it holds."""
    attention, ffn = [10.0, 30.0, 50.0, 70.0], [0.5, 19.0, 41.0, 59.5]
    assert compare(attention, ffn).verdict == UNSURE
    paired = compare(attention, ffn, paired=True)
    assert paired.verdict == HOLDS and paired.runs == "4 paired runs"
    d = np.subtract(attention, ffn)
    assert paired.high - paired.effect == pytest.approx(3.182 * d.std(ddof=1) / 2, rel=1e-3)  # t(3) = 3.182
