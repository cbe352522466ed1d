"""benchmarks/gpu_check.py: its --tiny run on the CPU reports every part with finite numbers, ratios
made from its parts, and a torchrun job (gloo) that evaluates like one process; a part that fails
or would start past the budget is reported as such."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
RATIOS = {"pipeline": ("full_step", "encoder_alone", "steps_per_second"),
          "prefix_cache": ("full_step", "top_alone", "steps_per_second"),
          "catalogue": ("evaluation", "forward_alone", "items_per_second")}


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def measured(node, path=""):
    """(path, value) of every timing and rate in the report."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from measured(value, f"{path}.{key}")
    elif isinstance(node, (int, float)) and not isinstance(node, bool) and path.endswith(("seconds", "_per_second")):
        yield path, node


def test_tiny_check_measures_every_part(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(done.stdout) == report  # stdout is the JSON alone
    assert report["errors"] == []

    head = report["header"]
    assert head["tiny"] is True and head["device"] == "cpu" and head["torch"].startswith("2.")
    for key in ("cuda", "device_name", "git_commit", "date", "workers", "budget_s"):
        assert key in head, key

    timings = list(measured({k: v for k, v in report.items() if k != "header"}))
    assert len(timings) > 40
    for path, value in timings:
        assert math.isfinite(value) and value > 0, path

    pixels, ids = report["dataset"]["pixels"], report["dataset"]["ids"]
    assert pixels["image_size"] == 32 and pixels["items"] > 50 and pixels["image_store_mb"] > 0
    assert set(report["encoders"]) == {"test_vit", "test_resnet"}
    for name, encoder in report["encoders"].items():
        for part, (top, bottom, key) in RATIOS.items():
            section = encoder[part]
            assert section["efficiency"] == pytest.approx(section[top][key] / section[bottom][key]), (name, part)
            assert section["meets_target"] == (section["efficiency"] >= section["target"])
            assert section[top]["peak_gpu_memory_gib"] is None  # the CPU has none
        pipeline, cached = encoder["pipeline"], encoder["prefix_cache"]
        assert (pipeline["target"], cached["target"], encoder["catalogue"]["target"]) == (0.7, 0.8, 0.8)
        for section, alone in ((pipeline, "encoder_alone"), (cached, "top_alone")):
            assert section[alone]["images_per_step"] == round(section["full_step"]["images_per_step"])
            assert section["full_step"]["steps"] == 3 and math.isfinite(section["full_step"]["loss"])
        assert encoder["catalogue"]["evaluation"]["items"] == pixels["items"]

    ranking = report["ranking"]
    assert ranking["items"] == ids["items"] and ranking["ranked"] == ranking["users"] == ids["users"]
    assert ranking["embedding_size"] == 512
    assert [report["id_sasrec"][k]["embedding_size"] for k in ("d64", "d512")] == [64, 512]
    assert report["id_sasrec"]["d512"]["parameters"] > report["id_sasrec"]["d64"]["parameters"]
    for part in report["id_sasrec"].values():
        assert part["loss"] == "bpr" and part["table_optimizer"] == "lazy"
        assert part["pixel200k_epoch_seconds"] == pytest.approx(6138 / part["steps_per_second"], rel=1e-3)

    job = report["torchrun"]
    assert job["equal"] is True and job["backend"] == "gloo" and job["max_abs_difference"] <= 1e-6
    assert job["torchrun"]["data_parallel"] is True and job["single"]["data_parallel"] is False
    assert job["torchrun"]["steps"] == job["single"]["steps"] > 0
    single, launched = job["single"]["metrics"], job["torchrun"]["metrics"]
    assert single.keys() == {"valid", "test"} and single == launched
    assert 0 < single["test"]["Recall@20"] <= 1


def test_parts_past_the_budget_are_skipped(tmp_path, capsys):
    module = gpu_check()
    out = tmp_path / "check.json"
    assert module.main(["--tiny", "--budget-s", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["dataset"] == report["ranking"] == report["torchrun"] == {"skipped": "budget"}
    assert all(part == {"skipped": "budget"} for encoder in report["encoders"].values() for part in encoder.values())
    assert report["errors"] == []


def test_a_failing_part_is_one_line_and_listed():
    module = gpu_check()
    failed = module.attempt(lambda: (_ for _ in ()).throw(RuntimeError("no\nGPU   here")))
    assert failed == {"error": "RuntimeError: no GPU here"}
    report = {"dataset": {"pixels": {"users": 3}}, "encoders": {"a": {"pipeline": failed}},
              "ranking": {"skipped": "budget"}}
    assert module.errors(report) == ["encoders.a.pipeline: RuntimeError: no GPU here"]
