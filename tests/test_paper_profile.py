"""The `paper` profile: how it layers, what it selects, and the behaviours it adds to the trainer and
the evaluator (ties, decay on every parameter, target masking, inner sizes that follow the embedding)."""

from __future__ import annotations

import pytest
import torch

from conftest import write_prepared
from helpers import tiny_config
from pixelrec.cli import main
from pixelrec.config import packaged_defaults, resolve
from pixelrec.errors import UserError
from pixelrec.evaluation.evaluator import rank_targets
from pixelrec.models import BACKBONES
from pixelrec.packaged import CONFIG_DIR, PROFILE_DIR
from pixelrec.towers.names import SHORT_NAMES
from pixelrec.training.trainer import Trainer, parameter_groups, train

PIXEL_BACKBONES = sorted(p.stem for p in (CONFIG_DIR / "pixelnet").glob("*.yaml"))
#: The PixelRec README's recommender settings for PixelNet: (lr, batch, weight decay).
README_PIXELNET = {"sasrec": (1e-4, 64, 0.1), "bert4rec": (1e-4, 64, 0.1), "lightsans": (1e-4, 512, 0.1),
                   "nextitnet": (1e-4, 64, 0.01), "srgnn": (1e-4, 512, 0.01), "mf": (1e-4, 512, 0.0),
                   "fm": (5e-5, 64, 0.0), "dssm": (1e-4, 64, 0.0), "gru4rec": (1e-4, 64, 0.01)}


@pytest.mark.parametrize("model", BACKBONES.names())
def test_every_backbone_resolves_under_the_paper_profile(model):
    config = resolve(model=model, files=["paper"], flags={"data": {"path": "unused"}})
    assert config.profile == "paper"
    assert (config.train.epochs, config.train.patience, config.train.ties_improve) == (200, 31, True)
    assert config.eval.mask_target and config.train.decay_all
    assert config.data.window_remainder == "drop" and config.loss.name == "bpr"


@pytest.mark.parametrize("model", PIXEL_BACKBONES)
def test_pixelnet_under_the_paper_profile_takes_the_readme_settings_and_bpr(model):
    config = resolve(model=model, files=["paper"], flags={"items": {"kind": "pixels"}}, encoder="clip-vit-b32")
    assert (config.train.lr, config.train.batch_size, config.train.weight_decay) == README_PIXELNET[model]
    assert config.loss.name == "bpr" and config.items.image.preprocess == "paper"
    assert (config.train.encoder_lr, config.train.encoder_weight_decay) == (1e-4, 0.0)
    default = resolve(model=model, flags={"items": {"kind": "pixels"}}, encoder="clip-vit-b32")
    assert default.loss.name == "softmax" and default.profile == "default"


@pytest.mark.parametrize("encoder", sorted(SHORT_NAMES))
def test_every_paper_encoder_resolves_under_the_paper_profile(encoder):
    config = resolve(model="sasrec", files=["paper"], flags={"items": {"kind": "pixels", "image": {"encoder": encoder}}})
    assert config.items.image.encoder == encoder and config.loss.name == "bpr"


def test_every_profile_file_belongs_to_a_default_layer_or_the_base():
    for path in PROFILE_DIR.joinpath("paper").rglob("*.yaml"):
        folder = path.parent.name
        if path.name == "base.yaml":
            continue
        known = {"models": BACKBONES.names(), "pixelnet": BACKBONES.names(), "vinet": BACKBONES.names(),
                 "encoders": list(SHORT_NAMES), "items": ["pixels", "features", "id+features", "id"]}
        assert path.stem in known[folder], path


def test_profile_layers_under_user_files_flags_and_sets():
    assert packaged_defaults("lightsans", "pixels", "swin-t", "paper")[-2:] == [
        PROFILE_DIR / "paper" / "pixelnet" / "lightsans.yaml", PROFILE_DIR / "paper" / "encoders" / "swin-t.yaml"]
    config = resolve(model="sasrec", files=["paper", "cpu-small"], sets=["train.patience=4"])
    assert config.train.epochs == 20 and config.train.patience == 4 and config.profile == "paper"
    assert resolve(model="sasrec").train.patience == 20


def test_two_profiles_or_a_changed_profile_on_resume_are_refused(tmp_path):
    with pytest.raises(UserError, match="one profile"):
        resolve(model="sasrec", files=["paper", "default"])
    base = resolve(model="sasrec").to_dict()
    with pytest.raises(UserError, match="cannot change on resume=True"):
        resolve(files=["paper"], base=base)


def test_a_saved_config_keeps_its_profile(tmp_path, capsys):
    assert main(["train", "--model", "sasrec", "--config", "paper", "--data", "x", "--print-config"]) == 0
    saved = capsys.readouterr().out
    assert saved.startswith("profile: paper")
    (tmp_path / "config.yaml").write_text(saved)
    assert resolve(files=[str(tmp_path / "config.yaml")]).profile == "paper"


def test_a_tie_counts_as_an_improvement_only_when_asked(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "validate", lambda self: {"valid": {"NDCG@10": 0.25}})
    default = train(tiny_config(tiny_data, "sasrec", train={"epochs": 6, "patience": 2}), tmp_path / "default")
    assert (default["best_epoch"], default["epochs_run"], default["stopped"]) == (1, 3, "early stopping")
    ties = train(tiny_config(tiny_data, "sasrec", train={"epochs": 6, "patience": 2, "ties_improve": True}),
                 tmp_path / "ties")
    assert (ties["best_epoch"], ties["epochs_run"], ties["stopped"]) == (6, 6, "epochs")


def test_decay_all_decays_norms_and_biases(tiny_data, tmp_path):
    def decays(config):
        groups = parameter_groups(Trainer(config, tmp_path / str(len(list(tmp_path.iterdir())))).model, config)
        return {g["weight_decay"] for g in groups if all(p.dim() == 1 for p in g["params"])}

    assert decays(tiny_config(tiny_data, "sasrec", train={"weight_decay": 0.1})) == {0.0}
    assert decays(tiny_config(tiny_data, "sasrec", train={"weight_decay": 0.1, "decay_all": True})) == {0.1}


def test_mask_target_turns_a_re_consumed_target_into_a_miss(tmp_path):
    sequences = [[1, 2, 3, 4], [1, 5, 6], [2, 1, 5, 3], [1, 2, 1]]  # u4's test item 1 is also its first item
    data = write_prepared(tmp_path / "data", sequences, n_items=6)
    trainer = Trainer(tiny_config(data, "pop"), tmp_path / "run")
    kept = rank_targets(trainer.model, trainer.data, "test", 10).tolist()
    masked = rank_targets(trainer.model, trainer.data, "test", 10, mask_target=True).tolist()
    assert kept == [2, 3, 2, 0]
    assert masked == [2, 3, 2, 6]  # -inf, tied with every masked item: ranked last of the 7 columns


@pytest.mark.parametrize(("model", "key", "factor"), [("gru4rec", "hidden_factor", 5), ("sasrec", "inner_factor", 5),
                                                      ("lightsans", "inner_factor", 5)])
def test_inner_sizes_follow_the_embedding_size(tiny_data, tmp_path, model, key, factor):
    config = tiny_config(tiny_data, model)
    config.model[key] = factor
    net = Trainer(config, tmp_path / "run").model.backbone
    widths = {m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear) and m.in_features == 32}
    widths |= {m.hidden_size for m in net.modules() if isinstance(m, torch.nn.GRU)}
    assert factor * 32 in widths


def test_recbole_lightsans_attention_equals_the_formula_written_out():
    from pixelrec.models.lightsans import LowRankAttention

    torch.manual_seed(0)
    dim, heads, k, length = 8, 2, 3, 5
    layer = LowRankAttention(dim, heads, k, dropout=0.0, recbole=True).eval()
    x, positions = torch.randn(2, length, dim), torch.randn(length, dim)
    real = torch.tensor([[False, True, True, True, True], [True] * length])
    q, key, v = layer.qkv(x).chunk(3, -1)

    def split(t):  # [..., n, d] -> [..., h, n, d/h]
        return t.reshape(*t.shape[:-1], heads, dim // heads).transpose(-3, -2)

    pooled_k = torch.einsum("bld,blk->bkd", key, layer.key_interests(key).softmax(1))  # padding included
    pooled_v = torch.einsum("bld,blk->bkd", v, layer.value_interests(v).softmax(1))
    head = dim // heads
    items = (split(q) @ split(pooled_k).transpose(-1, -2) / head**0.5).softmax(-2) @ split(pooled_v)
    pq, pk = layer.position_qk(layer.position_norm(positions)).chunk(2, -1)
    bias = (split(pq) * (2 * head) ** -0.5) @ split(pk).transpose(-1, -2) / head**0.5
    merged = (items + bias.softmax(-2) @ split(v)).transpose(1, 2).reshape(2, length, dim)
    expected = layer.norm(x + layer.out(merged))
    assert torch.allclose(layer(x, positions, real), expected, atol=1e-5)
    ours = LowRankAttention(dim, heads, k, dropout=0.0).eval()
    ours.load_state_dict(layer.state_dict())
    assert not torch.allclose(ours(x, positions, real), expected, atol=1e-3)


@pytest.mark.parametrize(("sets", "message"), [
    (["loss.logq=true"], "loss.logq does not apply to loss.name=bpr (it takes loss.reduction)"),
    (["items.image.pooling=cls"], "items.image.pooling does not apply to items.kind=id"),
    (["items.kind=pixels", "items.image.encoder=test_vit", "items.features=f.npy"],
     "(it takes items.cache_dir, items.image.*)"),
    (["train.batch_size=0"], "train.batch_size: 0 is out of range (allowed: 1 <= x)"),
    (["train.epochs=-3"], "train.epochs: -3 is out of range"),
    (["train.lr=nan"], "train.lr: nan is not a finite number"),
    (["train.lr=-1e-3"], "train.lr: -0.001 is out of range (allowed: 0 < x)"),
    (["train.eval_every=0"], "train.eval_every: 0 is out of range"),
    (["model.dropout=1.5"], "model.dropout: 1.5 is out of range (allowed: 0 <= x < 1)"),
    (["items.kind=pixels", "items.image.encoder=test_vit", "items.image.tune_last=-1"],
     "items.image.tune_last: -1 is out of range"),
    (["eval.ks=[10, 0]"], "eval.ks: 0 is out of range"),
])
def test_one_schema_refuses_inapplicable_keys_and_out_of_range_values(sets, message):
    with pytest.raises(UserError) as caught:
        resolve(model="sasrec", sets=sets)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("profile", [[], ["paper"]])
def test_keys_of_packaged_layers_never_fail_a_run_that_did_not_ask_for_them(profile):
    # vbpr's packaged layer sets items.combine and items.id_size for its id+features default
    config = resolve(model="vbpr", files=profile, flags={"items": {"kind": "features", "features": "f.npy"}})
    assert config.items.kind == "features" and config.model["embedding_size"] == 4096
    with pytest.raises(UserError, match="items.combine does not apply to items.kind=features"):  # the user's own key
        resolve(model="vbpr", files=profile, flags={"items": {"kind": "features"}}, sets=["items.combine=concat"])


def test_no_packaged_layer_refuses_any_backbone_item_kind_pair_that_the_user_left_alone():
    from pixelrec.items import ITEM_ENCODERS
    from pixelrec.models import BACKBONES

    refused = []
    for profile in ([], ["paper"]):
        for model in BACKBONES.names():
            for kind in ITEM_ENCODERS.names():
                try:
                    resolve(model=model, files=profile, flags={"items": {"kind": kind}})
                except UserError as err:  # a combination may be refused, but never for a key nobody set
                    if "does not apply" in str(err):
                        refused.append((*profile, model, kind, str(err)))
    assert refused == []


def test_a_saved_configuration_reads_back_and_resume_refuses_an_inapplicable_key():
    saved = resolve(model="sasrec", flags={"items": {"kind": "pixels", "image": {"encoder": "test_vit"}}}).to_dict()
    assert resolve(base=saved).items.image.encoder == "test_vit"
    ids = resolve(model="sasrec").to_dict()
    with pytest.raises(UserError, match="items.image.pooling does not apply"):
        resolve(base=ids, sets=["items.image.pooling=mean"])


def test_heads_that_do_not_divide_the_width_are_one_line(tiny_data, tmp_path, capsys):
    code = main(["train", "--data", str(tiny_data), "--model", "sasrec", "--set", "model.n_heads=3",
                 "--set", "model.embedding_size=64", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "model.embedding_size 64 is not divisible by model.n_heads 3" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
