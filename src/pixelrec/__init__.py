"""pixelrec: recommender benchmarks with items as IDs, frozen image features or raw pixels.

The Python API (docs/python.md; defined in `pixelrec.api`): `pixelrec.train(...)`,
`pixelrec.evaluate(...)`, `pixelrec.recommend(...)`, `pixelrec.load_run(...)`. It is imported on
first use, so `import pixelrec` (and the command line's start) stays light.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

from pixelrec import threads as _threads

_threads.limit_idle_spin()  # before anything imports torch: idle OpenMP threads then sleep instead of spinning

__version__ = "0.1.0"

__all__ = ["Metrics", "Recommendations", "Run", "UserError", "__version__", "evaluate", "load_run", "recommend",
           "train"]

_API = {"recommend", "load_run", "Run", "Metrics", "Recommendations"}


class _CallableSubpackage(types.ModuleType):
    """`pixelrec.train` and `pixelrec.evaluate` are subpackages (the trainer, the evaluator) and the
    API functions of the same names: calling the package calls `pixelrec.api.<name>`. A plain
    function under those names would be replaced by the subpackage as soon as it is imported."""

    def _function(self):
        from pixelrec import api

        return getattr(api, self.__name__.rpartition(".")[2])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._function())


from pixelrec import evaluate, train  # noqa: E402 - empty package files: nothing heavy is imported

evaluate.__class__ = _CallableSubpackage
train.__class__ = _CallableSubpackage


def __getattr__(name: str) -> Any:
    if name in _API:
        from pixelrec import api

        return getattr(api, name)
    if name == "UserError":
        from pixelrec.errors import UserError

        return UserError
    raise AttributeError(f"module 'pixelrec' has no attribute {name!r}")
