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
    assert manifest["params"] == {**SMALL, "seed": 0, "style": "textured"}
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


def test_clean_style_has_the_same_classes_on_a_plain_background(tmp_path):
    import numpy as np
    from PIL import Image

    clean = make_synthetic(tmp_path / "clean", seed=0, workers=1, style="clean", **SMALL)
    textured = make_synthetic(tmp_path / "textured", seed=0, workers=1, **SMALL)
    assert sorted(p.name for p in (clean / "train").iterdir()) == sorted(p.name for p in (textured / "train").iterdir())
    for root, plain in ((clean, True), (textured, False)):
        for path in sorted((root / "train").rglob("*.png")):
            pixels = np.asarray(Image.open(path)).reshape(-1, 3)
            corners = np.asarray(Image.open(path))[[0, 0, -1, -1], [0, -1, 0, -1]]
            # plain: one background colour at every corner, and most pixels exactly that colour
            is_plain = (corners == corners[0]).all() and (pixels == corners[0]).all(axis=1).mean() > 0.5
            assert is_plain == plain, path


def test_a_dataset_written_before_styles_is_the_textured_one(tmp_path):
    out = make_synthetic(tmp_path / "old", seed=0, workers=1, **SMALL)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["params"]["style"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert make_synthetic(out, seed=0, workers=1, **SMALL) == out
    with pytest.raises(UserError, match="already exists"):
        make_synthetic(out, seed=0, workers=1, style="clean", **SMALL)


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(classes=1), "--classes"),
        (dict(classes=13), "--classes"),
        (dict(train=2), "--train"),
        (dict(size=16), "--size"),
        (dict(style="noisy"), "--style"),
    ],
)
def test_bad_arguments_are_one_sentence(tmp_path, args, message):
    with pytest.raises(UserError, match=message):
        make_synthetic(tmp_path / "g", workers=1, **{**SMALL, **args})
