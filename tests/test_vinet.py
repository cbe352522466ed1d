"""ViNet: feature extraction (order, determinism, resume, identity), import, the features item
encoders with every backbone, and the visual-feature baselines (VisRank by hand; VBPR, ACF,
CuratorNet and VisRank against popularity on data whose features carry the signal)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import patterned_sequences, write_prepared
from helpers import losses_over_steps, tiny_config
from pixelrec.cli import main
from pixelrec.data.batch import Batch
from pixelrec.data.images import ImageStore, build_image_store
from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError
from pixelrec.evaluation.evaluator import rank_targets
from pixelrec.items.base import ItemLookup
from pixelrec.items.features import FeatureEncoder, IDFeatureEncoder
from pixelrec.jobs.extract import FeatureTower, extract_features, import_features
from pixelrec.models import BACKBONES
from pixelrec.models.visrank import VisRank
from pixelrec.storage.feature_files import dataset_order_sha256, file_sha256, load_features, sidecar_path
from pixelrec.towers.image_tower import Preprocess, create_tower, pool
from pixelrec.training.trainer import Trainer, parameter_groups, train

N_ITEMS = 20


def with_images(root: Path, n_items: int, size: int = 16) -> Path:
    """Give a hand-written prepared dataset an image store of distinct flat-colour covers."""
    covers = root / "covers"
    covers.mkdir()
    tokens = [f"i{i}" for i in range(1, n_items + 1)]
    for i, token in enumerate(tokens, start=1):
        Image.new("RGB", (size, size), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)).save(covers / f"{token}.jpg")
    entry = build_image_store(root / "images.lmdb", tokens, covers, size=size, workers=1, progress=False)
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "image_store": entry}))
    return root


@pytest.fixture(scope="module")
def pictured(tmp_path_factory) -> Path:
    root = write_prepared(tmp_path_factory.mktemp("pictured") / "data", patterned_sequences(30, N_ITEMS, 6))
    return with_images(root, N_ITEMS)


def extract(data: Path, out: Path, **kwargs) -> dict:
    args = dict(encoder="test_vit", image_size=32, batch_size=8, workers=0, dtype="fp32", progress=False)
    return extract_features(data, out, **(args | kwargs))


def write_features(data: Path, array: np.ndarray, out: Path) -> Path:
    """Features for a dataset's items in index order, through `import_features`."""
    order = out.with_suffix(".order.txt")
    order.write_text("".join(f"{t}\n" for t in PreparedData(data).item_tokens[1:]))
    source = out.with_suffix(".source.npy")
    np.save(source, array)
    import_features(data, source, order, out, overwrite=True)
    return out


# --- extraction ----------------------------------------------------------------------------
def test_rows_are_the_towers_pooled_output_in_item_order(pictured, tmp_path):
    weights = tmp_path / "vit.pt"
    torch.save(create_tower("test_vit", image_size=32).state_dict(), weights)
    code = main(["extract", "--data", str(pictured), "--encoder", "test_vit", "--encoder-weights", str(weights),
                 "--image-size", "32", "--batch-size", "8", "--workers", "0", "--dtype", "fp32",
                 "--device", "cpu", "--out", str(tmp_path / "f.npy")])
    assert code == 0
    features = np.load(tmp_path / "f.npy")
    tower = create_tower("test_vit", str(weights), image_size=32).eval()
    images = ImageStore.from_prepared(PreparedData(pictured)).read(np.arange(1, N_ITEMS + 1))
    with torch.no_grad():
        expected = pool(tower, tower.forward_features(Preprocess(tower, 32)(images)), "default")
    assert features.shape == (N_ITEMS, tower.num_features) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-4, atol=1e-5)
    sidecar = json.loads(sidecar_path(tmp_path / "f.npy").read_text())
    assert sidecar["complete"] and sidecar["rows_done"] == N_ITEMS and sidecar["weights_sha256"] == file_sha256(weights)
    assert sidecar["item_order_sha256"] == dataset_order_sha256(PreparedData(pictured).item_tokens)
    assert sidecar["seed"] is None and sidecar["image_size"] == 32 and sidecar["dim"] == tower.num_features


def test_extraction_is_deterministic_across_worker_counts(pictured, tmp_path):
    extract(pictured, tmp_path / "a.npy", dtype="fp16")
    extract(pictured, tmp_path / "b.npy", dtype="fp16", workers=2)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    assert np.load(tmp_path / "a.npy").dtype == np.float16


def test_an_interrupted_extraction_resumes_to_identical_bytes(pictured, tmp_path, monkeypatch):
    extract(pictured, tmp_path / "whole.npy")
    calls = []
    forward = FeatureTower.forward

    def interrupted(self, images):
        calls.append(len(images))
        if len(calls) == 4:  # the size probe, two chunks of 8, then the third chunk is cut off
            raise KeyboardInterrupt
        return forward(self, images)

    monkeypatch.setattr(FeatureTower, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract(pictured, tmp_path / "cut.npy")
    sidecar = json.loads(sidecar_path(tmp_path / "cut.npy").read_text())
    assert sidecar["rows_done"] == 16 and not sidecar["complete"]
    with pytest.raises(UserError, match="incomplete extraction"):
        load_features(tmp_path / "cut.npy", N_ITEMS, sidecar["item_order_sha256"])
    calls.clear()
    extract(pictured, tmp_path / "cut.npy")
    assert calls == [1, N_ITEMS - 16]  # the probe, then only the rows not done
    assert (tmp_path / "cut.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()


def test_a_different_request_names_the_differing_key(pictured, tmp_path, capsys):
    out = tmp_path / "f.npy"
    extract(pictured, out)
    with pytest.raises(UserError, match=r"was written with pooling \"default\", this request has pooling \"mean\"; use overwrite=True"):
        extract(pictured, out, pooling="mean")
    code = main(["extract", "--data", str(pictured), "--encoder", "test_vit", "--image-size", "16",
                 "--workers", "0", "--dtype", "fp32", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "image_size 32" in err and "--overwrite to start over" in err and "\n" not in err
    assert extract(pictured, out, pooling="mean", overwrite=True)["pooling"] == "mean"


# --- import --------------------------------------------------------------------------------
def test_import_reorders_rows_into_the_dataset_order(pictured, tmp_path):
    rng = np.random.default_rng(0)
    ours = rng.standard_normal((N_ITEMS, 6)).astype(np.float32)
    order = rng.permutation(N_ITEMS)  # row k of the source holds item order[k] + 1
    tokens = [f"i{k + 1}" for k in order] + ["i999"]  # items the dataset does not have are skipped
    np.save(tmp_path / "src.npy", np.concatenate([ours[order], np.full((1, 6), np.nan, np.float32)]))
    (tmp_path / "order.csv").write_text("item_id,title\n" + "".join(f"{t},x\n" for t in tokens))
    assert main(["extract", "--data", str(pictured), "--import", str(tmp_path / "src.npy"),
                 "--order", str(tmp_path / "order.csv"), "--out", str(tmp_path / "f.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), ours)
    assert load_features(tmp_path / "f.npy", N_ITEMS, dataset_order_sha256(PreparedData(pictured).item_tokens)).shape == (N_ITEMS + 1, 6)


@pytest.mark.parametrize("problem,message", [
    ("length", r"src.npy: 20 rows, but \S*order.txt lists 19 items"),
    ("missing", r"order.txt: prepared item i3 not listed"),
    ("twice", r"order.txt: item i2 is listed more than once \(entries 2 and 3\)"),
    ("nan", r"src.npy: row 4 \(item i5\) is not finite"),
    ("int", r"src.npy: dtype int64 is not a float type"),
])
def test_import_problems_are_one_line_errors(pictured, tmp_path, problem, message):
    array = np.arange(N_ITEMS * 3, dtype=np.float32).reshape(N_ITEMS, 3)
    tokens = [f"i{i}" for i in range(1, N_ITEMS + 1)]
    if problem == "length":
        tokens = tokens[:-1]
    elif problem == "missing":
        tokens[2] = "i777"
    elif problem == "twice":
        tokens[2] = "i2"
    elif problem == "nan":
        array[4, 1] = np.nan
    elif problem == "int":
        array = array.astype(np.int64)
    np.save(tmp_path / "src.npy", array)
    (tmp_path / "order.txt").write_text("\n".join(tokens) + "\n")
    with pytest.raises(UserError, match=message) as err:
        import_features(pictured, tmp_path / "src.npy", tmp_path / "order.txt", tmp_path / "f.npy")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "f.npy").exists() and not sidecar_path(tmp_path / "f.npy").exists()


# --- the features item encoders -------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    data = write_prepared(root / "data", patterned_sequences(120, 40, 12))
    return data, write_features(data, np.random.default_rng(1).standard_normal((40, 12)).astype(np.float16), root / "f.npy")


@pytest.mark.parametrize("change,message", [
    ("rows", "f.npy: 39 rows, but the dataset has 40 items"),
    ("dtype", "f.npy: dtype int32 is not a float type"),
    ("nan", r"f.npy: row 2 \(item index 3\) is not finite"),
    ("order", "f.npy: item order differs from the dataset's"),
    ("sidecar", "f.npy: no sidecar f.json"),
])
def test_mismatched_feature_files_are_refused_with_one_line(tiny, tmp_path, change, message):
    data, good = tiny
    array, sidecar = np.load(good), json.loads(sidecar_path(good).read_text())
    order = dataset_order_sha256(PreparedData(data).item_tokens)
    if change == "rows":
        array = array[:-1]
    elif change == "dtype":
        array = (array * 100).astype(np.int32)
    elif change == "nan":
        array[2, 0] = np.nan
    elif change == "order":
        order = "0" * 64
    np.save(tmp_path / "f.npy", array)
    if change != "sidecar":
        sidecar_path(tmp_path / "f.npy").write_text(json.dumps(sidecar))
    with pytest.raises(UserError, match=message) as err:
        FeatureEncoder(40, 8, order, str(tmp_path / "f.npy"))
    assert "\n" not in str(err.value)


def features_config(data: Path, features: Path, model: str, kind: str = "features", **items):
    project = BACKBONES.get(model).trainable  # rule-based models compare the raw features
    extra = {"project": project} if kind == "features" else {}
    return tiny_config(data, model, items={"kind": kind, "features": str(features), **extra, **items})


@pytest.mark.parametrize("model", BACKBONES.names())
def test_features_encoder_works_with_every_backbone(model, tiny, tmp_path):
    data, features = tiny
    config = features_config(data, features, model)
    if BACKBONES.get(model).trainable:
        losses = losses_over_steps(config, 3, tmp_path / "run")
        assert all(np.isfinite(losses)), losses
    trainer = Trainer(config, tmp_path / "eval")
    ranks = rank_targets(trainer.model, trainer.data, "test", config.data.max_len)
    assert ranks.shape == (120,) and 0 <= int(ranks.min()) and int(ranks.max()) < 40
    assert not any("features" in key for key in trainer.model.state_dict())  # data, not weights


@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_id_plus_features_keeps_the_size_and_gives_the_projection_the_encoder_rate(tiny, tmp_path, combine):
    data, features = tiny
    config = features_config(data, features, "mf", "id+features", combine=combine, id_size=12)
    config.train.encoder_lr = 1e-4
    trainer = Trainer(config, tmp_path / "run")
    encoder = trainer.model.item_encoder
    assert isinstance(encoder, IDFeatureEncoder) and encoder(torch.tensor([1, 2])).shape == (2, 32)
    groups = parameter_groups(trainer.model, config)
    projection = {id(p) for p in encoder.visual.projection.parameters()}
    assert {id(p) for g in groups if g["lr"] == 1e-4 for p in g["params"]} == projection
    assert all(np.isfinite(losses_over_steps(config, 3, tmp_path / "steps")))


# --- the visual-feature baselines -------------------------------------------------------------
def test_visrank_scores_equal_hand_computed_cosines(tmp_path):
    data = write_prepared(tmp_path / "data", [[1, 2, 3], [3, 4, 5]])
    vectors = np.array([[1, 0], [0, 1], [1, 1], [1, -1], [2, 0]], dtype=np.float32)
    features = write_features(data, vectors, tmp_path / "f.npy")
    encoder = FeatureEncoder(5, 99, dataset_order_sha256(PreparedData(data).item_tokens), str(features), project=False)
    lookup = ItemLookup.catalogue(encoder.catalogue())
    batch = Batch(users=torch.tensor([1, 2]), context=torch.tensor([[0, 1, 2], [0, 0, 0]]), targets=torch.tensor([0, 0]))
    r = 1 / np.sqrt(2)
    expected = {  # history {1, 2}: cos to item 1, 2, 3, 4, 5 = (1, 0, r, r, 1) and (0, 1, r, -r, 0)
        "maximum": [0, 1, 1, r, r, 1],
        "average": [0, 0.5, 0.5, r, 0, 0.5],
    }
    for aggregation, row in expected.items():
        visrank = VisRank(aggregation)
        scores = visrank.score_catalogue(batch, lookup, visrank.score_vectors(lookup, torch.arange(6)))
        torch.testing.assert_close(scores[0], torch.tensor(row, dtype=torch.float32))
        torch.testing.assert_close(scores[1], torch.zeros(6))  # no history: nothing to compare with


def test_vbpr_over_the_concat_hybrid_is_vbprs_score(tiny):
    """<user, item> = beta_i + <gamma_u, gamma_i> + <theta_u, E f_i> + <beta', f_i> + a per-user constant."""
    data, features = tiny
    order = dataset_order_sha256(PreparedData(data).item_tokens)
    encoder = IDFeatureEncoder(40, 16, order, str(features), combine="concat", id_size=6)
    vbpr = BACKBONES.create("vbpr", n_users=120, embedding_size=16)
    with torch.no_grad():
        vbpr.user_embedding.weight.normal_()
    batch = Batch(users=torch.tensor([3, 3]), context=torch.zeros(2, 1, dtype=torch.long), targets=torch.tensor([5, 9]))
    items = torch.tensor([5, 9])
    user = vbpr(batch, ItemLookup(items, encoder(items), 40))
    got = (user * encoder(items)).sum(-1)
    gamma_u, theta_u = vbpr.user_embedding.weight[3, :5], vbpr.user_embedding.weight[3, 5:]
    id_vectors, f = encoder.ids.embedding.weight[items], encoder.visual.raw(items)
    linear = encoder.visual.projection[-1]
    E, e0, beta, b0 = linear.weight[:-1], linear.bias[:-1], linear.weight[-1], linear.bias[-1]
    expected = id_vectors[:, 0] + id_vectors[:, 1:] @ gamma_u + (f @ E.T) @ theta_u + f @ beta
    constant = theta_u @ e0 + b0  # the same for every item of the user: cancels in every loss and ranking
    torch.testing.assert_close(got, expected + constant)


def test_visrank_without_features_is_refused(tiny):
    with pytest.raises(UserError, match="model visrank needs items.kind features, not id"):
        tiny_config(tiny[0], "visrank")


@pytest.fixture(scope="module")
def clustered(tmp_path_factory) -> tuple[Path, Path, float]:
    """Patterned walks (+1 steps) and features that carry the signal: a one-hot of each item's block
    of 6 consecutive items, plus a little noise; and the popularity baseline's test NDCG@10."""
    root = tmp_path_factory.mktemp("clustered")
    data = write_prepared(root / "data", patterned_sequences(300, 60, 14, seed=1))
    rng = np.random.default_rng(0)
    one_hot = np.eye(10, dtype=np.float32)[np.arange(60) // 6]
    features = write_features(data, np.hstack([one_hot, 0.1 * rng.standard_normal((60, 4))]), root / "f.npy")
    pop = train(tiny_config(data, "pop"), root / "pop")["test"]["NDCG@10"]
    return data, features, pop


@pytest.mark.parametrize("model,kind", [("vbpr", "id+features"), ("acf", "id+features"),
                                        ("curatornet", "features"), ("visrank", "features")])
def test_visual_baselines_beat_popularity(model, kind, clustered, tmp_path):
    data, features, pop = clustered
    config = features_config(data, features, model, kind, **({"combine": "concat"} if kind == "id+features" else {}))
    config.train.epochs = 6
    ndcg = train(config, tmp_path / "run")["test"]["NDCG@10"]
    assert ndcg > pop + 0.05, (ndcg, pop)
