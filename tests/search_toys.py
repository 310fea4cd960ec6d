"""The toy search both search test files use: two fine-tunes of a tiny Llama and a quadratic objective in their two
merge weights whose optimum (``TARGET``) is known in closed form; ``toy_objective`` also holds a slow one and failing ones."""

import textwrap
from pathlib import Path

import torch

from tinymodels import load_state, make_llama

from studio.recipe import Recipe
from studio.search import Objective, Search, search_space
from studio.search.study import search_layout

KEY = "model.layers.1.mlp.up_proj.weight"
TARGET = (0.4, 0.6)


def build_family(root: Path, module: str = "toy_objective") -> dict:
    """The models and the objective module ``module``.py under ``root`` (put ``root`` on sys.path to import it;
    test files that keep state in it name their own module)."""
    base = make_llama(root / "base", 0, layers=2, hidden=16)
    state = load_state(base)
    a = make_llama(root / "a", 1, layers=2, hidden=16, base_state=state, noise=0.1)
    b = make_llama(root / "b", 2, layers=2, hidden=16, base_state=state, noise=0.1)
    sa, sb = load_state(a), load_state(b)
    target = state[KEY] + TARGET[0] * (sa[KEY] - state[KEY]) + TARGET[1] * (sb[KEY] - state[KEY])
    torch.save(target, root / "target.pt")
    (root / f"{module}.py").write_text(textwrap.dedent(f"""
        import time

        import torch
        TARGET = torch.load({str(root / 'target.pt')!r})

        def score(state):
            # a quadratic in the two weights: 0 at weight = {TARGET}
            return -float(((state[{KEY!r}].float() - TARGET) ** 2).sum())

        def slow_score(state):
            # score, after 0 to 0.28 s that vary from trial to trial: side by side, trials end out of order
            time.sleep(0.04 * (int(abs(float(state[{KEY!r}].flatten()[0])) * 1e7) % 8))
            return score(state)

        def broken(state):
            raise ValueError("no")

        def words(state):
            return "good"

        def size(state):
            # pulls toward the base: a second objective at odds with the first
            return float(state[{KEY!r}].float().norm())

        CALLS = [0]

        def ctrl_c_at_6(state):
            CALLS[0] += 1
            if CALLS[0] == 6:
                raise KeyboardInterrupt
            return score(state)
    """))
    return {"base": str(base), "a": str(a), "b": str(b), "root": root}


def recipe(f) -> Recipe:
    return Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": f["base"], "dtype": "float32",
                             "models": [{"model": f["a"], "parameters": {"weight": 0.5}},
                                        {"model": f["b"], "parameters": {"weight": 0.5}}]})


def make_search(f, sampler="tpe", trials=24, seed=0, objective="python:toy_objective:score", batch=4):
    r = recipe(f)
    dims = search_space(r, ["models.*.weight=0:1"], search_layout(r))
    return Search(r, dims, [Objective.parse(objective)], sampler=sampler, trials=trials, seed=seed, batch=batch)
