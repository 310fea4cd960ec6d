"""The README.md model card of a merged model: the models it came from and the recipe that reproduces it."""

from __future__ import annotations

from .. import __version__


def model_card(recipe_yaml: str, method_label: str, models: list[str], base: str | None, extra: str = "") -> str:
    tags = "\n".join(f"- {t}" for t in ("merge", "merge-studio", "mergekit"))
    base_line = "base_model:\n" + "".join(f"- {m}\n" for m in models) if models else ""
    listing = "\n".join(f"* {m}" + (" (base)" if m == base else "") for m in models)
    return f"""---
library_name: transformers
tags:
{tags}
{base_line}---
# Merged model

Made with Merge Studio {__version__} using **{method_label}**.

## Models

{listing}

## Recipe

The recipe below reproduces this model with `python -m studio merge recipe.yaml OUT` (it is also valid mergekit YAML
where it uses only mergekit's keys).

```yaml
{recipe_yaml.rstrip()}
```
{extra}"""
