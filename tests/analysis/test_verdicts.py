"""The report's verdict rules on made-up data: an effect inside the noise is inconclusive, one run decides nothing."""

import numpy as np
import pandas as pd
import pytest

from analysis.verdicts import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    RELEASED,
    REPRODUCED,
    SMALLER,
    UNCONVERGED,
    Verdict,
    best_point,
    compare,
    late_and_early,
    movement,
    trend_over_depth,
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
        [{"p": p, "seed": s, "top1": m + noise * rng.standard_normal()} for p, m in means.items() for s in range(runs)]
    )


def test_a_best_point_clear_of_its_neighbours_holds_inside_the_range_and_fails_outside():
    peak = {0.0: 40, 0.2: 60, 0.4: 54, 0.6: 50, 1.0: 35}
    found = best_point(curve(peak, 0.5), "p", "top1", 0.2, 0.4)
    assert found.best == 0.2 and found.verdict.verdict == REPRODUCED and set(found.margins) == {0.0, 0.4}
    assert found.verdict.effect == pytest.approx(found.margins[0.4].effect)  # the tightest margin is the evidence
    rising = {0.0: 40, 0.2: 45, 0.4: 50, 0.6: 55, 1.0: 65}
    found = best_point(curve(rising, 0.5), "p", "top1", 0.2, 0.4)
    assert found.best == 1.0 and found.verdict.verdict == NOT_REPRODUCED and set(found.margins) == {0.6}


def test_a_best_point_that_ties_with_a_neighbour_over_three_seeds_is_inconclusive():
    """The reference run's Swin case: 40% and 60% 0.2 points apart. Three seeds spread a point apart cannot
    separate them, however the seeds' means happen to fall."""
    close = {0.0: 70, 0.2: 80, 0.4: 82.6, 0.6: 82.4, 1.0: 81}
    found = best_point(curve(close, 1.0), "p", "top1", 0.2, 0.4)
    assert found.verdict.verdict == INCONCLUSIVE and found.verdict.low < 0 < found.verdict.high
    assert "3 seeds" in found.verdict.runs


def test_an_effect_on_the_papers_side_under_a_third_of_its_size_is_same_direction_smaller():
    """The reference run's DeiT "V keeps more than Q/K": +3.0 [2.2, 3.7] against the paper's +59.8."""
    result = compare([3.0, 2.6, 3.4], [0, 0, 0], "greater", paired=True, paper=59.8)
    assert result.verdict == SMALLER and result.word() == "same direction, 20x smaller"
    assert compare([30.0, 26.0, 34.0], [0, 0, 0], "greater", paired=True, paper=59.8).verdict == REPRODUCED
    assert compare([-3.0, -2.6, -3.4], [0, 0, 0], "greater", paired=True, paper=59.8).verdict == NOT_REPRODUCED


def test_a_verdict_on_unconverged_models_says_so_in_its_own_words():
    result = compare([60.1, 61.0, 59.8], [40.2, 41.1, 39.5], "greater", caveat=UNCONVERGED)
    assert result.word() == "reproduced, on unconverged proxies"
    assert compare([1.0, 2.0], [3.0, 4.0], "greater", caveat=UNCONVERGED).word().endswith(", on unconverged proxies")


def test_a_trend_over_depth_is_not_made_by_the_first_block_alone():
    """The reference run's DeiT pruning: kept shares 91.5, 57.4, 42.9, 44.7, 42.5, 45.9 per block. Its last third
    minus its first is -30 points; past the first block the line is nearly flat."""
    shares = [91.5, 57.4, 42.9, 44.7, 42.5, 45.9]
    first_block = pd.DataFrame(
        [{"source": f"s{s}", "block": b + 1, "pct": v + 0.5 * s} for s in range(3) for b, v in enumerate(shares)]
    )
    late, early = late_and_early(first_block, "pct")
    assert (late - early).mean() < -25
    trend = trend_over_depth(first_block, "pct")
    assert trend.to_numpy() == pytest.approx([-9.36] * 3, abs=0.01)  # blocks 2 to 6 only: a third of it
    # against the paper's Swin-T trend (-59.6 points over its blocks 2 to 12), a sign without the size
    assert compare(trend, [0.0] * 3, "less", paired=True, paper=-59.6).word() == "same direction, 6x smaller"
    falling = pd.DataFrame(
        [{"source": f"s{s}", "block": b, "pct": 90 - 8 * b + s} for s in range(3) for b in range(1, 7)]
    )
    trend = trend_over_depth(falling, "pct")
    assert trend.to_numpy() == pytest.approx([-32.0] * 3)  # blocks 2 to 6: 74 down to 42
    assert compare(trend, [0.0] * 3, "less", paired=True).verdict == REPRODUCED


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


def test_the_papers_own_released_model_is_read_by_sign_and_size_without_an_interval():
    one = compare([-30.0], [0.0], "less", paired=True, paper=-36.1, scale=RELEASED)
    assert one.verdict == REPRODUCED and np.isnan(one.low) and "released model" in one.runs
    assert compare([5.0], [0.0], "less", paired=True, paper=-36.1, scale=RELEASED).verdict == NOT_REPRODUCED
    assert compare([-3.0], [0.0], "less", paired=True, paper=-36.1, scale=RELEASED).verdict == SMALLER
    assert compare([-30.0], [0.0], "less", paired=True, paper=-36.1).verdict == INCONCLUSIVE  # a proxy: one seed
