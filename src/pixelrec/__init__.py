"""pixelrec: recommender benchmarks with items as IDs, frozen image features or raw pixels."""

__version__ = "0.1.0"
