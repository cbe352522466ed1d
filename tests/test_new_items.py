"""Items as pixels travel: the exported image tower (`export --tower`) reloads to the run's own
vectors and stands in for `extract --encoder`, `embed` reproduces the run's catalogue vectors from
covers (pixels), item info (text) or both (multimodal), and items held out of `prepare` are ranked
from their covers alone above chance (an ID run refuses); bad inputs are one line each; bench cells
started from a run need no --weights file."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data_fixtures import one_line, run_cli
from helpers import tiny_config
from pixelrec import api
from pixelrec.cli import main
from pixelrec.data.prepare import prepare
from pixelrec.data.prepared import PreparedData
from pixelrec.data.synth import write_synthetic
from pixelrec.errors import UserError
from pixelrec.factory import build_model
from pixelrec.runs.loading import open_run
from pixelrec.training.trainer import train

HELD_OUT = 10  # items kept out of `prepare`: they arrive after training






@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Synthetic covers and interactions; HELD_OUT items that are some users' last item are removed
    from the interactions before `prepare` (their covers and item info stay), then a pixel SASRec
    and an ID SASRec are trained on what is left."""
    root = tmp_path_factory.mktemp("new_items")
    full = root / "full"
    write_synthetic(full, users=300, items=80, mean_len=10, image_size=32, seed=5)
    with open(full / "interactions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows.sort(key=lambda r: int(r["timestamp"]))
    last = {r["user_id"]: r["item_id"] for r in rows}  # each user's final item
    candidates = sorted(set(last.values()))
    held = sorted(np.random.default_rng(0).choice(candidates, HELD_OUT, replace=False).tolist())
    raw = root / "raw"
    raw.mkdir()
    with open(raw / "interactions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["item_id", "user_id", "timestamp"])
        writer.writeheader()
        writer.writerows(r for r in rows if r["item_id"] not in held)
    shutil.copy(full / "item_info.csv", raw / "item_info.csv")
    shutil.copytree(full / "covers", raw / "covers")
    with open(full / "item_info.csv", newline="") as handle:
        info = list(csv.reader(handle))
    with open(root / "new_items.csv", "w", newline="") as handle:  # the item info of the new items only
        csv.writer(handle).writerows([info[0]] + [r for r in info[1:] if r[0] in held])
    data = root / "data"
    prepare(raw, data, image_size=32, workers=1, progress=False)
    pixels = root / "pixels"  # on the CPU: vectors compared to 1e-5 (a GPU encodes in bf16 by default)
    items = {"kind": "pixels", "image": {"encoder": "test_vit", "image_size": 32, "tune_last": 1}}
    train(tiny_config(data, "sasrec", "softmax", items=items, train={"epochs": 2, "device": "cpu"}), pixels)
    ids = root / "ids"
    train(tiny_config(data, "sasrec", "softmax", train={"epochs": 1, "device": "cpu"}), ids)
    return {"root": root, "raw": raw, "data": data, "pixels": pixels, "ids": ids, "held": held, "last": last,
            "rows": rows, "info": root / "new_items.csv"}


@pytest.fixture(scope="module")
def embedded(world):
    """The held-out items' vectors, embedded with the pixel run from their covers and item info."""
    out = world["root"] / "new.npy"
    assert main(["embed", "--run", str(world["pixels"]), "--covers", str(world["raw"] / "covers"),
                 "--item-info", str(world["info"]), "--out", str(out)]) == 0
    return out


# --- export --tower -------------------------------------------------------------------------
def test_exported_tower_gives_the_runs_item_vectors_and_features(world, tmp_path, capsys):
    tower = tmp_path / "tower.safetensors"
    assert run_cli(capsys, "export", "--run", world["pixels"], "--tower", tower)[0] == 0
    described = json.loads(tower.with_suffix(".json").read_text())
    assert described["timm_name"] == "test_vit" and described["image_size"] == 32
    assert described["pooling"] == "default" and described["tune_last"] == 1
    assert described["source"]["checkpoint"] == "best.pt" and len(described["source"]["checkpoint_sha256"]) == 64

    loaded = open_run(world["pixels"])
    run_vectors = loaded.model.item_encoder.catalogue()
    # the run's configuration with the tower from the file and the encoder left unset: the file says what it is
    config = loaded.config
    config.items.image.encoder, config.items.image.encoder_weights = None, str(tower)
    torch.manual_seed(123)  # another random init: only the file can make the towers equal
    rebuilt = build_model(config, loaded.data).eval()
    own = {k: v for k, v in loaded.model.state_dict().items() if not k.startswith("item_encoder.tower.")}
    assert not set(rebuilt.load_state_dict(own, strict=False).unexpected_keys)
    assert torch.allclose(rebuilt.item_encoder.catalogue(), run_vectors, atol=1e-5)

    # ViNet over the tuned tower: extract's features are the run's tower output, pooled
    features = tmp_path / "tuned.npy"
    assert run_cli(capsys, "extract", "--data", world["data"], "--encoder", "test_vit", "--encoder-weights", tower,
               "--dtype", "fp32", "--workers", "0", "--out", features)[0] == 0
    encoder = loaded.model.item_encoder
    with torch.no_grad():
        images = encoder.image_store.read(np.arange(1, loaded.data.n_items + 1))
        pooled = encoder.tower.forward_head(encoder.tower.forward_features(encoder.preprocess(images)), pre_logits=True)
    assert np.allclose(np.load(features), pooled.numpy(), atol=1e-5)


def test_a_tower_without_final_norm_and_with_token_pooling_reloads_as_trained(world, tmp_path, capsys):
    items = {"kind": "pixels", "image": {"encoder": "test_vit", "image_size": 32, "tune_last": 1, "final_norm": False,
                                         "pooling": "tokens"}}
    train(tiny_config(world["data"], "sasrec", "softmax", items=items, train={"epochs": 1, "device": "cpu"}),
          tmp_path / "run")
    tower = tmp_path / "tower.safetensors"
    assert run_cli(capsys, "export", "--run", tmp_path / "run", "--tower", tower)[0] == 0
    loaded = open_run(tmp_path / "run")
    config = loaded.config
    config.items.image.encoder, config.items.image.encoder_weights = None, str(tower)
    config.items.image.final_norm, config.items.image.pooling = True, "default"  # unset: the file's settings apply
    rebuilt = build_model(config, loaded.data).eval()
    assert rebuilt.item_encoder.pooling == "tokens" and getattr(rebuilt.item_encoder.tower, "final_norm_removed")
    own = {k: v for k, v in loaded.model.state_dict().items() if not k.startswith("item_encoder.tower.")}
    rebuilt.load_state_dict(own, strict=False)
    assert torch.allclose(rebuilt.item_encoder.catalogue(), loaded.model.item_encoder.catalogue(), atol=1e-5)
    code, _, err = run_cli(capsys, "extract", "--data", world["data"], "--encoder", "test_vit", "--encoder-weights", tower,
                       "--out", tmp_path / "f.npy")  # one vector per image: token pooling needs the projection
    assert code == 2 and "trained with pooling tokens" in one_line(err) and "choose --pooling cls or mean" in err


def test_a_tower_file_refuses_settings_it_was_not_trained_with(world, tmp_path, capsys):
    tower = tmp_path / "tower.safetensors"
    assert run_cli(capsys, "export", "--run", world["pixels"], "--tower", tower)[0] == 0
    code, _, err = run_cli(capsys, "extract", "--data", world["data"], "--encoder", "test_vit", "--image-size", "64",
                       "--encoder-weights", tower, "--out", tmp_path / "f.npy")
    assert code == 2 and "trained with --image-size 32, not 64; leave --image-size unset" in one_line(err)
    code, _, err = run_cli(capsys, "extract", "--data", world["data"], "--encoder", "test_resnet",
                       "--encoder-weights", tower, "--out", tmp_path / "f.npy")
    assert code == 2 and "--encoder test_vit, not test_resnet; leave --encoder unset" in one_line(err)
    assert not (tmp_path / "f.npy").exists()
    code, _, err = run_cli(capsys, "export", "--run", world["ids"], "--tower", tmp_path / "id.safetensors")
    assert code == 2 and "items.kind=id has no image tower" in one_line(err)
    code, _, err = run_cli(capsys, "export", "--run", world["pixels"], "--tower", tmp_path / "tower.pt")
    assert code == 2 and "must end in .safetensors" in one_line(err)


# --- embed ----------------------------------------------------------------------------------
def test_embedding_catalogue_covers_reproduces_the_runs_vectors(world, tmp_path, capsys):
    out = tmp_path / "all.npy"
    code, _, err = run_cli(capsys, "embed", "--run", world["pixels"], "--covers", world["raw"] / "covers", "--out", out)
    assert code == 2 and "already in the catalogue" in one_line(err) and not out.exists()
    assert not out.with_suffix(".json").exists()
    assert run_cli(capsys, "embed", "--run", world["pixels"], "--covers", world["raw"] / "covers", "--out", out,
               "--allow-catalogue", "--batch-size", "16")[0] == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    tokens, vectors = json.loads(out.with_name(out.stem + ".items.json").read_text())["tokens"], np.load(out)
    assert sidecar["complete"] and len(tokens) == 80 and vectors.shape == (80, 32)

    loaded = open_run(world["pixels"])
    _, scoring = loaded.model.catalogue_vectors()
    index = {str(t): i for i, t in enumerate(loaded.data.item_tokens)}
    rows = [r for r, t in enumerate(tokens) if t in index]
    assert len(rows) == 80 - HELD_OUT
    expected = scoring[[index[tokens[r]] for r in rows]].numpy()
    assert np.allclose(vectors[rows], expected, atol=1e-5)

    code, out_text, _ = run_cli(capsys, "embed", "--run", world["pixels"], "--covers", world["raw"] / "covers",
                            "--out", out, "--allow-catalogue")
    assert code == 0 and "already embedded, nothing to do" in out_text


def percentile_of_true_next_items(world, new_items: Path) -> tuple[float, int]:
    """Mean over users whose true next item (their last, removed before `prepare`) is a new item: the
    fraction of that user's candidates (unseen catalogue items and new items) scored above it."""
    data = PreparedData(world["data"])
    users = [u for u in (str(t) for t in data.user_tokens[1:]) if world["last"][u] in world["held"]]
    everything = data.n_items + HELD_OUT
    found = api.recommend(world["pixels"], users, k=everything, new_items=new_items)
    share = []
    for user, items, new in zip(found.users, found.items, found.new):
        assert sum(new) == HELD_OUT  # every new item is a candidate, marked new
        share.append(items.index(world["last"][user]) / (len(items) - 1))
    return float(np.mean(share)), len(share)


def test_held_out_items_are_ranked_from_their_covers_above_chance(world, embedded):
    mean, users = percentile_of_true_next_items(world, embedded)
    assert users >= 20
    assert mean < 0.35, f"held-out next items at mean percentile {mean:.3f} of the candidates (chance: 0.5)"


def test_recommend_and_export_mark_new_items_and_id_runs_refuse(world, embedded, tmp_path, capsys):
    data = PreparedData(world["data"])
    user = next(str(t) for t in data.user_tokens[1:] if world["last"][str(t)] in world["held"])
    code, out, _ = run_cli(capsys, "recommend", "--run", world["pixels"], "--user", user, "-k", "90",
                       "--new-items", embedded, "--image", tmp_path / "sheet.png")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    new = {r["item_id"] for r in rows if r["new"] == "1"}
    assert new == set(world["held"]) and all(r["new"] == "0" for r in rows if r["item_id"] not in new)
    assert {r["title"] for r in rows if r["new"] == "1"} != {""}  # titles from the new items' item info
    assert (tmp_path / "sheet.png").stat().st_size > 0

    from PIL import Image

    from pixelrec.jobs.contact_sheet import NEW_BORDER, PAD, TILE, contact_sheet
    from pixelrec.jobs.new_items import new_items_for_run

    loaded = open_run(world["pixels"])
    new_items = new_items_for_run(embedded, world["pixels"], "pixels", loaded.model, loaded.checkpoint,
                                  data.item_tokens)
    sheet = contact_sheet(data, [1], [[data.n_items + 1, 1]], None, tmp_path / "two.png", new_items=new_items)
    where = {text.splitlines()[0]: xy for text, xy in sheet.texts}
    drawn = Image.open(tmp_path / "two.png").convert("RGB")
    for label, framed in ((f"1. {world['held'][0]} (new)", True), (f"2. {data.item_tokens[1]}", False)):
        x, y = where[label]  # under the tile: (left + PAD, top + TILE + 2)
        assert (drawn.getpixel((x - PAD + 1, y - TILE - 1)) == NEW_BORDER) == framed, label

    vectors = tmp_path / "vectors"
    assert run_cli(capsys, "export", "--run", world["pixels"], "--out", vectors, "--new-items", embedded)[0] == 0
    manifest = json.loads((vectors / "export.json").read_text())
    items, tokens = np.load(vectors / "items.npy"), (vectors / "items.txt").read_text().split()
    assert manifest["new_items"]["first_row"] == data.n_items and manifest["new_items"]["count"] == HELD_OUT
    assert items.shape[0] == len(tokens) == data.n_items + HELD_OUT and tokens[data.n_items:] == world["held"]
    assert np.array_equal(items[data.n_items:], np.load(embedded))

    for argv in (["embed", "--run", world["ids"], "--covers", world["raw"] / "covers", "--out", tmp_path / "x.npy"],
                 ["recommend", "--run", world["ids"], "--user", user, "--new-items", embedded],
                 ["export", "--run", world["ids"], "--out", tmp_path / "v", "--new-items", embedded]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "items.kind=id cannot score new items" in one_line(err), argv
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "v").exists()


# --- bad input ------------------------------------------------------------------------------
def test_bad_covers_are_one_line_each_and_nothing_is_written(world, tmp_path, capsys):
    covers = tmp_path / "covers"
    covers.mkdir()
    shutil.copy(world["raw"] / "covers" / f"{world['held'][0]}.jpg", covers / "fresh.jpg")
    (covers / "broken.jpg").write_bytes((world["raw"] / "covers" / f"{world['held'][1]}.jpg").read_bytes()[:40])
    (covers / "notes.png").write_text("not an image")
    out = tmp_path / "f.npy"
    embed = ["embed", "--run", world["pixels"], "--out", out]
    code, _, err = run_cli(capsys, *embed, "--covers", covers)
    line = one_line(err)
    assert code == 2 and "2 cover files are corrupt" in line and "broken.jpg" in line and "notes.png" in line
    (covers / "broken.jpg").unlink()
    (covers / "notes.png").unlink()
    (tmp_path / "info.csv").write_text("item_id,title\nfresh,a fresh cover\nlate,no cover yet\n")
    code, _, err = run_cli(capsys, *embed, "--covers", covers, "--item-info", tmp_path / "info.csv")
    assert code == 2 and "no cover file for new item late" in one_line(err)
    code, _, err = run_cli(capsys, *embed, "--covers", tmp_path / "nowhere")
    assert code == 2 and "covers folder not found" in one_line(err)
    assert not out.exists() and not out.with_suffix(".json").exists()

    assert run_cli(capsys, *embed, "--covers", covers)[0] == 0  # the good cover alone
    user = str(PreparedData(world["data"]).user_tokens[1])
    code, _, err = run_cli(capsys, "recommend", "--run", world["pixels"], "--user", user, "--new-items", out,
                       "--checkpoint", "last")  # embedded with best.pt
    assert code == 2 and "made with other weights" in one_line(err)
    features = tmp_path / "features.npy"
    assert run_cli(capsys, "extract", "--data", world["data"], "--encoder", "test_vit", "--image-size", "32",
               "--workers", "0", "--out", features)[0] == 0
    code, _, err = run_cli(capsys, "recommend", "--run", world["pixels"], "--user", user, "--new-items", features)
    assert code == 2 and "not new items' vectors" in one_line(err)
    with pytest.raises(UserError, match="items.kind=id cannot score new items"):
        api.recommend(world["ids"], user, new_items=out)


def test_a_backbone_that_scores_items_by_the_catalogue_cannot_score_new_items(tmp_path):
    from types import SimpleNamespace

    from pixelrec.jobs.new_items import check_scoring
    from pixelrec.models import BACKBONES

    assert not BACKBONES.get("lightgcn").scores_items_alone and BACKBONES.get("sasrec").scores_items_alone
    model = SimpleNamespace(backbone=BACKBONES.get("pop")(np.ones(5)))
    with pytest.raises(UserError, match="more than its own vector"):
        check_scoring(model, tmp_path)


# --- text and multimodal runs ------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    """A tiny random BERT whose vocabulary covers the synthetic titles and tags."""
    pytest.importorskip("transformers")
    from pixelrec.data.synth import COLOURS, SHAPES, TEXTURES
    from test_text_items import save_bert

    words = sorted({w for name in [*COLOURS, *SHAPES, *TEXTURES] for w in name.split()})
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", "#"] + words + [str(d) for d in range(10)]
             + [f"##{d}" for d in range(10)])
    return save_bert(tmp_path_factory.mktemp("models") / "bert", vocab=vocab)


@pytest.fixture(scope="module")
def text_runs(world, bert):
    """A text SASRec (title + tag) and a multimodal one (cover + title + tag, concatenated) on the world's data."""
    runs = {"text": world["root"] / "text", "multimodal": world["root"] / "multimodal"}
    text = {"kind": "text", "text": {"encoder_weights": str(bert), "tune_last": 1}}
    both = {"kind": "multimodal", "image": {"encoder": "test_vit", "image_size": 32, "tune_last": 1}, "fusion": "concat",
            "text": {"encoder_weights": str(bert), "tune_last": 1}}
    for kind, items in (("text", text), ("multimodal", both)):
        train(tiny_config(world["data"], "sasrec", "softmax", items=items, train={"epochs": 1, "device": "cpu"}),
              runs[kind])
    return runs


def catalogue_rows_match(run: Path, out: Path) -> list[str]:
    """Assert that `out`'s rows of catalogue items are the run's own scoring vectors; returns its tokens."""
    sidecar = json.loads(out.with_suffix(".json").read_text())
    tokens, vectors = json.loads(out.with_name(out.stem + ".items.json").read_text())["tokens"], np.load(out)
    loaded = open_run(run)
    _, scoring = loaded.model.catalogue_vectors()
    index = {str(t): i for i, t in enumerate(loaded.data.item_tokens)}
    rows = [r for r, t in enumerate(tokens) if t in index]
    assert len(rows) == 80 - HELD_OUT and sidecar["complete"]
    assert np.allclose(vectors[rows], scoring[[index[tokens[r]] for r in rows]].numpy(), atol=1e-5)
    assert not np.allclose(vectors[rows[0]], vectors[rows[1]], atol=1e-3)  # items differ: the texts reach the vector
    return tokens


def test_a_text_run_embeds_items_from_their_item_info_to_its_own_vectors(world, text_runs, tmp_path, capsys):
    out, info = tmp_path / "text.npy", world["raw"] / "item_info.csv"
    code, _, err = run_cli(capsys, "embed", "--run", text_runs["text"], "--item-info", info, "--out", out)
    assert code == 2 and "already in the catalogue" in one_line(err) and not out.exists()
    assert run_cli(capsys, "embed", "--run", text_runs["text"], "--item-info", info, "--out", out, "--allow-catalogue",
               "--batch-size", "16")[0] == 0  # no covers: a text run reads none
    tokens = catalogue_rows_match(text_runs["text"], out)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["items"] == "text" and sidecar["covers"] is None and len(tokens) == 80


def test_a_multimodal_run_embeds_items_from_covers_and_item_info_to_its_own_vectors(world, text_runs, tmp_path,
                                                                                     capsys):
    out = tmp_path / "both.npy"
    assert run_cli(capsys, "embed", "--run", text_runs["multimodal"], "--covers", world["raw"] / "covers", "--item-info",
               world["raw"] / "item_info.csv", "--out", out, "--allow-catalogue", "--workers", "1")[0] == 0
    catalogue_rows_match(text_runs["multimodal"], out)  # both parts' inputs came through a DataLoader worker


@pytest.mark.parametrize("kind", ["text", "multimodal"])
def test_recommend_ranks_new_items_of_text_and_multimodal_runs(kind, world, text_runs, tmp_path, capsys):
    out = tmp_path / "new.npy"
    covers = ["--covers", world["raw"] / "covers"] if kind == "multimodal" else []
    assert run_cli(capsys, "embed", "--run", text_runs[kind], *covers, "--item-info", world["info"], "--out", out)[0] == 0
    user = str(PreparedData(world["data"]).user_tokens[1])
    code, text, _ = run_cli(capsys, "recommend", "--run", text_runs[kind], "--user", user, "-k", "90", "--new-items", out,
                        "--image", tmp_path / "sheet.png")  # a text run's new items: blank tiles, framed
    rows = list(csv.DictReader(io.StringIO(text)))
    assert code == 0 and {r["item_id"] for r in rows if r["new"] == "1"} == set(world["held"])
    assert {r["title"] for r in rows if r["new"] == "1"} != {""} and (tmp_path / "sheet.png").stat().st_size > 0


def test_bad_text_inputs_of_new_items_are_one_line_each_and_nothing_is_written(world, text_runs, tmp_path, capsys):
    out = tmp_path / "x.npy"
    held = world["held"]
    code, _, err = run_cli(capsys, "embed", "--run", text_runs["text"], "--covers", world["raw"] / "covers", "--out", out)
    assert code == 2 and "--item-info CSV is needed: a run with items.kind=text" in one_line(err)
    code, _, err = run_cli(capsys, "embed", "--run", text_runs["multimodal"], "--item-info", world["info"], "--out", out)
    assert code == 2 and "--covers DIR is needed: a run with items.kind=multimodal" in one_line(err)
    (tmp_path / "no_tag.csv").write_text("item_id,title\n" + "".join(f"{t},red circle\n" for t in held))
    code, _, err = run_cli(capsys, "embed", "--run", text_runs["text"], "--item-info", tmp_path / "no_tag.csv",
                       "--out", out)
    line = one_line(err)
    assert code == 2 and f"--item-info {tmp_path / 'no_tag.csv'}: no text column 'tag'" in line
    assert "items.text.fields: title, tag" in line
    (tmp_path / "empty.csv").write_text("item_id,title,tag\n" + "".join(
        f"{t},{'' if k == 1 else 'red circle'},{' ' if k == 1 else 'red'}\n" for k, t in enumerate(held)))
    code, _, err = run_cli(capsys, "embed", "--run", text_runs["multimodal"], "--covers", world["raw"] / "covers",
                       "--item-info", tmp_path / "empty.csv", "--out", out)
    assert code == 2 and f"new item {held[1]} has no text in title, tag" in one_line(err)
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_a_multimodal_run_with_learned_ids_refuses_new_items(world, bert, tmp_path, capsys):
    items = {"kind": "multimodal", "image": {"encoder": "test_vit", "image_size": 32, "tune_last": 0}, "with_id": True,
             "text": {"encoder_weights": str(bert), "tune_last": 0}}
    train(tiny_config(world["data"], "sasrec", "softmax", items=items,
                      train={"epochs": 1, "max_steps": 1, "device": "cpu"}), tmp_path / "run")
    code, _, err = run_cli(capsys, "embed", "--run", tmp_path / "run", "--covers", world["raw"] / "covers",
                       "--item-info", world["info"], "--out", tmp_path / "x.npy")
    assert code == 2 and "items.with_id=true" in one_line(err) and "has none" in err
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "x.json").exists()


# --- extract from a tower file alone; bench cells started from a run take no --weights -------------
def test_extract_takes_the_encoder_from_a_tower_file(world, tmp_path, capsys):
    tower = tmp_path / "tower.safetensors"
    assert run_cli(capsys, "export", "--run", world["pixels"], "--tower", tower)[0] == 0
    common = ["extract", "--data", world["data"], "--dtype", "fp32", "--workers", "0"]
    assert run_cli(capsys, *common, "--encoder-weights", tower, "--out", tmp_path / "alone.npy")[0] == 0
    named = tmp_path / "named.npy"
    assert run_cli(capsys, *common, "--encoder", "test_vit", "--encoder-weights", tower, "--out", named)[0] == 0
    assert np.array_equal(np.load(tmp_path / "alone.npy"), np.load(named))
    assert json.loads((tmp_path / "alone.json").read_text())["encoder"] == "test_vit"
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(plain))
    for weights, message in ((plain, "not a tower file from `pixelrec export --tower`"),
                             (tmp_path / "gone.safetensors", "file not found")):
        code, _, err = run_cli(capsys, *common, "--encoder-weights", weights, "--out", tmp_path / "f.npy")
        assert code == 2 and message in one_line(err) and not (tmp_path / "f.npy").exists()
    code, _, err = run_cli(capsys, *common, "--out", tmp_path / "f.npy")
    assert code == 2 and "give one of --encoder NAME, --text-model DIR, --import" in one_line(err)


def test_bench_cells_started_from_a_run_take_no_weights_file(world, tmp_path):
    from pixelrec.bench.matrix import BenchSpec, cells_of, parse_variant, plan

    variants = [parse_variant("random"), parse_variant(f"pre:train.init_from={world['pixels']}")]
    weights = str(tmp_path / "{encoder}.safetensors")  # not there yet
    started = BenchSpec(str(world["data"]), cells_of(["sasrec"], ["pixels"], ["test_vit"], ["pre"]),
                        sets=["items.image.image_size=32"], variants=variants, weights=weights)
    (cell,) = plan(started)
    assert cell.config.train.init_from == str(world["pixels"]) and cell.config.items.image.encoder_weights is None
    both = BenchSpec(str(world["data"]), cells_of(["sasrec"], ["pixels"], ["test_vit"], ["random", "pre"]),
                     sets=["items.image.image_size=32"], variants=variants, weights=weights)
    with pytest.raises(UserError, match="cell sasrec-pixels-test_vit-random: .*test_vit.safetensors not found"):
        plan(both)
    (tmp_path / "test_vit.safetensors").write_bytes(b"")
    chosen = {p.name: p.config.items.image.encoder_weights for p in plan(both)}
    assert chosen == {"sasrec-pixels-test_vit-random": str(tmp_path / "test_vit.safetensors"),
                      "sasrec-pixels-test_vit-pre": None}


def test_the_item_list_is_written_once_and_checked_on_reading(world, embedded, tmp_path, capsys):
    import shutil as sh

    sidecar = json.loads(Path(embedded).with_suffix(".json").read_text())
    assert "tokens" not in sidecar and sidecar["items_file"] == Path(embedded).stem + ".items.json"
    copy = tmp_path / "copy.npy"
    for suffix in (".npy", ".json", ".items.json"):
        sh.copy(Path(embedded).with_name(Path(embedded).stem + suffix), tmp_path / f"copy{suffix}")
    user = str(PreparedData(world["data"]).user_tokens[1])
    listing = tmp_path / "copy.items.json"
    listing.write_text(listing.read_text().replace(world["held"][0], "someone-else"))
    code, _, err = run_cli(capsys, "recommend", "--run", world["pixels"], "--user", user, "--new-items", copy)
    assert code == 2 and "is not the one its vectors were made for" in one_line(err)
    listing.unlink()
    code, _, err = run_cli(capsys, "recommend", "--run", world["pixels"], "--user", user, "--new-items", copy)
    assert code == 2 and "copy.items.json is missing" in one_line(err)


def test_an_item_list_cannot_name_a_cover_outside_its_folder(world, embedded, tmp_path, capsys):
    import hashlib
    import shutil as sh

    from PIL import Image

    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    user = str(PreparedData(world["data"]).user_tokens[1])
    for i, name in enumerate(["../secret.png", str(secret), "..", "sub/x.png"]):
        copy = tmp_path / f"copy{i}.npy"
        for suffix in (".npy", ".json", ".items.json"):
            sh.copy(Path(embedded).with_name(Path(embedded).stem + suffix), tmp_path / f"copy{i}{suffix}")
        listing = tmp_path / f"copy{i}.items.json"
        items = json.loads(listing.read_text())
        items["files"][0] = name
        listing.write_text(json.dumps(items))
        sidecar = json.loads(copy.with_suffix(".json").read_text())  # the hash recomputed, as anyone can
        sidecar["items_sha256"] = hashlib.sha256(listing.read_bytes()).hexdigest()
        sidecar["items_file"] = listing.name
        copy.with_suffix(".json").write_text(json.dumps(sidecar))
        sheet = tmp_path / f"sheet{i}.png"
        code, _, err = run_cli(capsys, "recommend", "--run", world["pixels"], "--user", user, "--new-items", copy,
                               "--image", sheet)
        assert code == 2 and "outside the covers folder" in one_line(err), (name, err)
        assert not sheet.exists()
