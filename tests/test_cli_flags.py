"""The library names parameters in its errors; the command line writes them as its own flags, read
from argparse (`cli.flag_names`: an option's `dest` is the library parameter it sets)."""

from __future__ import annotations

import argparse
import importlib
import inspect

import pytest

import pixelrec
from conftest import patterned_sequences, write_prepared
from data_fixtures import one_line, run_cli
from pixelrec.cli import ALIASES, COMMANDS, build_parser, flag_names, in_flags
from pixelrec.errors import UserError


def command_flags(name: str) -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """A command's parser and the parameter -> option map that `main` applies to its errors."""
    parser = build_parser(only=name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return sub, parser.get_default("flags")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_of_every_command_is_written_for_its_parameter(name):
    sub, flags = command_flags(name)
    assert flags == flag_names(sub)
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        option = max(action.option_strings, key=len)
        assert in_flags(f"{action.dest}=VALUE: wrong", flags) == f"{option} VALUE: wrong"
        assert in_flags(f"give {action.dest}=, or", flags) == f"give {option}, or"
        if action.nargs == 0:  # a switch: overwrite=True -> --overwrite, images=False -> --no-images
            assert in_flags(f"use {action.dest}={not action.default}", flags) == f"use {option}"


#: (command, library parameter, the command's option, the library function that takes the parameter)
REAL = [
    ("train", "data", "--data", "pixelrec.api:train"),
    ("train", "init_from", "--init-from", "pixelrec.api:train"),
    ("train", "set", "--set", "pixelrec.api:train"),
    ("prepare", "images", "--no-images", "pixelrec.data.prepare:prepare"),
    ("prepare", "cold_items", "--cold-items", "pixelrec.data.prepare:prepare"),
    ("extract", "model", "--text-model", "pixelrec.jobs.extract_text:extract_text_features"),
    ("extract", "source", "--import", "pixelrec.jobs.extract:import_features"),
    ("extract", "encoder_weights", "--encoder-weights", "pixelrec.jobs.extract:extract_features"),
    ("recommend", "users", "--user", "pixelrec.api:recommend"),
    ("recommend", "k", "-k", "pixelrec.api:recommend"),
    ("recommend", "new_items", "--new-items", "pixelrec.api:recommend"),
    ("embed", "item_info", "--item-info", "pixelrec.jobs.new_items:embed_new_items"),
    ("export", "tower", "--tower", "pixelrec.jobs.export:export_tower"),
    ("tune", "study_dir", "--study", "pixelrec.bench.tune:run_study"),
    ("bench", "variants", "--variant", "pixelrec.bench.matrix:cells_of"),
]


@pytest.mark.parametrize("command, parameter, option, function", REAL)
def test_real_parameters_become_their_options(command, parameter, option, function):
    module, _, attribute = function.partition(":")
    assert parameter in inspect.signature(getattr(importlib.import_module(module), attribute)).parameters
    _, flags = command_flags(command)
    assert in_flags(f"{parameter}=/a/b: not found; give {parameter}=, or", flags) == \
        f"{option} /a/b: not found; give {option}, or"


def test_what_the_mapping_leaves_alone():
    _, flags = command_flags("train")
    kept = ("items.kind=pixels needs items.encoder=NAME",  # configuration keys
            "set='lr=1': expected section.key=value, e.g. train.lr=1e-4",  # a quoted value
            "covers=DIR is needed", "k=5", "a/data=x")  # parameters train has no option for; a path
    assert [in_flags(text, flags) for text in kept] == [
        "items.kind=pixels needs items.encoder=NAME", "--set 'lr=1': expected section.key=value, e.g. train.lr=1e-4",
        "covers=DIR is needed", "k=5", "a/data=x"]
    message = "r: already holds a run; use resume=True with out=r to continue it, another out=, or overwrite=True"
    assert in_flags(message, flags, ALIASES["train"]) == \
        "r: already holds a run; use --resume r to continue it, another --out, or --overwrite"


def test_a_library_error_names_parameters_in_python_and_flags_on_the_command_line(tmp_path, capsys):
    data = write_prepared(tmp_path / "data", patterned_sequences(8, 12, 6))
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a checkpoint")  # an interrupted run, as far as a new start can tell
    with pytest.raises(UserError) as err:
        pixelrec.train(data=data, model="mf", items="id", device="cpu", out=out)
    assert str(err.value) == (f"{out}: already holds a run (last.pt); use resume=True with out={out} to continue it, "
                              "another out=, or overwrite=True to replace it")
    status, _, stderr = run_cli(capsys, "train", "--data", data, "--model", "mf", "--items", "id", "--device", "cpu",
                                "--out", out)
    assert status == 2 and one_line(stderr) == (f"pixelrec: error: {out}: already holds a run (last.pt); use --resume "
                                                f"{out} to continue it, another --out, or --overwrite to replace it")
