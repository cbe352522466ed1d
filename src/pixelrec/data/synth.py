"""A synthetic dataset in exactly the PixelRec raw layout, whose pixels genuinely predict preferences.

Each item belongs to a cluster, a combination of three visual attributes (background colour, shape,
stripes) drawn into its cover with per-item jitter. Each user has a taste over a few related clusters,
and a sequence walks between clusters Markov-style: mostly the same cluster, often a related one (one
attribute changed), sometimes back to the taste, while the taste drifts. Within a cluster popularity is
Zipf-skewed. So a sequential model beats popularity, and an image model can learn what IDs learn.
Generation is vectorised over users (a loop over sequence positions, not interactions) and over items
only to draw covers; the same seed gives the same files.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pv
from PIL import Image, ImageDraw

from pixelrec.data.raw import INTERACTION_COLUMNS, ITEM_INFO_COLUMNS

COLOURS = {"red": (200, 45, 45), "green": (45, 160, 70), "blue": (45, 75, 205),
           "yellow": (230, 200, 50), "purple": (140, 55, 170), "cyan": (45, 190, 200)}
SHAPES = ("circle", "square", "triangle", "cross")
TEXTURES = ("plain", "horizontal stripes", "vertical stripes")
T0 = 1_630_000_000  # 2021-08-26, near the start of PixelRec's collection period
P_STAY, P_RELATED, P_DRIFT = 0.5, 0.3, 0.04  # else: jump back to a taste cluster
TASTE_SIZE = 3
ZIPF_A = 1.1


def _clusters(n_items: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Attribute triples (colour, shape, texture) of each cluster, and the related-cluster matrix."""
    shape = (len(COLOURS), len(SHAPES), len(TEXTURES))
    n = int(np.clip(n_items // 8, min(4, n_items), np.prod(shape)))
    attrs = np.stack(np.unravel_index(rng.choice(np.prod(shape), n, replace=False), shape), axis=1)
    differ = (attrs[:, None, :] != attrs[None, :, :]).sum(-1)
    related = differ == 1
    lonely = ~related.any(1)
    related[lonely] = (differ[lonely] < 3) & (differ[lonely] > 0)
    related[~related.any(1)] = np.eye(n, dtype=bool)[~related.any(1)]
    return attrs, related


def _pick(mask_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random True column per row of a boolean matrix."""
    cum = np.cumsum(mask_rows, axis=1)
    target = (rng.random(len(mask_rows)) * cum[:, -1]).astype(np.int64)
    return (cum <= target[:, None]).sum(1)


def _sequences(n_users: int, n_items: int, mean_len: float, cluster_of: np.ndarray, related: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Item index per (user, position) and the valid-position mask; a loop over positions only."""
    n_clusters = len(related)
    by_cluster = np.lexsort((rng.random(n_items), cluster_of))  # items grouped by cluster, random rank
    sizes = np.bincount(cluster_of, minlength=n_clusters)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(n_items) - starts[cluster_of[by_cluster]]
    weight = 1.0 / (rank + 1.0) ** ZIPF_A
    cum = np.cumsum(weight)
    totals = np.add.reduceat(weight, starts)
    before = np.concatenate([[0.0], np.cumsum(totals)[:-1]])
    # key = cluster + cumulative Zipf probability within the cluster, so that searchsorted(key, c + u)
    # with u uniform in [0, 1) draws an item of cluster c by its weight, for all users at once
    key = cluster_of[by_cluster] + (cum - before[cluster_of[by_cluster]]) / totals[cluster_of[by_cluster]]

    def draw(clusters: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(key, clusters + rng.random(len(clusters)) * (1 - 1e-9))
        return by_cluster[np.minimum(pos, n_items - 1)]

    extra = max(mean_len - 5.0, 0.0)
    lengths = 5 + (rng.geometric(1.0 / (extra + 1.0), n_users) - 1 if extra > 0 else np.zeros(n_users, int))
    lengths = np.minimum(lengths, int(20 * max(mean_len, 5)))
    taste = np.empty((n_users, TASTE_SIZE), dtype=np.int64)
    taste[:, 0] = rng.integers(0, n_clusters, n_users)
    for k in range(1, TASTE_SIZE):
        taste[:, k] = _pick(related[taste[:, 0]], rng)
    users = np.arange(n_users)
    current = taste[users, rng.integers(0, TASTE_SIZE, n_users)]
    seq = np.zeros((n_users, int(lengths.max())), dtype=np.int64)
    for t in range(seq.shape[1]):
        if t:
            r = rng.random(n_users)
            neighbour = _pick(related[current], rng)
            back = taste[users, rng.integers(0, TASTE_SIZE, n_users)]
            current = np.where(r < P_STAY, current, np.where(r < P_STAY + P_RELATED, neighbour, back))
            drift = np.flatnonzero(rng.random(n_users) < P_DRIFT)
            taste[drift, rng.integers(0, TASTE_SIZE, len(drift))] = _pick(related[current[drift]], rng)
        seq[:, t] = draw(current)
    return seq, np.arange(seq.shape[1])[None, :] < lengths[:, None]


def _draw_cover(attrs: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    """Background colour, stripes and a shape, each with a little per-item jitter."""
    colour, shape, texture = (int(a) for a in attrs)
    base = np.clip(np.array(list(COLOURS.values())[colour]) + rng.integers(-25, 26, 3), 0, 255)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in base))
    draw = ImageDraw.Draw(image)
    stripe = tuple(int(c) for c in (base * 0.6))
    period, phase = max(4, size // 8), int(rng.integers(0, max(4, size // 8)))
    for k in range(phase - period, size, period):
        if TEXTURES[texture] == "horizontal stripes":
            draw.rectangle([0, k, size, k + period // 2], fill=stripe)
        elif TEXTURES[texture] == "vertical stripes":
            draw.rectangle([k, 0, k + period // 2, size], fill=stripe)
    r = size * rng.uniform(0.22, 0.34)
    cx, cy = size * rng.uniform(0.38, 0.62, 2)
    ink = tuple(int(c) for c in rng.integers(225, 256, 3))
    box = [cx - r, cy - r, cx + r, cy + r]
    if SHAPES[shape] == "circle":
        draw.ellipse(box, fill=ink)
    elif SHAPES[shape] == "square":
        draw.rectangle(box, fill=ink)
    elif SHAPES[shape] == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=ink)
    else:
        draw.rectangle([cx - r, cy - r / 3, cx + r, cy + r / 3], fill=ink)
        draw.rectangle([cx - r / 3, cy - r, cx + r / 3, cy + r], fill=ink)
    return image


def _item_info(path: Path, tokens: list[str], attrs: np.ndarray, popularity: np.ndarray,
               rng: np.random.Generator) -> None:
    """item_info.csv with counts loosely following popularity and text with commas and quotes."""
    names = list(COLOURS)
    counts = popularity[:, None] * np.array([40, 2, 6, 1, 1, 3, 5]) + rng.integers(0, 50, (len(tokens), 7))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(ITEM_INFO_COLUMNS)
        for k, token in enumerate(tokens):
            colour, shape, texture = names[attrs[k, 0]], SHAPES[attrs[k, 1]], TEXTURES[attrs[k, 2]]
            title = f"{colour} {shape}, {texture} #{token[1:]}"
            description = f'A {colour} {shape} on a {texture} background; "synthetic" cover of {token}'
            writer.writerow([token, *counts[k].tolist(), title, f"{colour},{shape}", description])


def write_synthetic(out: Path, users: int = 2000, items: int = 500, mean_len: float = 12.0, image_size: int = 64,
                    seed: int = 0) -> dict:
    """Write interactions.csv, item_info.csv and covers/<item_id>.jpg under `out`; returns their counts."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    attrs_of_cluster, related = _clusters(items, rng)
    cluster_of = rng.permutation(np.arange(items) % len(related))
    seq, valid = _sequences(users, items, mean_len, cluster_of, related, rng)
    gaps = 1 + rng.exponential(4 * 3600.0, seq.shape).astype(np.int64)
    start = T0 + rng.integers(0, 300 * 86400, users)
    ts = start[:, None] + np.cumsum(gaps, axis=1)
    user_of = np.broadcast_to(np.arange(users)[:, None], seq.shape)[valid]
    item_of, ts = seq[valid], ts[valid]
    log = np.lexsort((user_of, ts))  # a platform log: time order
    item_numbers = np.sort(rng.choice(10 * items, items, replace=False)) + 1
    user_numbers = rng.choice(10 * users, users, replace=False) + 1
    item_tokens = np.array([f"i{n}" for n in item_numbers])
    user_tokens = np.array([f"u{n}" for n in user_numbers])
    out.mkdir(parents=True, exist_ok=True)
    columns = (item_tokens[item_of[log]], user_tokens[user_of[log]], ts[log])
    table = pa.table(dict(zip(INTERACTION_COLUMNS, columns)))
    with open(out / "interactions.csv", "wb") as f:
        f.write((",".join(INTERACTION_COLUMNS) + "\n").encode())
        pv.write_csv(table, f, pv.WriteOptions(include_header=False, quoting_style="none"))
    attrs = attrs_of_cluster[cluster_of]
    _item_info(out / "item_info.csv", item_tokens.tolist(), attrs, np.bincount(item_of, minlength=items), rng)
    covers = out / "covers"
    covers.mkdir(exist_ok=True)
    for k, token in enumerate(item_tokens):
        _draw_cover(attrs[k], image_size, rng).save(covers / f"{token}.jpg", quality=90)
    return {"users": users, "items": items, "interactions": int(valid.sum()), "clusters": len(related)}
