"""The method modules; importing this registers them all. Add one import per new module."""

from . import basic  # noqa: F401
from . import ties_dare_della  # noqa: F401
from . import spherical  # noqa: F401
from . import mergekit_misc  # noqa: F401
from . import survey  # noqa: F401
from . import supermerger  # noqa: F401
