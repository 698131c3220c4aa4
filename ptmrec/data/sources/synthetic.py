"""Generated catalogues: a small drawn one for tests and quick runs, and a large text-only one for scale.

`make_synthetic` ("taste"): every item has a colour and a shape, drawn into its image with PIL and named
in its text. Every user prefers one colour and one shape and interacts mostly with items that have them,
so both the image and the text carry the signal a recommender can learn. Cost: users × items.

`make_power_law` ("power_law"): texts only, about `interactions_per_item` interactions per item, item
popularity Zipf-like (the k-th most popular item drawn ∝ 1/k, as in real purchase logs) and each user
leaning to one colour named in the texts. Cost: linear in the interactions, for 10^6-item benchmarks.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ptmrec.data.tables import Dataset, mmrec_split

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
          "purple": (140, 50, 170), "orange": (245, 140, 30), "black": (20, 20, 20), "cyan": (40, 200, 210)}
SHAPES = ("circle", "square", "triangle", "cross")
NOUNS = ("lamp", "mug", "poster", "cushion", "sticker", "badge")
IMAGE_SIZE = 96


def make_synthetic(num_users: int = 200, num_items: int = 120, seed: int = 2024,
                   per_user: tuple[int, int] = (8, 20)) -> Dataset:
    rng = np.random.default_rng(seed)
    color_names = list(COLORS)
    item_color = rng.integers(len(COLORS), size=num_items)
    item_shape = rng.integers(len(SHAPES), size=num_items)
    item_noun = rng.integers(len(NOUNS), size=num_items)
    backgrounds = rng.integers(200, 256, size=(num_items, 3))

    users, items = [], []
    for u in range(num_users):
        likes_color, likes_shape = rng.integers(len(COLORS)), rng.integers(len(SHAPES))
        # Preference strength: 3 logits per matching attribute makes most picks match.
        logits = 3.0 * (item_color == likes_color) + 3.0 * (item_shape == likes_shape)
        p = np.exp(logits) / np.exp(logits).sum()
        n = int(rng.integers(per_user[0], per_user[1] + 1))
        chosen = rng.choice(num_items, size=min(n, num_items), replace=False, p=p)
        users += [u] * len(chosen)
        items += chosen.tolist()
    users_arr = np.asarray(users, dtype=np.int64)

    texts = [f"a {color_names[c]} {SHAPES[s]} {NOUNS[w]}" for c, s, w in zip(item_color, item_shape, item_noun)]
    meta = [{"color": color_names[c], "shape": SHAPES[s]} for c, s in zip(item_color, item_shape)]

    def item_image(item: int) -> Image.Image:
        return draw_item(COLORS[color_names[item_color[item]]], SHAPES[item_shape[item]],
                         tuple(int(v) for v in backgrounds[item]))

    return Dataset(name="synthetic", num_users=num_users, num_items=num_items, users=users_arr,
                   items=np.asarray(items, dtype=np.int64), splits=mmrec_split(users_arr, num_users, seed),
                   item_texts=texts, item_image=item_image, item_meta=meta)


def draw_item(color: tuple[int, int, int], shape: str, background: tuple[int, int, int]) -> Image.Image:
    size = IMAGE_SIZE
    im = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(im)
    a, b = size // 5, size - size // 5
    if shape == "circle":
        d.ellipse([a, a, b, b], fill=color)
    elif shape == "square":
        d.rectangle([a, a, b, b], fill=color)
    elif shape == "triangle":
        d.polygon([(size // 2, a), (a, b), (b, b)], fill=color)
    else:
        w = size // 8
        d.rectangle([size // 2 - w, a, size // 2 + w, b], fill=color)
        d.rectangle([a, size // 2 - w, b, size // 2 + w], fill=color)
    return im


def make_power_law(num_users: int, num_items: int, seed: int = 2024, interactions_per_item: float = 10.0,
                   exponent: float = 1.0, taste: float = 0.7) -> Dataset:
    rng = np.random.default_rng(seed)
    color_names = list(COLORS)
    item_color = rng.integers(len(COLORS), size=num_items)
    item_shape = rng.integers(len(SHAPES), size=num_items)
    item_noun = rng.integers(len(NOUNS), size=num_items)
    # users: at least 3 interactions each (one to train on, one valid, one test), the rest geometric
    extra = max(interactions_per_item * num_items / num_users - 3, 0.0)
    counts = 3 + rng.geometric(1 / (1 + extra), size=num_users) - 1
    users = np.repeat(np.arange(num_users), counts)
    likes = rng.integers(len(COLORS), size=num_users)[users]
    # popularity: a random item order, the k-th drawn ∝ k^-exponent; taste draws stay in the user's colour
    ranked = rng.permutation(num_items)
    weights = np.arange(1, num_items + 1, dtype=np.float64) ** -exponent
    items = _draw(rng, ranked, weights, len(users))
    tasteful = rng.random(len(users)) < taste
    for c in range(len(COLORS)):
        in_color = ranked[item_color[ranked] == c]
        who = np.flatnonzero(tasteful & (likes == c))
        if len(in_color) and len(who):
            items[who] = _draw(rng, in_color, np.arange(1, len(in_color) + 1, dtype=np.float64) ** -exponent, len(who))
    pairs = np.unique(users * num_items + items)  # a user buys an item once
    users, items = pairs // num_items, pairs % num_items
    texts = [f"a {color_names[c]} {SHAPES[s]} {NOUNS[w]}" for c, s, w in zip(item_color, item_shape, item_noun)]
    return Dataset(name="synthetic-power-law", num_users=num_users, num_items=num_items, users=users, items=items,
                   splits=mmrec_split(users, num_users, seed), item_texts=texts)


def _draw(rng: np.random.Generator, items: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """n draws from `items` with probabilities ∝ `weights` (inverse CDF: linear in n and the items)."""
    cdf = np.cumsum(weights)
    return items[np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1]), len(items) - 1)]
