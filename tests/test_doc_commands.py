"""Every command block of README.md and docs/*.md runs as written, on a small synthetic dataset.

A command block is a fenced block whose lines start with a program (`pixelrec`, `make`, `pip`,
`torchrun`, `python`, `NAME=$(...)`). Each doc runs in a fresh folder, its commands in the doc's order,
`pixelrec` in this process (one torch import for all), each with the tiny settings and substitutions
below, which docs/develop.md ("Commands in the docs are tested") lists for writers. A block, or some
of its commands, that cannot run here carries a marker on the line above its fence:

    <!-- doc-test: online: REASON -->                      needs the network (a download, pip)
    <!-- doc-test: heavy "pixelrec bench": REASON -->      too heavy for the test (only these commands)
    <!-- doc-test: skip: REASON -->                        not meant to be run (a synopsis, output)

Inputs a doc names that none of its earlier commands wrote are made from the synthetic data when a
command needs them (`MAKERS`): raw folders, prepared datasets, runs named by placeholder or date,
new covers and new item information.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pixelrec import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAM = re.compile(r"^\s*(pixelrec|make|pip|torchrun|python|\.venv/bin/\w+|[A-Z][A-Z0-9_]*=\$\()(\s|$)")
MARKER = re.compile(r"<!--\s*doc-test:\s*(online|heavy|skip)\s*((?:\"[^\"]+\"\s*)*)\s*:\s*(.*?)\s*-->")
PAPER_ENCODERS = r"clip-vit-b32|clip-rn50x64|clip-rn50x16|clip-rn50x4|clip-rn50|swin-t|swin-b|beit-b|resnet50"

#: (pattern, replacement, why), applied in order to each command's text before it runs.
SUBSTITUTIONS = [
    (rf"\b({PAPER_ENCODERS})\b", "efficientnet-lite0",
     "the paper's encoders are too heavy for CPU tests: EfficientNet-Lite0 (ImageNet weights, offline) stands in"),
    (r"^pixelrec (\w+) \.\.\.", r"pixelrec \1 --data data/pixel200k --model sasrec", "`...`: the lines above' data and model"),
    (r"runs/<text-id>", "{run:text}", "placeholders and dated run names: the newest run of that kind"),
    (r"runs/<id>", "{run:pixels}", ""),
    (r"runs/[a-z0-9]+-([a-z+]+)-\d{8}-\d{6}", r"{run:\1}", ""),
    (r"--user u123\b", "--user {user}", "a user of the synthetic data"),
]
#: Tiny settings added to each verb (appended: they win over the doc's own values).
SETTINGS = ["train.epochs=1", "train.max_steps=2", "train.progress=false", "train.num_workers=0",
            "eval.batch_size=512"]
TRAINING = [word for setting in SETTINGS + ["train.batch_size=16"] for word in ("--set", setting)]
TINY = {"train": TRAINING, "bench": TRAINING,
        "tune": [word for setting in SETTINGS for word in ("--set", setting)],  # a study may search the batch size
        "weights": ["--overwrite"]}  # the stand-in encoder's weights file is written by more than one command
PIXEL_KINDS = re.compile(r"--items (pixels|multimodal)\b")


@dataclass
class Block:
    doc: Path
    line: int
    commands: list[str]
    marks: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)

    def mark_of(self, command: str) -> tuple[str, str] | None:
        for kind, prefixes, reason in self.marks:
            if not prefixes or command.startswith(prefixes):
                return kind, reason
        return None


def command_blocks(doc: Path) -> list[Block]:
    lines = doc.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        start, language = i, lines[i][3:].strip()
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        text = "\n".join(body).replace("\\\n", " ")
        commands = [" ".join(c.split()) for c in text.splitlines() if c.strip() and not c.strip().startswith("#")]
        if language or not any(PROGRAM.match(c) for c in commands):
            continue
        marks = []
        above = start - 1
        while above >= 0 and MARKER.search(lines[above]):
            kind, prefixes, reason = MARKER.search(lines[above]).groups()
            marks.append((kind, tuple(re.findall(r"\"([^\"]+)\"", prefixes)), reason))
            above -= 1
        blocks.append(Block(doc, start + 1, commands, marks))
    return blocks


# --- the synthetic inputs ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, Path]:
    from pixelrec.data.prepare import prepare
    from pixelrec.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("doc-inputs")
    write_synthetic(root / "raw", users=80, items=30, mean_len=6.0, image_size=32, seed=0)
    prepare(root / "raw", root / "data", image_size=32, seed=0, workers=1, progress=False)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "tiny_text_model.py"), "--item-info",
                    str(root / "raw" / "item_info.csv"), "--out", str(root / "tiny-bert"), "--hidden", "16",
                    "--layers", "2"], check=True, capture_output=True)
    return {"raw": root / "raw", "data": root / "data", "tiny-bert": root / "tiny-bert"}


class Sandbox:
    """One doc's folder: the commands' working directory, with the inputs made on demand."""

    def __init__(self, folder: Path, inputs: dict[str, Path]) -> None:
        self.folder, self.inputs = folder, inputs
        self.env = {"MINILM": str(inputs["tiny-bert"])}  # all-MiniLM-L6-v2 -> a tiny random BERT
        first = (inputs["raw"] / "interactions.csv").read_text().splitlines()[1]
        self.user = first.split(",")[1]

    def run_of(self, kind: str) -> str:
        """The newest run of an item kind made here, else a tiny one trained now."""
        found = []
        for results in self.folder.glob("**/results.json"):
            record = json.loads(results.read_text())
            if record.get("items") == kind:
                found.append((results.stat().st_mtime, results.parent))
        if found:
            return str(max(found)[1].relative_to(self.folder))
        out = f"runs/doc-{kind}"
        extra = {"pixels": ["--encoder", "efficientnet-lite0", "--set", "items.image.image_size=32"],
                 "text": ["--set", f"items.text.encoder_weights={self.inputs['tiny-bert']}"]}.get(kind, [])
        code, err = self.pixelrec(["train", "--data", self.dataset("data/pixel200k"), "--model", "sasrec", "--items",
                                   kind, *extra, "--out", out, *TRAINING])
        assert code == 0, f"the stand-in {kind} run: {err}"
        return out

    def dataset(self, name: str) -> str:
        if not (self.folder / name).exists():
            shutil.copytree(self.inputs["data"], self.folder / name)
        return name

    def prepare_inputs(self, argv: list[str]) -> None:
        """Make what a command reads and no earlier command wrote."""
        for flag, value in zip(argv, argv[1:]):
            path = self.folder / value
            if flag == "--raw" and not path.exists():
                shutil.copytree(self.inputs["raw"], path)
            if flag == "--data" and not path.exists():
                self.dataset(value)
            if flag == "--covers" and not path.exists():
                path.mkdir(parents=True)
                for n, cover in enumerate(sorted((self.inputs["raw"] / "covers").iterdir())[:3]):
                    shutil.copy(cover, path / f"new{n}.jpg")
            if flag == "--item-info" and not path.exists():
                header, *rows = (self.inputs["raw"] / "item_info.csv").read_text().splitlines()
                path.write_text("\n".join([header] + [f"new{n}," + row.split(",", 1)[1] for n, row in enumerate(rows[:3])]))
        for word in argv:  # weights/ENCODER.safetensors, as `pixelrec weights ENCODER` writes it
            named = re.search(r"weights/(efficientnet-lite0)\.safetensors", word)
            if named and not (self.folder / named[0]).exists() and argv[0] != "weights":
                code, err = self.pixelrec(["weights", named[1], "--out", named[0]])
                assert code == 0, err
        if argv[:1] in (["stats"], ["verify"]) and len(argv) > 1 and not (self.folder / argv[1]).exists():
            self.dataset(argv[1])

    def pixelrec(self, argv: list[str]) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
        return code, err.getvalue()

    def run(self, command: str) -> tuple[int, str]:
        for pattern, replacement, _ in SUBSTITUTIONS:
            command = re.sub(pattern, replacement, command)
        assignment = re.match(r"^([A-Z][A-Z0-9_]*)=\$\(", command)
        if assignment:
            if assignment[1] in self.env:
                return 0, ""
            return 1, f"{assignment[1]}: no stand-in; mark the block"
        words = shlex.split(command, comments=True)
        if words[0] != "pixelrec":
            return 1, f"{words[0]}: only pixelrec commands run here; mark the block"
        argv = []
        for word in words[1:]:
            word = re.sub(r"\$(\w+)", lambda m: self.env.get(m[1], m[0]), word)
            word = re.sub(r"\{run:([a-z+]+)\}", lambda m: self.run_of(m[1]), word).replace("{user}", self.user)
            matches = sorted(glob.glob(word, root_dir=self.folder)) if "*" in word else []
            argv += matches or [word]
        self.prepare_inputs(argv)
        argv += TINY.get(argv[0], [])
        if PIXEL_KINDS.search(command):
            argv += ["--set", "items.image.image_size=32"]
        if argv[0] == "extract" and "--import" not in argv and "--text-model" not in argv:
            argv += ["--image-size", "32", "--workers", "0"]
        return self.pixelrec(argv)


@pytest.mark.parametrize("doc", DOCS, ids=[doc.name for doc in DOCS])
def test_the_commands_in_the_docs_run_as_written(doc, inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    box = Sandbox(tmp_path, inputs)
    failures, ran, began = [], 0, time.perf_counter()
    for block in command_blocks(doc):
        for command in block.commands:
            if block.mark_of(command):
                continue
            code, err = box.run(command)
            ran += 1
            if code != 0:
                failures.append(f"{doc.name}:{block.line}: {command}\n    -> exit {code}: {err.strip()[-400:]}")
    assert not failures, "\n".join(failures)
    print(f"{doc.name}: {ran} commands in {time.perf_counter() - began:.1f}s")


def test_markers_and_blocks_are_read_as_documented(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text('text\n<!-- doc-test: heavy "pixelrec bench": a matrix -->\n```\npixelrec train --data d \\\n'
                   '    --model mf   # comment\npixelrec bench --data d\n```\n```\nok: output\n```\n```python\nimport x\n```\n')
    [block] = command_blocks(doc)
    assert block.commands == ["pixelrec train --data d --model mf # comment", "pixelrec bench --data d"]
    assert block.mark_of(block.commands[0]) is None
    assert block.mark_of(block.commands[1]) == ("heavy", "a matrix")
