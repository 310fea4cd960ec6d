"""The merge math: pure tensor functions + declared parameters + registry."""

from .registry import REQUIRED, MethodSpec, Param, get_method, list_methods, method

__all__ = ["REQUIRED", "MethodSpec", "Param", "get_method", "list_methods", "method"]
