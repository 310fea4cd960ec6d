"""Parameter declarations that several methods share: one name, range, doc, label and start each."""

from __future__ import annotations

from .registry import Param

WEIGHT = Param("weight", per_model=True, range=(-1.0, 2.0), doc="this model's coefficient")
LAMBDA = Param("lambda", default=1.0, range=(0.0, 3.0), doc="scale of the merged delta")
INT8_MASK = Param("int8_mask", default=False, kind=bool, doc="accepted for mergekit compatibility; no effect here",
                  compat=True)
