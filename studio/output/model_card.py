"""The README.md model card of a merged model: the models it came from and the recipe that reproduces it."""

from __future__ import annotations

from .. import __version__
from ..sources import TensorSource
from ..sources.resolve import is_hub_id


def library_name(source: TensorSource) -> str | None:
    """The Hub's ``library_name`` for a merge of models like ``source``: diffusers for pipelines and their components,
    transformers for a transformers folder, none for a bare file (an SD single file is not a transformers model)."""
    if source.kind in ("diffusers", "diffusers-component"):
        return "diffusers"
    if source.kind == "transformers" and (source.config or {}).get("architectures"):
        return "transformers"
    return None


def hub_models(models: list[str]) -> list[str]:
    """The models the Hub can link as ``base_model``: repository ids, without a revision; local paths stay out of the
    metadata (they mean nothing on another machine) and are listed in the card's text."""
    return [m.split("@", 1)[0] for m in models if is_hub_id(m)]


def model_card(recipe_yaml: str, method_label: str, models: list[str], base: str | None, extra: str = "",
               library: str | None = None) -> str:
    tags = "\n".join(f"- {t}" for t in ("merge", "merge-studio", "mergekit"))
    linked = hub_models(models)
    base_line = "base_model:\n" + "".join(f"- {m}\n" for m in linked) if linked else ""
    library_line = f"library_name: {library}\n" if library else ""
    listing = "\n".join(f"* {m}" + (" (base)" if m == base else "") for m in models)
    return f"""---
{library_line}tags:
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
