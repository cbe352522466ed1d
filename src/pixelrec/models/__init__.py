"""Backbones: a user's context (and the batch's item vectors) -> user vectors.

The interface and the registry `BACKBONES` live in `base`, shared layers in `layers`; each other
module is one backbone that registers itself by name. Importing the package imports every module,
so every backbone is registered.
"""

import importlib
import pkgutil

from pixelrec.models.base import BACKBONES, DATA_ARGUMENTS, Backbone

__all__ = ["BACKBONES", "DATA_ARGUMENTS", "Backbone"]

_SHARED = {"base", "layers"}
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _SHARED:
        importlib.import_module(f"{__name__}.{_info.name}")
