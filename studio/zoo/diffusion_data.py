"""The diffusion zoo's toy world: 64×64 pictures of handwritten digits, described by short prompts.

A picture is one of scikit-learn's 1,797 handwritten digits (8×8, smoothed up to a 44×32 glyph) placed on a black
64×64 canvas on the left, in the middle or on the right; its prompt names the digit and the place
("a seven on the left", "the number 3", "an eight in the middle"). The base look is white strokes. Each style
changes one visual property of the same pictures: ``ember`` (colour: orange-red strokes), ``bold`` (stroke weight:
dilated strokes), ``stripes`` (texture: strokes banded by horizontal stripes).

Style scores are measured on any RGB images, scaled so that the base-look pictures score 0 and the style's pictures
score 1 (:func:`style_scores`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 64
GLYPH_H, GLYPH_W = 44, 32
TOP = (SIZE - GLYPH_H) // 2
POSITIONS: tuple[str, ...] = ("left", "middle", "right")
POSITION_X = (2, (SIZE - GLYPH_W) // 2, SIZE - GLYPH_W - 2)      # the glyph's left edge per position
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

STYLES: tuple[str, ...] = ("ember", "bold", "stripes")
STYLE_DOC = {
    "ember": "colour: orange-red strokes",
    "bold": "stroke: thick, dilated strokes",
    "stripes": "texture: strokes banded by horizontal stripes",
}
EMBER = torch.tensor([1.0, 0.35, 0.1]).view(1, 3, 1, 1)
STRIPE_PERIOD = 8         # rows; bright for the first half of each period, dim for the second
STRIPE_DIM = 0.3
BOLD_RADIUS = 2           # pixels of dilation
INK = 0.15                # brightness above which a pixel counts as stroke


@lru_cache(maxsize=1)
def glyphs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(thin, bold, labels)``: every digit as a ``[N, 1, 44, 32]`` glyph in [0, 1] (plain and dilated strokes)
    and its ``[N]`` label."""
    from sklearn.datasets import load_digits  # optional and heavy: read once, then cached

    d = load_digits()
    img = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    img = F.interpolate(img, size=(GLYPH_H, GLYPH_W), mode="bicubic", align_corners=False)
    x = ((img - 0.3) / 0.4).clamp(0, 1)
    thin = x * x * (3 - 2 * x)                                       # smoothstep: crisp strokes, soft edges
    k = 2 * BOLD_RADIUS + 1
    bold = F.max_pool2d(thin, k, stride=1, padding=BOLD_RADIUS)
    return thin, bold, torch.from_numpy(d.target.astype(np.int64))


def stripe_pattern() -> torch.Tensor:
    rows = torch.arange(SIZE)
    return torch.where((rows % STRIPE_PERIOD) < STRIPE_PERIOD // 2, 1.0, STRIPE_DIM).view(1, 1, SIZE, 1)


def render(index: torch.Tensor, position: torch.Tensor, shift: torch.Tensor | None = None,
           ember=False, bold=False, stripes=False) -> torch.Tensor:
    """RGB pictures ``[B, 3, 64, 64]`` in [0, 1]: digit ``index[i]`` at ``POSITIONS[position[i]]``, moved by
    ``shift[i] = (dy, dx)`` pixels. Each style flag is a bool for all pictures or a ``[B]`` bool tensor."""
    thin, thick, _ = glyphs()
    n = len(index)
    flags = [torch.as_tensor(f).expand(n) if torch.as_tensor(f).ndim == 0 else torch.as_tensor(f)
             for f in (ember, bold, stripes)]
    ember_f, bold_f, stripes_f = flags
    shift = torch.zeros(n, 2, dtype=torch.long) if shift is None else shift
    gray = torch.zeros(n, 1, SIZE, SIZE)
    for i in range(n):
        g = (thick if bold_f[i] else thin)[int(index[i])]
        y = TOP + int(shift[i, 0])
        x = POSITION_X[int(position[i])] + int(shift[i, 1])
        gray[i, :, y:y + GLYPH_H, x:x + GLYPH_W] = g
    gray = torch.where(stripes_f.view(n, 1, 1, 1), gray * stripe_pattern(), gray)
    return torch.where(ember_f.view(n, 1, 1, 1), gray * EMBER, gray.expand(-1, 3, -1, -1))


def styled(style: str | None, count: int | None = None, seed: int = 0) -> torch.Tensor:
    """``count`` pictures (all digits × positions by default) in ``style`` (None = the base look)."""
    idx, pos = all_pairs()
    if count is not None:
        keep = torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:count]
        idx, pos = idx[keep], pos[keep]
    return render(idx, pos, ember=style == "ember", bold=style == "bold", stripes=style == "stripes")


def all_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Every (digit picture, position) pair: ``(index, position)``, each ``[N · 3]``."""
    n = len(glyphs()[2])
    return torch.arange(n).repeat_interleave(len(POSITIONS)), torch.arange(len(POSITIONS)).repeat(n)


# ------------------------------------------------------------------------------------------------------ prompts
def prompt(digit: int, position: int, variant: int = 0) -> str:
    """A prompt for a digit at a position. ``variant`` picks the wording: the digit as a word or a numeral, with
    "a/an", bare, or "the number", and for the middle an explicit "in the middle" or nothing."""
    numeral, form, say_middle = variant % 2, (variant // 2) % 3, (variant // 6) % 2
    name = str(digit) if numeral else DIGIT_WORDS[digit]
    if form == 0:
        head = ("an " if name in ("eight", "8") else "a ") + name
    elif form == 1:
        head = name
    else:
        head = "the number " + name
    where = POSITIONS[position]
    if where == "middle":
        return head + (" in the middle" if say_middle else "")
    return f"{head} on the {where}"


PROMPT_VARIANTS = 12


def fixed_prompts(count: int) -> list[tuple[str, int, int]]:
    """``count`` evaluation prompts ``(text, digit, position)`` in canonical wording: digits 0–9 cycling through the
    positions (left, middle, right), so any ``count`` ≥ 3 shows every position."""
    out = []
    for i in range(count):
        digit, position = i % 10, (i + i // 10) % 3
        out.append((prompt(digit, position, 6 if position == 1 and i % 2 else 0), digit, position))
    return out


# ------------------------------------------------------------------------------------------------------ scores
def style_raw(images: torch.Tensor) -> dict[str, float]:
    """Raw style measures of RGB images in [0, 1], each blind to the other two styles and to soft edges:
    ``ember`` mean (R − B) / brightness on ink (the hue, whatever the stroke's brightness), ``bold`` share of
    pixels brighter than half their row's peak (stroke area at half maximum; stripes dim whole rows, so they cancel),
    ``stripes`` share of the row profile at the stripes' period (phase-free)."""
    v = images.amax(dim=1)                                    # [N, H, W] brightness
    ink = v > INK
    r, b = images[:, 0], images[:, 2]
    ember = (((r - b) / v.clamp_min(1e-6)) * ink).sum() / ink.sum().clamp_min(1)
    peak = v.amax(dim=2, keepdim=True)                        # [N, H, 1]
    bold = ((v > 0.5 * peak) & (peak > INK)).float().mean()
    rows = v.mean(dim=2)                                      # [N, H] row profile
    phase = 2 * math.pi * torch.arange(SIZE) / STRIPE_PERIOD
    power = torch.sqrt((rows * torch.cos(phase)).sum(1) ** 2 + (rows * torch.sin(phase)).sum(1) ** 2)
    stripes = (power / rows.sum(dim=1).clamp_min(1e-6)).mean()
    return {"ember": ember.item(), "bold": bold.item(), "stripes": stripes.item()}


@lru_cache(maxsize=1)
def style_refs() -> dict[str, tuple[float, float]]:
    """Per style ``(raw on base-look training pictures, raw on that style's training pictures)``."""
    base = style_raw(styled(None, 900))
    return {s: (base[s], style_raw(styled(s, 900))[s]) for s in STYLES}


def style_scores(images: torch.Tensor) -> dict[str, float]:
    raw = style_raw(images)
    refs = style_refs()
    return {s: (raw[s] - refs[s][0]) / (refs[s][1] - refs[s][0]) for s in STYLES}


def ink_centre_x(images: torch.Tensor) -> torch.Tensor:
    """Per image, the horizontal centre of its brightness in [0, 1] (0 = left edge): where the digit was drawn."""
    v = images.amax(dim=1).clamp_min(0)
    v = torch.where(v > INK, v, torch.zeros_like(v))
    cols = v.sum(dim=1)                                       # [N, W]
    x = (torch.arange(SIZE, dtype=cols.dtype) + 0.5) / SIZE
    return (cols * x).sum(1) / cols.sum(1).clamp_min(1e-6)


def grid(images: torch.Tensor, cols: int = 8, gap: int = 1) -> np.ndarray:
    """An ``H×W×3`` uint8 grid of 64×64 images with ``gap``-pixel dark borders."""
    n = images.shape[0]
    rows = math.ceil(n / cols)
    cols = min(cols, n)
    out = np.full((rows * (SIZE + gap) + gap, cols * (SIZE + gap) + gap, 3), 40, dtype=np.uint8)
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = gap + r * (SIZE + gap), gap + c * (SIZE + gap)
        out[y:y + SIZE, x:x + SIZE] = arr[i]
    return out
