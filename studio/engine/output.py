"""Output folders and files: written into a temporary sibling, then renamed — an interrupted merge leaves no target."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from ..errors import StudioError

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "vocab.txt", "spiece.model", "sentencepiece.bpe.model"]
SIDE_FILES = TOKENIZER_FILES + ["generation_config.json"]


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_target(target: Path, overwrite: bool, input_paths: list[Path]) -> None:
    """Refuse targets that would lose data: non-empty without --overwrite, inside an input, or containing one."""
    target = Path(target)
    for p in input_paths:
        p = Path(p)
        folder = p if p.is_dir() else p.parent
        if p.is_dir() and _is_within(target, folder):
            raise StudioError("refusing to write inside an input model's folder", where=str(target),
                              hint=f"{folder} is an input; choose another output path")
        if target.exists() and target.resolve() == p.resolve():
            raise StudioError("the output path is one of the inputs", where=str(target), hint="choose another path")
        if overwrite and target.exists() and _is_within(p, target):
            raise StudioError("refusing to overwrite a folder that holds an input model", where=str(target),
                              hint=f"{p} is inside it")
    if target.exists():
        non_empty = target.is_file() or any(target.iterdir())
        if non_empty and not overwrite:
            raise StudioError("output already exists and is not empty", where=str(target),
                              hint="pass --overwrite to replace it, or choose another path")


class AtomicTarget:
    """``with AtomicTarget(out) as tmp:`` — write into ``tmp`` (a folder, or a file path when ``is_file``);
    on success it replaces ``out`` in one rename, on failure it is removed."""

    def __init__(self, target: Path, is_file: bool = False):
        self.target = Path(target)
        self.is_file = is_file
        self.target.parent.mkdir(parents=True, exist_ok=True)
        suffix = self.target.suffix if is_file else ""
        self.tmp = self.target.parent / f".{self.target.name}.partial-{uuid.uuid4().hex[:8]}{suffix}"

    def __enter__(self) -> Path:
        if not self.is_file:
            self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._remove(self.tmp)
            return False
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            self._remove(old)
        return False

    @staticmethod
    def _remove(p: Path):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


def copy_side_files(src_folder: Path | None, dst: Path, names=SIDE_FILES) -> list[str]:
    copied = []
    if src_folder is None:
        return copied
    for name in names:
        p = Path(src_folder) / name
        if p.is_file():
            shutil.copy2(p, dst / name)
            copied.append(name)
    return copied


def write_json(path: Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def model_card(recipe_yaml: str, method_label: str, models: list[str], base: str | None, extra: str = "") -> str:
    from .. import __version__

    tags = "\n".join(f"- {t}" for t in ("merge", "merge-studio", "mergekit"))
    base_line = f"base_model:\n" + "".join(f"- {m}\n" for m in models) if models else ""
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
