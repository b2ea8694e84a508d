"""How the report decides whether a finding of the paper is reproduced here, from repeated runs (seeds), never one.

The rules, written down so that a reader can check them:

- `compare(a, b, expect)`: the paper says `a` is larger (or smaller) than `b`. With at least two runs on each
  side, the 95% Welch t-interval of mean(a) - mean(b) (with `paired`, when a[i] and b[i] come from the same run:
  the t-interval of the mean of a[i] - b[i]) decides: entirely on the expected side, the finding is
  **reproduced**, unless the paper's own value of the effect is given and ours is under a third of it: then
  **same direction, Nx smaller** (N: the paper's effect over ours), a sign without the size; entirely on the
  other side, it is **not reproduced** at this scale (a statement about our small models, not about the paper's);
  straddling zero, **inconclusive**. Fewer than two runs on a side: inconclusive (one run says nothing about the
  spread), except on the paper's own released weights (`scale` RELEASED): there one model is the paper's model,
  no seed varies, and its paired effect is read by its sign and the size rule alone (no interval).
- `best_point(curve, low, high)`: the paper says the best x (e.g. the MHSA proportion) lies in [low, high]. The
  best point (highest mean) is compared with each neighbour, paired over the seeds both trained (the 95%
  t-interval of the differences, which with three seeds is as wide as three seeds are): it beats every
  neighbour, and lies inside the range: **reproduced**; beats them outside it: **not reproduced**; ties with a
  neighbour: **inconclusive** (the curve does not single out a best point).
- `trend_over_depth(frame)`: "more so in the last blocks" as a trend: per run, the least-squares slope of the
  value against the block's position, fitted on every block after the first (so that a first block unlike the
  rest cannot make a trend alone), as the fitted change from the second block to the last; `compare`d with 0.
- A verdict about proxies carries its caveat in its own words: "on unconverged proxies" when a model read was still
  learning there: below the level at which this project calls a proxy learned (88% on Fashion-MNIST) and not at
  its plateau (it had gained 0.3 points of top-1 or more over the two epochs before).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

REPRODUCED, SMALLER, NOT_REPRODUCED, INCONCLUSIVE = (
    "reproduced",
    "same direction, smaller",
    "not reproduced",
    "inconclusive",
)
CONFIDENCE = 0.95
SIZE = 1 / 3  # an effect on the paper's side under this share of the paper's is "same direction, Nx smaller"
UNCONVERGED = "on unconverged proxies"
PROXY_SCALE = "at proxy scale"
UNCLAIMED = "not a finding of the paper for this model"  # the paper's own curve shows no such effect
RELEASED = ""  # the scale of the paper's own released weights: like for like, nothing to qualify


@dataclass(frozen=True)
class Verdict:
    verdict: str  # reproduced, same direction (smaller), not reproduced, inconclusive
    effect: float  # mean(a) - mean(b), or a best point's margin over its closest neighbour
    low: float  # the interval around the effect (nan where there is none)
    high: float
    runs: str  # how many runs decided it, e.g. "3 vs 3 seeds"
    paper: float | None = None  # the paper's value of the same effect, the size rule's yardstick
    caveat: str = ""  # what the verdict is about, said in its cell: UNCONVERGED
    scale: str = PROXY_SCALE  # what "not reproduced" is about: our proxies; "" for the paper's own released models

    def evidence(self, unit: str = "") -> str:
        """The effect, its interval and the runs behind it."""
        interval = "" if np.isnan(self.low) else f" [{self.low:.1f}, {self.high:.1f}]{unit}"
        return f"{self.effect:+.1f}{unit}{interval}, {self.runs}"

    def word(self, where: str | None = None) -> str:
        """The verdict in words; `where` says what "not reproduced" is about (default its `scale`; this CPU)."""
        where = self.scale if where is None else where
        if self.verdict == NOT_REPRODUCED:
            text = f"{self.verdict} {where}".strip()
        elif self.verdict == SMALLER:
            text = f"same direction, {abs(self.paper / self.effect):.0f}x smaller"
        elif self.verdict == UNCLAIMED:
            text = f"{UNCLAIMED} (its own curve: {self.paper:+.1f})"
        else:
            text = self.verdict
        return f"{text}, {self.caveat}" if self.caveat else text

    def describe(self, unit: str = "", where: str | None = None) -> str:
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


def compare(
    a,
    b,
    expect: str = "greater",
    paired: bool = False,
    unit: str = "runs",
    *,
    paper: float | None = None,
    caveat: str = "",
    scale: str = PROXY_SCALE,
) -> Verdict:
    """Does `a` exceed `b` (expect="greater") or fall below it ("less")? The 95% t-interval of the difference:
    Welch's for independent runs, the paired one when a[i] and b[i] were measured on the same run. `unit` names
    what a pair or a run is in the verdict's text; `paper`, the paper's value of the effect (the size rule);
    `caveat`, what the verdict's cell must say about the models it read; `scale`, what "not reproduced" is about."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    runs = f"{len(a)} paired {unit}" if paired else f"{len(a)} vs {len(b)} {unit}"
    effect = a.mean() - b.mean() if len(a) and len(b) else float("nan")
    if scale == RELEASED and paired and len(a) == 1:  # the paper's own model: its effect, read by sign and size
        runs = "the released model (no seeds to vary: no interval)"
        low = high = float(effect)
    elif len(a) < 2 or len(b) < 2:
        return Verdict(INCONCLUSIVE, effect, float("nan"), float("nan"), runs, paper, caveat, scale)
    else:
        low, high = interval(a, b, paired, effect)
    sign = 1 if expect == "greater" else -1
    if sign * low > 0 and sign * high > 0:
        verdict = REPRODUCED
        if paper is not None and sign * paper > 0 and abs(effect) < SIZE * abs(paper):
            verdict = SMALLER
    elif sign * low < 0 and sign * high < 0:
        verdict = NOT_REPRODUCED
    else:
        verdict = INCONCLUSIVE
    if low == high == effect and len(a) == 1:
        low = high = float("nan")  # the released model's reading has no interval to print
    return Verdict(verdict, effect, low, high, runs, paper, caveat, scale)


def interval(a: np.ndarray, b: np.ndarray, paired: bool, effect: float) -> tuple[float, float]:
    """The 95% t-interval of the difference: the paired one, or Welch's."""
    if paired:
        d = a - b
        se, dof = d.std(ddof=1) / np.sqrt(len(d)), len(d) - 1
    else:
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = np.sqrt(va + vb)
        dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else 1
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, dof) * se  # 0 when the runs agree exactly
    return effect - half, effect + half


@dataclass(frozen=True)
class BestPoint:
    """Where a curve peaks and whether the peak stands clear of its neighbours (`best_point`)."""

    best: float  # the x with the highest mean
    margins: dict[float, Verdict]  # per neighbour x: the best point minus it, paired over seeds
    verdict: Verdict  # the finding's: the tightest margin, and the verdict of the rule

    def evidence(self) -> str:
        parts = [f"{x:g}: {m.effect:+.1f} [{m.low:.1f}, {m.high:.1f}]" for x, m in self.margins.items()]
        return f"best at {self.best:g}, over its neighbours {'; '.join(parts) or 'none'} ({self.verdict.runs})"


def best_point(
    curve: pd.DataFrame, x: str, y: str, low: float, high: float, *, pair: str = "seed", caveat: str = ""
) -> BestPoint:
    """`curve` has one row per run: the position `x`, the outcome `y` and the run's `pair` key (its seed). The
    best point against each neighbour, paired over the seeds both ran: a best point that beats both, inside
    [low, high], reproduces the finding; outside it, it does not; one that ties with a neighbour leaves it open."""
    means = curve.groupby(x)[y].mean().sort_index()
    xs = list(means.index)
    best = float(means.idxmax())
    at = xs.index(best)
    margins = {}
    for neighbour in xs[max(0, at - 1) : at] + xs[at + 1 : at + 2]:
        a = curve[curve[x] == best].set_index(pair)[y]
        b = curve[curve[x] == neighbour].set_index(pair)[y]
        common = sorted(set(a.index) & set(b.index))
        margins[float(neighbour)] = compare(a[common], b[common], "greater", paired=True, unit="seeds")
    if not margins:
        return BestPoint(best, {}, Verdict(INCONCLUSIVE, float("nan"), float("nan"), float("nan"), "one point"))
    tightest = min(margins.values(), key=lambda m: m.low if not np.isnan(m.low) else -np.inf)
    clear = all(m.verdict == REPRODUCED for m in margins.values())
    verdict = (REPRODUCED if low <= best <= high else NOT_REPRODUCED) if clear else INCONCLUSIVE
    fewest = min(len(curve[curve[x] == value]) for value in xs)
    runs = f"{len(xs)} points, at least {fewest} seeds each"
    return BestPoint(best, margins, Verdict(verdict, tightest.effect, tightest.low, tightest.high, runs, caveat=caveat))


def trend_over_depth(frame: pd.DataFrame, value: str, run: str = "source") -> pd.Series:
    """Per run, the change of `value` from the second block to the last on the least-squares line through every
    block after the first (blocks by position: 0 for the second, 1 for the last). A first block unlike the others
    moves no such line; a steady fall over depth does (NaN with fewer than three blocks)."""
    trends = {}
    for name, group in frame.groupby(run):
        blocks = sorted(group["block"].unique())[1:]
        if len(blocks) < 2:
            trends[name] = float("nan")
            continue
        values = group[group["block"].isin(blocks)].groupby("block")[value].mean()
        position = (np.arange(len(values)) / (len(values) - 1)).astype(float)
        trends[name] = float(np.polyfit(position, values.to_numpy(float), 1)[0])
    return pd.Series(trends)


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
    """A verdict back from a row of a findings table (columns verdict, effect, low, high, runs; paper)."""
    paper = getattr(row, "paper", None)
    return Verdict(row.verdict, row.effect, row.low, row.high, row.runs, None if pd.isna(paper) else paper)


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
