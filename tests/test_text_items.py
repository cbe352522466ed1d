"""Items as text and as text + pixels: a tiny random BERT built here (nothing is downloaded), through
every backbone that takes pixels, tokenisation stored once, freezing by layer, the frozen-prefix
cache, fusion, and one-line errors for bad input."""

from __future__ import annotations

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
from pixelrec.evaluate.evaluator import rank_targets  # noqa: E402
from pixelrec.items.text import TextEncoder  # noqa: E402
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


def encoder(root: Path, bert: Path, **kwargs) -> TextEncoder:
    args = dict(n_items=40, embedding_size=16, item_texts=item_texts(root), encoder_weights=str(bert), tune_last=1)
    return TextEncoder(**(args | kwargs))


def text_config(data: Path, bert: Path, model: str = "sasrec", loss: str = "softmax", items=None, **train):
    items = {"kind": "text", "encoder_weights": str(bert), "tune_last": 1, **(items or {})}
    return tiny_config(data, model, loss, items=items, train={"epochs": 1, "lr": 3e-3, **train})


# --- every backbone that takes pixels takes text -----------------------------------------------
@pytest.mark.parametrize("model", _pixel_backbones())
def test_every_pixel_backbone_trains_and_evaluates_on_text(model, text_data, bert, tmp_path):
    from pixelrec.train.trainer import Trainer

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
    from pixelrec.train.trainer import Trainer

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
    titles = encoder(text_data, bert, text_fields=["title"]).tokens
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
    with pytest.raises(UserError, match=r"items.tune_last=3: bert has 2 layers"):
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
    from pixelrec.items.text_tower import TextTower

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
    with pytest.raises(UserError, match="items.cache=prefix: nothing of quiet is frozen"):
        encoder(text_data, quiet, tune_last="all", cache="prefix")


# --- multimodal --------------------------------------------------------------------------------
def multimodal_config(data: Path, bert: Path, **items):
    items = {"kind": "multimodal", "encoder": "test_vit", "image_size": 32, "tune_last": 1,
             "text_encoder_weights": str(bert), "text_tune_last": 1, **items}
    return tiny_config(data, "sasrec", "softmax", items=items, train={"epochs": 1, "lr": 3e-3})


@pytest.mark.parametrize("items", [{"fusion": "sum"}, {"fusion": "concat", "with_id": True}])
def test_multimodal_fusions_train(items, text_data, bert, tmp_path, colour_store):
    losses = losses_over_steps(multimodal_config(text_data, bert, **items), 24, tmp_path / "run")
    assert mean(losses[-6:]) < 0.9 * mean(losses[:6]), losses


def test_multimodal_towers_freeze_apart_and_evaluate_through_workers(text_data, bert, tmp_path, colour_store):
    from pixelrec.train.trainer import Trainer

    trainer = Trainer(multimodal_config(text_data, bert, text_tune_last=0, fusion="concat"), tmp_path / "run")
    enc = trainer.model.item_encoder
    assert not any(p.requires_grad for p in enc.text.tower.parameters())
    assert any(p.requires_grad for p in enc.image.tower.parameters())
    assert enc.fuse.in_features == 2 * enc.embedding_size and enc.ids is None
    ranks = [rank_targets(trainer.model, trainer.data, "test", 10, workers=w) for w in (0, 1)]
    assert torch.equal(ranks[0], ranks[1])


# --- bad input, one line each ------------------------------------------------------------------
def test_missing_and_empty_text_columns_are_named(text_data, bert):
    with pytest.raises(UserError, match=r"items.parquet: no text column 'summary' .*it has: title, tag, description"):
        encoder(text_data, bert, text_fields=["title", "summary"])
    write_texts(text_data, 40, description=[""] * 40)
    with pytest.raises(UserError, match="text column 'description' is empty for every item"):
        encoder(text_data, bert, text_fields=["description"])
    with pytest.raises(UserError, match="items.text_fields: empty"):
        encoder(text_data, bert, text_fields=[])


def test_bad_models_are_one_line_errors(text_data, bert, tmp_path):
    small = save_bert(tmp_path / "small", vocab_size=12)
    with pytest.raises(UserError, match=f"tokenizer has {len(VOCAB)} tokens but the model's embedding table 12 rows"):
        encoder(text_data, small)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: not a Hugging Face transformers model directory"):
        encoder(text_data, tmp_path / "empty")
    with pytest.raises(UserError, match="items.encoder=nobody/no-model: neither a model directory nor"):
        encoder(text_data, bert, encoder_weights=None, encoder="nobody/no-model")
    with pytest.raises(UserError, match="items.kind=text needs a text model"):
        encoder(text_data, bert, encoder_weights=None)
    with pytest.raises(UserError, match="items.max_tokens=65: bert takes at most 64"):
        encoder(text_data, bert, max_tokens=65)
    with pytest.raises(UserError, match="items.kind=multimodal needs a text model: items.text_encoder_weights"):
        from pixelrec.items.multimodal import MultimodalEncoder
        from test_pixels import ColourStore

        MultimodalEncoder(40, 16, ColourStore(), item_texts(text_data), encoder="test_vit", image_size=32)


def test_text_keys_and_combinations_are_checked_at_config_time(text_data, bert):
    from pixelrec.config import resolve

    assert resolve(model="sasrec", flags={"items": {"kind": "text"}}).loss.name == "softmax"
    with pytest.raises(UserError, match="items.fusion does not apply to items.kind=text"):
        text_config(text_data, bert, items={"fusion": "concat"})
    with pytest.raises(UserError, match="full-softmax needs every item"):
        text_config(text_data, bert, loss="full-softmax")
