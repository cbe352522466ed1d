"""The `items.image` and `items.text` sections: each checked against its tower's settings class, taken
by the item kinds that have that tower, reached by nested `--set` paths and `--encoder`; the flat
`items` keys of earlier versions are named by their new place, and runs saved with them still load."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from helpers import tiny_config
from pixelrec.cli import main
from pixelrec.config import build_config, resolve, upgrade
from pixelrec.errors import UserError
from pixelrec.items.pixels import FeatureSettings, ImageSettings
from pixelrec.items.text import TextSettings
from test_pixels import colour_store  # noqa: F401  (fixture)


def test_nested_set_paths_reach_both_towers_of_a_multimodal_run():
    config = resolve(model="sasrec", flags={"items": {"kind": "multimodal"}}, encoder="test_vit", sets=[
        "items.image.tune_last=3", "items.image.projection_init=xavier", "items.image.final_norm=false",
        "items.text.pooling=cls", "items.text.lr=1e-5", "items.text.projection_group=encoder",
        "items.text.fields=[title]"])
    image, text = config.items.image, config.items.text
    assert isinstance(image, ImageSettings) and isinstance(text, TextSettings)
    assert (image.encoder, image.tune_last, image.projection_init, image.final_norm) == ("test_vit", 3, "xavier", False)
    assert (text.pooling, text.lr, text.projection_group, text.fields) == ("cls", 1e-5, "encoder", ["title"])
    assert text.tune_last == TextSettings.tune_last  # each tower keeps its own defaults


@pytest.mark.parametrize("kind, towers", [("id", (None, None)), ("pixels", (ImageSettings, None)),
                                          ("features", (FeatureSettings, None)), ("text", (None, TextSettings)),
                                          ("multimodal", (ImageSettings, TextSettings))])
def test_each_kind_takes_the_sections_of_its_towers(kind, towers):
    items = resolve(model="sasrec", flags={"items": {"kind": kind}}).items
    assert tuple(None if s is None else type(s) for s in (items.image, items.text)) == towers


@pytest.mark.parametrize("kind, key, takes", [
    ("features", "items.image.tune_last=3", "(it takes items.image.encoder, items.image.dnn_layers, "
                                            "items.image.activation, items.image.final_activation)"),
    ("text", "items.image.pooling=cls", "(it takes items.cache_dir, items.text.*)"),
    ("pixels", "items.text.max_tokens=8", "(it takes items.cache_dir, items.image.*)"),
    ("id", "items.text.lr=0.1", "(it takes no other keys)"),
])
def test_a_tower_key_the_kind_does_not_take_is_one_line_naming_it(kind, key, takes):
    with pytest.raises(UserError) as caught:
        resolve(model="sasrec", flags={"items": {"kind": kind}}, sets=[key])
    message = str(caught.value)
    assert f"{key.split('=')[0]} does not apply to items.kind={kind} {takes}" in message and "\n" not in message


def test_tower_values_are_checked_by_the_schema_with_hints():
    with pytest.raises(UserError, match=r"items\.text\.max_tokens: 0 is out of range \(allowed: 3 <= x <= 8192\)"):
        resolve(model="sasrec", flags={"items": {"kind": "text"}}, sets=["items.text.max_tokens=0"])
    with pytest.raises(UserError, match=r"items\.image: unknown key tune_lst; did you mean 'tune_last'\?"):
        resolve(model="sasrec", flags={"items": {"kind": "pixels"}}, sets=["items.image.tune_lst=1"])
    with pytest.raises(UserError, match=r"items\.image: expected a mapping, got 3"):
        resolve(model="sasrec", flags={"items": {"kind": "pixels"}}, sets=["items.image=3"])


@pytest.mark.parametrize("kind, flat, new", [
    ("pixels", "tune_last", "image.tune_last"), ("pixels", "encoder_weights", "image.encoder_weights"),
    ("text", "tune_last", "text.tune_last"), ("text", "encoder", "text.encoder"), ("text", "text_fields", "text.fields"),
    ("multimodal", "text_tune_last", "text.tune_last"), ("multimodal", "max_tokens", "text.max_tokens"),
    ("multimodal", "pooling", "image.pooling"), ("features", "dnn_layers", "image.dnn_layers"),
    ("features", "tune_last", "image.tune_last"), ("id", "text_lr", "text.lr"),
])
def test_a_flat_key_of_earlier_versions_is_one_line_naming_its_new_key(kind, flat, new, tmp_path):
    with pytest.raises(UserError, match=rf"^set=: items\.{flat} is now items\.{new}$"):
        resolve(model="sasrec", flags={"items": {"kind": kind}}, sets=[f"items.{flat}=1"])
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({"items": {"kind": kind, flat: 1}}))
    with pytest.raises(UserError, match=rf"^{tmp_path / 'old.yaml'}: items\.{flat} is now items\.{new}$"):
        resolve(model="sasrec", files=[str(tmp_path / "old.yaml")])


def test_encoder_names_the_primary_tower_of_the_kind(tiny_data, capsys):
    for kind, tower in (("pixels", "image"), ("features", "image"), ("multimodal", "image"), ("text", "text")):
        items = resolve(model="sasrec", flags={"items": {"kind": kind}}, encoder="some-model").items
        assert getattr(items, tower).encoder == "some-model" and items.encoder == "some-model", kind
    multimodal = resolve(model="sasrec", flags={"items": {"kind": "multimodal"}}, encoder="m").items
    assert multimodal.text.encoder is None
    chosen = resolve(model="sasrec", flags={"items": {"kind": "pixels"}}, encoder="a", sets=["items.image.encoder=b"])
    assert chosen.items.image.encoder == "b"  # --set comes after the command line's flags
    with pytest.raises(UserError, match="^encoder=m: items.kind=id has no encoder to set$"):
        resolve(model="sasrec", encoder="m")
    assert main(["train", "--data", str(tiny_data), "--model", "sasrec", "--items", "id", "--encoder", "m"]) == 2
    assert "--encoder m: items.kind=id has no encoder to set" in capsys.readouterr().err
    assert main(["train", "--data", str(tiny_data), "--model", "sasrec", "--items", "text", "--encoder", "m",
                 "--set", "items.text.tune_last=0", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["items"]
    assert printed["image"] is None and (printed["text"]["encoder"], printed["text"]["tune_last"]) == ("m", 0)


def test_the_paper_encoder_layers_follow_encoder_into_items_image():
    config = resolve(model="sasrec", files=["paper"], flags={"items": {"kind": "pixels"}}, encoder="clip-vit-b32")
    image = config.items.image  # the profile's encoders/clip-vit-b32.yaml and items/pixels.yaml
    assert (image.pooling, image.final_norm, image.projection_init, image.preprocess) == ("tokens", False, "xavier",
                                                                                          "paper")


# --- saved runs of earlier versions --------------------------------------------------------------
def flat_items(**values) -> dict:
    """An `items` section as earlier versions wrote it into config.yaml: every key, flat."""
    return {"kind": "id", "encoder": None, "encoder_weights": None, "pretrained": False, "features": None,
            "project": True, "combine": "sum", "id_size": None, "image_size": None, "tune_last": 2,
            "pooling": "default", "dnn_layers": 0, "activation": "gelu", "preprocess": "encoder", "cache": None,
            "cache_dir": None, "final_activation": False, "projection_group": "recommender",
            "projection_init": "default", "final_norm": True, "tune_head": True, "tune_merging": True, "timm_args": {},
            "frozen_mode": "eval", "text_fields": ["title", "tag"], "max_tokens": 32, "text_encoder": None,
            "text_encoder_weights": None, "text_tune_last": 2, "text_pooling": "mean", "text_cache": None,
            "text_lr": None, "text_weight_decay": None, "fusion": "sum", "with_id": False, **values}


def test_flat_sections_move_where_each_kind_keeps_them():
    text = upgrade({"items": flat_items(kind="text", encoder="m", tune_last=1, dnn_layers=1, text_fields=["title"],
                                        max_tokens=16)})["items"]
    assert text["text"] == {"encoder": "m", "encoder_weights": None, "fields": ["title"], "max_tokens": 16,
                                 "tune_last": 1, "pooling": "mean", "cache": None, "dnn_layers": 1,
                                 "activation": "gelu", "projection_group": "recommender"}  # pooling default was mean
    assert "image" not in text and "tune_last" not in text
    both = upgrade({"items": flat_items(kind="multimodal", encoder="v", tune_last=1, dnn_layers=2, activation="relu",
                                        text_encoder_weights="/m", text_tune_last=0, text_lr=1e-5, fusion="concat")})
    built = build_config({"model": {"name": "sasrec"}, **both}, source="saved").items
    assert (built.image.encoder, built.image.tune_last, built.image.dnn_layers, built.image.activation) == (
        "v", 1, 2, "relu")
    assert (built.text.encoder_weights, built.text.tune_last, built.text.lr) == ("/m", 0, 1e-5)
    assert (built.text.dnn_layers, built.text.activation, built.fusion) == (2, "relu", "concat")  # they were shared
    features = upgrade({"items": flat_items(kind="id+features", encoder="clip-rn50", combine="concat",
                                            final_activation=True, features="/f.npy")})["items"]
    assert features["image"] == {"encoder": "clip-rn50", "dnn_layers": 0, "activation": "gelu",
                                 "final_activation": True}
    assert upgrade(both) == both and upgrade({"items": {"kind": "id"}}) == {"items": {"kind": "id"}}


def test_a_run_saved_with_flat_items_keys_evaluates_resumes_and_starts_another(tiny_data, tmp_path, colour_store):
    import pixelrec
    from pixelrec.runs.directory import config_of_run
    from pixelrec.training.trainer import train
    from pixelrec.training.transfer import check_source

    image = {"encoder": "test_vit", "image_size": 32, "tune_last": 1, "pooling": "mean", "dnn_layers": 1,
             "activation": "relu"}
    config = tiny_config(tiny_data, "sasrec", "softmax", items={"kind": "pixels", "image": image},
                         train={"epochs": 1, "lr": 3e-3})
    run = tmp_path / "run"
    results = train(config, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["items"]["image"]["dnn_layers"] == 1
    # the same run as an earlier version wrote it: the items section flat, every key present
    saved["items"] = flat_items(kind="pixels", **image)
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))

    assert config_of_run(run).items == config.items
    metrics = pixelrec.evaluate(run, split="test")
    for name in ("Recall@10", "NDCG@10"):
        assert metrics.test[name] == pytest.approx(results["test"][name])
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(row.get("epoch", 0) for row in rows) == 2
    assert config_of_run(run).items == config.items

    saved["items"] = flat_items(kind="pixels", **image)  # flat again, for the run that starts from it
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    target = dataclasses.replace(config, train=dataclasses.replace(config.train, init_from=str(run)))
    check_source(target)
    other = dataclasses.replace(target, items=dataclasses.replace(
        target.items, image=dataclasses.replace(target.items.image, encoder="test_resnet")))
    with pytest.raises(UserError, match="trained with image encoder test_vit, this run has test_resnet"):
        check_source(other)


def test_a_shared_tower_key_that_no_cell_takes_stops_the_bench():
    from pixelrec.bench.matrix import BenchSpec, cells_of, plan

    cells = cells_of(["sasrec"], ["id", "features"], ["clip-rn50"])
    with pytest.raises(UserError, match="items.image.tune_last applies to no cell of the matrix"):
        plan(BenchSpec(data="unused", cells=cells, features="f.npy", sets=["items.image.tune_last=all"]))
    planned = plan(BenchSpec(data="unused", cells=cells, features="f.npy", sets=["items.image.dnn_layers=1"]))
    assert [p.config.items.image and p.config.items.image.dnn_layers for p in planned] == [None, 1]
