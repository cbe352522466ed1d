"""Starting a run from another run's weights (`train.init_from`): exactly the parts it says are
loaded, ID tables never cross datasets, the start is recorded, and --resume does not start again."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from helpers import tiny_config
from pixelrec.cli import main
from pixelrec.config import build_config
from pixelrec.errors import UserError
from pixelrec.runs import directory as rundir
from pixelrec.training import transfer
from pixelrec.training.trainer import Trainer, train

PIXELS = {"kind": "pixels", "image": {"encoder": "test_vit", "image_size": 32, "tune_last": 1}}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> tuple[Path, Path]:
    """Two synthetic datasets that share the covers' visual language but not their items or users."""
    from pixelrec.data.prepare import prepare
    from pixelrec.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("transfer")
    out = []
    for name, users, items, seed in (("a", 60, 40, 1), ("b", 50, 30, 2)):
        write_synthetic(root / f"raw-{name}", users=users, items=items, mean_len=8, image_size=32, seed=seed)
        prepare(root / f"raw-{name}", root / name, image_size=32, workers=1, progress=False)
        out.append(root / name)
    return out[0], out[1]


def config(data: Path, model: str = "sasrec", items: dict | None = None, embedding: int = 32, **train_args):
    c = tiny_config(data, model, "softmax", items=items or PIXELS, train={"epochs": 1, **train_args})
    c.model["embedding_size"] = embedding
    return c


@pytest.fixture(scope="module")
def pixel_source(datasets, tmp_path_factory) -> Path:
    """A pixel SASRec trained on the first dataset."""
    out = tmp_path_factory.mktemp("runs") / "pixel-a"
    train(config(datasets[0], lr=1e-2), out)
    return out


@pytest.fixture(scope="module")
def id_source(datasets, tmp_path_factory) -> Path:
    """An ID SASRec trained on the first dataset."""
    out = tmp_path_factory.mktemp("runs") / "id-a"
    train(config(datasets[0], items={"kind": "id"}), out)
    return out


def started(c, out: Path, source: Path | None, parts: list[str] | None = None) -> Trainer:
    """A new run of `c` in `out`, started from `source` (None: from scratch)."""
    c.train.init_from = None if source is None else str(source)
    c.train.init_parts = parts or ["items"]
    return Trainer(c, out)


def states(source: Path, target: Trainer, scratch: Trainer):
    saved = rundir.load_checkpoint(source / "best.pt")["model"]
    return saved, target.model.state_dict(), scratch.model.state_dict()


def test_the_item_encoder_is_loaded_and_everything_else_is_the_fresh_init(datasets, pixel_source, tmp_path):
    target = started(config(datasets[1]), tmp_path / "t", pixel_source)
    scratch = started(config(datasets[1]), tmp_path / "s", None)
    saved, loaded, fresh = states(pixel_source, target, scratch)
    record = target.transfer
    names = [n for n in loaded if n.startswith("item_encoder.")]
    assert record["loaded"] == len(names) and record["parts"] == ["items"]
    assert set(record["loaded_groups"]) == {"item_encoder.tower", "item_encoder.projection"}
    for name, tensor in loaded.items():
        assert torch.equal(tensor, saved[name] if name in names else fresh[name]), name
    trained = [n for n in names if not torch.equal(saved[n], fresh[n])]  # the tuned block and the projection
    assert trained and all(n.startswith(("item_encoder.tower.blocks.5", "item_encoder.tower.norm",
                                         "item_encoder.projection")) for n in trained)
    assert {(e["group"], e["reason"]) for e in record["skipped"]} == {("backbone.body", transfer.NOT_CHOSEN)}


def test_the_backbone_comes_too_when_asked(datasets, pixel_source, tmp_path):
    target = started(config(datasets[1]), tmp_path / "t", pixel_source, ["items", "backbone"])
    saved = rundir.load_checkpoint(pixel_source / "best.pt")["model"]
    state = target.model.state_dict()
    assert target.transfer["loaded"] == len(state)
    assert all(torch.equal(state[n], saved[n]) for n in state)


def test_id_tables_never_cross_even_when_their_shapes_match(datasets, id_source, tmp_path):
    # the same dataset: the ID table fits by shape, and still stays this run's own
    c = config(datasets[0], items={"kind": "id"})
    target = started(c, tmp_path / "t", id_source, ["backbone"])
    scratch = started(config(datasets[0], items={"kind": "id"}), tmp_path / "s", None)
    saved, loaded, fresh = states(id_source, target, scratch)
    table = "item_encoder.embedding.weight"
    assert saved[table].shape == loaded[table].shape
    assert torch.equal(loaded[table], fresh[table]) and not torch.equal(loaded[table], saved[table])
    assert {"group": "item_encoder.embedding", "tensors": 1, "reason": transfer.TIED} in target.transfer["skipped"]
    assert all(torch.equal(loaded[n], saved[n]) for n in loaded if n.startswith("backbone."))


def test_asking_for_id_tables_is_refused_with_the_reason(datasets, id_source, tmp_path):
    with pytest.raises(UserError, match="ids cannot be carried: item ID tables, user tables"):
        build_config({"model": {"name": "sasrec"}, "train": {"init_from": str(id_source), "init_parts": ["ids"]}})
    with pytest.raises(UserError, match="items.kind=id the item encoder is an ID table"):
        started(config(datasets[1], items={"kind": "id"}), tmp_path / "t", id_source, ["items"])
    assert not (tmp_path / "t").exists()  # nothing left behind


def test_user_tables_are_tied_to_the_catalogue_too(datasets, tmp_path):
    source = tmp_path / "mf"
    train(config(datasets[0], "mf", items={"kind": "id"}), source)  # MF's backbone is its user table
    with pytest.raises(UserError, match="nothing of this run's backbone .* tied to the source's catalogue"):
        started(config(datasets[1], "mf", items={"kind": "id"}), tmp_path / "t", source, ["backbone"])


def test_a_shape_mismatch_names_the_tensor_and_both_shapes(datasets, pixel_source, tmp_path):
    with pytest.raises(UserError, match=r"item_encoder\.projection\.0\.weight is \[32, 64\] in .*best\.pt and "
                                        r"\[16, 64\] in this run"):
        started(config(datasets[1], embedding=16), tmp_path / "t", pixel_source)


def test_another_item_kind_or_encoder_is_one_line(datasets, pixel_source, id_source, tmp_path):
    with pytest.raises(UserError, match="items.kind=id, this run has items.kind=pixels"):
        started(config(datasets[1]), tmp_path / "t", id_source)
    with pytest.raises(UserError, match="image encoder test_vit, this run has test_resnet"):
        started(config(datasets[1], items={**PIXELS, "image": {**PIXELS["image"], "encoder": "test_resnet"}}), tmp_path / "t", pixel_source)
    with pytest.raises(UserError, match="is not a run directory"):
        started(config(datasets[1]), tmp_path / "t", tmp_path / "nowhere")
    # the backbone alone crosses item kinds: an ID run's sequence model starts a pixel run
    target = started(config(datasets[1]), tmp_path / "b", id_source, ["backbone"])
    saved = rundir.load_checkpoint(id_source / "best.pt")["model"]
    assert all(torch.equal(t, saved[n]) for n, t in target.model.state_dict().items() if n.startswith("backbone."))
    assert target.transfer["loaded_groups"] == {"backbone.body": target.transfer["loaded"]}


def test_the_run_records_its_start_and_resume_does_not_start_again(datasets, pixel_source, tmp_path, monkeypatch):
    source = tmp_path / "copy"
    shutil.copytree(pixel_source, source)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "t"
    c = config(datasets[1])
    c.train.init_from = "copy"  # relative: recorded absolute
    results = train(c, out)
    expected = {"run": str(source), "checkpoint": "best.pt",
                "sha256": hashlib.sha256((source / "best.pt").read_bytes()).hexdigest(), "parts": ["items"]}
    assert results["init_from"].items() >= expected.items()
    assert [c for c in results["caveats"] if c["kind"] == "transfer"] == [  # marked in the tables
        {"kind": "transfer", "source": str(source), "checkpoint": "best.pt",
         "message": f"started from the weights of {source} (best.pt): a transfer result, not a run from the image "
                    "encoder's own weights"}]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["init_from"] == str(source)
    assert "initialised from " + str(source) in (out / "train.log").read_text()

    shutil.rmtree(source)  # a resumed run does not need its source any more, nor reads it
    monkeypatch.setattr(transfer, "initialise", lambda *a, **k: pytest.fail("init_from applied again on resume"))
    again = rundir.with_absolute_paths(c)
    again.train.epochs = 2
    resumed = train(again, out, resume=True)
    assert resumed["epochs_run"] == 2 and resumed["init_from"] == results["init_from"]
    assert resumed["caveats"] == results["caveats"]
    other = rundir.with_absolute_paths(c)
    other.train.init_from = str(pixel_source)
    with pytest.raises(UserError, match="cannot change on resume=True: train.init_from"):
        Trainer(other, out, resume=True)


def test_a_run_without_best_checkpoint_starts_from_its_last(datasets, pixel_source, tmp_path):
    source = tmp_path / "copy"
    shutil.copytree(pixel_source, source)
    (source / "best.pt").unlink()
    record = started(config(datasets[1]), tmp_path / "t", source).transfer
    assert record["checkpoint"] == "last.pt" and "(last.pt (no best.pt)" in transfer.describe(record)


def test_the_command_line_flag_sets_train_init_from(datasets, pixel_source, capsys):
    assert main(["train", "--data", str(datasets[1]), "--model", "sasrec", "--items", "pixels", "--encoder", "test_vit",
                 "--init-from", str(pixel_source), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["init_from"] == str(pixel_source)


def test_bench_variants_put_random_init_and_a_run_start_side_by_side(datasets, pixel_source, tmp_path):
    from pixelrec.bench.matrix import BenchSpec, cells_of, parse_variant, plan
    from pixelrec.bench.tables import paper_table

    variants = [parse_variant("random"), parse_variant(f"pre:train.init_from={pixel_source}")]
    spec = BenchSpec(str(datasets[1]), cells_of(["sasrec"], ["id", "pixels"], ["test_vit"], ["random", "pre"]),
                     sets=["items.image.image_size=32"], variants=variants)
    planned = {p.name: p for p in plan(spec)}
    assert planned["sasrec-pixels-test_vit-pre"].config.train.init_from == str(pixel_source)
    assert planned["sasrec-pixels-test_vit-random"].config.train.init_from is None
    assert planned["sasrec-id-pre"].config is None and "items.kind=pixels" in planned["sasrec-id-pre"].reason
    missing = [parse_variant("random"), parse_variant(f"pre:train.init_from={pixel_source}-gone")]
    with pytest.raises(UserError, match="cell sasrec-pixels-test_vit-pre: train.init_from: .* not a run directory"):
        plan(BenchSpec(str(datasets[1]), cells_of(["sasrec"], ["pixels"], ["test_vit"], ["random", "pre"]),
                       variants=missing))

    scores = {"Recall@10": 0.5, "NDCG@10": 0.25}
    rows = [{"model": "sasrec", "items": "pixels", "encoder": "test_vit", "test": scores, "start": "random init"},
            {"model": "sasrec", "items": "pixels", "encoder": "test_vit", "test": scores,
             "init_from": {"run": str(pixel_source)}}]
    table = paper_table(rows)
    assert "| test_vit (random init) |" in table and f"| test_vit (from {pixel_source.name}) |" in table


def test_towers_carried_from_a_run_are_not_called_randomly_initialised(datasets, pixel_source, tmp_path, monkeypatch):
    from pixelrec.towers import caveats

    monkeypatch.setattr(caveats, "is_paper_encoder", lambda name: name == "test_vit")  # as if it were one of the nine
    assert [c["kind"] for c in started(config(datasets[1]), tmp_path / "s", None).caveats] == ["random_weights"]
    assert started(config(datasets[1]), tmp_path / "t", pixel_source).caveats == []
    backbone_only = started(config(datasets[1]), tmp_path / "b", pixel_source, ["backbone"])
    assert [c["kind"] for c in backbone_only.caveats] == ["random_weights"]  # the towers keep their random start


def test_the_python_api_takes_init_from(datasets, pixel_source, tmp_path, monkeypatch):
    import pixelrec
    from pixelrec.jobs import train as train_job

    seen = {}

    def fake_train(config, out, **_):
        seen["init_from"] = config.train.init_from
        raise KeyboardInterrupt  # stop before any training: only the configuration is under test

    monkeypatch.setattr(train_job, "train_run", fake_train)
    with pytest.raises(KeyboardInterrupt):
        pixelrec.train(data=datasets[1], model="sasrec", items="pixels", encoder="test_vit", init_from=pixel_source,
                       out=tmp_path / "t")
    assert seen["init_from"] == str(pixel_source)
