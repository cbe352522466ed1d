"""The house's promises that a refactor could break: light start-up, the API as plain functions."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pixelrec

HEAVY = ("torch", "timm", "numpy")


def _loaded_after(code: str) -> list[str]:
    """Which heavy libraries a fresh interpreter has loaded after running `code`."""
    probe = f"import sys\n{code}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return [m for m in out.strip().split(",") if m]


def test_importing_pixelrec_and_the_commands_help_load_no_heavy_library():
    assert _loaded_after("import pixelrec") == []
    assert _loaded_after("from pixelrec.cli import build_parser\nbuild_parser().format_help()") == []


def test_the_api_is_plain_functions_listed_by_dir():
    for name in ("train", "evaluate", "recommend", "load_run"):
        function = getattr(pixelrec, name)
        assert inspect.isfunction(function) and function.__module__ == "pixelrec.api" and function.__doc__
    assert {"train", "evaluate", "recommend", "load_run", "Run", "Metrics", "Recommendations"} <= set(dir(pixelrec))
