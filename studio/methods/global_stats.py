"""Reference driver for methods with whole-model statistics (``collect`` / ``combine`` / ``rounds``).

The engine does the same thing while streaming: for each round, call ``collect`` on every tensor (with the
previous round's combined context from round 2 on), then ``combine`` the partials once. The method then runs on
every tensor with ``context=`` the last combine's result.
"""

from __future__ import annotations

from typing import Any, Iterable

from .registry import MethodSpec


def gather_context(spec: MethodSpec, calls: Iterable[tuple[Any, list, dict]]) -> Any:
    """``calls``: (base, models, params) per tensor, params as passed to the method (python names, no generator).
    Must be re-iterable (a list), since every round visits every tensor."""
    if spec.collect is None:
        return None
    calls = list(calls)
    context = None
    for r in range(max(1, spec.rounds)):
        partials = []
        for base, models, params in calls:
            kwargs = dict(params)
            if r > 0:
                kwargs["context"] = context
            partials.append(spec.collect(base, models, **kwargs))
        context = spec.combine(partials)
    return context
