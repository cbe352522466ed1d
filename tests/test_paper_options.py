"""The `paper` profile's loss, initialisation, Swin and BERT4Rec options, each against a value worked
out by hand from the PixelRec code's own rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import write_prepared
from helpers import no_dropout, tiny_config
from pixelrec.config import resolve
from pixelrec.data.batch import Batch
from pixelrec.data.prepared import PreparedData
from pixelrec.data.views import TrainingView, batch_rng
from pixelrec.distributed import Job
from pixelrec.errors import UserError
from pixelrec.items.pixels import ImageSettings
from pixelrec.losses import LOSSES
from pixelrec.training.trainer import Trainer


# --- loss reduction --------------------------------------------------------------------------
def one_dimensional_batch() -> tuple[Batch, torch.Tensor]:
    """Four windows, three targets: scores are products of 1-d vectors, so each BPR term is known."""
    targets = torch.tensor([[2, 3, 0], [0, 0, 4], [0, 0, 0], [0, 0, 0]])
    negatives = torch.tensor([[2, 4, 0], [0, 0, 3], [0, 0, 0], [0, 0, 0]])
    batch = Batch(users=torch.arange(4), context=torch.ones_like(targets), targets=targets, negatives=negatives)
    return batch, torch.ones(3, 1)


def item_vectors(idx: torch.Tensor) -> torch.Tensor:
    """Item i's vector is log(i): score differences are logs of ratios, so sigmoids are fractions."""
    return torch.log(idx.double()).unsqueeze(-1)


@pytest.mark.parametrize("reduction, expected", [
    # terms -log sigmoid(log(p / n)) = log(1 + n / p): log 2 (2 vs 2), log(7/3) (3 vs 4), log(7/4) (4 vs 3)
    ("targets", (math.log(2) + math.log(7 / 3) + math.log(7 / 4)) / 3),  # mean over the 3 targets
    ("windows", (math.log(2) + math.log(7 / 3) + math.log(7 / 4)) / 4),  # summed, over the 4 windows
])
def test_bpr_reduction_by_hand(reduction, expected):
    batch, users = one_dimensional_batch()
    loss = LOSSES.create("bpr", reduction=reduction)
    targets, _ = batch.real_targets()
    value = loss(users.double(), targets, batch, item_vectors)
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_softmax_reduction_sums_each_window_and_divides_by_windows():
    batch, users = one_dimensional_batch()
    targets, _ = batch.real_targets()
    batch.candidates = torch.tensor([2, 3, 4])
    batch.candidate_mask = torch.zeros(3, 3, dtype=torch.bool)
    # logits log 2, log 3, log 4 for every target: softmax probabilities 2/9, 3/9, 4/9
    terms = [math.log(9 / 2), math.log(9 / 3), math.log(9 / 4)]
    for reduction, count in (("targets", 3), ("windows", 4)):
        loss = LOSSES.create("softmax", reduction=reduction)
        value = loss(users.double(), targets, batch, item_vectors)
        assert value.item() == pytest.approx(sum(terms) / count, rel=1e-6)


def test_row_shares_of_several_ranks_add_up_to_the_rank_count(tmp_path):
    histories = [list(range(1, 12)), list(range(21, 45)), [51, 52, 53], [61]]  # 1, 2, 1 and 1 windows of 11
    data = write_prepared(tmp_path / "d", [h + [201 + 2 * u, 202 + 2 * u] for u, h in enumerate(histories)], 212)
    view = TrainingView(PreparedData(data), "sequence", 10, window_remainder="drop")
    windows = np.arange(len(view))
    shares = [view.batch(windows, batch_rng(0, 0, 0), Job(r, 3)) for r in range(3)]
    assert sum(s.row_scale for s in shares) == pytest.approx(3.0)
    for share in shares:  # each rank's windows over the global batch's, times the rank count
        assert share.row_scale == pytest.approx(len(share) / len(windows) * 3)
        assert share.scale_for("windows") == share.row_scale and share.scale_for("targets") == share.loss_scale


@pytest.mark.parametrize("model", ["sasrec", "bert4rec", "gru4rec", "nextitnet", "srgnn", "mf"])
def test_the_paper_profile_averages_over_windows_where_the_original_does(model):
    windowed = model in ("sasrec", "bert4rec", "gru4rec", "nextitnet")
    for kind in ("id", "pixels"):
        flags = {"items": {"kind": kind, **({"image": {"encoder": "clip-vit-b32"}} if kind == "pixels" else {})}}
        paper = resolve(model=model, files=["paper"], flags=flags)
        assert paper.loss.reduction == ("windows" if windowed else "targets")
        assert resolve(model=model, flags=flags).loss.reduction == "targets"


def test_a_training_step_under_windows_is_the_sum_over_the_batchs_windows(tiny_data, tmp_path):
    losses = {}
    for reduction in ("targets", "windows"):
        config = no_dropout(tiny_config(tiny_data, "sasrec", train={"batch_size": 8, "epochs": 1}))
        config.loss.reduction = reduction
        trainer = Trainer(config, tmp_path / reduction)
        batch = next(iter(trainer.batches(0)))
        losses[reduction] = trainer.model(batch)["loss"].item()
    n_targets, n_windows = int((batch.targets > 0).sum()), len(batch)
    assert n_targets > n_windows  # windows of several targets: the two reductions differ
    assert losses["windows"] * n_windows == pytest.approx(losses["targets"] * n_targets, rel=1e-5)


# --- MF and SR-GNN initialisation ------------------------------------------------------------
class Store:
    """An image store of 32-px covers."""

    size = 32

    def read(self, indices) -> torch.Tensor:
        """Each item's cover is its own fixed pattern."""
        pixels = torch.arange(3 * 32 * 32).view(1, 3, 32, 32)
        return ((torch.as_tensor(indices).view(-1, 1, 1, 1) * 97 + pixels * 31) % 256).to(torch.uint8)


class Facts:
    """The dataset facts build_recommender asks for, without a dataset."""

    n_users, n_items, max_len = 3000, 1000, 10

    def for_class(self, cls: type) -> dict:
        from pixelrec.registry import constructor_parameters

        facts = {"n_users": self.n_users, "n_items": self.n_items, "max_len": self.max_len, "image_store": Store()}
        return {k: v for k, v in facts.items() if k in constructor_parameters(cls)}


PIXELS = {"image": ImageSettings(encoder="test_vit", image_size=32, tune_last=1)}


def compose(model: str, init: str | None = None, kind: str = "id", d: int = 64, **model_args):
    from pixelrec.factory import build_recommender

    torch.manual_seed(0)
    args = {"embedding_size": d, **({"init": init} if init else {}), **model_args}
    return build_recommender(model, args, kind, PIXELS if kind == "pixels" else {}, "bpr", {}, Facts())


def test_mf_xavier_draws_user_and_id_item_tables_xavier_normal():
    d = 64
    model = compose("mf", "xavier", d=d)
    users, items = model.backbone.user_embedding.weight, model.item_encoder.embedding.weight
    # xavier_normal_ of an [n, d] table: std sqrt(2 / (n + d)), unbounded
    for table, rows in ((users, Facts.n_users + 1), (items, Facts.n_items + 1)):
        std = math.sqrt(2 / (rows + d))
        assert table.std().item() == pytest.approx(std, rel=0.02)
        assert table.abs().max().item() > 3.5 * std
    default = compose("mf", "default", d=d)
    assert default.backbone.user_embedding.weight.abs().max().item() <= 0.04  # truncated at 2 std of 0.02
    assert default.item_encoder.embedding.weight.std().item() == pytest.approx(0.02, rel=0.02)


def test_mf_xavier_leaves_an_image_projection_as_it_is():
    linear = compose("mf", "xavier", "pixels").item_encoder.projection[0]  # momf.py: load.py's own init
    assert_uniform(linear.weight, 1 / math.sqrt(linear.in_features))  # nn.Linear's default


def assert_uniform(tensor: torch.Tensor, bound: float) -> None:
    assert tensor.abs().max().item() <= bound
    assert tensor.abs().max().item() > 0.8 * bound  # spread over the whole interval, not a narrower law
    if tensor.numel() >= 1000:
        assert tensor.var().item() == pytest.approx(bound ** 2 / 3, rel=0.1)


@pytest.mark.parametrize("kind", ["id", "pixels"])
def test_srgnn_uniform_draws_every_parameter_and_the_item_vectors_within_one_over_sqrt_d(kind):
    d = 64
    bound = 1 / math.sqrt(d)
    model = compose("srgnn", "uniform", kind, d=d)
    for name, weight in model.backbone.named_parameters():
        if kind == "pixels" and name == "transform.bias":  # PixelNet/mosrgnn.py leaves it at nn.Linear's default
            assert_uniform(weight, 1 / math.sqrt(2 * d))
        else:
            assert_uniform(weight, bound)
    if kind == "id":
        assert_uniform(model.item_encoder.embedding.weight, bound)
    else:
        for weight in model.item_encoder.projection.parameters():
            assert_uniform(weight, bound)
    default = compose("srgnn", "default", kind, d=d)
    assert all((p == 0).all() for p in default.backbone.parameters() if p.dim() == 1)  # zero biases


@pytest.mark.parametrize("model, init, kind", [("mf", "xavier", "id"), ("mf", "xavier", "pixels"),
                                              ("srgnn", "uniform", "id"), ("srgnn", "uniform", "pixels")])
def test_the_originals_initialisation_is_redrawn_bit_for_bit_in_its_order(model, init, kind):
    """The composed model equals one built by hand with the same seed, the original's redraws applied
    to exactly its tensors in its order: the ID table (IDNet), or the projection's weights and biases
    then the output transform's bias (PixelNet SR-GNN); an image projection keeps its init under MF."""
    from torch import nn

    from pixelrec.items import ITEM_ENCODERS
    from pixelrec.models import BACKBONES

    composed = compose(model, init, kind)
    torch.manual_seed(0)
    backbone = BACKBONES.create(model, **Facts().for_class(BACKBONES.get(model)), embedding_size=64, init=init)
    encoder = ITEM_ENCODERS.create(kind, **Facts().for_class(ITEM_ENCODERS.get(kind)),
                                   **(PIXELS if kind == "pixels" else {}), embedding_size=64)
    if (model, kind) == ("mf", "id"):
        nn.init.xavier_normal_(encoder.embedding.weight)
    elif (model, kind) == ("srgnn", "id"):
        nn.init.uniform_(encoder.embedding.weight, -1 / 8, 1 / 8)
    elif (model, kind) == ("srgnn", "pixels"):
        for weight in encoder.projection.parameters():
            nn.init.uniform_(weight, -1 / 8, 1 / 8)
        nn.init.uniform_(backbone.transform.bias, -1 / math.sqrt(128), 1 / math.sqrt(128))
    expected = {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()},
                **{f"item_encoder.{k}": v for k, v in encoder.state_dict().items()}}
    got = composed.state_dict()
    assert set(got) == set(expected)
    assert [k for k in got if not torch.equal(got[k], expected[k])] == []


@pytest.mark.parametrize("model, init", [("mf", "xavier"), ("srgnn", "uniform")])
def test_the_paper_profile_selects_the_originals_initialisation(model, init):
    for kind in ("id", "pixels"):
        flags = {"items": {"kind": kind, **({"image": {"encoder": "clip-vit-b32"}} if kind == "pixels" else {})}}
        assert resolve(model=model, files=["paper"], flags=flags).model["init"] == init
        assert "init" not in resolve(model=model, flags=flags).model


# --- Swin patch merging ----------------------------------------------------------------------
def tiny_swin() -> torch.nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 2, 2),
                           num_heads=(1, 2, 2), num_classes=0).eval()


@pytest.mark.parametrize("tune_merging, cut", [(True, "layers.1.downsample"), (False, "layers.1.blocks.0")])
def test_tune_merging_false_freezes_only_the_merging_layer_below_the_lowest_tuned_block(tune_merging, cut):
    from pixelrec.towers.image_tower import freeze_below
    from pixelrec.towers.prefix_cache import TowerSplit

    tower = tiny_swin()
    freeze_below(tower, 4, tune_merging=tune_merging)  # stages 2 and 3: 2 + 2 blocks
    trainable = {".".join(n.split(".")[:3]) for n, p in tower.named_parameters()
                 if p.requires_grad and n.startswith("layers.")}
    assert ("layers.1.downsample" in trainable) == tune_merging
    assert {"layers.1.blocks", "layers.2.downsample", "layers.2.blocks"} <= trainable  # stage 3's merging trains
    assert not any(n.startswith("layers.0.") for n in trainable)
    split = TowerSplit(tower, "tiny swin")  # the frozen-prefix cache cuts at the first trainable unit
    assert split.cut_name == cut
    assert any(n.startswith("layers.1.downsample.") for n in split.prefix_names) != tune_merging
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(split.suffix(split.prefix(x)), tower.forward_features(x))


def test_tune_merging_false_is_refused_for_a_tower_without_merging_layers():
    from pixelrec.items.pixels import PixelEncoder

    with pytest.raises(UserError, match="tune_merging=false: VisionTransformer has no patch-merging layers"):
        PixelEncoder(n_items=2, embedding_size=8, image_store=None,
                     image=ImageSettings(encoder="test_vit", image_size=32, tune_merging=False))


def test_the_paper_profile_keeps_swin_merging_frozen():
    for encoder in ("swin-t", "swin-b", "clip-vit-b32"):
        flags = {"items": {"kind": "pixels", "image": {"encoder": encoder}}}
        assert resolve(model="sasrec", files=["paper"], flags=flags).items.image.tune_merging == (encoder == "clip-vit-b32")
        assert resolve(model="sasrec", flags=flags).items.image.tune_merging


# --- PixelNet BERT4Rec mask token ------------------------------------------------------------
def ones_by_hand(encoder) -> torch.Tensor:
    """The item vector of an input that is 1 everywhere after normalisation (no pre-processing)."""
    features = encoder.tower.forward_features(torch.ones(1, 3, 32, 32))
    return encoder.projection(encoder.tower.forward_head(features, pre_logits=True))[0]


def test_encoded_ones_mask_is_the_encoders_vector_of_an_all_ones_image_in_training_and_evaluation():
    model = compose("bert4rec", kind="pixels", d=16, mask_token="encoded_ones", dropout=0.0, n_heads=2)
    assert model.backbone.mask_token is None  # no learned vector to train or decay
    seen = []
    model.backbone.body.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    context = torch.tensor([[0, 3, 5, 7], [2, 4, 6, 8]])
    mask = torch.tensor([[False, False, True, False], [True, False, False, True]])
    targets = torch.where(mask, context, 0)
    batch = Batch(users=torch.arange(2), context=context, targets=targets, mask=mask,
                  negatives=torch.where(mask, torch.full_like(context, 9), 0))
    model.train()
    loss = model(batch)["loss"]
    expected = ones_by_hand(model.item_encoder)
    torch.testing.assert_close(seen[-1][mask], expected.expand(3, -1))
    kept = model.lookup(batch)(context)[~mask]
    torch.testing.assert_close(seen[-1][~mask], kept)  # the other positions carry their items' vectors
    loss.backward()  # the mask image is encoded with gradients: the projection learns from it too
    assert model.item_encoder.projection[0].weight.grad.abs().sum() > 0

    model.eval()
    lookup, _ = model.catalogue_vectors()
    torch.testing.assert_close(lookup.mask_vector, ones_by_hand(model.item_encoder))
    model.backbone.user_vectors(Batch(users=torch.arange(2), context=context, targets=torch.zeros(2)), lookup)
    torch.testing.assert_close(seen[-1][:, -1], lookup.mask_vector.expand(2, -1))  # the appended slot


def test_encoded_ones_mask_is_refused_for_id_items_in_one_line():
    with pytest.raises(UserError) as caught:
        resolve(model="bert4rec", sets=["model.mask_token=encoded_ones"])
    assert "items.kind=id" in str(caught.value) and "\n" not in str(caught.value)


def test_the_paper_profile_encodes_the_mask_image_for_pixel_bert4rec_only():
    pixels = {"items": {"kind": "pixels", "image": {"encoder": "clip-vit-b32"}}}
    assert resolve(model="bert4rec", files=["paper"], flags=pixels).model["mask_token"] == "encoded_ones"
    assert "mask_token" not in resolve(model="bert4rec", files=["paper"]).model
    assert "mask_token" not in resolve(model="bert4rec", flags=pixels).model
