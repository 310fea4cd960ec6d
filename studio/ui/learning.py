"""The Optimize panel's controller: learned merges (:mod:`studio.learn`) of the session's models — plain Python.

A run learns from unlabeled data (the demo family's splits, or a folder of the user's own) and is kept as
``last``; nothing in the recipe changes until :meth:`LearnController.load` makes learned coefficients the recipe.
Learned weights (FDA, Fisher, RegMean, CLIP towers) are shown in the preview and exported from here.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import StudioError
from ..learn import LearnResult, get_learner, get_variant, list_variants, run_learned
from ..output import AtomicTarget, check_target, is_single_file, learned_summary_path
from ..evaluate import lower_is_better
from .preview_view import Preview


@dataclass
class Learned:
    """One Optimize run: the LearnResult, what it merged, and its preview-budget scores."""

    choice: str
    label: str
    method: str
    base: str
    experts: list[str]
    result: LearnResult
    scores: dict                       # the evaluator's result for the learned weights ({} without an evaluator)
    seconds: float
    recipe: dict | None                # the learned recipe (coefficient methods), else None
    current: dict | None = None        # the recipe's preview numbers when the run started (for comparison)


def choices() -> list[tuple[str, str]]:
    """(label, variant) of every learned method the panel offers, in the registry's order."""
    return [(v.label, v.name) for v in list_variants()]


def drawable(p) -> bool:
    """Hyperparameters the panel draws a control for (numbers, flags, choices); others keep their defaults."""
    return p.kind in (int, float, bool) or bool(p.choices)


class LearnController:
    def __init__(self, session):
        self.s = session
        self.last: Learned | None = None
        self.choice = list_variants()[0].name
        self.settings: dict[str, Any] = {}     # hyperparameters the user set for ``choice``

    def forget(self) -> None:
        self.last = None

    def choose(self, choice: str) -> None:
        """Pick the learned method (a variant) the panel runs; its hyperparameter controls start from its values."""
        self.choice = get_variant(choice).name
        self.settings = {}

    def params(self) -> list[tuple[Any, Any]]:
        """(declaration, value) of each hyperparameter the panel shows for the chosen method, in declared order; the
        ones the variant fixes (AdaMerging task-wise's granularity) are its name, not a control."""
        variant = get_variant(self.choice)
        return [(p, self.settings.get(p.name, p.default)) for p in get_learner(variant.learner).params
                if drawable(p) and p.name not in variant.hparams]

    def set_param(self, index: int, value) -> None:
        """The panel's ``index``-th hyperparameter control changed (an empty number means the method's default)."""
        shown = self.params()
        if index < len(shown):
            p = shown[index][0]
            if value is None:
                self.settings.pop(p.name, None)
            else:
                self.settings[p.name] = p.coerce(value, p.title)

    def learn(self, choice: str, steps: int | None = None, progress: Callable[[float, str], None] | None = None,
              data: str | None = None, **hparams) -> Learned:
        """Run a learned merge of the merged models (a variant name, e.g. ``samerging`` or ``adamerging_task``;
        ``hparams`` override the variant's). ``data``: a folder (inside the allowed folders) with a subfolder of
        unlabeled inputs per merged model, named after the models' labels (else matched in sorted order); without
        it, the demo family's unlabeled splits. With a family the learned model is scored with the preview budget."""
        s = self.s
        variant = get_variant(choice)
        spec = get_learner(variant.learner)
        if variant.name == self.choice:
            hparams = {**self.settings, **hparams}
        base, experts = s.recipe.get("base_model"), s.experts()
        if not base or not experts:
            raise StudioError("learned merging needs a base model and at least one fine-tuned model",
                              hint="choose them in the Models tab")
        tasks = [s.labels.get(e, "") for e in experts]
        fam = s.family_obj()
        if data and str(data).strip():
            data = str(s.env.roots.check_path(str(data)))
        else:
            data = self._family_data(fam, experts, tasks)
        current = s.last_preview.result if s.last_preview and not s.last_preview.source else None
        t0 = time.perf_counter()
        with s.env.heavy:
            res = run_learned(spec.name, base, experts, data, device=s.env.device, steps=steps, progress=progress,
                              tasks=tasks, **{**variant.hparams, **hparams})
            scores = s.env.catalog.evaluator(s.family).evaluate(res.state_dict) if fam is not None else {}
        self.last = Learned(choice=variant.name, label=variant.label, method=spec.name, base=base,
                            experts=list(experts), result=res, scores=scores, seconds=time.perf_counter() - t0,
                            recipe=res.recipe.to_dict() if res.recipe is not None else None, current=current)
        return self.last

    def _family_data(self, fam, experts: list[str], tasks: list[str]) -> dict:
        """Each merged model's unlabeled split from the demo family (they must be the family's experts)."""
        s = self.s
        if fam is None:
            raise StudioError("learned merging needs unlabeled data of each task",
                              hint="give a folder with a subfolder per merged model in the Optimize tab, or use a "
                                   "demo family")
        fam_tasks = list(getattr(fam, "tasks", None) or (getattr(fam, "experts", None) or {}))
        unknown = [s.label(e) for e, t in zip(experts, tasks) if t not in fam_tasks]
        if unknown:
            raise StudioError(f"learned merging on the family's data needs each merged model to be one of its "
                              f"experts (it learns on that task's unlabeled data); {', '.join(unknown)} is not",
                              hint="untick it in the Models tab, or give your own data folder")
        if not hasattr(fam, "data"):
            raise StudioError(f"the {s.family} family has no unlabeled data to learn from")
        data = {}
        for t in tasks:
            d = fam.data(t, "unlabeled")
            if d is None:
                raise StudioError(f"the {s.family} family has no task data; learned merging needs unlabeled "
                                  "inputs of each task", hint="use the vision or text family, or your own data folder")
            data[t] = d[0] if isinstance(d, tuple) else d
        return data

    def _need(self) -> Learned:
        if self.last is None:
            raise StudioError("nothing learned yet in this session", hint="run a method in the Optimize tab first")
        return self.last

    def load(self) -> None:
        """Replace the recipe by the learned one (undo brings the previous back; the next preview records it)."""
        lr = self._need()
        if lr.recipe is None and lr.result.coefficients:
            raise StudioError(f"{lr.label}'s coefficients cannot become a recipe here: the base and the experts do "
                              "not share one tensor set (a full CLIP model and vision towers)",
                              hint="preview or export the learned weights from the Optimize tab")
        if lr.recipe is None:
            raise StudioError(f"{lr.label} learns merged weights, not recipe coefficients",
                              hint="preview them or export them from the Optimize tab")
        self.s.set_recipe(lr.recipe)

    def preview(self) -> Preview:
        """Show the learned weights' numbers in the preview (the recipe is unchanged; the next edit re-previews it)."""
        lr = self._need()
        s = self.s
        return s.show(Preview(copy.deepcopy(s.recipe), lr.scores, s.input_scores(), lr.seconds, 0.0, lr.seconds, 0,
                              len(lr.result.state_dict or {}), source=f"learned weights · {lr.label}"))

    def export(self, target: str, dtype: str = "float16", overwrite: bool = False) -> dict:
        """Write the learned weights (``LearnResult.save``): a ``.safetensors`` path → that file and its
        ``.learned.json``; a folder → recipe.yml (when there is one), the weights, trajectory.json. Only inside the
        allowed folders; never over an input; atomic."""
        lr = self.last
        if lr is None or not lr.result.state_dict:
            raise StudioError("nothing learned to export", hint="run a method in the Optimize tab first")
        out = self.s.env.roots.check_write(target)
        inputs = [Path(p) for p in [lr.base, *lr.experts] if Path(p).exists()]
        check_target(out, overwrite, inputs)
        t0 = time.perf_counter()
        with self.s.env.heavy:
            if is_single_file(out):
                check_target(learned_summary_path(out), overwrite, inputs)
                lr.result.save(out, dtype, label=lr.label, base=lr.base, experts=lr.experts)
                files = [out, learned_summary_path(out)]
            else:
                with AtomicTarget(out) as tmp:  # a folder keeps full float32 weights (a loadable model folder)
                    lr.result.save(tmp)
                files = sorted(p for p in out.rglob("*") if p.is_file())
        return {"path": str(out), "files": [str(p) for p in files], "bytes": sum(p.stat().st_size for p in files),
                "seconds": time.perf_counter() - t0}

    def readiness(self) -> str:
        """One line for the Optimize panel: what a run would merge, or why it cannot run on this family."""
        s = self.s
        fam = s.family_obj()
        if fam is None:
            data_note = ("Give a folder of **unlabeled data** above: a subfolder per merged model (named after its "
                         "label), holding images or .txt files.")
        elif getattr(fam, "kind", "") == "diffusion":
            return (f"⚠ The **{s.family}** family has no task data (its experts are styles, not tasks), so there is "
                    "nothing to learn from. Switch to the vision or text family in the Models tab.")
        else:
            data_note = f"Data: the {s.family} family's unlabeled splits, unless you give a folder above."
        experts = s.experts()
        if not s.recipe.get("base_model") or not experts:
            return "⚠ Choose a base model and at least one expert in the Models tab."
        names = ", ".join(s.label(e) for e in experts)
        return (f"Will merge **{len(experts)}** experts ({names}) into `{s.label(s.recipe['base_model'])}`. "
                f"{data_note}")


def _fmt_num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def learned_markdown(lr: Learned) -> str:
    """What a learned run produced: its scores next to the recipe's, and what to do next."""
    metric = lr.scores.get("metric", "score")
    avg = lr.scores.get("average")
    cur = (lr.current or {}).get("average")
    head = f"✓ **{lr.label}** learned in {lr.seconds:.1f} s"
    if avg is None:
        head += " (no evaluator for these models: judge them by the objective, or export and test them)"
    else:
        head += f" — average {metric} **{avg:.4g}**"
    if cur is not None and avg is not None:
        better = (avg < cur) if lower_is_better(metric) else (avg > cur)
        head += f" (your recipe: {cur:.4g}, {'better' if better else 'not better'})"
    m = lr.result.metrics
    bits = [f"{lab} {_fmt_num(m[k])}" for k, lab in (("objective_start", "objective before"),
                                                      ("objective_end", "after"), ("steps", "steps"))
            if m.get(k) is not None]
    per = lr.scores.get("per_task") or {}
    rows = ["| task | " + " | ".join(per) + " |", "|---|" + "---|" * len(per),
            "| learned | " + " | ".join(f"{float(v):.4g}" for v in per.values()) + " |"] if per else []
    if lr.current and lr.current.get("per_task"):
        rows.append("| your recipe | " + " | ".join(
            f"{float(lr.current['per_task'].get(t, float('nan'))):.4g}" for t in per) + " |")
    nxt = ("*Load into sliders* to make the learned coefficients your recipe (per-tensor weights, shown as "
           "name-pattern rules; Undo brings your recipe back)." if lr.recipe is not None else
           "These are merged weights, not a recipe: the preview shows them now; any edit returns the preview to "
           "your recipe. Export them below.")
    return "\n\n".join(x for x in [head, " · ".join(bits), "\n".join(rows), nxt] if x)
