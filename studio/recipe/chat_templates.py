"""A recipe's ``chat_template``, as mergekit reads it: ``auto`` (the template most of the inputs carry), a name
(``chatml``, ``llama3``, ``alpaca``, ``mistral``), or a literal Jinja template. The named templates are written here
from each format's published shape (role headers, end-of-turn markers, the generation prompt)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable

from ..errors import RecipeError

NAMED = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    "llama3": (  # each turn on its own line, as mergekit writes it
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
        " + '<|eot_id|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    "alpaca": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% else %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"),
    "mistral": (  # a system message opens the first instruction
        "{{ bos_token }}"
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
        "{% else %}{% set system = none %}{% set turns = messages %}{% endif %}"
        "{% for message in turns %}"
        "{% if message['role'] == 'user' %}"
        "{{ ' [INST] ' + (system + '\\n\\n' if loop.first and system is not none else '') + message['content']"
        " + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
        "{% endfor %}"),
}


def is_literal(value: str) -> bool:
    return "{{" in value or "{%" in value


def check_chat_template(value, where: str = "recipe") -> None:
    """``auto``, a known name or a literal Jinja template; anything else is a RecipeError naming the choices."""
    if value is None:
        return
    if not isinstance(value, str) or not (value == "auto" or value in NAMED or is_literal(value)):
        raise RecipeError(f"chat_template {value!r} is neither auto, a known template nor a Jinja template",
                          where=where, hint=f"one of auto, {', '.join(NAMED)}, or the template's text")


def template_of(folder: Path | None) -> str | None:
    """The chat template a model folder carries (``chat_template.jinja``, else ``tokenizer_config.json``)."""
    if folder is None:
        return None
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    try:
        cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    tpl = cfg.get("chat_template") if isinstance(cfg, dict) else None
    return tpl if isinstance(tpl, str) else None


def resolve_chat_template(value: str, input_folders: Iterable[Path | None]) -> str | None:
    """The template text ``value`` stands for; ``auto``: the most common among the inputs (None when none has one;
    a tie goes to the first input's, as the base is listed first)."""
    if value == "auto":
        found = [t for t in (template_of(f) for f in input_folders) if t]
        return Counter(found).most_common(1)[0][0] if found else None
    return NAMED.get(value, value)
