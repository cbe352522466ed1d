"""What an image tower's settings say about a run's numbers: the run's caveats, as data.

A caveat is a small record, `{"kind", "encoder", "message", ...}`: `random_weights` (one of the
paper's nine encoders with randomly initialised weights, so the numbers are not comparable with the
paper's) or `upscaled_images` (the image store holds images smaller than the encoder's input, with
`stored_size` and `input_size`), `imported_features` (a feature file that `pixelrec extract --import`
brought in: what made it is unknown) or `transfer` (a run that started from another run's weights).
Nothing here prints: the trainer and `extract` compute the caveats
once where a run is set up, log them as warnings and record them (results.json, a feature file's
sidecar), and tables mark the runs that have them.
"""

from __future__ import annotations

from typing import Any

from pixelrec.towers.names import is_paper_encoder

RANDOM_WEIGHTS = "random_weights"
UPSCALED_IMAGES = "upscaled_images"
IMPORTED_FEATURES = "imported_features"
TRANSFER = "transfer"
KINDS = (RANDOM_WEIGHTS, UPSCALED_IMAGES, IMPORTED_FEATURES, TRANSFER)


def imported_caveat(features: str, source: str | None) -> dict[str, Any]:
    """A feature file imported from outside pixelrec (`source`: the file it came from)."""
    where = f" from {source}" if source else ""
    return {"kind": IMPORTED_FEATURES, "features": features, "source": source,
            "message": f"{features} was imported{where}: the image encoder and weights that made it are not "
                       "recorded, so nothing here says which of the paper's rows it compares with"}


def transfer_caveat(run: str, checkpoint: str) -> dict[str, Any]:
    """A run whose weights started from another run (train.init_from)."""
    return {"kind": TRANSFER, "source": run, "checkpoint": checkpoint,
            "message": f"started from the weights of {run} ({checkpoint}): a transfer result, not a run from the "
                       "image encoder's own weights"}


def tower_caveats(encoder: str | None, *, weights: str | None = None, pretrained: bool | None = False,
                  stored_size: int | None = None, input_size: int | None = None, carried: bool = False,
                  features: str | None = None, hint: str = "give items.image.encoder_weights=FILE") -> list[dict[str, Any]]:
    """The caveats of an image tower: `weights` (a file or its sha256) or `pretrained` gives it real
    weights, and so does `carried` (loaded from another run: train.init_from); `stored_size` and
    `input_size` are the image store's and the encoder's sizes in px. `features`: the feature file the
    tower made, named in the messages; `hint` says how to give the tower weights."""
    if not encoder:
        return []
    caveats = []
    if is_paper_encoder(encoder) and not weights and not pretrained and not carried:
        what = (f"{features} was extracted by a randomly initialised {encoder}" if features else
                f"image encoder {encoder} is randomly initialised")
        caveats.append({"kind": RANDOM_WEIGHTS, "encoder": encoder,
                        "message": f"{what}: its numbers are not comparable with the paper's ({hint})"})
    if stored_size and input_size and stored_size < input_size:
        what = (f"{features} was extracted from {stored_size} px images that {encoder} upscaled to {input_size} px"
                if features else
                f"the image store holds {stored_size} px images; {encoder} upscales them to {input_size} px")
        caveats.append({"kind": UPSCALED_IMAGES, "encoder": encoder, "stored_size": stored_size,
                        "input_size": input_size,
                        "message": f"{what} (prepare the data with `pixelrec prepare --image-size {input_size}` for real detail)"})
    return caveats
