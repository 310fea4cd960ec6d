"""The zoo's vision backbones in learned merges: a task adapter that ``studio.learn`` finds through its adapter
detectors (this module appends its detector when imported; ``studio/__init__.py`` imports it)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import StudioError
from ..learn.adapters import ADAPTER_DETECTORS, ClassifierAdapter, read_state
from ..sources import open_source
from .vision import Backbone, VisionConfig


class VisionAdapter(ClassifierAdapter):
    """Backbone (``embed``, ``blocks.<i>``, ``norm``) + a frozen linear head per task (``head.weight``/``head.bias``).

    Heads come from ``heads`` (task → safetensors path); by default from the zoo's layout, where an expert at
    ``<family>/experts/<task>.safetensors`` has its head at ``<family>/heads/<task>.safetensors``.
    """

    kind = "vision"

    def __init__(self, base_ref, expert_refs, tasks, device, heads: dict[str, str] | None = None):
        super().__init__(base_ref, expert_refs, tasks, device)
        self.heads: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for t, ref in zip(self.tasks, self.expert_refs):
            path = (heads or {}).get(t) or str(Path(ref).parent.parent / "heads" / f"{t}.safetensors")
            if not Path(path).exists():
                raise StudioError(f"no classification head for task {t!r} at {path}", where=ref,
                                  hint="pass --heads TASK=PATH (a safetensors file with head.weight and head.bias)")
            h = read_state(path, device)
            if "head.weight" not in h or "head.bias" not in h:
                raise StudioError("a head file needs head.weight and head.bias", where=path)
            self.heads[t] = (h["head.weight"], h["head.bias"])

    def _build_module(self):
        src = open_source(self.base_ref)
        try:
            if "embed.weight" not in src or not any(k.startswith("blocks.") for k in src.keys()):
                raise StudioError("not a zoo vision backbone (embed.weight, blocks.<i>.…)", where=self.base_ref)
            dim, pixels = src.info("embed.weight").shape
            depth = 1 + max(int(k.split(".")[1]) for k in src.keys() if k.startswith("blocks."))
            mlp = src.info("blocks.0.fc1.weight").shape[0]
        finally:
            src.close()
        side = int(round(pixels ** 0.5))
        return Backbone(VisionConfig(image=side, dim=dim, depth=depth, mlp=mlp))

    def head(self, task, feats):
        w, b = self.heads[task]
        return F.linear(feats, w, b)

    def units(self):
        cfg = self.module.cfg
        return ([("embed", (cfg.image * cfg.image,))] + [(f"blocks.{i}", (cfg.dim,)) for i in range(cfg.depth)]
                + [("norm", (cfg.dim,))])

    def load_data(self, task, items):
        """Image files → grayscale, resized to the backbone's side, scaled to [0, 1]: ``[N, 1, side, side]``."""
        if isinstance(items, torch.Tensor):
            return items.float()
        from PIL import Image  # optional: only user image folders need decoding

        side = self.module.cfg.image
        out = []
        for p in items:
            img = Image.open(p).convert("L").resize((side, side), Image.BILINEAR)
            out.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float().view(side, side) / 255)
        if not out:
            raise StudioError(f"no images for task {task!r}")
        return torch.stack(out).unsqueeze(1)


def is_vision_backbone(ref: str) -> bool:
    """Whether ``ref`` holds a zoo-style backbone: ``embed.weight`` and ``blocks.<i>.…`` tensors."""
    src = open_source(str(ref))
    try:
        return "embed.weight" in src and any(k.startswith("blocks.") for k in src.keys())
    finally:
        src.close()


def detect_vision_backbone(base: str, config: dict | None):
    return VisionAdapter if is_vision_backbone(base) else None


ADAPTER_DETECTORS.append(detect_vision_backbone)
