"""docs/fidelity.md and the paper profile cannot drift apart: every key the profile sets has a row that
names it (with a value the profile gives it), and every `option` row names keys that exist and that the
profile sets, or says why the profile leaves them unset ("not in the profile")."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from pixelrec.config import DataConfig, EvalConfig, ItemsConfig, LossConfig, TrainConfig
from pixelrec.items import ITEM_ENCODERS
from pixelrec.items.pixels import ImageSettings
from pixelrec.losses import LOSSES
from pixelrec.models import BACKBONES
from pixelrec.packaged import PROFILE_DIR
from pixelrec.registry import constructor_parameters

FIDELITY = Path(__file__).resolve().parents[1] / "docs" / "fidelity.md"
OPTION_COLUMN = "Option (`paper` value)"
NOT_IN_PROFILE = "not in the profile"
#: `section.key`, `section.key: value` or `--set section.key=value` inside a backtick span
KEY = re.compile(r"^(?:--set )?((?:model|items|loss|train|eval|data)\.[a-z_0-9.]+)(?:(?::\s*|=)(.+))?$")


def table_rows(text: str) -> list[dict[str, str]]:
    """The rows of every table whose header has the option column, as {header: cell}."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|- "):
            rows.append(dict(zip(header, cells)))
    return [r for r in rows if OPTION_COLUMN in r]


def named_keys(cell: str) -> list[tuple[str, Any]]:
    """(key, value or None) of every configuration key named in a cell."""
    out = []
    for span in re.findall(r"`([^`]+)`", cell):
        match = KEY.match(span.strip())
        if match:
            value = match.group(2)
            out.append((match.group(1), None if value is None else yaml.safe_load(value)))
    return out


def profile_settings() -> dict[str, list[Any]]:
    """Every dotted key any file of the paper profile sets, with the values it is given."""
    found: dict[str, list[Any]] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            found.setdefault(prefix, []).append(node)

    for path in sorted((PROFILE_DIR / "paper").rglob("*.yaml")):
        walk("", yaml.safe_load(path.read_text()) or {})
    return found


def key_exists(key: str) -> bool:
    """A key of the configuration schema: a config field, a tower setting, or a component's parameter."""
    section, _, rest = key.partition(".")
    if section == "model":
        return any(rest in constructor_parameters(BACKBONES.get(n)) for n in BACKBONES.names())
    if section == "items" and rest.startswith("image."):
        return rest.split(".")[1] in {f.name for f in fields(ImageSettings)}
    if section == "items":
        return rest in {f.name for f in fields(ItemsConfig)} or any(
            rest in constructor_parameters(ITEM_ENCODERS.get(n)) for n in ITEM_ENCODERS.names())
    if section == "loss":
        return rest in {f.name for f in fields(LossConfig)} or any(
            rest in constructor_parameters(LOSSES.get(n)) for n in LOSSES.names())
    classes = {"train": TrainConfig, "eval": EvalConfig, "data": DataConfig}
    return rest in {f.name for f in fields(classes[section])}


ROWS = table_rows(FIDELITY.read_text())
PROFILE = profile_settings()


def covers(named: str, key: str) -> bool:
    return key == named or key.startswith(named + ".")


def test_the_table_is_found():
    assert len(ROWS) > 40 and len(PROFILE) > 30


@pytest.mark.parametrize("key", sorted(PROFILE))
def test_every_key_the_profile_sets_has_a_row(key):
    rows = [r["Aspect"] for r in ROWS for named, _ in named_keys(r[OPTION_COLUMN]) if covers(named, key)]
    assert rows, f"{key} is set by the paper profile but no row of docs/fidelity.md names it"


@pytest.mark.parametrize("row", [r for r in ROWS if r["Class, why"].startswith("option")], ids=lambda r: r["Aspect"])
def test_every_option_row_names_keys_that_exist_and_the_profile_sets(row):
    keys = named_keys(row[OPTION_COLUMN])
    assert keys, f"option row {row['Aspect']!r} names no configuration key"
    unset = NOT_IN_PROFILE in row["Class, why"]
    for key, value in keys:
        assert key_exists(key), f"{row['Aspect']}: {key} is not a configuration key"
        set_by_profile = [v for k, values in PROFILE.items() if covers(key, k) for v in values]
        if unset:
            assert not set_by_profile, f"{row['Aspect']}: says {NOT_IN_PROFILE}, but the profile sets {key}"
        else:
            assert set_by_profile, f"{row['Aspect']}: the profile does not set {key} (or say '{NOT_IN_PROFILE}: why')"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["Aspect"])
def test_a_value_a_row_gives_is_one_the_profile_gives(row):
    if NOT_IN_PROFILE in row["Class, why"]:
        return
    for key, value in named_keys(row[OPTION_COLUMN]):
        if value is not None and key in PROFILE:
            assert value in PROFILE[key], f"{row['Aspect']}: {key}: {value!r}, the profile gives {PROFILE[key]}"


def test_only_tested_pages_claim_to_list_every_difference():
    root = FIDELITY.parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md")),
             PROFILE_DIR / "paper" / "base.yaml"]
    claims = [p.name for p in pages if re.search(r"every (one of the )?difference", p.read_text(), re.I)]
    for page in claims:  # where the words appear, they must point at this test
        text = (root / "README.md" if page == "README.md" else next(p for p in pages if p.name == page)).read_text()
        assert "test_fidelity_table" in text, f"{page} claims every difference without naming tests/test_fidelity_table.py"
