"""Every packaged YAML (paper settings, presets) resolves to a valid configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelrec.config import resolve
from pixelrec.models import BACKBONES
from pixelrec.packaged import CONFIG_DIR
from pixelrec.runs.directory import flat_keys
from pixelrec.towers.names import SHORT_NAMES


@pytest.mark.parametrize("model", BACKBONES.names())
def test_paper_settings_of_every_backbone_are_valid(model):
    config = resolve(model=model, flags={"data": {"path": "unused"}})
    assert config.model_name == model


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "pixelnet").glob("*.yaml")), ids=lambda p: p.stem)
def test_pixelnet_settings_are_valid(path):
    assert path.stem in BACKBONES.names()
    config = resolve(model=path.stem, flags={"items": {"kind": "pixels", "image": {"encoder": "clip-vit-b32"}}})
    assert config.items.kind == "pixels" and config.items.image.tune_last == 2 and config.items.image.pooling == "mean"


@pytest.mark.parametrize("encoder", sorted(SHORT_NAMES))
def test_every_paper_encoder_has_settings(encoder):
    assert (CONFIG_DIR / "encoders" / f"{encoder}.yaml").is_file()
    config = resolve(model="sasrec", flags={"items": {"kind": "pixels"}}, encoder=encoder)
    assert config.train.encoder_lr == 1e-4 and config.items.image.encoder == encoder


def test_presets_layer_over_paper_settings():
    config = resolve(model="sasrec", files=["cpu-small", "pixels-tiny"])
    assert config.model["embedding_size"] == 64 and config.model["n_layers"] == 2
    assert config.items.kind == "pixels" and config.loss.name == "softmax"


def test_the_movielens_preset_is_the_benchmarks_chosen_setting(monkeypatch):
    """`--config ml100k-sasrec` trains what benchmarks/movielens_compare.py ran for the README's chosen
    setting (windows, window_stride 5, cosine over 30 epochs at lr 2e-3, batch 128)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import movielens_compare

    budget = {"batch_size": 128, "epochs": 30, "patience": 30}
    sets = ("data.window_stride=5", "train.lr_schedule=cosine", "train.lr=2e-3")
    bench = flat_keys(resolve(model="sasrec", flags=movielens_compare.settings("sasrec", Path("/d"), budget, "windows",
                                                                             sets)).to_dict())
    preset = flat_keys(resolve(model="sasrec", files=["ml100k-sasrec"], flags={"data": {"path": "/d"}}).to_dict())
    trained = [k for k in bench if k.startswith(("model.", "data.", "loss.", "items.")) or k in {
        "train.batch_size", "train.lr", "train.lr_schedule", "train.warmup_steps", "train.weight_decay",
        "train.epochs", "train.patience", "train.table_optimizer", "train.clip_grad", "train.decay_all"}]
    assert {k: preset[k] for k in trained} == {k: bench[k] for k in trained}
    assert preset["train.lr_schedule"] == "cosine" and preset["data.window_stride"] == 5


def test_explicit_flags_and_sets_win_over_files():
    config = resolve(model="sasrec", files=["cpu-small"], flags={"train": {"epochs": 3}}, sets=["train.epochs=4"])
    assert config.train.epochs == 4


def test_set_values_parse_like_yaml_with_plain_exponents():
    config = resolve(model="sasrec", sets=["train.lr=1e-4", "train.epochs=3", "eval.ks=[1, 5]", "items.kind=pixels", "items.image.encoder=test_vit",
                                           "eval.valid_metric=NDCG@5"])
    assert config.train.lr == 1e-4 and config.train.epochs == 3 and config.eval.ks == [1, 5]
    assert config.items.image.encoder == "test_vit"
