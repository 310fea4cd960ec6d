"""What one preview produced (:class:`Preview`), and its views: the score table, sample text and images (plain
Python, no gradio; the score chart is :func:`studio.figures.preview_scores`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import figures
from ..describe import human_bytes
from ..evaluate import lower_is_better
from ..recipe.files import RECIPE_KEY


@dataclass
class Preview:
    """What one preview produced: the merge's scores, the inputs' scores, timings."""

    recipe: dict
    result: dict
    inputs: dict[str, dict]            # label → evaluator result of that input model
    merge_seconds: float
    eval_seconds: float
    total_seconds: float
    changed: int                       # output tensors recomputed by the live engine
    tensors: int
    superseded: bool = False
    previous: dict | None = None       # the result of the preview before this one (for side-by-side)
    source: str | None = None          # set when the numbers are of learned weights, not of the recipe



def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def expert_scores(pv) -> dict[str, float]:
    """Per task: the score of that task's own expert (when an input is labelled with the task's name)."""
    out = {}
    for task, v in ((pv.result or {}).get("per_task") or {}).items():
        inp = pv.inputs.get(task)
        if inp:
            s = _num((inp.get("per_task") or {}).get(task))
            if s is not None:
                out[task] = s
    return out


def score_table(pv) -> tuple[list[str], list[list[Any]]]:
    """Rows per task: base, its expert, the merge, change since the last preview, and the merge relative to the
    expert (merge ÷ expert; for lower-is-better metrics expert ÷ merge, so above 1 is always better)."""
    r = pv.result or {}
    metric = r.get("metric", "score")
    per = r.get("per_task") or {}
    base = (pv.inputs.get("base") or {}).get("per_task") or {}
    experts = expert_scores(pv)
    prev = ((pv.previous or {}).get("per_task") or {})
    headers = ["task", "base", "expert", "merge", "Δ last", "vs expert"]
    rows = []

    # as many decimals as the numbers carry: accuracy in % on a hundred-odd samples moves in steps of about 1 %, so
    # one decimal (as a fraction, three); other scores two decimals (three below 1); ratios two
    percent = any((_num(v) or 0) > 1.5 for v in per.values())
    digits = (1 if percent else 3) if metric == "accuracy" else None

    def fmt(v, ratio: bool = False):
        if v is None:
            return None
        v = float(v)
        return round(v, 2 if ratio else digits if digits is not None else 2 if abs(v) >= 1 else 3)

    for task, v in per.items():
        v = _num(v)
        e = experts.get(task)
        p = _num(prev.get(task))
        rows.append([task, fmt(_num(base.get(task))), fmt(e), fmt(v), fmt(None if p is None or v is None else v - p),
                     fmt(v / e if (e and v is not None and not lower_is_better(metric)) else
                         (e / v if e and v and lower_is_better(metric) else None), ratio=True)])
    if per:
        avg = _num(r.get("average"))
        b_avg = _num((pv.inputs.get("base") or {}).get("average"))
        e_avg = sum(experts.values()) / len(experts) if experts else None
        p_avg = _num((pv.previous or {}).get("average"))
        rows.append(["average", fmt(b_avg), fmt(e_avg), fmt(avg),
                     fmt(None if p_avg is None or avg is None else avg - p_avg),
                     fmt(avg / e_avg if avg is not None and e_avg and not lower_is_better(metric) else None,
                         ratio=True)])
    return headers, rows


def has_numbers(pv) -> bool:
    """Whether the preview scored anything (an image preview without an evaluation set has only pictures)."""
    r = pv.result or {}
    return bool(r.get("per_task")) or _num(r.get("average")) is not None and r["average"] == r["average"]


def score_figure(pv):
    """The preview's bar chart: per task, the base, its own expert, the previous merge and this merge."""
    return figures.preview_scores(pv.result or {}, (pv.inputs.get("base") or {}).get("per_task"),
                                  expert_scores(pv), (pv.previous or {}).get("per_task"))


def samples_markdown(pv) -> str:
    """Text samples (e.g. an LM's greedy generations per corpus) as labelled code blocks, so the model's own
    newlines and spacing show as generated instead of being read as markdown."""
    s = (pv.result or {}).get("samples")
    if not isinstance(s, dict) or not s or _is_image_dict(s):
        return ""
    per = (pv.result or {}).get("per_task") or {}
    metric = (pv.result or {}).get("metric", "score")
    prev = (pv.previous or {}).get("samples") if isinstance((pv.previous or {}).get("samples"), dict) else {}
    lines = ["#### Generations" + ("  <sub>the merge's continuation of each prompt</sub>" if metric == "perplexity"
                                   else "")]
    for task, text in s.items():
        if isinstance(text, (list, tuple)):
            text = "\n".join(map(str, text))
        text = _tidy(str(text))
        score = _num(per.get(task))
        head = f"**{task}**" + (f" · {metric} {score:.2f}" if score is not None else "")
        if prev and task in prev and _tidy(str(prev[task])) != text:
            head += " · *changed*"
        lines += [head, _code(text)]
    lines += [f"⚠ {note}" for note in (pv.result or {}).get("notes") or []]
    return "\n".join(lines)


def inputs_markdown(pv) -> str:
    """The same prompts answered by each input model (text previews), for comparison with the merge's."""
    lines = []
    for label, inp in pv.inputs.items():
        samples = inp.get("samples")
        if isinstance(samples, dict) and samples and not _is_image_dict(samples):
            lines.append(f"#### {label}")
            for prompt, text in samples.items():
                lines += [f"**{prompt}**", _code(_tidy(str(text)))]
    return "\n".join(lines)


def _code(text: str) -> str:
    return "```text\n" + (text.replace("```", "ˋˋˋ") or "(empty)") + "\n```"


def _tidy(text: str) -> str:
    """Strip trailing spaces and collapse runs of blank lines (tiny LMs love to emit them)."""
    out, blank = [], 0
    for line in text.rstrip().split("\n"):
        line = line.rstrip()
        blank = blank + 1 if not line else 0
        if blank <= 1:
            out.append(line)
    return "\n".join(out)


def images(pv) -> list:
    """The evaluator's sample images as a list of (PIL image, caption) for a gallery. A preview pipeline's images
    (one per prompt and seed) come side by side: the merge, the previous merge, then each input model."""
    s = (pv.result or {}).get("samples")
    if isinstance(s, (list, tuple)) and s and all(isinstance(x, Image.Image) for x in s):
        for img in s:  # the merge's images carry its recipe: dropped on the studio, they open it again
            img.info[RECIPE_KEY] = json.dumps(pv.recipe, ensure_ascii=False, default=str)
        rows = [("merge", list(s)), ("previous merge", (pv.previous or {}).get("samples"))]
        rows += [(label, inp.get("samples")) for label, inp in pv.inputs.items()]
        rows = [(cap, imgs) for cap, imgs in rows if isinstance(imgs, (list, tuple)) and len(imgs) == len(s)]
        return [(imgs[k], f"{cap} · {k + 1}") for k in range(len(s)) for cap, imgs in rows]
    if s is None or isinstance(s, (dict, str)) and not _is_image_dict(s):
        return []
    items = list(s.items() if isinstance(s, dict) else enumerate(s if isinstance(s, (list, tuple)) else [s]))
    single = len(items) == 1 and not isinstance(s, dict)
    out = []
    for cap, img in items:
        pil = to_pil(img)
        if pil is not None:
            out.append((_enlarge(_reflow(pil) if single else pil), "fixed-seed samples" if single else str(cap)))
    return out


def _reflow(img, per_row: int = 4):
    """A one-row strip of square tiles with 1-px gaps (the zoo's sample grid) rewrapped into rows of ``per_row``
    tiles, so it fits a narrow column; anything else is returned unchanged."""
    w, h = img.size
    step = h - 1                      # tile + gap
    if step < 2 or (w - 1) % step or (w - 1) // step <= per_row:
        return img
    n = (w - 1) // step
    a = np.asarray(img)
    tiles = [a[:, 1 + i * step - 1: 1 + (i + 1) * step] for i in range(n)]  # each: gap + tile
    rows = -(-n // per_row)
    out = np.full((rows * step + 1, per_row * step + 1) + a.shape[2:], a[0, 0], dtype=a.dtype)
    for i, t in enumerate(tiles):
        r, c = divmod(i, per_row)
        out[r * step: r * step + h, c * step: c * step + t.shape[1]] = t
    return Image.fromarray(out)


def _enlarge(img, max_width: int = 1200, min_height: int = 256):
    """Tiny sample grids (16×16 px per image) scaled up with nearest-neighbour so pixels stay crisp on screen."""
    w, h = img.size
    k = max(1, min(max_width // max(w, 1), -(-min_height // max(h, 1))))
    if k == 1:
        return img
    return img.resize((w * k, h * k), Image.NEAREST)


def _is_image_dict(s) -> bool:
    return isinstance(s, dict) and any(to_pil(v) is not None for v in list(s.values())[:1])


def to_pil(img) -> Image.Image | None:
    """A PIL image from an image, a tensor or an array (CHW or HWC, [0, 1] floats or bytes); None for anything
    else."""
    if isinstance(img, Image.Image):
        return img
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu().numpy()
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
        return None
    a = img
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8) if a.max() <= 1.0 + 1e-6 else \
            np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return Image.fromarray(a)


def latency_text(pv) -> str:
    if pv is None:
        return "No preview yet."
    if pv.superseded:
        return "superseded by a newer change"
    r = pv.result or {}
    avg = _num(r.get("average"))
    head = f"**{r.get('metric', 'score')} {avg:.4f}**  ·  " if avg is not None and avg == avg else ""
    if r.get("samples") is None and r.get("notes"):  # (samples may be an image array: no truth value)
        head = "".join(f"⚠ {note}  \n" for note in r["notes"]) + head
    if pv.source:
        return (f"{head}**{pv.source}** (learned in {pv.total_seconds:.1f} s) — not your recipe: any edit, or "
                f"*Re-run preview*, shows the recipe again")
    return (f"{head}updated in {pv.total_seconds * 1000:.0f} ms (merge {pv.merge_seconds * 1000:.0f} ms for "
            f"{pv.changed}/{pv.tensors} tensors, evaluate {pv.eval_seconds * 1000:.0f} ms)")


def memory_text(use: dict[str, int]) -> str:
    """The RAM (and VRAM) gauge under the preview: this process's memory against the machine's."""
    parts = [f"RAM {human_bytes(use['ram'])} of {human_bytes(use['ram_total'])}"]
    if "vram" in use:
        parts.append(f"VRAM {human_bytes(use['vram'])} of {human_bytes(use['vram_total'])}")
    return "<sub>" + " · ".join(parts) + "</sub>"
