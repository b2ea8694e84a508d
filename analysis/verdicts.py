"""How the report decides whether a finding of the paper is reproduced here, from repeated runs (seeds), never one.

Two rules, written down so that a reader can check them:

- `compare(a, b, expect)`: the paper says `a` is larger (or smaller) than `b`. With at least two runs on each
  side, the 95% Welch t-interval of mean(a) - mean(b) (with `paired`, when a[i] and b[i] come from the same run:
  the t-interval of the mean of a[i] - b[i]) decides: entirely on the expected side, the finding is
  **reproduced**; entirely on the other side, it is **not reproduced** at this scale (a statement about our small
  models, not about the paper's); straddling zero, **inconclusive**. Fewer than two runs on a side: inconclusive
  (one run says nothing about the spread).
- `best_in_range(curve, low, high)`: the paper says the best x (e.g. the MHSA proportion) lies in [low, high].
  Each point's runs are resampled with replacement (2,000 bootstrap draws, fixed seed) and the best x taken in
  each draw: in at least 95% of draws inside the range, the finding is **reproduced**; in at most 5%, **not
  reproduced**; otherwise **inconclusive**. Every point needs at least two runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
CONFIDENCE = 0.95
DRAWS = 2000


@dataclass(frozen=True)
class Verdict:
    verdict: str  # reproduced, not reproduced, inconclusive
    effect: float  # mean(a) - mean(b), or the share of draws whose best x lies in the range
    low: float  # the interval around the effect (nan where there is none)
    high: float
    runs: str  # how many runs decided it, e.g. "3 vs 3 seeds"

    def evidence(self, unit: str = "") -> str:
        """The effect, its interval and the runs behind it."""
        interval = "" if np.isnan(self.low) else f" [{self.low:.1f}, {self.high:.1f}]{unit}"
        return f"{self.effect:+.1f}{unit}{interval}, {self.runs}"

    def word(self, where: str = "at proxy scale") -> str:
        """The verdict; `where` says what "not reproduced" is about (our proxies, this CPU)."""
        return f"{self.verdict} {where}" if self.verdict == NOT_REPRODUCED else self.verdict

    def describe(self, unit: str = "", where: str = "at proxy scale") -> str:
        """The effect, its interval, the runs and the verdict in words."""
        return f"{self.evidence(unit)}: **{self.word(where)}**"


@dataclass(frozen=True)
class Finding:
    """One of the paper's findings as tested here, a row of the report's table at a glance (each figure module's
    `glance`): the evidence and verdict at the longest training budget."""

    figure: str  # Fig. 2, Fig. 3, ...
    claim: str  # the paper's finding, in its words
    tested_on: str  # the models and measurement it was tested on here
    evidence: str  # the effect, its interval and the runs
    verdict: str  # reproduced, not reproduced (at proxy scale / on this CPU), inconclusive
    control: str = "-"  # the same comparison on the control measurement, where there is one
    paper: str = "-"  # the paper's value of the same effect


def compare(a, b, expect: str = "greater", paired: bool = False, unit: str = "runs") -> Verdict:
    """Does `a` exceed `b` (expect="greater") or fall below it ("less")? The 95% t-interval of the difference:
    Welch's for independent runs, the paired one when a[i] and b[i] were measured on the same run. `unit` names
    what a pair or a run is in the verdict's text."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    runs = f"{len(a)} paired {unit}" if paired else f"{len(a)} vs {len(b)} {unit}"
    effect = a.mean() - b.mean() if len(a) and len(b) else float("nan")
    if len(a) < 2 or len(b) < 2:
        return Verdict(INCONCLUSIVE, effect, float("nan"), float("nan"), runs)
    if paired:
        d = a - b
        se, dof = d.std(ddof=1) / np.sqrt(len(d)), len(d) - 1
    else:
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = np.sqrt(va + vb)
        dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else 1
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, dof) * se  # 0 when the runs agree exactly
    low, high = effect - half, effect + half
    sign = 1 if expect == "greater" else -1
    if sign * low > 0 and sign * high > 0:
        verdict = REPRODUCED
    elif sign * low < 0 and sign * high < 0:
        verdict = NOT_REPRODUCED
    else:
        verdict = INCONCLUSIVE
    return Verdict(verdict, effect, low, high, runs)


def best_in_range(curve: pd.DataFrame, x: str, y: str, low: float, high: float, seed: int = 0) -> Verdict:
    """`curve` has one row per run: the position `x` and the outcome `y`. Bootstrap the runs of every point and
    count the draws whose best point lies in [low, high]."""
    groups = [group[y].to_numpy(float) for _, group in curve.groupby(x)]
    xs = np.array(sorted(curve[x].unique()))
    fewest = min(len(g) for g in groups)
    runs = f"{len(xs)} points x at least {fewest} runs"
    observed = xs[np.argmax([g.mean() for g in groups])]
    inside_observed = float(low <= observed <= high)
    if fewest < 2:
        return Verdict(INCONCLUSIVE, inside_observed, float("nan"), float("nan"), runs)
    rng = np.random.default_rng(seed)
    means = np.stack([rng.choice(g, size=(DRAWS, len(g))).mean(axis=1) for g in groups], axis=1)
    best = xs[means.argmax(axis=1)]
    share = float(((best >= low) & (best <= high)).mean())
    verdict = REPRODUCED if share >= CONFIDENCE else NOT_REPRODUCED if share <= 1 - CONFIDENCE else INCONCLUSIVE
    return Verdict(verdict, share, float("nan"), float("nan"), runs)


def late_and_early(frame: pd.DataFrame, value: str, run: str = "source") -> tuple[pd.Series, pd.Series]:
    """Per run, the mean of `value` over its last third of blocks and over its first third (a third rounded down,
    at least one block): the two sides of the paper's "more so in the late blocks", compared paired within each
    run."""
    late, early = {}, {}
    for name, group in frame.groupby(run):
        blocks = sorted(group["block"].unique())
        third = max(1, len(blocks) // 3)
        late[name] = group.loc[group["block"].isin(blocks[-third:]), value].mean()
        early[name] = group.loc[group["block"].isin(blocks[:third]), value].mean()
    return pd.Series(late), pd.Series(early)


def as_verdict(row) -> Verdict:
    """A verdict back from a row of a findings table (columns verdict, effect, low, high, runs)."""
    return Verdict(row.verdict, row.effect, row.low, row.high, row.runs)


def movement(first: Verdict, last: Verdict, paper: float) -> str:
    """How an effect moved between two training budgets, in words: toward or away from the paper's value when the
    change exceeds the half-width of the later interval, otherwise that it stayed inside it."""
    change = f"({first.effect:+.1f} -> {last.effect:+.1f})"
    if np.isnan(last.low):
        return f"went {change} (no interval from a single run)"
    if abs(last.effect - first.effect) <= (last.high - last.low) / 2:
        return f"stayed inside its 95% interval {change}"
    toward = abs(last.effect - paper) < abs(first.effect - paper)
    return f"moved {'toward' if toward else 'away from'} the paper's {change}"
