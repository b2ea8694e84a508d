import json
from pathlib import Path

import pytest

from efficientvit.data import synthetic
from efficientvit.data.synthetic import make_synthetic
from efficientvit.errors import UserError

SMALL = dict(classes=4, train=12, val=8, size=64)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes_whatever_the_number_of_workers(tmp_path):
    one = make_synthetic(tmp_path / "a", seed=3, workers=1, **SMALL)
    two = make_synthetic(tmp_path / "b", seed=3, workers=2, **SMALL)
    other = make_synthetic(tmp_path / "c", seed=4, workers=1, **SMALL)
    assert tree_bytes(one) == tree_bytes(two)
    assert len(tree_bytes(one)) == 12 + 8 + 1
    differing = [k for k, v in tree_bytes(other).items() if k.endswith(".png") and v != tree_bytes(one)[k]]
    assert len(differing) == 20


def test_tree_is_an_image_folder_with_balanced_classes_and_a_manifest(tmp_path):
    out = make_synthetic(tmp_path / "d", seed=0, workers=1, **SMALL)
    manifest = json.loads((out / "manifest.json").read_text())
    folders = [c["folder"] for c in manifest["classes"]]
    assert manifest["params"] == {**SMALL, "seed": 0}
    for split, count in (("train", 12), ("val", 8)):
        assert sorted(p.name for p in (out / split).iterdir()) == folders
        assert [len(list((out / split / f).glob("*.png"))) for f in folders] == [count // 4] * 4
    # every class is two different shapes in an order; some classes hold the same shapes in the other order
    orders = [tuple(c["top_to_bottom"]) for c in synthetic.manifest(10, 10, 10, 64, 0)["classes"]]
    assert all(len(set(o)) == 2 for o in orders) and len(set(orders)) == 10
    assert any(o[::-1] in orders for o in orders)


def test_rerun_keeps_the_same_dataset_and_refuses_to_overwrite_another(tmp_path):
    out = make_synthetic(tmp_path / "e", seed=0, workers=1, **SMALL)
    before = tree_bytes(out)
    make_synthetic(out, seed=0, workers=1, **SMALL)
    assert tree_bytes(out) == before
    with pytest.raises(UserError, match="already exists"):
        make_synthetic(out, seed=1, workers=1, **SMALL)


def test_an_interrupted_run_leaves_nothing_behind(tmp_path, monkeypatch):
    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_images", fail)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(tmp_path / "f", seed=0, workers=1, **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [(dict(classes=1), "--classes"), (dict(classes=13), "--classes"),
                                           (dict(train=2), "--train"), (dict(size=16), "--size")])
def test_bad_arguments_are_one_sentence(tmp_path, args, message):
    with pytest.raises(UserError, match=message):
        make_synthetic(tmp_path / "g", workers=1, **{**SMALL, **args})
