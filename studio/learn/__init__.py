"""Data-aware merging: AdaMerging, SAMerging, FDA, Fisher and RegMean → coefficients (a recipe) or weights.

Entry point: ``run_learned(method, base, experts, data, device=..., steps=..., progress=...) -> LearnResult``.
"""

from .api import COEFFICIENT_METHODS, METHODS, LearnResult, run_learned


def zoo_rows(family: str = "vision", budget: int | None = None, **kw) -> list[dict]:
    """Learned-method rows for the zoo report (see ``studio.learn.zoo.zoo_rows``)."""
    from .zoo import zoo_rows as _rows

    return _rows(family, budget, **kw)


__all__ = ["COEFFICIENT_METHODS", "METHODS", "LearnResult", "run_learned", "zoo_rows"]
