"""The method modules; importing this registers them all. Add one import per new module."""

from . import basic  # noqa: F401
from . import ties_dare_della  # noqa: F401
from . import spherical  # noqa: F401
from . import adaptive_interpolation  # noqa: F401
from . import ties_paper  # noqa: F401
from . import task_subspaces  # noqa: F401
from . import entry_selection  # noqa: F401
from . import checkpoint_merger_modes  # noqa: F401
