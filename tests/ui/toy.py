"""A tiny stand-in for a zoo family (same attributes and evaluator contract), built in a tmp dir in ~0.1 s.

Models are 3-block residual MLPs (``embed``, ``blocks.<i>.fc``, ``norm``) saved as safetensors; each expert is the
base plus its own delta. A task's labels are its expert's predictions on fixed random inputs, so an expert scores
1.0 on its task and merges score in between — enough to see numbers move with the sliders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

DIM, DEPTH, CLASSES, N = 16, 3, 4, 256


def forward(state: dict, x: torch.Tensor) -> torch.Tensor:
    h = x @ state["embed.weight"].T
    for i in range(DEPTH):
        h = h + torch.tanh(h @ state[f"blocks.{i}.fc.weight"].T + state[f"blocks.{i}.fc.bias"])
    h = torch.nn.functional.layer_norm(h, (DIM,), state["norm.weight"], state["norm.bias"])
    return h[:, :CLASSES]


class ToyEvaluator:
    def __init__(self, tasks: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.tasks = tasks

    def evaluate(self, state_dict):
        sd = {k: v.detach().float().cpu() for k, v in state_dict.items()}
        per = {}
        for t, (x, y) in self.tasks.items():
            per[t] = float((forward(sd, x).argmax(-1) == y).float().mean())
        return {"metric": "accuracy", "per_task": per, "average": sum(per.values()) / len(per), "samples": None}


@dataclass
class ToyFamily:
    name: str
    kind: str
    base: Path
    experts: dict
    loras: dict = field(default_factory=dict)
    tasks: tuple = ()
    description: str = "toy MLP family for tests"
    _data: dict = field(default_factory=dict, repr=False)

    def evaluator(self, budget="preview", device="cpu"):
        return ToyEvaluator(self._data)


def build_toy_family(root: Path, tasks=("alpha", "beta", "gamma"), name="toy") -> ToyFamily:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    base = {"embed.weight": torch.randn(DIM, DIM, generator=g) / DIM ** 0.5,
            "norm.weight": torch.ones(DIM), "norm.bias": torch.zeros(DIM)}
    for i in range(DEPTH):
        base[f"blocks.{i}.fc.weight"] = torch.randn(DIM, DIM, generator=g) / DIM ** 0.5
        base[f"blocks.{i}.fc.bias"] = torch.zeros(DIM)
    save_file(base, str(root / "base.safetensors"))
    experts, data = {}, {}
    for j, t in enumerate(tasks):
        gj = torch.Generator().manual_seed(100 + j)
        sd = {k: v + 0.6 * torch.randn(v.shape, generator=gj) / DIM ** 0.5 if "blocks" in k or "embed" in k else v.clone()
              for k, v in base.items()}
        path = root / f"{t}.safetensors"
        save_file(sd, str(path))
        experts[t] = path
        x = torch.randn(N, DIM, generator=gj)
        data[t] = (x, forward(sd, x).argmax(-1))
    return ToyFamily(name, "vision", root / "base.safetensors", experts, tasks=tuple(tasks), _data=data)
