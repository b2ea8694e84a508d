"""Pretrained weights by name (efficientvit/hub.py): the model, the weights and the evaluation transform a name
promises, from caches built here (tests never download: conftest keeps the hub offline and its caches temporary),
and every kind of bad input, including downloads cut short by a local server."""

import http.server
import json
import threading
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import efficientvit
from efficientvit import hub
from efficientvit.checkpoint import checkpoint_label, describe_mismatch
from efficientvit.data.sources import open_split
from efficientvit.errors import UserError
from efficientvit.models.registry import family_checkpoint_filter
from efficientvit.train import build_model, build_teacher
from efficientvit.train_config import make_config

from .helpers import class_folders, pretrained_in_hub_cache
from .models.official_reference import offset_index
from .models.test_against_timm import realistic_timm_model

FIXTURES = Path(__file__).parent / "fixtures"
ONE_PER_FAMILY = [
    "timm/deit_tiny_patch16_224.fb_in1k",
    "timm/swin_tiny_patch4_window7_224.ms_in1k",
    "timm/efficientvit_m0.r224_in1k",
]


def test_the_name_table_covers_every_registered_model():
    assert set(hub.TIMM_ARCHS.values()) == set(efficientvit.list_models())
    assert {hub.resolve(name).spec.name for name in hub.names()} == set(efficientvit.list_models())


def skip_initialisation(monkeypatch):
    """Models then build in a fraction of the time, their values whatever memory held: for models whose every
    weight is then loaded, or whose layout alone is checked."""
    for init in ("trunc_normal_", "kaiming_uniform_", "uniform_", "normal_"):
        monkeypatch.setattr(torch.nn.init, init, lambda tensor, *args, **kwargs: tensor)


def test_every_name_builds_the_model_timm_publishes_its_weights_for(monkeypatch):
    """For every name: our model at the weights' classes and input size takes timm's state dict of that
    architecture strictly (same keys and shapes after our filter), and carries timm's pretrained config."""
    skip_initialisation(monkeypatch)
    for name in hub.names():
        pretrained = hub.resolve(name)
        timm_name = name.removeprefix("timm/") if name.startswith("timm/") else f"{pretrained.spec.name}.r224_in1k"
        published = timm.models.get_pretrained_cfg(timm_name).to_dict()
        assert pretrained.spec.kwargs == {
            "num_classes": published["num_classes"],
            "img_size": published["input_size"][-1],
        }
        for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes"):
            assert pretrained.pretrained_cfg[key] == published[key], (name, key)
        with torch.device("meta"):
            theirs = timm.create_model(published["architecture"], num_classes=published["num_classes"])
        ours = pretrained.spec.build()
        state = family_checkpoint_filter(ours.spec.name)(theirs.state_dict(), "timm", ours)
        assert describe_mismatch(state, ours) is None, name


@pytest.mark.parametrize("spelling", ["timm/{}", "{}", "hf-hub:timm/{}", "ARCH"])
def test_every_spelling_of_a_timm_name_means_the_same_weights(spelling):
    name = "deit_tiny_patch16_224.fb_in1k"
    written = "deit_tiny_patch16_224" if spelling == "ARCH" else spelling.format(name)  # timm's default tag
    assert hub.is_name(written)
    assert hub.resolve(written).name == "timm/deit_tiny_patch16_224.fb_in1k"


def test_files_are_not_names(tmp_path):
    existing = tmp_path / "efficientvit_m4"
    existing.write_bytes(b"")
    for path in (str(existing), "runs/x/checkpoint.pth", "my_deit.pth", "model.safetensors", existing):
        assert not hub.is_name(path), path


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_a_name_builds_its_model_with_its_weights_and_computes_timms_logits(name, monkeypatch):
    """The name alone builds the model; its logits equal those of timm's own model given the same file through
    timm's local-file overlay."""
    _, weights = pretrained_in_hub_cache(name)
    skip_initialisation(monkeypatch)  # both models load every weight strictly
    ours = efficientvit.model_from_checkpoint(name).eval()
    timm_name = name.removeprefix("timm/")
    theirs = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights))).eval()
    assert ours.spec.name == hub.TIMM_ARCHS[timm_name.split(".")[0]]
    assert ours.pretrained_cfg == timm.models.get_pretrained_cfg(timm_name).to_dict()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def test_the_official_release_by_name_computes_timms_logits(tmp_path):
    """cream/efficientvit_m0: a file in the official layout (named with the published official-to-timm key map,
    not our converter) in torch.hub's cache, against timm's port on the same weights."""
    reference = realistic_timm_model("efficientvit_m0").eval()
    to_timm = json.loads((FIXTURES / "official_m0_to_timm_keys.json").read_text())
    official = {key: reference.state_dict()[timm_key] for key, timm_key in to_timm.items()}
    for key, table in list(official.items()):
        if key.endswith("attention_biases"):
            official[key.replace("attention_biases", "attention_bias_idxs")] = offset_index(int(table.shape[1] ** 0.5))
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "efficientvit_m0.pth"
    cached.parent.mkdir(parents=True)
    torch.save({"model": official}, cached)
    ours = efficientvit.model_from_checkpoint("cream/efficientvit_m0").eval()
    assert (
        ours.pretrained_cfg["crop_pct"] == 0.875
        and checkpoint_label("cream/efficientvit_m0") == "efficientvit_m0.cream"
    )
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "resize"), [("timm/deit_tiny_patch16_224.fb_in1k", 248), ("cream/efficientvit_m4", 256)]
)
def test_a_name_brings_the_transform_published_with_its_weights(tmp_path, name, resize):
    """DeiT-T: resize 248 (crop 0.9), EfficientViT-M4: 256 (crop 0.875), centre crop 224, bicubic, ImageNet
    statistics, as timm builds them for its own model; the split folder itself works as DATA."""
    pretrained = hub.resolve(name)
    data = tmp_path
    class_folders(data / "val", 2)
    for root in (data, data / "val"):
        split = open_split(str(root), "val", 224, pretrained_cfg=pretrained.pretrained_cfg)
        steps = split.transform.transforms
        assert steps[0].size == resize and steps[0].interpolation.value == "bicubic"
        assert tuple(steps[1].size) == (224, 224)
        timm_model = timm.create_model(pretrained.pretrained_cfg["architecture"])
        timms = create_transform(**resolve_data_config({}, model=timm_model))
        image = Image.open(data / "val" / "n00000001" / "a.png").convert("RGB")
        assert torch.equal(split[1][0], timms(image))


def test_a_local_checkpoint_keeps_todays_transform(tmp_path):
    class_folders(tmp_path / "val", 2)
    split = open_split(str(tmp_path), "val", 224)
    assert split.transform.transforms[0].size == [256]  # 224 / (224 / 256), our eval_transform


def test_an_unknown_name_is_one_sentence_with_the_nearest_names():
    with pytest.raises(UserError, match=r"nearest pretrained names are timm/deit_tiny_patch16_224\.fb_in1k"):
        efficientvit.model_from_checkpoint("deit_tiny")
    with pytest.raises(UserError, match="timm's resnet50 has no counterpart among our models"):
        hub.resolve("resnet50.a1_in1k")
    with pytest.raises(UserError, match="only timm's own Hugging Face repositories"):
        hub.resolve("hf-hub:someone/deit_tiny_patch16_224.fb_in1k")


def test_offline_without_the_weights_says_which_file_to_put_where():
    cache = huggingface_hub.constants.HF_HUB_CACHE
    with pytest.raises(UserError) as absent:
        efficientvit.model_from_checkpoint("timm/swin_tiny_patch4_window7_224.ms_in1k")
    text = str(absent.value)
    assert (
        "HF_HUB_OFFLINE=1" in text and "hf download timm/swin_tiny_patch4_window7_224.ms_in1k model.safetensors" in text
    )
    assert f"models--timm--swin_tiny_patch4_window7_224.ms_in1k into {cache}" in text
    assert "--checkpoint PATH of model.safetensors with --model swin_tiny" in text and "\n" not in text
    official = Path(torch.hub.get_dir()) / "checkpoints" / "efficientvit_m4.pth"
    with pytest.raises(UserError, match=f"put {hub.OFFICIAL_URL.format('efficientvit_m4')} at {official}, or pass"):
        efficientvit.model_from_checkpoint("cream/efficientvit_m4")


def test_a_model_named_beside_a_name_must_be_its_model(tmp_path):
    pretrained_in_hub_cache("timm/efficientvit_m0.r224_in1k")
    with pytest.raises(UserError, match="holds efficientvit_m0 weights, not efficientvit_m1's"):
        efficientvit.model_from_checkpoint("timm/efficientvit_m0.r224_in1k", efficientvit.ModelSpec("efficientvit_m1"))
    with pytest.raises(UserError, match="holds efficientvit_m0 weights, not deit_tiny's"):
        efficientvit.load_checkpoint(efficientvit.create_model("deit_tiny"), "efficientvit_m0")
    model = efficientvit.create_model("efficientvit_m0", img_size=160)  # another size: tables resized
    assert efficientvit.load_checkpoint(model, "efficientvit_m0.r224_in1k") == "timm"


def test_other_classes_get_a_fresh_classifier_and_keep_every_other_weight():
    reference, _ = pretrained_in_hub_cache("timm/efficientvit_m0.r224_in1k")
    tuned = efficientvit.model_from_checkpoint("timm/efficientvit_m0.r224_in1k", num_classes=10)
    assert tuned.num_classes == 10 and tuned.spec.kwargs["num_classes"] == 10
    theirs = reference.state_dict()
    for key, value in tuned.state_dict().items():
        assert key.startswith("head.") or torch.equal(value, theirs[key]), key


class CutShort(http.server.BaseHTTPRequestHandler):
    """Announces the whole file, sends half of it and hangs up; any later request gets 503 (the network is gone).
    The headers are those huggingface_hub reads from the hub (commit, ETag, size)."""

    def do_HEAD(self):
        self.headers_of(200)

    def do_GET(self):
        self.server.requests += 1
        if self.server.requests > 1:
            self.send_error(503)
            return
        self.headers_of(200)
        self.wfile.write(self.server.body[: len(self.server.body) // 2])

    def headers_of(self, status):
        self.send_response(status)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.send_header("ETag", '"0123456789abcdef"')
        self.send_header("X-Repo-Commit", "a" * 40)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def cut_short_server(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutShort)
    server.requests = 0
    torch.save({"model": {"w": torch.randn(256, 256)}}, tmp_path / "file.pth")
    server.body = (tmp_path / "file.pth").read_bytes()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_hub_download_cut_short_leaves_nothing_the_next_run_trusts(cut_short_server, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        huggingface_hub.constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        cut_short_server + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(huggingface_hub.file_download.time, "sleep", lambda seconds: None)  # its retry pause
    with pytest.raises(UserError, match="could not download model.safetensors of timm/efficientvit_m0.r224_in1k"):
        efficientvit.model_from_checkpoint("timm/efficientvit_m0.r224_in1k")
    files = [p for p in Path(huggingface_hub.constants.HF_HUB_CACHE).rglob("*") if p.is_file()]
    assert [p for p in files if {"blobs", "snapshots"} & set(p.parts)] == []  # refs/main names the commit: no file
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="is not in the Hugging Face cache"):
        efficientvit.model_from_checkpoint("timm/efficientvit_m0.r224_in1k")


def test_an_official_download_cut_short_is_never_trusted(cut_short_server, monkeypatch):
    """torch.hub moves a download the server ended early into place (it does not check the length): the cached
    file does not load, so it is removed and named; the next run does not find it."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "OFFICIAL_URL", cut_short_server + "/{}.pth")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "efficientvit_m0.pth"
    with pytest.raises(UserError, match=f"{cached} .* was incomplete or damaged and has been removed"):
        efficientvit.model_from_checkpoint("cream/efficientvit_m0")
    assert not cached.exists() and not list(cached.parent.glob("*partial"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="is not in torch.hub's cache"):
        efficientvit.model_from_checkpoint("cream/efficientvit_m0")


def test_training_starts_from_a_name_and_distils_from_one():
    """init: NAME fine-tunes the weights (a fresh classifier for the data's classes, tables resized to img_size);
    teacher: NAME is that model with its weights."""
    name = "timm/efficientvit_m0.r224_in1k"
    reference, _ = pretrained_in_hub_cache(name)
    model = build_model(make_config({"model": "efficientvit_m0", "img_size": 64, "init": name}), num_classes=10)
    assert model.num_classes == 10 and model.img_size == (64, 64)
    teacher = build_teacher(make_config({"model": "efficientvit_m0", "teacher": name}), num_classes=1000)
    assert all(torch.equal(value, reference.state_dict()[key]) for key, value in teacher.state_dict().items())


def test_the_way_out_a_local_copy_of_the_weights_with_its_model():
    """`--checkpoint PATH --model NAME` with the hub's model.safetensors: the same weights, today's transform."""
    name = "timm/efficientvit_m0.r224_in1k"
    _, weights = pretrained_in_hub_cache(name)
    local = efficientvit.model_from_checkpoint(str(weights), efficientvit.ModelSpec("efficientvit_m0")).eval()
    by_name = efficientvit.model_from_checkpoint(name).eval()
    assert local.pretrained_cfg is None and checkpoint_label(str(weights)) == "model"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(local(x), by_name(x))
