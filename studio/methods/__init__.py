"""The merge math: pure tensor functions + declared parameters + registry.

Importing the package registers every built-in method: each module imported below declares its methods with
``@method`` (studio.methods.registry). A new method module adds one line here.
"""

from .registry import REQUIRED, MethodSpec, Param, get_method, list_methods, method

from . import basic  # noqa: F401 — registers linear, task_arithmetic, slerp, passthrough
from . import spherical  # noqa: F401 — registers nuslerp, multislerp, karcher
from . import adaptive_interpolation  # noqa: F401 — registers model_stock, nearswap, arcee_fusion
from . import ties_dare_della  # noqa: F401 — registers ties, dare_*, breadcrumbs*, della*
from . import ties_paper  # noqa: F401 — registers ties_paper
from . import task_subspaces  # noqa: F401 — registers tsv_m, wudi
from . import entry_selection  # noqa: F401 — registers sce, consensus_ta, magmax, emr
from . import checkpoint_merger_modes  # noqa: F401 — registers weighted_sum, add_difference, triple_sum, ...

__all__ = ["REQUIRED", "MethodSpec", "Param", "get_method", "list_methods", "method"]
