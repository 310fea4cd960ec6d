"""The vision zoo: a tiny residual MLP pretrained on eight 8×8 image datasets and fine-tuned into eight experts.

The setting copies the CLIP multi-task benchmark in miniature (algorithms.md §3):

* eight *different* datasets (``vision_data``: handwritten digits, house-number-like digits, two letter sets, shapes,
  line orientations, textures, arrows), as CLIP's eight tasks are eight datasets;
* one pretrained backbone (``base.safetensors``) shared by every task, pretrained broadly — on all eight datasets at
  once, each with its own throw-away output block (CLIP has seen images of every domain);
* per task a frozen linear head (``heads/<task>.safetensors``) fitted on *frozen base features* from one labelled
  example per class (the analogue of CLIP's zero-shot head: usable, far from the fine-tuned accuracy) — base,
  experts and merges are all scored with this same head;
* per task an expert backbone (``experts/<task>.safetensors``) fine-tuned fully (every backbone weight) from the base
  with a small learning rate for a task-specific number of steps (``EXPERT_STEPS``: like real expert pools, the
  task vectors differ in length, which one global λ cannot serve);
* per task a held-out ``test`` split and an ``unlabeled`` split (for AdaMerging, Fisher, RegMean, SAMerging, FDA),
  generated deterministically in about a second.

Backbone keys follow ``blocks.<i>.…`` so the generic layer detection groups them per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..output import save_tensors
from .training import optimizer_step, warmup_cosine
from .vision_data import SIZE, dataset

# ----------------------------------------------------------------------------------------------------------- tasks

TASKS: tuple[str, ...] = ("digits", "numbers", "letters", "shapes", "lines", "glyphs", "textures", "arrows")

TASK_DOC: dict[str, str] = {
    "digits": "handwritten digit (scikit-learn's digits)",
    "numbers": "the same digits as house numbers: random background, contrast and polarity, pixel noise",
    "letters": "capital letter B D E F H K N P R U",
    "shapes": "shape: square, disc, triangle, plus, cross, diamond (filled or outlined)",
    "lines": "orientation of a line, ten angles 18° apart",
    "glyphs": "capital letter A C G O Q S T V W Z",
    "textures": "sine grating: five spatial frequencies × two orientations",
    "arrows": "direction of an arrow, eight directions",
}

NUM_CLASSES: dict[str, int] = {t: 10 for t in TASKS} | {"arrows": 8}

N_TEST = 400
N_UNLABELED = 300
SPLIT_SEED = 1234


@dataclass(frozen=True)
class VisionConfig:
    """Architecture of the backbone: linear embedding + ``depth`` pre-norm residual MLP blocks + final norm."""

    image: int = 8
    dim: int = 128
    depth: int = 4
    mlp: int = 256


CONFIG = VisionConfig()


@lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """Indices of the 1,797 examples (of every dataset) in the ``train`` / ``test`` / ``unlabeled`` splits."""
    order = np.random.default_rng(SPLIT_SEED).permutation(SIZE)
    return {
        "test": order[:N_TEST],
        "unlabeled": order[N_TEST:N_TEST + N_UNLABELED],
        "train": order[N_TEST + N_UNLABELED:],
    }


# the pretraining mix: every task's dataset, each with its own block of 10 outputs in the throw-away head
PRETRAIN_DATASETS: tuple[str, ...] = TASKS

# fine-tuning steps per expert (full zoo): deliberately uneven, as in real expert pools
EXPERT_STEPS: dict[str, int] = {"digits": 100, "numbers": 800, "letters": 200, "shapes": 1200, "lines": 150,
                                "glyphs": 600, "textures": 300, "arrows": 900}
EXPERT_LR = 2e-4
HEAD_SHOTS = 1


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random ±1 pixel translation (training augmentation; one offset per batch)."""
    padded = F.pad(images, (1, 1, 1, 1))
    dx, dy = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[..., dy:dy + images.shape[-2], dx:dx + images.shape[-1]]


def task_data(task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs [N, 1, 8, 8] float32, labels [N] int64)`` of ``task``'s split; deterministic.

    ``split`` is ``train``, ``test`` or ``unlabeled`` (the unlabeled split has labels too, for diagnostics only;
    data-aware merging must not use them).
    """
    return _task_data(task, split)


@lru_cache(maxsize=64)
def _task_data(task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if task not in TASKS:
        raise KeyError(task)
    images, labels = dataset(task)
    idx = split_indices()[split]
    return torch.from_numpy(images[idx]).unsqueeze(1).contiguous(), torch.from_numpy(labels[idx])


# ----------------------------------------------------------------------------------------------------------- model


class Block(nn.Module):
    """Pre-norm residual MLP block: ``x + fc2(gelu(fc1(norm(x))))``."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim)
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp)
        self.fc2 = nn.Linear(cfg.mlp, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class Backbone(nn.Module):
    """Residual MLP: ``[N, 1, 8, 8]`` → feature ``[N, dim]``.

    State-dict keys: ``embed.{weight,bias}``, ``blocks.<i>.{norm,fc1,fc2}.{weight,bias}``, ``norm.{weight,bias}``.
    """

    def __init__(self, cfg: VisionConfig = CONFIG):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.image * cfg.image, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.flatten(1))
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class TaskModel(nn.Module):
    """Backbone followed by one task's linear head: ``[N, 1, 8, 8]`` → logits ``[N, classes]``."""

    def __init__(self, backbone: Backbone, head: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def make_head(head_state: dict[str, torch.Tensor]) -> nn.Linear:
    w = head_state["head.weight"]
    head = nn.Linear(w.shape[1], w.shape[0])
    head.load_state_dict({"weight": w.float(), "bias": head_state["head.bias"].float()})
    return head


def build_module(state_dict: dict[str, torch.Tensor], head_state: dict[str, torch.Tensor]) -> TaskModel:
    """A ``TaskModel`` from backbone weights and one head's weights (``head.weight``, ``head.bias``)."""
    bb = Backbone(CONFIG)
    bb.load_state_dict({k: v.float() for k, v in state_dict.items()})
    return TaskModel(bb, make_head(head_state)).eval()


# SAI ModelSpec keys in every zoo vision file: with no config.json beside it, `inspect` reads the architecture here
ARCHITECTURES = {"base": "merge-studio/residual-mlp", "expert": "merge-studio/residual-mlp",
                 "head": "merge-studio/linear-head"}


def file_metadata(part: str, task: str | None = None) -> dict[str, str]:
    """The ModelSpec metadata of a zoo vision file; ``part`` is ``base``, ``expert`` or ``head``."""
    return {"modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": ARCHITECTURES[part],
            "modelspec.implementation": "studio.zoo.vision",
            "modelspec.title": f"Merge Studio zoo vision {part}" + (f": {task}" if task else "")}


def save_part(root: Path, module: nn.Module, part: str, task: str | None = None) -> Path:
    """Write the backbone (``base``), a task's fine-tuned backbone (``expert``) or its ``head`` into a vision zoo
    folder (``base.safetensors``, ``experts/<task>.safetensors``, ``heads/<task>.safetensors``) with its metadata."""
    path = root / "base.safetensors" if part == "base" else root / f"{part}s" / f"{task}.safetensors"
    prefix = "head." if part == "head" else ""
    state = {prefix + k: v.detach() for k, v in module.state_dict().items()}
    return save_tensors(path, state, file_metadata(part, task))


# -------------------------------------------------------------------------------------------------------- training


def _train_batches(task: str, steps: int, batch: int, seed: int):
    """``steps`` shifted training batches of ``task``; ``task="mixed"`` draws every example from a random dataset of
    ``PRETRAIN_DATASETS`` with its label offset by 10 × the dataset's index (one output block per dataset)."""
    gen = torch.Generator().manual_seed(seed)
    idx = split_indices()["train"]
    if task == PRETRAIN_TASK:
        xs = torch.stack([torch.from_numpy(dataset(t)[0][idx]) for t in PRETRAIN_DATASETS])
        ys = torch.stack([torch.from_numpy(dataset(t)[1][idx]) + 10 * i for i, t in enumerate(PRETRAIN_DATASETS)])
        for _ in range(steps):
            which = torch.randint(0, len(PRETRAIN_DATASETS), (batch,), generator=gen)
            pick = torch.randint(0, len(idx), (batch,), generator=gen)
            yield _shift(xs[which, pick], gen).unsqueeze(1), ys[which, pick]
        return
    images, labels = dataset(task)
    raw, lab = torch.from_numpy(images[idx]), torch.from_numpy(labels[idx])
    for _ in range(steps):
        pick = torch.randint(0, len(idx), (batch,), generator=gen)
        yield _shift(raw[pick], gen).unsqueeze(1), lab[pick]


PRETRAIN_TASK = "mixed"


def pretrain(steps: int, seed: int = 0, lr: float = 2e-3, batch: int = 128) -> Backbone:
    """Pretrain the backbone on every ``PRETRAIN_DATASETS`` dataset at once, with a throw-away multi-block head."""
    torch.manual_seed(seed)
    bb = Backbone(CONFIG)
    head = nn.Linear(CONFIG.dim, 10 * len(PRETRAIN_DATASETS))
    params = list(bb.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    for step, (x, y) in enumerate(_train_batches(PRETRAIN_TASK, steps, batch, seed + 1)):
        warmup_cosine(opt, lr, step, steps, steps // 10)
        loss = F.cross_entropy(head(bb(x)), y)
        optimizer_step(opt, loss)
    return bb.eval()


@torch.no_grad()
def _features(bb: Backbone, x: torch.Tensor) -> torch.Tensor:
    return bb(x)


def fit_head(bb: Backbone, task: str, shots: int, seed: int = 0, steps: int = 300) -> nn.Linear:
    """Linear head on frozen ``bb`` features from ``shots`` labelled training examples per class (few-shot probe)."""
    x, y = _train_set(task)
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(NUM_CLASSES[task]):
        members = torch.nonzero(y == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=gen)[:shots]])
    pick = torch.cat(picks)
    feats, labels = _features(bb, x[pick]), y[pick]
    torch.manual_seed(seed)
    head = nn.Linear(CONFIG.dim, NUM_CLASSES[task])
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        loss = F.cross_entropy(head(feats), labels)
        optimizer_step(opt, loss)
    return head.eval()


def _train_set(task: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = dataset(task)
    idx = split_indices()["train"]
    return torch.from_numpy(images[idx]).unsqueeze(1), torch.from_numpy(labels[idx])


def finetune(base: Backbone, head: nn.Linear, task: str, steps: int, seed: int = 0, lr: float = 1e-3,
             batch: int = 64) -> Backbone:
    """Fine-tune every backbone weight on ``task`` with the head frozen (as CLIP experts keep the zero-shot head)."""
    torch.manual_seed(seed)
    bb = Backbone(CONFIG)
    bb.load_state_dict(base.state_dict())
    bb.train()
    head = head.eval().requires_grad_(False)
    opt = torch.optim.AdamW(bb.parameters(), lr=lr, weight_decay=0.0)
    for step, (x, y) in enumerate(_train_batches(task, steps, batch, seed + 7)):
        warmup_cosine(opt, lr, step, steps, steps // 10)
        loss = F.cross_entropy(head(bb(x)), y)
        optimizer_step(opt, loss)
    return bb.eval()


def sample_sheet(tasks=TASKS, per_task: int = 10, scale: int = 4, gap: int = 2) -> np.ndarray:
    """One row per task of ``per_task`` test images (classes 0, 1, 2, … in turn), each upscaled ``scale``× with
    nearest pixels, on a white sheet: a uint8 ``[H, W]`` picture of what the datasets look like."""
    side = CONFIG.image * scale
    sheet = np.full((len(tasks) * (side + gap) + gap, per_task * (side + gap) + gap), 255, dtype=np.uint8)
    for r, task in enumerate(tasks):
        x, y = task_data(task, "test")
        picks, used = [], set()
        for c in range(per_task):  # the first test image of class c (mod the number of classes) not yet shown
            cls = c % NUM_CLASSES[task]
            i = next(int(i) for i in torch.nonzero(y == cls).flatten() if int(i) not in used)
            used.add(i)
            picks.append(i)
        for col, i in enumerate(picks):
            tile = np.kron(x[i, 0].clamp(0, 1).numpy(), np.ones((scale, scale), dtype=np.float32))
            top, left = gap + r * (side + gap), gap + col * (side + gap)
            sheet[top:top + side, left:left + side] = np.round(255 * (1 - tile)).astype(np.uint8)
    return sheet


@torch.no_grad()
def accuracy(bb: Backbone, head: nn.Linear, task: str, split: str = "test") -> float:
    x, y = task_data(task, split)
    return (head(bb(x)).argmax(-1) == y).float().mean().item()
