"""Parameter declarations that several methods share: one name, range, doc, label and start each."""

from __future__ import annotations

from .registry import Param

# a new model starts at full weight, not at the range's midpoint
WEIGHT = Param("weight", per_model=True, range=(-1.0, 2.0), doc="this model's coefficient", start=1.0)
LAMBDA = Param("lambda", default=1.0, range=(0.0, 3.0), doc="scale of the merged delta", label="λ (lambda)")
INT8_MASK = Param("int8_mask", default=False, kind=bool, doc="accepted for mergekit compatibility; no effect here",
                  compat=True)
