"""pixelrec: recommender benchmarks with items as IDs, frozen image features or raw pixels.

The Python API (docs/python.md): `pixelrec.train(...)`, `pixelrec.evaluate(...)`,
`pixelrec.recommend(...)`, `pixelrec.load_run(...)` and their result types, defined in
`pixelrec.api`. They are loaded on first use, so `import pixelrec` (and the command line's start)
does not import torch.
"""

from __future__ import annotations

from typing import Any

from pixelrec import threads as _threads
from pixelrec.errors import UserError
from pixelrec.version import __version__

_threads.limit_idle_spin()  # before anything imports torch: idle OpenMP threads then sleep instead of spinning

#: The API's names, served from `pixelrec.api` when first asked for.
_API = ("Metrics", "Recommendations", "Run", "evaluate", "load_run", "recommend", "train")

__all__ = [*_API, "UserError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from pixelrec import api  # start-up: the API pulls in torch and every component

        return getattr(api, name)
    raise AttributeError(f"module 'pixelrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
