from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import mhsa_sweep
from efficientvit import train as train_module
from efficientvit.data.synthetic import make_synthetic
from tests.helpers import top1_of_checkpoint


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    data = make_synthetic(tmp / "data", classes=4, train=16, val=8, size=64, seed=0)
    sweep = {
        "runs": str(tmp / "runs"),
        "families": {"deit_tiny": dict(img_size=64, patch_size=16, embed_dim=24, num_heads=3, layout="AFAF")},
        "subnet": dict(seconds=0.01, rounds=1, steps=2, batch_size=2, cache=str(tmp / "cache.json")),
        "train": dict(
            data=str(data),
            img_size=64,
            epochs=1,
            batch_size=8,
            workers=0,
            warmup_epochs=0,
            mixup=0.0,
            cutmix=0.0,
            auto_augment=None,
            reprob=0.0,
            repeated_aug=False,
            ema_decay=None,
        ),
    }
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


ARGS = ["--families", "deit_tiny", "--speedups", "1.25", "1.5", "--proportions", "0.25", "0.75"]


def test_grid_runs_every_point_and_resumes_after_a_crash(config, tmp_path, monkeypatch):
    out = tmp_path / "sweep.csv"
    real = mhsa_sweep.run_point
    calls = []

    def crash_on_third(point, sweep, device):
        calls.append(point)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed in the middle of the sweep
        return real(point, sweep, device)

    monkeypatch.setattr(mhsa_sweep, "run_point", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        mhsa_sweep.main([*ARGS, "--config", str(config), "--out", str(out)])
    assert len(pd.read_csv(out)) == 2
    monkeypatch.setattr(mhsa_sweep, "run_point", real)
    assert mhsa_sweep.main([*ARGS, "--config", str(config), "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == 4 and not frame.duplicated(subset=mhsa_sweep.KEY).any()
    assert set(frame["mhsa_proportion"]) == {0.25, 0.75} and set(frame["speedup_target"]) == {1.25, 1.5}
    assert list(frame.columns) == mhsa_sweep.COLUMNS
    assert (frame["epochs"] == 1).all()
    data = yaml.safe_load(config.read_text())["train"]["data"]
    for row in frame.itertuples():  # each point's top-1 is its trained subnet's, evaluated independently
        assert row.top1 == pytest.approx(top1_of_checkpoint(row.checkpoint, data, 64))
    assert all(layout.count("A") == round(p * 4) for layout, p in zip(frame["layout"], frame["mhsa_proportion"]))


def test_a_sweep_killed_inside_a_training_resumes_it_from_its_last_epoch(config, tmp_path, monkeypatch):
    """Killed in the second epoch of the second point: the rerun keeps the first point's row, trains only the lost
    epoch again (from the first epoch's checkpoint) and ends with one row per point."""
    sweep = yaml.safe_load(config.read_text())
    sweep["train"]["epochs"], sweep["runs"] = 2, str(tmp_path / "runs")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "sweep.csv"
    args = ["--families", "deit_tiny", "--speedups", "1.25", "--proportions", "0.25", "0.75"]
    args += ["--config", str(path), "--out", str(out)]
    real, epochs = train_module.train_one_epoch, []

    def counted(*args, **kwargs):
        epochs.append(1)
        if len(epochs) == 4 and not resumed:
            raise KeyboardInterrupt  # the second point's second epoch
        return real(*args, **kwargs)

    def subnet(family, speedup, proportion, base, **_):  # the search is not what this test is about
        layout = "AFFF" if proportion < 0.5 else "AAAF"
        kwargs = {**base, "layout": layout}
        return dict(kwargs=kwargs, speedup_measured=speedup, met=True, mhsa_proportion_actual=0.25, throughput=1.0)

    resumed = False
    monkeypatch.setattr(mhsa_sweep, "find_subnet", subnet)
    monkeypatch.setattr(train_module, "train_one_epoch", counted)
    with pytest.raises(KeyboardInterrupt):
        mhsa_sweep.main(args)
    assert len(pd.read_csv(out)) == 1
    resumed, epochs[:] = True, []
    assert mhsa_sweep.main(args) == 0
    assert len(epochs) == 1  # only the interrupted epoch ran again
    frame = pd.read_csv(out)
    assert len(frame) == 2 and not frame.duplicated(subset=mhsa_sweep.KEY).any() and (frame["epochs"] == 2).all()
    for row in frame.itertuples():
        assert list(pd.read_csv(Path(row.checkpoint).parent / "metrics.csv")["epoch"]) == [1, 2]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--proportions", "1.5"], "within \\[0, 1\\]"),
        (["--speedups", "0.5"], "at least 1"),
        (["--families", "resnet"], "unknown family"),
    ],
)
def test_bad_grids_are_one_sentence(config, args, message, capsys):
    assert mhsa_sweep.main([*args, "--config", str(config)]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_config_without_data_path(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("train: {epochs: 1}\n")
    assert mhsa_sweep.main(["--config", str(path)]) == 2
    assert "train.data" in capsys.readouterr().err
