"""The paper profile's last options: each backbone's initialisation of its item table and attention,
the padding vectors of GRU4Rec, NextItNet and LightSANs, FM and DSSM's first-row training and the tie
rule; each checked against the PixelRec code's rule worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import patterned_sequences, write_prepared
from pixelrec.config import resolve
from pixelrec.data.batch import Batch
from pixelrec.data.prepared import PreparedData
from pixelrec.data.views import TrainingView, batch_rng
from test_paper_options import Facts, assert_uniform, compose
from test_vinet import write_features

D = 64


# --- initial scale of the item tables ---------------------------------------------------------
@pytest.mark.parametrize("model", ["fm", "dssm", "gru4rec", "vbpr"])
def test_xavier_draws_the_whole_id_table_padding_row_included(model):
    table = compose(model, "xavier", d=D).item_encoder.embedding.weight
    std = math.sqrt(2 / (Facts.n_items + 1 + D))  # xavier_normal_ of [rows, d]: about 0.044 here, 0.0045 at 96K rows
    assert table.std().item() == pytest.approx(std, rel=0.03)
    assert table.abs().max().item() > 3.5 * std  # a normal law, not a truncated one
    assert table[0].abs().sum() > 0  # the original's padding row is drawn too
    default = compose(model, d=D).item_encoder.embedding.weight
    assert default.std().item() == pytest.approx(0.02, rel=0.03)


def test_vbpr_xavier_draws_its_user_table_xavier_normal_too():
    users = compose("vbpr", "xavier", d=D).backbone.user_embedding.weight
    assert users.std().item() == pytest.approx(math.sqrt(2 / (Facts.n_users + 1 + D - 2)), rel=0.03)


def test_nextitnet_uniform_draws_the_table_within_one_over_sqrt_rows():
    table = compose("nextitnet", "uniform", d=D).item_encoder.embedding.weight
    assert_uniform(table, 1 / math.sqrt(Facts.n_items + 1))  # np.sqrt(1. / item_num), item_num counting padding
    assert table[0].abs().sum() > 0


def test_acf_kaiming_draws_user_and_item_tables_with_std_sqrt_two_over_d():
    model = compose("acf", "kaiming", d=D)
    for table in (model.item_encoder.embedding.weight, model.backbone.user_embedding.weight):
        assert table.std().item() == pytest.approx(math.sqrt(2 / D), rel=0.03)  # 0.125 at the paper's d = 128
    assert compose("acf", d=D).item_encoder.embedding.weight.std().item() == pytest.approx(0.02, rel=0.03)


def test_the_feature_projection_follows_the_rule_of_vbpr_and_acf(tmp_path):
    from pixelrec.factory import build_recommender

    data = write_prepared(tmp_path / "d", patterned_sequences(30, 40, 6))
    features = write_features(data, np.random.default_rng(0).standard_normal((40, 600)).astype(np.float16),
                              tmp_path / "f.npy")

    class WithFeatures(Facts):
        n_users, n_items = 30, 40

        def for_class(self, cls):
            from pixelrec.storage.feature_files import dataset_order_sha256

            facts = super().for_class(cls)
            if cls.__name__ == "IDFeatureEncoder":
                facts["item_order_sha256"] = dataset_order_sha256(PreparedData(data).item_tokens)
            return facts

    items = {"features": str(features), "combine": "sum"}
    for model, init, std in (("vbpr", "xavier", math.sqrt(2 / (600 + D))), ("acf", "kaiming", math.sqrt(2 / 600))):
        torch.manual_seed(0)
        built = build_recommender(model, {"embedding_size": D, "init": init}, "id+features", items, "bpr", {},
                                  WithFeatures())
        linear = built.item_encoder.visual.projection[0]
        assert linear.weight.std().item() == pytest.approx(std, rel=0.05)
        assert (linear.bias == 0).all()
        torch.manual_seed(0)
        plain = build_recommender(model, {"embedding_size": D}, "id+features", items, "bpr", {}, WithFeatures())
        assert_uniform(plain.item_encoder.visual.projection[0].weight, 1 / math.sqrt(600))  # nn.Linear's default


@pytest.mark.parametrize("attention_init, qkv, out", [
    ("xavier", math.sqrt(2 / (D + 3 * D)), math.sqrt(2 / (D + D))),  # 0.031 and 0.044 at d = 512
    ("normal", 0.02, 0.02),  # IDNet/bert4rec.py _init_weights: normal_(0, initializer_range 0.02)
])
def test_bert4rec_attention_projections_follow_attention_init(attention_init, qkv, out):
    torch.manual_seed(0)
    model = compose("bert4rec", d=D, attention_init=attention_init, n_layers=2, n_heads=2)
    for block in model.backbone.body.blocks:
        assert block.attention.qkv.weight.std().item() == pytest.approx(qkv, rel=0.05)
        assert block.attention.out.weight.std().item() == pytest.approx(out, rel=0.05)


@pytest.mark.parametrize("model, expected", [
    ("fm", {"init": "xavier"}), ("dssm", {"init": "xavier"}), ("vbpr", {"init": "xavier", "item_bias": False}),
    ("acf", {"init": "kaiming"}), ("gru4rec", {"init": "xavier", "padding": "encoded"}),
    ("nextitnet", {"init": "uniform", "padding": "encoded"}),
    ("lightsans", {"attention": "recbole", "padding": "encoded"}), ("bert4rec", {"attention_init": "normal"}),
])
def test_the_paper_profile_selects_each_originals_initialisation_and_padding(model, expected):
    profile, default = resolve(model=model, files=["paper"]).model, resolve(model=model).model
    assert {k: profile.get(k) for k in expected} == expected
    assert all(default.get(k) != v for k, v in expected.items())
    assert "first_row_only" not in profile  # the FM/DSSM bug is copied only on request


# --- padding vectors --------------------------------------------------------------------------
CONTEXT = torch.tensor([[0, 0, 3, 5], [0, 2, 4, 6], [1, 7, 8, 9]])


def batch_of(context: torch.Tensor) -> Batch:
    return Batch(users=torch.arange(len(context)), context=context, targets=torch.zeros_like(context))


def test_gru4rec_encoded_padding_feeds_the_tables_row_zero_to_the_gru():
    model = compose("gru4rec", "xavier", d=8, padding="encoded", dropout=0.0)
    backbone, table = model.backbone, model.item_encoder.embedding.weight
    out = backbone(batch_of(CONTEXT), model.lookup(batch_of(CONTEXT)))
    by_hand = backbone.dense(backbone.gru(F.embedding(CONTEXT, table))[0])  # the original: embedding(items), row 0 too
    torch.testing.assert_close(out, by_hand)
    zeros = compose("gru4rec", "xavier", d=8, dropout=0.0)
    out = zeros.backbone(batch_of(CONTEXT), zeros.lookup(batch_of(CONTEXT)))
    cleared = zeros.item_encoder.embedding.weight.detach().clone()
    cleared[0] = 0
    torch.testing.assert_close(out, zeros.backbone.dense(zeros.backbone.gru(F.embedding(CONTEXT, cleared))[0]))
    assert (out[0, :2] == zeros.backbone.dense.bias).all()  # zero state before the first item: only the bias


def test_the_padding_row_is_read_but_never_trained():
    model = compose("gru4rec", "xavier", d=8, padding="encoded", dropout=0.0)
    batch = batch_of(CONTEXT)
    batch.targets = torch.tensor([[0, 0, 5, 4], [0, 4, 6, 3], [7, 8, 9, 2]])
    batch.negatives = torch.full_like(batch.targets, 10) * (batch.targets > 0)
    model(batch)["loss"].backward()
    grad = model.item_encoder.embedding.weight.grad
    assert grad[0].abs().sum() == 0 and grad[3].abs().sum() > 0  # padding_idx=0 in the original


def test_nextitnet_encoded_padding_keeps_padding_activations_as_the_original():
    model = compose("nextitnet", "uniform", d=8, padding="encoded")
    x = F.embedding(CONTEXT, model.item_encoder.embedding.weight)
    for block in model.backbone.blocks:  # ResidualBlock_b without any re-zeroing
        h = F.relu(block.norm1(block.conv1(x)))
        x = x + F.relu(block.norm2(block.conv2(h)))
    torch.testing.assert_close(model.backbone(batch_of(CONTEXT), model.lookup(batch_of(CONTEXT))), x)
    zeros = compose("nextitnet", "uniform", d=8)
    out = zeros.backbone(batch_of(CONTEXT), zeros.lookup(batch_of(CONTEXT)))
    assert (out[0, :2] == 0).all()  # ours: padding stays exactly zero through every block


def test_lightsans_encoded_padding_is_the_layer_norm_of_row_zero():
    seen = []
    model = compose("lightsans", d=8, padding="encoded", attention="recbole", dropout=0.0, n_heads=2)
    model.backbone.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model.backbone(batch_of(CONTEXT), model.lookup(batch_of(CONTEXT)))
    norm, table = model.backbone.norm, model.item_encoder.embedding.weight
    torch.testing.assert_close(seen[-1], norm(F.embedding(CONTEXT, table)))
    assert table[0].std().item() > 0.005  # N(0, 0.02), not zeros: a full-scale token after the LayerNorm
    zeros = compose("lightsans", d=8, attention="recbole", dropout=0.0, n_heads=2)
    zeros.backbone.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    zeros.backbone(batch_of(CONTEXT), zeros.lookup(batch_of(CONTEXT)))
    torch.testing.assert_close(seen[-1][0, 0], zeros.backbone.norm(torch.zeros(8)))


def zeros_by_hand(encoder) -> torch.Tensor:
    """The item vector of an input that is 0 everywhere after normalisation (PixelRec's pad_image)."""
    features = encoder.tower.forward_features(torch.zeros(1, 3, 32, 32))
    return encoder.projection(encoder.tower.forward_head(features, pre_logits=True))[0]


@pytest.mark.parametrize("model", ["gru4rec", "nextitnet", "lightsans"])
def test_pixel_padding_is_the_encoders_vector_of_a_zero_image_with_gradients(model):
    args = {"n_heads": 2} if model == "lightsans" else {}
    built = compose(model, kind="pixels", d=16, padding="encoded", **args)
    built.train()
    lookup = built.lookup(batch_of(CONTEXT))
    torch.testing.assert_close(lookup.padding_vector, zeros_by_hand(built.item_encoder))
    torch.testing.assert_close(lookup.padded(CONTEXT)[0, 0], lookup.padding_vector)
    lookup.padding_vector.sum().backward()
    assert built.item_encoder.projection[0].weight.grad.abs().sum() > 0
    built.eval()
    catalogue, _ = built.catalogue_vectors()
    torch.testing.assert_close(catalogue.padding_vector, zeros_by_hand(built.item_encoder))
    plain = compose(model, kind="pixels", d=16, **args)
    assert plain.lookup(batch_of(CONTEXT)).padding_vector is None


# --- FM and DSSM: the first row of each batch -------------------------------------------------
def test_first_row_only_keeps_the_batchs_first_leave_one_out_row(tmp_path):
    histories = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14]]  # one window of 5 training items each
    data = PreparedData(write_prepared(tmp_path / "d", histories, 20))
    args = dict(pair_context="window", negatives_avoid="window", window_remainder="drop", negatives=1)
    full = TrainingView(data, "pair", 10, **args).batch(np.array([1, 0]), batch_rng(0, 0, 0))
    first = TrainingView(data, "pair", 10, first_row_only=True, **args).batch(np.array([1, 0]), batch_rng(0, 0, 0))
    assert len(full) == 10 and len(first) == 1
    # SampleOneTower's first row of window 1 (user 2): item 8 left out, predicted from 9..12
    assert first.users.tolist() == [2] and first.targets.tolist() == [8]
    assert first.context.tolist() == [[0] * 6 + [9, 10, 11, 12]]
    assert first.negatives.item() not in (8, 9, 10, 11, 12)


@pytest.mark.parametrize("model", ["fm", "dssm"])
def test_first_row_only_trains_on_one_row_a_step(model, tmp_path):
    from pixelrec.factory import DatasetFacts

    data = PreparedData(write_prepared(tmp_path / "d", patterned_sequences(40, 30, 14)))
    config = resolve(model=model, files=["paper"], sets=["model.first_row_only=true"],
                     flags={"data": {"path": str(tmp_path / "d")}})
    assert config.model["first_row_only"] is True
    from pixelrec.factory import build_recommender

    built = build_recommender(model, config.model_args, "id", {}, "bpr", {}, DatasetFacts(data, 10))
    spec = built.backbone.view_spec(config.data)
    assert spec.first_row_only and spec.pair_context == "window"
    view = TrainingView.of(data, spec, built.loss.sampling)
    batch = view.batch(np.arange(8), batch_rng(0, 0, 0))
    built(batch)["loss"].backward()
    grad = built.item_encoder.embedding.weight.grad
    touched = set(torch.nonzero(grad.abs().sum(1)).flatten().tolist())
    row = set(batch.context[0].tolist()) | {batch.targets.item(), batch.negatives.item()}
    assert touched <= row - {0} and touched  # only the one row's items learn


# --- ties -------------------------------------------------------------------------------------
def test_tie_rules_by_hand():
    from pixelrec.evaluation.evaluator import tie_rank

    inf = float("-inf")
    scores = torch.tensor([[inf, 1.0, 2.0, 2.0, 2.0, 0.0], [inf, 3.0, 3.0, 3.0, 3.0, 3.0]])
    targets = torch.tensor([3, 5])
    target_scores = scores.gather(1, targets[:, None])
    assert tie_rank(scores, target_scores, targets, "against").tolist() == [2, 4]  # both other 2.0s; four 3.0s
    assert tie_rank(scores, target_scores, targets, "index").tolist() == [1, 4]  # item 2 only; items 1-4
    assert tie_rank(scores, target_scores, torch.tensor([2, 1]), "index").tolist() == [0, 0]


def test_the_paper_profile_ranks_ties_by_index(tmp_path):
    assert resolve(model="sasrec", files=["paper"]).eval.ties == "index"
    assert resolve(model="sasrec").eval.ties == "against"


def test_a_constant_scorer_gets_hits_only_under_index_ties(tmp_path):
    from pixelrec.evaluation.evaluator import rank_targets
    from pixelrec.factory import DatasetFacts, build_recommender

    data = PreparedData(write_prepared(tmp_path / "d", [[5, 6, 7, 1], [8, 9, 10, 2], [3, 4, 11, 12]], 12))
    model = build_recommender("mf", {"embedding_size": 4}, "id", {}, "bpr", {}, DatasetFacts(data, 10))
    with torch.no_grad():
        model.backbone.user_embedding.weight.zero_()  # every item scores 0
    ranks = {ties: rank_targets(model, data, "test", 10, ties=ties).tolist() for ties in ("against", "index")}
    # test targets 1, 2 and 12; each user's 3 history items masked: 9 items tie at 0
    assert ranks["against"] == [8, 8, 8]
    assert ranks["index"] == [0, 1, 8]  # items below the target's index that are not masked: none, item 1, 8 others


def test_pixel_gru4rec_under_the_profile_encodes_its_padding():
    config = resolve(model="gru4rec", files=["paper"], flags={"items": {"kind": "pixels",
                                                                        "image": {"encoder": "clip-vit-b32"}}})
    assert config.model["padding"] == "encoded"


# --- constant images inside the encoder's batch -----------------------------------------------
def test_constant_images_in_batch_share_one_forward_and_its_batchnorm_statistics():
    import copy

    from test_paper_heads import encoder, images

    # 64 px: the last stage's map is 2 x 2, so BatchNorm can take a one-image batch (the separate forward)
    together = encoder(encoder="test_resnet", image_size=64, frozen_mode="train", constant_images="in_batch").train()
    apart = copy.deepcopy(together)
    apart.constant_images = "separate"
    reference = copy.deepcopy(together)
    covers = images(8, 64)
    vectors, special = together.encode(torch.arange(1, 9), covers, ("ones_image", "padding"))
    inputs = reference.preprocess(covers)
    one_batch = torch.cat([inputs, torch.ones_like(inputs[:1]), torch.zeros_like(inputs[:1])])
    expected = reference._head(reference.tower.forward_features(one_batch))  # the original's: one batch, every image
    torch.testing.assert_close(vectors, expected[:8])
    torch.testing.assert_close(special["ones_image"], expected[8])
    torch.testing.assert_close(special["padding"], expected[9])
    bn = together.tower.bn1
    assert torch.equal(bn.running_mean, reference.tower.bn1.running_mean) and bn.num_batches_tracked.item() == 1
    apart.encode(torch.arange(1, 9), covers, ("ones_image", "padding"))
    assert apart.tower.bn1.num_batches_tracked.item() == 3  # a one-image batch for each constant image
    assert not torch.allclose(apart.tower.bn1.running_mean, bn.running_mean)


def test_the_paper_profile_encodes_constant_images_in_the_batch():
    flags = {"items": {"kind": "pixels", "image": {"encoder": "clip-rn50"}}}
    assert resolve(model="bert4rec", files=["paper"], flags=flags).items.image.constant_images == "in_batch"
    assert resolve(model="bert4rec", flags=flags).items.image.constant_images == "separate"
