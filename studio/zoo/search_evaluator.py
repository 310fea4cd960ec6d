"""The ``zoo`` evaluator of searches: the demo family a recipe merges, scored by its own evaluator — ``zoo`` /
``zoo:test`` on the held-out test split, ``zoo:validation`` on a validation split carved from the training data (so a
search leaves the test split untouched for the report). This module registers it in
``studio.search.objectives.EVALUATORS`` when imported (``studio/__init__.py`` imports it)."""

from __future__ import annotations


from ..engine.live import LiveMerger
from ..errors import StudioError
from ..recipe import Recipe
from ..search.objectives import EVALUATORS
from . import family_holding

SPLITS = {"": "test", "test": "test", "validation": "train"}


def family_of(recipe: Recipe):
    """The built demo family whose base (or one of whose models) the recipe merges."""
    fam = family_holding(recipe.referenced_models())
    if fam is not None:
        return fam
    raise StudioError("the zoo evaluator scores merges of the demo zoo, and this recipe merges none of its models",
                      where="objective zoo", hint="use python:MODULE:FUNCTION, text:FILE or eval:FILE.jsonl for your own")


class ZooEvaluator:
    def __init__(self, arg: str, recipe: Recipe, device: str):
        if arg not in SPLITS:
            raise StudioError(f"zoo:{arg} is not a split", where="objective", hint="zoo, zoo:test or zoo:validation")
        self.evaluator = family_of(recipe).evaluator("preview", device, split=SPLITS[arg])
        self.metric = self.evaluator.metric

    def scores(self, live: LiveMerger) -> dict[str, float]:
        out = self.evaluator.evaluate(live.state)
        return {"average": float(out["average"]), **{k: float(v) for k, v in out["per_task"].items()}}


EVALUATORS["zoo"] = ZooEvaluator
