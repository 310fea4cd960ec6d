"""Task accuracy (percent) of merged backbones of the vision zoo (each task scored through its own frozen head)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import StudioError
from ..evaluate.common import check_budget, result
from . import vision as V

# examples per task; the preview slice is spread evenly over the test split
PREVIEW_EXAMPLES = 96


class VisionEvaluator:
    """Accuracy per task (percent, 0–100) of a backbone state dict.

    ``budget``: ``preview`` (96 examples per task, spread evenly), ``report`` (the whole split) or a number of
    examples (the first ones); ``split``: ``test`` (held out) or ``train`` (a validation split from the experts'
    training data). ``evaluate(state_dict)`` loads the backbone weights (keys
    ``embed.*``, ``blocks.<i>.*``, ``norm.*``) into one resident module and scores every task with its own head from
    ``heads/<task>.safetensors``.
    Data-aware merge methods use :meth:`data` and :meth:`build_module`.
    """

    metric = "accuracy"

    def __init__(self, root: str | Path, tasks: list[str] | None = None, budget: str | int = "preview",
                 device: str = "cpu", split: str = "test"):
        if not isinstance(budget, int):
            check_budget(budget)
        if split not in ("test", "train"):
            raise StudioError(f"unknown evaluation split {split!r}",
                              hint="test (held out), or train (a validation split carved from the experts' training "
                                   "data, for searches that must leave the test split untouched)")
        self.split = split
        self.root = Path(root)
        self.tasks = list(tasks or V.TASKS)
        self.budget = budget
        self.device = torch.device(device)
        self.heads = {}
        for task in self.tasks:
            path = self.root / "heads" / f"{task}.safetensors"
            if not path.exists():
                raise StudioError(f"missing head for task {task!r}", where=str(path),
                                  hint="rebuild the zoo with `python -m studio zoo build --family vision`")
            self.heads[task] = V.make_head(load_file(str(path))).to(self.device).eval()
        self.backbone = V.Backbone(V.CONFIG).to(self.device).eval()
        self._eval_data = {t: self._slice(*V.task_data(t, split)) for t in self.tasks}

    def _slice(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.budget, int):
            x, y = x[:self.budget], y[:self.budget]
        elif self.budget == "preview" and len(y) > PREVIEW_EXAMPLES:
            pick = torch.linspace(0, len(y) - 1, PREVIEW_EXAMPLES).round().long()
            x, y = x[pick], y[pick]
        return x.to(self.device), y.to(self.device)

    # ---------------------------------------------------------------------------------------------- data access

    def data(self, task: str, split: str = "unlabeled") -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs [N, 1, 8, 8] float32, labels [N] int64)`` of ``task``.

        ``split``: ``unlabeled`` (300 examples for data-aware merging; its labels are for diagnostics only and
        must not be used by a method that claims to need unlabeled data), ``test`` (400 held-out examples, the ones
        :meth:`evaluate` scores under the report budget) or ``train`` (the experts' training images, without
        augmentation).
        """
        if task not in self.heads:
            raise StudioError(f"unknown vision task {task!r}", hint=f"tasks: {', '.join(self.tasks)}")
        if split not in ("unlabeled", "test", "train"):
            raise StudioError(f"unknown split {split!r}", hint="use unlabeled, test or train")
        x, y = V.task_data(task, split)
        return x.to(self.device), y.to(self.device)

    def head(self, task: str) -> torch.nn.Linear:
        """The frozen linear head of ``task`` (``feature [N, 128]`` → logits)."""
        return self.heads[task]

    def build_module(self, state_dict: dict[str, torch.Tensor], task: str) -> V.TaskModel:
        """A fresh ``TaskModel`` (backbone from ``state_dict`` + ``task``'s head): inputs → logits for ``task``.

        For gradient-based merging, prefer ``torch.func.functional_call(module.backbone, params, x)`` on the
        module returned here, with ``module.head`` applied to the features.
        """
        bb = V.Backbone(V.CONFIG).to(self.device)
        bb.load_state_dict({k: v.to(self.device, torch.float32) for k, v in state_dict.items()})
        return V.TaskModel(bb, self.heads[task]).eval()

    # --------------------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate_module(self, backbone: torch.nn.Module) -> dict:
        per_task = {}
        for task in self.tasks:
            x, y = self._eval_data[task]
            per_task[task] = 100.0 * (self.heads[task](backbone(x)).argmax(-1) == y).float().mean().item()
        return result(self.metric, per_task, None)

    def evaluate(self, state_dict: dict[str, torch.Tensor]) -> dict:
        """Accuracy per task of the backbone weights in ``state_dict`` (missing or extra keys are an error)."""
        own = self.backbone.state_dict()
        missing = [k for k in own if k not in state_dict]
        if missing:
            raise StudioError(f"backbone weights are missing {len(missing)} keys (e.g. {missing[0]!r})",
                              hint="pass the merged vision backbone (base/expert layout)")
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(state_dict[k].to(v.dtype))
        return self.evaluate_module(self.backbone)
