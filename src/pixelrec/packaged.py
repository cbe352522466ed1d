"""The packaged configuration files (src/pixelrec/configs/): presets, profiles, and reading a YAML
layer. Light on purpose: `pixelrec --help` lists the presets and profiles without loading a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pixelrec.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"
PROFILE_DIR = CONFIG_DIR / "profiles"


def preset_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "presets").glob("*.yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML configuration file, or a packaged preset by name (e.g. `cpu-small`)."""
    path = Path(path)
    if not path.is_file() and path.suffix == "":
        packaged = [CONFIG_DIR / "presets" / f"{path}.yaml", CONFIG_DIR / f"{path}.yaml"]
        path = next((p for p in packaged if p.is_file()), path)
    if not path.is_file():
        raise UserError(f"{path}: configuration file not found (packaged presets: {', '.join(preset_names())})")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (a YAML configuration is text)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{line} is not valid YAML") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a mapping of sections (model, data, items, loss, train, eval)")
    return loaded


def profile_names() -> list[str]:
    """`default` and the packaged profiles (configs/profiles/<name>/)."""
    return ["default"] + sorted(p.name for p in PROFILE_DIR.iterdir() if p.is_dir())


def is_profile(name: str | Path) -> bool:
    """True when a `--config` entry names a packaged profile rather than a YAML file."""
    return not Path(name).is_file() and str(name) in profile_names()
