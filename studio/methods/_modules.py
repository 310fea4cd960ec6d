"""The method modules; importing this registers them all. Add one import per new module."""

from . import basic  # noqa: F401
