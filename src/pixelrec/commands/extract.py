"""`pixelrec extract`: frozen image or text features of every item (ViNet), or import features made elsewhere."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pixelrec.commands import say_written

#: The command's line in `pixelrec --help`, and its place there (the order of a workflow).
SUMMARY = ('frozen image (or --text-model text) features of every item (ViNet), resumable; or --import '
           'features made elsewhere')
ORDER = 5

if TYPE_CHECKING:
    import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="prepared dataset (from `pixelrec prepare`)")
    parser.add_argument("--out", required=True, metavar="FILE.npy", help="feature file; its sidecar is FILE.json")
    source = parser.add_mutually_exclusive_group()  # one of them, or --encoder-weights with a tower file
    source.add_argument("--encoder", help="image encoder: short name (clip-vit-b32, resnet50, ...) or timm name; "
                        "with --encoder-weights TOWER.safetensors (from `pixelrec export --tower`) the file names it")
    source.add_argument("--text-model", metavar="DIR", dest="model", help="text model over the items' texts: a Hugging "
                        "Face model directory (or a hub name in the local cache)")
    source.add_argument("--import", dest="source", metavar="FEATURES.npy",
                        help="an existing feature array, rows in the order of --order: [items, dim], or spatial "
                        "[items, components, dim] or square maps [items, H, W, dim] / [items, dim, H, W] (ACF)")
    parser.add_argument("--order", metavar="ORDER", help="with --import: item tokens of the rows, one per line, "
                        "or a CSV whose first column is item_id")
    parser.add_argument("--encoder-weights", metavar="PATH", help="local checkpoint (timm, open_clip, OpenAI CLIP), "
                        "or a tower file from `pixelrec export --tower`")
    parser.add_argument("--pretrained", action="store_true", help="timm hub weights (needs a hub or a cache)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights (no weights file given)")
    parser.add_argument("--image-size", type=int, metavar="PX", help="encoder input size (default: the encoder's)")
    parser.add_argument("--pooling", choices=["default", "cls", "mean", "none"], default="default",
                        help="image: the encoder's own (default), its class token, the mean of its tokens, or "
                        "none: every position of the last map (or patch token) kept, [items, components, dim], "
                        "for model acf; text: the mean of the tokens (default) or the first token")
    parser.add_argument("--text-fields", default="title,tag", metavar="A,B", help="with --text-model: the item "
                        "columns joined into each item's text")
    parser.add_argument("--max-tokens", type=int, default=32, metavar="N", help="with --text-model: token budget "
                        "per item (special tokens included)")
    parser.add_argument("--preprocess", choices=["encoder", "paper"], default="encoder",
                        help="mean/std of the encoder's data config, or the paper's 0.5/0.5 at 224")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N", help="items encoded per forward pass")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="DataLoader processes reading images (or tokens)")
    parser.add_argument("--dtype", choices=["fp16", "fp32"], help="stored precision (default: fp16; --import: "
                        "the source's float16/float32)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming or refusing")


def run(args: argparse.Namespace) -> int:
    from pixelrec.errors import UserError
    from pixelrec.jobs.extract import extract_features, import_features

    if args.source:
        if not args.order:
            raise UserError("--import needs --order FILE: the item token of each row of the array")
        sidecar = import_features(args.data, args.source, args.order, args.out, dtype=args.dtype,
                                  overwrite=args.overwrite)
        parts = f" x {sidecar['components']} components" if sidecar["components"] > 1 else ""
        print(f"wrote {args.out}: {sidecar['n_items']:,} items{parts} x {sidecar['dim']} {sidecar['dtype']} "
              f"(imported from {args.source})")
        return 0
    if args.order:
        raise UserError("--order goes with --import only")
    from pixelrec.distributed import resolve_device

    if args.model:
        return _text(args, resolve_device(args.device))

    args.encoder = args.encoder or _tower_encoder(args.encoder_weights)
    sidecar = extract_features(
        args.data, args.out, args.encoder, encoder_weights=args.encoder_weights, pretrained=args.pretrained,
        image_size=args.image_size, pooling=args.pooling, preprocess=args.preprocess, seed=args.seed,
        batch_size=args.batch_size, workers=args.workers, dtype=args.dtype or "fp16",
        device=resolve_device(args.device), overwrite=args.overwrite,
    )
    spatial = f" x {sidecar['components']} components" if sidecar.get("pooling") == "none" else ""
    what = (f"{sidecar['n_items']:,} items{spatial} x {sidecar['dim']} {sidecar['dtype']} "
            f"({args.encoder} at {sidecar['image_size']} px, pooling {sidecar['pooling']}; complete)")
    say_written(args.out, sidecar, what)
    return 0


def _tower_encoder(weights: str | None) -> str:
    """The image encoder a tower file (`pixelrec export --tower`) was trained as, standing in for --encoder."""
    from pixelrec.errors import UserError
    from pixelrec.towers.tower_file import read_description

    if not weights:
        raise UserError("give one of --encoder NAME, --text-model DIR, --import FEATURES.npy (or --encoder-weights "
                        "with a tower file from `pixelrec export --tower`)")
    if not Path(weights).is_file():
        raise UserError(f"--encoder-weights {weights}: file not found")
    description = read_description(weights)
    if description is None:
        raise UserError(f"--encoder-weights {weights}: not a tower file from `pixelrec export --tower` (nothing in it "
                        "names its encoder); give --encoder NAME too")
    return str(description["encoder"])


def _text(args: argparse.Namespace, device: "torch.device") -> int:
    """--text-model: frozen text features (ViNet over text), through the same feature files."""
    from pixelrec.errors import UserError
    from pixelrec.jobs.extract_text import extract_text_features

    given = {"--encoder-weights": args.encoder_weights, "--pretrained": args.pretrained,
             "--image-size": args.image_size}
    image_only = [flag for flag, value in given.items() if value]
    if image_only:
        raise UserError(f"{image_only[0]} goes with --encoder (an image encoder), not --text-model")
    fields = [f.strip() for f in args.text_fields.split(",") if f.strip()]
    sidecar = extract_text_features(
        args.data, args.out, args.model, text_fields=fields, max_tokens=args.max_tokens, pooling=args.pooling,
        batch_size=args.batch_size, workers=args.workers, dtype=args.dtype or "fp16", device=device,
        overwrite=args.overwrite,
    )
    what = (f"{sidecar['n_items']:,} items x {sidecar['dim']} {sidecar['dtype']} ({sidecar['encoder']} over "
            f"{'+'.join(sidecar['text_fields'])}, pooling {sidecar['pooling']}; complete)")
    say_written(args.out, sidecar, what)
    return 0
