"""Teaching text: the chosen method's formula with the current numbers filled in (markdown, no gradio)."""

from __future__ import annotations

from ..recipe import edit as E
from ..recipe.edit import SettingPath
from ..sources.resolve import short_name


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _value(recipe, name, index=None):
    """(the value a plain control shows, whether layers or name patterns give other values)."""
    value, per_group, rules = E.scalar_value(recipe, SettingPath(name, index))
    return value, per_group or rules


def _models(recipe, spec, labels):
    """(model index or None, reference, label) of the method's inputs in the engine's order: a base that a method
    takes as an input but the recipe does not list joins last (as in mergekit), so it is model B of a weighted sum
    of one listed model, not A."""
    base = recipe.get("base_model")
    out = []
    for i, m in enumerate(recipe.get("models") or []):
        ref = m["model"]
        if ref == base and not spec.includes_base:
            continue
        out.append((i, ref, labels.get(ref, short_name(ref))))
    if base and spec.includes_base and not any(ref == base for _, ref, _ in out):
        out.append((None, base, labels.get(base, short_name(base))))
    return out


def _sym(label: str, letter: str = "θ") -> str:
    return f"{letter}[{label}]"


def render(spec, recipe: dict, labels: dict[str, str] | None = None) -> str:
    """Markdown: the declared formula, then the same formula with this recipe's numbers."""
    labels = dict(labels or {})
    base = recipe.get("base_model")
    if base:
        labels.setdefault(base, "base")
    models = _models(recipe, spec, labels)
    varies = []
    lines = [f"### {spec.label or spec.name}", ""]
    if spec.formula:
        lines += [f"`{spec.formula}`", ""]
    filled = None
    name = spec.name

    def pm(param, i):
        # a base joining the inputs unlisted (index None) takes the recipe's global value, as in the engine
        v, var = _value(recipe, param, i)
        if var:
            ref = base if i is None else recipe["models"][i]["model"]
            varies.append(f"{param} of {labels.get(ref, '?')}")
        return v

    def gv(param):
        v, var = _value(recipe, param)
        if var:
            varies.append(param)
        return v

    names = [p.name for p in spec.params]
    if name == "task_arithmetic" or (name in ("ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
                                              "della", "della_linear") and "weight" in names):
        lam = gv("lambda")
        terms = [f"{_fmt(pm('weight', i))}·τ[{lab}]" for i, _, lab in models]
        extra = ""
        if name != "task_arithmetic":
            dens = [f"{lab} {_fmt(pm('density', i))}" for i, _, lab in models] if "density" in names else []
            extra = ("  \nwhere each τ is first sparsified (density: " + ", ".join(dens) + ")"
                     + (" and signs are elected (TIES)" if "ties" in name or name == "della" else "")) if dens else ""
        norm = gv("normalize") if "normalize" in names else False
        total = sum(float(pm('weight', i)) for i, _, _ in models)
        body = " + ".join(terms) or "0"
        if norm and abs(total) > 1e-8:
            body = f"({body}) / {_fmt(total)}"
        filled = f"θ = θ[base] + {_fmt(lam)}·({body}),  τ[m] = θ[m] − θ[base]{extra}"
        if models and not norm:
            eff = ", ".join(f"{lab} {_fmt(float(lam) * float(pm('weight', i)))}" for i, _, lab in models)
            filled += f"  \neach expert moves the base by λ·w of its task vector: {eff}"
    elif name == "linear":
        ws = [(pm("weight", i), lab) for i, _, lab in models]
        total = sum(float(w) for w, _ in ws)
        body = " + ".join(f"{_fmt(w)}·{_sym(lab)}" for w, lab in ws)
        norm = gv("normalize")
        filled = f"θ = ({body}) / {_fmt(total)}" if norm and abs(total) > 1e-8 else f"θ = {body}"
    elif name in ("weighted_sum", "cosine_a", "cosine_b"):
        a = float(gv("alpha"))
        A, B = (models + [(0, "", "A"), (0, "", "B")])[:2]
        filled = f"θ = {_fmt(1 - a)}·{_sym(A[2])} + {_fmt(a)}·{_sym(B[2])}"
        if name != "weighted_sum":
            filled += "  (interpolation weights adjusted per element by cosine similarity)"
    elif name in ("add_difference", "train_difference"):
        a = gv("alpha")
        A, B, C = ([lab for _, _, lab in models] + ["A", "B", "C"])[:3]  # the engine's order
        filled = f"θ = {_sym(A)} + {_fmt(a)}·({_sym(B)} − {_sym(C)})"
    elif name in ("slerp", "nearswap"):
        t = gv("t")
        ms = [lab for _, _, lab in models] or ["A", "B"]
        filled = (f"θ = sin((1−{_fmt(t)})Ω)/sin Ω·{_sym(ms[0])} + sin({_fmt(t)}Ω)/sin Ω·{_sym(ms[-1])},  "
                  f"Ω = angle between them") if name == "slerp" else f"t = {_fmt(t)}"
    elif name in ("triple_sum", "sum_twice"):
        a, b = gv("alpha"), gv("beta")
        ms = ([lab for _, _, lab in models] + ["A", "B", "C"])[:3]
        if name == "triple_sum":
            filled = (f"θ = {_fmt(1 - float(a) - float(b))}·{_sym(ms[0])} + {_fmt(a)}·{_sym(ms[1])} + "
                      f"{_fmt(b)}·{_sym(ms[2])}")
        else:
            filled = (f"θ = {_fmt(1 - float(b))}·({_fmt(1 - float(a))}·{_sym(ms[0])} + {_fmt(a)}·{_sym(ms[1])}) + "
                      f"{_fmt(b)}·{_sym(ms[2])}")
    lines.append("**With your numbers**" if filled else "**Current values**")
    lines.append("")
    if filled:
        lines.append(filled)
    else:
        vals = [f"{p.title} = {_fmt(gv(p.name))}" for p in spec.params if not p.per_model]
        for i, _, lab in models:
            vals += [f"{p.name}[{lab}] = {_fmt(pm(p.name, i))}" for p in spec.per_model_params()]
        lines.append(", ".join(vals) if vals else "(this method has no parameters)")
    if varies:
        uniq = list(dict.fromkeys(varies))
        lines += ["", f"*Per-layer or name-pattern values are set for {', '.join(uniq)}; the numbers above are the "
                  f"defaults, each layer uses its own (see the Recipe panel).*"]
    if spec.ref:
        lines += ["", f"<sub>Reference: {spec.ref}</sub>"]
    return "\n".join(lines)
