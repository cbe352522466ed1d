"""Tests generated from the registries: what each backbone, loss and item encoder declares is what it
does (labels and families for tables, view and sampling specifications for the batches, item parts,
images per item, image towers, parameter resets), so that nothing needs to branch on their names."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import patterned_sequences, write_prepared
from pixelrec.bench.tables import backbone_order, display_name, paper_table
from pixelrec.config import DataConfig, tower_sections
from pixelrec.data.prepared import PreparedData
from pixelrec.data.specs import SamplingSpec, ViewSpec
from pixelrec.data.views import VIEWS, TrainingView, batch_rng
from pixelrec.factory import DatasetFacts
from pixelrec.items import ITEM_ENCODERS, ItemEncoder
from pixelrec.items.id import IDEncoder
from pixelrec.losses import LOSSES
from pixelrec.models import BACKBONES
from pixelrec.models.base import FAMILIES, Backbone
from pixelrec.packaged import CONFIG_DIR, PROFILE_DIR
from pixelrec.recommender import Recommender
from pixelrec.registry import constructor_parameters
from test_pixels import ColourStore
from test_vinet import write_features

N_ITEMS = 30


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("declared") / "data", patterned_sequences(40, N_ITEMS, 12))


def known_parts() -> set[str]:
    """Every item part an encoder can offer (one with an ID part and components), the vector, the all-ones image's."""
    probe = ItemEncoder(2, 4)
    probe.id_size = probe.component_size = 4
    return set(probe.parts()) | {"vectors", "ones_image"}


def backbone(name: str, data: Path) -> Backbone:
    return BACKBONES.create(name, **DatasetFacts(PreparedData(data), 10).for_class(BACKBONES.get(name)))


# --- backbones -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_declares_a_label_a_family_a_view_and_known_item_parts(name, data):
    cls = BACKBONES.get(name)
    assert cls.label and display_name(name) == cls.label
    assert cls.family in FAMILIES and cls.view in VIEWS
    assert "vectors" in cls.item_parts and set(cls.item_parts) <= known_parts()
    assert set(backbone(name, data).item_parts) <= known_parts()


def test_backbones_of_one_family_take_distinct_columns():
    columns = [(cls.family, cls.table_order) for cls in map(BACKBONES.get, BACKBONES.names())
               if cls.table_order != math.inf]
    assert len(columns) == len(set(columns))


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbones_view_spec_carries_the_data_section_and_builds_its_view(name, data):
    model = backbone(name, data)
    for section in (DataConfig(max_len=6), DataConfig(max_len=6, sequences="sliding", window_remainder="drop",
                                                      prefixes="window", pair_context="window",
                                                      negatives_avoid="window"),
                    DataConfig(max_len=6, window_stride=2)):
        spec = model.view_spec(section)
        assert isinstance(spec, ViewSpec) and spec.view == model.view
        for key in ("max_len", "sequences", "window_remainder", "window_stride", "prefixes", "negatives_avoid"):
            assert getattr(spec, key) == getattr(section, key), key
        assert spec.pair_context in ("earlier", section.pair_context)
        view = TrainingView.of(PreparedData(data), spec, SamplingSpec())
        assert view.spec == spec
        batch = view.batch(np.arange(min(len(view), 16)), batch_rng(0, 0, 0))
        assert (batch.targets > 0).any() and batch.context.shape[1] <= max(spec.max_len, spec.masked_width or 0)


def test_a_backbone_in_a_new_file_is_named_and_placed_by_its_declarations(monkeypatch):
    class Between(Backbone):
        label, family, table_order = "Between", "sequential", 2.5  # after srgnn, before sasrec

    monkeypatch.setitem(BACKBONES._entries, "between", Between)
    assert backbone_order(["sasrec", "pop", "between", "srgnn", "mf"]) == ["mf", "srgnn", "between", "sasrec", "pop"]
    table = paper_table([{"model": "between", "items": "id", "test": {"Recall@10": 0.5}}])
    assert "| Between |" in table.splitlines()[0]


# --- losses --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_declares_what_its_batches_carry_and_its_steps_encode(name, data):
    facts = DatasetFacts(PreparedData(data), 10)
    loss = LOSSES.create(name, **facts.for_class(LOSSES.get(name)))
    spec = loss.sampling
    assert isinstance(spec, SamplingSpec)
    assert spec.full_catalogue == LOSSES.get(name).sampling.full_catalogue  # what the configuration checks
    view = TrainingView.of(PreparedData(data), ViewSpec("sequence", 6), spec)
    batch = view.batch(np.arange(8), batch_rng(0, 0, 0))
    assert (batch.negatives is not None) == (spec.negatives > 0)
    assert (batch.candidates is not None) == spec.in_batch
    model = Recommender(IDEncoder(N_ITEMS, 8), backbone("sasrec", data), loss)
    assert model.uses_catalogue == spec.full_catalogue
    lookup = model.lookup(batch)
    assert lookup.is_catalogue == spec.full_catalogue


# --- item encoders -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ITEM_ENCODERS.names())
def test_every_item_encoder_declares_its_label_family_and_inputs_consistently(kind):
    cls = ITEM_ENCODERS.get(kind)
    takes = constructor_parameters(cls)
    assert cls.label and cls.table_order != math.inf and cls.new_items_refusal
    if cls.family is not None:  # the packaged settings of its family (configs/<family>/, or a profile's)
        assert any((root / cls.family).is_dir() for root in [CONFIG_DIR, *PROFILE_DIR.iterdir()])
    assert (cls.images_per_item > 0) == (cls.image_tower is not None) == ("image_store" in takes)
    assert cls.reads_features == ("features" in takes)
    assert ("text" in tower_sections(cls)) == ("item_texts" in takes)  # a text tower reads the items' texts


def test_item_encoders_take_distinct_rows():
    orders = [ITEM_ENCODERS.get(kind).table_order for kind in ITEM_ENCODERS.names()]
    assert len(orders) == len(set(orders))


class CountingStore(ColourStore):
    """The colour store, counting the covers read."""

    images = 0

    def read(self, indices: np.ndarray) -> torch.Tensor:
        self.images += len(np.asarray(indices))
        return super().read(indices)


@pytest.fixture(scope="module")
def built(data, tmp_path_factory) -> dict[str, ItemEncoder]:
    """A small encoder of every kind over a counting cover store, given what its declarations say it
    reads: a tiny image tower, a feature file, a tiny text model."""
    pytest.importorskip("transformers")  # the text kinds' tiny model
    from test_text_items import save_bert, write_texts

    root = tmp_path_factory.mktemp("built")
    write_texts(data, N_ITEMS)
    bert = str(save_bert(root / "bert"))
    features = str(write_features(data, np.random.default_rng(0).standard_normal((N_ITEMS, 12)).astype(np.float32),
                                  root / "features.npy"))
    store = CountingStore(size=32)

    class Facts(DatasetFacts):
        image_store = store

    facts = Facts(PreparedData(data), 10)
    out = {}
    for kind in ITEM_ENCODERS.names():
        cls = ITEM_ENCODERS.get(kind)
        settings: dict[str, object] = {}
        sections = tower_sections(cls)
        if cls.image_tower is not None:
            settings["image"] = sections["image"](encoder="test_vit", image_size=32, tune_last=1)
        if cls.reads_features:
            settings["features"] = features
        if "text" in sections:
            settings["text"] = sections["text"](encoder_weights=str(bert))
        torch.manual_seed(0)
        out[kind] = ITEM_ENCODERS.create(kind, **facts.for_class(cls), **settings, embedding_size=16).eval()
    out["store"] = store  # type: ignore[assignment]
    return out


@pytest.mark.parametrize("kind", ITEM_ENCODERS.names())
def test_images_per_item_is_what_the_forward_reads(kind, built):
    encoder, store = built[kind], built["store"]
    store.images = 0
    with torch.no_grad():
        encoder(torch.arange(1, 6))
    assert store.images == 5 * encoder.images_per_item
    if encoder.image_tower is not None:  # what `export --tower` and `--init-from` reach
        tower = encoder.get_submodule(encoder.image_tower)
        assert tower.tower is not None and tower.preprocess.size == 32 and isinstance(tower.pooling, str)


@pytest.mark.parametrize("kind", ITEM_ENCODERS.names())
def test_offered_parts_have_the_declared_shapes(kind, built):
    encoder = built[kind]
    ids = torch.tensor([[1, 2, 0], [3, 3, 4]])
    with torch.no_grad():
        parts = {name: source(ids) for name, source in encoder.parts().items()}
    assert set(parts) == {name for name, size in (("ids", encoder.id_size), ("components", encoder.component_size))
                          if size}
    if "ids" in parts:
        assert parts["ids"].shape == (2, 3, encoder.id_size)
    if "components" in parts:
        assert parts["components"].shape == (2, 3, encoder.component_count, encoder.component_size)


@pytest.mark.parametrize("kind", ITEM_ENCODERS.names())
@pytest.mark.parametrize("rule, bound", [("xavier", None), ("uniform", 0.01)])
def test_a_reset_reports_what_it_redrew(kind, rule, bound, built):
    encoder = built[kind]
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    redrew = encoder.reset_parameters(rule, bound)
    changed = [name for name, p in encoder.named_parameters() if not torch.equal(p, before[name])]
    assert redrew == bool(changed)
    if rule == "uniform":
        assert all(encoder.get_parameter(name).abs().max() <= bound for name in changed)
    if encoder.tied_to_catalogue:  # every weight is one row per item (and the padding row)
        assert all(p.shape[0] == N_ITEMS + 1 for p in encoder.parameters())
