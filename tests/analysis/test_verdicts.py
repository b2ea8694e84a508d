"""The report's verdict rules on made-up data: an effect inside the noise is inconclusive, one run decides nothing."""

import numpy as np
import pandas as pd
import pytest

from analysis.verdicts import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Verdict,
    best_in_range,
    compare,
    late_and_early,
    movement,
)


def test_a_clear_difference_holds_and_its_opposite_does_not():
    assert compare([60.1, 61.0, 59.8], [40.2, 41.1, 39.5], "greater").verdict == REPRODUCED
    assert compare([60.1, 61.0, 59.8], [40.2, 41.1, 39.5], "less").verdict == NOT_REPRODUCED


def test_an_effect_inside_the_noise_is_inconclusive():
    rng = np.random.default_rng(0)
    a, b = 50 + 5 * rng.standard_normal(3), 50.5 + 5 * rng.standard_normal(3)
    result = compare(a, b)
    assert result.verdict == INCONCLUSIVE and result.low < 0 < result.high


def test_one_run_decides_nothing():
    result = compare([70.0], [40.0])
    assert result.verdict == INCONCLUSIVE and result.effect == pytest.approx(30.0)


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
    assert best_in_range(curve(peak, 0.5), "p", "top1", 0.2, 0.4).verdict == REPRODUCED
    rising = {0.0: 40, 0.2: 45, 0.4: 50, 0.6: 55, 1.0: 65}
    assert best_in_range(curve(rising, 0.5), "p", "top1", 0.2, 0.4).verdict == NOT_REPRODUCED


def test_best_in_range_is_inconclusive_when_the_points_tie_within_noise_or_run_once():
    flat = {0.0: 50, 0.2: 50, 0.4: 50, 0.6: 50, 1.0: 50}
    assert best_in_range(curve(flat, 3.0), "p", "top1", 0.2, 0.4).verdict == INCONCLUSIVE
    peak = {0.0: 40, 0.2: 60, 0.4: 58, 0.6: 50, 1.0: 35}
    assert best_in_range(curve(peak, 0.5, runs=1), "p", "top1", 0.2, 0.4).verdict == INCONCLUSIVE


def test_paired_runs_use_the_differences():
    """Two models whose attention shares differ a lot between models but always exceed their FFN share by about 10
    points: unpaired, the spread between models hides it; paired, it holds."""
    attention, ffn = [10.0, 30.0, 50.0, 70.0], [0.5, 19.0, 41.0, 59.5]
    assert compare(attention, ffn).verdict == INCONCLUSIVE
    paired = compare(attention, ffn, paired=True)
    assert paired.verdict == REPRODUCED and paired.runs == "4 paired runs"
    d = np.subtract(attention, ffn)
    assert paired.high - paired.effect == pytest.approx(3.182 * d.std(ddof=1) / 2, rel=1e-3)  # t(3) = 3.182


def test_late_blocks_are_compared_with_early_ones_within_each_run():
    """Six blocks: the last third (5, 6) against the first third (1, 2) of each run; three runs whose late blocks
    are 4 points higher give "reproduced", and the same effect under noise 20 times larger gives "inconclusive"."""
    rows = [
        {"source": f"seed{seed}", "block": block, "pct": 50 + (4 if block > 4 else 0)}
        for seed in range(3)
        for block in range(1, 7)
    ]
    late, early = late_and_early(pd.DataFrame(rows), "pct")
    assert list(late) == [54, 54, 54] and list(early) == [50, 50, 50]
    assert compare(late, early, "greater", paired=True).verdict == "reproduced"
    noisy = pd.DataFrame(rows).assign(pct=lambda f: f["pct"] + [80 * (-1) ** i * (i % 5) for i in range(len(f))])
    assert compare(*late_and_early(noisy, "pct"), "greater", paired=True).verdict == "inconclusive"


def test_an_effect_moves_toward_or_away_from_the_paper_only_beyond_its_interval():
    first = Verdict("inconclusive", -20.0, -40.0, 0.0, "3 vs 3 runs")
    wide = Verdict("inconclusive", -15.0, -30.0, 0.0, "3 vs 3 runs")  # a change of 5 inside a half-width of 15
    assert movement(first, wide, 2.0) == "stayed inside its 95% interval (-20.0 -> -15.0)"
    narrow = Verdict("not reproduced", -15.0, -16.0, -14.0, "3 vs 3 runs")
    assert movement(first, narrow, 2.0) == "moved toward the paper's (-20.0 -> -15.0)"
    back = Verdict("not reproduced", -20.0, -21.0, -19.0, "3 vs 3 runs")
    assert movement(narrow, back, 2.0) == "moved away from the paper's (-15.0 -> -20.0)"
    single = Verdict("inconclusive", -15.0, float("nan"), float("nan"), "1 vs 1 runs")
    assert movement(first, single, 2.0) == "went (-20.0 -> -15.0) (no interval from a single run)"
