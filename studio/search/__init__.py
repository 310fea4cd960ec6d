"""Black-box search over recipe settings: any sliders (setting paths) against any evaluator, with Optuna's samplers,
stored trial by trial; scored in this process or on Ray workers (:mod:`studio.search.ray_backend`)."""

from .objectives import EVALUATORS, Objective
from .space import Dimension, search_space, trial_recipe
from .study import (SAMPLERS, LocalBackend, Scorer, Search, TrialResult, best_trials, finished, open_study, prepare,
                    run_search, trial_rows)

__all__ = ["EVALUATORS", "SAMPLERS", "Dimension", "LocalBackend", "Objective", "Scorer", "Search", "TrialResult",
           "best_trials", "finished", "open_study", "prepare", "run_search", "search_space", "trial_recipe",
           "trial_rows"]
