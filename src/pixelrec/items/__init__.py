"""Item encoders, registered by name: id (and, in later modules, features and pixels)."""

from pixelrec.registry import Registry

ITEM_ENCODERS: Registry = Registry("item encoder")

from pixelrec.items import features as _features  # noqa: E402,F401  (registers "features", "id+features")
from pixelrec.items import id as _id  # noqa: E402,F401  (registers "id")
from pixelrec.items import multimodal as _multimodal  # noqa: E402,F401  (registers "multimodal")
from pixelrec.items import pixels as _pixels  # noqa: E402,F401  (registers "pixels")
from pixelrec.items import text as _text  # noqa: E402,F401  (registers "text")
