"""Spatial features (`extract --pooling none`) and ACF's component-level attention over them, and
ACF scoring items by their ID vectors (model.score_items=id, PixelRec's ACF)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import patterned_sequences, write_prepared
from helpers import tiny_config
from pixelrec.cli import main
from pixelrec.data.batch import Batch
from pixelrec.data.images import ImageStore
from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError
from pixelrec.items.base import ItemLookup
from pixelrec.items.features import FeatureEncoder, IDFeatureEncoder
from pixelrec.jobs.extract import import_features
from pixelrec.models import BACKBONES
from pixelrec.storage.feature_files import dataset_order_sha256, load_features, sidecar_path
from pixelrec.towers.image_tower import create_tower
from pixelrec.training.trainer import train
from test_vinet import with_images, write_features

N_ITEMS = 20


def write_spatial(data: Path, array: np.ndarray, out: Path) -> Path:
    """A spatial feature file [n, M, C] for a dataset's items in index order, with a complete sidecar."""
    write_features(data, array.mean(1), out)  # a valid pooled file and sidecar, then made spatial
    np.save(out, array)
    sidecar = json.loads(sidecar_path(out).read_text())
    sidecar.update(pooling="none", components=int(array.shape[1]))
    sidecar_path(out).write_text(json.dumps(sidecar))
    return out


@pytest.fixture(scope="module")
def clustered(tmp_path_factory) -> tuple[Path, Path, float]:
    """Patterned walks and spatial features whose first of 4 components carries each item's block of 6
    consecutive items (the others are noise); and the popularity baseline's test NDCG@10."""
    root = tmp_path_factory.mktemp("spatial")
    data = write_prepared(root / "data", patterned_sequences(300, 60, 14, seed=1))
    rng = np.random.default_rng(0)
    array = 0.3 * rng.standard_normal((60, 4, 10)).astype(np.float32)
    array[:, 0] = np.eye(10, dtype=np.float32)[np.arange(60) // 6] + 0.1 * rng.standard_normal((60, 10))
    pop = train(tiny_config(data, "pop"), root / "pop")["test"]["NDCG@10"]
    return data, write_spatial(data, array, root / "spatial.npy"), pop


def test_pooling_none_stores_every_position_of_the_last_map(tmp_path):
    data = with_images(write_prepared(tmp_path / "data", patterned_sequences(30, N_ITEMS, 6)), N_ITEMS)
    weights = tmp_path / "resnet.pt"
    torch.save(create_tower("test_resnet", image_size=64).state_dict(), weights)
    out = tmp_path / "s.npy"
    code = main(["extract", "--data", str(data), "--encoder", "test_resnet", "--encoder-weights", str(weights),
                 "--image-size", "64", "--pooling", "none", "--batch-size", "8", "--workers", "0",
                 "--dtype", "fp32", "--device", "cpu", "--out", str(out)])
    assert code == 0
    stored = np.load(out)
    tower = create_tower("test_resnet", str(weights), image_size=64).eval()
    images = ImageStore.from_prepared(PreparedData(data)).read(np.arange(1, N_ITEMS + 1))
    with torch.no_grad():
        from pixelrec.towers.image_tower import Preprocess

        maps = tower.forward_features(Preprocess(tower, 64)(images))  # [n, C, H, W]
    expected = maps.flatten(2).transpose(1, 2).numpy()
    assert stored.shape == (N_ITEMS, maps.shape[2] * maps.shape[3], maps.shape[1]) and stored.shape[1] > 1
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-5)
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["components"] == stored.shape[1] and sidecar["dim"] == stored.shape[2]
    order = dataset_order_sha256(PreparedData(data).item_tokens)
    loaded = load_features(out, N_ITEMS, order, spatial=True)
    assert loaded.shape == (N_ITEMS + 1, *stored.shape[1:])
    with pytest.raises(UserError, match=r"s.npy: spatial features \(4 components per item.*only model acf"):
        load_features(out, N_ITEMS, order)  # a reader that cannot use them


@pytest.mark.parametrize("score_items,combine", [("encoder", "concat"), ("id", "sum")])
def test_acf_with_components_beats_popularity(clustered, tmp_path, score_items, combine):
    data, features, pop = clustered
    config = tiny_config(data, "acf", items={"kind": "id+features", "features": str(features), "combine": combine})
    config.model["score_items"] = score_items
    config.train.epochs = 6
    ndcg = train(config, tmp_path / "run")["test"]["NDCG@10"]
    assert ndcg > pop + 0.05, (ndcg, pop)


def test_spatial_features_are_refused_by_models_that_cannot_use_them(clustered, tmp_path):
    data, features, _ = clustered
    config = tiny_config(data, "vbpr", items={"kind": "id+features", "features": str(features), "combine": "concat"})
    with pytest.raises(UserError, match=r"spatial.npy: spatial features \(4 components per item\), which model vbpr "
                                        "cannot use"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "results.json").exists()


def test_one_component_is_the_pooled_file_and_the_identity(clustered, tmp_path):
    data, _, _ = clustered
    order = dataset_order_sha256(PreparedData(data).item_tokens)
    array = np.random.default_rng(2).standard_normal((60, 1, 10)).astype(np.float32)
    one = FeatureEncoder(60, 8, order, str(write_spatial(data, array, tmp_path / "one.npy")))
    pooled = FeatureEncoder(60, 8, order, str(write_features(data, array[:, 0], tmp_path / "pooled.npy")))
    assert one.component_count == 1 and torch.equal(one.features, pooled.features)
    acf = BACKBONES.create("acf", n_users=10, embedding_size=8)
    acf.initialise_items(one)
    assert acf.components is None  # nothing built: today's item-level attention alone
    # the component level itself, given one component, passes it through unchanged (beta = 1)
    acf.initialise_items(FeatureEncoder(60, 8, order, str(write_spatial(data, np.repeat(array, 3, 1),
                                                                        tmp_path / "three.npy"))))
    parts = torch.randn(2, 5, 1, 8)
    torch.testing.assert_close(acf.pool_components(torch.randn(2, 8), parts), parts[:, :, 0])


def test_score_items_id_scores_by_the_id_table(clustered, tmp_path):
    """user = u + sum_l alpha_l e_l, score = <user, e_j>: e the ID vectors; the features enter only the
    attention, through the components' attention beta (checked here by hand)."""
    data, features, _ = clustered
    torch.manual_seed(0)
    order = dataset_order_sha256(PreparedData(data).item_tokens)
    encoder = IDFeatureEncoder(60, 8, order, str(features), combine="sum")
    acf = BACKBONES.create("acf", n_users=10, embedding_size=8, score_items="id")
    acf.initialise_items(encoder)
    batch = Batch(users=torch.tensor([3, 4]), context=torch.tensor([[5, 9, 0], [0, 0, 0]]), targets=torch.tensor([7, 8]))
    items = ItemLookup.catalogue(torch.cat([torch.zeros(1, 8), encoder(torch.arange(1, 61))]), encoder.parts())
    with torch.no_grad():
        user = acf(batch, items)
        scoring = acf.score_vectors(items, torch.arange(61))
    ids = encoder.ids.embedding.weight
    torch.testing.assert_close(scoring[1:], ids[1:])
    assert torch.equal(scoring[0], torch.zeros(8))
    u = acf.user_embedding.weight[3]
    c = acf.components
    keys = []
    for item in (5, 9):
        x = encoder.visual.projection(encoder.visual.component_table[item].float())  # [M, 8]
        beta = torch.softmax(c["attention"](torch.relu(c["user"](u) + c["key"](x))).squeeze(-1), 0)
        keys.append(acf.attention(torch.relu(acf.user_key(u) + acf.item_key(ids[item]) + c["feature"](beta @ x))))
    alpha = torch.softmax(torch.cat(keys), 0)
    expected = u + alpha[0] * ids[5] + alpha[1] * ids[9]
    torch.testing.assert_close(user[0], expected.detach())
    torch.testing.assert_close(user[1], acf.user_embedding.weight[4].detach())  # no history: the user's own vector

    acf.project_user = True  # the original's user part: W_u u + b
    with torch.no_grad():
        projected = acf(batch, items)
    torch.testing.assert_close(projected[0], (expected - u + acf.user_key(u)).detach())
    torch.testing.assert_close(projected[1], acf.user_key(acf.user_embedding.weight[4]).detach())


def test_project_user_needs_the_attention_at_the_embedding_width():
    with pytest.raises(UserError, match=r"model.project_user=true .*attention_size=16.*embedding_size=8"):
        BACKBONES.create("acf", n_users=10, embedding_size=8, attention_size=16, project_user=True)


@pytest.mark.parametrize("items,has", [({"kind": "id+features", "combine": "concat"}, "an ID part of width 16"),
                                       ({"kind": "features"}, "no ID part")])
def test_score_items_id_without_an_id_table_is_refused(clustered, tmp_path, items, has):
    data, features, _ = clustered
    config = tiny_config(data, "acf", items={"features": str(features), **items})
    config.model["score_items"] = "id"
    with pytest.raises(UserError, match=f"model.score_items=id .* these items have {has}; use items.kind"):
        train(config, tmp_path / "run")


def test_spatial_maps_made_elsewhere_import_as_components(tmp_path):
    data = write_prepared(tmp_path / "data", patterned_sequences(30, N_ITEMS, 6))
    tokens = list(PreparedData(data).item_tokens)[-N_ITEMS:]  # items 1..n (the table starts with padding)
    (tmp_path / "order.txt").write_text("\n".join(reversed(tokens)) + "\n")
    maps = np.random.default_rng(0).standard_normal((N_ITEMS, 3, 2, 2)).astype(np.float32)  # [n, C, H, W]
    expected = maps.reshape(N_ITEMS, 3, 4).transpose(0, 2, 1)[::-1]  # rows back in the dataset's order
    order = dataset_order_sha256(PreparedData(data).item_tokens)
    for name, array in (("chw", maps), ("hwc", maps.transpose(0, 2, 3, 1)), ("mc", maps.reshape(N_ITEMS, 3, 4).transpose(0, 2, 1))):
        np.save(tmp_path / f"{name}.npy", np.ascontiguousarray(array))
        sidecar = import_features(data, tmp_path / f"{name}.npy", tmp_path / "order.txt", tmp_path / f"{name}-in.npy")
        assert (sidecar["components"], sidecar["dim"]) == (4, 3)
        np.testing.assert_array_equal(load_features(tmp_path / f"{name}-in.npy", N_ITEMS, order, spatial=True)[1:],
                                      expected)
    np.save(tmp_path / "odd.npy", np.zeros((N_ITEMS, 2, 3, 5), np.float32))
    with pytest.raises(UserError, match=r"odd.npy: expected .* a square map .* got shape \(\d+, 2, 3, 5\)"):
        import_features(data, tmp_path / "odd.npy", tmp_path / "order.txt", tmp_path / "odd-in.npy")
