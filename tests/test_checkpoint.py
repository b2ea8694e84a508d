import json
from pathlib import Path

import pytest
import torch

import efficientvit
from efficientvit.checkpoint import read_checkpoint

from .models.official_reference import random_official_state_dict
from .models.test_efficientvit import MODELS

FIXTURES = Path(__file__).parent / "fixtures"


def official_to_timm(sd):
    """Rename with the official-to-timm key map published for M0 (a fixture, not our own converter)."""
    mapping = json.loads((FIXTURES / "official_m0_to_timm_keys.json").read_text())
    return {mapping[k]: v for k, v in sd.items() if k in mapping}


@pytest.mark.parametrize("name", MODELS)
def test_official_and_timm_layouts_load_strictly_and_agree(tmp_path, name):
    model = efficientvit.create_model(name, img_size=128).eval()
    official = random_official_state_dict(model)
    torch.save({"model": official}, tmp_path / "official.pth")
    assert efficientvit.load_checkpoint(model, tmp_path / "official.pth") == "official"
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        from_official = model(x)
    if name == "efficientvit_m0":
        timm_sd = official_to_timm(official)
    else:  # timm's layout is ours key for key (pinned for M0 against timm's published keys)
        timm_sd = model.state_dict()
    other = efficientvit.create_model(name, img_size=128).eval()
    assert efficientvit.load_checkpoint(other, timm_sd) == "timm"
    with torch.no_grad():
        assert torch.equal(other(x), from_official)


def test_own_checkpoint_rebuilds_its_model(tmp_path):
    model = efficientvit.create_model("efficientvit_m1", num_classes=5, img_size=96, attention="split").eval()
    path = efficientvit.save_checkpoint(tmp_path / "run" / "m1.pth", model, epoch=3)
    assert not list(path.parent.glob("*.tmp"))
    rebuilt = efficientvit.model_from_checkpoint(path).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert read_checkpoint(path)["epoch"] == 3


def test_bias_tables_resize_to_another_input_size():
    small = efficientvit.create_model("efficientvit_m0", img_size=224)  # stage 3 is 4x4: a 16-entry table
    big = efficientvit.create_model("efficientvit_m0", img_size=448)  # stage 3 is 7x7: 49 entries
    with torch.no_grad():
        small.stages[2].blocks[0].mixer.m.attn.attention_biases.copy_(torch.arange(16.0).repeat(4, 1))
    efficientvit.load_checkpoint(big, small.state_dict())
    table = big.stages[2].blocks[0].mixer.m.attn.attention_biases.detach()
    assert table.shape == (4, 49)
    assert table[0, 0] == pytest.approx(0.0, abs=0.5) and table[0, -1] == pytest.approx(15.0, abs=1.0)


def test_checkpoint_of_another_model_names_the_problem(tmp_path):
    path = efficientvit.save_checkpoint(tmp_path / "m1.pth", efficientvit.create_model("efficientvit_m1"))
    with pytest.raises(efficientvit.CheckpointError) as err:
        efficientvit.load_checkpoint(efficientvit.create_model("efficientvit_m0"), path)
    message = str(err.value)
    assert "it holds efficientvit_m1" in message and "mis-shaped" in message and "efficientvit_m0" in message


def test_missing_and_unexpected_keys_are_counted():
    model = efficientvit.create_model("efficientvit_m0")
    sd = model.state_dict()
    sd.pop("head.linear.weight")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(efficientvit.CheckpointError, match=r"1 missing \(head.linear.weight\), 1 unexpected"):
        efficientvit.load_checkpoint(model, sd)


def test_unreadable_files_give_one_sentence(tmp_path):
    model = efficientvit.create_model("efficientvit_m0")
    with pytest.raises(efficientvit.CheckpointError, match="does not exist"):
        efficientvit.load_checkpoint(model, tmp_path / "nope.pth")
    good = efficientvit.save_checkpoint(tmp_path / "good.pth", model)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(efficientvit.CheckpointError, match="corrupt, truncated"):
        efficientvit.load_checkpoint(model, truncated)
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(efficientvit.CheckpointError, match="corrupt, truncated"):
        efficientvit.load_checkpoint(model, tmp_path / "text.pth")
