import dataclasses
import time

import pytest
import yaml

import efficientvit
from efficientvit.models import ModelSpec
from efficientvit.models.layout import mhsa_proportion
from efficientvit.subnet import SearchBudget, find_subnet, neighbours, save_subnet

TINY_DEIT = dict(img_size=32, patch_size=8, embed_dim=48, num_heads=3, layout="AF" * 4)
BUDGET = SearchBudget(seconds=0.02, rounds=1, steps=3, batch_size=4)


def test_subnet_has_the_proportion_and_is_cached(tmp_path):
    cache = tmp_path / "cache.json"
    result = find_subnet("deit_tiny", 1.25, 0.25, base=TINY_DEIT, budget=dataclasses.replace(BUDGET, cache=str(cache)))
    kwargs = result["kwargs"]
    assert mhsa_proportion(kwargs["layout"]) == 0.25 and len(kwargs["layout"]) == 8
    assert kwargs["embed_dim"] % 6 == 0 and result["mhsa_proportion_actual"] == 0.25
    assert result["met"] == (abs(result["speedup_measured"] / 1.25 - 1) <= 0.05)
    start = time.perf_counter()
    assert (
        find_subnet("deit_tiny", 1.25, 0.25, base=TINY_DEIT, budget=dataclasses.replace(BUDGET, cache=str(cache)))
        == result
    )
    assert time.perf_counter() - start < 1.0  # served from the cache, no timing


def test_neighbours_are_the_next_distinct_widths_on_both_sides():
    base = dict(TINY_DEIT, embed_dim=96)
    widths = [k["embed_dim"] for k in neighbours("deit_tiny", 0.5, 0.75, base, count=2)]
    assert widths == [72, 78, 84, 66, 60]  # the scale's own (96 x 0.75), then up, then down; steps of 2 x heads


def test_swin_subnet_spreads_attention_over_stages_and_builds_from_yaml(tmp_path):
    base = dict(img_size=32, patch_size=2, embed_dim=(12, 24), num_heads=(2, 4), window_size=4, layout="AFAF,AF")
    result = find_subnet("swin_tiny", 1.5, 0.5, base=base, use_cache=False, budget=BUDGET)
    assert mhsa_proportion(result["kwargs"]["layout"]) == 0.5
    path = save_subnet(result, tmp_path / "subnet.yaml")
    model = ModelSpec.from_yaml(path).build()
    assert model.layout == list(result["kwargs"]["layout"])
    assert yaml.safe_load(path.read_text())["model"] == "swin_tiny"


@pytest.mark.parametrize(
    "args,message",
    [
        (("deit_tiny", 1.25, 1.5), "within \\[0, 1\\]"),
        (("deit_tiny", 0.8, 0.5), "at least 1"),
        (("resnet50", 1.25, 0.5), "unknown family"),
    ],
)
def test_bad_requests_are_one_sentence(args, message):
    with pytest.raises(efficientvit.UserError, match=message):
        find_subnet(*args, use_cache=False)


def test_a_missed_target_is_searched_again_wider_and_then_marked(monkeypatch):
    """A subnet that cannot reach the target (timings say every width runs at the full model's speed) is searched
    a second time among more widths, and comes back marked as missed instead of silently kept."""
    calls = []

    def never_faster(family, candidates, base, rounds, seconds, batch_size, device):
        calls.append((len(candidates), rounds))
        return [(1.0, 100.0, 100.0) for _ in candidates]

    monkeypatch.setattr(efficientvit.subnet, "measure_speedups", never_faster)
    result = find_subnet("deit_tiny", 1.25, 0.2, base=TINY_DEIT, use_cache=False, budget=BUDGET)
    assert result["met"] is False and result["speedup_measured"] == 1.0
    assert max(n for n, _ in calls) > 5 and max(r for _, r in calls) == 4 * BUDGET.rounds
    assert result["mhsa_proportion"] == 0.2 and result["mhsa_proportion_actual"] == 0.25  # 2 of 8 layers


def test_a_met_target_needs_no_second_search(monkeypatch):
    calls = []

    def on_target(family, candidates, base, rounds, seconds, batch_size, device):
        calls.append(len(candidates))
        return [(1.26, 126.0, 100.0) for _ in candidates]

    monkeypatch.setattr(efficientvit.subnet, "measure_speedups", on_target)
    assert find_subnet("deit_tiny", 1.25, 0.5, base=TINY_DEIT, use_cache=False, budget=BUDGET)["met"] is True
    assert max(calls) <= 5


def test_the_ffn_width_meets_a_target_that_the_width_steps_jump_over(monkeypatch):
    """A cost model whose width steps jump over the target (24 channels run at 1.0x, 18 at 1.78x):
    the FFN expansion ratio, the fine knob, brings the subnet onto the target; with no FFN layer to tune the miss
    is kept and marked."""

    def cost(kwargs):
        width, layout = kwargs["embed_dim"], kwargs["layout"]
        hidden = int(width * kwargs.get("mlp_ratio", 4.0))
        return sum(4 * width * width if kind == "A" else 2 * width * hidden for kind in layout)

    def by_cost(family, candidates, base, rounds, seconds, batch_size, device):
        full = cost(efficientvit.subnet.subnet_kwargs(family, 0.5, 1.0, base))
        return [(full / cost(k), 100.0 * full / cost(k), 100.0) for k in candidates]

    monkeypatch.setattr(efficientvit.subnet, "measure_speedups", by_cost)
    base = dict(TINY_DEIT, embed_dim=24)  # steps of 6 channels: 18 wide is 1.78x, 24 wide 1.0x
    result = find_subnet("deit_tiny", 1.25, 0.5, base=base, use_cache=False, budget=BUDGET)
    assert result["met"] is True and abs(result["speedup_measured"] / 1.25 - 1) <= 0.05
    assert result["kwargs"]["mlp_ratio"] != 4.0 and result["kwargs"]["embed_dim"] in (18, 24)
    model = ModelSpec("deit_tiny", result["kwargs"]).build()  # the tuned subnet builds with that FFN width
    ffn = next(layer for layer in model.layers if hasattr(layer, "mlp"))
    assert ffn.mlp.fc1.out_features == int(result["kwargs"]["embed_dim"] * result["kwargs"]["mlp_ratio"])
    attention_only = find_subnet("deit_tiny", 1.25, 1.0, base=base, use_cache=False, budget=BUDGET)
    assert attention_only["met"] is False and "mlp_ratio" not in attention_only["kwargs"]
