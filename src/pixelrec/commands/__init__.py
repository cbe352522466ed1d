"""Sub-commands of the `pixelrec` tool, one module each (see `pixelrec.cli`)."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from pixelrec.errors import UserError


def at_least(minimum: int):
    """An argparse type: an integer no smaller than `minimum` (argparse's usage error otherwise)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def add_run_argument(parser: argparse.ArgumentParser) -> None:
    """The run directory, as `RUN` or `--run RUN` (torchrun takes `--run` for its own `--run-path`)."""
    parser.add_argument("run_dir", nargs="?", metavar="RUN", help="run directory written by `pixelrec train`")
    parser.add_argument("--run", help="the same, as an option")
    parser.add_argument("--data", metavar="DIR", help="the run's prepared dataset where it is now, if it moved "
                        "(refused unless it is the dataset the run was trained on)")


def run_directory(args: argparse.Namespace) -> Path:
    chosen = args.run or args.run_dir
    if not chosen:
        raise UserError("which run? give its directory: RUN or --run RUN")
    return Path(chosen)


def run_data(args: argparse.Namespace) -> str | None:
    """The dataset given with --data for a run command (None: the one the run recorded)."""
    return getattr(args, "data", None)


def rounded(value: Any, digits: int = 4) -> Any:
    """`value` with every metric (NAME@K) a fraction with five decimals (`units.fraction`: the
    precision of the tables' percent) and every other float rounded to `digits` significant digits
    (ints, strings, None kept)."""
    from pixelrec.units import fraction, is_metric

    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {key: fraction(item) if is_metric(key) and isinstance(item, float) else rounded(item, digits)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item, digits) for item in value]
    return value


def results_json(payload: Any) -> str:
    """Results as printed by every command: JSON, metrics as fractions with five decimals (see
    `rounded`; results.json and metrics.jsonl keep full precision)."""
    return json.dumps(rounded(payload), indent=2)


def say_written(out: str, sidecar: dict[str, Any], what: str, done: str = "extracted", again: str = "extracts it") -> None:
    """The closing line of a resumable feature-file command: written now, or already complete."""
    if sidecar["rows_written"]:
        print(f"wrote {out}: {what}")
    else:
        print(f"{out}: already {done}, nothing to do: {what}; --overwrite {again} again")


#: A parameter as the library names it in a message: `name=` with a value, `name=` alone, or a switch,
#: `name=True` (`name=False` for an option that turns something off, such as prepare's --no-images).
_PARAMETER = re.compile(r"(?<![\w.\-/'\"])([a-z][a-z0-9_]*)=(True\b|False\b)?")


def in_flags(message: str, flags: dict[str, str], aliases: dict[str, str] | None = None) -> str:
    """`message` with each parameter that the command has an option for written as that option:
    `data=DIR` -> `--data DIR`, `out=` -> `--out`, `overwrite=True` -> `--overwrite`; `aliases` (the
    command's entry of ALIASES) first."""
    for words, parameter in (aliases or {}).items():
        message = message.replace(words, parameter)

    def option(match: re.Match) -> str:
        name, switch = match.group(1), match.group(2)
        if name not in flags:
            return match.group(0)
        following = message[match.end():match.end() + 1]
        valued = not switch and following not in ("", " ", ":", ";", ",", ")")
        return flags[name] + (" " if valued else "")

    return _PARAMETER.sub(option, message)
