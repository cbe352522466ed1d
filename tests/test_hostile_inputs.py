"""A sweep over every command that reads a file someone else may have handed over: garbage bytes, one
character, a folder where a file goes and a link to a system file are each one line and exit status
2, never a traceback and never a result."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_fixtures import one_line, run_cli


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A small prepared dataset with covers and one finished ID run over it."""
    from pixelrec.cli import main

    root = tmp_path_factory.mktemp("hostile")
    assert main(["synth", "--out", str(root / "raw"), "--users", "60", "--items", "30", "--mean-len", "6",
                 "--image-size", "16", "--seed", "0"]) == 0
    assert main(["prepare", "--raw", str(root / "raw"), "--out", str(root / "data"), "--image-size", "16",
                 "--workers", "1"]) == 0
    assert main(["train", "--data", str(root / "data"), "--model", "sasrec", "--config", "cpu-small",
                 "--set", "train.epochs=1", "--set", "train.progress=false", "--out", str(root / "run")]) == 0
    return {"root": root, "data": root / "data", "run": root / "run"}


def _bad_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    made = {"garbage": folder / "garbage.bin", "one-char": folder / "one.txt", "folder": folder / "a-folder",
            "link": folder / "link.txt"}
    made["garbage"].write_bytes(bytes(range(256)) * 3)
    made["one-char"].write_text("x")
    made["folder"].mkdir(exist_ok=True)
    if not made["link"].is_symlink():
        os.symlink("/etc/passwd", made["link"])
    return made


#: Each command that reads a handed-over file, with {bad} where that file goes.
COMMANDS = {
    "train --config": ["train", "--data", "{data}", "--model", "sasrec", "--config", "{bad}", "--out", "{out}"],
    "train --data": ["train", "--data", "{bad}", "--model", "sasrec", "--out", "{out}"],
    "evaluate": ["evaluate", "{bad}"],
    "recommend --users-file": ["recommend", "{run}", "--users-file", "{bad}"],
    "recommend --new-items": ["recommend", "{run}", "--user", "u1", "--new-items", "{bad}"],
    "export --new-items": ["export", "{run}", "--out", "{out}", "--new-items", "{bad}"],
    "extract --import": ["extract", "--data", "{data}", "--import", "{bad}", "--order", "{bad}", "--out", "{out}.npy"],
    "extract --encoder-weights": ["extract", "--data", "{data}", "--encoder", "test_vit", "--encoder-weights", "{bad}",
                                  "--image-size", "16", "--out", "{out}.npy"],
    "embed --covers": ["embed", "--run", "{run}", "--covers", "{bad}", "--out", "{out}.npy"],
    "embed --item-info": ["embed", "--run", "{run}", "--item-info", "{bad}", "--out", "{out}.npy"],
    "report": ["report", "{bad}"],
    "stats": ["stats", "{bad}"],
    "verify": ["verify", "{bad}"],
    "prepare --raw": ["prepare", "--raw", "{bad}", "--out", "{out}"],
    "weights --from": ["weights", "efficientnet-lite0", "--from", "{bad}", "--out", "{out}/w.safetensors"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_a_bad_file_in_one_line(command, world, tmp_path, capsys):
    for kind, bad in _bad_inputs(tmp_path / "inputs").items():
        out = tmp_path / f"out-{kind}"
        argv = [a.format(bad=bad, data=world["data"], run=world["run"], out=out) for a in COMMANDS[command]]
        status, stdout, err = run_cli(capsys, *argv)
        assert status == 2, (command, kind, status, err)
        one_line(err)
        assert not out.exists() and not Path(f"{out}.npy").exists(), (command, kind)
