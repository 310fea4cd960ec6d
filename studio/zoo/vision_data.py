"""Eight small image datasets for the vision zoo: 8×8 grayscale images in [0, 1], 1,797 examples each.

CLIP's multi-task benchmark merges experts for eight *different* datasets (scenes, cars, satellite images, digits,
traffic signs, textures, …). This is its miniature: scikit-learn's handwritten digits, the same digits as "house
numbers" (SVHN's role: random background and contrast), two letter sets, shapes, line orientations, textures and
arrow directions. Every generator is deterministic (fixed seeds; Pillow is pinned in requirements.txt, so its
bundled font renders the letters identically everywhere). Drawings are made at 32×32 and box-filtered to 8×8.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np

SIZE = 1797          # as many as scikit-learn's digits, so every dataset shares one split of indices
CANVAS = 32


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # optional and heavy: read once, then cached

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def _noisy(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    return np.clip(x + rng.normal(0.0, sigma, x.shape), 0.0, 1.0).astype(np.float32)


def _drawn(draw: Callable, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``SIZE`` drawings: ``draw(ImageDraw, rng) → label`` on a black 32×32 canvas, box-filtered to 8×8."""
    from PIL import Image, ImageDraw  # optional: drawing the datasets only (cached)

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(SIZE):
        im = Image.new("L", (CANVAS, CANVAS))
        ys.append(draw(ImageDraw.Draw(im), rng))
        xs.append(np.asarray(im.resize((8, 8), Image.BOX), dtype=np.float32) / 255.0)
    return np.stack(xs), np.array(ys, dtype=np.int64)


def numbers(seed: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The digits on a random grey background with random contrast (either polarity) and pixel noise."""
    x, y = dataset("digits")  # the cached digits (read, never written)
    rng = np.random.default_rng(seed)
    out = np.empty_like(x)
    for i, img in enumerate(x):
        bg = rng.uniform(0.2, 0.8)
        fg = np.clip(bg + rng.choice([-1, 1]) * rng.uniform(0.3, 0.6), 0, 1)
        out[i] = np.clip(bg + (fg - bg) * img + rng.normal(0, 0.1, (8, 8)), 0, 1)
    return out, y


def letters(seed: int = 11, alphabet: str = "BDEFHKNPRU") -> tuple[np.ndarray, np.ndarray]:
    """Ten capital letters in Pillow's bundled font at three sizes, randomly placed, with pixel noise."""
    from PIL import ImageFont  # optional: drawing the datasets only (cached)

    fonts = [ImageFont.load_default(size=s) for s in (22, 26, 30)]

    def draw(d, rng):
        c = int(rng.integers(len(alphabet)))
        font = fonts[int(rng.integers(len(fonts)))]
        d.text((int(rng.integers(0, 8)), int(rng.integers(-6, 2))), alphabet[c], fill=int(rng.integers(160, 256)),
               font=font)
        return c

    x, y = _drawn(draw, seed)
    return _noisy(x, 0.1, seed), y


def glyphs(seed: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """A second letter set with round and diagonal strokes."""
    return letters(seed, "ACGOQSTVWZ")


def shapes(seed: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Ten shapes (filled / outlined square, disc / ring, two triangles, plus, cross, filled / outlined diamond)."""

    def draw(d, rng):
        c = int(rng.integers(10))
        r = int(rng.integers(7, 13))
        cx, cy = (int(v) for v in rng.integers(r, CANVAS - r, 2))
        box = [cx - r, cy - r, cx + r, cy + r]
        w = int(rng.integers(3, 6))
        fill = int(rng.integers(150, 256))
        diamond = [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
        if c == 0:
            d.rectangle(box, fill=fill)
        elif c == 1:
            d.rectangle(box, outline=fill, width=w)
        elif c == 2:
            d.ellipse(box, fill=fill)
        elif c == 3:
            d.ellipse(box, outline=fill, width=w)
        elif c == 4:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        elif c == 5:
            d.polygon([(cx, cy + r), (cx - r, cy - r), (cx + r, cy - r)], fill=fill)
        elif c == 6:
            d.line([cx - r, cy, cx + r, cy], fill=fill, width=w)
            d.line([cx, cy - r, cx, cy + r], fill=fill, width=w)
        elif c == 7:
            d.line([cx - r, cy - r, cx + r, cy + r], fill=fill, width=w)
            d.line([cx - r, cy + r, cx + r, cy - r], fill=fill, width=w)
        elif c == 8:
            d.polygon(diamond, fill=fill)
        else:
            d.polygon(diamond, outline=fill, width=w)
        return c

    return _drawn(draw, seed)


def lines(seed: int = 13) -> tuple[np.ndarray, np.ndarray]:
    """A line through the image at one of ten orientations (18° apart), with pixel noise."""

    def draw(d, rng):
        c = int(rng.integers(10))
        a = math.pi * c / 10 + rng.normal(0, 0.05)
        cx, cy = rng.uniform(10, 22, 2)
        half = 20
        d.line([cx - half * math.cos(a), cy - half * math.sin(a), cx + half * math.cos(a), cy + half * math.sin(a)],
               fill=int(rng.integers(150, 256)), width=int(rng.integers(3, 6)))
        return c

    x, y = _drawn(draw, seed)
    return _noisy(x, 0.15, seed), y


def textures(seed: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Noisy sine gratings: five spatial frequencies × two orientations (± jitter), random phase and contrast."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:8, 0:8].astype(np.float32)
    xs, ys = [], []
    for _ in range(SIZE):
        c = int(rng.integers(10))
        freq = (0.5, 1.0, 1.5, 2.0, 2.5)[c % 5]
        ori = (c // 5) * math.pi / 2 + rng.normal(0, 0.15)
        g = 0.5 + 0.5 * np.sin(freq * (np.cos(ori) * xx + np.sin(ori) * yy) + rng.uniform(0, 2 * math.pi))
        g = g * rng.uniform(0.5, 1.0) + rng.normal(0, 0.2, (8, 8))
        xs.append(np.clip(g, 0, 1).astype(np.float32))
        ys.append(c)
    return np.stack(xs), np.array(ys, dtype=np.int64)


def arrows(seed: int = 17) -> tuple[np.ndarray, np.ndarray]:
    """An arrow pointing in one of eight directions, with pixel noise."""

    def draw(d, rng):
        c = int(rng.integers(8))
        a = 2 * math.pi * c / 8 + rng.normal(0, 0.08)
        cx, cy = rng.uniform(13, 19, 2)
        half, w, fill = 11, int(rng.integers(3, 5)), int(rng.integers(150, 256))
        tx, ty = cx + half * math.cos(a), cy + half * math.sin(a)
        d.line([cx - half * math.cos(a), cy - half * math.sin(a), tx, ty], fill=fill, width=w)
        for side in (2.5, -2.5):
            d.line([tx, ty, tx - 8 * math.cos(a + side / 3), ty - 8 * math.sin(a + side / 3)], fill=fill, width=w)
        return c

    x, y = _drawn(draw, seed)
    return _noisy(x, 0.15, seed), y


GENERATORS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _digits, "numbers": numbers, "letters": letters, "shapes": shapes, "lines": lines, "glyphs": glyphs,
    "textures": textures, "arrows": arrows,
}


@lru_cache(maxsize=None)
def dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images [1797, 8, 8] float32 in [0, 1], labels [1797] int64)`` of one dataset (cached: do not modify)."""
    if name not in GENERATORS:
        raise KeyError(name)
    return GENERATORS[name]()
