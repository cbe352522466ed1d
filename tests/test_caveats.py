"""A run's caveats (a paper encoder with random weights, upscaled images): computed by one pure
function, never announced by constructors, logged once by the run that has them (console and
train.log), recorded in results.json and a feature file's sidecar, and marked in the tables."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_prepared
from helpers import tiny_config
from pixelrec import progress
from pixelrec.bench.report import ReportInputs, tables_text
from pixelrec.bench.summary import csv_text, markdown_text
from pixelrec.bench.tables import MARK, caveats_note, load_results, paper_table, run_caveats, summary_table
from pixelrec.cli import main
from pixelrec.data.images import build_image_store
from pixelrec.items.features import FeatureEncoder
from pixelrec.items.pixels import ImageSettings, PixelEncoder
from pixelrec.storage.feature_files import FORMAT, VERSION, item_order_sha256, write_sidecar
from pixelrec.towers.caveats import RANDOM_WEIGHTS, UPSCALED_IMAGES, imported_caveat, tower_caveats
from pixelrec.training.trainer import train
from test_pixels import ColourStore

#: A paper encoder's timm name (CLIP-ViT-B/32) at a size a CPU test affords.
PAPER_VIT = "vit_base_patch32_clip_224"
TINY_VIT = dict(patch_size=8, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2)


def kinds(caveats: list[dict]) -> list[str]:
    return [c["kind"] for c in caveats]


# --- the function --------------------------------------------------------------------------------
@pytest.mark.parametrize("encoder,settings,expected", [
    ("clip-rn50", {}, [RANDOM_WEIGHTS]),  # a short name
    ("swin_base_patch4_window7_224", {}, [RANDOM_WEIGHTS]),  # a timm name of one of the nine
    (PAPER_VIT, {}, [RANDOM_WEIGHTS]),  # CLIP-ViT-B/32 with GELU, as open_clip has it
    ("resnet50", {"weights": "w.pt"}, []),
    ("beit-b", {"pretrained": True}, []),
    ("clip-vit-b32", {"carried": True}, []),  # its towers are loaded from another run
    ("test_vit", {}, []),  # not one of the paper's: nothing to compare with
    (None, {"stored_size": 16, "input_size": 224}, []),
    ("test_vit", {"stored_size": 16, "input_size": 32}, [UPSCALED_IMAGES]),
    ("test_vit", {"stored_size": 32, "input_size": 32}, []),
    ("test_vit", {"stored_size": 64, "input_size": 32}, []),
    ("test_vit", {"input_size": 32}, []),  # the store's size unknown
    ("clip-vit-b32", {"carried": True, "stored_size": 16, "input_size": 224}, [UPSCALED_IMAGES]),
    ("swin-t", {"stored_size": 16, "input_size": 224}, [RANDOM_WEIGHTS, UPSCALED_IMAGES]),
])
def test_caveats_of_a_tower(encoder, settings, expected):
    caveats = tower_caveats(encoder, **settings)
    assert kinds(caveats) == expected
    assert all(c["encoder"] == encoder and encoder in c["message"] for c in caveats)


def test_caveat_messages_say_what_and_how_to_fix_it():
    random, upscaled = tower_caveats("clip-rn50", stored_size=16, input_size=224, hint="give the weights")
    assert random["message"] == ("image encoder clip-rn50 is randomly initialised: its numbers are not comparable "
                                 "with the paper's (give the weights)")
    assert upscaled == {"kind": UPSCALED_IMAGES, "encoder": "clip-rn50", "stored_size": 16, "input_size": 224,
                        "message": "the image store holds 16 px images; clip-rn50 upscales them to 224 px (prepare "
                                   "the data with `pixelrec prepare --image-size 224` for real detail)"}
    made = tower_caveats("clip-rn50", stored_size=16, input_size=224, features="f.npy")
    assert [c["message"].split(":")[0] for c in made] == [
        "f.npy was extracted by a randomly initialised clip-rn50",
        "f.npy was extracted from 16 px images that clip-rn50 upscaled to 224 px (prepare the data with `pixelrec prepare --image-size 224` "
        "for real detail)"]


# --- encoders: silent, and saying what their caveats are ----------------------------------------
def test_item_encoders_are_built_without_a_word_and_name_their_caveats(capsys, caplog):
    caplog.set_level(logging.INFO, logger="pixelrec")
    encoder = PixelEncoder(5, 8, ColourStore(size=16), ImageSettings(encoder=PAPER_VIT, image_size=32, timm_args=TINY_VIT))
    assert capsys.readouterr() == ("", "") and caplog.records == []
    assert kinds(encoder.caveats()) == [RANDOM_WEIGHTS, UPSCALED_IMAGES]
    assert kinds(encoder.caveats(carried=True)) == [UPSCALED_IMAGES]
    assert encoder.caveats()[0]["message"].endswith("(give items.image.encoder_weights=FILE)")
    toy = PixelEncoder(5, 8, ColourStore(size=32), ImageSettings(encoder="test_vit", image_size=32))
    assert toy.caveats() == []


def test_a_feature_file_brings_the_caveats_of_the_tower_that_made_it(tmp_path, capsys, caplog):
    order = item_order_sha256(["i1", "i2", "i3"])
    path = tmp_path / "f.npy"
    np.save(path, np.ones((3, 4), dtype=np.float32))
    made = {"format": FORMAT, "version": VERSION, "encoder": "clip-rn50", "timm_name": "resnet50_clip",
            "weights_sha256": None, "pretrained": False, "n_items": 3, "dim": 4, "dtype": "float32",
            "item_order_sha256": order, "rows_done": 3, "complete": True}
    write_sidecar(path, made)
    caveats = FeatureEncoder(3, 8, order, features=str(path)).caveats()
    assert capsys.readouterr() == ("", "") and caplog.records == []
    assert [c["message"] for c in caveats] == [
        f"{path} was extracted by a randomly initialised clip-rn50: its numbers are not comparable with the "
        "paper's (extract them again with `pixelrec extract --encoder-weights FILE`)"]
    write_sidecar(path, made | {"weights_sha256": "ab" * 32})
    assert FeatureEncoder(3, 8, order, features=str(path)).caveats() == []
    upscaled = tower_caveats("clip-rn50", weights="w.pt", stored_size=16, input_size=224)
    write_sidecar(path, made | {"weights_sha256": "ab" * 32, "caveats": upscaled})  # as `extract` records them
    assert kinds(FeatureEncoder(3, 8, order, features=str(path)).caveats()) == [UPSCALED_IMAGES]
    imported = made | {"encoder": None, "timm_name": None, "source": {"file": "theirs.npy", "sha256": "0" * 64}}
    write_sidecar(path, imported)  # as `extract --import` records it
    assert FeatureEncoder(3, 8, order, features=str(path)).caveats() == [imported_caveat(str(path), "theirs.npy")]
    assert imported_caveat("f.npy", "theirs.npy")["message"] == (
        "f.npy was imported from theirs.npy: the image encoder and weights that made it are not recorded, so nothing "
        "here says which of the paper's rows it compares with")


# --- a run: logged once, recorded, marked ----------------------------------------------------------
@pytest.fixture
def small_covers(monkeypatch) -> ColourStore:
    """Every run's image store: 16 px covers (the paper's encoder reads 32 px in these tests)."""
    from pixelrec.factory import DatasetFacts

    store = ColourStore(size=16)
    monkeypatch.setattr(DatasetFacts, "image_store", property(lambda self: store))
    return store


def paper_vit_config(data: Path, **image):
    return tiny_config(data, "sasrec", "softmax", train={"epochs": 1, "max_steps": 2},
                       items={"kind": "pixels", "image": {"encoder": PAPER_VIT, "image_size": 32, "tune_last": 1,
                                                          "timm_args": TINY_VIT, **image}})


@pytest.mark.usefixtures("small_covers")
def test_a_run_logs_its_caveats_once_records_them_and_the_report_marks_it(tiny_data, tmp_path, capsys):
    run = tmp_path / "vit"
    results = train(paper_vit_config(tiny_data), run)
    assert kinds(results["caveats"]) == [RANDOM_WEIGHTS, UPSCALED_IMAGES]
    assert json.loads((run / "results.json").read_text())["caveats"] == results["caveats"]
    log = (run / "train.log").read_text()
    for caveat in results["caveats"]:
        assert log.count(f" WARNING {caveat['message']}\n") == 1
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("warning:")] == [
        f"warning: {c['message']}" for c in results["caveats"]]

    plain = tmp_path / "id"
    assert train(tiny_config(tiny_data, "sasrec", "softmax", train={"epochs": 1, "max_steps": 2}), plain)["caveats"] == []
    records = load_results([run, plain])
    assert [bool(run_caveats(r)) for r in records] == [True, False]
    table = paper_table(records)
    assert f"| {PAPER_VIT} (random init) {MARK} | Recall@10 |" in table and "| ID | Recall@10 |" in table
    summary = summary_table(records).splitlines()
    assert f"| sasrec | pixels | {PAPER_VIT} (random init) {MARK} |" in summary[2] and MARK not in summary[3]
    text = tables_text(ReportInputs(runs=records))
    note = caveats_note(records)
    assert note in text and note.startswith(MARK)
    assert [line for line in note.splitlines() if line.startswith("- ")] == [
        f"- sasrec pixels {PAPER_VIT} (dataset tiny, profile default, random init), {run}: {c['message']}"
        for c in results["caveats"]]

    rows = [{"model": "sasrec", "items": r["items"], "encoder": r["encoder"], "variant": None, "status": "done",
             "seconds": 1.0, "run": r["run"], "reason": "", "results": r} for r in records]
    assert note in markdown_text(rows)
    cells = [line.split("|")[1].strip() for line in markdown_text(rows).split("## Cells")[1].splitlines()[4:]]
    assert cells == [f"sasrec-pixels-{PAPER_VIT} {MARK}", "sasrec-id"]  # the cells table marks it too
    assert [line.rsplit(",", 1)[-1] for line in csv_text(rows).splitlines()] == [
        "caveats", f"{RANDOM_WEIGHTS};{UPSCALED_IMAGES}", ""]


def test_a_run_from_before_caveats_were_recorded_is_marked_by_its_start():
    record = {"model": "sasrec", "items": "pixels", "encoder": "clip-vit-b32", "start": "random init",
              "test": {"Recall@10": 0.01, "NDCG@10": 0.005}}
    assert kinds(run_caveats(record)) == [RANDOM_WEIGHTS]
    assert f"| clip-vit-b32 (random init) {MARK} |" in paper_table([record])  # never as if pretrained
    assert run_caveats(record | {"caveats": []}) == [] and run_caveats(record | {"start": "weights w.pt"}) == []


def test_extract_logs_the_caveats_of_its_encoder_and_records_them(tmp_path, capsys):
    root = write_prepared(tmp_path / "data", [[1, 2, 3, 4], [2, 3, 4, 1]])
    (root / "covers").mkdir()
    for i in range(1, 5):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(root / "covers" / f"i{i}.jpg")
    store = build_image_store(root / "images.lmdb", [f"i{i}" for i in range(1, 5)], root / "covers", size=16,
                              workers=1, progress=False)
    (root / "meta.json").write_text(json.dumps({**json.loads((root / "meta.json").read_text()), "image_store": store}))
    assert main(["extract", "--data", str(root), "--encoder", "resnet50", "--image-size", "32", "--workers", "0",
                 "--out", str(tmp_path / "f.npy")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warned == [
        "warning: image encoder resnet50 is randomly initialised: its numbers are not comparable with the paper's "
        "(give encoder_weights=FILE)",
        "warning: the image store holds 16 px images; resnet50 upscales them to 32 px (prepare the data with "
        "`pixelrec prepare --image-size 32` for real detail)",
    ]
    recorded = json.loads((tmp_path / "f.json").read_text())["caveats"]
    assert [f"warning: {c['message']}" for c in recorded] == warned
    assert recorded[1]["stored_size"] == 16 and recorded[1]["input_size"] == 32


# --- where library lines go ----------------------------------------------------------------------
def test_the_innermost_console_speaks_and_none_is_left_behind(capsys):
    log = logging.getLogger("pixelrec.somewhere")
    with progress.console():
        log.info("outer info")
        with progress.console("stdout"):
            log.info("run info")
            progress.note("a note")
            log.warning("a warning")
        log.error("outer error")
    assert capsys.readouterr() == ("run info\n", "outer info\nnote: a note\nwarning: a warning\nerror: outer error\n")
    assert logging.getLogger("pixelrec").handlers == [] and logging.getLogger("pixelrec").level == logging.NOTSET


def test_from_python_warnings_reach_stderr_and_info_lines_need_a_handler(tmp_path):
    script = ("import logging; from pixelrec import progress; progress.log.info('an info line'); "
              "logging.getLogger('pixelrec.storage.locks').warning('a warning')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(Path(progress.__file__).parents[1])})
    assert (done.stdout, done.stderr) == ("", "a warning\n")
