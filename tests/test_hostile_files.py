"""Files and folders that others can write are data, never instructions: a planted link is never
followed, whatever pixelrec then does."""

from __future__ import annotations

import os

import pytest

from data_fixtures import hand_raw, one_line, run_cli
from pixelrec.storage import locks


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path, capsys):
    raw = hand_raw(tmp_path / "raw")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, tmp_path / ".ds.lock")  # where `prepare --out ds` takes its lock
    status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "ds", "--workers", "1")
    line = one_line(err)
    assert status == 2 and ".ds.lock: not a plain file" in line, line
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "ds").exists()


def test_a_lock_through_a_dangling_link_creates_nothing(tmp_path):
    target = tmp_path / "elsewhere" / "made-by-the-lock"
    target.parent.mkdir()
    os.symlink(target, tmp_path / "x.lock")
    try:
        locks.acquire(tmp_path / "x.lock", "thing x")
        raise AssertionError("a dangling link was locked")
    except locks.NotAPlainFile as err:
        assert "x.lock: not a plain file" in str(err)
    assert not target.exists()


def test_a_fifo_where_a_lock_goes_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "y.lock")
    try:
        locks.acquire(tmp_path / "y.lock", "thing y")
        raise AssertionError("a FIFO was taken for a lock file")
    except locks.NotAPlainFile:
        pass
    assert locks.holder(tmp_path / "y.lock") is None


def test_a_plain_lock_names_its_holder(tmp_path):
    lock = locks.acquire(tmp_path / "z.lock", "thing z")
    try:
        assert locks.holder(tmp_path / "z.lock") == os.getpid()
    finally:
        lock.release()
    assert not (tmp_path / "z.lock").exists()


# --- text model folders ---------------------------------------------------------------------
def _model_folder(tmp_path, safe: bool = True):
    from test_text_items import save_bert

    folder = save_bert(tmp_path / "model")
    if not safe:  # the same weights as a pickle only, as older save_pretrained wrote them
        import torch
        from safetensors.torch import load_file

        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return folder


def test_a_text_model_folder_that_asks_to_run_its_code_is_refused_even_when_the_prompt_says_yes(
        tmp_path, monkeypatch):
    import json

    import pytest

    from pixelrec.errors import UserError
    from pixelrec.towers.text_tower import load_text_model

    folder = _model_folder(tmp_path)
    marker = tmp_path / "code-ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nfrom transformers import BertConfig\n"
                                    "class EvilConfig(BertConfig):\n    model_type = 'evil'\n")
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr("builtins.input", lambda *_: "y")  # whoever asks, the answer would be yes
    with pytest.raises(UserError, match="asks to run its own Python code"):
        load_text_model(str(folder), "items.encoder_weights")
    assert not marker.exists()


def test_pickled_text_model_weights_are_refused_in_one_line(tmp_path, capsys):
    import pytest

    from pixelrec.errors import UserError
    from pixelrec.towers.text_tower import load_text_model

    folder = _model_folder(tmp_path, safe=False)
    assert (folder / "pytorch_model.bin").is_file()
    with pytest.raises(UserError, match=r"pytorch_model\.bin: weights stored as a Python pickle"):
        load_text_model(str(folder), "items.encoder_weights")


def test_a_safetensors_text_model_still_loads(tmp_path):
    from pixelrec.towers.text_tower import load_text_model

    model, tokenizer = load_text_model(str(_model_folder(tmp_path)), "items.encoder_weights")
    assert type(model).__name__ == "BertModel" and len(tokenizer.get_vocab()) > 10


# --- tower files ----------------------------------------------------------------------------
def _tower_file(tmp_path, timm_args):
    import json

    import torch
    from safetensors.torch import save_file

    from pixelrec.towers.tower_file import FORMAT, METADATA_KEY, VERSION

    description = {"format": FORMAT, "version": VERSION, "encoder": "test_vit", "timm_name": "test_vit",
                   "timm_args": timm_args, "image_size": 32, "pooling": "default", "preprocess": "encoder",
                   "final_norm": True}
    path = tmp_path / "tower.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={METADATA_KEY: json.dumps(description)})
    return path


def test_a_tower_file_cannot_make_timm_open_or_fetch_anything(tmp_path):
    import pytest

    from pixelrec.errors import UserError
    from pixelrec.towers.tower_file import read_description

    for args, culprit in [({"checkpoint_path": "/etc/passwd"}, "'checkpoint_path' is not an architecture argument"),
                          ({"pretrained": True, "pretrained_cfg_overlay": {"url": "https://example.org/w.pth"}},
                           "'pretrained' is not an architecture argument"),
                          ({"act_layer": "../../x"}, "is not a plain value"),
                          ({"global_pool": {"nested": 1}}, "is not a plain value")]:
        with pytest.raises(UserError, match=culprit):
            read_description(_tower_file(tmp_path, args))
    shaping = {"act_layer": "quick_gelu", "drop_path_rate": 0.1}
    assert read_description(_tower_file(tmp_path, shaping))["timm_args"] == shaping


def test_items_timm_args_take_architecture_arguments_only(monkeypatch):
    import pytest
    import timm

    from pixelrec.errors import UserError
    from pixelrec.towers.image_tower import create_tower

    def no_fetch(*args, **kwargs):
        raise AssertionError(f"timm.create_model was called with {kwargs}")

    monkeypatch.setattr(timm, "create_model", no_fetch)
    with pytest.raises(UserError, match="items.image.timm_args: 'checkpoint_path' is not an architecture argument"):
        create_tower("test_vit", timm_args={"checkpoint_path": "/etc/passwd"})


# --- runs -----------------------------------------------------------------------------------
def test_a_run_with_non_finite_weights_is_never_evaluated_ranked_or_exported(tiny_data, tmp_path, capsys):
    import torch

    from helpers import tiny_config
    from pixelrec.training.trainer import train

    run = tmp_path / "run"
    train(tiny_config(tiny_data, "sasrec", train={"epochs": 1}), run)
    for name in ("best.pt", "last.pt"):
        payload = torch.load(run / name, weights_only=True)
        key = next(k for k, v in payload["model"].items() if v.is_floating_point())
        payload["model"][key] = torch.full_like(payload["model"][key], float("nan"))
        torch.save(payload, run / name)
    user = "u1"
    for argv in (["evaluate", run], ["recommend", run, "--user", user], ["export", run, "--out", tmp_path / "v"]):
        status, out, err = run_cli(capsys, *argv)
        assert status == 2 and "holds NaN or infinite values" in one_line(err), (argv, err)
    assert not (tmp_path / "v").exists()


def test_overwriting_the_run_that_init_from_names_is_refused_before_anything_is_deleted(tiny_data, tmp_path,
                                                                                         capsys):
    from helpers import tiny_config
    from pixelrec.training.trainer import train

    run = tmp_path / "run"
    train(tiny_config(tiny_data, "sasrec", train={"epochs": 1}), run)
    before = sorted(p.name for p in run.iterdir())
    status, _, err = run_cli(capsys, "train", "--data", tiny_data, "--model", "sasrec", "--config", "cpu-small",
                             "--init-from", run, "--out", run, "--overwrite", "--set", "train.epochs=1",
                             "--set", "train.init_parts=[backbone]")
    assert status == 2 and "overwrite" in one_line(err) and "init_from" in one_line(err), err
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_dataset_prepared_from_other_covers_is_not_the_runs_dataset(tmp_path, capsys):
    from PIL import Image

    from helpers import tiny_config
    from pixelrec.data.prepare import prepare
    from pixelrec.training.trainer import train

    raw = hand_raw(tmp_path / "raw")
    prepare(raw, tmp_path / "a", image_size=16, workers=1, progress=False)
    run = tmp_path / "run"
    train(tiny_config(tmp_path / "a", "sasrec", train={"epochs": 1}), run)
    prepare(raw, tmp_path / "c", image_size=16, workers=1, progress=False)  # the same covers again: accepted
    status, _, err = run_cli(capsys, "evaluate", run, "--data", tmp_path / "c")
    assert status == 0, err
    cover = sorted((raw / "covers").iterdir())[0]
    Image.new("RGB", (20, 20), (0, 0, 255)).save(cover)  # one item's cover replaced, nothing else
    prepare(raw, tmp_path / "b", image_size=16, workers=1, progress=False)
    status, _, err = run_cli(capsys, "evaluate", run, "--data", tmp_path / "b")
    assert status == 2 and "holds other covers than the dataset" in one_line(err) and "--data DIR" in err, err


# --- sizes ----------------------------------------------------------------------------------
def test_sizes_that_would_exhaust_memory_are_refused_before_any_work(tiny_data, tmp_path, capsys):
    raw = hand_raw(tmp_path / "raw")
    status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "ds", "--image-size", "100000")
    assert status == 2 and "--image-size 100000: allowed 8 <= x <= 1024" in one_line(err), err
    assert not (tmp_path / "ds").exists()
    for model, key in (("sasrec", "data.max_len=100000"), ("nextitnet", "model.dilations=[1,100000]")):
        status, _, err = run_cli(capsys, "train", "--data", tiny_data, "--model", model, "--set", key,
                                 "--out", tmp_path / model)
        assert status == 2 and "100000 is out of range (allowed: 1 <= x <= 1024)" in one_line(err), err
    assert run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "ok", "--image-size", "16")[0] == 0
    status, _, err = run_cli(capsys, "extract", "--data", tmp_path / "ok", "--encoder", "test_vit", "--image-size", "0",
                             "--out", tmp_path / "f.npy")
    assert status == 2 and "--image-size 0: allowed 8 <= x <= 1024" in one_line(err), err


def test_a_model_larger_than_free_memory_is_one_line_before_the_run_folder_exists(tiny_data, tmp_path, capsys):
    """Sizes within their bounds that multiply past the machine (a million-wide SASRec) were an
    out-of-memory kill with nothing printed; the estimate comes from a build on the meta device."""
    status, _, err = run_cli(capsys, "train", "--data", tiny_data, "--model", "sasrec", "--set",
                             "model.embedding_size=1000000", "--out", tmp_path / "run")
    line = one_line(err)
    assert status == 2 and "needs about" in line and "GiB free on cpu" in line, err
    assert "largest backbone.body.blocks.0" in line and not (tmp_path / "run").exists()


def test_the_memory_estimate_counts_what_the_real_model_holds_and_draws_no_random_numbers(tiny_data):
    import numpy as np
    import torch

    from helpers import tiny_config
    from pixelrec.data.prepared import PreparedData
    from pixelrec.factory import build_model
    from pixelrec.training.memory import model_memory

    data = PreparedData(tiny_data)
    for model in ("sasrec", "mf", "bert4rec"):
        config = tiny_config(tiny_data, model)
        torch.manual_seed(5)
        np.random.seed(5)
        need = model_memory(config, data)
        after = (torch.rand(1), np.random.rand())
        torch.manual_seed(5)
        np.random.seed(5)
        assert (torch.rand(1), np.random.rand()) == after  # the meta build drew nothing
        real = build_model(config, data)
        weights = sum(p.numel() * p.element_size() for p in real.parameters())
        trainable = sum(p.numel() * p.element_size() for p in real.parameters() if p.requires_grad)
        buffers = sum(b.numel() * b.element_size() for b in real.buffers())
        assert need.parameters == sum(p.numel() for p in real.parameters()), model
        assert need.bytes == weights + 3 * trainable + buffers, model


def test_an_image_size_the_encoder_cannot_take_is_one_line_before_any_work(tmp_path, capsys):
    """A ViT's patch grid (8 and 24 px against 16 px patches) and CLIP-ResNet's attention pool (40 px)
    were timm tracebacks at the first batch; a size that fits still builds, and the probe leaves the
    encoder's weights and mode as they were."""
    import torch

    from pixelrec.errors import UserError
    from test_pixels import encoder as pixel_encoder

    raw = hand_raw(tmp_path / "raw")
    assert run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "ds", "--image-size", "16")[0] == 0
    status, _, err = run_cli(capsys, "extract", "--data", tmp_path / "ds", "--encoder", "test_vit", "--image-size", "8",
                             "--out", tmp_path / "f.npy")
    line = one_line(err)
    assert status == 2 and line.startswith("pixelrec: error: --image-size 8: test_vit cannot take 8x8 images"), err
    assert "a multiple of its 16 px patches" in line and not list(tmp_path.glob("f.*"))
    for encoder, side in (("test_vit", 24), ("clip-rn50", 40)):
        with pytest.raises(UserError, match=rf"^items.image.image_size={side}: {encoder} cannot take"):
            pixel_encoder(encoder=encoder, image_size=side)
    torch.manual_seed(0)
    fits = pixel_encoder().train()
    torch.manual_seed(0)
    again = pixel_encoder().train()
    assert fits.training and all(torch.equal(a, b) for a, b in zip(fits.state_dict().values(), again.state_dict().values()))
    assert all(t.device.type == "cpu" for t in fits.state_dict().values())


def test_export_never_replaces_files_silently(tiny_data, tmp_path, capsys):
    from helpers import tiny_config
    from pixelrec.training.trainer import train

    run = tmp_path / "run"
    train(tiny_config(tiny_data, "sasrec", train={"epochs": 1}), run)
    out = tmp_path / "vectors"
    out.mkdir()
    (out / "items.npy").write_text("someone's own file\n")
    (out / "notes.txt").write_text("keep me\n")
    status, _, err = run_cli(capsys, "export", run, "--out", out)
    assert status == 2 and "items.npy: already exists; use --overwrite to replace it" in one_line(err), err
    assert (out / "items.npy").read_text() == "someone's own file\n"
    assert run_cli(capsys, "export", run, "--out", out, "--overwrite")[0] == 0
    assert (out / "export.json").is_file() and (out / "notes.txt").read_text() == "keep me\n"
    status, _, err = run_cli(capsys, "export", run, "--out", out)  # an earlier export is not replaced either
    assert status == 2 and "already exists" in one_line(err)
    status, _, err = run_cli(capsys, "export", run, "--out", tmp_path / "v2", "--batch-size", "0")
    assert status == 2 and "--batch-size 0: must be at least 1" in one_line(err), err


# --- files that are not what they say ---------------------------------------------------------
def test_files_that_are_not_what_they_claim_are_one_line(tiny_data, tmp_path, capsys):
    from PIL import Image

    from helpers import tiny_config
    from pixelrec.training.trainer import train

    binary = tmp_path / "settings.yaml"
    binary.write_bytes(bytes(range(256)))
    status, _, err = run_cli(capsys, "train", "--data", tiny_data, "--model", "sasrec", "--config", binary)
    assert status == 2 and "settings.yaml: not a text file" in one_line(err), err

    run = tmp_path / "run"
    train(tiny_config(tiny_data, "sasrec", train={"epochs": 1}), run)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write("{not json\n")
    status, _, err = run_cli(capsys, "train", "--resume", run, "--set", "train.epochs=2")
    assert status == 2 and "metrics.jsonl: line 2 is not a metrics row" in one_line(err), err

    raw = hand_raw(tmp_path / "raw")
    cover = sorted((raw / "covers").glob("*.jpg"))[0]
    Image.open(cover).save(cover.with_suffix(".png"))
    status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "ds")
    assert status == 2 and f"item {cover.stem} has two covers, {cover.name} and {cover.stem}.png" in one_line(err)


def test_values_whose_type_passes_but_meaning_does_not_are_one_line_before_training(tiny_data, tmp_path, capsys):
    for key, culprit in (("eval.valid_metric=NDGC@10", "eval.valid_metric=NDGC@10: not a metric"),
                         ("eval.valid_metric=NDCG@7", "needs 7 in eval.ks"),
                         ("train.seed=-1", "train.seed: -1 is out of range"),
                         ("train.seed=99999999999", "train.seed: 99999999999 is out of range"),
                         ("train.device=gpu", "train.device=gpu: not a device"),
                         ("train.device=meta", "train.device=meta: pixelrec runs on cpu or cuda")):
        status, _, err = run_cli(capsys, "train", "--data", tiny_data, "--model", "sasrec", "--set", key,
                                 "--set", "train.epochs=1", "--out", tmp_path / "run")
        assert status == 2 and culprit in one_line(err), (key, err)
        assert not (tmp_path / "run").exists()


def test_a_token_budget_without_room_for_a_token_is_refused():
    import pytest

    from pixelrec.config import resolve
    from pixelrec.errors import UserError

    for budget in (0, 1, 2):
        with pytest.raises(UserError, match=rf"items.text.max_tokens: {budget} is out of range \(allowed: 3 <= x"):
            resolve(model="sasrec", flags={"items": {"kind": "text"}}, sets=[f"items.text.max_tokens={budget}"])
    assert resolve(model="sasrec", flags={"items": {"kind": "text"}}, sets=["items.text.max_tokens=3"]).items.text.max_tokens == 3


# --- recovery after kill -9 -------------------------------------------------------------------
def test_a_lock_left_to_the_children_of_a_killed_holder_is_taken_once_they_end(tmp_path):
    import subprocess
    import sys
    import time

    path = tmp_path / "run.lock"
    holder = """
import os, signal, sys, time
from pixelrec.storage import locks
lock = locks.acquire(sys.argv[1], "run x")
if os.fork() == 0:  # a DataLoader worker: forked with the lock's descriptor, ends a little later
    time.sleep(1.5)
    os._exit(0)
os.kill(os.getpid(), signal.SIGKILL)
"""
    subprocess.run([sys.executable, "-c", holder, str(path)], check=False)
    started = time.monotonic()
    lock = locks.acquire(path, "run x")  # the named holder is gone: wait for its children, not refuse
    try:
        assert locks.holder(path) == os.getpid() and time.monotonic() - started < locks.LEFTOVER_SECONDS
    finally:
        lock.release()


def test_a_run_killed_between_its_first_best_and_last_checkpoints_can_be_started_again(tiny_data, tmp_path, capsys):
    from helpers import tiny_config
    from pixelrec.training.trainer import train

    run = tmp_path / "run"
    config = tiny_config(tiny_data, "sasrec", train={"epochs": 1})
    train(config, run)
    for name in ("last.pt", "results.json"):  # as if killed after writing best.pt
        (run / name).unlink()
    status, _, err = run_cli(capsys, "train", "--resume", run)
    assert status == 2 and "nothing to resume (no last.pt" in one_line(err), err
    results = train(config, run)  # the same configuration starts again in place
    assert (run / "last.pt").is_file() and results["epochs_run"] == 1


def test_a_checkpoint_write_that_fails_is_one_line_and_keeps_the_last_good_one(tiny_data, tmp_path, capsys,
                                                                             monkeypatch):
    import torch

    from helpers import tiny_config
    from pixelrec.runs import directory
    from pixelrec.training.trainer import train

    run = tmp_path / "run"
    train(tiny_config(tiny_data, "sasrec", train={"epochs": 1}), run)
    before = (run / "last.pt").read_bytes()
    real = torch.save

    def failing(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\nmore")

    monkeypatch.setattr(directory.torch, "save", failing)
    monkeypatch.setattr(directory, "free_bytes", lambda folder: 0)  # as on a full disk
    status, _, err = run_cli(capsys, "train", "--resume", run, "--set", "train.epochs=2")
    line = one_line(err)
    assert status == 2 and ".pt: cannot write" in line and "free some space" in line, line
    monkeypatch.setattr(directory.torch, "save", real)
    assert (run / "last.pt").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_item_info_without_item_ids_is_one_line(tmp_path):
    import pytest

    from pixelrec.errors import UserError
    from pixelrec.jobs.new_items import read_item_list

    info = tmp_path / "new_items.csv"
    info.write_text("title,tag\na cover,red\n")
    with pytest.raises(UserError, match=r"new_items\.csv: no item_id column \(its header: title,tag\)"):
        read_item_list(info)
