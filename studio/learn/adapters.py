"""Task adapters: what a learned merge needs to know about a model kind.

An adapter maps ``(merged parameters, task, batch) → logits`` through ``torch.func.functional_call`` on one
architecture module, so coefficients (or weights) can be optimised with gradients without rebuilding modules.

* ``VisionAdapter`` — the zoo's vision family (``studio.zoo.vision.Backbone`` + one frozen linear head per task), or
  any user backbone of the same shape. Logits: ``[N, classes]``.
* ``CausalLMAdapter`` — a transformers causal LM folder (the zoo's text family or a user's Llama-style model).
  Logits: next-token logits over the vocabulary at every position but the last, flattened to ``[N·(L−1), V]``.

Every adapter holds θ0 (``base``) and the experts (``experts[task]``) as float32 tensors on its device, keyed by the
names the checkpoint files use, so learned coefficients map one-to-one to tensors of the full-size checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..errors import StudioError
from ..layout import is_mergeable
from ..sources import open_source


def read_state(ref: str, device: torch.device) -> dict[str, torch.Tensor]:
    src = open_source(str(ref))
    try:
        return {k: src.get(k).to(device=device, dtype=torch.float32, copy=True) for k in src.keys()}
    finally:
        src.close()


def task_name(ref: str) -> str:
    """An expert's task name: the file stem (``experts/rotate.safetensors`` → ``rotate``) or the folder name."""
    p = Path(str(ref).rstrip("/"))
    return p.stem if p.suffix else p.name


class TaskAdapter:
    """Common state and the interface every model kind implements."""

    kind = "generic"

    def __init__(self, base_ref: str, expert_refs: list[str], tasks: list[str], device: torch.device):
        if len(expert_refs) < 1:
            raise StudioError("learned merging needs at least one expert")
        if len(set(tasks)) != len(tasks):
            raise StudioError(f"two experts share a task name ({tasks}); rename the files or pass tasks explicitly")
        self.base_ref, self.expert_refs, self.tasks, self.device = str(base_ref), [str(e) for e in expert_refs], \
            list(tasks), device
        self.module: nn.Module = self._build_module().to(device).eval().requires_grad_(False)
        self.base = read_state(base_ref, device)
        self.experts: dict[str, dict[str, torch.Tensor]] = {}
        for t, ref in zip(self.tasks, self.expert_refs):
            sd = read_state(ref, device)
            missing = [k for k in self.base if k not in sd]
            if missing:
                raise StudioError(f"tensor {missing[0]!r} of the base is missing", where=ref,
                                  hint="experts must be fine-tunes of the base (same architecture)")
            for k in self.base:
                if sd[k].shape != self.base[k].shape:
                    raise StudioError(f"tensor {k!r} has shape {list(sd[k].shape)}, base has "
                                      f"{list(self.base[k].shape)}", where=ref)
            self.experts[t] = {k: sd[k] for k in self.base}
        names = dict(self.module.named_parameters())
        unknown = [k for k in self.base if k not in names and k not in dict(self.module.named_buffers())]
        if unknown:
            raise StudioError(f"tensor {unknown[0]!r} does not belong to the {self.kind} architecture", where=base_ref)
        # the merged tensors: floating-point parameters (buffers such as position ids are never merged)
        self.keys = [k for k in self.base if k in names and is_mergeable(k, self.base[k].dtype)]

    # -- to implement ----------------------------------------------------------------------------------------------
    def _build_module(self) -> nn.Module:
        raise NotImplementedError

    def logits(self, params: dict[str, torch.Tensor], task: str, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def units(self) -> list[tuple[str, tuple[int, ...]]]:
        """FDA layers: ``(submodule name, anchor shape without the anchor count)``, in forward order."""
        return []

    def load_data(self, task: str, items) -> torch.Tensor:
        """Unlabeled inputs of ``task`` from user material (image files, text), as a batchable tensor."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------------------------
    def logits_many(self, params: dict[str, torch.Tensor], batches: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: self.logits(params, t, b) for t, b in batches.items()}

    def expert_params(self, task: str) -> dict[str, torch.Tensor]:
        return self.experts[task]

    def task_vectors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {t: {k: self.experts[t][k] - self.base[k] for k in self.keys} for t in self.tasks}

    def full_params(self, merged: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Merged tensors plus the base's copies of everything not merged."""
        out = dict(self.base)
        out.update(merged)
        return out


class VisionAdapter(TaskAdapter):
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
        from ..zoo.vision import Backbone, VisionConfig

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

    def features(self, params, x):
        return functional_call(self.module, params, (x,), strict=False)

    def logits(self, params, task, batch):
        w, b = self.heads[task]
        return F.linear(self.features(params, batch.to(self.device)), w, b)

    def logits_many(self, params, batches):
        # one backbone pass over every task's batch (the merged backbone is shared), then each task's head
        order = list(batches)
        sizes = [len(batches[t]) for t in order]
        feats = self.features(params, torch.cat([batches[t].to(self.device) for t in order]))
        out = {}
        for t, f in zip(order, feats.split(sizes)):
            w, b = self.heads[t]
            out[t] = F.linear(f, w, b)
        return out

    def units(self):
        cfg = self.module.cfg
        return ([("embed", (cfg.image * cfg.image,))] + [(f"blocks.{i}", (cfg.dim,)) for i in range(cfg.depth)]
                + [("norm", (cfg.dim,))])

    def load_data(self, task, items):
        """Image files → grayscale, resized to the backbone's side, scaled to [0, 1]: ``[N, 1, side, side]``."""
        if isinstance(items, torch.Tensor):
            return items.float()
        from PIL import Image

        side = self.module.cfg.image
        out = []
        for p in items:
            img = Image.open(p).convert("L").resize((side, side), Image.BILINEAR)
            out.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float().view(side, side) / 255)
        if not out:
            raise StudioError(f"no images for task {task!r}")
        return torch.stack(out).unsqueeze(1)


class CausalLMAdapter(TaskAdapter):
    """A transformers causal LM folder. Batches are token ids ``[N, L]``; logits are next-token logits."""

    kind = "causal_lm"

    def __init__(self, base_ref, expert_refs, tasks, device, seq_len: int = 64):
        self.seq_len = seq_len
        super().__init__(base_ref, expert_refs, tasks, device)
        self._tokenizer = None

    def _build_module(self):
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.from_pretrained(self.base_ref)
        # built on the CPU (not meta) so computed buffers such as rotary frequencies are real; weights are replaced
        return AutoModelForCausalLM.from_config(cfg).float()

    def logits(self, params, task, batch):
        batch = batch.to(self.device)
        out = functional_call(self.module, params, (), {"input_ids": batch}, strict=False)
        z = out.logits[:, :-1]
        return z.reshape(-1, z.shape[-1])

    def units(self):
        """The feed-forward blocks (as FDA does for LLMs): anchors ``[tokens, hidden]``."""
        names = [n for n, _ in self.module.named_modules() if n.endswith(".mlp") and ".layers." in n]
        hidden = self.module.config.hidden_size
        return [(n, (8, hidden)) for n in names]

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.base_ref)
            except Exception as e:  # noqa: BLE001 - transformers raises many kinds here
                raise StudioError(f"cannot load the tokenizer ({e})", where=self.base_ref,
                                  hint="text data needs the base folder's tokenizer files") from None
        return self._tokenizer

    def load_data(self, task, items):
        """Text (a string or lines) → token ids cut into rows of ``seq_len`` tokens: ``[N, seq_len]``."""
        if isinstance(items, torch.Tensor):
            return items.long()
        text = items if isinstance(items, str) else "\n".join(items)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        n = len(ids) // self.seq_len
        if n < 1:
            raise StudioError(f"task {task!r}: the text has {len(ids)} tokens, fewer than one row of "
                              f"{self.seq_len}", hint="give more text or a smaller seq_len")
        return torch.tensor(ids[: n * self.seq_len]).view(n, self.seq_len)


def make_adapter(base: str, experts: list[str], *, device: torch.device, tasks: list[str] | None = None,
                 heads: dict[str, str] | None = None, **kw) -> TaskAdapter:
    """The adapter for ``base``'s kind: a transformers folder → causal LM, a zoo-style backbone file → vision."""
    tasks = list(tasks) if tasks else [task_name(e) for e in experts]
    if len(tasks) != len(experts):
        raise StudioError(f"{len(tasks)} task names for {len(experts)} experts")
    path = Path(str(base))
    if path.is_dir() and (path / "config.json").exists():
        cfg = json.loads((path / "config.json").read_text())
        if any(a.endswith("ForCausalLM") for a in cfg.get("architectures") or []) or cfg.get("model_type"):
            return CausalLMAdapter(base, experts, tasks, device, **{k: v for k, v in kw.items() if k == "seq_len"})
    src = open_source(str(base))
    try:
        vision = "embed.weight" in src and any(k.startswith("blocks.") for k in src.keys())
    finally:
        src.close()
    if vision:
        return VisionAdapter(base, experts, tasks, device, heads=heads)
    raise StudioError("learned merging supports the zoo's vision backbones and transformers causal LMs",
                      where=str(base), hint="give a zoo-style backbone .safetensors or a transformers model folder")
