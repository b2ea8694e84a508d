"""Fig. 5's report on tables whose answer is known: which control brings the reading closer to the paper's, which
criterion predicts the harm of a removal, whether the two oracles agree about Q/K against FFN."""

import pandas as pd
import pytest

from analysis import pruning_oracle
from analysis.figures import fig5
from analysis.verdicts import INCONCLUSIVE, REPRODUCED

PAPER = fig5.paper_effects()["qk_minus_ffn"]  # -36.1: Swin-T cuts Q/K more than FFN


def test_closer_means_nearer_the_papers_value_not_merely_on_its_side():
    base = [60.0, 62.0, 64.0]
    assert fig5.closer([20.0, 23.0, 25.0], base, PAPER).verdict == REPRODUCED  # 40 points nearer
    overshoot = [2 * PAPER - 62.0 + d for d in (-1.0, 0.0, 1.5)]  # as far beyond the paper as the base is above it
    assert fig5.closer(overshoot, base, PAPER).verdict == INCONCLUSIVE


def control_rows(control: str, effects: list[float], ratio: float = 0.4) -> list[dict]:
    return [
        {"proxy": "deit_tiny_full", "control": control, "criterion": "molchanov", "run": f"seed{i}", "ratio": ratio}
        | {"qk_minus_ffn": e, "drop": 1.0, "qk_first_cut": 0.5, "v_minus_qk": 0.0}
        for i, e in enumerate(effects)
    ]


def test_the_explanation_names_the_control_that_brings_the_reading_closer_and_skips_the_bare_depth_rows():
    effects = pd.DataFrame(
        control_rows("one-shot", [60.0, 62.0, 64.0])
        + control_rows("per-flop", [20.0, 24.0, 25.0])  # closer to -36 by about 39 points
        + control_rows("per-head", [61.0, 61.5, 64.5])  # no change
        + control_rows("depth", [-30.0, -31.0, -32.0], ratio=0.8)  # the deepest ratio: arithmetic, not read
    )
    pruning = pd.DataFrame(
        {"run": ["seed0"], "proxy": ["deit_tiny_full"], "budget": [1], "block": [1]}
        | {f"{k}_kept_fraction": [1.0] for k in fig5.KINDS}
    )
    lines = fig5.explanation(effects, {"pruning": pruning}, out=None)
    lead = lines[1]
    assert "per-flop (molchanov, deit_tiny_full) by 39" in lead and "per-head" not in lead
    assert "depth" not in " ".join(lines)


def oracle_rows(run: str, unit: str, reliability: float, rhos: dict[str, float]) -> list[dict]:
    common = {"proxy": "swin_tiny_full", "run": run, "unit": unit, "kind": pruning_oracle.POOLED, "oracle": "signed"}
    return [common | {"criterion": "split-half reliability", "rho": reliability}] + [
        common | {"criterion": name, "rho": rho} for name, rho in rhos.items()
    ]


def test_the_best_predictor_is_read_on_the_unit_the_oracle_is_reliable_on():
    rows = []
    for run, shift in (("seed0", 0.0), ("seed1", 0.1)):
        rows += oracle_rows(run, "filter", 0.3, {"molchanov": 0.9, "output-signed": 0.1})  # unreliable: not read
        rows += oracle_rows(run, "group", 0.9, {"molchanov": 0.4 + shift, "output-signed": 0.7, "output": float("nan")})
    (line,) = fig5.best_predictors(pd.DataFrame(rows))
    assert line.startswith("swin_tiny_full (groups): output-signed (0.70), then molchanov (0.45)")
    unreliable = pd.DataFrame(oracle_rows("seed0", "group", 0.2, {"molchanov": 0.9}))
    assert "neither unit reaches" in fig5.best_predictors(unreliable)[0]


def test_the_oracles_are_said_to_disagree_when_one_cuts_q_k_and_the_other_keeps_them():
    cuts = pd.DataFrame(
        [
            {"proxy": "deit_tiny_full", "run": run, "ranking": f"oracle, {oracle}", "kind": kind, "kept_fraction": kept}
            for run in ("seed0", "seed1")
            for oracle, fractions in (("signed", {"qk": 0.2, "ffn": 0.8}), ("squared", {"qk": 1.0, "ffn": 0.5}))
            for kind, kept in fractions.items()
        ]
    )
    (line,) = fig5.oracles_on_qk_and_ffn(cuts)
    assert "deit_tiny_full: signed -60, squared +50 points (disagree)" in line
    assert fig5.oracles_on_qk_and_ffn(cuts[cuts["ranking"] == "criterion: molchanov"]) == []


@pytest.mark.parametrize("group", [0.1, 0.25])
def test_the_oracle_text_states_the_units_it_measured(tmp_path, group):
    folder = tmp_path / fig5.ORACLE_FOLDER
    folder.mkdir()
    (folder / "run_units.json").write_text(f'{{"arguments": {{"group": {group}, "filters": 4, "images": 500}}}}')
    oracle = pd.DataFrame(oracle_rows("seed0", "group", 0.9, {"molchanov": 0.5})).assign(budget=30)
    text = " ".join(fig5.oracle_lines({"oracle": oracle, "cuts": None}, tmp_path))
    assert f"groups of {group:.0%} of its filters" in text and "on 500 held-out images" in text
    assert "(4 drawn per kind and block)" in text


def test_the_cheapest_cut_is_named_beside_the_signed_oracles_own():
    rows = [
        {"proxy": "deit_tiny_full", "run": run, "ranking": ranking, "kind": kind, "kept_fraction": 0.5}
        | {"top1_drop": drop, "joint_loss_change": 0.1, "added_loss_change": -0.2}
        for run in ("seed0", "seed1")
        for ranking, drop in (
            ("criterion: molchanov", 0.5),
            ("criterion: output-signed", 28.0),
            ("oracle, signed", 30.0),
        )
        for kind in fig5.KINDS
    ]
    (_, line) = fig5.cheapest_cuts(pd.DataFrame(rows))
    assert "deit_tiny_full: molchanov 0.5, output-signed 28.0; the signed oracle's own cut 30.0" in line
