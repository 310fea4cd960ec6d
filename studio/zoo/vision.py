"""The vision zoo: a tiny residual MLP pretrained on 8×8 digits and fine-tuned into eight interfering experts.

The setting copies the CLIP multi-task benchmark in miniature (algorithms.md §3):

* one pretrained backbone (``base.safetensors``) shared by every task, pretrained broadly — on plain digits and on
  every task's view of them (CLIP has seen images of every domain), so the experts stay in the base's basin;
* per task a frozen linear head (``heads/<task>.safetensors``) fitted on *frozen base features* from one labelled
  example per class (the analogue of CLIP's zero-shot head: usable, far from the fine-tuned accuracy) — base,
  experts and merges are all scored with this same head;
* per task an expert backbone (``experts/<task>.safetensors``) fine-tuned fully (every backbone weight) from the base
  with a small learning rate for a task-specific number of steps (``EXPERT_STEPS``: like real expert pools, the
  task vectors differ in length, which one global λ cannot serve);
* per task a held-out ``test`` split and an ``unlabeled`` split (for AdaMerging, Fisher, RegMean, SAMerging, FDA),
  regenerated deterministically from scikit-learn's digits in a few milliseconds.

Backbone keys follow ``blocks.<i>.…`` so the generic layer detection groups them per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .training import optimizer_step, warmup_cosine

# ----------------------------------------------------------------------------------------------------------- tasks

TASKS: tuple[str, ...] = ("rotate", "mirror", "invert", "noise", "shuffle", "occlude", "parity", "groups")

TASK_DOC: dict[str, str] = {
    "rotate": "digit, image rotated by 90°",
    "mirror": "digit, image mirrored left–right",
    "invert": "digit, dark strokes on a light background",
    "noise": "digit, strong Gaussian pixel noise",
    "shuffle": "digit, the four 4×4 quadrants swapped diagonally",
    "occlude": "digit, the top half blanked",
    "parity": "odd or even, image turned upside down",
    "groups": "digit mod 3 (3 classes), image mirrored top–bottom",
}

NUM_CLASSES: dict[str, int] = {t: 10 for t in TASKS} | {"parity": 2, "groups": 3}

N_TEST = 400
N_UNLABELED = 300
SPLIT_SEED = 1234


@dataclass(frozen=True)
class VisionConfig:
    """Architecture of the backbone: patch embedding + ``depth`` pre-norm transformer blocks + final norm."""

    image: int = 8
    dim: int = 128
    depth: int = 4
    mlp: int = 256


CONFIG = VisionConfig()


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


@lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """Indices of the 1,797 digits in the ``train`` / ``test`` / ``unlabeled`` splits (fixed permutation)."""
    _, y = _digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    return {
        "test": order[:N_TEST],
        "unlabeled": order[N_TEST:N_TEST + N_UNLABELED],
        "train": order[N_TEST + N_UNLABELED:],
    }


def transform(task: str, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply ``task``'s input transform to a batch ``[N, 8, 8]`` of images in [0, 1]."""
    x = images
    if task == "rotate":
        return torch.rot90(x, 1, dims=(-2, -1))
    if task == "mirror":
        return torch.flip(x, dims=(-1,))
    if task == "invert":
        return 1.0 - x
    if task == "noise":
        return x + 0.35 * torch.randn(x.shape, generator=generator)
    if task == "shuffle":
        top, bottom = x[..., :4, :], x[..., 4:, :]
        tl, tr, bl, br = top[..., :4], top[..., 4:], bottom[..., :4], bottom[..., 4:]
        return torch.cat([torch.cat([br, bl], -1), torch.cat([tr, tl], -1)], -2)
    if task == "occlude":
        x = x.clone()
        x[..., :4, :] = 0.0
        return x
    if task == "parity":
        return torch.rot90(x, 2, dims=(-2, -1))
    if task == "groups":
        return torch.flip(x, dims=(-2,))
    if task == "plain":
        return x
    if task == "mixed":
        return _mixed(x, generator)
    raise KeyError(task)


PRETRAIN_VIEWS: tuple[str, ...] = ("plain",) + TASKS

# fine-tuning steps per expert (full zoo): deliberately uneven, as in real expert pools
EXPERT_STEPS: dict[str, int] = {"rotate": 100, "mirror": 800, "invert": 200, "noise": 1200, "shuffle": 150,
                                "occlude": 600, "parity": 300, "groups": 900}
EXPERT_LR = 2e-4
HEAD_SHOTS = 1


def _mixed(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Pretraining views: each image gets one of ``PRETRAIN_VIEWS`` at random (a broad, CLIP-like prior)."""
    choice = torch.randint(0, len(PRETRAIN_VIEWS), (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for i, view in enumerate(PRETRAIN_VIEWS):
        sel = choice == i
        if sel.any():
            out[sel] = transform(view, x[sel], generator)
    return out


def relabel(task: str, digits: torch.Tensor) -> torch.Tensor:
    if task == "parity":
        return digits % 2
    if task == "groups":
        return digits % 3
    return digits


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random ±1 pixel translation (training augmentation)."""
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
    images, digits = _digits()
    idx = split_indices()[split]
    gen = torch.Generator().manual_seed(_stable_seed(task, split))
    x = transform(task, torch.from_numpy(images[idx]), gen).unsqueeze(1).contiguous()
    y = relabel(task, torch.from_numpy(digits[idx]))
    return x, y


def _stable_seed(*parts: str) -> int:
    h = 0
    for p in parts:
        for ch in p:
            h = (h * 131 + ord(ch)) % 2_147_483_647
    return h


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


# -------------------------------------------------------------------------------------------------------- training


def _train_batches(task: str, steps: int, batch: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    images, digits = _digits()
    idx = split_indices()["train"]
    raw = torch.from_numpy(images[idx])
    labels = relabel(task, torch.from_numpy(digits[idx]))
    for _ in range(steps):
        pick = torch.randint(0, len(idx), (batch,), generator=gen)
        x = _shift(raw[pick], gen)
        x = transform(task, x, gen).unsqueeze(1)
        yield x, labels[pick]


PRETRAIN_TASK = "mixed"


def pretrain(steps: int, seed: int = 0, lr: float = 2e-3, batch: int = 128) -> Backbone:
    """Pretrain the backbone on digits (10 classes) under every ``PRETRAIN_VIEWS`` view, with a throw-away head."""
    torch.manual_seed(seed)
    bb = Backbone(CONFIG)
    head = nn.Linear(CONFIG.dim, 10)
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
    images, digits = _digits()
    idx = split_indices()["train"]
    gen = torch.Generator().manual_seed(_stable_seed(task, "train"))
    x = transform(task, torch.from_numpy(images[idx]), gen).unsqueeze(1)
    return x, relabel(task, torch.from_numpy(digits[idx]))


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


@torch.no_grad()
def accuracy(bb: Backbone, head: nn.Linear, task: str, split: str = "test") -> float:
    x, y = task_data(task, split)
    return (head(bb(x)).argmax(-1) == y).float().mean().item()
