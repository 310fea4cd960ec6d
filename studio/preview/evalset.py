"""A person's own evaluation set for a causal LM preview: a JSONL file, one item a line, of two kinds.

- **multiple choice** ``{"question": str, "choices": [str, …], "answer": index | choice text}`` — each choice is scored
  by the model's log-likelihood of its tokens after the question (the question, a space unless it already ends in
  whitespace, then the choice); the prediction is the choice with the highest **per-token mean** log-likelihood
  (length-normalised: long choices are not penalised for their length) and, reported beside it, the highest **sum**
  (raw);
- **prompt / expected** ``{"prompt": str, "expected": str}`` — the model's greedy answer to the prompt is right when
  it equals the expected text (``match="exact"``) or contains it (``match="contains"``), both after stripping
  surrounding whitespace, case-sensitive.

Previews score the first ``limit`` items only (a small fixed budget). Accuracies are percentages, like every
accuracy in :mod:`studio.evaluate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import StudioError

MATCHES = ("exact", "contains")


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice item: ``answer`` is the index of the right choice."""

    line: int
    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class ExpectedItem:
    """A prompt whose greedy answer should match ``expected``."""

    line: int
    prompt: str
    expected: str


def _item(obj, line: int, where: str) -> ChoiceItem | ExpectedItem:
    def bad(what: str) -> StudioError:
        return StudioError(f"line {line}: {what}", where=where,
                           hint='each line is {"question", "choices": [...], "answer": index or choice text} or '
                                '{"prompt", "expected"}')

    if not isinstance(obj, dict):
        raise bad(f"a JSON object was expected, not {type(obj).__name__}")
    if "choices" in obj or "question" in obj:
        question, choices, answer = obj.get("question"), obj.get("choices"), obj.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise bad('"question" must be a non-empty text')
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            raise bad('"choices" must be a list of at least two non-empty texts')
        if isinstance(answer, bool) or answer is None:
            raise bad('"answer" must be the index of the right choice or its text')
        if isinstance(answer, int):
            if not 0 <= answer < len(choices):
                raise bad(f'"answer" {answer} is not an index of the {len(choices)} choices (they count from 0)')
            index = answer
        elif isinstance(answer, str) and answer in choices:
            index = choices.index(answer)
        else:
            raise bad(f'"answer" {answer!r} is neither an index nor one of the choices')
        return ChoiceItem(line, question, tuple(choices), index)
    if "prompt" in obj or "expected" in obj:
        prompt, expected = obj.get("prompt"), obj.get("expected")
        if not isinstance(prompt, str) or not prompt.strip():
            raise bad('"prompt" must be a non-empty text')
        if not isinstance(expected, str) or not expected.strip():
            raise bad('"expected" must be a non-empty text')
        return ExpectedItem(line, prompt, expected)
    raise bad(f"neither a multiple-choice item nor a prompt/expected pair (keys: {', '.join(sorted(obj)) or 'none'})")


def load_eval_set(path: str | Path, limit: int | None = None) -> tuple[list[ChoiceItem | ExpectedItem], bool]:
    """The first ``limit`` items of a JSONL evaluation set (all when None) and whether more items follow.

    Blank lines are skipped; a line that is not one of the two kinds is a StudioError naming the file and line
    (lines after the first ``limit`` items are not read)."""
    path = Path(path)
    if not path.is_file():
        raise StudioError("evaluation set not found", where=str(path), hint="give a .jsonl file, one item a line")
    items: list[ChoiceItem | ExpectedItem] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for n, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            if limit is not None and len(items) >= limit:
                return items, True
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise StudioError(f"line {n}: not JSON ({e.msg} at column {e.colno})", where=str(path),
                                  hint="one JSON object a line (JSONL)") from None
            items.append(_item(obj, n, str(path)))
    if not items:
        raise StudioError("the evaluation set has no items", where=str(path), hint="one JSON object a line (JSONL)")
    return items, False


@torch.no_grad()
def choice_logliks(model, tokenizer, context: str, choice: str, special: bool = True) -> tuple[float, int]:
    """(sum of log p(token | everything before it) over the choice's tokens, how many tokens) after ``context``.

    The text ``context + " " + choice`` is tokenized whole (no space when the context ends in whitespace), with the
    tokenizer's special tokens when ``special`` (plain prompts; a chat-templated context already holds them); the
    choice's tokens are those after the context's own, so a merge across the boundary stays the tokenizer's choice.
    A choice that adds no token gives (0.0, 0)."""
    sep = "" if context[-1:].isspace() or choice[:1].isspace() else " "
    start = len(tokenizer(context, add_special_tokens=special)["input_ids"])
    ids = tokenizer(context + sep + choice, add_special_tokens=special)["input_ids"]
    start = max(start, 1)  # the first token of a text has nothing before it to be predicted from
    if len(ids) <= start:
        return 0.0, 0
    x = torch.tensor([ids], device=model.device)
    logp = F.log_softmax(model(input_ids=x).logits[0].float(), dim=-1)
    target = x[0, start:]
    return logp[start - 1:-1].gather(-1, target[:, None]).sum().item(), len(target)


def matches(answer: str, expected: str, match: str) -> bool:
    """Whether a generated ``answer`` counts as ``expected`` (``exact`` or ``contains``, stripped, case-sensitive)."""
    a, e = answer.strip(), expected.strip()
    return a == e if match == "exact" else e in a


def score_eval_set(model, tokenizer, items: list[ChoiceItem | ExpectedItem],
                   prompt_text: Callable[[str], tuple[str, bool]], answer: Callable[[str], str],
                   match: str = "contains", path: str = "") -> dict:
    """Score ``items``: the table that ``result(..., table=)`` carries.

    ``prompt_text(text)`` is (the text the model sees for a question or prompt — the chat template applied, or the
    text as it is —, whether the tokenizer adds its special tokens to it); ``answer(prompt)`` is the model's greedy
    answer to a prompt (the generated text only).

    Returns ``{"file", "items", "match", "scoring", "accuracy": {"choice", "choice_raw", "expected"} (the kinds
    present, in %), "rows": [...]}``; a multiple-choice row is ``{"line", "kind": "choice", "prompt", "expected"
    (the right choice), "answer" (chosen by mean log-likelihood), "answer_raw" (by sum), "correct", "correct_raw",
    "loglik": [sum per choice], "tokens": [tokens per choice]}``, a prompt/expected row ``{"line", "kind":
    "expected", "prompt", "expected", "answer" (the generated text), "correct"}``."""
    if match not in MATCHES:
        raise StudioError(f"unknown answer match {match!r}", hint="use exact or contains")
    rows = []
    for item in items:
        if isinstance(item, ChoiceItem):
            context, special = prompt_text(item.question)
            scored = [choice_logliks(model, tokenizer, context, c, special) for c in item.choices]
            empty = [c for c, (_, n) in zip(item.choices, scored) if n == 0]
            if empty:
                raise StudioError(f"line {item.line}: the choice {empty[0]!r} adds no token after the question",
                                  where=path, hint="give every choice some text")
            raw = max(range(len(scored)), key=lambda i: scored[i][0])
            norm = max(range(len(scored)), key=lambda i: scored[i][0] / scored[i][1])
            rows.append({"line": item.line, "kind": "choice", "prompt": item.question,
                         "expected": item.choices[item.answer], "answer": item.choices[norm],
                         "answer_raw": item.choices[raw], "correct": norm == item.answer,
                         "correct_raw": raw == item.answer, "loglik": [s for s, _ in scored],
                         "tokens": [n for _, n in scored]})
        else:
            said = answer(item.prompt)
            rows.append({"line": item.line, "kind": "expected", "prompt": item.prompt, "expected": item.expected,
                         "answer": said, "correct": matches(said, item.expected, match)})
    accuracy = {}
    choice = [r for r in rows if r["kind"] == "choice"]
    expected = [r for r in rows if r["kind"] == "expected"]
    if choice:
        accuracy["choice"] = 100.0 * sum(r["correct"] for r in choice) / len(choice)
        accuracy["choice_raw"] = 100.0 * sum(r["correct_raw"] for r in choice) / len(choice)
    if expected:
        accuracy["expected"] = 100.0 * sum(r["correct"] for r in expected) / len(expected)
    scoring = {}
    if choice:
        scoring["choice"] = ("highest mean log-likelihood per token of the choice after the question "
                             "(choice_raw: highest summed log-likelihood)")
    if expected:
        scoring["expected"] = (f"greedy answer {'equals' if match == 'exact' else 'contains'} the expected text "
                               "(stripped, case-sensitive)")
    return {"file": path, "items": len(rows), "match": match, "scoring": scoring, "accuracy": accuracy,
            "rows": rows}
