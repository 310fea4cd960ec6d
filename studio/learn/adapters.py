"""Task adapters: what a learned merge needs to know about a model kind.

An adapter maps ``(merged parameters, task, batch) → logits`` through ``torch.func.functional_call`` on one
architecture module, so coefficients (or weights) can be optimised with gradients without rebuilding modules.

* ``VisionAdapter`` (in ``studio.zoo.vision_adapter``, found through ``ADAPTER_DETECTORS``) — the zoo's vision
  family (backbone + one frozen linear head per task), or any user backbone of the same shape. Logits: ``[N, classes]``.
* ``ClipAdapter`` — CLIP image classifiers as in the seed papers' benchmark: a transformers CLIP model as θ0,
  fine-tuned vision towers as experts, each task's frozen zero-shot head from its class names. Logits: ``[N, classes]``.
* ``CausalLMAdapter`` — a transformers causal LM folder (the zoo's text family or a user's Llama-style model).
  Logits: next-token logits over the vocabulary at every position but the last, flattened to ``[N·(L−1), V]``.

Every adapter holds θ0 (``base``) and the experts (``experts[task]``) as float32 tensors on its device, keyed by the
names the checkpoint files use, so learned coefficients map one-to-one to tensors of the full-size checkpoints.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..errors import StudioError
from ..layout import is_mergeable
from ..sources import open_source
from ..sources.resolve import resolve_path


def read_state(ref: str, device: torch.device, keep=None, rename=None) -> dict[str, torch.Tensor]:
    """Every tensor of ``ref`` as float32 on ``device``, under ``rename(name)`` and only where ``keep(new name)``."""
    src = open_source(str(ref))
    try:
        out = {}
        for k in src.keys():
            name = rename(k) if rename else k
            if keep is None or keep(name):
                out[name] = src.get(k).to(device=device, dtype=torch.float32, copy=True)
        return out
    finally:
        src.close()


def task_name(ref: str) -> str:
    """An expert's task name: the file stem (``experts/digits.safetensors`` → ``digits``) or the folder name."""
    p = Path(str(ref).rstrip("/"))
    return p.stem if p.suffix else p.name


class TaskAdapter:
    """Common state and the interface every model kind implements."""

    kind = "generic"
    modality = "image"  # what --data folders hold for this kind: "image" files or "text"
    unit_args: tuple = ()  # extra positional arguments of an FDA unit's forward after the hidden states
    recipe_applies = True  # base and experts share one tensor set, so learned λ can be written as a merge recipe

    def __init__(self, base_ref: str, expert_refs: list[str], tasks: list[str], device: torch.device):
        if len(expert_refs) < 1:
            raise StudioError("learned merging needs at least one expert")
        if len(set(tasks)) != len(tasks):
            raise StudioError(f"two experts share a task name ({tasks}); rename the files or pass tasks explicitly")
        self.base_ref, self.expert_refs, self.tasks, self.device = str(base_ref), [str(e) for e in expert_refs], \
            list(tasks), device
        self.module: nn.Module = self._build_module().to(device).eval().requires_grad_(False)
        self.base = read_state(base_ref, device, self._keep, self._rename)
        self.experts: dict[str, dict[str, torch.Tensor]] = {}
        for t, ref in zip(self.tasks, self.expert_refs):
            sd = read_state(ref, device, self._keep, self._rename)
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
    def _keep(self, key: str) -> bool:
        """Whether a tensor (by its canonical name) belongs to the merged model (default: all of them)."""
        return True

    def _rename(self, key: str) -> str:
        """A checkpoint's tensor name → the canonical name (the base's and the module's; default: unchanged)."""
        return key

    def export_config(self) -> dict | None:
        """A transformers config under which the merged tensors form a loadable model folder (default: none)."""
        return None

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


class ClassifierAdapter(TaskAdapter):
    """A merged backbone shared by every task, then each task's frozen head: one backbone pass serves all the tasks'
    batches. Subclasses give ``head(task, features)``; ``features`` is the module's output unless overridden."""

    def features(self, params, x):
        return functional_call(self.module, params, (x,), strict=False)

    def head(self, task: str, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, params, task, batch):
        return self.head(task, self.features(params, batch.to(self.device)))

    def logits_many(self, params, batches):
        order = list(batches)
        sizes = [len(batches[t]) for t in order]
        feats = self.features(params, torch.cat([batches[t].to(self.device) for t in order]))
        return {t: self.head(t, f) for t, f in zip(order, feats.split(sizes))}


class _ClipVision(nn.Module):
    """CLIP's vision tower under CLIPModel's parameter names (``vision_model.…``); forward → pooled output."""

    def __init__(self, vision_model: nn.Module):
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixel_values):
        return self.vision_model(pixel_values=pixel_values).pooler_output


class ClipAdapter(ClassifierAdapter):
    """CLIP image classifiers, the seed papers' benchmark: θ0 is a transformers CLIP model (a folder or a hub id such
    as ``openai/clip-vit-base-patch32``), the experts are fine-tuned vision towers (``CLIPVisionModel`` folders or hub
    ids such as FusionBench's ``tanganke/clip-vit-base-patch32_<task>``, or full CLIP models), and every task keeps
    CLIP's frozen zero-shot head: the normalised text embeddings of its class names.

    Only the vision tower (``vision_model.*``) is merged; the projection and the logit scale stay the base's.
    Logits: ``exp(logit_scale) · normalize(proj(pooled)) @ headᵀ``, as ``CLIPModel`` computes ``logits_per_image``.
    Heads come from ``heads``: per task a ``.txt`` file of class names (one per line, embedded with ``TEMPLATES``) or
    a ``.safetensors`` file holding ``head.weight`` ``[classes, projection_dim]`` (ready text embeddings); a task
    without one uses ``<data_root>/<task>/classes.txt`` when the data folder has it.
    Batches are ``pixel_values`` ``[N, 3, H, W]``; image files are prepared by the base's image processor.
    """

    kind = "clip"
    recipe_applies = False
    unit_args = (None,)  # FDA: CLIPEncoderLayer.forward(hidden_states, attention_mask) — no mask for image tokens
    TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "an image of a {}.", "a picture of a {}.")

    def __init__(self, base_ref, expert_refs, tasks, device, heads: dict[str, str] | None = None, data_root=None):
        super().__init__(base_ref, expert_refs, tasks, device)
        heads = dict(heads or {})
        if data_root is not None:  # a data folder's <task>/classes.txt stands in for a missing head
            for t in self.tasks:
                if not heads.get(t) and (Path(data_root) / t / "classes.txt").is_file():
                    heads[t] = str(Path(data_root) / t / "classes.txt")
        if not self.keys:
            raise StudioError("the base has no vision_model.* tensors", where=str(base_ref))
        src = open_source(self.base_ref)
        try:
            need = [k for k in ("visual_projection.weight", "logit_scale") if k not in src]
            if need:
                raise StudioError(f"the base is not a full CLIP model ({need[0]!r} is missing)", where=self.base_ref,
                                  hint="θ0 must be the pretrained CLIP model (vision and text towers), e.g. "
                                       "openai/clip-vit-base-patch32; the experts may be vision towers only")
            self.proj = src.get("visual_projection.weight").float().to(device)
            self.scale = src.get("logit_scale").float().exp().to(device)
        finally:
            src.close()
        self._text = None
        self._processor = None
        self.heads = {t: self._load_head(t, heads.get(t)) for t in self.tasks}

    def _keep(self, key):
        return key.startswith("vision_model.")

    def _rename(self, key):
        # transformers ≥ 5 saves a CLIPVisionModel without the ``vision_model.`` prefix that CLIPModel and older
        # vision-tower checkpoints (FusionBench's) use; canonical names are CLIPModel's
        if key.startswith(("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")):
            return "vision_model." + key
        return key

    def _build_module(self):
        from transformers import AutoConfig, CLIPVisionConfig, CLIPVisionModel  # optional and heavy: CLIP only

        cfg = AutoConfig.from_pretrained(self.base_ref)
        vcfg = cfg.vision_config if hasattr(cfg, "vision_config") else cfg
        if not isinstance(vcfg, CLIPVisionConfig):
            raise StudioError(f"not a CLIP model (config type {type(cfg).__name__})", where=self.base_ref)
        self.config = vcfg
        tokens = (vcfg.image_size // vcfg.patch_size) ** 2 + 1
        self._units = [(f"vision_model.encoder.layers.{i}", (tokens, vcfg.hidden_size))
                       for i in range(vcfg.num_hidden_layers)]
        return _ClipVision(CLIPVisionModel(vcfg).float())

    def export_config(self):
        """The merged vision tower loads with ``CLIPVisionModel.from_pretrained`` (it reads CLIPModel's names)."""
        cfg = self.config.to_dict()
        cfg["architectures"] = ["CLIPVisionModel"]
        return cfg

    def units(self):
        """The residual attention blocks, as FDA's ViT code; anchors ``[tokens, hidden]`` (50 tokens for B/32)."""
        return list(self._units)

    def _load_head(self, task: str, path: str | None) -> torch.Tensor:
        if not path:
            raise StudioError(f"no zero-shot head for task {task!r}",
                              hint="pass --heads TASK=classes.txt (one class name per line) or TASK=head.safetensors, "
                                   f"or put classes.txt in the task's data folder (<data>/{task}/classes.txt)")
        p = Path(path)
        if not p.is_file():
            raise StudioError("no such head file", where=str(p))
        if p.suffix.lower() == ".safetensors":
            h = read_state(str(p), self.device)
            if "head.weight" not in h:
                raise StudioError("a CLIP head file needs head.weight [classes, projection_dim]", where=str(p))
            w = h["head.weight"]
            if w.dim() != 2 or w.shape[1] != self.proj.shape[0]:
                raise StudioError(f"head.weight has shape {list(w.shape)}; expected [classes, "
                                  f"{self.proj.shape[0]}]", where=str(p))
            return F.normalize(w, dim=-1)
        names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(names) < 2:
            raise StudioError(f"task {task!r} needs at least two class names, one per line", where=str(p))
        return self.zero_shot_head(names)

    @torch.no_grad()
    def zero_shot_head(self, class_names: list[str]) -> torch.Tensor:
        """CLIP's zero-shot classifier: per class the mean of the normalised text embeddings of ``TEMPLATES``."""
        if self._text is None:
            from transformers import AutoTokenizer, CLIPModel  # optional and heavy: CLIP's text tower, once

            try:
                model = CLIPModel.from_pretrained(self.base_ref, torch_dtype=torch.float32)
                tok = AutoTokenizer.from_pretrained(self.base_ref)
            except Exception as e:  # noqa: BLE001 - transformers raises many kinds here
                raise StudioError(f"cannot load CLIP's text tower and tokenizer ({e})", where=self.base_ref) from None
            self._text = (model.text_model.to(self.device).eval(), model.text_projection.to(self.device), tok)
        text, proj, tok = self._text
        rows = []
        for name in class_names:
            enc = tok([t.format(name) for t in self.TEMPLATES], padding=True, return_tensors="pt").to(self.device)
            emb = F.normalize(proj(text(**enc).pooler_output), dim=-1).mean(0)
            rows.append(F.normalize(emb, dim=-1))
        return torch.stack(rows)

    def features(self, params, x):
        return F.normalize(F.linear(super().features(params, x), self.proj), dim=-1)

    def head(self, task, feats):
        return self.scale * feats @ self.heads[task].T

    def load_data(self, task, items):
        """Image files → ``pixel_values`` by the base's image processor (CLIP's resize, crop and normalisation)."""
        if isinstance(items, torch.Tensor):
            if items.dim() != 4 or items.shape[1] != 3:
                raise StudioError(f"task {task!r}: CLIP inputs are pixel_values [N, 3, H, W], got {list(items.shape)}")
            return items.float()
        from PIL import Image  # optional: only user image folders need decoding

        if self._processor is None:
            from transformers import AutoImageProcessor, CLIPImageProcessor  # optional and heavy: CLIP only

            try:
                self._processor = AutoImageProcessor.from_pretrained(self.base_ref)
            except Exception:  # noqa: BLE001 - no preprocessor_config.json: CLIP's own defaults at this size
                s = self.config.image_size
                self._processor = CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
        images = [Image.open(p).convert("RGB") for p in items]
        if not images:
            raise StudioError(f"no images for task {task!r}")
        return self._processor(images=images, return_tensors="pt")["pixel_values"].float()


class CausalLMAdapter(TaskAdapter):
    """A transformers causal LM folder. Batches are token ids ``[N, L]``; logits are next-token logits."""

    kind = "causal_lm"
    modality = "text"

    def __init__(self, base_ref, expert_refs, tasks, device, seq_len: int = 64):
        self.seq_len = seq_len
        super().__init__(base_ref, expert_refs, tasks, device)
        self._tokenizer = None

    def _build_module(self):
        from transformers import AutoConfig, AutoModelForCausalLM  # optional and heavy: causal LMs only

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
            from transformers import AutoTokenizer  # optional and heavy: only text data needs the tokenizer

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


def model_config(base: str) -> dict | None:
    """``config.json`` of a transformers model folder or hub id (None for a single checkpoint file). Hub ids resolve
    through the sources' HF-cache snapshot (downloaded only when online and not cached), as every model reference."""
    path = resolve_path(str(base))
    if path.is_dir() and (path / "config.json").exists():
        return json.loads((path / "config.json").read_text())
    return None


def detect_transformers(base: str, config: dict | None):
    """A CLIP model → CLIP classifiers; another transformers model → a causal LM."""
    if config is None:
        return None
    if config.get("model_type") in ("clip", "clip_vision_model"):
        return ClipAdapter
    if any(a.endswith("ForCausalLM") for a in config.get("architectures") or []) or config.get("model_type"):
        return CausalLMAdapter
    return None


# Each detector takes (base reference, its config.json or None) and returns the TaskAdapter class for it, or None;
# the first that recognises the base wins. Model kinds of other packages append theirs (studio.zoo: its vision
# backbones).
ADAPTER_DETECTORS: list[Callable[[str, dict | None], type[TaskAdapter] | None]] = [detect_transformers]


def make_adapter(base: str, experts: list[str], *, device: torch.device, tasks: list[str] | None = None,
                 heads: dict[str, str] | None = None, data_root=None, seq_len: int | None = None) -> TaskAdapter:
    """The adapter for ``base``'s kind, from the first of ``ADAPTER_DETECTORS`` that recognises it. ``heads``,
    ``data_root`` and ``seq_len`` go to the adapters that take them (classifier heads; CLIP's classes.txt beside the
    data; causal LMs' row length)."""
    tasks = list(tasks) if tasks else [task_name(e) for e in experts]
    if len(tasks) != len(experts):
        raise StudioError(f"{len(tasks)} task names for {len(experts)} experts")
    cfg = model_config(base)
    for detect in ADAPTER_DETECTORS:
        cls = detect(base, cfg)
        if cls is not None:
            accepted = inspect.signature(cls).parameters
            options = {k: v for k, v in {"heads": heads, "data_root": data_root, "seq_len": seq_len}.items()
                       if v is not None and k in accepted}
            return cls(base, experts, tasks, device, **options)
    raise StudioError("learned merging supports CLIP image classifiers, transformers causal LMs and the zoo's "
                      "vision backbones", where=str(base),
                      hint="give a CLIP or causal-LM model folder / hub id, or a zoo-style backbone .safetensors")
