"""Diagnostics as numbers: task-vector statistics per layer/block group, and loss/metric landscapes.

* :func:`task_vector_stats` — sign conflicts (raw and after top-k trimming), mass agreement, pairwise sign
  disagreement, TIES elected-sign keep fraction, cosine similarity and L2 norms of τ_i = θ_i − θ_base, per layout
  group and overall; streamed tensor by tensor.
* :func:`landscape_1d`, :func:`landscape_2d` (→ :func:`landscape_params`, :func:`landscape_task_plane`,
  :func:`landscape_random_plane`) — a scorer evaluated over merges, with markers and projected trajectories.

Figures are drawn from these numbers by :mod:`studio.figures`; ``python -m studio analyze`` writes both.
"""

from .landscape import (Plane, as_scorer, axis_values, filter_normalized_direction, landscape_1d, landscape_2d, landscape_params,
                        landscape_random_plane, landscape_task_plane)
from .stats import KINDS, kind_of, task_vector_stats

__all__ = ["KINDS", "Plane", "as_scorer", "axis_values", "filter_normalized_direction", "kind_of", "landscape_1d",
           "landscape_2d", "landscape_params", "landscape_random_plane", "landscape_task_plane", "task_vector_stats"]
