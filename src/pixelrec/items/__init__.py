"""Item encoders: item indices -> vectors (id, features, id+features, pixels, text, multimodal).

The interface and the registry `ITEM_ENCODERS` live in `base`; each other module is one encoder kind
that registers itself by name. Importing the package imports every module, so every kind is registered.
"""

import importlib
import pkgutil

from pixelrec.items.base import ITEM_ENCODERS, ItemEncoder, ItemLookup

__all__ = ["ITEM_ENCODERS", "ItemEncoder", "ItemLookup"]

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")
