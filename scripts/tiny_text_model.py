"""Save a tiny random BERT and its WordPiece tokenizer (a Hugging Face model directory) whose vocabulary
is the words of an item_info.csv's titles and tags: a stand-in text model for CPU demos, built locally
(nothing is downloaded). Needs only `transformers` and torch.

    python scripts/tiny_text_model.py --item-info demo_out/raw/item_info.csv --out demo_out/tiny-bert
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def vocabulary(item_info: Path, columns: tuple[str, ...] = ("title", "tag")) -> list[str]:
    """Special tokens, every lower-cased word and punctuation mark of `columns`, and digits (##-pieces too)."""
    words: set[str] = set()
    with open(item_info, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for column in columns:
                words.update(re.findall(r"[a-z]+|[^\sa-z0-9]", (row.get(column) or "").lower()))
    digits = [str(d) for d in range(10)]
    return SPECIALS + sorted(words) + digits + [f"##{d}" for d in digits]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--item-info", required=True, type=Path, help="item_info.csv with title and tag columns")
    parser.add_argument("--out", required=True, type=Path, help="model directory to write")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.utils import logging

    logging.disable_progress_bar()
    args.out.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary(args.item_info)
    (args.out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(args.out / "vocab.txt")).save_pretrained(args.out)
    config = BertConfig(vocab_size=len(vocab), hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=2, intermediate_size=2 * args.hidden, max_position_embeddings=64)
    torch.manual_seed(args.seed)
    BertModel(config).save_pretrained(args.out)
    print(f"wrote {args.out}: random BERT, {args.layers} layers, hidden {args.hidden}, {len(vocab)} tokens")


if __name__ == "__main__":
    main()
