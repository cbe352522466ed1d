"""Backbones, one module each, registered by name in BACKBONES."""

import importlib

from pixelrec.models.base import DATA_ARGUMENTS, Backbone  # noqa: F401
from pixelrec.registry import Registry

BACKBONES: Registry = Registry("model")

MODULES = ("pop", "sasrec")
for _module in MODULES:
    importlib.import_module(f"pixelrec.models.{_module}")
