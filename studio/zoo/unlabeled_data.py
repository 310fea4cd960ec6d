"""The ``zoo`` / ``zoo:<family>`` data spec of learned merges: each task's unlabeled split of the demo zoo. This
module appends its resolver to ``studio.learn.data.DATA_RESOLVERS`` when imported (``studio/__init__.py`` imports
it)."""

from __future__ import annotations

from ..errors import StudioError
from ..learn.data import DATA_RESOLVERS
from . import get_family
from .vision import task_data

# the family whose data a spec without one means, by the adapter's model kind
FAMILY_OF_KIND = {"vision": "vision", "causal_lm": "text"}


def zoo_unlabeled(family: str, task: str):
    """The zoo's unlabeled inputs of ``task`` (the catalogue's ``data`` when built, else the vision module's)."""
    try:
        fam = get_family(family)
    except StudioError:
        if family != "vision":
            raise
        fam = None  # not built: the vision data needs no assets
    data = fam.data(task, "unlabeled") if fam is not None else None
    if data is not None:
        return data[0]
    if family == "vision":
        return task_data(task, "unlabeled")[0]
    raise StudioError(f"the zoo family {family!r} has no unlabeled data here", hint="build the zoo first "
                      "(python -m studio zoo build) or pass --data with your own files")


def resolve_zoo_data(spec: str, adapter) -> dict | None:
    """``{task: unlabeled inputs}`` for ``zoo`` (the family of the adapter's kind) or ``zoo:<family>``; None for
    other specs."""
    if spec != "zoo" and not spec.startswith("zoo:"):
        return None
    family = spec.partition(":")[2] or FAMILY_OF_KIND.get(adapter.kind)
    if family is None:
        raise StudioError(f"the demo zoo has no data for {adapter.kind} models",
                          hint="pass --data: a folder with a subfolder of unlabeled images per task")
    return {t: zoo_unlabeled(family, t) for t in adapter.tasks}


DATA_RESOLVERS.append(resolve_zoo_data)
