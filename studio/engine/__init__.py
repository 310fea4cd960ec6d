"""Two engines, one plan: ``stream`` (disk → device → disk) and ``live`` (resident deltas → module)."""

from .plan import PLAN_HOOKS, Plan, TensorTask, build_plan
from .stream import check_merge_target, merge_in_memory, merge_to_disk

__all__ = ["PLAN_HOOKS", "Plan", "TensorTask", "build_plan", "check_merge_target", "merge_in_memory", "merge_to_disk"]
