"""Two engines, one plan: ``stream`` (disk → device → disk) and ``live`` (resident deltas → module)."""

from .multi import merge_intermediates, merge_steps, plan_steps
from .plan import PLAN_HOOKS, Plan, TensorTask, build_plan
from .stream import (METADATA_HOOKS, OUTPUT_FORMS, SIDE_FILE_HOOKS, check_merge_target, merge_in_memory, merge_to_disk,
                     planned_output)

__all__ = ["METADATA_HOOKS", "OUTPUT_FORMS", "PLAN_HOOKS", "Plan", "SIDE_FILE_HOOKS", "TensorTask", "build_plan",
           "check_merge_target", "merge_in_memory", "merge_intermediates", "merge_steps", "merge_to_disk", "plan_steps", "planned_output"]
