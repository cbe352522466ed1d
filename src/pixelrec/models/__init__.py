"""Backbones, one module each, registered by name in BACKBONES (every module here is imported)."""

import importlib
import pkgutil

from pixelrec.models.base import DATA_ARGUMENTS, Backbone  # noqa: F401
from pixelrec.registry import Registry

BACKBONES: Registry = Registry("model")

_SHARED = {"base", "layers"}
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _SHARED:
        importlib.import_module(f"{__name__}.{_info.name}")
